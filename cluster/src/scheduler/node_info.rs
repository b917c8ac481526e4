//! One node as the scheduler sees it: what it offers, and the running sum of what the
//! pods placed on it (bound or assumed) take, kept up to date as pods come and go.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Node, Taint};
use kube::ResourceExt;

use super::pod_info::{HostPort, Labels, PodInfo, PodRef, Resources};

/// Taints Kubernetes' node lifecycle controller puts on a node for its conditions
/// (`TaintNodesByCondition`): (condition, status that taints, taint key).
const CONDITION_TAINTS: &[(&str, &str, &str)] = &[
    ("Ready", "False", "node.kubernetes.io/not-ready"),
    ("Ready", "Unknown", "node.kubernetes.io/unreachable"),
    ("MemoryPressure", "True", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "True", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "True", "node.kubernetes.io/pid-pressure"),
    ("NetworkUnavailable", "True", "node.kubernetes.io/network-unavailable"),
];

/// A node and the pods on it.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    /// The node's name.
    pub name: String,
    /// Whether the Node object exists (pods may name a node the cache has not seen yet).
    pub exists: bool,
    /// Its labels.
    pub labels: Labels,
    /// Its taints, with those its conditions imply.
    pub taints: Vec<Taint>,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    /// What pods may use.
    pub allocatable: Resources,
    /// How many pods it takes.
    pub allowed_pods: i64,
    /// The sum of the requests of the pods on it.
    pub requested: Resources,
    /// CPU and memory of its pods with defaults for missing requests (for scores).
    pub non_zero_requested: (i64, i64),
    /// Its pods by uid.
    pub pods: HashMap<String, PodRef>,
    /// How many pods it holds (also in copies made without [`NodeInfo::pods`]).
    pub pod_count: usize,
    /// Host ports in use, with how many pods claim each.
    pub used_ports: HashMap<HostPort, u32>,
}

impl NodeInfo {
    /// A node with no Node object yet (only pods naming it).
    pub fn placeholder(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.to_string(),
            ..Default::default()
        }
    }

    /// Takes the node's spec and status from `node`; returns whether anything a pending
    /// pod could care about changed (labels, taints, cordon, conditions, allocatable).
    pub fn set_node(&mut self, node: &Node) -> bool {
        let labels = node.labels().clone();
        let spec = node.spec.as_ref();
        let status = node.status.as_ref();
        let unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        let mut taints: Vec<Taint> = spec.and_then(|s| s.taints.clone()).unwrap_or_default();
        let conditions = status.and_then(|s| s.conditions.as_ref());
        let ready_known = conditions.into_iter().flatten().any(|c| c.type_ == "Ready");
        for (type_, bad, key) in CONDITION_TAINTS {
            let hit = conditions
                .into_iter()
                .flatten()
                .any(|c| c.type_ == *type_ && c.status == *bad);
            // A node that never reported Ready is not ready.
            let missing = *type_ == "Ready" && *bad == "False" && !ready_known;
            if (hit || missing) && !taints.iter().any(|t| t.key == *key) {
                taints.push(Taint {
                    key: (*key).to_string(),
                    effect: "NoSchedule".into(),
                    ..Default::default()
                });
            }
        }
        let list = status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
        let allocatable = Resources::from_list(list);
        let allowed_pods = list
            .and_then(|l| l.get("pods"))
            .and_then(|q| crate::quantity::value(&q.0))
            .unwrap_or(110);
        let changed = !self.exists
            || labels != self.labels
            || taints != self.taints
            || unschedulable != self.unschedulable
            || allocatable != self.allocatable
            || allowed_pods != self.allowed_pods;
        self.exists = true;
        self.labels = labels;
        self.taints = taints;
        self.unschedulable = unschedulable;
        self.allocatable = allocatable;
        self.allowed_pods = allowed_pods;
        changed
    }

    /// Counts `pod` against this node.
    pub fn add_pod(&mut self, pod: PodRef) {
        self.add_share(&pod);
        if let Some(old) = self.pods.insert(pod.uid.clone(), pod) {
            // Re-adding the same uid replaces it: undo the old record's share.
            self.take_share(&old);
        }
    }

    /// Stops counting the pod with `uid`; returns it.
    pub fn remove_pod(&mut self, uid: &str) -> Option<PodRef> {
        let pod = self.pods.remove(uid)?;
        self.take_share(&pod);
        Some(pod)
    }

    /// A copy with the same totals but no pod list: cheap to try changes on.
    pub fn without_pods(&self) -> NodeInfo {
        NodeInfo {
            name: self.name.clone(),
            exists: self.exists,
            labels: self.labels.clone(),
            taints: self.taints.clone(),
            unschedulable: self.unschedulable,
            allocatable: self.allocatable.clone(),
            allowed_pods: self.allowed_pods,
            requested: self.requested.clone(),
            non_zero_requested: self.non_zero_requested,
            pods: HashMap::new(),
            pod_count: self.pod_count,
            used_ports: self.used_ports.clone(),
        }
    }

    /// Adds `pod`'s requests, ports and one to the count (not to the pod list).
    pub fn add_share(&mut self, pod: &PodInfo) {
        self.pod_count += 1;
        self.requested.add(&pod.requests);
        self.non_zero_requested.0 += pod.non_zero.0;
        self.non_zero_requested.1 += pod.non_zero.1;
        for p in &pod.host_ports {
            *self.used_ports.entry(p.clone()).or_default() += 1;
        }
    }

    /// Takes `pod`'s requests, ports and one from the count (not from the pod list).
    pub fn take_share(&mut self, pod: &PodInfo) {
        self.pod_count = self.pod_count.saturating_sub(1);
        self.requested.sub(&pod.requests);
        self.non_zero_requested.0 -= pod.non_zero.0;
        self.non_zero_requested.1 -= pod.non_zero.1;
        for p in &pod.host_ports {
            if let Some(n) = self.used_ports.get_mut(p) {
                *n -= 1;
                if *n == 0 {
                    self.used_ports.remove(p);
                }
            }
        }
    }

    /// The value of label `key`: the node's topology domain for that key.
    pub fn domain(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}
