//! Pre-vote: a voter may start an election only when a quorum of voters would vote for it.
//!
//! openraft 0.9 has no pre-vote. Without one, a follower cut off from the others times out
//! again and again and raises its term each time; when the partition heals, that term reaches
//! the healthy leader (in the follower's answers to AppendEntries) and the leader steps down:
//! needless elections, writes stalled for each. openraft's own guard — a follower refuses to
//! vote while its leader's lease is valid — does not help here: it keeps the returning node
//! from winning, not its term from deposing the leader.
//!
//! So every node's election timer is gated (`runtime_config().elect(..)`), and opens only
//! after a pre-vote poll succeeds, as in Raft's pre-vote (§9.6 of Ongaro's thesis):
//! - While the node hears from a leader, the gate is closed and nobody is asked (the timer
//!   could not fire anyway).
//! - Once it has not heard from a leader for half the minimum election timeout (at least two
//!   of openraft's idle heartbeat intervals: `poll_after`), it asks every other voter over the
//!   peer port, every half heartbeat interval: would you vote for me now? A
//!   voter says yes when it is not the leader, has not heard from a leader within the leader
//!   lease (openraft's: the maximum election timeout; within it the real vote would be
//!   refused), and the asker's log is at least as up to date as its own. Answering changes
//!   nothing on the voter.
//! - With yes from a quorum (the asker counts itself; a joint membership needs both halves),
//!   the gate opens. Without one it closes: an isolated node keeps its term.
//! - Once the gate is open and the node itself has not heard from a leader for a lease, it
//!   starts the election (the granting voters in the order of their ids, a short pause apart,
//!   so that they do not split the vote) instead of waiting for openraft's timer, which would
//!   add a whole election timeout on top of the lease: the poll has just shown that a quorum
//!   lost the leader.
//!   openraft's timer stays as the fallback (and retries after a split vote).
//!
//! Leadership transfer (`Elect` from the leader) bypasses the gate on purpose: openraft's
//! `trigger().elect()` ignores it. While the target waits to start that election it refuses
//! pre-votes, so the other followers (who stopped hearing the leader too) do not race it.

use std::collections::BTreeSet;
use std::sync::Weak;
use std::time::{Duration, Instant};

use openraft::storage::RaftLogStorage;
use openraft::ServerState;
use serde::{Deserialize, Serialize};

use super::{Node, NodeInner};
use crate::raft::types::{LogId, NodeId};

/// A voter's answer to a pre-vote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteAnswer {
    pub granted: bool,
    /// Why not, for the asker's log.
    pub reason: String,
}

impl Node {
    /// Answers node `from`'s pre-vote: would this node vote for it in an election now?
    pub async fn answer_pre_vote(&self, from: NodeId, last_log_id: Option<LogId>) -> PreVoteAnswer {
        let inner = &self.inner;
        let deny = |reason: String| PreVoteAnswer {
            granted: false,
            reason,
        };
        if inner.raft.metrics().borrow().state == ServerState::Leader {
            return deny(format!("node {} is the leader", inner.id));
        }
        let taking_over = *inner
            .taking_over_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if taking_over.is_some_and(|until| Instant::now() < until) {
            return deny(format!(
                "node {} is taking over leadership (transfer)",
                inner.id
            ));
        }
        // Never heard from a leader since it started: it may have just before it stopped.
        let ago = inner.quiet_for();
        if ago < lease(inner) {
            return deny(format!(
                "node {} heard from the leader {} ms ago (or started since)",
                inner.id,
                ago.as_millis()
            ));
        }
        match inner.last_log_id().await {
            Ok(mine) if last_log_id < mine => deny(format!(
                "node {} has a newer log ({mine:?}) than node {from} ({last_log_id:?})",
                inner.id
            )),
            Ok(_) => PreVoteAnswer {
                granted: true,
                reason: String::new(),
            },
            Err(e) => deny(format!("node {} cannot read its log: {e}", inner.id)),
        }
    }
}

impl NodeInner {
    /// How long ago this follower last accepted an AppendEntries from a leader.
    pub(super) fn heard_from_leader(&self) -> Option<Duration> {
        let (_, at) = *self.leader_commit.lock().unwrap_or_else(|p| p.into_inner());
        at.map(|at| at.elapsed())
    }

    /// How long this node has gone without a leader: since the last accepted AppendEntries, or
    /// since this process started.
    pub(super) fn quiet_for(&self) -> Duration {
        let since_start = self.started.elapsed();
        self.heard_from_leader()
            .map_or(since_start, |ago| ago.min(since_start))
    }

    async fn last_log_id(&self) -> Result<Option<LogId>, crate::raft::types::StorageError> {
        Ok(self.log_store.clone().get_log_state().await?.last_log_id)
    }
}

/// openraft's leader lease: a voter refuses votes this long after it last heard from its
/// leader.
pub(super) fn lease(inner: &NodeInner) -> Duration {
    inner.config.election_timeout_max
}

/// How long a voter goes without hearing from a leader before it polls: half the minimum
/// election timeout, but at least two of the leader's real idle heartbeat intervals, and at
/// most a lease. openraft 0.9 sends an idle heartbeat on its tick, every 1.5 × `heartbeat`
/// (150 ms by default, which is also half the default minimum election timeout), so with one
/// interval as the threshold healthy idle followers polled, and logged a refused pre-vote,
/// whenever a heartbeat came a millisecond late. No failover waits for it: the voters grant a
/// pre-vote only once they too have not heard from a leader for a lease.
fn poll_after(heartbeat: Duration, election_timeout_min: Duration, lease: Duration) -> Duration {
    (election_timeout_min / 2).max(heartbeat * 3).min(lease)
}

/// Whether this node's election timer may run, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Gate {
    /// Leader, learner or single voter: nothing to ask.
    Unchecked,
    /// A quorum would vote for this node: the voters that said yes, itself included.
    Granted(BTreeSet<NodeId>),
    /// A leader is heard from: no poll, nothing to log.
    HearsLeader,
    /// The last poll did not reach a quorum.
    Refused(String),
}

/// Keeps this node's election gate (see the module docs) until the node is dropped or Raft
/// stops.
pub(super) async fn run(node: Weak<NodeInner>, heartbeat: Duration) {
    // Half a heartbeat: how late after the lease an election can start (the poll itself is
    // skipped, and costs nothing, while the leader is heard).
    let mut ticker = tokio::time::interval(heartbeat / 2);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Closed until the first poll: a restarted node must not time out into an election
    // before its leader's first heartbeat arrives.
    if let Some(inner) = node.upgrade() {
        inner.raft.runtime_config().elect(false);
    }
    let mut open = false;
    let mut last = Gate::Unchecked;
    let mut elected_at: Option<Instant> = None;
    while let Some(inner) = super::next_tick(&node, &mut ticker).await {
        let quiet_for = inner.quiet_for();
        let gate = poll(&inner, quiet_for).await;
        // A restarted voter may have acknowledged a leader just before it stopped, and that
        // leader may still be serving reads from its lease (`lease.rs`): no election of its
        // own for a lease after it started (openraft's timer, which forgets the last heartbeat
        // on a restart, would start one at once).
        let want = match gate {
            Gate::Unchecked => true,
            Gate::Granted(_) => inner.started.elapsed() >= lease(&inner),
            Gate::HearsLeader | Gate::Refused(_) => false,
        };
        if want != open {
            inner.raft.runtime_config().elect(want);
            open = want;
        }
        match (&last, &gate) {
            (Gate::Refused(_), Gate::Granted(_)) => {
                tracing::info!("pre-vote granted by a quorum: elections allowed again")
            }
            (Gate::Refused(_), Gate::Refused(_)) => {}
            (_, Gate::Refused(why)) => {
                tracing::info!(reason = %why, "pre-vote refused: no election until a quorum would vote for this node")
            }
            _ => {}
        }
        if let Gate::Granted(granted) = &gate {
            if prompt_election_due(&inner, quiet_for, elected_at) {
                elected_at = Some(Instant::now());
                start_election(&inner, granted).await;
            }
        }
        last = gate;
    }
}

/// True when this follower has not heard from a leader for a lease and has not started an
/// election within the last lease (openraft retries a failed one by itself).
fn prompt_election_due(
    inner: &NodeInner,
    quiet_for: Duration,
    elected_at: Option<Instant>,
) -> bool {
    let lease = lease(inner);
    let quiet = quiet_for >= lease;
    let state = inner.raft.metrics().borrow().state;
    quiet && state == ServerState::Follower && elected_at.is_none_or(|at| at.elapsed() >= lease)
}

/// A prompt election against AppendEntries that arrive meanwhile. `trigger().elect()` makes
/// this node vote for itself without the lease openraft keeps for its leader, so the decision
/// is taken under this lock: only when no AppendEntries is being handled and none was accepted
/// within a lease; and from then until the election has moved the term on, AppendEntries of
/// the old term are refused. Otherwise one accepted just before the election would let the old
/// leader count this node for its read lease (`lease.rs`) while it helps elect another.
#[derive(Default)]
pub struct Campaign {
    appends_in_flight: u32,
    /// The term this node was in when it decided to start an election.
    from_term: Option<u64>,
}

pub struct AppendGuard<'a> {
    inner: &'a NodeInner,
}

impl NodeInner {
    fn campaign(&self) -> std::sync::MutexGuard<'_, Campaign> {
        self.campaign.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<'a> AppendGuard<'a> {
    pub(super) fn enter(inner: &'a NodeInner, term: u64) -> Result<Self, super::NodeError> {
        let mut campaign = inner.campaign();
        if campaign.from_term.is_some_and(|t| term <= t) {
            return Err(super::NodeError::unavailable(
                format!("node {} is starting an election", inner.id),
                None,
            ));
        }
        campaign.appends_in_flight += 1;
        Ok(Self { inner })
    }
}

impl Drop for AppendGuard<'_> {
    fn drop(&mut self) {
        let mut campaign = self.inner.campaign();
        campaign.appends_in_flight = campaign.appends_in_flight.saturating_sub(1);
    }
}

/// Starts an election after a pause (see the module docs), unless a leader spoke up or
/// another voter started one meanwhile. The voters that granted the pre-vote go in order of
/// their ids, a quarter of the minimum election timeout apart, plus a little jitter: the
/// lowest starts first, and the others see its vote request before their turn, so two
/// candidates rarely split the vote (which would cost openraft's election timeout again).
async fn start_election(inner: &NodeInner, granted: &BTreeSet<NodeId>) {
    use rand::Rng;
    let rank = granted.iter().take_while(|id| **id < inner.id).count() as u32;
    let jitter = rand::thread_rng().gen_range(Duration::ZERO..=inner.config.heartbeat / 4);
    let term = inner.raft.metrics().borrow().current_term;
    tokio::time::sleep(inner.config.election_timeout_min / 4 * rank + jitter).await;
    let now = inner.raft.metrics().borrow().clone();
    if now.state != ServerState::Follower || now.current_term != term {
        return;
    }
    {
        // Decided under the lock that AppendEntries take (see `Campaign`).
        let mut campaign = inner.campaign();
        let heard = inner
            .heard_from_leader()
            .is_some_and(|ago| ago < lease(inner));
        if campaign.appends_in_flight > 0 || heard {
            return;
        }
        campaign.from_term = Some(term);
    }
    tracing::info!("the leader is gone for a quorum of voters: starting an election");
    if let Err(e) = inner.raft.trigger().elect().await {
        tracing::warn!(error = %e, "could not start an election");
    }
    // Until the election has raised the term (or for a lease if it never starts).
    let _ = inner
        .raft
        .wait(Some(lease(inner)))
        .metrics(|m| m.current_term > term, "election started")
        .await;
    inner.campaign().from_term = None;
}

async fn poll(inner: &NodeInner, quiet_for: Duration) -> Gate {
    let metrics = inner.raft.metrics().borrow().clone();
    if metrics.state == ServerState::Leader {
        return Gate::Unchecked;
    }
    let membership = metrics.membership_config.membership().clone();
    let configs = membership.get_joint_config().clone();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    if voters.len() <= 1 || !voters.contains(&inner.id) {
        // A single voter elects itself at once; a learner never elects.
        return Gate::Unchecked;
    }
    let config = &inner.config;
    if quiet_for < poll_after(config.heartbeat, config.election_timeout_min, lease(inner)) {
        return Gate::HearsLeader;
    }
    let last_log_id = match inner.last_log_id().await {
        Ok(l) => l,
        Err(e) => return Gate::Refused(format!("cannot read the local log: {e}")),
    };
    let cluster_id = inner.identity.get().unwrap_or_default();
    let timeout = inner.config.election_timeout_min;
    let asks = voters.iter().filter(|v| **v != inner.id).map(|&v| {
        let addr = membership.get_node(&v).map(|n| n.peer.clone());
        let cluster_id = cluster_id.clone();
        async move {
            let answer = match addr {
                None => Err(format!("node {v} has no address")),
                Some(addr) => match inner.peer(&addr) {
                    Err(e) => Err(e.to_string()),
                    Ok(peer) => peer
                        .pre_vote(&cluster_id, inner.id, last_log_id, timeout)
                        .await
                        .map_err(|e| format!("node {v}: {e}")),
                },
            };
            (v, answer)
        }
    });
    let started = Instant::now();
    let mut granted = BTreeSet::from([inner.id]);
    let mut refusals = Vec::new();
    for (v, answer) in futures::future::join_all(asks).await {
        match answer {
            Ok(a) if a.granted => {
                granted.insert(v);
            }
            Ok(a) => refusals.push(a.reason),
            Err(e) => refusals.push(e),
        }
    }
    if quorum_granted(&configs, &granted) {
        Gate::Granted(granted)
    } else {
        Gate::Refused(format!(
            "{} of {} voters would vote for this node (asked for {} ms): {}",
            granted.len(),
            voters.len(),
            started.elapsed().as_millis(),
            refusals.join("; ")
        ))
    }
}

/// True when `granted` holds a majority of every configuration of a (possibly joint)
/// membership.
fn quorum_granted(configs: &[BTreeSet<NodeId>], granted: &BTreeSet<NodeId>) -> bool {
    !configs.is_empty()
        && configs
            .iter()
            .all(|c| c.iter().filter(|v| granted.contains(v)).count() * 2 > c.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_follower_hearing_idle_heartbeats_does_not_poll() {
        let ms = Duration::from_millis;
        // The defaults: heartbeat 100 ms, elections 300–600 ms. openraft's idle heartbeats
        // come every 150 ms (its tick); one a little late must not start a poll.
        let after = poll_after(ms(100), ms(300), ms(600));
        assert!(after > ms(150) + ms(50), "polls after {after:?}");
        // A follower cut off polls well within a lease, so it can be elected once the other
        // voters' lease runs out.
        assert!(after <= ms(600) / 2, "polls after {after:?}");
        // Long election timeouts keep half of the minimum; never more than a lease.
        assert_eq!(poll_after(ms(100), ms(2_000), ms(4_000)), ms(1_000));
        assert_eq!(poll_after(ms(100), ms(250), ms(280)), ms(280));
    }

    #[test]
    fn a_quorum_is_a_majority_of_every_configuration() {
        let three = vec![set(&[1, 2, 3])];
        assert!(quorum_granted(&three, &set(&[1, 2])));
        assert!(!quorum_granted(&three, &set(&[1])), "an isolated node");
        assert!(
            !quorum_granted(&three, &set(&[1, 4])),
            "a non-member does not count"
        );
        let four = vec![set(&[1, 2, 3, 4])];
        assert!(
            !quorum_granted(&four, &set(&[1, 2])),
            "half is not a majority"
        );
        // Joint membership {1,2,3} -> {3,4,5}: both halves must agree.
        let joint = vec![set(&[1, 2, 3]), set(&[3, 4, 5])];
        assert!(!quorum_granted(&joint, &set(&[1, 2, 3])));
        assert!(quorum_granted(&joint, &set(&[2, 3, 4])));
        assert!(!quorum_granted(&[], &set(&[1])));
    }
}
