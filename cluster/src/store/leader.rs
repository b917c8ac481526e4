//! What only the leader can do: commit a write, hand out a read index, change the
//! membership. Each runs on the leader's own Raft with a deadline, and its failure says
//! which of the two things went wrong that a client must tell apart: this member is
//! not the leader (retry at the leader it names), or there is no quorum (nobody can
//! commit now; retry later). Followers reach these through the RPC service.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft};
use serde::{Deserialize, Serialize};

use super::types::{NodeId, Proposal, TxnResult, TypeConfig};

/// How long a write may take to commit before the caller is told there is no quorum.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long confirming leadership for a read may take.
pub const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a membership change may take (a new member first catches up).
pub const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the leader's part of an operation failed; travels between members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PeerError {
    /// The member asked is not the leader; `addr` is the leader's Raft address if known.
    #[error("not the leader{}", leader_hint(.leader, .addr))]
    NotLeader {
        /// The leader's id, if known.
        leader: Option<NodeId>,
        /// The leader's Raft address, if known.
        addr: Option<String>,
    },
    /// No quorum answered in time: the operation may or may not take effect later.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// The operation was refused or failed for another reason.
    #[error("{0}")]
    Failed(String),
}

fn leader_hint(leader: &Option<NodeId>, addr: &Option<String>) -> String {
    match (leader, addr) {
        (Some(id), Some(addr)) => format!(": retry at member {id} ({addr})"),
        (Some(id), None) => format!(": retry at member {id}"),
        _ => ": no leader is known".into(),
    }
}

impl PeerError {
    fn forward(f: ForwardToLeader<NodeId, BasicNode>) -> Self {
        PeerError::NotLeader {
            leader: f.leader_id,
            addr: f.leader_node.map(|n| n.addr),
        }
    }
}

/// A membership change a member asks the leader for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// Add a member that replicates and serves reads but does not vote.
    AddLearner { id: NodeId, addr: String },
    /// Add a member that votes: it joins as a learner, catches up, then becomes a voter.
    AddVoter { id: NodeId, addr: String },
    /// Remove a member (voter or learner).
    Remove { id: NodeId },
}

/// Commits one proposal through Raft on this member, which must lead.
pub async fn commit(raft: &Raft<TypeConfig>, proposal: Proposal) -> Result<Vec<TxnResult>, PeerError> {
    match tokio::time::timeout(WRITE_TIMEOUT, raft.client_write(proposal)).await {
        Ok(Ok(resp)) => Ok(resp.data.0),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => Err(PeerError::forward(f)),
        Ok(Err(e)) => Err(PeerError::Failed(e.to_string())),
        Err(_) => Err(PeerError::NoQuorum(format!(
            "the write was not committed within {}s (it may still be applied)",
            WRITE_TIMEOUT.as_secs()
        ))),
    }
}

/// Confirms with a quorum that this member leads, and returns the index a linearizable
/// read must see applied.
///
/// openraft gives each follower one heartbeat interval to answer a leadership check, so
/// a follower busy with a burst of appends makes one check fail though the quorum is
/// there: such a failure is retried until the deadline, and only then reported.
pub async fn read_index(raft: &Raft<TypeConfig>) -> Result<u64, PeerError> {
    let deadline = tokio::time::Instant::now() + READ_INDEX_TIMEOUT;
    let mut pause = Duration::from_millis(5);
    loop {
        let last_failure = match tokio::time::timeout_at(deadline, raft.get_read_log_id()).await {
            Ok(Ok((read, _applied))) => return Ok(read.map(|l| l.index).unwrap_or(0)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => return Err(PeerError::forward(f)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => q.to_string(),
            Ok(Err(e)) => return Err(PeerError::Failed(e.to_string())),
            Err(_) => format!(
                "leadership was not confirmed by a quorum within {}s",
                READ_INDEX_TIMEOUT.as_secs()
            ),
        };
        if tokio::time::Instant::now() + pause >= deadline {
            return Err(PeerError::NoQuorum(last_failure));
        }
        tracing::debug!(reason = %last_failure, "leadership check failed; retrying");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

fn change_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> PeerError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => PeerError::forward(f),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(p))) => {
            PeerError::Failed(format!("another membership change is in progress: {p}"))
        }
        other => PeerError::Failed(other.to_string()),
    }
}

/// Applies a membership change on this member, which must lead.
pub async fn change_members(raft: &Raft<TypeConfig>, change: MemberChange) -> Result<(), PeerError> {
    let run = async {
        match change {
            MemberChange::AddLearner { id, addr } => {
                raft.add_learner(id, BasicNode { addr }, true)
                    .await
                    .map_err(change_error)?;
            }
            MemberChange::AddVoter { id, addr } => {
                let known = raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .get_node(&id)
                    .is_some();
                if !known {
                    // Blocks until the learner has caught up, so the voter set never waits on it.
                    raft.add_learner(id, BasicNode { addr }, true)
                        .await
                        .map_err(change_error)?;
                }
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(change_error)?;
            }
            MemberChange::Remove { id } => {
                let is_voter = raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == id);
                if is_voter {
                    raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                        .await
                        .map_err(change_error)?;
                }
                raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                    .await
                    .map_err(change_error)?;
            }
        }
        Ok(())
    };
    match tokio::time::timeout(CHANGE_TIMEOUT, run).await {
        Ok(result) => result,
        Err(_) => Err(PeerError::NoQuorum(format!(
            "the membership change did not complete within {}s",
            CHANGE_TIMEOUT.as_secs()
        ))),
    }
}

/// The initial members of a cluster formed from `--peers`.
pub fn initial_members(peers: &BTreeMap<NodeId, String>) -> BTreeMap<NodeId, BasicNode> {
    peers
        .iter()
        .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
        .collect()
}
