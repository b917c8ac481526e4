//! `kairn diff`: what syncing a revision would change, per object, as a unified YAML
//! diff. Exits 1 when there are differences, like diff(1).

use std::process::ExitCode;

use anyhow::Context;
use kairn_reconciler::plan::Action;
use kairn_reconciler::{source, sync};

use crate::client::ClientArgs;

/// `kairn diff` arguments.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only this Application (default: every Application).
    #[arg(long)]
    pub app: Option<String>,
    /// Branch or commit to compare with the cluster (default: the followed branch's tip).
    #[arg(long)]
    pub revision: Option<String>,
}

fn paint(line: &str, color: bool) -> String {
    if !color {
        return line.to_string();
    }
    let code = match line.chars().next() {
        _ if line.starts_with("===") => "1;33",
        _ if line.starts_with("+++") || line.starts_with("---") => "1",
        Some('+') => "32",
        Some('-') => "31",
        Some('@') => "36",
        _ => return line.to_string(),
    };
    format!("\x1b[{code}m{line}\x1b[0m")
}

/// Runs `kairn diff`.
pub async fn run(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.connect().await?;
    let apps = super::applications(&client, args.client.namespace.as_deref(), args.app.as_deref()).await?;
    let color = args.client.color();
    let mut differences = false;
    let mut failed = false;
    for app in &apps {
        let name = app.metadata.name.as_deref().unwrap_or_default();
        let revision = args
            .revision
            .clone()
            .unwrap_or_else(|| app.spec.target_revision.clone());
        let commit = source::resolve(sync::repo_path(app), &revision)
            .await
            .with_context(|| format!("application {name}: resolving {revision}"))?;
        let plan = match sync::review(&client, app, &commit.sha).await {
            Ok(plan) => plan,
            Err(e) => {
                for m in e.messages() {
                    eprintln!("error: {m}");
                }
                failed = true;
                continue;
            }
        };
        for change in plan.changes.iter().filter(|c| c.action != Action::Unchanged) {
            differences = true;
            let verb = match change.action {
                Action::Create => "create",
                Action::Update => "update",
                Action::Prune => "prune",
                Action::Unchanged => "unchanged",
            };
            let from = change.source.as_deref().map(|s| format!(" ({s})")).unwrap_or_default();
            println!("{}", paint(&format!("=== {verb} {}{from}", change.object), color));
            for line in change.diff.lines() {
                println!("{}", paint(line, color));
            }
        }
        let s = plan.summary();
        eprintln!(
            "{name} @ {}: {} to create, {} to update, {} to prune, {} unchanged",
            &commit.sha[..12.min(commit.sha.len())],
            s.created,
            s.updated,
            s.pruned,
            s.unchanged
        );
    }
    Ok(if failed {
        ExitCode::from(2)
    } else if differences {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
