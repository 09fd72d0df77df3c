//! Early replication: a leader sends its new entries to its followers as it appends them,
//! while its own log flush runs, instead of after it.
//!
//! openraft 0.9's core appends a leader's entries and waits for their flush before it runs the
//! next command, the one that hands them to the replication streams: every write paid the
//! leader's `fdatasync` and the follower's one after the other (about 0.2 ms of a 1.1 ms
//! one-client write here, BENCHMARKS.md "Session 14"). Raft lets a leader send entries before
//! they are on its own disk; it only must not count itself until they are, and openraft still
//! does not.
//!
//! - As the log store takes the leader's entries ([`EarlyReplication::push`]), each follower
//!   is sent an ordinary AppendEntries for them: the leader's vote (already durable: the vote
//!   is saved before a leader appends), the entry before them as `prev_log_id`, and the highest
//!   commit index openraft itself has sent (never one it has not). A follower handles it like
//!   any other, so it may refuse it (a gap, a newer term): that answer is dropped.
//! - When openraft's stream then sends the same request — same vote, same `prev_log_id`, same
//!   entries, a commit index no newer than the early one's — the early answer is its answer
//!   if it was a success, counted for the read lease as of when the early request was sent
//!   (an earlier time, so the lease only gets shorter). Anything else is sent as openraft asks:
//!   a refusal, an error or a different request never stands in for another.
//! - Only entries that fit one AppendEntries go early, and a peer keeps at most
//!   [`KEPT_PER_PEER`] early requests: a stream that has moved past them drops them.
//! - A peer whose early request failed or was refused (down, partitioned, behind) is sent
//!   none until openraft's own AppendEntries to it succeeds: openraft backs off from a peer
//!   it cannot reach, and early requests must not keep calling it once per write.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;

use super::network::{entry_bytes, PeerLink, APPEND_BYTES_LIMIT};
use crate::raft::early_commit::EarlyCommit;
use crate::raft::types::{Entry, LogId, NodeId, TypeConfig, Vote};

/// Most early requests kept per peer, oldest dropped first.
const KEPT_PER_PEER: usize = 16;

type Answer = oneshot::Receiver<Option<AppendEntriesResponse<NodeId>>>;

/// The leader's side: every peer openraft replicates to, and what may be sent early.
pub struct EarlyReplication {
    self_id: NodeId,
    /// Deadline of an early request (openraft's for AppendEntries: one heartbeat interval).
    ttl: Duration,
    /// openraft's current replication streams; a stream it dropped is gone from here too.
    slots: Mutex<Vec<Weak<Slot>>>,
    /// The highest commit index openraft has sent to any peer.
    committed: Arc<Mutex<Option<LogId>>>,
    counts: Counts,
    /// Counts the quorum from the answers (see `raft::early_commit`).
    commit: Arc<EarlyCommit>,
}

/// How many AppendEntries went early, and how many of their answers openraft's stream took
/// (`raftlite_replication_early_appends_total`).
#[derive(Clone, Default)]
pub struct Counts {
    pub sent: Counter,
    pub used: Counter,
}

/// One peer's early requests.
pub struct Slot {
    link: PeerLink,
    /// The peer's last early request failed or was refused: none goes early until openraft's
    /// own AppendEntries succeeds ([`Slot::heard`]).
    quiet: AtomicBool,
    sent: Mutex<VecDeque<Sent>>,
    committed: Arc<Mutex<Option<LogId>>>,
    counts: Counts,
}

struct Sent {
    vote: Vote,
    prev: Option<LogId>,
    last: LogId,
    count: usize,
    leader_commit: Option<LogId>,
    at: Instant,
    answer: Answer,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EarlyReplication {
    pub fn new(self_id: NodeId, ttl: Duration, counts: Counts, commit: Arc<EarlyCommit>) -> Self {
        Self {
            self_id,
            ttl,
            slots: Mutex::new(Vec::new()),
            committed: Arc::new(Mutex::new(None)),
            counts,
            commit,
        }
    }

    /// Where the leader's own flushes are counted with the answers.
    pub fn commit(&self) -> &Arc<EarlyCommit> {
        &self.commit
    }

    /// The slot of a new replication stream to `link`'s peer.
    pub(super) fn slot(&self, link: PeerLink) -> Arc<Slot> {
        let slot = Arc::new(Slot {
            link,
            quiet: AtomicBool::new(false),
            sent: Mutex::new(VecDeque::new()),
            committed: self.committed.clone(),
            counts: self.counts.clone(),
        });
        let mut slots = lock(&self.slots);
        slots.retain(|s| s.strong_count() > 0);
        slots.push(Arc::downgrade(&slot));
        slot
    }

    /// Whether `entries`, appended under `vote`, are this node's own as the leader of that
    /// vote: only those go early (a follower appends what its leader sent).
    pub fn leads(&self, vote: &Vote, entries: &[Entry]) -> bool {
        let leader = vote.leader_id();
        vote.is_committed()
            && leader.voted_for() == Some(self.self_id)
            && entries.iter().all(|e| {
                e.log_id.leader_id.term == leader.term && e.log_id.leader_id.node_id == self.self_id
            })
    }

    /// Sends `entries` (the leader's, following `prev`) to every peer now.
    pub fn push(&self, vote: Vote, prev: Option<LogId>, entries: Vec<Entry>) {
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return;
        };
        if entries.iter().map(entry_bytes).sum::<usize>() > APPEND_BYTES_LIMIT {
            return;
        }
        let slots: Vec<Arc<Slot>> = lock(&self.slots)
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|s| !s.quiet.load(Ordering::Relaxed))
            .collect();
        if slots.is_empty() {
            return;
        }
        let count = entries.len();
        let leader_commit = *lock(&self.committed);
        let rpc = Arc::new(AppendEntriesRequest::<TypeConfig> {
            vote,
            prev_log_id: prev,
            entries,
            leader_commit,
        });
        for slot in slots {
            let (tx, answer) = oneshot::channel();
            slot.remember(Sent {
                vote,
                prev,
                last,
                count,
                leader_commit,
                at: Instant::now(),
                answer,
            });
            self.counts.sent.inc();
            let (rpc, ttl, commit) = (rpc.clone(), self.ttl, self.commit.clone());
            tokio::spawn(async move {
                crate::stamp!("early.call", last.index);
                let reply = slot
                    .link
                    .call::<_, AppendEntriesResponse<NodeId>, openraft::error::Infallible>(
                        &*rpc,
                        ttl,
                        async |mut c, r| c.append_entries(r).await,
                    )
                    .await
                    .ok();
                crate::stamp!("early.answer", last.index);
                match reply {
                    Some(AppendEntriesResponse::Success) => {
                        commit.acked(slot.link.target, vote, last.index)
                    }
                    _ => slot.quiet.store(true, Ordering::Relaxed),
                }
                let _ = tx.send(reply);
            });
        }
    }
}

impl Slot {
    fn remember(&self, sent: Sent) {
        let mut kept = lock(&self.sent);
        if kept.len() == KEPT_PER_PEER {
            kept.pop_front();
        }
        kept.push_back(sent);
    }

    /// The early request that is the same as `rpc`, if one was sent: when it was sent and its
    /// answer to come. Early requests at or before `rpc`'s entries are dropped either way:
    /// openraft's stream has moved on to `rpc`.
    /// openraft's own AppendEntries to this peer succeeded: it may be sent early again.
    pub(super) fn heard(&self) {
        self.quiet.store(false, Ordering::Relaxed);
    }

    /// Counts an early answer openraft's stream took.
    pub(super) fn used(&self) {
        self.counts.used.inc();
    }

    pub(super) fn take(&self, rpc: &AppendEntriesRequest<TypeConfig>) -> Option<(Instant, Answer)> {
        {
            let mut committed = lock(&self.committed);
            if rpc.leader_commit > *committed {
                *committed = rpc.leader_commit;
            }
        }
        let last = rpc.entries.last()?.log_id;
        let mut kept = lock(&self.sent);
        let same = kept.iter().position(|s| {
            s.vote == rpc.vote
                && s.prev == rpc.prev_log_id
                && s.last == last
                && s.count == rpc.entries.len()
                && s.leader_commit >= rpc.leader_commit
        });
        let found = same.and_then(|i| kept.remove(i));
        kept.retain(|s| s.last.index > last.index);
        found.map(|s| (s.at, s.answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::identity::ClusterIdentity;
    use crate::raft::store::RaftStore;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(3, 1), index)
    }

    fn request(prev: u64, last: u64, commit: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id(prev)),
            entries: (prev + 1..=last)
                .map(|i| Entry {
                    log_id: log_id(i),
                    payload: EntryPayload::Blank,
                })
                .collect(),
            leader_commit: Some(log_id(commit)),
        }
    }

    /// An early request sent to the slot's peer, answered with success.
    fn sent(slot: &Slot, rpc: &AppendEntriesRequest<TypeConfig>) {
        let (tx, answer) = oneshot::channel();
        let _ = tx.send(Some(AppendEntriesResponse::Success));
        slot.remember(Sent {
            vote: rpc.vote,
            prev: rpc.prev_log_id,
            last: rpc.entries.last().map(|e| e.log_id).unwrap_or(log_id(0)),
            count: rpc.entries.len(),
            leader_commit: rpc.leader_commit,
            at: Instant::now(),
            answer,
        });
    }

    fn no_commit() -> Arc<EarlyCommit> {
        Arc::new(EarlyCommit::new(1, Box::new(|_| {})))
    }

    /// A slot for peer 2 that cannot be dialed.
    fn undialable(early: &EarlyReplication, dir: &std::path::Path) -> anyhow::Result<Arc<Slot>> {
        let identity = ClusterIdentity::load(RaftStore::open(dir)?)?;
        Ok(early.slot(PeerLink {
            self_id: 1,
            target: 2,
            identity: Arc::new(identity),
            client: Err("not dialed".into()),
        }))
    }

    #[test]
    fn only_the_same_request_takes_an_early_answer() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let early =
            EarlyReplication::new(1, Duration::from_millis(50), Counts::default(), no_commit());
        let slot = undialable(&early, dir.path())?;
        for (prev, last) in [(4, 5), (5, 6), (6, 7), (7, 8)] {
            sent(&slot, &request(prev, last, 4));
        }
        // Another previous entry, a newer commit index, another vote: sent as openraft asks,
        // and the early request for those entries is dropped (openraft has moved past it).
        assert!(slot.take(&request(3, 5, 4)).is_none());
        assert!(slot.take(&request(4, 5, 4)).is_none());
        assert!(slot.take(&request(5, 6, 6)).is_none());
        let mut other_term = request(6, 7, 4);
        other_term.vote = Vote::new_committed(4, 1);
        assert!(slot.take(&other_term).is_none());
        assert!(slot.take(&request(6, 7, 4)).is_none());
        // The same request, even with an older commit index: the early answer, once.
        let mut same = request(7, 8, 4);
        same.leader_commit = Some(log_id(3));
        let (_, answer) = slot.take(&same).expect("the early request");
        assert!(matches!(
            answer.blocking_recv(),
            Ok(Some(AppendEntriesResponse::Success))
        ));
        assert!(slot.take(&request(7, 8, 4)).is_none());
        // A heartbeat still tells the slot the commit index openraft sends.
        let mut heartbeat = request(8, 8, 7);
        heartbeat.entries.clear();
        assert!(slot.take(&heartbeat).is_none());
        assert_eq!(*lock(&early.committed), Some(log_id(7)));
        Ok(())
    }

    #[test]
    fn only_this_leaders_own_entries_go_early() {
        let early =
            EarlyReplication::new(1, Duration::from_millis(50), Counts::default(), no_commit());
        let ours = request(4, 5, 4).entries;
        assert!(early.leads(&Vote::new_committed(3, 1), &ours));
        // Not yet leader (vote not committed), another leader, another term.
        assert!(!early.leads(&Vote::new(3, 1), &ours));
        assert!(!early.leads(&Vote::new_committed(3, 2), &ours));
        assert!(!early.leads(&Vote::new_committed(4, 1), &ours));
    }

    #[tokio::test]
    async fn a_peer_that_failed_is_sent_nothing_early_until_openraft_reaches_it(
    ) -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let early =
            EarlyReplication::new(1, Duration::from_millis(50), Counts::default(), no_commit());
        let slot = undialable(&early, dir.path())?;
        // openraft has announced commit index 4: early requests carry it.
        let mut heartbeat = request(4, 4, 4);
        heartbeat.entries.clear();
        assert!(slot.take(&heartbeat).is_none());
        let push = |prev: u64| {
            let rpc = request(prev, prev + 1, 4);
            early.push(rpc.vote, rpc.prev_log_id, rpc.entries);
        };
        push(4);
        let (_, answer) = slot.take(&request(4, 5, 4)).expect("sent early");
        assert!(
            matches!(answer.await, Ok(None)),
            "the call cannot have succeeded"
        );
        // Failed: the next entries are not sent early to that peer.
        push(5);
        assert!(slot.take(&request(5, 6, 4)).is_none());
        assert_eq!(early.counts.sent.get(), 1);
        // openraft's own AppendEntries got through: early again.
        slot.heard();
        push(6);
        assert!(slot.take(&request(6, 7, 4)).is_some());
        assert_eq!(early.counts.sent.get(), 2);
        Ok(())
    }
}
