//! `kairn agent`: a node agent running pods as host processes; or, with `--simulate N`,
//! N hollow nodes that run nothing (for scheduler benchmarks at scale).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use kairn_node::runtime::process::ProcessRuntime;
use kairn_node::simulate::{self, Capacity, SimulateConfig};
use kairn_node::AgentConfig;

use crate::client::{self, hostname};
use crate::shutdown;

/// `kairn agent` flags.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub client: client::ClientArgs,
    /// The Node's name (default: the host name).
    #[arg(long, conflicts_with = "simulate")]
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
    /// Directory of static pod manifests: run by this agent without the API server and
    /// mirrored into it (the kubelet's `staticPodPath`).
    #[arg(long, conflicts_with = "simulate")]
    pub manifest_dir: Option<PathBuf>,
    /// When the node reports pressure, as the kubelet's flag of that name: signals
    /// `memory.available`, `nodefs.available`, `nodefs.inodesFree`, each `<` a quantity or a
    /// percentage (the kubelet's disk default is `nodefs.available<10%`).
    #[arg(long, default_value = "memory.available<100Mi,nodefs.available<1Gi,nodefs.inodesFree<5%",
        value_parser = kairn_node::node_status::EvictionHard::parse)]
    pub eviction_hard: kairn_node::node_status::EvictionHard,
    #[command(flatten)]
    pub simulate: SimulateArgs,
}

/// `kairn agent --simulate N` flags: hollow nodes, as KWOK and kubemark make them.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Hollow nodes")]
pub struct SimulateArgs {
    /// Register N hollow nodes that run nothing (pods bound to them are reported Running).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub simulate: Option<u32>,
    /// Hollow nodes are named <prefix>0 to <prefix><N-1>.
    #[arg(long, value_name = "PREFIX", default_value = "hollow-node-", requires = "simulate")]
    pub node_name_prefix: String,
    /// Each hollow node's CPU capacity (and allocatable).
    #[arg(long, value_name = "QUANTITY", default_value = "4", requires = "simulate")]
    pub capacity_cpu: String,
    /// Each hollow node's memory capacity (and allocatable).
    #[arg(long, value_name = "QUANTITY", default_value = "32Gi", requires = "simulate")]
    pub capacity_memory: String,
    /// How many pods each hollow node takes.
    #[arg(long, value_name = "COUNT", default_value = "110", requires = "simulate")]
    pub capacity_pods: String,
    /// Spread hollow nodes over Z zones: node i is in zone-<i % Z> (region region-0).
    #[arg(long, value_name = "Z", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..), requires = "simulate")]
    pub zones: u32,
    /// Extra labels on every hollow node (key=value,key2=value2).
    #[arg(long, value_name = "LABELS", requires = "simulate")]
    pub node_labels: Option<String>,
    /// Taints on every hollow node (key=value:Effect,key2:Effect2; the kubelet's syntax).
    #[arg(long, value_name = "TAINTS", requires = "simulate")]
    pub register_with_taints: Option<String>,
}

impl SimulateArgs {
    /// The hollow nodes asked for, if any; an error names a flag that does not parse.
    fn config(&self) -> Result<Option<SimulateConfig>, simulate::FlagError> {
        let Some(count) = self.simulate else {
            return Ok(None);
        };
        Ok(Some(SimulateConfig {
            count: count as usize,
            name_prefix: self.node_name_prefix.clone(),
            capacity: Capacity::parse(&self.capacity_cpu, &self.capacity_memory, &self.capacity_pods)?,
            zones: self.zones as usize,
            labels: simulate::parse_labels(self.node_labels.as_deref().unwrap_or_default())?,
            taints: simulate::parse_taints(self.register_with_taints.as_deref().unwrap_or_default())?,
        }))
    }
}

/// Runs the agent until a signal.
pub async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    // Flags are checked before connecting, so that a typo is reported as such.
    let hollow = args.simulate.config()?;
    let client = args.client.connect().await?;
    let stop = shutdown::on_signal();
    if let Some(config) = hollow {
        simulate::run(client, config, stop).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let config = AgentConfig {
        node_name: args.node_name.unwrap_or_else(hostname),
        node_ip: args.node_ip,
        data_dir: args.data_dir,
        log_addr: args.log_addr,
        manifest_dir: args.manifest_dir,
        eviction_hard: args.eviction_hard,
    };
    kairn_node::run(client, config, ProcessRuntime, stop).await?;
    Ok(ExitCode::SUCCESS)
}
