//! `raftlite bench`: start a local cluster, measure writes and reads, print a table.
//!
//! Phases, each bounded by `--seconds`: single-client 1-row insert latency; 1-row insert
//! throughput with 1, 4, 16 and 64 concurrent clients, then with 16 and 64 concurrent writers
//! sharing one client (its clones: one connection and one write stream per node, as an
//! application's tasks share it); 1,000-row transactions (one
//! multi-row INSERT with bound parameters); an interactive read-modify-write transaction
//! (Begin, Query, Execute, Commit) from one client; point SELECTs by primary key from 16 clients
//! at each read consistency; and last (3 nodes or more), SIGKILL of the leader and the time
//! until the first write is acknowledged. Writers connect to the leader first (followers
//! would forward); readers spread over all nodes. Every client is its own [`Client`] with its
//! own connections, but for the shared-client phases. Any error fails the run (exit code 1)
//! after the report.
//!
//! # Configurations
//! By default the cluster runs as production does: mutual TLS on the peer port, TLS and a
//! `write` token on the client port (throwaway credentials, see
//! [`LocalCredentials`](super::local_credentials::LocalCredentials)), and every node archiving
//! to its default `file://<data-dir>/archive`. `--insecure` drops TLS and tokens,
//! `--archive none` the archive. The configuration is printed with the results.
//!
//! # The floor and the ratios
//! Before the phases, with the cluster up and idle, the bench measures what this machine does
//! without raftlite, in the cluster's data directory ([`super::bench_floor`]): a 4 KiB write +
//! `fdatasync`, a local SQLite WAL `synchronous=FULL` 1-row commit, and a gRPC round trip to
//! the leader over the cluster's transport. Each phase is then given a ratio to that floor,
//! which is what to compare across machines and runs (absolute numbers move with the disk
//! and the load):
//!
//! | phase | ratio | reads as |
//! |---|---|---|
//! | 1-row insert, latency; read-modify-write transaction | p50 ÷ SQLite commit p50 | a replicated write costs this many local commits (lower is better) |
//! | 1-row inserts, N clients or N writers on one client; 1,000-row transactions | rows/s × SQLite commit p50 | rows made durable in the time of one local commit (higher is better; 1 = one client committing locally back to back) |
//! | point reads | reads/s × gRPC round trip p50 | reads answered in the time of one bare round trip (higher is better; 1 = one client calling back to back) |
//! | leader SIGKILL | none | bounded by the election timeout, not by the floor |
//!
//! In `--json` the floor is the `floor` object (`fsync_p50_ms`, `sqlite_commit_p50_ms`,
//! `grpc_rtt_p50_ms`, their p99s and sample counts) and each phase has `ratio` (`null` where
//! none applies) and `ratio_kind`, the formula.
//!
//! The floor also shows, without a ratio, what one log flush costs while the local cluster's
//! three nodes flush at once on the one disk they share (`fsync_shared_p50_ms`): every write
//! of the bench waits for such a flush, which a cluster with a disk per node does not pay.
//! And what one hand-off between two threads costs, with both on one CPU and on two
//! (`wake_rtt_same_cpu_p50_ms`, `wake_rtt_cross_cpu_p50_ms`: a round trip, two wake-ups): a
//! write passes through several threads of each node on its way.

use std::future::Future;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use raftlite_client::{Client, ClientOptions, Consistency, Statement, Value};
use serde_json::json;

use super::bench_floor::{self, Floor};
use super::local_cluster::{LocalArchive, LocalCluster, LocalClusterOptions, StopSignals};
use super::status::table;

const ELECTION_DEADLINE: Duration = Duration::from_secs(30);
const ROWS_PER_TRANSACTION: usize = 1_000;
const WRITE_CLIENTS: [usize; 4] = [1, 4, 16, 64];
/// Concurrent writers on the clones of one client.
const SHARED_CLIENT_WRITERS: [usize; 2] = [16, 64];
const READ_CLIENTS: usize = 16;
/// `max_lag` of the bounded-staleness read phase.
const BOUNDED_MAX_LAG: u64 = 1_000;

/// Start a local cluster and measure write latency, write and read throughput.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=99))]
    pub nodes: u64,
    /// Duration of each phase.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// One JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Without TLS and tokens (default: mutual TLS between nodes, TLS and a token for
    /// clients, as in production).
    #[arg(long)]
    pub insecure: bool,
    /// Archive of every node: `local` (its default, file://<data-dir>/archive) or `none`.
    #[arg(long, value_enum, default_value_t = BenchArchive::Local)]
    pub archive: BenchArchive,
    /// Keep the cluster's data and the nodes' logs in DIR, which must be empty or new
    /// (default: a temporary directory, removed on exit). With `RAFTLITE_LOG`, which the nodes
    /// inherit, their logs show what each phase did.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchArchive {
    /// `file://<data-dir>/archive` on every node.
    Local,
    /// No archiving.
    None,
}

/// The configuration the cluster ran with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchConfig {
    pub secure: bool,
    pub archive: BenchArchive,
}

impl BenchConfig {
    pub fn from_args(args: &BenchArgs) -> BenchConfig {
        BenchConfig {
            secure: !args.insecure,
            archive: args.archive,
        }
    }

    /// The flags that select it: `default`, or e.g. `--insecure --archive none`.
    pub fn name(&self) -> String {
        let mut flags = Vec::new();
        if !self.secure {
            flags.push("--insecure");
        }
        if self.archive == BenchArchive::None {
            flags.push("--archive none");
        }
        if flags.is_empty() {
            "default".to_owned()
        } else {
            flags.join(" ")
        }
    }

    fn archive_text(&self) -> &'static str {
        match self.archive {
            BenchArchive::Local => "file://<data-dir>/archive",
            BenchArchive::None => "none",
        }
    }

    /// One line: the name and what it means.
    pub fn describe(&self) -> String {
        let transport = if self.secure {
            "mutual TLS between nodes, TLS + token for clients"
        } else {
            "plaintext, no tokens"
        };
        format!(
            "configuration: {} ({transport}, archive {})",
            self.name(),
            self.archive_text()
        )
    }

    fn to_json(self) -> serde_json::Value {
        json!({
            "name": self.name(),
            "peer_mtls": self.secure,
            "client_tls": self.secure,
            "client_token": self.secure,
            "archive": self.archive_text(),
        })
    }
}

/// What a phase measures, which decides its ratio to the floor (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseKind {
    /// One client writing one row at a time: its p50.
    Latency,
    /// Writes: rows per second.
    Write,
    /// Reads: requests per second.
    Read,
    /// Time to the first write after the leader is killed.
    Failover,
}

impl PhaseKind {
    /// The formula of the ratio (`ratio_kind` in the JSON).
    pub fn ratio_formula(self) -> Option<&'static str> {
        match self {
            PhaseKind::Latency => Some("p50_ms / sqlite_commit_p50_ms"),
            PhaseKind::Write => Some("rows_per_sec * sqlite_commit_p50_ms / 1000"),
            PhaseKind::Read => Some("ops_per_sec * grpc_rtt_p50_ms / 1000"),
            PhaseKind::Failover => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            PhaseKind::Latency => "latency",
            PhaseKind::Write => "write",
            PhaseKind::Read => "read",
            PhaseKind::Failover => "failover",
        }
    }
}

/// The ratio of a phase to the floor: see [`PhaseKind::ratio_formula`]. `None` without the
/// numbers it needs (no samples, a zero floor) or for failover.
pub fn ratio(
    kind: PhaseKind,
    p50_ms: Option<f64>,
    ops_per_sec: f64,
    rows_per_sec: f64,
    sqlite_commit_p50_ms: Option<f64>,
    grpc_rtt_p50_ms: Option<f64>,
) -> Option<f64> {
    let positive = |v: Option<f64>| v.filter(|v| *v > 0.0 && v.is_finite());
    match kind {
        PhaseKind::Latency => Some(p50_ms? / positive(sqlite_commit_p50_ms)?),
        PhaseKind::Write => Some(rows_per_sec * positive(sqlite_commit_p50_ms)? / 1000.0),
        PhaseKind::Read => Some(ops_per_sec * positive(grpc_rtt_p50_ms)? / 1000.0),
        PhaseKind::Failover => None,
    }
}

/// What one phase measured.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseReport {
    pub name: String,
    pub kind: PhaseKind,
    pub clients: usize,
    /// Successful operations (requests).
    pub ops: u64,
    /// Rows written or read by those operations.
    pub rows: u64,
    pub elapsed: Duration,
    /// Latency of successful operations, sorted.
    latencies: Vec<Duration>,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl PhaseReport {
    pub fn ops_per_sec(&self) -> f64 {
        per_second(self.ops, self.elapsed)
    }

    pub fn rows_per_sec(&self) -> f64 {
        per_second(self.rows, self.elapsed)
    }

    /// Latency percentile `p` in 0..=100, in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> Option<f64> {
        percentile(&self.latencies, p).map(|d| d.as_secs_f64() * 1000.0)
    }

    /// This phase's ratio to `floor` (see [`ratio`]).
    pub fn ratio(&self, floor: &Floor) -> Option<f64> {
        ratio(
            self.kind,
            self.percentile_ms(50.0),
            self.ops_per_sec(),
            self.rows_per_sec(),
            floor.sqlite_commit_p50_ms(),
            floor.grpc_rtt_p50_ms(),
        )
    }

    /// The ratio as the table shows it, with its unit.
    fn ratio_text(&self, floor: &Floor) -> String {
        match (self.kind, self.ratio(floor)) {
            (PhaseKind::Latency, Some(r)) => format!("{r:.1}x commit"),
            (PhaseKind::Write, Some(r)) => format!("{r:.2} rows/commit"),
            (PhaseKind::Read, Some(r)) => format!("{r:.2} reads/rtt"),
            _ => "-".to_owned(),
        }
    }

    fn to_json(&self, floor: &Floor) -> serde_json::Value {
        json!({
            "name": self.name,
            "kind": self.kind.name(),
            "clients": self.clients,
            "ops": self.ops,
            "rows": self.rows,
            "seconds": self.elapsed.as_secs_f64(),
            "ops_per_sec": self.ops_per_sec(),
            "rows_per_sec": self.rows_per_sec(),
            "p50_ms": self.percentile_ms(50.0),
            "p99_ms": self.percentile_ms(99.0),
            "errors": self.errors,
            "first_error": self.first_error,
            "ratio": self.ratio(floor),
            "ratio_kind": self.kind.ratio_formula(),
        })
    }
}

fn per_second(n: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let config = BenchConfig::from_args(&args);
    if let Some(dir) = &args.data_dir {
        let used = std::fs::read_dir(dir).map(|mut d| d.next().is_some());
        anyhow::ensure!(
            !matches!(used, Ok(true)),
            "{} is not empty: the bench starts a new cluster, give it an empty or new directory",
            dir.display()
        );
    }
    let options = LocalClusterOptions {
        nodes: args.nodes,
        base_port: None,
        data_dir: args.data_dir.clone(),
        secure: config.secure,
        archive: Some(match config.archive {
            BenchArchive::Local => LocalArchive::DataDir,
            BenchArchive::None => LocalArchive::Off,
        }),
    };
    eprintln!("bench: {}", config.describe());
    let mut signals = StopSignals::install()?;
    let mut cluster = LocalCluster::start(&options)?;
    let outcome = tokio::select! {
        outcome = bench(&mut cluster, Duration::from_secs(args.seconds)) => outcome,
        signal = signals.recv() => Err(anyhow::anyhow!("interrupted ({signal})")),
    };
    cluster.stop().await?;
    let (floor, reports) = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("error: {}", crate::error_text(&e));
            return Ok(ExitCode::FAILURE);
        }
    };
    if args.json {
        println!(
            "{}",
            report_json(args.nodes, args.seconds, config, &floor, &reports)
        );
    } else {
        println!("{}", config.describe());
        print!("{}", report_table(&reports, &floor));
        print!("{}", floor_legend(&floor));
    }
    let failed: Vec<&PhaseReport> = reports.iter().filter(|r| r.errors > 0).collect();
    for r in &failed {
        eprintln!(
            "error: phase {:?} saw {} errors, first: {}",
            r.name,
            r.errors,
            r.first_error.as_deref().unwrap_or("?")
        );
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The whole `--json` output.
pub fn report_json(
    nodes: u64,
    seconds: u64,
    config: BenchConfig,
    floor: &Floor,
    reports: &[PhaseReport],
) -> serde_json::Value {
    let phases: Vec<_> = reports.iter().map(|r| r.to_json(floor)).collect();
    json!({
        "nodes": nodes,
        "seconds_per_phase": seconds,
        "configuration": config.to_json(),
        "floor": floor.to_json(),
        "phases": phases,
    })
}

/// What the floor measured and how the ratios are computed, printed under the table.
pub fn floor_legend(floor: &Floor) -> String {
    format!(
        "\nfloor, measured in this run in the cluster's data directory:\n{}\
         ratios: latency = p50 / SQLite commit p50 (lower is better); \
         rows/commit = rows/s x SQLite commit p50; reads/rtt = reads/s x gRPC round trip p50 \
         (higher is better)\n",
        floor.describe()
    )
}

/// Measures the floor in `dir` (the cluster's data directory) and against `leader_url`.
async fn measure_floor(
    dir: &std::path::Path,
    leader_url: &str,
    tls_ca: Option<&[u8]>,
) -> anyhow::Result<Floor> {
    use bench_floor::{BUDGET, MAX_SAMPLES};
    let dir = dir.join("floor");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    eprintln!("bench: floor in {} ...", dir.display());
    let blocking = |f: fn(&std::path::Path) -> anyhow::Result<bench_floor::Samples>| {
        let dir = dir.clone();
        async move {
            tokio::task::spawn_blocking(move || f(&dir))
                .await
                .context("floor measurement panicked")?
        }
    };
    let fsync = blocking(|d| bench_floor::fsync_preallocated(d, BUDGET, MAX_SAMPLES)).await?;
    let fsync_append = blocking(|d| bench_floor::fsync_append(d, BUDGET, MAX_SAMPLES)).await?;
    let fsync_shared =
        blocking(|d| bench_floor::fsync_shared(d, bench_floor::SHARED_FILES, BUDGET, MAX_SAMPLES))
            .await?;
    let sqlite_commit =
        blocking(|d| bench_floor::sqlite_commit(d, PAYLOAD, BUDGET, MAX_SAMPLES)).await?;
    let grpc_rtt = bench_floor::grpc_rtt(leader_url, tls_ca, BUDGET, MAX_SAMPLES).await?;
    // An extra, without a ratio: a machine that will not pin threads still gets its bench.
    let (wake_same_cpu, wake_cross_cpu) =
        match tokio::task::spawn_blocking(|| bench_floor::wake_rtts(BUDGET, MAX_SAMPLES))
            .await
            .context("floor measurement panicked")?
        {
            Ok(samples) => samples,
            Err(e) => {
                eprintln!("bench: thread wake round trips not measured: {e:#}");
                Default::default()
            }
        };
    let _ = std::fs::remove_dir(&dir);
    Ok(Floor {
        fsync,
        fsync_append,
        fsync_shared,
        sqlite_commit,
        grpc_rtt,
        grpc_tls: tls_ca.is_some(),
        wake_same_cpu,
        wake_cross_cpu,
        cpu_idle: bench_floor::CpuIdle::read(std::path::Path::new("/sys")),
    })
}

/// `addr` as a URL: `http://` unless it has a scheme.
fn url(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

async fn bench(
    cluster: &mut LocalCluster,
    phase: Duration,
) -> anyhow::Result<(Floor, Vec<PhaseReport>)> {
    let leader = cluster.wait_for_leader(ELECTION_DEADLINE).await?;
    let addrs = cluster.addrs();
    let leader_addr = cluster
        .nodes()
        .iter()
        .find(|n| n.id == leader)
        .map_or_else(|| addrs[0].clone(), |n| n.addr.clone());
    eprintln!(
        "bench: {} nodes, leader node {leader} at {leader_addr}, {} s per phase",
        addrs.len(),
        phase.as_secs()
    );

    let floor = measure_floor(cluster.dir(), &url(&leader_addr), cluster.ca_pem()).await?;

    // Writers: the leader first, then the others. Readers: all nodes, rotated per client.
    let mut writer_addrs = vec![leader_addr.clone()];
    writer_addrs.extend(addrs.iter().filter(|a| **a != leader_addr).cloned());
    let options = cluster.client_options(ClientOptions::default());
    let writer = || Client::with_options(writer_addrs.iter().map(String::as_str), options.clone());
    let writers = |n: usize| -> anyhow::Result<Vec<Client>> {
        (0..n).map(|_| writer().map_err(Into::into)).collect()
    };
    // Clones of one client: one connection and one write stream per node, shared.
    let shared_writers = |n: usize| -> anyhow::Result<Vec<Client>> { Ok(vec![writer()?; n]) };
    let readers = |n: usize| -> anyhow::Result<Vec<Client>> {
        (0..n)
            .map(|i| {
                let rotated = addrs.iter().cycle().skip(i % addrs.len()).take(addrs.len());
                Client::with_options(rotated.map(String::as_str), options.clone())
                    .map_err(Into::into)
            })
            .collect()
    };

    let setup = writers(1)?.remove(0);
    setup
        .execute(["CREATE TABLE IF NOT EXISTS bench (id INTEGER PRIMARY KEY, client INTEGER NOT NULL, payload TEXT NOT NULL)"])
        .await
        .context("create the bench table")?;

    let mut reports = Vec::new();
    let insert = |client: Client, worker: usize| async move {
        client
            .exec(
                "INSERT INTO bench (client, payload) VALUES (?1, ?2)",
                [Value::from(worker as i64), Value::from(PAYLOAD)],
            )
            .await?;
        Ok::<u64, raftlite_client::Error>(1)
    };
    reports.push(
        run_phase(
            "1-row insert, latency",
            PhaseKind::Latency,
            writers(1)?,
            phase,
            insert,
        )
        .await,
    );
    for n in WRITE_CLIENTS {
        reports.push(
            run_phase(
                &format!("1-row insert, {n} clients"),
                PhaseKind::Write,
                writers(n)?,
                phase,
                insert,
            )
            .await,
        );
    }
    for n in SHARED_CLIENT_WRITERS {
        reports.push(
            run_phase(
                &format!("1-row insert, {n} writers on one client"),
                PhaseKind::Write,
                shared_writers(n)?,
                phase,
                insert,
            )
            .await,
        );
    }
    let batch = Arc::new(multi_row_insert(ROWS_PER_TRANSACTION));
    reports.push(
        run_phase(
            &format!("{ROWS_PER_TRANSACTION}-row transactions"),
            PhaseKind::Write,
            writers(1)?,
            phase,
            move |client, _| {
                let batch = Arc::clone(&batch);
                async move {
                    client.execute([(*batch).clone()]).await?;
                    Ok::<u64, raftlite_client::Error>(ROWS_PER_TRANSACTION as u64)
                }
            },
        )
        .await,
    );

    // An interactive transaction that reads, decides and writes: four round trips to the
    // leader (Begin, Query, Execute, Commit) and one replicated delta.
    reports.push(
        run_phase(
            "read-modify-write transaction, latency",
            PhaseKind::Latency,
            writers(1)?,
            phase,
            |client, worker| async move {
                let mut tx = client.begin().await?;
                let rows = tx.query("SELECT max(id) FROM bench", None::<i64>).await?;
                let max: Option<i64> = rows.rows.first().map(|r| r.get(0)).transpose()?.flatten();
                tx.exec(
                    "INSERT INTO bench (client, payload) VALUES (?1, ?2)",
                    [
                        Value::from(worker as i64),
                        Value::from(max.unwrap_or(0).to_string()),
                    ],
                )
                .await?;
                tx.commit().await?;
                Ok::<u64, raftlite_client::Error>(1)
            },
        )
        .await,
    );

    // Reads: random existing ids. The token of a fresh write makes at-index meaningful.
    let token = setup
        .exec(
            "INSERT INTO bench (client, payload) VALUES (-1, 'token')",
            None::<i64>,
        )
        .await?
        .log_index;
    let rows = setup
        .query("SELECT max(id) FROM bench", None::<i64>)
        .await?;
    let max_id = rows
        .rows
        .first()
        .map(|r| r.get::<Option<i64>>(0))
        .transpose()?
        .flatten()
        .unwrap_or(1)
        .max(1);
    for (label, consistency) in [
        ("stale", Consistency::Stale),
        (
            "bounded",
            Consistency::Bounded {
                max_lag: BOUNDED_MAX_LAG,
            },
        ),
        ("at-index", Consistency::AtIndex(token)),
        ("linearizable", Consistency::Linearizable),
    ] {
        let name = format!("point read, {label}, {READ_CLIENTS} clients");
        let report = run_phase(
            &name,
            PhaseKind::Read,
            readers(READ_CLIENTS)?,
            phase,
            move |client, _| async move {
                let id = rand::random::<u64>() % max_id as u64 + 1;
                let statement =
                    Statement::new("SELECT id, client, payload FROM bench WHERE id = ?1")
                        .bind(id as i64);
                let rows = client.query_with(statement, consistency, 0).await?;
                Ok::<u64, raftlite_client::Error>(rows.rows.len() as u64)
            },
        )
        .await;
        reports.push(report);
    }

    // Last, because it kills the leader: time from SIGKILL to the first acknowledged write, as
    // a client that knows every node sees it (its retries and backoff included). Fewer than
    // three nodes have no quorum left after that.
    if addrs.len() < 3 {
        eprintln!("bench: no failover phase with fewer than 3 nodes");
        return Ok((floor, reports));
    }
    // The current leader: it may have moved since the start (a busy machine misses heartbeats).
    let leader = cluster.wait_for_leader(ELECTION_DEADLINE).await?;
    let survivor = writers(1)?.remove(0);
    let killed_at = Instant::now();
    cluster.kill(leader)?;
    let outcome = survivor
        .exec(
            "INSERT INTO bench (client, payload) VALUES (?1, ?2)",
            [Value::from(-1i64), Value::from(PAYLOAD)],
        )
        .await;
    let elapsed = killed_at.elapsed();
    let (errors, first_error) = match &outcome {
        Ok(_) => (0, None),
        Err(e) => (1, Some(e.to_string())),
    };
    reports.push(PhaseReport {
        name: "leader SIGKILL -> first write".into(),
        kind: PhaseKind::Failover,
        clients: 1,
        ops: u64::from(outcome.is_ok()),
        rows: u64::from(outcome.is_ok()),
        elapsed,
        latencies: vec![elapsed],
        errors,
        first_error,
    });
    Ok((floor, reports))
}

const PAYLOAD: &str = "raftlite-bench-payload-0123456789";

/// One INSERT of `rows` rows, its values bound as parameters.
fn multi_row_insert(rows: usize) -> Statement {
    let values = vec!["(?, ?)"; rows].join(", ");
    let mut statement = Statement::new(format!(
        "INSERT INTO bench (client, payload) VALUES {values}"
    ));
    for i in 0..rows {
        statement = statement.bind(-2).bind(format!("{PAYLOAD}-{i}"));
    }
    statement
}

/// Runs `op` in a loop on every client concurrently for `duration`. `op` returns the rows it
/// handled. Each client stops at the first error (which is counted, not retried past the
/// client's own retries).
async fn run_phase<F, Fut>(
    name: &str,
    kind: PhaseKind,
    clients: Vec<Client>,
    duration: Duration,
    op: F,
) -> PhaseReport
where
    F: Fn(Client, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<u64, raftlite_client::Error>> + Send,
{
    eprintln!("bench: {name} ...");
    let started = Instant::now();
    let deadline = started + duration;
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let n = clients.len();
    for (worker, client) in clients.into_iter().enumerate() {
        let op = op.clone();
        let errors = Arc::clone(&errors);
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut rows = 0;
            let mut first_error = None;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                crate::stamp!("client.send", 0);
                match op(client.clone(), worker).await {
                    Ok(n) => {
                        crate::stamp!("client.recv", 0);
                        latencies.push(t0.elapsed());
                        rows += n;
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error = Some(super::error_line(&e));
                        break;
                    }
                }
            }
            (latencies, rows, first_error)
        });
    }
    let mut report = PhaseReport {
        name: name.to_string(),
        kind,
        clients: n,
        ops: 0,
        rows: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
        errors: 0,
        first_error: None,
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((latencies, rows, first_error)) => {
                report.ops += latencies.len() as u64;
                report.latencies.extend(latencies);
                report.rows += rows;
                report.first_error = report.first_error.take().or(first_error);
            }
            Err(e) => {
                errors.fetch_add(1, Ordering::Relaxed);
                report
                    .first_error
                    .get_or_insert_with(|| format!("worker failed: {e}"));
            }
        }
    }
    report.elapsed = started.elapsed();
    report.errors = errors.load(Ordering::Relaxed);
    report.latencies.sort_unstable();
    report
}

pub fn report_table(reports: &[PhaseReport], floor: &Floor) -> String {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
    let mut rows = vec![[
        "PHASE", "CLIENTS", "OPS/S", "ROWS/S", "P50 MS", "P99 MS", "ERRORS", "VS FLOOR",
    ]
    .map(String::from)];
    for r in reports {
        rows.push([
            r.name.clone(),
            r.clients.to_string(),
            format!("{:.0}", r.ops_per_sec()),
            format!("{:.0}", r.rows_per_sec()),
            ms(r.percentile_ms(50.0)),
            ms(r.percentile_ms(99.0)),
            r.errors.to_string(),
            r.ratio_text(floor),
        ]);
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&samples, 50.0), Some(ms(50)));
        assert_eq!(percentile(&samples, 99.0), Some(ms(99)));
        assert_eq!(percentile(&samples, 100.0), Some(ms(100)));
        assert_eq!(percentile(&samples, 0.0), Some(ms(1)));
        assert_eq!(percentile(&[ms(7)], 99.0), Some(ms(7)));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn multi_row_insert_binds_two_values_per_row() {
        let s = multi_row_insert(3);
        assert_eq!(
            s.sql(),
            "INSERT INTO bench (client, payload) VALUES (?, ?), (?, ?), (?, ?)"
        );
        assert_eq!(s.positional().len(), 6);
    }

    fn floor(sqlite_commit_ms: u64, rtt_ms: u64) -> Floor {
        use super::bench_floor::Samples;
        Floor {
            fsync: Samples::new(vec![ms(1)]),
            fsync_append: Samples::new(vec![ms(1)]),
            fsync_shared: Samples::new(vec![ms(1)]),
            sqlite_commit: Samples::new(vec![ms(sqlite_commit_ms)]),
            grpc_rtt: Samples::new(vec![ms(rtt_ms)]),
            grpc_tls: true,
            ..Floor::default()
        }
    }

    fn report(
        name: &str,
        kind: PhaseKind,
        ops: u64,
        rows: u64,
        latencies: Vec<Duration>,
    ) -> PhaseReport {
        PhaseReport {
            name: name.into(),
            kind,
            clients: 4,
            ops,
            rows,
            elapsed: Duration::from_secs(2),
            latencies,
            errors: 0,
            first_error: None,
        }
    }

    #[test]
    fn report_shows_rates_errors_and_the_ratio() {
        let report = report(
            "1-row insert, 4 clients",
            PhaseKind::Write,
            1000,
            1000,
            vec![ms(1), ms(2), ms(3)],
        );
        assert_eq!(report.ops_per_sec(), 500.0);
        // 500 rows/s x 2 ms = 1 row per local commit time.
        let text = report_table(std::slice::from_ref(&report), &floor(2, 1));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "PHASE                    CLIENTS  OPS/S  ROWS/S  P50 MS  P99 MS  ERRORS  VS FLOOR"
        );
        assert_eq!(
            lines[1],
            "1-row insert, 4 clients  4        500    500     2.00    3.00    0       1.00 rows/commit"
        );
    }

    #[test]
    fn ratios_follow_the_phase_kind() {
        let commit = Some(0.25);
        let rtt = Some(0.05);
        // Latency: p50 over the local commit.
        assert_eq!(
            ratio(PhaseKind::Latency, Some(1.0), 0.0, 0.0, commit, rtt),
            Some(4.0)
        );
        // Writes: rows per local commit time.
        assert_eq!(
            ratio(PhaseKind::Write, Some(9.0), 10.0, 20_000.0, commit, rtt),
            Some(5.0)
        );
        // Reads: requests per bare round trip.
        assert_eq!(
            ratio(PhaseKind::Read, Some(9.0), 10_000.0, 1.0, commit, rtt),
            Some(0.5)
        );
        assert_eq!(
            ratio(PhaseKind::Failover, Some(1.0), 1.0, 1.0, commit, rtt),
            None
        );
        // Nothing to divide by, or no samples: no ratio.
        assert_eq!(
            ratio(PhaseKind::Latency, Some(1.0), 0.0, 0.0, Some(0.0), rtt),
            None
        );
        assert_eq!(ratio(PhaseKind::Latency, None, 0.0, 0.0, commit, rtt), None);
        assert_eq!(ratio(PhaseKind::Write, None, 1.0, 1.0, None, rtt), None);
        assert_eq!(ratio(PhaseKind::Read, None, 1.0, 1.0, commit, None), None);
        for kind in [PhaseKind::Latency, PhaseKind::Write, PhaseKind::Read] {
            assert!(kind.ratio_formula().is_some(), "{kind:?}");
        }
    }

    #[test]
    fn json_has_the_configuration_the_floor_and_a_ratio_per_phase() {
        let floor = floor(2, 1);
        let reports = [
            report(
                "1-row insert, latency",
                PhaseKind::Latency,
                1,
                1,
                vec![ms(8)],
            ),
            report(
                "point read, stale, 16 clients",
                PhaseKind::Read,
                3000,
                3000,
                vec![ms(1)],
            ),
            report(
                "leader SIGKILL -> first write",
                PhaseKind::Failover,
                1,
                1,
                vec![ms(900)],
            ),
        ];
        let config = BenchConfig {
            secure: true,
            archive: BenchArchive::Local,
        };
        let json = report_json(3, 5, config, &floor, &reports);
        for key in ["fsync_p50_ms", "sqlite_commit_p50_ms", "grpc_rtt_p50_ms"] {
            assert!(json["floor"][key].is_f64(), "floor.{key} in {json}");
        }
        assert_eq!(json["floor"]["sqlite_commit_p50_ms"], 2.0);
        assert_eq!(json["configuration"]["name"], "default");
        assert_eq!(json["configuration"]["peer_mtls"], true);
        assert_eq!(
            json["configuration"]["archive"],
            "file://<data-dir>/archive"
        );
        let phases = json["phases"].as_array().expect("phases");
        assert_eq!(phases.len(), 3);
        assert_eq!(phases[0]["ratio"], 4.0);
        assert_eq!(phases[0]["ratio_kind"], "p50_ms / sqlite_commit_p50_ms");
        // 1,500 reads/s x 1 ms.
        assert_eq!(phases[1]["ratio"], 1.5);
        assert!(phases[2]["ratio"].is_null());
        assert!(phases.iter().all(|p| p.get("ratio").is_some()));
        let text = report_table(&reports, &floor);
        assert!(text.contains("4.0x commit"), "{text}");
        assert!(text.contains("1.50 reads/rtt"), "{text}");
    }

    #[test]
    fn configurations_are_named_by_their_flags() {
        let config = |secure, archive| BenchConfig { secure, archive };
        assert_eq!(config(true, BenchArchive::Local).name(), "default");
        assert_eq!(
            config(false, BenchArchive::None).name(),
            "--insecure --archive none"
        );
        assert_eq!(config(false, BenchArchive::Local).name(), "--insecure");
        assert_eq!(config(true, BenchArchive::None).name(), "--archive none");
        assert!(config(true, BenchArchive::Local)
            .describe()
            .contains("mutual TLS between nodes, TLS + token for clients"));
        assert!(config(false, BenchArchive::None)
            .describe()
            .contains("plaintext, no tokens, archive none"));
    }
}
