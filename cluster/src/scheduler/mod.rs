//! The scheduler: binds each pending pod to a node that can run it.
//!
//! Filter, then score, per the Kubernetes model: a node must be Ready, schedulable,
//! match the pod's `nodeSelector`, and have room for its cpu/memory requests and one
//! more pod; among those the least allocated wins. A pod that fits nowhere keeps a
//! `PodScheduled=False` condition saying why, and is retried.

pub mod quantity;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

/// The scheduler name pods ask for by default.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// Errors of one scheduling attempt.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("api: {0}")]
    Api(#[from] kube::Error),
}

/// Runs the scheduler until shutdown.
pub async fn run(client: kube::Client, shutdown: watch::Receiver<bool>) {
    let pods: Api<Pod> = Api::all(client.clone());
    let pending = watcher::Config::default().fields("spec.nodeName=");
    let controller = Controller::new(pods, pending);
    // A node that appears, becomes ready or frees room may fit any pending pod: retry
    // them all (the cache holds only unbound pods, so this stays small).
    let waiting = controller.store();
    let nodes: Api<Node> = Api::all(client.clone());
    controller
        .watches(nodes, watcher::Config::default(), move |_node: Node| {
            waiting
                .state()
                .iter()
                .map(|pod| ObjectRef::from_obj(pod.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(crate::controllers::stopped(shutdown))
        .run(
            schedule,
            |_, _, _| Action::requeue(Duration::from_secs(2)),
            Arc::new(client),
        )
        .for_each(|_| async {})
        .await;
}

/// Requests of a pod: (cpu cores, memory bytes).
fn requests(pod: &Pod) -> (f64, f64) {
    let mut cpu = 0.0;
    let mut mem = 0.0;
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let reqs = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        if let Some(reqs) = reqs {
            cpu += reqs.get("cpu").and_then(|q| quantity::parse(&q.0)).unwrap_or(0.0);
            mem += reqs.get("memory").and_then(|q| quantity::parse(&q.0)).unwrap_or(0.0);
        }
    }
    (cpu, mem)
}

/// A node's allocatable (cpu, memory, pods).
fn allocatable(node: &Node) -> (f64, f64, f64) {
    let alloc = node
        .status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
    let get = |k: &str| {
        alloc
            .and_then(|a| a.get(k))
            .and_then(|q| quantity::parse(&q.0))
            .unwrap_or(0.0)
    };
    (get("cpu"), get("memory"), get("pods"))
}

fn is_ready(node: &Node) -> bool {
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Why one node was filtered out, or its score if it fits.
fn evaluate(pod: &Pod, node: &Node, on_node: &[&Pod]) -> Result<f64, &'static str> {
    if !is_ready(node) {
        return Err("node(s) were not ready");
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        return Err("node(s) were unschedulable");
    }
    let selector: BTreeMap<String, String> = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_selector.clone())
        .unwrap_or_default();
    let labels = node.labels();
    if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
        return Err("node(s) didn't match Pod's node affinity/selector");
    }
    let (cpu, mem, max_pods) = allocatable(node);
    let (want_cpu, want_mem) = requests(pod);
    let (used_cpu, used_mem) = on_node
        .iter()
        .map(|p| requests(p))
        .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    if on_node.len() as f64 + 1.0 > max_pods {
        return Err("Too many pods");
    }
    if used_cpu + want_cpu > cpu {
        return Err("Insufficient cpu");
    }
    if used_mem + want_mem > mem {
        return Err("Insufficient memory");
    }
    // Least allocated: the share of cpu and memory left free after placing the pod.
    let free = |used: f64, total: f64| if total > 0.0 { (total - used) / total } else { 0.0 };
    Ok((free(used_cpu + want_cpu, cpu) + free(used_mem + want_mem, mem)) / 2.0)
}

async fn schedule(pod: Arc<Pod>, client: Arc<kube::Client>) -> Result<Action, Error> {
    let spec = pod.spec.as_ref();
    let bound = spec.and_then(|s| s.node_name.as_ref()).is_some_and(|n| !n.is_empty());
    let ours = spec
        .and_then(|s| s.scheduler_name.as_deref())
        .unwrap_or(DEFAULT_SCHEDULER)
        == DEFAULT_SCHEDULER;
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    if bound || !ours || matches!(phase, "Succeeded" | "Failed") {
        return Ok(Action::await_change());
    }
    let ns = pod.namespace().unwrap_or_else(|| "default".into());
    let name = pod.name_any();
    let nodes = Api::<Node>::all((*client).clone())
        .list(&ListParams::default())
        .await?
        .items;
    let all_pods = Api::<Pod>::all((*client).clone())
        .list(&ListParams::default())
        .await?
        .items;
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    let mut best: Option<(f64, &Node)> = None;
    for node in &nodes {
        let node_name = node.name_any();
        let on_node: Vec<&Pod> = all_pods
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node_name.as_str()))
            .filter(|p| {
                !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
            })
            .collect();
        match evaluate(&pod, node, &on_node) {
            Ok(score) if best.is_none_or(|(s, _)| score > s) => best = Some((score, node)),
            Ok(_) => {}
            Err(reason) => *reasons.entry(reason).or_default() += 1,
        }
    }
    let pods: Api<Pod> = Api::namespaced((*client).clone(), &ns);
    match best {
        Some((_, node)) => {
            let binding = Binding {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    ..Default::default()
                },
                target: ObjectReference {
                    kind: Some("Node".into()),
                    name: Some(node.name_any()),
                    ..Default::default()
                },
            };
            let body = serde_json::to_vec(&binding).map_err(kube::Error::SerdeError)?;
            let request = kube::core::Request::new(format!("/api/v1/namespaces/{ns}/pods"))
                .create_subresource("binding", &name, &PostParams::default(), body)
                .map_err(kube::Error::BuildRequest)?;
            client.request::<serde_json::Value>(request).await?;
            tracing::info!(object = %format!("{ns}/{name}"), node = %node.name_any(), "bound pod");
            Ok(Action::await_change())
        }
        None => {
            let detail = reasons
                .iter()
                .map(|(r, n)| format!("{n} {r}"))
                .collect::<Vec<_>>()
                .join(", ");
            let message = format!(
                "0/{} nodes are available: {}.",
                nodes.len(),
                if detail.is_empty() {
                    "no nodes registered".to_string()
                } else {
                    detail
                }
            );
            let already = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "PodScheduled" && c.message.as_deref() == Some(message.as_str()));
            if !already {
                tracing::info!(object = %format!("{ns}/{name}"), reason = %message, "pod is unschedulable");
                let condition = json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": message, "lastTransitionTime": crate::kinds::now()});
                let mut conditions: Vec<serde_json::Value> = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .into_iter()
                    .flatten()
                    .filter(|c| c.type_ != "PodScheduled")
                    .filter_map(|c| serde_json::to_value(c).ok())
                    .collect();
                conditions.push(condition);
                let patch = json!({"status": {"phase": "Pending", "conditions": conditions}});
                pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
            }
            // Node changes retrigger scheduling; the requeue is a safety net.
            Ok(Action::requeue(Duration::from_secs(10)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cpu: &str, mem: &str, labels: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": "n", "labels": labels},
            "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": "10"},
                "conditions": [{"type": "Ready", "status": "True"}]}}))
        .unwrap()
    }

    fn pod(cpu: &str, selector: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"nodeSelector": selector,
            "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": "1Mi"}}}]}}))
        .unwrap()
    }

    #[test]
    fn filters_by_fit_and_selector() {
        let n = node("2", "1Gi", json!({"disk": "ssd"}));
        assert!(evaluate(&pod("500m", json!({})), &n, &[]).is_ok());
        assert!(evaluate(&pod("500m", json!({"disk": "ssd"})), &n, &[]).is_ok());
        assert_eq!(evaluate(&pod("3", json!({})), &n, &[]), Err("Insufficient cpu"));
        let busy = pod("1800m", json!({}));
        assert_eq!(evaluate(&pod("500m", json!({})), &n, &[&busy]), Err("Insufficient cpu"));
        assert_eq!(
            evaluate(&pod("1", json!({"disk": "hdd"})), &n, &[]),
            Err("node(s) didn't match Pod's node affinity/selector")
        );
        let fuller = evaluate(&pod("1", json!({})), &n, &[]).unwrap();
        let emptier = evaluate(&pod("100m", json!({})), &n, &[]).unwrap();
        assert!(emptier > fuller, "least allocated scores higher");
    }
}
