//! One sync: from a commit to a plan, and from a plan to the cluster.

use std::path::Path;

use kairn_cluster::kinds::Application;

use crate::apply::{self, ApplyError};
use crate::manifest::{self, ManifestError};
use crate::plan::{self, Catalog, Plan};
use crate::source::{self, CommitInfo, SourceError};

/// Why a commit could not be planned or applied.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The repository, branch or path could not be read.
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

/// The repository path of an Application (local paths only for now).
pub fn repo_path(app: &Application) -> &Path {
    Path::new(&app.spec.repo_url)
}

/// Plans the cluster's move to `commit`: reads, parses and checks its manifests, then
/// compares them with the live objects the Application owns.
pub async fn plan(client: &kube::Client, app: &Application, commit: &str) -> Result<Plan, SyncError> {
    let name = app.metadata.name.as_deref().unwrap_or_default();
    let files = source::read_manifests(repo_path(app), commit, &app.spec.path).await?;
    let manifests = manifest::parse(&files).map_err(SyncError::Invalid)?;
    let catalog = Catalog::discover(client).await?;
    let desired = plan::desired_objects(manifests, &catalog, name, commit).map_err(SyncError::Invalid)?;
    let live = plan::live_objects(client, &catalog, name).await?;
    let mut plan = plan::compute(desired, live);
    if !app.spec.prune {
        plan.changes.retain(|c| c.action != plan::Action::Prune);
    }
    Ok(plan)
}

/// A plan the API server has validated change by change (a dry-run batch), so that an
/// invalid object is reported before anything is applied: what `kairn diff` shows.
pub async fn review(client: &kube::Client, app: &Application, commit: &str) -> Result<Plan, SyncError> {
    let plan = plan(client, app, commit).await?;
    apply::apply(client, &plan, true).await?;
    Ok(plan)
}

/// Plans and applies `commit`; returns the plan and the store revision it landed at.
/// The batch is validated as it is applied, so no separate dry run is needed.
pub async fn sync(client: &kube::Client, app: &Application, commit: &CommitInfo) -> Result<(Plan, u64), SyncError> {
    let plan = plan(client, app, &commit.sha).await?;
    let revision = apply::apply(client, &plan, false).await?;
    Ok((plan, revision))
}
