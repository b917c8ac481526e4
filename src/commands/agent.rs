//! `kairn agent`: a node agent running pods as host processes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use kairn_node::runtime::process::ProcessRuntime;
use kairn_node::AgentConfig;

use crate::client::{self, hostname};
use crate::shutdown;

/// `kairn agent` flags.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub client: client::ClientArgs,
    /// The Node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Address the node's pods are reachable at.
    #[arg(long, default_value = "127.0.0.1")]
    pub node_ip: String,
    /// Data directory (pod logs and working directories).
    #[arg(long, default_value = ".kairn")]
    pub data_dir: PathBuf,
    /// Address the agent serves container logs on, for the API server (port 0: any).
    #[arg(long, default_value = "127.0.0.1:10250")]
    pub log_addr: SocketAddr,
}

/// Runs the agent until a signal.
pub async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.connect().await?;
    let stop = shutdown::on_signal();
    let config = AgentConfig {
        node_name: args.node_name.unwrap_or_else(hostname),
        node_ip: args.node_ip,
        data_dir: args.data_dir,
        log_addr: args.log_addr,
    };
    kairn_node::run(client, config, ProcessRuntime, stop).await?;
    Ok(ExitCode::SUCCESS)
}
