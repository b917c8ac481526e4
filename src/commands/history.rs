//! `kairn history APP [REV]`: the Application's syncs, newest first (revision, author,
//! message, time, result, counts); with REV, that sync's plan and diffs.

use std::process::ExitCode;

use anyhow::{bail, Context};
use kairn_cluster::kinds::APP_NAMESPACE;
use kairn_reconciler::history;
use kairn_reconciler::source::short_sha;

use super::diff::paint;
use crate::client::{server_error, ClientArgs, Output};

/// `kairn history` arguments.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The Application.
    pub app: String,
    /// One sync to show in full: a commit SHA (or a prefix of one) or a history id.
    pub revision: Option<String>,
}

/// Runs `kairn history`.
pub async fn run(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.connect().await?;
    let ns = args.client.namespace.as_deref().unwrap_or(APP_NAMESPACE);
    let entries = history::list(&client, ns, &args.app)
        .await
        .map_err(server_error)
        .with_context(|| format!("reading the history of {ns}/{}", args.app))?;
    let entries = match &args.revision {
        None => entries,
        Some(rev) => {
            // The newest sync of that commit (a commit may be synced more than once).
            let found: Vec<_> = entries
                .into_iter()
                .filter(|e| e.revision.starts_with(rev.as_str()) || e.id.map(|i| i.to_string()).as_deref() == Some(rev))
                .take(1)
                .collect();
            if found.is_empty() {
                bail!("no sync of {rev} in the history of {}", args.app);
            }
            found
        }
    };
    match args.client.output {
        Output::Json => {
            println!("{}", serde_json::to_string_pretty(&entries)?);
            return Ok(ExitCode::SUCCESS);
        }
        Output::Yaml => {
            print!(
                "{}",
                kairn_reconciler::manifest::to_yaml(&serde_json::to_value(&entries)?)
            );
            return Ok(ExitCode::SUCCESS);
        }
        Output::Table | Output::Wide => {}
    }
    if let (Some(_), Some(e)) = (&args.revision, entries.first()) {
        let color = args.client.color();
        println!("revision:  {}", e.revision);
        println!("author:    {}", e.author);
        println!("message:   {}", e.message);
        println!("time:      {}", e.time);
        println!("operation: {} (by {})", e.operation, e.initiated_by);
        println!("result:    {}", e.result);
        let s = &e.summary;
        println!(
            "counts:    {} created, {} updated, {} pruned, {} unchanged",
            s.created, s.updated, s.pruned, s.unchanged
        );
        for m in &e.messages {
            println!("error: {m}");
        }
        for c in &e.changes {
            println!("{}", paint(&format!("=== {} {}", c.action, c.object), color));
            for line in c.diff.lines() {
                println!("{}", paint(line, color));
            }
        }
        if e.truncated {
            println!("(diffs beyond the first megabyte are not kept)");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if entries.is_empty() {
        eprintln!("No syncs of {} yet.", args.app);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<8} {:<12} {:<10} {:<10} {:<20} {:>7} {:>7} {:>6}  {:<24} MESSAGE",
        "ID", "REVISION", "RESULT", "OPERATION", "TIME", "CREATED", "UPDATED", "PRUNED", "AUTHOR"
    );
    for e in &entries {
        let s = &e.summary;
        let message = e
            .messages
            .first()
            .map(|m| format!("{} [{m}]", e.message))
            .unwrap_or_else(|| e.message.clone());
        println!(
            "{:<8} {:<12} {:<10} {:<10} {:<20} {:>7} {:>7} {:>6}  {:<24} {}",
            e.id.unwrap_or_default(),
            short_sha(&e.revision),
            e.result,
            e.operation,
            e.time,
            s.created,
            s.updated,
            s.pruned,
            e.author,
            message
        );
    }
    Ok(ExitCode::SUCCESS)
}
