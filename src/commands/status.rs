//! `kairn status`: per Application, its source, sync and health, the commit the cluster
//! is on, what is out of sync and why (with who changed it), and the last rejection.

use std::process::ExitCode;

use kairn_reconciler::source::short_sha;

use crate::client::{ClientArgs, Output};

/// `kairn status` arguments.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only this Application.
    pub app: Option<String>,
}

pub(crate) fn short(sha: Option<&str>) -> &str {
    sha.map(short_sha).unwrap_or("-")
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() {
        "Unknown"
    } else {
        s
    }
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
                let src = &app.spec.source;
                let policy = &app.spec.sync_policy;
                println!("application: {name}");
                println!(
                    "  source:    {} (revision {}, path {})",
                    src.repo_url,
                    src.target_revision,
                    if src.path.is_empty() { "." } else { &src.path }
                );
                println!(
                    "  policy:    automated={} prune={} selfHeal={}",
                    policy.automated, policy.prune, policy.self_heal
                );
                let why = status
                    .sync
                    .message
                    .as_deref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default();
                println!("  sync:      {}{why}", or_unknown(&status.sync.status));
                let why = status
                    .health
                    .message
                    .as_deref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default();
                println!("  health:    {}{why}", or_unknown(&status.health.status));
                println!("  synced:    {}", short(status.synced_revision.as_deref()));
                println!("  target:    {}", short(status.target_revision.as_deref()));
                if let Some(t) = &status.last_sync_time {
                    println!("  last sync: {t}");
                }
                if let Some(p) = &status.last_plan {
                    println!(
                        "  last plan: {} created, {} updated, {} pruned, {} unchanged",
                        p.created, p.updated, p.pruned, p.unchanged
                    );
                }
                for c in &status.conditions {
                    println!(
                        "  condition: {}: {} (since {})",
                        c.type_, c.message, c.last_transition_time
                    );
                }
                let off: Vec<_> = status.resources.iter().filter(|r| r.status != "Synced").collect();
                for r in &off {
                    let ns = r.namespace.as_deref().map(|n| format!("{n}/")).unwrap_or_default();
                    println!(
                        "  out of sync: {} {ns}{}: {}",
                        r.kind,
                        r.name,
                        r.message.as_deref().unwrap_or_default()
                    );
                    if matches!(args.client.output, Output::Wide) {
                        for line in r.diff.as_deref().unwrap_or_default().lines() {
                            println!("      {line}");
                        }
                    }
                }
                if let Some(op) = &status.operation_state {
                    println!("  last operation {}: {} {}", op.id, op.phase, op.message);
                }
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
