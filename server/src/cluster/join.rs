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

use raftlite_client::{Client, ClientOptions};

use crate::node::Node;

const RETRY: Duration = Duration::from_secs(1);
const REPORT_EVERY: Duration = Duration::from_secs(10);

pub async fn join(node: Node) {
    if !node.config().auto_join {
        return;
    }
    let id = node.id();
    let addr = node.config().advertise_addr.clone();
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
    let options = ClientOptions {
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(1),
        retry_deadline: Duration::from_secs(2),
        ..ClientOptions::default()
    };
    let client = match Client::with_options(others.iter().map(String::as_str), options) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot reach the initial members to join the cluster");
            return;
        }
    };
    let mut last_report = Instant::now();
    loop {
        let waiting = match client.status().await {
            Ok(status) if status.leader == 0 => "no leader is elected yet".to_owned(),
            Ok(status) => {
                if status.nodes.iter().any(|n| n.id == id && n.voter) {
                    tracing::debug!(node = id, "already a voter of the cluster");
                    return;
                }
                tracing::info!(
                    node = id, %addr, leader = status.leader,
                    "not a voter of the running cluster: joining as a learner, then voter"
                );
                match client.add_voter(id, addr.clone()).await {
                    Ok(m) => {
                        tracing::info!(node = id, voters = ?m.voters, "joined the cluster as a voter");
                        return;
                    }
                    Err(e) => format!("AddVoter failed: {e}"),
                }
            }
            Err(e) => format!("no initial member answered: {e}"),
        };
        if last_report.elapsed() >= REPORT_EVERY {
            tracing::info!(node = id, reason = %waiting, "waiting to join the cluster");
            last_report = Instant::now();
        }
        tokio::time::sleep(RETRY).await;
    }
}
