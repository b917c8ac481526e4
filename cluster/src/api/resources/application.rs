//! Kairn's `Application`: validation of its source and its `kubectl get` columns.

use serde_json::{json, Value};

use super::{cell, Column};
use crate::api::validation::Errors;

/// Application validation: a source to follow.
pub fn validate(app: &Value, _old: Option<&Value>, errs: &mut Errors) {
    if cell::s(app, "/spec/source/repoURL").trim().is_empty() {
        errs.required("spec.source.repoURL");
    }
    let path = cell::s(app, "/spec/source/path");
    if path.split('/').any(|part| part == "..") || path.starts_with('/') {
        errs.invalid(
            "spec.source.path",
            &json!(path),
            "must be a relative path inside the repository",
        );
    }
}

/// `kubectl get applications` columns.
pub static COLUMNS: &[Column] = &[
    Column::new("Name", "string", 0),
    Column::new("Sync", "string", 0),
    Column::new("Health", "string", 0),
    Column::new("Revision", "string", 0),
    Column::new("Age", "string", 0),
    Column::new("Repo", "string", 1),
    Column::new("Path", "string", 1),
    Column::new("Target", "string", 1),
];

/// One Application's row.
pub fn cells(app: &Value) -> Vec<Value> {
    let revision: String = cell::s(app, "/status/syncedRevision").chars().take(12).collect();
    vec![
        cell::name(app),
        cell::or_none(cell::s(app, "/status/sync/status")),
        cell::or_none(cell::s(app, "/status/health/status")),
        cell::or_none(&revision),
        cell::age(app),
        json!(cell::s(app, "/spec/source/repoURL")),
        json!(cell::s(app, "/spec/source/path")),
        json!(cell::s(app, "/spec/source/targetRevision")),
    ]
}
