//! `kairn audit`: who changed what, when, and from which commit. Every write through
//! the API has a record, written in the same transaction as the write.

use std::process::ExitCode;

use anyhow::Context;
use kairn_reconciler::history;
use kairn_reconciler::source::short_sha;

use crate::client::{server_error, ClientArgs, Output};

/// `kairn audit` arguments.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only this object: `KIND/NAME` (`deployment/web`) or a kind alone (`configmaps`).
    #[arg(long)]
    pub object: Option<String>,
    /// Only writes from this Application.
    #[arg(long)]
    pub app: Option<String>,
    /// Only writes by this user.
    #[arg(long)]
    pub user: Option<String>,
    /// Only records this recent (`15m`, `2h`, `7d`) or since an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many records (the newest).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

/// Runs `kairn audit`.
pub async fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.connect().await?;
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(object) = &args.object {
        match object.split_once('/') {
            Some((kind, name)) => {
                query.append_pair("kind", kind).append_pair("name", name);
            }
            None => {
                query.append_pair("kind", object);
            }
        }
    }
    for (key, value) in [
        ("namespace", &args.client.namespace),
        ("application", &args.app),
        ("user", &args.user),
        ("since", &args.since),
    ] {
        if let Some(v) = value {
            query.append_pair(key, v);
        }
    }
    query.append_pair("limit", &args.limit.to_string());
    let query = query.finish();
    let records = history::audit(&client, &query)
        .await
        .map_err(server_error)
        .context("reading the audit trail")?;
    match args.client.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&records)?),
        Output::Yaml => print!(
            "{}",
            kairn_reconciler::manifest::to_yaml(&serde_json::to_value(&records)?)
        ),
        Output::Table | Output::Wide => {
            if records.is_empty() {
                eprintln!("No audit records match.");
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<27} {:<30} {:<14} {:<45} {:>8} {:<20} COMMIT",
                "TIME", "USER", "VERB", "OBJECT", "REV", "APPLICATION"
            );
            for r in &records {
                let ns = r.namespace.as_deref().map(|n| format!("{n}/")).unwrap_or_default();
                println!(
                    "{:<27} {:<30} {:<14} {:<45} {:>8} {:<20} {}",
                    r.time,
                    r.user,
                    r.verb,
                    format!("{}/{ns}{}", r.kind, r.name),
                    r.resource_version_after.as_deref().unwrap_or("-"),
                    r.application.as_deref().unwrap_or("-"),
                    r.commit.as_deref().map(short_sha).unwrap_or("-")
                );
                if matches!(args.client.output, Output::Wide) {
                    println!("    {}", r.patch);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
