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
    /// A sync asked for by hand, until the reconciler takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
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
            operation: None,
            status: None,
        }
    }
}

/// What an Application follows and how it syncs (Argo CD's shape, kept small).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "dev.kairn.v1.ApplicationSpec")]
pub struct ApplicationSpec {
    /// Where the manifests live.
    pub source: ApplicationSource,
    /// Where objects without a namespace go.
    #[serde(default)]
    pub destination: ApplicationDestination,
    /// When and how the reconciler applies a new commit.
    #[serde(default)]
    pub sync_policy: SyncPolicy,
    /// How many history entries are kept (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_history_limit: Option<u32>,
}

/// A Git source: repository, revision and directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "dev.kairn.v1.ApplicationSource")]
pub struct ApplicationSource {
    /// A local path, `file://`, `http(s)://`, `ssh://` or `git://` URL.
    #[serde(rename = "repoURL")]
    pub repo_url: String,
    /// A branch, tag or commit SHA; `HEAD` (the default) is the repository's default branch.
    #[serde(default = "head")]
    pub target_revision: String,
    /// Directory inside the repository ("" or "." for the root).
    #[serde(default)]
    pub path: String,
    /// Seconds between polls of a remote repository (default 60; webhooks fetch at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval_seconds: Option<u32>,
}

fn head() -> String {
    "HEAD".to_string()
}

/// Where an Application's objects go.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "dev.kairn.v1.ApplicationDestination")]
pub struct ApplicationDestination {
    /// The namespace of namespaced objects that name none (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// When and how a new commit is applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "dev.kairn.v1.SyncPolicy")]
pub struct SyncPolicy {
    /// Apply new commits by itself; when false, a new commit only makes the
    /// Application OutOfSync until `kairn sync`.
    #[serde(default)]
    pub automated: bool,
    /// Delete objects that left Git.
    #[serde(default)]
    pub prune: bool,
    /// Undo changes made to managed objects outside Git.
    #[serde(default)]
    pub self_heal: bool,
}

/// A sync asked for by hand (`kairn sync`): the reconciler runs it, then clears it and
/// reports in `status.operationState`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "dev.kairn.v1.Operation")]
pub struct Operation {
    /// The revision to sync (default: the Application's target revision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Plan and validate only.
    #[serde(default)]
    pub dry_run: bool,
    /// Prune for this sync even if the policy does not.
    #[serde(default)]
    pub prune: bool,
    /// Who asked.
    #[serde(default)]
    pub initiated_by: String,
    /// Tells one request from the next (`kairn sync` waits for this id's result).
    #[serde(default)]
    pub id: String,
}

/// The reconciler's view of an Application.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "dev.kairn.v1.ApplicationStatus")]
pub struct ApplicationStatus {
    /// Whether the cluster matches the target revision.
    #[serde(default)]
    pub sync: SyncState,
    /// How the Application's objects are doing.
    #[serde(default)]
    pub health: HealthState,
    /// Full SHA of the commit the cluster is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_revision: Option<String>,
    /// Full SHA the target revision points at now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_revision: Option<String>,
    /// When the last successful sync finished (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<String>,
    /// Counts of the last applied plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_plan: Option<PlanSummary>,
    /// Why the newest commit was not applied, if it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<SyncError>,
    /// One entry per object the Application manages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ResourceStatus>,
    /// Conditions: `SourceError`, `ComparisonError`, `SyncError`, `SharedResourceWarning`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<ApplicationCondition>,
    /// The last operation asked by hand, and its outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_state: Option<OperationState>,
}

/// `status.sync`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "dev.kairn.v1.SyncState")]
pub struct SyncState {
    /// `Synced`, `OutOfSync`, `Failed` or `Unknown`.
    #[serde(default)]
    pub status: String,
    /// Why, when not Synced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `status.health`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "dev.kairn.v1.HealthState")]
pub struct HealthState {
    /// `Healthy`, `Progressing`, `Degraded`, `Missing` or `Unknown`.
    #[serde(default)]
    pub status: String,
    /// Why, when not Healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One managed object in `status.resources`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "dev.kairn.v1.ResourceStatus")]
pub struct ResourceStatus {
    /// `apiVersion`.
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Namespace (absent for cluster-scoped kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// `Synced` or `OutOfSync`.
    pub status: String,
    /// `Healthy`, `Progressing`, `Degraded` or `Missing` (absent for kinds without health).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// Why (a drift names who made it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The diff live -> git of an OutOfSync object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// A condition of an Application.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "dev.kairn.v1.ApplicationCondition")]
pub struct ApplicationCondition {
    /// The condition's type.
    #[serde(rename = "type")]
    pub type_: String,
    /// What is wrong.
    pub message: String,
    /// When it was first seen (RFC 3339, UTC).
    pub last_transition_time: String,
}

/// The outcome of an [`Operation`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "dev.kairn.v1.OperationState")]
pub struct OperationState {
    /// The operation's id.
    pub id: String,
    /// `Running`, `Succeeded`, `Failed` or `Error`.
    pub phase: String,
    /// What happened.
    #[serde(default)]
    pub message: String,
    /// The commit synced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Counts of the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<PlanSummary>,
    /// When it finished (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
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
    /// The Application and commit the batch syncs, when it comes from Git: named in
    /// every audit record of the batch, and its history entry lands in the same
    /// transaction as the objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<BatchOrigin>,
}

/// Where a batch comes from (see [`Batch::origin`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchOrigin {
    /// `namespace/name` of the Application.
    pub application: String,
    /// Full SHA of the commit applied.
    pub commit: String,
    /// The history entry to record with the batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryEntry>,
}

/// One write, as the audit trail keeps it: who changed what, when, from which commit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// When the write was admitted (RFC 3339, UTC, microseconds).
    pub time: String,
    /// The user who wrote.
    pub user: String,
    /// `create`, `update`, `patch`, `apply`, `delete`, with the subresource after a `/`
    /// (`patch/status`), or `batch/create` etc. for a batch's operations.
    pub verb: String,
    /// The object's `apiVersion`.
    pub api_version: String,
    /// The object's kind.
    pub kind: String,
    /// The object's namespace (absent for cluster-scoped kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The object's name.
    pub name: String,
    /// The object's resourceVersion before the write (absent for a create).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version_before: Option<String>,
    /// The store revision of the write: the object's new resourceVersion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version_after: Option<String>,
    /// `namespace/name` of the Application, when the write came from Git.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    /// The commit, when the write came from Git.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The change as a JSON patch (RFC 6902) from the old object to the new; Secret
    /// values replaced by their hash.
    #[serde(default)]
    pub patch: serde_json::Value,
}

/// One sync of an Application, as `kairn history` lists it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// The store revision the entry was recorded at (its id; set when read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Full SHA of the commit.
    pub revision: String,
    /// Commit author, `Name <email>`.
    #[serde(default)]
    pub author: String,
    /// First line of the commit message.
    #[serde(default)]
    pub message: String,
    /// When the sync finished (RFC 3339, UTC).
    pub time: String,
    /// `Succeeded`, `Failed` (the commit was rejected, nothing applied) or `Error`.
    pub result: String,
    /// `auto-sync`, `sync`, `self-heal` or `dry-run`.
    #[serde(default)]
    pub operation: String,
    /// Who asked for it (`automated` for the reconciler's own syncs).
    #[serde(default)]
    pub initiated_by: String,
    /// Counts of the plan.
    #[serde(default)]
    pub summary: PlanSummary,
    /// The changes, with their diffs (bounded; see `truncated`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<HistoryChange>,
    /// Whether `changes` was cut short to bound the entry's size.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Why the sync failed, one line per problem.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<String>,
}

/// One object's change in a [`HistoryEntry`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryChange {
    /// `create`, `update` or `prune`.
    pub action: String,
    /// `apiVersion/kind namespace/name`.
    pub object: String,
    /// Unified YAML diff, live -> git (Secret values hashed).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub diff: String,
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
