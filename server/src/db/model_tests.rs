//! A random model of two nodes that take turns leading, each with the executor a node runs
//! (batches committed in place, writes run ahead, interactive transactions), over one shared
//! log: deltas committed, lost with their leader, or found in the log after all; nodes
//! restarted. Whatever the order, once both have applied the log they must hold the same
//! pages (page 1's change counter aside) and pass the integrity check.
//!
//! A leader's database is the one place a node's pages come from its own execution rather
//! than from the log: a batch or transaction committed in place must leave exactly what the
//! delta gives every other node, or the next leader's patches will not fit it.

use super::*;
use anyhow::{ensure, Context};
use std::sync::Arc;

type TestResult = anyhow::Result<()>;

/// xorshift: deterministic per seed.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

struct Node {
    db: Database,
    executor: ExecutorHandle,
    /// How many log entries this node has applied.
    applied: usize,
}

impl Node {
    fn open(path: &std::path::Path) -> anyhow::Result<Node> {
        let db = Database::open(
            path,
            DbOptions {
                read_threads: 1,
                // A small page cache: larger transactions spill pages into the WAL before
                // their capture, as big ones do with the default cache.
                executor_cache_kib: 64,
                ..DbOptions::default()
            },
        )?;
        let executor = db.open_executor_with_links(false)?;
        Ok(Node {
            db,
            executor,
            applied: 0,
        })
    }
}

/// One request's SQL, chosen at random: inserts small and large (spilling), updates, deletes,
/// ones that fail alone (a UNIQUE conflict) or end the whole transaction (`OR ROLLBACK`), and
/// schema changes.
fn statement(rng: &mut Rng) -> String {
    let k = rng.below(400);
    match rng.below(20) {
        0..=5 => format!(
            "INSERT INTO t(k, a, b) VALUES({k}, hex(randomblob({})), randomblob({}))",
            1 + rng.below(60),
            rng.below(3000)
        ),
        6 => format!(
            "INSERT INTO t(k, a, b) VALUES({k}, 'big', randomblob({}))",
            100_000 + rng.below(600_000)
        ),
        7..=9 => format!(
            "UPDATE t SET a = hex(randomblob({})) WHERE k % 13 = {}",
            1 + rng.below(200),
            rng.below(13)
        ),
        10..=11 => format!("DELETE FROM t WHERE k % 17 = {}", rng.below(17)),
        12 => format!("INSERT OR ROLLBACK INTO t(k) VALUES({k})"),
        13 => format!(
            "INSERT INTO u(x) SELECT randomblob({}) FROM t LIMIT {}",
            1 + rng.below(500),
            rng.below(40)
        ),
        14 => "DELETE FROM u WHERE rowid % 3 = 0".into(),
        15 => match rng.below(2) {
            0 => "CREATE TABLE IF NOT EXISTS s(id INTEGER PRIMARY KEY, v TEXT)".into(),
            _ => "DROP TABLE IF EXISTS s".into(),
        },
        16 => "CREATE INDEX IF NOT EXISTS t_a ON t(a)".into(),
        17 => "DROP INDEX IF EXISTS t_a".into(),
        _ => format!("INSERT INTO t(k, a) VALUES({k}, 'dup')"),
    }
}

fn request(rng: &mut Rng, id: u64) -> WriteRequest {
    let statements = (0..1 + rng.below(3))
        .map(|_| Statement::new(statement(rng)))
        .collect();
    WriteRequest {
        // Some ids repeat: a retried write is answered from the table.
        request_id: match rng.below(4) {
            0 => String::new(),
            _ => format!("r{}", id - rng.below(3).min(id)),
        },
        statements,
        deadline: deadline(rng),
        max_result_bytes: None,
    }
}

/// Now and then a deadline that interrupts the statement running when it passes.
fn deadline(rng: &mut Rng) -> Option<std::time::Instant> {
    rng.chance(8)
        .then(|| std::time::Instant::now() + std::time::Duration::from_micros(rng.below(3000)))
}

struct Model {
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
    log: Vec<Arc<PageDelta>>,
    leader: usize,
    rng: Rng,
    ids: u64,
    /// The leader's last delta that was proposed but neither committed nor dropped: it may
    /// still turn up in the log after a leadership change.
    unsettled: Option<PageDelta>,
}

impl Model {
    fn new(seed: u64) -> anyhow::Result<Model> {
        let dir = tempfile::tempdir()?;
        let nodes = (0..2)
            .map(|i| Node::open(&dir.path().join(format!("n{i}.db"))))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Model {
            _dir: dir,
            nodes,
            log: Vec::new(),
            leader: 0,
            rng: Rng(seed),
            ids: 0,
            unsettled: None,
        })
    }

    /// Applies the log's entries node `n` has not applied yet.
    async fn catch_up(&mut self, n: usize) -> TestResult {
        let node = &mut self.nodes[n];
        while node.applied < self.log.len() {
            let delta = self.log[node.applied].clone();
            node.db
                .apply(delta)
                .await
                .with_context(|| format!("node {n} applying entry {}", node.applied))?;
            node.applied += 1;
        }
        Ok(())
    }

    /// The leader's new delta: committed (early, as the write path does once a quorum holds
    /// it, or by its apply), left unsettled, or dropped.
    async fn propose(&mut self, delta: PageDelta) -> TestResult {
        let delta = PageDelta::decode(&delta.encode())?;
        match self.rng.below(6) {
            0 => {
                self.unsettled = Some(delta);
                Ok(())
            }
            1 => Ok(()),
            fate => {
                let leader = &self.nodes[self.leader];
                if fate < 4 && leader.applied == self.log.len() {
                    leader
                        .executor
                        .commit_early(delta.tag, delta.base_version)?;
                }
                self.log.push(Arc::new(delta));
                self.unsettled = None;
                let leader = self.leader;
                self.catch_up(leader).await?;
                if self.rng.chance(2) {
                    self.catch_up(1 - leader).await?;
                }
                Ok(())
            }
        }
    }

    async fn batch(&mut self) -> TestResult {
        let mut requests = Vec::new();
        for _ in 0..1 + self.rng.below(4) {
            self.ids += 1;
            requests.push(request(&mut self.rng, self.ids));
        }
        let executor = &self.nodes[self.leader].executor;
        let executed = match self.rng.below(3) {
            0 => {
                let split = self.rng.below(requests.len() as u64 + 1) as usize;
                let rest = requests.split_off(split);
                if split > 0 {
                    let _ = executor.run_ahead(requests);
                }
                executor.execute_batch_on(rest, Pipeline::Settled, split)?
            }
            _ => executor.execute_batch(requests).await?,
        };
        match executed.delta {
            Some(delta) => self.propose(delta).await,
            None => Ok(()),
        }
    }

    async fn transaction(&mut self) -> TestResult {
        let leader = self.leader;
        self.catch_up(leader).await?;
        let executor = &self.nodes[leader].executor;
        executor.begin().await?;
        for _ in 0..1 + self.rng.below(5) {
            let statements = (0..1 + self.rng.below(3))
                .map(|_| Statement::new(statement(&mut self.rng)))
                .collect();
            let deadline = deadline(&mut self.rng);
            if let TransactionStep::Ended(_) =
                executor.transaction_execute(statements, deadline).await?
            {
                return Ok(());
            }
        }
        if self.rng.chance(5) {
            return Ok(executor.rollback().await?);
        }
        self.ids += 1;
        let id = match self.rng.below(2) {
            0 => String::new(),
            _ => format!("tx{}", self.ids),
        };
        match executor.commit(id).await {
            Ok(Some(delta)) => self.propose(delta).await,
            Ok(None) | Err(DbError::Constraint(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Another node leads: what the old leader left unsettled may be in the log after all,
    /// and the new leader settles (applies the whole log) before it writes.
    async fn change_leader(&mut self) -> TestResult {
        if let Some(delta) = self.unsettled.take() {
            if self.rng.chance(2) {
                self.log.push(Arc::new(delta));
            }
        }
        self.leader = 1 - self.leader;
        let leader = self.leader;
        self.catch_up(leader).await
    }

    /// Node `n` stops (its open batch rolled back with its connection) and opens again, with
    /// the log entries its database holds found by their versions.
    async fn restart(&mut self, n: usize) -> TestResult {
        if n == self.leader {
            self.unsettled = None;
        }
        let path = self.nodes[n].db.path().to_path_buf();
        let applied = self.nodes[n].applied;
        let fresh = {
            let old = std::mem::replace(&mut self.nodes[n], Node::open(&path)?);
            drop(old);
            &mut self.nodes[n]
        };
        // Replays from an earlier point: entries the database holds are skipped.
        fresh.applied = applied.saturating_sub(3);
        Ok(())
    }

    /// VACUUM (a full image) on the leader, or a checkpoint of either node's WAL from another
    /// connection.
    async fn vacuum_or_checkpoint(&mut self) -> TestResult {
        if self.rng.chance(3) {
            let leader = self.leader;
            self.catch_up(leader).await?;
            let executed = self.nodes[leader].executor.execute_vacuum().await?;
            return self.propose(executed.delta.context("a delta")?).await;
        }
        let n = self.rng.below(2) as usize;
        let conn = rusqlite::Connection::open(self.nodes[n].db.path())?;
        conn.busy_timeout(std::time::Duration::from_millis(50))?;
        // Busy while a batch is kept open: as good as not run.
        let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
        Ok(())
    }

    async fn check(&mut self, step: usize) -> TestResult {
        for n in 0..2 {
            self.catch_up(n).await?;
            self.nodes[n].executor.end_open_batch().await?;
        }
        let pages: Vec<Vec<Vec<u8>>> = self
            .nodes
            .iter()
            .map(|n| snapshot::dump_pages(n.db.path()))
            .collect::<Result<_>>()?;
        let differing: Vec<usize> = (0..pages[0].len().min(pages[1].len()))
            .filter(|&i| pages[0][i] != pages[1][i])
            .map(|i| i + 1)
            .collect();
        ensure!(
            pages[0].len() == pages[1].len() && differing.is_empty(),
            "step {step}: {} and {} pages, differing: {differing:?} (log of {})",
            pages[0].len(),
            pages[1].len(),
            self.log.len()
        );
        for node in &self.nodes {
            let conn = rusqlite::Connection::open(node.db.path())?;
            let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
            ensure!(check == "ok", "step {step}: {check}");
        }
        Ok(())
    }
}

async fn run(seed: u64, steps: usize) -> TestResult {
    let mut m = Model::new(seed)?;
    let create = WriteRequest {
        request_id: String::new(),
        statements: vec![
            Statement::new(
                "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER UNIQUE, a TEXT, b BLOB)",
            ),
            Statement::new("CREATE TABLE u(x BLOB)"),
        ],
        deadline: None,
        max_result_bytes: None,
    };
    let created = m.nodes[0].executor.execute_batch(vec![create]).await?;
    m.log.push(Arc::new(created.delta.context("a delta")?));
    m.catch_up(0).await?;
    m.catch_up(1).await?;
    for step in 0..steps {
        let what = m.rng.below(20);
        let done = match what {
            0..=9 => m.batch().await,
            10 => m.vacuum_or_checkpoint().await,
            11..=15 => m.transaction().await,
            16..=17 => m.change_leader().await,
            18 => {
                let n = m.rng.below(2) as usize;
                m.restart(n).await
            }
            _ => m.check(step).await,
        };
        done.with_context(|| format!("seed {seed}, step {step} ({what})"))?;
    }
    m.check(steps).await.with_context(|| format!("seed {seed}"))
}

#[tokio::test]
async fn two_nodes_taking_turns_hold_the_same_pages() -> TestResult {
    let seeds: u64 = std::env::var("RAFTLITE_MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    for seed in 1..=seeds {
        run(seed * 7919, 250).await?;
    }
    Ok(())
}
