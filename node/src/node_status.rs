//! The Node object: registration with the host's capacity, a status heartbeat, and the
//! node Lease in `kube-node-lease` renewed every few seconds. The pieces a Node is made
//! of (labels, conditions, node info, creation, the Lease) serve the hollow nodes of
//! [`crate::simulate`] too.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Map, Value};

use crate::pod::now;

/// How often the Lease is renewed and the Ready condition refreshed.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
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
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The node conditions: no memory, disk or PID pressure, and Ready (or not, when
/// stopping), their messages naming `agent`, the one posting them.
pub(crate) fn conditions(ready: bool, agent: &str) -> Value {
    let t = now();
    let cond = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": t, "lastTransitionTime": t})
    };
    json!([
        cond(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            &format!("{agent} has sufficient memory available")
        ),
        cond(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            &format!("{agent} has no disk pressure")
        ),
        cond(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            &format!("{agent} has sufficient PID available")
        ),
        if ready {
            cond(
                "Ready",
                "True",
                "KubeletReady",
                &format!("{agent} is posting ready status"),
            )
        } else {
            cond("Ready", "False", "KubeletNotReady", &format!("{agent} is stopping"))
        },
    ])
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

/// The Node's status as the agent sees the host.
fn status(node_ip: &str, name: &str, log_port: u16) -> Value {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let capacity = json!({"cpu": cpus.to_string(), "memory": format!("{}Ki", memory_kib()), "pods": "110"});
    json!({
        "capacity": capacity,
        "allocatable": capacity,
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
pub async fn register(client: &kube::Client, name: &str, node_ip: &str, log_port: u16) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = json!({"metadata": {"name": name, "labels": node_labels(name)}, "spec": {}});
    match create_node(&nodes, node, None).await? {
        Created::New => tracing::info!(node = name, "registered node"),
        Created::Existed => tracing::info!(node = name, "node already registered"),
    }
    write_status(&nodes, name, status(node_ip, name, log_port)).await
}

/// Refreshes the Ready condition (or marks the node not ready when stopping).
pub async fn heartbeat(client: &kube::Client, name: &str, ready: bool) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = json!({"status": {"conditions": conditions(ready, AGENT)}});
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
