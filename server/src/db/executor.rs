//! [`Executor`]: the leader's write connection. Runs a batch of client writes and turns it
//! into a [`PageDelta`] without committing anything.
//!
//! One batch = one `BEGIN IMMEDIATE` … capture … `ROLLBACK`:
//! * each request runs inside its own `SAVEPOINT`, so a failing request is rolled back alone
//!   and gets its own error while the others go on (group commit without shared fate);
//! * the ids of the requests that executed are inserted with their results into
//!   `_raftlite_requests` at the end of the batch, in the same transaction, so they travel in
//!   the same delta as the data: a retried id is answered from the table (or, within one
//!   batch, from the earlier request's results: [`WriteOutcome::Duplicate`]) instead of being
//!   applied twice;
//! * the version counter in `_raftlite_meta` is bumped once per batch that executed something,
//!   and the delta carries the old value as `base_version` (see `internal.rs`).
//!
//! The executor commits nothing Raft has not committed: a batch's transaction is rolled back,
//! and the database only changes when the delta is applied once Raft committed it. Without a
//! write pipeline (`write_pipeline_depth` 1, the default) the leader instead keeps the batch's
//! transaction open until then and commits it in place ([`Executor::commit_in_place`]): the
//! same pages, without laying them again. A leader that dies mid-batch leaves nothing behind
//! either way: an open transaction dies with its connection.
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

use super::answers::{AnswerBytes, AnswerHold};
use super::authorizer::{
    first_word_is, is_pragma, is_savepoint_control, refuse_more_than_one_statement,
    statement_start, Lockdown, Policy,
};
use super::bounds::{Bounds, ClientScope};
use super::capture::{self, CaptureStart};
use super::chain::{Chain, Link, Overlay};
use super::delta::{PageDelta, PageImage};
use super::error::{DbError, Result};
use super::internal::{self, internal_sql, is_internal_table};
use super::value::{
    bind, ColumnInfo, SqlValue, Statement, StatementOutcome, WriteRequest, MAX_RESULT_BYTES,
};
use super::DbOptions;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Request ids are remembered this long.
const REQUEST_ID_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// Prune old request ids once every this many executed batches...
pub(super) const PRUNE_EVERY_BATCHES: u32 = 128;
/// ...looking at this many of the oldest ids each time, or twice as many as were recorded
/// since the last time if that is more: pruning keeps pace with any write rate, at a cost
/// per recorded id that stays bounded.
const PRUNE_LIMIT: u32 = 1000;
/// Client statements kept prepared between batches.
const STATEMENT_CACHE: usize = 256;
/// Client SQL texts remembered as schema changes (see [`Executor::changed_schema`]); past it
/// they are forgotten together with the statement cache.
const MAX_SCHEMA_SQL: usize = 1024;
/// Savepoint wrapped around each request, in a batch or a transaction.
const SAVEPOINT: &str = internal_sql!("SAVEPOINT raftlite_request");
const RELEASE: &str = internal_sql!("RELEASE raftlite_request");
const ROLLBACK_TO: &str = internal_sql!("ROLLBACK TO raftlite_request");
const VACUUM_ALONE: &str = "VACUUM must be sent alone";
const VACUUM_INTO: &str =
    "VACUUM INTO is not allowed (it would write a file on the server); send a plain VACUUM";
/// Most bytes of returned rows one group commit holds at once (its requests' answers wait for
/// the commit together); a request past it fails alone with a retryable error.
const MAX_BATCH_RESULT_BYTES: usize = 64 << 20;

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
#[derive(Debug)]
pub struct ExecutedBatch {
    /// `None` when every request failed or was a duplicate: nothing to replicate.
    pub delta: Option<PageDelta>,
    pub outcomes: Vec<WriteOutcome>,
    /// When the delta may have the next batch executed on top of it before it is applied:
    /// hand it back in [`Pipeline::OnTop`] once the delta is proposed.
    pub link: Option<Link>,
    /// The bytes of rows the outcomes return to clients of this node, counted in its unread
    /// answers: keep it until the requests' handlers hold their answers (the rows exist while
    /// the delta replicates, and the next batches must find that room taken).
    pub rows_held: Option<AnswerHold>,
}

/// What a batch is executed on (see `chain.rs`).
#[derive(Debug)]
pub enum Pipeline {
    /// The database as committed: nothing is in flight (every delta proposed is applied or
    /// known to be lost).
    Settled,
    /// The committed database with the deltas still in flight on top: those handed in before,
    /// not yet applied, and this link (the previous batch's delta, just proposed).
    OnTop(Option<Link>),
}

/// The bytes of the rows `outcomes` return, as the executor counts them against its budget.
fn rows_bytes(outcomes: &[StatementOutcome]) -> usize {
    outcomes
        .iter()
        .flat_map(|s| s.rows.iter().flatten())
        .map(SqlValue::size)
        .sum()
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

/// The error for a request that holds a VACUUM among other statements (or `VACUUM INTO`).
fn refuse_vacuum(statements: &[Statement]) -> Option<DbError> {
    if !statements.iter().any(|s| starts_with_vacuum(&s.sql)) {
        return None;
    }
    let into = statements.iter().any(|s| {
        s.sql
            .split_whitespace()
            .nth(1)
            .is_some_and(|w| w.eq_ignore_ascii_case("into"))
    });
    Some(if into {
        DbError::PermissionDenied(VACUUM_INTO.into())
    } else {
        DbError::InvalidArgument(VACUUM_ALONE.into())
    })
}

/// True for a request that runs alone, on the committed state, through
/// [`Executor::execute_alone`]: a VACUUM, or a request without foreign keys.
pub fn runs_alone(request: &WriteRequest) -> bool {
    is_vacuum(request) || without_foreign_keys(request)
}

/// True for a request whose first statement is `PRAGMA foreign_keys = OFF` (or `0`, `false`,
/// `no`; `main.` and the `foreign_keys(off)` form too): SQLite's way to rebuild a table that
/// other tables reference. Such a request must go to
/// [`Executor::execute_without_foreign_keys`], alone.
pub fn without_foreign_keys(request: &WriteRequest) -> bool {
    request
        .statements
        .first()
        .is_some_and(|s| sets_foreign_keys(&s.sql) == Some(false))
}

/// `Some(on)` when `sql` is `PRAGMA [main.]foreign_keys = value` or `foreign_keys(value)`
/// with a boolean value SQLite knows; `None` for any other statement.
fn sets_foreign_keys(sql: &str) -> Option<bool> {
    // Every write request passes here: nothing is copied unless it is a PRAGMA.
    if !is_pragma(sql) {
        return None;
    }
    let text = statement_start(sql)
        .trim_end()
        .trim_end_matches(';')
        .to_ascii_lowercase();
    let rest = text.strip_prefix("pragma")?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let rest = rest.trim_start();
    let rest = rest.strip_prefix("main.").unwrap_or(rest).trim_start();
    let rest = rest.strip_prefix("foreign_keys")?.trim_start();
    let value = match rest.strip_prefix('=') {
        Some(value) => value.trim(),
        None => rest.strip_prefix('(')?.strip_suffix(')')?.trim(),
    };
    match value.trim_matches(|c| c == '\'' || c == '"') {
        "0" | "off" | "false" | "no" => Some(false),
        "1" | "on" | "true" | "yes" => Some(true),
        _ => None,
    }
}

/// True if the statement's first keyword is VACUUM (ignoring leading whitespace/comments).
fn starts_with_vacuum(sql: &str) -> bool {
    first_word_is(sql, "vacuum") || statement_start(sql).eq_ignore_ascii_case("vacuum")
}

/// The leader's write connection. See the module docs.
pub struct Executor {
    conn: Connection,
    /// Read-only connection to the same database: the committed pages a delta's patches are
    /// computed against (see `capture`). Runs no client SQL.
    base: Connection,
    lockdown: Arc<Lockdown>,
    /// Keyed hashes of the client SQL texts whose compilation changed the schema (see
    /// [`Executor::changed_schema`]).
    schema_sql: RefCell<HashSet<u64>>,
    schema_sql_keys: RandomState,
    bounds: Bounds,
    db_path: PathBuf,
    batches_since_prune: Cell<u32>,
    /// Request ids recorded since the last prune (see [`PRUNE_LIMIT`]).
    ids_since_prune: Cell<u32>,
    max_delta_bytes: usize,
    /// Bytes of returned rows the request being run may still return: the least of what is
    /// left of the batch's (`batch_left`) and the room of the node that will hold its answer.
    result_budget: usize,
    /// Bytes of returned rows the current batch may still hold, whoever holds the answers.
    batch_left: usize,
    /// The room this node's unread answers leave, less what this batch returned to clients
    /// of this node (a follower's forwarded write brings the room of its own).
    local_room: usize,
    /// Bytes of rows the current batch returned to clients of this node.
    local_returned: usize,
    /// Whether the request being run answers a client of this node (its budget is cut to
    /// `local_room`, not to a forwarding follower's room).
    room_is_local: bool,
    /// Room that connections closed for their unread answers gave the request being run
    /// ([`Executor::fits`]), not yet added to `result_budget` and `local_room`.
    gained_room: Cell<usize>,
    /// The node's unread answers, whose room bounds what a batch may return.
    answers: Arc<AnswerBytes>,
    /// The interactive transaction open on this connection, if any.
    transaction: Option<OpenTransaction>,
    /// Deltas proposed and not yet applied, which batches are executed on top of.
    chain: Chain,
    /// Taken with the applier's around each batch (see [`WriteGate`]).
    gate: WriteGate,
    /// How many frames the connection's `-wal` file holds, for capture (see `capture`).
    wal_bound: capture::WalBound,
    /// Whether batches return a [`Link`] (a write pipeline deeper than one uses them).
    links: bool,
    /// Whether a batch's transaction stays open until its delta is committed, to be committed
    /// in place (see [`Executor::commit_in_place`]) instead of rolled back and applied.
    in_place: bool,
    /// The batch this connection keeps open for its commit in place: its delta's tag and base
    /// version.
    open_batch: Option<(u64, u64)>,
    /// The next batch's requests run so far while the batcher still gathers its writers (see
    /// [`Executor::run_ahead`]).
    ahead: Option<Ahead>,
    /// The node's `foreign_keys` setting, which every transaction but one
    /// [`Executor::execute_without_foreign_keys`] runs starts with.
    foreign_keys: bool,
    /// The connection has foreign keys off since such a request: set back before the next
    /// transaction begins (a PRAGMA inside one does nothing).
    foreign_keys_changed: bool,
    /// Such a request is running (its end checks the foreign keys when the node enforces
    /// them).
    without_foreign_keys: bool,
    /// Why the last interactive transaction was rolled back from outside (see
    /// [`Executor::make_way_for_applier`]): what its next call hears.
    transaction_aborted: Option<String>,
}

/// The requests of a batch run before the batch is complete ([`Executor::run_ahead`]).
#[derive(Default)]
struct Ahead {
    requests: Vec<WriteRequest>,
    fatal: Vec<Option<DbError>>,
    /// The attempt holding their changes; `None` once rolled back (something else needed the
    /// connection, or a request failed it): the whole batch then runs again.
    run: Option<Run>,
}

/// One attempt at a batch: its open transaction, and what its requests did so far.
struct Run {
    open: OpenTransaction,
    outcomes: Vec<WriteOutcome>,
    executed_any: bool,
    now_ms: i64,
    /// Ids of the requests executed so far, each with its outcome's index: recorded in
    /// `_raftlite_requests` once they all ran (see [`Executor::record_request_ids`]).
    executed_ids: HashMap<String, usize>,
}

/// Serialises the executor's batches and the applier's applies on one node: both take
/// SQLite's write lock, and waiting for it in SQLite's busy handler sleeps a millisecond or
/// more, longer than either holds it. With the write pipeline the leader applies one delta
/// while it executes the next batch.
///
/// It also records the batch the executor keeps open for its commit in place (see
/// [`Executor::commit_in_place`]): that transaction holds SQLite's write lock after the gate
/// is released, so the applier checks here before it writes, and a delta must first end it.
/// So are recorded the writes run ahead and, on an executor that commits in place, an
/// interactive transaction (see [`Executor::begin`]).
#[derive(Clone, Default)]
pub struct WriteGate(Arc<Gate>);

#[derive(Default)]
struct Gate {
    lock: std::sync::Mutex<GateState>,
    /// A copy of [`GateState::open_batch`], read without waiting for the lock.
    open_batch: std::sync::atomic::AtomicBool,
    /// Batches committed in place since the database was opened.
    committed_in_place: std::sync::atomic::AtomicU64,
}

/// What the gate guards.
#[derive(Default)]
pub(crate) struct GateState {
    /// Whether the executor keeps a batch open for its commit in place (or another transaction
    /// that holds SQLite's write lock outside the gate: writes run ahead, an interactive
    /// transaction). Decides only under the lock; set through [`WriteGate::set_batch_open`].
    open_batch: bool,
    /// Deltas the executor committed in place as soon as Raft committed them, before the
    /// state machine's apply reached them (see [`Executor::commit_early`]): base version →
    /// tag. Their apply finds them here and has nothing left to write.
    ahead: std::collections::BTreeMap<u64, u64>,
}

/// Most deltas committed in place ahead of their apply (see [`GateState::ahead`]); beyond, the
/// batch waits for its apply as before. The state machine falls behind only while it builds a
/// snapshot image.
const MAX_AHEAD: usize = 1024;

impl GateState {
    pub(crate) fn batch_open(&self) -> bool {
        self.open_batch
    }

    /// Whether `delta` was committed in place ahead of its apply; its apply is then done. The
    /// state machine applies in log order, so entries on older versions are never asked for
    /// again (a snapshot installed over them, or another leader's delta took their place).
    pub(crate) fn take_ahead(&mut self, delta: &PageDelta) -> bool {
        while self
            .ahead
            .first_key_value()
            .is_some_and(|(version, _)| *version < delta.base_version)
        {
            self.ahead.pop_first();
        }
        if self.ahead.get(&delta.base_version) == Some(&delta.tag) {
            self.ahead.remove(&delta.base_version);
            return true;
        }
        false
    }

    /// The database was replaced by an image: nothing committed ahead is in it any more.
    pub(crate) fn forget_ahead(&mut self) {
        self.ahead.clear();
    }
}

impl WriteGate {
    /// Waits for the gate: only on a thread that may block (the executor holds it for a whole
    /// batch, whose statements may run for seconds), never on the node's runtime.
    pub(crate) fn hold(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.0.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The gate if it is free now; `None` while another thread holds it.
    pub(crate) fn try_hold(&self) -> Option<std::sync::MutexGuard<'_, GateState>> {
        match self.0.lock.try_lock() {
            Ok(held) => Some(held),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Whether the executor keeps a batch open for its commit in place, as last recorded: a
    /// hint for async callers (it takes no lock); the applier decides under [`WriteGate::hold`].
    pub(crate) fn batch_open(&self) -> bool {
        self.0.open_batch.load(std::sync::atomic::Ordering::Acquire)
    }

    /// How many batches the executor committed in place (the rest were applied).
    pub(crate) fn committed_in_place(&self) -> u64 {
        self.0
            .committed_in_place
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set_batch_open(&self, held: &mut GateState, open: bool) {
        held.open_batch = open;
        self.0
            .open_batch
            .store(open, std::sync::atomic::Ordering::Release);
    }
}

/// A captured write transaction in progress (a batch, or an interactive transaction, which
/// keeps `BEGIN IMMEDIATE` open and nothing else runs on the executor until
/// [`Executor::commit`] or [`Executor::rollback`]).
struct OpenTransaction {
    start: CaptureStart,
    base_version: u64,
    /// What the write pipeline laid beneath it.
    overlay: Overlay,
}

/// What the executor checks a client statement that may change the schema against, read before
/// it runs.
struct SchemaBefore {
    /// `PRAGMA schema_version`: whether the statement changed the schema.
    version: i64,
    /// [`Executor::reserved_names`]: whether it gave a table a reserved name.
    reserved: Vec<String>,
}

/// How one call of an interactive transaction ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TransactionStep {
    /// The statements ran; their changes are part of the transaction.
    Done(Vec<StatementOutcome>),
    /// They failed and were rolled back alone; the transaction is still open.
    Failed(DbError),
    /// They failed in a way that ended the whole transaction (e.g. `RAISE(ROLLBACK)`, an
    /// interrupted write): nothing of it remains.
    Ended(DbError),
}

/// A client statement: from the statement cache, or prepared afresh when its text could name a
/// cached internal statement (see `internal::is_internal_sql`).
pub(crate) enum CachedOrNot<'c> {
    Cached(rusqlite::CachedStatement<'c>),
    Fresh(rusqlite::Statement<'c>),
}

impl<'c> std::ops::Deref for CachedOrNot<'c> {
    type Target = rusqlite::Statement<'c>;
    fn deref(&self) -> &Self::Target {
        match self {
            CachedOrNot::Cached(s) => s,
            CachedOrNot::Fresh(s) => s,
        }
    }
}

impl std::ops::DerefMut for CachedOrNot<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self {
            CachedOrNot::Cached(s) => s,
            CachedOrNot::Fresh(s) => s,
        }
    }
}

impl Executor {
    /// Open the executor connection on an existing WAL database. `executor_cache_kib` sizes
    /// its page cache: transactions larger than that spill to the WAL (capture handles it).
    pub fn open(path: &Path, options: &DbOptions) -> Result<Executor> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(options.busy_timeout)?;
        // As the applier's: a batch committed in place is in the Raft log already, and the
        // database's checkpointer checkpoints.
        conn.execute_batch("PRAGMA synchronous=NORMAL")?;
        super::checkpoint::leave_to_checkpointer(&conn)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
        let bounds = Bounds::install(&mut conn, options, options.executor_cache_kib)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(DbError::Internal(format!(
                "executor needs a WAL database, got {mode}"
            )));
        }
        let lockdown = Lockdown::install(&mut conn, Policy::Executor, bounds.stop_check())?;
        let base = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        base.busy_timeout(options.busy_timeout)?;
        // Reads only the pages a batch changed, and only once each.
        base.execute_batch("PRAGMA cache_size = -256")?;
        Ok(Executor {
            conn,
            base,
            lockdown,
            bounds,
            db_path: path.to_path_buf(),
            schema_sql: RefCell::default(),
            schema_sql_keys: RandomState::new(),
            batches_since_prune: Cell::new(0),
            ids_since_prune: Cell::new(0),
            max_delta_bytes: options.max_delta_bytes,
            result_budget: MAX_BATCH_RESULT_BYTES,
            batch_left: MAX_BATCH_RESULT_BYTES,
            local_room: MAX_BATCH_RESULT_BYTES,
            local_returned: 0,
            room_is_local: true,
            gained_room: Cell::new(0),
            answers: options.answers.clone(),
            transaction: None,
            chain: Chain::default(),
            gate: WriteGate::default(),
            wal_bound: capture::WalBound::default(),
            links: true,
            in_place: false,
            open_batch: None,
            ahead: None,
            foreign_keys: options.foreign_keys,
            foreign_keys_changed: false,
            without_foreign_keys: false,
            transaction_aborted: None,
        })
    }

    /// Whether batches return a [`Link`] for the write pipeline (default true). Without, a
    /// capture keeps no copy of its pages.
    pub fn keep_links(&mut self, keep: bool) {
        self.links = keep;
    }

    /// Whether a batch's transaction stays open for [`Executor::commit_in_place`] (default
    /// false: rolled back, and the delta applied like on every other node). Not with links.
    pub fn commit_batches_in_place(&mut self, in_place: bool) {
        self.in_place = in_place && !self.links;
    }

    /// Share the applier's gate (see [`WriteGate`]).
    pub fn share_gate(&mut self, gate: WriteGate) {
        self.gate = gate;
    }

    /// Execute a batch of write requests and capture its page delta; commits nothing.
    ///
    /// An `Err` means the batch as a whole could not run (I/O error, internal failure); client
    /// mistakes are per-request [`WriteOutcome::Failed`] entries.
    pub fn execute_batch(&mut self, batch: &[WriteRequest]) -> Result<ExecutedBatch> {
        self.execute_batch_on(batch, Pipeline::Settled)
    }

    /// [`Executor::execute_batch`], on top of the deltas in flight (see `chain.rs`).
    pub fn execute_batch_on(
        &mut self,
        batch: &[WriteRequest],
        pipeline: Pipeline,
    ) -> Result<ExecutedBatch> {
        self.refuse_if_in_transaction()?;
        self.run_batch_on(batch, pipeline, Ahead::default())
    }

    /// [`Executor::execute_batch`] of a batch whose first `ran_ahead` requests were given to
    /// [`Executor::run_ahead`] already, and `rest` after them: the attempt they ran in goes
    /// on. A batch whose first requests are not those fails whole (`Internal`), unexecuted.
    pub fn execute_batch_after(
        &mut self,
        ran_ahead: usize,
        rest: Vec<WriteRequest>,
    ) -> Result<ExecutedBatch> {
        self.refuse_if_in_transaction()?;
        let had = self.ahead.as_ref().map_or(0, |a| a.requests.len());
        if had != ran_ahead {
            self.end_open_batch()?;
            self.ahead = None;
            return Err(DbError::Internal(format!(
                "a write batch was run ahead with {had} requests, not {ran_ahead}"
            )));
        }
        let mut ahead = self.ahead.take().unwrap_or_default();
        let mut batch = std::mem::take(&mut ahead.requests);
        batch.extend(rest);
        self.run_batch_on(&batch, Pipeline::Settled, ahead)
    }

    /// Runs `more` requests of the next batch now, while the batcher still waits for the
    /// rest of its writers: on the settled state, in a transaction kept open (and recorded in
    /// the gate, as a batch kept open for its commit in place is) until
    /// [`Executor::execute_batch_after`] runs the rest and captures the whole batch. The time
    /// a batch takes to execute then overlaps the wait for its last writers. Anything else on
    /// this connection (the applier's need, a transaction, a lookup's need of the committed
    /// state) rolls it back; the whole batch then runs again at its capture. An error here is
    /// for the log only: the capture runs the batch again and answers for it.
    pub fn run_ahead(&mut self, more: Vec<WriteRequest>) -> Result<()> {
        let gate = self.gate.clone();
        let mut held = gate.hold();
        let mut ahead = match self.ahead.take() {
            Some(ahead) => ahead,
            None => {
                self.end_open_batch_held(&mut held)?;
                self.chain.clear();
                Ahead::default()
            }
        };
        ahead.requests.extend(more);
        ahead.fatal.resize(ahead.requests.len(), None);
        let ran = match self.transaction {
            Some(_) => Ok(()),
            None => self.run_ahead_held(&mut held, &mut ahead),
        };
        self.ahead = Some(ahead);
        ran
    }

    fn run_ahead_held(&mut self, held: &mut GateState, ahead: &mut Ahead) -> Result<()> {
        loop {
            let mut run = match ahead.run.take() {
                Some(run) => run,
                None => {
                    let run = self.start_run()?;
                    self.gate.set_batch_open(held, true);
                    run
                }
            };
            let ran = self.run_requests(&mut run, &ahead.requests, &mut ahead.fatal);
            if let Ok(true) = ran {
                ahead.run = Some(run);
                return Ok(());
            }
            let ended = self.end_transaction();
            if ended.is_ok() {
                self.gate.set_batch_open(held, false);
            }
            ended?;
            ran?;
        }
    }

    /// Rolls back the transaction of the requests run ahead, if any (they run again at the
    /// batch's capture). The gate is told only once it is gone, as for a batch kept open.
    fn end_run_ahead_held(&mut self, held: &mut GateState) -> Result<()> {
        if let Some(ahead) = &mut self.ahead {
            if ahead.run.take().is_some() {
                self.end_transaction()?;
                self.gate.set_batch_open(held, false);
            }
        }
        Ok(())
    }

    /// Runs `batch`, going on with the attempt `ahead` holds if any, and captures it. Writes
    /// run ahead and not given here (a batch run without them) are rolled back and dropped.
    fn run_batch_on(
        &mut self,
        batch: &[WriteRequest],
        pipeline: Pipeline,
        ahead: Ahead,
    ) -> Result<ExecutedBatch> {
        let Ahead {
            mut fatal, mut run, ..
        } = ahead;
        match pipeline {
            Pipeline::Settled => self.chain.clear(),
            Pipeline::OnTop(link) => self.chain.extend(link),
        }
        let gate = self.gate.clone();
        let mut held = gate.hold();
        if run.is_some() {
            // Its transaction is this batch's now: recorded again below if kept open.
            self.gate.set_batch_open(&mut held, false);
        }
        self.end_open_batch_held(&mut held)?;
        self.ahead = None;
        fatal.resize(batch.len(), None);
        loop {
            let mut attempt = match run.take() {
                Some(run) => run,
                None => self.start_run()?,
            };
            match self
                .run_requests(&mut attempt, batch, &mut fatal)
                .and_then(|complete| match complete {
                    true => self.finish_run(attempt).map(Some),
                    false => Ok(None),
                }) {
                Ok(Some(executed)) => {
                    match &executed.delta {
                        Some(delta) if self.in_place => self.keep_open(&mut held, delta),
                        _ => self.end_transaction()?,
                    }
                    return Ok(executed);
                }
                // A request ended the whole transaction: it is marked failed, run again.
                Ok(None) => self.end_transaction()?,
                Err(e) => {
                    let _ = self.end_transaction();
                    return Err(e);
                }
            }
        }
    }

    /// Commit the batch kept open since it was executed, once its delta is committed by
    /// Raft: the leader's database then holds exactly the pages the delta carries, as every
    /// other node's does once it applied it, without laying them again. Returns whether it
    /// did. If the batch open is another one (same tag and base version, or it is not this
    /// delta's: its delta was lost, or this delta comes first), that batch is rolled back and
    /// the caller applies the delta as any node does; so it is if its `COMMIT` fails. An
    /// interactive transaction open here is rolled back too (see
    /// [`Executor::make_way_for_applier`]).
    pub fn commit_in_place(&mut self, delta: &PageDelta) -> Result<bool> {
        let gate = self.gate.clone();
        let mut held = gate.hold();
        if held.take_ahead(delta) {
            return Ok(true);
        }
        self.abort_transaction_held(&mut held)?;
        if self.open_batch != Some((delta.tag, delta.base_version)) {
            self.end_open_batch_held(&mut held)?;
            return Ok(false);
        }
        self.commit_open_batch(&mut held)
    }

    /// [`Executor::commit_in_place`] for the batch that captured the delta tagged `tag` on
    /// `base_version`, as soon as Raft committed it, before the state machine applies it: the
    /// next batch need not wait for that apply, and the apply finds it done
    /// ([`GateState::take_ahead`]). The caller knows every entry before it is applied or
    /// committed in place. Does nothing if that batch is not the one open (the apply came
    /// first, or ended it) or too many are ahead already. Returns whether it committed it.
    pub fn commit_early(&mut self, tag: u64, base_version: u64) -> Result<bool> {
        let gate = self.gate.clone();
        let mut held = gate.hold();
        if self.open_batch != Some((tag, base_version)) || held.ahead.len() >= MAX_AHEAD {
            return Ok(false);
        }
        let committed = self.commit_open_batch(&mut held)?;
        if committed {
            held.ahead.insert(base_version, tag);
        }
        Ok(committed)
    }

    /// COMMITs the batch kept open; on failure rolls it back (its delta is then applied like
    /// on any node). Returns whether it committed.
    fn commit_open_batch(&mut self, held: &mut GateState) -> Result<bool> {
        if let Err(e) = self.internal_sql(internal_sql!("COMMIT")) {
            tracing::warn!(error = %e, "committing a batch in place failed; applying its delta instead");
            self.end_open_batch_held(held)?;
            return Ok(false);
        }
        self.open_batch = None;
        self.gate.set_batch_open(held, false);
        self.gate
            .0
            .committed_in_place
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(true)
    }

    /// Leave the transaction that captured `delta` open until its delta is committed; the
    /// applier refuses to wait for it meanwhile.
    fn keep_open(&mut self, held: &mut GateState, delta: &PageDelta) {
        self.open_batch = Some((delta.tag, delta.base_version));
        self.gate.set_batch_open(held, true);
    }

    /// Roll back the batch kept open for its commit in place, if any: what runs next on this
    /// connection, or the applier, must not see or wait for it. Its delta, if Raft commits it,
    /// is applied like on every other node.
    pub fn end_open_batch(&mut self) -> Result<()> {
        let gate = self.gate.clone();
        let mut held = gate.hold();
        self.end_open_batch_held(&mut held)
    }

    /// Roll back whatever this connection holds SQLite's write lock in outside the gate, for a
    /// write of the applier's (an image; a delta goes through [`Executor::commit_in_place`]):
    /// the batch kept open, and an interactive transaction. The applier writes only what Raft
    /// committed, and while a transaction is open its leader has nothing in flight (the
    /// transaction begins once everything it proposed is applied, and proposes nothing until
    /// its commit): so what comes is another leader's, this one is deposed, and its
    /// transaction could never commit. It is rolled back rather than waited for: the applier
    /// waiting on its lock, the transaction's Commit then waited on the gate the applier held,
    /// until the apply failed with `SQLITE_BUSY` and stopped the state machine. Its next call
    /// hears that it is gone ([`DbError::Stale`]).
    pub fn make_way_for_applier(&mut self) -> Result<()> {
        let gate = self.gate.clone();
        let mut held = gate.hold();
        self.abort_transaction_held(&mut held)?;
        self.end_open_batch_held(&mut held)
    }

    /// See [`Executor::make_way_for_applier`]. A no-op without an interactive transaction.
    fn abort_transaction_held(&mut self, held: &mut GateState) -> Result<()> {
        if self.transaction.take().is_none() {
            return Ok(());
        }
        tracing::info!(
            "an interactive transaction was rolled back: another leader's write must be applied"
        );
        self.transaction_aborted = Some(
            "the transaction was rolled back: this node must apply another leader's writes (its \
             leadership ended), which cannot wait for it; nothing of it was applied, run it \
             again"
                .into(),
        );
        self.end_transaction()?;
        self.gate.set_batch_open(held, false);
        Ok(())
    }

    /// The gate is told the batch is gone only once it is: a failed `ROLLBACK` leaves it
    /// recorded, and the applier refuses to wait on its lock.
    fn end_open_batch_held(&mut self, held: &mut GateState) -> Result<()> {
        self.end_run_ahead_held(held)?;
        if self.open_batch.is_some() {
            self.end_transaction()?;
            self.open_batch = None;
            self.gate.set_batch_open(held, false);
        }
        Ok(())
    }

    /// Runs a request that [`runs_alone`]: a VACUUM, or one without foreign keys.
    pub fn execute_alone(&mut self, request: &WriteRequest) -> Result<ExecutedBatch> {
        match is_vacuum(request) {
            true => self.execute_vacuum(),
            false => self.execute_without_foreign_keys(request),
        }
    }

    /// Runs `request` (see [`without_foreign_keys`]) alone, as a batch of its own, with
    /// foreign keys off: SQLite's table rebuild (create the new table, copy, drop the old one,
    /// rename) for a table others reference. Its `PRAGMA foreign_keys` statements are
    /// answered without running (the setting cannot change inside its transaction). When the
    /// node enforces foreign keys, the request fails whole, rolled back, if the database has
    /// a violation at its end (`PRAGMA foreign_key_check`). The node's setting is back before
    /// the next transaction.
    pub fn execute_without_foreign_keys(
        &mut self,
        request: &WriteRequest,
    ) -> Result<ExecutedBatch> {
        self.refuse_if_in_transaction()?;
        self.end_open_batch()?;
        self.ahead = None;
        self.chain.clear();
        self.set_foreign_keys(false)?;
        self.without_foreign_keys = true;
        let executed = self.run_batch_on(
            std::slice::from_ref(request),
            Pipeline::Settled,
            Ahead::default(),
        );
        self.without_foreign_keys = false;
        executed
    }

    /// Sets `PRAGMA foreign_keys` (outside any transaction, where it takes effect), and
    /// records whether it now differs from the node's setting.
    fn set_foreign_keys(&mut self, on: bool) -> Result<()> {
        {
            let _guard = self.lockdown.internal();
            self.conn.execute_batch(match on {
                true => "PRAGMA foreign_keys = ON",
                false => "PRAGMA foreign_keys = OFF",
            })?;
        }
        self.foreign_keys_changed = on != self.foreign_keys;
        Ok(())
    }

    /// Before a transaction begins: the node's setting, unless the request that turned it off
    /// is the one beginning.
    fn restore_foreign_keys(&mut self) -> Result<()> {
        if self.foreign_keys_changed && !self.without_foreign_keys {
            self.set_foreign_keys(self.foreign_keys)?;
        }
        Ok(())
    }

    /// At the end of a request run with foreign keys off that checks them: a violation
    /// anywhere in the database fails it. The check reads every table with a foreign key, so
    /// it runs within the request's deadline, like its statements: past it, the request fails.
    /// A `PRAGMA` statement, not the table-valued `pragma_foreign_key_check`, which a client
    /// table of that name would stand in for (see `authorizer::PRAGMA_FUNCTION_PREFIX`); its
    /// first row is the first violation, found without looking for the others.
    fn no_foreign_key_violation(&self, deadline: Option<Instant>) -> Result<()> {
        if !(self.without_foreign_keys && self.foreign_keys) {
            return Ok(());
        }
        let scope = self.bounds.enter(&self.conn, deadline, None)?;
        let _guard = self.lockdown.internal();
        let violation: Option<(String, Option<i64>, String)> = self
            .conn
            .query_row(internal_sql!("PRAGMA foreign_key_check"), [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
            .map_err(|e| scope.client_error(e, &self.lockdown))?;
        match violation {
            None => Ok(()),
            Some((table, rowid, parent)) => Err(DbError::Constraint(format!(
                "FOREIGN KEY constraint failed: a row of {table}{} references {parent} and has \
                 no parent row there (PRAGMA foreign_key_check); this request ran with foreign \
                 keys off and may not leave a violation behind, so none of it was applied",
                rowid.map(|r| format!(" (rowid {r})")).unwrap_or_default()
            ))),
        }
    }

    /// Run `VACUUM` as a full-image delta (see the module docs).
    pub fn execute_vacuum(&mut self) -> Result<ExecutedBatch> {
        self.refuse_if_in_transaction()?;
        self.refuse_vacuum_over_the_delta_limit()?;
        self.end_open_batch()?;
        self.chain.clear();
        let tmp = vacuum_path(&self.db_path);
        remove_if_exists(&tmp)?;
        let result = self.vacuum_into(&tmp);
        let cleanup = remove_if_exists(&tmp);
        let delta = result?;
        cleanup?;
        Ok(ExecutedBatch {
            delta: Some(delta),
            outcomes: vec![WriteOutcome::Executed(vec![StatementOutcome::default()])],
            link: None,
            rows_held: None,
        })
    }

    /// A VACUUM's delta is the whole database's image (its pages in use): refused before it
    /// writes a copy to disk and reads it into memory twice over, when that image is over
    /// `max_delta_bytes` (it would be refused once built).
    fn refuse_vacuum_over_the_delta_limit(&self) -> Result<()> {
        let (pages, free, page_size): (u64, u64, u64) = {
            let _guard = self.lockdown.internal();
            let pragma = |name: &str| -> Result<u64> {
                let n: i64 = self
                    .conn
                    .query_row(&format!("PRAGMA main.{name}"), [], |r| r.get(0))?;
                Ok(n.max(0) as u64)
            };
            (
                pragma("page_count")?,
                pragma("freelist_count")?,
                pragma("page_size")?,
            )
        };
        let bytes = pages.saturating_sub(free).saturating_mul(page_size);
        if bytes > self.max_delta_bytes as u64 {
            return Err(DbError::TooLarge(format!(
                "VACUUM replicates the whole database, {bytes} bytes of pages in use, over the \
                 limit of {} bytes for one write (max_delta_bytes); raise max_delta_bytes to \
                 vacuum a database of this size",
                self.max_delta_bytes
            )));
        }
        Ok(())
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
        let tag = new_tag();
        internal::write_version_and_tag(&copy, base_version + 1, tag)?;
        copy.execute_batch("COMMIT")?;

        let page_size: u32 = copy.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let mut pages = Vec::new();
        {
            let mut stmt = copy.prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                pages.push((
                    row.get::<_, u32>(0)?,
                    PageImage::Full(row.get::<_, Vec<u8>>(1)?),
                ));
            }
        }
        // VACUUM INTO writes a rollback-journal file (format bytes 1/1); replicas stay in WAL
        // mode, so keep the live database's bytes 18/19.
        match pages.first_mut() {
            Some((1, PageImage::Full(page1))) => page1[18..20].copy_from_slice(&live_page1[18..20]),
            _ => return Err(DbError::Internal("VACUUM INTO produced no page 1".into())),
        }
        let delta = PageDelta {
            page_size,
            db_pages: pages.len() as u32,
            base_version,
            tag,
            parent_tag: 0,
            pages,
        };
        delta.validate()?;
        Ok(delta)
    }

    /// Begins an attempt at a batch: `BEGIN IMMEDIATE` and the capture's start.
    fn start_run(&mut self) -> Result<Run> {
        self.restore_foreign_keys()?;
        self.internal_sql(internal_sql!("BEGIN IMMEDIATE"))?;
        let open = match self.start_capture() {
            Ok(open) => open,
            Err(e) => {
                let _ = self.end_transaction();
                return Err(e);
            }
        };
        self.reset_result_budget(MAX_BATCH_RESULT_BYTES);
        Ok(Run {
            open,
            outcomes: Vec::new(),
            executed_any: false,
            now_ms: unix_millis(),
            executed_ids: HashMap::new(),
        })
    }

    /// Runs the requests of `batch` the attempt has not run yet, each in its own savepoint.
    /// `false`: a request ended the whole transaction; it is marked in `fatal`, and the batch
    /// must run again from the start without it.
    fn run_requests(
        &mut self,
        run: &mut Run,
        batch: &[WriteRequest],
        fatal: &mut [Option<DbError>],
    ) -> Result<bool> {
        for (i, request) in batch.iter().enumerate().skip(run.outcomes.len()) {
            if let Some(e) = &fatal[i] {
                run.outcomes.push(WriteOutcome::Failed(e.clone()));
                continue;
            }
            if let Some(refused) = refuse_vacuum(&request.statements) {
                run.outcomes.push(WriteOutcome::Failed(refused));
                continue;
            }
            let id = request.request_id.as_str();
            if !id.is_empty() {
                let earlier = match run.executed_ids.get(id) {
                    Some(&k) => match &run.outcomes[k] {
                        WriteOutcome::Executed(results) => Some(results.clone()),
                        _ => None,
                    },
                    None => {
                        let _guard = self.lockdown.internal();
                        internal::lookup_request(&self.conn, id)?
                    }
                };
                if let Some(stored) = earlier {
                    // Its stored rows are an answer like any other: within the room.
                    run.outcomes
                        .push(match self.charge_stored(request, &stored) {
                            Ok(()) => WriteOutcome::Duplicate(stored),
                            Err(over) => WriteOutcome::Failed(over),
                        });
                    continue;
                }
            }
            self.internal_sql(SAVEPOINT)?;
            self.reset_last_insert_rowid();
            let ran = self
                .run_request_statements(request)
                .and_then(|results| self.no_deferred_violation().map(|()| results))
                .and_then(|results| {
                    self.no_foreign_key_violation(request.deadline)
                        .map(|()| results)
                });
            match ran {
                Ok(results) => {
                    self.internal_sql(RELEASE)?;
                    if !id.is_empty() {
                        run.executed_ids.insert(id.to_owned(), run.outcomes.len());
                    }
                    run.outcomes.push(WriteOutcome::Executed(results));
                    run.executed_any = true;
                }
                Err(e) if self.conn.is_autocommit() => {
                    // The statement ended the whole transaction; redo the batch without it.
                    fatal[i] = Some(e);
                    return Ok(false);
                }
                Err(e) => {
                    self.internal_sql(ROLLBACK_TO)?;
                    self.internal_sql(RELEASE)?;
                    run.outcomes.push(WriteOutcome::Failed(e));
                }
            }
        }
        Ok(true)
    }

    /// Captures the attempt's delta, once every request ran (none if nothing changed).
    fn finish_run(&mut self, run: Run) -> Result<ExecutedBatch> {
        let Run {
            open,
            outcomes,
            executed_any,
            now_ms,
            executed_ids,
        } = run;
        if !executed_any {
            return Ok(ExecutedBatch {
                delta: None,
                outcomes,
                link: None,
                rows_held: self.hold_returned(),
            });
        }
        let internal = self.lockdown.internal();
        let recorded = self.record_request_ids(executed_ids, &outcomes, now_ms)?;
        self.prune_in_step(recorded, now_ms)?;
        let (delta, link) = self.finish_capture(open)?;
        drop(internal);
        Ok(ExecutedBatch {
            delta: Some(delta),
            outcomes,
            link,
            rows_held: self.hold_returned(),
        })
    }

    /// Counts the rows the batch returned to clients of this node in its unread answers (see
    /// [`ExecutedBatch::rows_held`]).
    fn hold_returned(&mut self) -> Option<AnswerHold> {
        let bytes = std::mem::take(&mut self.local_returned);
        (bytes > 0).then(|| self.answers.hold(None, bytes))
    }

    /// Records the ids of the batch's executed requests with their results, in the order
    /// they ran, after all of them: in the same transaction and delta as their writes, but
    /// outside the requests' savepoints, where each insert would first copy the pages it
    /// touches into the savepoint's journal. A request that failed records nothing; a retry
    /// runs again. Returns how many it recorded.
    fn record_request_ids(
        &self,
        ids: HashMap<String, usize>,
        outcomes: &[WriteOutcome],
        now_ms: i64,
    ) -> Result<u32> {
        let mut ids: Vec<(String, usize)> = ids.into_iter().collect();
        ids.sort_unstable_by_key(|(_, k)| *k);
        let mut recorded = 0u32;
        for (id, k) in ids {
            if let Some(WriteOutcome::Executed(results)) = outcomes.get(k) {
                internal::record_request(&self.conn, &id, results, now_ms)?;
                recorded = recorded.saturating_add(1);
            }
        }
        Ok(recorded)
    }

    /// Counts a write that recorded `recorded` request ids, and once every
    /// [`PRUNE_EVERY_BATCHES`] such writes forgets ids older than the retention, at least
    /// twice as many as were recorded meanwhile (when there are that many old ones).
    fn prune_in_step(&self, recorded: u32, now_ms: i64) -> Result<()> {
        let ids = self.ids_since_prune.get().saturating_add(recorded);
        let batches = self.batches_since_prune.get() + 1;
        if batches < PRUNE_EVERY_BATCHES {
            self.ids_since_prune.set(ids);
            self.batches_since_prune.set(batches);
            return Ok(());
        }
        self.ids_since_prune.set(0);
        self.batches_since_prune.set(0);
        let cutoff = now_ms.saturating_sub(REQUEST_ID_RETENTION.as_millis() as i64);
        internal::prune_requests(&self.conn, cutoff, PRUNE_LIMIT.max(ids.saturating_mul(2)))?;
        Ok(())
    }

    /// Lets the next batch (or call of a transaction) return up to `most` bytes of rows, or
    /// the room the node's unread answers leave, if less.
    fn reset_result_budget(&mut self, most: usize) {
        self.batch_left = most;
        self.local_returned = 0;
        self.local_room = self.answers.room();
        self.limit_to_room(None);
    }

    /// Sets the budget of the next request: what is left of the batch's, within `room` (the
    /// room of the follower that forwarded it) or else this node's room.
    fn limit_to_room(&mut self, room: Option<usize>) {
        self.room_is_local = room.is_none();
        let room = room.unwrap_or(self.local_room);
        self.result_budget = self.batch_left.min(room);
    }

    /// Whether `bytes` more of the request's rows fit its budget, once connections that left
    /// answers unread too long have given their room (`AnswerBytes::make_room`) when this
    /// node's room is what they lack.
    fn fits(&self, bytes: usize) -> bool {
        let budget = self.result_budget + self.gained_room.get();
        if bytes <= budget {
            return true;
        }
        let room = self.local_room + self.gained_room.get();
        if !self.room_is_local || room >= self.batch_left {
            return false;
        }
        let before = self.answers.room();
        let wanted = before.saturating_add(bytes - budget);
        let gained =
            (self.answers.make_room(wanted).saturating_sub(before)).min(self.batch_left - room);
        self.gained_room.set(self.gained_room.get() + gained);
        bytes <= budget + gained
    }

    /// Adds the room [`Executor::fits`] gained to the request's budget and this node's room.
    fn take_gained_room(&mut self) {
        let gained = self.gained_room.take();
        self.result_budget += gained;
        self.local_room += gained;
    }

    /// Counts `returned` bytes of a request's rows against the batch and, when this node holds
    /// the answer (`room` none), against its room.
    fn returned(&mut self, returned: usize, room: Option<usize>) {
        self.batch_left -= returned;
        if room.is_none() {
            self.local_room = self.local_room.saturating_sub(returned);
            self.local_returned += returned;
        }
    }

    /// Why a request's rows are over its budget: answers their clients have not read leave no
    /// more room (the budget was cut below what is left of the batch's), or the writes running
    /// with it return too much at once.
    fn over_result_budget(&self) -> DbError {
        DbError::Overloaded(match self.result_budget < self.batch_left {
            true => format!(
                "the node this write came to holds as many bytes of answers that their \
                 clients have not read yet as it may ({} bytes); writes that return rows \
                 wait for them to be read: retry",
                self.answers.limit()
            ),
            false => "the writes running together with this one return too many rows at \
                      once; retry"
                .into(),
        })
    }

    /// A request of a batch: its statements, returning at most the rows the node that holds
    /// its answer has room for (a follower that forwarded it says how much:
    /// [`WriteRequest::max_result_bytes`]).
    fn run_request_statements(&mut self, request: &WriteRequest) -> Result<Vec<StatementOutcome>> {
        self.limit_to_room(request.max_result_bytes);
        let ran = self.run_statements(&request.statements, request.deadline);
        if let Ok(outcomes) = &ran {
            self.returned(rows_bytes(outcomes), request.max_result_bytes);
        }
        ran
    }

    /// Takes the bytes of a retried request's stored rows from the batch's budget (and the
    /// room its forwarding follower has), or says why they do not fit.
    fn charge_stored(&mut self, request: &WriteRequest, stored: &[StatementOutcome]) -> Result<()> {
        let bytes = rows_bytes(stored);
        if bytes == 0 {
            return Ok(());
        }
        self.limit_to_room(request.max_result_bytes);
        let fits = self.fits(bytes);
        self.take_gained_room();
        if !fits {
            return Err(self.over_result_budget());
        }
        self.returned(bytes, request.max_result_bytes);
        Ok(())
    }

    /// Run one request's statements; the first error ends the request. Past `deadline` the
    /// running statement is interrupted (see `bounds.rs`). Rows a statement returns are kept,
    /// up to [`MAX_RESULT_BYTES`] for the request and what is left of the batch's budget.
    fn run_statements(
        &mut self,
        statements: &[Statement],
        deadline: Option<Instant>,
    ) -> Result<Vec<StatementOutcome>> {
        let stepped = self.step_statements(statements, deadline);
        self.take_gained_room();
        let (results, result_bytes, schema_changed) = stepped?;
        if schema_changed {
            self.refuse_references_to_internal_tables()?;
        }
        self.result_budget -= result_bytes;
        Ok(results)
    }

    /// The key a client SQL text is remembered by in `schema_sql` (see
    /// [`Executor::changed_schema`]): computed once per statement run.
    fn schema_key(&self, sql: &str) -> u64 {
        self.schema_sql_keys.hash_one(sql.trim())
    }

    /// Whether the SQL of `key`, just prepared (from the cache or not) or run, may change the
    /// schema (the caller then compares the schema version before and after it runs). The
    /// authorizer flags a statement that does each time SQLite compiles it: when prepared
    /// afresh, and again when it runs after any schema change since (SQLite then compiles it
    /// again first). A statement taken from the cache and run on the schema it was compiled
    /// against was flagged when it was compiled; its text is remembered for that, under the
    /// key the statement cache uses (the trimmed text: `" CREATE ..."` is the statement
    /// `"CREATE ..."` compiled), as a keyed hash (8 bytes, whatever the text's length; two
    /// texts with one hash cost a needless check, never a missed one).
    /// Asking SQLite (`PRAGMA schema_version` before and after every request) cost more than
    /// the one-row INSERT it guarded; now only statements that may change the schema ask.
    fn changed_schema(&self, key: u64) -> bool {
        let mut known = self.schema_sql.borrow_mut();
        if !self.lockdown.take_schema_change() {
            return known.contains(&key);
        }
        if known.len() >= MAX_SCHEMA_SQL {
            // Forget them all, and every compiled statement with them: each is compiled, and
            // flagged, again on its next use.
            known.clear();
            self.conn.flush_prepared_statement_cache();
        }
        known.insert(key);
        true
    }

    /// A client table may not name one of raftlite's tables in a foreign key: deleting old
    /// request ids (or any internal write) would then fail whole batches, other clients'
    /// writes included, or cascade into the client's rows. Checked after a request changed the
    /// schema, so it fails alone.
    ///
    /// Read with `PRAGMA foreign_key_list`, not the table-valued `pragma_foreign_key_list()`,
    /// which a client table of that name would stand in for (a full-text table takes the
    /// argument as a search and finds nothing; see `authorizer::PRAGMA_FUNCTION_PREFIX`). Only
    /// the tables whose SQL holds the internal prefix are asked: a foreign key names its
    /// parent in its table's SQL, which SQLite rewrites when the parent is renamed.
    fn refuse_references_to_internal_tables(&self) -> Result<()> {
        let _guard = self.lockdown.internal();
        let candidates: Vec<String> = self
            .conn
            .prepare_cached(internal_sql!(
                "SELECT name FROM main.sqlite_schema
                 WHERE type = 'table' AND sql LIKE '%\\_raftlite\\_%' ESCAPE '\\'
                   AND name NOT LIKE '\\_raftlite\\_%' ESCAPE '\\'"
            ))?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for table in candidates {
            // One text per table: prepared afresh, not kept in the statement cache.
            let mut foreign_keys = self.conn.prepare(&format!(
                "PRAGMA main.foreign_key_list(\"{}\")",
                table.replace('"', "\"\"")
            ))?;
            let mut parents = foreign_keys.query([])?;
            while let Some(parent) = parents.next()? {
                if is_internal_table(&parent.get::<_, String>("table")?) {
                    return Err(DbError::PermissionDenied(format!(
                        "table {table:?} has a foreign key to one of raftlite's internal tables \
                         (_raftlite_*); reference your own tables only"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The tables and views with a reserved name: raftlite's own prefix (`_raftlite_`) or that
    /// of SQLite's table-valued pragma functions (`pragma_`), as the schema has them now.
    fn reserved_names(&self) -> Result<Vec<String>> {
        let _guard = self.lockdown.internal();
        Ok(self
            .conn
            .prepare_cached(internal_sql!(
                "SELECT name FROM main.sqlite_schema WHERE type IN ('table', 'view')
                 AND (name LIKE '\\_raftlite\\_%' ESCAPE '\\'
                      OR name LIKE 'pragma\\_%' ESCAPE '\\')"
            ))?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// After a client statement changed the schema: no table got a reserved name that the
    /// schema did not have before it (`before`, from [`Executor::reserved_names`]). The
    /// authorizer refuses to create one, but `ALTER TABLE ... RENAME TO` shows it only the old
    /// name. The schema is read rather than the statement parsed: the new name can be quoted
    /// four ways, qualified, written in any case and with comments between the words, and the
    /// schema holds what SQLite made of all that. Names that were there before pass: a
    /// database that already has such a table (an older node allowed the rename) can still
    /// change its schema, and that table, which clients cannot touch, stays as it was.
    fn no_new_reserved_name(&self, before: &[String]) -> Result<()> {
        let renamed = self
            .reserved_names()?
            .into_iter()
            .find(|name| !before.contains(name));
        let Some(name) = renamed else {
            return Ok(());
        };
        Err(DbError::PermissionDenied(match is_internal_table(&name) {
            true => format!(
                "a table may not be renamed to {name}: names starting with _raftlite_ are \
                 raftlite's internal tables, which clients cannot write, drop or rename"
            ),
            false => format!(
                "a table may not be renamed to {name}: names starting with pragma_ are reserved \
                 for SQLite's table-valued pragma functions, which a table of that name would \
                 stand in for"
            ),
        }))
    }

    fn step_statements(
        &self,
        statements: &[Statement],
        deadline: Option<Instant>,
    ) -> Result<(Vec<StatementOutcome>, usize, bool)> {
        let scope = self.bounds.enter(&self.conn, deadline, None)?;
        let mut results = Vec::with_capacity(statements.len());
        let mut result_bytes = 0usize;
        let mut schema_changed = false;
        for statement in statements {
            if self.without_foreign_keys && sets_foreign_keys(&statement.sql).is_some() {
                results.push(StatementOutcome::default());
                continue;
            }
            self.lockdown.reset();
            self.lockdown.take_schema_change();
            let key = self.schema_key(&statement.sql);
            let mut before = None;
            let stepped =
                self.step_statement(&scope, statement, key, &mut result_bytes, &mut before);
            // Asked even when it failed, so that a statement compiled again while it ran is
            // remembered: a failed run may succeed from the cache later.
            let compiled_again = self.changed_schema(key);
            results.push(stepped?);
            schema_changed |= match before {
                // A statement that may change the schema: whether it did. (An ALTER TABLE
                // always comes here: SQLite tells the authorizer whenever it compiles one.)
                Some(before) => {
                    let changed = self.schema_version()? != before.version;
                    if changed {
                        self.no_new_reserved_name(&before.reserved)?;
                    }
                    changed
                }
                // Compiled again as it ran, as a statement that changes the schema.
                None => compiled_again,
            };
        }
        Ok((results, result_bytes, schema_changed))
    }

    fn schema_version(&self) -> Result<i64> {
        let _guard = self.lockdown.internal();
        Ok(self
            .conn
            .prepare_cached(internal_sql!("PRAGMA main.schema_version"))?
            .query_row([], |r| r.get(0))?)
    }

    /// Prepares and runs one client statement (`key`: its [`Executor::schema_key`]);
    /// `result_bytes` counts the rows it returns on top of those the request's earlier
    /// statements returned. For a statement that may change the schema, `before` gets the
    /// schema as it was before it runs.
    fn step_statement(
        &self,
        scope: &ClientScope<'_>,
        statement: &Statement,
        key: u64,
        result_bytes: &mut usize,
        before: &mut Option<SchemaBefore>,
    ) -> Result<StatementOutcome> {
        let client_error = |e| scope.client_error(e, &self.lockdown);
        refuse_more_than_one_statement(&self.conn, &statement.sql).map_err(client_error)?;
        // Never a cached internal statement, nor savepoint control, which the authorizer
        // allows only in an interactive transaction: it runs at prepare time.
        let prepared =
            if internal::is_internal_sql(&statement.sql) || is_savepoint_control(&statement.sql) {
                self.conn.prepare(&statement.sql).map(CachedOrNot::Fresh)
            } else {
                self.conn
                    .prepare_cached(&statement.sql)
                    .map(CachedOrNot::Cached)
            };
        let mut stmt = prepared.map_err(client_error)?;
        if self.changed_schema(key) {
            *before = Some(SchemaBefore {
                version: self.schema_version()?,
                reserved: self.reserved_names()?,
            });
        }
        bind(&mut stmt, &statement.params).map_err(|e| scope.name_limit(e))?;
        let changes_before = self.conn.total_changes();
        let columns = ColumnInfo::of(&stmt);
        let mut rows = Vec::new();
        {
            // Statements that return rows (e.g. INSERT ... RETURNING) are stepped to the end.
            let mut cursor = stmt.raw_query();
            while let Some(row) = cursor.next().map_err(client_error)? {
                let mut values = Vec::with_capacity(columns.len());
                for i in 0..columns.len() {
                    let value = SqlValue::read(row.get_ref(i).map_err(client_error)?, i)?;
                    *result_bytes += value.size();
                    values.push(value);
                }
                if *result_bytes > MAX_RESULT_BYTES {
                    return Err(DbError::TooLarge(format!(
                        "the request returns more than {MAX_RESULT_BYTES} bytes of rows; \
                         return fewer rows or columns (e.g. RETURNING only the keys, or a \
                         LIMIT), or query them outside a write"
                    )));
                }
                if !self.fits(*result_bytes) {
                    return Err(self.over_result_budget());
                }
                rows.push(values);
            }
        }
        // changes() only counts INSERT/UPDATE/DELETE and keeps its old value across other
        // statements; report 0 for statements that changed nothing.
        let rows_affected = if self.conn.total_changes() != changes_before {
            self.conn.changes()
        } else {
            0
        };
        Ok(StatementOutcome {
            rows_affected,
            last_insert_rowid: self.conn.last_insert_rowid(),
            columns,
            rows,
        })
    }

    /// A client's request (or interactive transaction) is its transaction: a deferred foreign
    /// key (`DEFERRABLE INITIALLY DEFERRED`) still violated at its end fails it, as SQLite's
    /// `COMMIT` would. The batch's own `COMMIT` never checks (the executor rolls back, or
    /// commits only at the delta's commit).
    fn no_deferred_violation(&self) -> Result<()> {
        let (mut current, mut highest) = (0, 0);
        // SAFETY: `handle()` is this connection's valid open handle, used on its own thread;
        // the call only reads a counter into the two integers.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_db_status(
                self.conn.handle(),
                rusqlite::ffi::SQLITE_DBSTATUS_DEFERRED_FKS,
                &mut current,
                &mut highest,
                0,
            )
        };
        if rc != rusqlite::ffi::SQLITE_OK {
            return Err(DbError::Internal(format!(
                "reading the deferred foreign key count failed ({rc})"
            )));
        }
        match current {
            0 => Ok(()),
            _ => Err(DbError::Constraint(
                "FOREIGN KEY constraint failed: a deferred foreign key is still violated at the \
                 end of the write"
                    .into(),
            )),
        }
    }

    /// `last_insert_rowid` is per request (or transaction): what SQLite would answer on a
    /// connection of its own, never an earlier request's rowid or raftlite's bookkeeping.
    fn reset_last_insert_rowid(&self) {
        // SAFETY: `handle()` is this connection's valid open handle, used on its own thread;
        // the call only sets an integer on it.
        unsafe { rusqlite::ffi::sqlite3_set_last_insert_rowid(self.conn.handle(), 0) }
    }

    /// Open an interactive transaction: `BEGIN IMMEDIATE` (the write lock) until
    /// [`Executor::commit`] or [`Executor::rollback`]; group commits wait meanwhile.
    ///
    /// On an executor that commits in place the transaction is recorded in the gate, as a
    /// batch kept open is, from the gate's lock on: the applier then never waits on its lock
    /// but has the database end it first ([`Executor::make_way_for_applier`]), and its Commit
    /// may take the gate while it holds SQLite's lock. (Without commits in place the database
    /// cannot reach this executor, and a Commit never takes the gate; the applier waits for the
    /// transaction's end, which a leadership change brings.)
    pub fn begin(&mut self) -> Result<()> {
        self.refuse_if_in_transaction()?;
        let gate = self.gate.clone();
        let mut held = gate.hold();
        self.end_open_batch_held(&mut held)?;
        self.chain.clear();
        self.restore_foreign_keys()?;
        self.internal_sql(internal_sql!("BEGIN IMMEDIATE"))?;
        match self.start_capture() {
            Ok(open) => {
                self.reset_last_insert_rowid();
                self.transaction = Some(open);
                self.transaction_aborted = None;
                if self.in_place {
                    self.gate.set_batch_open(&mut held, true);
                }
                Ok(())
            }
            Err(e) => {
                let _ = self.end_transaction();
                Err(e)
            }
        }
    }

    /// Run statements inside the open transaction, atomically (a savepoint of their own),
    /// returning at most `max_result_bytes` of rows (the room of the node holding the answer;
    /// [`MAX_RESULT_BYTES`] at most).
    pub fn transaction_execute_within(
        &mut self,
        statements: &[Statement],
        deadline: Option<Instant>,
        max_result_bytes: Option<usize>,
    ) -> Result<TransactionStep> {
        if self.transaction.is_none() {
            return match &self.transaction_aborted {
                Some(why) => Ok(TransactionStep::Ended(DbError::Stale(why.clone()))),
                None => Err(no_transaction()),
            };
        }
        if let Some(refused) = refuse_vacuum(statements) {
            return Ok(TransactionStep::Failed(refused));
        }
        if statements.iter().any(|s| is_savepoint_control(&s.sql)) {
            return self.client_savepoint(statements, deadline);
        }
        self.internal_sql(SAVEPOINT)?;
        self.reset_result_budget(MAX_RESULT_BYTES);
        self.limit_to_room(max_result_bytes);
        match self
            .run_statements(statements, deadline)
            .and_then(|results| self.check_transaction_size().map(|()| results))
        {
            Ok(results) => {
                self.internal_sql(RELEASE)?;
                Ok(TransactionStep::Done(results))
            }
            Err(e) if self.conn.is_autocommit() => {
                self.end_interactive()?;
                Ok(TransactionStep::Ended(e))
            }
            Err(e) => {
                self.internal_sql(ROLLBACK_TO)?;
                self.internal_sql(RELEASE)?;
                Ok(TransactionStep::Failed(e))
            }
        }
    }

    /// A call of the open transaction that is a client's SAVEPOINT, RELEASE or ROLLBACK TO:
    /// alone in its call, and run outside the savepoint each call gets (whose RELEASE would
    /// release the client's too), so that it lasts until the client ends it or the
    /// transaction ends. Such a statement changes no page of its own; when it fails it did
    /// nothing, and the transaction stays open.
    fn client_savepoint(
        &mut self,
        statements: &[Statement],
        deadline: Option<Instant>,
    ) -> Result<TransactionStep> {
        if statements.len() > 1 {
            return Ok(TransactionStep::Failed(DbError::InvalidArgument(
                "send SAVEPOINT, RELEASE and ROLLBACK TO each in a call of its own, without \
                 other statements"
                    .into(),
            )));
        }
        self.reset_result_budget(MAX_RESULT_BYTES);
        let lockdown = self.lockdown.clone();
        let ran = {
            let _allowed = lockdown.savepoints();
            self.run_statements(statements, deadline)
        };
        Ok(match ran {
            Ok(results) => TransactionStep::Done(results),
            Err(e) if self.conn.is_autocommit() => {
                self.end_interactive()?;
                TransactionStep::Ended(e)
            }
            Err(e) => TransactionStep::Failed(e),
        })
    }

    /// A transaction's delta is checked after each call, not only at its commit: the call that
    /// takes it past `max_delta_bytes` fails alone (its savepoint), before the transaction
    /// fills the disk for the rest of its time.
    fn check_transaction_size(&self) -> Result<()> {
        let bytes = {
            let _guard = self.lockdown.internal();
            capture::changed_bytes(&self.conn, &self.wal_bound)?
        };
        if bytes > self.max_delta_bytes {
            return Err(DbError::TooLarge(format!(
                "the transaction would change {bytes} bytes of pages, over the limit of {} \
                 bytes (max_delta_bytes); this call was undone, the transaction stays open: \
                 commit what it holds and split the rest into further transactions",
                self.max_delta_bytes
            )));
        }
        Ok(())
    }

    /// End the open transaction and capture what it wrote as one delta (rolled back here, or
    /// kept open for its commit in place, like a batch); `None` if it wrote nothing. A
    /// non-empty `request_id` is recorded in the delta, so that a retried Commit finds it. A
    /// deferred foreign key still violated fails it, and it is rolled back.
    pub fn commit(&mut self, request_id: &str) -> Result<Option<PageDelta>> {
        let Some(open) = self.transaction.take() else {
            return Err(match &self.transaction_aborted {
                Some(why) => DbError::Stale(why.clone()),
                None => no_transaction(),
            });
        };
        let captured = self.capture_transaction(open, request_id);
        if let (Ok(Some(delta)), true) = (&captured, self.in_place) {
            // Kept open for its commit in place, like a batch (recorded in the gate since it
            // began, so the applier is not waiting on its lock).
            let gate = self.gate.clone();
            self.keep_open(&mut gate.hold(), delta);
            return captured;
        }
        let rolled_back = self.end_interactive();
        let delta = captured?;
        rolled_back?;
        Ok(delta)
    }

    fn capture_transaction(
        &mut self,
        open: OpenTransaction,
        request_id: &str,
    ) -> Result<Option<PageDelta>> {
        self.no_deferred_violation().map_err(|e| match e {
            DbError::Constraint(m) => {
                DbError::Constraint(format!("{m}; the transaction was rolled back"))
            }
            e => e,
        })?;
        let _guard = self.lockdown.internal();
        if !capture::changed(&self.conn, &open.start, &self.wal_bound)? {
            return Ok(None);
        }
        if !request_id.is_empty() {
            if internal::lookup_request(&self.conn, request_id)?.is_some() {
                return Err(DbError::InvalidArgument(format!(
                    "request id {request_id:?} was already used by another write; use a new \
                     id for each commit"
                )));
            }
            let now_ms = unix_millis();
            internal::record_request(&self.conn, request_id, &[], now_ms)?;
            self.prune_in_step(1, now_ms)?;
        }
        self.finish_capture(open).map(|(delta, _)| Some(delta))
    }

    /// Right after `BEGIN IMMEDIATE`: lay the deltas in flight beneath the transaction, and
    /// remember what capture needs and the version the delta will be based on (a batch and an
    /// interactive transaction start alike; an interactive one has no chain).
    fn start_capture(&mut self) -> Result<OpenTransaction> {
        let _guard = self.lockdown.internal();
        let overlay = self.chain.lay(&self.conn)?;
        let start = capture::start(&self.conn)?;
        let base_version = internal::read_version(&self.conn)?;
        internal::ensure_tables(&self.conn)?;
        Ok(OpenTransaction {
            start,
            base_version,
            overlay,
        })
    }

    /// Bump the version, store a new tag and capture the changed pages as one delta (the
    /// caller rolls back), with its link for the pipeline when it can be stacked on. Runs
    /// under the internal lock-down guard.
    fn finish_capture(&self, open: OpenTransaction) -> Result<(PageDelta, Option<Link>)> {
        let tag = new_tag();
        internal::write_version_and_tag(&self.conn, open.base_version + 1, tag)?;
        let captured = capture::finish(
            (&self.conn, &self.wal_bound),
            &self.base,
            &open.start,
            (open.base_version, tag),
            &open.overlay,
            self.max_delta_bytes,
            self.links,
        )?;
        let link = captured.images.and_then(|images| {
            Link::stackable(
                &captured.delta,
                images,
                open.start.page1(),
                captured.pages_before,
            )
        });
        Ok((captured.delta, link))
    }

    /// Whether a write with this request id has been applied (as seen by this connection: the
    /// committed state, plus an open transaction's own writes, which never record ids).
    /// With a batch open for its commit in place, the committed state is read through the
    /// read-only connection instead, and the batch stays open.
    pub fn request_recorded(&self, request_id: &str) -> Result<bool> {
        if self.open_batch.is_some() || self.ahead.as_ref().is_some_and(|a| a.run.is_some()) {
            return internal::request_recorded(&self.base, request_id);
        }
        let _guard = self.lockdown.internal();
        internal::request_recorded(&self.conn, request_id)
    }

    /// Discard the open transaction (a no-op without one), or a batch kept open.
    pub fn rollback(&mut self) -> Result<()> {
        if self.transaction.is_none() {
            return self.end_open_batch();
        }
        self.end_interactive()
    }

    /// Ends the interactive transaction (rolled back, unless SQLite did already), and tells the
    /// gate once it is gone if it was recorded there (see [`Executor::begin`]). Without a
    /// record the gate is not taken: the applier may hold it while it waits for this lock.
    fn end_interactive(&mut self) -> Result<()> {
        self.transaction = None;
        if !self.in_place {
            return self.end_transaction();
        }
        let gate = self.gate.clone();
        let mut held = gate.hold();
        self.end_transaction()?;
        self.gate.set_batch_open(&mut held, false);
        Ok(())
    }

    fn refuse_if_in_transaction(&self) -> Result<()> {
        match self.transaction {
            Some(_) => Err(DbError::Internal(
                "an interactive transaction is open on the executor".into(),
            )),
            None => Ok(()),
        }
    }

    /// One of raftlite's own statements (`internal_sql!`), from the statement cache.
    fn internal_sql(&self, sql: &'static str) -> Result<()> {
        let _guard = self.lockdown.internal();
        self.conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    }

    /// ROLLBACK whatever is open (the executor commits only in place, see
    /// [`Executor::commit_in_place`]).
    fn end_transaction(&self) -> Result<()> {
        if self.conn.is_autocommit() {
            return Ok(());
        }
        self.internal_sql(internal_sql!("ROLLBACK"))
    }

    #[cfg(test)]
    pub(crate) fn force_prune_next_batch(&mut self) {
        self.batches_since_prune.set(PRUNE_EVERY_BATCHES);
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // The applier must not wait for a batch or transaction nobody will commit.
        let ended = match self.transaction {
            Some(_) => self.end_interactive(),
            None => self.end_open_batch(),
        };
        if let Err(e) = ended {
            tracing::warn!(error = %e, "rolling back the batch or transaction kept open failed");
        }
    }
}

fn no_transaction() -> DbError {
    DbError::Internal("no transaction is open".into())
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

/// A delta's tag: random, never 0 (0 means "no tag").
fn new_tag() -> u64 {
    loop {
        let tag: u64 = rand::random();
        if tag != 0 {
            return tag;
        }
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
            max_result_bytes: None,
            statements: vec![Statement::new(sql)],
        }
    }

    #[test]
    fn recognises_a_request_without_foreign_keys() {
        for off in [
            "PRAGMA foreign_keys = OFF",
            "pragma foreign_keys=0;",
            "-- rebuild\nPRAGMA main.foreign_keys = 'false'",
            "PRAGMA foreign_keys(no)",
        ] {
            assert!(without_foreign_keys(&req(off)), "{off}");
        }
        assert_eq!(sets_foreign_keys("PRAGMA foreign_keys = on"), Some(true));
        for other in [
            "PRAGMA foreign_keys",
            "PRAGMA foreign_keys = maybe",
            "PRAGMA foreign_key_check",
            "PRAGMA foreign_key_list(t)",
            "PRAGMAforeign_keys = 0",
            "SELECT 'PRAGMA foreign_keys = 0'",
            "PRAGMA temp.foreign_keys = 0",
        ] {
            assert_eq!(sets_foreign_keys(other), None, "{other}");
        }
        assert!(!without_foreign_keys(&req("PRAGMA foreign_keys = ON")));
        assert!(runs_alone(&req("VACUUM")) && !runs_alone(&req("DELETE FROM t")));
    }

    #[test]
    fn recognises_vacuum() {
        assert!(is_vacuum(&req("vacuum")));
        assert!(is_vacuum(&req("  VACUUM ;\n")));
        assert!(!is_vacuum(&req("VACUUM INTO 'x'")));
        assert!(!is_vacuum(&WriteRequest {
            request_id: String::new(),
            deadline: None,
            max_result_bytes: None,
            statements: vec![Statement::new("VACUUM"), Statement::new("SELECT 1")],
        }));
        assert!(starts_with_vacuum("-- c\n /* x */ Vacuum into 'x'"));
        assert!(starts_with_vacuum("VACUUM"));
        assert!(!starts_with_vacuum("vacuumed"));
        assert!(!starts_with_vacuum("SELECT 'vacuum'"));
    }
}
