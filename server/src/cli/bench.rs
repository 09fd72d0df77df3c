//! `raftlite bench`: start a local cluster, measure writes and reads, print a table.
//!
//! Phases, each bounded by `--seconds`: single-client 1-row insert latency; 1-row insert
//! throughput with 1, 4, 16 and 64 concurrent clients; 1,000-row transactions (one
//! multi-row INSERT with bound parameters); and point SELECTs by primary key from 16 clients
//! at each read consistency. Writers connect to the leader first (followers would forward);
//! readers spread over all nodes. Every client is its own [`Client`] with its own connections.
//! Any error fails the run (exit code 1) after the report.

use std::future::Future;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use raftlite_client::{Client, Consistency, Statement, Value};
use serde_json::json;

use super::local_cluster::{LocalCluster, LocalClusterOptions};
use super::status::table;

const ELECTION_DEADLINE: Duration = Duration::from_secs(30);
const ROWS_PER_TRANSACTION: usize = 1_000;
const WRITE_CLIENTS: [usize; 4] = [1, 4, 16, 64];
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
}

/// What one phase measured.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseReport {
    pub name: String,
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

    fn to_json(&self) -> serde_json::Value {
        json!({
            "name": self.name,
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
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let options = LocalClusterOptions {
        nodes: args.nodes,
        base_port: None,
        data_dir: None,
        ..LocalClusterOptions::default()
    };
    let mut cluster = LocalCluster::start(&options)?;
    let outcome = tokio::select! {
        outcome = bench(&mut cluster, Duration::from_secs(args.seconds)) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    cluster.stop().await?;
    let reports = match outcome {
        Ok(reports) => reports,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if args.json {
        let phases: Vec<_> = reports.iter().map(PhaseReport::to_json).collect();
        println!(
            "{}",
            json!({ "nodes": args.nodes, "seconds_per_phase": args.seconds, "phases": phases })
        );
    } else {
        print!("{}", report_table(&reports));
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

async fn bench(cluster: &mut LocalCluster, phase: Duration) -> anyhow::Result<Vec<PhaseReport>> {
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

    // Writers: the leader first, then the others. Readers: all nodes, rotated per client.
    let mut writer_addrs = vec![leader_addr.clone()];
    writer_addrs.extend(addrs.iter().filter(|a| **a != leader_addr).cloned());
    let writers = |n: usize| -> anyhow::Result<Vec<Client>> {
        (0..n)
            .map(|_| Client::connect(writer_addrs.iter().map(String::as_str)).map_err(Into::into))
            .collect()
    };
    let readers = |n: usize| -> anyhow::Result<Vec<Client>> {
        (0..n)
            .map(|i| {
                let rotated = addrs.iter().cycle().skip(i % addrs.len()).take(addrs.len());
                Client::connect(rotated.map(String::as_str)).map_err(Into::into)
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
    reports.push(run_phase("1-row insert, latency", writers(1)?, phase, insert).await);
    for n in WRITE_CLIENTS {
        reports.push(
            run_phase(
                &format!("1-row insert, {n} clients"),
                writers(n)?,
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
    // a client that knows every node sees it (its retries and backoff included).
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
        clients: 1,
        ops: u64::from(outcome.is_ok()),
        rows: u64::from(outcome.is_ok()),
        elapsed,
        latencies: vec![elapsed],
        errors,
        first_error,
    });
    Ok(reports)
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
                match op(client.clone(), worker).await {
                    Ok(n) => {
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

pub fn report_table(reports: &[PhaseReport]) -> String {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
    let mut rows = vec![[
        "PHASE", "CLIENTS", "OPS/S", "ROWS/S", "P50 MS", "P99 MS", "ERRORS",
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

    #[test]
    fn report_shows_rates_and_errors() {
        let report = PhaseReport {
            name: "1-row insert, 4 clients".into(),
            clients: 4,
            ops: 1000,
            rows: 1000,
            elapsed: Duration::from_secs(2),
            latencies: vec![ms(1), ms(2), ms(3)],
            errors: 0,
            first_error: None,
        };
        assert_eq!(report.ops_per_sec(), 500.0);
        let text = report_table(std::slice::from_ref(&report));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "PHASE                    CLIENTS  OPS/S  ROWS/S  P50 MS  P99 MS  ERRORS"
        );
        assert_eq!(
            lines[1],
            "1-row insert, 4 clients  4        500    500     2.00    3.00    0"
        );
        let json = report.to_json();
        assert_eq!(json["ops_per_sec"], 500.0);
        assert_eq!(json["p50_ms"], 2.0);
    }
}
