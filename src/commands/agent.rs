//! `kairn agent`: a node agent running pods as host processes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use kairn_node::runtime::process::ProcessRuntime;
use kairn_node::AgentConfig;

use crate::{client, shutdown};

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

/// The host's name, the default Node name.
pub fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim().to_lowercase();
    if name.is_empty() {
        "kairn-node".into()
    } else {
        name
    }
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
