//! Kairn's own API kinds (group `kairn.dev/v1`), served by the API server beside
//! Kubernetes' kinds from k8s-openapi. Clients use them through kube-rs like any kind.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of Kairn's kinds.
pub const GROUP: &str = "kairn.dev";
/// The API version of Kairn's kinds.
pub const VERSION: &str = "v1";
/// `group/version` of Kairn's kinds.
pub const API_VERSION: &str = "kairn.dev/v1";

/// The namespace Applications live in unless said otherwise (as Argo CD's `argocd`).
pub const APP_NAMESPACE: &str = "kairn-system";

/// Label naming the Application that owns a GitOps-managed object.
pub const APP_LABEL: &str = "app.kairn.dev/name";
/// Annotation holding the full SHA of the commit an object was last applied from.
pub const COMMIT_ANNOTATION: &str = "kairn.dev/commit";
/// Annotation holding the repo-relative file (and `#N` document index) of an object.
pub const SOURCE_PATH_ANNOTATION: &str = "kairn.dev/source-path";

/// The current time in the Kubernetes `Time` format: RFC 3339, UTC, to the second.
pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn api_version() -> String {
    API_VERSION.to_string()
}

fn application_kind() -> String {
    "Application".to_string()
}

/// A Git source the reconciler keeps the cluster in step with (namespaced, as Argo CD's).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "dev.kairn.v1.Application")]
pub struct Application {
    /// Always `kairn.dev/v1`.
    #[serde(default = "api_version")]
    pub api_version: String,
    /// Always `Application`.
    #[serde(default = "application_kind")]
    pub kind: String,
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Where the desired state comes from and how it is synced.
    pub spec: ApplicationSpec,
    /// What the reconciler last observed and did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ApplicationStatus>,
}

impl Application {
    /// A new Application named `name` in [`APP_NAMESPACE`].
    pub fn new(name: &str, spec: ApplicationSpec) -> Self {
        Application {
            api_version: api_version(),
            kind: application_kind(),
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(APP_NAMESPACE.to_string()),
                ..Default::default()
            },
            spec,
            status: None,
        }
    }
}

/// Where an Application's manifests live.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "dev.kairn.v1.ApplicationSpec")]
pub struct ApplicationSpec {
    /// Repository: a local path or a URL.
    pub repo_url: String,
    /// Branch to follow.
    pub target_revision: String,
    /// Directory inside the repository ("" or "." for the root).
    #[serde(default)]
    pub path: String,
    /// Whether objects no longer in Git are deleted from the cluster.
    #[serde(default = "yes")]
    pub prune: bool,
}

fn yes() -> bool {
    true
}

/// The reconciler's view of an Application.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "dev.kairn.v1.ApplicationStatus")]
pub struct ApplicationStatus {
    /// `Synced`, `OutOfSync`, `Failed` or `Unknown`.
    #[serde(default)]
    pub sync_status: String,
    /// Full SHA of the commit the cluster is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_revision: Option<String>,
    /// Full SHA of the newest commit seen on the branch, when not yet (or not) applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_revision: Option<String>,
    /// When the last successful sync finished (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<String>,
    /// Counts of the last applied plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_plan: Option<PlanSummary>,
    /// Why the newest commit was not applied, if it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<SyncError>,
}

/// How many objects a sync created, updated, pruned or left alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "dev.kairn.v1.PlanSummary")]
pub struct PlanSummary {
    /// Objects created.
    pub created: u32,
    /// Objects updated.
    pub updated: u32,
    /// Objects deleted because they left Git.
    pub pruned: u32,
    /// Objects already as in Git.
    pub unchanged: u32,
}

/// A rejected commit and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "dev.kairn.v1.SyncError")]
pub struct SyncError {
    /// Full SHA of the rejected commit.
    pub revision: String,
    /// One line per problem, `<file>#<doc>: <apiVersion>/<kind> <ns>/<name>: <field>: <message>`.
    pub messages: Vec<String>,
    /// When it was rejected (RFC 3339, UTC).
    pub time: String,
}

impl k8s_openapi::Resource for Application {
    const API_VERSION: &'static str = API_VERSION;
    const GROUP: &'static str = GROUP;
    const KIND: &'static str = "Application";
    const VERSION: &'static str = VERSION;
    const URL_PATH_SEGMENT: &'static str = "applications";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::ListableResource for Application {
    const LIST_KIND: &'static str = "ApplicationList";
}

impl k8s_openapi::Metadata for Application {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// One operation of an atomic batch write (`POST /apis/kairn.dev/v1/batches`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchOperation {
    /// `create`, `update` or `delete`.
    pub op: BatchVerb,
    /// The object (for delete, apiVersion, kind and metadata name/namespace suffice).
    pub object: serde_json::Value,
    /// If set, the write applies only while the live object is at this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// The verb of a [`BatchOperation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchVerb {
    /// Create a new object (409 if it exists).
    Create,
    /// Replace an existing object (404 if absent).
    Update,
    /// Delete an existing object (404 if absent).
    Delete,
}

/// An atomic batch write: every operation lands in one store transaction, or none does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Batch {
    /// The operations, applied in order.
    pub operations: Vec<BatchOperation>,
    /// Validate and admit only; write nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// The result of a batch: the objects as written (deleted ones as they were).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchResult {
    /// The store revision of the transaction (0 for a dry run).
    pub revision: u64,
    /// One object per operation, in order.
    pub objects: Vec<serde_json::Value>,
}
