//! Joining a running cluster: a StatefulSet scaled up, or a pod re-created after a scale-down
//! removed it from the membership.
//!
//! With peers from a StatefulSet (`auto_join`), a node asks the initial members for the cluster
//! status once it starts. If a leader answers and this node is not a voter of the membership,
//! it asks for `AddVoter(self)`: the leader adds it as a learner, waits until it has caught up,
//! then promotes it. A voter (every restart of a member, every initial member after bootstrap)
//! finds itself in the membership and stops asking.
//!
//! # Key decisions and trade-offs
//!
//! - **Only at start.** A node removed while it runs (the chart's scale-down hook removes the
//!   pods that are about to go) must not add itself back before Kubernetes deletes it.
//! - **Nothing to do before the cluster exists.** Without a leader the node keeps waiting, so
//!   bootstrap (the lowest id initializes) is never raced by a join.
//! - **The node's own address comes from the StatefulSet pattern**, the same name its peers
//!   resolve through the headless Service (which publishes not-ready pods for this reason).

use std::time::{Duration, Instant};

use crate::node::{LeaderHint, MembershipChange, Node};
use crate::raft::types::NodeAddr;

const RETRY: Duration = Duration::from_secs(1);
const REPORT_EVERY: Duration = Duration::from_secs(10);
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn join(node: Node) {
    if !node.config().auto_join {
        return;
    }
    let id = node.id();
    let addr = NodeAddr {
        client: node.config().advertise_addr.clone(),
        peer: node.config().peer_advertise_addr.clone(),
    };
    let others: Vec<String> = node
        .config()
        .peers
        .iter()
        .filter(|(peer, _)| **peer != id)
        .map(|(_, a)| a.clone())
        .collect();
    if others.is_empty() {
        return;
    }
    let mut last_report = Instant::now();
    loop {
        let waiting = match ask_to_join(&node, &others, &addr).await {
            Ok(()) => return,
            Err(reason) => reason,
        };
        if last_report.elapsed() >= REPORT_EVERY {
            tracing::info!(node = id, reason = %waiting, "waiting to join the cluster");
            last_report = Instant::now();
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One round: find the leader through the initial members and ask it to add this node.
/// `Ok` once this node is a voter; otherwise why it is not (yet).
async fn ask_to_join(node: &Node, others: &[String], addr: &NodeAddr) -> Result<(), String> {
    let id = node.id();
    let mut leader = None;
    for member in others {
        let Ok(client) = node.inner.peer(member) else {
            continue;
        };
        if let Some(peer) = client.identity(ASK_TIMEOUT).await {
            if peer.voters.contains(&id) {
                tracing::debug!(node = id, "already a voter of the cluster");
                return Ok(());
            }
            if let Some(l) = peer.leader {
                leader = Some(l);
                break;
            }
        }
    }
    let Some(leader): Option<LeaderHint> = leader else {
        return Err("no initial member answered with a leader".to_owned());
    };
    tracing::info!(
        node = id, %addr, leader = leader.id,
        "not a voter of the running cluster: joining as a learner, then voter"
    );
    let client = node
        .inner
        .peer(&leader.peer_addr)
        .map_err(|e| e.to_string())?;
    let change = MembershipChange::AddVoter {
        id,
        addr: addr.clone(),
    };
    match client.forward_membership(&change, leader).await {
        Ok(m) => {
            tracing::info!(node = id, voters = ?m.voters, "joined the cluster as a voter");
            Ok(())
        }
        Err(e) => Err(format!("AddVoter failed: {e}")),
    }
}
