//! [`ReadPool`]: queries on a fixed set of read-only connections, streamed in chunks.
//!
//! WAL mode lets readers run concurrently with the applier, each in its own snapshot, so reads
//! scale with the pool size and never wait for writes. Each pool thread owns one connection
//! (`query_only=ON` plus a read-only authorizer and a `sqlite3_stmt_readonly` check, so even
//! `VACUUM INTO` or `PRAGMA wal_checkpoint` are refused). A query runs inside one read
//! transaction — a consistent snapshot for the whole result — and hands rows to the caller
//! through a small bounded tokio channel: a slow client slows the query down instead of
//! making the node buffer a huge result, and a dropped receiver stops the query at the next
//! chunk. The threads are plain std threads fed by a crossbeam channel, so tokio workers never
//! block on SQLite.

use super::authorizer::{Lockdown, Policy, READ_ONLY};
use super::bounds::Bounds;
use super::error::{DbError, Result};
use super::value::{bind, SqlValue, Statement};
use super::DbOptions;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use tokio::sync::mpsc;

/// Chunks buffered between a pool thread and the consumer.
const CHANNEL_CHUNKS: usize = 2;
/// A chunk is sent early once its values reach about this many bytes, whatever `batch_rows`.
const MAX_CHUNK_BYTES: usize = 1 << 20;

/// Name and declared type of a result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    /// Declared type (`INTEGER`, `TEXT`, ...); `None` for expressions.
    pub decl_type: Option<String>,
}

/// One piece of a streamed query result.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryChunk {
    /// Result columns; filled in the first chunk only.
    pub columns: Vec<ColumnInfo>,
    pub rows: Vec<Vec<SqlValue>>,
    /// Set on the last chunk when `max_rows` cut the result short.
    pub truncated: bool,
    /// Set on the last chunk.
    pub done: bool,
}

struct Job {
    statement: Statement,
    max_rows: u64,
    batch_rows: usize,
    chunks: mpsc::Sender<Result<QueryChunk>>,
}

/// A pool of read-only connections on their own threads.
pub struct ReadPool {
    jobs: crossbeam_channel::Sender<Job>,
}

impl ReadPool {
    /// Open `options.read_threads` read-only connections on `path` (at least one).
    pub fn open(path: &Path, options: &DbOptions) -> Result<ReadPool> {
        let (jobs, rx) = crossbeam_channel::unbounded::<Job>();
        for i in 0..options.read_threads.max(1) {
            let mut conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_URI,
            )?;
            conn.busy_timeout(options.busy_timeout)?;
            conn.execute_batch("PRAGMA query_only=ON")?;
            let bounds = Bounds::install(&mut conn, options, options.reader_cache_kib)?;
            let lockdown = Lockdown::install(&mut conn, Policy::Reader)?;
            let reader = Reader {
                conn,
                lockdown,
                bounds,
            };
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("sqlite-read-{i}"))
                .spawn(move || {
                    for job in rx {
                        reader.run(job);
                    }
                })
                .map_err(|e| DbError::Internal(format!("spawn read thread: {e}")))?;
        }
        Ok(ReadPool { jobs })
    }

    /// Run a read-only statement on a pool thread and stream its rows.
    ///
    /// Rows arrive in chunks of at most `batch_rows` rows (fewer if they are large); the last
    /// chunk has `done` set. `max_rows` = 0 means no limit; otherwise the result stops after
    /// `max_rows` rows and the last chunk has `truncated` set if more rows existed. An error
    /// is the last item of the stream. Dropping the receiver cancels the query.
    pub fn query(
        &self,
        statement: Statement,
        max_rows: u64,
        batch_rows: usize,
    ) -> mpsc::Receiver<Result<QueryChunk>> {
        let (chunks, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let job = Job {
            statement,
            max_rows,
            batch_rows: batch_rows.max(1),
            chunks,
        };
        if let Err(crossbeam_channel::SendError(job)) = self.jobs.send(job) {
            // The channel has room: nothing was sent on it yet.
            let _ = job
                .chunks
                .try_send(Err(DbError::Internal("read pool has stopped".into())));
        }
        rx
    }
}

/// One pool thread's connection and what bounds it.
struct Reader {
    conn: Connection,
    lockdown: std::sync::Arc<Lockdown>,
    bounds: Bounds,
}

impl Reader {
    fn run(&self, job: Job) {
        let begun = {
            let _guard = self.lockdown.internal();
            self.conn.execute_batch("BEGIN")
        };
        let result = match begun {
            Ok(()) => self.stream_rows(&job),
            Err(e) => Err(DbError::from_sqlite(e)),
        };
        {
            let _guard = self.lockdown.internal();
            if !self.conn.is_autocommit() {
                if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                    tracing::warn!(error = %e, "ending a read transaction failed");
                }
            }
        }
        if let Err(e) = result {
            // If the receiver is gone there is nobody left to tell.
            let _ = job.chunks.blocking_send(Err(e));
        }
    }

    /// Stream the rows; returns Ok when done or when the receiver went away.
    fn stream_rows(&self, job: &Job) -> Result<()> {
        let scope = self.bounds.enter(&self.conn)?;
        let client_error = |e| scope.client_error(e, &self.lockdown);
        self.lockdown.reset();
        let mut stmt = self
            .conn
            .prepare_cached(&job.statement.sql)
            .map_err(client_error)?;
        if !stmt.readonly() {
            return Err(DbError::PermissionDenied(READ_ONLY.into()));
        }
        bind(&mut stmt, &job.statement.params)?;
        let mut columns: Vec<ColumnInfo> = stmt
            .columns()
            .map(|c| ColumnInfo {
                name: c.name().to_string(),
                decl_type: c.decl_type().map(str::to_string),
            })
            .collect();
        let width = columns.len();

        let mut rows = stmt.raw_query();
        let mut chunk: Vec<Vec<SqlValue>> = Vec::new();
        let mut chunk_bytes = 0usize;
        let mut sent: u64 = 0;
        loop {
            let row = rows.next().map_err(client_error)?;
            let Some(row) = row else {
                send(job, std::mem::take(&mut columns), chunk, false, true);
                return Ok(());
            };
            if job.max_rows > 0 && sent == job.max_rows {
                send(job, std::mem::take(&mut columns), chunk, true, true);
                return Ok(());
            }
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                let v = SqlValue::from(row.get_ref(i)?);
                chunk_bytes += value_size(&v);
                values.push(v);
            }
            chunk.push(values);
            sent += 1;
            if chunk.len() >= job.batch_rows || chunk_bytes >= MAX_CHUNK_BYTES {
                let full = std::mem::take(&mut chunk);
                chunk_bytes = 0;
                if !send(job, std::mem::take(&mut columns), full, false, false) {
                    return Ok(());
                }
            }
        }
    }
}

/// Send one chunk, waiting for room (backpressure). False if the receiver is gone.
fn send(
    job: &Job,
    columns: Vec<ColumnInfo>,
    rows: Vec<Vec<SqlValue>>,
    truncated: bool,
    done: bool,
) -> bool {
    job.chunks
        .blocking_send(Ok(QueryChunk {
            columns,
            rows,
            truncated,
            done,
        }))
        .is_ok()
}

fn value_size(v: &SqlValue) -> usize {
    match v {
        SqlValue::Text(s) => s.len() + 8,
        SqlValue::Blob(b) => b.len() + 8,
        _ => 8,
    }
}
