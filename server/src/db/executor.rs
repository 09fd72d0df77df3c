//! [`Executor`]: the leader's write connection. Runs a batch of client writes and turns it
//! into a [`PageDelta`] without committing anything.
//!
//! One batch = one `BEGIN IMMEDIATE` … capture … `ROLLBACK`:
//! * each request runs inside its own `SAVEPOINT`, so a failing request is rolled back alone
//!   and gets its own error while the others go on (group commit without shared fate);
//! * request ids and their results are inserted into `_raftlite_requests` inside the same
//!   savepoint, so they travel in the same delta as the data: a retried id is answered from
//!   the table ([`WriteOutcome::Duplicate`]) instead of being applied twice;
//! * the version counter in `_raftlite_meta` is bumped once per batch that executed something,
//!   and the delta carries the old value as `base_version` (see `internal.rs`).
//!
//! The executor never commits: its database only changes when the applier applies a delta
//! that Raft committed. A leader that dies mid-batch leaves nothing behind.
//!
//! Client SQL is locked down (see `authorizer.rs`) and `SQLITE_DBCONFIG_DEFENSIVE` is on, so
//! clients cannot break capture (journal mode, cache spill, transactions) or write
//! `sqlite_dbpage` and raftlite's tables directly. Client statements are bounded in size and
//! time (see `bounds.rs`): a request past its [`WriteRequest::deadline`] is interrupted inside
//! SQLite and fails alone with [`DbError::Timeout`]. If the interrupted statement was a write,
//! SQLite has rolled back the whole transaction; the batch is then rerun without that request,
//! like after `RAISE(ROLLBACK)`.
//!
//! `VACUUM` cannot run inside a transaction. [`Executor::execute_vacuum`] uses
//! `VACUUM INTO` a temporary file instead, bumps the version there and ships every page of the
//! result as one delta.

use super::authorizer::{Lockdown, Policy};
use super::bounds::Bounds;
use super::capture;
use super::delta::PageDelta;
use super::error::{DbError, Result};
use super::internal;
use super::value::{bind, Statement, StatementOutcome, WriteRequest};
use super::DbOptions;
use rusqlite::config::DbConfig;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Request ids are remembered this long.
const REQUEST_ID_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// Prune old request ids once every this many executed batches...
const PRUNE_EVERY_BATCHES: u32 = 128;
/// ...looking at no more than this many of the oldest ids each time.
const PRUNE_LIMIT: u32 = 1000;
/// Client statements kept prepared between batches.
const STATEMENT_CACHE: usize = 256;
/// Savepoint wrapped around each request.
const REQUEST_SAVEPOINT: &str = "raftlite_request";
const VACUUM_ALONE: &str = "VACUUM must be sent alone";
const VACUUM_INTO: &str =
    "VACUUM INTO is not allowed (it would write a file on the server); send a plain VACUUM";

/// What happened to one request of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WriteOutcome {
    /// Executed now; its changes are in the batch's delta.
    Executed(Vec<StatementOutcome>),
    /// The request id was already applied (or appeared earlier in this batch): the stored
    /// results, nothing executed.
    Duplicate(Vec<StatementOutcome>),
    /// Rolled back alone; the rest of the batch is unaffected.
    Failed(DbError),
}

/// Result of a batch: the delta to replicate (if anything executed) and one outcome per
/// request, in request order.
#[derive(Debug, Clone)]
pub struct ExecutedBatch {
    /// `None` when every request failed or was a duplicate: nothing to replicate.
    pub delta: Option<PageDelta>,
    pub outcomes: Vec<WriteOutcome>,
}

/// True for a request whose only statement is `VACUUM` (case and surrounding whitespace and
/// semicolons ignored). Such a request must go to [`Executor::execute_vacuum`].
pub fn is_vacuum(request: &WriteRequest) -> bool {
    match request.statements.as_slice() {
        [only] => only
            .sql
            .trim()
            .trim_end_matches(';')
            .trim_end()
            .eq_ignore_ascii_case("vacuum"),
        _ => false,
    }
}

/// True if the statement's first keyword is VACUUM (ignoring leading whitespace/comments).
fn starts_with_vacuum(sql: &str) -> bool {
    let mut rest = sql;
    loop {
        rest = rest.trim_start();
        if let Some(comment) = rest.strip_prefix("--") {
            rest = comment.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(comment) = rest.strip_prefix("/*") {
            rest = comment.split_once("*/").map_or("", |(_, after)| after);
        } else {
            break;
        }
    }
    rest.get(..6)
        .is_some_and(|w| w.eq_ignore_ascii_case("vacuum"))
        && !rest[6..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
}

/// The leader's write connection. See the module docs.
pub struct Executor {
    conn: Connection,
    lockdown: Arc<Lockdown>,
    bounds: Bounds,
    db_path: PathBuf,
    batches_since_prune: u32,
    max_delta_bytes: usize,
}

/// How a single attempt at a batch ended.
enum Attempt {
    Done(ExecutedBatch),
    /// A client statement rolled back the whole transaction (e.g. `INSERT OR ROLLBACK`,
    /// `RAISE(ROLLBACK)`); that request is now marked failed and the batch runs again.
    Retry,
}

impl Executor {
    /// Open the executor connection on an existing WAL database. `executor_cache_kib` sizes
    /// its page cache: transactions larger than that spill to the WAL (capture handles it).
    pub fn open(path: &Path, options: &DbOptions) -> Result<Executor> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(options.busy_timeout)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
        let bounds = Bounds::install(&mut conn, options, options.executor_cache_kib)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(DbError::Internal(format!(
                "executor needs a WAL database, got {mode}"
            )));
        }
        let lockdown = Lockdown::install(&mut conn, Policy::Executor)?;
        Ok(Executor {
            conn,
            lockdown,
            bounds,
            db_path: path.to_path_buf(),
            batches_since_prune: 0,
            max_delta_bytes: options.max_delta_bytes,
        })
    }

    /// Execute a batch of write requests and capture its page delta; commits nothing.
    ///
    /// An `Err` means the batch as a whole could not run (I/O error, internal failure); client
    /// mistakes are per-request [`WriteOutcome::Failed`] entries.
    pub fn execute_batch(&mut self, batch: &[WriteRequest]) -> Result<ExecutedBatch> {
        let mut fatal: Vec<Option<DbError>> = vec![None; batch.len()];
        loop {
            self.internal_sql("BEGIN IMMEDIATE")?;
            let attempt = self.run_batch(batch, &mut fatal);
            let rolled_back = self.end_transaction();
            match attempt? {
                Attempt::Done(executed) => {
                    rolled_back?;
                    return Ok(executed);
                }
                Attempt::Retry => rolled_back?,
            }
        }
    }

    /// Run `VACUUM` as a full-image delta (see the module docs).
    pub fn execute_vacuum(&mut self) -> Result<ExecutedBatch> {
        let tmp = vacuum_path(&self.db_path);
        remove_if_exists(&tmp)?;
        let result = self.vacuum_into(&tmp);
        let cleanup = remove_if_exists(&tmp);
        let delta = result?;
        cleanup?;
        Ok(ExecutedBatch {
            delta: Some(delta),
            outcomes: vec![WriteOutcome::Executed(vec![StatementOutcome {
                rows_affected: 0,
                last_insert_rowid: 0,
            }])],
        })
    }

    fn vacuum_into(&mut self, tmp: &Path) -> Result<PageDelta> {
        let tmp_str = tmp
            .to_str()
            .ok_or_else(|| DbError::Internal(format!("non-UTF-8 path {}", tmp.display())))?;
        let live_page1 = {
            let _guard = self.lockdown.internal();
            self.conn.execute("VACUUM INTO ?1", [tmp_str])?;
            capture::read_page(&self.conn, 1)?
                .ok_or_else(|| DbError::Internal("live database has no page 1".into()))?
        };

        // The copy is a consistent snapshot of the live database, version counter included:
        // take the base version from it and bump it there, so the image carries the new one.
        let copy = Connection::open(tmp)?;
        copy.execute_batch("BEGIN IMMEDIATE")?;
        let base_version = internal::read_version(&copy)?;
        internal::ensure_tables(&copy)?;
        internal::write_version(&copy, base_version + 1)?;
        copy.execute_batch("COMMIT")?;

        let page_size: u32 = copy.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let mut pages = Vec::new();
        {
            let mut stmt = copy.prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                pages.push((row.get::<_, u32>(0)?, row.get::<_, Vec<u8>>(1)?));
            }
        }
        // VACUUM INTO writes a rollback-journal file (format bytes 1/1); replicas stay in WAL
        // mode, so keep the live database's bytes 18/19.
        match pages.first_mut() {
            Some((1, page1)) => page1[18..20].copy_from_slice(&live_page1[18..20]),
            _ => return Err(DbError::Internal("VACUUM INTO produced no page 1".into())),
        }
        let delta = PageDelta {
            page_size,
            db_pages: pages.len() as u32,
            base_version,
            pages,
        };
        delta.validate()?;
        Ok(delta)
    }

    fn run_batch(
        &mut self,
        batch: &[WriteRequest],
        fatal: &mut [Option<DbError>],
    ) -> Result<Attempt> {
        let (start, base_version) = {
            let _guard = self.lockdown.internal();
            let start = capture::start(&self.conn)?;
            let version = internal::read_version(&self.conn)?;
            internal::ensure_tables(&self.conn)?;
            (start, version)
        };
        let now_ms = unix_millis();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut executed_any = false;
        for (i, request) in batch.iter().enumerate() {
            if let Some(e) = &fatal[i] {
                outcomes.push(WriteOutcome::Failed(e.clone()));
                continue;
            }
            if request
                .statements
                .iter()
                .any(|s| starts_with_vacuum(&s.sql))
            {
                let into = request.statements.iter().any(|s| {
                    s.sql
                        .split_whitespace()
                        .nth(1)
                        .is_some_and(|w| w.eq_ignore_ascii_case("into"))
                });
                outcomes.push(WriteOutcome::Failed(if into {
                    DbError::PermissionDenied(VACUUM_INTO.into())
                } else {
                    DbError::InvalidArgument(VACUUM_ALONE.into())
                }));
                continue;
            }
            let id = request.request_id.as_str();
            if !id.is_empty() {
                let _guard = self.lockdown.internal();
                if let Some(stored) = internal::lookup_request(&self.conn, id)? {
                    outcomes.push(WriteOutcome::Duplicate(stored));
                    continue;
                }
            }
            self.internal_sql(&format!("SAVEPOINT {REQUEST_SAVEPOINT}"))?;
            match self.run_statements(&request.statements, request.deadline) {
                Ok(results) => {
                    let _guard = self.lockdown.internal();
                    if !id.is_empty() {
                        internal::record_request(&self.conn, id, &results, now_ms)?;
                    }
                    self.conn
                        .execute_batch(&format!("RELEASE {REQUEST_SAVEPOINT}"))?;
                    outcomes.push(WriteOutcome::Executed(results));
                    executed_any = true;
                }
                Err(e) if self.conn.is_autocommit() => {
                    // The statement ended the whole transaction; redo the batch without it.
                    fatal[i] = Some(e);
                    return Ok(Attempt::Retry);
                }
                Err(e) => {
                    self.internal_sql(&format!(
                        "ROLLBACK TO {REQUEST_SAVEPOINT}; RELEASE {REQUEST_SAVEPOINT}"
                    ))?;
                    outcomes.push(WriteOutcome::Failed(e));
                }
            }
        }
        if !executed_any {
            return Ok(Attempt::Done(ExecutedBatch {
                delta: None,
                outcomes,
            }));
        }
        let _guard = self.lockdown.internal();
        self.batches_since_prune += 1;
        if self.batches_since_prune >= PRUNE_EVERY_BATCHES {
            self.batches_since_prune = 0;
            let cutoff = now_ms.saturating_sub(REQUEST_ID_RETENTION.as_millis() as i64);
            internal::prune_requests(&self.conn, cutoff, PRUNE_LIMIT)?;
        }
        internal::write_version(&self.conn, base_version + 1)?;
        let delta = capture::finish(&self.conn, start, base_version, self.max_delta_bytes)?;
        Ok(Attempt::Done(ExecutedBatch {
            delta: Some(delta),
            outcomes,
        }))
    }

    /// Run one request's statements; the first error ends the request. Past `deadline` the
    /// running statement is interrupted (see `bounds.rs`).
    fn run_statements(
        &self,
        statements: &[Statement],
        deadline: Option<Instant>,
    ) -> Result<Vec<StatementOutcome>> {
        let scope = self.bounds.enter(&self.conn, deadline, None)?;
        let client_error = |e| scope.client_error(e, &self.lockdown);
        let mut results = Vec::with_capacity(statements.len());
        for statement in statements {
            self.lockdown.reset();
            let mut stmt = self
                .conn
                .prepare_cached(&statement.sql)
                .map_err(client_error)?;
            bind(&mut stmt, &statement.params).map_err(|e| scope.name_limit(e))?;
            let changes_before = self.conn.total_changes();
            {
                // Statements that return rows (e.g. INSERT ... RETURNING) are stepped to the end.
                let mut rows = stmt.raw_query();
                while rows.next().map_err(client_error)?.is_some() {}
            }
            // changes() only counts INSERT/UPDATE/DELETE and keeps its old value across other
            // statements; report 0 for statements that changed nothing.
            let rows_affected = if self.conn.total_changes() != changes_before {
                self.conn.changes()
            } else {
                0
            };
            results.push(StatementOutcome {
                rows_affected,
                last_insert_rowid: self.conn.last_insert_rowid(),
            });
        }
        Ok(results)
    }

    fn internal_sql(&self, sql: &str) -> Result<()> {
        let _guard = self.lockdown.internal();
        self.conn.execute_batch(sql)?;
        Ok(())
    }

    /// ROLLBACK whatever is open: the executor never commits.
    fn end_transaction(&self) -> Result<()> {
        if self.conn.is_autocommit() {
            return Ok(());
        }
        self.internal_sql("ROLLBACK")
    }

    #[cfg(test)]
    pub(crate) fn force_prune_next_batch(&mut self) {
        self.batches_since_prune = PRUNE_EVERY_BATCHES;
    }
}

fn vacuum_path(db_path: &Path) -> PathBuf {
    let mut name = db_path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".vacuum-tmp");
    db_path.with_file_name(name)
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(sql: &str) -> WriteRequest {
        WriteRequest {
            request_id: String::new(),
            deadline: None,
            statements: vec![Statement::new(sql)],
        }
    }

    #[test]
    fn recognises_vacuum() {
        assert!(is_vacuum(&req("vacuum")));
        assert!(is_vacuum(&req("  VACUUM ;\n")));
        assert!(!is_vacuum(&req("VACUUM INTO 'x'")));
        assert!(!is_vacuum(&WriteRequest {
            request_id: String::new(),
            deadline: None,
            statements: vec![Statement::new("VACUUM"), Statement::new("SELECT 1")],
        }));
        assert!(starts_with_vacuum("-- c\n /* x */ Vacuum into 'x'"));
        assert!(starts_with_vacuum("VACUUM"));
        assert!(!starts_with_vacuum("vacuumed"));
        assert!(!starts_with_vacuum("SELECT 'vacuum'"));
    }
}
