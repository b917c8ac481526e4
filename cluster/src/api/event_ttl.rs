//! Events expire, as with kube-apiserver's `--event-ttl` (1 hour by default): every
//! Event written is attached to a store lease, and the store deletes it when the lease
//! ends. One lease serves every Event of a minute, or of a twentieth of the TTL when
//! that is shorter (kube-apiserver's etcd3 lease manager does the same), so a burst of
//! events costs one grant, and an Event lives between the TTL and that much longer.

use std::time::{Duration, Instant};

use crate::store::{LeaseId, Store, StoreError};

/// How long one lease is handed to new Events, at most.
const REUSE: Duration = Duration::from_secs(60);

/// The lease Events are attached to now.
pub struct EventLeases {
    ttl: Duration,
    reuse: Duration,
    current: tokio::sync::Mutex<Option<(LeaseId, Instant)>>,
}

impl EventLeases {
    /// Events kept for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            reuse: REUSE.min(ttl / 20),
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// The lease to attach an Event written now to, granting a new one each minute.
    pub async fn lease(&self, store: &Store) -> Result<LeaseId, StoreError> {
        let mut current = self.current.lock().await;
        if let Some((id, granted)) = *current {
            if granted.elapsed() < self.reuse {
                return Ok(id);
            }
        }
        // Whole seconds, rounded up, as etcd's lease TTLs are.
        let ttl = i64::try_from((self.ttl + self.reuse).as_secs_f64().ceil() as u64).unwrap_or(i64::MAX);
        let id = store.lease_grant(ttl).await?;
        tracing::debug!(lease = id, ttl, "granted the lease of this minute's events");
        *current = Some((id, Instant::now()));
        Ok(id)
    }

    /// Forgets the current lease (the store no longer has it).
    pub async fn forget(&self, id: LeaseId) {
        let mut current = self.current.lock().await;
        if current.is_some_and(|(c, _)| c == id) {
            *current = None;
        }
    }
}

/// Whether objects of this resource expire with the Event TTL.
pub fn expires(plural: &str) -> bool {
    plural == "events"
}
