//! The replicated state machine: a revisioned key-value map on sled.
//!
//! Applying log entries evaluates each transaction's compares and writes all of their
//! ops plus the new "last applied" marker and revision in ONE sled batch, so a crash
//! never leaves half a transaction. Every value carries the revision of its last write;
//! the revision counts successful transactions (one log entry holds many, see
//! [`super::types::Proposal`]), and it travels in snapshots with the data.
//!
//! Snapshots do not stop writes: building one records the pre-image of every key written
//! meanwhile, and the scan of the live tree takes a key's pre-image when it has one, so
//! the result is the state at one revision while writes go on. Snapshots are kept in a
//! file ([`super::snapshot`]), not in the tree.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};

use super::codec;
use super::snapshot::SnapshotFile;
use super::types::{Event, EventKind, Expect, KeyValue, NodeId, Op, Outcomes, TxnResult, TypeConfig};
use super::watch::WatchHub;

const DATA: &str = "k/";
/// The last applied log id (absent before the first entry).
const LAST_APPLIED: &[u8] = b"m/last_applied";
const MEMBERSHIP: &[u8] = b"m/membership";
/// The store revision: the number of successful transactions applied so far (8 bytes,
/// big-endian). Also the first record of every snapshot.
const REVISION: &[u8] = b"m/revision";

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
    /// While a snapshot is built: full key -> its stored value when the build began.
    capture: Mutex<Option<HashMap<Vec<u8>, Option<Vec<u8>>>>>,
    snapshots: SnapshotFile,
}

impl StateMachine {
    /// Opens the state machine tree in `db`, keeping snapshots in `snapshot_dir`. A
    /// snapshot install a crash interrupted is finished here.
    pub fn open(db: &sled::Db, snapshot_dir: &Path) -> Result<Self, StorageError<NodeId>> {
        let tree = db.open_tree("state").map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let snapshots = SnapshotFile::new(snapshot_dir).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let last: Option<LogId<NodeId>> = read_meta(&tree, LAST_APPLIED)?;
        let rev = read_revision(&tree)?;
        let sm = Self {
            inner: Arc::new(Inner {
                db: db.clone(),
                tree,
                apply_lock: Mutex::new(()),
                revision: AtomicU64::new(rev),
                hub: WatchHub::new(rev),
                snapshot_seq: AtomicU64::new(0),
                capture: Mutex::new(None),
                snapshots,
            }),
        };
        if let Some((meta, data)) = sm.inner.snapshots.read().map_err(|e| sm_err(ErrorVerb::Read, e))? {
            if meta.last_log_id > last {
                tracing::warn!(
                    snapshot = %meta.snapshot_id,
                    applied = rev,
                    "finishing a snapshot install that was interrupted"
                );
                sm.install_data(&meta, &data)?;
            }
        }
        Ok(sm)
    }

    /// The last log entry applied (durably, as far as this state machine's tree is).
    pub fn last_applied(&self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        read_meta(&self.inner.tree, LAST_APPLIED)
    }

    /// The revision of the last applied transaction.
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

    /// Evaluates one transaction against the tree as changed by `pending` (the writes of
    /// earlier transactions in the same `apply`), adding its writes to both. `revision`
    /// is the store's revision before it; a transaction that writes moves it on by one.
    fn apply_txn(
        &self,
        revision: &mut u64,
        txn: &super::types::Txn,
        pending: &mut Pending,
    ) -> Result<(TxnResult, Vec<Event>), StorageError<NodeId>> {
        for cmp in &txn.compares {
            let actual = pending.get(self, &cmp.key)?.map(|(rev, _)| rev).unwrap_or(0);
            let ok = match cmp.expect {
                Expect::Absent => actual == 0,
                Expect::Present => actual != 0,
                Expect::ModRevision(r) => actual == r,
            };
            if !ok {
                return Ok((
                    TxnResult {
                        succeeded: false,
                        revision: *revision,
                        failed: Some((cmp.clone(), actual)),
                    },
                    vec![],
                ));
            }
        }
        if txn.ops.is_empty() {
            return Ok((
                TxnResult {
                    succeeded: true,
                    revision: *revision,
                    failed: None,
                },
                vec![],
            ));
        }
        *revision += 1;
        let index = *revision;
        let mut events = Vec::new();
        let mut appends = 0;
        for op in &txn.ops {
            let key = op.key_at(index, appends).into_owned();
            let before = pending.get(self, &key)?.map(|(_, value)| value);
            match op {
                Op::Put { value, .. } | Op::Append { value, .. } => {
                    if matches!(op, Op::Append { .. }) {
                        appends += 1;
                    }
                    events.push(Event {
                        kind: EventKind::Put,
                        kv: KeyValue {
                            key: key.clone(),
                            mod_revision: index,
                            value: value.clone(),
                        },
                        prev: before,
                    });
                    pending.set(self, key, Some((index, value.clone())))?;
                }
                Op::Delete { .. } => {
                    if let Some(prev) = before {
                        events.push(Event {
                            kind: EventKind::Delete,
                            kv: KeyValue {
                                key: key.clone(),
                                mod_revision: index,
                                value: prev.clone(),
                            },
                            prev: Some(prev),
                        });
                        pending.set(self, key, None)?;
                    }
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

    /// Starts recording the pre-image of every key written from now on, so a snapshot can
    /// be read from the live tree without stopping writes; returns the applied state the
    /// snapshot is taken at.
    fn begin_capture(&self) -> Result<Captured, StorageError<NodeId>> {
        let _guard = self
            .inner
            .apply_lock
            .lock()
            .map_err(|_| corrupt("apply lock poisoned"))?;
        let last: Option<LogId<NodeId>> = read_meta(&self.inner.tree, LAST_APPLIED)?;
        let membership: StoredMembership<NodeId, BasicNode> =
            read_meta(&self.inner.tree, MEMBERSHIP)?.unwrap_or_default();
        *lock(&self.inner.capture)? = Some(HashMap::new());
        Ok(Captured {
            last,
            membership,
            revision: self.revision(),
        })
    }

    /// The key-value data as of [`Self::begin_capture`], read while writes go on: a key
    /// written since then is taken from its recorded pre-image.
    fn captured_data(&self, revision: u64) -> Result<Vec<u8>, StorageError<NodeId>> {
        let mut out = Vec::new();
        let mut from_capture = std::collections::HashSet::new();
        let emit = |out: &mut Vec<u8>, k: &[u8], v: &[u8]| {
            // Length-prefixed key, then the stored value (revision + bytes) as is.
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        };
        emit(&mut out, REVISION, &revision.to_be_bytes());
        for item in self.inner.tree.scan_prefix(DATA.as_bytes()) {
            let (k, v) = item.map_err(|e| sm_err(ErrorVerb::Read, e))?;
            // Checked after reading: a pre-image is recorded before its key is overwritten.
            let captured = lock(&self.inner.capture)?
                .as_ref()
                .and_then(|c| c.get(k.as_ref()).cloned());
            match captured {
                Some(old) => {
                    if let Some(old) = old {
                        emit(&mut out, &k, &old);
                    }
                    from_capture.insert(k.to_vec());
                }
                None => emit(&mut out, &k, &v),
            }
        }
        let captured = lock(&self.inner.capture)?.take().unwrap_or_default();
        // Keys deleted since the capture began, before the scan reached them.
        for (k, old) in captured {
            if let Some(old) = old {
                if !from_capture.contains(&k) {
                    emit(&mut out, &k, &old);
                }
            }
        }
        Ok(out)
    }

    /// Replaces the whole key-value data with a snapshot's, atomically.
    fn install_data(&self, meta: &SnapshotMeta<NodeId, BasicNode>, data: &[u8]) -> Result<(), StorageError<NodeId>> {
        let pairs = parse_snapshot(data).ok_or_else(|| corrupt("malformed snapshot"))?;
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
        let mut rev = 0;
        for (k, v) in pairs {
            if k == REVISION {
                rev = decode_revision(&v)?;
            } else if k.starts_with(DATA.as_bytes()) {
                batch.insert(k, v);
            } else {
                return Err(corrupt("snapshot holds a key outside the data"));
            }
        }
        batch.insert(REVISION, &rev.to_be_bytes());
        match &meta.last_log_id {
            Some(last) => batch.insert(LAST_APPLIED, to_meta(last)?),
            None => batch.remove(LAST_APPLIED),
        }
        batch.insert(MEMBERSHIP, to_meta(&meta.last_membership)?);
        self.inner
            .tree
            .apply_batch(batch)
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        self.inner.db.flush().map_err(|e| sm_err(ErrorVerb::Write, e))?;
        self.inner.revision.store(rev, Ordering::SeqCst);
        self.inner.hub.reset(rev);
        Ok(())
    }
}

/// Writes of the entries of one `apply` call not yet in the tree: later entries (and
/// later ops of one transaction) see earlier ones. Also records pre-images for a
/// snapshot being built.
struct Pending {
    values: HashMap<String, Option<(u64, Vec<u8>)>>,
    batch: sled::Batch,
    capturing: bool,
}

impl Pending {
    fn get(&self, sm: &StateMachine, key: &str) -> Result<Option<(u64, Vec<u8>)>, StorageError<NodeId>> {
        match self.values.get(key) {
            Some(v) => Ok(v.clone()),
            None => Ok(sm.get(key)?.map(|kv| (kv.mod_revision, kv.value))),
        }
    }

    fn set(
        &mut self,
        sm: &StateMachine,
        key: String,
        value: Option<(u64, Vec<u8>)>,
    ) -> Result<(), StorageError<NodeId>> {
        let full = format!("{DATA}{key}");
        if self.capturing {
            let mut capture = lock(&sm.inner.capture)?;
            if let Some(capture) = capture.as_mut() {
                if !capture.contains_key(full.as_bytes()) {
                    let old = sm
                        .inner
                        .tree
                        .get(full.as_bytes())
                        .map_err(|e| sm_err(ErrorVerb::Read, e))?;
                    capture.insert(full.clone().into_bytes(), old.map(|v| v.to_vec()));
                }
            }
        }
        match &value {
            Some((rev, bytes)) => self.batch.insert(full.as_bytes(), encode(*rev, bytes)),
            None => self.batch.remove(full.as_bytes()),
        }
        self.values.insert(key, value);
        Ok(())
    }
}

/// The applied state a snapshot is taken at.
struct Captured {
    last: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    revision: u64,
}

fn decode_revision(raw: &[u8]) -> Result<u64, StorageError<NodeId>> {
    raw.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt("malformed store revision"))
}

fn read_revision(tree: &sled::Tree) -> Result<u64, StorageError<NodeId>> {
    match tree.get(REVISION).map_err(|e| sm_err(ErrorVerb::Read, e))? {
        Some(raw) => decode_revision(&raw),
        None => Ok(0),
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>, StorageError<NodeId>> {
    m.lock().map_err(|_| corrupt("state machine lock poisoned"))
}

fn read_meta<T: serde::de::DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>, StorageError<NodeId>> {
    match tree.get(key).map_err(|e| sm_err(ErrorVerb::Read, e))? {
        Some(raw) => codec::decode_framed(&raw)
            .map(Some)
            .map_err(|e| sm_err(ErrorVerb::Read, e)),
        None => Ok(None),
    }
}

fn to_meta<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StorageError<NodeId>> {
    codec::encode_framed(value).map_err(|e| sm_err(ErrorVerb::Write, e))
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
        let started = std::time::Instant::now();
        let Captured {
            last,
            membership,
            revision,
        } = self.begin_capture()?;
        // The scan runs off the async runtime: it reads the whole keyspace.
        let sm = self.clone();
        let data = tokio::task::spawn_blocking(move || sm.captured_data(revision))
            .await
            .map_err(|e| sm_err(ErrorVerb::Read, std::io::Error::other(e.to_string())))??;
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
        let file = self.inner.snapshots.clone();
        let (meta_w, data_w) = (meta.clone(), data.clone());
        tokio::task::spawn_blocking(move || file.write(&meta_w, &data_w))
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, std::io::Error::other(e.to_string())))?
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        tracing::info!(
            revision,
            index = meta.last_log_id.map(|l| l.index).unwrap_or(0),
            bytes = data.len(),
            ms = started.elapsed().as_millis() as u64,
            "store snapshot built"
        );
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
        let last = read_meta(&self.inner.tree, LAST_APPLIED)?;
        let membership = read_meta(&self.inner.tree, MEMBERSHIP)?.unwrap_or_default();
        Ok((last, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcomes>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Every entry openraft hands over at once goes into ONE sled batch: one tree update
        // for many writes, and a crash never leaves part of one.
        let mut results = Vec::new();
        let mut published = Vec::new();
        {
            let _guard = self
                .inner
                .apply_lock
                .lock()
                .map_err(|_| corrupt("apply lock poisoned"))?;
            let mut pending = Pending {
                values: HashMap::new(),
                batch: sled::Batch::default(),
                capturing: lock(&self.inner.capture)?.is_some(),
            };
            let mut last = None;
            let mut revision = self.revision();
            for entry in entries {
                let outcomes = match &entry.payload {
                    EntryPayload::Blank => Outcomes::default(),
                    EntryPayload::Normal(proposal) => {
                        let mut outcomes = Vec::with_capacity(proposal.txns.len());
                        for txn in &proposal.txns {
                            let before = revision;
                            let (result, events) = self.apply_txn(&mut revision, txn, &mut pending)?;
                            if revision != before {
                                published.push((revision, events));
                            }
                            outcomes.push(result);
                        }
                        Outcomes(outcomes)
                    }
                    EntryPayload::Membership(m) => {
                        pending.batch.insert(
                            MEMBERSHIP,
                            to_meta(&StoredMembership::new(Some(entry.log_id), m.clone()))?,
                        );
                        Outcomes::default()
                    }
                };
                last = Some(entry.log_id);
                results.push(outcomes);
            }
            let Some(last) = last else { return Ok(results) };
            pending.batch.insert(LAST_APPLIED, to_meta(&last)?);
            pending.batch.insert(REVISION, &revision.to_be_bytes());
            self.inner
                .tree
                .apply_batch(pending.batch)
                .map_err(|e| sm_err(ErrorVerb::Write, e))?;
            self.inner.revision.store(revision, Ordering::SeqCst);
        }
        for (revision, events) in published {
            self.inner.hub.publish(revision, events);
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
        // Kept first, durably: a crash during the install below is finished on the next
        // start from this file (see `open`), so the member never runs on half a snapshot.
        let file = self.inner.snapshots.clone();
        let (meta_w, data_w) = (meta.clone(), data);
        let data = tokio::task::spawn_blocking(move || file.write(&meta_w, &data_w).map(|_| data_w))
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, std::io::Error::other(e.to_string())))?
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        self.install_data(meta, &data)?;
        tracing::info!(
            revision = self.revision(),
            index = meta.last_log_id.map(|l| l.index).unwrap_or(0),
            bytes = data.len(),
            "store snapshot installed"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let file = self.inner.snapshots.clone();
        let read = tokio::task::spawn_blocking(move || file.read())
            .await
            .map_err(|e| sm_err(ErrorVerb::Read, std::io::Error::other(e.to_string())))?
            .map_err(|e| sm_err(ErrorVerb::Read, e))?;
        Ok(read.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
