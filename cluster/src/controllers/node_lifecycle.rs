//! Node lifecycle, as Kubernetes' node lifecycle controller and its NoExecute taint
//! manager do it: a node whose Lease in `kube-node-lease` goes unrenewed for the grace
//! period (40 s) gets `Unknown` conditions ("Kubelet stopped posting node status."),
//! the `node.kubernetes.io/unreachable` taints (NoSchedule and NoExecute) and its pods
//! marked not ready; a node whose agent reports `Ready=False` gets the `not-ready`
//! taints. Pods on a NoExecute-tainted node are evicted once their toleration runs out
//! (at once without one; `tolerationSeconds` after the taint, 300 s by default through
//! admission; never when the toleration has no limit), so their controllers replace
//! them elsewhere. The taints go when the node renews its Lease and reports Ready again.
//!
//! One loop owns the state, fed by watches of Nodes, node Leases and Pods; what is due
//! later (a Lease's expiry, an eviction) waits in a deadline heap, so nothing sweeps.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::scheduler::plugins::taints::tolerates;

/// The taint key of a node whose Lease expired.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint key of a node whose agent reports it not ready.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";

/// How the controller judges nodes.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a node's Lease may go unrenewed before the node is unreachable
    /// (kube-controller-manager's `--node-monitor-grace-period`).
    pub grace_period: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grace_period: Duration::from_secs(40),
        }
    }
}

/// What a node is, for its taints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Renewing its Lease and ready.
    Ready,
    /// Renewing its Lease, but its agent says it is not ready.
    NotReady,
    /// Its Lease expired.
    Unreachable,
}

impl Health {
    /// The taint key this state asks for.
    fn taint_key(self) -> Option<&'static str> {
        match self {
            Health::Ready => None,
            Health::NotReady => Some(NOT_READY),
            Health::Unreachable => Some(UNREACHABLE),
        }
    }
}

/// The node's taints for `health`: the lifecycle taints it does not ask for removed,
/// the ones it asks for added (NoSchedule and NoExecute), the others kept. `None` if
/// nothing changes.
pub fn desired_taints(current: &[Taint], health: Health, now: Time) -> Option<Vec<Taint>> {
    let want = health.taint_key();
    let ours = |t: &Taint| {
        (t.key == UNREACHABLE || t.key == NOT_READY) && matches!(t.effect.as_str(), "NoSchedule" | "NoExecute")
    };
    let mut out: Vec<Taint> = current
        .iter()
        .filter(|t| !ours(t) || Some(t.key.as_str()) == want)
        .cloned()
        .collect();
    if let Some(key) = want {
        for effect in ["NoSchedule", "NoExecute"] {
            if !out.iter().any(|t| t.key == key && t.effect == effect) {
                out.push(Taint {
                    key: key.to_string(),
                    effect: effect.to_string(),
                    time_added: (effect == "NoExecute").then(|| now.clone()),
                    value: None,
                });
            }
        }
    }
    (out != current).then_some(out)
}

/// How long after the NoExecute taint `taint` a pod with `tolerations` may stay:
/// `Some(ZERO)` if nothing tolerates it, `None` if a toleration lasts forever.
pub fn eviction_delay(tolerations: &[Toleration], taint: &Taint) -> Option<Duration> {
    let matching: Vec<&Toleration> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
    if matching.is_empty() {
        return Some(Duration::ZERO);
    }
    if matching.iter().any(|t| t.toleration_seconds.is_none()) {
        return None;
    }
    matching
        .iter()
        .filter_map(|t| t.toleration_seconds)
        .min()
        .map(|s| Duration::from_secs(s.max(0) as u64))
}

/// The agent's own Ready condition: true, false, or unknown/absent.
fn agent_ready(node: &Node) -> Option<bool> {
    let c = node
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    match c.status.as_str() {
        "True" => Some(true),
        "False" => Some(false),
        _ => None,
    }
}

/// What the loop is told (boxed: the objects differ much in size).
enum Input {
    Node(Box<watcher::Event<Node>>),
    Lease(Box<watcher::Event<Lease>>),
    Pod(Box<watcher::Event<Pod>>),
}

/// What is due at a deadline.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    /// The node's Lease expires unless renewed since.
    Lease(String),
    /// The pod (node, uid) is to be evicted if it is still there and still tainted.
    Evict(String, String),
}

/// One node as the controller knows it.
#[derive(Default)]
struct NodeState {
    node: Option<Node>,
    /// The Lease's last `renewTime`, and when the controller saw it change.
    renewed: Option<String>,
    seen: Option<Instant>,
    health: Option<Health>,
    /// When the NoExecute taint went on (for tolerationSeconds), by our clock.
    tainted_at: Option<Instant>,
}

/// A pod bound to a node, as far as eviction needs it.
struct PodEntry {
    namespace: String,
    name: String,
    tolerations: Vec<Toleration>,
    deleting: bool,
}

struct Lifecycle {
    client: kube::Client,
    config: Config,
    nodes: HashMap<String, NodeState>,
    /// Node name -> pod uid -> pod.
    pods: HashMap<String, HashMap<String, PodEntry>>,
    /// Pod uid -> its node.
    pod_node: HashMap<String, String>,
    deadlines: BinaryHeap<Reverse<(Instant, Due)>>,
}

fn watch_all<K>(api: Api<K>, config: watcher::Config) -> impl Stream<Item = watcher::Event<K>> + Send
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher(api, config).default_backoff().filter_map(|e| async move {
        match e {
            Ok(e) => Some(e),
            Err(err) => {
                tracing::debug!(error = %err, "node lifecycle watch failed; retrying");
                None
            }
        }
    })
}

/// Runs the controller until shutdown.
pub async fn run(client: kube::Client, config: Config, shutdown: watch::Receiver<bool>) {
    let nodes =
        watch_all(Api::<Node>::all(client.clone()), watcher::Config::default()).map(|e| Input::Node(Box::new(e)));
    let leases = watch_all(
        Api::<Lease>::namespaced(client.clone(), "kube-node-lease"),
        watcher::Config::default(),
    )
    .map(|e| Input::Lease(Box::new(e)));
    // Only bound pods can be evicted from a node.
    let bound = watcher::Config::default().fields("spec.nodeName!=");
    let pods = watch_all(Api::<Pod>::all(client.clone()), bound).map(|e| Input::Pod(Box::new(e)));
    let mut inputs = futures::stream::select(futures::stream::select(nodes, leases), pods).boxed();
    let mut lifecycle = Lifecycle {
        client,
        config,
        nodes: HashMap::new(),
        pods: HashMap::new(),
        pod_node: HashMap::new(),
        deadlines: BinaryHeap::new(),
    };
    let stop = super::stopped(shutdown);
    tokio::pin!(stop);
    loop {
        let next = lifecycle.deadlines.peek().map(|Reverse((at, _))| *at);
        let sleep = async move {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            input = inputs.next() => match input {
                Some(input) => lifecycle.input(input).await,
                None => return,
            },
            _ = sleep => lifecycle.due().await,
            _ = &mut stop => return,
        }
    }
}

impl Lifecycle {
    async fn input(&mut self, input: Input) {
        match input {
            Input::Node(e) => self.node(*e).await,
            Input::Lease(e) => self.lease(*e).await,
            Input::Pod(e) => match *e {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => self.pod(p),
                watcher::Event::Delete(p) => {
                    if let Some(uid) = p.uid() {
                        self.forget_pod(&uid);
                    }
                }
                _ => {}
            },
        }
    }

    async fn node(&mut self, event: watcher::Event<Node>) {
        match event {
            watcher::Event::Apply(n) | watcher::Event::InitApply(n) => {
                let name = n.name_any();
                let grace = self.config.grace_period;
                let state = self.nodes.entry(name.clone()).or_default();
                if state.seen.is_none() {
                    // A node met for the first time gets a full grace period from now.
                    state.seen = Some(Instant::now());
                    self.deadlines
                        .push(Reverse((Instant::now() + grace, Due::Lease(name.clone()))));
                }
                state.node = Some(n);
                self.judge(&name).await;
            }
            watcher::Event::Delete(n) => {
                self.nodes.remove(&n.name_any());
            }
            _ => {}
        }
    }

    async fn lease(&mut self, event: watcher::Event<Lease>) {
        if let watcher::Event::Apply(l) | watcher::Event::InitApply(l) = event {
            let name = l.name_any();
            let renew = l
                .spec
                .as_ref()
                .and_then(|s| s.renew_time.as_ref())
                .map(|t| t.0.to_string());
            let state = self.nodes.entry(name.clone()).or_default();
            if renew.is_some() && renew != state.renewed {
                state.renewed = renew;
                state.seen = Some(Instant::now());
                let at = Instant::now() + self.config.grace_period;
                self.deadlines.push(Reverse((at, Due::Lease(name.clone()))));
                self.judge(&name).await;
            }
        }
    }

    fn forget_pod(&mut self, uid: &str) {
        if let Some(node) = self.pod_node.remove(uid) {
            if let Some(pods) = self.pods.get_mut(&node) {
                pods.remove(uid);
            }
        }
    }

    fn pod(&mut self, p: Pod) {
        let (Some(uid), Some(node)) = (p.uid(), p.spec.as_ref().and_then(|s| s.node_name.clone())) else {
            return;
        };
        if self.pod_node.get(&uid) != Some(&node) {
            self.forget_pod(&uid);
        }
        let entry = PodEntry {
            namespace: p.namespace().unwrap_or_default(),
            name: p.name_any(),
            tolerations: p.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default(),
            deleting: p.metadata.deletion_timestamp.is_some(),
        };
        self.pod_node.insert(uid.clone(), node.clone());
        self.pods.entry(node.clone()).or_default().insert(uid.clone(), entry);
        // A pod arriving on (or staying on) a tainted node gets its eviction time.
        self.schedule_eviction(&node, &uid);
    }

    /// The node's health now: unreachable if its Lease is older than the grace period.
    fn health(&self, name: &str) -> Option<Health> {
        let state = self.nodes.get(name)?;
        let node = state.node.as_ref()?;
        let expired = state.seen.is_none_or(|seen| seen.elapsed() >= self.config.grace_period);
        Some(if expired {
            Health::Unreachable
        } else if agent_ready(node) == Some(false) {
            Health::NotReady
        } else {
            Health::Ready
        })
    }

    async fn due(&mut self) {
        let Some(Reverse((_, due))) = self.deadlines.pop() else {
            return;
        };
        match due {
            Due::Lease(name) => self.judge(&name).await,
            Due::Evict(node, uid) => self.evict(&node, &uid).await,
        }
    }

    /// Brings the node's taints (and, when unreachable, its conditions and pods'
    /// readiness) in line with its health.
    async fn judge(&mut self, name: &str) {
        let Some(health) = self.health(name) else { return };
        let Some(state) = self.nodes.get_mut(name) else { return };
        let previous = state.health.replace(health);
        let Some(node) = state.node.clone() else { return };
        let now = Time(crate::controllers::now());
        let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        let has_no_execute = |t: &[Taint]| {
            t.iter()
                .any(|t| health.taint_key() == Some(t.key.as_str()) && t.effect == "NoExecute")
        };
        if previous != Some(health) {
            tracing::info!(node = %name, health = ?health, "node health changed");
        }
        if let Some(taints) = desired_taints(&taints, health, now) {
            let nodes: Api<Node> = Api::all(self.client.clone());
            // The cached resourceVersion makes a stale write a conflict, retried on the
            // next event about the node.
            let patch = json!({"metadata": {"resourceVersion": node.resource_version()}, "spec": {"taints": taints}});
            if let Err(e) = nodes.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await {
                tracing::debug!(node = %name, error = %e, "tainting the node failed; retrying on its next change");
                return;
            }
        }
        if health == Health::Unreachable && previous != Some(Health::Unreachable) {
            self.mark_unknown(&node).await;
        }
        let tainted = health != Health::Ready;
        if let Some(state) = self.nodes.get_mut(name) {
            match (tainted, state.tainted_at) {
                (true, None) => {
                    // Already tainted before we started: count from the taint's time.
                    let since = taints
                        .iter()
                        .find(|t| has_no_execute(std::slice::from_ref(t)))
                        .and_then(|t| t.time_added.as_ref())
                        .map(|t| {
                            let ago = crate::controllers::now().as_second() - t.0.as_second();
                            Instant::now() - Duration::from_secs(ago.max(0) as u64)
                        })
                        .unwrap_or_else(Instant::now);
                    state.tainted_at = Some(since);
                }
                (false, Some(_)) => state.tainted_at = None,
                _ => {}
            }
        }
        if tainted {
            let uids: Vec<String> = self
                .pods
                .get(name)
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default();
            for uid in uids {
                self.schedule_eviction(name, &uid);
            }
        }
    }

    /// The node's conditions become Unknown and its pods not ready, as when a kubelet
    /// stops posting status.
    async fn mark_unknown(&self, node: &Node) {
        let name = node.name_any();
        let now = crate::controllers::now();
        let conditions: Vec<serde_json::Value> = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|c| {
                let mut v = serde_json::to_value(&c).unwrap_or_default();
                if c.status != "Unknown" {
                    v["status"] = json!("Unknown");
                    v["reason"] = json!("NodeStatusUnknown");
                    v["message"] = json!("Kubelet stopped posting node status.");
                    v["lastTransitionTime"] = json!(Time(now));
                }
                v
            })
            .collect();
        let nodes: Api<Node> = Api::all(self.client.clone());
        let patch = json!({"status": {"conditions": conditions}});
        if let Err(e) = nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            tracing::debug!(node = %name, error = %e, "marking the node's conditions unknown failed");
        }
        // Its pods are not ready any more: Services and controllers stop counting them.
        for pod in self.pods.get(&name).into_iter().flat_map(|p| p.values()) {
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
            let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": Time(now)}]}});
            if let Err(e) = pods
                .patch_status(&pod.name, &PatchParams::default(), &Patch::Strategic(patch))
                .await
            {
                tracing::debug!(object = %format!("{}/{}", pod.namespace, pod.name), error = %e, "marking the pod not ready failed");
            }
        }
    }

    /// Queues the eviction of pod `uid` on `node` when its toleration of the node's
    /// NoExecute taint runs out.
    fn schedule_eviction(&mut self, node: &str, uid: &str) {
        let Some(state) = self.nodes.get(node) else { return };
        let (Some(health), Some(since)) = (state.health, state.tainted_at) else {
            return;
        };
        let Some(key) = health.taint_key() else { return };
        let Some(pod) = self.pods.get(node).and_then(|p| p.get(uid)) else {
            return;
        };
        if pod.deleting {
            return;
        }
        let taint = Taint {
            key: key.to_string(),
            effect: "NoExecute".into(),
            ..Default::default()
        };
        if let Some(delay) = eviction_delay(&pod.tolerations, &taint) {
            self.deadlines
                .push(Reverse((since + delay, Due::Evict(node.to_string(), uid.to_string()))));
        }
    }

    /// Evicts the pod if it is still on the node and the node is still tainted.
    async fn evict(&mut self, node: &str, uid: &str) {
        let tainted = self.nodes.get(node).is_some_and(|s| s.tainted_at.is_some());
        let Some(pod) = self.pods.get_mut(node).and_then(|p| p.get_mut(uid)) else {
            return;
        };
        if !tainted || pod.deleting {
            return;
        }
        tracing::info!(object = %format!("{}/{}", pod.namespace, pod.name), node = %node, "evicting the pod from a tainted node");
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match pods.delete(&pod.name, &params).await {
            Ok(_) => pod.deleting = true,
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => pod.deleting = true,
            Err(e) => {
                tracing::debug!(object = %pod.name, error = %e, "evicting the pod failed; retrying");
                let again = Instant::now() + Duration::from_secs(5);
                self.deadlines
                    .push(Reverse((again, Due::Evict(node.to_string(), uid.to_string()))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            ..Default::default()
        }
    }

    fn keys(taints: &[Taint]) -> Vec<(String, String)> {
        taints.iter().map(|t| (t.key.clone(), t.effect.clone())).collect()
    }

    #[test]
    fn taints_follow_health() {
        let now = Time(crate::controllers::now());
        let own = taint("dedicated", "NoSchedule");
        let unreachable = desired_taints(std::slice::from_ref(&own), Health::Unreachable, now.clone()).unwrap();
        assert_eq!(
            keys(&unreachable),
            [
                ("dedicated".into(), "NoSchedule".into()),
                (UNREACHABLE.into(), "NoSchedule".into()),
                (UNREACHABLE.into(), "NoExecute".into())
            ]
        );
        assert!(unreachable[2].time_added.is_some() && unreachable[1].time_added.is_none());
        // Nothing to change: no write.
        assert_eq!(desired_taints(&unreachable, Health::Unreachable, now.clone()), None);
        // Not ready instead: the unreachable taints give way.
        let not_ready = desired_taints(&unreachable, Health::NotReady, now.clone()).unwrap();
        assert_eq!(
            keys(&not_ready)[1..],
            [
                (NOT_READY.into(), "NoSchedule".into()),
                (NOT_READY.into(), "NoExecute".into())
            ]
        );
        // Healthy: only the node's own taint stays.
        assert_eq!(
            keys(&desired_taints(&not_ready, Health::Ready, now).unwrap()),
            [("dedicated".into(), "NoSchedule".into())]
        );
    }

    #[test]
    fn tolerations_set_the_eviction_time() {
        let t = taint(UNREACHABLE, "NoExecute");
        let tol = |key: &str, seconds: Option<i64>| Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: seconds,
            ..Default::default()
        };
        let cases: Vec<(Vec<Toleration>, Option<u64>)> = vec![
            (vec![], Some(0)),
            (vec![tol(NOT_READY, Some(300))], Some(0)),
            (vec![tol(UNREACHABLE, Some(300))], Some(300)),
            (vec![tol(UNREACHABLE, Some(300)), tol(UNREACHABLE, Some(5))], Some(5)),
            (vec![tol(UNREACHABLE, None)], None),
            (
                vec![Toleration {
                    operator: Some("Exists".into()),
                    ..Default::default()
                }],
                None,
            ),
        ];
        for (tolerations, want) in cases {
            assert_eq!(
                eviction_delay(&tolerations, &t).map(|d| d.as_secs()),
                want,
                "{tolerations:?}"
            );
        }
    }
}
