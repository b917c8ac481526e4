//! `kairn status`: per Application, the commit the cluster is on, the commit waiting,
//! and why it waits.

use std::process::ExitCode;

use crate::client::{ClientArgs, Output};

/// `kairn status` arguments.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only this Application.
    pub app: Option<String>,
}

fn short(sha: Option<&str>) -> String {
    sha.map(|s| s.chars().take(12).collect()).unwrap_or_else(|| "-".into())
}

/// Runs `kairn status`.
pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.connect().await?;
    let mut apps = super::applications(&client, args.client.namespace.as_deref(), args.app.as_deref()).await?;
    apps.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    match args.client.output {
        Output::Yaml => print!("{}", kairn_reconciler::manifest::to_yaml(&serde_json::to_value(&apps)?)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&apps)?),
        Output::Table | Output::Wide => {
            if apps.is_empty() {
                eprintln!("No applications.");
            }
            for app in &apps {
                let name = app.metadata.name.as_deref().unwrap_or_default();
                let status = app.status.clone().unwrap_or_default();
                println!("application: {name}");
                println!(
                    "  source:    {} (branch {}, path {})",
                    app.spec.repo_url, app.spec.target_revision, app.spec.path
                );
                println!(
                    "  sync:      {}",
                    if status.sync_status.is_empty() {
                        "Unknown"
                    } else {
                        &status.sync_status
                    }
                );
                println!("  synced:    {}", short(status.synced_revision.as_deref()));
                if let Some(t) = &status.last_sync_time {
                    println!("  last sync: {t}");
                }
                if let Some(p) = &status.last_plan {
                    println!(
                        "  last plan: {} created, {} updated, {} pruned, {} unchanged",
                        p.created, p.updated, p.pruned, p.unchanged
                    );
                }
                println!("  pending:   {}", short(status.pending_revision.as_deref()));
                if let Some(err) = &status.last_error {
                    println!("  last error (commit {}, {}):", short(Some(&err.revision)), err.time);
                    for m in &err.messages {
                        println!("    error: {m}");
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
