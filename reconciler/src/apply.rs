//! Applying a plan through the API server's atomic batch write: one store transaction
//! for the whole commit. Errors the server reports for one operation are traced back to
//! the file, document and object that produced it.

use kairn_cluster::kinds::{Batch, BatchOperation, BatchOrigin, BatchResult, BatchVerb};
use serde_json::Value;

use crate::manifest::ManifestError;
use crate::plan::{Action, Change, Plan};

/// Why a plan was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The server refused objects of the commit (invalid, wrong namespace...).
    #[error("the commit was rejected: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Rejected(Vec<ManifestError>),
    /// Live objects changed between planning and applying; plan again.
    #[error("live objects changed while applying: {0}")]
    Conflict(String),
    /// The API server could not be reached or failed.
    #[error("api: {0}")]
    Api(#[from] kube::Error),
}

const BATCH_PATH: &str = "/apis/kairn.dev/v1/batches";

fn operation(change: &Change) -> Option<BatchOperation> {
    let rv = |o: &Option<Value>| {
        o.as_ref()
            .and_then(|o| o.pointer("/metadata/resourceVersion"))
            .and_then(Value::as_str)
            .map(String::from)
    };
    let (op, object) = match change.action {
        Action::Create => (BatchVerb::Create, change.desired.clone()?),
        Action::Update => (BatchVerb::Update, change.desired.clone()?),
        Action::Prune => (BatchVerb::Delete, change.live.clone()?),
        Action::Unchanged => return None,
    };
    let resource_version = if op == BatchVerb::Create {
        None
    } else {
        rv(&change.live)
    };
    Some(BatchOperation {
        op,
        object,
        resource_version,
    })
}

/// Sends the plan's changes as one batch; `dry_run` validates without writing. With an
/// `origin`, the batch is recorded as the sync of that Application's commit (its audit
/// records name them, and its history entry lands in the same transaction), and it is
/// sent even when nothing changes, so that the sync is still recorded.
/// Returns the store revision the commit landed at (0 for a dry run or an empty plan).
pub async fn apply(
    client: &kube::Client,
    plan: &Plan,
    dry_run: bool,
    origin: Option<BatchOrigin>,
) -> Result<u64, ApplyError> {
    let applied: Vec<&Change> = plan.changes.iter().filter(|c| c.action != Action::Unchanged).collect();
    if applied.is_empty() && (dry_run || origin.is_none()) {
        return Ok(0);
    }
    let batch = Batch {
        operations: applied.iter().filter_map(|c| operation(c)).collect(),
        dry_run,
        origin,
    };
    let body = serde_json::to_vec(&batch).map_err(kube::Error::SerdeError)?;
    let request = http_request(body)?;
    match client.request::<BatchResult>(request).await {
        Ok(result) => Ok(result.revision),
        Err(kube::Error::Api(status)) => Err(explain(&applied, &status)),
        Err(e) => Err(ApplyError::Api(e)),
    }
}

/// The field manager GitOps writes are recorded under (as Argo CD's `argocd-controller`).
pub const FIELD_MANAGER: &str = "kairn-reconciler";

fn http_request(body: Vec<u8>) -> Result<http::Request<Vec<u8>>, ApplyError> {
    let params = kube::api::PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    kube::core::Request::new(BATCH_PATH)
        .create(&params, body)
        .map_err(|e| ApplyError::Api(kube::Error::BuildRequest(e)))
}

/// Parses `operations[N].object.rest` into (N, rest).
fn operation_field(field: &str) -> Option<(usize, String)> {
    let rest = field.strip_prefix("operations[")?;
    let (index, rest) = rest.split_once(']')?;
    let rest = rest.strip_prefix(".object").unwrap_or(rest);
    Some((
        index.parse().ok()?,
        rest.trim_start_matches('.').trim_start_matches(':').trim().to_string(),
    ))
}

fn explain(applied: &[&Change], status: &kube::core::Status) -> ApplyError {
    let locate = |index: usize, field: String, message: String| {
        let change = applied.get(index);
        ManifestError {
            source_path: change
                .and_then(|c| c.source.clone())
                .unwrap_or_else(|| "(live object)".into()),
            object: change.map(|c| c.object.clone()).unwrap_or_else(|| "?".into()),
            field,
            message,
        }
    };
    // A conflict, or an object gone between planning and applying, is a race: plan again.
    if status.reason == "Conflict" || status.reason == "NotFound" {
        return ApplyError::Conflict(status.message.clone());
    }
    if status.reason == "AlreadyExists" {
        // An object Git declares exists without this Application's label: not ours to
        // take over silently.
        return ApplyError::Rejected(vec![ManifestError {
            source_path: "(commit)".into(),
            object: "?".into(),
            field: String::new(),
            message: format!(
                "{}: it exists and no Application manages it; delete it, or label it {}=<application> to hand it over",
                status.message,
                kairn_cluster::kinds::APP_LABEL
            ),
        }]);
    }
    if status.code == 413 {
        return ApplyError::Rejected(vec![ManifestError {
            source_path: "(commit)".into(),
            object: "?".into(),
            field: String::new(),
            message: format!(
                "the commit is too large to apply in one transaction: {}",
                status.message
            ),
        }]);
    }
    let causes = status.details.as_ref().map(|d| d.causes.clone()).unwrap_or_default();
    let mut errors: Vec<ManifestError> = causes
        .iter()
        .filter_map(|c| {
            let (index, field) = operation_field(&c.field)?;
            Some(locate(index, field, c.message.clone()))
        })
        .collect();
    if errors.is_empty() {
        // `operations[N]: message` for errors without field causes.
        if let Some((index, _)) = operation_field(&status.message) {
            let message = status
                .message
                .split_once("]: ")
                .map(|(_, m)| m.to_string())
                .unwrap_or_default();
            errors.push(locate(index, String::new(), message));
        }
    }
    if errors.is_empty() {
        errors.push(ManifestError {
            source_path: "(commit)".into(),
            object: "?".into(),
            field: String::new(),
            message: format!("{} ({})", status.message, status.reason),
        });
    }
    ApplyError::Rejected(errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_fields_parse() {
        assert_eq!(
            operation_field("operations[2].object.spec.replicas"),
            Some((2, "spec.replicas".to_string()))
        );
        assert_eq!(operation_field("operations[0].object"), Some((0, String::new())));
        assert_eq!(operation_field("spec.replicas"), None);
    }
}
