//! Harness for scenario tests against REAL `raftlite serve` processes on loopback.
//!
//! A [`Cluster`] picks free loopback ports and a temporary directory, spawns one `raftlite
//! serve` process per node (stderr to `<tmp>/node-N.log`), and lets a scenario break it: SIGKILL
//! ([`NodeProcess::kill`]), SIGTERM ([`NodeProcess::stop`]), restart with the same arguments and
//! data ([`NodeProcess::restart`]), or a wiped data directory ([`NodeProcess::wipe`]).
//!
//! What a scenario asserts comes from two witnesses that do not trust the server's own word:
//! * a [`Checker`] records every write the cluster acknowledged (unique key and value) and, at
//!   the end, reads every node and demands each acknowledged key exactly once with its value,
//!   no key twice and no key nobody wrote;
//! * [`Cluster::assert_identical_pages`] reads every node's `db.sqlite` page by page through
//!   `sqlite_dbpage` and demands byte-identical replicas, the core promise of page deltas.
//!
//! Waits are conditions polled until a deadline ([`wait_until`]); nothing sleeps for a fixed
//! time and hopes. When a test panics, dropping the [`Cluster`] kills its processes, prints the
//! tail of every node's log and keeps the temporary directory for inspection.
//!
//! The binary comes from `RAFTLITE_BIN`, else `<target>/debug/raftlite` where `<target>` is
//! `CARGO_TARGET_DIR` or the workspace's `target/`. Build it first: see the README's test
//! command (`cargo build -p raftlite -p raftlite-counter && cargo test -p cluster-tests --
//! --test-threads=1`). The Docker scenarios (t80, [`docker`]) also need Docker.

mod binary;
mod checker;
mod cluster;
mod convergence;
pub mod docker;
mod load;
mod metrics;
mod node;
mod pages;
mod s3;
mod security;
mod wait;

pub use binary::{counter_binary, raftlite_binary};
pub use checker::{CheckReport, Checker};
pub use cluster::{three_nodes_with, Cluster, ClusterOptions};
pub use docker::{DockerCluster, DockerOptions};
pub use load::{LoadLimits, LoadReport, WriteLoad};
pub use metrics::{health, metric_value, metrics_addr, scrape};
pub use node::NodeProcess;
pub use pages::{PageDigests, PageImage};
pub use raftlite_client::{self as client, Client, ClientOptions, Consistency, Statement};
pub use s3::{MotoServer, S3Proxy};
pub use security::{raw_sql, Credentials, ROLES};
pub use wait::wait_until;

/// Asserts that `result` is a gRPC status with `code` answered by a server (not a transport
/// failure dressed as UNAVAILABLE) and returns its message.
#[track_caller]
pub fn expect_status<T: std::fmt::Debug>(
    result: Result<T, client::Error>,
    code: tonic::Code,
    what: &str,
) -> String {
    match result {
        Err(client::Error::Status {
            code: got, message, ..
        }) if got == code => message,
        other => panic!("{what}: expected a {code:?} status from the server, got {other:?}"),
    }
}

/// Sends `tracing` output (the scenarios' phase lines and the harness's own) to the test
/// writer, so `--nocapture` shows it and a passing test stays quiet. `RUST_LOG` overrides the
/// default filter. Safe to call from every test.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_target(false)
        .try_init();
}
