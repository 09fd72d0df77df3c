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
//! - When openraft's stream then sends entries that end with the same one — same vote, same
//!   last log id — the early answer is its answer if it was a success, counted for the read
//!   lease as of when the early request was sent (an earlier time, so the lease only gets
//!   shorter). A follower that answered an AppendEntries with success held this leader's log
//!   through its last entry (it checked the entry before them and took the rest), so the same
//!   answer is true of a request that starts earlier: openraft sends the entries of several
//!   early requests in one when its stream fell behind. If openraft's request carries a newer
//!   commit index than the early one did, the follower learns it from the next request
//!   instead: openraft puts its newest in every one, and a new commit index with nothing else
//!   to send goes out on its own, at most [`COMMIT_HOLD`] later (below). A follower's commit
//!   index only tells it what it may apply; no vote or commit depends on it. Anything else
//!   is sent as openraft asks: a refusal, an error or a request for other entries never
//!   stands in for another.
//! - Only openraft's replication streams get early requests: a connection openraft made for
//!   a single heartbeat (the leadership check of linearizable reads) would only duplicate
//!   them. A stream counts as one once openraft has sent entries through it.
//! - Only entries that fit one AppendEntries go early, and a peer keeps at most
//!   [`KEPT_PER_PEER`] early requests: a stream that has moved past them drops them.
//! - A peer whose early request failed or was refused (down, partitioned, behind) is sent
//!   none until openraft's own AppendEntries to it succeeds: openraft backs off from a peer
//!   it cannot reach, and early requests must not keep calling it once per write.
//! - openraft tells each follower of every commit with an AppendEntries of its own, without
//!   entries, a moment after the commit ([`Slot::carried`]): one more round trip per write
//!   on every node, in the middle of the writers' turnaround. When such a request carries a
//!   new commit index, it waits up to [`COMMIT_HOLD`] for the next early request to that peer,
//!   which carries the same commit index (early requests carry the highest one openraft has
//!   asked to send). That request's success, sent after openraft's and under the same vote,
//!   with the follower's log matching through entries at or past openraft's `prev_log_id`,
//!   is the answer openraft's request would have had. Without one in time, it is sent as
//!   asked. A heartbeat that carries nothing new is never held.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{oneshot, watch};

use super::append_stream::AppendStream;
use super::network::{entries_bytes, PeerLink};
use super::transfer::TRANSFER_BYTES;
use crate::raft::codec;
use crate::raft::early_commit::EarlyCommit;
use crate::raft::types::{Entry, LogId, NodeId, TypeConfig, Vote};

/// Most early requests kept per peer, oldest dropped first.
const KEPT_PER_PEER: usize = 16;

/// Longest an AppendEntries that only carries a new commit index waits for an early request
/// to carry it (see the module docs); at most a quarter of its own deadline. It is also how
/// much later than openraft would a follower learns of the last commit when writes stop.
pub const COMMIT_HOLD: Duration = Duration::from_millis(5);

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

/// How many AppendEntries went early, how many of their answers openraft's stream took, and
/// how many of openraft's commit notices they carried (`raftlite_replication_early_appends_total`).
#[derive(Clone, Default)]
pub struct Counts {
    pub sent: Counter,
    pub used: Counter,
    pub carried: Counter,
    /// `Peer.AppendStream`s opened (`raftlite_replication_append_streams_opened_total`): one
    /// per follower and leadership while all is well; more when streams break.
    pub streams_opened: Counter,
}

/// One peer's early requests.
pub struct Slot {
    link: PeerLink,
    /// Where this peer's early requests go (one long-lived stream).
    stream: AppendStream,
    /// The peer's last early request failed or was refused: none goes early until openraft's
    /// own AppendEntries succeeds ([`Slot::heard`]).
    quiet: AtomicBool,
    sent: Mutex<VecDeque<Sent>>,
    committed: Arc<Mutex<Option<LogId>>>,
    /// openraft has sent entries through this connection: it is a replication stream, not
    /// one openraft made for a single heartbeat (its leadership check for reads).
    replicates: AtomicBool,
    /// The highest commit index openraft has asked to send this peer.
    told: Mutex<Option<LogId>>,
    /// The last early request this peer answered with success.
    acked: watch::Sender<Option<Acked>>,
    counts: Counts,
}

/// An early request a peer answered with success.
#[derive(Clone, Copy, Debug)]
struct Acked {
    vote: Vote,
    last: LogId,
    leader_commit: Option<LogId>,
    at: Instant,
}

struct Sent {
    vote: Vote,
    last: LogId,
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
            stream: AppendStream::new(link.client.clone(), self.counts.streams_opened.clone()),
            link,
            quiet: AtomicBool::new(false),
            sent: Mutex::new(VecDeque::new()),
            committed: self.committed.clone(),
            replicates: AtomicBool::new(false),
            told: Mutex::new(None),
            acked: watch::Sender::new(None),
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
        // Large entries go in a transfer of openraft's replication instead: an early message
        // has one heartbeat interval to be answered, and a stream whose message is late ends.
        if entries_bytes(&entries) > TRANSFER_BYTES {
            return;
        }
        let slots: Vec<Arc<Slot>> = lock(&self.slots)
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|s| s.replicates.load(Ordering::Relaxed) && !s.quiet.load(Ordering::Relaxed))
            .collect();
        if slots.is_empty() {
            return;
        }
        let leader_commit = *lock(&self.committed);
        let rpc = AppendEntriesRequest::<TypeConfig> {
            vote,
            prev_log_id: prev,
            entries,
            leader_commit,
        };
        let Ok(payload) = codec::encode(&rpc) else {
            return;
        };
        for slot in slots {
            let (tx, answer) = oneshot::channel();
            let at = Instant::now();
            slot.remember(Sent {
                vote,
                last,
                at,
                answer,
            });
            self.counts.sent.inc();
            let commit = self.commit.clone();
            let message = slot.link.envelope(payload.clone());
            // Weak: the answer is handed out by the slot's own stream.
            let answering = Arc::downgrade(&slot);
            crate::stamp!("early.call", last.index);
            slot.stream.send(
                message,
                self.ttl,
                Box::new(move |answer| {
                    crate::stamp!("early.answer", last.index);
                    let Some(slot) = answering.upgrade() else {
                        let _ = tx.send(None);
                        return;
                    };
                    let reply = answer.and_then(|m| {
                        slot.link
                            .decode_reply::<_, openraft::error::Infallible>(&m.payload)
                            .ok()
                    });
                    match reply {
                        Some(AppendEntriesResponse::Success) => {
                            commit.acked(slot.link.target, vote, last.index);
                            slot.acknowledged(Acked {
                                vote,
                                last,
                                leader_commit,
                                at,
                            });
                        }
                        _ => slot.quiet.store(true, Ordering::Relaxed),
                    }
                    let _ = tx.send(reply);
                }),
            );
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

    /// Keeps the newest of the early requests the peer answered with success.
    fn acknowledged(&self, acked: Acked) {
        self.acked.send_if_modified(|newest| {
            let newer = newest.is_none_or(|n| acked.at > n.at);
            if newer {
                *newest = Some(acked);
            }
            newer
        });
    }

    /// For openraft's AppendEntries without entries that carries a commit index not asked of
    /// this peer before (called at `called`): waits up to `hold` for an early request sent
    /// since then that carried it (see the module docs), and gives when that one was sent.
    /// `None`: send `rpc` as openraft asks (a heartbeat, entries, a quiet peer, a connection
    /// that is not a replication stream, no early request in time). The leadership check of
    /// linearizable reads sends its heartbeat on a connection of its own, never held.
    pub(super) async fn carried(
        &self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        called: Instant,
        hold: Duration,
    ) -> Option<Instant> {
        if !rpc.entries.is_empty()
            || self.quiet.load(Ordering::Relaxed)
            || !self.replicates.load(Ordering::Relaxed)
        {
            return None;
        }
        {
            let mut told = lock(&self.told);
            if rpc.leader_commit <= *told {
                return None;
            }
            *told = rpc.leader_commit;
        }
        let matched = rpc.prev_log_id.map_or(0, |p| p.index);
        let carries = |a: &Option<Acked>| {
            a.is_some_and(|a| {
                a.vote == rpc.vote
                    && a.at >= called
                    && a.last.index >= matched
                    && a.leader_commit >= rpc.leader_commit
            })
        };
        let mut acked = self.acked.subscribe();
        let found = tokio::time::timeout(hold, acked.wait_for(carries))
            .await
            .ok()?
            .ok()?
            .map(|a| a.at);
        if found.is_some() {
            self.counts.carried.inc();
        }
        found
    }

    /// openraft's own AppendEntries to this peer succeeded: it may be sent early again.
    pub(super) fn heard(&self) {
        self.quiet.store(false, Ordering::Relaxed);
    }

    /// Counts an early answer openraft's stream took.
    pub(super) fn used(&self) {
        self.counts.used.inc();
    }

    /// The early request that is the same as `rpc`, if one was sent: when it was sent and its
    /// answer to come. Early requests at or before `rpc`'s entries are dropped either way:
    /// openraft's stream has moved on to `rpc`.
    pub(super) fn take(&self, rpc: &AppendEntriesRequest<TypeConfig>) -> Option<(Instant, Answer)> {
        {
            let mut committed = lock(&self.committed);
            if rpc.leader_commit > *committed {
                *committed = rpc.leader_commit;
            }
        }
        let last = rpc.entries.last()?.log_id;
        self.replicates.store(true, Ordering::Relaxed);
        let mut kept = lock(&self.sent);
        let same = kept
            .iter()
            .position(|s| s.vote == rpc.vote && s.last == last);
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

    /// An early request sent to the slot's peer, answered with success: when it was sent.
    fn sent(slot: &Slot, rpc: &AppendEntriesRequest<TypeConfig>) -> Instant {
        let (tx, answer) = oneshot::channel();
        let _ = tx.send(Some(AppendEntriesResponse::Success));
        let at = Instant::now();
        slot.remember(Sent {
            vote: rpc.vote,
            last: rpc.entries.last().map(|e| e.log_id).unwrap_or(log_id(0)),
            at,
            answer,
        });
        at
    }

    fn no_commit() -> Arc<EarlyCommit> {
        Arc::new(EarlyCommit::new(1, Box::new(|_| {})))
    }

    /// Node 1's early replication, its commits counted nowhere.
    fn leader() -> EarlyReplication {
        EarlyReplication::new(1, Duration::from_millis(50), Counts::default(), no_commit())
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
    fn only_a_request_for_the_same_entries_takes_an_early_answer() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let early = leader();
        let slot = undialable(&early, dir.path())?;
        let mut at = Vec::new();
        for (prev, last) in [(4, 5), (5, 6), (6, 7), (7, 8), (8, 9)] {
            at.push(sent(&slot, &request(prev, last, 4)));
        }
        // Entries that end elsewhere, another vote: sent as openraft asks, and the early
        // requests up to those entries are dropped (openraft has moved past them).
        assert!(slot.take(&request(3, 4, 4)).is_none());
        let mut other_term = request(4, 5, 4);
        other_term.vote = Vote::new_committed(4, 1);
        assert!(slot.take(&other_term).is_none());
        assert!(slot.take(&request(4, 5, 4)).is_none());
        // The same entries with a newer commit index: the early answer (the follower learns
        // the commit index from a later request).
        let (sent_at, _) = slot.take(&request(5, 6, 5)).expect("the early request");
        assert_eq!(sent_at, at[1]);
        // The same entries, with an older commit index: the early answer, once.
        let mut same = request(6, 7, 5);
        same.leader_commit = Some(log_id(3));
        let (sent_at, answer) = slot.take(&same).expect("the early request");
        assert_eq!(sent_at, at[2]);
        assert!(matches!(
            answer.blocking_recv(),
            Ok(Some(AppendEntriesResponse::Success))
        ));
        assert!(slot.take(&request(6, 7, 5)).is_none());
        // The entries of two early requests in one (openraft's stream fell behind): the answer
        // of the one that ended with the same entry, whose success means the follower held the
        // log through it.
        let (sent_at, answer) = slot.take(&request(7, 9, 5)).expect("the early request");
        assert_eq!(sent_at, at[4]);
        assert!(matches!(
            answer.blocking_recv(),
            Ok(Some(AppendEntriesResponse::Success))
        ));
        assert!(slot.take(&request(7, 8, 5)).is_none());
        // A heartbeat still tells the slot the commit index openraft sends.
        let mut heartbeat = request(9, 9, 7);
        heartbeat.entries.clear();
        assert!(slot.take(&heartbeat).is_none());
        assert_eq!(*lock(&early.committed), Some(log_id(7)));
        Ok(())
    }

    #[tokio::test]
    async fn a_new_commit_index_waits_for_the_next_early_request_to_carry_it() -> anyhow::Result<()>
    {
        let dir = tempfile::tempdir()?;
        let early = leader();
        let reads_dir = tempfile::tempdir()?;
        let reads = undialable(&early, reads_dir.path())?;
        let slot = undialable(&early, dir.path())?;
        let hold = Duration::from_secs(5);
        let empty = |matched: u64, commit: u64| {
            let mut rpc = request(matched, matched, commit);
            rpc.entries.clear();
            rpc
        };
        let acked = |last: u64, commit: u64, at: Instant| {
            slot.acknowledged(Acked {
                vote: Vote::new_committed(3, 1),
                last: log_id(last),
                leader_commit: Some(log_id(commit)),
                at,
            })
        };
        // A connection that has not replicated entries (openraft's leadership check for
        // reads opens one per heartbeat) is never held; a replication stream is.
        assert_eq!(
            reads.carried(&empty(5, 5), Instant::now(), hold).await,
            None
        );
        assert!(slot.take(&request(4, 5, 4)).is_none());
        // Commit 5 is news: held until an early request sent since, through entry 6 with
        // commit 5, is answered. Answers sent before the call, or that carried commit 4 only,
        // or under another vote, do not stand in for it.
        let called = Instant::now();
        acked(6, 5, called - Duration::from_millis(1));
        let rpc = empty(5, 5);
        let held = slot.carried(&rpc, called, hold);
        tokio::pin!(held);
        let first = Instant::now();
        tokio::select! {
            _ = &mut held => anyhow::bail!("answered by an early request sent before it"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        acked(6, 4, Instant::now());
        slot.acknowledged(Acked {
            vote: Vote::new_committed(4, 1),
            last: log_id(6),
            leader_commit: Some(log_id(5)),
            at: Instant::now(),
        });
        tokio::select! {
            _ = &mut held => anyhow::bail!("answered by a request without its commit index"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        let carrier = Instant::now();
        acked(6, 5, carrier);
        assert_eq!(held.await, Some(carrier));
        assert!(first.elapsed() < hold);
        assert_eq!(early.counts.carried.get(), 1);

        // The same commit index again is a heartbeat: sent at once, never held.
        assert_eq!(slot.carried(&empty(6, 5), Instant::now(), hold).await, None);
        // A request with entries is not held either.
        assert_eq!(
            slot.carried(&request(6, 7, 6), Instant::now(), hold).await,
            None
        );
        // No early request in time: sent as asked after the hold.
        let waited = Instant::now();
        let short = Duration::from_millis(30);
        assert_eq!(slot.carried(&empty(6, 6), waited, short).await, None);
        assert!(waited.elapsed() >= short);
        // A quiet peer is sent everything at once.
        slot.quiet.store(true, Ordering::Relaxed);
        assert_eq!(slot.carried(&empty(6, 7), Instant::now(), hold).await, None);
        assert_eq!(early.counts.carried.get(), 1);
        Ok(())
    }

    #[test]
    fn only_this_leaders_own_entries_go_early() {
        let early = leader();
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
        let early = leader();
        let slot = undialable(&early, dir.path())?;
        // openraft replicates through this slot and has announced commit index 4: early
        // requests carry it.
        assert!(slot.take(&request(3, 4, 4)).is_none());
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

    #[test]
    fn only_openraft_replication_streams_are_sent_early() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let early = leader();
        let stream = undialable(&early, dir.path())?;
        let dir2 = tempfile::tempdir()?;
        let one_off = undialable(&early, dir2.path())?;
        // openraft sends entries through one, only a heartbeat through the other.
        assert!(stream.take(&request(3, 4, 4)).is_none());
        let mut heartbeat = request(4, 4, 4);
        heartbeat.entries.clear();
        assert!(one_off.take(&heartbeat).is_none());
        let rpc = request(4, 5, 4);
        early.push(rpc.vote, rpc.prev_log_id, rpc.entries);
        assert_eq!(early.counts.sent.get(), 1);
        assert!(one_off.take(&request(4, 5, 4)).is_none());
        assert!(stream.take(&request(4, 5, 4)).is_some());
        Ok(())
    }
}
