//! A node removed from the cluster finds out that it was.
//!
//! openraft stops replicating to a node once its removal commits, often before that node has
//! received the membership without it. The node keeps the old membership: it calls itself a
//! voter, knows no leader, and would answer every request "no leader; retry" for good.
//!
//! So a node that has not heard from a leader for two leases asks the other members it knows
//! for their identity, every [`ASK_EVERY`]. One of the same cluster that knows a leader and
//! holds a membership at least as new as this node's, without this node in it, shows that this
//! node was removed. From then on the node says so: its status role is `removed`, it is not
//! ready, and it refuses client requests with UNAVAILABLE and the reason, so that clients go
//! to another node. It keeps its data and changes nothing else; the next AppendEntries from a
//! leader (it was added back) ends the state.
//!
//! Who answers is checked as for every peer call (the peer port's TLS names the sender); an
//! answer can at worst make this node refuse requests until a leader reaches it again.

use std::sync::Weak;
use std::time::Duration;

use super::{NodeError, NodeInner};
use crate::raft::types::NodeId;

/// How often a node without a leader asks.
const ASK_EVERY: Duration = Duration::from_secs(1);

/// How long one member may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// What showed that this node was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removal {
    /// The member that answered.
    pub by: NodeId,
    /// The log index of that member's membership, which leaves this node out.
    pub membership_index: u64,
}

impl NodeInner {
    pub(super) fn removal(&self) -> Option<Removal> {
        *self.removed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A leader reached this node: it is a member (again).
    pub(super) fn clear_removal(&self) {
        let mut removed = self.removed.lock().unwrap_or_else(|p| p.into_inner());
        if removed.take().is_some() {
            tracing::info!("a leader reached this node again: it is a member of the cluster");
        }
    }

    /// The refusal of a client request on a node that was removed; `Ok` on any other.
    pub(crate) fn refuse_if_removed(&self) -> Result<(), NodeError> {
        match self.removal() {
            None => Ok(()),
            Some(r) => Err(NodeError::unavailable(
                format!(
                    "node {} is no longer a member of the cluster (node {} holds a membership \
                     from log index {} without it), so it serves no reads or writes: send \
                     requests to the cluster's other nodes. To bring it back, add it again \
                     (`raftlite cluster add-voter`); to retire it, stop it and delete its volume",
                    self.id, r.by, r.membership_index
                ),
                None,
            )),
        }
    }

    /// Asks the other members this node knows whether they still count it in; `None` when
    /// none shows otherwise (or none answers).
    async fn ask_members(&self) -> Option<Removal> {
        let (others, mine) = {
            let metrics = self.raft.metrics().borrow().clone();
            let config = &metrics.membership_config;
            let others: Vec<(NodeId, String)> = config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != self.id)
                .map(|(id, addr)| (*id, addr.peer.clone()))
                .collect();
            (others, config.log_id().map_or(0, |l| l.index))
        };
        let cluster = &self.identity.get()?;
        let asks = others.into_iter().map(|(id, addr)| async move {
            let who = self.peer(&addr).ok()?.identity(ASK_TIMEOUT).await?;
            let shows_removal = who.node_id == id
                && who.cluster_id == *cluster
                && who.leader.is_some()
                && who.membership_index >= mine
                && !who.voters.contains(&self.id)
                && !who.learners.contains(&self.id);
            shows_removal.then_some(Removal {
                by: id,
                membership_index: who.membership_index,
            })
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .next()
    }
}

/// Watches for this node's removal (see the module docs) until the node is dropped or Raft
/// stops.
pub(super) async fn watch(node: Weak<NodeInner>) {
    let mut ticker = tokio::time::interval(ASK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while let Some(inner) = super::next_tick(&node, &mut ticker).await {
        let quiet_for = inner.quiet_for();
        if inner.is_leader() || quiet_for < super::prevote::lease(&inner) * 2 {
            continue;
        }
        let Some(found) = inner.ask_members().await else {
            continue;
        };
        // A leader's AppendEntries may have arrived while the members answered.
        if inner
            .heard_from_leader()
            .is_some_and(|ago| ago < super::prevote::lease(&inner))
        {
            continue;
        }
        let mut removed = inner.removed.lock().unwrap_or_else(|p| p.into_inner());
        if removed.is_none() {
            tracing::warn!(
                by = found.by,
                membership_index = found.membership_index,
                "this node was removed from the cluster: it refuses client requests until a \
                 leader reaches it again"
            );
        }
        *removed = Some(found);
    }
}
