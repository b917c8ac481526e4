//! What the scheduler needs to know about one pod, extracted once per watch event.
//!
//! Requests are summed into integers, selectors compiled, affinity terms resolved to
//! their namespaces: the filters run thousands of times per pod, the extraction once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Container, NodeSelector, Pod, PodAffinityTerm, PreferredSchedulingTerm, ResourceRequirements, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};
use kube::ResourceExt;

use crate::quantity;

/// Labels of an object (also of namespaces).
pub type Labels = BTreeMap<String, String>;

/// CPU a pod without a cpu request counts as when spreading load (Kubernetes' value).
pub const DEFAULT_MILLI_CPU: i64 = 100;
/// Memory a pod without a memory request counts as when spreading load (200 MiB).
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

/// Amounts of every resource a pod requests or a node offers, in integers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU in millicores.
    pub milli_cpu: i64,
    /// Memory in bytes.
    pub memory: i64,
    /// Ephemeral storage in bytes.
    pub ephemeral_storage: i64,
    /// Extended resources (`nvidia.com/gpu`, hugepages) in whole units.
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    /// Reads a `requests`/`allocatable` map; quantities that do not parse count as zero.
    pub fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Resources {
        let mut r = Resources::default();
        for (name, q) in list.into_iter().flatten() {
            match name.as_str() {
                "cpu" => r.milli_cpu = quantity::milli(&q.0).unwrap_or(0),
                "memory" => r.memory = quantity::value(&q.0).unwrap_or(0),
                "ephemeral-storage" => r.ephemeral_storage = quantity::value(&q.0).unwrap_or(0),
                // `pods` is a node's pod count, not something a pod requests.
                "pods" => {}
                other => {
                    r.scalar.insert(other.to_string(), quantity::value(&q.0).unwrap_or(0));
                }
            }
        }
        r
    }

    /// Adds `other` to these amounts.
    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu += other.milli_cpu;
        self.memory += other.memory;
        self.ephemeral_storage += other.ephemeral_storage;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    /// Takes `other` away from these amounts.
    pub fn sub(&mut self, other: &Resources) {
        self.milli_cpu -= other.milli_cpu;
        self.memory -= other.memory;
        self.ephemeral_storage -= other.ephemeral_storage;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_default() -= v;
        }
    }

    /// Raises each amount to at least `other`'s.
    fn max_with(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }
}

fn requests_of(r: Option<&ResourceRequirements>) -> Resources {
    Resources::from_list(r.and_then(|r| r.requests.as_ref()))
}

/// A pod's effective requests as Kubernetes counts them: app containers plus sidecars
/// (init containers with `restartPolicy: Always`), or the largest init container step
/// if that is more, plus the pod overhead.
pub fn pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources::default();
    };
    let mut total = Resources::default();
    for c in &spec.containers {
        total.add(&requests_of(c.resources.as_ref()));
    }
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = requests_of(c.resources.as_ref());
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&r);
            // A sidecar keeps running next to every later init container and the app.
            init_peak.max_with(&sidecars);
        } else {
            let mut step = sidecars.clone();
            step.add(&r);
            init_peak.max_with(&step);
        }
    }
    total.add(&sidecars);
    total.max_with(&init_peak);
    if let Some(overhead) = spec.overhead.as_ref() {
        total.add(&Resources::from_list(Some(overhead)));
    }
    total
}

/// CPU and memory for spreading load: a container without a request counts as
/// [`DEFAULT_MILLI_CPU`] / [`DEFAULT_MEMORY`], so empty pods do not pile onto one node.
fn non_zero_requests(containers: &[Container]) -> (i64, i64) {
    containers.iter().fold((0, 0), |(cpu, mem), c| {
        let r = requests_of(c.resources.as_ref());
        let has = |name: &str| {
            c.resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .is_some_and(|m| m.contains_key(name))
        };
        (
            cpu + if has("cpu") { r.milli_cpu } else { DEFAULT_MILLI_CPU },
            mem + if has("memory") { r.memory } else { DEFAULT_MEMORY },
        )
    })
}

/// A host port a container claims.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// The host IP (`0.0.0.0` for all).
    pub ip: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The port number.
    pub port: i32,
}

impl HostPort {
    /// Whether two claims collide: same protocol and port, and one of them takes every
    /// address or both take the same.
    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || self.ip == "0.0.0.0" || other.ip == "0.0.0.0")
    }
}

/// A compiled label selector; `None` inside matches nothing (a nil selector in Kubernetes).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMatch(Option<Selector>);

impl LabelMatch {
    /// Compiles `selector`; an operator Kubernetes does not know is an error.
    pub fn new(selector: Option<&LabelSelector>) -> Result<LabelMatch, String> {
        selector
            .map(|s| Selector::try_from(s.clone()).map_err(|e| e.to_string()))
            .transpose()
            .map(LabelMatch)
    }

    /// Whether `labels` match.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.as_ref().is_some_and(|s| s.matches(labels))
    }
}

/// One pod (anti-)affinity term with its namespaces resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct AffinityTerm {
    /// Which pods the term is about.
    pub selector: LabelMatch,
    /// Namespaces listed by name (the pod's own when neither list nor selector is set).
    pub namespaces: BTreeSet<String>,
    /// Namespaces chosen by their labels (`{}`: every namespace).
    pub namespace_selector: Option<LabelMatch>,
    /// The node label whose values are the topology domains.
    pub topology_key: String,
}

impl AffinityTerm {
    /// The term of a pod in namespace `own`.
    pub fn new(term: &PodAffinityTerm, own: &str) -> Result<AffinityTerm, String> {
        let mut namespaces: BTreeSet<String> = term.namespaces.iter().flatten().cloned().collect();
        let namespace_selector = term
            .namespace_selector
            .as_ref()
            .map(|s| LabelMatch::new(Some(s)))
            .transpose()?;
        if namespaces.is_empty() && namespace_selector.is_none() {
            namespaces.insert(own.to_string());
        }
        Ok(AffinityTerm {
            selector: LabelMatch::new(term.label_selector.as_ref())?,
            namespaces,
            namespace_selector,
            topology_key: term.topology_key.clone(),
        })
    }

    /// Whether a pod in `namespace` (whose labels are `ns_labels`) with `labels` is one
    /// this term selects.
    pub fn matches(&self, namespace: &str, labels: &Labels, ns_labels: Option<&Labels>) -> bool {
        let in_namespace = self.namespaces.contains(namespace)
            || self
                .namespace_selector
                .as_ref()
                .is_some_and(|s| s.matches(ns_labels.unwrap_or(&Labels::new())));
        in_namespace && self.selector.matches(labels)
    }
}

/// A preferred (anti-)affinity term and its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedTerm {
    /// 1..100.
    pub weight: i64,
    /// The term.
    pub term: AffinityTerm,
}

/// One topology spread constraint.
#[derive(Debug, Clone, PartialEq)]
pub struct SpreadConstraint {
    /// How uneven the domains may become.
    pub max_skew: i64,
    /// The node label whose values are the domains.
    pub topology_key: String,
    /// `DoNotSchedule` (a filter) rather than `ScheduleAnyway` (a score).
    pub hard: bool,
    /// Which pods are counted (in the pod's namespace).
    pub selector: LabelMatch,
    /// Fewer domains than this count as a global minimum of zero.
    pub min_domains: Option<i64>,
    /// Whether nodes the pod's node affinity excludes are left out of the counts.
    pub honor_node_affinity: bool,
    /// Whether nodes with taints the pod does not tolerate are left out of the counts.
    pub honor_taints: bool,
}

/// Everything the scheduler reads of one pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodInfo {
    /// The pod's uid (the cache's key).
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The pod's labels.
    pub labels: Labels,
    /// The node it is bound to, if any.
    pub node_name: Option<String>,
    /// Which scheduler places it.
    pub scheduler_name: String,
    /// `spec.priority` (set from its PriorityClass at admission).
    pub priority: i32,
    /// `preemptionPolicy: Never`: waits instead of evicting others.
    pub never_preempts: bool,
    /// Effective requests.
    pub requests: Resources,
    /// CPU and memory for spreading load, with defaults for missing requests.
    pub non_zero: (i64, i64),
    /// Host ports its containers claim.
    pub host_ports: Vec<HostPort>,
    /// `spec.nodeSelector`.
    pub node_selector: Labels,
    /// Required node affinity.
    pub required_node_affinity: Option<NodeSelector>,
    /// Preferred node affinity.
    pub preferred_node_affinity: Vec<PreferredSchedulingTerm>,
    /// Tolerations.
    pub tolerations: Vec<Toleration>,
    /// Required pod affinity terms.
    pub affinity: Vec<AffinityTerm>,
    /// Required pod anti-affinity terms.
    pub anti_affinity: Vec<AffinityTerm>,
    /// Preferred pod affinity terms.
    pub preferred_affinity: Vec<WeightedTerm>,
    /// Preferred pod anti-affinity terms.
    pub preferred_anti_affinity: Vec<WeightedTerm>,
    /// Topology spread constraints.
    pub spread: Vec<SpreadConstraint>,
    /// The uid of its controlling owner (a ReplicaSet, a Job...).
    pub owner_uid: Option<String>,
    /// Succeeded or Failed: holds nothing on its node.
    pub terminal: bool,
    /// Has a deletionTimestamp.
    pub deleting: bool,
    /// Creation time in seconds, for the queue's order.
    pub created: i64,
    /// `status.nominatedNodeName`: where preemption made room for it.
    pub nominated_node: Option<String>,
    /// `terminationGracePeriodSeconds`.
    pub grace_seconds: Option<i64>,
    /// The message of its current `PodScheduled=False` condition, if any.
    pub unschedulable_message: Option<String>,
    /// A part of the spec the scheduler could not read (the pod stays pending, saying so).
    pub invalid: Option<String>,
}

impl PodInfo {
    /// Extracts what the scheduler needs from `pod`.
    pub fn new(pod: &Pod) -> PodInfo {
        let namespace = pod.namespace().unwrap_or_else(|| "default".into());
        let mut info = PodInfo {
            uid: pod.uid().unwrap_or_default(),
            name: pod.name_any(),
            labels: pod.labels().clone(),
            requests: pod_requests(pod),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            created: pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or(0),
            owner_uid: crate::controllers::controller_uid(&pod.metadata).map(String::from),
            namespace,
            ..Default::default()
        };
        if let Some(status) = pod.status.as_ref() {
            info.terminal = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
            info.nominated_node = status.nominated_node_name.clone().filter(|n| !n.is_empty());
            info.unschedulable_message = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
                .map(|c| c.message.clone().unwrap_or_default());
        }
        let Some(spec) = pod.spec.as_ref() else {
            return info;
        };
        info.node_name = spec.node_name.clone().filter(|n| !n.is_empty());
        info.scheduler_name = spec
            .scheduler_name
            .clone()
            .unwrap_or_else(|| super::DEFAULT_SCHEDULER.to_string());
        info.priority = spec.priority.unwrap_or(0);
        info.never_preempts = spec.preemption_policy.as_deref() == Some("Never");
        info.non_zero = non_zero_requests(&spec.containers);
        info.grace_seconds = spec.termination_grace_period_seconds;
        info.node_selector = spec.node_selector.clone().unwrap_or_default();
        info.tolerations = spec.tolerations.clone().unwrap_or_default();
        info.host_ports = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| p.host_port.is_some_and(|h| h > 0))
            .map(|p| HostPort {
                ip: p
                    .host_ip
                    .clone()
                    .filter(|ip| !ip.is_empty())
                    .unwrap_or_else(|| "0.0.0.0".into()),
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                port: p.host_port.unwrap_or(0),
            })
            .collect();
        if let Err(e) = info.read_affinity(pod) {
            info.invalid = Some(e);
        }
        info
    }

    fn read_affinity(&mut self, pod: &Pod) -> Result<(), String> {
        let Some(spec) = pod.spec.as_ref() else { return Ok(()) };
        let ns = self.namespace.clone();
        if let Some(affinity) = spec.affinity.as_ref() {
            if let Some(na) = affinity.node_affinity.as_ref() {
                self.required_node_affinity = na.required_during_scheduling_ignored_during_execution.clone();
                self.preferred_node_affinity = na
                    .preferred_during_scheduling_ignored_during_execution
                    .clone()
                    .unwrap_or_default();
            }
            let terms = |list: Option<&Vec<PodAffinityTerm>>| -> Result<Vec<AffinityTerm>, String> {
                list.into_iter().flatten().map(|t| AffinityTerm::new(t, &ns)).collect()
            };
            let weighted = |list: Option<&Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>>| {
                list.into_iter()
                    .flatten()
                    .map(|w| {
                        Ok(WeightedTerm {
                            weight: i64::from(w.weight),
                            term: AffinityTerm::new(&w.pod_affinity_term, &ns)?,
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()
            };
            if let Some(pa) = affinity.pod_affinity.as_ref() {
                self.affinity = terms(pa.required_during_scheduling_ignored_during_execution.as_ref())
                    .map_err(|e| format!("spec.affinity.podAffinity: {e}"))?;
                self.preferred_affinity = weighted(pa.preferred_during_scheduling_ignored_during_execution.as_ref())
                    .map_err(|e| format!("spec.affinity.podAffinity: {e}"))?;
            }
            if let Some(paa) = affinity.pod_anti_affinity.as_ref() {
                self.anti_affinity = terms(paa.required_during_scheduling_ignored_during_execution.as_ref())
                    .map_err(|e| format!("spec.affinity.podAntiAffinity: {e}"))?;
                self.preferred_anti_affinity =
                    weighted(paa.preferred_during_scheduling_ignored_during_execution.as_ref())
                        .map_err(|e| format!("spec.affinity.podAntiAffinity: {e}"))?;
            }
        }
        for c in spec.topology_spread_constraints.iter().flatten() {
            self.spread.push(SpreadConstraint {
                max_skew: i64::from(c.max_skew.max(1)),
                topology_key: c.topology_key.clone(),
                hard: c.when_unsatisfiable != "ScheduleAnyway",
                selector: LabelMatch::new(c.label_selector.as_ref())
                    .map_err(|e| format!("spec.topologySpreadConstraints: {e}"))?,
                min_domains: c.min_domains.map(i64::from),
                honor_node_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
            });
        }
        Ok(())
    }

    /// `namespace/name`, for logs and messages.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the pod holds resources on a node: bound and neither finished nor gone.
    pub fn occupies_node(&self) -> bool {
        self.node_name.is_some() && !self.terminal
    }

    /// Whether this scheduler (named `scheduler`) should place the pod.
    pub fn is_pending_for(&self, scheduler: &str) -> bool {
        self.node_name.is_none() && !self.terminal && !self.deleting && self.scheduler_name == scheduler
    }

    /// Whether a change from `old` to `self` could make an unschedulable pod fit (its
    /// scheduling-relevant spec changed), as opposed to a status-only update.
    pub fn spec_changed_from(&self, old: &PodInfo) -> bool {
        self.labels != old.labels
            || self.requests != old.requests
            || self.node_selector != old.node_selector
            || self.tolerations != old.tolerations
            || self.required_node_affinity != old.required_node_affinity
    }
}

/// A shared, immutable pod record.
pub type PodRef = Arc<PodInfo>;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u1"}, "spec": spec}))
            .expect("test pod")
    }

    #[test]
    fn requests_count_init_containers_sidecars_and_overhead_as_kubernetes_does() {
        let c = |cpu: &str, mem: &str| json!({"name": "c", "resources": {"requests": {"cpu": cpu, "memory": mem}}});
        let cases = [
            // (containers, init containers, overhead, milli cpu, memory)
            (
                json!([c("100m", "1Mi"), c("200m", "1Mi")]),
                json!([]),
                json!(null),
                300,
                2 << 20,
            ),
            // A bigger init step wins.
            (
                json!([c("100m", "1Mi")]),
                json!([c("1", "1Mi")]),
                json!(null),
                1000,
                1 << 20,
            ),
            // A sidecar adds to the app containers and to every later init step.
            (
                json!([c("100m", "1Mi")]),
                json!([{"name": "s", "restartPolicy": "Always", "resources": {"requests": {"cpu": "50m"}}}, c("500m", "1Mi")]),
                json!(null),
                550,
                1 << 20,
            ),
            (
                json!([c("100m", "1Mi")]),
                json!([]),
                json!({"cpu": "10m"}),
                110,
                1 << 20,
            ),
        ];
        for (containers, init, overhead, cpu, mem) in cases {
            let p = pod(json!({"containers": containers, "initContainers": init, "overhead": overhead}));
            let r = pod_requests(&p);
            assert_eq!(
                (r.milli_cpu, r.memory),
                (cpu, mem),
                "{containers} / {init} / {overhead}"
            );
        }
    }

    #[test]
    fn missing_requests_count_as_defaults_for_spreading_only() {
        let p = pod(json!({"containers": [{"name": "a"}, {"name": "b", "resources": {"requests": {"cpu": "1"}}}]}));
        let info = PodInfo::new(&p);
        assert_eq!(info.requests.milli_cpu, 1000);
        assert_eq!(info.requests.memory, 0);
        assert_eq!(info.non_zero, (1100, 2 * DEFAULT_MEMORY));
    }

    #[test]
    fn affinity_terms_default_to_the_pods_namespace() {
        let p = pod(
            json!({"containers": [{"name": "a", "ports": [{"containerPort": 80, "hostPort": 8080}]}],
            "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"},
                {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone", "namespaceSelector": {}}]}}}),
        );
        let info = PodInfo::new(&p);
        assert_eq!(info.invalid, None);
        let web: Labels = [("app".to_string(), "web".to_string())].into();
        let db: Labels = [("app".to_string(), "db".to_string())].into();
        assert!(info.anti_affinity[0].matches("ns", &web, None));
        assert!(!info.anti_affinity[0].matches("other", &web, None));
        assert!(
            info.anti_affinity[1].matches("other", &db, None),
            "an empty namespace selector is every namespace"
        );
        assert_eq!(
            info.host_ports,
            [HostPort {
                ip: "0.0.0.0".into(),
                protocol: "TCP".into(),
                port: 8080
            }]
        );
    }

    #[test]
    fn a_bad_selector_operator_marks_the_pod_invalid() {
        let p = pod(json!({"containers": [{"name": "a"}], "affinity": {"podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchExpressions": [
                {"key": "a", "operator": "Sometimes"}]}, "topologyKey": "zone"}]}}}));
        let invalid = PodInfo::new(&p).invalid.expect("invalid");
        assert!(invalid.contains("podAffinity"), "{invalid}");
    }
}
