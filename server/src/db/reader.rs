//! [`ReadPool`]: queries on a fixed set of read-only connections, streamed in chunks.
//!
//! WAL mode lets readers run concurrently with the applier, each in its own snapshot, so reads
//! scale with the pool size and never wait for writes. Each pool thread owns one connection
//! (`query_only=ON` plus a read-only authorizer and a `sqlite3_stmt_readonly` check, so even
//! `VACUUM INTO` or `PRAGMA wal_checkpoint` are refused). A query runs inside one read
//! transaction — a consistent snapshot for the whole result — and hands rows to the caller
//! through a small bounded tokio channel: a slow client slows the query down instead of
//! making the node buffer a huge result. The threads are plain std threads fed by a crossbeam
//! channel, so tokio workers never block on SQLite.
//!
//! A query never holds its thread past its deadline, nor once nobody waits for it: the
//! progress handler (see `bounds.rs`) interrupts it at the deadline or as soon as the
//! receiver is dropped (even before its first row), waiting for room in the channel ends at
//! the deadline too (a client that stops reading), and a job whose receiver was dropped while
//! it waited in the queue is skipped.
//!
//! Admission is bounded: at most [`QUEUED_JOBS_PER_THREAD`] jobs per thread wait in the
//! queue; past that [`ReadPool::query`] refuses at once with [`DbError::Overloaded`] instead
//! of letting work pile up that would time out anyway. [`ReadPool::stuck_threads`] counts
//! threads still busy with a job past its deadline (normally none: the interrupt lands within
//! microseconds), which tells readiness whether the node can serve reads at all.

use super::authorizer::{
    is_explain, is_pragma, refuse_more_than_one_statement, Lockdown, Policy, READ_ONLY,
};
use super::bounds::{heap_nearly_full, Bounds, Stop};
use super::checkpoint::ReadGate;
use super::error::{DbError, Result};
use super::executor::CachedOrNot;
use super::value::{bind, ColumnInfo, SqlValue, Statement};
use super::DbOptions;
use rusqlite::{Connection, OpenFlags};
use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Chunks buffered between a pool thread and the consumer.
const CHANNEL_CHUNKS: usize = 2;
/// Jobs that may wait in the queue, per read thread.
pub const QUEUED_JOBS_PER_THREAD: usize = 4;
/// A chunk is sent early once its values reach about this many bytes, whatever `batch_rows`.
const MAX_CHUNK_BYTES: usize = 1 << 20;

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
    deadline: Option<Instant>,
    chunks: mpsc::Sender<Result<QueryChunk>>,
}

/// A pool of read-only connections on their own threads.
pub struct ReadPool {
    jobs: crossbeam_channel::Sender<Job>,
    busy: Arc<BusyThreads>,
}

impl ReadPool {
    /// Open `options.read_threads` read-only connections on `path` (at least one), whose
    /// read transactions begin at `gate`.
    pub(crate) fn open(path: &Path, options: &DbOptions, gate: Arc<ReadGate>) -> Result<ReadPool> {
        let threads = options.read_threads.max(1);
        let (jobs, rx) = crossbeam_channel::bounded::<Job>(threads * QUEUED_JOBS_PER_THREAD);
        let busy = Arc::new(BusyThreads::new(threads));
        for i in 0..threads {
            let mut conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_URI,
            )?;
            conn.busy_timeout(options.busy_timeout)?;
            conn.execute_batch("PRAGMA query_only=ON")?;
            let bounds = Bounds::install(&mut conn, options, options.reader_cache_kib)?;
            let lockdown = Lockdown::install(&mut conn, Policy::Reader, bounds.stop_check())?;
            let reader = Reader {
                conn,
                lockdown,
                bounds,
                gate: gate.clone(),
            };
            let rx = rx.clone();
            let busy = Arc::clone(&busy);
            std::thread::Builder::new()
                .name(format!("sqlite-read-{i}"))
                .spawn(move || {
                    for job in rx {
                        let _busy = busy.start(i, job.deadline);
                        reader.run(job);
                    }
                })
                .map_err(|e| DbError::Internal(format!("spawn read thread: {e}")))?;
        }
        Ok(ReadPool { jobs, busy })
    }

    /// Read threads (and connections) of the pool.
    pub fn threads(&self) -> usize {
        self.busy.slots.len()
    }

    /// Threads running a job right now.
    pub fn busy_threads(&self) -> usize {
        self.busy.count(|slot| slot != IDLE)
    }

    /// Threads still running a job whose deadline is before `now`: the interrupt has not
    /// landed (a lock wait, a long single step). When all threads are stuck, the node cannot
    /// serve reads. Pass a `now` a little in the past to allow for the interrupt's latency.
    pub fn stuck_threads(&self, now: Instant) -> usize {
        let now = self.busy.offset(now);
        self.busy
            .count(|slot| slot != IDLE && slot != NO_DEADLINE && slot - 1 < now)
    }

    /// Jobs waiting in the queue.
    pub fn queued(&self) -> usize {
        self.jobs.len()
    }

    /// Run a read-only statement on a pool thread and stream its rows.
    ///
    /// Rows arrive in chunks of at most `batch_rows` rows (fewer if they are large); the last
    /// chunk has `done` set. `max_rows` = 0 means no limit; otherwise the result stops after
    /// `max_rows` rows and the last chunk has `truncated` set if more rows existed. An error
    /// is the last item of the stream. Dropping the receiver cancels the query. Past
    /// `deadline` the query is interrupted and, if the channel has room, the stream ends with
    /// [`DbError::Timeout`].
    ///
    /// Fails at once, running nothing, with [`DbError::Overloaded`] when the queue is full.
    pub fn query(
        &self,
        statement: Statement,
        max_rows: u64,
        batch_rows: usize,
        deadline: Option<Instant>,
    ) -> Result<mpsc::Receiver<Result<QueryChunk>>> {
        let (chunks, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let job = Job {
            statement,
            max_rows,
            batch_rows: batch_rows.max(1),
            deadline,
            chunks,
        };
        match self.jobs.try_send(job) {
            Ok(()) => Ok(rx),
            Err(crossbeam_channel::TrySendError::Full(_)) => Err(DbError::Overloaded(format!(
                "{} queries already wait for this node's {} read threads; retry later or \
                 on another node",
                self.queued(),
                self.threads()
            ))),
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                Err(DbError::Internal("read pool has stopped".into()))
            }
        }
    }
}

/// `BusyThreads` slot of an idle thread.
const IDLE: u64 = 0;
/// `BusyThreads` slot of a thread running a job without a deadline.
const NO_DEADLINE: u64 = u64::MAX;

/// What each pool thread is doing, readable without locks: idle, busy without a deadline,
/// or busy with a job due at `epoch` + (slot - 1) nanoseconds.
struct BusyThreads {
    epoch: Instant,
    slots: Vec<AtomicU64>,
}

impl BusyThreads {
    fn new(threads: usize) -> BusyThreads {
        BusyThreads {
            epoch: Instant::now(),
            slots: (0..threads).map(|_| AtomicU64::new(IDLE)).collect(),
        }
    }

    fn offset(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(NO_DEADLINE - 2)
            .min(NO_DEADLINE - 2)
    }

    /// Mark thread `i` busy until the returned guard drops.
    fn start(&self, i: usize, deadline: Option<Instant>) -> BusyGuard<'_> {
        let slot = deadline.map_or(NO_DEADLINE, |d| self.offset(d) + 1);
        self.slots[i].store(slot, Ordering::Relaxed);
        BusyGuard(&self.slots[i])
    }

    fn count(&self, pred: impl Fn(u64) -> bool) -> usize {
        self.slots
            .iter()
            .filter(|s| pred(s.load(Ordering::Relaxed)))
            .count()
    }
}

struct BusyGuard<'a>(&'a AtomicU64);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.store(IDLE, Ordering::Relaxed);
    }
}

/// One pool thread's connection and what bounds it.
struct Reader {
    conn: Connection,
    lockdown: Arc<Lockdown>,
    bounds: Bounds,
    gate: Arc<ReadGate>,
}

impl Reader {
    fn run(&self, job: Job) {
        if job.chunks.is_closed() {
            return; // the consumer left while the job waited in the queue
        }
        let _reading = match self.gate.enter(job.deadline, || job.chunks.is_closed()) {
            Ok(reading) => reading,
            Err(e) => {
                let _ = send_until(&job.chunks, Err(e), job.deadline);
                return;
            }
        };
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
            // If the receiver is gone, or does not make room in time, nobody is left to tell.
            let _ = send_until(&job.chunks, Err(e), job.deadline);
        }
    }

    /// Reads the schema table in the open read transaction: a statement that reads a table
    /// checks the schema cookie first, so a schema changed since this connection last read is
    /// loaded again (`PRAGMA schema_version` reads the cookie without that check).
    fn current_schema(&self) -> Result<()> {
        let _guard = self.lockdown.internal();
        self.conn
            .prepare_cached(super::internal::internal_sql!(
                "SELECT 1 FROM main.sqlite_schema LIMIT 1"
            ))?
            .exists([])?;
        Ok(())
    }

    /// Stream the rows; returns Ok when done or when the receiver went away.
    fn stream_rows(&self, job: &Job) -> Result<()> {
        let consumer = job.chunks.clone();
        let scope = self.bounds.enter(
            &self.conn,
            job.deadline,
            Some(Box::new(move || consumer.is_closed())),
        )?;
        let client_error = |e| scope.client_error(e, &self.lockdown);
        self.lockdown.reset();
        refuse_more_than_one_statement(&self.conn, &job.statement.sql).map_err(client_error)?;
        let explain = is_explain(&job.statement.sql);
        // An EXPLAIN reads no table as it runs, so nothing would notice a schema changed since
        // this connection last read: reading the schema cookie first loads it again, and the
        // EXPLAIN is compiled afresh on it (a cached one describes the schema it was compiled
        // on).
        let mut stmt = match explain {
            true => {
                self.current_schema()?;
                let _explaining = self.lockdown.explaining();
                self.conn
                    .prepare(&job.statement.sql)
                    .map(CachedOrNot::Fresh)
            }
            false => self
                .conn
                .prepare_cached(&job.statement.sql)
                .map(CachedOrNot::Cached),
        }
        .map_err(client_error)?;
        // An EXPLAIN of a write runs none of it: it reads the schema to describe it.
        let described = explain && stmt.is_explain() > 0;
        if !stmt.readonly() && !described && !is_pragma(&job.statement.sql) {
            return Err(DbError::PermissionDenied(READ_ONLY.into()));
        }
        bind(&mut stmt, &job.statement.params).map_err(|e| scope.name_limit(e))?;
        let mut columns = ColumnInfo::of(&stmt);
        let width = columns.len();

        let mut rows = stmt.raw_query();
        let mut chunk: Vec<Vec<SqlValue>> = Vec::new();
        let mut chunk_bytes = 0usize;
        let mut sent: u64 = 0;
        loop {
            let row = rows.next().map_err(client_error)?;
            let Some(row) = row else {
                return send(job, std::mem::take(&mut columns), chunk, false, true);
            };
            if job.max_rows > 0 && sent == job.max_rows {
                return send(job, std::mem::take(&mut columns), chunk, true, true);
            }
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                let v = SqlValue::read(row.get_ref(i)?, i)?;
                chunk_bytes += v.size();
                values.push(v);
            }
            chunk.push(values);
            sent += 1;
            if chunk.len() >= job.batch_rows || chunk_bytes >= MAX_CHUNK_BYTES {
                let full = std::mem::take(&mut chunk);
                chunk_bytes = 0;
                send(job, std::mem::take(&mut columns), full, false, false)?;
            }
        }
    }
}

/// Send one chunk, waiting for room (backpressure) until the job's deadline. Ok if sent or
/// if the receiver is gone (the query just ends); past the deadline, the timeout.
fn send(
    job: &Job,
    columns: Vec<ColumnInfo>,
    rows: Vec<Vec<SqlValue>>,
    truncated: bool,
    done: bool,
) -> Result<()> {
    let chunk = QueryChunk {
        columns,
        rows,
        truncated,
        done,
    };
    match send_until(&job.chunks, Ok(chunk), job.deadline) {
        Ok(()) | Err(Stop::Cancelled) => Ok(()),
        Err(stop) => Err(stop.error(true)),
    }
}

/// How often a query parked on a slow client looks at SQLite's heap.
const HEAP_RECHECK: Duration = Duration::from_millis(100);

/// Send `item` from a std thread, waiting for room until `deadline` (forever without one).
/// The receiver going away ends the wait too. Needs no tokio runtime: the send future is
/// polled here, and its waker unparks this thread.
fn send_until<T>(
    channel: &mpsc::Sender<T>,
    item: T,
    deadline: Option<Instant>,
) -> std::result::Result<(), Stop> {
    let item = match channel.try_send(item) {
        Ok(()) => return Ok(()),
        Err(mpsc::error::TrySendError::Closed(_)) => return Err(Stop::Cancelled),
        Err(mpsc::error::TrySendError::Full(item)) => item,
    };
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut sending = pin!(channel.send(item));
    loop {
        match sending.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(())) => return Ok(()),
            Poll::Ready(Err(_)) => return Err(Stop::Cancelled),
            Poll::Pending => {
                // Parked on a slow client, the statement still holds its values: it gives
                // them up when SQLite's heap is nearly full (see `bounds::HEAP_RESERVE_BYTES`).
                if let Some((used, limit)) = heap_nearly_full() {
                    return Err(Stop::Memory(used, limit));
                }
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    return Err(Stop::Deadline);
                }
                let until_deadline = deadline.map_or(HEAP_RECHECK, |d| d - now);
                std::thread::park_timeout(until_deadline.min(HEAP_RECHECK));
            }
        }
    }
}

/// Wakes a std thread parked in [`send_until`].
struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}
