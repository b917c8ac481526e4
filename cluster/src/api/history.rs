//! Sync history: one entry per sync of an Application (commit, author, result, counts,
//! the plan with its diffs), kept in the store and bounded per Application.
//!
//! A successful sync's entry rides in the batch that applies the commit, so the entry
//! and the objects land in the same transaction; a failed sync appends its entry alone
//! (`POST .../applications/{name}/history`). Entries are store appends under
//! `/kairn/history/<namespace>/<name>/`, ordered by revision.

use std::sync::Arc;

use serde_json::{json, Value};

use super::auth::UserInfo;
use super::error::ApiError;
use super::objects;
use super::registry;
use super::write::WriteSet;
use super::AppState;
use crate::kinds::{HistoryEntry, API_VERSION};
use crate::store::{append_revision, Op};

/// Where history entries live in the store.
pub const PREFIX: &str = "/kairn/history/";
/// Entries kept per Application unless its `spec.revisionHistoryLimit` says otherwise.
pub const DEFAULT_LIMIT: usize = 50;
/// The most diff text one entry keeps; later changes keep their name, not their diff.
const MAX_DIFF_BYTES: usize = 1024 * 1024;

fn prefix(application: &str) -> String {
    format!("{PREFIX}{application}/")
}

/// `namespace/name` split, or a 400.
fn split(application: &str) -> Result<(&str, &str), ApiError> {
    application
        .split_once('/')
        .ok_or_else(|| ApiError::BadRequest(format!("application: want namespace/name, got {application}")))
}

/// The Application, or 404: history belongs to an Application that exists.
async fn application(state: &AppState, application: &str) -> Result<Value, ApiError> {
    let (ns, name) = split(application)?;
    let res = registry::by_kind(API_VERSION, "Application")
        .ok_or_else(|| ApiError::Internal("Application is not registered".into()))?;
    Ok(objects::read(state, res, Some(ns), name).await?.0)
}

/// Cuts an entry's diffs down to [`MAX_DIFF_BYTES`].
fn bound(mut entry: HistoryEntry) -> HistoryEntry {
    let mut budget = MAX_DIFF_BYTES;
    for change in &mut entry.changes {
        if change.diff.len() > budget {
            change.diff.clear();
            entry.truncated = true;
        } else {
            budget -= change.diff.len();
        }
    }
    entry
}

/// Adds `entry` for `application` (`namespace/name`) to `set`, and the removal of the
/// entries beyond the Application's history limit.
pub async fn record(
    state: &AppState,
    set: &mut WriteSet,
    application: &str,
    entry: &HistoryEntry,
) -> Result<(), ApiError> {
    let app = self::application(state, application).await?;
    let limit = app
        .pointer("/spec/revisionHistoryLimit")
        .and_then(Value::as_u64)
        .map(|l| l.max(1) as usize)
        .unwrap_or(DEFAULT_LIMIT);
    let prefix = prefix(application);
    let (kvs, _, _) = state.store.list(&prefix, None, None).await?;
    // Room for the new one: the oldest beyond `limit - 1` go.
    let over = (kvs.len() + 1).saturating_sub(limit);
    for kv in kvs.iter().take(over) {
        set.push(Op::Delete { key: kv.key.clone() });
    }
    let mut entry = bound(entry.clone());
    entry.id = None;
    let value = serde_json::to_vec(&entry).map_err(|e| ApiError::Internal(e.to_string()))?;
    set.push(Op::Append { prefix, value });
    Ok(())
}

/// Every entry of `application`, newest first, each with its id (the revision it was
/// recorded at).
pub async fn list(state: &AppState, application: &str) -> Result<Vec<HistoryEntry>, ApiError> {
    self::application(state, application).await?;
    let (kvs, _, _) = state.store.list(&prefix(application), None, None).await?;
    Ok(kvs
        .iter()
        .rev()
        .filter_map(|kv| {
            let mut entry: HistoryEntry = serde_json::from_slice(&kv.value).ok()?;
            entry.id = append_revision(&kv.key);
            Some(entry)
        })
        .collect())
}

/// `GET .../namespaces/{ns}/applications/{name}/history`.
pub async fn serve_list(state: &AppState, ns: &str, name: &str) -> Result<Value, ApiError> {
    let items = list(state, &format!("{ns}/{name}")).await?;
    Ok(json!({"apiVersion": API_VERSION, "kind": "HistoryEntryList", "metadata": {}, "items": items}))
}

/// `POST .../namespaces/{ns}/applications/{name}/history`: records an entry on its own
/// (a sync that failed, so no batch carried it).
pub async fn serve_append(
    state: &AppState,
    user: &Arc<UserInfo>,
    ns: &str,
    name: &str,
    body: &[u8],
) -> Result<Value, ApiError> {
    let entry: HistoryEntry =
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("history entry: {e}")))?;
    let application = format!("{ns}/{name}");
    let mut set = WriteSet::new(user, "create/history");
    record(state, &mut set, &application, &entry).await?;
    let revision = set.commit(state).await?;
    let mut stored = bound(entry);
    stored.id = Some(revision);
    serde_json::to_value(stored).map_err(|e| ApiError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::HistoryChange;

    #[test]
    fn entries_keep_at_most_a_megabyte_of_diffs() {
        let change = |n: usize| HistoryChange {
            action: "create".into(),
            object: format!("v1/ConfigMap default/c{n}"),
            diff: "x".repeat(300 * 1024),
        };
        let entry = bound(HistoryEntry {
            changes: (0..5).map(change).collect(),
            ..Default::default()
        });
        assert!(entry.truncated);
        assert_eq!(entry.changes.len(), 5, "every change is still named");
        let kept: usize = entry.changes.iter().map(|c| c.diff.len()).sum();
        assert!(kept <= MAX_DIFF_BYTES && kept > 0, "{kept}");
    }
}
