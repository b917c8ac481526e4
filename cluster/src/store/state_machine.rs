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

use std::collections::{BTreeMap, BTreeSet, HashMap};
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
use super::types::{Event, EventKind, Expect, KeyValue, LeaseId, NodeId, Op, Outcomes, TxnResult, TypeConfig};
use super::watch::WatchHub;

const DATA: &str = "k/";
/// The last applied log id (absent before the first entry).
const LAST_APPLIED: &[u8] = b"m/last_applied";
const MEMBERSHIP: &[u8] = b"m/membership";
/// The store revision: the number of successful transactions applied so far (8 bytes,
/// big-endian). Also the first record of every snapshot.
const REVISION: &[u8] = b"m/revision";
/// Leases: `l/<id, 8 bytes BE>` -> TTL in seconds (i64 BE).
const LEASES: &str = "l/";
/// Keys attached to a lease: `a/<id, 8 bytes BE><key>` -> nothing.
const ATTACHED: &str = "a/";
/// Every prefix whose keys a snapshot carries.
const SNAPSHOT_PREFIXES: [&str; 3] = [DATA, LEASES, ATTACHED];

fn lease_key(id: LeaseId) -> Vec<u8> {
    let mut k = LEASES.as_bytes().to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn attached_prefix(id: LeaseId) -> Vec<u8> {
    let mut k = ATTACHED.as_bytes().to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn attached_key(id: LeaseId, key: &str) -> Vec<u8> {
    let mut k = attached_prefix(id);
    k.extend_from_slice(key.as_bytes());
    k
}

fn sm_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::new(ErrorSubject::StateMachine, verb, openraft::AnyError::new(&e)).into()
}

fn corrupt(what: &str) -> StorageError<NodeId> {
    sm_err(
        ErrorVerb::Read,
        std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string()),
    )
}

/// A key's stored state: the revision of its last write, its lease (0: none), its value.
#[derive(Debug, Clone)]
struct Stored {
    rev: u64,
    lease: LeaseId,
    value: Vec<u8>,
}

/// Encodes a stored value: revision and lease (8 bytes BE each), then the value.
fn encode(stored: &Stored) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + stored.value.len());
    out.extend_from_slice(&stored.rev.to_be_bytes());
    out.extend_from_slice(&stored.lease.to_be_bytes());
    out.extend_from_slice(&stored.value);
    out
}

fn decode_stored(raw: &[u8]) -> Option<Stored> {
    Some(Stored {
        rev: u64::from_be_bytes(raw.get(..8)?.try_into().ok()?),
        lease: u64::from_be_bytes(raw.get(8..16)?.try_into().ok()?),
        value: raw.get(16..)?.to_vec(),
    })
}

fn decode(key: &[u8], raw: &[u8]) -> Option<KeyValue> {
    let stored = decode_stored(raw)?;
    let key = std::str::from_utf8(key.strip_prefix(DATA.as_bytes())?).ok()?;
    Some(KeyValue {
        key: key.to_string(),
        mod_revision: stored.rev,
        lease: stored.lease,
        value: stored.value,
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
    /// Every lease and its TTL, mirrored from the tree for the lessor (which must not
    /// scan the tree to learn of new leases).
    leases: Mutex<BTreeMap<LeaseId, i64>>,
    /// Moves on whenever the lease mirror changes, so the lessor re-reads it only then.
    lease_generation: AtomicU64,
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
                leases: Mutex::new(BTreeMap::new()),
                lease_generation: AtomicU64::new(0),
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
        sm.load_leases()?;
        Ok(sm)
    }

    /// Every lease and its TTL in seconds.
    pub fn leases(&self) -> Result<BTreeMap<LeaseId, i64>, StorageError<NodeId>> {
        Ok(lock(&self.inner.leases)?.clone())
    }

    /// The TTL of lease `id`, if it exists.
    pub fn lease_ttl(&self, id: LeaseId) -> Result<Option<i64>, StorageError<NodeId>> {
        Ok(lock(&self.inner.leases)?.get(&id).copied())
    }

    /// A number that moves on whenever a lease is granted or revoked.
    pub fn lease_generation(&self) -> u64 {
        self.inner.lease_generation.load(Ordering::SeqCst)
    }

    /// Reloads the lease mirror from the tree (after opening or installing a snapshot).
    fn load_leases(&self) -> Result<(), StorageError<NodeId>> {
        let mut leases = BTreeMap::new();
        for item in self.inner.tree.scan_prefix(LEASES.as_bytes()) {
            let (k, v) = item.map_err(|e| sm_err(ErrorVerb::Read, e))?;
            let id = k[LEASES.len()..].try_into().map(u64::from_be_bytes);
            let ttl = v.as_ref().try_into().map(i64::from_be_bytes);
            match (id, ttl) {
                (Ok(id), Ok(ttl)) => leases.insert(id, ttl),
                _ => return Err(corrupt("malformed lease record")),
            };
        }
        *lock(&self.inner.leases)? = leases;
        self.inner.lease_generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
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
        let refused = |failed, missing_lease| TxnResult {
            succeeded: false,
            revision: *revision,
            failed,
            missing_lease,
        };
        for cmp in &txn.compares {
            let actual = pending.get(self, &cmp.key)?.map(|s| s.rev).unwrap_or(0);
            let ok = match cmp.expect {
                Expect::Absent => actual == 0,
                Expect::Present => actual != 0,
                Expect::ModRevision(r) => actual == r,
            };
            if !ok {
                return Ok((refused(Some((cmp.clone(), actual)), None), vec![]));
            }
        }
        // Every lease a put names must exist (or be granted earlier in the transaction).
        let mut granted = BTreeSet::new();
        for op in &txn.ops {
            match op {
                Op::LeaseGrant { id, .. } => {
                    granted.insert(*id);
                }
                Op::Put { lease: Some(id), .. } if *id != 0 && !granted.contains(id) => {
                    if pending.get_raw(self, &lease_key(*id))?.is_none() {
                        return Ok((refused(None, Some(*id)), vec![]));
                    }
                }
                _ => {}
            }
        }
        if txn.ops.is_empty() {
            return Ok((
                TxnResult {
                    succeeded: true,
                    revision: *revision,
                    ..Default::default()
                },
                vec![],
            ));
        }
        *revision += 1;
        let index = *revision;
        let mut events = Vec::new();
        let mut appends = 0;
        for op in &txn.ops {
            match op {
                Op::Put { key, value, lease } => {
                    let lease = lease.unwrap_or(0);
                    self.put(pending, index, key.clone(), value, lease, &mut events)?;
                }
                Op::Append { value, .. } => {
                    let key = op.key_at(index, appends).into_owned();
                    appends += 1;
                    self.put(pending, index, key, value, 0, &mut events)?;
                }
                Op::Delete { key } => self.delete(pending, index, key, &mut events)?,
                Op::LeaseGrant { id, ttl_seconds } => {
                    pending.set_raw(self, lease_key(*id), Some(ttl_seconds.to_be_bytes().to_vec()))?;
                    pending.lease_changes.push((*id, Some(*ttl_seconds)));
                }
                Op::LeaseRevoke { id } => {
                    if pending.get_raw(self, &lease_key(*id))?.is_none() {
                        continue;
                    }
                    for key in pending.attached(self, *id)? {
                        self.delete(pending, index, &key, &mut events)?;
                    }
                    pending.set_raw(self, lease_key(*id), None)?;
                    pending.lease_changes.push((*id, None));
                }
            }
        }
        Ok((
            TxnResult {
                succeeded: true,
                revision: index,
                ..Default::default()
            },
            events,
        ))
    }

    /// Writes `value` at `key`, moving the key's lease attachment if it changes.
    fn put(
        &self,
        pending: &mut Pending,
        index: u64,
        key: String,
        value: &[u8],
        lease: LeaseId,
        events: &mut Vec<Event>,
    ) -> Result<(), StorageError<NodeId>> {
        let before = pending.get(self, &key)?;
        let old_lease = before.as_ref().map(|s| s.lease).unwrap_or(0);
        if old_lease != lease {
            if old_lease != 0 {
                pending.set_raw(self, attached_key(old_lease, &key), None)?;
            }
            if lease != 0 {
                pending.set_raw(self, attached_key(lease, &key), Some(Vec::new()))?;
            }
        }
        events.push(Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.clone(),
                mod_revision: index,
                lease,
                value: value.to_vec(),
            },
            prev: before.map(|s| s.value),
        });
        let stored = Stored {
            rev: index,
            lease,
            value: value.to_vec(),
        };
        pending.set(self, key, Some(stored))
    }

    /// Removes `key` (and its lease attachment), if it exists.
    fn delete(
        &self,
        pending: &mut Pending,
        index: u64,
        key: &str,
        events: &mut Vec<Event>,
    ) -> Result<(), StorageError<NodeId>> {
        let Some(before) = pending.get(self, key)? else {
            return Ok(());
        };
        if before.lease != 0 {
            pending.set_raw(self, attached_key(before.lease, key), None)?;
        }
        events.push(Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.to_string(),
                mod_revision: index,
                lease: before.lease,
                value: before.value.clone(),
            },
            prev: Some(before.value),
        });
        pending.set(self, key.to_string(), None)
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
        let scan = SNAPSHOT_PREFIXES
            .iter()
            .flat_map(|prefix| self.inner.tree.scan_prefix(prefix.as_bytes()));
        for item in scan {
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
        let scan = SNAPSHOT_PREFIXES
            .iter()
            .flat_map(|prefix| self.inner.tree.scan_prefix(prefix.as_bytes()));
        for item in scan {
            let (k, _) = item.map_err(|e| sm_err(ErrorVerb::Read, e))?;
            batch.remove(k);
        }
        let mut rev = 0;
        for (k, v) in pairs {
            if k == REVISION {
                rev = decode_revision(&v)?;
            } else if SNAPSHOT_PREFIXES.iter().any(|p| k.starts_with(p.as_bytes())) {
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
        self.load_leases()
    }
}

/// Writes of the entries of one `apply` call not yet in the tree: later entries (and
/// later ops of one transaction) see earlier ones. Also records pre-images for a
/// snapshot being built.
struct Pending {
    /// Keys' new states, by key (without the data prefix).
    values: HashMap<String, Option<Stored>>,
    /// Lease records and attachments, by full key.
    raw: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Leases granted (`Some(ttl)`) or revoked, for the mirror once the batch is written.
    lease_changes: Vec<(LeaseId, Option<i64>)>,
    batch: sled::Batch,
    capturing: bool,
}

impl Pending {
    fn new(capturing: bool) -> Self {
        Pending {
            values: HashMap::new(),
            raw: HashMap::new(),
            lease_changes: Vec::new(),
            batch: sled::Batch::default(),
            capturing,
        }
    }

    fn get(&self, sm: &StateMachine, key: &str) -> Result<Option<Stored>, StorageError<NodeId>> {
        match self.values.get(key) {
            Some(v) => Ok(v.clone()),
            None => {
                let full = format!("{DATA}{key}");
                match sm
                    .inner
                    .tree
                    .get(full.as_bytes())
                    .map_err(|e| sm_err(ErrorVerb::Read, e))?
                {
                    Some(raw) => Ok(Some(decode_stored(&raw).ok_or_else(|| corrupt("bad stored value"))?)),
                    None => Ok(None),
                }
            }
        }
    }

    fn set(&mut self, sm: &StateMachine, key: String, value: Option<Stored>) -> Result<(), StorageError<NodeId>> {
        let full = format!("{DATA}{key}").into_bytes();
        self.write(sm, full, value.as_ref().map(encode))?;
        self.values.insert(key, value);
        Ok(())
    }

    fn get_raw(&self, sm: &StateMachine, full: &[u8]) -> Result<Option<Vec<u8>>, StorageError<NodeId>> {
        match self.raw.get(full) {
            Some(v) => Ok(v.clone()),
            None => Ok(sm
                .inner
                .tree
                .get(full)
                .map_err(|e| sm_err(ErrorVerb::Read, e))?
                .map(|v| v.to_vec())),
        }
    }

    fn set_raw(
        &mut self,
        sm: &StateMachine,
        full: Vec<u8>,
        value: Option<Vec<u8>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.write(sm, full.clone(), value.clone())?;
        self.raw.insert(full, value);
        Ok(())
    }

    /// The keys attached to lease `id`, with this batch's changes.
    fn attached(&self, sm: &StateMachine, id: LeaseId) -> Result<Vec<String>, StorageError<NodeId>> {
        let prefix = attached_prefix(id);
        let mut keys = BTreeSet::new();
        for item in sm.inner.tree.scan_prefix(&prefix) {
            let (k, _) = item.map_err(|e| sm_err(ErrorVerb::Read, e))?;
            keys.insert(k.to_vec());
        }
        for (k, v) in &self.raw {
            if k.starts_with(&prefix) {
                match v {
                    Some(_) => keys.insert(k.clone()),
                    None => keys.remove(k),
                };
            }
        }
        keys.iter()
            .map(|k| String::from_utf8(k[prefix.len()..].to_vec()).map_err(|_| corrupt("malformed lease attachment")))
            .collect()
    }

    /// Adds a write to the batch, first recording the key's pre-image for a snapshot
    /// being built.
    fn write(&mut self, sm: &StateMachine, full: Vec<u8>, value: Option<Vec<u8>>) -> Result<(), StorageError<NodeId>> {
        if self.capturing {
            let mut capture = lock(&sm.inner.capture)?;
            if let Some(capture) = capture.as_mut() {
                if !capture.contains_key(&full) {
                    let old = sm.inner.tree.get(&full).map_err(|e| sm_err(ErrorVerb::Read, e))?;
                    capture.insert(full.clone(), old.map(|v| v.to_vec()));
                }
            }
        }
        match value {
            Some(bytes) => self.batch.insert(full, bytes),
            None => self.batch.remove(full),
        }
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
            let mut pending = Pending::new(lock(&self.inner.capture)?.is_some());
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
            if !pending.lease_changes.is_empty() {
                let mut leases = lock(&self.inner.leases)?;
                for (id, ttl) in pending.lease_changes {
                    match ttl {
                        Some(ttl) => leases.insert(id, ttl),
                        None => leases.remove(&id),
                    };
                }
                self.inner.lease_generation.fetch_add(1, Ordering::SeqCst);
            }
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
