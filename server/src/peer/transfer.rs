//! Transfers: an AppendEntries whose entries are too large to be sure of reaching a follower
//! within one of openraft's calls.
//!
//! openraft 0.9 gives every AppendEntries one heartbeat interval (100 ms by default) and drops
//! the call when it runs out, then sends the same entries again. Entries that take longer
//! than that to cross the network and reach the follower's disk (a 60 MB value here; a few
//! MB on a slow link) were sent again and again from the start and never arrived: the
//! follower stayed behind for good, and with two of them the cluster could commit nothing.
//!
//! So entries of more than [`TRANSFER_BYTES`] travel in a call of their own, a task that
//! outlives openraft's call, with time for its size ([`transfer_time`]):
//! - openraft's call waits for it for its own budget, and, if it is not done, returns an error
//!   that openraft answers by sending again; that next call finds the transfer under way and
//!   waits for it again instead of starting over. Progress survives each of openraft's calls.
//! - A call that continues the transfer (same vote, same entry before them, ending at or after
//!   the transfer's last entry: openraft adds the entries appended meanwhile) joins it; on
//!   success it answers `PartialSuccess` up to what the transfer carried, and openraft sends
//!   the rest next. Any other call ends the transfer (a new vote, a follower that refused, a
//!   different starting point).
//! - At most one part of [`APPEND_BYTES_LIMIT`] (or one entry larger than that) per transfer,
//!   so one transfer holds at most one entry batch in memory per follower.
//! - While a transfer is under way, each of openraft's calls that waits for it also sends the
//!   follower an AppendEntries without entries (after the same entry, the commit index no
//!   further than it): the follower keeps hearing from its leader and does not start an
//!   election while megabytes travel, and the leader keeps counting it for its lease.

use std::time::{Duration, Instant};

use openraft::error::{NetworkError, RPCError, RaftError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use tokio::sync::oneshot;

use super::network::{PeerError, PeerLink};
use crate::raft::types::{LogId, NodeAddr, NodeId, TypeConfig, Vote};

/// Entries of more than this many bytes go in a transfer: at 1 Gbit/s 1 MiB takes 8 ms, well
/// inside a heartbeat interval, so smaller ones keep openraft's call (and early replication).
pub(super) const TRANSFER_BYTES: usize = 1 << 20;

/// The slowest rate a transfer is given time for (4 MiB/s), on top of one heartbeat interval.
const SLOWEST_BYTES_PER_SEC: u64 = 4 << 20;

/// What a transfer's call may take: one heartbeat interval plus its bytes at
/// [`SLOWEST_BYTES_PER_SEC`] (a 64 MiB entry: 16 s).
pub(super) fn transfer_time(heartbeat: Duration, bytes: usize) -> Duration {
    heartbeat + Duration::from_millis(bytes as u64 * 1000 / SLOWEST_BYTES_PER_SEC)
}

type Reply = Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>>;

/// One transfer to one follower.
pub(super) struct Transfer {
    target: NodeId,
    vote: Vote,
    prev: Option<LogId>,
    last: LogId,
    /// When its request left: a success counts for the lease as of then.
    pub(super) sent: Instant,
    done: oneshot::Receiver<Reply>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Transfer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a wait for a transfer ended.
pub(super) enum Waited {
    /// Its answer; `Success` is `PartialSuccess` when the call asked for more than it carried.
    Answer(Reply),
    /// Not done within the call's budget: openraft is to send again.
    Pending(RPCError<NodeId, NodeAddr, RaftError<NodeId>>),
}

impl Transfer {
    /// Starts sending the first part of `rpc` (see the module docs) to `link`'s peer.
    pub(super) fn start(
        link: &PeerLink,
        rpc: AppendEntriesRequest<TypeConfig>,
        heartbeat: Duration,
    ) -> Option<Self> {
        let part = super::network::split_append(rpc, super::network::APPEND_BYTES_LIMIT)
            .into_iter()
            .next()?;
        let last = part.entries.last()?.log_id;
        let bytes = super::network::entries_bytes(&part.entries);
        let (vote, prev) = (part.vote, part.prev_log_id);
        let (tx, done) = oneshot::channel();
        let target = link.target;
        let link = link.clone();
        let time = transfer_time(heartbeat, bytes);
        let task = tokio::spawn(async move {
            let reply = link
                .call(&part, time, async |mut c, r| c.append_entries(r).await)
                .await;
            let _ = tx.send(reply);
        });
        Some(Transfer {
            target,
            vote,
            prev,
            last,
            sent: Instant::now(),
            done,
            task,
        })
    }

    /// Whether `rpc` continues this transfer: the same vote and starting point, and it ends at
    /// or after the transfer's last entry.
    pub(super) fn continued_by(&self, rpc: &AppendEntriesRequest<TypeConfig>) -> bool {
        rpc.vote == self.vote
            && rpc.prev_log_id == self.prev
            && rpc.entries.last().is_some_and(|e| e.log_id >= self.last)
    }

    /// Whether `rpc` ends this transfer: it is under another vote, or carries entries and does
    /// not continue it (an entry-less heartbeat leaves it be).
    pub(super) fn ended_by(&self, rpc: &AppendEntriesRequest<TypeConfig>) -> bool {
        rpc.vote != self.vote || !(rpc.entries.is_empty() || self.continued_by(rpc))
    }

    /// Waits up to `budget` for the answer to the transfer that a call asking for entries up
    /// to `asked` continues.
    pub(super) async fn wait(&mut self, asked: Option<LogId>, budget: Duration) -> Waited {
        let reply = match tokio::time::timeout(budget, &mut self.done).await {
            Ok(Ok(reply)) => reply,
            // The task ended without an answer (it panicked or was aborted): an answer all the
            // same, a failure, so that the caller drops it and the next call starts anew.
            Ok(Err(_)) => {
                return Waited::Answer(Err(RPCError::Network(NetworkError::new(&PeerError(
                    "the transfer stopped without an answer".into(),
                )))))
            }
            Err(_) => {
                return Waited::Pending(RPCError::Network(NetworkError::new(&PeerError(format!(
                    "still sending entries up to {} to node {} (sent {} ms ago)",
                    self.last,
                    self.target,
                    self.sent.elapsed().as_millis()
                )))))
            }
        };
        Waited::Answer(reply.map(|r| match r {
            AppendEntriesResponse::Success if asked != Some(self.last) => {
                AppendEntriesResponse::PartialSuccess(Some(self.last))
            }
            other => other,
        }))
    }

    /// The entry-less AppendEntries that keeps the follower hearing from its leader while the
    /// transfer is under way: after the same entry, committing no further than it.
    pub(super) fn heartbeat(
        &self,
        leader_commit: Option<LogId>,
    ) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: self.vote,
            prev_log_id: self.prev,
            entries: Vec::new(),
            leader_commit: leader_commit.min(self.prev),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cluster::identity::ClusterIdentity;
    use crate::raft::store::RaftStore;
    use crate::raft::types::{Command, Entry};
    use openraft::{CommittedLeaderId, EntryPayload};

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn request(term: u64, prev: u64, last: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(term, 1),
            prev_log_id: Some(log_id(term, prev)),
            entries: (prev + 1..=last)
                .map(|i| Entry {
                    log_id: log_id(term, i),
                    payload: EntryPayload::Normal(Command::Delta(bytes::Bytes::from(vec![
                        0u8;
                        16
                    ]))),
                })
                .collect(),
            leader_commit: Some(log_id(term, last)),
        }
    }

    #[test]
    fn a_transfer_gets_time_for_its_size() {
        let beat = Duration::from_millis(100);
        assert_eq!(transfer_time(beat, 0), beat);
        assert_eq!(
            transfer_time(beat, 64 << 20),
            beat + Duration::from_secs(16)
        );
    }

    /// Only a call under the same vote, after the same entry and asking for at least as much
    /// continues a transfer; its heartbeat commits no further than the entry before it; and a
    /// transfer whose call failed answers every call that waits for it with that failure.
    #[tokio::test]
    async fn a_transfer_is_continued_only_by_calls_that_extend_it() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let link = PeerLink {
            self_id: 1,
            target: 2,
            identity: Arc::new(ClusterIdentity::load(RaftStore::open(dir.path())?)?),
            client: Err("not dialed".into()),
        };
        let mut transfer =
            Transfer::start(&link, request(3, 9, 12), Duration::from_millis(100)).expect("entries");
        assert!(transfer.continued_by(&request(3, 9, 12)));
        assert!(
            transfer.continued_by(&request(3, 9, 14)),
            "with entries appended since"
        );
        assert!(!transfer.continued_by(&request(3, 9, 11)), "asks for less");
        assert!(
            !transfer.continued_by(&request(3, 8, 12)),
            "starts elsewhere"
        );
        assert!(!transfer.continued_by(&request(4, 9, 12)), "another vote");
        let beat = transfer.heartbeat(Some(log_id(3, 14)));
        assert!(beat.entries.is_empty());
        assert_eq!(beat.prev_log_id, Some(log_id(3, 9)));
        assert_eq!(beat.leader_commit, Some(log_id(3, 9)));
        match transfer
            .wait(Some(log_id(3, 12)), Duration::from_secs(5))
            .await
        {
            Waited::Answer(Err(RPCError::Unreachable(_))) => {}
            Waited::Answer(other) => panic!("expected the call's failure, got {other:?}"),
            Waited::Pending(e) => panic!("the failed call is an answer, not pending: {e}"),
        }
        // A task that ends without an answer (here aborted before it ran) is a failure too,
        // never a transfer pending for good.
        let mut stopped =
            Transfer::start(&link, request(3, 9, 12), Duration::from_millis(100)).expect("entries");
        stopped.task.abort();
        match stopped
            .wait(Some(log_id(3, 12)), Duration::from_secs(5))
            .await
        {
            Waited::Answer(Err(RPCError::Network(_))) => {}
            Waited::Answer(other) => panic!("expected a failure, got {other:?}"),
            Waited::Pending(e) => panic!("a stopped transfer is not pending: {e}"),
        }
        Ok(())
    }
}
