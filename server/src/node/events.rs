//! The log lines an operator greps for, one per event, derived from openraft's metrics:
//! `became leader`, `stepped down`, `following leader`, and on the leader `follower connected`,
//! `follower caught up` and `follower fell behind`. (Snapshot installs, re-syncs and restores
//! log where they happen: `raft/state_machine.rs`, `cluster/resync.rs`, `archive/`.)
//!
//! openraft's own logging says all of this and much more at info/debug, which is why it is
//! capped at warn; these lines are the short, stable vocabulary for `kubectl logs | grep`.

use std::collections::BTreeMap;

use openraft::ServerState;

use super::Node;
use crate::raft::types::NodeId;

/// A follower within this many entries of the leader's last log index is caught up (the same
/// bound readiness uses).
pub const CAUGHT_UP_LAG: u64 = 100;
/// A caught-up follower that falls this far behind is reported, and its catching up again.
pub const FELL_BEHIND_LAG: u64 = 1000;

/// What the tracker looks at in openraft's metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RaftView {
    pub id: NodeId,
    pub is_leader: bool,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: u64,
    /// On the leader: each follower's matched log index (`None`: not replicated to yet).
    pub replication: BTreeMap<NodeId, Option<u64>>,
}

impl RaftView {
    pub fn from_metrics(m: &openraft::RaftMetrics<NodeId, crate::raft::types::NodeAddr>) -> Self {
        RaftView {
            id: m.id,
            is_leader: m.state == ServerState::Leader && m.current_leader == Some(m.id),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index.unwrap_or(0),
            replication: m
                .replication
                .iter()
                .flatten()
                .filter(|(id, _)| **id != m.id)
                .map(|(id, matched)| (*id, matched.map(|l| l.index)))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RaftEvent {
    BecameLeader { term: u64 },
    SteppedDown { term: u64, leader: Option<NodeId> },
    Following { leader: NodeId, term: u64 },
    FollowerConnected { follower: NodeId, lag: u64 },
    FollowerCaughtUp { follower: NodeId, matched: u64 },
    FollowerFellBehind { follower: NodeId, lag: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FollowerState {
    CatchingUp,
    CaughtUp,
}

/// Turns successive [`RaftView`]s into events, each reported once.
#[derive(Debug, Default)]
pub struct EventTracker {
    was_leader: bool,
    leader: Option<NodeId>,
    followers: BTreeMap<NodeId, FollowerState>,
}

impl EventTracker {
    pub fn observe(&mut self, view: &RaftView) -> Vec<RaftEvent> {
        let mut events = Vec::new();
        if view.is_leader && !self.was_leader {
            // Always through an election: a restarted leader does not resume its term
            // (`LogStore::demote_restored_leader`).
            events.push(RaftEvent::BecameLeader { term: view.term });
            self.followers.clear();
        } else if !view.is_leader && self.was_leader {
            events.push(RaftEvent::SteppedDown {
                term: view.term,
                leader: view.leader.filter(|l| *l != view.id),
            });
        }
        if !view.is_leader && view.leader != self.leader {
            if let Some(leader) = view.leader.filter(|l| *l != view.id) {
                events.push(RaftEvent::Following {
                    leader,
                    term: view.term,
                });
            }
        }
        self.was_leader = view.is_leader;
        self.leader = view.leader;
        if !view.is_leader {
            self.followers.clear();
            return events;
        }
        self.followers
            .retain(|id, _| view.replication.contains_key(id));
        for (&follower, matched) in &view.replication {
            let Some(matched) = *matched else { continue };
            let lag = view.last_log_index.saturating_sub(matched);
            match self.followers.get(&follower).copied() {
                None => {
                    events.push(RaftEvent::FollowerConnected { follower, lag });
                    self.followers.insert(follower, FollowerState::CatchingUp);
                }
                Some(FollowerState::CaughtUp) if lag > FELL_BEHIND_LAG => {
                    events.push(RaftEvent::FollowerFellBehind { follower, lag });
                    self.followers.insert(follower, FollowerState::CatchingUp);
                    continue;
                }
                Some(_) => {}
            }
            if self.followers.get(&follower) == Some(&FollowerState::CatchingUp)
                && lag <= CAUGHT_UP_LAG
            {
                events.push(RaftEvent::FollowerCaughtUp { follower, matched });
                self.followers.insert(follower, FollowerState::CaughtUp);
            }
        }
        events
    }
}

fn log(event: &RaftEvent) {
    match *event {
        RaftEvent::BecameLeader { term } => tracing::info!(term, "became leader"),
        RaftEvent::SteppedDown { term, leader } => {
            tracing::warn!(term, new_leader = ?leader, "stepped down: no longer the leader")
        }
        RaftEvent::Following { leader, term } => tracing::info!(leader, term, "following leader"),
        RaftEvent::FollowerConnected { follower, lag } => {
            tracing::info!(follower, lag, "follower connected")
        }
        RaftEvent::FollowerCaughtUp { follower, matched } => {
            tracing::info!(follower, matched, "follower caught up")
        }
        RaftEvent::FollowerFellBehind { follower, lag } => {
            tracing::warn!(follower, lag, "follower fell behind")
        }
    }
}

/// Logs the events of `node` until its Raft core stops.
pub async fn log_raft_events(node: Node) {
    let mut rx = node.raft().metrics();
    let mut tracker = EventTracker::default();
    loop {
        let view = {
            let m = rx.borrow_and_update();
            if m.running_state.is_err() {
                return;
            }
            RaftView::from_metrics(&m)
        };
        for event in tracker.observe(&view) {
            log(&event);
        }
        // The newest state once per `METRICS_GAP` at most, not after each of the several
        // changes a write makes: an event is logged that much later at worst, and a follower
        // that fell behind and caught up within it is not logged at all.
        tokio::time::sleep(super::METRICS_GAP).await;
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(term: u64, last: u64, followers: &[(NodeId, Option<u64>)]) -> RaftView {
        RaftView {
            id: 1,
            is_leader: true,
            term,
            leader: Some(1),
            last_log_index: last,
            replication: followers.iter().copied().collect(),
        }
    }

    #[test]
    fn leadership_events_are_reported_once() {
        let mut t = EventTracker::default();
        let follower = RaftView {
            id: 1,
            term: 1,
            leader: Some(2),
            ..Default::default()
        };
        assert_eq!(
            t.observe(&follower),
            [RaftEvent::Following { leader: 2, term: 1 }]
        );
        assert!(t.observe(&follower).is_empty());
        assert_eq!(
            t.observe(&leader(2, 5, &[])),
            [RaftEvent::BecameLeader { term: 2 }]
        );
        assert!(t.observe(&leader(2, 6, &[])).is_empty());
        let deposed = RaftView {
            id: 1,
            term: 3,
            leader: Some(3),
            ..Default::default()
        };
        assert_eq!(
            t.observe(&deposed),
            [
                RaftEvent::SteppedDown {
                    term: 3,
                    leader: Some(3)
                },
                RaftEvent::Following { leader: 3, term: 3 }
            ]
        );
    }

    #[test]
    fn followers_connect_catch_up_and_fall_behind_once_each() {
        let mut t = EventTracker::default();
        t.observe(&leader(1, 5000, &[(2, None)]));
        assert_eq!(
            t.observe(&leader(1, 5000, &[(2, Some(0))])),
            [RaftEvent::FollowerConnected {
                follower: 2,
                lag: 5000
            }]
        );
        assert!(t.observe(&leader(1, 5000, &[(2, Some(3000))])).is_empty());
        assert_eq!(
            t.observe(&leader(1, 5010, &[(2, Some(4950))])),
            [RaftEvent::FollowerCaughtUp {
                follower: 2,
                matched: 4950
            }]
        );
        // Ordinary jitter under load is not an event.
        assert!(t.observe(&leader(1, 5500, &[(2, Some(5000))])).is_empty());
        assert_eq!(
            t.observe(&leader(1, 9000, &[(2, Some(5000))])),
            [RaftEvent::FollowerFellBehind {
                follower: 2,
                lag: 4000
            }]
        );
        assert_eq!(
            t.observe(&leader(1, 9000, &[(2, Some(9000))])),
            [RaftEvent::FollowerCaughtUp {
                follower: 2,
                matched: 9000
            }]
        );
    }

    #[test]
    fn an_up_to_date_follower_connects_and_is_caught_up_at_once() {
        let mut t = EventTracker::default();
        t.observe(&leader(1, 10, &[]));
        assert_eq!(
            t.observe(&leader(1, 10, &[(2, Some(10)), (3, None)])),
            [
                RaftEvent::FollowerConnected {
                    follower: 2,
                    lag: 0
                },
                RaftEvent::FollowerCaughtUp {
                    follower: 2,
                    matched: 10
                }
            ]
        );
    }
}
