//! What a node knows about itself and the cluster, for `raftlite status` and readiness.

use std::time::Duration;

use openraft::ServerState;

use super::Node;
use crate::raft::types::{NodeAddr, NodeId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    pub id: NodeId,
    pub addr: String,
    pub peer_addr: String,
    /// leader, follower, learner, candidate, shutdown, removed (the other members left it
    /// out; see `removal.rs`), or unreachable.
    pub role: String,
    /// For a member that does not answer, as its leader last knew: how much of the log it
    /// holds (0 when asked on a follower).
    pub applied_index: u64,
    pub lag: u64,
    pub voter: bool,
    pub term: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterStatus {
    pub cluster_id: String,
    pub node_id: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub members: Vec<MemberStatus>,
    pub archive: crate::archive::ArchiveStatus,
}

/// Most entries a follower may be behind the commit index it knows of and still be ready.
pub const READY_MAX_LAG: u64 = 100;

/// Whether this node should get client traffic (the readiness probe).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Not ready, and why, for the log.
    NotReady(String),
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        matches!(self, Self::Ready)
    }
}

fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Learner => "learner",
        ServerState::Candidate => "candidate",
        ServerState::Shutdown => "shutdown",
    }
}

impl Node {
    /// This node's own view: role, term, applied index.
    pub fn local_status(&self) -> MemberStatus {
        let m = self.inner.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let addr = membership
            .get_node(&self.inner.id)
            .cloned()
            .unwrap_or_else(|| NodeAddr {
                client: self.inner.config.advertise_addr.clone(),
                peer: self.inner.config.peer_advertise_addr.clone(),
            });
        let applied = self.inner.applied_index();
        let removed = self.inner.removal().is_some();
        MemberStatus {
            id: self.inner.id,
            addr: addr.client,
            peer_addr: addr.peer,
            role: if removed {
                "removed"
            } else {
                role_name(m.state)
            }
            .to_string(),
            applied_index: applied,
            lag: self.commit_index().saturating_sub(applied),
            voter: !removed && membership.voter_ids().any(|v| v == self.inner.id),
            term: m.current_term,
        }
    }

    /// Ready means caught up: the node is a member, knows a leader, and (on a follower) heard
    /// from it within three election timeouts and applied to within [`READY_MAX_LAG`] entries
    /// of the commit index it announced. A leader is ready once it has applied an entry of its
    /// own term (writes wait for that) and still hears from a quorum.
    pub fn readiness(&self) -> Readiness {
        let inner = &self.inner;
        let m = inner.raft.metrics().borrow().clone();
        if let Err(fatal) = &m.running_state {
            return Readiness::NotReady(format!("raft stopped: {fatal}"));
        }
        // Every read thread still busy a second past its query's deadline: the interrupt has
        // not landed, and no read can be served here until one frees up.
        let reads = inner.db.reads();
        let now = std::time::Instant::now();
        let stuck = reads.stuck_threads(now.checked_sub(Duration::from_secs(1)).unwrap_or(now));
        if stuck > 0 && stuck == reads.threads() {
            return Readiness::NotReady(format!(
                "all {stuck} read threads are stuck past their queries' deadlines"
            ));
        }
        if let Some(r) = inner.removal() {
            return Readiness::NotReady(format!(
                "removed from the cluster (node {} holds a membership from log index {} \
                 without it)",
                r.by, r.membership_index
            ));
        }
        if m.membership_config
            .membership()
            .get_node(&inner.id)
            .is_none()
        {
            return Readiness::NotReady("not a member of the cluster (yet)".into());
        }
        let Some(leader) = m.current_leader else {
            return Readiness::NotReady("no leader is known".into());
        };
        let applied = inner.applied_index();
        if leader == inner.id {
            if m.state != ServerState::Leader
                || m.last_applied
                    .is_none_or(|l| l.leader_id.term != m.current_term)
            {
                return Readiness::NotReady(
                    "leader has not applied an entry of its own term yet".into(),
                );
            }
            return match inner.check_quorum_contact() {
                Ok(()) => Readiness::Ready,
                Err(e) => Readiness::NotReady(e.to_string()),
            };
        }
        let (commit, heard) = *inner
            .leader_commit
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let limit = inner.config.election_timeout_max * 3;
        if heard.is_none_or(|at| at.elapsed() > limit) {
            return Readiness::NotReady(format!(
                "has not heard from leader {leader} in the last {limit:?}"
            ));
        }
        let lag = commit.saturating_sub(applied);
        if lag > READY_MAX_LAG {
            return Readiness::NotReady(format!(
                "catching up: applied {applied}, leader commit {commit} ({lag} behind, ready at \
                 {READY_MAX_LAG})"
            ));
        }
        Readiness::Ready
    }

    /// Best known commit index: the leader's applied index on the leader, the last announced one
    /// on a follower.
    pub fn commit_index(&self) -> u64 {
        self.inner.commit_index()
    }

    /// Status of every member, asking each for its own view (unreachable ones are marked so).
    pub async fn cluster_status(&self) -> ClusterStatus {
        let m = self.inner.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let commit = self.commit_index();
        let mut members = Vec::new();
        for (id, node) in membership.nodes() {
            let mut status = if *id == self.inner.id {
                self.local_status()
            } else {
                let mut remote = self.remote_status(*id, node).await;
                remote.voter = membership.voter_ids().any(|v| v == *id);
                // A member that does not answer (stopped, paused, cut off): the leader still
                // knows how much of the log it holds.
                if remote.role == "unreachable" {
                    remote.applied_index = super::matched_index(&m, *id).unwrap_or(0);
                }
                remote
            };
            status.lag = commit.saturating_sub(status.applied_index);
            members.push(status);
        }
        // A removed node that holds the membership without itself still lists itself.
        if membership.get_node(&self.inner.id).is_none() && self.inner.removal().is_some() {
            let mut status = self.local_status();
            status.lag = commit.saturating_sub(status.applied_index);
            members.push(status);
        }
        ClusterStatus {
            cluster_id: self.inner.identity.get().unwrap_or_default(),
            node_id: self.inner.id,
            leader: m.current_leader,
            term: m.current_term,
            commit_index: commit,
            applied_index: self.inner.applied_index(),
            snapshot_index: m.snapshot.map(|s| s.index).unwrap_or(0),
            members,
            archive: self.inner.archive_status.get(),
        }
    }

    async fn remote_status(&self, id: NodeId, addr: &NodeAddr) -> MemberStatus {
        let unreachable = MemberStatus {
            id,
            addr: addr.client.clone(),
            peer_addr: addr.peer.clone(),
            role: "unreachable".into(),
            applied_index: 0,
            lag: 0,
            voter: false,
            term: 0,
        };
        let Ok(client) = self.inner.peer(&addr.peer) else {
            return unreachable;
        };
        // Bounded as a whole (name resolution and connecting included): a peer whose name does
        // not resolve must not stall the whole status.
        match client.local_status(Duration::from_millis(500)).await {
            Some(s) => MemberStatus {
                id,
                addr: addr.client.clone(),
                peer_addr: addr.peer.clone(),
                lag: 0,
                ..s
            },
            None => unreachable,
        }
    }
}
