//! Deployment controller: one ReplicaSet per pod template (named by the template's
//! hash), the current one scaled to the Deployment's replicas, older ones to zero.
//! Revisions are numbered on the ReplicaSets (`deployment.kubernetes.io/revision`) as
//! `kubectl rollout undo` expects.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference, Time};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

use super::{controlled_by, Error};

/// Label carrying the pod template hash on ReplicaSets and their pods.
pub const HASH_LABEL: &str = "pod-template-hash";
/// Annotation numbering rollouts.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";

/// Runs the controller until shutdown.
pub async fn run(client: kube::Client, shutdown: watch::Receiver<bool>) {
    let deployments: Api<Deployment> = Api::all(client.clone());
    let replicasets: Api<ReplicaSet> = Api::all(client.clone());
    Controller::new(deployments, watcher::Config::default())
        .owns(replicasets, watcher::Config::default())
        .graceful_shutdown_on(super::stopped(shutdown))
        .run(reconcile, super::retry_soon, Arc::new(client))
        .for_each(|r| async move { super::log_result("deployment", r) })
        .await;
}

/// FNV-1a over the template's canonical JSON, encoded as Kubernetes' SafeEncodeString.
pub fn template_hash(template: &serde_json::Value) -> String {
    let canonical = canonical(template).to_string();
    let mut hash: u32 = 0x811c9dc5;
    for b in canonical.bytes() {
        hash ^= b as u32;
        hash = hash.wrapping_mul(0x01000193);
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string()
        .bytes()
        .map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char)
        .collect()
}

/// The same value with object keys sorted, so equal templates hash equally.
fn canonical(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let sorted: BTreeMap<_, _> = m.iter().map(|(k, v)| (k.clone(), canonical(v))).collect();
            serde_json::Value::Object(sorted.into_iter().collect())
        }
        serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION_ANNOTATION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

async fn reconcile(deploy: Arc<Deployment>, client: Arc<kube::Client>) -> Result<Action, Error> {
    let ns = deploy
        .namespace()
        .ok_or_else(|| Error::Malformed("deployment without namespace".into()))?;
    let name = deploy.name_any();
    let uid = deploy
        .uid()
        .ok_or_else(|| Error::Malformed("deployment without uid".into()))?;
    let spec = deploy
        .spec
        .as_ref()
        .ok_or_else(|| Error::Malformed(format!("deployment {name} has no spec")))?;
    let replicas = spec.replicas.unwrap_or(1);
    let rs_api: Api<ReplicaSet> = Api::namespaced((*client).clone(), &ns);

    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    let selector_str = super::selector_string(&selector);
    let mut owned: Vec<ReplicaSet> = rs_api
        .list(&ListParams::default().labels(&selector_str))
        .await?
        .items
        .into_iter()
        .filter(|rs| controlled_by(&rs.metadata, &uid))
        .collect();
    owned.sort_by_key(revision_of);

    let template_json = serde_json::to_value(&spec.template).map_err(|e| Error::Malformed(e.to_string()))?;
    let hash = template_hash(&template_json);
    let max_revision = owned.iter().map(revision_of).max().unwrap_or(0);
    let current = owned
        .iter()
        .find(|rs| rs.labels().get(HASH_LABEL) == Some(&hash))
        .cloned();

    let current = match current {
        Some(rs) => {
            // A template rolled back to an older ReplicaSet becomes the newest revision.
            let mut patch = serde_json::Map::new();
            if revision_of(&rs) != max_revision || rs.spec.as_ref().and_then(|s| s.replicas) != Some(replicas) {
                patch.insert("spec".into(), json!({"replicas": replicas}));
                let rev = if revision_of(&rs) == max_revision {
                    max_revision
                } else {
                    max_revision + 1
                };
                patch.insert(
                    "metadata".into(),
                    json!({"annotations": {REVISION_ANNOTATION: rev.to_string()}}),
                );
                rs_api
                    .patch(
                        &rs.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(serde_json::Value::Object(patch)),
                    )
                    .await?
            } else {
                rs
            }
        }
        None => {
            let mut template = spec.template.clone();
            let mut labels = template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.insert(HASH_LABEL.into(), hash.clone());
            template.metadata.get_or_insert_with(Default::default).labels = Some(labels.clone());
            let mut rs_selector = selector.clone();
            rs_selector.insert(HASH_LABEL.into(), hash.clone());
            let rs = ReplicaSet {
                metadata: ObjectMeta {
                    name: Some(format!("{name}-{hash}")),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    annotations: Some([(REVISION_ANNOTATION.to_string(), (max_revision + 1).to_string())].into()),
                    owner_references: Some(vec![owner_ref(deploy.as_ref())?]),
                    ..Default::default()
                },
                spec: Some(ReplicaSetSpec {
                    replicas: Some(replicas),
                    selector: LabelSelector {
                        match_labels: Some(rs_selector),
                        ..Default::default()
                    },
                    template: Some(template),
                    min_ready_seconds: spec.min_ready_seconds,
                }),
                status: None,
            };
            tracing::info!(object = %format!("{ns}/{name}"), replicaset = %format!("{name}-{hash}"), "new rollout");
            rs_api.create(&PostParams::default(), &rs).await?
        }
    };

    // Older templates are scaled away; beyond the history limit they are deleted.
    let history = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let old: Vec<&ReplicaSet> = owned.iter().filter(|rs| rs.uid() != current.uid()).collect();
    for rs in &old {
        if rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) != 0 {
            rs_api
                .patch(
                    &rs.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"replicas": 0}})),
                )
                .await?;
        }
    }
    let idle: Vec<&&ReplicaSet> = old
        .iter()
        .filter(|rs| rs.status.as_ref().is_none_or(|s| s.replicas == 0))
        .collect();
    if idle.len() > history {
        for rs in &idle[..idle.len() - history] {
            rs_api.delete(&rs.name_any(), &Default::default()).await?;
        }
    }

    let all: Vec<&ReplicaSet> = old.into_iter().chain(std::iter::once(&current)).collect();
    let sum = |f: fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> i32| -> i32 {
        all.iter().filter_map(|rs| rs.status.as_ref()).map(f).sum()
    };
    let updated = current.status.as_ref().map_or(0, |s| s.replicas);
    let ready = sum(|s| s.ready_replicas.unwrap_or(0));
    let available = sum(|s| s.available_replicas.unwrap_or(0));
    let total = sum(|s| s.replicas);
    let is_available = available >= replicas;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = DeploymentStatus {
        observed_generation: deploy.metadata.generation,
        replicas: Some(total),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((replicas - available).max(0)),
        conditions: Some(vec![
            DeploymentCondition {
                type_: "Available".into(),
                status: if is_available { "True" } else { "False" }.into(),
                reason: Some(
                    if is_available {
                        "MinimumReplicasAvailable"
                    } else {
                        "MinimumReplicasUnavailable"
                    }
                    .into(),
                ),
                message: Some(format!("{available} of {replicas} replicas available")),
                last_update_time: Some(now.clone()),
                last_transition_time: Some(now.clone()),
            },
            DeploymentCondition {
                type_: "Progressing".into(),
                status: "True".into(),
                reason: Some(
                    if updated >= replicas {
                        "NewReplicaSetAvailable"
                    } else {
                        "ReplicaSetUpdated"
                    }
                    .into(),
                ),
                message: Some(format!("ReplicaSet \"{}\" is progressing", current.name_any())),
                last_update_time: Some(now.clone()),
                last_transition_time: Some(now),
            },
        ]),
        ..Default::default()
    };
    let revision = revision_of(&current).to_string();
    let unchanged_status = deploy.status.as_ref().is_some_and(|s| same_counts(s, &status));
    if !unchanged_status {
        let api: Api<Deployment> = Api::namespaced((*client).clone(), &ns);
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": status})))
            .await?;
    }
    if deploy.annotations().get(REVISION_ANNOTATION) != Some(&revision) {
        let api: Api<Deployment> = Api::namespaced((*client).clone(), &ns);
        let patch = json!({"metadata": {"annotations": {REVISION_ANNOTATION: revision}}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Status unchanged but for condition timestamps (avoids a write per reconcile).
fn same_counts(a: &DeploymentStatus, b: &DeploymentStatus) -> bool {
    let statuses = |s: &DeploymentStatus| {
        s.conditions
            .iter()
            .flatten()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect::<Vec<_>>()
    };
    a.observed_generation == b.observed_generation
        && a.replicas == b.replicas
        && a.updated_replicas == b.updated_replicas
        && a.ready_replicas == b.ready_replicas
        && a.available_replicas == b.available_replicas
        && statuses(a) == statuses(b)
}

/// A controller owner reference to `obj`.
pub(crate) fn owner_ref<K: Resource<DynamicType = ()>>(obj: &K) -> Result<OwnerReference, Error> {
    let mut r = obj
        .controller_owner_ref(&())
        .ok_or_else(|| Error::Malformed("owner without name or uid".into()))?;
    r.block_owner_deletion = Some(true);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_hash_ignores_key_order_and_tracks_content() {
        let a = json!({"metadata": {"labels": {"app": "web", "tier": "x"}}, "spec": {"containers": [{"name": "c"}]}});
        let b = json!({"spec": {"containers": [{"name": "c"}]}, "metadata": {"labels": {"tier": "x", "app": "web"}}});
        let c = json!({"spec": {"containers": [{"name": "d"}]}, "metadata": {"labels": {"tier": "x", "app": "web"}}});
        assert_eq!(template_hash(&a), template_hash(&b));
        assert_ne!(template_hash(&a), template_hash(&c));
        assert!(template_hash(&a)
            .chars()
            .all(|ch| "bcdfghjklmnpqrstvwxz2456789".contains(ch)));
    }
}
