//! Early commit: the leader counts a quorum for its own entries from the early AppendEntries
//! answers and its own log flush, without waiting for openraft's core to do the same count.
//!
//! openraft 0.9 learns of a follower's success on the replication stream's task, hands it to
//! its core, which counts the quorum and hands the commit to the state machine's task: two
//! task hand-offs, 79 µs at p50 and 244 at p90 of a one-client write here (BENCHMARKS.md
//! "Session 15"). The answer of an early AppendEntries (`peer::early`) arrives before that,
//! and so does the leader's own flush. Counting them here is the rule openraft applies:
//!
//! - An entry of the leader's own term is committed once a majority of the voters hold it on
//!   disk: a follower that answered success to an AppendEntries ending at it (it answers only
//!   once its log is flushed and matches the leader's up to there), and the leader itself once
//!   its own flush reached it. Every entry before it is then committed too.
//! - Only the voters of the cluster's configuration count, and only while that configuration
//!   is simple (not joint) and known to be the newest in the log: appending a membership
//!   entry stops early commits until the node has seen that configuration take effect
//!   ([`EarlyCommit::arm`]). Learners never count.
//! - Answers count only for the vote they were sent under; a new vote starts over.
//!
//! What is committed is handed to the write path (`Proposals::commit_early`), which answers a
//! proposal only when the state it will be applied to is certain; the state machine still
//! applies every entry when openraft commits it, as on every node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use super::types::{NodeId, Vote};

/// What runs with the new commit index (not under any lock of this module).
pub type OnCommit = Box<dyn Fn(u64) + Send + Sync>;

pub struct EarlyCommit {
    self_id: NodeId,
    state: Mutex<State>,
    on_commit: OnCommit,
}

#[derive(Default)]
struct State {
    /// The vote the answers and flushes below were counted under.
    vote: Option<Vote>,
    /// The voters, and the log index of the configuration they come from: only entries after
    /// it are counted. `None`: no early commit (a joint or unknown configuration).
    voters: Option<(u64, BTreeSet<NodeId>)>,
    /// The newest membership entry the log store took: a configuration older than it is not
    /// the one openraft counts with.
    newest_membership: u64,
    /// Highest index each follower answered success for.
    acked: BTreeMap<NodeId, u64>,
    /// Highest of this leader's entries on its own disk.
    own: u64,
    committed: u64,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EarlyCommit {
    pub fn new(self_id: NodeId, on_commit: OnCommit) -> Self {
        Self {
            self_id,
            state: Mutex::new(State::default()),
            on_commit,
        }
    }

    /// The configuration openraft uses now (from its metrics): its log index, and its voters
    /// when it is a simple one. Ignored when the log holds a newer membership entry.
    pub fn arm(&self, index: u64, voters: Option<BTreeSet<NodeId>>) {
        let mut state = lock(&self.state);
        if index < state.newest_membership {
            return;
        }
        state.voters = voters.map(|v| (index, v));
    }

    /// The log store took a membership entry at `index`: no early commit until [`Self::arm`]
    /// brings its configuration.
    pub fn membership_appended(&self, index: u64) {
        let mut state = lock(&self.state);
        state.newest_membership = state.newest_membership.max(index);
        state.voters = None;
    }

    /// `follower` answered success to an early AppendEntries under `vote` ending at `last`.
    pub fn acked(&self, follower: NodeId, vote: Vote, last: u64) {
        self.count(vote, |state| {
            let acked = state.acked.entry(follower).or_default();
            *acked = (*acked).max(last);
        });
    }

    /// This leader's own entries under `vote` are on its disk up to `upto`.
    pub fn flushed(&self, vote: Vote, upto: u64) {
        self.count(vote, |state| state.own = state.own.max(upto));
    }

    fn count(&self, vote: Vote, record: impl FnOnce(&mut State)) {
        let committed = {
            let mut state = lock(&self.state);
            match state.vote {
                Some(current) if current == vote => {}
                // An answer to an older leadership of this node's: nothing to count.
                Some(current)
                    if vote.partial_cmp(&current) != Some(std::cmp::Ordering::Greater) =>
                {
                    return
                }
                _ => {
                    *state = State {
                        vote: Some(vote),
                        voters: state.voters.take(),
                        newest_membership: state.newest_membership,
                        ..State::default()
                    }
                }
            }
            record(&mut state);
            let Some((from, voters)) = &state.voters else {
                return;
            };
            let mut held: Vec<u64> = voters
                .iter()
                .map(|v| match *v == self.self_id {
                    true => state.own,
                    false => state.acked.get(v).copied().unwrap_or(0),
                })
                .collect();
            held.sort_unstable_by(|a, b| b.cmp(a));
            let quorum = voters.len() / 2 + 1;
            let Some(&held_by_quorum) = held.get(quorum - 1) else {
                return;
            };
            if held_by_quorum <= *from || held_by_quorum <= state.committed {
                return;
            }
            state.committed = held_by_quorum;
            held_by_quorum
        };
        crate::stamp!("early.commit", committed);
        (self.on_commit)(committed);
    }
}

/// Arms `commit` with each configuration openraft takes up, until its metrics end. It watches
/// openraft's server metrics, which change with the vote, the role or the configuration, not
/// its full metrics, which wake every watcher on each pass of its core loop (every write).
pub async fn follow_membership(
    commit: std::sync::Weak<EarlyCommit>,
    mut metrics: tokio::sync::watch::Receiver<
        openraft::metrics::RaftServerMetrics<NodeId, super::types::NodeAddr>,
    >,
) {
    // By log id, not index: a cluster's first configuration is at index 0, as is none.
    let mut armed = None;
    loop {
        let membership = metrics.borrow_and_update().membership_config.clone();
        let log_id = *membership.log_id();
        if armed != Some(log_id) {
            let index = log_id.map_or(0, |l| l.index);
            let Some(commit) = commit.upgrade() else {
                return;
            };
            let joint = membership.membership().get_joint_config();
            let voters = match joint.as_slice() {
                [only] => Some(only.clone()),
                _ => None,
            };
            commit.arm(index, voters);
            armed = Some(log_id);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Leader 1 under `vote`, armed with voters 1, 2 and 3 from index 1; and the commits it
    /// reports.
    fn tracker(vote: Vote) -> (EarlyCommit, Arc<Mutex<Vec<u64>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let early = EarlyCommit::new(
            1,
            Box::new(move |c| record.lock().unwrap_or_else(|p| p.into_inner()).push(c)),
        );
        early.arm(1, voters(&[1, 2, 3]));
        early.flushed(vote, 0);
        (early, seen)
    }

    fn voters(ids: &[NodeId]) -> Option<BTreeSet<NodeId>> {
        Some(ids.iter().copied().collect())
    }

    fn seen(s: &Arc<Mutex<Vec<u64>>>) -> Vec<u64> {
        s.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    #[test]
    fn a_majority_of_voters_on_disk_commits() {
        let vote = Vote::new_committed(2, 1);
        let (early, commits) = tracker(vote);
        early.acked(2, vote, 5);
        assert_eq!(seen(&commits), Vec::<u64>::new(), "one follower alone");
        early.flushed(vote, 4);
        assert_eq!(seen(&commits), vec![4], "the leader and a follower hold 4");
        early.flushed(vote, 6);
        assert_eq!(seen(&commits), vec![4, 5]);
        early.acked(3, vote, 7);
        assert_eq!(
            seen(&commits),
            vec![4, 5, 6],
            "the leader's 6, follower 3's 7"
        );
        early.acked(2, vote, 7);
        assert_eq!(
            seen(&commits),
            vec![4, 5, 6, 7],
            "two followers, ahead of the leader"
        );
    }

    #[test]
    fn learners_other_votes_and_joint_configurations_do_not_count() {
        let vote = Vote::new_committed(2, 1);
        let (early, commits) = tracker(vote);
        early.acked(4, vote, 9);
        early.acked(2, Vote::new_committed(1, 2), 9);
        early.flushed(vote, 9);
        assert_eq!(
            seen(&commits),
            Vec::<u64>::new(),
            "a learner, an older vote"
        );
        // A membership change appended: nothing counts until its configuration is armed, and
        // an older configuration cannot arm it again.
        early.membership_appended(10);
        early.arm(1, voters(&[1, 2, 3]));
        early.acked(2, vote, 11);
        early.flushed(vote, 11);
        assert_eq!(
            seen(&commits),
            Vec::<u64>::new(),
            "while the configuration changes"
        );
        early.arm(10, None);
        early.acked(3, vote, 11);
        assert_eq!(seen(&commits), Vec::<u64>::new(), "a joint configuration");
        early.arm(12, voters(&[1, 2]));
        early.acked(2, vote, 12);
        assert_eq!(
            seen(&commits),
            Vec::<u64>::new(),
            "entries up to the configuration's own"
        );
        early.flushed(vote, 13);
        early.acked(2, vote, 13);
        assert_eq!(
            seen(&commits),
            vec![13],
            "both voters of the new configuration"
        );
    }
}
