//! `raftlite status`: the cluster as one node sees it.
//!
//! `--json` prints ONE object: `cluster_id`, `node_id` (the node that answered), `leader` (0:
//! none), `term`, `commit_index`, `applied_index`, `snapshot_index` and `nodes`, each with
//! `id`, `addr` (client address), `peer_addr`, `role`, `applied_index`, `lag`, `voter`, `term`, and `archive` (`url`,
//! `uploading`, `generation`, `archived_index`, `lag_entries`, `lag_ms`, `last_error`, `snapshot_index`) as the
//! answering node sees it. Without it, a table.

use std::process::ExitCode;

use raftlite_client::proto::v1::StatusResponse;
use serde_json::json;

use super::{fail, AddrArgs};

/// Show the cluster: leader, term, indexes, and every member's role and lag.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub addr: AddrArgs,
    /// One JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let status = match args.addr.client() {
        Ok(client) => client.status().await,
        Err(e) => Err(e),
    };
    match status {
        Ok(status) if args.json => println!("{}", status_json(&status)),
        Ok(status) => print!("{}", status_table(&status)),
        Err(e) => return Ok(fail(&e)),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn status_json(status: &StatusResponse) -> serde_json::Value {
    let nodes: Vec<_> = status
        .nodes
        .iter()
        .map(|n| {
            json!({
                "id": n.id,
                "addr": n.addr,
                "peer_addr": n.peer_addr,
                "role": n.role,
                "applied_index": n.applied_index,
                "lag": n.lag,
                "voter": n.voter,
                "term": n.term,
            })
        })
        .collect();
    json!({
        "cluster_id": status.cluster_id,
        "node_id": status.node_id,
        "leader": status.leader,
        "term": status.term,
        "commit_index": status.commit_index,
        "applied_index": status.applied_index,
        "snapshot_index": status.snapshot_index,
        "nodes": nodes,
        "archive": status.archive.as_ref().map(|a| json!({
            "url": a.url,
            "uploading": a.uploading,
            "generation": a.generation,
            "archived_index": a.archived_index,
            "lag_entries": a.lag_entries,
            "lag_ms": a.lag_ms,
            "last_error": a.last_error,
            "snapshot_index": a.snapshot_index,
        })),
    })
}

pub fn status_table(status: &StatusResponse) -> String {
    let leader = match status.leader {
        0 => "none".to_string(),
        id => id.to_string(),
    };
    let mut out = format!(
        "cluster {}  (answered by node {})\nleader {leader}  term {}  commit {}  applied {}  snapshot {}\n\n",
        status.cluster_id,
        status.node_id,
        status.term,
        status.commit_index,
        status.applied_index,
        status.snapshot_index
    );
    let mut rows = vec![[
        "ID",
        "ADDR",
        "PEER ADDR",
        "ROLE",
        "VOTER",
        "APPLIED",
        "LAG",
        "TERM",
    ]
    .map(String::from)];
    for n in &status.nodes {
        rows.push([
            n.id.to_string(),
            n.addr.clone(),
            n.peer_addr.clone(),
            n.role.clone(),
            if n.voter { "yes" } else { "no" }.to_string(),
            n.applied_index.to_string(),
            n.lag.to_string(),
            n.term.to_string(),
        ]);
    }
    out.push_str(&table(&rows));
    if let Some(line) = status.archive.as_ref().and_then(archive_line) {
        out.push('\n');
        out.push_str(&line);
    }
    out
}

/// `archive URL  generation G  archived I  lag N entries / T ms  [error: ...]`, or nothing
/// when archiving is off.
fn archive_line(a: &raftlite_client::proto::v1::ArchiveStatus) -> Option<String> {
    if a.url.is_empty() {
        return None;
    }
    let mut line = format!(
        "archive {}  generation {}  archived {}  snapshot {}",
        a.url, a.generation, a.archived_index, a.snapshot_index
    );
    if a.uploading {
        line.push_str(&format!(
            "  lag {} entries / {} ms",
            a.lag_entries, a.lag_ms
        ));
    } else {
        line.push_str("  (uploaded by the leader)");
    }
    if !a.last_error.is_empty() {
        line.push_str(&format!("  error: {}", a.last_error));
    }
    line.push('\n');
    Some(line)
}

/// Left-aligned columns separated by two spaces.
pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftlite_client::proto::v1::NodeStatus;

    fn sample() -> StatusResponse {
        let node = |id: u64, role: &str, applied_index: u64, lag: u64| NodeStatus {
            id,
            addr: format!("127.0.0.1:740{id}"),
            peer_addr: format!("127.0.0.1:741{id}"),
            role: role.into(),
            applied_index,
            lag,
            voter: true,
            term: 3,
        };
        StatusResponse {
            cluster_id: "c-1".into(),
            node_id: 1,
            leader: 2,
            term: 3,
            commit_index: 10,
            applied_index: 9,
            snapshot_index: 0,
            archive: None,
            nodes: vec![
                node(1, "follower", 9, 1),
                node(2, "leader", 10, 0),
                node(3, "unreachable", 0, 10),
            ],
        }
    }

    #[test]
    fn json_has_the_documented_shape() {
        let json = status_json(&sample());
        for key in [
            "cluster_id",
            "leader",
            "term",
            "commit_index",
            "applied_index",
            "nodes",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert_eq!(json["leader"], 2);
        assert_eq!(json["nodes"].as_array().map(Vec::len), Some(3));
        for key in ["id", "addr", "role", "applied_index", "lag", "voter"] {
            assert!(json["nodes"][0].get(key).is_some(), "missing nodes[].{key}");
        }
        assert_eq!(json["nodes"][2]["role"], "unreachable");
        assert_eq!(json["nodes"][1]["voter"], true);
    }

    #[test]
    fn table_aligns_columns() {
        let text = status_table(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "cluster c-1  (answered by node 1)");
        assert_eq!(
            lines[1],
            "leader 2  term 3  commit 10  applied 9  snapshot 0"
        );
        assert_eq!(
            lines[3],
            "ID  ADDR            PEER ADDR       ROLE         VOTER  APPLIED  LAG  TERM"
        );
        assert_eq!(
            lines[6],
            "3   127.0.0.1:7403  127.0.0.1:7413  unreachable  yes    0        10   3"
        );
    }
}
