//! End-to-end checks of the page-delta path on real SQLite files, ported from
//! `spikes/pagedelta`: a LEADER (executor captures, its own applier applies), a FOLLOWER that
//! only applies the same deltas from its own empty file, and a REFERENCE database that commits
//! the same SQL normally. After each step leader and follower must be byte-identical page for
//! page, pass `PRAGMA integrity_check`, and hold the same rows as the reference.

use super::*;
use anyhow::{ensure, Context};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use tempfile::TempDir;

type TestResult = anyhow::Result<()>;

fn stmt(sql: &str) -> Statement {
    Statement::new(sql)
}

fn req(id: &str, sqls: &[&str]) -> WriteRequest {
    WriteRequest {
        request_id: id.to_string(),
        statements: sqls.iter().map(|s| stmt(s)).collect(),
        deadline: None,
        max_result_bytes: None,
    }
}

fn executed(outcome: &WriteOutcome) -> anyhow::Result<&[StatementOutcome]> {
    match outcome {
        WriteOutcome::Executed(r) => Ok(r),
        other => anyhow::bail!("expected Executed, got {other:?}"),
    }
}

fn failed(outcome: &WriteOutcome) -> anyhow::Result<&DbError> {
    match outcome {
        WriteOutcome::Failed(e) => Ok(e),
        other => anyhow::bail!("expected Failed, got {other:?}"),
    }
}

/// Rows of every user table: name -> (row count, hash of all values in rowid order).
fn user_rows(path: &Path) -> anyhow::Result<BTreeMap<String, (u64, u64)>> {
    let conn = Connection::open(path)?;
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table'
             AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '\\_raftlite\\_%' ESCAPE '\\'
             ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = BTreeMap::new();
    for name in names {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let mut st = conn.prepare(&format!("SELECT * FROM \"{name}\" ORDER BY rowid"))?;
        let width = st.column_count();
        let mut rows = st.query([])?;
        let mut count = 0u64;
        while let Some(row) = rows.next()? {
            for i in 0..width {
                format!("{:?}", SqlValue::read(row.get_ref(i)?, i)?).hash(&mut hasher);
            }
            count += 1;
        }
        out.insert(name, (count, hasher.finish()));
    }
    Ok(out)
}

/// The values of table `k(id, v)`, in order.
fn k_values(path: &Path) -> anyhow::Result<Vec<String>> {
    let conn = Connection::open(path)?;
    let values = conn
        .prepare("SELECT v FROM k ORDER BY v")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(values)
}

fn integrity(path: &Path) -> anyhow::Result<String> {
    let conn = Connection::open(path)?;
    Ok(conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
}

fn page_count(path: &Path) -> anyhow::Result<u32> {
    let conn = Connection::open(path)?;
    Ok(conn.query_row("PRAGMA page_count", [], |r| r.get(0))?)
}

fn count(conn: &Connection, table: &str) -> anyhow::Result<i64> {
    Ok(conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?)
}

struct Cluster {
    dir: TempDir,
    leader: Database,
    executor: ExecutorHandle,
    follower: Database,
    reference: Connection,
    /// Whether the executor gives links (pipelined) or commits in place.
    links: bool,
}

impl Cluster {
    fn new() -> anyhow::Result<Cluster> {
        Self::with_options(DbOptions {
            read_threads: 2,
            ..DbOptions::default()
        })
    }

    /// The leader's executor commits its batches in place, as a node's does without a write
    /// pipeline (the default).
    fn with_options(options: DbOptions) -> anyhow::Result<Cluster> {
        Self::with(options, false)
    }

    /// [`Cluster::new`] with one read thread: queries run one after the other, on one
    /// connection.
    fn one_reader() -> anyhow::Result<Cluster> {
        Self::with_options(DbOptions {
            read_threads: 1,
            ..DbOptions::default()
        })
    }

    /// A leader whose executor gives links, for the write pipeline.
    fn pipelined() -> anyhow::Result<Cluster> {
        Self::with(
            DbOptions {
                read_threads: 2,
                ..DbOptions::default()
            },
            true,
        )
    }

    fn with(options: DbOptions, links: bool) -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let leader = Database::open(dir.path().join("leader.db"), options.clone())?;
        let executor = leader.open_executor_with_links(links)?;
        let follower = Database::open(dir.path().join("follower.db"), options)?;
        let reference = Connection::open(dir.path().join("reference.db"))?;
        reference.execute_batch("PRAGMA page_size=4096; PRAGMA journal_mode=WAL;")?;
        Ok(Cluster {
            dir,
            leader,
            executor,
            follower,
            reference,
            links,
        })
    }

    /// Execute on the leader, apply the delta on leader and follower, and commit the requests
    /// that executed on the reference.
    async fn write(&self, batch: Vec<WriteRequest>) -> anyhow::Result<ExecutedBatch> {
        let result = self.executor.execute_batch(batch.clone()).await?;
        if let Some(delta) = &result.delta {
            let delta = Arc::new(PageDelta::decode(&delta.encode())?);
            ensure!(self.leader.apply(delta.clone()).await? == ApplyOutcome::Applied);
            ensure!(self.follower.apply(delta).await? == ApplyOutcome::Applied);
        }
        for (request, outcome) in batch.iter().zip(&result.outcomes) {
            if matches!(outcome, WriteOutcome::Executed(_)) {
                self.reference_commit(request)?;
            }
        }
        Ok(result)
    }

    async fn write_one(&self, sqls: &[&str]) -> anyhow::Result<Vec<StatementOutcome>> {
        let result = self.write(vec![req("", sqls)]).await?;
        Ok(executed(&result.outcomes[0])?.to_vec())
    }

    fn reference_commit(&self, request: &WriteRequest) -> anyhow::Result<()> {
        self.reference.execute_batch("BEGIN IMMEDIATE")?;
        for s in &request.statements {
            let mut st = self.reference.prepare(&s.sql)?;
            value::bind(&mut st, &s.params)?;
            let mut rows = st.raw_query();
            while rows.next()?.is_some() {}
        }
        self.reference.execute_batch("COMMIT")?;
        Ok(())
    }

    /// Every page of a replica, to compare. A pipelined leader applied the same deltas as the
    /// follower from the same start: fully identical, page-1 change counter included. A leader
    /// that commits in place stamps page 1's change counter (bytes 24..28 and 92..96) from its
    /// own connection's count, as a node rebuilt from an image does: those bytes are masked
    /// (see `snapshot::dump_pages`); every other byte must match.
    fn pages(&self, path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
        Ok(match self.links {
            true => snapshot::dump_raw_pages(path)?,
            false => snapshot::dump_pages(path)?,
        })
    }

    /// Leader and follower byte-identical and intact; rows equal to the reference.
    fn verify(&self, step: &str) -> TestResult {
        let (l, f) = (self.leader.path(), self.follower.path());
        let (lp, fp) = (self.pages(l)?, self.pages(f)?);
        ensure!(
            lp.len() == fp.len(),
            "{step}: leader has {} pages, follower {}",
            lp.len(),
            fp.len()
        );
        let differing: Vec<usize> = (0..lp.len())
            .filter(|&i| lp[i] != fp[i])
            .map(|i| i + 1)
            .collect();
        ensure!(differing.is_empty(), "{step}: pages differ: {differing:?}");
        ensure!(integrity(l)? == "ok", "{step}: leader integrity");
        ensure!(integrity(f)? == "ok", "{step}: follower integrity");
        let rows = user_rows(l)?;
        ensure!(
            rows == user_rows(f)?,
            "{step}: leader and follower rows differ"
        );
        ensure!(
            rows == user_rows(&self.dir.path().join("reference.db"))?,
            "{step}: rows differ from the reference"
        );
        Ok(())
    }
}

const CREATE_T: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b BLOB)";
/// `n` rows with scattered index keys (worst case for the index) and 100-byte payloads.
fn insert_rows(n: u32, salt: u32) -> String {
    format!(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n})
         INSERT INTO t(a, b) SELECT printf('%08x', ((x + {salt}) * 2654435761) % 4294967296),
                                    zeroblob(100) FROM c"
    )
}

#[tokio::test]
async fn create_table_and_index() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[CREATE_T]).await?;
    c.verify("create table")?;
    c.write_one(&["INSERT INTO t(a) VALUES('x')"]).await?;
    c.write_one(&["CREATE INDEX t_a ON t(a)"]).await?;
    c.verify("create index")?;
    ensure!(c.leader.version().await? == 3 && c.follower.version().await? == 3);
    Ok(())
}

#[tokio::test]
async fn bulk_insert_with_spills_then_update_and_delete() -> TestResult {
    // A 64 KiB executor cache (16 pages) forces the 50k-row transaction to spill constantly.
    let c = Cluster::with_options(DbOptions {
        read_threads: 1,
        executor_cache_kib: 64,
        ..DbOptions::default()
    })?;
    c.write_one(&[CREATE_T, "CREATE INDEX t_a ON t(a)"]).await?;
    let result = c
        .write(vec![req("bulk", &[&insert_rows(50_000, 0)])])
        .await?;
    let delta = result.delta.context("bulk insert produced no delta")?;
    ensure!(delta.db_pages > 1000, "only {} pages", delta.db_pages);
    ensure!(executed(&result.outcomes[0])?[0].rows_affected == 50_000);
    c.verify("50k rows")?;

    let r = c
        .write_one(&["UPDATE t SET a = a || 'x' WHERE id % 5 = 0"])
        .await?;
    ensure!(r[0].rows_affected == 10_000);
    c.verify("update 10k")?;
    let r = c
        .write_one(&["DELETE FROM t WHERE id % 5 IN (1, 2)"])
        .await?;
    ensure!(r[0].rows_affected == 20_000);
    c.verify("delete 20k")?;
    Ok(())
}

#[tokio::test]
async fn drop_table_moves_pages_to_freelist() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[CREATE_T]).await?;
    c.write_one(&[
        "CREATE TABLE u(id INTEGER PRIMARY KEY, a TEXT, b BLOB)",
        "CREATE INDEX u_a ON u(a)",
        "WITH RECURSIVE s(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM s WHERE value < 5000)
         INSERT INTO u(a, b) SELECT hex(value), zeroblob(200) FROM s",
    ])
    .await?;
    c.verify("table u")?;
    c.write_one(&["DROP TABLE u"]).await?;
    c.verify("drop u")?;
    let free: i64 =
        Connection::open(c.follower.path())?
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    ensure!(free > 100, "freelist has {free} pages");
    // freed pages are reused by the next write
    c.write_one(&[&insert_rows(1000, 3)]).await?;
    c.verify("reuse freelist")?;
    Ok(())
}

#[tokio::test]
async fn failing_request_rolls_back_alone() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&["CREATE TABLE k(id INTEGER PRIMARY KEY, v TEXT UNIQUE NOT NULL)"])
        .await?;
    let result = c
        .write(vec![
            req("r1", &["INSERT INTO k(v) VALUES('a')"]),
            // first statement succeeds, second violates UNIQUE: the whole request rolls back
            req(
                "r2",
                &[
                    "INSERT INTO k(v) VALUES('b')",
                    "INSERT INTO k(v) VALUES('a')",
                ],
            ),
            req("r3", &["INSERT INTO k(v) VALUES('c')"]),
            // ends the whole transaction: the batch is re-run without it
            req("r4", &["INSERT OR ROLLBACK INTO k(v) VALUES('c')"]),
            req("r5", &["INSERT INTO k(v) VALUES('d')"]),
        ])
        .await?;
    executed(&result.outcomes[0])?;
    ensure!(matches!(failed(&result.outcomes[1])?, DbError::Constraint(m) if m.contains("UNIQUE")));
    executed(&result.outcomes[2])?;
    ensure!(matches!(
        failed(&result.outcomes[3])?,
        DbError::Constraint(_)
    ));
    executed(&result.outcomes[4])?;
    c.verify("partial batch")?;
    let values = k_values(c.follower.path())?;
    ensure!(values == ["a", "c", "d"], "{values:?}");
    // a failed request's id is not recorded: the client may retry it
    let retry = c
        .write(vec![req("r2", &["INSERT INTO k(v) VALUES('b')"])])
        .await?;
    executed(&retry.outcomes[0])?;
    Ok(())
}

#[tokio::test]
async fn batch_without_successful_request_has_no_delta() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[CREATE_T]).await?;
    let version = c.leader.version().await?;
    let pages = snapshot::dump_raw_pages(c.leader.path())?;
    let result = c
        .write(vec![
            req("", &["INSERT INTO nope VALUES(1)"]),
            req("", &["SELEC"]),
        ])
        .await?;
    ensure!(result.delta.is_none());
    ensure!(result
        .outcomes
        .iter()
        .all(|o| matches!(o, WriteOutcome::Failed(_))));
    ensure!(c.leader.version().await? == version);
    ensure!(
        snapshot::dump_raw_pages(c.leader.path())? == pages,
        "executor changed the database"
    );
    Ok(())
}

#[tokio::test]
async fn statement_results_report_changes_and_rowids() -> TestResult {
    let c = Cluster::new()?;
    let r = c.write_one(&[CREATE_T]).await?;
    ensure!(r[0].rows_affected == 0);
    let r = c
        .write(vec![WriteRequest {
            request_id: String::new(),
            deadline: None,
            max_result_bytes: None,
            statements: vec![
                Statement::with_params(
                    "INSERT INTO t(a) VALUES(?1), (?2)",
                    vec![SqlValue::Text("x".into()), SqlValue::Text("y".into())],
                ),
                Statement {
                    sql: "INSERT INTO t(id, a) VALUES(:id, 'z') RETURNING id".into(),
                    params: Params::Named(vec![(":id".into(), SqlValue::Integer(10))]),
                },
                stmt("SELECT * FROM t"),
                stmt("UPDATE t SET a = 'w' WHERE id < 3"),
            ],
        }])
        .await?;
    let r = executed(&r.outcomes[0])?;
    ensure!(
        (r[0].rows_affected, r[0].last_insert_rowid) == (2, 2) && r[0].columns.is_empty(),
        "{r:?}"
    );
    ensure!(
        (r[1].rows_affected, r[1].last_insert_rowid) == (1, 10),
        "{r:?}"
    );
    ensure!(
        r[1].columns
            == [ColumnInfo {
                name: "id".into(),
                decl_type: Some("INTEGER".into())
            }]
            && r[1].rows == [[SqlValue::Integer(10)]],
        "RETURNING rows are kept: {r:?}"
    );
    ensure!(r[2].rows_affected == 0 && r[2].rows.len() == 3, "{r:?}");
    // An UPDATE keeps the request's last insert, as SQLite does on one connection.
    ensure!(
        (r[3].rows_affected, r[3].last_insert_rowid) == (2, 10),
        "{r:?}"
    );
    c.verify("results")?;
    Ok(())
}

#[tokio::test]
async fn vacuum_shrinks_the_file() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[CREATE_T, "CREATE INDEX t_a ON t(a)"]).await?;
    c.write_one(&[&insert_rows(8000, 1)]).await?;
    c.write_one(&["DELETE FROM t WHERE id % 2 = 0"]).await?;
    let before = page_count(c.leader.path())?;

    let mixed = c
        .write(vec![req("", &["DELETE FROM t WHERE id = 1", "VACUUM"])])
        .await?;
    ensure!(
        matches!(failed(&mixed.outcomes[0])?, DbError::InvalidArgument(m) if m == "VACUUM must be sent alone")
    );
    ensure!(is_vacuum(&req("", &[" vacuum; "])));

    let vacuum = c.executor.execute_vacuum().await?;
    let delta = Arc::new(vacuum.delta.context("vacuum delta")?);
    ensure!(delta.db_pages < before, "{} -> {}", before, delta.db_pages);
    ensure!(
        delta.pages.len() == delta.db_pages as usize,
        "a vacuum ships every page"
    );
    ensure!(c.leader.apply(delta.clone()).await? == ApplyOutcome::Applied);
    ensure!(c.follower.apply(delta).await? == ApplyOutcome::Applied);
    c.reference.execute_batch("VACUUM")?;
    ensure!(page_count(c.leader.path())? < before);
    c.verify("vacuum")?;
    c.write_one(&[&insert_rows(100, 2)]).await?;
    c.verify("insert after vacuum")?;
    ensure!(!c.dir.path().join("leader.db.vacuum-tmp").exists());
    Ok(())
}

#[tokio::test]
async fn open_reader_keeps_its_snapshot_across_applies() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[CREATE_T, "CREATE INDEX t_a ON t(a)"]).await?;
    c.write_one(&[&insert_rows(4000, 1)]).await?;
    let readers = [
        Connection::open(c.leader.path())?,
        Connection::open(c.follower.path())?,
    ];
    for r in &readers {
        r.execute_batch("BEGIN")?;
        ensure!(count(r, "t")? == 4000);
    }
    c.write_one(&[&insert_rows(1000, 2)]).await?;
    c.write_one(&["CREATE TABLE v(x)", "INSERT INTO v VALUES(42)"])
        .await?;
    c.write_one(&["DELETE FROM t WHERE id % 3 = 0"]).await?;
    // a truncating VACUUM while the snapshots are open
    let before = page_count(c.follower.path())?;
    let delta = Arc::new(c.executor.execute_vacuum().await?.delta.context("vacuum")?);
    c.leader.apply(delta.clone()).await?;
    c.follower.apply(delta).await?;
    c.reference.execute_batch("VACUUM")?;
    ensure!(page_count(c.follower.path())? < before);

    for r in &readers {
        ensure!(count(r, "t")? == 4000, "snapshot moved");
        let v_visible: i64 = r.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'v'",
            [],
            |row| row.get(0),
        )?;
        ensure!(v_visible == 0);
        let check: String = r.query_row("PRAGMA quick_check", [], |row| row.get(0))?;
        ensure!(check == "ok", "old snapshot: {check}");
        r.execute_batch("COMMIT")?;
        ensure!(count(r, "t")? == 5000 - 5000 / 3);
        ensure!(r.query_row("SELECT x FROM v", [], |row| row.get::<_, i64>(0))? == 42);
    }
    c.verify("after snapshots")?;
    Ok(())
}

#[tokio::test]
async fn random_small_batches_with_frequent_checkpoints() -> TestResult {
    let c = Cluster::new()?;
    for db in [&c.leader, &c.follower] {
        db.applier
            .call(|a| {
                a.connection()
                    .execute_batch("PRAGMA wal_autocheckpoint=20")
                    .map_err(DbError::from)
            })
            .await?;
    }
    c.write_one(&[CREATE_T, "CREATE INDEX t_a ON t(a)"]).await?;
    let follower_conn = Connection::open(c.follower.path())?;
    let mut rng = super::model_tests::Rng(99);
    let mut max_pages = 0;
    for i in 0..300u64 {
        let batch: Vec<WriteRequest> = (0..1 + rng.next() % 3)
            .map(|_| {
                let seed = rng.next() % 1000;
                let sql = match rng.next() % 3 {
                    0 => insert_rows(1 + (seed % 40) as u32, seed as u32),
                    1 => format!("UPDATE t SET a = 'u{i}' WHERE id % 97 = {}", seed % 97),
                    _ => format!("DELETE FROM t WHERE id % 211 = {}", seed % 211),
                };
                req("", &[&sql])
            })
            .collect();
        let result = c.write(batch).await?;
        max_pages = max_pages.max(result.delta.map_or(0, |d| d.pages.len()));
        if i % 7 == 0 {
            // the follower checkpoints on its own schedule
            follower_conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
        }
        ensure!(
            c.pages(c.leader.path())? == c.pages(c.follower.path())?,
            "batch {i} diverged"
        );
    }
    c.verify("300 batches")?;
    ensure!(max_pages > 0);
    Ok(())
}

#[tokio::test]
async fn duplicate_request_id_returns_first_result() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[CREATE_T]).await?;
    let first = c
        .write(vec![req("id-1", &["INSERT INTO t(a) VALUES('once')"])])
        .await?;
    let first = executed(&first.outcomes[0])?.to_vec();

    let again = c
        .executor
        .execute_batch(vec![req("id-1", &["INSERT INTO t(a) VALUES('once')"])])
        .await?;
    ensure!(again.delta.is_none(), "a duplicate alone changes nothing");
    ensure!(again.outcomes == [WriteOutcome::Duplicate(first.clone())]);

    // within one batch: the second copy is answered from the first
    let both = c
        .write(vec![
            req("id-2", &["INSERT INTO t(a) VALUES('two')"]),
            req("id-2", &["INSERT INTO t(a) VALUES('two')"]),
            req("id-1", &["INSERT INTO t(a) VALUES('once')"]),
        ])
        .await?;
    let second = executed(&both.outcomes[0])?.to_vec();
    ensure!(both.outcomes[1] == WriteOutcome::Duplicate(second));
    ensure!(both.outcomes[2] == WriteOutcome::Duplicate(first));
    // a failed request records nothing: the same id later in the batch runs
    let retry = c
        .write(vec![
            req("id-3", &["INSERT INTO nowhere VALUES (1)"]),
            req("id-4", &["INSERT INTO t(a) VALUES('four')"]),
            req("id-3", &["INSERT INTO t(a) VALUES('three')"]),
        ])
        .await?;
    failed(&retry.outcomes[0])?;
    executed(&retry.outcomes[1])?;
    executed(&retry.outcomes[2])?;
    let conn = Connection::open(c.follower.path())?;
    ensure!(count(&conn, "t")? == 4);
    // recorded once each, in the order their requests ran
    let ids: Vec<String> = conn
        .prepare("SELECT id FROM _raftlite_requests ORDER BY rowid")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    ensure!(ids == ["id-1", "id-2", "id-4", "id-3"], "{ids:?}");
    c.verify("dedup")?;
    Ok(())
}

#[tokio::test]
async fn old_request_ids_are_pruned() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("p.db");
    prepare_file(&path, Duration::from_secs(5))?;
    let applier = Applier::open(&path, Duration::from_secs(5))?;
    let mut executor = Executor::open(
        &path,
        &DbOptions {
            busy_timeout: Duration::from_secs(5),
            executor_cache_kib: 1024,
            ..DbOptions::default()
        },
    )?;
    let run = |executor: &mut Executor, batch: Vec<WriteRequest>| -> anyhow::Result<()> {
        let result = executor.execute_batch(&batch)?;
        applier.apply(&result.delta.context("delta")?)?;
        Ok(())
    };
    run(
        &mut executor,
        vec![
            req("old", &["CREATE TABLE t(x)"]),
            req("new", &["INSERT INTO t VALUES(1)"]),
        ],
    )?;
    // age one id by two days behind raftlite's back
    Connection::open(&path)?.execute(
        "UPDATE _raftlite_requests SET created_ms = created_ms - 172800000 WHERE id = 'old'",
        [],
    )?;
    executor.force_prune_next_batch();
    run(&mut executor, vec![req("", &["INSERT INTO t VALUES(2)"])])?;
    let ids: Vec<String> = Connection::open(&path)?
        .prepare("SELECT id FROM _raftlite_requests ORDER BY id")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    ensure!(ids == ["new"], "{ids:?}");
    Ok(())
}

/// At any write rate, ids past the retention are forgotten as fast as new ones come: a
/// prune that looked at a fixed 1,000 ids per 128 batches (about 8 per batch) fell behind
/// every workload with more writers than that per batch, and the table grew for ever.
#[tokio::test]
async fn pruning_request_ids_keeps_pace_with_many_writers_per_batch() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("p.db");
    prepare_file(&path, Duration::from_secs(5))?;
    let applier = Applier::open(&path, Duration::from_secs(5))?;
    let mut executor = Executor::open(&path, &DbOptions::default())?;
    let first = executor.execute_batch(&[req("", &["CREATE TABLE t(x)"])])?;
    applier.apply(&first.delta.context("delta")?)?;
    let aging = Connection::open(&path)?;
    const PER_BATCH: u32 = 20;
    let batches = 3 * super::executor::PRUNE_EVERY_BATCHES;
    for b in 0..batches {
        let batch: Vec<WriteRequest> = (0..PER_BATCH)
            .map(|k| req(&format!("id-{b}-{k}"), &["INSERT INTO t VALUES(1)"]))
            .collect();
        let result = executor.execute_batch(&batch)?;
        applier.apply(&result.delta.context("delta")?)?;
        // Every id is past the retention by the next batch.
        aging.execute(
            "UPDATE _raftlite_requests SET created_ms = created_ms - 172800000",
            [],
        )?;
    }
    let left: u32 = aging.query_row("SELECT count(*) FROM _raftlite_requests", [], |r| r.get(0))?;
    // Left: the ids of the batch that ran the last prune (recorded before it) and of the
    // batch after it (the table's creation counted as a batch too).
    ensure!(
        left <= 2 * PER_BATCH,
        "{left} of {} ids are left after {batches} batches",
        PER_BATCH * batches
    );
    Ok(())
}

#[tokio::test]
async fn replayed_delta_is_skipped() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[CREATE_T]).await?;
    let result = c
        .write(vec![req("", &["INSERT INTO t(a) VALUES('r')"])])
        .await?;
    let delta = Arc::new(result.delta.context("delta")?);
    let pages = snapshot::dump_raw_pages(c.follower.path())?;
    let version = c.follower.version().await?;
    ensure!(c.follower.apply(delta.clone()).await? == ApplyOutcome::Skipped);
    ensure!(c.leader.apply(delta).await? == ApplyOutcome::Skipped);
    ensure!(
        snapshot::dump_raw_pages(c.follower.path())? == pages,
        "replay changed the database"
    );
    ensure!(c.follower.version().await? == version);
    c.verify("replay")?;
    Ok(())
}

#[tokio::test]
async fn stale_and_gapped_deltas_are_refused() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[CREATE_T]).await?;
    // two batches captured on the same state: only the first may apply
    let x = c
        .executor
        .execute_batch(vec![req("", &["INSERT INTO t(a) VALUES('x')"])])
        .await?;
    let y = c
        .executor
        .execute_batch(vec![req("", &["INSERT INTO t(a) VALUES('y')"])])
        .await?;
    let (x, y) = (
        Arc::new(x.delta.context("x")?),
        Arc::new(y.delta.context("y")?),
    );
    ensure!(x.base_version == y.base_version);
    ensure!(c.follower.apply(x.clone()).await? == ApplyOutcome::Applied);
    ensure!(c.follower.apply(y).await? == ApplyOutcome::Skipped);

    // a delta from the future: the database is missing the deltas in between
    let fresh = Database::open(c.dir.path().join("fresh.db"), DbOptions::default())?;
    ensure!(fresh.version().await? == 0);
    match fresh.apply(x).await {
        Err(DbError::Corrupt(m)) => {
            ensure!(m == "delta based on version 1 but database is at 0", "{m}")
        }
        other => anyhow::bail!("expected Corrupt, got {other:?}"),
    }
    ensure!(fresh.version().await? == 0);
    Ok(())
}

#[tokio::test]
async fn executor_lockdown_refuses_dangerous_statements() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[CREATE_T]).await?;
    let cases: &[(&str, &str)] = &[
        ("ATTACH 'other.db' AS o", "ATTACH is not allowed"),
        (
            "PRAGMA journal_mode=DELETE",
            "pragma journal_mode is not allowed",
        ),
        (
            "PRAGMA cache_spill=OFF",
            "pragma cache_spill is not allowed",
        ),
        ("BEGIN", "BEGIN is not allowed"),
        ("VACUUM INTO '/tmp/stolen.db'", "VACUUM INTO is not allowed"),
        (
            "SELECT load_extension('/tmp/x')",
            "load_extension is not allowed",
        ),
        ("COMMIT", "COMMIT is not allowed"),
        ("SAVEPOINT s", "SAVEPOINT is not allowed"),
        (
            "INSERT INTO _raftlite_meta(key, value) VALUES('version', 99)",
            "_raftlite_meta is internal",
        ),
        (
            "UPDATE _raftlite_meta SET value = 0",
            "_raftlite_meta is internal",
        ),
        (
            "DELETE FROM _RAFTLITE_REQUESTS",
            "_raftlite_requests is internal",
        ),
        // Refused as any TEMP object: SQLite first reports the row it inserts into the temp
        // schema's table, before the table's name.
        (
            "CREATE TEMP TABLE _raftlite_requests(id)",
            "temporary tables",
        ),
        (
            "CREATE TRIGGER tr AFTER INSERT ON _raftlite_requests BEGIN SELECT 1; END",
            "is internal",
        ),
        // Stored write results are every token's: no client reads them, nor the raw pages.
        (
            "SELECT id, results FROM _raftlite_requests",
            "_raftlite_requests is internal to raftlite and cannot be read",
        ),
        (
            "INSERT INTO t(a) SELECT value FROM _raftlite_meta",
            "cannot be read",
        ),
        (
            "SELECT data FROM sqlite_dbpage WHERE pgno = 1",
            "reading sqlite_dbpage is not allowed",
        ),
        (
            "CREATE VIRTUAL TABLE raw USING sqlite_dbpage",
            "a virtual table over sqlite_dbpage is not allowed",
        ),
    ];
    for (sql, expected) in cases {
        let result = c.executor.execute_batch(vec![req("", &[sql])]).await?;
        match &result.outcomes[0] {
            WriteOutcome::Failed(DbError::PermissionDenied(m)) => {
                ensure!(
                    m.contains(expected),
                    "{sql}: message {m:?} lacks {expected:?}"
                )
            }
            other => anyhow::bail!("{sql}: expected PermissionDenied, got {other:?}"),
        }
        ensure!(result.delta.is_none());
    }
    // DEFENSIVE: no raw page writes
    let result = c
        .executor
        .execute_batch(vec![req(
            "",
            &["INSERT INTO sqlite_dbpage(pgno, data) VALUES(1, zeroblob(4096))"],
        )])
        .await?;
    ensure!(
        matches!(failed(&result.outcomes[0])?, DbError::PermissionDenied(m) if m == "writing sqlite_dbpage is not allowed"),
        "{:?}",
        result.outcomes
    );

    let result = c
        .executor
        .execute_batch(vec![req("", &["INSRT INTO t VALUES(1)"])])
        .await?;
    ensure!(
        matches!(failed(&result.outcomes[0])?, DbError::InvalidArgument(m) if m.contains("syntax error"))
    );
    let result = c
        .executor
        .execute_batch(vec![req("", &["INSERT INTO missing VALUES(1)"])])
        .await?;
    ensure!(
        matches!(failed(&result.outcomes[0])?, DbError::InvalidArgument(m) if m == "no such table: missing")
    );
    let result = c
        .executor
        .execute_batch(vec![WriteRequest {
            request_id: String::new(),
            deadline: None,
            max_result_bytes: None,
            statements: vec![Statement::with_params(
                "INSERT INTO t(a) VALUES(?1)",
                vec![],
            )],
        }])
        .await?;
    ensure!(matches!(
        failed(&result.outcomes[0])?,
        DbError::InvalidArgument(_)
    ));

    // the executor's own bookkeeping still works after all those refusals
    c.write(vec![req("after", &["INSERT INTO t(a) VALUES('ok')"])])
        .await?;
    c.verify("after refusals")?;
    Ok(())
}

#[tokio::test]
async fn pragmas_that_change_shared_state_are_refused() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&["CREATE TABLE v(x INTEGER CHECK (x > 0))"])
        .await?;
    // Each found against real nodes: broke every client's writes or reads, let another
    // client's bad row commit, or claimed success while doing nothing.
    let refused = [
        "PRAGMA hard_heap_limit=1",
        "PRAGMA soft_heap_limit=1",
        "PRAGMA ignore_check_constraints=ON",
        "PRAGMA max_page_count=1",
        "PRAGMA schema_version=99",
        "PRAGMA foreign_keys=OFF",
        "PRAGMA recursive_triggers=ON",
        "PRAGMA defer_foreign_keys=ON",
        "PRAGMA cache_size=1000000",
        "PRAGMA temp_store=MEMORY",
        "PRAGMA optimize",
        "PRAGMA integrity_check",
        "SELECT * FROM pragma_integrity_check",
    ];
    for sql in refused {
        let name = sql
            .trim_start_matches("PRAGMA ")
            .trim_start_matches("SELECT * FROM pragma_")
            .split('=')
            .next()
            .unwrap_or_default();
        let result = c.executor.execute_batch(vec![req("", &[sql])]).await?;
        match failed(&result.outcomes[0])? {
            DbError::PermissionDenied(m)
                if m.starts_with(&format!("pragma {name} is not allowed: ")) => {}
            other => anyhow::bail!("{sql}: expected a refusal naming {name}, got {other:?}"),
        }
        ensure!(result.delta.is_none(), "{sql}");
    }
    // Another client's CHECK-violating row is still refused in the same batch.
    let result = c
        .write(vec![
            req("", &["PRAGMA ignore_check_constraints=ON"]),
            req("", &["INSERT INTO v VALUES(-1)"]),
            req("", &["INSERT INTO v VALUES(1)"]),
        ])
        .await?;
    ensure!(matches!(
        failed(&result.outcomes[1])?,
        DbError::Constraint(_)
    ));
    executed(&result.outcomes[2])?;
    // Reads of a few values are fine on both sides.
    let read = c
        .write_one(&[
            "PRAGMA foreign_keys",
            "SELECT * FROM pragma_table_info('v')",
        ])
        .await?;
    ensure!(read.len() == 2);
    let chunks = collect(
        c.leader
            .reads()
            .query(stmt("PRAGMA foreign_keys"), 0, 10, None),
    )
    .await?;
    ensure!(
        chunks[0].rows == vec![vec![SqlValue::Integer(1)]],
        "{chunks:?}"
    );
    let chunks = collect(
        c.leader
            .reads()
            .query(stmt("PRAGMA quick_check"), 0, 10, None),
    )
    .await?;
    ensure!(chunks[0].rows == vec![vec![SqlValue::Text("ok".into())]]);
    // Every value the allow-list calls readable reads as a query, `journal_mode` too
    // (SQLite does not call that pragma read-only, even without a value).
    for pragma in [
        "auto_vacuum",
        "data_version",
        "encoding",
        "foreign_keys",
        "freelist_count",
        "journal_mode",
        "page_count",
        "page_size",
        "recursive_triggers",
        "schema_version",
        "application_id",
        "user_version",
    ] {
        let sql = format!("/* why */ pragma {pragma};");
        let chunks = collect(c.leader.reads().query(stmt(&sql), 0, 10, None)).await?;
        ensure!(chunks[0].rows.len() == 1, "{pragma}: {chunks:?}");
    }
    let chunks = collect(
        c.leader
            .reads()
            .query(stmt("PRAGMA journal_mode"), 0, 10, None),
    )
    .await?;
    ensure!(chunks[0].rows == vec![vec![SqlValue::Text("wal".into())]]);
    for refused in [
        "PRAGMA journal_mode = DELETE",
        "PRAGMA main.journal_mode=OFF",
    ] {
        match collect(c.leader.reads().query(stmt(refused), 0, 10, None)).await {
            Err(e) => ensure!(
                matches!(e.downcast_ref::<DbError>(), Some(DbError::PermissionDenied(m)) if m.contains("can be read, not set")),
                "{refused}: {e}"
            ),
            Ok(chunks) => anyhow::bail!("{refused} ran as a query: {chunks:?}"),
        }
    }
    match collect(
        c.leader
            .reads()
            .query(stmt("PRAGMA user_version = 3"), 0, 10, None),
    )
    .await
    {
        Err(e) => ensure!(
            matches!(e.downcast_ref::<DbError>(), Some(DbError::PermissionDenied(m)) if m.contains("set it with Execute")),
            "{e}"
        ),
        Ok(chunks) => anyhow::bail!("a query set user_version: {chunks:?}"),
    }

    // The application's header fields are replicated data: set them like any write.
    c.write_one(&["PRAGMA user_version = 7", "PRAGMA application_id = 42"])
        .await?;
    c.verify("user_version")?;
    for path in [c.leader.path(), c.follower.path()] {
        let conn = Connection::open(path)?;
        let got: (i64, i64) = conn.query_row(
            "SELECT (SELECT user_version FROM pragma_user_version), (SELECT application_id FROM pragma_application_id)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        ensure!(got == (7, 42), "{}: {got:?}", path.display());
    }
    Ok(())
}

#[tokio::test]
async fn temp_objects_are_refused_on_the_executor() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[CREATE_T]).await?;
    for sql in [
        "CREATE TEMP TABLE t(x)",
        "CREATE TEMPORARY VIEW w AS SELECT 1",
        "CREATE TEMP TRIGGER tr AFTER INSERT ON main.t BEGIN DELETE FROM main.t; END",
        // The same objects named in the temp schema rather than with the TEMP keyword: SQLite
        // reports them as plain creations on database "temp".
        "CREATE TABLE temp.t(a, b)",
        "CREATE TABLE \"TEMP\".t(a, b)",
        "CREATE VIEW temp.w AS SELECT 1",
        "CREATE TRIGGER temp.tr AFTER INSERT ON main.t BEGIN DELETE FROM main.t; END",
        "PRAGMA temp.user_version = 3",
    ] {
        let result = c.executor.execute_batch(vec![req("", &[sql])]).await?;
        ensure!(
            matches!(failed(&result.outcomes[0])?, DbError::PermissionDenied(m) if m.starts_with("temporary tables")),
            "{sql}: {:?}",
            result.outcomes
        );
    }
    // so a later request in the batch still writes the replicated table
    c.write(vec![
        req("", &["CREATE TEMP TABLE t(a, b)"]),
        req("", &["CREATE TABLE temp.t(a, b)"]),
        req("", &["INSERT INTO t(a) VALUES('kept')"]),
    ])
    .await?;
    c.verify("after temp refusals")?;
    ensure!(count(&Connection::open(c.follower.path())?, "t")? == 1);
    Ok(())
}

fn too_large(e: &DbError, limit: usize) -> bool {
    matches!(e, DbError::TooLarge(m)
        if m.contains("string or blob too big") && m.contains(&format!("limit is {limit} bytes")))
}

#[tokio::test]
async fn values_over_the_limit_fail_alone() -> TestResult {
    const LIMIT: usize = 64 * 1024;
    let c = Cluster::with_options(DbOptions {
        read_threads: 1,
        max_value_bytes: LIMIT,
        ..DbOptions::default()
    })?;
    c.write_one(&[CREATE_T]).await?;
    let over = LIMIT + 1;
    let result = c
        .write(vec![
            req("", &[&format!("INSERT INTO t(b) VALUES(zeroblob({over}))")]),
            req(
                "",
                &[&format!(
                    "INSERT INTO t(a) VALUES(length(randomblob({over})))"
                )],
            ),
            req(
                "",
                &[&format!(
                    "INSERT INTO t(a) VALUES(hex(zeroblob({})) || 'x')",
                    LIMIT / 2
                )],
            ),
            req(
                "",
                // the row, header included, must fit too
                &[&format!(
                    "INSERT INTO t(b) VALUES(zeroblob({}))",
                    LIMIT - 64
                )],
            ),
        ])
        .await?;
    for outcome in &result.outcomes[..3] {
        ensure!(too_large(failed(outcome)?, LIMIT), "{outcome:?}");
    }
    executed(&result.outcomes[3])?;
    c.verify("after oversized values")?;

    // a bound parameter over the limit, and a query building one
    let big = WriteRequest {
        request_id: String::new(),
        deadline: None,
        max_result_bytes: None,
        statements: vec![Statement::with_params(
            "INSERT INTO t(b) VALUES(?1)",
            vec![SqlValue::Blob(vec![0; over])],
        )],
    };
    let result = c.executor.execute_batch(vec![big]).await?;
    ensure!(
        too_large(failed(&result.outcomes[0])?, LIMIT),
        "{:?}",
        result.outcomes
    );
    match collect(c.leader.reads().query(
        stmt(&format!("SELECT length(randomblob({over}))")),
        0,
        10,
        None,
    ))
    .await
    {
        Err(e) => ensure!(
            e.downcast_ref::<DbError>()
                .is_some_and(|e| too_large(e, LIMIT)),
            "{e}"
        ),
        Ok(chunks) => anyhow::bail!("an oversized value was built: {chunks:?}"),
    }
    // the stored maximum-size value reads back, and the reader keeps serving
    let chunks = collect(c.leader.reads().query(
        stmt("SELECT length(b) FROM t WHERE b IS NOT NULL"),
        0,
        10,
        None,
    ))
    .await?;
    ensure!(chunks[0].rows == vec![vec![SqlValue::Integer(LIMIT as i64 - 64)]]);
    Ok(())
}

#[tokio::test]
async fn a_tiny_value_limit_does_not_bind_raftlites_own_statements() -> TestResult {
    let c = Cluster::with_options(DbOptions {
        read_threads: 1,
        max_value_bytes: 1024,
        ..DbOptions::default()
    })?;
    c.write_one(&[CREATE_T]).await?;
    // 4 KiB pages are captured, a 1.6 KiB result record is stored for the request id
    let many: Vec<String> = (0..100)
        .map(|i| format!("INSERT INTO t(a) VALUES('{i}')"))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let result = c.write(vec![req("many", &many)]).await?;
    ensure!(executed(&result.outcomes[0])?.len() == 100);
    let again = c.executor.execute_batch(vec![req("many", &many)]).await?;
    ensure!(matches!(&again.outcomes[0], WriteOutcome::Duplicate(r) if r.len() == 100));
    c.write_one(&[&insert_rows(500, 1)]).await?;
    c.verify("tiny value limit")?;
    let result = c.executor.execute_vacuum().await?;
    ensure!(result.delta.is_some());
    Ok(())
}

#[tokio::test]
async fn foreign_keys_and_recursive_triggers_are_node_settings() -> TestResult {
    const SCHEMA: &[&str] = &[
        "CREATE TABLE parent(id INTEGER PRIMARY KEY)",
        "CREATE TABLE child(parent INTEGER REFERENCES parent(id))",
        "CREATE TABLE countdown(n INTEGER)",
        "CREATE TRIGGER down AFTER INSERT ON countdown WHEN new.n > 0
         BEGIN INSERT INTO countdown VALUES(new.n - 1); END",
    ];
    // defaults: foreign keys enforced, triggers not recursive
    let c = Cluster::new()?;
    c.write_one(SCHEMA).await?;
    let result = c
        .executor
        .execute_batch(vec![req("", &["INSERT INTO child VALUES(7)"])])
        .await?;
    ensure!(
        matches!(failed(&result.outcomes[0])?, DbError::Constraint(m) if m.contains("FOREIGN KEY"))
    );
    c.write_one(&["INSERT INTO countdown VALUES(3)"]).await?;
    ensure!(count(&Connection::open(c.leader.path())?, "countdown")? == 2);

    let c = Cluster::with_options(DbOptions {
        read_threads: 1,
        foreign_keys: false,
        recursive_triggers: true,
        ..DbOptions::default()
    })?;
    c.reference
        .execute_batch("PRAGMA foreign_keys = OFF; PRAGMA recursive_triggers = ON")?;
    c.write_one(SCHEMA).await?;
    c.write_one(&[
        "INSERT INTO child VALUES(7)",
        "INSERT INTO countdown VALUES(3)",
    ])
    .await?;
    let leader = Connection::open(c.leader.path())?;
    ensure!(count(&leader, "child")? == 1 && count(&leader, "countdown")? == 4);
    let chunks = collect(c.leader.reads().query(
        stmt("SELECT * FROM pragma_foreign_keys, pragma_recursive_triggers"),
        0,
        10,
        None,
    ))
    .await?;
    ensure!(chunks[0].rows == vec![vec![SqlValue::Integer(0), SqlValue::Integer(1)]]);
    Ok(())
}

#[test]
fn heap_limit_covers_caches_and_values_and_is_only_raised() {
    let options = DbOptions {
        read_threads: 4,
        max_value_bytes: 16 << 20,
        ..DbOptions::default()
    };
    // 64 MiB base + 8 MiB executor cache + 4 x 2 MiB reader caches + 5 connections x 4 x 16 MiB
    assert_eq!(options.heap_limit_bytes(), (64 + 8 + 8 + 320) << 20);
    let high = 1 << 40;
    assert_eq!(bounds::raise_heap_limit(high), high);
    assert_eq!(
        bounds::raise_heap_limit(options.heap_limit_bytes()),
        high,
        "never lowered"
    );
}

const ENDLESS: &str =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";

/// Guards a test against hanging forever if an interrupt never lands; not a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(60);

fn soon(ms: u64) -> Option<std::time::Instant> {
    Some(std::time::Instant::now() + Duration::from_millis(ms))
}

fn with_deadline(mut request: WriteRequest, deadline: Option<std::time::Instant>) -> WriteRequest {
    request.deadline = deadline;
    request
}

fn is_timeout(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<DbError>(), Some(DbError::Timeout(_)))
}

#[tokio::test]
async fn endless_write_is_interrupted_and_fails_alone() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[CREATE_T]).await?;
    let endless_insert = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)
                          INSERT INTO t(a) SELECT x FROM c";
    // A read-only statement: only its savepoint is rolled back.
    let batch = vec![
        req("", &["INSERT INTO t(a) VALUES('before')"]),
        with_deadline(req("", &[ENDLESS]), soon(200)),
        req("", &["INSERT INTO t(a) VALUES('after')"]),
    ];
    let result = tokio::time::timeout(HANG_GUARD, c.write(batch)).await??;
    executed(&result.outcomes[0])?;
    ensure!(
        matches!(failed(&result.outcomes[1])?, DbError::Timeout(m) if m.contains("interrupted")),
        "{:?}",
        result.outcomes[1]
    );
    executed(&result.outcomes[2])?;
    // A write: SQLite rolls back the whole transaction; the batch reruns without it.
    let batch = vec![
        req("", &["INSERT INTO t(a) VALUES('before 2')"]),
        with_deadline(req("", &[endless_insert]), soon(200)),
        req("", &["INSERT INTO t(a) VALUES('after 2')"]),
        with_deadline(req("", &["INSERT INTO t(a) VALUES('late')"]), soon(0)),
    ];
    let result = tokio::time::timeout(HANG_GUARD, c.write(batch)).await??;
    for (i, expected) in [(1, "interrupted"), (3, "before it could run")] {
        match failed(&result.outcomes[i])? {
            DbError::Timeout(m) if m.contains(expected) => {}
            other => anyhow::bail!("request {i}: {other:?}"),
        }
    }
    executed(&result.outcomes[0])?;
    executed(&result.outcomes[2])?;
    c.verify("after interrupted writes")?;
    ensure!(count(&Connection::open(c.follower.path())?, "t")? == 4);
    // the executor's connection is not left interrupted
    c.write_one(&["INSERT INTO t(a) VALUES('next')"]).await?;
    Ok(())
}

/// A read token cannot read the internal tables (other tokens' stored write results) nor the
/// raw pages, directly or through a trigger a write token made; the schema still lists them.
#[tokio::test]
async fn clients_cannot_read_stored_results_or_raw_pages() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[CREATE_T]).await?;
    c.write(vec![req(
        "secret-1",
        &["INSERT INTO t(a) VALUES('top secret') RETURNING a"],
    )])
    .await?;
    for sql in [
        "SELECT id, results FROM _raftlite_requests",
        "SELECT * FROM _RAFTLITE_META",
        "SELECT (SELECT count(*) FROM _raftlite_requests)",
        "SELECT data FROM sqlite_dbpage WHERE pgno = 2",
        "SELECT data FROM sqlite_dbpage('main')",
    ] {
        match collect(c.leader.reads().query(stmt(sql), 0, 10, None)).await {
            Err(e) => ensure!(
                matches!(e.downcast_ref::<DbError>(), Some(DbError::PermissionDenied(m)) if m.contains("cannot be read") || m.contains("reading sqlite_dbpage")),
                "{sql}: {e}"
            ),
            Ok(chunks) => anyhow::bail!("{sql} was read: {chunks:?}"),
        }
    }
    let chunks = collect(c.leader.reads().query(
        stmt("SELECT count(*) FROM sqlite_master WHERE name LIKE '\\_raftlite\\_%' ESCAPE '\\'"),
        0,
        10,
        None,
    ))
    .await?;
    ensure!(
        chunks[0].rows == vec![vec![SqlValue::Integer(2)]],
        "{chunks:?}"
    );
    // A trigger reads with its statement's rights: the insert that fires it is refused.
    let made = c
        .write(vec![req(
            "",
            &["CREATE TRIGGER leak AFTER INSERT ON t BEGIN \
               UPDATE t SET b = (SELECT results FROM _raftlite_requests LIMIT 1) WHERE id = new.id; END"],
        )])
        .await?;
    if matches!(made.outcomes[0], WriteOutcome::Executed(_)) {
        let fired = c
            .write(vec![req("", &["INSERT INTO t(a) VALUES('x')"])])
            .await?;
        ensure!(
            matches!(&fired.outcomes[0], WriteOutcome::Failed(DbError::PermissionDenied(m)) if m.contains("cannot be read")),
            "{:?}",
            fired.outcomes
        );
    }
    Ok(())
}

/// One `instr` call of two long values (SQLite's built-in compares at every position: 1.6e12
/// byte comparisons here, minutes as one VM instruction that no deadline interrupts) neither
/// holds the executor nor a read thread: the next write and query run at once. Nor does one
/// call of `replace`, `ltrim` or `rtrim`. A LIKE pattern past its limit is refused.
#[tokio::test]
async fn one_slow_function_call_holds_nothing_back() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[CREATE_T]).await?;
    let slow = "SELECT instr(printf('%.*c', 1800000, 'a'), printf('%.*c', 900000, 'a') || 'b')";
    let guard = Duration::from_secs(20);
    // On the executor itself: the test's reference database runs SQLite's built-in.
    let executed = tokio::time::timeout(guard, c.executor.execute_batch(vec![req("", &[slow])]))
        .await
        .context("the executor was held by one instr call")??;
    ensure!(
        executed.outcomes.len() == 1 && matches!(executed.outcomes[0], WriteOutcome::Executed(_)),
        "{:?}",
        executed.outcomes
    );
    tokio::time::timeout(guard, c.write_one(&["INSERT INTO t(a) VALUES('next')"]))
        .await
        .context("the next write waited")??;
    let chunks = tokio::time::timeout(
        guard,
        collect(c.leader.reads().query(stmt(slow), 0, 10, None)),
    )
    .await
    .context("a read thread was held by one instr call")??;
    ensure!(
        chunks[0].rows == vec![vec![SqlValue::Integer(0)]],
        "{chunks:?}"
    );
    // SQLite's `replace` and two-argument trims are as slow: the first compares 900,000
    // bytes at each of 900,000 positions, the others try 200,001 characters at each of a
    // million they cut. Each runs on the executor and on a read thread, as one statement.
    let long = "printf('%.*c', 1800000, 'a')";
    let slow = [
        (
            format!("length(replace({long}, printf('%.*c', 900000, 'a') || 'b', 'c'))"),
            1800000,
        ),
        (
            format!("length(ltrim({long}, printf('%.*c', 200000, 'b') || 'a'))"),
            0,
        ),
        (
            format!("length(rtrim({long}, printf('%.*c', 200000, 'b') || 'a'))"),
            0,
        ),
    ];
    for (call, length) in slow {
        let sql = format!("SELECT {call}");
        let executed =
            tokio::time::timeout(guard, c.executor.execute_batch(vec![req("", &[&sql])]))
                .await
                .with_context(|| format!("the executor was held by {call}"))??;
        ensure!(
            matches!(&executed.outcomes[..], [WriteOutcome::Executed(_)]),
            "{:?}",
            executed.outcomes
        );
        let chunks = tokio::time::timeout(
            guard,
            collect(c.leader.reads().query(stmt(&sql), 0, 10, None)),
        )
        .await
        .with_context(|| format!("a read thread was held by {call}"))??;
        ensure!(
            chunks[0].rows == vec![vec![SqlValue::Integer(length)]],
            "{call}: {chunks:?}"
        );
    }
    let pattern = format!("SELECT 'x' LIKE '{}'", "%x".repeat(600));
    match collect(c.leader.reads().query(stmt(&pattern), 0, 10, None)).await {
        Err(e) => ensure!(format!("{e}").contains("pattern too complex"), "{e}"),
        Ok(chunks) => anyhow::bail!("a 1,200-byte LIKE pattern ran: {chunks:?}"),
    }
    Ok(())
}

/// A text of 200,000 statements is refused as more than one statement, by the read pool and
/// by the executor, and both go on serving. (rusqlite's own check prepared the rest of the
/// text recursively, a stack frame per statement: this overflowed the thread's stack and
/// aborted the process.) A trigger, whose body holds `;`, is still one statement.
#[tokio::test]
async fn a_text_of_very_many_statements_is_refused_without_exhausting_the_stack() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[CREATE_T]).await?;
    let many = "SELECT 1;".repeat(200_000);
    let one_statement_only = |e: &DbError| matches!(e, DbError::InvalidArgument(m) if m.contains("only one SQL statement"));
    match collect(c.leader.reads().query(stmt(&many), 0, 10, None)).await {
        Err(e) => ensure!(
            e.downcast_ref::<DbError>().is_some_and(one_statement_only),
            "query: {e}"
        ),
        Ok(chunks) => anyhow::bail!("ran as a query: {} chunks", chunks.len()),
    }
    let result = c.write(vec![req("many", &[&many])]).await?;
    match &result.outcomes[0] {
        WriteOutcome::Failed(e) => ensure!(one_statement_only(e), "execute: {e:?}"),
        other => anyhow::bail!("executed: {other:?}"),
    }
    c.write_one(&[
        "CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN SELECT 1; SELECT 2; END",
        "SELECT 'a;b'; -- trailing comment; not a statement",
    ])
    .await?;
    let chunks = collect(
        c.leader
            .reads()
            .query(stmt("SELECT count(*) FROM t;  "), 0, 10, None),
    )
    .await?;
    ensure!(chunks[0].rows.len() == 1);
    Ok(())
}

#[tokio::test]
async fn endless_query_is_interrupted_at_its_deadline() -> TestResult {
    let c = Cluster::one_reader()?;
    let reads = c.leader.reads();
    let result = tokio::time::timeout(
        HANG_GUARD,
        collect(reads.query(stmt(ENDLESS), 0, 10, soon(200))),
    )
    .await?;
    match result {
        Err(e) => ensure!(is_timeout(&e), "{e}"),
        Ok(chunks) => anyhow::bail!("an endless query ended: {chunks:?}"),
    }
    // the only read thread is free again
    let chunks = collect(reads.query(stmt("SELECT 1"), 0, 10, soon(10_000))).await?;
    ensure!(chunks[0].rows == vec![vec![SqlValue::Integer(1)]]);
    Ok(())
}

/// A statement of about 1 KB that takes milliseconds to compile and almost nothing to run:
/// SQLite copies a CTE's query at every place it is used, so each level doubles the
/// compilation (SQLite refuses one level more as "nested too deep"). `n` makes each text
/// different, so none comes from the statement cache.
fn slow_to_compile(n: usize) -> String {
    let mut sql = String::from("WITH c0 AS NOT MATERIALIZED (SELECT 1 AS x)");
    for k in 1..=8 {
        let j = k - 1;
        sql += &format!(
            ", c{k} AS NOT MATERIALIZED (SELECT x FROM c{j} UNION ALL SELECT x FROM c{j})"
        );
    }
    sql + &format!(" SELECT 1 FROM c8 LIMIT 0 -- {n}")
}

/// The progress handler never runs while SQLite compiles a statement, and counts VM
/// instructions per statement: a request of thousands of statements, each slow to compile
/// and quick to run, held the executor (and every write behind it) for as many times a few
/// milliseconds, its deadline checked only before the first. The authorizer, which SQLite
/// calls all through every compilation, stops it at the deadline.
#[tokio::test]
async fn a_request_of_statements_slow_to_compile_stops_at_its_deadline() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[CREATE_T]).await?;
    let texts: Vec<String> = (0..1000).map(slow_to_compile).collect();
    let statements: Vec<&str> = texts.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let write = with_deadline(req("", &statements), soon(200));
    let executed = tokio::time::timeout(HANG_GUARD, c.write(vec![write])).await??;
    match &executed.outcomes[0] {
        WriteOutcome::Failed(DbError::Timeout(m)) => ensure!(m.contains("deadline"), "{m}"),
        WriteOutcome::Executed(_) => anyhow::bail!("it ran: for {:?}", started.elapsed()),
        other => anyhow::bail!("{other:?}"),
    }
    c.write_one(&["INSERT INTO t(a) VALUES('next')"]).await?;
    Ok(())
}

/// A sort of `rows` generated 100 kB blobs: more than a reader's 2 MiB page cache from 21 rows
/// on, so it spills to a temporary file.
fn big_sort(rows: u32) -> String {
    format!(
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {rows})
         SELECT length(x) FROM (SELECT randomblob(100000) AS x FROM c) ORDER BY x"
    )
}

#[tokio::test]
async fn a_query_needing_too_much_temporary_space_fails_alone() -> TestResult {
    const LIMIT: u64 = 8 << 20;
    let c = Cluster::with_options(DbOptions {
        read_threads: 1,
        max_temp_file_bytes: LIMIT,
        ..DbOptions::default()
    })?;
    let reads = c.leader.reads();
    // 4 MB spill to a temporary file within the limit, and are read back through the shim
    let chunks = collect(reads.query(stmt(&big_sort(40)), 0, 100, None)).await?;
    let lengths: Vec<_> = chunks.into_iter().flat_map(|c| c.rows).collect();
    ensure!(lengths == vec![vec![SqlValue::Integer(100_000)]; 40]);
    // 40 MB would take the sorter's file past the limit (and did fill the disk without it)
    match collect(reads.query(stmt(&big_sort(400)), 1, 10, None)).await {
        Err(e) => ensure!(
            matches!(
                e.downcast_ref::<DbError>(),
                Some(DbError::TooLarge(m)) if m.starts_with(&format!(
                    "the statement needs more than {LIMIT} bytes of temporary space"
                ))
            ),
            "{e}"
        ),
        Ok(chunks) => anyhow::bail!("a 40 MB sort fit in {LIMIT} bytes: {chunks:?}"),
    }
    // the only read thread serves the next query, and a small sort still works
    c.write_one(&[CREATE_T, &insert_rows(100, 0)]).await?;
    let chunks =
        collect(reads.query(stmt("SELECT a FROM t ORDER BY a DESC"), 0, 1000, None)).await?;
    let values: Vec<SqlValue> = chunks.into_iter().flat_map(|c| c.rows).flatten().collect();
    let mut sorted = values.clone();
    sorted.sort_by_key(|v| std::cmp::Reverse(format!("{v:?}")));
    ensure!(values.len() == 100 && values == sorted, "{values:?}");
    Ok(())
}

#[tokio::test]
async fn a_query_nobody_waits_for_stops() -> TestResult {
    let c = Cluster::one_reader()?;
    c.write_one(&["CREATE TABLE n(id INTEGER PRIMARY KEY, label TEXT)"])
        .await?;
    c.write_one(&[
        "WITH RECURSIVE s(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM s WHERE v < 20000)
         INSERT INTO n(label) SELECT printf('%0100d', v) FROM s",
    ])
    .await?;
    let reads = c.leader.reads();

    // dropped before its first row (no deadline): the progress handler notices
    let running = reads.query(stmt(ENDLESS), 0, 10, None)?;
    // queued behind it and dropped: skipped
    drop(reads.query(stmt(ENDLESS), 0, 10, None)?);
    drop(running);
    let next = reads.query(stmt("SELECT count(*) FROM n"), 0, 10, None);
    let chunks = tokio::time::timeout(HANG_GUARD, collect(next)).await??;
    ensure!(chunks[0].rows == vec![vec![SqlValue::Integer(20_000)]]);

    // a client that stops reading holds the thread only until the deadline
    let mut stalled = reads.query(stmt("SELECT * FROM n"), 0, 10, soon(300))?;
    ensure!(stalled.recv().await.is_some());
    let next = reads.query(stmt("SELECT count(*) FROM n"), 0, 10, None);
    let chunks = tokio::time::timeout(HANG_GUARD, collect(next)).await??;
    ensure!(chunks[0].rows == vec![vec![SqlValue::Integer(20_000)]]);
    // what the stalled client gets: the chunks that fit, then the end of the stream
    let mut rows = 10;
    while let Some(chunk) = stalled.recv().await {
        match chunk {
            Ok(chunk) => rows += chunk.rows.len(),
            Err(e) => ensure!(matches!(e, DbError::Timeout(_)), "{e}"),
        }
    }
    ensure!(rows < 20_000, "the stalled query ran to the end");
    Ok(())
}

/// Wait until `n` read threads run a job (the queue hands jobs over asynchronously).
async fn wait_busy(reads: &ReadPool, n: usize) -> TestResult {
    tokio::time::timeout(HANG_GUARD, async {
        while reads.busy_threads() < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_full_read_queue_refuses_at_once() -> TestResult {
    let c = Cluster::one_reader()?;
    let reads = c.leader.reads();
    let running = reads.query(stmt(ENDLESS), 0, 10, None)?;
    wait_busy(reads, 1).await?;
    let queued: Vec<_> = (0..QUEUED_JOBS_PER_THREAD)
        .map(|_| reads.query(stmt("SELECT 1"), 0, 10, None))
        .collect::<Result<_>>()?;
    ensure!(reads.queued() == QUEUED_JOBS_PER_THREAD);
    match reads.query(stmt("SELECT 1"), 0, 10, None) {
        Err(DbError::Overloaded(m)) => {
            ensure!(
                m.contains("4 queries already wait for this node's 1 read threads"),
                "{m}"
            )
        }
        other => anyhow::bail!("expected Overloaded, got {other:?}"),
    }
    // once the endless query's client leaves, the queue drains and reads are admitted again
    drop(running);
    for rx in queued {
        let chunks = tokio::time::timeout(HANG_GUARD, collect(Ok(rx))).await??;
        ensure!(chunks[0].rows == vec![vec![SqlValue::Integer(1)]]);
    }
    collect(reads.query(stmt("SELECT 1"), 0, 10, None)).await?;
    Ok(())
}

#[tokio::test]
async fn threads_busy_past_their_deadline_count_as_stuck() -> TestResult {
    let c = Cluster::with_options(DbOptions {
        read_threads: 3,
        ..DbOptions::default()
    })?;
    let reads = c.leader.reads();
    ensure!(reads.threads() == 3 && reads.busy_threads() == 0);
    let with_deadline = reads.query(stmt(ENDLESS), 0, 10, soon(600_000))?;
    let without = reads.query(stmt(ENDLESS), 0, 10, None)?;
    wait_busy(reads, 2).await?;
    let now = std::time::Instant::now();
    ensure!(reads.stuck_threads(now) == 0);
    // seen from after the deadline, the thread that still runs it is stuck; the job without a
    // deadline never is
    ensure!(reads.stuck_threads(now + Duration::from_secs(3600)) == 1);
    drop((with_deadline, without));
    tokio::time::timeout(HANG_GUARD, async {
        while reads.busy_threads() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await?;
    ensure!(reads.stuck_threads(now + Duration::from_secs(3600)) == 0);
    Ok(())
}

/// Set in the child process of `heap_limit_stops_a_statement_holding_many_values`.
const HEAP_CHILD: &str = "RAFTLITE_TEST_HEAP_LIMIT_CHILD";

#[test]
fn heap_limit_stops_a_statement_holding_many_values() -> TestResult {
    // The heap limit is process-wide: test it in a process of its own, running only the
    // test below.
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["--exact", "db::tests::heap_limit_child", "--ignored"])
        .env(HEAP_CHILD, "1")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test]
#[ignore = "run by heap_limit_stops_a_statement_holding_many_values in its own process"]
async fn heap_limit_child() -> TestResult {
    if std::env::var_os(HEAP_CHILD).is_none() {
        return Ok(());
    }
    let options = DbOptions {
        read_threads: 1,
        max_value_bytes: 8 << 20,
        limit_process_heap: true,
        ..DbOptions::default()
    };
    // 64 MiB base + 10 MiB caches + 2 connections x 4 x 8 MiB
    ensure!(options.heap_limit_bytes() == 138 << 20);
    let c = Cluster::with_options(options)?;
    c.write_one(&[CREATE_T]).await?;
    // each value is within the limit, all of them together are not
    let many: Vec<String> = (0..24).map(|_| "randomblob(8000000)".to_string()).collect();
    let many = format!("SELECT {}", many.join(", "));
    match collect(c.leader.reads().query(stmt(&many), 0, 10, None)).await {
        Err(e) => ensure!(
            matches!(e.downcast_ref::<DbError>(), Some(DbError::TooLarge(m)) if m.contains("out of memory")),
            "{e}"
        ),
        Ok(_) => anyhow::bail!("24 x 8 MB held at once under a 138 MiB heap limit"),
    }
    let result = c
        .write(vec![
            req("", &["INSERT INTO t(a) VALUES('before')"]),
            req("", &["INSERT INTO t(a) VALUES('rolled back')", &many]),
            req("", &["INSERT INTO t(a) VALUES('after')"]),
        ])
        .await?;
    ensure!(
        matches!(failed(&result.outcomes[1])?, DbError::TooLarge(m) if m.contains("out of memory")),
        "{:?}",
        result.outcomes
    );
    executed(&result.outcomes[0])?;
    executed(&result.outcomes[2])?;
    c.verify("after statements over the heap limit")?;
    let chunks = collect(
        c.leader
            .reads()
            .query(stmt("SELECT count(*) FROM t"), 0, 10, None),
    )
    .await?;
    ensure!(chunks[0].rows == vec![vec![SqlValue::Integer(2)]]);

    // A query that holds values near the limit at once (15 constant 8 MB strings, below the
    // 138 MiB limit but past it less the 32 MiB reserve) is stopped, and the heap is free
    // again for the node's own work; without the reserve it would run to its end.
    let held: Vec<String> = (0..15)
        .map(|i| format!("printf('%.*c', {}, 'a') IS NOT NULL", 8_000_000 + i))
        .collect();
    let hoarding = format!(
        "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r WHERE x < 5000) \
         SELECT count(*) FROM r WHERE {}",
        held.join(" AND ")
    );
    match collect(c.leader.reads().query(stmt(&hoarding), 0, 10, None)).await {
        Err(e) => ensure!(
            matches!(e.downcast_ref::<DbError>(), Some(DbError::Overloaded(m)) if m.contains("nearly full")),
            "{e}"
        ),
        Ok(chunks) => anyhow::bail!("held 120 MB past the reserve: {chunks:?}"),
    }
    let result = c.write(vec![req("", &[&hoarding])]).await?;
    ensure!(
        matches!(failed(&result.outcomes[0])?, DbError::Overloaded(m) if m.contains("nearly full")),
        "{:?}",
        result.outcomes
    );

    // A follower's apply while other SQLite work holds the heap at its limit (as a client's
    // queries full of large values can): it waits for the memory instead of failing, which
    // stopped the node, and applies once the memory is free.
    let executed = c
        .executor
        .execute_batch(vec![req("", &[&insert_rows(200, 3)])])
        .await?;
    let delta = Arc::new(executed.delta.context("a delta")?);
    ensure!(c.leader.apply(delta.clone()).await? == ApplyOutcome::Applied);
    let hog = rusqlite::Connection::open_in_memory()?;
    hog.execute_batch("CREATE TABLE h(b)")?;
    for size in [1 << 20, 64 << 10, 4 << 10, 256, 16] {
        while hog
            .execute("INSERT INTO h VALUES(randomblob(?1))", [size])
            .is_ok()
        {}
    }
    let apply = c.follower.apply(delta);
    tokio::pin!(apply);
    if let Ok(done) = tokio::time::timeout(Duration::from_millis(500), &mut apply).await {
        anyhow::bail!("the apply did not wait for memory: {done:?}");
    }
    drop(hog);
    let applied = tokio::time::timeout(Duration::from_secs(10), apply).await??;
    ensure!(applied == ApplyOutcome::Applied, "{applied:?}");
    c.reference_commit(&req("", &[&insert_rows(200, 3)]))?;
    c.verify("a follower's apply that waited for memory")?;
    Ok(())
}

async fn collect(
    rx: Result<tokio::sync::mpsc::Receiver<Result<QueryChunk>>>,
) -> anyhow::Result<Vec<QueryChunk>> {
    let mut rx = rx?;
    let mut chunks = Vec::new();
    while let Some(chunk) = rx.recv().await {
        chunks.push(chunk?);
    }
    Ok(chunks)
}

#[tokio::test]
async fn read_pool_refuses_writes() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[CREATE_T]).await?;
    let refused = [
        ("INSERT INTO t(a) VALUES('x')", READ_ONLY_MESSAGE),
        ("CREATE TABLE w(x)", READ_ONLY_MESSAGE),
        ("CREATE TABLE temp.w(x)", READ_ONLY_MESSAGE),
        ("PRAGMA temp.user_version = 3", READ_ONLY_MESSAGE),
        (
            "VACUUM INTO '/tmp/raftlite-should-not-exist.db'",
            READ_ONLY_MESSAGE,
        ),
        ("PRAGMA query_only=OFF", "pragma query_only is not allowed"),
        ("BEGIN", "transaction control is not allowed"),
        ("ATTACH 'x.db' AS x", "ATTACH is not allowed"),
    ];
    for (sql, expected) in refused {
        match collect(c.leader.reads().query(stmt(sql), 0, 10, None)).await {
            Err(e) => match e.downcast_ref::<DbError>() {
                Some(DbError::PermissionDenied(m)) if m.contains(expected) => {}
                other => anyhow::bail!("{sql}: {other:?}"),
            },
            Ok(chunks) => anyhow::bail!("{sql}: succeeded with {chunks:?}"),
        }
    }
    let chunks = collect(
        c.leader
            .reads()
            .query(stmt("PRAGMA table_info(t)"), 0, 10, None),
    )
    .await?;
    ensure!(chunks.iter().map(|ch| ch.rows.len()).sum::<usize>() == 3);
    match collect(
        c.leader
            .reads()
            .query(stmt("SELECT * FROM nope"), 0, 10, None),
    )
    .await
    {
        Err(e) => ensure!(matches!(
            e.downcast_ref::<DbError>(),
            Some(DbError::InvalidArgument(_))
        )),
        Ok(_) => anyhow::bail!("query on a missing table succeeded"),
    }
    Ok(())
}

const READ_ONLY_MESSAGE: &str = "Query is read-only; send writes with Execute";

/// TEXT that is not UTF-8 (stored through a cast) is an error naming the column, on the read
/// path and in a write's RETURNING, never text with other bytes than were stored; its bytes
/// come back as a BLOB.
#[tokio::test]
async fn text_that_is_not_utf8_is_an_error_not_other_text() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[
        CREATE_T,
        "INSERT INTO t(id, a) VALUES(1, CAST(x'41ff42' AS TEXT))",
    ])
    .await?;
    match collect(
        c.leader
            .reads()
            .query(stmt("SELECT id, a FROM t"), 0, 10, None),
    )
    .await
    {
        Err(e) => ensure!(
            matches!(e.downcast_ref::<DbError>(), Some(DbError::InvalidArgument(m))
                if m.contains("column 2") && m.contains("not valid UTF-8") && m.contains("AS BLOB")),
            "{e}"
        ),
        Ok(chunks) => anyhow::bail!("read as text: {chunks:?}"),
    }
    let bytes = collect(
        c.leader
            .reads()
            .query(stmt("SELECT CAST(a AS BLOB) FROM t"), 0, 10, None),
    )
    .await?;
    ensure!(bytes[0].rows == [[SqlValue::Blob(vec![0x41, 0xff, 0x42])]]);
    let returning = c
        .executor
        .execute_batch(vec![req("", &["UPDATE t SET b = x'00' RETURNING a"])])
        .await?;
    ensure!(
        matches!(failed(&returning.outcomes[0])?, DbError::InvalidArgument(m) if m.contains("not valid UTF-8")),
        "{:?}",
        returning.outcomes
    );
    ensure!(
        returning.delta.is_none(),
        "the failed request changed nothing"
    );
    Ok(())
}

/// EXPLAIN and EXPLAIN QUERY PLAN of a write are queries: they describe it, on the schema as
/// it is now, and run none of it; anything else that writes stays refused.
#[tokio::test]
async fn a_query_explains_a_write_without_running_it() -> TestResult {
    // One reader: the second plan comes from the connection that made the first.
    let c = Cluster::one_reader()?;
    c.write_one(&[
        CREATE_T,
        "CREATE INDEX t_a ON t(a)",
        "INSERT INTO t(a) VALUES('x')",
    ])
    .await?;
    let rows = |chunks: Vec<QueryChunk>| {
        chunks
            .into_iter()
            .flat_map(|ch| ch.rows)
            .collect::<Vec<_>>()
    };
    let plan = "EXPLAIN QUERY PLAN UPDATE t SET b = x'00' WHERE a = 'x'";
    let described = rows(collect(c.leader.reads().query(stmt(plan), 0, 100, None)).await?);
    let text = format!("{described:?}");
    ensure!(text.contains("t_a"), "the plan names the index: {text}");
    // Asked again once the index is gone, it describes the schema as it is now.
    c.write_one(&["DROP INDEX t_a"]).await?;
    let described = rows(collect(c.leader.reads().query(stmt(plan), 0, 100, None)).await?);
    let text = format!("{described:?}");
    ensure!(!text.contains("t_a"), "a plan of the old schema: {text}");
    for sql in [
        "/* why */ explain DELETE FROM t",
        "EXPLAIN INSERT INTO t(a) VALUES('y')",
    ] {
        let program = rows(collect(c.leader.reads().query(stmt(sql), 0, 1000, None)).await?);
        ensure!(!program.is_empty(), "{sql}: the program is listed");
    }
    let conn = Connection::open(c.follower.path())?;
    ensure!(count(&conn, "t")? == 1, "nothing ran");
    let leader = Connection::open(c.leader.path())?;
    ensure!(count(&leader, "t")? == 1, "nothing ran on the leader");
    match collect(
        c.leader
            .reads()
            .query(stmt("EXPLAINED DELETE FROM t"), 0, 10, None),
    )
    .await
    {
        Err(_) => {}
        Ok(chunks) => anyhow::bail!("not an EXPLAIN: {chunks:?}"),
    }
    match collect(c.leader.reads().query(stmt("DELETE FROM t"), 0, 10, None)).await {
        Err(e) => ensure!(
            matches!(e.downcast_ref::<DbError>(), Some(DbError::PermissionDenied(m)) if m.contains(READ_ONLY_MESSAGE)),
            "{e}"
        ),
        Ok(chunks) => anyhow::bail!("a write ran as a query: {chunks:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn query_streams_in_bounded_chunks() -> TestResult {
    let c = Cluster::one_reader()?;
    c.write_one(&["CREATE TABLE n(id INTEGER PRIMARY KEY, label TEXT)"])
        .await?;
    c.write_one(&["WITH RECURSIVE s(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM s WHERE value < 100000)
         INSERT INTO n(label) SELECT 'row ' || value FROM s"])
        .await?;

    let reads = c.leader.reads();
    let mut rx = reads.query(
        stmt("SELECT id, label, id * 2 AS twice FROM n ORDER BY id"),
        0,
        1000,
        None,
    )?;
    let mut total = 0usize;
    let mut chunks = 0usize;
    let mut last_id = 0i64;
    while let Some(chunk) = rx.recv().await {
        let chunk = chunk?;
        if chunks == 0 {
            let names: Vec<_> = chunk.columns.iter().map(|col| col.name.as_str()).collect();
            ensure!(names == ["id", "label", "twice"]);
            ensure!(chunk.columns[0].decl_type.as_deref() == Some("INTEGER"));
            ensure!(chunk.columns[2].decl_type.is_none());
        } else {
            ensure!(chunk.columns.is_empty());
        }
        ensure!(chunk.rows.len() <= 1000);
        for row in &chunk.rows {
            let SqlValue::Integer(id) = row[0] else {
                anyhow::bail!("bad row {row:?}")
            };
            ensure!(id == last_id + 1);
            last_id = id;
        }
        total += chunk.rows.len();
        chunks += 1;
        ensure!(!chunk.truncated);
        if chunk.done {
            break;
        }
    }
    ensure!(
        total == 100_000 && chunks >= 100,
        "{total} rows in {chunks} chunks"
    );

    // max_rows cuts the result short and says so
    let chunks = collect(reads.query(stmt("SELECT id FROM n"), 2500, 1000, None)).await?;
    let sizes: Vec<usize> = chunks.iter().map(|ch| ch.rows.len()).collect();
    ensure!(sizes.iter().sum::<usize>() == 2500, "{sizes:?}");
    let last = chunks.last().context("no chunks")?;
    ensure!(last.truncated && last.done);
    let exact =
        collect(reads.query(stmt("SELECT id FROM n WHERE id <= 10"), 10, 1000, None)).await?;
    ensure!(exact.len() == 1 && exact[0].rows.len() == 10 && !exact[0].truncated);

    // a dropped receiver stops the query; the (single) pool thread serves the next one
    let mut rx = reads.query(stmt("SELECT * FROM n"), 0, 10, None)?;
    let _first = rx.recv().await;
    drop(rx);
    let chunks = collect(reads.query(stmt("SELECT count(*) FROM n"), 0, 10, None)).await?;
    ensure!(chunks[0].rows == vec![vec![SqlValue::Integer(100_000)]]);
    Ok(())
}

#[tokio::test]
async fn install_image_makes_fresh_follower_identical() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[CREATE_T, "CREATE INDEX t_a ON t(a)"]).await?;
    c.write_one(&[&insert_rows(3000, 4)]).await?;
    c.write_one(&["DELETE FROM t WHERE id % 4 = 0"]).await?;

    let image = c.dir.path().join("image.db");
    let info = c.leader.build_image(image.clone()).await?;
    ensure!(info.page_size == PAGE_SIZE);
    ensure!(info.pages == page_count(c.leader.path())?);
    ensure!(info.version == c.leader.version().await?);
    ensure!(std::fs::metadata(&image)?.len() == u64::from(info.pages) * u64::from(info.page_size));

    // a node with unrelated, larger data gets replaced entirely (including truncation)
    let fresh = Database::open(c.dir.path().join("fresh.db"), DbOptions::default())?;
    let other = fresh.open_executor()?;
    let junk = other
        .execute_batch(vec![req("", &[CREATE_T, &insert_rows(9000, 9)])])
        .await?;
    fresh.apply(Arc::new(junk.delta.context("junk")?)).await?;
    ensure!(page_count(fresh.path())? > info.pages);

    fresh.install_image(image).await?;
    ensure!(
        dump_pages(fresh.path())? == dump_pages(c.leader.path())?,
        "image differs"
    );
    ensure!(integrity(fresh.path())? == "ok");
    ensure!(fresh.version().await? == info.version);

    // and it keeps following the leader
    let result = c
        .write(vec![req("", &["INSERT INTO t(a) VALUES('after image')"])])
        .await?;
    ensure!(
        fresh
            .apply(Arc::new(result.delta.context("delta")?))
            .await?
            == ApplyOutcome::Applied
    );
    ensure!(dump_pages(fresh.path())? == dump_pages(c.leader.path())?);
    // A write that changes page 1 (the schema) applies too, although this node's page 1
    // counts its commits differently from the leader's.
    let result = c
        .write(vec![req("", &["CREATE TABLE after_image(x)"])])
        .await?;
    let delta = result.delta.context("delta")?;
    ensure!(delta.pages.first().is_some_and(|p| p.0 == 1));
    ensure!(fresh.apply(Arc::new(delta)).await? == ApplyOutcome::Applied);
    ensure!(dump_pages(fresh.path())? == dump_pages(c.leader.path())?);
    ensure!(integrity(fresh.path())? == "ok");

    // garbage is refused
    let garbage = c.dir.path().join("garbage");
    std::fs::write(&garbage, vec![7u8; 8192])?;
    ensure!(matches!(
        fresh.install_image(garbage).await,
        Err(DbError::Corrupt(_))
    ));
    ensure!(dump_pages(fresh.path())? == dump_pages(c.leader.path())?);
    Ok(())
}

#[tokio::test]
async fn fresh_database_serves_reads_and_images() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = Database::open(dir.path().join("new.db"), DbOptions::default())?;
    let chunks = collect(
        db.reads()
            .query(stmt("SELECT count(*) FROM sqlite_schema"), 0, 10, None),
    )
    .await?;
    ensure!(chunks[0].rows == vec![vec![SqlValue::Integer(0)]]);
    ensure!(db.version().await? == 0);
    let info = db.build_image(dir.path().join("image.db")).await?;
    ensure!(info.pages == 1 && info.version == 0 && info.page_size == PAGE_SIZE);
    ensure!(dump_pages(db.path())?.len() == 1);
    Ok(())
}

#[tokio::test]
async fn delta_without_its_new_last_page_is_refused() -> TestResult {
    let c = Cluster::new()?;
    let result = c
        .executor
        .execute_batch(vec![req("", &[CREATE_T, &insert_rows(500, 1)])])
        .await?;
    let mut delta = result.delta.context("delta")?;
    let pages = dump_pages(c.follower.path())?;
    delta.pages.pop();
    match c.follower.apply(Arc::new(delta)).await {
        Err(DbError::Corrupt(m)) => ensure!(m.contains("lacks page"), "{m}"),
        other => anyhow::bail!("expected Corrupt, got {other:?}"),
    }
    ensure!(
        dump_pages(c.follower.path())? == pages,
        "a refused delta changed the database"
    );
    Ok(())
}

#[tokio::test]
async fn abandoned_capture_leaves_leader_unchanged() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[CREATE_T, "CREATE INDEX t_a ON t(a)"]).await?;
    c.write_one(&[&insert_rows(2000, 1)]).await?;
    let pages = snapshot::dump_raw_pages(c.leader.path())?;
    // Raft never commits this one: it is captured and dropped.
    let abandoned = c
        .executor
        .execute_batch(vec![req("lost", &[&insert_rows(20_000, 2)])])
        .await?;
    ensure!(abandoned.delta.context("delta")?.pages.len() > 500);
    ensure!(
        snapshot::dump_raw_pages(c.leader.path())? == pages,
        "leader changed"
    );
    ensure!(c.leader.version().await? == c.follower.version().await?);
    c.verify("after abandoned capture")?;

    // The rolled-back frames are still in the -wal file; the next delta must not pick them up.
    let small = c
        .write(vec![req("lost", &["INSERT INTO t(a) VALUES('one row')"])])
        .await?;
    executed(&small.outcomes[0])?;
    let small_pages = small.delta.context("delta")?.pages.len();
    ensure!(
        small_pages < 10,
        "one-row delta carried {small_pages} pages"
    );
    c.verify("small write after abandoned capture")?;
    Ok(())
}

/// `last_insert_rowid` belongs to the request: never an earlier request's rowid nor raftlite's
/// own request-id table (three UPDATEs used to answer 4, 5, 6 on a table of two rows).
#[tokio::test]
async fn last_insert_rowid_is_the_requests_own() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&["CREATE TABLE kv(k TEXT PRIMARY KEY, v INTEGER)"])
        .await?;
    let inserted = c
        .write(vec![req(
            "i1",
            &["INSERT INTO kv VALUES('a', 1), ('b', 2)"],
        )])
        .await?;
    ensure!(executed(&inserted.outcomes[0])?[0].last_insert_rowid == 2);
    for n in 0..3 {
        let id = format!("u{n}");
        let r = c
            .write(vec![req(&id, &["UPDATE kv SET v = v + 1 WHERE k = 'a'"])])
            .await?;
        let r = executed(&r.outcomes[0])?;
        ensure!(
            (r[0].rows_affected, r[0].last_insert_rowid) == (1, 0),
            "update {n}: {r:?}"
        );
    }
    // In one group commit, each request sees only its own inserts.
    let batch = c
        .write(vec![
            req("g1", &["INSERT INTO kv VALUES('c', 3)"]),
            req("g2", &["UPDATE kv SET v = 0 WHERE k = 'c'"]),
        ])
        .await?;
    ensure!(executed(&batch.outcomes[0])?[0].last_insert_rowid == 3);
    ensure!(executed(&batch.outcomes[1])?[0].last_insert_rowid == 0);
    c.verify("rowids")?;
    Ok(())
}

/// RETURNING rows come back, and a deduplicated retry returns the same rows.
#[tokio::test]
async fn returning_rows_survive_deduplication() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[
        "CREATE TABLE counter(id INTEGER PRIMARY KEY, n INTEGER)",
        "INSERT INTO counter VALUES(1, 0)",
    ])
    .await?;
    let first = c
        .write(vec![req(
            "inc",
            &["UPDATE counter SET n = n + 1 RETURNING n, 'x' || n AS label, x'00ff', 1.5, NULL"],
        )])
        .await?;
    let first = executed(&first.outcomes[0])?.to_vec();
    ensure!(
        first[0].rows
            == [[
                SqlValue::Integer(1),
                SqlValue::Text("x1".into()),
                SqlValue::Blob(vec![0, 255]),
                SqlValue::Real(1.5),
                SqlValue::Null
            ]],
        "{first:?}"
    );
    ensure!(first[0].columns[1].name == "label" && first[0].columns[1].decl_type.is_none());
    let retry = c
        .write(vec![req(
            "inc",
            &["UPDATE counter SET n = n + 1 RETURNING n, 'x' || n AS label, x'00ff', 1.5, NULL"],
        )])
        .await?;
    match &retry.outcomes[0] {
        WriteOutcome::Duplicate(stored) => ensure!(*stored == first, "{stored:?}"),
        other => anyhow::bail!("expected a duplicate, got {other:?}"),
    }
    ensure!(retry.delta.is_none(), "a duplicate writes nothing");
    c.verify("returning")?;
    Ok(())
}

/// A request returning more than MAX_RESULT_BYTES of rows fails alone; the rest of its group
/// commit commits.
#[tokio::test]
async fn oversized_returning_fails_alone() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&["CREATE TABLE big(id INTEGER PRIMARY KEY, b BLOB)"])
        .await?;
    let rows = MAX_RESULT_BYTES / (64 * 1024) + 2;
    let result = c
        .write(vec![
            req(
                "",
                &[&format!(
                    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {rows})
                     INSERT INTO big(b) SELECT zeroblob(65536) FROM c RETURNING b"
                )],
            ),
            req("", &["INSERT INTO big(b) VALUES(x'01') RETURNING id"]),
        ])
        .await?;
    let e = failed(&result.outcomes[0])?;
    ensure!(
        matches!(e, DbError::TooLarge(m) if m.contains("RETURNING only the keys")),
        "{e:?}"
    );
    let ok = executed(&result.outcomes[1])?;
    ensure!(ok[0].rows == [[SqlValue::Integer(1)]], "{ok:?}");
    c.verify("oversized returning")?;
    Ok(())
}

/// SQLite's table rebuild for a table others reference (create the new table, copy, drop the
/// old one, rename): a one-shot request that starts with `PRAGMA foreign_keys = OFF` runs
/// alone without them, its `PRAGMA foreign_keys` statements answered without running, and
/// replicates like any write. One that leaves a violation fails whole. The node's setting is
/// back for the next batch.
#[tokio::test]
async fn a_request_without_foreign_keys_rebuilds_a_referenced_table() -> TestResult {
    let c = Cluster::new()?;
    let schema = [
        "CREATE TABLE parent(id INTEGER PRIMARY KEY)",
        "CREATE TABLE child(id INTEGER PRIMARY KEY, pid INTEGER REFERENCES parent(id))",
        "INSERT INTO parent VALUES(1), (2)",
        "INSERT INTO child VALUES(10, 1), (20, 2)",
    ];
    c.write_one(&schema).await?;
    let rebuild = [
        "CREATE TABLE parent_new(id INTEGER PRIMARY KEY, name TEXT NOT NULL DEFAULT 'p')",
        "INSERT INTO parent_new(id) SELECT id FROM parent",
        "DROP TABLE parent",
        "ALTER TABLE parent_new RENAME TO parent",
        "PRAGMA foreign_key_check",
    ];
    // With foreign keys on, dropping the referenced table fails; setting them off later in a
    // request is refused, saying how.
    let refused = c.write(vec![req("", &rebuild)]).await?;
    ensure!(
        matches!(failed(&refused.outcomes[0])?, DbError::Constraint(_)),
        "{refused:?}"
    );
    let mut late = rebuild.to_vec();
    late.insert(1, "PRAGMA foreign_keys = OFF");
    let late = c.write(vec![req("", &late)]).await?;
    ensure!(
        matches!(failed(&late.outcomes[0])?, DbError::PermissionDenied(m) if m.contains("first statement")),
        "{late:?}"
    );

    let mut statements = vec!["pragma main.foreign_keys = 'off';"];
    statements.extend(rebuild);
    statements.push("PRAGMA foreign_keys = ON");
    let request = req("rebuild", &statements);
    ensure!(runs_alone(&request) && !runs_alone(&req("", &rebuild)));
    let result = c.executor.execute_alone(request).await?;
    let results = executed(&result.outcomes[0])?;
    ensure!(
        results.len() == statements.len(),
        "an outcome per statement"
    );
    apply_both(&c, result.delta.context("a delta")?).await?;
    c.reference.execute_batch(&format!(
        "PRAGMA foreign_keys = OFF; BEGIN; {}; COMMIT; PRAGMA foreign_keys = ON;",
        rebuild.join("; ")
    ))?;
    c.verify("rebuilt")?;
    let conn = Connection::open(c.follower.path())?;
    let names: String =
        conn.query_row("SELECT group_concat(name) FROM parent", [], |r| r.get(0))?;
    ensure!(names == "p,p", "{names}");

    // A request that leaves an orphan fails whole.
    let orphan = c
        .executor
        .execute_alone(req(
            "",
            &["PRAGMA foreign_keys=0", "DELETE FROM parent WHERE id = 1"],
        ))
        .await?;
    ensure!(orphan.delta.is_none(), "nothing of it is replicated");
    ensure!(
        matches!(failed(&orphan.outcomes[0])?, DbError::Constraint(m) if m.contains("child") && m.contains("none of it was applied")),
        "{orphan:?}"
    );
    // Foreign keys are enforced again.
    let after = c
        .write(vec![req("", &["DELETE FROM parent WHERE id = 1"])])
        .await?;
    ensure!(
        matches!(failed(&after.outcomes[0])?, DbError::Constraint(_)),
        "{after:?}"
    );
    c.verify("after")?;
    Ok(())
}

/// The check at the end of a request without foreign keys reads every table that has one, a
/// cost the client chooses by the size of its database: it stops at the request's deadline,
/// like the request's statements, and the request fails, nothing of it applied.
#[tokio::test]
async fn the_check_of_a_request_without_foreign_keys_stops_at_its_deadline() -> TestResult {
    let c = Cluster::new()?;
    // 100,000 rows with 50 foreign keys each: five million parent lookups, half a second of
    // checking even for an optimised SQLite, where the request's own statements take
    // microseconds.
    let columns: Vec<String> = (0..50)
        .map(|i| format!("c{i} INTEGER REFERENCES p(id)"))
        .collect();
    let values: Vec<String> = (0..50)
        .map(|i| format!("(n * {}) % 1000 + 1", i + 7))
        .collect();
    let create_child = format!("CREATE TABLE ch({})", columns.join(", "));
    let fill_child = format!(
        "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 100000)
         INSERT INTO ch SELECT {} FROM s",
        values.join(", ")
    );
    c.write_one(&[
        "CREATE TABLE p(id INTEGER PRIMARY KEY)",
        &create_child,
        "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 1000)
         INSERT INTO p SELECT n FROM s",
        &fill_child,
    ])
    .await?;
    let rebuild = ["PRAGMA foreign_keys = OFF", "INSERT INTO p VALUES(2000)"];
    let mut request = req("", &rebuild);
    request.deadline = Some(std::time::Instant::now() + Duration::from_millis(50));
    let started = std::time::Instant::now();
    let result = c.executor.execute_alone(request).await?;
    ensure!(
        matches!(failed(&result.outcomes[0])?, DbError::Timeout(_)),
        "{:?} after {:?}",
        result.outcomes,
        started.elapsed()
    );
    ensure!(result.delta.is_none(), "nothing of it is replicated");
    // Given the time, the same request passes the check.
    let result = c.executor.execute_alone(req("", &rebuild)).await?;
    executed(&result.outcomes[0])?;
    apply_both(&c, result.delta.context("a delta")?).await?;
    Ok(())
}

/// Runs one call of the open transaction: `Done`'s results, or the step as an error.
async fn tx_call(c: &Cluster, sqls: &[&str]) -> anyhow::Result<TransactionStep> {
    Ok(c.executor
        .transaction_execute(sqls.iter().map(|s| stmt(s)).collect(), None)
        .await?)
}

async fn tx_ids(c: &Cluster) -> anyhow::Result<Vec<i64>> {
    match tx_call(c, &["SELECT group_concat(id) FROM t ORDER BY id"]).await? {
        TransactionStep::Done(r) => Ok(match &r[0].rows[0][0] {
            SqlValue::Text(ids) => ids.split(',').map(str::parse).collect::<Result<_, _>>()?,
            _ => Vec::new(),
        }),
        other => anyhow::bail!("{other:?}"),
    }
}

/// A client's savepoints last across the calls of an interactive transaction (as SQLAlchemy's
/// `begin_nested()` and Django's nested `atomic()` use them): ROLLBACK TO undoes what came
/// after, RELEASE keeps it, and the commit carries what is left. Each must come alone in its
/// call; raftlite's own names are refused; a request outside a transaction refuses them, even
/// once the same text was prepared inside one.
#[tokio::test]
async fn client_savepoints_last_across_the_calls_of_a_transaction() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[CREATE_T]).await?;
    c.executor.begin().await?;
    let done = |step: TransactionStep| -> TestResult {
        ensure!(matches!(step, TransactionStep::Done(_)), "{step:?}");
        Ok(())
    };
    done(tx_call(&c, &["INSERT INTO t(id) VALUES(1)"]).await?)?;
    done(tx_call(&c, &["SAVEPOINT a"]).await?)?;
    done(tx_call(&c, &["INSERT INTO t(id) VALUES(2)"]).await?)?;
    done(tx_call(&c, &["savepoint b"]).await?)?;
    done(tx_call(&c, &["INSERT INTO t(id) VALUES(3)"]).await?)?;
    done(tx_call(&c, &["ROLLBACK TO b"]).await?)?;
    ensure!(tx_ids(&c).await? == [1, 2]);
    done(tx_call(&c, &["RELEASE SAVEPOINT b"]).await?)?;
    done(tx_call(&c, &["INSERT INTO t(id) VALUES(4)"]).await?)?;
    // A failing call rolls back alone and leaves the client's savepoint in place.
    let step = tx_call(
        &c,
        &["INSERT INTO t(id) VALUES(5)", "INSERT INTO t(id) VALUES(1)"],
    )
    .await?;
    ensure!(
        matches!(step, TransactionStep::Failed(DbError::Constraint(_))),
        "{step:?}"
    );
    done(tx_call(&c, &["ROLLBACK TRANSACTION TO SAVEPOINT a"]).await?)?;
    ensure!(tx_ids(&c).await? == [1], "after ROLLBACK TO a");
    done(tx_call(&c, &["INSERT INTO t(id) VALUES(6)"]).await?)?;
    done(tx_call(&c, &["RELEASE a"]).await?)?;
    // Refused, each alone, and the transaction goes on.
    let refusals: [(&[&str], &str); 5] = [
        (
            &["SAVEPOINT c", "INSERT INTO t(id) VALUES(7)"],
            "each in a call of its own",
        ),
        (&["SAVEPOINT raftlite_request"], "is reserved"),
        (&["RELEASE raftlite_request"], "is reserved"),
        (&["ROLLBACK TO nosuch"], "no such savepoint"),
        (&["ROLLBACK"], "ROLLBACK is not allowed"),
    ];
    for (sqls, expected) in refusals {
        match tx_call(&c, sqls).await? {
            TransactionStep::Failed(e) if e.to_string().contains(expected) => {}
            other => anyhow::bail!("{sqls:?}: expected {expected:?}, got {other:?}"),
        }
    }
    ensure!(tx_ids(&c).await? == [1, 6]);
    let delta = c.executor.commit(String::new()).await?.context("a delta")?;
    apply_both(&c, PageDelta::decode(&delta.encode())?).await?;
    c.reference
        .execute_batch("INSERT INTO t(id) VALUES(1); INSERT INTO t(id) VALUES(6);")?;
    c.verify("savepoints")?;
    // Outside a transaction, the same text is refused (not taken from the cache).
    let outside = c
        .executor
        .execute_batch(vec![req("", &["SAVEPOINT a"])])
        .await?;
    ensure!(
        matches!(failed(&outside.outcomes[0])?, DbError::PermissionDenied(m)
            if m.contains("savepoints work inside an interactive transaction")),
        "{:?}",
        outside.outcomes
    );
    Ok(())
}

/// An interactive transaction: its statements see its own writes, a failing call rolls back
/// alone, and the commit is one delta that leader and follower apply byte-identically.
#[tokio::test]
async fn interactive_transaction_commits_as_one_delta() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[
        "CREATE TABLE acct(id INTEGER PRIMARY KEY, balance INTEGER CHECK (balance >= 0))",
        "INSERT INTO acct VALUES(1, 100), (2, 0)",
    ])
    .await?;
    let version = c.leader.version().await?;
    c.executor.begin().await?;
    let step = c
        .executor
        .transaction_execute(vec![stmt("SELECT balance FROM acct WHERE id = 1")], None)
        .await?;
    ensure!(
        matches!(&step, TransactionStep::Done(r) if r[0].rows == [[SqlValue::Integer(100)]]),
        "{step:?}"
    );
    let step = c
        .executor
        .transaction_execute(
            vec![
                stmt("UPDATE acct SET balance = balance - 30 WHERE id = 1"),
                stmt("UPDATE acct SET balance = balance + 30 WHERE id = 2 RETURNING balance"),
            ],
            None,
        )
        .await?;
    ensure!(
        matches!(&step, TransactionStep::Done(r) if r[1].rows == [[SqlValue::Integer(30)]]),
        "{step:?}"
    );
    // A constraint failure rolls back that call alone; the transaction goes on.
    let step = c
        .executor
        .transaction_execute(
            vec![
                stmt("UPDATE acct SET balance = balance + 1000 WHERE id = 2"),
                stmt("UPDATE acct SET balance = balance - 1000 WHERE id = 1"),
            ],
            None,
        )
        .await?;
    ensure!(
        matches!(&step, TransactionStep::Failed(DbError::Constraint(_))),
        "{step:?}"
    );
    let step = c
        .executor
        .transaction_execute(
            vec![stmt("SELECT sum(balance), max(balance) FROM acct")],
            None,
        )
        .await?;
    ensure!(
        matches!(&step, TransactionStep::Done(r) if r[0].rows == [[SqlValue::Integer(100), SqlValue::Integer(70)]]),
        "own writes visible, the failed call undone: {step:?}"
    );
    // Nothing is visible outside before the commit, and a batch is refused meanwhile.
    ensure!(c
        .executor
        .execute_batch(vec![req("", &["DELETE FROM acct"])])
        .await
        .is_err());
    let delta = c
        .executor
        .commit("tx-1".into())
        .await?
        .context("the transaction wrote")?;
    ensure!(delta.base_version == version);
    // Kept open until its delta is committed, then committed in place, as a batch.
    ensure!(c.leader.gate.batch_open());
    let in_place = c.leader.committed_in_place();
    let delta = Arc::new(PageDelta::decode(&delta.encode())?);
    ensure!(c.leader.apply(delta.clone()).await? == ApplyOutcome::Applied);
    ensure!(c.leader.committed_in_place() == in_place + 1);
    ensure!(c.follower.apply(delta).await? == ApplyOutcome::Applied);
    c.reference.execute_batch(
        "UPDATE acct SET balance = balance - 30 WHERE id = 1; UPDATE acct SET balance = balance + 30 WHERE id = 2;",
    )?;
    c.verify("transaction")?;
    ensure!(c.executor.request_recorded("tx-1".into()).await?);
    ensure!(!c.executor.request_recorded("tx-2".into()).await?);
    // The executor takes batches again.
    c.write_one(&["INSERT INTO acct VALUES(3, 5)"]).await?;
    c.verify("after the transaction")?;
    Ok(())
}

/// A transaction that wrote nothing commits without a delta; one rolled back leaves nothing;
/// a statement that rolls back the whole transaction ends it.
#[tokio::test]
async fn transaction_rollback_and_ends() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT UNIQUE)",
        "INSERT INTO t VALUES(1, 'a')",
    ])
    .await?;
    c.executor.begin().await?;
    c.executor
        .transaction_execute(vec![stmt("SELECT * FROM t")], None)
        .await?;
    ensure!(
        c.executor.commit("ro".into()).await?.is_none(),
        "read-only: no delta"
    );
    ensure!(!c.executor.request_recorded("ro".into()).await?);

    c.executor.begin().await?;
    c.executor
        .transaction_execute(vec![stmt("INSERT INTO t VALUES(2, 'b')")], None)
        .await?;
    c.executor.rollback().await?;
    c.executor.begin().await?;
    let step = c
        .executor
        .transaction_execute(vec![stmt("INSERT OR ROLLBACK INTO t VALUES(3, 'a')")], None)
        .await?;
    ensure!(
        matches!(step, TransactionStep::Ended(DbError::Constraint(_))),
        "{step:?}"
    );
    ensure!(
        c.executor.commit(String::new()).await.is_err(),
        "it is gone"
    );
    c.write_one(&["INSERT INTO t VALUES(4, 'd')"]).await?;
    c.verify("rollbacks")?;
    Ok(())
}

/// A VACUUM of a database whose pages in use are over max_delta_bytes is refused before it
/// copies the database (no copy on disk, nothing in memory), and the node goes on writing.
#[tokio::test]
async fn vacuum_past_max_delta_bytes_is_refused_before_copying() -> TestResult {
    let c = Cluster::with_options(DbOptions {
        read_threads: 1,
        max_delta_bytes: 256 * 1024,
        ..DbOptions::default()
    })?;
    c.write_one(&["CREATE TABLE big(id INTEGER PRIMARY KEY, b BLOB)"])
        .await?;
    for _ in 0..4 {
        c.write_one(&["INSERT INTO big(b) SELECT zeroblob(8000) FROM (SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9 UNION ALL SELECT 10)"])
            .await?;
    }
    match c.executor.execute_vacuum().await {
        Err(DbError::TooLarge(m)) => ensure!(m.contains("max_delta_bytes"), "{m}"),
        other => anyhow::bail!("VACUUM of 320 KB of pages over a 256 KiB limit: {other:?}"),
    }
    let mut copy = c.leader.path().as_os_str().to_owned();
    copy.push(".vacuum-tmp");
    ensure!(
        !Path::new(&copy).exists(),
        "the refused VACUUM wrote a copy"
    );
    c.write_one(&["DELETE FROM big WHERE id > 4"]).await?;
    Ok(())
}

/// A transaction cannot grow past max_delta_bytes: the call that would take it over fails
/// alone (undone), the transaction stays open and commits what it held.
#[tokio::test]
async fn transaction_past_max_delta_bytes_fails_the_call_alone() -> TestResult {
    let c = Cluster::with_options(DbOptions {
        read_threads: 1,
        max_delta_bytes: 256 * 1024,
        ..DbOptions::default()
    })?;
    c.write_one(&["CREATE TABLE big(id INTEGER PRIMARY KEY, b BLOB)"])
        .await?;
    c.executor.begin().await?;
    let small = c
        .executor
        .transaction_execute(
            vec![stmt("INSERT INTO big(b) VALUES(zeroblob(1000))")],
            None,
        )
        .await?;
    ensure!(matches!(small, TransactionStep::Done(_)), "{small:?}");
    let huge = c
        .executor
        .transaction_execute(
            vec![stmt(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100)
                 INSERT INTO big(b) SELECT zeroblob(8000) FROM c",
            )],
            None,
        )
        .await?;
    ensure!(
        matches!(&huge, TransactionStep::Failed(DbError::TooLarge(m)) if m.contains("max_delta_bytes")),
        "{huge:?}"
    );
    let delta = c
        .executor
        .commit(String::new())
        .await?
        .context("the first insert is kept")?;
    let delta = Arc::new(PageDelta::decode(&delta.encode())?);
    ensure!(c.leader.apply(delta.clone()).await? == ApplyOutcome::Applied);
    ensure!(c.follower.apply(delta).await? == ApplyOutcome::Applied);
    c.reference
        .execute_batch("INSERT INTO big(b) VALUES(zeroblob(1000))")?;
    c.verify("transaction size")?;
    Ok(())
}

/// A one-row insert changes a few dozen bytes of each page it touches: its delta carries
/// patches, not 4 KiB images, and leader and follower still end byte-identical.
#[tokio::test]
async fn a_one_row_insert_travels_as_patches() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&["CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"])
        .await?;
    for i in 0..50 {
        c.write_one(&[&format!("INSERT INTO t(v) VALUES('row {i}')")])
            .await?;
    }
    let result = c
        .write(vec![req("", &["INSERT INTO t(v) VALUES('one more row')"])])
        .await?;
    let delta = result.delta.context("a delta")?;
    ensure!(
        delta
            .pages
            .iter()
            .all(|(_, image)| matches!(image, PageImage::Patch(_))),
        "{delta:?}"
    );
    let encoded = delta.encode().len();
    ensure!(
        encoded < 1024,
        "a 1-row insert's delta is {encoded} bytes for {} pages",
        delta.pages.len()
    );
    c.verify("after patches")?;
    Ok(())
}

/// A follower whose copy of a page is not the leader's base image refuses the patch with an
/// error instead of applying runs to the wrong bytes.
#[tokio::test]
async fn a_patch_for_a_page_that_differs_here_is_refused() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&["CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"])
        .await?;
    c.write_one(&["INSERT INTO t(v) VALUES('a')"]).await?;
    // Flip a byte of the follower's table page, in the unused gap between the cell pointers
    // and the cells: the database stays valid, but the page is no longer the leader's.
    let root: u32 = {
        let conn = Connection::open(c.follower.path())?;
        let root = conn.query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = 't'",
            [],
            |r| r.get(0),
        )?;
        let mut page: Vec<u8> = conn.query_row(
            "SELECT data FROM sqlite_dbpage WHERE pgno = ?1",
            [root],
            |r| r.get(0),
        )?;
        page[1000] ^= 0x5A;
        conn.execute(
            "INSERT INTO sqlite_dbpage(pgno, data) VALUES(?1, ?2)",
            rusqlite::params![root, page],
        )?;
        root
    };
    let result = c
        .executor
        .execute_batch(vec![req("", &["INSERT INTO t(v) VALUES('b')"])])
        .await?;
    let delta = Arc::new(PageDelta::decode(
        &result.delta.context("a delta")?.encode(),
    )?);
    ensure!(delta
        .pages
        .iter()
        .any(|(pgno, image)| *pgno == root && matches!(image, PageImage::Patch(_))));
    ensure!(c.leader.apply(delta.clone()).await? == ApplyOutcome::Applied);
    let refused = c.follower.apply(delta).await;
    ensure!(
        matches!(&refused, Err(DbError::Corrupt(m)) if m.contains("diverged")),
        "{refused:?}"
    );
    // Nothing of the refused delta was written.
    let conn = Connection::open(c.follower.path())?;
    ensure!(count(&conn, "t")? == 1);
    Ok(())
}

/// raftlite's own statements are cached on the executor's connection, and SQLite's authorizer
/// runs when a statement is prepared. A client that sends the exact text of a cached internal
/// statement (with or without surrounding whitespace, the cache's key is the trimmed text)
/// must get a freshly prepared one, which the authorizer refuses, not raftlite's.
#[tokio::test]
async fn client_sql_with_an_internal_statements_text_is_not_taken_from_the_cache() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&["CREATE TABLE t(x)"]).await?;
    // Every internal statement of a batch is now in the cache.
    c.write_one(&["INSERT INTO t VALUES(1)"]).await?;
    let version = c.leader.version().await?;
    let upsert = internal::internal_sql!(
        "INSERT INTO main._raftlite_meta(key, value) VALUES('version', ?1)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value"
    );
    for sql in [upsert.to_string(), format!("  \n{upsert}\t ")] {
        let request = WriteRequest {
            request_id: String::new(),
            statements: vec![Statement {
                sql,
                params: Params::Positional(vec![SqlValue::Integer(999_999)]),
            }],
            deadline: None,
            max_result_bytes: None,
        };
        let result = c.write(vec![request]).await?;
        let error = failed(&result.outcomes[0])?;
        ensure!(matches!(error, DbError::PermissionDenied(_)), "{error:?}");
    }
    ensure!(c.leader.version().await? == version);
    c.verify("after the refused statements")?;
    Ok(())
}

/// Executes each batch on top of the deltas before it, none of them applied yet (the write
/// pipeline, up to `depth` in flight), then applies them in order on leader and follower.
async fn write_pipelined(
    c: &Cluster,
    batches: Vec<Vec<WriteRequest>>,
    depth: usize,
) -> anyhow::Result<Vec<PageDelta>> {
    let mut in_flight: std::collections::VecDeque<PageDelta> = Default::default();
    let mut link = None;
    let mut all = Vec::new();
    let mut stacked = 0;
    for batch in batches {
        if in_flight.len() >= depth {
            apply_both(c, in_flight.pop_front().context("in flight")?).await?;
        }
        let pipeline = Pipeline::OnTop(link.take());
        let result = c.executor.execute_batch_on(batch.clone(), pipeline, 0)?;
        for (request, outcome) in batch.iter().zip(&result.outcomes) {
            if matches!(outcome, WriteOutcome::Executed(_)) {
                c.reference_commit(request)?;
            }
        }
        if let Some(delta) = result.delta {
            if delta.parent_tag != 0 {
                stacked += 1;
            }
            let decoded = PageDelta::decode(&delta.encode())?;
            all.push(decoded.clone());
            in_flight.push_back(decoded);
        }
        link = result.link;
    }
    for delta in in_flight {
        apply_both(c, delta).await?;
    }
    ensure!(stacked > 0, "no batch ran on top of another");
    Ok(all)
}

async fn apply_both(c: &Cluster, delta: PageDelta) -> TestResult {
    let delta = Arc::new(delta);
    ensure!(c.leader.apply(delta.clone()).await? == ApplyOutcome::Applied);
    ensure!(c.follower.apply(delta).await? == ApplyOutcome::Applied);
    Ok(())
}

/// The write pipeline: batches executed on top of deltas not yet applied give, applied in
/// order, byte-identical replicas holding what the reference committed one by one — with the
/// file growing under the chain, pages split, the free list used, and rows updated and deleted
/// that only the chain holds.
#[tokio::test]
async fn batches_on_top_of_deltas_in_flight_match_the_reference() -> TestResult {
    let c = Cluster::pipelined()?;
    c.write_one(&[CREATE_T, "CREATE INDEX t_a ON t(a)"]).await?;
    let mut batches = Vec::new();
    for i in 0..40u32 {
        let mut batch = vec![req(
            &format!("grow-{i}"),
            &[&insert_rows(1 + i % 7 * 20, i)],
        )];
        if i % 5 == 4 {
            batch.push(req(
                "",
                &["UPDATE t SET b = zeroblob(300) WHERE id % 7 = 0"],
            ));
        }
        if i % 9 == 8 {
            batch.push(req("", &["DELETE FROM t WHERE id % 5 = 0"]));
        }
        batches.push(batch);
    }
    for depth in [2, 4] {
        let before = page_count(c.leader.path())?;
        let deltas = write_pipelined(&c, batches.clone(), depth).await?;
        ensure!(deltas.len() == batches.len());
        ensure!(
            page_count(c.leader.path())? > before,
            "the chain grew the file"
        );
        c.verify(&format!("pipelined, depth {depth}"))?;
        // Request ids the chain recorded are found by the next batches (replayed: duplicates).
        let replay = c
            .executor
            .execute_batch_on(batches[0].clone(), Pipeline::Settled, 0)?;
        ensure!(matches!(replay.outcomes[0], WriteOutcome::Duplicate(_)));
        batches = batches
            .iter()
            .map(|b| {
                b.iter()
                    .map(|r| WriteRequest {
                        request_id: format!("{}-again", r.request_id),
                        ..r.clone()
                    })
                    .collect()
            })
            .collect();
    }
    Ok(())
}

/// A delta captured on top of one that is then lost (another delta took its version, as
/// after a leadership change) is skipped, not applied to pages it was not captured on.
#[tokio::test]
async fn a_delta_whose_parent_was_lost_is_skipped() -> TestResult {
    let c = Cluster::pipelined()?;
    c.write_one(&[CREATE_T]).await?;
    let first = c.executor.execute_batch_on(
        vec![req("", &["INSERT INTO t(a) VALUES('lost')"])],
        Pipeline::Settled,
        0,
    )?;
    let on_top = c.executor.execute_batch_on(
        vec![req("", &["INSERT INTO t(a) VALUES('after the lost one')"])],
        Pipeline::OnTop(first.link),
        0,
    )?;
    let lost = first.delta.context("a delta")?;
    let on_top_tags = on_top
        .delta
        .as_ref()
        .map(|d| (d.parent_tag, d.base_version));
    ensure!(on_top_tags == Some((lost.tag, lost.base_version + 1)));
    // Another leader's delta on the same version replaces the lost one.
    let other_leader = c.leader.open_executor()?;
    let other_request = req("", &["INSERT INTO t(a) VALUES('other leader')"]);
    let other = other_leader
        .execute_batch(vec![other_request.clone()])
        .await?
        .delta
        .context("a delta")?;
    ensure!(other.base_version == lost.base_version && other.parent_tag == 0);
    apply_both(&c, PageDelta::decode(&other.encode())?).await?;
    c.reference_commit(&other_request)?;
    let pages = snapshot::dump_raw_pages(c.follower.path())?;
    ensure!(c.follower.version().await? == lost.base_version + 1);
    let on_top_delta = Arc::new(PageDelta::decode(
        &on_top.delta.context("a delta")?.encode(),
    )?);
    ensure!(c.follower.apply(on_top_delta.clone()).await? == ApplyOutcome::Skipped);
    ensure!(c.leader.apply(on_top_delta).await? == ApplyOutcome::Skipped);
    ensure!(snapshot::dump_raw_pages(c.follower.path())? == pages);
    c.verify("after the skipped delta")?;
    // The executor's chain is out of step now: the next batch on top of it fails whole,
    // unexecuted, and a settled one runs.
    let stale = c.executor.execute_batch_on(
        vec![req("", &["INSERT INTO t(a) VALUES('never')"])],
        Pipeline::OnTop(on_top.link),
        0,
    );
    ensure!(
        matches!(&stale, Err(DbError::Stale(m)) if m.contains("out of step")),
        "{stale:?}"
    );
    c.write_one(&["INSERT INTO t(a) VALUES('settled')"]).await?;
    c.verify("settled again")?;
    Ok(())
}

/// Only plain deltas are stacked on: a schema change, VACUUM and a delta shrinking the file
/// are not (the executor's connection keeps the schema and the file size in memory).
#[tokio::test]
async fn schema_changes_are_not_stacked_on() -> TestResult {
    let c = Cluster::pipelined()?;
    let created = c.write(vec![req("", &[CREATE_T])]).await?;
    ensure!(created.link.is_none(), "CREATE TABLE gave a link");
    let inserted = c.write(vec![req("", &[&insert_rows(50, 1)])]).await?;
    ensure!(inserted.link.is_some(), "an INSERT gave no link");
    let indexed = c
        .write(vec![req("", &["CREATE INDEX t_a ON t(a)"])])
        .await?;
    ensure!(indexed.link.is_none(), "CREATE INDEX gave a link");
    let vacuumed = c.executor.execute_vacuum().await?;
    ensure!(vacuumed.link.is_none());
    Ok(())
}

/// Without a write pipeline the executor keeps no copy of a batch's pages.
#[tokio::test]
async fn an_executor_without_links_returns_none() -> TestResult {
    let c = Cluster::pipelined()?;
    c.write_one(&[CREATE_T]).await?;
    let plain = c.leader.open_executor_with_links(false)?;
    let request = req("", &["INSERT INTO t(a) VALUES('x')"]);
    let result = plain.execute_batch(vec![request.clone()]).await?;
    ensure!(
        result.delta.is_some() && result.link.is_none(),
        "{result:?}"
    );
    // Its batch is open for its commit in place until its delta is applied.
    apply_both(&c, result.delta.context("a delta")?).await?;
    c.reference_commit(&request)?;
    let linked = c
        .executor
        .execute_batch(vec![req("", &["INSERT INTO t(a) VALUES('x')"])])
        .await?;
    ensure!(linked.link.is_some(), "{linked:?}");
    Ok(())
}

/// Without a write pipeline the leader keeps a batch's transaction open until its delta is
/// committed, then commits it in place: nobody sees the batch before, the database holds
/// exactly what applying the delta gives after (the follower's pages), and the applier wrote
/// nothing.
#[tokio::test]
async fn a_batch_is_committed_in_place_once_its_delta_is() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[CREATE_T, "CREATE INDEX t_a ON t(a)"]).await?;
    let in_place_before = c.leader.committed_in_place();
    let request = req("in-place", &[&insert_rows(300, 3)]);
    let result = c.executor.execute_batch(vec![request.clone()]).await?;
    let delta = result.delta.context("a delta")?;
    ensure!(c.leader.gate.batch_open(), "the batch was not kept open");
    let reader = Connection::open(c.leader.path())?;
    ensure!(count(&reader, "t")? == 0, "the open batch is visible");
    let version = c.leader.version().await?;
    let applier_changes = applier_changes_of(&c.leader).await?;
    let follower_changes = applier_changes_of(&c.follower).await?;

    apply_both(&c, PageDelta::decode(&delta.encode())?).await?;
    ensure!(
        applier_changes_of(&c.follower).await? > follower_changes,
        "an apply counts no changes"
    );
    c.reference_commit(&request)?;
    ensure!(!c.leader.gate.batch_open());
    ensure!(c.leader.committed_in_place() == in_place_before + 1);
    ensure!(c.leader.version().await? == version + 1);
    ensure!(count(&reader, "t")? == 300);
    ensure!(
        applier_changes_of(&c.leader).await? == applier_changes,
        "the leader's applier wrote the delta"
    );
    c.verify("committed in place")?;
    // A request id only the open batch holds is not yet recorded, and asking leaves the batch
    // open for its commit in place.
    let open = c
        .executor
        .execute_batch(vec![req("open-id", &["DELETE FROM t"])])
        .await?;
    ensure!(!c.executor.request_recorded("open-id".into()).await?);
    ensure!(c.executor.request_recorded("in-place".into()).await?);
    ensure!(c.leader.gate.batch_open());
    apply_both(&c, open.delta.context("a delta")?).await?;
    c.reference_commit(&req("", &["DELETE FROM t"]))?;
    ensure!(c.leader.committed_in_place() == in_place_before + 2);
    ensure!(c.executor.request_recorded("open-id".into()).await?);
    c.verify("second batch committed in place")?;
    // The request id it recorded is found, as after an apply.
    let replay = c.executor.execute_batch(vec![request]).await?;
    ensure!(matches!(replay.outcomes[0], WriteOutcome::Duplicate(_)));
    ensure!(replay.delta.is_none() && !c.leader.gate.batch_open());
    Ok(())
}

/// The write path commits a batch in place as soon as Raft committed its delta, before the
/// state machine applies it (`ExecutorHandle::commit_early`), and runs the next batch on it.
/// The delayed apply of the first finds it done: it neither rolls back the batch open after it
/// nor lays the delta again (the database has passed its version: it would be skipped), and
/// the second is committed in place by its own apply. Replicas stay byte-identical.
#[tokio::test]
async fn a_batch_committed_early_is_done_when_its_apply_comes() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[CREATE_T]).await?;
    let in_place_before = c.leader.committed_in_place();
    let applier_changes = applier_changes_of(&c.leader).await?;
    let first_request = req("early-1", &[&insert_rows(50, 2)]);
    let first = c
        .executor
        .execute_batch(vec![first_request.clone()])
        .await?;
    let first = first.delta.context("a delta")?;
    ensure!(
        !c.executor.commit_early(first.tag + 1, first.base_version)?,
        "committed a batch under another delta's tag"
    );
    ensure!(c.executor.commit_early(first.tag, first.base_version)?);
    ensure!(!c.leader.gate.batch_open());
    ensure!(
        !c.executor.commit_early(first.tag, first.base_version)?,
        "committed twice"
    );
    c.reference_commit(&first_request)?;
    let reader = Connection::open(c.leader.path())?;
    ensure!(
        count(&reader, "t")? == 50,
        "the early commit is not visible"
    );

    let second_request = req("early-2", &["DELETE FROM t WHERE rowid % 2 = 0"]);
    let second = c
        .executor
        .execute_batch(vec![second_request.clone()])
        .await?;
    let second = second.delta.context("a delta")?;
    ensure!(second.base_version == first.base_version + 1);
    ensure!(c.leader.gate.batch_open());

    apply_both(&c, PageDelta::decode(&first.encode())?).await?;
    ensure!(
        c.leader.gate.batch_open(),
        "the first batch's apply ended the second batch"
    );
    apply_both(&c, PageDelta::decode(&second.encode())?).await?;
    c.reference_commit(&second_request)?;
    ensure!(c.leader.committed_in_place() == in_place_before + 2);
    ensure!(
        applier_changes_of(&c.leader).await? == applier_changes,
        "the leader's applier wrote a delta"
    );
    ensure!(count(&reader, "t")? == 25);
    c.verify("committed early, then applied")?;
    // Applied again (a replay after a restart): on a version the database passed, skipped.
    ensure!(c.leader.apply(Arc::new(first)).await? == ApplyOutcome::Skipped);
    Ok(())
}

/// Rows the applier's connection has written since it opened.
async fn applier_changes_of(db: &Database) -> anyhow::Result<u64> {
    Ok(db
        .applier
        .call(|a| Ok(a.connection().total_changes()))
        .await?)
}

/// A batch kept open whose delta is lost (another leader's delta took its version) is rolled
/// back when that delta arrives, which is applied; the lost one is then skipped. Without the
/// gate's record the applier would wait on SQLite's write lock until its busy timeout.
#[tokio::test]
async fn an_open_batch_gives_way_to_another_leaders_delta() -> TestResult {
    let c = Cluster::with_options(DbOptions {
        busy_timeout: Duration::from_secs(2),
        ..DbOptions::default()
    })?;
    c.write_one(&[CREATE_T]).await?;
    let lost = c
        .executor
        .execute_batch(vec![req("lost", &["INSERT INTO t(a) VALUES('lost')"])])
        .await?
        .delta
        .context("a delta")?;
    ensure!(c.leader.gate.batch_open());
    // Another leader, on a copy of the same committed state.
    let other_dir = tempfile::tempdir()?;
    let other_path = other_dir.path().join("other.db");
    c.follower.build_image(other_path.clone()).await?;
    let other = Database::open(&other_path, DbOptions::default())?;
    let other_request = req("other", &["INSERT INTO t(a) VALUES('other leader')"]);
    let replacing = other
        .open_executor()?
        .execute_batch(vec![other_request.clone()])
        .await?
        .delta
        .context("a delta")?;
    ensure!(replacing.base_version == lost.base_version);

    apply_both(&c, PageDelta::decode(&replacing.encode())?).await?;
    c.reference_commit(&other_request)?;
    ensure!(!c.leader.gate.batch_open());
    let lost = Arc::new(PageDelta::decode(&lost.encode())?);
    ensure!(c.leader.apply(lost.clone()).await? == ApplyOutcome::Skipped);
    ensure!(c.follower.apply(lost).await? == ApplyOutcome::Skipped);
    c.verify("the other leader's delta")?;
    let reader = Connection::open(c.leader.path())?;
    let rows: Vec<String> = reader
        .prepare("SELECT a FROM t ORDER BY id")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    ensure!(rows == ["other leader"], "{rows:?}");
    // The executor goes on from the committed state.
    c.write_one(&["INSERT INTO t(a) VALUES('next')"]).await?;
    c.verify("after the next batch")?;
    Ok(())
}

/// An image installed while a batch is open (a leader deposed and rebuilt from a snapshot)
/// rolls the batch back first; so does the next batch, VACUUM or transaction on the executor.
#[tokio::test]
async fn an_open_batch_is_rolled_back_before_an_image_or_the_next_batch() -> TestResult {
    let c = Cluster::with_options(DbOptions {
        busy_timeout: Duration::from_secs(2),
        ..DbOptions::default()
    })?;
    c.write_one(&[CREATE_T]).await?;
    c.write_one(&[&insert_rows(100, 1)]).await?;
    // The image holds one delta the leader has not seen.
    let ahead_path = c.dir.path().join("ahead.db");
    c.follower.build_image(ahead_path.clone()).await?;
    let ahead = Database::open(&ahead_path, DbOptions::default())?;
    let ahead_request = req("", &["DELETE FROM t WHERE id > 99"]);
    let ahead_delta = ahead
        .open_executor()?
        .execute_batch(vec![ahead_request.clone()])
        .await?
        .delta
        .context("a delta")?;
    c.follower.apply(Arc::new(ahead_delta)).await?;
    c.reference_commit(&ahead_request)?;
    let image = c.dir.path().join("image.db");
    c.follower.build_image(image.clone()).await?;
    let never = c
        .executor
        .execute_batch(vec![req("", &["DELETE FROM t"])])
        .await?;
    ensure!(never.delta.is_some() && c.leader.gate.batch_open());
    c.leader.install_image(image).await?;
    ensure!(!c.leader.gate.batch_open());
    c.verify("image installed over an open batch")?;

    // Never committed: the next batch runs on the committed state without it.
    c.executor
        .execute_batch(vec![req("", &["DELETE FROM t"])])
        .await?;
    let next = c
        .write(vec![req("", &["INSERT INTO t(a) VALUES('x')"])])
        .await?;
    ensure!(executed(&next.outcomes[0])?[0].rows_affected == 1);
    let reader = Connection::open(c.leader.path())?;
    ensure!(count(&reader, "t")? == 100);
    c.verify("after the abandoned batches")?;
    // VACUUM and an interactive transaction roll an open batch back too.
    c.executor
        .execute_batch(vec![req("", &["DELETE FROM t"])])
        .await?;
    let vacuum = c.executor.execute_vacuum().await?;
    ensure!(!c.leader.gate.batch_open());
    apply_both(
        &c,
        PageDelta::decode(&vacuum.delta.context("a delta")?.encode())?,
    )
    .await?;
    c.executor
        .execute_batch(vec![req("", &["DELETE FROM t"])])
        .await?;
    c.executor.begin().await?;
    ensure!(count(&reader, "t")? == 100, "the batch was not rolled back");
    c.executor.rollback().await?;
    ensure!(!c.leader.gate.batch_open());
    ensure!(count(&reader, "t")? == 100);
    c.verify("after VACUUM and a transaction")?;
    Ok(())
}

/// Commits checkpoint only past the backstop (the writing connections leave it to the
/// checkpointer): the pages reach the database file within a few checkpoint intervals all the
/// same, on leader and follower.
#[tokio::test]
async fn the_checkpointer_moves_committed_pages_into_the_database_file() -> TestResult {
    let c = Cluster::new()?;
    let autocheckpoint: i64 = c
        .leader
        .applier
        .call(|a| {
            Ok(a.connection()
                .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))?)
        })
        .await?;
    ensure!(
        autocheckpoint == i64::from(checkpoint::BACKSTOP_FRAMES),
        "the applier checkpoints every {autocheckpoint} frames"
    );
    c.write_one(&[CREATE_T]).await?;
    c.write_one(&[&insert_rows(2000, 7)]).await?;
    let pages = u64::from(page_count(c.leader.path())?);
    ensure!(pages > 50);
    for db in [&c.leader, &c.follower] {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(db.path())?.len() < pages * u64::from(PAGE_SIZE) {
            ensure!(
                std::time::Instant::now() < deadline,
                "{} was not checkpointed",
                db.path().display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    c.verify("checkpointed")?;
    // What it found is reported for /metrics, once its pass has returned: a moment after the
    // file grew, which the loop above may see first.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.leader.wal_status().0 == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (frames, failures) = c.leader.wal_status();
    ensure!(
        frames > 0 && failures == 0,
        "{frames} frames, {failures} failures"
    );
    Ok(())
}

/// A deferred foreign key still violated at the end of a request fails that request alone
/// (before, it was replicated: the batch is never committed with SQLite's own check); one the
/// request resolves itself passes. An interactive transaction is checked at its commit.
#[tokio::test]
async fn deferred_foreign_keys_are_checked_at_the_end_of_each_write() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[
        "CREATE TABLE p(id INTEGER PRIMARY KEY)",
        "CREATE TABLE ch(pid INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED)",
    ])
    .await?;
    let result = c
        .write(vec![
            req("", &["INSERT INTO ch VALUES (99)"]),
            req(
                "",
                &["INSERT INTO ch VALUES (1)", "INSERT INTO p VALUES (1)"],
            ),
            req(
                "",
                &["INSERT INTO p VALUES (2)", "INSERT INTO ch VALUES (2)"],
            ),
        ])
        .await?;
    let e = failed(&result.outcomes[0])?;
    ensure!(
        matches!(e, DbError::Constraint(m) if m.contains("FOREIGN KEY")),
        "{e:?}"
    );
    executed(&result.outcomes[1])?;
    executed(&result.outcomes[2])?;
    let reader = Connection::open(c.leader.path())?;
    ensure!(count(&reader, "ch")? == 2);
    c.verify("deferred foreign keys")?;

    c.executor.begin().await?;
    let step = c
        .executor
        .transaction_execute(vec![stmt("INSERT INTO ch VALUES (77)")], None)
        .await?;
    ensure!(matches!(step, TransactionStep::Done(_)), "{step:?}");
    let committed = c.executor.commit("fk-tx".into()).await;
    ensure!(
        matches!(&committed, Err(DbError::Constraint(m)) if m.contains("FOREIGN KEY")),
        "{committed:?}"
    );
    ensure!(!c.executor.request_recorded("fk-tx".into()).await?);
    ensure!(count(&reader, "ch")? == 2);
    c.write_one(&["INSERT INTO p VALUES (3)"]).await?;
    c.verify("after the refused transaction")?;
    Ok(())
}

/// A leader committing in place opens its next batch right after the last commit, before the
/// checkpointer can finish a checkpoint, so the WAL is never all copied when a write begins and
/// SQLite cannot restart it: without the backstop its WAL grows by every frame written.
#[tokio::test]
async fn the_leaders_wal_stays_bounded_under_back_to_back_batches() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[CREATE_T]).await?;
    let frame_bytes = u64::from(PAGE_SIZE) + 24;
    let mut frames_written = 0u64;
    for i in 0..4000u32 {
        let result = c
            .write(vec![req("", &[&format!("INSERT INTO t(a) VALUES('{i}')")])])
            .await?;
        // Its pages, and page 1 as the commit frame.
        frames_written += result.delta.map_or(0, |d| d.pages.len() as u64 + 1);
    }
    let bound = u64::from(checkpoint::BACKSTOP_FRAMES + 1000) * frame_bytes;
    ensure!(
        frames_written * frame_bytes > bound,
        "the test wrote too few frames ({frames_written}) to tell"
    );
    let wal = c.leader.path().with_extension("db-wal");
    let wal_bytes = std::fs::metadata(&wal)?.len();
    ensure!(
        wal_bytes <= bound,
        "the leader's WAL grew to {wal_bytes} bytes (bound {bound})"
    );
    c.verify("after back-to-back batches")?;
    Ok(())
}

/// The attack: queries of a few tenths of a second, each begun before the last one ended (as
/// any client with a `read` token can send), keep a read transaction open at every moment, and
/// SQLite restarts the WAL only when none is: the WAL grew by every write, until the disk was
/// full. Past its limit new reads now wait while those in flight end, and the WAL restarts.
#[tokio::test]
async fn overlapping_reads_cannot_keep_the_wal_from_restarting() -> TestResult {
    let max_wal_frames = checkpoint::BACKSTOP_FRAMES + 1024;
    let c = Cluster::with_options(DbOptions {
        read_threads: 2,
        max_wal_frames,
        ..DbOptions::default()
    })?;
    c.write_one(&[CREATE_T]).await?;
    let frame_bytes = u64::from(PAGE_SIZE) + 24;
    let bound = 3 * u64::from(checkpoint::BACKSTOP_FRAMES) * frame_bytes;
    let wal = c.leader.path().with_extension("db-wal");
    let writing = std::sync::atomic::AtomicBool::new(true);
    // Each read lasts until its deadline; the second reader starts half a read later.
    let read_for = Duration::from_millis(300);
    let reader = |offset: Duration| {
        let writing = &writing;
        let reads = c.leader.reads();
        async move {
            tokio::time::sleep(offset).await;
            let (mut ran, mut held) = (0u32, 0u32);
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                let long = stmt(
                    "WITH RECURSIVE n(x) AS (SELECT count(*) FROM t UNION ALL \
                     SELECT x + 1 FROM n) SELECT max(x) FROM n",
                );
                match collect(reads.query(long, 0, 10, Some(std::time::Instant::now() + read_for)))
                    .await
                {
                    Err(e) if e.to_string().contains("WAL") => held += 1,
                    _ => ran += 1,
                }
            }
            (ran, held)
        }
    };
    let writer = async {
        let (mut written, mut largest) = (0u64, 0u64);
        let result = async {
            while written * frame_bytes < 2 * bound {
                // One row of 25 overflow pages at a time: little for `verify` to compare.
                let replace = [
                    "DELETE FROM t",
                    "INSERT INTO t(b) VALUES (zeroblob(100000))",
                ];
                let result = c.write(vec![req("", &replace)]).await?;
                written += result.delta.map_or(0, |d| d.pages.len() as u64 + 1);
                largest = largest.max(std::fs::metadata(&wal)?.len());
            }
            anyhow::Ok(())
        }
        .await;
        writing.store(false, std::sync::atomic::Ordering::Relaxed);
        result.map(|()| (written, largest))
    };
    let (written, first, second) =
        tokio::join!(writer, reader(Duration::ZERO), reader(read_for / 2));
    let (written, largest) = written?;
    ensure!(
        first.0 + second.0 > 10,
        "the reads ran: {first:?} {second:?} (ran, held back past their deadline)"
    );
    ensure!(
        largest <= bound,
        "the leader's WAL grew to {largest} bytes (bound {bound}) under overlapping reads, \
         with {written} frames written"
    );
    c.verify("after overlapping reads")?;
    Ok(())
}

/// The attack: a client table with a foreign key to `_raftlite_requests` would make the
/// pruning of old request ids fail every 128th batch whole (other clients' writes with it), or
/// cascade into the client's rows. Such a table is refused, by CREATE or ALTER, and the
/// request fails alone.
#[tokio::test]
async fn client_tables_cannot_reference_raftlites_tables() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[CREATE_T]).await?;
    let result = c
        .write(vec![
            req(
                "",
                &["CREATE TABLE evil(rid TEXT REFERENCES _raftlite_requests(id) ON DELETE CASCADE)"],
            ),
            req("", &["ALTER TABLE t ADD COLUMN rid TEXT REFERENCES _RAFTLITE_REQUESTS(id)"]),
            req("", &["INSERT INTO t(a) VALUES ('others go on')"]),
            req("", &["CREATE TABLE fine(id INTEGER PRIMARY KEY, tid REFERENCES t(id))"]),
        ])
        .await?;
    for refused in &result.outcomes[..2] {
        let e = failed(refused)?;
        ensure!(
            matches!(e, DbError::PermissionDenied(m) if m.contains("_raftlite")),
            "{e:?}"
        );
    }
    executed(&result.outcomes[2])?;
    executed(&result.outcomes[3])?;
    let reader = Connection::open(c.leader.path())?;
    let evil: i64 = reader.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE name = 'evil'",
        [],
        |r| r.get(0),
    )?;
    ensure!(evil == 0, "the table was created");
    ensure!(count(&reader, "t")? == 1);
    c.verify("after the refused references")?;
    // The same texts again, from the statement cache: twice in one batch, after a request
    // that failed for another reason with one of them inside, and after more than a thousand
    // other schema statements made the executor forget which texts change the schema.
    const EVIL: &str = "CREATE TABLE evil(rid TEXT REFERENCES _raftlite_requests(id))";
    const EVIL_IF: &str =
        "CREATE TABLE IF NOT EXISTS evil_if(rid TEXT REFERENCES _raftlite_meta(key))";
    let refused_again = |result: &ExecutedBatch, which: &[usize]| -> anyhow::Result<()> {
        for &i in which {
            let e = failed(&result.outcomes[i])?;
            ensure!(
                matches!(e, DbError::PermissionDenied(m) if m.contains("_raftlite")),
                "request {i}: {e:?}"
            );
        }
        Ok(())
    };
    let result = c
        .write(vec![
            req("", &[EVIL]),
            req("", &[EVIL]),
            req("", &[EVIL_IF, "INSERT INTO nowhere VALUES (1)"]),
            req("", &[EVIL_IF]),
        ])
        .await?;
    refused_again(&result, &[0, 1, 3])?;
    ensure!(failed(&result.outcomes[2]).is_ok());
    let others: Vec<WriteRequest> = (0..1100)
        .map(|i| req("", &[&format!("CREATE TABLE IF NOT EXISTS t(a) -- {i}")]))
        .collect();
    for chunk in others.chunks(275) {
        for outcome in &c.write(chunk.to_vec()).await?.outcomes {
            executed(outcome)?;
        }
    }
    let result = c.write(vec![req("", &[EVIL_IF]), req("", &[EVIL])]).await?;
    refused_again(&result, &[0, 1])?;
    // Compiled, cached and never run (its parameters do not bind, so nothing expires it),
    // then sent with a space around it: the statement cache trims the text, so it is the
    // same compiled statement, run without being compiled again.
    let unbound = |sql: &str| WriteRequest {
        request_id: String::new(),
        statements: vec![Statement {
            sql: sql.to_owned(),
            params: Params::Positional(vec![SqlValue::Integer(1)]),
        }],
        deadline: None,
        max_result_bytes: None,
    };
    const EVIL_ALTER: &str = "ALTER TABLE t ADD COLUMN rid2 TEXT REFERENCES _raftlite_requests(id)";
    for batches in [1, 2] {
        let (first, then) = match batches {
            1 => (
                EVIL.replace("evil", "evil_b1"),
                EVIL_ALTER.replace("rid2", "rid3"),
            ),
            _ => (EVIL.replace("evil", "evil_b2"), EVIL_ALTER.to_owned()),
        };
        let compile = vec![unbound(&first), unbound(&then)];
        let run = vec![
            req("", &[&format!(" {first}")]),
            req("", &[&format!("{then}\n")]),
        ];
        let outcomes = match batches {
            1 => c
                .write(compile.into_iter().chain(run).collect())
                .await?
                .outcomes[2..]
                .to_vec(),
            _ => {
                for outcome in &c.write(compile).await?.outcomes {
                    failed(outcome)?;
                }
                c.write(run).await?.outcomes
            }
        };
        let refused = ExecutedBatch {
            delta: None,
            outcomes,
            link: None,
            rows_held: None,
        };
        refused_again(&refused, &[0, 1]).context(format!("{batches} batch(es)"))?;
    }
    let references: i64 = reader.query_row(
        "SELECT count(*) FROM pragma_foreign_key_list('t')",
        [],
        |r| r.get(0),
    )?;
    ensure!(references == 0, "t references {references} tables");
    for table in ["evil", "evil_if", "evil_b1", "evil_b2"] {
        let made: i64 = reader.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = ?1",
            [table],
            |r| r.get(0),
        )?;
        ensure!(made == 0, "{table} was created");
    }
    // An interactive transaction is refused the same way, per call.
    c.executor.begin().await?;
    let step = c
        .executor
        .transaction_execute(
            vec![stmt(
                "CREATE TABLE evil2(rid REFERENCES _raftlite_meta(key))",
            )],
            None,
        )
        .await?;
    ensure!(
        matches!(&step, TransactionStep::Failed(DbError::PermissionDenied(_))),
        "{step:?}"
    );
    c.executor.rollback().await?;
    Ok(())
}

/// Runs `ahead` (in groups, as a gathering batch gets its writers) and then `rest` as one
/// batch, applies its delta on both nodes and commits what executed on the reference.
async fn write_run_ahead(
    c: &Cluster,
    ahead: &[Vec<WriteRequest>],
    rest: Vec<WriteRequest>,
) -> anyhow::Result<ExecutedBatch> {
    let mut given = 0;
    for group in ahead {
        given += group.len();
        // An error here is the capture's to report: it runs the batch again.
        let _ = c.executor.run_ahead(group.clone());
    }
    let result = c
        .executor
        .execute_batch_on(rest.clone(), Pipeline::Settled, given)?;
    if let Some(delta) = &result.delta {
        apply_both(c, PageDelta::decode(&delta.encode())?).await?;
    }
    let all: Vec<WriteRequest> = ahead.iter().flatten().cloned().chain(rest).collect();
    ensure!(all.len() == result.outcomes.len(), "an outcome per request");
    for (request, outcome) in all.iter().zip(&result.outcomes) {
        if matches!(outcome, WriteOutcome::Executed(_)) {
            c.reference_commit(request)?;
        }
    }
    Ok(result)
}

/// Writes the executor runs while their batch still gathers its writers form one batch with
/// the rest: one delta, an outcome each in order, byte-identical replicas; one that ends the
/// whole transaction fails alone, and the others run again without it.
#[tokio::test]
async fn writes_run_ahead_join_the_rest_of_their_batch() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&["CREATE TABLE k(id INTEGER PRIMARY KEY, v TEXT UNIQUE NOT NULL)"])
        .await?;
    let version = c.leader.version().await?;
    let result = write_run_ahead(
        &c,
        &[
            vec![req("a1", &["INSERT INTO k(v) VALUES('a')"])],
            vec![
                req("a2", &["INSERT INTO k(v) VALUES('a')"]),
                // Ends the whole transaction: everything run ahead runs again without it.
                req("a3", &["INSERT OR ROLLBACK INTO k(v) VALUES('a')"]),
                req("a4", &["INSERT INTO k(v) VALUES('b')"]),
            ],
        ],
        vec![req("a5", &["INSERT INTO k(v) VALUES('c')"])],
    )
    .await?;
    executed(&result.outcomes[0])?;
    ensure!(matches!(
        failed(&result.outcomes[1])?,
        DbError::Constraint(_)
    ));
    ensure!(matches!(
        failed(&result.outcomes[2])?,
        DbError::Constraint(_)
    ));
    executed(&result.outcomes[3])?;
    executed(&result.outcomes[4])?;
    ensure!(c.leader.version().await? == version + 1, "one delta");
    c.verify("run ahead")?;
    let values = k_values(c.follower.path())?;
    ensure!(values == ["a", "b", "c"], "{values:?}");
    // A retried id run ahead is answered from the table, not run twice.
    let retried = write_run_ahead(
        &c,
        &[vec![req("a4", &["INSERT INTO k(v) VALUES('b')"])]],
        vec![],
    )
    .await?;
    ensure!(matches!(retried.outcomes[0], WriteOutcome::Duplicate(_)));
    ensure!(retried.delta.is_none());
    ensure!(!c.leader.gate.batch_open(), "nothing kept open");
    Ok(())
}

/// While writes run ahead, their transaction is recorded in the gate as a batch kept open: a
/// delta applied meanwhile (another leader's) rolls it back instead of waiting on SQLite's
/// lock (here 200 ms, then `SQLITE_BUSY`), and the batch runs again, on the new state, at its
/// capture. A capture told of more or fewer requests run ahead than were fails, unexecuted.
#[tokio::test]
async fn a_delta_applied_while_writes_run_ahead_goes_first() -> TestResult {
    let c = Cluster::with_options(DbOptions {
        read_threads: 2,
        busy_timeout: Duration::from_millis(200),
        ..DbOptions::default()
    })?;
    c.write_one(&[CREATE_T]).await?;
    let other_leader = c.leader.open_executor()?;
    let other_request = req("other", &[&insert_rows(5, 9)]);
    let other = other_leader
        .execute_batch(vec![other_request.clone()])
        .await?
        .delta
        .context("a delta")?;
    drop(other_leader);

    let ahead = req("ahead", &[&insert_rows(30, 7)]);
    c.executor.run_ahead(vec![ahead.clone()])?;
    ensure!(c.leader.gate.batch_open(), "the run ahead is not recorded");
    apply_both(&c, other).await?;
    c.reference_commit(&other_request)?;
    ensure!(!c.leader.gate.batch_open());
    let last = req("last", &[&insert_rows(2, 3)]);
    let result = c
        .executor
        .execute_batch_on(vec![last.clone()], Pipeline::Settled, 1)?;
    executed(&result.outcomes[0])?;
    executed(&result.outcomes[1])?;
    apply_both(
        &c,
        PageDelta::decode(&result.delta.context("a delta")?.encode())?,
    )
    .await?;
    c.reference_commit(&ahead)?;
    c.reference_commit(&last)?;
    c.verify("run ahead after another leader's delta")?;

    let version = c.leader.version().await?;
    c.executor
        .run_ahead(vec![req("x", &["INSERT INTO t(a) VALUES('x')"])])?;
    let result = c.executor.execute_batch_on(
        vec![req("y", &["INSERT INTO t(a) VALUES('y')"])],
        Pipeline::Settled,
        2,
    );
    ensure!(
        matches!(&result, Err(DbError::Internal(m)) if m.contains("run ahead")),
        "two counted ahead, one given: {result:?}"
    );
    ensure!(!c.leader.gate.batch_open(), "the run ahead stayed open");
    ensure!(c.leader.version().await? == version);
    c.verify("a miscounted batch ran nothing")?;
    Ok(())
}

/// Runs `sqls` as one request on the executor and returns its refusal message.
async fn refusal(c: &Cluster, sqls: &[&str]) -> anyhow::Result<String> {
    let result = c.executor.execute_batch(vec![req("", sqls)]).await?;
    match failed(&result.outcomes[0])? {
        DbError::PermissionDenied(m) => Ok(m.clone()),
        other => anyhow::bail!("{sqls:?}: expected a refusal, got {other:?}"),
    }
}

/// SQLite looks a `pragma_*` name up as a table before it takes it for a table-valued pragma
/// function, in the `main.`-qualified form too: an object named so would stand in for the
/// function in every statement that uses it. The executor refuses such names, whatever their
/// case or quoting; `sqlite_*` names SQLite refuses itself (while its own tables, which it
/// reports to the authorizer as creations too, are still made).
#[tokio::test]
async fn names_of_sqlites_table_functions_are_refused() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[CREATE_T]).await?;
    let refused: [&[&str]; 8] = [
        &["CREATE VIRTUAL TABLE pragma_foreign_key_list USING fts5(\"table\")"],
        &["CREATE TABLE pragma_foreign_key_check(\"table\", rowid, parent, fkid)"],
        &["CREATE TABLE IF NOT EXISTS \"PRAGMA_Table_Info\"(name)"],
        &["CREATE TABLE main.[pragma_page_count](page_count)"],
        &["CREATE VIEW pragma_index_list AS SELECT 1"],
        &["CREATE INDEX pragma_x ON t(a)"],
        &["CREATE TRIGGER Pragma_y AFTER INSERT ON t BEGIN SELECT 1; END"],
        // A full-text table named `pragma` makes `pragma_data` and four more.
        &[
            "CREATE TABLE ok(x)",
            "CREATE VIRTUAL TABLE pragma USING fts5(x)",
        ],
    ];
    for sqls in refused {
        let m = refusal(&c, sqls).await?;
        ensure!(
            m.contains("pragma_") && m.contains("reserved"),
            "{sqls:?}: {m}"
        );
    }
    for sql in [
        "CREATE TABLE sqlite_x(a)",
        "CREATE VIRTUAL TABLE Sqlite_f USING fts5(x)",
        "CREATE VIEW sqlite_v AS SELECT 1",
        "CREATE INDEX sqlite_i ON t(a)",
        "CREATE TRIGGER \"SQLITE_t\" AFTER INSERT ON t BEGIN SELECT 1; END",
        "ALTER TABLE t RENAME TO sqlite_t",
    ] {
        let result = c.executor.execute_batch(vec![req("", &[sql])]).await?;
        let e = failed(&result.outcomes[0])?;
        ensure!(
            e.to_string().contains("reserved for internal use"),
            "{sql}: {e:?}"
        );
    }
    // What SQLite and its modules name `sqlite_*` and `<table>_*` themselves is still made.
    c.write_one(&[
        "CREATE TABLE seq(id INTEGER PRIMARY KEY AUTOINCREMENT, u TEXT UNIQUE)",
        "INSERT INTO seq(u) VALUES('a')",
        "CREATE VIRTUAL TABLE docs USING fts5(body)",
        "INSERT INTO docs VALUES('pragma_table_info')",
        "ANALYZE",
        "CREATE TABLE pragmatic(x)",
    ])
    .await?;
    // (A full-text table's tables have no rowid to compare the replicas by.)
    c.write_one(&["DROP TABLE docs"]).await?;
    c.verify("after the refused names")?;
    let reader = Connection::open(c.leader.path())?;
    let made: i64 = reader.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE name LIKE 'pragma\\_%' ESCAPE '\\'",
        [],
        |r| r.get(0),
    )?;
    ensure!(made == 0, "{made} objects named pragma_*");
    Ok(())
}

/// The executor's own checks read SQLite's foreign key pragmas in a form no client object can
/// stand in for: with a `pragma_foreign_key_list` full-text table and a
/// `pragma_foreign_key_check` table in the database (made before the names were refused), a
/// foreign key to raftlite's tables is still refused, and a request without foreign keys that
/// leaves an orphan still fails.
#[tokio::test]
async fn tables_named_like_pragma_functions_do_not_fool_the_executors_checks() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[
        "CREATE TABLE parent(id INTEGER PRIMARY KEY)",
        "CREATE TABLE child(pid INTEGER REFERENCES parent(id))",
        "INSERT INTO parent VALUES(1)",
        "INSERT INTO child VALUES(1)",
    ])
    .await?;
    // Written past the executor, as an older node's executor allowed.
    Connection::open(c.leader.path())?.execute_batch(
        "CREATE VIRTUAL TABLE pragma_foreign_key_list USING fts5(\"table\");
         CREATE TABLE pragma_foreign_key_check(\"table\", rowid, parent, fkid);",
    )?;
    let m = refusal(
        &c,
        &["CREATE TABLE holdreq(rid REFERENCES _raftlite_requests(id))"],
    )
    .await?;
    ensure!(m.contains("_raftlite"), "{m}");
    let orphan = c
        .executor
        .execute_alone(req(
            "",
            &["PRAGMA foreign_keys=OFF", "INSERT INTO child VALUES(999)"],
        ))
        .await?;
    ensure!(
        matches!(failed(&orphan.outcomes[0])?, DbError::Constraint(m) if m.contains("child")),
        "{:?}",
        orphan.outcomes
    );
    ensure!(orphan.delta.is_none(), "the orphan was captured");
    // Without a violation the same kind of request goes through.
    let fine = c
        .executor
        .execute_alone(req(
            "",
            &["PRAGMA foreign_keys=OFF", "INSERT INTO child VALUES(1)"],
        ))
        .await?;
    executed(&fine.outcomes[0])?;
    Ok(())
}

/// `ALTER TABLE ... RENAME TO` cannot move a table into raftlite's names (`_raftlite_*`, where
/// nobody could write, drop or rename it again) nor SQLite's `pragma_*` ones, however the new
/// name is spelled; in a batch the request fails alone, in a transaction the call.
#[tokio::test]
async fn a_table_cannot_be_renamed_into_reserved_names() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&["CREATE TABLE x9(v)", "INSERT INTO x9 VALUES(1)"])
        .await?;
    for (sql, named) in [
        ("ALTER TABLE x9 RENAME TO _raftlite_x9", "_raftlite_"),
        (
            "alter table main.x9 rename to \"_RAFTLITE_X9\"",
            "_raftlite_",
        ),
        (
            "ALTER TABLE [x9] RENAME /* to x */ TO `_Raftlite_requests2`",
            "_raftlite_",
        ),
        ("ALTER TABLE x9 RENAME TO '_raftlite_'", "_raftlite_"),
        ("ALTER TABLE x9 RENAME TO pragma_table_info", "pragma_"),
    ] {
        let m = refusal(&c, &[sql]).await?;
        ensure!(m.contains(named) && m.contains("rename"), "{sql}: {m}");
    }
    let result = c
        .write(vec![
            req(
                "",
                &[
                    "INSERT INTO x9 VALUES(2)",
                    "ALTER TABLE x9 RENAME TO _raftlite_x9",
                ],
            ),
            req("", &["INSERT INTO x9 VALUES(3)"]),
        ])
        .await?;
    failed(&result.outcomes[0])?;
    executed(&result.outcomes[1])?;
    c.executor.begin().await?;
    let step = tx_call(&c, &["ALTER TABLE x9 RENAME TO _raftlite_x9"]).await?;
    ensure!(
        matches!(&step, TransactionStep::Failed(DbError::PermissionDenied(m)) if m.contains("_raftlite_")),
        "{step:?}"
    );
    let step = tx_call(&c, &["INSERT INTO x9 VALUES(4)"]).await?;
    ensure!(matches!(step, TransactionStep::Done(_)), "{step:?}");
    c.executor.rollback().await?;
    // Other names are fine, and so is every table named `_raftlite` without the underscore.
    c.write_one(&["ALTER TABLE x9 RENAME TO _raftlitex9"])
        .await?;
    c.write_one(&[
        "ALTER TABLE _raftlitex9 RENAME TO y9",
        "INSERT INTO y9 VALUES(5)",
    ])
    .await?;
    c.verify("after the refused renames")?;
    let reader = Connection::open(c.leader.path())?;
    let values: String =
        reader.query_row("SELECT group_concat(v) FROM y9 ORDER BY rowid", [], |r| {
            r.get(0)
        })?;
    ensure!(values == "1,3,5", "{values}");
    // A stray table of that kind from before the renames were refused (written past the
    // executor here) blocks no other schema change.
    Connection::open(c.leader.path())?
        .execute_batch("CREATE TABLE _raftlite_stray(x); CREATE TABLE pragma_stray(x);")?;
    let result = c
        .executor
        .execute_batch(vec![req(
            "",
            &["CREATE TABLE z(x)", "ALTER TABLE pragma_stray RENAME TO p2"],
        )])
        .await?;
    executed(&result.outcomes[0])?;
    Ok(())
}

/// A leader deposed with an interactive transaction open holds SQLite's write lock on its
/// executor. The new leader's delta must not wait for it, or its Commit: the Commit once waited
/// for the gate the apply held while the apply waited in `BEGIN IMMEDIATE` for the Commit's
/// lock, until the apply failed with SQLITE_BUSY after the busy timeout (and the state
/// machine, and the node, stopped). Now the transaction is recorded in the gate as a batch
/// kept open is, and the apply rolls it back first (its client hears that it is gone); so
/// does an image.
#[tokio::test]
async fn another_leaders_delta_does_not_wait_for_an_open_transaction() -> TestResult {
    let busy_timeout = Duration::from_millis(500);
    let c = Cluster::with_options(DbOptions {
        busy_timeout,
        ..DbOptions::default()
    })?;
    c.write_one(&[CREATE_T]).await?;
    // Another leader, on a copy of the same committed state.
    let other_dir = tempfile::tempdir()?;
    let other_path = other_dir.path().join("other.db");
    c.follower.build_image(other_path.clone()).await?;
    let other = Database::open(&other_path, DbOptions::default())?;
    let other_executor = other.open_executor()?;
    let other_request = req("other", &["INSERT INTO t(a) VALUES('other leader')"]);
    let replacing = other_executor
        .execute_batch(vec![other_request.clone()])
        .await?
        .delta
        .context("a delta")?;

    c.executor.begin().await?;
    let step = tx_call(&c, &["INSERT INTO t(a) VALUES('deposed')"]).await?;
    ensure!(matches!(step, TransactionStep::Done(_)), "{step:?}");
    // The apply comes first; the Commit while it is under way.
    let replacing = Arc::new(PageDelta::decode(&replacing.encode())?);
    let started = std::time::Instant::now();
    let (applied, committed) = tokio::join!(c.leader.apply(replacing.clone()), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.executor.commit("deposed".into()).await
    });
    let applied = applied.with_context(|| format!("the apply, after {:?}", started.elapsed()))?;
    ensure!(applied == ApplyOutcome::Applied);
    match committed {
        Err(DbError::Stale(m)) => ensure!(m.contains("rolled back"), "{m}"),
        // Captured before the apply reached the executor: kept open, then rolled back by it.
        Ok(Some(lost)) => ensure!(c.leader.apply(Arc::new(lost)).await? == ApplyOutcome::Skipped),
        other => anyhow::bail!("the commit: {other:?}"),
    }
    ensure!(!c.leader.gate.batch_open());
    ensure!(c.follower.apply(replacing).await? == ApplyOutcome::Applied);
    c.reference_commit(&other_request)?;
    c.verify("the other leader's delta")?;
    ensure!(!c.executor.request_recorded("deposed".into()).await?);

    // An image installed over an open transaction rolls it back too; the transaction's next
    // call hears it is gone.
    let image = c.dir.path().join("image.db");
    c.follower.build_image(image.clone()).await?;
    c.executor.begin().await?;
    tx_call(&c, &["INSERT INTO t(a) VALUES('deposed again')"]).await?;
    let started = std::time::Instant::now();
    c.leader
        .install_image(image)
        .await
        .with_context(|| format!("the image, after {:?}", started.elapsed()))?;
    let step = tx_call(&c, &["INSERT INTO t(a) VALUES('and again')"]).await?;
    ensure!(
        matches!(&step, TransactionStep::Ended(DbError::Stale(_))),
        "{step:?}"
    );
    ensure!(matches!(
        c.executor.commit(String::new()).await,
        Err(DbError::Stale(_))
    ));
    // The executor goes on from the committed state.
    c.write_one(&["INSERT INTO t(a) VALUES('next')"]).await?;
    c.verify("after the image")?;
    Ok(())
}

/// An apply never makes the node's runtime wait for the gate. The executor holds it through a
/// whole batch, whose statements may run for seconds; the apply's check for a delta committed
/// ahead took it on the runtime's thread, so on a leader with one runtime thread a batch of
/// slow statements (`SELECT randomblob(4000000)`, many times) stopped its heartbeats until it
/// lost its leadership. Here a thread holds the gate for a second while the apply runs
/// beside a timer on the same (single-threaded) runtime: the timer keeps ticking (before: it
/// stopped for the whole second), and the apply completes once the gate is free.
#[tokio::test]
async fn an_apply_never_makes_the_runtime_wait_for_a_running_batch() -> TestResult {
    let c = Cluster::new()?;
    c.write_one(&[CREATE_T]).await?;
    let other_dir = tempfile::tempdir()?;
    let other_path = other_dir.path().join("other.db");
    c.follower.build_image(other_path.clone()).await?;
    let other = Database::open(&other_path, DbOptions::default())?;
    let request = req("other", &["INSERT INTO t(a) VALUES('other leader')"]);
    let delta = other
        .open_executor()?
        .execute_batch(vec![request.clone()])
        .await?
        .delta
        .context("a delta")?;
    let delta = Arc::new(PageDelta::decode(&delta.encode())?);

    let gate = c.leader.gate.clone();
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let batch = std::thread::spawn(move || {
        let _held = gate.hold();
        let _ = held_tx.send(());
        std::thread::sleep(Duration::from_secs(1));
    });
    held_rx.recv()?;
    let started = std::time::Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    let mut longest_gap = Duration::ZERO;
    let mut last = std::time::Instant::now();
    let apply = c.leader.apply(delta.clone());
    tokio::pin!(apply);
    let applied = loop {
        tokio::select! {
            applied = &mut apply => break applied?,
            _ = ticks.tick() => {
                longest_gap = longest_gap.max(last.elapsed());
                last = std::time::Instant::now();
            }
        }
    };
    batch
        .join()
        .map_err(|_| anyhow::anyhow!("the thread holding the gate panicked"))?;
    ensure!(
        longest_gap < Duration::from_millis(500),
        "the runtime stopped for {longest_gap:?} while a batch held the gate"
    );
    ensure!(
        started.elapsed() >= Duration::from_millis(900),
        "the apply did not wait for the batch: {:?}",
        started.elapsed()
    );
    ensure!(applied == ApplyOutcome::Applied, "{applied:?}");
    ensure!(c.follower.apply(delta).await? == ApplyOutcome::Applied);
    c.reference_commit(&request)?;
    c.verify("a delta applied after a long batch")
}

/// Rows that unread answers leave no room for fail their request alone, saying why; writes
/// that return no rows (or fewer bytes than the room) go on, and once the answers are read
/// the same request returns its rows. 300 connections that never read one 4 MB answer each
/// held 1.28 GB on a leader; now they hold what `answers.rs` allows.
#[tokio::test]
async fn rows_past_the_room_unread_answers_leave_fail_alone() -> TestResult {
    let answers = Arc::new(AnswerBytes::new(1_000));
    let c = Cluster::with_options(DbOptions {
        answers: answers.clone(),
        ..DbOptions::default()
    })?;
    c.write_one(&[CREATE_T]).await?;
    let unread = answers.hold(None, 900);
    let big = "SELECT randomblob(500)";
    let result = c
        .write(vec![
            req("", &[big]),
            req("", &["INSERT INTO t(a) VALUES('no rows')"]),
            req("", &["INSERT INTO t(a) VALUES('few') RETURNING 1"]),
            // Forwarded by a follower with room: its answer waits there, not here.
            WriteRequest {
                max_result_bytes: Some(600),
                ..req("", &[big])
            },
        ])
        .await?;
    match failed(&result.outcomes[0])? {
        DbError::Overloaded(m) => ensure!(m.contains("have not read yet"), "{m}"),
        other => anyhow::bail!("{other:?}"),
    }
    executed(&result.outcomes[1])?;
    ensure!(executed(&result.outcomes[2])?[0].rows.len() == 1);
    ensure!(executed(&result.outcomes[3])?[0].rows.len() == 1);
    c.verify("with the room taken")?;
    // The batch holds the rows it returned here until the handlers hold their answers (the
    // forwarded request's wait on its follower).
    let few = answers.held() - 900;
    ensure!((1..=16).contains(&few), "the batch holds {few} bytes");
    drop(result);
    // A follower that forwards a write says how much room it has for the answer.
    drop(unread);
    let forwarded = |room| WriteRequest {
        max_result_bytes: Some(room),
        ..req("", &[big])
    };
    let result = c.write(vec![forwarded(100), forwarded(600)]).await?;
    match failed(&result.outcomes[0])? {
        DbError::Overloaded(m) => ensure!(m.contains("have not read yet"), "{m}"),
        other => anyhow::bail!("{other:?}"),
    }
    ensure!(executed(&result.outcomes[1])?[0].rows.len() == 1);
    // So does a call of an interactive transaction that a follower forwards.
    c.executor.begin().await?;
    let call = |room| {
        c.executor
            .transaction_execute_within(vec![stmt(big)], None, Some(room))
    };
    match call(100).await? {
        TransactionStep::Failed(DbError::Overloaded(m)) => {
            ensure!(m.contains("have not read yet"), "{m}")
        }
        other => anyhow::bail!("{other:?}"),
    }
    match call(600).await? {
        TransactionStep::Done(results) => ensure!(results[0].rows.len() == 1),
        other => anyhow::bail!("{other:?}"),
    }
    c.executor.rollback().await?;
    // A retry of a request id returns its stored rows: an answer like any other.
    c.write(vec![req("stored", &[big])]).await?;
    let retried = c
        .write(vec![WriteRequest {
            max_result_bytes: Some(100),
            ..req("stored", &[big])
        }])
        .await?;
    match failed(&retried.outcomes[0])? {
        DbError::Overloaded(m) => ensure!(m.contains("have not read yet"), "{m}"),
        other => anyhow::bail!("{other:?}"),
    }
    let retried = c.write(vec![req("stored", &[big])]).await?;
    ensure!(matches!(&retried.outcomes[0], WriteOutcome::Duplicate(r) if r[0].rows.len() == 1));
    ensure!(answers.held() >= 500, "the retry's stored rows are held");
    // While one batch's rows wait for its handlers, the next finds their room taken.
    let next = c.write(vec![req("", &[big])]).await?;
    match failed(&next.outcomes[0])? {
        DbError::Overloaded(m) => ensure!(m.contains("have not read yet"), "{m}"),
        other => anyhow::bail!("{other:?}"),
    }
    drop(retried);
    let rows = c.write_one(&[big]).await?;
    ensure!(rows[0].rows.len() == 1);
    ensure!(
        answers.held() == 0,
        "the test holds nothing: {}",
        answers.held()
    );
    Ok(())
}

/// A client connection that keeps an answer unread past the grace gives its room to the rows
/// of a write that needs it (the connection is closed). Answers held for less, a follower's
/// forwarded write (whose answer waits on the follower) and writes without rows close nothing.
#[tokio::test]
async fn a_connection_that_left_answers_unread_too_long_gives_its_room() -> TestResult {
    let grace = Duration::from_secs(1);
    let answers = Arc::new(AnswerBytes::with_grace(1_000, grace));
    let c = Cluster::with_options(DbOptions {
        answers: answers.clone(),
        ..DbOptions::default()
    })?;
    c.write_one(&[CREATE_T]).await?;
    let hoarder = answers.client(None);
    let unread = answers.hold(Some(&hoarder), 900);
    let big = "SELECT randomblob(500)";
    let overloaded = |outcome: &WriteOutcome| match failed(outcome)? {
        DbError::Overloaded(m) => {
            ensure!(m.contains("have not read yet"), "{m}");
            Ok(())
        }
        other => anyhow::bail!("{other:?}"),
    };
    overloaded(&c.write(vec![req("", &[big])]).await?.outcomes[0])?;
    ensure!(!hoarder.is_closed(), "its answer is younger than the grace");

    tokio::time::sleep(grace).await;
    let forwarded = WriteRequest {
        max_result_bytes: Some(100),
        ..req("", &[big])
    };
    overloaded(&c.write(vec![forwarded]).await?.outcomes[0])?;
    executed(
        &c.write(vec![req("", &["INSERT INTO t(a) VALUES('no rows')"])])
            .await?
            .outcomes[0],
    )?;
    ensure!(!hoarder.is_closed(), "nothing here needed this node's room");

    let result = c
        .write(vec![
            req("", &[big]),
            req("", &["INSERT INTO t(a) VALUES('few') RETURNING 1"]),
            req("", &[big]),
        ])
        .await?;
    ensure!(executed(&result.outcomes[0])?[0].rows.len() == 1);
    ensure!(executed(&result.outcomes[1])?[0].rows.len() == 1);
    overloaded(&result.outcomes[2])?;
    ensure!(hoarder.is_closed() && answers.connections_closed() == 1);
    drop(unread);
    ensure!(answers.held() > 500, "{} held by the batch", answers.held());
    drop(result);
    ensure!(answers.held() == 0, "{} held", answers.held());
    c.verify("after the room was taken back")?;
    Ok(())
}
