//! The atomic batch write, `POST /apis/kairn.dev/v1/batches`: Kairn's one extension.
//!
//! Every operation is admitted exactly as a single write would be, then all of them are
//! committed in ONE store transaction whose compares pin every object's revision, so a
//! batch lands whole or not at all. The reconciler applies each commit through it.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::Value;

use super::admission::{self, object_name, FieldValidation};
use super::audit::Provenance;
use super::auth::UserInfo;
use super::error::{ApiError, Cause};
use super::history;
use super::objects::{self, with_revision};
use super::patch;
use super::registry::{self, ResourceInfo};
use super::write::WriteSet;
use super::AppState;
use crate::kinds::{Batch, BatchResult, BatchVerb};

/// The most operations one batch (one commit of manifests) may hold: one store
/// transaction, one Raft entry, held in memory whole while it is admitted.
pub const MAX_BATCH_OPERATIONS: usize = 25_000;

/// Prefixes an error with the operation it came from, so the client can point at it.
fn at(index: usize, e: ApiError) -> ApiError {
    // The batch names every unknown field as a cause, like any invalid field.
    let e = match e {
        ApiError::StrictDecoding { kind, name, fields, .. } => ApiError::Invalid {
            kind,
            name,
            causes: fields
                .into_iter()
                .map(|f| Cause::new("FieldValueInvalid", f, "unknown field"))
                .collect(),
        },
        other => other,
    };
    match e {
        ApiError::Invalid { kind, name, causes } => ApiError::Invalid {
            kind,
            name,
            causes: causes
                .into_iter()
                .map(|c| Cause {
                    field: format!(
                        "operations[{index}].object{}{}",
                        if c.field.is_empty() { "" } else { "." },
                        c.field
                    ),
                    ..c
                })
                .collect(),
        },
        ApiError::BadRequest(m) => ApiError::BadRequest(format!("operations[{index}]: {m}")),
        other => other,
    }
}

/// Reads the live object, refusing it if the batch pinned another version.
async fn read_pinned(
    state: &AppState,
    res: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
    pinned: Option<u64>,
) -> Result<(Value, u64), ApiError> {
    let (live, rev) = objects::read(state, res, ns, name).await?;
    if pinned.is_some_and(|p| p != rev) {
        return Err(ApiError::modified(res.qualified_plural(), name));
    }
    Ok((live, rev))
}

/// Admits and commits a batch by `user`; `manager` owns the fields it writes
/// (managedFields).
pub async fn apply(
    state: &AppState,
    batch: Batch,
    manager: &str,
    user: &Arc<UserInfo>,
) -> Result<BatchResult, ApiError> {
    if batch.operations.len() > MAX_BATCH_OPERATIONS {
        return Err(ApiError::BadRequest(format!(
            "the batch has {} operations; at most {MAX_BATCH_OPERATIONS} are applied in one transaction (nothing was applied)",
            batch.operations.len()
        )));
    }
    let mut set = WriteSet::new(user, "batch/create");
    if let Some(origin) = &batch.origin {
        set.set_provenance(Provenance {
            application: origin.application.clone(),
            commit: origin.commit.clone(),
        });
    }
    let mut objects = Vec::with_capacity(batch.operations.len());
    let mut keys = HashSet::new();
    let mut new_namespaces = HashSet::new();
    let mut needed_namespaces = Vec::new();
    for (i, op) in batch.operations.into_iter().enumerate() {
        let api_version = op.object.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        let kind = op.object.get("kind").and_then(Value::as_str).unwrap_or_default();
        let res = registry::by_kind(api_version, kind)
            .ok_or_else(|| ApiError::BadRequest(format!("operations[{i}]: no resource serves {api_version}/{kind}")))?;
        let (name, ns) = object_name(&op.object);
        let ns = if res.namespaced {
            Some(ns.unwrap_or_else(|| "default".to_string()))
        } else {
            None
        };
        let key = res.key(ns.as_deref(), &name);
        if !keys.insert(key.clone()) {
            return Err(ApiError::BadRequest(format!(
                "operations[{i}]: {key} appears twice in one batch"
            )));
        }
        let pinned = op.resource_version.as_deref().map(|rv| {
            rv.parse::<u64>()
                .map_err(|_| ApiError::BadRequest(format!("operations[{i}]: bad resourceVersion {rv}")))
        });
        let pinned = pinned.transpose()?;
        set.set_verb(match op.op {
            BatchVerb::Create => "batch/create",
            BatchVerb::Update => "batch/update",
            BatchVerb::Delete => "batch/delete",
        });
        match op.op {
            BatchVerb::Create => {
                let submitted = patch::submitted_managed_fields(&op.object).cloned();
                let mut obj = admission::admit_create(res, ns.as_deref(), op.object, FieldValidation::Strict)
                    .map_err(|e| at(i, e))?
                    .object;
                patch::track(res, None, submitted.as_ref(), &mut obj, Some(manager), false);
                if objects::is_pod(res) {
                    super::limitrange::admit_pod(state, res, &mut obj)
                        .await
                        .map_err(|e| at(i, e))?;
                    super::priority::admit_pod(state, &mut obj)
                        .await
                        .map_err(|e| at(i, e))?;
                }
                if res.kind == "Namespace" {
                    new_namespaces.insert(name.clone());
                }
                if let Some(ns) = &ns {
                    needed_namespaces.push((i, ns.clone()));
                }
                set.create(res, key, &mut obj).map_err(|e| at(i, e))?;
                objects.push(obj);
            }
            BatchVerb::Update => {
                let (live, rev) = read_pinned(state, res, ns.as_deref(), &name, pinned).await?;
                let mut desired = op.object;
                if let Some(meta) = desired.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.remove("resourceVersion");
                }
                let submitted = patch::submitted_managed_fields(&desired).cloned();
                let mut obj = admission::admit_update(res, &live, desired, FieldValidation::Strict)
                    .map_err(|e| at(i, e))?
                    .object;
                patch::track(res, Some(&live), submitted.as_ref(), &mut obj, Some(manager), false);
                set.update(res, key, rev, &live, &mut obj).map_err(|e| at(i, e))?;
                objects.push(obj);
            }
            BatchVerb::Delete => {
                let (live, rev) = read_pinned(state, res, ns.as_deref(), &name, pinned).await?;
                set.delete(res, key, rev, &live);
                objects.push(live);
            }
        }
    }
    for (i, ns) in needed_namespaces {
        if new_namespaces.contains(&ns) {
            continue;
        }
        let (name, _) = object_name(&objects[i]);
        let kind = objects[i]
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let problem = match objects::namespace_deleting(state, &ns).await? {
            None => format!("namespace \"{ns}\" not found"),
            Some(true) => format!("namespace \"{ns}\" is being terminated"),
            Some(false) => continue,
        };
        let cause = Cause::new("FieldValueNotFound", "metadata.namespace", problem);
        return Err(at(
            i,
            ApiError::Invalid {
                kind,
                name,
                causes: vec![cause],
            },
        ));
    }
    if batch.dry_run {
        set.check_quota(state).await?;
        return Ok(BatchResult { revision: 0, objects });
    }
    if let Some(entry) = batch.origin.as_ref().and_then(|o| o.history.as_ref().map(|h| (o, h))) {
        let (origin, entry) = entry;
        history::record(state, &mut set, &origin.application, entry).await?;
    }
    let revision = set.commit(state).await?;
    tracing::info!(revision, objects = objects.len(), "batch committed");
    let objects = objects.into_iter().map(|o| with_revision(o, revision)).collect();
    Ok(BatchResult { revision, objects })
}
