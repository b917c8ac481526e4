//! The Raft log: append-only segment files, fsynced in groups.
//!
//! Entries are records in segment files (`<first index>.log`, a new one every 64 MiB):
//! a length (u32, big-endian), then the entry framed with a CRC-32
//! ([`codec::encode_framed`]). An append is one write at the end of the active segment;
//! an in-memory index maps each log index to its record, and reads are positioned reads.
//! The vote, the committed id and the purge point are small values in a sled tree.
//!
//! The log used to be a sled tree. sled's flush writes its whole page cache (the state
//! machine's pages too) and needs seven I/O threads to do it; a flush per Raft append
//! made sled the largest CPU cost of a write on every member. A file append and an
//! `fdatasync` are what etcd's WAL does, and all a log needs.
//!
//! One sync per append, on the caller's task: openraft 0.9's core hands the log one
//! append (a batch of entries) and waits for its callback before it does anything else,
//! replication to the followers included, so appends never queue up for a shared sync.
//! A flusher thread that grouped them (the first design) only added two wake-ups to each
//! append: without it, one client's puts went from 632-642/s to 713-719/s. A slow sync
//! holds one tokio worker meanwhile; the others steal the tasks queued on it (all but
//! the one in its LIFO slot).
//!
//! Preallocation: a segment's file is extended with `fallocate` ahead of its records, a
//! few MiB at a time, so an append writes inside the file. Appending past the end changed
//! the file's size with every write, and each `fdatasync` then also committed that size
//! through the filesystem's journal: on this machine's ext4 that took 0.19 ms and wrote
//! 8.5 KB per sync, against 0.12 ms and 4.8 KB inside an allocated file (the same cost
//! etcd avoids by preallocating its WAL segments). A segment's data therefore ends at the
//! first record header of zero followed only by zeros.
//!
//! Crash safety: a record cut short at the end of the last segment (a torn write) is cut
//! off when the log is opened, with a warning; it was never acknowledged. A damaged record
//! anywhere else, or a gap in the indexes, refuses the start with the file and offset:
//! acknowledged entries would be lost, which Raft cannot survive on a member.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::File;
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogId, RaftLogReader, StorageError, StorageIOError, Vote,
};

use super::codec;
use super::types::{NodeId, TypeConfig};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";
/// The on-disk format of the log and its metadata; bumped when either changes.
const FORMAT: &[u8] = b"format";
const FORMAT_VERSION: &[u8] = b"4";
/// A new segment is started once the active one is this large.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes before each record: its length.
const HEADER: u64 = 4;
/// A segment's file grows by at least this much when a record would pass its end.
const PREALLOCATE_BYTES: u64 = 8 * 1024 * 1024;

/// Raft log storage: segment files for entries, a sled tree for the log's metadata.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    meta: sled::Tree,
    wal: Arc<Mutex<Wal>>,
}

/// The segment files and the index of their records.
struct Wal {
    dir: PathBuf,
    /// Segments by the index of their first entry; the last one is appended to.
    segments: BTreeMap<u64, Segment>,
    /// Where each entry's record is.
    index: BTreeMap<u64, Location>,
    /// A new segment starts once the active one is this large.
    segment_bytes: u64,
    /// Whether the filesystem takes `fallocate` (it is tried until it fails once).
    preallocate: bool,
}

struct Segment {
    path: PathBuf,
    file: Arc<File>,
    /// Bytes in use: the next record goes here.
    len: u64,
    /// The file's size: zeros from `len` up to here, allocated ahead of the records.
    allocated: u64,
}

#[derive(Clone, Copy)]
struct Location {
    segment: u64,
    offset: u64,
    len: u32,
    log_id: LogId<NodeId>,
}

fn io_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, openraft::AnyError::new(&e)).into()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    io_err(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    io_err(ErrorSubject::Logs, ErrorVerb::Write, e)
}

fn poisoned() -> StorageError<NodeId> {
    write_err(std::io::Error::other("the log's lock was poisoned by a panic"))
}

/// Why the log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// sled failed.
    #[error("{0}")]
    Db(#[from] sled::Error),
    /// The log was written in another format (an older Kairn).
    #[error("the Raft log is in format {found:?}, this Kairn reads format {expected:?}: it was written by another version of Kairn; start that version, or move the data directory aside to start afresh")]
    Format { found: String, expected: String },
    /// A segment file could not be read or written.
    #[error("Raft log {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A segment holds a damaged record before its end, or the indexes have a gap.
    #[error("Raft log {path} is damaged at byte {offset}: {why}; this member cannot vouch for the entries it acknowledged: remove it from the cluster (kairn member remove) and add it back with an empty data directory")]
    Damaged { path: PathBuf, offset: u64, why: String },
    /// The log's metadata is unreadable.
    #[error("Raft log metadata: {0}")]
    Meta(String),
}

fn at(path: &Path) -> impl FnOnce(std::io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, its metadata in `db`. `applied` is the state
    /// machine's last applied entry: if a crash kept applied state the log had not yet
    /// made durable, the log starts after it, as if the entries up to it were purged.
    pub fn open(db: &sled::Db, dir: &Path, applied: Option<LogId<NodeId>>) -> Result<Self, OpenError> {
        let meta = db.open_tree("raft_meta")?;
        match meta.get(FORMAT)? {
            Some(found) if found.as_ref() == FORMAT_VERSION => {}
            Some(found) => {
                return Err(OpenError::Format {
                    found: String::from_utf8_lossy(&found).into_owned(),
                    expected: String::from_utf8_lossy(FORMAT_VERSION).into_owned(),
                })
            }
            None if meta.get(VOTE)?.is_none() => {
                meta.insert(FORMAT, FORMAT_VERSION)?;
            }
            None => {
                return Err(OpenError::Format {
                    found: "1 (JSON)".into(),
                    expected: String::from_utf8_lossy(FORMAT_VERSION).into_owned(),
                })
            }
        }
        std::fs::create_dir_all(dir).map_err(at(dir))?;
        let last_purged: Option<LogId<NodeId>> = match meta.get(LAST_PURGED)? {
            Some(bytes) => Some(codec::decode_framed(&bytes).map_err(|e| OpenError::Meta(e.to_string()))?),
            None => None,
        };
        let mut wal = Wal::open(dir, last_purged.map(|l| l.index), SEGMENT_BYTES)?;
        let last = wal.index.values().next_back().map(|l| l.log_id).or(last_purged);
        if applied > last {
            tracing::warn!(
                applied = applied.map(|l| l.index),
                log = last.map(|l| l.index),
                "the state machine is ahead of the Raft log after a crash; the log resumes after it"
            );
            meta.insert(
                LAST_PURGED,
                codec::encode_framed(&applied).map_err(|e| OpenError::Meta(e.to_string()))?,
            )?;
            db.flush()?;
            wal.remove_all().map_err(at(dir))?;
        }
        Ok(Self {
            db: db.clone(),
            meta,
            wal: Arc::new(Mutex::new(wal)),
        })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError<NodeId>> {
        match self.meta.get(key).map_err(read_err)? {
            Some(bytes) => Ok(Some(codec::decode_framed(&bytes).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    async fn put_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> Result<(), StorageError<NodeId>> {
        let bytes = codec::encode_framed(value).map_err(write_err)?;
        self.meta.insert(key, bytes).map_err(write_err)?;
        self.db.flush_async().await.map_err(write_err)?;
        Ok(())
    }

    fn wal(&self) -> Result<std::sync::MutexGuard<'_, Wal>, StorageError<NodeId>> {
        self.wal.lock().map_err(|_| poisoned())
    }
}

impl Wal {
    /// Reads every segment in `dir`, indexing the entries after `purged`.
    fn open(dir: &Path, purged: Option<u64>, segment_bytes: u64) -> Result<Wal, OpenError> {
        let mut names = Vec::new();
        for item in std::fs::read_dir(dir).map_err(at(dir))? {
            let item = item.map_err(at(dir))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if let Some(first) = name.strip_suffix(".log").and_then(|n| n.parse::<u64>().ok()) {
                names.push((first, item.path()));
            }
        }
        names.sort();
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            segments: BTreeMap::new(),
            index: BTreeMap::new(),
            segment_bytes,
            preallocate: true,
        };
        let count = names.len();
        let mut expected = purged.map(|p| p + 1);
        for (n, (first, path)) in names.into_iter().enumerate() {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(at(&path))?;
            let bytes = std::fs::read(&path).map_err(at(&path))?;
            let mut offset = 0u64;
            let mut allocated = bytes.len() as u64;
            while (offset as usize) < bytes.len() {
                if only_zeros_from(&bytes, offset) {
                    // The preallocated part, never written.
                    break;
                }
                match parse(&bytes, offset) {
                    Ok((entry, len)) => {
                        let index = entry.log_id.index;
                        let fresh = purged.is_none_or(|p| index > p);
                        if fresh {
                            if expected.is_some_and(|e| e != index) {
                                return Err(OpenError::Damaged {
                                    path,
                                    offset,
                                    why: format!("entry {index} follows entry {}", expected.unwrap_or(1) - 1),
                                });
                            }
                            wal.index.insert(
                                index,
                                Location {
                                    segment: first,
                                    offset,
                                    len,
                                    log_id: entry.log_id,
                                },
                            );
                            expected = Some(index + 1);
                        }
                        offset += HEADER + u64::from(len);
                    }
                    Err(why) => {
                        let last_segment = n + 1 == count;
                        if !last_segment || valid_record_after(&bytes, offset) {
                            return Err(OpenError::Damaged { path, offset, why });
                        }
                        tracing::warn!(
                            file = %path.display(),
                            offset,
                            dropped = bytes.len() as u64 - offset,
                            why,
                            "cutting off a torn write at the end of the Raft log"
                        );
                        file.set_len(offset).map_err(at(&path))?;
                        file.sync_all().map_err(at(&path))?;
                        allocated = offset;
                        break;
                    }
                }
            }
            wal.segments.insert(
                first,
                Segment {
                    path,
                    file: Arc::new(file),
                    len: offset,
                    allocated,
                },
            );
        }
        Ok(wal)
    }

    /// Deletes every segment (the log restarts empty at the next append).
    fn remove_all(&mut self) -> std::io::Result<()> {
        for segment in std::mem::take(&mut self.segments).into_values() {
            std::fs::remove_file(&segment.path)?;
        }
        self.index.clear();
        sync_dir(&self.dir)
    }

    /// Writes `entries` at the end of the log in one write (not yet durable); returns the
    /// file to sync, if there were any.
    fn write(&mut self, entries: impl IntoIterator<Item = Entry<TypeConfig>>) -> std::io::Result<Option<Arc<File>>> {
        let mut records = Vec::new();
        let mut placed = Vec::new();
        for entry in entries {
            let framed = codec::encode_framed(&entry).map_err(std::io::Error::other)?;
            let len = u32::try_from(framed.len()).map_err(|_| std::io::Error::other("a log entry over 4 GiB"))?;
            placed.push((records.len() as u64, len, *entry.get_log_id()));
            records.extend_from_slice(&len.to_be_bytes());
            records.extend_from_slice(&framed);
        }
        let Some(&(_, _, first)) = placed.first() else {
            return Ok(None);
        };
        let preallocate = self.preallocate;
        let chunk = PREALLOCATE_BYTES.min(self.segment_bytes);
        let (key, segment) = self.active(first.index)?;
        let base = segment.len;
        let refused = preallocate && segment.reserve(base + records.len() as u64, chunk).is_err();
        segment.file.write_all_at(&records, base)?;
        segment.len += records.len() as u64;
        let file = segment.file.clone();
        if refused {
            self.preallocate = false;
        }
        for (offset, len, log_id) in placed {
            self.index.insert(
                log_id.index,
                Location {
                    segment: key,
                    offset: base + offset,
                    len,
                    log_id,
                },
            );
        }
        Ok(Some(file))
    }

    /// Removes the entries from `index` on, durably.
    fn truncate(&mut self, index: u64) -> std::io::Result<()> {
        let Some(cut) = self.index.get(&index).copied() else {
            return Ok(());
        };
        self.index.split_off(&index);
        // Segments wholly after the cut go; the one holding it is cut short.
        let later: Vec<u64> = self.segments.range(cut.segment + 1..).map(|(k, _)| *k).collect();
        for key in later {
            if let Some(segment) = self.segments.remove(&key) {
                std::fs::remove_file(&segment.path)?;
            }
        }
        if let Some(segment) = self.segments.get_mut(&cut.segment) {
            segment.file.set_len(cut.offset)?;
            segment.file.sync_all()?;
            segment.len = cut.offset;
            segment.allocated = cut.offset;
        }
        sync_dir(&self.dir)
    }

    /// Forgets the entries up to `index`, deleting the segments that hold only those.
    fn purge(&mut self, index: u64) -> std::io::Result<()> {
        self.index = self.index.split_off(&(index + 1));
        // A segment goes once the next one starts at or before the first entry kept.
        let keys: Vec<u64> = self.segments.keys().copied().collect();
        let mut removed = false;
        for pair in keys.windows(2) {
            if pair[1] <= index + 1 {
                if let Some(segment) = self.segments.remove(&pair[0]) {
                    std::fs::remove_file(&segment.path)?;
                    removed = true;
                }
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The segment to append the entry at `first` to, starting a new one if needed.
    fn active(&mut self, first: u64) -> std::io::Result<(u64, &mut Segment)> {
        let start_new = match self.segments.values().next_back() {
            None => true,
            Some(s) => s.len >= self.segment_bytes,
        };
        if start_new {
            if let Some(full) = self.segments.values_mut().next_back() {
                // Give back the unused preallocated tail; a crash before this is durable
                // leaves zeros there, which opening reads as the segment's end.
                full.file.set_len(full.len)?;
                full.allocated = full.len;
            }
            let path = self.dir.join(format!("{first:020}.log"));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?;
            sync_dir(&self.dir)?;
            self.segments.insert(
                first,
                Segment {
                    path,
                    file: Arc::new(file),
                    len: 0,
                    allocated: 0,
                },
            );
        }
        let Some((key, segment)) = self.segments.iter_mut().next_back() else {
            return Err(std::io::Error::other("no active segment"));
        };
        Ok((*key, segment))
    }
}

impl Segment {
    /// Makes sure the file is allocated up to `end`, growing it by at least `chunk`.
    fn reserve(&mut self, end: u64, chunk: u64) -> std::io::Result<()> {
        if end <= self.allocated {
            return Ok(());
        }
        let target = end.max(self.allocated + chunk);
        let flags = rustix::fs::FallocateFlags::empty();
        match rustix::fs::fallocate(&*self.file, flags, self.allocated, target - self.allocated) {
            Ok(()) => {
                self.allocated = target;
                Ok(())
            }
            Err(e) => {
                // Appends still work past the end; only each sync costs more.
                tracing::warn!(file = %self.path.display(), error = %e, "the filesystem refused to preallocate the Raft log; appending without");
                Err(e.into())
            }
        }
    }
}

/// Parses the record at `offset`: the entry and the length of its framed bytes.
fn parse(bytes: &[u8], offset: u64) -> Result<(Entry<TypeConfig>, u32), String> {
    let len = record_len(bytes, offset).ok_or("a record's length is cut short")?;
    let start = (offset + HEADER) as usize;
    let body = bytes
        .get(start..start + len as usize)
        .ok_or_else(|| format!("a record of {len} bytes is cut short"))?;
    let entry = codec::decode_framed(body).map_err(|e| format!("a record is damaged: {e}"))?;
    Ok((entry, len))
}

/// The length the record at `offset` declares, if its header is whole.
fn record_len(bytes: &[u8], offset: u64) -> Option<u32> {
    let start = offset as usize;
    let header = bytes.get(start..start + HEADER as usize)?;
    header.try_into().ok().map(u32::from_be_bytes)
}

/// Whether everything from `offset` on is zeros: the never-written, preallocated end.
fn only_zeros_from(bytes: &[u8], offset: u64) -> bool {
    // A record's length is never zero, so only a zero header can start the end.
    record_len(bytes, offset).is_none_or(|len| len == 0) && bytes[offset as usize..].iter().all(|b| *b == 0)
}

/// Whether a whole, valid record follows the damaged one at `offset`: then the damage
/// is not a torn last write but lost data in the middle.
fn valid_record_after(bytes: &[u8], offset: u64) -> bool {
    record_len(bytes, offset).is_some_and(|len| parse(bytes, offset + HEADER + u64::from(len)).is_ok())
}

/// Makes a directory's entries (created, renamed or removed files) durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        // Locations under the lock, reads without it: appends go on meanwhile.
        let wanted: Vec<(Location, Arc<File>)> = {
            let wal = self.wal()?;
            wal.index
                .range(range)
                .filter_map(|(_, loc)| wal.segments.get(&loc.segment).map(|s| (*loc, s.file.clone())))
                .collect()
        };
        let mut out = Vec::with_capacity(wanted.len());
        for (loc, file) in wanted {
            let mut buf = vec![0; loc.len as usize];
            file.read_exact_at(&mut buf, loc.offset + HEADER).map_err(read_err)?;
            out.push(codec::decode_framed(&buf).map_err(|e| {
                read_err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("Raft log entry {}: {e}", loc.log_id.index),
                ))
            })?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.get_meta(LAST_PURGED)?;
        let last = self.wal()?.index.values().next_back().map(|l| l.log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.put_meta(VOTE, vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.get_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        // Not flushed on its own: losing it only means re-applying from the state machine's
        // last applied index, which is safe.
        let bytes = codec::encode_framed(&committed).map_err(write_err)?;
        self.meta.insert(COMMITTED, bytes).map_err(write_err)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let Some(file) = self.wal()?.write(entries).map_err(write_err)? else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        // Durable before acknowledging (Raft counts this node towards the quorum then).
        // openraft 0.9's core waits for this callback before it does anything else, so
        // the sync runs here, on its task: a thread to hand it to would only add two
        // wake-ups per append.
        let synced = file.sync_data();
        if let Err(e) = &synced {
            tracing::error!(error = %e, "flushing the Raft log failed");
        }
        callback.log_io_completed(synced);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.wal()?.truncate(log_id.index).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // Record the purge point first, so a crash in between never loses track of it.
        self.put_meta(LAST_PURGED, &log_id).await?;
        self.wal()?.purge(log_id.index).map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::store::types::{Op, Proposal, Txn};

    fn entry(index: u64) -> Entry<TypeConfig> {
        let txn = Txn {
            compares: vec![],
            ops: vec![Op::Put {
                key: format!("/k/{index}"),
                value: vec![7; 100],
                lease: None,
            }],
        };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal { txns: vec![txn] }),
        }
    }

    fn indexes(wal: &Wal) -> Vec<u64> {
        wal.index.keys().copied().collect()
    }

    /// Opens with 1 KiB segments, so a few entries span several files.
    fn open(dir: &Path, purged: Option<u64>) -> Result<Wal, OpenError> {
        Wal::open(dir, purged, 1024)
    }

    #[test]
    fn entries_survive_a_reopen_across_segments_truncation_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = open(dir.path(), None).unwrap();
        for i in 1..=30 {
            wal.write([entry(i)]).unwrap();
        }
        assert!(wal.segments.len() > 2, "1 KiB segments: {}", wal.segments.len());
        wal.truncate(26).unwrap();
        wal.write([entry(26), entry(27)]).unwrap();
        wal.purge(10).unwrap();
        let kept_segments = wal.segments.len();
        drop(wal);

        let wal = open(dir.path(), Some(10)).unwrap();
        assert_eq!(indexes(&wal), (11..=27).collect::<Vec<_>>());
        assert_eq!(wal.segments.len(), kept_segments, "purged segments are gone from disk");
        let first = wal.segments.keys().next().copied().unwrap();
        assert!(first <= 11, "the segment holding entry 11 is kept (starts at {first})");
    }

    #[test]
    fn a_torn_last_write_is_cut_off_and_a_damaged_middle_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = open(dir.path(), None).unwrap();
        for i in 1..=5 {
            wal.write([entry(i)]).unwrap();
        }
        let path = wal.segments.values().next_back().unwrap().path.clone();
        let good_len = wal.segments.values().next_back().unwrap().len as usize;
        drop(wal);

        // Half a record after the last one, in the preallocated zeros: cut off,
        // everything before it kept.
        let mut bytes = std::fs::read(&path).unwrap();
        let allocated = bytes.len();
        let torn = {
            let other = tempfile::tempdir().unwrap();
            let mut w = open(other.path(), None).unwrap();
            w.write([entry(6)]).unwrap();
            let record = w.segments.values().next().unwrap().len as usize;
            std::fs::read(&w.segments.values().next().unwrap().path).unwrap()[..record].to_vec()
        };
        bytes.truncate(good_len);
        bytes.extend_from_slice(&torn[..torn.len() / 2]);
        bytes.resize(allocated.max(bytes.len()), 0);
        std::fs::write(&path, &bytes).unwrap();
        let mut wal = open(dir.path(), None).unwrap();
        assert_eq!(indexes(&wal), vec![1, 2, 3, 4, 5]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len as u64);
        wal.write([entry(6)]).unwrap();
        drop(wal);
        assert_eq!(indexes(&open(dir.path(), None).unwrap()), vec![1, 2, 3, 4, 5, 6]);

        // A flipped byte in a record followed by good ones: lost data, refused by name.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let err = open(dir.path(), None).err().expect("a damaged log is refused");
        let message = err.to_string();
        assert!(
            message.contains(&path.display().to_string()) && message.contains("damaged at byte 0"),
            "{message}"
        );
    }

    #[test]
    fn appends_go_into_a_preallocated_file_whose_zeros_end_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        for i in 1..=3 {
            wal.write([entry(i)]).unwrap();
        }
        let segment = wal.segments.values().next_back().unwrap();
        let (path, len) = (segment.path.clone(), segment.len);
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(
            size >= len + PREALLOCATE_BYTES - 1024,
            "allocated ahead: {size} bytes for {len} of records"
        );
        drop(wal);

        // Reopened, the zeros are the end: the records are all there, and the next
        // append goes right after them, not after the zeros.
        let mut wal = Wal::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        assert_eq!(indexes(&wal), vec![1, 2, 3]);
        assert_eq!(wal.segments.values().next_back().unwrap().len, len);
        wal.write([entry(4)]).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            size,
            "no new allocation for a small record"
        );
        drop(wal);
        assert_eq!(
            indexes(&Wal::open(dir.path(), None, SEGMENT_BYTES).unwrap()),
            vec![1, 2, 3, 4]
        );

        // A full segment gives its unused tail back when the next one starts.
        let mut wal = open(dir.path(), None).unwrap();
        for i in 5..=40 {
            wal.write([entry(i)]).unwrap();
        }
        let segments: Vec<&Segment> = wal.segments.values().collect();
        for full in &segments[..segments.len() - 1] {
            assert_eq!(
                std::fs::metadata(&full.path).unwrap().len(),
                full.len,
                "{}",
                full.path.display()
            );
        }
        drop(wal);
        assert_eq!(indexes(&open(dir.path(), None).unwrap()), (1..=40).collect::<Vec<_>>());
    }

    #[test]
    fn a_gap_in_the_indexes_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = open(dir.path(), None).unwrap();
        wal.write([entry(1), entry(2)]).unwrap();
        wal.write([entry(4)]).unwrap();
        drop(wal);
        let err = open(dir.path(), None).err().expect("a gap is refused");
        assert!(err.to_string().contains("entry 4 follows entry 2"), "{err}");
    }
}
