//! Watch fan-out: a bounded in-memory history of recent entries plus a broadcast channel.
//!
//! Every transaction that moves the revision on is published once, with the events it
//! caused. A watcher of a key prefix sees each revision and the events under its prefix,
//! so it always knows how far the store has got even when nothing it watches changed
//! (the API server's watch cache relies on that to serve consistent reads).
//!
//! A watcher asks for every entry after revision R. If R is older than what the history
//! still holds (or older than this process's start), the watch is refused as expired and
//! the client relists, exactly as with etcd's compaction and kube-apiserver's 410 Gone.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::types::Event;
use super::StoreError;

/// How many events the history keeps before the oldest revisions become "too old".
const HISTORY: usize = 10_000;
/// How many entries a watcher may fall behind before it is told to relist.
const CHANNEL: usize = 16_384;

/// One applied transaction and the events it caused.
#[derive(Debug)]
pub struct Applied {
    /// The transaction's revision.
    pub revision: u64,
    /// The changes, in order.
    pub events: Vec<Arc<Event>>,
}

/// Shared by the state machine (which publishes) and the store (which subscribes).
pub(crate) struct WatchHub {
    inner: Mutex<History>,
    tx: broadcast::Sender<Arc<Applied>>,
}

struct History {
    entries: VecDeque<Arc<Applied>>,
    /// Events held in `entries`.
    events: usize,
    /// Every entry with a revision above `floor` is in `entries`.
    floor: u64,
    /// The revision of the newest published entry.
    last: u64,
}

impl WatchHub {
    /// A hub whose history starts at `revision` (events before it are unknown).
    pub(crate) fn new(revision: u64) -> Self {
        let (tx, _) = broadcast::channel(CHANNEL);
        Self {
            inner: Mutex::new(History {
                entries: VecDeque::new(),
                events: 0,
                floor: revision,
                last: revision,
            }),
            tx,
        }
    }

    /// Records and fans out one applied entry.
    pub(crate) fn publish(&self, revision: u64, events: Vec<Event>) {
        let Ok(mut h) = self.inner.lock() else { return };
        let applied = Arc::new(Applied {
            revision,
            events: events.into_iter().map(Arc::new).collect(),
        });
        h.last = h.last.max(revision);
        if !applied.events.is_empty() {
            h.events += applied.events.len();
            h.entries.push_back(applied.clone());
        }
        // No receivers is not an error: nobody is watching.
        let _ = self.tx.send(applied);
        // Always keep the newest entry, even when it alone exceeds the bound.
        while h.events > HISTORY && h.entries.len() > 1 {
            let Some(old) = h.entries.pop_front() else { break };
            h.events -= old.events.len();
            h.floor = old.revision;
        }
    }

    /// Forgets all history: after a snapshot install, older revisions are unknowable.
    pub(crate) fn reset(&self, revision: u64) {
        if let Ok(mut h) = self.inner.lock() {
            h.entries.clear();
            h.events = 0;
            h.floor = revision;
            h.last = revision;
        }
    }

    /// Starts a watch of keys under `prefix` for entries after `after`.
    pub(crate) fn watch(&self, prefix: &str, after: u64) -> Result<WatchStream, StoreError> {
        let h = self.inner.lock().map_err(|_| StoreError::Poisoned)?;
        if after < h.floor {
            return Err(StoreError::Expired {
                requested: after,
                oldest: h.floor,
            });
        }
        let mut backlog: VecDeque<Arc<Applied>> = h.entries.iter().filter(|e| e.revision > after).cloned().collect();
        // Entries without events are not kept; say how far the store got all the same.
        if h.last > backlog.back().map_or(after, |e| e.revision) {
            backlog.push_back(Arc::new(Applied {
                revision: h.last,
                events: Vec::new(),
            }));
        }
        // Subscribed under the lock: no entry falls between backlog and live stream.
        let rx = self.tx.subscribe();
        Ok(WatchStream {
            prefix: prefix.to_string(),
            backlog,
            rx,
            after,
        })
    }
}

/// What a watcher sees of one applied entry: its revision and the events under the
/// watched prefix (often none).
#[derive(Debug, Clone)]
pub struct Watched {
    /// The transaction's revision: the store has applied everything up to here.
    pub revision: u64,
    /// The transaction's events under the watched prefix.
    pub events: Vec<Arc<Event>>,
}

/// A stream of entries, filtered to one key prefix.
pub struct WatchStream {
    prefix: String,
    backlog: VecDeque<Arc<Applied>>,
    rx: broadcast::Receiver<Arc<Applied>>,
    after: u64,
}

impl WatchStream {
    fn filter(&mut self, applied: &Applied) -> Watched {
        self.after = applied.revision;
        Watched {
            revision: applied.revision,
            events: applied
                .events
                .iter()
                .filter(|e| e.kv.key.starts_with(&self.prefix))
                .cloned()
                .collect(),
        }
    }

    /// The next entry; `None` when the store shut down, `Err(Expired)` if this watcher
    /// fell so far behind that entries were lost (the client must relist).
    pub async fn next(&mut self) -> Option<Result<Watched, StoreError>> {
        if let Some(applied) = self.backlog.pop_front() {
            return Some(Ok(self.filter(&applied)));
        }
        loop {
            match self.rx.recv().await {
                // Entries already replayed from the backlog may arrive again live.
                Ok(applied) if applied.revision <= self.after => continue,
                Ok(applied) => return Some(Ok(self.filter(&applied))),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    return Some(Err(StoreError::Expired {
                        requested: self.after,
                        oldest: self.after + 1,
                    }))
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next entry that has events under the prefix (skipping pure progress).
    pub async fn next_events(&mut self) -> Option<Result<Watched, StoreError>> {
        loop {
            match self.next().await? {
                Ok(w) if w.events.is_empty() => continue,
                other => return Some(other),
            }
        }
    }
}
