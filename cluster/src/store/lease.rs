//! Leases with a TTL, as etcd's: keys attached to a lease are deleted when it expires
//! or is revoked (Kubernetes attaches Events to one, so they go after `--event-ttl`).
//!
//! Grants, attachments and revocations go through Raft like any write. Expiry does not:
//! only the leader keeps deadlines, in memory, renewed by keep-alives sent to it, and it
//! proposes a revocation when one passes. A member that becomes leader starts every
//! lease afresh with its whole TTL, as etcd's lessor does on promotion: it cannot know
//! when the old leader last saw a keep-alive, and a lease lasting a little longer is
//! safe where one ending early is not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::Raft;
use tokio::time::Instant;

use super::batch::{Batcher, Target};
use super::leader::PeerError;
use super::state_machine::StateMachine;
use super::types::{LeaseId, NodeId, Op, Txn, TypeConfig};

/// How often the leader looks for expired leases.
const TICK: Duration = Duration::from_millis(250);
/// How long a proposed revocation is given before it is proposed again.
const REVOKE_RETRY: Duration = Duration::from_secs(5);

/// The leader's lease deadlines; cheap to clone.
#[derive(Clone)]
pub struct Lessor {
    state: Arc<Mutex<Deadlines>>,
    sm: StateMachine,
}

#[derive(Default)]
struct Deadlines {
    /// Whether this member led at the last tick (deadlines are kept only then).
    leading: bool,
    /// The state machine's lease generation the deadlines were last synced with.
    generation: u64,
    /// When each lease expires unless renewed.
    at: HashMap<LeaseId, Instant>,
    /// Revocations proposed and not yet applied, with when.
    revoking: HashMap<LeaseId, Instant>,
}

impl Lessor {
    /// Starts the expiry loop of member `me`; it ends when `raft` shuts down.
    pub fn start(me: NodeId, raft: Raft<TypeConfig>, sm: StateMachine, batcher: Batcher) -> Self {
        let lessor = Lessor {
            state: Arc::default(),
            sm,
        };
        tokio::spawn(lessor.clone().run(me, raft, batcher));
        lessor
    }

    /// Renews lease `id` for its whole TTL; returns the TTL, or `None` if there is no
    /// such lease. Only the leader keeps deadlines.
    pub fn keep_alive(&self, id: LeaseId) -> Result<Option<i64>, PeerError> {
        let Some(ttl) = self.sm.lease_ttl(id).map_err(|e| PeerError::Failed(e.to_string()))? else {
            return Ok(None);
        };
        let mut state = self
            .state
            .lock()
            .map_err(|_| PeerError::Failed("lessor lock poisoned".into()))?;
        if !state.leading {
            return Err(PeerError::NotLeader {
                leader: None,
                addr: None,
            });
        }
        state.at.insert(id, Instant::now() + ttl_duration(ttl));
        Ok(Some(ttl))
    }

    async fn run(self, me: NodeId, raft: Raft<TypeConfig>, batcher: Batcher) {
        // Ticks only: Raft's metrics change with every commit, far too often to wake on.
        let metrics = raft.metrics();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tick.tick().await;
            if metrics.has_changed().is_err() {
                // Raft has shut down.
                return;
            }
            let leading = {
                let m = metrics.borrow();
                m.current_leader == Some(me) && m.state.is_leader()
            };
            for id in self.expired(leading) {
                let batcher = batcher.clone();
                tokio::spawn(async move {
                    let revoke = Txn {
                        compares: vec![],
                        ops: vec![Op::LeaseRevoke { id }],
                    };
                    match batcher.write(Target::Local, revoke).await {
                        Ok(_) => tracing::info!(lease = id, "lease expired and revoked"),
                        Err(e) => tracing::debug!(lease = id, error = %e, "revoking an expired lease"),
                    }
                });
            }
        }
    }

    /// Brings the deadlines up to date and returns the leases to revoke now.
    fn expired(&self, leading: bool) -> Vec<LeaseId> {
        let Ok(mut state) = self.state.lock() else {
            return vec![];
        };
        let now = Instant::now();
        if !leading {
            *state = Deadlines::default();
            return vec![];
        }
        let generation = self.sm.lease_generation();
        if !state.leading || state.generation != generation {
            // Newly leading, or leases granted or revoked since: every lease not yet
            // tracked starts with its whole TTL; revoked ones are forgotten.
            let Ok(leases) = self.sm.leases() else { return vec![] };
            state.at.retain(|id, _| leases.contains_key(id));
            state.revoking.retain(|id, _| leases.contains_key(id));
            for (id, ttl) in leases {
                state.at.entry(id).or_insert(now + ttl_duration(ttl));
            }
            state.leading = true;
            state.generation = generation;
        }
        let due: Vec<LeaseId> = state
            .at
            .iter()
            .filter(|(id, at)| **at <= now && state.revoking.get(id).is_none_or(|t| now >= *t + REVOKE_RETRY))
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            state.revoking.insert(*id, now);
        }
        due
    }
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}
