//! `raftlite cluster`: membership changes and snapshots.
//!
//! Output: membership changes print `log_index=N voters=1,2,3 learners=4`, `transfer-leader`
//! prints `leader=N term=N`, `snapshot` prints `snapshot_index=N`. `retain N` prints one
//! membership line per removed node, or `unchanged voters=... learners=...`.

use std::process::ExitCode;

use raftlite_client::proto::v1::MembershipResponse;

use super::{fail, AddrArgs};

/// Change membership or take a snapshot (forwarded to the leader).
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub addr: AddrArgs,
    #[command(subcommand)]
    pub action: ClusterAction,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum ClusterAction {
    /// Add a non-voting learner; returns once it has caught up. ADDR is its client address.
    AddLearner {
        id: u64,
        addr: String,
        /// Its peer address [default: ADDR's port + 1].
        #[arg(long, value_name = "HOST:PORT")]
        peer_addr: Option<String>,
    },
    /// Add a voter: it joins as a learner, catches up, then is promoted. ADDR is its client
    /// address.
    AddVoter {
        id: u64,
        addr: String,
        /// Its peer address [default: ADDR's port + 1].
        #[arg(long, value_name = "HOST:PORT")]
        peer_addr: Option<String>,
    },
    /// Remove a voter or learner.
    Remove { id: u64 },
    /// Hand leadership to another voter.
    TransferLeader { id: u64 },
    /// Take a snapshot on the node that answers.
    Snapshot,
    /// Remove every member whose id is above N: what a StatefulSet scaled down to N replicas
    /// keeps (node id = ordinal + 1). Moves the leadership first if the leader would go.
    Retain { keep: u64 },
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    let client = match args.addr.client() {
        Ok(client) => client,
        Err(e) => return Ok(fail(&e)),
    };
    let line = match args.action {
        ClusterAction::AddLearner {
            id,
            addr,
            peer_addr,
        } => client
            .add_learner(id, addr, peer_addr)
            .await
            .map(|m| membership_line(&m)),
        ClusterAction::AddVoter {
            id,
            addr,
            peer_addr,
        } => client
            .add_voter(id, addr, peer_addr)
            .await
            .map(|m| membership_line(&m)),
        ClusterAction::Remove { id } => client.remove_node(id).await.map(|m| membership_line(&m)),
        ClusterAction::TransferLeader { id } => client
            .transfer_leadership(id)
            .await
            .map(|s| format!("leader={} term={}", s.leader, s.term)),
        ClusterAction::Snapshot => client
            .trigger_snapshot()
            .await
            .map(|s| format!("snapshot_index={}", s.snapshot_index)),
        ClusterAction::Retain { keep } => retain(&client, keep).await,
    };
    match line {
        Ok(line) => {
            println!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(fail(&e)),
    }
}

/// Removes the members with an id above `keep`, highest first, after moving the leadership to
/// a voter that stays.
async fn retain(
    client: &raftlite_client::Client,
    keep: u64,
) -> Result<String, raftlite_client::Error> {
    if keep == 0 {
        return Err(raftlite_client::Error::Status {
            code: tonic::Code::InvalidArgument,
            message: "retain 0 would remove every node".into(),
            leader_hint: None,
        });
    }
    let status = client.status().await?;
    let mut leaving: Vec<u64> = status
        .nodes
        .iter()
        // A node that was removed already lists itself when it answers.
        .filter(|n| n.role != "removed")
        .map(|n| n.id)
        .filter(|&id| id > keep)
        .collect();
    leaving.sort_unstable_by(|a, b| b.cmp(a));
    if leaving.is_empty() {
        let ids = |voter: bool| {
            status
                .nodes
                .iter()
                .filter(|n| n.voter == voter)
                .map(|n| n.id.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        return Ok(format!(
            "unchanged voters={} learners={}",
            ids(true),
            ids(false)
        ));
    }
    if status.leader > keep {
        if let Some(target) = status
            .nodes
            .iter()
            .filter(|n| n.voter && n.id <= keep)
            .map(|n| n.id)
            .min()
        {
            client.transfer_leadership(target).await?;
        }
    }
    let mut lines = Vec::new();
    for id in leaving {
        lines.push(membership_line(&client.remove_node(id).await?));
    }
    Ok(lines.join("\n"))
}

pub fn membership_line(m: &MembershipResponse) -> String {
    let ids = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    format!(
        "log_index={} voters={} learners={}",
        m.log_index,
        ids(&m.voters),
        ids(&m.learners)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        cluster: ClusterArgs,
    }

    #[test]
    fn parses_actions() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.cluster.action);
        assert_eq!(
            parse(&[
                "cluster",
                "--addr",
                "a:1",
                "add-voter",
                "4",
                "10.0.0.4:7401"
            ])
            .expect("valid"),
            ClusterAction::AddVoter {
                id: 4,
                addr: "10.0.0.4:7401".into(),
                peer_addr: None,
            }
        );
        assert_eq!(
            parse(&["cluster", "--addr", "a:1", "remove", "3"]).expect("valid"),
            ClusterAction::Remove { id: 3 }
        );
        assert_eq!(
            parse(&["cluster", "--addr", "a:1", "transfer-leader", "2"]).expect("valid"),
            ClusterAction::TransferLeader { id: 2 }
        );
        assert_eq!(
            parse(&["cluster", "--addr", "a:1", "snapshot"]).expect("valid"),
            ClusterAction::Snapshot
        );
        assert_eq!(
            parse(&["cluster", "--addr", "a:1", "retain", "3"]).expect("valid"),
            ClusterAction::Retain { keep: 3 }
        );
        assert!(parse(&["cluster", "--addr", "a:1", "add-learner", "x", "a:2"]).is_err());
    }

    #[test]
    fn membership_line_lists_ids() {
        let m = MembershipResponse {
            log_index: 9,
            voters: vec![1, 2, 3],
            learners: vec![],
        };
        assert_eq!(membership_line(&m), "log_index=9 voters=1,2,3 learners=");
    }
}
