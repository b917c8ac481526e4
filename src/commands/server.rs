//! `kairn server`: a control-plane member (store, API server, scheduler, controllers,
//! reconciler) in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kairn_cluster::store::{Store, StoreConfig};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::{client, shutdown};

/// Flags of a control-plane member.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlPlaneArgs {
    /// Data directory (store, pods, kubeconfig).
    #[arg(long, default_value = ".kairn")]
    pub data_dir: PathBuf,
    /// Address the API server listens on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub api_addr: SocketAddr,
    /// Address the store serves Raft RPC on, for other members (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:6444")]
    pub raft_addr: SocketAddr,
    /// This member's Raft id.
    #[arg(long, default_value_t = 1)]
    pub node_id: u64,
}

/// `kairn server` flags.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub control_plane: ControlPlaneArgs,
}

/// A running control plane.
pub struct ControlPlane {
    /// `http://host:port` of the API server.
    pub api_url: String,
    /// Path of the kubeconfig written for it.
    pub kubeconfig: PathBuf,
    /// A client of the API server.
    pub client: kube::Client,
    store: Store,
    components: Vec<JoinHandle<()>>,
    api: JoinHandle<std::io::Result<()>>,
    stop_api: oneshot::Sender<()>,
}

/// Starts the store, the API server and the controllers; they stop when `shutdown` fires.
pub async fn start(args: &ControlPlaneArgs, shutdown: watch::Receiver<bool>) -> anyhow::Result<ControlPlane> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize().context("resolving the data directory")?;
    let listener = tokio::net::TcpListener::bind(args.api_addr)
        .await
        .with_context(|| format!("binding the API address {}", args.api_addr))?;
    let addr = listener.local_addr().context("reading the bound API address")?;
    let store_config = StoreConfig {
        node_id: args.node_id,
        raft_addr: args.raft_addr,
        bootstrap: true,
    };
    let store = Store::open(&data_dir.join("store"), store_config)
        .await
        .context("opening the store")?;
    kairn_cluster::api::bootstrap(&store)
        .await
        .context("creating the initial namespaces")?;

    let (stop_api, api_stopped) = oneshot::channel::<()>();
    let api = tokio::spawn(kairn_cluster::api::serve(store.clone(), listener, async move {
        let _ = api_stopped.await;
    }));
    let api_url = format!("http://{addr}");
    std::fs::write(data_dir.join("api-addr"), addr.to_string()).context("writing api-addr")?;
    let kubeconfig = data_dir.join("kubeconfig");
    client::write_kubeconfig(&kubeconfig, &api_url)?;
    eprintln!("kairn: API listening on {api_url}");
    tracing::info!(api = %api_url, data_dir = %data_dir.display(), "control plane started");

    let client = client::connect_url(&api_url)?;
    let components = vec![
        tokio::spawn(kairn_cluster::scheduler::run(client.clone(), shutdown.clone())),
        tokio::spawn(kairn_cluster::controllers::run(client.clone(), shutdown.clone())),
        tokio::spawn(kairn_reconciler::run(client.clone(), shutdown.clone())),
    ];
    Ok(ControlPlane {
        api_url,
        kubeconfig,
        client,
        store,
        components,
        api,
        stop_api,
    })
}

impl ControlPlane {
    /// Waits for the components to stop, then stops the API server and flushes the store.
    pub async fn stop(self) -> anyhow::Result<()> {
        for c in self.components {
            let _ = c.await;
        }
        let _ = self.stop_api.send(());
        self.api.await.context("API server task")?.context("API server")?;
        self.store.shutdown().await.context("flushing the store")?;
        Ok(())
    }
}

/// Runs `kairn server` until a signal.
pub async fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let stop = shutdown::on_signal();
    let cp = start(&args.control_plane, stop.clone()).await?;
    println!("API: {}\nkubeconfig: {}", cp.api_url, cp.kubeconfig.display());
    shutdown::wait(stop).await;
    cp.stop().await?;
    Ok(ExitCode::SUCCESS)
}
