//! The replicated, revisioned key-value store (openraft + sled).
//!
//! Keys follow etcd's Kubernetes layout (`/registry/<group>/<resource>/<ns>/<name>`);
//! values are objects' JSON. The revision of a write is its Raft log index, and it is
//! what the API server hands out as `metadata.resourceVersion`. Only `crate::api` uses
//! this module: every other component goes through the API server.

mod log_store;
mod network;
mod state_machine;
pub mod types;
mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, Raft};

pub use log_store::LogStore;
pub use state_machine::StateMachine;
pub use types::{append_key, append_revision, Compare, Event, EventKind, Expect, KeyValue, NodeId, Op, Txn, TxnResult};
pub use watch::{Applied, WatchStream, Watched};

/// What can go wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The on-disk database could not be opened or read.
    #[error("store database: {0}")]
    Db(#[from] sled::Error),
    /// Raft storage failed (disk, corrupt data).
    #[error("raft storage: {0}")]
    Storage(String),
    /// Raft refused or failed the operation (not leader, shutting down).
    #[error("raft: {0}")]
    Raft(String),
    /// A watch asked for events older than the store still keeps.
    #[error("requested revision {requested} is older than the oldest kept revision {oldest}")]
    Expired { requested: u64, oldest: u64 },
    /// The Raft RPC address could not be bound.
    #[error("raft rpc address: {0}")]
    Listen(std::io::Error),
    /// An internal lock was poisoned by a panic.
    #[error("internal lock poisoned")]
    Poisoned,
}

impl From<openraft::StorageError<NodeId>> for StoreError {
    fn from(e: openraft::StorageError<NodeId>) -> Self {
        StoreError::Storage(e.to_string())
    }
}

/// sled's page cache. Its default (1 GiB) is far more than the hot set here: the API
/// server's watch cache serves lists, the store mostly single reads and writes.
const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// How to open a store member.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// This member's Raft id.
    pub node_id: NodeId,
    /// Address to serve Raft RPC on (port 0 picks one); peers dial the bound address.
    pub raft_addr: SocketAddr,
    /// On first start, make a new cluster of this one member (else wait to be added).
    pub bootstrap: bool,
}

/// A handle to this process's store member; cheap to clone.
#[derive(Clone)]
pub struct Store {
    raft: Raft<TypeConfig>,
    sm: StateMachine,
    db: sled::Db,
    node_id: NodeId,
    raft_addr: SocketAddr,
    stop_rpc: Arc<tokio::sync::watch::Sender<bool>>,
}

use types::TypeConfig;

impl Store {
    /// Opens the member's data in `dir`, starts Raft and its RPC server and, on first
    /// start with `bootstrap`, initializes a cluster of this one member and waits until
    /// it leads.
    pub async fn open(dir: &Path, config: StoreConfig) -> Result<Self, StoreError> {
        let listener = tokio::net::TcpListener::bind(config.raft_addr)
            .await
            .map_err(StoreError::Listen)?;
        let raft_addr = listener.local_addr().map_err(StoreError::Listen)?;
        let db = sled::Config::new().path(dir).cache_capacity(SLED_CACHE_BYTES).open()?;
        let log = LogStore::open(&db)?;
        let sm = StateMachine::open(&db)?;
        let raft_config = Config {
            cluster_name: "kairn".into(),
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(|e| StoreError::Raft(e.to_string()))?);
        let raft = Raft::new(config.node_id, raft_config, network::Network, log, sm.clone())
            .await
            .map_err(|e| StoreError::Raft(e.to_string()))?;
        let (stop_rpc, mut rpc_stopped) = tokio::sync::watch::channel(false);
        let rpc = network::serve(raft.clone(), listener, async move {
            let _ = rpc_stopped.changed().await;
        });
        tokio::spawn(async move {
            if let Err(e) = rpc.await {
                tracing::error!(error = %e, "raft rpc server failed");
            }
        });
        let store = Store {
            raft,
            sm,
            db,
            node_id: config.node_id,
            raft_addr,
            stop_rpc: Arc::new(stop_rpc),
        };
        if config.bootstrap {
            let initialized = store
                .raft
                .is_initialized()
                .await
                .map_err(|e| StoreError::Raft(e.to_string()))?;
            if !initialized {
                let members = BTreeMap::from([(
                    config.node_id,
                    BasicNode {
                        addr: raft_addr.to_string(),
                    },
                )]);
                store
                    .raft
                    .initialize(members)
                    .await
                    .map_err(|e| StoreError::Raft(e.to_string()))?;
                tracing::info!(node = config.node_id, raft = %raft_addr, "initialized a new store cluster");
            }
            store.wait_for_leader(Duration::from_secs(10)).await?;
        }
        Ok(store)
    }

    /// The address this member serves Raft RPC on.
    pub fn raft_addr(&self) -> SocketAddr {
        self.raft_addr
    }

    /// Adds a member as a voter: first as a learner that catches up, then into the
    /// voting configuration. Must be called on the leader.
    pub async fn add_voter(&self, id: NodeId, addr: SocketAddr) -> Result<(), StoreError> {
        let node = BasicNode { addr: addr.to_string() };
        self.raft
            .add_learner(id, node, true)
            .await
            .map_err(|e| StoreError::Raft(e.to_string()))?;
        let mut voters: std::collections::BTreeSet<NodeId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        voters.insert(id);
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| StoreError::Raft(e.to_string()))?;
        tracing::info!(node = id, raft = %addr, "store member added");
        Ok(())
    }

    /// The member currently leading, if known.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Reads one key from this member's state machine without a read barrier (may be
    /// stale on a follower).
    pub fn get_local(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.sm.get(key)?)
    }

    /// Waits until some member (maybe this one) is known to lead.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, StoreError> {
        let metrics = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "leader elected")
            .await
            .map_err(|e| StoreError::Raft(e.to_string()))?;
        metrics
            .current_leader
            .ok_or_else(|| StoreError::Raft("no leader".into()))
    }

    /// This member's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The revision of the last applied write.
    pub fn revision(&self) -> u64 {
        self.sm.revision()
    }

    /// Makes the next read linearizable: confirms leadership and waits until everything
    /// committed before now is applied locally.
    async fn read_barrier(&self) -> Result<(), StoreError> {
        self.raft
            .ensure_linearizable()
            .await
            .map_err(|e| StoreError::Raft(e.to_string()))?;
        Ok(())
    }

    /// Reads one key (linearizable).
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.read_barrier().await?;
        Ok(self.sm.get(key)?)
    }

    /// Lists keys under `prefix` after `start_after`, at most `limit` (linearizable);
    /// returns the values, the revision read at, and whether more remain.
    pub async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<(Vec<KeyValue>, u64, bool), StoreError> {
        self.read_barrier().await?;
        Ok(self.sm.range(prefix, start_after, limit)?)
    }

    /// Commits a transaction through Raft (forwarded to the leader when this member does
    /// not lead); returns once it is committed.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        match self.raft.client_write(txn.clone()).await {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(fwd))) => {
                let Some(leader) = fwd.leader_node else {
                    return Err(StoreError::Raft("no leader to forward the write to".into()));
                };
                network::forward_write(&leader.addr, &txn)
                    .await
                    .map_err(|e| StoreError::Raft(e.to_string()))
            }
            Err(e) => Err(StoreError::Raft(e.to_string())),
        }
    }

    /// Reads everything under `prefix` in one consistent view (no read barrier): the
    /// values and the revision they are current at. The API server's watch cache starts
    /// from this, then watches from the revision.
    pub fn snapshot_local(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64), StoreError> {
        let (kvs, rev, _) = self.sm.range(prefix, None, None)?;
        Ok((kvs, rev))
    }

    /// Confirms this member may serve a linearizable read and returns the revision the
    /// read must reflect: everything committed before the call is applied up to it.
    pub async fn linearizable_revision(&self) -> Result<u64, StoreError> {
        self.read_barrier().await?;
        Ok(self.revision())
    }

    /// Watches keys under `prefix` for changes after revision `after`.
    pub fn watch(&self, prefix: &str, after: u64) -> Result<WatchStream, StoreError> {
        self.sm.hub().watch(prefix, after)
    }

    /// Stops Raft and its RPC server, and flushes everything to disk.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        let _ = self.stop_rpc.send(true);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        self.db.flush_async().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
