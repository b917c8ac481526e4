//! A control-plane member's core: the store and the API server in front of it, started
//! and stopped together. The scheduler, controllers and reconciler are clients of it.

use std::net::SocketAddr;
use std::path::Path;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{self, ApiError};
use crate::store::{Store, StoreConfig, StoreError};

/// Why a member could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    /// The API address could not be bound.
    #[error("binding the API address {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The initial namespaces could not be created.
    #[error("creating the initial namespaces: {0}")]
    Bootstrap(#[from] ApiError),
    /// The API server failed.
    #[error("API server: {0}")]
    Serve(String),
    /// A client of the API could not be made.
    #[error("API client: {0}")]
    Client(#[from] kube::Error),
}

/// A running store member with its API server.
pub struct Member {
    store: Store,
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    api: JoinHandle<std::io::Result<()>>,
}

impl Member {
    /// Opens the store in `store_dir`, creates the initial namespaces and serves the API
    /// on `api_addr` (port 0 picks a free port).
    pub async fn start(store_dir: &Path, config: StoreConfig, api_addr: SocketAddr) -> Result<Member, MemberError> {
        let listener = tokio::net::TcpListener::bind(api_addr)
            .await
            .map_err(|source| MemberError::Bind { addr: api_addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| MemberError::Bind { addr: api_addr, source })?;
        let store = Store::open(store_dir, config).await?;
        api::bootstrap(&store).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let api = tokio::spawn(api::serve(store.clone(), listener, async move {
            let _ = stopped.await;
        }));
        tracing::info!(api = %addr, raft = %store.raft_addr(), "store member serving");
        Ok(Member { store, addr, stop, api })
    }

    /// The address the API server is bound to.
    pub fn api_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://host:port` of the API server.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube-rs client of this member's API.
    pub fn client(&self) -> Result<kube::Client, MemberError> {
        let uri = self
            .api_url()
            .parse()
            .map_err(|e| MemberError::Serve(format!("bad API URL: {e}")))?;
        Ok(kube::Client::try_from(kube::Config::new(uri))?)
    }

    /// The store under the API (for members' own operations such as adding a member).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stops the API server (ending open watches), then Raft, and flushes the store.
    pub async fn stop(self) -> Result<(), MemberError> {
        let _ = self.stop.send(());
        match self.api.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(MemberError::Serve(e.to_string())),
            Err(e) => return Err(MemberError::Serve(e.to_string())),
        }
        self.store.shutdown().await?;
        Ok(())
    }
}
