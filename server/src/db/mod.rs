//! The SQLite engine of a raftlite node: executes writes into page deltas, applies deltas,
//! serves reads, and builds consistent images. It knows nothing about Raft: the Raft layer
//! hands it committed deltas in log order and asks the leader's executor for new ones.
//!
//! ```text
//! leader:  WriteRequest batch ─► ExecutorHandle ─► ExecutedBatch { delta, outcomes }
//!                                  (BEGIN IMMEDIATE, SAVEPOINT per request, capture, then
//!                                   ROLLBACK, or kept open without a write pipeline)
//! Raft:    delta ─► log ─► committed on a majority
//! every node:  Database::apply(delta)  ─► Applier (sqlite_dbpage, one txn)
//!              (the leader's own batch kept open: committed in place instead)
//! reads:   Database::reads().query(.., deadline)  ─► ReadPool threads, streamed chunks
//! snapshots: Database::build_image / install_image
//! ```
//!
//! Files, one job each: `value` (SQL values and requests), `error`, `delta` (the delta type
//! and its wire codec), `capture` (changed pages of an open transaction), `apply` (writing
//! deltas and images), `executor` (the leader's write connection), `reader` (the read pool),
//! `snapshot` (images), `authorizer` (lock-down of client SQL), `bounds` (node settings, size,
//! memory and time bounds of client SQL), `tempfiles` (the VFS shim that bounds client SQL's
//! temporary files), `internal` (raftlite's own tables), `worker` (SQLite on std threads,
//! awaitable from tokio).
//!
//! # Key decisions and trade-offs
//!
//! * **Replicate pages, not statements.** Replicas are byte-identical whatever the SQL does
//!   (`random()`, time functions, triggers, planner choices). The price is bandwidth: a delta
//!   carries every page a transaction touched, and random-key index inserts touch many. A page
//!   the base database has travels as a patch (the byte runs that differ, checked against
//!   CRCs of the base and new images on apply) when that is under half a page: a 1-row insert
//!   changes tens of bytes of each 4 KiB page (`delta`).
//! * **Capture, then roll back or hold.** The leader never commits what Raft has not; every
//!   node changes its database only once a delta is committed. A leader crash can therefore
//!   never leave uncommitted data behind. With the write pipeline the leader rolls back and
//!   applies the delta later like any node, doing the write work twice (1.3–2x a plain commit
//!   in the spike). Without it (the default) the leader holds the batch's transaction open
//!   until the delta is committed and then commits it in place: the same pages, no second
//!   pass (about 10 % less CPU and latency per 1-row write, BENCHMARKS.md, session 8). A delta
//!   that is not the open batch's rolls the batch back first. The write path commits it the
//!   moment it hears of the commit, before the delta's apply comes
//!   ([`ExecutorHandle::commit_early`]); that apply then finds it done (the gate's record of
//!   deltas ahead of their apply) and writes nothing.
//! * **Page numbers from the wal-index, contents from `sqlite_dbpage`**, page 1 diffed
//!   separately — the only capture method that survived cache spills and rolled-back frames
//!   in the spike. It relies on WAL mode and SQLite's documented wal-index layout; the
//!   executor's authorizer keeps clients from switching either off.
//! * **A version counter inside the database** (`_raftlite_meta`), bumped in every delta.
//!   Apply is idempotent under replay and refuses deltas captured on a different state,
//!   without any state outside the replicated file. The Raft layer must still execute a batch
//!   only after the previous delta was applied locally, or on top of it (the write pipeline,
//!   `chain.rs`, whose deltas name their parent's tag), or the new delta is stale (skipped).
//! * **Request ids live in the same database** (`_raftlite_requests`), written in the same
//!   transaction and delta as the request's changes (after the batch's requests ran), so
//!   dedup survives failover exactly as far as the data does. Ids are pruned after 24 hours,
//!   a few at a time inside regular batches.
//! * **One savepoint per request** inside one transaction per batch: group commit for
//!   throughput, but a failing request fails alone.
//! * **VACUUM as a full image** (`VACUUM INTO` a temporary file): VACUUM cannot run inside
//!   the captured transaction. Costs a delta the size of the whole database.
//! * **Dedicated threads for every connection**, fed by channels: rusqlite blocks, tokio
//!   workers must not. Applies run strictly in submission order on one thread.
//! * **Only the applier commits, with `synchronous=NORMAL`**, and the executor, only a batch
//!   whose delta Raft committed (commit in place, same setting); readers never write. An applied delta survives a process crash once `apply` returns, but
//!   not necessarily a power loss: WAL mode syncs at checkpoints, so the file may then lack the
//!   last applies. The Raft log is the durable copy (fsynced before a write is acknowledged):
//!   the state machine notices the older database by its recorded version and replays the log
//!   from the last snapshot (see `apply` and `raft::state_machine`).
//! * **Fixed 4096-byte pages, `auto_vacuum=NONE`.** All replicas must share the page size
//!   (checked on apply); auto-vacuum would re-run btree logic over raw-written pages.
//! * **Clients share connections, so nothing a client sends may outlive its request or grow
//!   without limit.** PRAGMAs are an allow-list and the SQL settings users need
//!   (`foreign_keys`, `recursive_triggers`) are node settings, fixed at open (`authorizer`,
//!   `bounds`). Values are capped by `max_value_bytes` (`SQLITE_LIMIT_LENGTH`), temporary data
//!   spills to files of bounded size (`tempfiles`), page caches are sized, and SQLite's
//!   process-wide heap has a last-guard limit derived from those (`bounds`). The price: a
//!   value or row above the limit cannot be written or read, a statement that needs more
//!   temporary space fails, and per-connection memory is bounded only indirectly.
//! * **Deadlines are enforced inside SQLite.** A progress handler interrupts a client
//!   statement past its request's deadline ([`WriteRequest::deadline`], the `deadline` of
//!   [`ReadPool::query`]) or once a query's receiver is dropped, so an abandoned or endless
//!   statement frees the executor or its read thread within microseconds instead of running
//!   on after its client left. An interrupted request fails alone with [`DbError::Timeout`].
//! * **Reads are admitted, not queued without end.** The read queue holds a few jobs per
//!   thread; beyond, a query is refused at once with [`DbError::Overloaded`], and
//!   [`ReadPool::stuck_threads`] tells readiness when no thread can take a read.

mod answers;
mod apply;
mod authorizer;
mod bounds;
mod capture;
mod chain;
mod checkpoint;
mod delta;
mod error;
mod executor;
mod functions;
mod internal;
mod reader;
mod snapshot;
mod tempfiles;
mod value;
mod worker;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

pub use answers::{AnswerBytes, AnswerHold, ClientAnswers, MAX_HELD_ANSWER_BYTES, UNREAD_GRACE};
pub use apply::{Applier, ApplyOutcome};
pub(crate) use authorizer::statement_start;
pub use bounds::SQLITE_MAX_LENGTH;
pub use chain::Link;
pub(crate) use delta::{follows, peek_lineage, peek_tag, Lineage};
pub use delta::{PageDelta, PageImage, PagePatch};
pub use error::{DbError, Result};
pub use executor::{
    is_vacuum, runs_alone, ExecutedBatch, Executor, Pipeline, TransactionStep, WriteGate,
    WriteOutcome,
};
pub use reader::{QueryChunk, ReadPool, QUEUED_JOBS_PER_THREAD};
pub use snapshot::{build_image, dump_pages, image_state, ImageInfo};
pub use value::{
    ColumnInfo, Params, SqlValue, Statement, StatementOutcome, WriteRequest, MAX_RESULT_BYTES,
};

use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use worker::Worker;

/// Page size of databases raftlite creates.
pub const PAGE_SIZE: u32 = 4096;

/// Tuning of a [`Database`].
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Threads (and connections) of the read pool.
    pub read_threads: usize,
    /// How long a connection waits for a lock held by another one (e.g. the executor's write
    /// transaction while the applier wants to write).
    pub busy_timeout: Duration,
    /// Page cache of the executor connection; larger transactions spill to the WAL.
    pub executor_cache_kib: u32,
    /// Page cache of each read connection.
    pub reader_cache_kib: u32,
    /// Largest string, blob or row a client statement may build, bind or read
    /// (`SQLITE_LIMIT_LENGTH`); at most [`SQLITE_MAX_LENGTH`]. See `bounds.rs`.
    pub max_value_bytes: usize,
    /// `PRAGMA foreign_keys` of every connection that runs client SQL. On by default: the
    /// bundled SQLite is built with `SQLITE_DEFAULT_FOREIGN_KEYS=1`, and raftlite has always
    /// enforced foreign keys.
    pub foreign_keys: bool,
    /// `PRAGMA recursive_triggers` of every connection that runs client SQL (off by default,
    /// as in SQLite).
    pub recursive_triggers: bool,
    /// Set SQLite's process-wide hard heap limit to [`DbOptions::heap_limit_bytes`] when the
    /// database opens (raised, never lowered, if the process already has a higher one).
    pub limit_process_heap: bool,
    /// Most page bytes one executed batch may capture; over it the batch fails with
    /// [`DbError::TooLarge`] before its pages are read (the caller re-runs its requests one by
    /// one, so only the one too large fails).
    pub max_delta_bytes: usize,
    /// Largest temporary file (a sort, grouping, materialized subquery, statement journal) a
    /// client statement may write; over it the statement fails with [`DbError::TooLarge`].
    /// Default 256 MiB; keep it above `max_delta_bytes` (a write's statement journal holds the
    /// original of each page it changes). See `tempfiles.rs`.
    pub max_temp_file_bytes: u64,
    /// The node's unread answers (see `answers.rs`): the executor refuses rows beyond their
    /// room. Shared with whatever holds the answers until they are sent.
    pub answers: std::sync::Arc<AnswerBytes>,
    /// WAL frames (pages) past which new reads wait while those in flight end, so that the
    /// WAL can restart (see `checkpoint.rs`). Keep it above the commits' backstop,
    /// `checkpoint::BACKSTOP_FRAMES`: the backstop's checkpoint is what lets the next write
    /// restart it.
    pub max_wal_frames: u32,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            read_threads: 4,
            busy_timeout: Duration::from_secs(30),
            executor_cache_kib: 8 * 1024,
            reader_cache_kib: 2 * 1024,
            max_value_bytes: 64 * 1024 * 1024,
            foreign_keys: true,
            recursive_triggers: false,
            limit_process_heap: false,
            max_delta_bytes: 64 * 1024 * 1024,
            max_temp_file_bytes: tempfiles::MAX_TEMP_FILE_BYTES,
            answers: std::sync::Arc::default(),
            max_wal_frames: checkpoint::MAX_WAL_FRAMES,
        }
    }
}

/// Heap allowance, beyond page caches and client values, for everything else SQLite holds:
/// the applier and image connections, schemas, prepared statements, lookaside.
const HEAP_BASE_BYTES: u64 = 64 * 1024 * 1024;
/// How long an apply waits in all for client statements to free SQLite's heap (see
/// [`Database::apply`]) before its failure stops the node: longer than a query may run.
pub const APPLY_OUT_OF_MEMORY_PATIENCE: Duration = Duration::from_secs(120);
/// Maximum-size values a connection that runs client SQL may hold at once under the heap
/// limit (a normal statement needs three: the value, its record, a copy).
const HEAP_VALUES_PER_CONNECTION: u64 = 4;

impl DbOptions {
    /// The process-wide SQLite heap limit for these options (see `bounds.rs`): a fixed base,
    /// the page caches, and four maximum-size values for the executor and each reader.
    pub fn heap_limit_bytes(&self) -> u64 {
        let threads = self.read_threads.max(1) as u64;
        let caches = (u64::from(self.executor_cache_kib)
            + threads * u64::from(self.reader_cache_kib))
            * 1024;
        let values = (threads + 1)
            * HEAP_VALUES_PER_CONNECTION
            * self.max_value_bytes.min(SQLITE_MAX_LENGTH) as u64;
        HEAP_BASE_BYTES + caches + values
    }
}

/// One node's SQLite database: the applier, the read pool, and the means to open the
/// leader's executor.
pub struct Database {
    path: PathBuf,
    options: DbOptions,
    gate: WriteGate,
    applier: Worker<Applier>,
    reads: ReadPool,
    /// The executor, when it keeps batches open for their commit in place: a delta it
    /// executed is committed there rather than applied (see [`Database::apply`]).
    in_place: std::sync::Mutex<Option<Worker<Executor>>>,
    checkpointer: checkpoint::Checkpointer,
    /// Where reads begin: images' too (see [`checkpoint::ReadGate`]).
    read_gate: std::sync::Arc<checkpoint::ReadGate>,
}

impl Database {
    /// Open (or create) the database file and start its applier and read threads. Blocks
    /// briefly on file I/O; call it at startup or from `spawn_blocking`.
    pub fn open(path: impl AsRef<Path>, options: DbOptions) -> Result<Database> {
        let path = path.as_ref().to_path_buf();
        // Before the first connection: a connection keeps the VFS it was opened with.
        tempfiles::install();
        if options.limit_process_heap {
            bounds::raise_heap_limit(options.heap_limit_bytes());
        }
        prepare_file(&path, options.busy_timeout)?;
        let applier = Applier::open(&path, options.busy_timeout)?;
        checkpoint::leave_to_checkpointer(applier.connection())?;
        let gate = applier.gate();
        let applier = Worker::spawn("sqlite-applier", applier)?;
        let read_gate = std::sync::Arc::new(checkpoint::ReadGate::default());
        let reads = ReadPool::open(&path, &options, read_gate.clone())?;
        let checkpointer =
            checkpoint::Checkpointer::start(&path, read_gate.clone(), options.max_wal_frames)?;
        Ok(Database {
            path,
            options,
            gate,
            applier,
            reads,
            in_place: Default::default(),
            checkpointer,
            read_gate,
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Apply a committed delta (in log order). See [`Applier::apply`].
    ///
    /// On the leader, the batch that produced the delta may still be open on the executor
    /// (see [`Executor::commit_in_place`]): it is committed there, which leaves the database
    /// exactly as applying the delta would (every page the delta carries, with the same bytes;
    /// page 1's change counter, each file's own, aside) at a fraction of the cost. Any other
    /// open batch, or an interactive transaction (a deposed leader's, see
    /// [`Executor::make_way_for_applier`]), is rolled back first and the delta applied. A
    /// batch the write path committed in place already (see [`ExecutorHandle::commit_early`])
    /// is done: nothing is written.
    ///
    /// When SQLite's heap is at its limit (client statements filled it: their values count
    /// against the same process-wide limit), the apply is retried, waiting up to
    /// [`APPLY_OUT_OF_MEMORY_PATIENCE`] in all for them to end and free it; a failed apply
    /// changed nothing (it rolls back). An apply that failed so was fatal to the node.
    pub async fn apply(&self, delta: Arc<PageDelta>) -> Result<ApplyOutcome> {
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            match self.apply_once(delta.clone()).await {
                Err(DbError::Overloaded(reason))
                    if started.elapsed() < APPLY_OUT_OF_MEMORY_PATIENCE =>
                {
                    tracing::warn!(%reason, version = delta.base_version,
                        "apply: SQLite's memory is full (client statements hold it); retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                outcome => return outcome,
            }
        }
    }

    async fn apply_once(&self, delta: Arc<PageDelta>) -> Result<ApplyOutcome> {
        // A delta committed in place ahead of its apply needs no trip to another thread. Only if
        // the gate is free now: this runs on the node's runtime, and the executor holds the gate
        // through a whole batch, which may run for seconds (a wait here stopped the leader's
        // heartbeats until it lost its leadership). Both paths below check again.
        if self
            .gate
            .try_hold()
            .is_some_and(|mut held| held.take_ahead(&delta))
        {
            return Ok(ApplyOutcome::Applied);
        }
        self.past_open_batch(
            || {
                let delta = delta.clone();
                move |e: &mut Executor| {
                    Ok(e.commit_in_place(&delta)?.then_some(ApplyOutcome::Applied))
                }
            },
            || {
                let delta = delta.clone();
                move |a: &mut Applier| a.apply_unless_batch_open(&delta)
            },
        )
        .await
    }

    /// The node's unread answers (see `answers.rs`), which bound the rows its writes return.
    pub fn answers(&self) -> &std::sync::Arc<AnswerBytes> {
        &self.options.answers
    }

    /// Whether new reads wait for those in flight to end, so that the WAL can restart (see
    /// `checkpoint.rs`).
    pub fn reads_held_for_wal(&self) -> bool {
        self.read_gate.is_closed()
    }

    /// Frames in the WAL at the checkpointer's last checkpoint, and how many of its
    /// checkpoints failed (see `checkpoint.rs`).
    pub fn wal_status(&self) -> (u64, u64) {
        (self.checkpointer.wal_frames(), self.checkpointer.failures())
    }

    /// How many deltas [`Database::apply`] committed in place (the rest were applied).
    pub fn committed_in_place(&self) -> u64 {
        self.gate.committed_in_place()
    }

    /// Replace the whole database with the image file at `path`. See
    /// [`Applier::install_image`].
    pub async fn install_image(&self, path: PathBuf) -> Result<()> {
        self.past_open_batch(
            || |e: &mut Executor| e.make_way_for_applier().map(|()| None),
            || {
                let path = path.clone();
                move |a: &mut Applier| a.install_image_unless_batch_open(&path)
            },
        )
        .await
    }

    /// A write through the applier, once the executor's open batch is out of its way: while
    /// one is open, `on_executor` runs there first (it commits the batch in place, which may
    /// finish the write, or ends it; it ends an interactive transaction, which the gate records
    /// as an open batch); then `on_applier`, which does nothing while a batch is open. Each
    /// round ends the batch open when it began; a new one opens only once the log is applied
    /// (the batcher settles first), so the second round writes.
    async fn past_open_batch<R, E, A>(
        &self,
        on_executor: impl Fn() -> E,
        on_applier: impl Fn() -> A,
    ) -> Result<R>
    where
        R: Send + 'static,
        E: FnOnce(&mut Executor) -> Result<Option<R>> + Send + 'static,
        A: FnOnce(&mut Applier) -> Result<Option<R>> + Send + 'static,
    {
        for _ in 0..OPEN_BATCH_ROUNDS {
            if self.gate.batch_open() {
                if let Some(done) = self.executor_call(on_executor()).await? {
                    return Ok(done);
                }
            }
            if let Some(done) = self.applier.call(on_applier()).await? {
                return Ok(done);
            }
        }
        Err(batch_stays_open())
    }

    /// Run `f` on the executor that keeps batches open; an error if there is none (then no
    /// batch can be open).
    async fn executor_call<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Executor) -> Result<R> + Send + 'static,
    {
        let executor = self
            .in_place
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| DbError::Internal("a batch is open but no executor holds it".into()))?;
        executor.call(f).await
    }

    /// Whether the database holds nothing: no delta applied and no table but raftlite's own
    /// (a new node's file).
    pub async fn is_empty(&self) -> Result<bool> {
        self.applier
            .call(|applier| {
                let (version, _) = applier.state()?;
                let tables: i64 = applier.connection().query_row(
                    "SELECT count(*) FROM sqlite_schema \
                     WHERE substr(name, 1, 7) != 'sqlite_' AND substr(name, 1, 10) != '_raftlite_'",
                    [],
                    |r| r.get(0),
                )?;
                Ok(version == 0 && tables == 0)
            })
            .await
    }

    /// The database's version counter (number of deltas applied since creation).
    pub async fn version(&self) -> Result<u64> {
        Ok(self.state().await?.0)
    }

    /// The database's version counter and the tag of its last delta (see `delta.rs`).
    pub async fn state(&self) -> Result<(u64, u64)> {
        self.applier.call(|applier| applier.state()).await
    }

    /// The read pool.
    pub fn reads(&self) -> &ReadPool {
        &self.reads
    }

    /// Open the executor (leader only; one at a time) on its own thread.
    pub fn open_executor(&self) -> Result<ExecutorHandle> {
        self.open_executor_with_links(true)
    }

    /// [`Database::open_executor`]; `links`: whether its batches return links for the write
    /// pipeline (only a pipeline deeper than one uses them). Without links, the leader commits
    /// each batch in place once its delta is committed (see [`Database::apply`]).
    pub fn open_executor_with_links(&self, links: bool) -> Result<ExecutorHandle> {
        let mut in_place = self.in_place.lock().unwrap_or_else(|p| p.into_inner());
        if !links && in_place.is_some() {
            // Its open batch could only be ended by itself.
            return Err(DbError::Internal(
                "an executor that commits in place is already open on this database".into(),
            ));
        }
        let mut executor = Executor::open(&self.path, &self.options)?;
        executor.share_gate(self.gate.clone());
        executor.keep_links(links);
        executor.commit_batches_in_place(!links);
        let worker = Worker::spawn("sqlite-executor", executor)?;
        if !links {
            *in_place = Some(worker.clone());
        }
        Ok(ExecutorHandle { worker })
    }

    /// Write a consistent image of the database to `dest` (on a blocking thread).
    pub async fn build_image(&self, dest: PathBuf) -> Result<ImageInfo> {
        let path = self.path.clone();
        let gate = self.read_gate.clone();
        tokio::task::spawn_blocking(move || {
            let _reading = gate.enter_image();
            build_image(&path, &dest)
        })
        .await
        .map_err(|e| DbError::Internal(format!("image task failed: {e}")))?
    }
}

/// The leader's [`Executor`], running on its own thread. Clones share it.
#[derive(Clone)]
pub struct ExecutorHandle {
    worker: Worker<Executor>,
}

impl ExecutorHandle {
    /// See [`Executor::execute_batch`].
    pub async fn execute_batch(&self, batch: Vec<WriteRequest>) -> Result<ExecutedBatch> {
        self.worker
            .call(move |executor| executor.execute_batch(&batch))
            .await
    }

    /// See [`Executor::execute_batch_on`]. Runs on the calling thread, and blocks it: the
    /// write batcher's own (see `node::write_path::spawn_batcher`).
    /// `ran_ahead`: how many of the batch's first requests were given to
    /// [`ExecutorHandle::run_ahead`] already (`batch` is the rest; the pipeline is then
    /// `Settled`).
    pub fn execute_batch_on(
        &self,
        batch: Vec<WriteRequest>,
        pipeline: Pipeline,
        ran_ahead: usize,
    ) -> Result<ExecutedBatch> {
        // On the batcher's own thread: a batch's two hand-offs to the executor thread and
        // back took about 130 µs of a 1-row write (BENCHMARKS.md, session 10).
        self.worker.call_here(move |executor| {
            let started = std::time::Instant::now();
            let executed = match ran_ahead {
                0 => executor.execute_batch_on(&batch, pipeline),
                n => executor.execute_batch_after(n, batch),
            };
            tracing::debug!(
                on_thread_us = started.elapsed().as_micros() as u64,
                "write batch executed"
            );
            executed
        })
    }

    /// See [`Executor::run_ahead`]. Runs on the calling thread, like
    /// [`ExecutorHandle::execute_batch_on`].
    pub fn run_ahead(&self, requests: Vec<WriteRequest>) -> Result<()> {
        self.worker
            .call_here(move |executor| executor.run_ahead(requests))
    }

    /// See [`Executor::commit_early`]. Runs on the calling thread, like
    /// [`ExecutorHandle::execute_batch_on`].
    pub fn commit_early(&self, tag: u64, base_version: u64) -> Result<bool> {
        self.worker
            .call_here(move |executor| executor.commit_early(tag, base_version))
    }

    /// See [`Executor::execute_vacuum`].
    pub async fn execute_vacuum(&self) -> Result<ExecutedBatch> {
        self.worker.call(|executor| executor.execute_vacuum()).await
    }

    /// See [`Executor::execute_alone`].
    pub async fn execute_alone(&self, request: WriteRequest) -> Result<ExecutedBatch> {
        self.worker
            .call(move |executor| executor.execute_alone(&request))
            .await
    }

    /// See [`Executor::begin`].
    pub async fn begin(&self) -> Result<()> {
        self.worker.call(|executor| executor.begin()).await
    }

    /// See [`Executor::transaction_execute`].
    pub async fn transaction_execute(
        &self,
        statements: Vec<Statement>,
        deadline: Option<std::time::Instant>,
    ) -> Result<TransactionStep> {
        self.transaction_execute_within(statements, deadline, None)
            .await
    }

    /// [`ExecutorHandle::transaction_execute`], returning at most `max_result_bytes` of rows
    /// (the room of the node that holds the answer).
    pub async fn transaction_execute_within(
        &self,
        statements: Vec<Statement>,
        deadline: Option<std::time::Instant>,
        max_result_bytes: Option<usize>,
    ) -> Result<TransactionStep> {
        self.worker
            .call(move |executor| {
                executor.transaction_execute_within(&statements, deadline, max_result_bytes)
            })
            .await
    }

    /// See [`Executor::commit`].
    pub async fn commit(&self, request_id: String) -> Result<Option<PageDelta>> {
        self.worker
            .call(move |executor| executor.commit(&request_id))
            .await
    }

    /// See [`Executor::request_recorded`].
    pub async fn request_recorded(&self, request_id: String) -> Result<bool> {
        self.worker
            .call(move |executor| executor.request_recorded(&request_id))
            .await
    }

    /// See [`Executor::end_open_batch`].
    pub async fn end_open_batch(&self) -> Result<()> {
        self.worker.call(|executor| executor.end_open_batch()).await
    }

    /// See [`Executor::rollback`].
    pub async fn rollback(&self) -> Result<()> {
        self.worker.call(|executor| executor.rollback()).await
    }
}

/// Rounds of [`Database::past_open_batch`] before it gives up.
const OPEN_BATCH_ROUNDS: usize = 8;

fn batch_stays_open() -> DbError {
    DbError::Internal("the executor's open batch could not be ended".into())
}

/// Create the file if needed and put it into the shape every connection relies on.
fn prepare_file(path: &Path, busy_timeout: Duration) -> Result<()> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(busy_timeout)?;
    // The page size is fixed once the file is in WAL mode: set it first (a no-op for an
    // existing database).
    conn.execute_batch(&format!("PRAGMA page_size = {PAGE_SIZE}"))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(DbError::Internal(format!(
            "could not switch {} to WAL (got {mode})",
            path.display()
        )));
    }
    let auto_vacuum: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
    if auto_vacuum != 0 {
        return Err(DbError::InvalidArgument(format!(
            "{} uses auto_vacuum; raftlite needs auto_vacuum=NONE (run VACUUM after PRAGMA auto_vacuum=NONE)",
            path.display()
        )));
    }
    Ok(())
}
