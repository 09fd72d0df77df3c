//! A bounded background write load that records every write in a [`Checker`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use raftlite_client::Client;

use crate::Checker;

/// How much a [`WriteLoad`] may write: it stops at whichever bound comes first.
#[derive(Debug, Clone)]
pub struct LoadLimits {
    /// Concurrent writers.
    pub lanes: usize,
    /// How many of them write each key in an interactive transaction (begin, insert, read it
    /// back, commit) rather than alone: the leader keeps a transaction open and commits it in
    /// place, a path the faults must meet too.
    pub transaction_lanes: usize,
    /// Writes per lane.
    pub max_writes_per_lane: usize,
    /// Wall-clock bound of the whole load.
    pub max_duration: Duration,
    /// Pause after each write of a lane, so that a 2-core machine keeps room for the faults.
    pub pause: Duration,
    /// One more lane, not audited, that churns a table of its own the way an application's
    /// history does: values of 1.5 MB (they replicate in transfers of their own), deletes,
    /// an index created and dropped, and a VACUUM every 100 statements (counted across loads).
    /// The audit's page comparison covers it.
    pub churn: bool,
}

impl Default for LoadLimits {
    fn default() -> Self {
        LoadLimits {
            lanes: 3,
            transaction_lanes: 1,
            max_writes_per_lane: 20_000,
            max_duration: Duration::from_secs(300),
            pause: Duration::from_millis(10),
            churn: false,
        }
    }
}

/// What a [`WriteLoad`] saw.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub acked: usize,
    /// Writes that returned an error after the client's own retries (outcome unknown).
    pub failed: usize,
    /// Transactions lost before their commit (a leader change aborted them, or the leader
    /// that held them went away): nothing of them was applied, and the lane went on with its
    /// next key, as an application runs a transaction again. Not failures.
    pub aborted: usize,
    /// The first few errors, for the failure message.
    pub errors: Vec<String>,
    /// Statements of the churn lane that succeeded, and that failed (not audited: a failure
    /// there is logged, and the pages and the crash check judge the cluster).
    pub churned: usize,
    pub churn_failed: usize,
}

/// Writers that insert unique keys `{prefix}-{lane}-{i}` through one client until stopped or
/// a [`LoadLimits`] bound is reached (the last `transaction_lanes` in interactive transactions). Every write goes through the [`Checker`], which audits
/// them at the end; errors are counted, not fatal (a scenario decides what it tolerates).
pub struct WriteLoad {
    stop: Arc<AtomicBool>,
    lanes: tokio::task::JoinSet<LoadReport>,
}

impl WriteLoad {
    pub fn start(client: &Client, checker: &Checker, prefix: &str, limits: LoadLimits) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut lanes = tokio::task::JoinSet::new();
        let until = Instant::now() + limits.max_duration;
        for lane in 0..limits.lanes {
            let (client, checker, stop) = (client.clone(), checker.clone(), stop.clone());
            let prefix = prefix.to_string();
            let limits = limits.clone();
            lanes.spawn(async move {
                let mut report = LoadReport::default();
                for i in 0..limits.max_writes_per_lane {
                    if stop.load(Ordering::SeqCst) || Instant::now() >= until {
                        break;
                    }
                    let key = format!("{prefix}-{lane}-{i:06}");
                    let value = format!("value of {key}");
                    let written = match lane + limits.transaction_lanes >= limits.lanes {
                        true => write_in_transaction(&client, &checker, &key, &value).await,
                        false => checker
                            .write(&client, &key, &value)
                            .await
                            .map(|_| ())
                            .map_err(Failed::Write),
                    };
                    match written {
                        Ok(()) => report.acked += 1,
                        Err(Failed::BeforeCommit(e)) => {
                            report.aborted += 1;
                            tracing::info!(key, error = %e, "a transaction lost before its commit; the lane goes on");
                        }
                        Err(Failed::Write(e)) if e.is_aborted() => report.aborted += 1,
                        Err(Failed::Write(e)) => {
                            report.failed += 1;
                            if report.errors.len() < 5 {
                                report.errors.push(format!("{key}: {e}"));
                            }
                        }
                    }
                    tokio::time::sleep(limits.pause).await;
                }
                report
            });
        }
        if limits.churn {
            let (client, stop) = (client.clone(), stop.clone());
            let prefix = prefix.to_string();
            lanes.spawn(async move { churn(&client, &prefix, &stop, until, limits.pause).await });
        }
        WriteLoad { stop, lanes }
    }

    /// Stops the writers after their current write and sums up what they saw.
    pub async fn stop(mut self) -> anyhow::Result<LoadReport> {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = LoadReport::default();
        while let Some(lane) = self.lanes.join_next().await {
            let lane = lane.context("writer task")?;
            total.acked += lane.acked;
            total.failed += lane.failed;
            total.aborted += lane.aborted;
            total.errors.extend(lane.errors);
            total.churned += lane.churned;
            total.churn_failed += lane.churn_failed;
        }
        Ok(total)
    }
}

/// The churn lane (see [`LoadLimits::churn`]): its own table, written until stopped.
async fn churn(
    client: &Client,
    prefix: &str,
    stop: &AtomicBool,
    until: Instant,
    pause: Duration,
) -> LoadReport {
    const TABLE: &str = "chaos_churn";
    let mut report = LoadReport::default();
    let setup =
        format!("CREATE TABLE IF NOT EXISTS {TABLE} (id INTEGER PRIMARY KEY, tag TEXT, v BLOB)");
    while !stop.load(Ordering::SeqCst) && Instant::now() < until {
        match client.execute([setup.as_str()]).await {
            Ok(_) => break,
            Err(e) => tracing::info!(error = %e, "churn: create the table again"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The step goes on across loads: a scenario that restarts its load often (after every
    // page comparison) still reaches the index changes and the VACUUM.
    static STEP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    loop {
        if stop.load(Ordering::SeqCst) || Instant::now() >= until {
            break;
        }
        let i = STEP.fetch_add(1, Ordering::SeqCst);
        let statements: Vec<String> = match i % 100 {
            99 => vec!["VACUUM".into()],
            30 => vec![format!(
                "CREATE INDEX IF NOT EXISTS {TABLE}_tag ON {TABLE} (tag, length(v))"
            )],
            80 => vec![format!("DROP INDEX IF EXISTS {TABLE}_tag")],
            n if n % 25 == 10 => vec![format!(
                "INSERT INTO {TABLE} (tag, v) VALUES ('{prefix}-{i}', randomblob(1500000))"
            )],
            n if n % 5 == 0 => vec![format!(
                "DELETE FROM {TABLE} WHERE id <= (SELECT max(id) FROM {TABLE}) - 40"
            )],
            n if n % 3 == 0 => vec![format!(
                "UPDATE {TABLE} SET v = randomblob(200 + abs(random() % 3000)) \
                 WHERE id = (SELECT max(id) FROM {TABLE} WHERE length(v) < 4000)"
            )],
            _ => vec![format!(
                "INSERT INTO {TABLE} (tag, v) VALUES ('{prefix}-{i}', randomblob(100 + {i} % 5000))"
            )],
        };
        match client.execute(statements).await {
            Ok(_) => report.churned += 1,
            Err(e) => {
                report.churn_failed += 1;
                tracing::info!(i, error = %e, "churn: a statement failed; the lane goes on");
            }
        }
        tokio::time::sleep(pause * 5).await;
    }
    report
}

/// How a write of the load failed.
enum Failed {
    /// A transaction lost before its commit was sent: aborted by a leader change, or its node
    /// (the leader that held it) gone. Nothing of it was applied; an application runs it again.
    BeforeCommit(raftlite_client::Error),
    /// A write, or a transaction's commit, that failed after the client's retries.
    Write(raftlite_client::Error),
}

/// Writes `key` in an interactive transaction that also reads it back before committing, and
/// records the outcome as [`Checker::write`] does.
async fn write_in_transaction(
    client: &Client,
    checker: &Checker,
    key: &str,
    value: &str,
) -> Result<(), Failed> {
    checker.record_sent(key, value);
    let tx = async {
        let mut tx = client.begin().await?;
        tx.execute([checker.insert(key, value)]).await?;
        let read = format!("SELECT count(*) FROM {} WHERE k = ?1", checker.table());
        let rows = tx.query(read, [key]).await?;
        let seen: i64 = rows.rows[0].get(0).unwrap_or(0);
        assert_eq!(seen, 1, "{key}: the transaction sees its own write");
        Ok(tx)
    };
    let tx = tx.await.map_err(Failed::BeforeCommit)?;
    tx.commit().await.map_err(Failed::Write)?;
    checker.record_acked(key);
    Ok(())
}

impl Drop for WriteLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
