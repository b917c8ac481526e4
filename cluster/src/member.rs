//! A control-plane member's core: the store and the API server in front of it, started
//! and stopped together. The scheduler, controllers and reconciler are clients of it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::tls::{self, ServingCerts, TlsError};
use crate::api::{self, ApiError, Authenticator};
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
    #[error("creating the initial objects: {0}")]
    Bootstrap(#[from] ApiError),
    /// The API server failed.
    #[error("API server: {0}")]
    Serve(String),
    /// TLS could not be set up.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// A client of the API could not be made.
    #[error("API client: {0}")]
    Client(#[from] kube::Error),
}

/// How long a starting member retries what fails only because the cluster is forming.
const STARTUP_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

impl MemberError {
    /// Whether the store was only briefly without a usable leader (worth retrying).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            MemberError::Store(StoreError::NotLeader { .. } | StoreError::NoQuorum(_))
                | MemberError::Bootstrap(ApiError::Store(StoreError::NotLeader { .. } | StoreError::NoQuorum(_)))
        )
    }
}

/// A running store member with its API server.
pub struct Member {
    store: Store,
    addr: SocketAddr,
    auth: Arc<Authenticator>,
    certs: ServingCerts,
    stop: oneshot::Sender<()>,
    api: JoinHandle<std::io::Result<()>>,
    /// Keeps this API server in the `kubernetes` Endpoints until told to withdraw it.
    endpoints: (oneshot::Sender<()>, JoinHandle<()>),
}

/// How long a stopping member waits to take itself out of the `kubernetes` Endpoints.
const WITHDRAW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Member {
    /// Opens the store in `store_dir`, creates the initial objects and serves the API over
    /// TLS (`certs`) on `api_addr` (port 0 picks a free port) to the users `auth` knows.
    pub async fn start(
        store_dir: &Path,
        config: StoreConfig,
        api_addr: SocketAddr,
        auth: Authenticator,
        certs: ServingCerts,
    ) -> Result<Member, MemberError> {
        Member::start_with(store_dir, config, api_addr, auth, certs, api::ApiConfig::default()).await
    }

    /// As [`Member::start`], with the API server's own settings (the webhook secret).
    pub async fn start_with(
        store_dir: &Path,
        config: StoreConfig,
        api_addr: SocketAddr,
        auth: Authenticator,
        certs: ServingCerts,
        api_config: api::ApiConfig,
    ) -> Result<Member, MemberError> {
        let listener = Member::bind(api_addr).await?;
        let store = Store::open(store_dir, config).await?;
        Member::serve(store, listener, auth, certs, api_config).await
    }

    /// Binds the API address (before the store opens, so a taken port fails fast).
    pub async fn bind(api_addr: SocketAddr) -> Result<tokio::net::TcpListener, MemberError> {
        tokio::net::TcpListener::bind(api_addr)
            .await
            .map_err(|source| MemberError::Bind { addr: api_addr, source })
    }

    /// Serves the API for an opened store on `listener`: creates the initial objects,
    /// records this member's API URL for the others, and serves over TLS.
    pub async fn serve(
        store: Store,
        listener: tokio::net::TcpListener,
        auth: Authenticator,
        certs: ServingCerts,
        api_config: api::ApiConfig,
    ) -> Result<Member, MemberError> {
        let addr = listener.local_addr().map_err(|source| MemberError::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let state = api::AppState::new(store.clone(), shutdown_rx).with_config(api_config);
        // While a new cluster forms, the leadership may still move: retried, not fatal.
        let deadline = tokio::time::Instant::now() + STARTUP_RETRY;
        let registration = loop {
            let attempt = async {
                api::bootstrap(&state).await?;
                let registration = api::publish_api_service(&state, addr).await?;
                store.advertise(&format!("https://{addr}")).await?;
                Ok::<_, MemberError>(registration)
            };
            match attempt.await {
                Ok(registration) => break registration,
                Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "creating the initial objects; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let auth = Arc::new(auth);
        let listener =
            tls::TlsListener::new(listener, certs.acceptor()?).map_err(|source| MemberError::Bind { addr, source })?;
        let endpoints = keep_registered(state.clone(), registration);
        let (stop, stopped) = oneshot::channel::<()>();
        let api = tokio::spawn(api::serve(state, listener, auth.clone(), async move {
            let _ = stopped.await;
            // Ends open watches and the watch caches, so the graceful shutdown completes.
            let _ = shutdown_tx.send(true);
        }));
        tracing::info!(api = %addr, raft = %store.raft_addr(), node = store.node_id(), "store member serving");
        Ok(Member {
            store,
            addr,
            auth,
            certs,
            stop,
            api,
            endpoints,
        })
    }

    /// A one-member cluster on loopback ports the OS picks, with the standard users and
    /// `extra_users` (e.g. node identities): what tests and benchmarks start.
    pub async fn start_local(store_dir: &Path, extra_users: &[&str]) -> Result<Member, MemberError> {
        Member::start_local_with(store_dir, extra_users, api::ApiConfig::default()).await
    }

    /// As [`Member::start_local`], with the API server's own settings.
    pub async fn start_local_with(
        store_dir: &Path,
        extra_users: &[&str],
        api_config: api::ApiConfig,
    ) -> Result<Member, MemberError> {
        let config = StoreConfig {
            node_id: 1,
            raft_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            start: crate::store::Start::Single,
        };
        let mut users: Vec<(&str, &[&str])> = api::auth::STANDARD_USERS.to_vec();
        users.extend(extra_users.iter().map(|u| (*u, &[][..])));
        let auth = Authenticator::with_users(&users);
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let certs = tls::generate(&tls::serving_names(&addr))?;
        Member::start_with(store_dir, config, addr, auth, certs, api_config).await
    }

    /// The address the API server is bound to.
    pub fn api_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://host:port` of the API server.
    pub fn api_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The cluster CA's certificate (DER), for clients' trust roots.
    pub fn ca_der(&self) -> Result<Vec<u8>, MemberError> {
        Ok(self.certs.ca_der()?)
    }

    /// The cluster CA's certificate (PEM), which clients trust.
    pub fn ca_pem(&self) -> &str {
        &self.certs.ca_pem
    }

    /// A kube-rs client of this member's API acting as `user` (who must have a token).
    pub fn client_as(&self, user: &str) -> Result<kube::Client, MemberError> {
        Ok(kube::Client::try_from(self.config_as(user)?)?)
    }

    /// The kube-rs configuration of a client acting as `user`.
    pub fn config_as(&self, user: &str) -> Result<kube::Config, MemberError> {
        let uri = self
            .api_url()
            .parse()
            .map_err(|e| MemberError::Serve(format!("bad API URL: {e}")))?;
        let token = self
            .auth
            .token_of(user)
            .ok_or_else(|| MemberError::Serve(format!("no token for user {user}")))?;
        let mut config = kube::Config::new(uri);
        config.auth_info.token = Some(token.to_string().into());
        config.root_cert = Some(vec![self.ca_der()?]);
        let agent = api::auth::user_agent(user);
        let agent = axum::http::HeaderValue::from_str(&agent)
            .map_err(|e| MemberError::Serve(format!("bad User-Agent {agent:?}: {e}")))?;
        config.headers.push((axum::http::header::USER_AGENT, agent));
        Ok(config)
    }

    /// A kube-rs client of this member's API acting as the admin.
    pub fn client(&self) -> Result<kube::Client, MemberError> {
        self.client_as(api::auth::ADMIN)
    }

    /// A kubeconfig (JSON, which kubectl reads as YAML) for this member's API as `user`.
    pub fn kubeconfig_as(&self, user: &str) -> Result<String, MemberError> {
        let token = self
            .auth
            .token_of(user)
            .ok_or_else(|| MemberError::Serve(format!("no token for user {user}")))?;
        Ok(serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "kairn", "cluster": {"server": self.api_url(),
                "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(&self.certs.ca_pem)}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "kairn", "context": {"cluster": "kairn", "user": user, "namespace": "default"}}],
            "current-context": "kairn",
        })
        .to_string())
    }

    /// The admin's bearer token.
    pub fn admin_token(&self) -> Result<&str, MemberError> {
        self.auth
            .token_of(api::auth::ADMIN)
            .ok_or_else(|| MemberError::Serve("no admin token".into()))
    }

    /// The users the API server knows.
    pub fn authenticator(&self) -> &Authenticator {
        &self.auth
    }

    /// The store under the API (for members' own operations such as adding a member).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stops the API server (ending open watches), then Raft, and flushes the store.
    pub async fn stop(self) -> Result<(), MemberError> {
        let (withdraw, registered) = self.endpoints;
        let _ = withdraw.send(());
        if tokio::time::timeout(WITHDRAW_TIMEOUT, registered).await.is_err() {
            tracing::warn!("could not take this API server out of the kubernetes Endpoints in time");
        }
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

/// Renews this API server's place in the `kubernetes` Endpoints until the returned
/// sender fires (or is dropped); then withdraws it.
fn keep_registered(
    state: api::AppState,
    mut registration: api::endpoints::Registration,
) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (withdraw, mut withdrawn) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(api::endpoints::RENEW);
        // The first tick is now: the registration was just made.
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = registration.refresh(&state).await {
                        tracing::warn!(error = %e, "renewing this API server in the kubernetes Endpoints");
                    }
                }
                _ = &mut withdrawn => break,
            }
        }
        if let Err(e) = registration.withdraw(&state).await {
            tracing::warn!(error = %e, "taking this API server out of the kubernetes Endpoints");
        }
    });
    (withdraw, task)
}
