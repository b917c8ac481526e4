//! DaemonSet controller, as Kubernetes' `pkg/controller/daemon` keeps one pod on every
//! eligible node: a node whose labels the template's `nodeSelector` and required node
//! affinity accept and whose NoSchedule and NoExecute taints its tolerations tolerate,
//! with the tolerations Kubernetes adds to every daemon pod (not-ready and unreachable
//! NoExecute; disk, memory and PID pressure and unschedulable NoSchedule; network
//! unavailable for host-network pods). A pod stays on a node whose new NoSchedule taint
//! it does not tolerate, and goes from one whose NoExecute taint it does not. The taints
//! a node's conditions imply count as the scheduler counts them, so a node that is not
//! Ready gets no new daemon pod (Kubernetes' node lifecycle controller taints it so).
//!
//! As Kubernetes ≥ 1.12 does, pods go through the default scheduler, pinned to their node
//! by a required node affinity `matchFields metadata.name In [node]`. Updates roll by the
//! template hash (label `controller-revision-hash`; no ControllerRevision objects):
//! `RollingUpdate` replaces pods within `maxUnavailable` (default 1), or surges with
//! `maxSurge`; `OnDelete` replaces a pod only when someone deletes it. The status carries
//! what `kubectl rollout status ds/x` reads (`observedGeneration`,
//! `desiredNumberScheduled`, `updatedNumberScheduled`, `numberAvailable`, ...).
//!
//! Pods come from an [`OwnerIndex`] fed by one watch of all pods, nodes from a reflector
//! of Nodes; a node event wakes the DaemonSets only when what placement reads of the node
//! (labels, taints, conditions' taints) changed, so heartbeats cost nothing. While pod
//! creations or deletions are still unseen ([`Expectations`]) a pass only reports status.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{stream, Stream, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodTemplateSpec,
    Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use tokio::sync::watch;

use super::deployment::{owner_ref, scaled, template_hash};
use super::informer::Informer;
use super::replicaset::{availability, is_ready, phase};
use super::{Error, Expectations, OwnerIndex};
use crate::scheduler::node_info::NodeInfo;
use crate::scheduler::plugins::{node_affinity, taints};
use crate::scheduler::pod_info::PodInfo;

/// Label carrying the template hash on a DaemonSet's pods.
pub const HASH_LABEL: &str = "controller-revision-hash";

/// Pods created or deleted per pass at most (Kubernetes' `BurstReplicas`).
const BURST: usize = 250;
/// The first wait before a failed daemon pod is deleted again on the same node.
const FAILED_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest such wait.
const FAILED_BACKOFF_MAX: Duration = Duration::from_secs(900);

/// The tolerations every daemon pod gets (Kubernetes' AddOrUpdateDaemonPodTolerations):
/// (key, effect); the last only for host-network pods.
const DAEMON_TOLERATIONS: &[(&str, &str)] = &[
    ("node.kubernetes.io/not-ready", "NoExecute"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ("node.kubernetes.io/network-unavailable", "NoSchedule"),
];

/// What every reconcile shares: the client, the pod and node caches, and the back-off
/// of failed pods per (DaemonSet uid, node).
struct Context {
    client: kube::Client,
    pods: OwnerIndex<Pod>,
    expectations: Expectations,
    nodes: Store<Node>,
    failed_backoff: Mutex<FailedBackoff>,
}

/// Runs the controller until shutdown, reading pods from the shared `pods`.
pub(crate) async fn run(client: kube::Client, pods: &Informer<Pod>, shutdown: watch::Receiver<bool>) {
    let daemonsets: Api<DaemonSet> = Api::all(client.clone());
    let controller = Controller::new(daemonsets, watcher::Config::default());
    let (nodes, writer) = reflector::store();
    let ctx = Arc::new(Context {
        client: client.clone(),
        pods: pods.index(),
        expectations: Expectations::default(),
        nodes,
        failed_backoff: Mutex::new(FailedBackoff::default()),
    });
    let observer = ctx.clone();
    let pods = pods.subscribe(move |e| observer.expectations.observe(e));
    let node_events = watcher(Api::<Node>::all(client), watcher::Config::default()).default_backoff();
    let nodes = placement_changes(reflector::reflector(writer, node_events));
    // Any node that changed may change what every DaemonSet wants.
    let all = controller.store();
    controller
        .owns_stream(pods)
        .watches_stream(nodes, move |_node: Node| {
            all.state()
                .iter()
                .map(|ds| ObjectRef::from_obj(ds.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(super::stopped(shutdown))
        .run(reconcile, super::retry_soon, ctx)
        .for_each(|r| async move { super::log_result("daemonset", r) })
        .await;
}

/// What placement reads of a node: its labels and its taints, those its conditions imply
/// included (as the scheduler sees them).
fn placement_of(node: &Node) -> NodeInfo {
    let mut info = NodeInfo::placeholder(&node.name_any());
    info.set_node(node);
    info
}

fn placement_key(info: &NodeInfo) -> String {
    serde_json::to_string(&(&info.labels, &info.taints)).unwrap_or_default()
}

/// The nodes whose placement changed (or that came or went), out of a node watch: status
/// heartbeats pass without a reconcile. A relist that misses a node yields a stand-in
/// for it.
fn placement_changes(
    events: impl Stream<Item = Result<watcher::Event<Node>, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Result<Node, watcher::Error>> + Send + 'static {
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut relisted: Option<Vec<String>> = None;
    events
        .map(move |event| {
            let mut out: Vec<Result<Node, watcher::Error>> = Vec::new();
            match event {
                Ok(watcher::Event::Apply(node)) | Ok(watcher::Event::InitApply(node)) => {
                    let name = node.name_any();
                    if let Some(r) = relisted.as_mut() {
                        r.push(name.clone());
                    }
                    let key = placement_key(&placement_of(&node));
                    if seen.insert(name, key.clone()) != Some(key) {
                        out.push(Ok(node));
                    }
                }
                Ok(watcher::Event::Delete(node)) => {
                    seen.remove(&node.name_any());
                    out.push(Ok(node));
                }
                Ok(watcher::Event::Init) => relisted = Some(Vec::new()),
                Ok(watcher::Event::InitDone) => {
                    let present: std::collections::HashSet<String> =
                        relisted.take().unwrap_or_default().into_iter().collect();
                    let gone: Vec<String> = seen.keys().filter(|n| !present.contains(*n)).cloned().collect();
                    for name in gone {
                        seen.remove(&name);
                        out.push(Ok(Node {
                            metadata: ObjectMeta {
                                name: Some(name),
                                ..Default::default()
                            },
                            ..Default::default()
                        }));
                    }
                }
                Err(e) => out.push(Err(e)),
            }
            stream::iter(out)
        })
        .flatten()
}

// ---------------------------------------------------------------------------------------
// Placement

/// The tolerations of a daemon pod: the template's, with Kubernetes' daemon tolerations
/// added (an equal one of the template's replaced).
pub fn daemon_tolerations(template: &[Toleration], host_network: bool) -> Vec<Toleration> {
    let mut out = template.to_vec();
    for (key, effect) in DAEMON_TOLERATIONS {
        if *key == "node.kubernetes.io/network-unavailable" && !host_network {
            continue;
        }
        let toleration = Toleration {
            key: Some((*key).into()),
            operator: Some("Exists".into()),
            effect: Some((*effect).into()),
            ..Default::default()
        };
        let same = |t: &Toleration| {
            t.key == toleration.key
                && t.effect == toleration.effect
                && t.operator.as_deref().unwrap_or("Equal") == "Exists"
                && t.value.as_deref().unwrap_or("").is_empty()
        };
        match out.iter_mut().find(|t| same(t)) {
            Some(t) => *t = toleration,
            None => out.push(toleration),
        }
    }
    out
}

/// The required node affinity that pins a daemon pod to `node` (Kubernetes'
/// ReplaceDaemonSetPodNodeNameNodeAffinity): the template's required terms replaced by
/// `matchFields metadata.name In [node]`, the rest of the affinity kept.
pub fn pin_to_node(affinity: Option<Affinity>, node: &str) -> Affinity {
    let selector = NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.to_string()]),
            }]),
        }],
    };
    let mut affinity = affinity.unwrap_or_default();
    affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default)
        .required_during_scheduling_ignored_during_execution = Some(selector);
    affinity
}

/// The node a daemon pod is for: its `nodeName`, else the node its required affinity
/// pins it to (Kubernetes' GetTargetNodeName).
pub fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    let required = spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?;
    required
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| match r.values.as_deref() {
            Some([only]) => Some(only.clone()),
            _ => None,
        })
}

/// The template a DaemonSet's pods are made from: its own, with the hash label and the
/// daemon tolerations.
pub fn daemon_template(ds: &DaemonSet, hash: &str) -> PodTemplateSpec {
    let mut template = ds.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.into(), hash.to_string());
    if let Some(spec) = template.spec.as_mut() {
        let host_network = spec.host_network == Some(true);
        spec.tolerations = Some(daemon_tolerations(
            spec.tolerations.as_deref().unwrap_or_default(),
            host_network,
        ));
    }
    template
}

/// Whether a daemon pod should run on the node, and whether one there may stay
/// (Kubernetes' NodeShouldRunDaemonPod): the node must be the one the template names if
/// it names one, and accepted by its node selector and required affinity; an untolerated
/// NoSchedule or NoExecute taint keeps new pods out, and only NoExecute drives one out.
pub fn should_run(pod: &PodInfo, node: &NodeInfo) -> (bool, bool) {
    if pod.node_name.as_deref().is_some_and(|n| n != node.name) {
        return (false, false);
    }
    if !node_affinity::pod_accepts(pod, node) {
        return (false, false);
    }
    if taints::untolerated(&node.taints, &pod.tolerations, &["NoSchedule", "NoExecute"]).is_some() {
        let stays = taints::untolerated(&node.taints, &pod.tolerations, &["NoExecute"]).is_none();
        return (false, stays);
    }
    (true, true)
}

// ---------------------------------------------------------------------------------------
// Decisions

/// A daemon pod as the decisions see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonPod {
    /// Its uid.
    pub uid: String,
    /// Its name.
    pub name: String,
    /// Bound to its node (`spec.nodeName` set).
    pub scheduled: bool,
    /// Creation second.
    pub created: i64,
    /// `Failed` or `Succeeded`, or `None` while it runs (or waits to).
    pub finished: Option<&'static str>,
    /// Has a deletionTimestamp.
    pub deleting: bool,
    /// Made from the current template (its hash label is the current hash).
    pub updated: bool,
    /// Its Ready condition is True.
    pub ready: bool,
    /// Ready for `minReadySeconds`.
    pub available: bool,
    /// Ready but not yet available: how long until it is.
    pub available_in: Option<Duration>,
}

impl DaemonPod {
    /// The view of `pod` under the current `hash`.
    pub fn of(pod: &Pod, hash: &str, min_ready: i32, now: Timestamp) -> DaemonPod {
        let (available, available_in) = availability(pod, min_ready, now);
        DaemonPod {
            uid: pod.uid().unwrap_or_default(),
            name: pod.name_any(),
            scheduled: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some_and(|n| !n.is_empty()),
            created: pod.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second()),
            finished: match phase(pod) {
                "Failed" => Some("Failed"),
                "Succeeded" => Some("Succeeded"),
                _ => None,
            },
            deleting: pod.metadata.deletion_timestamp.is_some(),
            updated: pod.labels().get(HASH_LABEL).map(String::as_str) == Some(hash),
            ready: is_ready(pod),
            available,
            available_in,
        }
    }

    /// Kubernetes' podByCreationTimestampAndPhase: scheduled first, then oldest, then by name.
    fn age_key(&self) -> (bool, i64, &str) {
        (!self.scheduled, self.created, &self.name)
    }
}

/// One node and the DaemonSet's pods for it.
#[derive(Debug, Clone, Default)]
pub struct NodeState {
    /// The node's name.
    pub name: String,
    /// The Node object exists (pods may name a node that is gone).
    pub exists: bool,
    /// A daemon pod should run there.
    pub should_run: bool,
    /// A daemon pod already there may stay.
    pub should_continue: bool,
    /// The DaemonSet's pods for the node, finished and terminating ones included.
    pub pods: Vec<DaemonPod>,
}

/// What to do on one node (Kubernetes' podsShouldBeOnNode).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NodePlan {
    /// Create a daemon pod there.
    pub create: bool,
    /// Pods (uids) to delete.
    pub delete: Vec<String>,
    /// Failed pods (uids) to delete, subject to the failed-pod back-off.
    pub failed: Vec<String>,
}

/// What to do on one node: create the missing pod; else, where pods may stay, delete the
/// finished ones and all but one running (with surge, an old and a new one may run side by
/// side until the new one is available); else delete them all.
pub fn manage_node(node: &NodeState, surge: bool) -> NodePlan {
    let mut plan = NodePlan::default();
    if node.should_run && node.pods.is_empty() {
        plan.create = true;
        return plan;
    }
    if !node.should_continue {
        plan.delete = node
            .pods
            .iter()
            .filter(|p| !p.deleting)
            .map(|p| p.uid.clone())
            .collect();
        return plan;
    }
    let mut running: Vec<&DaemonPod> = Vec::new();
    for pod in node.pods.iter().filter(|p| !p.deleting) {
        match pod.finished {
            Some("Failed") => plan.failed.push(pod.uid.clone()),
            Some(_) => plan.delete.push(pod.uid.clone()),
            None => running.push(pod),
        }
    }
    running.sort_by(|a, b| a.age_key().cmp(&b.age_key()));
    if !surge {
        plan.delete.extend(running.iter().skip(1).map(|p| p.uid.clone()));
        return plan;
    }
    // Surge: the oldest new pod and the oldest old pod may both run, as long as the old
    // one is ready and the new one not yet available.
    let (mut oldest_new, mut oldest_old) = (None, None);
    for pod in running {
        let slot = if pod.updated { &mut oldest_new } else { &mut oldest_old };
        if slot.is_none() {
            *slot = Some(pod);
        } else {
            plan.delete.push(pod.uid.clone());
        }
    }
    if let (Some(new), Some(old)) = (oldest_new, oldest_old) {
        if !old.ready || new.available {
            plan.delete.push(old.uid.clone());
        }
    }
    plan
}

/// A rolling update's step (Kubernetes' rollingUpdate): old pods (uids) to delete and
/// nodes to create new pods on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RollPlan {
    /// Old pods to delete.
    pub delete: Vec<String>,
    /// Nodes that get a new pod beside their old one (surge).
    pub create: Vec<String>,
}

/// The node's one new and one old live pod, or `None` when it has more of either (the
/// node is left to [`manage_node`] first; Kubernetes' findUpdatedPodsOnNode).
fn updated_and_old(node: &NodeState) -> Option<(Option<&DaemonPod>, Option<&DaemonPod>)> {
    let (mut new, mut old) = (None, None);
    for pod in node.pods.iter().filter(|p| !p.deleting) {
        let slot = if pod.updated { &mut new } else { &mut old };
        if slot.is_some() {
            return None;
        }
        *slot = Some(pod);
    }
    Some((new, old))
}

/// The rolling update's next step over the nodes (sorted by name) that want a pod or
/// have one: without surge, delete old pods while no more than `max_unavailable` are
/// unavailable (unavailable old ones always go; the manage pass then creates their new
/// ones); with surge, create new pods beside old ones up to `max_surge`, and delete each
/// old one once its new one is available.
pub fn rolling_update(nodes: &[NodeState], max_surge: i32, max_unavailable: i32, desired: i32) -> RollPlan {
    let mut plan = RollPlan::default();
    let nodes: Vec<&NodeState> = nodes
        .iter()
        .filter(|n| n.should_run || n.pods.iter().any(|p| !(p.deleting && p.finished.is_some())))
        .collect();
    if max_surge == 0 {
        let mut unavailable = 0;
        let mut replace: Vec<String> = Vec::new();
        let mut candidates: Vec<String> = Vec::new();
        for node in &nodes {
            let Some((new, old)) = updated_and_old(node) else {
                unavailable += 1;
                continue;
            };
            match (new, old) {
                (None, None) | (Some(_), Some(_)) => unavailable += 1,
                (Some(new), None) => {
                    if !new.available {
                        unavailable += 1;
                    }
                }
                (None, Some(old)) => {
                    if !old.available {
                        replace.push(old.uid.clone());
                        unavailable += 1;
                    } else if unavailable < max_unavailable {
                        candidates.push(old.uid.clone());
                    }
                }
            }
        }
        let room = (max_unavailable - unavailable).clamp(0, candidates.len() as i32) as usize;
        plan.delete = replace;
        plan.delete.extend(candidates.into_iter().take(room));
        return plan;
    }

    let (mut surging, mut available) = (0, 0);
    let mut allowed_new: Vec<String> = Vec::new();
    let mut candidates: Vec<String> = Vec::new();
    let mut sunset: Vec<String> = Vec::new();
    for node in &nodes {
        let Some((new, old)) = updated_and_old(node) else {
            surging += 1;
            continue;
        };
        if old.or(new).is_some_and(|p| p.available) {
            available += 1;
        }
        match (new, old) {
            (_, None) => {}
            (None, Some(old)) => {
                if !node.should_run {
                    if old.available {
                        sunset.push(old.uid.clone());
                    } else {
                        plan.delete.push(old.uid.clone());
                    }
                } else if !old.available {
                    allowed_new.push(node.name.clone());
                } else if surging < max_surge {
                    candidates.push(node.name.clone());
                }
            }
            (Some(new), Some(old)) => {
                if new.available {
                    plan.delete.push(old.uid.clone());
                } else {
                    surging += 1;
                }
            }
        }
    }
    // Pods on nodes that no longer want one go only while enough stay available.
    let deletable = (available - desired).clamp(0, sunset.len() as i32) as usize;
    plan.delete.extend(sunset.into_iter().take(deletable));
    let room = (max_surge - surging).clamp(0, candidates.len() as i32) as usize;
    plan.create = allowed_new;
    plan.create.extend(candidates.into_iter().take(room));
    plan
}

/// The status for the nodes (Kubernetes' updateDaemonSetStatus): per node that should run
/// a pod, whether one is there, and whether its oldest is ready, available and updated;
/// pods on nodes that should not run one are misscheduled. `observed` raises
/// `observedGeneration` (only when the pass acted on this generation).
pub fn compute_status(ds: &DaemonSet, nodes: &[NodeState], observed: bool) -> DaemonSetStatus {
    let mut status = DaemonSetStatus {
        observed_generation: ds.status.as_ref().and_then(|s| s.observed_generation),
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
        ..Default::default()
    };
    if observed {
        status.observed_generation = ds.metadata.generation;
    }
    let (mut available, mut updated) = (0, 0);
    for node in nodes.iter().filter(|n| n.exists) {
        let mut pods: Vec<&DaemonPod> = node
            .pods
            .iter()
            .filter(|p| !(p.deleting && p.finished.is_some()))
            .collect();
        pods.sort_by(|a, b| a.age_key().cmp(&b.age_key()));
        if !node.should_run {
            if !pods.is_empty() {
                status.number_misscheduled += 1;
            }
            continue;
        }
        status.desired_number_scheduled += 1;
        let Some(pod) = pods.first() else { continue };
        status.current_number_scheduled += 1;
        if pod.ready {
            status.number_ready += 1;
            if pod.available {
                available += 1;
            }
        }
        if pod.updated {
            updated += 1;
        }
    }
    status.number_available = Some(available);
    status.number_unavailable = Some(status.desired_number_scheduled - available);
    status.updated_number_scheduled = Some(updated);
    status
}

/// `(maxSurge, maxUnavailable)` of a RollingUpdate DaemonSet for `desired` nodes, both
/// rounded up from percentages; never both zero (Kubernetes' updatedDesiredNodeCounts).
pub fn fenceposts(ds: &DaemonSet, desired: i32) -> (i32, i32) {
    let ru = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let surge = scaled(ru.and_then(|r| r.max_surge.as_ref()), "0%", desired, true).max(0);
    let mut unavailable = match ru.and_then(|r| r.max_unavailable.as_ref()) {
        None => 1,
        given => scaled(given, "0%", desired, true).max(0),
    };
    if desired > 0 && surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable)
}

/// Back-off of deleting failed daemon pods per (DaemonSet, node), so that a node that
/// keeps failing them is not hot-looped (Kubernetes' failedPodsBackoff: 1 s doubling to
/// 15 min, forgotten after twice that without failures).
#[derive(Debug, Default)]
pub struct FailedBackoff {
    entries: HashMap<String, (Instant, Duration)>,
}

impl FailedBackoff {
    /// How long deletions on `key` must still wait, if at all.
    pub fn remaining(&self, key: &str, now: Instant) -> Option<Duration> {
        let (last, delay) = self.entries.get(key)?;
        let since = now.saturating_duration_since(*last);
        (since < *delay).then(|| *delay - since)
    }

    /// Records a deletion on `key`, doubling its delay.
    pub fn next(&mut self, key: &str, now: Instant) {
        self.entries
            .retain(|_, (last, _)| now.saturating_duration_since(*last) <= 2 * FAILED_BACKOFF_MAX);
        let delay = match self.entries.get(key) {
            Some((_, d)) => (*d * 2).min(FAILED_BACKOFF_MAX),
            None => FAILED_BACKOFF_BASE,
        };
        self.entries.insert(key.to_string(), (now, delay));
    }
}

// ---------------------------------------------------------------------------------------
// Reconcile

/// The pod to create for `ds` on `node`, from the daemon template.
fn pod_for(ds: &DaemonSet, template: &PodTemplateSpec, node: &str) -> Result<Pod, Error> {
    let meta = template.metadata.clone().unwrap_or_default();
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.affinity = Some(pin_to_node(spec.affinity.take(), node));
    Ok(Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", ds.name_any())),
            namespace: ds.namespace(),
            labels: meta.labels,
            annotations: meta.annotations,
            owner_references: Some(vec![owner_ref(ds)?]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    })
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.pods.ready().await;
    // The store's writer lives as long as the controller.
    let _ = ctx.nodes.wait_until_ready().await;
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = ds
        .namespace()
        .ok_or_else(|| Error::Malformed("daemonset without namespace".into()))?;
    let name = ds.name_any();
    let uid = ds
        .uid()
        .ok_or_else(|| Error::Malformed("daemonset without uid".into()))?;
    let spec = ds
        .spec
        .as_ref()
        .ok_or_else(|| Error::Malformed(format!("daemonset {name} has no spec")))?;
    let hash = template_hash(&spec.template);
    let template = daemon_template(&ds, &hash);
    let info = PodInfo::new(&Pod {
        metadata: template.metadata.clone().unwrap_or_default(),
        spec: template.spec.clone(),
        status: None,
    });
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = super::now();

    let owned = ctx.pods.owned_by(&uid);
    let cached = super::cache_state(&owned);
    let (adds, deletes) = ctx.expectations.outstanding(&uid, &cached);
    let settled = adds.is_empty() && deletes.is_empty();

    // Every node, and every node a pod names, by name.
    let mut nodes: BTreeMap<String, NodeState> = BTreeMap::new();
    for node in ctx.nodes.state() {
        let placement = placement_of(&node);
        let (should_run, should_continue) = should_run(&info, &placement);
        nodes.insert(
            placement.name.clone(),
            NodeState {
                name: placement.name,
                exists: true,
                should_run,
                should_continue,
                pods: Vec::new(),
            },
        );
    }
    let mut by_uid: HashMap<String, &Pod> = HashMap::new();
    let mut unplaceable: Vec<&Pod> = Vec::new();
    for pod in &owned {
        let Some(target) = target_node(pod) else {
            continue;
        };
        let view = DaemonPod::of(pod, &hash, min_ready, now);
        by_uid.insert(view.uid.clone(), pod.as_ref());
        let node = nodes.entry(target.clone()).or_insert_with(|| NodeState {
            name: target,
            ..Default::default()
        });
        if !node.exists && !view.scheduled && !view.deleting {
            // Never schedulable: its node is gone (Kubernetes' getUnscheduledPodsWithoutNode).
            unplaceable.push(pod.as_ref());
        }
        node.pods.push(view);
    }
    let states: Vec<NodeState> = nodes.into_values().collect();
    let status = compute_status(&ds, &states, settled);
    let mut recheck: Option<Duration> = None;
    let mut sooner = |after: Duration| recheck = Some(recheck.map_or(after, |r: Duration| r.min(after)));
    if min_ready > 0 {
        for pod in states.iter().flat_map(|n| n.pods.iter()) {
            if let Some(wait) = pod.available_in {
                sooner(wait);
            }
        }
    }

    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    if settled {
        let strategy = spec.update_strategy.as_ref().and_then(|s| s.type_.as_deref());
        let rolling = strategy.is_none_or(|t| t == "RollingUpdate");
        let (max_surge, max_unavailable) = fenceposts(&ds, status.desired_number_scheduled);
        let surge = rolling && max_surge > 0;
        let mut create: Vec<String> = Vec::new();
        let mut delete: Vec<String> = unplaceable.iter().filter_map(|p| p.uid()).collect();
        let clock = Instant::now();
        for node in states.iter().filter(|n| n.exists) {
            let plan = manage_node(node, surge);
            if plan.create {
                create.push(node.name.clone());
            }
            delete.extend(plan.delete);
            if !plan.failed.is_empty() {
                let key = format!("{uid}/{}", node.name);
                let mut backoff = ctx.failed_backoff.lock().unwrap_or_else(|e| e.into_inner());
                match backoff.remaining(&key, clock) {
                    Some(wait) => sooner(wait),
                    None => {
                        backoff.next(&key, clock);
                        tracing::info!(object = %format!("{ns}/{name}"), node = %node.name, "deleting failed daemon pod");
                        delete.extend(plan.failed);
                    }
                }
            }
        }
        if create.is_empty() && delete.is_empty() && rolling {
            let plan = rolling_update(&states, max_surge, max_unavailable, status.desired_number_scheduled);
            if !plan.delete.is_empty() || !plan.create.is_empty() {
                tracing::info!(object = %format!("{ns}/{name}"), replace = plan.delete.len(), surge = plan.create.len(), "rolling update step");
            }
            create = plan.create;
            delete = plan.delete;
        }
        for uid_to_delete in delete.iter().take(BURST) {
            let Some(pod) = by_uid.get(uid_to_delete) else { continue };
            tracing::info!(object = %format!("{ns}/{}", pod.name_any()), daemonset = %name, "deleting daemon pod");
            super::delete_pod(&ctx.expectations, &pods_api, &uid, pod).await?;
        }
        for node in create.iter().take(BURST) {
            let pod = pod_for(&ds, &template, node)?;
            let created = super::create_pod(&ctx.expectations, &pods_api, &uid, &pod).await?;
            tracing::info!(object = %format!("{ns}/{}", created.name_any()), daemonset = %name, node = %node, "created daemon pod");
        }
    }

    if ds.status.as_ref() != Some(&status) {
        let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
        super::write_status(&api, &*ds, |d| d.status = Some(status)).await?;
    }
    Ok(match recheck {
        Some(after) => Action::requeue(after + Duration::from_millis(200)),
        None => Action::await_change(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, labels: serde_json::Value, taints: serde_json::Value) -> NodeInfo {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap();
        placement_of(&node)
    }

    fn ds(spec: serde_json::Value) -> DaemonSet {
        let mut template = json!({
            "metadata": {"labels": {"app": "d"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        });
        if let Some(extra) = spec.get("template") {
            for (k, v) in extra.as_object().unwrap() {
                template["spec"][k] = v.clone();
            }
        }
        let mut spec = spec.clone();
        spec["template"] = template;
        spec["selector"] = json!({"matchLabels": {"app": "d"}});
        serde_json::from_value(json!({
            "metadata": {"name": "d", "namespace": "default", "uid": "ds-uid", "generation": 2},
            "spec": spec,
        }))
        .unwrap()
    }

    fn info_of(ds: &DaemonSet) -> PodInfo {
        let t = daemon_template(ds, "h");
        PodInfo::new(&Pod {
            metadata: t.metadata.unwrap_or_default(),
            spec: t.spec,
            status: None,
        })
    }

    #[test]
    fn nodes_a_daemonset_wants_follow_selectors_affinity_and_taints() {
        let nodes = [
            node("plain", json!({"disk": "ssd"}), json!([])),
            node("hdd", json!({"disk": "hdd"}), json!([])),
            node(
                "gpu",
                json!({"disk": "ssd"}),
                json!([{"key": "gpu", "effect": "NoSchedule"}]),
            ),
            node(
                "evict",
                json!({"disk": "ssd"}),
                json!([{"key": "bad", "effect": "NoExecute"}]),
            ),
            node(
                "soft",
                json!({"disk": "ssd"}),
                json!([{"key": "spot", "effect": "PreferNoSchedule"}]),
            ),
            node(
                "pressured",
                json!({"disk": "ssd"}),
                json!([{"key": "node.kubernetes.io/memory-pressure", "effect": "NoSchedule"}]),
            ),
            node(
                "unreachable",
                json!({"disk": "ssd"}),
                json!([{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]),
            ),
            node(
                "no-network",
                json!({"disk": "ssd"}),
                json!([{"key": "node.kubernetes.io/network-unavailable", "effect": "NoSchedule"}]),
            ),
        ];
        // (template spec) -> nodes as "name:run/stay"
        let cases: Vec<(serde_json::Value, &[&str])> = vec![
            (
                json!({}),
                &[
                    "plain:11",
                    "hdd:11",
                    "gpu:01",
                    "evict:00",
                    "soft:11",
                    "pressured:11",
                    "unreachable:11",
                    "no-network:01",
                ],
            ),
            (
                json!({"nodeSelector": {"disk": "ssd"}}),
                &[
                    "plain:11",
                    "hdd:00",
                    "gpu:01",
                    "evict:00",
                    "soft:11",
                    "pressured:11",
                    "unreachable:11",
                    "no-network:01",
                ],
            ),
            (
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["hdd"]}]}]}}}}),
                &[
                    "plain:00",
                    "hdd:11",
                    "gpu:00",
                    "evict:00",
                    "soft:00",
                    "pressured:00",
                    "unreachable:00",
                    "no-network:00",
                ],
            ),
            (
                json!({"tolerations": [{"key": "gpu", "operator": "Exists"}], "hostNetwork": true}),
                &[
                    "plain:11",
                    "hdd:11",
                    "gpu:11",
                    "evict:00",
                    "soft:11",
                    "pressured:11",
                    "unreachable:11",
                    "no-network:11",
                ],
            ),
            (
                json!({"nodeName": "hdd"}),
                &[
                    "plain:00",
                    "hdd:11",
                    "gpu:00",
                    "evict:00",
                    "soft:00",
                    "pressured:00",
                    "unreachable:00",
                    "no-network:00",
                ],
            ),
        ];
        for (template, want) in cases {
            let info = info_of(&ds(json!({"template": template})));
            let got: Vec<String> = nodes
                .iter()
                .map(|n| {
                    let (run, stay) = should_run(&info, n);
                    format!("{}:{}{}", n.name, run as u8, stay as u8)
                })
                .collect();
            assert_eq!(got, want, "{template}");
        }
    }

    #[test]
    fn a_node_that_is_not_ready_gets_no_new_pod_but_keeps_its_own() {
        let n: Node = serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]},
        }))
        .unwrap();
        let info = info_of(&ds(json!({})));
        assert_eq!(should_run(&info, &placement_of(&n)), (false, true));
    }

    #[test]
    fn daemon_pods_tolerate_node_problems_and_are_pinned_by_affinity() {
        let d = ds(json!({"template": {"tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30},
            {"key": "mine", "operator": "Exists"}]}}));
        let t = daemon_template(&d, "abc");
        assert_eq!(
            t.metadata
                .as_ref()
                .unwrap()
                .labels
                .as_ref()
                .unwrap()
                .get(HASH_LABEL)
                .map(String::as_str),
            Some("abc")
        );
        let tolerations = t.spec.as_ref().unwrap().tolerations.clone().unwrap();
        let keys: Vec<(String, String, Option<i64>)> = tolerations
            .iter()
            .map(|t| {
                (
                    t.key.clone().unwrap_or_default(),
                    t.effect.clone().unwrap_or_default(),
                    t.toleration_seconds,
                )
            })
            .collect();
        assert_eq!(
            keys,
            [
                ("node.kubernetes.io/not-ready".into(), "NoExecute".into(), None),
                ("mine".into(), String::new(), None),
                ("node.kubernetes.io/unreachable".into(), "NoExecute".into(), None),
                ("node.kubernetes.io/disk-pressure".into(), "NoSchedule".into(), None),
                ("node.kubernetes.io/memory-pressure".into(), "NoSchedule".into(), None),
                ("node.kubernetes.io/pid-pressure".into(), "NoSchedule".into(), None),
                ("node.kubernetes.io/unschedulable".into(), "NoSchedule".into(), None),
            ]
        );

        let pod = pod_for(&d, &t, "n7").unwrap();
        assert_eq!(target_node(&pod).as_deref(), Some("n7"));
        let required = pod
            .spec
            .as_ref()
            .unwrap()
            .affinity
            .clone()
            .unwrap()
            .node_affinity
            .unwrap();
        let terms = required
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 1);
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.controller), ("DaemonSet", Some(true)));
        // A template's own required terms are replaced, its preferred ones kept.
        let affinity: Affinity = serde_json::from_value(json!({"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "a", "operator": "Exists"}]}]},
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 1, "preference": {"matchExpressions": [{"key": "b", "operator": "Exists"}]}}]}}))
        .unwrap();
        let pinned = pin_to_node(Some(affinity), "n1").node_affinity.unwrap();
        let term = &pinned
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms[0];
        assert!(term.match_expressions.is_none());
        assert_eq!(
            pinned
                .preferred_during_scheduling_ignored_during_execution
                .unwrap()
                .len(),
            1
        );
        let mut bound = pod.clone();
        bound.spec.as_mut().unwrap().node_name = Some("other".into());
        assert_eq!(target_node(&bound).as_deref(), Some("other"));
    }

    /// A pod: `u`pdated or old, `r`eady+available, `w` ready not yet available, else
    /// neither; `F`ailed, `S`ucceeded, `D`eleting.
    fn p(uid: &str, created: i64, flags: &str) -> DaemonPod {
        DaemonPod {
            uid: uid.into(),
            name: uid.into(),
            scheduled: true,
            created,
            finished: if flags.contains('F') {
                Some("Failed")
            } else if flags.contains('S') {
                Some("Succeeded")
            } else {
                None
            },
            deleting: flags.contains('D'),
            updated: flags.contains('u'),
            ready: flags.contains('r') || flags.contains('w'),
            available: flags.contains('r'),
            available_in: None,
        }
    }

    fn state(name: &str, run: bool, stay: bool, pods: Vec<DaemonPod>) -> NodeState {
        NodeState {
            name: name.into(),
            exists: true,
            should_run: run,
            should_continue: stay,
            pods,
        }
    }

    #[test]
    fn each_node_gets_one_pod_and_loses_the_wrong_ones() {
        // (node, surge) -> (create, delete, failed)
        type Case<'a> = (NodeState, bool, (bool, Vec<&'a str>, Vec<&'a str>));
        let cases: Vec<Case> = vec![
            (state("n", true, true, vec![]), false, (true, vec![], vec![])),
            (
                state("n", true, true, vec![p("a", 1, "ur")]),
                false,
                (false, vec![], vec![]),
            ),
            // Only a terminating pod: wait for it to go.
            (
                state("n", true, true, vec![p("a", 1, "urD")]),
                false,
                (false, vec![], vec![]),
            ),
            // Two running: the newest goes.
            (
                state("n", true, true, vec![p("b", 2, "ur"), p("a", 1, "ur")]),
                false,
                (false, vec!["b"], vec![]),
            ),
            (
                state("n", true, true, vec![p("a", 1, "uF"), p("b", 2, "uS")]),
                false,
                (false, vec!["b"], vec!["a"]),
            ),
            // A node that should not keep it (an untolerated NoExecute taint, a label gone).
            (
                state("n", false, false, vec![p("a", 1, "ur"), p("b", 1, "uD")]),
                false,
                (false, vec!["a"], vec![]),
            ),
            // A new NoSchedule taint: the pod stays, none is added.
            (
                state("n", false, true, vec![p("a", 1, "ur")]),
                false,
                (false, vec![], vec![]),
            ),
            (state("n", false, true, vec![]), false, (false, vec![], vec![])),
            // Surge: the old pod stays while the new one is not available...
            (
                state("n", true, true, vec![p("old", 1, "r"), p("new", 2, "uw")]),
                true,
                (false, vec![], vec![]),
            ),
            // ... and goes once it is, or at once if it is not ready itself.
            (
                state("n", true, true, vec![p("old", 1, "r"), p("new", 2, "ur")]),
                true,
                (false, vec!["old"], vec![]),
            ),
            (
                state("n", true, true, vec![p("old", 1, ""), p("new", 2, "u")]),
                true,
                (false, vec!["old"], vec![]),
            ),
        ];
        for (node, surge, want) in cases {
            let got = manage_node(&node, surge);
            let want = NodePlan {
                create: want.0,
                delete: want.1.iter().map(|s| s.to_string()).collect(),
                failed: want.2.iter().map(|s| s.to_string()).collect(),
            };
            assert_eq!(got, want, "{node:?} surge {surge}");
        }
    }

    #[test]
    fn rolling_updates_replace_within_max_unavailable_or_max_surge() {
        let old = |n: &str, flags: &str| state(n, true, true, vec![p(&format!("{n}-old"), 1, flags)]);
        let new = |n: &str, flags: &str| state(n, true, true, vec![p(&format!("{n}-new"), 2, &format!("u{flags}"))]);
        // (nodes, surge, unavailable) -> (delete, create)
        type Case<'a> = (Vec<NodeState>, i32, i32, (Vec<&'a str>, Vec<&'a str>));
        let cases: Vec<Case> = vec![
            // All old and available: one at a time (a node that wants no pod is no matter).
            (
                vec![
                    old("a", "r"),
                    old("b", "r"),
                    old("c", "r"),
                    state("tainted", false, true, vec![]),
                ],
                0,
                1,
                (vec!["a-old"], vec![]),
            ),
            (
                vec![old("a", "r"), old("b", "r"), old("c", "r")],
                0,
                2,
                (vec!["a-old", "b-old"], vec![]),
            ),
            // A new pod not yet available uses up the budget.
            (vec![new("a", ""), old("b", "r"), old("c", "r")], 0, 1, (vec![], vec![])),
            (
                vec![new("a", "r"), old("b", "r"), old("c", "r")],
                0,
                1,
                (vec!["b-old"], vec![]),
            ),
            // A node waiting for its pod counts as unavailable.
            (
                vec![state("a", true, true, vec![]), old("b", "r")],
                0,
                1,
                (vec![], vec![]),
            ),
            // Unavailable old pods are replaced regardless of the budget.
            (
                vec![new("a", ""), old("b", ""), old("c", "r")],
                0,
                1,
                (vec!["b-old"], vec![]),
            ),
            // Done.
            (vec![new("a", "r"), new("b", "r")], 0, 1, (vec![], vec![])),
            // Surge: new pods beside old ones, up to maxSurge.
            (
                vec![old("a", "r"), old("b", "r"), old("c", "r")],
                1,
                0,
                (vec![], vec!["a"]),
            ),
            (
                vec![
                    state("a", true, true, vec![p("a-old", 1, "r"), p("a-new", 2, "uw")]),
                    old("b", "r"),
                ],
                1,
                0,
                (vec![], vec![]),
            ),
            (
                vec![
                    state("a", true, true, vec![p("a-old", 1, "r"), p("a-new", 2, "ur")]),
                    old("b", "r"),
                ],
                1,
                0,
                (vec!["a-old"], vec!["b"]),
            ),
            // An unavailable old pod gets its new one at once.
            (vec![old("a", ""), old("b", "r")], 1, 0, (vec![], vec!["a", "b"])),
        ];
        for (nodes, surge, unavailable, want) in cases {
            let desired = nodes.iter().filter(|n| n.should_run).count() as i32;
            let got = rolling_update(&nodes, surge, unavailable, desired);
            let want = RollPlan {
                delete: want.0.iter().map(|s| s.to_string()).collect(),
                create: want.1.iter().map(|s| s.to_string()).collect(),
            };
            assert_eq!(got, want, "surge {surge}, unavailable {unavailable}, {nodes:?}");
        }
    }

    #[test]
    fn status_counts_the_oldest_pod_per_wanted_node() {
        let mut gone = state("gone", false, false, vec![p("x", 1, "ur")]);
        gone.exists = false;
        let nodes = vec![
            state("a", true, true, vec![p("a1", 1, "ur")]),
            state("b", true, true, vec![p("b1", 1, "w"), p("b2", 2, "ur")]),
            state("c", true, true, vec![]),
            state("d", false, true, vec![p("d1", 1, "r")]),
            state("e", true, true, vec![p("e1", 1, "urSD")]),
            gone,
        ];
        let d = ds(json!({}));
        let s = compute_status(&d, &nodes, true);
        assert_eq!(
            (
                s.desired_number_scheduled,
                s.current_number_scheduled,
                s.number_ready,
                s.number_available,
                s.updated_number_scheduled,
                s.number_misscheduled,
                s.number_unavailable,
                s.observed_generation,
            ),
            (4, 2, 2, Some(1), Some(1), 1, Some(3), Some(2))
        );
        // Expectations still unmet: the generation is not claimed as observed.
        assert_eq!(compute_status(&d, &nodes, false).observed_generation, None);
    }

    #[test]
    fn fenceposts_default_to_one_unavailable_and_round_percentages_up() {
        let cases = [
            (json!({}), 10, (0, 1)),
            (
                json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 3}}}),
                10,
                (0, 3),
            ),
            (
                json!({"updateStrategy": {"rollingUpdate": {"maxUnavailable": "25%"}}}),
                10,
                (0, 3),
            ),
            (
                json!({"updateStrategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": "10%"}}}),
                15,
                (2, 0),
            ),
            (
                json!({"updateStrategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 0}}}),
                4,
                (0, 1),
            ),
        ];
        for (spec, desired, want) in cases {
            assert_eq!(fenceposts(&ds(spec.clone()), desired), want, "{spec}");
        }
    }

    #[test]
    fn failed_pod_deletions_back_off_per_node() {
        let mut b = FailedBackoff::default();
        let t0 = Instant::now();
        assert_eq!(b.remaining("k", t0), None);
        b.next("k", t0);
        assert_eq!(b.remaining("k", t0), Some(Duration::from_secs(1)));
        assert_eq!(b.remaining("k", t0 + Duration::from_secs(1)), None);
        b.next("k", t0 + Duration::from_secs(1));
        assert_eq!(
            b.remaining("k", t0 + Duration::from_secs(2)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(b.remaining("other", t0), None);
    }
}
