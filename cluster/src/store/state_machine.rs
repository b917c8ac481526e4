//! The replicated state machine: a revisioned key-value map on sled.
//!
//! Applying a log entry evaluates its transaction's compares and writes all of its ops
//! plus the new "last applied" marker in ONE sled batch, so a crash never leaves half a
//! transaction. Every value carries the revision (log index) of its last write.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};

use super::types::{Event, EventKind, Expect, KeyValue, NodeId, Op, TxnResult, TypeConfig};
use super::watch::WatchHub;

const DATA: &str = "k/";
const LAST_APPLIED: &[u8] = b"m/last_applied";
const MEMBERSHIP: &[u8] = b"m/membership";
const SNAPSHOT_META: &[u8] = b"m/snapshot_meta";
const SNAPSHOT_DATA: &[u8] = b"m/snapshot_data";

fn sm_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::new(ErrorSubject::StateMachine, verb, openraft::AnyError::new(&e)).into()
}

fn corrupt(what: &str) -> StorageError<NodeId> {
    sm_err(
        ErrorVerb::Read,
        std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string()),
    )
}

/// Encodes a stored value: 8 bytes of big-endian revision, then the value.
fn encode(rev: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&rev.to_be_bytes());
    out.extend_from_slice(value);
    out
}

fn decode(key: &[u8], raw: &[u8]) -> Option<KeyValue> {
    let rev = u64::from_be_bytes(raw.get(..8)?.try_into().ok()?);
    let key = std::str::from_utf8(key.strip_prefix(DATA.as_bytes())?).ok()?;
    Some(KeyValue {
        key: key.to_string(),
        mod_revision: rev,
        value: raw[8..].to_vec(),
    })
}

/// The state machine handle; clones share one sled tree and one watch hub.
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    tree: sled::Tree,
    /// Held while an entry is applied and while a consistent view is read.
    apply_lock: Mutex<()>,
    revision: AtomicU64,
    hub: WatchHub,
    snapshot_seq: AtomicU64,
}

impl StateMachine {
    /// Opens the state machine tree in `db`.
    pub fn open(db: &sled::Db) -> Result<Self, StorageError<NodeId>> {
        let tree = db.open_tree("state").map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let last: Option<LogId<NodeId>> = read_json(&tree, LAST_APPLIED)?;
        let rev = last.map(|l| l.index).unwrap_or(0);
        Ok(Self {
            inner: Arc::new(Inner {
                db: db.clone(),
                tree,
                apply_lock: Mutex::new(()),
                revision: AtomicU64::new(rev),
                hub: WatchHub::new(rev),
                snapshot_seq: AtomicU64::new(0),
            }),
        })
    }

    /// The revision of the last applied entry.
    pub fn revision(&self) -> u64 {
        self.inner.revision.load(Ordering::SeqCst)
    }

    pub(crate) fn hub(&self) -> &WatchHub {
        &self.inner.hub
    }

    /// Reads one key.
    pub fn get(&self, key: &str) -> Result<Option<KeyValue>, StorageError<NodeId>> {
        let full = format!("{DATA}{key}");
        let raw = self
            .inner
            .tree
            .get(full.as_bytes())
            .map_err(|e| sm_err(ErrorVerb::Read, e))?;
        Ok(raw.and_then(|raw| decode(full.as_bytes(), &raw)))
    }

    /// Reads keys under `prefix` in order, after `start_after`, at most `limit` of them;
    /// returns them with the revision they were read at and whether more remain.
    pub fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<(Vec<KeyValue>, u64, bool), StorageError<NodeId>> {
        let _guard = self
            .inner
            .apply_lock
            .lock()
            .map_err(|_| corrupt("apply lock poisoned"))?;
        let rev = self.revision();
        let full_prefix = format!("{DATA}{prefix}");
        let mut out = Vec::new();
        let iter = match start_after {
            Some(after) => {
                let start = format!("{DATA}{after}");
                self.inner.tree.range((
                    std::ops::Bound::Excluded(start.into_bytes()),
                    std::ops::Bound::Unbounded,
                ))
            }
            None => self.inner.tree.range(full_prefix.as_bytes().to_vec()..),
        };
        for item in iter {
            let (k, v) = item.map_err(|e| sm_err(ErrorVerb::Read, e))?;
            if !k.starts_with(full_prefix.as_bytes()) {
                break;
            }
            if limit.is_some_and(|l| out.len() >= l) {
                return Ok((out, rev, true));
            }
            out.push(decode(&k, &v).ok_or_else(|| corrupt("bad stored value"))?);
        }
        Ok((out, rev, false))
    }

    fn apply_txn(
        &self,
        index: u64,
        txn: &super::types::Txn,
        batch: &mut sled::Batch,
    ) -> Result<(TxnResult, Vec<Event>), StorageError<NodeId>> {
        for cmp in &txn.compares {
            let actual = self.get(&cmp.key)?.map(|kv| kv.mod_revision).unwrap_or(0);
            let ok = match cmp.expect {
                Expect::Absent => actual == 0,
                Expect::Present => actual != 0,
                Expect::ModRevision(r) => actual == r,
            };
            if !ok {
                return Ok((
                    TxnResult {
                        succeeded: false,
                        revision: index,
                        failed: Some((cmp.clone(), actual)),
                    },
                    vec![],
                ));
            }
        }
        // Later ops in one transaction see earlier ones: track the pending state per key.
        let mut pending: std::collections::HashMap<String, Option<Vec<u8>>> = Default::default();
        let mut events = Vec::new();
        let mut appends = 0;
        for op in &txn.ops {
            let key = op.key_at(index, appends).into_owned();
            let before = match pending.get(&key) {
                Some(v) => v.clone(),
                None => self.get(&key)?.map(|kv| kv.value),
            };
            let full = format!("{DATA}{key}");
            match op {
                Op::Put { value, .. } | Op::Append { value, .. } => {
                    if matches!(op, Op::Append { .. }) {
                        appends += 1;
                    }
                    batch.insert(full.as_bytes(), encode(index, value));
                    events.push(Event {
                        kind: EventKind::Put,
                        kv: KeyValue {
                            key: key.clone(),
                            mod_revision: index,
                            value: value.clone(),
                        },
                        prev: before,
                    });
                    pending.insert(key, Some(value.clone()));
                }
                Op::Delete { .. } => {
                    if let Some(prev) = before {
                        batch.remove(full.as_bytes());
                        events.push(Event {
                            kind: EventKind::Delete,
                            kv: KeyValue {
                                key: key.clone(),
                                mod_revision: index,
                                value: prev.clone(),
                            },
                            prev: Some(prev),
                        });
                    }
                    pending.insert(key, None);
                }
            }
        }
        Ok((
            TxnResult {
                succeeded: true,
                revision: index,
                failed: None,
            },
            events,
        ))
    }

    fn snapshot_bytes(
        &self,
    ) -> Result<(Vec<u8>, Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>> {
        let _guard = self
            .inner
            .apply_lock
            .lock()
            .map_err(|_| corrupt("apply lock poisoned"))?;
        let last: Option<LogId<NodeId>> = read_json(&self.inner.tree, LAST_APPLIED)?;
        let membership: StoredMembership<NodeId, BasicNode> =
            read_json(&self.inner.tree, MEMBERSHIP)?.unwrap_or_default();
        let mut out = Vec::new();
        for item in self.inner.tree.scan_prefix(DATA.as_bytes()) {
            let (k, v) = item.map_err(|e| sm_err(ErrorVerb::Read, e))?;
            // Length-prefixed key, then the stored value (revision + bytes) as is.
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(&k);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(&v);
        }
        Ok((out, last, membership))
    }
}

fn read_json<T: serde::de::DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>, StorageError<NodeId>> {
    match tree.get(key).map_err(|e| sm_err(ErrorVerb::Read, e))? {
        Some(raw) => serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| sm_err(ErrorVerb::Read, e)),
        None => Ok(None),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StorageError<NodeId>> {
    serde_json::to_vec(value).map_err(|e| sm_err(ErrorVerb::Write, e))
}

/// Splits snapshot bytes back into (key, stored value) pairs.
fn parse_snapshot(mut data: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let take = |data: &mut &[u8]| -> Option<Vec<u8>> {
        let len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
        let bytes = data.get(4..4 + len)?.to_vec();
        *data = &data[4 + len..];
        Some(bytes)
    };
    while !data.is_empty() {
        let k = take(&mut data)?;
        let v = take(&mut data)?;
        out.push((k, v));
    }
    Some(out)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (data, last, membership) = self.snapshot_bytes()?;
        let seq = self.inner.snapshot_seq.fetch_add(1, Ordering::SeqCst);
        let snapshot_id = match &last {
            Some(l) => format!("{}-{}-{seq}", l.leader_id, l.index),
            None => format!("none-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: membership,
            snapshot_id,
        };
        let mut batch = sled::Batch::default();
        batch.insert(SNAPSHOT_META, to_json(&meta)?);
        batch.insert(SNAPSHOT_DATA, data.clone());
        self.inner
            .tree
            .apply_batch(batch)
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        self.inner
            .db
            .flush_async()
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>> {
        let last = read_json(&self.inner.tree, LAST_APPLIED)?;
        let membership = read_json(&self.inner.tree, MEMBERSHIP)?.unwrap_or_default();
        Ok((last, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<TxnResult>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            let mut batch = sled::Batch::default();
            let (result, events) = {
                let _guard = self
                    .inner
                    .apply_lock
                    .lock()
                    .map_err(|_| corrupt("apply lock poisoned"))?;
                let (result, events) = match &entry.payload {
                    EntryPayload::Blank => (
                        TxnResult {
                            succeeded: true,
                            revision: index,
                            failed: None,
                        },
                        vec![],
                    ),
                    EntryPayload::Normal(txn) => self.apply_txn(index, txn, &mut batch)?,
                    EntryPayload::Membership(m) => {
                        batch.insert(
                            MEMBERSHIP,
                            to_json(&StoredMembership::new(Some(entry.log_id), m.clone()))?,
                        );
                        (
                            TxnResult {
                                succeeded: true,
                                revision: index,
                                failed: None,
                            },
                            vec![],
                        )
                    }
                };
                batch.insert(LAST_APPLIED, to_json(&Some(entry.log_id))?);
                self.inner
                    .tree
                    .apply_batch(batch)
                    .map_err(|e| sm_err(ErrorVerb::Write, e))?;
                self.inner.revision.store(index, Ordering::SeqCst);
                (result, events)
            };
            self.inner.hub.publish(index, events);
            results.push(result);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let pairs = parse_snapshot(&data).ok_or_else(|| corrupt("malformed snapshot"))?;
        let _guard = self
            .inner
            .apply_lock
            .lock()
            .map_err(|_| corrupt("apply lock poisoned"))?;
        let mut batch = sled::Batch::default();
        for item in self.inner.tree.scan_prefix(DATA.as_bytes()) {
            let (k, _) = item.map_err(|e| sm_err(ErrorVerb::Read, e))?;
            batch.remove(k);
        }
        for (k, v) in pairs {
            batch.insert(k, v);
        }
        batch.insert(LAST_APPLIED, to_json(&meta.last_log_id)?);
        batch.insert(MEMBERSHIP, to_json(&meta.last_membership)?);
        batch.insert(SNAPSHOT_META, to_json(meta)?);
        batch.insert(SNAPSHOT_DATA, data);
        self.inner
            .tree
            .apply_batch(batch)
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let rev = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        self.inner.revision.store(rev, Ordering::SeqCst);
        self.inner.hub.reset(rev);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let meta: Option<SnapshotMeta<NodeId, BasicNode>> = read_json(&self.inner.tree, SNAPSHOT_META)?;
        let Some(meta) = meta else { return Ok(None) };
        let data = self
            .inner
            .tree
            .get(SNAPSHOT_DATA)
            .map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let data = data.map(|d| d.to_vec()).unwrap_or_default();
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
