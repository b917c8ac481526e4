//! The replicated, revisioned key-value store: openraft, the Raft log in segment files
//! (its vote and commit marks in sled), the state machine in memory with snapshot files.
//!
//! Keys follow etcd's Kubernetes layout (`/registry/<group>/<resource>/<ns>/<name>`);
//! values are objects' JSON. Every successful write moves the store's revision on by
//! one, and the revision is what the API server hands out as
//! `metadata.resourceVersion`. Only `crate::api` uses this module: every other component
//! goes through the API server.

mod batch;
mod codec;
pub mod etcd_kv;
mod leader;
mod lease;
mod log_store;
mod network;
mod snapshot;
mod state_machine;
pub mod types;
mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::{Config, Raft, SnapshotPolicy};
use serde::{Deserialize, Serialize};

pub use etcd_kv::EtcdKv;
pub use leader::{MemberChange, PeerError};
pub use log_store::LogStore;
pub use state_machine::StateMachine;
pub use types::{
    append_key, append_revision, Compare, Event, EventKind, Expect, KeyValue, LeaseId, NodeId, Op, Txn, TxnResult,
};
pub use watch::{Applied, WatchStream, Watched};

/// What can go wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The on-disk database could not be opened or read.
    #[error("store database: {0}")]
    Db(#[from] sled::Error),
    /// The Raft log could not be opened (e.g. written by another version).
    #[error("store log: {0}")]
    Log(#[from] log_store::OpenError),
    /// Raft storage failed (disk, corrupt data).
    #[error("raft storage: {0}")]
    Storage(String),
    /// Raft refused or failed the operation (shutting down, invalid change).
    #[error("raft: {0}")]
    Raft(String),
    /// This member does not lead and could not hand the operation to the leader: retry at
    /// the leader named, if any.
    #[error("not the leader{}", leader_hint(.leader, .addr))]
    NotLeader {
        /// The leader's id, if known.
        leader: Option<NodeId>,
        /// The leader's Raft address, if known.
        addr: Option<String>,
    },
    /// No quorum of members answers: nothing can be committed or read linearizably now.
    #[error("no quorum: {0}")]
    NoQuorum(String),
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

fn leader_hint(leader: &Option<NodeId>, addr: &Option<String>) -> String {
    match (leader, addr) {
        (Some(id), Some(addr)) => format!(": retry at member {id} ({addr})"),
        (Some(id), None) => format!(": retry at member {id}"),
        _ => ": no leader is known".into(),
    }
}

impl From<openraft::StorageError<NodeId>> for StoreError {
    fn from(e: openraft::StorageError<NodeId>) -> Self {
        StoreError::Storage(e.to_string())
    }
}

impl From<PeerError> for StoreError {
    fn from(e: PeerError) -> Self {
        match e {
            PeerError::NotLeader { leader, addr } => StoreError::NotLeader { leader, addr },
            PeerError::NoQuorum(why) => StoreError::NoQuorum(why),
            PeerError::Failed(why) => StoreError::Raft(why),
        }
    }
}

/// sled's page cache. sled keeps only the log's vote and commit marks now; its
/// default (1 GiB) would be mostly unused reservation.
const SLED_CACHE_BYTES: u64 = 8 * 1024 * 1024;
/// Where members record how to reach their API (for `kairn member list` and clients).
pub const MEMBERS_PREFIX: &str = "/kairn/members/";
/// How many times an operation is tried while the leadership moves (200 ms apart).
const LEADER_ATTEMPTS: u32 = 10;
/// How often a waiting member says what it waits for.
const WAIT_LOG_EVERY: Duration = Duration::from_secs(5);

/// How a member comes into a cluster on its first start (later starts resume from disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Form a new cluster of this one member.
    Single,
    /// Form a new cluster of these members (id -> Raft address, this one included); every
    /// member is started with the same list.
    Peers(BTreeMap<NodeId, String>),
    /// Ask the cluster member at this Raft address to add this one, as a voter or, with
    /// `learner`, as a member that replicates and serves but does not vote.
    Join { addr: String, learner: bool },
}

/// How to open a store member.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// This member's Raft id.
    pub node_id: NodeId,
    /// Address to serve Raft RPC on (port 0 picks one); peers dial the bound address.
    pub raft_addr: SocketAddr,
    /// How to join a cluster on first start.
    pub start: Start,
}

/// One member as `kairn member list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Raft id.
    pub id: NodeId,
    /// Raft RPC address.
    pub raft_addr: String,
    /// API URL, once the member has recorded it.
    pub api_url: Option<String>,
    /// `voter` or `learner`.
    pub role: String,
    /// Whether it leads now.
    pub leader: bool,
    /// The last log index known replicated to it (known on the leader only).
    pub matched: Option<u64>,
}

/// What a member records about itself under [`MEMBERS_PREFIX`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MemberRecord {
    id: NodeId,
    raft_addr: String,
    api_url: String,
}

/// A handle to this process's store member; cheap to clone.
#[derive(Clone)]
pub struct Store {
    raft: Raft<TypeConfig>,
    batcher: batch::Batcher,
    lessor: lease::Lessor,
    sm: StateMachine,
    db: sled::Db,
    node_id: NodeId,
    raft_addr: SocketAddr,
    peers: network::Peers,
    stop_rpc: Arc<tokio::sync::watch::Sender<bool>>,
    /// The RPC server's task: it holds a handle to this store, so `shutdown` waits for it
    /// to end before the database is free to open again.
    rpc_task: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

use types::TypeConfig;

/// Where the leader is, for an operation only it can do.
enum Route {
    Local,
    Remote(String),
}

/// An operation only the leader can do.
enum Call<'a> {
    Write(&'a Txn),
    ReadIndex,
    KeepAlive(LeaseId),
    Change(&'a MemberChange),
}

/// What the leader answered to a [`Call`].
enum Reply {
    Written(TxnResult),
    Index(u64),
    Renewed(Option<i64>),
    Changed,
}

impl Store {
    /// Opens the member's data in `dir`, starts Raft and its RPC server and, on first
    /// start, forms or joins a cluster as `config.start` says; returns once a leader is
    /// known (waiting as long as it takes for a quorum to come up).
    pub async fn open(dir: &Path, config: StoreConfig) -> Result<Self, StoreError> {
        let listener = tokio::net::TcpListener::bind(config.raft_addr)
            .await
            .map_err(StoreError::Listen)?;
        let raft_addr = listener.local_addr().map_err(StoreError::Listen)?;
        let db = sled::Config::new().path(dir).cache_capacity(SLED_CACHE_BYTES).open()?;
        let sm = StateMachine::open(&db, &dir.join("raft-snapshot"))?;
        let log = LogStore::open(&db, &dir.join("raft-log"), sm.last_applied()?)?;
        let raft_config = Config {
            cluster_name: "kairn".into(),
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            // A snapshot chunk may take a while to install on a loaded member.
            install_snapshot_timeout: 30_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(20_000),
            max_in_snapshot_log_to_keep: 5_000,
            purge_batch_size: 1_000,
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(|e| StoreError::Raft(e.to_string()))?);
        // One channel per peer, for Raft's own messages and for the calls this member
        // makes of the leader alike.
        let peers = network::Peers::new(raft_addr);
        let raft = Raft::new(
            config.node_id,
            raft_config,
            network::Network::new(peers.clone()),
            log,
            sm.clone(),
        )
        .await
        .map_err(|e| StoreError::Raft(e.to_string()))?;
        let (stop_rpc, mut rpc_stopped) = tokio::sync::watch::channel(false);
        let batcher = batch::Batcher::new(raft.clone(), peers.clone());
        let store = Store {
            lessor: lease::Lessor::start(config.node_id, raft.clone(), sm.clone(), batcher.clone()),
            batcher,
            raft,
            sm,
            db,
            node_id: config.node_id,
            raft_addr,
            peers,
            stop_rpc: Arc::new(stop_rpc),
            rpc_task: Arc::default(),
        };
        let rpc = network::serve(
            store.raft.clone(),
            store.batcher.clone(),
            store.lessor.clone(),
            EtcdKv::new(store.clone()),
            listener,
            async move {
                let _ = rpc_stopped.changed().await;
            },
        );
        let task = tokio::spawn(async move {
            if let Err(e) = rpc.await {
                tracing::error!(error = %e, "raft rpc server failed");
            }
        });
        if let Ok(mut slot) = store.rpc_task.lock() {
            *slot = Some(task);
        }
        let initialized = store
            .raft
            .is_initialized()
            .await
            .map_err(|e| StoreError::Raft(e.to_string()))?;
        if !initialized {
            store.first_start(&config.start).await?;
        }
        store.wait_for_quorum().await?;
        Ok(store)
    }

    /// Forms or joins a cluster on a pristine member.
    async fn first_start(&self, start: &Start) -> Result<(), StoreError> {
        let node = self.node_id;
        match start {
            Start::Single => {
                let me = BTreeMap::from([(node, self.raft_addr.to_string())]);
                self.initialize(&me).await?;
                tracing::info!(node, raft = %self.raft_addr, "initialized a new store cluster");
            }
            Start::Peers(peers) => {
                if !peers.contains_key(&node) {
                    return Err(StoreError::Raft(format!(
                        "--peers does not list this member's id {node}"
                    )));
                }
                // Every member initializes with the same list: the same first entry
                // everywhere, so whichever members come up first form the cluster.
                self.initialize(peers).await?;
                tracing::info!(node, peers = ?peers, "formed a store cluster from --peers");
            }
            Start::Join { addr, learner } => {
                let me = self.raft_addr.to_string();
                let change = if *learner {
                    MemberChange::AddLearner { id: node, addr: me }
                } else {
                    MemberChange::AddVoter { id: node, addr: me }
                };
                let mut target = addr.clone();
                let mut last_log = tokio::time::Instant::now();
                loop {
                    match self.peers.change_members(&target, &change).await {
                        Ok(()) => break,
                        Err(PeerError::NotLeader { addr: Some(leader), .. }) => target = leader,
                        Err(e) => {
                            if last_log.elapsed() >= WAIT_LOG_EVERY {
                                tracing::warn!(node, join = %addr, error = %e, "still trying to join the cluster");
                                last_log = tokio::time::Instant::now();
                            }
                            target = addr.clone();
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
                tracing::info!(node, join = %addr, learner, "joined the store cluster");
            }
        }
        Ok(())
    }

    async fn initialize(&self, members: &BTreeMap<NodeId, String>) -> Result<(), StoreError> {
        match self.raft.initialize(leader::initial_members(members)).await {
            Ok(()) => Ok(()),
            // Already initialized (by an earlier, interrupted start): nothing to do.
            Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(StoreError::Raft(e.to_string())),
        }
    }

    /// Waits until a leader is known, saying so every few seconds.
    async fn wait_for_quorum(&self) -> Result<(), StoreError> {
        loop {
            match self.wait_for_leader(WAIT_LOG_EVERY).await {
                Ok(_) => return Ok(()),
                Err(StoreError::Raft(e)) if e.contains("timeout") || e.contains("Timeout") => {
                    tracing::warn!(
                        node = self.node_id,
                        "waiting for a quorum of store members to elect a leader"
                    );
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The address this member serves Raft RPC on.
    pub fn raft_addr(&self) -> SocketAddr {
        self.raft_addr
    }

    /// Where the leader is, waiting a little for an election in progress.
    async fn route(&self) -> Result<Route, StoreError> {
        let leader = match self.leader() {
            Some(l) => l,
            None => self
                .wait_for_leader(Duration::from_secs(2))
                .await
                .map_err(|_| StoreError::NoQuorum("no leader: too few members are reachable to elect one".into()))?,
        };
        if leader == self.node_id {
            return Ok(Route::Local);
        }
        let addr = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone());
        match addr {
            Some(addr) => Ok(Route::Remote(addr)),
            None => Err(StoreError::NotLeader {
                leader: Some(leader),
                addr: None,
            }),
        }
    }

    /// Runs a leader-only operation here or on the leader, retrying briefly while the
    /// leadership moves.
    async fn on_leader(&self, call: Call<'_>) -> Result<Reply, StoreError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let route = match self.route().await {
                Ok(route) => route,
                // The leader is known but not yet its address (membership still arriving).
                Err(StoreError::NotLeader { .. }) if attempts < LEADER_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let result = match (route, &call) {
                (Route::Local, Call::Write(txn)) => self
                    .batcher
                    .write(batch::Target::Local, (*txn).clone())
                    .await
                    .map(Reply::Written),
                (Route::Local, Call::ReadIndex) => leader::read_index(&self.raft).await.map(Reply::Index),
                (Route::Local, Call::KeepAlive(id)) => self.lessor.keep_alive(*id).map(Reply::Renewed),
                (Route::Remote(addr), Call::KeepAlive(id)) => {
                    self.peers.lease_keep_alive(&addr, *id).await.map(Reply::Renewed)
                }
                (Route::Local, Call::Change(change)) => leader::change_members(&self.raft, (*change).clone())
                    .await
                    .map(|()| Reply::Changed),
                (Route::Remote(addr), Call::Write(txn)) => self
                    .batcher
                    .write(batch::Target::Leader(addr), (*txn).clone())
                    .await
                    .map(Reply::Written),
                (Route::Remote(addr), Call::ReadIndex) => self.peers.read_index(&addr).await.map(Reply::Index),
                (Route::Remote(addr), Call::Change(change)) => {
                    self.peers.change_members(&addr, change).await.map(|()| Reply::Changed)
                }
            };
            match result {
                Err(PeerError::NotLeader { .. }) if attempts < LEADER_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => return other.map_err(StoreError::from),
            }
        }
    }

    /// Adds a member as a voter: first as a learner that catches up, then into the
    /// voting configuration. Any member may be asked; the leader does it.
    pub async fn add_voter(&self, id: NodeId, addr: SocketAddr) -> Result<(), StoreError> {
        self.change_members(MemberChange::AddVoter {
            id,
            addr: addr.to_string(),
        })
        .await
    }

    /// Changes the membership (through the leader).
    pub async fn change_members(&self, change: MemberChange) -> Result<(), StoreError> {
        self.on_leader(Call::Change(&change)).await?;
        tracing::info!(node = self.node_id, change = ?change, "store membership changed");
        Ok(())
    }

    /// Records how to reach this member's API, for `kairn member list` and clients.
    pub async fn advertise(&self, api_url: &str) -> Result<(), StoreError> {
        let record = MemberRecord {
            id: self.node_id,
            raft_addr: self.raft_addr.to_string(),
            api_url: api_url.to_string(),
        };
        let key = format!("{MEMBERS_PREFIX}{}", self.node_id);
        let value = serde_json::to_vec(&record).map_err(|e| StoreError::Raft(e.to_string()))?;
        if self.sm.get(&key)?.is_some_and(|kv| kv.value == value) {
            return Ok(());
        }
        self.txn(Txn {
            compares: vec![],
            ops: vec![Op::put(key, value)],
        })
        .await?;
        Ok(())
    }

    /// The members, their roles, and (on the leader) how far each has replicated.
    pub fn members(&self) -> Result<Vec<MemberStatus>, StoreError> {
        let (kvs, _, _) = self.sm.range(MEMBERS_PREFIX, None, None)?;
        let urls: BTreeMap<NodeId, String> = kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<MemberRecord>(&kv.value).ok())
            .map(|r| (r.id, r.api_url))
            .collect();
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        Ok(membership
            .nodes()
            .map(|(id, node)| MemberStatus {
                id: *id,
                raft_addr: node.addr.clone(),
                api_url: urls.get(id).cloned(),
                role: if voters.contains(id) { "voter" } else { "learner" }.into(),
                leader: metrics.current_leader == Some(*id),
                matched: metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map(|l| l.index)
                    .or_else(|| {
                        (*id == self.node_id)
                            .then(|| metrics.last_applied.map(|l| l.index))
                            .flatten()
                    }),
            })
            .collect())
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

    /// Makes the next read linearizable, on any member: the leader confirms with a
    /// quorum that it still leads and names the index everything committed before now
    /// is at; this member waits until it has applied that far.
    async fn read_barrier(&self) -> Result<(), StoreError> {
        let Reply::Index(index) = self.on_leader(Call::ReadIndex).await? else {
            return Err(StoreError::Raft("unexpected reply to a read index".into()));
        };
        let applied = self.raft.metrics().borrow().last_applied.map(|l| l.index).unwrap_or(0);
        if applied < index {
            self.raft
                .wait(Some(leader::READ_INDEX_TIMEOUT))
                .applied_index_at_least(Some(index), "read index")
                .await
                .map_err(|e| StoreError::NoQuorum(format!("this member did not catch up to index {index}: {e}")))?;
        }
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
        // Alone, this member always leads: no copy kept for a retry elsewhere.
        if self.leader() == Some(self.node_id) && self.is_single() {
            return self
                .batcher
                .write(batch::Target::Local, txn)
                .await
                .map_err(StoreError::from);
        }
        match self.on_leader(Call::Write(&txn)).await? {
            Reply::Written(result) => Ok(result),
            _ => Err(StoreError::Raft("unexpected reply to a write".into())),
        }
    }

    /// Grants a lease of `ttl_seconds`; keys put with it go when it expires (unless kept
    /// alive) or is revoked.
    pub async fn lease_grant(&self, ttl_seconds: i64) -> Result<LeaseId, StoreError> {
        // Positive as an int64, as etcd's lease ids are; zero means "no lease".
        let id = (uuid::Uuid::new_v4().as_u64_pair().0 & i64::MAX as u64).max(1);
        self.txn(Txn {
            compares: vec![],
            ops: vec![Op::LeaseGrant { id, ttl_seconds }],
        })
        .await?;
        Ok(id)
    }

    /// Ends a lease now, deleting its keys.
    pub async fn lease_revoke(&self, id: LeaseId) -> Result<(), StoreError> {
        self.txn(Txn {
            compares: vec![],
            ops: vec![Op::LeaseRevoke { id }],
        })
        .await?;
        Ok(())
    }

    /// Renews a lease for its whole TTL (at the leader); returns the TTL, or `None` if
    /// the lease does not exist (expired or revoked).
    pub async fn lease_keep_alive(&self, id: LeaseId) -> Result<Option<i64>, StoreError> {
        match self.on_leader(Call::KeepAlive(id)).await? {
            Reply::Renewed(ttl) => Ok(ttl),
            _ => Err(StoreError::Raft("unexpected reply to a lease keep-alive".into())),
        }
    }

    /// Every lease and its TTL in seconds, as this member has applied them.
    pub fn leases(&self) -> Result<BTreeMap<LeaseId, i64>, StoreError> {
        Ok(self.sm.leases()?)
    }

    /// Whether this is a cluster of one member.
    fn is_single(&self) -> bool {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .count()
            == 1
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
        let rpc = self.rpc_task.lock().ok().and_then(|mut t| t.take());
        if let Some(rpc) = rpc {
            // Open watch streams may hold a graceful stop up: cut them off after a while.
            let abort = rpc.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), rpc).await.is_err() {
                abort.abort();
            }
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        self.db.flush_async().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
