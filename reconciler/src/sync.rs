//! One sync, in steps both the reconciler and the CLI use: render a commit into desired
//! objects, plan them against live objects, apply the plan as one transaction.

use kairn_cluster::kinds::{Application, APP_NAMESPACE};
use serde_json::Value;

use crate::apply::ApplyError;
use crate::manifest::ManifestError;
use crate::plan::{self, Catalog, Plan};
use crate::render::{self, Tree};
use crate::source::{Source, SourceError};

/// Why a commit could not be planned or applied.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The repository, revision or path could not be read.
    #[error("source: {0}")]
    Source(#[from] SourceError),
    /// Manifests are invalid: the commit is rejected as a whole.
    #[error("{} invalid manifest(s): {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<ManifestError>),
    /// Applying failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// Reading live state failed.
    #[error("api: {0}")]
    Api(#[from] kube::Error),
}

impl SyncError {
    /// Whether the commit itself is at fault (retrying the same commit cannot help).
    pub fn is_rejection(&self) -> bool {
        matches!(self, SyncError::Invalid(_) | SyncError::Apply(ApplyError::Rejected(_)))
    }

    /// One line per problem, for status and the CLI.
    pub fn messages(&self) -> Vec<String> {
        match self {
            SyncError::Invalid(errors) | SyncError::Apply(ApplyError::Rejected(errors)) => {
                errors.iter().map(ToString::to_string).collect()
            }
            other => vec![other.to_string()],
        }
    }
}

/// The Application's name (objects carry it in their `app.kairn.dev/name` label).
pub fn app_name(app: &Application) -> &str {
    app.metadata.name.as_deref().unwrap_or_default()
}

/// `namespace/name` of an Application.
pub fn app_key(app: &Application) -> String {
    format!(
        "{}/{}",
        app.metadata.namespace.as_deref().unwrap_or(APP_NAMESPACE),
        app_name(app)
    )
}

/// The namespace of namespaced objects that name none.
pub fn default_namespace(app: &Application) -> &str {
    app.spec
        .destination
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
}

/// Renders the Application's path of `tree` (a commit, or a working directory for
/// `kairn diff --local`) into the objects to apply, labelled and annotated.
pub async fn desired_from_tree(
    tree: Tree,
    app: &Application,
    catalog: &Catalog,
    commit: &str,
) -> Result<Vec<(String, Value)>, SyncError> {
    let path = app.spec.source.path.clone();
    // Rendering thousands of documents is CPU work: keep it off the async threads.
    let manifests = tokio::task::spawn_blocking(move || render::render(&tree, &path))
        .await
        .map_err(|e| SyncError::Source(SourceError::Task(e.to_string())))?
        .map_err(SyncError::Invalid)?;
    plan::desired_objects(manifests, catalog, app_name(app), commit, default_namespace(app)).map_err(SyncError::Invalid)
}

/// Renders the Application at `commit` into the objects to apply.
pub async fn desired(
    source: &Source,
    app: &Application,
    catalog: &Catalog,
    commit: &str,
) -> Result<Vec<(String, Value)>, SyncError> {
    let tree = source.read_tree(commit).await?;
    desired_from_tree(tree, app, catalog, commit).await
}

/// Plans `desired` against the live objects, refusing objects another Application owns.
/// `live` is every managed object (of any Application).
pub fn plan(app: &Application, desired: Vec<(String, Value)>, live: &[Value]) -> Result<Plan, SyncError> {
    let name = app_name(app);
    let foreign = plan::foreign_claims(&desired, name, live);
    if !foreign.is_empty() {
        return Err(SyncError::Invalid(foreign));
    }
    let owned: Vec<Value> = live.iter().filter(|o| plan::owner(o) == Some(name)).cloned().collect();
    Ok(plan::compute(desired, owned))
}

/// Every file under `dir` (a working tree), keyed by path relative to it, for
/// `kairn diff --local`; `.git` and other dot-directories are skipped.
pub fn working_tree(dir: &std::path::Path) -> Result<Tree, SourceError> {
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Tree) -> Result<(), SourceError> {
        let entries = std::fs::read_dir(dir).map_err(|e| SourceError::Task(format!("{}: {e}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(|e| SourceError::Task(format!("{}: {e}", dir.display())))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out)?;
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .replace('\\', "/");
                let content =
                    std::fs::read(&path).map_err(|e| SourceError::Task(format!("{}: {e}", path.display())))?;
                out.insert(rel, content);
            }
        }
        Ok(())
    }
    let mut out = Tree::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

/// What syncing would do, checked by the API server (a dry-run batch: the server's real
/// defaulting and admission), for `kairn diff` and `kairn sync --dry-run` from the CLI.
/// Reads live objects with a LIST, as a one-shot client does.
pub async fn review(client: &kube::Client, app: &Application, tree: Tree, commit: &str) -> Result<Plan, SyncError> {
    let catalog = Catalog::discover(client).await?;
    let desired = desired_from_tree(tree, app, &catalog, commit).await?;
    let live = plan::live_objects(client, &catalog).await?;
    let mut plan = plan(app, desired, &live)?;
    if !app.spec.sync_policy.prune {
        plan.changes.retain(|c| c.action != plan::Action::Prune);
    }
    crate::apply::apply(client, &plan, true, None).await?;
    Ok(plan)
}
