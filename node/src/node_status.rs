//! The Node object: registration with the host's capacity and allocatable, the node
//! Lease in `kube-node-lease` renewed every few seconds, and the conditions (memory,
//! disk and PID pressure measured on the host, Ready) written when they change or once
//! a minute, as a kubelet with node leases does. The pieces a Node is made
//! of (labels, conditions, node info, creation, the Lease) serve the hollow nodes of
//! [`crate::simulate`] too.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Map, Value};

use crate::pod::now;

/// How often the Lease is renewed and the conditions measured.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How often unchanged conditions are written anyway (kubelet: 5 min).
pub const STATUS_REPORT: Duration = Duration::from_secs(60);

/// A hard eviction threshold: an amount, or a share of the total.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// Less than this many bytes (or inodes) left.
    Amount(u64),
    /// Less than this percentage of the total left.
    Percent(f64),
}

impl Threshold {
    /// How much of `total` the threshold keeps back.
    fn reserve(self, total: u64) -> u64 {
        match self {
            Threshold::Amount(a) => a.min(total),
            Threshold::Percent(p) => (total as f64 * p / 100.0) as u64,
        }
    }

    /// Whether `available` of `total` is below the threshold.
    fn crossed(self, available: u64, total: u64) -> bool {
        total > 0 && available < self.reserve(total)
    }
}

/// The signals under which the node reports pressure (the kubelet's `--eviction-hard`,
/// e.g. `memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%`).
#[derive(Debug, Clone, PartialEq)]
pub struct EvictionHard {
    /// `memory.available`.
    pub memory_available: Threshold,
    /// `nodefs.available`: the file system of the agent's data directory.
    pub nodefs_available: Threshold,
    /// `nodefs.inodesFree`.
    pub nodefs_inodes_free: Threshold,
}

impl Default for EvictionHard {
    /// The kubelet's defaults, except disk: 1Gi rather than 10%, since an agent shares
    /// its disk with the developer's machine (`--eviction-hard` sets kubelet's).
    fn default() -> Self {
        EvictionHard {
            memory_available: Threshold::Amount(100 * 1024 * 1024),
            nodefs_available: Threshold::Amount(1024 * 1024 * 1024),
            nodefs_inodes_free: Threshold::Percent(5.0),
        }
    }
}

impl EvictionHard {
    /// Parses the kubelet's syntax; signals not given keep their defaults.
    pub fn parse(s: &str) -> Result<EvictionHard, String> {
        let mut out = EvictionHard::default();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (signal, value) = entry
                .split_once('<')
                .ok_or_else(|| format!("{entry:?}: expected <signal><<quantity or percentage>"))?;
            let threshold = match value.strip_suffix('%') {
                Some(p) => match p.parse::<f64>() {
                    Ok(p) if (0.0..=100.0).contains(&p) => Threshold::Percent(p),
                    _ => return Err(format!("{entry:?}: a percentage from 0 to 100")),
                },
                None => match kairn_quantity::value(value) {
                    Some(v) if v >= 0 => Threshold::Amount(v as u64),
                    _ => return Err(format!("{entry:?}: {value:?} is not a quantity")),
                },
            };
            match signal.trim() {
                "memory.available" => out.memory_available = threshold,
                "nodefs.available" => out.nodefs_available = threshold,
                "nodefs.inodesFree" => out.nodefs_inodes_free = threshold,
                other => {
                    return Err(format!(
                        "{other:?}: unknown signal (memory.available, nodefs.available, nodefs.inodesFree)"
                    ))
                }
            }
        }
        Ok(out)
    }
}
/// How long a Lease is valid without renewal.
pub const LEASE_SECONDS: i32 = 40;

/// Who the real agent's conditions say posts them.
const AGENT: &str = "kairn agent";

fn micro_now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

/// Total memory of the host in KiB, from /proc/meminfo.
pub(crate) fn memory_kib() -> u64 {
    meminfo_kib("MemTotal").unwrap_or(0)
}

/// What the host is short of, measured now against the hard eviction thresholds:
/// memory available, disk and inodes free where the agent keeps its data, and process
/// ids (pressure once 90% are in use).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Pressure {
    pub memory: bool,
    pub disk: bool,
    pub pids: bool,
}

/// A file system's (total, free) bytes and (total, free) inodes.
fn statvfs(path: &Path) -> Option<((u64, u64), (u64, u64))> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and a zeroed struct the call fills.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let block = st.f_frsize as u64;
    Some((
        (st.f_blocks as u64 * block, st.f_bavail as u64 * block),
        (st.f_files as u64, st.f_favail as u64),
    ))
}

/// A field of /proc/meminfo in KiB.
fn meminfo_kib(field: &str) -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

impl Pressure {
    /// Measures the host, with the agent's data in `data_dir`.
    pub(crate) fn measure(data_dir: &Path, limits: &EvictionHard) -> Pressure {
        let memory = match (meminfo_kib("MemAvailable"), meminfo_kib("MemTotal")) {
            (Some(available), Some(total)) => limits.memory_available.crossed(available * 1024, total * 1024),
            _ => false,
        };
        let disk = statvfs(data_dir).is_some_and(|((total, free), (inodes, inodes_free))| {
            limits.nodefs_available.crossed(free, total) || limits.nodefs_inodes_free.crossed(inodes_free, inodes)
        });
        // Threads in use (the 4th field of loadavg is "running/total") against pid_max.
        let threads = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().nth(3)?.split_once('/')?.1.parse::<u64>().ok());
        let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|m| m.trim().parse::<u64>().ok());
        let pids = matches!((threads, pid_max), (Some(t), Some(m)) if t * 10 > m * 9);
        Pressure { memory, disk, pids }
    }
}

/// The conditions' last statuses and when they took them.
pub(crate) type Transitions = HashMap<&'static str, (bool, String)>;

/// The node conditions for `pressure` and Ready (or not, when stopping), their messages
/// naming `agent`, the one posting them; transition times kept in `since`.
pub(crate) fn conditions_at(ready: bool, pressure: Pressure, agent: &str, since: &mut Transitions) -> Value {
    let t = now();
    let mut cond = |type_: &'static str, status: bool, reason: &str, message: String| {
        let entry = since.entry(type_).or_insert_with(|| (status, t.clone()));
        if entry.0 != status {
            *entry = (status, t.clone());
        }
        json!({"type": type_, "status": if status { "True" } else { "False" }, "reason": reason,
            "message": message, "lastHeartbeatTime": t, "lastTransitionTime": entry.1})
    };
    json!([
        if pressure.memory {
            cond(
                "MemoryPressure",
                true,
                "KubeletHasInsufficientMemory",
                format!("{agent} has insufficient memory available"),
            )
        } else {
            cond(
                "MemoryPressure",
                false,
                "KubeletHasSufficientMemory",
                format!("{agent} has sufficient memory available"),
            )
        },
        if pressure.disk {
            cond(
                "DiskPressure",
                true,
                "KubeletHasDiskPressure",
                format!("{agent} has disk pressure"),
            )
        } else {
            cond(
                "DiskPressure",
                false,
                "KubeletHasNoDiskPressure",
                format!("{agent} has no disk pressure"),
            )
        },
        if pressure.pids {
            cond(
                "PIDPressure",
                true,
                "KubeletHasInsufficientPID",
                format!("{agent} has insufficient PID available"),
            )
        } else {
            cond(
                "PIDPressure",
                false,
                "KubeletHasSufficientPID",
                format!("{agent} has sufficient PID available"),
            )
        },
        if ready {
            cond(
                "Ready",
                true,
                "KubeletReady",
                format!("{agent} is posting ready status"),
            )
        } else {
            cond("Ready", false, "KubeletNotReady", format!("{agent} is stopping"))
        },
    ])
}

/// The node conditions of a healthy node: no pressure, and Ready (or not, when
/// stopping).
pub(crate) fn conditions(ready: bool, agent: &str) -> Value {
    conditions_at(ready, Pressure::default(), agent, &mut Transitions::new())
}

/// The host's kernel release, from /proc ("" where it cannot be read).
pub(crate) fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The kubelet version every Kairn node reports.
pub(crate) fn kubelet_version() -> String {
    format!("v1.33.0-kairn.{}", env!("CARGO_PKG_VERSION"))
}

/// This host's architecture as Go names it (`amd64`, `arm64`): what Kubernetes puts in
/// `kubernetes.io/arch` and `nodeInfo.architecture`, and what manifests select on.
pub(crate) fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// `status.nodeInfo` for a node on this host whose containers run on `container_runtime`.
pub(crate) fn node_info(kernel: &str, container_runtime: &str) -> Value {
    json!({
        "architecture": go_arch(), "operatingSystem": std::env::consts::OS,
        "kernelVersion": kernel, "osImage": "", "bootID": "", "machineID": "", "systemUUID": "",
        "containerRuntimeVersion": container_runtime, "kubeletVersion": kubelet_version(),
        "kubeProxyVersion": "",
    })
}

/// The labels every node carries: its host name, OS and architecture.
pub(crate) fn node_labels(name: &str) -> Map<String, Value> {
    let mut labels = Map::new();
    labels.insert("kubernetes.io/hostname".into(), json!(name));
    labels.insert("kubernetes.io/os".into(), json!(std::env::consts::OS));
    labels.insert("kubernetes.io/arch".into(), json!(go_arch()));
    labels
}

/// The Node's status as the agent sees the host, its data in `data_dir`. Allocatable
/// keeps back kubelet's default hard eviction thresholds (100Mi of memory, 10% of disk).
fn status(node_ip: &str, name: &str, log_port: u16, data_dir: &Path, limits: &EvictionHard) -> Value {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let memory = memory_kib();
    let disk = statvfs(data_dir).map(|((total, _), _)| total).unwrap_or(0);
    let capacity = json!({"cpu": cpus.to_string(), "memory": format!("{memory}Ki"), "pods": "110",
        "ephemeral-storage": disk.to_string()});
    let memory_left = (memory * 1024).saturating_sub(limits.memory_available.reserve(memory * 1024));
    let allocatable = json!({"cpu": cpus.to_string(), "memory": format!("{}Ki", memory_left / 1024),
        "pods": "110", "ephemeral-storage": disk.saturating_sub(limits.nodefs_available.reserve(disk)).to_string()});
    json!({
        "capacity": capacity,
        "allocatable": allocatable,
        "conditions": conditions(true, AGENT),
        "addresses": [{"type": "InternalIP", "address": node_ip}, {"type": "Hostname", "address": name}],
        // Where the API server proxies `pods/<name>/log` to (the kubelet port, in Kubernetes).
        "daemonEndpoints": {"kubeletEndpoint": {"Port": log_port}},
        "nodeInfo": node_info(&kernel_version(), "process://"),
    })
}

/// Whether [`create_node`] made the Node or found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Created {
    /// Created now.
    New,
    /// It existed already (and was patched, if asked).
    Existed,
}

/// Creates the Node `node` (a Node as JSON, without status); if a Node of that name
/// exists already, merge-patches it with `if_exists` when given, else leaves it.
pub(crate) async fn create_node(
    nodes: &Api<Node>,
    node: Value,
    if_exists: Option<Value>,
) -> Result<Created, kube::Error> {
    let node: Node = serde_json::from_value(node).map_err(kube::Error::SerdeError)?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => Ok(Created::New),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            if let Some(patch) = if_exists {
                let name = node.metadata.name.as_deref().unwrap_or_default();
                nodes.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await?;
            }
            Ok(Created::Existed)
        }
        Err(e) => Err(e),
    }
}

/// Merge-patches the Node's status with `status`.
pub(crate) async fn write_status(nodes: &Api<Node>, name: &str, status: Value) -> Result<(), kube::Error> {
    let patch = json!({"status": status});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    Ok(())
}

/// Creates the Node if absent and writes its status.
pub async fn register(
    client: &kube::Client,
    name: &str,
    node_ip: &str,
    log_port: u16,
    data_dir: &Path,
    limits: &EvictionHard,
) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = json!({"metadata": {"name": name, "labels": node_labels(name)}, "spec": {}});
    match create_node(&nodes, node, None).await? {
        Created::New => tracing::info!(node = name, "registered node"),
        Created::Existed => tracing::info!(node = name, "node already registered"),
    }
    let _ = std::fs::create_dir_all(data_dir);
    write_status(&nodes, name, status(node_ip, name, log_port, data_dir, limits)).await
}

/// Writes the conditions: measured `pressure`, Ready (or not ready when stopping).
pub(crate) async fn heartbeat(
    client: &kube::Client,
    name: &str,
    ready: bool,
    pressure: Pressure,
    since: &mut Transitions,
) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = json!({"status": {"conditions": conditions_at(ready, pressure, AGENT, since)}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    Ok(())
}

/// Creates or renews the node's Lease (`name` in `kube-node-lease`, held by the node).
pub async fn renew_lease(client: &kube::Client, name: &str) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let spec = json!({"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": micro_now()});
    match leases
        .patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": spec})))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let lease: Lease = serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": "kube-node-lease"}, "spec": spec}),
            )
            .map_err(kube::Error::SerdeError)?;
            leases.create(&PostParams::default(), &lease).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(conditions: &'a Value, type_: &str) -> &'a Value {
        conditions
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
            .unwrap_or(&Value::Null)
    }

    #[test]
    fn pressure_flips_its_condition_and_only_a_flip_moves_the_transition_time() {
        let mut since = Transitions::new();
        since.insert("MemoryPressure", (false, "2020-01-01T00:00:00Z".into()));
        since.insert("Ready", (true, "2020-01-01T00:00:00Z".into()));
        let calm = conditions_at(true, Pressure::default(), "a", &mut since);
        assert_eq!(
            find(&calm, "MemoryPressure")["lastTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
        let tight = Pressure {
            memory: true,
            ..Default::default()
        };
        let pressed = conditions_at(true, tight, "a", &mut since);
        let memory = find(&pressed, "MemoryPressure");
        assert_eq!(memory["status"], "True");
        assert_eq!(memory["reason"], "KubeletHasInsufficientMemory");
        assert_ne!(memory["lastTransitionTime"], "2020-01-01T00:00:00Z");
        assert_eq!(find(&pressed, "Ready")["lastTransitionTime"], "2020-01-01T00:00:00Z");
        let stopping = conditions_at(false, tight, "a", &mut since);
        assert_eq!(find(&stopping, "Ready")["status"], "False");
    }

    #[test]
    fn eviction_thresholds_parse_as_the_kubelet_writes_them() {
        let e = EvictionHard::parse("memory.available<200Mi, nodefs.available<10%").unwrap();
        assert_eq!(e.memory_available, Threshold::Amount(200 * 1024 * 1024));
        assert_eq!(e.nodefs_available, Threshold::Percent(10.0));
        assert_eq!(e.nodefs_inodes_free, EvictionHard::default().nodefs_inodes_free);
        assert!(Threshold::Percent(10.0).crossed(9, 100) && !Threshold::Percent(10.0).crossed(10, 100));
        assert!(Threshold::Amount(5).crossed(4, 100) && !Threshold::Amount(5).crossed(5, 100));
        for bad in [
            "memory.available>1Gi",
            "cpu.available<1",
            "nodefs.available<110%",
            "memory.available<lots",
        ] {
            assert!(EvictionHard::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_host_is_measured() {
        let dir = tempfile::tempdir().unwrap();
        let ((total, free), (inodes, _)) = statvfs(dir.path()).unwrap();
        assert!(total > 0 && free <= total && inodes > 0);
        assert!(meminfo_kib("MemTotal").unwrap() > meminfo_kib("MemAvailable").unwrap());
        let s = status("127.0.0.1", "n", 1, dir.path(), &EvictionHard::default());
        assert_eq!(s["allocatable"]["pods"], "110");
        assert!(
            s["allocatable"]["ephemeral-storage"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                > 0
        );
    }
}
