//! The scheduler: places each pending pod on a node, as kube-scheduler does.
//!
//! One task owns the state: a [`cache::Cache`] of nodes and pods fed by watches (no
//! LIST per pod), the [`queue::Queue`] of pending pods, and the nominations made by
//! [`preemption`]. Watch events, and the outcomes of bindings, reach it through one
//! channel, so the cache is never locked and always reflects what the loop has decided:
//! a pod is assumed on its node the moment it is chosen, before its binding is written,
//! and bindings run concurrently in their own tasks ([`binder`]). Each decision is a
//! [`cycle`]: the [`plugins`]' filters, then their scores.
//!
//! Pods name their scheduler in `spec.schedulerName`; a scheduler places only its own
//! and counts everybody's, so several can run side by side.

pub mod binder;
pub mod cache;
pub mod cycle;
pub mod node_info;
pub mod plugins;
pub mod pod_info;
pub mod preemption;
pub mod queue;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use tokio::sync::{mpsc, watch};

use binder::Binder;
use cache::Cache;
use cycle::{Cycles, Diagnosis};
use pod_info::{PodInfo, PodRef};
use queue::Queue;

use kairn_client::trimmed::{self, Trimmed};

/// The scheduler name pods ask for by default.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// How a scheduler runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Its name: it places the pods whose `spec.schedulerName` says so.
    pub name: String,
    /// Percentage of nodes to find fitting before choosing (0: adaptive, as Kubernetes).
    pub percentage_of_nodes_to_score: u32,
    /// Bindings written at once.
    pub parallel_binds: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: DEFAULT_SCHEDULER.to_string(),
            percentage_of_nodes_to_score: 0,
            parallel_binds: 128,
        }
    }
}

/// Pods scheduled between two yields to the runtime (the loop is otherwise CPU-bound).
const YIELD_EVERY: u32 = 64;
/// How often parked pods are checked for having waited too long.
const FLUSH_EVERY: Duration = Duration::from_secs(30);

/// What reaches the scheduling loop.
enum Input {
    Pod(Box<watcher::Event<Pod>>),
    Node(Box<watcher::Event<Node>>),
    Namespace(Box<watcher::Event<Namespace>>),
    /// A binding finished.
    Bound {
        pod: PodRef,
        node: String,
        result: Result<(), kube::Error>,
    },
}

/// Runs the default scheduler until shutdown.
pub async fn run(client: kube::Client, shutdown: watch::Receiver<bool>) {
    run_with(client, Config::default(), shutdown).await
}

/// Runs a scheduler configured by `config` until shutdown.
pub async fn run_with(client: kube::Client, config: Config, shutdown: watch::Receiver<bool>) {
    let (tx, rx) = mpsc::channel(4096);
    let feeds = [
        tokio::spawn(feed(watch_all::<Pod>(&client), tx.clone(), |e| Input::Pod(Box::new(e)))),
        tokio::spawn(feed(watch_all::<Node>(&client), tx.clone(), |e| {
            Input::Node(Box::new(e))
        })),
        tokio::spawn(feed(watch_all::<Namespace>(&client), tx.clone(), |e| {
            Input::Namespace(Box::new(e))
        })),
    ];
    tracing::info!(scheduler = %config.name, "scheduler started");
    let binder = Binder::new(client, &config.name, config.parallel_binds);
    let mut scheduler = Scheduler::new(config, binder, tx);
    scheduler.run(rx, shutdown).await;
    for f in feeds {
        f.abort();
    }
}

/// Every object of kind `K`, decoded without the managedFields the scheduler never reads.
fn watch_all<K>(client: &kube::Client) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    trimmed::watch(Api::<Trimmed<K>>::all(client.clone()), watcher::Config::default()).default_backoff()
}

async fn feed<K>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    tx: mpsc::Sender<Input>,
    wrap: fn(watcher::Event<K>) -> Input,
) {
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                if tx.send(wrap(event)).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::debug!(error = %e, "scheduler watch error; retrying"),
        }
    }
}

/// The scheduling loop's state.
struct Scheduler {
    config: Config,
    binder: Binder,
    tx: mpsc::Sender<Input>,
    cache: Cache,
    queue: Queue,
    cycles: Cycles,
    /// Node -> pods preemption is making room for there.
    nominated: HashMap<String, Vec<PodRef>>,
    /// Pod uid -> the node it is nominated to (the index of `nominated`).
    nominee: HashMap<String, String>,
    /// Preemptor uid -> the uids of its victims not yet gone.
    victims: HashMap<String, HashSet<String>>,
    /// Every victim not yet gone (the union of `victims`).
    leaving: HashSet<String>,
    /// Uids seen during a relist in progress, per kind.
    relist_pods: Option<HashSet<String>>,
    relist_nodes: Option<HashSet<String>>,
    pods_synced: bool,
    nodes_synced: bool,
}

impl Scheduler {
    fn new(config: Config, binder: Binder, tx: mpsc::Sender<Input>) -> Scheduler {
        Scheduler {
            cycles: Cycles::new(config.percentage_of_nodes_to_score),
            config,
            binder,
            tx,
            cache: Cache::default(),
            queue: Queue::default(),
            nominated: HashMap::new(),
            nominee: HashMap::new(),
            victims: HashMap::new(),
            leaving: HashSet::new(),
            relist_pods: None,
            relist_nodes: None,
            pods_synced: false,
            nodes_synced: false,
        }
    }

    async fn run(&mut self, mut rx: mpsc::Receiver<Input>, shutdown: watch::Receiver<bool>) {
        let mut stop = std::pin::pin!(crate::controllers::stopped(shutdown));
        let mut next_flush = Instant::now() + FLUSH_EVERY;
        let mut since_yield = 0;
        loop {
            // Every waiting input first: decisions see the freshest cache.
            while let Ok(input) = rx.try_recv() {
                self.handle(input);
            }
            let now = Instant::now();
            if now >= next_flush {
                self.queue.flush_parked(now);
                next_flush = now + FLUSH_EVERY;
            }
            if self.pods_synced && self.nodes_synced {
                if let Some(pod) = self.queue.pop(now) {
                    self.schedule_one(pod, now);
                    since_yield += 1;
                    if since_yield >= YIELD_EVERY {
                        since_yield = 0;
                        tokio::task::yield_now().await;
                    }
                    continue;
                }
            }
            let wake = self.queue.next_wakeup().map_or(next_flush, |w| w.min(next_flush));
            tokio::select! {
                _ = &mut stop => break,
                input = rx.recv() => match input {
                    Some(input) => self.handle(input),
                    None => break,
                },
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
        tracing::info!(scheduler = %self.config.name, "scheduler stopped");
    }

    fn handle(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Pod(event) => self.pod_event(*event, now),
            Input::Node(event) => self.node_event(*event, now),
            Input::Namespace(event) => match *event {
                watcher::Event::Apply(ns) | watcher::Event::InitApply(ns) => {
                    self.cache.set_namespace(&ns.name_any(), ns.labels().clone());
                }
                watcher::Event::Delete(ns) => self.cache.remove_namespace(&ns.name_any()),
                watcher::Event::Init | watcher::Event::InitDone => {}
            },
            Input::Bound { pod, node, result } => self.bound(pod, node, result, now),
        }
    }

    fn pod_event(&mut self, event: watcher::Event<Pod>, now: Instant) {
        match event {
            watcher::Event::Init => self.relist_pods = Some(HashSet::new()),
            watcher::Event::InitApply(pod) => {
                let info = Arc::new(PodInfo::new(&pod));
                if let Some(seen) = self.relist_pods.as_mut() {
                    seen.insert(info.uid.clone());
                }
                self.pod_changed(info, now);
            }
            watcher::Event::Apply(pod) => self.pod_changed(Arc::new(PodInfo::new(&pod)), now),
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.uid() {
                    self.pod_gone(&uid, now);
                }
            }
            watcher::Event::InitDone => {
                if let Some(seen) = self.relist_pods.take() {
                    let known = self.cache.placed_uids().into_iter().chain(self.queue.uids());
                    let vanished: HashSet<String> = known.filter(|uid| !seen.contains(uid)).collect();
                    for uid in vanished {
                        self.pod_gone(&uid, now);
                    }
                }
                self.pods_synced = true;
            }
        }
    }

    fn pod_changed(&mut self, info: PodRef, now: Instant) {
        let uid = info.uid.clone();
        let was_on = self.cache.node_of(&uid).map(String::from);
        self.cache.set_pod(info.clone());
        if let (Some(node), false) = (was_on, self.cache.is_placed(&uid)) {
            // It finished: its room is free.
            self.room_freed(&node, now);
        }
        if info.node_name.is_some() || !info.is_pending_for(&self.config.name) {
            self.queue.remove(&uid);
            self.unnominate(&uid);
            return;
        }
        if self.cache.is_placed(&uid) {
            // Assumed: its binding is in flight.
            return;
        }
        if let Some(node) = info.nominated_node.as_ref() {
            self.nominate(info.clone(), node);
        }
        self.cache.track_pod_keys(&info);
        self.queue.upsert(info);
    }

    fn pod_gone(&mut self, uid: &str, now: Instant) {
        self.queue.remove(uid);
        self.unnominate(uid);
        let node = self.cache.node_of(uid).map(String::from);
        if let (Some(node), Some(_)) = (node, self.cache.remove_pod(uid)) {
            self.room_freed(&node, now);
        }
    }

    /// A pod left `node`: pods nominated there (waiting for their victims) try again at
    /// once, the other parked pods after their back-off.
    fn room_freed(&mut self, node: &str, now: Instant) {
        let waiting: Vec<String> = self
            .nominated
            .get(node)
            .into_iter()
            .flatten()
            .map(|p| p.uid.clone())
            .collect();
        for uid in waiting {
            self.queue.wake(&uid);
        }
        self.queue.cluster_changed(now);
    }

    /// The node `pod` was nominated to, if victims evicted for it are still leaving
    /// (evicted by this scheduler and still counted, or seen terminating there).
    fn awaiting_victims(&mut self, pod: &PodInfo) -> Option<String> {
        let node = self.nominee.get(&pod.uid)?.clone();
        if let Some(victims) = self.victims.get_mut(&pod.uid) {
            let cache = &self.cache;
            let leaving = &mut self.leaving;
            victims.retain(|v| {
                let here = cache.is_placed(v);
                if !here {
                    leaving.remove(v);
                }
                here
            });
            if victims.is_empty() {
                self.victims.remove(&pod.uid);
            } else {
                return Some(node);
            }
        }
        self.cache
            .pods_on(&node)
            .any(|p| p.deleting && p.priority < pod.priority)
            .then_some(node)
    }

    fn node_event(&mut self, event: watcher::Event<Node>, now: Instant) {
        match event {
            watcher::Event::Init => self.relist_nodes = Some(HashSet::new()),
            watcher::Event::InitApply(node) | watcher::Event::Apply(node) => {
                if let Some(seen) = self.relist_nodes.as_mut() {
                    seen.insert(node.name_any());
                }
                if self.cache.set_node(&node) {
                    self.queue.cluster_changed(now);
                }
            }
            watcher::Event::Delete(node) => self.cache.remove_node(&node.name_any()),
            watcher::Event::InitDone => {
                if let Some(seen) = self.relist_nodes.take() {
                    for name in self.cache.node_names() {
                        if !seen.contains(&name) {
                            self.cache.remove_node(&name);
                        }
                    }
                }
                self.nodes_synced = true;
                self.queue.cluster_changed(now);
            }
        }
    }

    /// Keeps room on `node` for `pod` (replacing any earlier nomination).
    fn nominate(&mut self, pod: PodRef, node: &str) {
        self.drop_nomination(&pod.uid);
        self.nominee.insert(pod.uid.clone(), node.to_string());
        self.nominated.entry(node.to_string()).or_default().push(pod);
    }

    fn drop_nomination(&mut self, uid: &str) {
        let Some(node) = self.nominee.remove(uid) else { return };
        if let Some(pods) = self.nominated.get_mut(&node) {
            pods.retain(|p| p.uid != uid);
            if pods.is_empty() {
                self.nominated.remove(&node);
            }
        }
    }

    /// The pod was placed or is gone: it needs no room and waits for no victims.
    fn unnominate(&mut self, uid: &str) {
        if let Some(victims) = self.victims.remove(uid) {
            for v in victims {
                self.leaving.remove(&v);
            }
        }
        self.drop_nomination(uid);
    }

    fn schedule_one(&mut self, pod: PodRef, now: Instant) {
        if let Some(node) = self.awaiting_victims(&pod) {
            // Only its nominated node is worth a look until the victims are gone: no
            // full search, no second preemption elsewhere.
            if cycle::fits_on(&pod, &self.cache, &self.nominated, &node) {
                self.assume_and_bind(pod, node);
            } else {
                self.queue.park(&pod.uid, now);
            }
            return;
        }
        let nominated_to = self.nominee.get(&pod.uid).map(String::as_str);
        match self.cycles.schedule(&pod, &self.cache, &self.nominated, nominated_to) {
            Ok(placement) => {
                tracing::debug!(object = %pod.key(), node = %placement.node, evaluated = placement.evaluated,
                    feasible = placement.feasible, "assumed pod");
                self.assume_and_bind(pod, placement.node);
            }
            Err(diagnosis) => self.unschedulable(pod, diagnosis, now),
        }
    }

    /// Counts `pod` on `node` at once and writes its binding in the background.
    fn assume_and_bind(&mut self, pod: PodRef, node: String) {
        self.cache.assume(&pod, &node);
        self.unnominate(&pod.uid);
        let binder = self.binder.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let result = binder.bind(&pod, &node).await;
            let _ = tx.send(Input::Bound { pod, node, result }).await;
        });
    }

    /// The pod fits nowhere: try preemption, then park it and say why.
    fn unschedulable(&mut self, pod: PodRef, diagnosis: Diagnosis, now: Instant) {
        let mut message = diagnosis.message();
        if diagnosis.invalid.is_none() && diagnosis.nodes > 0 {
            match preemption::find(&pod, &self.cache, &diagnosis.resolvable, &self.nominated, &self.leaving) {
                Some(p) => {
                    self.preempt(&pod, p);
                }
                None => {
                    let helpless = diagnosis.nodes - diagnosis.resolvable.len();
                    let mut parts = Vec::new();
                    if !diagnosis.resolvable.is_empty() {
                        parts.push(format!(
                            "{} No preemption victims found for incoming pod",
                            diagnosis.resolvable.len()
                        ));
                    }
                    if helpless > 0 {
                        parts.push(format!("{helpless} Preemption is not helpful for scheduling"));
                    }
                    parts.sort();
                    message = format!(
                        "{message} preemption: 0/{} nodes are available: {}.",
                        diagnosis.nodes,
                        parts.join(", ")
                    );
                }
            }
        }
        self.queue.park(&pod.uid, now);
        if pod.unschedulable_message.as_deref() == Some(message.as_str()) {
            return;
        }
        tracing::info!(object = %pod.key(), reason = %message, "pod is unschedulable");
        self.binder.event(&pod, "Warning", "FailedScheduling", message.clone());
        let binder = self.binder.clone();
        tokio::spawn(async move {
            if let Err(e) = binder.mark_unschedulable(&pod, &message).await {
                tracing::debug!(object = %pod.key(), error = %e, "recording unschedulable failed");
            }
        });
    }

    fn preempt(&mut self, pod: &PodRef, p: preemption::Preemption) {
        tracing::info!(object = %pod.key(), node = %p.node, victims = p.victims.len(), "preempting");
        self.nominate(pod.clone(), &p.node);
        let victims: HashSet<String> = p.victims.iter().map(|v| v.uid.clone()).collect();
        self.leaving.extend(victims.iter().cloned());
        self.victims.insert(pod.uid.clone(), victims);
        for victim in &p.victims {
            self.binder.event(
                victim,
                "Normal",
                "Preempted",
                format!("Preempted by pod {} on node {}", pod.uid, p.node),
            );
        }
        let binder = self.binder.clone();
        let pod = pod.clone();
        tokio::spawn(async move {
            if let Err(e) = binder.nominate(&pod, Some(&p.node)).await {
                tracing::debug!(object = %pod.key(), error = %e, "nominating failed");
            }
            for victim in &p.victims {
                if let Err(e) = binder.evict(victim).await {
                    tracing::warn!(object = %victim.key(), error = %e, "evicting a preemption victim failed");
                }
            }
        });
    }

    fn bound(&mut self, pod: PodRef, node: String, result: Result<(), kube::Error>, now: Instant) {
        match result {
            Ok(()) => {
                tracing::info!(object = %pod.key(), node = %node, "bound pod");
                self.queue.done(&pod.uid);
                self.binder.event(
                    &pod,
                    "Normal",
                    "Scheduled",
                    format!("Successfully assigned {} to {node}", pod.key()),
                );
            }
            Err(e) => {
                if self.cache.forget(&pod.uid) {
                    self.queue.cluster_changed(now);
                }
                match &e {
                    kube::Error::Api(s) if s.code == 404 => {
                        tracing::debug!(object = %pod.key(), "pod gone before its binding");
                        self.queue.remove(&pod.uid);
                    }
                    _ => {
                        tracing::warn!(object = %pod.key(), node = %node, error = %e, "binding failed; retrying");
                        self.queue.retry_later(&pod.uid, now);
                    }
                }
            }
        }
    }
}
