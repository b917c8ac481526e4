//! ReplicaSet controller: keeps the number of active pods a ReplicaSet controls equal to
//! its replicas, replacing pods that failed or were deleted, and reports counts.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

use super::deployment::owner_ref;
use super::{controlled_by, Error};

/// Runs the controller until shutdown.
pub async fn run(client: kube::Client, shutdown: watch::Receiver<bool>) {
    let replicasets: Api<ReplicaSet> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    Controller::new(replicasets, watcher::Config::default())
        .owns(pods, watcher::Config::default())
        .graceful_shutdown_on(super::stopped(shutdown))
        .run(reconcile, super::retry_soon, Arc::new(client))
        .for_each(|r| async move { super::log_result("replicaset", r) })
        .await;
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Whether the pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

async fn reconcile(rs: Arc<ReplicaSet>, client: Arc<kube::Client>) -> Result<Action, Error> {
    let ns = rs
        .namespace()
        .ok_or_else(|| Error::Malformed("replicaset without namespace".into()))?;
    let name = rs.name_any();
    let uid = rs
        .uid()
        .ok_or_else(|| Error::Malformed("replicaset without uid".into()))?;
    let spec = rs
        .spec
        .as_ref()
        .ok_or_else(|| Error::Malformed(format!("replicaset {name} has no spec")))?;
    let want = spec.replicas.unwrap_or(1).max(0) as usize;
    let pods_api: Api<Pod> = Api::namespaced((*client).clone(), &ns);
    let selector = super::selector_string(&spec.selector.match_labels.clone().unwrap_or_default());
    let owned: Vec<Pod> = pods_api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(|p| controlled_by(&p.metadata, &uid))
        // A pod being deleted no longer counts, as in Kubernetes.
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();

    // Pods that ended for good are replaced, as Kubernetes does.
    let (finished, mut active): (Vec<Pod>, Vec<Pod>) = owned
        .into_iter()
        .partition(|p| matches!(phase(p), "Failed" | "Succeeded"));
    for pod in &finished {
        tracing::info!(object = %format!("{ns}/{}", pod.name_any()), phase = phase(pod), "removing finished pod");
        pods_api.delete(&pod.name_any(), &Default::default()).await?;
    }

    if active.len() < want {
        let template = spec.template.clone().unwrap_or_default();
        let mut meta = template.metadata.clone().unwrap_or_default();
        for _ in active.len()..want {
            let pod = Pod {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{name}-")),
                    namespace: Some(ns.clone()),
                    labels: meta
                        .labels
                        .take()
                        .or_else(|| template.metadata.as_ref().and_then(|m| m.labels.clone())),
                    annotations: template.metadata.as_ref().and_then(|m| m.annotations.clone()),
                    owner_references: Some(vec![owner_ref(rs.as_ref())?]),
                    ..Default::default()
                },
                spec: template.spec.clone(),
                status: None,
            };
            let created = pods_api.create(&PostParams::default(), &pod).await?;
            tracing::info!(object = %format!("{ns}/{}", created.name_any()), replicaset = %name, "created pod");
            active.push(created);
        }
    } else if active.len() > want {
        // Remove the least useful first: unscheduled, then not ready, then the newest.
        active.sort_by_key(|p| {
            let scheduled = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
            let created = p
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or(0);
            (scheduled, is_ready(p), std::cmp::Reverse(created))
        });
        let excess = active.len() - want;
        for pod in active.drain(..excess) {
            tracing::info!(object = %format!("{ns}/{}", pod.name_any()), replicaset = %name, "deleting surplus pod");
            pods_api.delete(&pod.name_any(), &Default::default()).await?;
        }
    }

    let ready = active.iter().filter(|p| is_ready(p)).count() as i32;
    let status = ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(active.len() as i32),
        ready_replicas: Some(ready),
        available_replicas: Some(ready),
        observed_generation: rs.metadata.generation,
        ..Default::default()
    };
    if rs.status.as_ref() != Some(&status) {
        let api: Api<ReplicaSet> = Api::namespaced((*client).clone(), &ns);
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": status})))
            .await?;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}
