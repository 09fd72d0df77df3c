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
    /// Writes per lane.
    pub max_writes_per_lane: usize,
    /// Wall-clock bound of the whole load.
    pub max_duration: Duration,
    /// Pause after each write of a lane, so that a 2-core machine keeps room for the faults.
    pub pause: Duration,
}

impl Default for LoadLimits {
    fn default() -> Self {
        LoadLimits {
            lanes: 2,
            max_writes_per_lane: 20_000,
            max_duration: Duration::from_secs(300),
            pause: Duration::from_millis(10),
        }
    }
}

/// What a [`WriteLoad`] saw.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub acked: usize,
    /// Writes that returned an error after the client's own retries (outcome unknown).
    pub failed: usize,
    /// The first few errors, for the failure message.
    pub errors: Vec<String>,
}

/// Writers that insert unique keys `{prefix}-{lane}-{i}` through one client until stopped or
/// a [`LoadLimits`] bound is reached. Every write goes through the [`Checker`], which audits
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
                    match checker
                        .write(&client, &key, &format!("value of {key}"))
                        .await
                    {
                        Ok(_) => report.acked += 1,
                        Err(e) => {
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
            total.errors.extend(lane.errors);
        }
        Ok(total)
    }
}

impl Drop for WriteLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
