//! The Raft log on sled.
//!
//! Entries live in their own tree keyed by big-endian index, so a range scan is a log
//! range; each is framed binary ([`codec`](super::codec)) with a checksum. sled only
//! fsyncs every 500 ms on its own: every append, vote and truncation is flushed
//! explicitly before Raft is told it is durable.
//!
//! Group commit: openraft hands the log one entry per client write, and an fsync per
//! entry would cap writes at the disk's fsync rate however many clients there are. An
//! append only queues its entry's durability callback; one flusher thread takes every
//! callback queued while the previous fsync ran, fsyncs once, and completes them all.
//! Under load one fsync covers dozens of entries; alone, an entry waits for one fsync.

use std::fmt::Debug;
use std::ops::RangeBounds;

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
const FORMAT_VERSION: &[u8] = b"3";

/// Raft log storage backed by two sled trees: entries and log metadata.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    entries: sled::Tree,
    meta: sled::Tree,
    flusher: std::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
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

/// Why the log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// sled failed.
    #[error("{0}")]
    Db(#[from] sled::Error),
    /// The log was written in another format (an older Kairn).
    #[error("the Raft log is in format {found:?}, this Kairn reads format {expected:?}: it was written by another version of Kairn; start that version, or move the data directory aside to start afresh")]
    Format { found: String, expected: String },
    /// The group-commit thread could not be started.
    #[error("starting the log flusher: {0}")]
    Thread(std::io::Error),
}

impl LogStore {
    /// Opens (or creates) the log trees in `db`, refusing a log in another format.
    pub fn open(db: &sled::Db) -> Result<Self, OpenError> {
        let entries = db.open_tree("raft_log")?;
        let meta = db.open_tree("raft_meta")?;
        match meta.get(FORMAT)? {
            Some(found) if found.as_ref() == FORMAT_VERSION => {}
            Some(found) => {
                return Err(OpenError::Format {
                    found: String::from_utf8_lossy(&found).into_owned(),
                    expected: String::from_utf8_lossy(FORMAT_VERSION).into_owned(),
                })
            }
            None if entries.is_empty() && meta.get(VOTE)?.is_none() => {
                meta.insert(FORMAT, FORMAT_VERSION)?;
            }
            None => {
                return Err(OpenError::Format {
                    found: "1 (JSON)".into(),
                    expected: String::from_utf8_lossy(FORMAT_VERSION).into_owned(),
                })
            }
        }
        let flusher = spawn_flusher(db.clone()).map_err(OpenError::Thread)?;
        Ok(Self {
            db: db.clone(),
            entries,
            meta,
            flusher,
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

    fn last_entry_log_id(&self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        match self.entries.last().map_err(read_err)? {
            Some((key, bytes)) => Ok(Some(*decode_entry(&key, &bytes)?.get_log_id())),
            None => Ok(None),
        }
    }
}

/// Decodes the entry stored under `key`, naming its index when it is corrupt.
fn decode_entry(key: &[u8], bytes: &[u8]) -> Result<Entry<TypeConfig>, StorageError<NodeId>> {
    codec::decode_framed(bytes).map_err(|e| {
        let index = key.try_into().map(u64::from_be_bytes).unwrap_or_default();
        read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("Raft log entry {index}: {e}"),
        ))
    })
}

/// Starts the thread that makes appended entries durable in groups (see the module doc).
/// It ends when the last [`LogStore`] clone is dropped.
fn spawn_flusher(db: sled::Db) -> std::io::Result<std::sync::mpsc::Sender<LogFlushed<TypeConfig>>> {
    let (tx, rx) = std::sync::mpsc::channel::<LogFlushed<TypeConfig>>();
    std::thread::Builder::new()
        .name("kairn-log-flush".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut waiting = vec![first];
                waiting.extend(rx.try_iter());
                let flushed = db.flush().map(|_| ()).map_err(|e| e.to_string());
                if let Err(e) = &flushed {
                    tracing::error!(error = %e, entries = waiting.len(), "flushing the Raft log failed");
                }
                for callback in waiting {
                    callback.log_io_completed(flushed.clone().map_err(std::io::Error::other));
                }
            }
        })?;
    Ok(tx)
}

fn bound_key(b: std::ops::Bound<&u64>) -> std::ops::Bound<[u8; 8]> {
    match b {
        std::ops::Bound::Included(i) => std::ops::Bound::Included(i.to_be_bytes()),
        std::ops::Bound::Excluded(i) => std::ops::Bound::Excluded(i.to_be_bytes()),
        std::ops::Bound::Unbounded => std::ops::Bound::Unbounded,
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let range = (bound_key(range.start_bound()), bound_key(range.end_bound()));
        let mut out = Vec::new();
        for item in self.entries.range(range) {
            let (key, bytes) = item.map_err(read_err)?;
            out.push(decode_entry(&key, &bytes)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.get_meta(LAST_PURGED)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
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
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = codec::encode_framed(&entry).map_err(write_err)?;
            batch.insert(&entry.get_log_id().index.to_be_bytes(), bytes);
        }
        self.entries.apply_batch(batch).map_err(write_err)?;
        // Durable before acknowledging (Raft counts this node towards the quorum then):
        // the flusher completes the callback after an fsync that covers this batch.
        self.flusher
            .send(callback)
            .map_err(|_| write_err(std::io::Error::other("the log flusher stopped")))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut batch = sled::Batch::default();
        for item in self.entries.range(log_id.index.to_be_bytes()..) {
            let (key, _) = item.map_err(read_err)?;
            batch.remove(key);
        }
        self.entries.apply_batch(batch).map_err(write_err)?;
        self.db.flush_async().await.map_err(write_err)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // Record the purge point first, so a crash in between never loses track of it.
        self.put_meta(LAST_PURGED, &log_id).await?;
        let mut batch = sled::Batch::default();
        for item in self.entries.range(..=log_id.index.to_be_bytes()) {
            let (key, _) = item.map_err(read_err)?;
            batch.remove(key);
        }
        self.entries.apply_batch(batch).map_err(write_err)?;
        self.db.flush_async().await.map_err(write_err)?;
        Ok(())
    }
}
