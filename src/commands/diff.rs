//! `kairn diff`: what syncing a revision (or a working tree) would change, per object,
//! as a unified YAML diff after the server's own defaulting and admission. Exits 0 when
//! nothing would change, 1 when something would, 2 on an error, like diff(1).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kairn_reconciler::plan::Action;
use kairn_reconciler::source::{short_sha, Source};
use kairn_reconciler::sync;
use serde_json::json;

use crate::client::{ClientArgs, Output};

/// `kairn diff` arguments.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only this Application (default: every Application).
    pub app: Option<String>,
    /// Only this Application (the older spelling of the positional argument).
    #[arg(long = "app", conflicts_with = "app")]
    pub app_flag: Option<String>,
    /// Branch, tag or commit to compare with the cluster (default: the target revision).
    #[arg(long, conflicts_with = "local")]
    pub revision: Option<String>,
    /// A working tree of the Application's repository, uncommitted changes included.
    #[arg(long)]
    pub local: Option<PathBuf>,
    /// Data directory whose `repos/` mirrors remote repositories.
    #[arg(long, default_value = ".kairn")]
    pub data_dir: PathBuf,
}

pub(crate) fn paint(line: &str, color: bool) -> String {
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
    let wanted = args.app.as_deref().or(args.app_flag.as_deref());
    let apps = super::applications(&client, args.client.namespace.as_deref(), wanted).await?;
    let color = args.client.color();
    let json_out = matches!(args.client.output, Output::Json);
    let mut differences = false;
    let mut failed = false;
    let mut reports = Vec::new();
    for app in &apps {
        let key = sync::app_key(app);
        let (tree, label) = match &args.local {
            Some(dir) => {
                let tree = sync::working_tree(dir).with_context(|| format!("reading {}", dir.display()))?;
                (tree, format!("working tree {}", dir.display()))
            }
            None => {
                let source = Source::new(&app.spec.source.repo_url, &args.data_dir)
                    .with_context(|| format!("application {key}: repository"))?;
                source
                    .fetch()
                    .await
                    .with_context(|| format!("application {key}: fetching"))?;
                let revision = args
                    .revision
                    .clone()
                    .unwrap_or_else(|| app.spec.source.target_revision.clone());
                let commit = source
                    .resolve(&revision)
                    .await
                    .with_context(|| format!("application {key}: resolving {revision}"))?;
                let tree = source
                    .read_tree(&commit.sha)
                    .await
                    .with_context(|| format!("application {key}: reading {}", commit.sha))?;
                (tree, commit.sha)
            }
        };
        let commit_label = if args.local.is_some() {
            "working-tree"
        } else {
            label.as_str()
        };
        let plan = match sync::review(&client, app, tree, commit_label).await {
            Ok(plan) => plan,
            Err(e) => {
                if json_out {
                    reports.push(json!({"application": key, "revision": label, "errors": e.messages()}));
                } else {
                    for m in e.messages() {
                        eprintln!("error: {m}");
                    }
                }
                failed = true;
                continue;
            }
        };
        differences |= plan.has_changes();
        if json_out {
            let mut report = plan.to_json();
            report["application"] = json!(key);
            report["revision"] = json!(label);
            report["errors"] = json!([]);
            reports.push(report);
            continue;
        }
        for change in plan.changes.iter().filter(|c| c.action != Action::Unchanged) {
            let from = change.source.as_deref().map(|s| format!(" ({s})")).unwrap_or_default();
            println!(
                "{}",
                paint(
                    &format!("=== {} {}{from}", change.action.as_str(), change.object),
                    color
                )
            );
            for line in change.diff.lines() {
                println!("{}", paint(line, color));
            }
        }
        let s = plan.summary();
        let at = if args.local.is_some() {
            label.clone()
        } else {
            short_sha(&label).to_string()
        };
        eprintln!(
            "{key} @ {at}: {} to create, {} to update, {} to prune, {} unchanged",
            s.created, s.updated, s.pruned, s.unchanged
        );
    }
    if json_out {
        println!("{}", serde_json::to_string_pretty(&json!({"applications": reports}))?);
    }
    Ok(if failed {
        ExitCode::from(2)
    } else if differences {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
