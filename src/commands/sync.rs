//! `kairn sync APP`: asks the reconciler to sync an Application now (the way to apply a
//! commit when `automated` is off), optionally to another revision or as a dry run, and
//! waits for the result; `--wait` then follows the rollout until the Application is
//! Healthy or fails.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kairn_cluster::kinds::{Application, Operation, APP_NAMESPACE};
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;

use crate::client::{server_error, ClientArgs, Output};

/// `kairn sync` arguments.
#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The Application.
    pub app: String,
    /// Branch, tag or commit to sync (default: the target revision).
    #[arg(long)]
    pub revision: Option<String>,
    /// Plan and validate only; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Prune objects that left Git, even if the Application's policy does not.
    #[arg(long)]
    pub prune: bool,
    /// After the sync, wait until the Application is Healthy (exit 2 if it degrades).
    #[arg(long)]
    pub wait: bool,
    /// How long to wait, in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

/// Who asks, for the operation's record (the audit trail keeps the authenticated user).
fn initiator() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    format!("{user} (kairn sync)")
}

/// Runs `kairn sync`.
pub async fn run(args: SyncArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.connect().await?;
    let ns = args.client.namespace.as_deref().unwrap_or(APP_NAMESPACE);
    let api: Api<Application> = Api::namespaced(client.clone(), ns);
    let id = uuid::Uuid::new_v4().to_string();
    let op = Operation {
        revision: args.revision.clone(),
        dry_run: args.dry_run,
        prune: args.prune,
        initiated_by: initiator(),
        id: id.clone(),
    };
    api.patch(
        &args.app,
        &PatchParams::default(),
        &Patch::Merge(json!({"operation": op})),
    )
    .await
    .map_err(server_error)
    .with_context(|| format!("asking application {ns}/{} to sync", args.app))?;
    let tty = std::io::stderr().is_terminal();
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    // The reconciler reports the operation in status; poll it (a sync is short).
    let state = loop {
        let app = api.get(&args.app).await.map_err(server_error)?;
        if let Some(state) = app.status.and_then(|s| s.operation_state).filter(|s| s.id == id) {
            break state;
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {}s waiting for the reconciler to run the sync",
                args.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let summary = state
        .summary
        .as_ref()
        .map(|s| {
            format!(
                ": {} created, {} updated, {} pruned, {} unchanged",
                s.created, s.updated, s.pruned, s.unchanged
            )
        })
        .unwrap_or_default();
    if matches!(args.client.output, Output::Json) {
        println!("{}", serde_json::to_string_pretty(&state)?);
    } else {
        println!(
            "{} {} at {}{summary}: {}",
            args.app,
            state.phase,
            crate::commands::status::short(state.revision.as_deref()),
            state.message
        );
    }
    if state.phase != "Succeeded" {
        return Ok(ExitCode::from(2));
    }
    if !args.wait || args.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    let mut last = String::new();
    loop {
        let app = api.get(&args.app).await.map_err(server_error)?;
        let status = app.status.unwrap_or_default();
        let health = status.health.status.clone();
        let line = format!(
            "{}: sync {}, health {}{}",
            args.app,
            status.sync.status,
            health,
            status
                .health
                .message
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        );
        if tty && line != last {
            eprintln!("{line}");
            last = line.clone();
        }
        match health.as_str() {
            "Healthy" if status.sync.status == "Synced" => {
                println!("{line}");
                return Ok(ExitCode::SUCCESS);
            }
            "Degraded" => {
                println!("{line}");
                return Ok(ExitCode::from(2));
            }
            _ => {}
        }
        if Instant::now() > deadline {
            println!("{line}");
            bail!(
                "timed out after {}s waiting for {} to become Healthy",
                args.timeout,
                args.app
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
