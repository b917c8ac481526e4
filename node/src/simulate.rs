//! Hollow nodes (`kairn agent --simulate N`), as KWOK and kubemark make them: one process
//! stands in for thousands of Nodes, so the scheduler and the API can be benchmarked at
//! the scale of a large cluster on one machine.
//!
//! A hollow node is a Node object with made-up capacity, labels, taints and addresses,
//! Ready, whose Lease is renewed like a kubelet's. It runs nothing: a pod bound to it is
//! reported Running at once (fake pod IP, containers started), and a pod deleted from it
//! is confirmed gone at once (what a kubelet does once its containers have stopped).
//!
//! What it costs the API server is what that many kubelets would cost it in steady state,
//! minus the status heartbeats: one watch for all the hollow nodes' pods (`spec.nodeName!=`,
//! never a list per event), a Lease renewal per node every [`LEASE_RENEW`] spread evenly
//! over that interval, and a write per pod started or deleted. Every kind of write has
//! [`CONCURRENCY`] requests in flight at most.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kairn_client::trimmed::{self, Trimmed};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::node_status::{self, Created};
use crate::pod::now;
use crate::Error;

/// How often each hollow node renews its Lease: the kubelet's default (the Lease lasts
/// [`node_status::LEASE_SECONDS`], as a kubelet's does).
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// [`LEASE_RENEW`] is cut into this many slices, each renewing its share of the nodes
/// ([`lease_slice`]), so that thousands of nodes do not renew in one burst.
const LEASE_SLICES: usize = 100;
/// Requests in flight at most, for each of registration, Lease renewal and pod writes.
pub const CONCURRENCY: usize = 64;
/// Attempts at registering the first node: the API server may still be starting.
const FIRST_ATTEMPTS: u32 = 20;
/// Attempts at registering each of the other nodes.
const ATTEMPTS: u32 = 3;
/// The pause between two attempts at a registration.
const RETRY_DELAY: Duration = Duration::from_millis(250);
/// The pause before a pod write that failed for a passing reason is tried again.
const REWRITE_DELAY: Duration = Duration::from_secs(1);
/// Who the hollow nodes' conditions say posts them.
const AGENT: &str = "kairn hollow node";
/// The container runtime hollow nodes report, and the scheme of their container IDs.
const RUNTIME: &str = "kairn-sim://";
/// The label every hollow node carries, as kubemark's do.
pub const HOLLOW_LABEL: (&str, &str) = ("type", "hollow");
/// Kubernetes' well-known topology labels.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// See [`ZONE_LABEL`].
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// Pod IPs come from 100.64.0.0/10 (shared address space, which nothing on the host
/// routes to), a /24 per node: 16,384 nodes get a block of their own; past that, node `i`
/// shares the block of node `i % 16384` (duplicate pod IPs, harmless to a scheduler).
const POD_NET: [u8; 4] = [100, 64, 0, 0];
const POD_BLOCKS: usize = 1 << 14;

/// The taint effects Kubernetes knows.
const EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// What hollow nodes are made of.
#[derive(Debug, Clone)]
pub struct SimulateConfig {
    /// How many nodes: `<name_prefix>0` to `<name_prefix><count - 1>`.
    pub count: usize,
    /// The nodes' names before their index.
    pub name_prefix: String,
    /// Each node's capacity (and allocatable: nothing is reserved).
    pub capacity: Capacity,
    /// Node `i` is in zone `zone-<i % zones>` (of region `region-0`); 0 counts as 1.
    pub zones: usize,
    /// Labels on every node besides the usual ones (these win over them).
    pub labels: BTreeMap<String, String>,
    /// Taints on every node.
    pub taints: Vec<Taint>,
}

/// A node's capacity, as resource quantities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    /// CPU (`4`, `3500m`).
    pub cpu: String,
    /// Memory (`32Gi`).
    pub memory: String,
    /// How many pods (a whole number).
    pub pods: String,
}

/// A node taint, as `--register-with-taints` gives it: `key[=value]:Effect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    /// Its key (a qualified name).
    pub key: String,
    /// Its value, if any.
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

/// A flag's value, or one entry of it, that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} {entry:?}: {reason}")]
pub struct FlagError {
    /// The flag, with its dashes.
    pub flag: &'static str,
    /// The entry (or the whole value) at fault.
    pub entry: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FlagError {
    fn new(flag: &'static str, entry: &str, reason: impl Into<String>) -> Self {
        FlagError {
            flag,
            entry: entry.to_string(),
            reason: reason.into(),
        }
    }
}

/// Parses `--register-with-taints`: `key=value:Effect,key2:Effect2,...` (the kubelet's
/// syntax; the value is optional, the effect is not).
pub fn parse_taints(flag_value: &str) -> Result<Vec<Taint>, FlagError> {
    const FLAG: &str = "--register-with-taints";
    let mut taints: Vec<Taint> = Vec::new();
    for entry in flag_value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let err = |reason: String| FlagError::new(FLAG, entry, reason);
        let parts: Vec<&str> = entry.split(':').collect();
        let (key_value, effect) = match parts.as_slice() {
            [kv, effect] => (*kv, *effect),
            [_] => return Err(err("no effect: expected key=value:Effect or key:Effect".into())),
            _ => return Err(err("more than one ':': expected key=value:Effect or key:Effect".into())),
        };
        if !EFFECTS.contains(&effect) {
            return Err(err(format!(
                "unknown effect {effect:?}: expected NoSchedule, PreferNoSchedule or NoExecute"
            )));
        }
        let (key, value) = match key_value.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (key_value, None),
        };
        check_qualified_name(key).map_err(|why| err(format!("key {key:?}: {why}")))?;
        if let Some(v) = value {
            check_label_value(v).map_err(|why| err(format!("value {v:?}: {why}")))?;
        }
        if taints.iter().any(|t| t.key == key && t.effect == effect) {
            return Err(err(format!("a second taint with key {key:?} and effect {effect}")));
        }
        taints.push(Taint {
            key: key.to_string(),
            value: value.map(str::to_string),
            effect: effect.to_string(),
        });
    }
    Ok(taints)
}

/// Parses `--node-labels`: `key=value,key2=value2,...`.
pub fn parse_labels(flag_value: &str) -> Result<BTreeMap<String, String>, FlagError> {
    const FLAG: &str = "--node-labels";
    let mut labels = BTreeMap::new();
    for entry in flag_value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let err = |reason: String| FlagError::new(FLAG, entry, reason);
        let Some((key, value)) = entry.split_once('=') else {
            return Err(err("expected key=value".into()));
        };
        check_qualified_name(key).map_err(|why| err(format!("key {key:?}: {why}")))?;
        check_label_value(value).map_err(|why| err(format!("value {value:?}: {why}")))?;
        labels.insert(key.to_string(), value.to_string());
    }
    Ok(labels)
}

impl Capacity {
    /// Checks the `--capacity-*` flags: quantities, and a whole number of pods.
    pub fn parse(cpu: &str, memory: &str, pods: &str) -> Result<Capacity, FlagError> {
        check_quantity(cpu).map_err(|why| FlagError::new("--capacity-cpu", cpu, why))?;
        check_quantity(memory).map_err(|why| FlagError::new("--capacity-memory", memory, why))?;
        if pods.is_empty() || !pods.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FlagError::new("--capacity-pods", pods, "expected a whole number"));
        }
        Ok(Capacity {
            cpu: cpu.to_string(),
            memory: memory.to_string(),
            pods: pods.to_string(),
        })
    }
}

/// A non-negative resource quantity: a decimal number, then a binary (`Ki`..`Ei`) or
/// decimal (`m`, `k`..`E`) suffix or an exponent (`e3`).
fn check_quantity(q: &str) -> Result<(), String> {
    match kairn_quantity::millis(q) {
        Some(m) if m >= 0 => Ok(()),
        _ => Err(
            "expected a quantity such as 4, 500m, 32Gi or 1e3 (suffixes m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei)"
                .into(),
        ),
    }
}

/// A label key or taint key: `[prefix/]name`, the prefix a DNS subdomain.
fn check_qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && p.starts_with(|c: char| c.is_ascii_alphanumeric())
            && p.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            return Err(format!(
                "prefix {p:?} must be a DNS subdomain (lower case alphanumerics, '-' and '.')"
            ));
        }
    }
    if name.is_empty() {
        return Err("the name part must not be empty".into());
    }
    check_label_value(name)
}

/// A label value (or a qualified name's name part): at most 63 alphanumerics, '-', '_'
/// or '.', beginning and ending with an alphanumeric; or empty.
fn check_label_value(v: &str) -> Result<(), String> {
    let ok = v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err("must be at most 63 alphanumerics, '-', '_' or '.', beginning and ending with an alphanumeric".into())
    }
}

/// Node `i`'s InternalIP: 10.0.0.1 for node 0, counting up through 10.0.0.0/8.
pub fn node_ip(i: usize) -> Ipv4Addr {
    let n = (i % 0x00ff_ffff) as u32 + 1;
    Ipv4Addr::from(u32::from_be_bytes([10, 0, 0, 0]) | n)
}

/// The first address of node `i`'s pod /24 (its `spec.podCIDR`).
pub fn pod_block(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be_bytes(POD_NET) + (((i % POD_BLOCKS) as u32) << 8))
}

impl SimulateConfig {
    /// Node `i`'s name.
    pub fn node_name(&self, i: usize) -> String {
        format!("{}{i}", self.name_prefix)
    }

    /// The index of the hollow node of this name, if it is one of ours.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        let digits = name.strip_prefix(&self.name_prefix)?;
        let i: usize = digits.parse().ok()?;
        // Exactly as node_name writes it: no sign, no leading zeros.
        (i < self.count && i.to_string() == digits).then_some(i)
    }

    /// Node `i`'s labels: host name, OS, architecture, `type=hollow`, zone and region,
    /// then `--node-labels`.
    fn labels(&self, i: usize) -> Map<String, Value> {
        let mut labels = node_status::node_labels(&self.node_name(i));
        labels.insert(HOLLOW_LABEL.0.into(), json!(HOLLOW_LABEL.1));
        labels.insert(ZONE_LABEL.into(), json!(format!("zone-{}", i % self.zones.max(1))));
        labels.insert(REGION_LABEL.into(), json!("region-0"));
        for (k, v) in &self.labels {
            labels.insert(k.clone(), json!(v));
        }
        labels
    }

    fn taints(&self) -> Vec<Value> {
        self.taints
            .iter()
            .map(|t| {
                let mut taint = json!({"key": t.key, "effect": t.effect});
                if let Some(v) = &t.value {
                    taint["value"] = json!(v);
                }
                taint
            })
            .collect()
    }

    /// Node `i` as created (metadata and spec).
    pub fn node(&self, i: usize) -> Value {
        let cidr = format!("{}/24", pod_block(i));
        let mut spec = json!({"podCIDR": cidr, "podCIDRs": [cidr]});
        if !self.taints.is_empty() {
            spec["taints"] = json!(self.taints());
        }
        json!({"metadata": {"name": self.node_name(i), "labels": self.labels(i)}, "spec": spec})
    }

    /// The merge patch that brings an existing node `i` to these labels and taints.
    fn node_update(&self, i: usize) -> Value {
        let taints = if self.taints.is_empty() {
            Value::Null
        } else {
            json!(self.taints())
        };
        json!({"metadata": {"labels": self.labels(i)}, "spec": {"taints": taints}})
    }

    /// Node `i`'s status: capacity, Ready, addresses and node info (`kernel`: the kernel
    /// version it reports).
    pub fn node_status(&self, i: usize, kernel: &str) -> Value {
        let c = &self.capacity;
        let capacity = json!({"cpu": c.cpu, "memory": c.memory, "pods": c.pods});
        json!({
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": node_status::conditions(true, AGENT),
            "addresses": [
                {"type": "InternalIP", "address": node_ip(i).to_string()},
                {"type": "Hostname", "address": self.node_name(i)},
            ],
            "nodeInfo": node_status::node_info(kernel, RUNTIME),
        })
    }
}

/// The status that reports `pod` Running on a hollow node at `host_ip` with `pod_ip`,
/// every container started and ready at `now` (init containers completed, sidecars
/// running).
pub fn running_status(pod: &Pod, host_ip: Ipv4Addr, pod_ip: Ipv4Addr, now: &str) -> Value {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let running = json!({"running": {"startedAt": now}});
    let status = |c: &k8s_openapi::api::core::v1::Container, state: &Value, ready: bool| {
        json!({
            "name": c.name, "image": c.image.as_deref().unwrap_or_default(), "imageID": "",
            "containerID": format!("{RUNTIME}{uid}/{}", c.name),
            "ready": ready, "started": ready, "restartCount": 0, "state": state,
        })
    };
    let containers: Vec<Value> = spec
        .map(|s| s.containers.iter().map(|c| status(c, &running, true)).collect())
        .unwrap_or_default();
    let completed = json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}});
    let init: Vec<Value> = spec
        .and_then(|s| s.init_containers.as_ref())
        .into_iter()
        .flatten()
        .map(|c| {
            // A sidecar (restartPolicy Always) keeps running beside the containers.
            if c.restart_policy.as_deref() == Some("Always") {
                status(c, &running, true)
            } else {
                status(c, &completed, false)
            }
        })
        .collect();
    let start_time = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .and_then(|t| serde_json::to_value(t).ok())
        .unwrap_or_else(|| json!(now));
    let condition = |type_: &str| json!({"type": type_, "status": "True", "lastTransitionTime": now});
    let conditions = ["PodScheduled", "Initialized", "ContainersReady", "Ready"].map(condition);
    let mut status = json!({
        "phase": "Running",
        "hostIP": host_ip.to_string(),
        "hostIPs": [{"ip": host_ip.to_string()}],
        "podIP": pod_ip.to_string(),
        "podIPs": [{"ip": pod_ip.to_string()}],
        "startTime": start_time,
        "conditions": conditions,
        "containerStatuses": containers,
    });
    if !init.is_empty() {
        status["initContainerStatuses"] = json!(init);
    }
    status
}

/// Registers the hollow nodes, then keeps their Leases and answers for their pods until
/// `shutdown` turns true.
pub async fn run(client: kube::Client, config: SimulateConfig, shutdown: watch::Receiver<bool>) -> Result<(), Error> {
    let config = Arc::new(config);
    tokio::select! {
        registered = register_all(&client, &config) => registered?,
        _ = stopped(shutdown.clone()) => return Ok(()),
    }
    let leases = tokio::spawn(renew_leases(client.clone(), config.clone(), shutdown.clone()));
    follow_pods(client, config, shutdown).await;
    let _ = leases.await;
    // A real agent marks its Node NotReady on the way out; thousands of hollow nodes do
    // not (that would be thousands of writes on every exit): their Leases just expire.
    Ok(())
}

/// Resolves once `shutdown` is true (or its sender is gone).
async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Whether an error may pass if the request is made again (the API unreachable or
/// overloaded), rather than being the request's fault.
fn passing(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        kube::Error::SerdeError(_) => false,
        _ => true,
    }
}

/// Registers every node, [`CONCURRENCY`] at a time, the first alone (and retried while
/// the API server may still be starting).
async fn register_all(client: &kube::Client, config: &SimulateConfig) -> Result<(), Error> {
    let started = Instant::now();
    let nodes: Api<Node> = Api::all(client.clone());
    let kernel = node_status::kernel_version();
    if config.count == 0 {
        return Ok(());
    }
    register(&nodes, config, 0, &kernel, FIRST_ATTEMPTS).await?;
    futures::stream::iter(1..config.count)
        .map(Ok)
        .try_for_each_concurrent(CONCURRENCY, |i| register(&nodes, config, i, &kernel, ATTEMPTS))
        .await?;
    tracing::info!(count = config.count, elapsed = ?started.elapsed(), "registered hollow nodes");
    Ok(())
}

/// Creates node `i` (or updates its labels and taints), then writes its status.
async fn register(
    nodes: &Api<Node>,
    config: &SimulateConfig,
    i: usize,
    kernel: &str,
    attempts: u32,
) -> Result<(), Error> {
    let name = config.node_name(i);
    let mut attempt = 1;
    loop {
        let result = async {
            let created = node_status::create_node(nodes, config.node(i), Some(config.node_update(i))).await?;
            node_status::write_status(nodes, &name, config.node_status(i, kernel)).await?;
            Ok::<_, kube::Error>(created)
        }
        .await;
        match result {
            Ok(created) => {
                let existed = created == Created::Existed;
                tracing::debug!(node = %name, existed, "registered hollow node");
                return Ok(());
            }
            Err(e) if attempt < attempts && passing(&e) => {
                attempt += 1;
                tracing::debug!(node = %name, error = %e, "registration failed; retrying");
                tokio::time::sleep(RETRY_DELAY).await;
            }
            Err(source) => return Err(Error::Register { node: name, source }),
        }
    }
}

/// The nodes (of `count`) whose Leases renew in slice `slice` of [`LEASE_SLICES`]: node
/// `i` in slice `i * LEASE_SLICES / count`, so that renewals are spread evenly over the
/// interval however many nodes there are.
fn lease_slice(slice: usize, count: usize) -> std::ops::Range<usize> {
    (slice * count).div_ceil(LEASE_SLICES)..((slice + 1) * count).div_ceil(LEASE_SLICES)
}

/// Renews every node's Lease every [`LEASE_RENEW`], a slice of the nodes at a time,
/// until `shutdown`.
async fn renew_leases(client: kube::Client, config: Arc<SimulateConfig>, shutdown: watch::Receiver<bool>) {
    let renewals = async {
        let mut tick = tokio::time::interval(LEASE_RENEW / LEASE_SLICES as u32);
        // A slow API stretches the round rather than bunching renewals up behind it.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut failed, mut first_error) = (0usize, None::<kube::Error>);
        for slice in (0..LEASE_SLICES).cycle() {
            tick.tick().await;
            let errors: Vec<(String, kube::Error)> = futures::stream::iter(lease_slice(slice, config.count))
                .map(|i| {
                    let client = &client;
                    let name = config.node_name(i);
                    async move { node_status::renew_lease(client, &name).await.err().map(|e| (name, e)) }
                })
                .buffer_unordered(CONCURRENCY)
                .filter_map(futures::future::ready)
                .collect()
                .await;
            for (node, e) in errors {
                tracing::debug!(node = %node, error = %e, "lease renewal failed");
                failed += 1;
                first_error.get_or_insert(e);
            }
            // One line a round, not one per node.
            if slice == LEASE_SLICES - 1 {
                if let Some(e) = first_error.take() {
                    tracing::warn!(failed, of = config.count, error = %e, "hollow node lease renewals failed");
                }
                failed = 0;
            }
        }
    };
    tokio::select! {
        _ = renewals => {}
        _ = stopped(shutdown) => {}
    }
}

/// A pod, by what a write to it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodRef {
    namespace: String,
    name: String,
    uid: String,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A write the pod workers make.
#[derive(Debug, Clone, PartialEq)]
enum Write {
    /// Report the pod Running, with this status.
    Start(Value),
    /// Delete the terminating pod for good (its containers "stopped").
    Finish,
}

#[derive(Debug, Clone, PartialEq)]
struct Job {
    pod: PodRef,
    write: Write,
}

/// How a [`Job`] went.
#[derive(Debug)]
enum Outcome {
    /// Done (or moot: the pod is gone or replaced).
    Written,
    /// Refused for good; another event for the pod may try again.
    Failed,
    /// Failed for a passing reason: to be made again shortly.
    Retry,
}

/// What this agent does about the pods bound to its nodes, as the watch reports them.
/// Pure bookkeeping (no I/O), so that it can be tested alone.
struct Tracker {
    config: Arc<SimulateConfig>,
    /// By pod uid: the write in flight for it, or done.
    stages: HashMap<String, Stage>,
    ips: PodIps,
    /// Our pods seen during a relist; what it did not see is forgotten after it.
    relisted: Option<HashSet<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Being reported Running.
    Starting,
    /// Reported Running.
    Started,
    /// Being deleted for good.
    Finishing,
}

impl Tracker {
    fn new(config: Arc<SimulateConfig>) -> Self {
        Tracker {
            config,
            stages: HashMap::new(),
            ips: PodIps::default(),
            relisted: None,
        }
    }

    /// The write a watch event calls for, if any.
    fn on_event(&mut self, event: watcher::Event<Pod>) -> Option<Job> {
        match event {
            watcher::Event::Init => self.relisted = Some(HashSet::new()),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => return self.on_pod(&pod),
            watcher::Event::InitDone => {
                if let Some(seen) = self.relisted.take() {
                    self.stages.retain(|uid, _| seen.contains(uid));
                    self.ips.retain(|uid| seen.contains(uid));
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid {
                    self.stages.remove(&uid);
                    self.ips.release(&uid);
                }
            }
        }
        None
    }

    fn on_pod(&mut self, pod: &Pod) -> Option<Job> {
        let node = self.config.index_of(pod.spec.as_ref()?.node_name.as_deref()?)?;
        let uid = pod.metadata.uid.clone()?;
        let pod_ref = PodRef {
            namespace: pod.namespace()?,
            name: pod.name_any(),
            uid: uid.clone(),
        };
        if let Some(seen) = self.relisted.as_mut() {
            seen.insert(uid.clone());
        }
        if pod.metadata.deletion_timestamp.is_some() {
            if self.stages.insert(uid, Stage::Finishing) == Some(Stage::Finishing) {
                return None;
            }
            return Some(Job {
                pod: pod_ref,
                write: Write::Finish,
            });
        }
        let status = pod.status.as_ref();
        if matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Running" | "Succeeded" | "Failed")
        ) {
            // Started earlier (by this process before a restart, say): its IP stays taken.
            if let Some(ip) = status.and_then(|s| s.pod_ip.as_deref()?.parse().ok()) {
                self.ips.claim(&uid, node, ip);
            }
            return None;
        }
        if self.stages.contains_key(&uid) {
            return None;
        }
        let host_ip = node_ip(node);
        let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
        let pod_ip = if host_network {
            host_ip
        } else {
            self.ips.assign(&uid, node)
        };
        self.stages.insert(uid, Stage::Starting);
        Some(Job {
            pod: pod_ref,
            write: Write::Start(running_status(pod, host_ip, pod_ip, &now())),
        })
    }

    /// Notes how a write went; returns it if it is to be made again.
    fn on_done(&mut self, job: Job, outcome: Outcome) -> Option<Job> {
        let wanted = match job.write {
            Write::Start(_) => Stage::Starting,
            Write::Finish => Stage::Finishing,
        };
        // A pod deleted while it was being started: the start's outcome does not matter.
        if self.stages.get(&job.pod.uid) != Some(&wanted) {
            return None;
        }
        match outcome {
            Outcome::Written if wanted == Stage::Starting => {
                self.stages.insert(job.pod.uid, Stage::Started);
            }
            // Finishing until the watch reports the pod gone.
            Outcome::Written => {}
            Outcome::Failed => {
                self.stages.remove(&job.pod.uid);
            }
            Outcome::Retry => return Some(job),
        }
        None
    }
}

/// The pod IPs given out: on node `i`, a free address of [`pod_block`]`(i)`, .1 to .254.
#[derive(Debug, Default)]
struct PodIps {
    /// By pod uid: its node and the last byte of its IP.
    by_uid: HashMap<String, (usize, u8)>,
    /// By node: the last bytes taken, a bit each.
    taken: HashMap<usize, [u64; 4]>,
}

impl PodIps {
    fn ip(node: usize, slot: u8) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(pod_block(node)) + u32::from(slot))
    }

    fn mark(&mut self, node: usize, slot: u8, taken: bool) {
        let bits = self.taken.entry(node).or_default();
        let (word, bit) = (usize::from(slot) / 64, slot % 64);
        if taken {
            bits[word] |= 1 << bit;
        } else {
            bits[word] &= !(1 << bit);
        }
    }

    /// The pod's IP: the one it has, else a free one (shared when none is free).
    fn assign(&mut self, uid: &str, node: usize) -> Ipv4Addr {
        if let Some(&(n, slot)) = self.by_uid.get(uid) {
            return Self::ip(n, slot);
        }
        let bits = self.taken.get(&node).copied().unwrap_or_default();
        let free = (1..=254u8).find(|s| bits[usize::from(*s) / 64] & (1 << (s % 64)) == 0);
        let slot = free.unwrap_or_else(|| {
            tracing::debug!(node, "no free pod IP on the hollow node; sharing one");
            (self.by_uid.len() % 254) as u8 + 1
        });
        self.mark(node, slot, true);
        self.by_uid.insert(uid.to_string(), (node, slot));
        Self::ip(node, slot)
    }

    /// Takes `ip` for the pod, if it is in the node's block.
    fn claim(&mut self, uid: &str, node: usize, ip: Ipv4Addr) {
        if self.by_uid.contains_key(uid) {
            return;
        }
        let offset = u32::from(ip).wrapping_sub(u32::from(pod_block(node)));
        if let Ok(slot @ 1..=254) = u8::try_from(offset) {
            self.mark(node, slot, true);
            self.by_uid.insert(uid.to_string(), (node, slot));
        }
    }

    fn release(&mut self, uid: &str) {
        if let Some((node, slot)) = self.by_uid.remove(uid) {
            // Not if another pod shares it (a node out of addresses).
            if !self.by_uid.values().any(|&(n, s)| n == node && s == slot) {
                self.mark(node, slot, false);
            }
        }
    }

    fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self.by_uid.keys().filter(|uid| !keep(uid)).cloned().collect();
        for uid in gone {
            self.release(&uid);
        }
    }
}

/// Makes one pod write.
async fn write(client: kube::Client, job: Job) -> (Job, Outcome) {
    let api: Api<Pod> = Api::namespaced(client, &job.pod.namespace);
    let result = match &job.write {
        Write::Start(status) => api
            .patch_status(
                &job.pod.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
            .map(|_| ()),
        Write::Finish => {
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(job.pod.uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            api.delete(&job.pod.name, &params).await.map(|_| ())
        }
    };
    let what = match job.write {
        Write::Start(_) => "reporting the pod running",
        Write::Finish => "finishing the pod's deletion",
    };
    let outcome = match result {
        Ok(()) => {
            tracing::debug!(object = %job.pod, "{what}: done");
            Outcome::Written
        }
        // Gone, or replaced by another pod of the same name: nothing left to do.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
            tracing::debug!(object = %job.pod, code = s.code, "{what}: moot");
            Outcome::Written
        }
        Err(e) if passing(&e) => {
            tracing::debug!(object = %job.pod, error = %e, "{what}: failed; trying again");
            Outcome::Retry
        }
        Err(e) => {
            tracing::warn!(object = %job.pod, error = %e, "{what}: failed");
            Outcome::Failed
        }
    };
    (job, outcome)
}

/// Follows every pod bound to a node (one watch), and answers for those bound to ours
/// through [`CONCURRENCY`] writers, so that a slow write holds up neither the watch nor
/// the other pods.
async fn follow_pods(client: kube::Client, config: Arc<SimulateConfig>, shutdown: watch::Receiver<bool>) {
    // Unbounded, yet bounded by the pods: a pod has one write queued or in flight at most.
    let (jobs, queue) = mpsc::unbounded_channel::<Job>();
    let (done_tx, mut done) = mpsc::unbounded_channel::<(Job, Outcome)>();
    let writer = client.clone();
    let writers = tokio::spawn(async move {
        UnboundedReceiverStream::new(queue)
            .map(|job| write(writer.clone(), job))
            .buffer_unordered(CONCURRENCY)
            .for_each(|result| {
                let _ = done_tx.send(result);
                futures::future::ready(())
            })
            .await;
    });
    let mut tracker = Tracker::new(config);
    // Decoded without managedFields, which a hollow node never reads.
    let pods: Api<Trimmed<Pod>> = Api::all(client);
    let bound = watcher::Config::default().fields("spec.nodeName!=");
    let mut events = trimmed::watch(pods, bound).default_backoff().boxed();
    let follow = async {
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(event)) => {
                        if let Some(job) = tracker.on_event(event) {
                            let _ = jobs.send(job);
                        }
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "watching the hollow nodes' pods"),
                    None => break,
                },
                Some((job, outcome)) = done.recv() => {
                    if let Some(job) = tracker.on_done(job, outcome) {
                        let jobs = jobs.clone();
                        tokio::spawn(after(REWRITE_DELAY, async move {
                            let _ = jobs.send(job);
                        }));
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = follow => {}
        _ = stopped(shutdown) => {}
    }
    // Writes still queued are dropped: the next run starts from the pods as they are.
    writers.abort();
}

async fn after(delay: Duration, then: impl Future<Output = ()>) {
    tokio::time::sleep(delay).await;
    then.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SimulateConfig {
        SimulateConfig {
            count: 20,
            name_prefix: "hollow-node-".into(),
            capacity: Capacity::parse("4", "32Gi", "110").unwrap(),
            zones: 3,
            labels: BTreeMap::from([("pool".to_string(), "sim".to_string())]),
            taints: parse_taints("dedicated=sim:NoSchedule").unwrap(),
        }
    }

    #[test]
    fn taints_parse_like_the_kubelet_flag() {
        let taints = parse_taints("dedicated=sim:NoSchedule, gpu:PreferNoSchedule,example.com/x=y:NoExecute,").unwrap();
        assert_eq!(
            taints,
            vec![
                Taint {
                    key: "dedicated".into(),
                    value: Some("sim".into()),
                    effect: "NoSchedule".into()
                },
                Taint {
                    key: "gpu".into(),
                    value: None,
                    effect: "PreferNoSchedule".into()
                },
                Taint {
                    key: "example.com/x".into(),
                    value: Some("y".into()),
                    effect: "NoExecute".into()
                },
            ]
        );
        assert_eq!(parse_taints("").unwrap(), vec![]);
    }

    #[test]
    fn bad_taints_are_refused_naming_the_flag_and_the_entry() {
        let err = parse_taints("a=b:NoSchedule,c=d:Sometimes").unwrap_err();
        assert_eq!(err.flag, "--register-with-taints");
        assert_eq!(err.entry, "c=d:Sometimes");
        let message = err.to_string();
        assert!(
            message.starts_with("--register-with-taints \"c=d:Sometimes\": "),
            "{message}"
        );
        assert!(
            message.contains("NoSchedule, PreferNoSchedule or NoExecute"),
            "{message}"
        );
        for bad in [
            "novalue",
            "a=b",
            "a:b:NoSchedule",
            "=v:NoSchedule",
            "a=b=c:NoSchedule",
            "Bad_/k:NoSchedule",
        ] {
            let err = parse_taints(bad).unwrap_err();
            assert_eq!(err.entry, bad);
        }
        let err = parse_taints("a=1:NoSchedule,a=2:NoSchedule").unwrap_err();
        assert_eq!(err.entry, "a=2:NoSchedule");
        // The same key with another effect is a different taint.
        assert_eq!(parse_taints("a:NoSchedule,a:NoExecute").unwrap().len(), 2);
    }

    #[test]
    fn labels_and_capacity_flags_are_checked() {
        assert_eq!(
            parse_labels("a=1, example.com/b=,c=x.y").unwrap(),
            BTreeMap::from([
                ("a".to_string(), "1".to_string()),
                ("example.com/b".to_string(), String::new()),
                ("c".to_string(), "x.y".to_string()),
            ])
        );
        let err = parse_labels("a=1,b").unwrap_err();
        assert_eq!((err.flag, err.entry.as_str()), ("--node-labels", "b"));
        assert!(parse_labels("a=-x").is_err());
        for good in ["4", "3500m", "0.5", "32Gi", "1e3", "128974848", "2E+2"] {
            assert!(check_quantity(good).is_ok(), "{good}");
        }
        for bad in ["", "Gi", "-1", "4 cores", "1.2.3", "32GB", "1e"] {
            assert!(check_quantity(bad).is_err(), "{bad}");
        }
        assert_eq!(Capacity::parse("4", "32Gi", "1.5").unwrap_err().flag, "--capacity-pods");
        assert_eq!(
            Capacity::parse("4", "lots", "110").unwrap_err().flag,
            "--capacity-memory"
        );
    }

    #[test]
    fn node_i_has_its_zone_labels_taints_and_addresses() {
        let c = config();
        let node = c.node(7);
        assert_eq!(node["metadata"]["name"], "hollow-node-7");
        let labels = &node["metadata"]["labels"];
        assert_eq!(labels["kubernetes.io/hostname"], "hollow-node-7");
        assert_eq!(labels["kubernetes.io/os"], std::env::consts::OS);
        assert_eq!(labels["kubernetes.io/arch"], crate::node_status::go_arch());
        assert_eq!(labels["type"], "hollow");
        assert_eq!(labels[ZONE_LABEL], "zone-1");
        assert_eq!(labels[REGION_LABEL], "region-0");
        assert_eq!(labels["pool"], "sim");
        assert_eq!(
            node["spec"]["taints"],
            json!([{"key": "dedicated", "value": "sim", "effect": "NoSchedule"}])
        );
        assert_eq!(node["spec"]["podCIDR"], "100.64.7.0/24");
        // It deserializes as a Node.
        serde_json::from_value::<Node>(node).unwrap();
        assert_eq!(c.node(9)["metadata"]["labels"][ZONE_LABEL], "zone-0");

        let status = c.node_status(7, "6.1.0");
        assert_eq!(status["capacity"], json!({"cpu": "4", "memory": "32Gi", "pods": "110"}));
        assert_eq!(status["allocatable"], status["capacity"]);
        assert_eq!(
            status["addresses"],
            json!([{"type": "InternalIP", "address": "10.0.0.8"}, {"type": "Hostname", "address": "hollow-node-7"}])
        );
        let conditions = status["conditions"].as_array().unwrap();
        let of = |t: &str| conditions.iter().find(|c| c["type"] == t).unwrap()["status"].clone();
        assert_eq!(of("Ready"), "True");
        for t in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
            assert_eq!(of(t), "False");
        }
        assert_eq!(status["nodeInfo"]["kubeletVersion"], node_status::kubelet_version());
        assert_eq!(status["nodeInfo"]["kernelVersion"], "6.1.0");

        // Without taints, an existing node's taints are removed.
        let plain = SimulateConfig {
            taints: vec![],
            ..config()
        };
        assert!(plain.node(0)["spec"].get("taints").is_none());
        assert_eq!(plain.node_update(0)["spec"]["taints"], Value::Null);
    }

    #[test]
    fn names_map_back_to_indexes_and_addresses_are_unique() {
        let c = config();
        assert_eq!(c.index_of("hollow-node-0"), Some(0));
        assert_eq!(c.index_of("hollow-node-19"), Some(19));
        for other in [
            "hollow-node-20",
            "hollow-node-07",
            "hollow-node-+1",
            "hollow-node-",
            "real-node",
            "n1",
        ] {
            assert_eq!(c.index_of(other), None, "{other}");
        }
        assert_eq!(node_ip(0), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(node_ip(255), Ipv4Addr::new(10, 0, 1, 0));
        assert_eq!(node_ip(70_000), Ipv4Addr::new(10, 1, 17, 113));
        assert_eq!(pod_block(300), Ipv4Addr::new(100, 65, 44, 0));
    }

    #[test]
    fn lease_renewals_are_spread_over_the_interval() {
        for count in [1, 20, 99, 100, 101, 5000, 12_345] {
            let slices: Vec<std::ops::Range<usize>> = (0..LEASE_SLICES).map(|s| lease_slice(s, count)).collect();
            // Every node once, in order.
            let nodes: Vec<usize> = slices.iter().cloned().flatten().collect();
            assert_eq!(nodes, (0..count).collect::<Vec<_>>(), "{count}");
            for (s, range) in slices.iter().enumerate() {
                for i in range.clone() {
                    assert_eq!(i * LEASE_SLICES / count, s);
                }
                // Evenly: no slice has more than its share, rounded up.
                assert!(range.len() <= count.div_ceil(LEASE_SLICES), "{count}: {range:?}");
            }
        }
        // 20 nodes: one every 5 slices (every half second), not all in the first two seconds.
        let busy: Vec<usize> = (0..LEASE_SLICES).filter(|s| !lease_slice(*s, 20).is_empty()).collect();
        assert_eq!(busy, (0..20).map(|i| i * 5).collect::<Vec<_>>());
    }

    fn pod(uid: &str, node: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("p-{uid}"), "namespace": "default", "uid": uid},
            "spec": {
                "nodeName": node,
                "initContainers": [{"name": "setup", "image": "busybox"}, {"name": "proxy", "image": "envoy", "restartPolicy": "Always"}],
                "containers": [{"name": "main", "image": "nginx:1.27"}, {"name": "log", "image": "busybox"}],
            },
            "status": {"phase": "Pending"},
        }))
        .unwrap()
    }

    #[test]
    fn a_pod_is_reported_running_with_every_container_started() {
        let p = pod("u1", "hollow-node-3");
        let t = "2025-01-01T00:00:00Z";
        let status = running_status(&p, Ipv4Addr::new(10, 0, 0, 4), Ipv4Addr::new(100, 64, 3, 1), t);
        assert_eq!(status["phase"], "Running");
        assert_eq!(status["hostIP"], "10.0.0.4");
        assert_eq!(status["podIP"], "100.64.3.1");
        assert_eq!(status["podIPs"], json!([{"ip": "100.64.3.1"}]));
        assert_eq!(status["startTime"], t);
        let types: Vec<&str> = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                assert_eq!(c["status"], "True");
                assert_eq!(c["lastTransitionTime"], t);
                c["type"].as_str().unwrap()
            })
            .collect();
        assert_eq!(types, ["PodScheduled", "Initialized", "ContainersReady", "Ready"]);
        assert_eq!(
            status["containerStatuses"][0],
            json!({"name": "main", "image": "nginx:1.27", "imageID": "", "containerID": "kairn-sim://u1/main",
                "ready": true, "started": true, "restartCount": 0, "state": {"running": {"startedAt": t}}})
        );
        assert_eq!(status["containerStatuses"][1]["name"], "log");
        assert_eq!(
            status["initContainerStatuses"][0]["state"]["terminated"]["reason"],
            "Completed"
        );
        assert_eq!(status["initContainerStatuses"][1]["state"]["running"]["startedAt"], t);
        // It deserializes as a PodStatus.
        serde_json::from_value::<k8s_openapi::api::core::v1::PodStatus>(status).unwrap();
    }

    #[test]
    fn the_tracker_writes_once_per_pod_and_only_for_its_nodes() {
        let mut tracker = Tracker::new(Arc::new(config()));
        assert_eq!(tracker.on_event(watcher::Event::Apply(pod("x", "real-node"))), None);
        let job = tracker
            .on_event(watcher::Event::Apply(pod("a", "hollow-node-3")))
            .unwrap();
        let Write::Start(status) = &job.write else {
            panic!("{job:?}")
        };
        assert_eq!(status["podIP"], "100.64.3.1");
        assert_eq!(status["hostIP"], "10.0.0.4");
        // In flight: not again.
        assert_eq!(tracker.on_event(watcher::Event::Apply(pod("a", "hollow-node-3"))), None);
        // A second pod on the node gets the next address.
        let other = tracker
            .on_event(watcher::Event::Apply(pod("b", "hollow-node-3")))
            .unwrap();
        let Write::Start(status) = &other.write else {
            panic!("{other:?}")
        };
        assert_eq!(status["podIP"], "100.64.3.2");
        // A passing failure is retried; then written, it is not written again.
        assert_eq!(tracker.on_done(job.clone(), Outcome::Retry), Some(job.clone()));
        assert_eq!(tracker.on_done(job.clone(), Outcome::Written), None);
        assert_eq!(tracker.on_event(watcher::Event::Apply(pod("a", "hollow-node-3"))), None);
        // Deleted gracefully: finished once.
        let mut terminating = pod("a", "hollow-node-3");
        terminating.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        let finish = tracker.on_event(watcher::Event::Apply(terminating.clone())).unwrap();
        assert_eq!(finish.write, Write::Finish);
        assert_eq!(finish.pod.uid, "a");
        assert_eq!(tracker.on_event(watcher::Event::Apply(terminating)), None);
        // Gone: its address is free again.
        tracker.on_event(watcher::Event::Delete(pod("a", "hollow-node-3")));
        let c = tracker
            .on_event(watcher::Event::Apply(pod("c", "hollow-node-3")))
            .unwrap();
        let Write::Start(status) = &c.write else {
            panic!("{c:?}")
        };
        assert_eq!(status["podIP"], "100.64.3.1");
        // A refused write is not retried until the pod changes again.
        assert_eq!(tracker.on_done(c, Outcome::Failed), None);
        assert!(tracker
            .on_event(watcher::Event::Apply(pod("c", "hollow-node-3")))
            .is_some());
    }

    #[test]
    fn a_relist_keeps_the_addresses_of_running_pods_and_forgets_the_rest() {
        let mut tracker = Tracker::new(Arc::new(config()));
        tracker.on_event(watcher::Event::Apply(pod("gone", "hollow-node-1")));
        let mut running = pod("r", "hollow-node-1");
        running.status = serde_json::from_value(json!({"phase": "Running", "podIP": "100.64.1.5"})).unwrap();
        tracker.on_event(watcher::Event::Init);
        assert_eq!(tracker.on_event(watcher::Event::InitApply(running)), None);
        tracker.on_event(watcher::Event::InitDone);
        assert!(!tracker.stages.contains_key("gone"));
        assert_eq!(tracker.ips.by_uid.get("r"), Some(&(1, 5)));
        // .1 (the forgotten pod's) is free again, .5 is not.
        let job = tracker
            .on_event(watcher::Event::Apply(pod("n", "hollow-node-1")))
            .unwrap();
        let Write::Start(status) = &job.write else {
            panic!("{job:?}")
        };
        assert_eq!(status["podIP"], "100.64.1.1");
    }
}
