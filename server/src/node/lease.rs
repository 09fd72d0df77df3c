//! The leader's read lease: a linearizable read served without a quorum round.
//!
//! A read index normally costs a heartbeat to the followers and their answers
//! (`reads::confirm_read_indexes`). A leader that a quorum acknowledged very recently can skip
//! it, because no other leader can have been elected since:
//!
//! - A follower that accepted an AppendEntries (a heartbeat is one) refuses to vote for anyone
//!   else for a leader lease (openraft: the maximum election timeout), and it does not start an
//!   election of its own within that time either (pre-vote and openraft's timer). Counted from
//!   when it *received* the message, which is after the leader *sent* it.
//! - A restart must not shorten that: openraft forgets when it last heard from a leader, so a
//!   node answers vote requests (`Node::before_vote`) and pre-votes, and opens its own election
//!   gate, only a lease after it started (`prevote.rs`).
//! - So if a quorum of voters accepted messages the leader sent at or after `t`, every quorum
//!   that could elect someone else contains one of them, and no candidate can win before
//!   `t + election_timeout_max`. The lease lasts until `t + election_timeout_min / 2`, by this
//!   node's monotonic clock: a wide margin for clock rates and scheduling.
//! - The leader itself may grant its vote to a candidate (openraft does not refresh a leader's
//!   own vote time). The peer service tells the lease about every vote request *before*
//!   openraft sees it ([`LeaderLease::vote_requested`]); a request for a later term ends the
//!   lease for the current term, so a read that starts after the leader could have voted
//!   someone else in takes the quorum round again.
//! - raftlite's own prompt election (`prevote.rs`) makes a follower vote for itself without
//!   openraft's lease check. It is decided under a lock against AppendEntries being handled,
//!   and refuses the old term's AppendEntries until the term moved on, so an answer counted
//!   here always precedes that follower's quiet lease. Only Success and PartialSuccess
//!   answers count, the same ones that follower counts as heard.
//! - A leadership transfer also makes the target vote for itself at once: the leader gives up
//!   the lease for the rest of its term when it starts one, and the target ignores a transfer
//!   request of another term.
//! - A node restarted after leading does not resume leading its term
//!   (`LogStore::demote_restored_leader`): it must win an election, after which everything
//!   committed before is applied before it serves a read.
//!
//! Accepted risk: the clock is `Instant` (CLOCK_MONOTONIC), which does not advance while the
//! machine is suspended. A leader whose host suspends and resumes within the window could
//! count acknowledgements from before the suspension as fresh. Servers running a cluster do
//! not suspend; a paused process is covered (t25).
//!
//! Any vote request for a later term turns the lease off for the rest of the term, even one
//! the leader refused: the reads then take the quorum round, correct and slower, until the
//! next term.
//!
//! What the read then waits for: the highest index this leader has answered a write for, and
//! everything applied (the leader is ready: it applied an entry of its own term, so everything
//! earlier leaders committed is applied). The acknowledgements are recorded by the network
//! layer from the AppendEntries it sends, with the instant each was sent, so they do not
//! depend on when openraft reports its metrics.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::raft::types::NodeId;

#[derive(Default)]
pub struct LeaderLease {
    state: Mutex<LeaseState>,
}

#[derive(Default)]
struct LeaseState {
    /// Per follower: the term of the latest AppendEntries it accepted, and when that was sent.
    acked: HashMap<NodeId, (u64, Instant)>,
    /// The highest term a vote request to this node asked for.
    vote_requested_term: u64,
}

impl LeaderLease {
    /// The network layer: `target` accepted an AppendEntries of `term` sent at `sent`.
    pub fn acknowledged(&self, target: NodeId, term: u64, sent: Instant) {
        let mut state = self.lock();
        let entry = state.acked.entry(target).or_insert((term, sent));
        if (term, sent) > *entry {
            *entry = (term, sent);
        }
    }

    /// The peer service, before it hands a vote request for `term` to openraft.
    pub fn vote_requested(&self, term: u64) {
        let mut state = self.lock();
        state.vote_requested_term = state.vote_requested_term.max(term);
    }

    /// Whether this node, leader in `term`, holds the lease now: in every configuration of
    /// `quorums` (two during a joint membership change) a majority of voters — this node
    /// counting itself — accepted an AppendEntries of `term` sent within `window`, and no vote
    /// request has asked for a later term.
    pub fn held(
        &self,
        self_id: NodeId,
        term: u64,
        quorums: &[BTreeSet<NodeId>],
        window: Duration,
    ) -> bool {
        if self.lock().vote_requested_term > term {
            return false;
        }
        self.heard_from_quorum(self_id, term, quorums, window)
    }

    /// Whether in every configuration of `quorums` a majority of voters — this node counting
    /// itself — accepted an AppendEntries of `term` sent within `window` (see
    /// [`LeaderLease::since_quorum`]).
    pub fn heard_from_quorum(
        &self,
        self_id: NodeId,
        term: u64,
        quorums: &[BTreeSet<NodeId>],
        window: Duration,
    ) -> bool {
        self.since_quorum(self_id, term, quorums)
            .is_some_and(|age| age < window)
    }

    /// On the leader of `term`: how long ago, at most, a majority of voters in every
    /// configuration of `quorums` — this node counting itself, as of now — accepted an
    /// AppendEntries of `term`; `None` until a majority did. Each answer counts as of when the
    /// request that got it was sent. openraft's `millis_since_quorum_ack` instead counts an
    /// answer as of when openraft sent its own request, even when an early request's answer
    /// (sent before, perhaps long before: a stream held up by a call that hung) stood in for
    /// it, and it is reported only when openraft's core loop runs.
    pub fn since_quorum(
        &self,
        self_id: NodeId,
        term: u64,
        quorums: &[BTreeSet<NodeId>],
    ) -> Option<Duration> {
        if quorums.is_empty() {
            return None;
        }
        let state = self.lock();
        let now = Instant::now();
        let age = |id: &NodeId| {
            if *id == self_id {
                return Some(Duration::ZERO);
            }
            let &(t, sent) = state.acked.get(id)?;
            (t == term).then(|| now.saturating_duration_since(sent))
        };
        let mut oldest = Duration::ZERO;
        for voters in quorums {
            let mut ages: Vec<Duration> = voters.iter().filter_map(age).collect();
            let majority = voters.len() / 2 + 1;
            if ages.len() < majority {
                return None;
            }
            ages.sort_unstable();
            oldest = oldest.max(ages[majority - 1]);
        }
        Some(oldest)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LeaseState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voters(ids: &[NodeId]) -> Vec<BTreeSet<NodeId>> {
        vec![ids.iter().copied().collect()]
    }

    const WINDOW: Duration = Duration::from_millis(150);

    #[test]
    fn a_quorum_of_fresh_acknowledgements_of_this_term_holds_the_lease() {
        let lease = LeaderLease::default();
        let three = voters(&[1, 2, 3]);
        assert!(
            !lease.held(1, 5, &three, WINDOW),
            "no follower has answered"
        );
        lease.acknowledged(2, 4, Instant::now());
        assert!(
            !lease.held(1, 5, &three, WINDOW),
            "an earlier term's answer"
        );
        lease.acknowledged(2, 5, Instant::now() - Duration::from_millis(200));
        assert!(!lease.held(1, 5, &three, WINDOW), "sent too long ago");
        lease.acknowledged(3, 5, Instant::now());
        assert!(lease.held(1, 5, &three, WINDOW));
        assert!(lease.held(1, 5, &voters(&[1]), WINDOW), "a single voter");
        assert!(
            !lease.held(1, 5, &voters(&[1, 2, 3, 4, 5]), WINDOW),
            "2 of 5"
        );
        assert!(!lease.held(1, 5, &[], WINDOW));
    }

    #[test]
    fn a_joint_membership_needs_a_majority_of_both_configurations() {
        let lease = LeaderLease::default();
        lease.acknowledged(2, 7, Instant::now());
        let joint = vec![
            [1, 2, 3].into_iter().collect(),
            [1, 4, 5].into_iter().collect(),
        ];
        assert!(!lease.held(1, 7, &joint, WINDOW));
        lease.acknowledged(5, 7, Instant::now());
        assert!(lease.held(1, 7, &joint, WINDOW));
    }

    #[test]
    fn a_vote_request_for_a_later_term_ends_the_lease_of_this_term() {
        let lease = LeaderLease::default();
        let three = voters(&[1, 2, 3]);
        lease.acknowledged(2, 5, Instant::now());
        lease.vote_requested(5);
        assert!(
            lease.held(1, 5, &three, WINDOW),
            "a request for this term changes nothing"
        );
        lease.vote_requested(6);
        lease.acknowledged(3, 5, Instant::now());
        assert!(!lease.held(1, 5, &three, WINDOW));
        assert!(
            lease.heard_from_quorum(1, 5, &three, WINDOW),
            "but a quorum did hear this leader within the window"
        );
        lease.acknowledged(2, 6, Instant::now());
        assert!(
            lease.held(1, 6, &three, WINDOW),
            "leader again in the later term"
        );
    }

    #[test]
    fn heard_from_quorum_counts_an_answer_as_of_the_request_that_got_it() {
        let lease = LeaderLease::default();
        let three = voters(&[1, 2, 3]);
        // An answer that came just now, to a request sent longer ago than the window (an early
        // request whose answer openraft would count as of its own, later call).
        lease.acknowledged(2, 5, Instant::now() - WINDOW - Duration::from_millis(1));
        assert!(!lease.heard_from_quorum(1, 5, &three, WINDOW));
        lease.acknowledged(3, 5, Instant::now());
        assert!(lease.heard_from_quorum(1, 5, &three, WINDOW));
        assert!(
            !lease.heard_from_quorum(1, 6, &three, WINDOW),
            "answers of another term"
        );
    }

    #[test]
    fn since_quorum_is_the_age_of_the_majority_s_oldest_fresh_answer() {
        let lease = LeaderLease::default();
        let five = voters(&[1, 2, 3, 4, 5]);
        let now = Instant::now();
        assert_eq!(lease.since_quorum(1, 5, &five), None, "only itself");
        lease.acknowledged(2, 5, now - Duration::from_millis(100));
        assert_eq!(lease.since_quorum(1, 5, &five), None, "2 of 5");
        lease.acknowledged(3, 5, now - Duration::from_millis(300));
        lease.acknowledged(4, 4, now);
        let age = lease.since_quorum(1, 5, &five).expect("3 of 5 in term 5");
        assert!(
            age >= Duration::from_millis(300) && age < Duration::from_millis(400),
            "the third newest (itself, 100 ms, 300 ms): {age:?}"
        );
        lease.acknowledged(4, 5, now - Duration::from_millis(50));
        let age = lease.since_quorum(1, 5, &five).expect("4 of 5");
        assert!(
            age >= Duration::from_millis(100) && age < Duration::from_millis(200),
            "{age:?}"
        );
        assert_eq!(lease.since_quorum(1, 6, &five), None, "another term");
        assert_eq!(
            lease.since_quorum(1, 5, &voters(&[1])),
            Some(Duration::ZERO),
            "a single voter"
        );
        assert_eq!(lease.since_quorum(1, 5, &[]), None);
        let joint = vec![
            [1, 2, 3].into_iter().collect(),
            [1, 6, 7].into_iter().collect(),
        ];
        assert_eq!(
            lease.since_quorum(1, 5, &joint),
            None,
            "none of the new voters"
        );
    }

    #[test]
    fn an_older_acknowledgement_never_replaces_a_newer_one() {
        let lease = LeaderLease::default();
        let now = Instant::now();
        lease.acknowledged(2, 5, now);
        lease.acknowledged(2, 5, now - Duration::from_secs(1));
        assert!(lease.held(1, 5, &voters(&[1, 2, 3]), WINDOW));
    }
}
