//! The store's data model: what a Raft log entry carries and what applying it returns.
//!
//! Every write is a [`Txn`]: compares on keys' revisions, then a list of puts and deletes.
//! A transaction lands at once or not at all, and every key it writes gets one revision.
//!
//! One entry in the Raft log is a [`Proposal`]: the transactions the leader gathered while
//! earlier entries were in flight. Raft's cost is per entry (the leader's core handles
//! each one in turn), so packing concurrent writes into one entry is what lets writes
//! rise with clients. Each transaction in it still gets its own revision: the revision
//! counts successful transactions, like etcd's, and is not the log index.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// Raft type configuration of the Kairn store.
    pub TypeConfig:
        D = Proposal,
        R = Outcomes,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft node id.
pub type NodeId = u64;

/// A condition on one key that must hold for a transaction to apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key compared.
    pub key: String,
    /// What the key's state must be.
    pub expect: Expect,
}

/// What a [`Compare`] expects of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expect {
    /// The key must not exist.
    Absent,
    /// The key must exist (any revision).
    Present,
    /// The key must exist and have been last written at exactly this revision.
    ModRevision(u64),
}

/// A lease's id: keys attached to it are deleted when it expires or is revoked.
pub type LeaseId = u64;

/// One change inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Set `key` to `value`, attached to `lease` if given (the transaction fails, writing
    /// nothing, if that lease does not exist).
    Put {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    /// Remove `key` (a no-op if absent).
    Delete { key: String },
    /// Add a record at `{prefix}{revision:020}.{n:05}`, `n` counting the transaction's
    /// appends: an append-only log ordered by revision, whose keys no writer has to
    /// choose before the revision is known (audit records, sync history).
    Append {
        prefix: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Create a lease that expires `ttl_seconds` after its last renewal (see
    /// [`super::lease`]); granting an existing id sets its TTL.
    LeaseGrant { id: LeaseId, ttl_seconds: i64 },
    /// End a lease now, deleting every key attached to it.
    LeaseRevoke { id: LeaseId },
}

impl Op {
    /// A put of `value` at `key`, attached to no lease.
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }

    /// The key this operation touches (for an append, its key at `revision`, `n`-th).
    pub fn key_at(&self, revision: u64, n: usize) -> std::borrow::Cow<'_, str> {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => std::borrow::Cow::Borrowed(key),
            Op::Append { prefix, .. } => std::borrow::Cow::Owned(append_key(prefix, revision, n)),
            Op::LeaseGrant { .. } | Op::LeaseRevoke { .. } => std::borrow::Cow::Borrowed(""),
        }
    }
}

/// The key of the `n`-th append under `prefix` in the transaction at `revision`.
pub fn append_key(prefix: &str, revision: u64, n: usize) -> String {
    format!("{prefix}{revision:020}.{n:05}")
}

/// The revision an appended record was written at, from its key.
pub fn append_revision(key: &str) -> Option<u64> {
    let tail = key.rsplit('/').next()?;
    tail.split('.').next()?.parse().ok()
}

/// A transaction: if every compare holds, apply every op, atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// Conditions checked before anything is written.
    pub compares: Vec<Compare>,
    /// Changes applied, in order, when all compares hold.
    pub ops: Vec<Op>,
}

impl Txn {
    /// Roughly how many bytes the transaction takes in a log entry (keys and values).
    pub fn size(&self) -> usize {
        let ops: usize = self
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value, .. } => key.len() + value.len(),
                Op::Delete { key } => key.len(),
                Op::Append { prefix, value } => prefix.len() + value.len(),
                Op::LeaseGrant { .. } | Op::LeaseRevoke { .. } => 16,
            })
            .sum();
        ops + self.compares.iter().map(|c| c.key.len() + 9).sum::<usize>()
    }
}

impl std::fmt::Display for Txn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "txn({} compares, {} ops)", self.compares.len(), self.ops.len())
    }
}

/// The transactions of one Raft log entry, applied in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The transactions; each is evaluated against the state the ones before left.
    pub txns: Vec<Txn>,
}

/// What applying one log entry returned: one result per transaction of its [`Proposal`]
/// (none for Raft's own entries).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcomes(pub Vec<TxnResult>);

/// The outcome of applying a [`Txn`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResult {
    /// False when a compare failed; nothing was written then.
    pub succeeded: bool,
    /// The revision this transaction wrote at; for a failed compare, the store's revision
    /// it was evaluated at.
    pub revision: u64,
    /// The first compare that failed, with the key's actual revision (0 = absent).
    pub failed: Option<(Compare, u64)>,
    /// A put named this lease, which does not exist; nothing was written.
    pub missing_lease: Option<LeaseId>,
}

/// A stored value with the revision of its last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The revision at which the value was last written.
    pub mod_revision: u64,
    /// The lease the key is attached to (0: none).
    pub lease: LeaseId,
    /// The raw value (an object's JSON, for the API server).
    pub value: Vec<u8>,
}

/// What happened to a key, as seen by a watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created or changed.
    Put,
    /// Removed.
    Delete,
}

/// One change to one key, at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// For a put, the new value; for a delete, the value just before removal.
    pub kv: KeyValue,
    /// The value before this change, if the key existed (tells a create from an update,
    /// and lets a filtered watch see an object leave its filter).
    pub prev: Option<Vec<u8>>,
}
