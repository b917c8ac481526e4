//! Writes gathered into batches: on the leader into one Raft entry, on a follower into
//! one call that hands them to the leader.
//!
//! Raft's per-entry work on the leader (its core handles one entry at a time) capped
//! writes at about 2,500/s however many clients wrote, and a follower paid one RPC per
//! write it forwarded. A queue in front of both takes every write that arrived while
//! earlier batches were in flight into the next batch, so entries and RPCs stay few and
//! the write rate rises with clients. A lone writer still goes at once: nothing waits
//! for a batch to fill.

use std::sync::Arc;

use openraft::Raft;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::leader::{self, PeerError};
use super::network::Peers;
use super::types::{Proposal, Txn, TxnResult, TypeConfig};

/// How many batches may be in flight at once. While they are, new writes queue and go
/// into the next batch together; more in flight would only make batches smaller, and
/// openraft 0.9's core syncs each batch's entry before it replicates or answers
/// anything else, so each extra entry costs a sync in series. Measured with the log
/// synced on the core's task, alternating runs (puts/s at 16/64/256 clients; API
/// creates/s, 3 members, 64 clients): 1 in flight 3,913-4,114 / 10,934-11,322 /
/// 22,074-22,220, 5,951-5,972; 2 3,874-4,158 / 10,648-11,694 / 21,243-22,612,
/// 5,963-6,265; 4 3,970-3,983 / 10,332-10,636 / 20,629-21,050, 5,506-5,786.
/// (Earlier, with a flusher thread: 2 3,887/11,318/23,903, 4 3,864/11,296/23,070,
/// 8 3,526/9,002/19,155, 16 2,763/6,773/17,522.)
const IN_FLIGHT: usize = 2;
/// How many batches a follower may have on their way to the leader at once. The leader
/// merges them into its own batches, so more of them do not mean more entries; they
/// only spare a follower's writes a wait for the previous batch's whole round trip.
/// More than needed makes batches of one and costs an RPC each. Alternating runs (API
/// creates/s on 3 members at 16 / 64 clients; store puts/s at 256 clients): 4
/// 2,494-2,676 / 5,667-6,135; 8 2,837-3,014 / 5,790-6,193; 16 2,880-3,064 /
/// 5,954-6,491, 21,275-23,507; 32 3,033-3,053 / 6,216-6,411, 21,544-21,742; 64
/// 2,821-3,048 / 6,112-6,550, 19,353-21,479. In runs of 60,000 creates at 64 clients
/// (user CPU of the bench and members): 4 6,101-6,274/s (12.4-12.9 s), 8 6,037-6,121
/// (13.0-13.2 s), 16 6,025-6,131 (13.3-13.6 s). Eight takes most of the gain at 16
/// clients for little more CPU when the machine is saturated.
const FORWARDS_IN_FLIGHT: usize = 8;
/// At most this many transactions in one batch.
const BATCH_TXNS: usize = 1024;
/// A batch stops taking more transactions once it holds this many bytes of keys and
/// values (one large transaction alone may exceed it).
const BATCH_BYTES: usize = 1 << 20;

/// Where a batch goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Into this member's Raft log, as one entry (this member leads).
    Local,
    /// To the leader at this Raft address, in one call.
    Leader(String),
}

/// Transactions waiting for a batch, and where their results go.
struct Queued {
    target: Target,
    txns: Vec<Txn>,
    reply: oneshot::Sender<Result<Vec<TxnResult>, PeerError>>,
}

/// The queue in front of Raft and of forwarding; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::UnboundedSender<Queued>,
}

impl Batcher {
    /// Starts the batcher of `raft` (for [`Target::Local`]) and `peers` (for
    /// [`Target::Leader`]); it ends when the last handle is dropped.
    pub fn new(raft: Raft<TypeConfig>, peers: Peers) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, peers, rx));
        Self { queue }
    }

    /// Commits `txn` at `target`, returning its result once it is applied there.
    pub async fn write(&self, target: Target, txn: Txn) -> Result<TxnResult, PeerError> {
        let mut results = self.write_all(target, vec![txn]).await?;
        results
            .pop()
            .ok_or_else(|| PeerError::Failed("a write returned no result".into()))
    }

    /// Commits `txns` at `target`, in order, each on its own (one failing its compares
    /// does not stop the others); returns their results.
    pub async fn write_all(&self, target: Target, txns: Vec<Txn>) -> Result<Vec<TxnResult>, PeerError> {
        let (reply, result) = oneshot::channel();
        self.queue
            .send(Queued { target, txns, reply })
            .map_err(|_| PeerError::Failed("the store is shutting down".into()))?;
        result
            .await
            .unwrap_or_else(|_| Err(PeerError::Failed("the store is shutting down".into())))
    }
}

/// Takes queued writes into batches, at most [`IN_FLIGHT`] into the local log and
/// [`FORWARDS_IN_FLIGHT`] to the leader at once.
async fn run(raft: Raft<TypeConfig>, peers: Peers, mut rx: mpsc::UnboundedReceiver<Queued>) {
    let local_slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let forward_slots = Arc::new(Semaphore::new(FORWARDS_IN_FLIGHT));
    let mut carried: Option<Queued> = None;
    loop {
        let first = match carried.take() {
            Some(q) => q,
            None => match rx.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        // Waiting for a free slot is what lets the next batch gather more writes.
        let slots = match first.target {
            Target::Local => &local_slots,
            Target::Leader(_) => &forward_slots,
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let target = first.target.clone();
        let mut bytes: usize = first.txns.iter().map(Txn::size).sum();
        let mut count = first.txns.len();
        let mut batch = vec![first];
        while count < BATCH_TXNS && bytes < BATCH_BYTES {
            match rx.try_recv() {
                // Only writes for the same place share a batch; the leader rarely moves.
                Ok(next) if next.target != target => {
                    carried = Some(next);
                    break;
                }
                Ok(next) => {
                    bytes += next.txns.iter().map(Txn::size).sum::<usize>();
                    count += next.txns.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let (raft, peers) = (raft.clone(), peers.clone());
        tokio::spawn(async move {
            send(&raft, &peers, target, batch).await;
            drop(slot);
        });
    }
}

/// Commits one batch and hands each writer its results.
async fn send(raft: &Raft<TypeConfig>, peers: &Peers, target: Target, batch: Vec<Queued>) {
    let mut txns = Vec::new();
    let mut waiting = Vec::with_capacity(batch.len());
    for q in batch {
        waiting.push((q.txns.len(), q.reply));
        txns.extend(q.txns);
    }
    let count = txns.len();
    let results = match target {
        Target::Local => leader::commit(raft, Proposal { txns }).await,
        Target::Leader(addr) => peers.write(&addr, &txns).await,
    };
    let mut results = match results {
        Ok(results) if results.len() == count => results.into_iter(),
        Ok(results) => {
            let e = PeerError::Failed(format!(
                "a batch of {count} transactions returned {} results",
                results.len()
            ));
            for (_, reply) in waiting {
                let _ = reply.send(Err(e.clone()));
            }
            return;
        }
        Err(e) => {
            for (_, reply) in waiting {
                let _ = reply.send(Err(e.clone()));
            }
            return;
        }
    };
    for (n, reply) in waiting {
        // The writer may have given up waiting: nothing to tell then.
        let _ = reply.send(Ok(results.by_ref().take(n).collect()));
    }
}
