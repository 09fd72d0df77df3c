//! Scenario tests against real `raftlite serve` processes, one integration-test binary.
//!
//! Build the server first, then run them one at a time (each starts its own cluster):
//! `cargo build -p raftlite -p raftlite-counter && cargo test -p cluster-tests -- --test-threads=1 --nocapture`
//!
//! Scenario files are numbered by theme; each reads as phases, one `tracing::info!` per phase.

#[path = "cluster/t10_basic.rs"]
mod t10_basic;
#[path = "cluster/t12_transactions.rs"]
mod t12_transactions;
#[path = "cluster/t15_security.rs"]
mod t15_security;
#[path = "cluster/t16_bounded_work.rs"]
mod t16_bounded_work;
#[path = "cluster/t17_execute_stream.rs"]
mod t17_execute_stream;
#[path = "cluster/t20_failover.rs"]
mod t20_failover;
#[path = "cluster/t25_cut_off_leader.rs"]
mod t25_cut_off_leader;
#[path = "cluster/t30_snapshot.rs"]
mod t30_snapshot;
#[path = "cluster/t35_resync.rs"]
mod t35_resync;
#[path = "cluster/t40_membership.rs"]
mod t40_membership;
#[path = "cluster/t50_archive_restore.rs"]
mod t50_archive_restore;
#[path = "cluster/t60_probes_metrics.rs"]
mod t60_probes_metrics;
#[path = "cluster/t70_compose.rs"]
mod t70_compose;
#[path = "cluster/t80_chaos.rs"]
mod t80_chaos;
#[path = "cluster/t90_migrate.rs"]
mod t90_migrate;
#[path = "cluster/t95_overload.rs"]
mod t95_overload;
#[path = "cluster/t96_tracing.rs"]
mod t96_tracing;
