//! What "an established leader" and "converged" mean, judged from the nodes' own Status
//! answers. Shared by the process harness ([`crate::Cluster`]) and the Docker one
//! ([`crate::DockerCluster`]).

use anyhow::{ensure, Context};
use raftlite_client::proto::v1::StatusResponse;

/// The leader every answering node names, provided it reports the leader role itself.
pub(crate) fn agreed_leader(statuses: &[(u64, StatusResponse)]) -> anyhow::Result<u64> {
    let (first, first_status) = statuses.first().context("no node is running")?;
    let leader = first_status.leader;
    ensure!(leader != 0, "node {first} knows no leader");
    ensure!(
        statuses.iter().all(|(_, s)| s.leader == leader),
        "nodes disagree on the leader: {:?}",
        statuses
            .iter()
            .map(|(id, s)| (*id, s.leader))
            .collect::<Vec<_>>()
    );
    let (_, own) = statuses
        .iter()
        .find(|(id, _)| *id == leader)
        .with_context(|| format!("the named leader {leader} is not running"))?;
    let role = own
        .nodes
        .iter()
        .find(|n| n.id == leader)
        .map(|n| n.role.as_str())
        .unwrap_or("");
    ensure!(
        role == "leader",
        "node {leader} is named leader but reports role {role:?}"
    );
    Ok(leader)
}

/// The applied index every answering node has reached, provided the cluster is quiet and
/// whole: an agreed leader that has applied all it committed, every node at that index, and
/// the leader sees none of them lagging.
pub(crate) fn converged_index(statuses: &[(u64, StatusResponse)]) -> anyhow::Result<u64> {
    let leader = agreed_leader(statuses)?;
    let (_, lead) = statuses
        .iter()
        .find(|(id, _)| *id == leader)
        .context("the leader stopped answering")?;
    let target = lead.applied_index;
    ensure!(
        lead.commit_index == target,
        "leader {leader} has applied {target} of {} committed",
        lead.commit_index
    );
    for (id, status) in statuses {
        ensure!(
            status.applied_index == target,
            "node {id} has applied {} of the leader's {target}",
            status.applied_index
        );
        let seen = lead
            .nodes
            .iter()
            .find(|n| n.id == *id)
            .with_context(|| format!("the leader's status does not list node {id}"))?;
        ensure!(
            seen.lag == 0 && seen.applied_index == target,
            "the leader sees node {id} as {} at {} with lag {}",
            seen.role,
            seen.applied_index,
            seen.lag
        );
    }
    Ok(target)
}
