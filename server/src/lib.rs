//! raftlite node library: highly available SQLite over Raft.
//!
//! The leader executes writes, captures the pages they change as a page delta without
//! committing, and replicates the delta through the Raft log; every node applies committed
//! deltas to its own SQLite file, so replicas are byte-identical. See ARCHITECTURE.md.
//!
//! Rooms: `db` (SQLite only), `raft` (the openraft seam), `node` (write path, reads, status),
//! `grpc` (public tonic services), `peer` (all node-to-node traffic: the Raft network,
//! forwarding, read index, identity, joining), `cluster` (bootstrap, identity, pod identity, joining, re-sync),
//! `archive` (object-store archive and restore), `metrics` (Prometheus), `telemetry` (logs,
//! OTLP traces, trace-context propagation), `config`, `cli`.

pub mod archive;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod db;
pub mod failpoint;
pub mod grpc;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod raft;
pub mod reload;
pub mod serve;
pub mod telemetry;
pub mod timeline;
pub mod tls;

/// An error and its causes on one line, each said once: some errors (object_store's, for one)
/// already print their sources, which `{:#}` would print again after them.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if part.is_empty() || text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_cause_is_said_once() {
        let root = std::io::Error::other("connection refused");
        let wrapped = anyhow::Error::new(root)
            .context("HTTP error: error sending request: connection refused")
            .context("upload s3://b/x");
        assert_eq!(
            super::error_text(&wrapped),
            "upload s3://b/x: HTTP error: error sending request: connection refused"
        );
    }
}
