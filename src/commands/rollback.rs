//! `kairn rollback APP [--to SHA]`: rolls back by writing a revert commit on the
//! Application's branch (of the last synced commit, or of every commit after SHA),
//! authored by whoever runs it, and pushing it for a remote repository. Git stays the
//! truth: the normal sync applies the revert, and auto-sync never re-applies the bad
//! commit, because the branch no longer has its changes. A revert that conflicts stops
//! with a message and changes nothing.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kairn_cluster::kinds::{Application, APP_NAMESPACE};
use kairn_reconciler::source::{self, short_sha, CommitInfo, Source};
use kube::Api;

use crate::client::{server_error, ClientArgs};

/// `kairn rollback` arguments.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The Application.
    pub app: String,
    /// Revert every commit after this one (the cluster returns to it); default: revert the
    /// last synced commit only.
    #[arg(long)]
    pub to: Option<String>,
    /// The revert's author, `Name <email>` (default: git's user.name and user.email).
    #[arg(long)]
    pub author: Option<String>,
    /// Wait until the Application has synced the revert.
    #[arg(long)]
    pub wait: bool,
    /// Data directory whose `repos/` mirrors remote repositories.
    #[arg(long, default_value = ".kairn")]
    pub data_dir: PathBuf,
}

/// `Name <email>` from `--author`, else from git's configuration (the repository's,
/// then the user's).
fn author(flag: Option<&str>, repo: Option<&Path>) -> anyhow::Result<(String, String)> {
    if let Some(a) = flag {
        let (name, rest) = a
            .split_once('<')
            .with_context(|| format!("--author {a:?}: want `Name <email>`"))?;
        let email = rest.trim_end().trim_end_matches('>');
        return Ok((name.trim().to_string(), email.trim().to_string()));
    }
    source::git_identity(repo)
        .with_context(|| "who is rolling back? set git's user.name and user.email, or pass --author \"Name <email>\"")
}

/// Runs `kairn rollback`.
pub async fn run(args: RollbackArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.connect().await?;
    let ns = args.client.namespace.as_deref().unwrap_or(APP_NAMESPACE);
    let apps: Api<Application> = Api::namespaced(client.clone(), ns);
    let app = apps
        .get(&args.app)
        .await
        .map_err(server_error)
        .with_context(|| format!("reading application {ns}/{}", args.app))?;
    let spec = &app.spec.source;
    let source = Source::new(&spec.repo_url, &args.data_dir).context("opening the repository")?;
    source.fetch().await.context("fetching the repository")?;
    // The branch to write on: the target revision, or the branch HEAD names.
    let branch = match spec.target_revision.as_str() {
        "" | "HEAD" => source::default_branch(source.path()).await?,
        rev => rev.trim_start_matches("refs/heads/").to_string(),
    };
    let tip = source
        .resolve(&format!("refs/heads/{branch}"))
        .await
        .with_context(|| format!("{branch} is not a branch: a pinned tag or commit cannot be rolled back by a commit; change spec.source.targetRevision instead"))?;
    let (reverted, message): (Vec<CommitInfo>, String) = match &args.to {
        Some(to) => {
            let base = source.resolve(to).await.with_context(|| format!("resolving {to}"))?;
            let commits = source
                .commits_between(&base.sha, &tip.sha)
                .await
                .with_context(|| format!("listing the commits after {}", short_sha(&base.sha)))?;
            if commits.is_empty() {
                bail!("{branch} is already at {}: nothing to roll back", short_sha(&base.sha));
            }
            let mut message = format!(
                "Roll back {} to {} \"{}\"\n\nReverts:\n",
                args.app,
                short_sha(&base.sha),
                base.summary
            );
            for c in &commits {
                message.push_str(&format!("  {} {}\n", c.sha, c.summary));
            }
            (commits, message)
        }
        None => {
            let synced = app
                .status
                .as_ref()
                .and_then(|s| s.synced_revision.clone())
                .with_context(|| format!("{} has not synced a commit yet: nothing to roll back", args.app))?;
            let commit = source.resolve(&synced).await?;
            let message = format!("Revert \"{}\"\n\nThis reverts commit {}.\n", commit.summary, commit.sha);
            (vec![commit], message)
        }
    };
    let (name, email) = author(args.author.as_deref(), (!source.is_remote()).then(|| source.path()))?;
    let message = format!("{message}\nRolled back with kairn rollback by {name} <{email}>.\n");
    let shas: Vec<String> = reverted.iter().map(|c| c.sha.clone()).collect();
    let revert = source
        .revert(&branch, &shas, (&name, &email), &message)
        .await
        .context("the revert changed nothing")?;
    println!(
        "{}: reverted {} commit(s) on {branch} as {} by {name} <{email}>{}",
        args.app,
        shas.len(),
        short_sha(&revert.sha),
        if source.is_remote() { " (pushed)" } else { "" }
    );
    for c in &reverted {
        println!("  reverted {} {}", short_sha(&c.sha), c.summary);
    }
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let app = apps.get(&args.app).await.map_err(server_error)?;
        let status = app.status.unwrap_or_default();
        if status.synced_revision.as_deref() == Some(revert.sha.as_str()) {
            println!("{}: synced {}", args.app, short_sha(&revert.sha));
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(e) = status.last_error.filter(|e| e.revision == revert.sha) {
            bail!("the revert was rejected: {}", e.messages.join("; "));
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not sync the revert within 5 minutes (is it automated? `kairn sync {0}`)",
                args.app
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
