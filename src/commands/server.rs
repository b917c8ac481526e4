//! `kairn server`: a control-plane member (store, API server, scheduler, controllers,
//! reconciler) in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kairn_cluster::api::{auth, tls, ApiConfig};
use kairn_cluster::credentials;
use kairn_cluster::member::Member;
use kairn_cluster::store::{Start, Store, StoreConfig};
use std::collections::BTreeMap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::components::{self, Component, LeaderElectArgs};
use crate::{client, shutdown};

/// Flags of a control-plane member.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlPlaneArgs {
    /// Data directory (store, pods, kubeconfig, pki).
    #[arg(long, default_value = ".kairn")]
    pub data_dir: PathBuf,
    /// Address the API server listens on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub api_addr: SocketAddr,
    /// Address the store serves Raft RPC on, for other members (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:6444")]
    pub raft_addr: SocketAddr,
    /// This member's Raft id (unique in the cluster).
    #[arg(long, alias = "id", default_value_t = 1)]
    pub node_id: u64,
    /// On first start, form a cluster of these members: `ID=RAFTADDR,...`, this one
    /// included, the same list on every member (3 or 5 members tolerate 1 or 2 down).
    #[arg(long, value_delimiter = ',', value_parser = parse_peer, conflicts_with = "join")]
    pub peers: Vec<(u64, String)>,
    /// On first start, join the cluster that the member at this Raft address belongs to.
    #[arg(long)]
    pub join: Option<String>,
    /// Join as a learner: serve the API and replicate the store without a vote (with
    /// `--join`).
    #[arg(long, requires = "join")]
    pub learner: bool,
    /// Static bearer tokens, one `token,user,uid,"groups"` line each, as kube-apiserver's
    /// `--token-auth-file` (default `<data-dir>/tokens.csv`, created with the admin's and
    /// the components' tokens).
    #[arg(long)]
    pub token_auth_file: Option<PathBuf>,
    /// File holding the secret `POST /hooks/git` deliveries must be signed with (GitHub,
    /// Gitea) or carry (GitLab); without it, any push notification is accepted.
    #[arg(long)]
    pub webhook_secret_file: Option<PathBuf>,
    /// How long Events are kept after their last write, as kube-apiserver's `--event-ttl`
    /// (0 keeps them for good).
    #[arg(long, default_value = "1h", value_parser = components::parse_duration)]
    pub event_ttl: std::time::Duration,
    /// How long a node's Lease may go unrenewed before the controller manager counts the
    /// node unreachable (kube-controller-manager's flag of that name).
    #[arg(long, default_value = "40s", value_parser = components::parse_duration)]
    pub node_monitor_grace_period: std::time::Duration,
    /// The components this member runs beside its API server (`api` is always on); the
    /// others may run as `kairn scheduler`, `kairn controller-manager`, `kairn reconciler`.
    #[arg(long, value_delimiter = ',', value_enum, default_values_t = components::ALL.to_vec())]
    pub components: Vec<Component>,
    #[command(flatten)]
    pub election: LeaderElectArgs,
}

/// Parses one `ID=RAFTADDR` of `--peers`.
fn parse_peer(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected ID=RAFTADDR, e.g. 2=127.0.0.1:6454"))?;
    let id = id
        .trim()
        .parse()
        .map_err(|e| format!("{s:?}: the member id {id:?} is not a number: {e}"))?;
    let addr = addr.trim();
    addr.parse::<SocketAddr>()
        .map_err(|e| format!("{s:?}: the Raft address {addr:?} is not HOST:PORT: {e}"))?;
    Ok((id, addr.to_string()))
}

impl ControlPlaneArgs {
    /// How this member comes into its cluster on first start.
    pub fn start_mode(&self) -> anyhow::Result<Start> {
        if let Some(addr) = &self.join {
            return Ok(Start::Join {
                addr: addr.clone(),
                learner: self.learner,
            });
        }
        if self.peers.is_empty() {
            return Ok(Start::Single);
        }
        let peers: BTreeMap<u64, String> = self.peers.iter().cloned().collect();
        anyhow::ensure!(peers.len() == self.peers.len(), "--peers names a member id twice");
        anyhow::ensure!(
            peers.contains_key(&self.node_id),
            "--peers must include this member (id {})",
            self.node_id
        );
        Ok(Start::Peers(peers))
    }
}

/// `kairn server` flags.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub control_plane: ControlPlaneArgs,
}

/// How long the components get to stop after the signal.
const COMPONENT_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A running control plane.
pub struct ControlPlane {
    /// `http://host:port` of the API server.
    pub api_url: String,
    /// Path of the kubeconfig written for it.
    pub kubeconfig: PathBuf,
    /// A client of the API server, as the admin.
    pub client: kube::Client,
    /// The store member and its API server.
    pub member: Member,
    components: Vec<JoinHandle<()>>,
}

/// Starts the store, the API server and the controllers; they stop when `shutdown` fires.
/// `extra_users` get tokens beside the standard ones (a node agent in the same process).
pub async fn start(
    args: &ControlPlaneArgs,
    extra_users: &[String],
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<ControlPlane> {
    anyhow::ensure!(
        args.components.contains(&Component::Api),
        "--components must include api: every member serves the API (run the others apart \
         with kairn scheduler, kairn controller-manager or kairn reconciler)"
    );
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize().context("resolving the data directory")?;
    let token_file = args
        .token_auth_file
        .clone()
        .unwrap_or_else(|| data_dir.join("tokens.csv"));
    let mut users: Vec<(&str, &[&str])> = auth::STANDARD_USERS.to_vec();
    users.extend(extra_users.iter().map(|u| (u.as_str(), &["system:nodes"][..])));
    auth::ensure_token_file(&token_file, &users)?;
    let store_config = StoreConfig {
        node_id: args.node_id,
        raft_addr: args.raft_addr,
        start: args.start_mode()?,
    };
    let pki = data_dir.join("pki");
    let names = tls::serving_names(&args.api_addr);
    // Makes the CA on a new member (it may be replaced by the cluster's below).
    tls::load_or_create(&pki, &names)?;
    let webhook_secret = match &args.webhook_secret_file {
        Some(path) => {
            let secret = std::fs::read_to_string(path)
                .with_context(|| format!("reading the webhook secret {}", path.display()))?;
            // Files usually end with a newline that is not part of the secret.
            let secret = secret.trim().to_string();
            anyhow::ensure!(
                !secret.is_empty(),
                "the webhook secret file {} is empty",
                path.display()
            );
            Some(secret)
        }
        None => None,
    };
    let listener = Member::bind(args.api_addr).await?;
    let store = Store::open(&data_dir.join("store"), store_config)
        .await
        .context("opening the store")?;
    // One CA and one token file for the whole cluster, so any member's kubeconfig works
    // against every member.
    let files = credentials::Files::new(&pki, &token_file);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match credentials::share(&store, &files).await {
            Ok(_) => break,
            // The leadership may still move while a new cluster forms.
            Err(credentials::CredentialsError::Store(
                e
                @ (kairn_cluster::store::StoreError::NotLeader { .. } | kairn_cluster::store::StoreError::NoQuorum(_)),
            )) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "sharing the cluster's credentials; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context("sharing the cluster's credentials")),
        }
    }
    let authenticator = auth::Authenticator::from_file(&token_file)?;
    let certs = tls::load_or_create(&pki, &names)?;
    let member = Member::serve(
        store,
        listener,
        authenticator,
        certs,
        ApiConfig {
            webhook_secret,
            event_ttl: Some(args.event_ttl).filter(|ttl| !ttl.is_zero()),
        },
    )
    .await?;
    let api_url = member.api_url();
    std::fs::write(data_dir.join("api-addr"), member.api_addr().to_string()).context("writing api-addr")?;
    let kubeconfig = data_dir.join("kubeconfig");
    let admin_token = member
        .authenticator()
        .token_of(auth::ADMIN)
        .context("the token file has no admin token")?;
    client::write_kubeconfig(&kubeconfig, &api_url, member.ca_pem(), admin_token)?;
    eprintln!("kairn: API listening on {api_url}");
    tracing::info!(api = %api_url, data_dir = %data_dir.display(), "control plane started");

    // A kubeconfig per component, as kubeadm writes scheduler.conf and
    // controller-manager.conf, for components run apart against this member.
    for identity in components::ALL.iter().filter_map(|c| c.identity()) {
        let token = member
            .authenticator()
            .token_of(identity.user)
            .with_context(|| format!("the token file has no token for {}", identity.user))?;
        let path = data_dir.join(format!("{}.kubeconfig", identity.kubeconfig));
        client::write_kubeconfig_for(&path, &api_url, member.ca_pem(), identity.user, token)?;
    }

    let client = member.client()?;
    // The member's id names its candidates, so `kubectl get lease -n kube-system` shows
    // which member acts.
    let host = format!("{}-member-{}", client::hostname(), args.node_id);
    let mut options = components::Options::new(data_dir.clone());
    options.controllers.node_lifecycle.grace_period = args.node_monitor_grace_period;
    let mut components = Vec::new();
    for &component in &args.components {
        let Some(identity) = component.identity() else { continue };
        let task = components::spawn(
            component,
            member.client_as(identity.user)?,
            &args.election,
            &host,
            options.clone(),
            shutdown.clone(),
        )?;
        components.extend(task);
    }
    Ok(ControlPlane {
        api_url,
        kubeconfig,
        client,
        member,
        components,
    })
}

impl ControlPlane {
    /// Waits for the components to stop, then stops the API server and flushes the store.
    pub async fn stop(self) -> anyhow::Result<()> {
        // A component still starting up (filling its caches) may not look at the
        // signal yet: it gets a bounded time, then is stopped where it is.
        for mut c in self.components {
            if tokio::time::timeout(COMPONENT_STOP_TIMEOUT, &mut c).await.is_err() {
                tracing::warn!("a component did not stop in time; aborting it");
                c.abort();
            }
        }
        self.member.stop().await.context("stopping the store member")?;
        Ok(())
    }
}

/// Runs `kairn server` until a signal.
pub async fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let stop = shutdown::on_signal();
    // A signal while starting (e.g. waiting for a quorum of members) stops it there.
    let cp = tokio::select! {
        cp = start(&args.control_plane, &[], stop.clone()) => cp?,
        () = shutdown::wait(stop.clone()) => {
            tracing::info!("stopped while starting");
            return Ok(ExitCode::SUCCESS);
        }
    };
    println!("API: {}\nkubeconfig: {}", cp.api_url, cp.kubeconfig.display());
    shutdown::wait(stop).await;
    cp.stop().await?;
    Ok(ExitCode::SUCCESS)
}
