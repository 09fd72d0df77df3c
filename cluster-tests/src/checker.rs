//! The ledger of acknowledged writes, and the end-of-scenario audit of every node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use raftlite_client::{Client, Consistency, Error, ExecuteResult, Statement};

use crate::Cluster;

/// Records every write a scenario sends to one table and what the cluster answered, then
/// audits every node against that record.
///
/// Each write inserts one row with a key nobody else uses. The table deliberately has **no**
/// unique constraint: a write applied twice (a retry that was not deduplicated, a log entry
/// replayed after a crash) shows up as a key present twice instead of being rejected.
///
/// * acknowledged write: must be on every node, exactly once, with its value;
/// * failed write (timeout, no quorum...): its outcome is unknown; it may be present (at most
///   once, with its value), but then on every node alike;
/// * a key never sent must not exist.
///
/// Cheap to clone; clones share the ledger, so concurrent writers can each hold one.
#[derive(Debug, Clone)]
pub struct Checker {
    table: Arc<str>,
    ledger: Arc<Mutex<Ledger>>,
}

#[derive(Debug, Default)]
struct Ledger {
    /// Every key sent, with its value.
    sent: BTreeMap<String, String>,
    /// Keys the cluster acknowledged.
    acked: BTreeSet<String>,
}

/// What [`Checker::verify`] found, for the scenario's log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Nodes audited.
    pub nodes: Vec<u64>,
    /// Applied index every audited node was at.
    pub applied_index: u64,
    /// Acknowledged writes, each found exactly once on every node.
    pub acked: usize,
    /// Writes with an unknown outcome that turned out applied (on every node) / not applied.
    pub unacked_applied: usize,
    pub unacked_absent: usize,
}

impl Checker {
    /// A checker for table `table` (create it with [`Checker::create_table`]).
    pub fn new(table: &str) -> Checker {
        Checker {
            table: table.into(),
            ledger: Arc::default(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the audited table: a key and a value, without a unique constraint.
    pub async fn create_table(&self, client: &Client) -> Result<ExecuteResult, Error> {
        client
            .execute([format!(
                "CREATE TABLE {} (k TEXT NOT NULL, v TEXT NOT NULL)",
                self.table
            )])
            .await
    }

    /// The statement that writes `key`, for callers that send it themselves (with a fixed
    /// request id, or inside a larger request); pair it with [`Checker::record_sent`] and
    /// [`Checker::record_acked`].
    pub fn insert(&self, key: &str, value: &str) -> Statement {
        Statement::new(format!("INSERT INTO {} (k, v) VALUES (?1, ?2)", self.table))
            .bind(key)
            .bind(value)
    }

    /// Writes `key = value` through `client` and records the outcome.
    pub async fn write(
        &self,
        client: &Client,
        key: &str,
        value: &str,
    ) -> Result<ExecuteResult, Error> {
        self.record_sent(key, value);
        let result = client.execute([self.insert(key, value)]).await;
        if result.is_ok() {
            self.record_acked(key);
        }
        result
    }

    /// Writes `count` keys `{prefix}-0 .. {prefix}-{count-1}` through `client`, a few at a
    /// time, failing on the first error. Returns the highest log index acknowledged.
    pub async fn write_many(
        &self,
        client: &Client,
        prefix: &str,
        count: usize,
    ) -> anyhow::Result<u64> {
        const LANES: usize = 4;
        let mut lanes = tokio::task::JoinSet::new();
        for lane in 0..LANES {
            let (checker, client, prefix) = (self.clone(), client.clone(), prefix.to_string());
            lanes.spawn(async move {
                let mut highest = 0;
                for i in (lane..count).step_by(LANES) {
                    let key = format!("{prefix}-{i}");
                    let written = checker
                        .write(&client, &key, &format!("value of {key}"))
                        .await
                        .with_context(|| format!("write {key}"))?;
                    highest = highest.max(written.log_index);
                }
                anyhow::Ok(highest)
            });
        }
        let mut highest = 0;
        while let Some(lane) = lanes.join_next().await {
            highest = highest.max(lane.context("writer task")??);
        }
        Ok(highest)
    }

    /// Records that a write of `key` is about to be sent. A key must be sent once only.
    pub fn record_sent(&self, key: &str, value: &str) {
        let previous = self
            .ledger()
            .sent
            .insert(key.to_string(), value.to_string());
        assert!(
            previous.is_none(),
            "checker key {key:?} used twice by the scenario"
        );
    }

    /// Records that the cluster acknowledged the write of `key`.
    pub fn record_acked(&self, key: &str) {
        let mut ledger = self.ledger();
        assert!(
            ledger.sent.contains_key(key),
            "acked key {key:?} was never sent"
        );
        ledger.acked.insert(key.to_string());
    }

    /// How many writes were acknowledged so far.
    pub fn acked_count(&self) -> usize {
        self.ledger().acked.len()
    }

    /// How many writes were sent so far.
    pub fn sent_count(&self) -> usize {
        self.ledger().sent.len()
    }

    /// Waits until the cluster converges, then reads the whole table on every started node
    /// with a stale read through a client bound to that node, and checks it against the
    /// ledger (see the type's documentation). Fails listing what is wrong where.
    pub async fn verify(&self, cluster: &Cluster) -> anyhow::Result<CheckReport> {
        let applied_index = cluster
            .wait_converged(Duration::from_secs(30))
            .await
            .context("converge before the audit")?;
        let nodes: Vec<(u64, Client)> = cluster
            .started_ids()
            .into_iter()
            .map(|id| (id, cluster.client_for(id)))
            .collect();
        self.audit(applied_index, &nodes).await
    }

    /// The audit of [`Checker::verify`] on a cluster that has converged at `applied_index`:
    /// reads the table through each `(node id, client bound to that node)` with a stale read.
    pub async fn audit(
        &self,
        applied_index: u64,
        clients: &[(u64, Client)],
    ) -> anyhow::Result<CheckReport> {
        let (sent, acked) = {
            let ledger = self.ledger();
            (ledger.sent.clone(), ledger.acked.clone())
        };
        let nodes: Vec<u64> = clients.iter().map(|(id, _)| *id).collect();
        let mut problems = Vec::new();
        let mut applied_unacked: Option<BTreeSet<String>> = None;
        for (id, client) in clients {
            let id = *id;
            let rows = client
                .query_with(
                    Statement::new(format!("SELECT k, v FROM {}", self.table)),
                    Consistency::Stale,
                    0,
                )
                .await
                .with_context(|| format!("read table {} on node {id}", self.table))?;
            ensure!(
                rows.applied_index >= applied_index,
                "node {id} answered the audit at applied index {} < converged {applied_index}",
                rows.applied_index
            );
            let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for row in &rows.rows {
                found.entry(row.get(0)?).or_default().push(row.get(1)?);
            }
            for (key, values) in &found {
                match sent.get(key) {
                    None => problems.push(format!("node {id}: key {key:?} was never written")),
                    Some(_) if values.len() > 1 => problems.push(format!(
                        "node {id}: key {key:?} is present {} times (applied more than once)",
                        values.len()
                    )),
                    Some(value) if values[0] != *value => problems.push(format!(
                        "node {id}: key {key:?} has value {:?}, written {value:?}",
                        values[0]
                    )),
                    Some(_) => {}
                }
            }
            let missing: Vec<&String> = acked.iter().filter(|k| !found.contains_key(*k)).collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "node {id}: {} acknowledged write(s) missing, e.g. {:?}",
                    missing.len(),
                    &missing[..missing.len().min(10)]
                ));
            }
            let unacked: BTreeSet<String> = found
                .keys()
                .filter(|k| !acked.contains(*k))
                .cloned()
                .collect();
            match &applied_unacked {
                None => applied_unacked = Some(unacked),
                Some(first) if *first != unacked => problems.push(format!(
                    "node {id} disagrees with node {} on which unacknowledged writes applied, \
                     e.g. {:?}",
                    nodes[0],
                    unacked
                        .symmetric_difference(first)
                        .take(10)
                        .collect::<Vec<_>>()
                )),
                Some(_) => {}
            }
        }
        if !problems.is_empty() {
            bail!(
                "audit of table {} failed ({} acked, {} sent):\n  {}",
                self.table,
                acked.len(),
                sent.len(),
                problems.join("\n  ")
            );
        }
        let unacked_applied = applied_unacked.map_or(0, |s| s.len());
        Ok(CheckReport {
            nodes,
            applied_index,
            acked: acked.len(),
            unacked_applied,
            unacked_absent: sent.len() - acked.len() - unacked_applied,
        })
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
