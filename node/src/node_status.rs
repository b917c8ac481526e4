//! The Node object: registration with the host's capacity, a status heartbeat, and the
//! node Lease in `kube-node-lease` renewed every few seconds.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};

use crate::pod::now;

/// How often the Lease is renewed and the Ready condition refreshed.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a Lease is valid without renewal.
pub const LEASE_SECONDS: i32 = 40;

fn micro_now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

/// Total memory of the host in KiB, from /proc/meminfo.
fn memory_kib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn conditions(ready: bool) -> Value {
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
            "kairn agent has sufficient memory available"
        ),
        cond(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kairn agent has no disk pressure"
        ),
        cond(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kairn agent has sufficient PID available"
        ),
        if ready {
            cond("Ready", "True", "KubeletReady", "kairn agent is posting ready status")
        } else {
            cond("Ready", "False", "KubeletNotReady", "kairn agent is stopping")
        },
    ])
}

/// The Node's status as the agent sees the host.
fn status(node_ip: &str, name: &str, log_port: u16) -> Value {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let capacity = json!({"cpu": cpus.to_string(), "memory": format!("{}Ki", memory_kib()), "pods": "110"});
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    json!({
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": conditions(true),
        "addresses": [{"type": "InternalIP", "address": node_ip}, {"type": "Hostname", "address": name}],
        // Where the API server proxies `pods/<name>/log` to (the kubelet port, in Kubernetes).
        "daemonEndpoints": {"kubeletEndpoint": {"Port": log_port}},
        "nodeInfo": {
            "architecture": std::env::consts::ARCH, "operatingSystem": std::env::consts::OS,
            "kernelVersion": kernel, "osImage": "", "bootID": "", "machineID": "", "systemUUID": "",
            "containerRuntimeVersion": "process://", "kubeletVersion": format!("v1.33.0-kairn.{}", env!("CARGO_PKG_VERSION")),
            "kubeProxyVersion": "",
        },
    })
}

/// Creates the Node if absent and writes its status.
pub async fn register(client: &kube::Client, name: &str, node_ip: &str, log_port: u16) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": std::env::consts::OS,
            "kubernetes.io/arch": std::env::consts::ARCH}},
        "spec": {},
    }))
    .map_err(kube::Error::SerdeError)?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => tracing::info!(node = name, "registered node"),
        Err(kube::Error::Api(s)) if s.code == 409 => tracing::info!(node = name, "node already registered"),
        Err(e) => return Err(e),
    }
    let patch = json!({"status": status(node_ip, name, log_port)});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    Ok(())
}

/// Refreshes the Ready condition (or marks the node not ready when stopping).
pub async fn heartbeat(client: &kube::Client, name: &str, ready: bool) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = json!({"status": {"conditions": conditions(ready)}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    Ok(())
}

/// Creates or renews the node's Lease.
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
