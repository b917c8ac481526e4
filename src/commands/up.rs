//! `kairn up`: a one-member control plane and one node in one process, following a Git
//! repository (by default one created in the data directory from the bundled examples).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use kairn_cluster::kinds::{Application, ApplicationSource, ApplicationSpec, SyncPolicy};
use kairn_node::runtime::process::ProcessRuntime;
use kairn_node::AgentConfig;
use kairn_reconciler::source;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;

use super::server::{self, ControlPlaneArgs};
use crate::client::hostname;
use crate::{examples, shutdown};

/// `kairn up` flags.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub control_plane: ControlPlaneArgs,
    /// Git repository to follow: a local path or a `file://`, `http(s)://`, `ssh://` or
    /// `git://` URL (default: `<data-dir>/repo`, created from the examples).
    #[arg(long)]
    pub repo: Option<String>,
    /// Branch, tag or commit to follow (default: the repository's HEAD branch).
    #[arg(long)]
    pub branch: Option<String>,
    /// Directory inside the repository holding the manifests.
    #[arg(long, default_value = ".")]
    pub path: String,
    /// Name of the Application (default: `examples`, or the repository's directory name).
    #[arg(long)]
    pub app: Option<String>,
    /// Name of the node (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Address the node serves container logs on, for the API server (port 0: any).
    #[arg(long, default_value = "127.0.0.1:10250")]
    pub log_addr: std::net::SocketAddr,
}

/// A valid object name made from a directory name.
fn app_name(repo: &Path) -> String {
    let raw = repo
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let cleaned: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let cleaned = cleaned.trim_matches('-').to_string();
    if cleaned.is_empty() {
        "app".into()
    } else {
        cleaned.chars().take(63).collect()
    }
}

/// Creates the Application, or points an existing one at this source.
async fn ensure_application(client: &kube::Client, name: &str, spec: ApplicationSpec) -> anyhow::Result<()> {
    let apps: Api<Application> = Api::namespaced(client.clone(), kairn_cluster::kinds::APP_NAMESPACE);
    match apps
        .create(&PostParams::default(), &Application::new(name, spec.clone()))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            apps.patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": spec})))
                .await
                .with_context(|| format!("updating application {name}"))?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("creating application {name}")),
    }
}

/// Runs everything until a signal.
pub async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let stop = shutdown::on_signal();
    let node_name = args.node_name.clone().unwrap_or_else(hostname);
    let node_user = kairn_cluster::api::auth::node_user(&node_name);
    let cp = server::start(&args.control_plane, std::slice::from_ref(&node_user), stop.clone()).await?;
    let data_dir = args
        .control_plane
        .data_dir
        .canonicalize()
        .context("resolving the data directory")?;

    let (repo, default_app) = match &args.repo {
        Some(url) if url.contains("://") && !url.starts_with("file://") => {
            let name = app_name(Path::new(url.trim_end_matches('/').trim_end_matches(".git")));
            (url.clone(), name)
        }
        Some(repo) => {
            let path = PathBuf::from(repo.strip_prefix("file://").unwrap_or(repo));
            let repo = path
                .canonicalize()
                .with_context(|| format!("repository {}", path.display()))?;
            let name = app_name(&repo);
            (repo.display().to_string(), name)
        }
        None => {
            let repo = data_dir.join("repo");
            if !repo.exists() {
                source::init_seeded(&repo, examples::FILES, "Kairn examples")
                    .await
                    .with_context(|| format!("creating the example repository {}", repo.display()))?;
                tracing::info!(repo = %repo.display(), "created the example repository");
            }
            (repo.display().to_string(), "examples".to_string())
        }
    };
    let branch = match &args.branch {
        Some(b) => b.clone(),
        None if repo.contains("://") => "HEAD".to_string(),
        None => source::default_branch(Path::new(&repo))
            .await
            .with_context(|| format!("reading {repo}"))?,
    };
    let app = args.app.clone().unwrap_or(default_app);
    // What `kairn up` promises: every commit applied, removals pruned, drift undone.
    let spec = ApplicationSpec {
        source: ApplicationSource {
            repo_url: repo.clone(),
            target_revision: branch.clone(),
            path: args.path.clone(),
            poll_interval_seconds: None,
        },
        sync_policy: SyncPolicy {
            automated: true,
            prune: true,
            self_heal: true,
        },
        ..Default::default()
    };
    ensure_application(&cp.client, &app, spec).await?;

    let agent_config = AgentConfig {
        node_name,
        node_ip: "127.0.0.1".into(),
        data_dir: data_dir.clone(),
        log_addr: args.log_addr,
        manifest_dir: None,
        eviction_hard: Default::default(),
    };
    let agent = tokio::spawn(kairn_node::run(
        cp.member.client_as(&node_user)?,
        agent_config,
        ProcessRuntime,
        stop.clone(),
    ));

    println!("Kairn is up.");
    println!("  API:         {}", cp.api_url);
    println!("  kubeconfig:  {}   (export KUBECONFIG={0})", cp.kubeconfig.display());
    println!("  repository:  {repo} (revision {branch}, path {})", args.path);
    println!("  application: {app}");
    println!("Edit a manifest in the repository and commit: the cluster follows. Ctrl-C stops.");

    shutdown::wait(stop).await;
    match agent.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "node agent"),
        Err(e) => tracing::warn!(error = %e, "node agent task"),
    }
    cp.stop().await?;
    Ok(ExitCode::SUCCESS)
}
