//! `kairn member list|add|remove`: the store's members and changes to them, through the
//! API server (`/apis/kairn.dev/v1/members`), as the admin.

use std::process::ExitCode;

use anyhow::Context;
use kairn_cluster::store::MemberStatus;
use serde::Deserialize;

use crate::client::{server_error, ClientArgs, Output};

/// `kairn member` arguments.
#[derive(Debug, clap::Args)]
pub struct MemberArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub action: Action,
}

/// What to do with the membership.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Show every member: id, role, leader, Raft address, API, replication progress.
    List,
    /// Add a running member that has not joined a cluster yet (started with no `--peers`
    /// and no `--join`... or prefer `kairn server --join`, which does this itself).
    Add {
        /// The member's Raft id.
        id: u64,
        /// Its Raft address.
        raft_addr: String,
        /// Add it as a learner: it serves the API but does not vote.
        #[arg(long)]
        learner: bool,
    },
    /// Remove a member (its process should be stopped afterwards).
    Remove {
        /// The member's Raft id.
        id: u64,
    },
}

#[derive(Deserialize)]
struct MemberList {
    items: Vec<MemberStatus>,
}

async fn call(client: &kube::Client, request: http::Request<Vec<u8>>) -> anyhow::Result<Vec<MemberStatus>> {
    let list: MemberList = client.request(request).await.map_err(server_error)?;
    Ok(list.items)
}

/// Runs `kairn member`.
pub async fn run(args: MemberArgs) -> anyhow::Result<ExitCode> {
    const PATH: &str = "/apis/kairn.dev/v1/members";
    let client = args.client.connect().await?;
    let request = match &args.action {
        Action::List => http::Request::get(PATH).body(Vec::new()),
        Action::Add { id, raft_addr, learner } => {
            let body = serde_json::json!({"id": id, "raftAddr": raft_addr, "learner": learner});
            http::Request::post(PATH)
                .header("content-type", "application/json")
                .body(body.to_string().into_bytes())
        }
        Action::Remove { id } => http::Request::delete(format!("{PATH}/{id}")).body(Vec::new()),
    }
    .context("building the request")?;
    let members = call(&client, request).await.context("changing the membership")?;
    match args.client.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&members)?),
        Output::Yaml => print!("{}", serde_yaml::to_string(&members)?),
        Output::Table | Output::Wide => {
            println!(
                "{:<4} {:<8} {:<7} {:<22} {:<28} MATCHED",
                "ID", "ROLE", "LEADER", "RAFT", "API"
            );
            for m in &members {
                println!(
                    "{:<4} {:<8} {:<7} {:<22} {:<28} {}",
                    m.id,
                    m.role,
                    if m.leader { "*" } else { "" },
                    m.raft_addr,
                    m.api_url.as_deref().unwrap_or("-"),
                    m.matched.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
