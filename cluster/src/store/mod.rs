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
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, Config, Raft};

pub use log_store::LogStore;
pub use state_machine::StateMachine;
pub use types::{Compare, Event, EventKind, Expect, KeyValue, NodeId, Op, Txn, TxnResult};
pub use watch::WatchStream;

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
    /// An internal lock was poisoned by a panic.
    #[error("internal lock poisoned")]
    Poisoned,
}

impl From<openraft::StorageError<NodeId>> for StoreError {
    fn from(e: openraft::StorageError<NodeId>) -> Self {
        StoreError::Storage(e.to_string())
    }
}

/// How to open a store member.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// This member's Raft id.
    pub node_id: NodeId,
    /// Address peers reach this member at (recorded in the membership).
    pub advertise_addr: String,
}

/// A handle to this process's store member; cheap to clone.
#[derive(Clone)]
pub struct Store {
    raft: Raft<TypeConfig>,
    sm: StateMachine,
    db: sled::Db,
    node_id: NodeId,
}

use types::TypeConfig;

impl Store {
    /// Opens the member's data in `dir`, starts Raft and, on first start, initializes a
    /// cluster of this one member. Returns once this member leads (or a timeout passes).
    pub async fn open(dir: &Path, config: StoreConfig) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(dir).open()?;
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
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| StoreError::Raft(e.to_string()))?;
        if !initialized {
            let members = BTreeMap::from([(
                config.node_id,
                BasicNode {
                    addr: config.advertise_addr.clone(),
                },
            )]);
            raft.initialize(members)
                .await
                .map_err(|e| StoreError::Raft(e.to_string()))?;
            tracing::info!(node = config.node_id, "initialized a new store cluster");
        }
        let store = Store {
            raft,
            sm,
            db,
            node_id: config.node_id,
        };
        store.wait_for_leader(Duration::from_secs(10)).await?;
        Ok(store)
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

    /// Commits a transaction through Raft; returns once it is applied on this member.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        let resp = self
            .raft
            .client_write(txn)
            .await
            .map_err(|e| StoreError::Raft(e.to_string()))?;
        Ok(resp.data)
    }

    /// Watches keys under `prefix` for changes after revision `after`.
    pub fn watch(&self, prefix: &str, after: u64) -> Result<WatchStream, StoreError> {
        self.sm.hub().watch(prefix, after)
    }

    /// Stops Raft and flushes everything to disk.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        self.db.flush_async().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
