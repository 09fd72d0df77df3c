//! Reads at a chosen consistency. Every level runs the query on the local read pool; they
//! differ in what the node waits for first:
//!
//! - `Stale`: nothing. The data may be arbitrarily old on a partitioned or lagging node.
//! - `Bounded { max_lag }`: the follower must have heard from the leader within three election
//!   timeouts, and its applied index must be at most `max_lag` entries behind the commit index
//!   the leader last announced. On the leader: a quorum must have acknowledged it within the
//!   same window (a leader cut off from its quorum may already have been replaced).
//! - `AtIndex(i)`: the node waits until it has applied log index `i` — pass the `log_index` a
//!   write returned to read your own writes on any node. Monotonic per client.
//! - `Linearizable`: the leader confirms with a quorum that it is still the leader (Raft read
//!   index), and the node waits until it has applied that index. Reflects every write that was
//!   acknowledged before the query started. Followers ask the leader for the index. A leader
//!   that holds its read lease (`lease.rs`: a quorum acknowledged it moments ago, so no other
//!   leader can exist yet) skips the quorum round.

use std::sync::Weak;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{Node, NodeError, NodeInner};
use crate::db::{DbError, QueryChunk, Statement};

/// How long a read may wait for the node to catch up before answering UNAVAILABLE.
const READ_WAIT: Duration = Duration::from_secs(5);
/// Rows per streamed message.
const BATCH_ROWS: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadConsistency {
    Stale,
    Bounded {
        max_lag: u64,
    },
    AtIndex(u64),
    #[default]
    Linearizable,
}

impl ReadConsistency {
    /// The level's name, as in metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::Stale => "stale",
            Self::Bounded { .. } => "bounded",
            Self::AtIndex(_) => "at_index",
            Self::Linearizable => "linearizable",
        }
    }
}

/// A linearizable read waiting for a read index, or why there is none.
pub(super) struct ReadIndexWaiter {
    pub reply: oneshot::Sender<Result<u64, String>>,
    /// Asked by a follower over the peer port: only this node's own confirmation, as leader,
    /// will do (a follower does not pass the question on).
    pub leader_only: bool,
}

/// Answers the read-index requests of linearizable reads. Each round takes every request
/// queued at that moment and gets ONE read index for all of them: on the leader, one quorum
/// confirmation (openraft's `get_read_log_id` sends a heartbeat to the followers); on a
/// follower, one `Peer.ReadIndex` call to the leader (which batches those in turn). A request
/// queued while a round runs waits for the next one, so the confirmation it gets always began
/// after it arrived — what a linearizable read needs. Under load many reads share one round.
pub(super) async fn confirm_read_indexes(
    node: Weak<NodeInner>,
    mut queue: mpsc::Receiver<ReadIndexWaiter>,
) {
    while let Some(first) = queue.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = queue.try_recv() {
            waiters.push(w);
        }
        let Some(inner) = node.upgrade() else { return };
        let leader = inner.is_leader();
        let not_leader = || format!("node {} is not the leader", inner.id);
        let result = if leader {
            // Bounded: a round that cannot finish must not hold the next ones back.
            match tokio::time::timeout(READ_WAIT, inner.raft.get_read_log_id()).await {
                // Also every write this leader answered: it answers some as soon as a quorum
                // holds them, before openraft's own count (`raft::early_commit`).
                Ok(Ok((read_log_id, _))) => Ok(read_log_id
                    .map_or(0, |l| l.index)
                    .max(inner.committed_token())),
                Ok(Err(e)) => Err(leadership_lost(&e)),
                Err(_) => Err(format!(
                    "no quorum confirmed the leadership within {READ_WAIT:?}"
                )),
            }
        } else if waiters.iter().any(|w| !w.leader_only) {
            inner.remote_read_index().await.map_err(|e| e.to_string())
        } else {
            Err(not_leader())
        };
        if leader && result.is_ok() {
            inner.metrics.read_indexes_given("quorum", waiters.len());
        }
        for w in waiters {
            let answer = if w.leader_only && !leader {
                Err(not_leader())
            } else {
                result.clone()
            };
            let _ = w.reply.send(answer);
        }
    }
}

/// Why openraft could not confirm this node's leadership, in words (its own text prints the
/// new leader's address as a Rust structure).
fn leadership_lost(
    e: &openraft::error::RaftError<
        crate::raft::types::NodeId,
        openraft::error::CheckIsLeaderError<
            crate::raft::types::NodeId,
            crate::raft::types::NodeAddr,
        >,
    >,
) -> String {
    use openraft::error::{CheckIsLeaderError, RaftError};
    match e {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => match f.leader_id {
            Some(leader) => format!("this node is no longer the leader (node {leader} is)"),
            None => "this node is no longer the leader, and no other is known yet".into(),
        },
        other => other.to_string(),
    }
}

impl NodeInner {
    /// Asks the leader for a read index over the peer port.
    async fn remote_read_index(&self) -> Result<u64, NodeError> {
        let leader = self.leader_hint().ok_or_else(|| {
            NodeError::unavailable("no leader is elected at the moment; retry", None)
        })?;
        self.peer(&leader.peer_addr)?
            .read_index(READ_WAIT, leader)
            .await
    }
}

impl Node {
    /// Records a finished query (from the request to its last row) in the read latency metrics.
    pub fn record_read(&self, consistency: ReadConsistency, elapsed: Duration) {
        self.inner.metrics.observe_read(consistency.name(), elapsed);
    }

    /// Waits as the consistency level requires, then starts the query on the read pool. Returns
    /// the applied index the query ran at and the stream of row chunks.
    pub async fn query(
        &self,
        statement: Statement,
        consistency: ReadConsistency,
        max_rows: u64,
        deadline: std::time::Instant,
    ) -> Result<(u64, mpsc::Receiver<Result<QueryChunk, DbError>>), NodeError> {
        let inner = &self.inner;
        inner.refuse_if_removed()?;
        // Waits end before the caller's deadline, so that it hears why.
        let read_wait = || {
            deadline
                .saturating_duration_since(std::time::Instant::now())
                .min(READ_WAIT)
        };
        match consistency {
            ReadConsistency::Stale => {}
            ReadConsistency::AtIndex(index) => inner.wait_applied(index, read_wait()).await?,
            ReadConsistency::Bounded { max_lag } => {
                if inner.is_leader() {
                    // One cut off from its quorum may have been replaced: the same window as a
                    // follower's, counted from the last time a quorum acknowledged it (a single
                    // voter is its own quorum, always just now).
                    let limit = inner.config.election_timeout_max * 3;
                    let left = match inner.since_quorum_ack() {
                        Some(since) if since < limit => limit - since,
                        _ => {
                            return Err(NodeError::unavailable(
                                format!("this leader has not heard from a quorum in the last {limit:?}; a bounded read cannot be served"),
                                None,
                            ))
                        }
                    };
                    // A write is answered once committed, a moment before the leader applies it.
                    // As on a follower, catching up may not outlast the window: a leader cut off
                    // just after a quorum took an entry never applies it itself, and answers
                    // UNAVAILABLE when the window ends instead of holding the read.
                    let committed = inner
                        .leader_commit
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    inner
                        .wait_applied(committed.saturating_sub(max_lag), left.min(read_wait()))
                        .await?;
                } else {
                    let (commit, heard) = *inner
                        .leader_commit
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    let limit = inner.config.election_timeout_max * 3;
                    let left = match heard {
                        Some(at) if at.elapsed() <= limit => limit - at.elapsed(),
                        _ => {
                            return Err(NodeError::unavailable(
                                format!("this node has not heard from a leader in the last {limit:?}; a bounded read cannot be served"),
                                inner.leader_hint(),
                            ))
                        }
                    };
                    // Catching up may not outlast the window: a follower cut off before the
                    // entries arrived answers UNAVAILABLE when it ends, not old data later.
                    inner
                        .wait_applied(commit.saturating_sub(max_lag), left.min(read_wait()))
                        .await?;
                }
            }
            ReadConsistency::Linearizable => {
                let index = self.queue_read_index(false).await?;
                inner.wait_applied(index, read_wait()).await?;
            }
        }
        let applied = inner.applied_index();
        Ok((
            applied,
            inner
                .db
                .reads()
                .query(statement, max_rows, BATCH_ROWS, Some(deadline))?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::error::{CheckIsLeaderError, ForwardToLeader, RaftError};

    #[test]
    fn a_lost_leadership_is_said_in_words() {
        let to = |leader_id: Option<u64>| {
            RaftError::APIError(CheckIsLeaderError::ForwardToLeader(ForwardToLeader {
                leader_id,
                leader_node: leader_id.map(|_| crate::raft::types::NodeAddr {
                    client: "127.0.0.1:7401".into(),
                    peer: "127.0.0.1:7404".into(),
                }),
            }))
        };
        assert_eq!(
            leadership_lost(&to(Some(2))),
            "this node is no longer the leader (node 2 is)"
        );
        assert!(!leadership_lost(&to(None)).contains("NodeAddr"));
    }
}
