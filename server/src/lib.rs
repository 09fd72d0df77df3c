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
