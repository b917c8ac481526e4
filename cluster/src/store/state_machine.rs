//! The replicated state machine: a revisioned key-value map held in memory.
//!
//! The durable copy of the state is the Raft log plus the latest snapshot file, as in
//! etcd's WAL + snapshot: on start the member loads the snapshot and openraft re-applies
//! the committed entries after it. So applying an entry writes nothing to disk; it was
//! fsynced into the log before it could commit. (Keeping the map in sled wrote each
//! change through sled's page cache and its segment files: ~40 MB/s per member in the
//! write benchmark for ~7 MB/s of log.)
//!
//! The map is persistent (`imbl`): a snapshot clones it in O(1) under the lock and is
//! serialised while writes go on, and a range read clones it and walks the copy without
//! holding the lock. Every value carries the revision of its last write; the revision
//! counts successful transactions (one log entry holds many, see
//! [`super::types::Proposal`]) and travels in snapshots with the data.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use imbl::{OrdMap, OrdSet};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};

use super::codec;
use super::snapshot::SnapshotFile;
use super::types::{Event, EventKind, Expect, KeyValue, LeaseId, NodeId, Op, Outcomes, TxnResult, TypeConfig};
use super::watch::WatchHub;

// Record prefixes of the snapshot format (and of the sled tree older versions kept).
const DATA: &[u8] = b"k/";
/// Leases: `l/<id, 8 bytes BE>` -> TTL in seconds (i64 BE).
const LEASES: &[u8] = b"l/";
/// Keys attached to a lease: `a/<id, 8 bytes BE><key>` -> nothing.
const ATTACHED: &[u8] = b"a/";
/// The store revision (8 bytes BE): the first record of every snapshot.
const REVISION: &[u8] = b"m/revision";
/// The sled tree in which earlier versions kept the state machine, with its
/// last applied log id and membership.
const LEGACY_TREE: &str = "state";
const LEGACY_LAST_APPLIED: &[u8] = b"m/last_applied";
const LEGACY_MEMBERSHIP: &[u8] = b"m/membership";

fn sm_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::new(ErrorSubject::StateMachine, verb, openraft::AnyError::new(&e)).into()
}

fn corrupt(what: &str) -> StorageError<NodeId> {
    sm_err(
        ErrorVerb::Read,
        std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string()),
    )
}

fn join_err(verb: ErrorVerb, e: tokio::task::JoinError) -> StorageError<NodeId> {
    sm_err(verb, std::io::Error::other(e.to_string()))
}

/// A key's stored state: the revision of its last write, its lease (0: none), its value
/// (shared, so that copying a map node copies no object bytes).
#[derive(Debug, Clone)]
struct Stored {
    rev: u64,
    lease: LeaseId,
    value: Arc<[u8]>,
}

impl Stored {
    fn key_value(&self, key: &str) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            mod_revision: self.rev,
            lease: self.lease,
            value: self.value.to_vec(),
        }
    }
}

/// Everything the state machine holds; cloning it is O(1).
#[derive(Clone, Default)]
struct State {
    data: OrdMap<String, Stored>,
    /// Every lease and its TTL in seconds.
    leases: OrdMap<LeaseId, i64>,
    /// (lease, key) for every key attached to a lease.
    attached: OrdSet<(LeaseId, String)>,
    revision: u64,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
}

impl State {
    /// The keys attached to lease `id`.
    fn attached_to(&self, id: LeaseId) -> Vec<String> {
        self.attached
            .range((Bound::Included((id, String::new())), Bound::Unbounded))
            .take_while(|(lease, _)| *lease == id)
            .map(|(_, key)| key.clone())
            .collect()
    }

    /// Serialises the data as (key, value) records: the revision first, then every key,
    /// lease and attachment, in the layout [`State::from_records`] reads back.
    fn to_records(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let emit = |out: &mut Vec<u8>, parts: &[&[u8]], value: &[&[u8]]| {
            let len = |p: &[&[u8]]| p.iter().map(|s| s.len()).sum::<usize>() as u32;
            out.extend_from_slice(&len(parts).to_be_bytes());
            parts.iter().for_each(|p| out.extend_from_slice(p));
            out.extend_from_slice(&len(value).to_be_bytes());
            value.iter().for_each(|p| out.extend_from_slice(p));
        };
        emit(&mut out, &[REVISION], &[&self.revision.to_be_bytes()]);
        for (key, s) in &self.data {
            let value: [&[u8]; 3] = [&s.rev.to_be_bytes(), &s.lease.to_be_bytes(), &s.value];
            emit(&mut out, &[DATA, key.as_bytes()], &value);
        }
        for (id, ttl) in &self.leases {
            emit(&mut out, &[LEASES, &id.to_be_bytes()], &[&ttl.to_be_bytes()]);
        }
        for (id, key) in &self.attached {
            emit(&mut out, &[ATTACHED, &id.to_be_bytes(), key.as_bytes()], &[]);
        }
        out
    }

    /// Rebuilds the data from (key, value) records, as written by [`State::to_records`]
    /// (or as older versions kept them in sled).
    fn from_records(
        records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
        last_applied: Option<LogId<NodeId>>,
        membership: StoredMembership<NodeId, BasicNode>,
    ) -> Result<Self, StorageError<NodeId>> {
        let mut state = State {
            last_applied,
            membership,
            ..Default::default()
        };
        let be = |raw: &[u8]| -> Option<u64> { raw.try_into().ok().map(u64::from_be_bytes) };
        for (k, v) in records {
            if k == REVISION {
                state.revision = be(&v).ok_or_else(|| corrupt("malformed store revision"))?;
            } else if let Some(key) = k.strip_prefix(DATA) {
                let key = String::from_utf8(key.to_vec()).map_err(|_| corrupt("a key is not UTF-8"))?;
                let stored = (|| {
                    Some(Stored {
                        rev: be(v.get(..8)?)?,
                        lease: be(v.get(8..16)?)?,
                        value: Arc::from(v.get(16..)?),
                    })
                })()
                .ok_or_else(|| corrupt("bad stored value"))?;
                state.data.insert(key, stored);
            } else if let Some(id) = k.strip_prefix(LEASES) {
                let (Some(id), Some(ttl)) = (be(id), be(&v)) else {
                    return Err(corrupt("malformed lease record"));
                };
                state.leases.insert(id, ttl as i64);
            } else if let Some(rest) = k.strip_prefix(ATTACHED) {
                let id = rest
                    .get(..8)
                    .and_then(be)
                    .ok_or_else(|| corrupt("malformed lease attachment"))?;
                let key = String::from_utf8(rest[8..].to_vec()).map_err(|_| corrupt("malformed lease attachment"))?;
                state.attached.insert((id, key));
            } else {
                return Err(corrupt("snapshot holds a key outside the data"));
            }
        }
        Ok(state)
    }

    /// Evaluates one transaction and, if its compares hold, applies all of its ops.
    fn apply_txn(&mut self, txn: &super::types::Txn) -> (TxnResult, Vec<Event>) {
        let refused = |revision, failed, missing_lease| TxnResult {
            succeeded: false,
            revision,
            failed,
            missing_lease,
        };
        for cmp in &txn.compares {
            let actual = self.data.get(&cmp.key).map(|s| s.rev).unwrap_or(0);
            let ok = match cmp.expect {
                Expect::Absent => actual == 0,
                Expect::Present => actual != 0,
                Expect::ModRevision(r) => actual == r,
            };
            if !ok {
                return (refused(self.revision, Some((cmp.clone(), actual)), None), vec![]);
            }
        }
        // Every lease a put names must exist (or be granted earlier in the transaction).
        let mut granted = Vec::new();
        for op in &txn.ops {
            match op {
                Op::LeaseGrant { id, .. } => granted.push(*id),
                Op::Put { lease: Some(id), .. }
                    if *id != 0 && !granted.contains(id) && !self.leases.contains_key(id) =>
                {
                    return (refused(self.revision, None, Some(*id)), vec![]);
                }
                _ => {}
            }
        }
        if txn.ops.is_empty() {
            return (
                TxnResult {
                    succeeded: true,
                    revision: self.revision,
                    ..Default::default()
                },
                vec![],
            );
        }
        self.revision += 1;
        let index = self.revision;
        let mut events = Vec::with_capacity(txn.ops.len());
        let mut appends = 0;
        for op in &txn.ops {
            match op {
                Op::Put { key, value, lease } => {
                    self.put(index, key.clone(), value, lease.unwrap_or(0), &mut events);
                }
                Op::Append { value, .. } => {
                    let key = op.key_at(index, appends).into_owned();
                    appends += 1;
                    self.put(index, key, value, 0, &mut events);
                }
                Op::Delete { key } => self.delete(index, key, &mut events),
                Op::LeaseGrant { id, ttl_seconds } => {
                    self.leases.insert(*id, *ttl_seconds);
                }
                Op::LeaseRevoke { id } => {
                    if self.leases.remove(id).is_some() {
                        for key in self.attached_to(*id) {
                            self.delete(index, &key, &mut events);
                        }
                    }
                }
            }
        }
        (
            TxnResult {
                succeeded: true,
                revision: index,
                ..Default::default()
            },
            events,
        )
    }

    /// Writes `value` at `key`, moving the key's lease attachment if it changes.
    fn put(&mut self, index: u64, key: String, value: &[u8], lease: LeaseId, events: &mut Vec<Event>) {
        let stored = Stored {
            rev: index,
            lease,
            value: Arc::from(value),
        };
        let before = self.data.insert(key.clone(), stored);
        let old_lease = before.as_ref().map(|s| s.lease).unwrap_or(0);
        if old_lease != lease {
            if old_lease != 0 {
                self.attached.remove(&(old_lease, key.clone()));
            }
            if lease != 0 {
                self.attached.insert((lease, key.clone()));
            }
        }
        events.push(Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key,
                mod_revision: index,
                lease,
                value: value.to_vec(),
            },
            prev: before.map(|s| s.value.to_vec()),
        });
    }

    /// Removes `key` (and its lease attachment), if it exists.
    fn delete(&mut self, index: u64, key: &str, events: &mut Vec<Event>) {
        let Some(before) = self.data.remove(key) else { return };
        if before.lease != 0 {
            self.attached.remove(&(before.lease, key.to_string()));
        }
        let value = before.value.to_vec();
        events.push(Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.to_string(),
                mod_revision: index,
                lease: before.lease,
                value: value.clone(),
            },
            prev: Some(value),
        });
    }
}

/// The state machine handle; clones share one map and one watch hub.
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Inner>,
}

struct Inner {
    /// Written only by `apply` and snapshot installs; readers clone what they need.
    state: RwLock<State>,
    /// The revision of the last applied transaction, readable without the lock.
    revision: AtomicU64,
    hub: WatchHub,
    snapshot_seq: AtomicU64,
    snapshots: SnapshotFile,
    /// Moves on whenever a lease is granted or revoked, so the lessor re-reads the
    /// leases only then.
    lease_generation: AtomicU64,
}

impl StateMachine {
    /// Opens the state machine from the snapshot in `snapshot_dir` (empty without one);
    /// the log entries after it are re-applied by openraft. A state machine that an
    /// older version kept in `db` is moved into a snapshot first.
    pub fn open(db: &sled::Db, snapshot_dir: &Path) -> Result<Self, StorageError<NodeId>> {
        let snapshots = SnapshotFile::new(snapshot_dir).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let snapshot = snapshots.read().map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let state = match &snapshot {
            Some((meta, data)) => State::from_records(
                parse_records(data).ok_or_else(|| corrupt("malformed snapshot"))?,
                meta.last_log_id,
                meta.last_membership.clone(),
            )?,
            None => State::default(),
        };
        let legacy = migrate_from_sled(db, state.last_applied)?;
        let migrated = legacy.is_some();
        let state = legacy.unwrap_or(state);
        let sm = Self {
            inner: Arc::new(Inner {
                revision: AtomicU64::new(state.revision),
                hub: WatchHub::new(state.revision),
                state: RwLock::new(state),
                snapshot_seq: AtomicU64::new(0),
                snapshots,
                lease_generation: AtomicU64::new(0),
            }),
        };
        if migrated {
            // Durable as a snapshot before the tree goes: the log may already be purged
            // up to the tree's last applied entry.
            let ((meta, data), keys) = {
                let state = sm.read()?;
                (sm.snapshot_of(&state), state.data.len())
            };
            sm.inner
                .snapshots
                .write(&meta, &data)
                .map_err(|e| sm_err(ErrorVerb::Write, e))?;
            db.drop_tree(LEGACY_TREE).map_err(|e| sm_err(ErrorVerb::Write, e))?;
            db.flush().map_err(|e| sm_err(ErrorVerb::Write, e))?;
            tracing::info!(
                revision = sm.revision(),
                keys,
                "moved the state machine out of sled into a snapshot"
            );
        }
        Ok(sm)
    }

    fn read(&self) -> Result<std::sync::RwLockReadGuard<'_, State>, StorageError<NodeId>> {
        self.inner
            .state
            .read()
            .map_err(|_| corrupt("state machine lock poisoned"))
    }

    fn write(&self) -> Result<std::sync::RwLockWriteGuard<'_, State>, StorageError<NodeId>> {
        self.inner
            .state
            .write()
            .map_err(|_| corrupt("state machine lock poisoned"))
    }

    /// Every lease and its TTL in seconds.
    pub fn leases(&self) -> Result<BTreeMap<LeaseId, i64>, StorageError<NodeId>> {
        Ok(self.read()?.leases.iter().map(|(id, ttl)| (*id, *ttl)).collect())
    }

    /// The TTL of lease `id`, if it exists.
    pub fn lease_ttl(&self, id: LeaseId) -> Result<Option<i64>, StorageError<NodeId>> {
        Ok(self.read()?.leases.get(&id).copied())
    }

    /// A number that moves on whenever a lease is granted or revoked.
    pub fn lease_generation(&self) -> u64 {
        self.inner.lease_generation.load(Ordering::SeqCst)
    }

    /// The last log entry applied.
    pub fn last_applied(&self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.read()?.last_applied)
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
        Ok(self.read()?.data.get(key).map(|s| s.key_value(key)))
    }

    /// Reads keys under `prefix` in order, after `start_after`, at most `limit` of them;
    /// returns them with the revision they were read at and whether more remain.
    pub fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<(Vec<KeyValue>, u64, bool), StorageError<NodeId>> {
        // A consistent copy in O(1); the walk runs without the lock.
        let (data, rev) = {
            let state = self.read()?;
            (state.data.clone(), state.revision)
        };
        let start = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after.to_string()),
            _ => Bound::Included(prefix.to_string()),
        };
        let mut out = Vec::new();
        for (key, stored) in data.range((start, Bound::Unbounded)) {
            if !key.starts_with(prefix) {
                break;
            }
            if limit.is_some_and(|l| out.len() >= l) {
                return Ok((out, rev, true));
            }
            out.push(stored.key_value(key));
        }
        Ok((out, rev, false))
    }

    /// The snapshot of `state`: its metadata and serialised data.
    fn snapshot_of(&self, state: &State) -> (SnapshotMeta<NodeId, BasicNode>, Vec<u8>) {
        let seq = self.inner.snapshot_seq.fetch_add(1, Ordering::SeqCst);
        let snapshot_id = match &state.last_applied {
            Some(l) => format!("{}-{}-{seq}", l.leader_id, l.index),
            None => format!("none-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id,
        };
        (meta, state.to_records())
    }

    /// Replaces the whole state with a snapshot's.
    fn install_data(&self, meta: &SnapshotMeta<NodeId, BasicNode>, data: &[u8]) -> Result<(), StorageError<NodeId>> {
        let records = parse_records(data).ok_or_else(|| corrupt("malformed snapshot"))?;
        let state = State::from_records(records, meta.last_log_id, meta.last_membership.clone())?;
        let revision = state.revision;
        {
            let mut current = self.write()?;
            *current = state;
            self.inner.revision.store(revision, Ordering::SeqCst);
            // Under the lock, so no apply can publish between the swap and the reset.
            self.inner.hub.reset(revision);
        }
        self.inner.lease_generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Reads the state machine an older version kept in sled, if it is newer than the
/// snapshot (`snapshot_applied`); the tree is dropped by the caller once it is saved.
fn migrate_from_sled(
    db: &sled::Db,
    snapshot_applied: Option<LogId<NodeId>>,
) -> Result<Option<State>, StorageError<NodeId>> {
    if !db
        .tree_names()
        .iter()
        .any(|name| name.as_ref() == LEGACY_TREE.as_bytes())
    {
        return Ok(None);
    }
    let tree = db.open_tree(LEGACY_TREE).map_err(|e| sm_err(ErrorVerb::Read, e))?;
    let meta = |key: &[u8]| -> Result<Option<Vec<u8>>, StorageError<NodeId>> {
        Ok(tree
            .get(key)
            .map_err(|e| sm_err(ErrorVerb::Read, e))?
            .map(|v| v.to_vec()))
    };
    let last: Option<LogId<NodeId>> = match meta(LEGACY_LAST_APPLIED)? {
        Some(raw) => Some(codec::decode_framed(&raw).map_err(|e| sm_err(ErrorVerb::Read, e))?),
        None => None,
    };
    if last.is_none() || last <= snapshot_applied {
        // Nothing newer than the snapshot: the tree only goes.
        db.drop_tree(LEGACY_TREE).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        return Ok(None);
    }
    let membership = match meta(LEGACY_MEMBERSHIP)? {
        Some(raw) => codec::decode_framed(&raw).map_err(|e| sm_err(ErrorVerb::Read, e))?,
        None => StoredMembership::default(),
    };
    let mut records = Vec::new();
    for prefix in [DATA, LEASES, ATTACHED, REVISION] {
        for item in tree.scan_prefix(prefix) {
            let (k, v) = item.map_err(|e| sm_err(ErrorVerb::Read, e))?;
            records.push((k.to_vec(), v.to_vec()));
        }
    }
    State::from_records(records, last, membership).map(Some)
}

/// Splits serialised records back into (key, value) pairs.
fn parse_records(mut data: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
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
        // An O(1) copy: writes go on while it is serialised and saved.
        let state = self.read()?.clone();
        let sm = self.clone();
        let (meta, data) = tokio::task::spawn_blocking(move || {
            let (meta, data) = sm.snapshot_of(&state);
            sm.inner.snapshots.write(&meta, &data).map(|_| (meta, data))
        })
        .await
        .map_err(|e| join_err(ErrorVerb::Write, e))?
        .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        tracing::info!(
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
        let state = self.read()?;
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcomes>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        let mut published = Vec::new();
        let mut leases_changed = false;
        {
            let mut state = self.write()?;
            for entry in entries {
                let outcomes = match &entry.payload {
                    EntryPayload::Blank => Outcomes::default(),
                    EntryPayload::Normal(proposal) => {
                        let mut outcomes = Vec::with_capacity(proposal.txns.len());
                        for txn in &proposal.txns {
                            let before = state.revision;
                            let (result, events) = state.apply_txn(txn);
                            if state.revision != before {
                                published.push((state.revision, events));
                            }
                            leases_changed |= result.succeeded
                                && txn
                                    .ops
                                    .iter()
                                    .any(|op| matches!(op, Op::LeaseGrant { .. } | Op::LeaseRevoke { .. }));
                            outcomes.push(result);
                        }
                        Outcomes(outcomes)
                    }
                    EntryPayload::Membership(m) => {
                        state.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        Outcomes::default()
                    }
                };
                state.last_applied = Some(entry.log_id);
                results.push(outcomes);
            }
            self.inner.revision.store(state.revision, Ordering::SeqCst);
        }
        if leases_changed {
            self.inner.lease_generation.fetch_add(1, Ordering::SeqCst);
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
        // Saved first, durably: the state machine lives in memory, and this file is
        // what a restart loads it from (the log before it may be purged).
        let file = self.inner.snapshots.clone();
        let meta_w = meta.clone();
        let data = tokio::task::spawn_blocking(move || file.write(&meta_w, &data).map(|_| data))
            .await
            .map_err(|e| join_err(ErrorVerb::Write, e))?
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
            .map_err(|e| join_err(ErrorVerb::Read, e))?
            .map_err(|e| sm_err(ErrorVerb::Read, e))?;
        Ok(read.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
