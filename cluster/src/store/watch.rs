//! Watch fan-out: a bounded in-memory history of recent events plus a broadcast channel.
//!
//! A watcher asks for every event after revision R. If R is older than what the history
//! still holds (or older than this process's start), the watch is refused as expired and
//! the client relists, exactly as with etcd's compaction and kube-apiserver's 410 Gone.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::types::Event;
use super::StoreError;

/// How many events the history keeps before the oldest revisions become "too old".
const HISTORY: usize = 10_000;

/// Shared by the state machine (which publishes) and the store (which subscribes).
pub(crate) struct WatchHub {
    inner: Mutex<History>,
    tx: broadcast::Sender<Arc<Event>>,
}

struct History {
    events: VecDeque<Arc<Event>>,
    /// Every event with a revision above `floor` is in `events`.
    floor: u64,
}

impl WatchHub {
    /// A hub whose history starts at `revision` (events before it are unknown).
    pub(crate) fn new(revision: u64) -> Self {
        let (tx, _) = broadcast::channel(HISTORY);
        Self {
            inner: Mutex::new(History {
                events: VecDeque::new(),
                floor: revision,
            }),
            tx,
        }
    }

    /// Records and fans out the events of one applied entry.
    pub(crate) fn publish(&self, events: Vec<Event>) {
        let Ok(mut h) = self.inner.lock() else { return };
        for ev in events {
            let ev = Arc::new(ev);
            h.events.push_back(ev.clone());
            // No receivers is not an error: nobody is watching.
            let _ = self.tx.send(ev);
        }
        while h.events.len() > HISTORY {
            let Some(old) = h.events.pop_front() else {
                break;
            };
            // Drop the whole revision, so `floor` stays a clean boundary.
            while h
                .events
                .front()
                .is_some_and(|e| e.kv.mod_revision == old.kv.mod_revision)
            {
                h.events.pop_front();
            }
            h.floor = old.kv.mod_revision;
        }
    }

    /// Forgets all history: after a snapshot install, older revisions are unknowable.
    pub(crate) fn reset(&self, revision: u64) {
        if let Ok(mut h) = self.inner.lock() {
            h.events.clear();
            h.floor = revision;
        }
    }

    /// Starts a watch of keys under `prefix` for events after `after`.
    pub(crate) fn watch(&self, prefix: &str, after: u64) -> Result<WatchStream, StoreError> {
        let h = self.inner.lock().map_err(|_| StoreError::Poisoned)?;
        if after < h.floor {
            return Err(StoreError::Expired {
                requested: after,
                oldest: h.floor,
            });
        }
        let backlog = h
            .events
            .iter()
            .filter(|e| e.kv.mod_revision > after && e.kv.key.starts_with(prefix))
            .cloned()
            .collect();
        // Subscribed under the lock: no event falls between backlog and live stream.
        let rx = self.tx.subscribe();
        Ok(WatchStream {
            prefix: prefix.to_string(),
            backlog,
            rx,
            after,
        })
    }
}

/// A stream of events under one key prefix.
pub struct WatchStream {
    prefix: String,
    backlog: VecDeque<Arc<Event>>,
    rx: broadcast::Receiver<Arc<Event>>,
    after: u64,
}

impl WatchStream {
    /// The next event; `None` when the store shut down, `Err(Expired)` if this watcher
    /// fell so far behind that events were lost (the client must relist).
    pub async fn next(&mut self) -> Option<Result<Arc<Event>, StoreError>> {
        if let Some(ev) = self.backlog.pop_front() {
            self.after = ev.kv.mod_revision;
            return Some(Ok(ev));
        }
        loop {
            match self.rx.recv().await {
                Ok(ev) => {
                    // Events already replayed from the backlog may arrive again live.
                    if ev.kv.mod_revision <= self.after || !ev.kv.key.starts_with(&self.prefix) {
                        continue;
                    }
                    return Some(Ok(ev));
                }
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
}
