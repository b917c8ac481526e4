//! Sync history, as the reconciler records it and the CLI reads it: one entry per sync
//! (commit, author, result, counts, the plan's diffs). The API server keeps the entries,
//! bounded per Application; a successful sync's entry rides in its batch.

use kairn_cluster::kinds::{AuditRecord, HistoryChange, HistoryEntry};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::plan::{Action, Plan};
use crate::source::CommitInfo;

/// `Succeeded`: the commit is applied.
pub const SUCCEEDED: &str = "Succeeded";
/// `Failed`: the commit was rejected; nothing was applied.
pub const FAILED: &str = "Failed";

/// What every entry says: the commit, when, the result, which operation and who.
fn base(commit: &CommitInfo, result: &str, operation: &str, initiated_by: &str) -> HistoryEntry {
    HistoryEntry {
        revision: commit.sha.clone(),
        author: commit.author.clone(),
        message: commit.summary.clone(),
        time: kairn_cluster::kinds::now(),
        result: result.into(),
        operation: operation.into(),
        initiated_by: initiated_by.into(),
        ..Default::default()
    }
}

/// The entry of a sync of `commit` with `plan`.
pub fn entry(commit: &CommitInfo, plan: &Plan, operation: &str, initiated_by: &str) -> HistoryEntry {
    let changes = plan
        .changes
        .iter()
        .filter(|c| c.action != Action::Unchanged)
        .map(|c| HistoryChange {
            action: c.action.as_str().into(),
            object: c.object.clone(),
            diff: c.diff.clone(),
        })
        .collect();
    HistoryEntry {
        summary: plan.summary(),
        changes,
        ..base(commit, SUCCEEDED, operation, initiated_by)
    }
}

/// The entry of a sync of `commit` that failed with `messages`.
pub fn failure(commit: &CommitInfo, operation: &str, initiated_by: &str, messages: Vec<String>) -> HistoryEntry {
    HistoryEntry {
        messages,
        ..base(commit, FAILED, operation, initiated_by)
    }
}

fn history_path(namespace: &str, name: &str) -> String {
    format!("/apis/kairn.dev/v1/namespaces/{namespace}/applications/{name}/history")
}

#[derive(Deserialize)]
struct List<T> {
    items: Vec<T>,
}

async fn get<T: DeserializeOwned>(client: &kube::Client, path: &str) -> Result<Vec<T>, kube::Error> {
    let request = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| kube::Error::BuildRequest(kube::core::request::Error::BuildRequest(e)))?;
    Ok(client.request::<List<T>>(request).await?.items)
}

/// Records an entry on its own (a sync that applied nothing: a rejected commit).
pub async fn record(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    entry: &HistoryEntry,
) -> Result<(), kube::Error> {
    let body = serde_json::to_vec(entry).map_err(kube::Error::SerdeError)?;
    let request = http::Request::post(history_path(namespace, name))
        .header("content-type", "application/json")
        .body(body)
        .map_err(|e| kube::Error::BuildRequest(kube::core::request::Error::BuildRequest(e)))?;
    client.request::<HistoryEntry>(request).await.map(|_| ())
}

/// The Application's history, newest first.
pub async fn list(client: &kube::Client, namespace: &str, name: &str) -> Result<Vec<HistoryEntry>, kube::Error> {
    get(client, &history_path(namespace, name)).await
}

/// Audit records matching `query` (`kind=..&name=..`, already URL-encoded), newest first.
pub async fn audit(client: &kube::Client, query: &str) -> Result<Vec<AuditRecord>, kube::Error> {
    get(client, &format!("/apis/kairn.dev/v1/auditrecords?{query}")).await
}
