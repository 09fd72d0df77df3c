//! Bounds on client work, set when a connection that runs client SQL (the executor, each
//! reader) opens. Together with the authorizer they make sure that one client cannot change
//! what the next one sees, nor make SQLite grow without limit.
//!
//! * **Settings.** `foreign_keys` and `recursive_triggers` are node settings ([`DbOptions`]),
//!   applied to every such connection at open; clients can read them but not set them (see
//!   `authorizer.rs`). The applier needs neither: it copies pages, it runs no SQL semantics.
//! * **Sizes.** While client statements run, `SQLITE_LIMIT_LENGTH` is `max_value_bytes`: a
//!   string, blob or row larger than that (`zeroblob`, `randomblob`, `||`, a bound parameter,
//!   an `INSERT` whose record would exceed it, a stored value read back) fails with SQLite's
//!   "string or blob too big", reported as [`DbError::TooLarge`] naming the limit.
//!   raftlite's own statements (captured pages, stored request results, `VACUUM INTO`) run
//!   without that limit, so a small setting never breaks the write path. A value stored before
//!   the limit was lowered can no longer be read by clients. SQL text is limited to
//!   `max(max_value_bytes, 1 MiB)` (`SQLITE_LIMIT_SQL_LENGTH`).
//! * **Memory.** SQLite has no per-connection heap limit; each connection's share is bounded
//!   instead: its page cache (`cache_size`), `temp_store = FILE` so sorts, `DISTINCT`, temp
//!   b-trees and big transactions spill to temporary files (in `/tmp` or `SQLITE_TMPDIR`)
//!   instead of RAM, and the length limit above. What remains unbounded is a statement holding
//!   many large values at once (`SELECT randomblob(N), randomblob(N), ...`). Against that, a
//!   node sets SQLite's process-wide hard heap limit ([`DbOptions::heap_limit_bytes`]): the
//!   page caches, a fixed allowance for the applier, images, schemas and statements, and four
//!   maximum-size values for each connection that runs client SQL. A normal statement holds a
//!   value, its record and a copy at most, so normal requests stay below it even when every
//!   connection handles maximum-size values at the same time. An allocation fails only if it
//!   would cross the limit; since the statements that get there grow by big values, it is
//!   their next big value that fails (`TooLarge`, and the statement frees everything it held),
//!   while the small page allocations of the applier still fit. That is a last guard, not a
//!   guarantee: to keep a node within a memory budget, size `max_value_bytes` (and the read
//!   threads) so that [`DbOptions::heap_limit_bytes`] fits it. Before the limit, client
//!   statements are stopped ([`DbError::Overloaded`]) once less than [`HEAP_RESERVE_BYTES`]
//!   of it is left: at their next progress check, or, for a query parked on a slow reader,
//!   within 100 ms; the room left is raftlite's own.
//! * **Disk.** The temporary files those spills go to are bounded too, by a VFS shim
//!   (`tempfiles.rs`): while a client statement runs, each of its temporary files may hold
//!   [`DbOptions::max_temp_file_bytes`], and all of them in the process together 1 GiB; past
//!   that the statement fails ([`DbError::TooLarge`], or [`DbError::Overloaded`] for the
//!   total) instead of filling the disk the Raft log needs.
//! * **Time.** A progress handler checks the running client statement every
//!   [`CHECK_EVERY_OPS`] VM instructions against its request's deadline and, for queries,
//!   whether the consumer of its rows went away; either interrupts it inside SQLite
//!   (`SQLITE_INTERRUPT`), reported as [`DbError::Timeout`]. SQLite rolls back an interrupted
//!   write's whole transaction: the executor then reruns its batch without that request (as
//!   for `RAISE(ROLLBACK)`), so the request fails alone. Not covered: time spent waiting for a
//!   lock (`busy_timeout`), and single VM instructions that run long without reporting
//!   progress (an in-memory sort is bounded by the page cache, `integrity_check` reports
//!   progress). Among the latter, `instr` is replaced by a linear one and `LIKE`/`GLOB`
//!   patterns are limited (`functions.rs`).

use super::authorizer::Lockdown;
use super::error::{DbError, Result};
use super::tempfiles::ClientTemp;
use super::DbOptions;
use rusqlite::limits::Limit;
use rusqlite::{ffi, Connection, ErrorCode};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// SQLite's compile-time maximum length (`SQLITE_MAX_LENGTH`); `set_limit` cannot go above.
pub const SQLITE_MAX_LENGTH: usize = 1_000_000_000;
/// The SQL-length limit never goes below this, whatever `max_value_bytes`: a small value limit
/// should not also forbid long statements made of small values.
const MIN_SQL_LENGTH: usize = 1024 * 1024;

/// VM instructions between two checks of a running client statement: a few microseconds
/// of work, so an interrupt lands promptly, while the check (a clock read) costs nothing
/// measurable.
pub(crate) const CHECK_EVERY_OPS: i32 = 1000;

/// Why a client statement was stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Its request's deadline passed.
    Deadline,
    /// Nobody waits for its results any more.
    Cancelled,
    /// SQLite's heap came within [`HEAP_RESERVE_BYTES`] of its hard limit (used, limit).
    Memory(i64, i64),
}

/// Client statements stop once SQLite's process-wide heap is within this of its hard limit,
/// so that raftlite's own work (the applier laying a committed delta, the executor's capture)
/// finds room: statements full of large values are the only way to get there, and they are
/// the ones stopped (an apply that still finds the heap full waits, see `Database::apply`).
pub(crate) const HEAP_RESERVE_BYTES: i64 = 32 << 20;

/// SQLite's heap use and hard limit, when the limit is set and less than
/// [`HEAP_RESERVE_BYTES`] is left under it.
pub(crate) fn heap_nearly_full() -> Option<(i64, i64)> {
    // SAFETY: thread-safe queries of SQLite's global memory state (-1 only reads the limit).
    let limit = unsafe { ffi::sqlite3_hard_heap_limit64(-1) };
    if limit <= 0 {
        return None;
    }
    // SAFETY: as above.
    let used = unsafe { ffi::sqlite3_memory_used() };
    (used > limit - HEAP_RESERVE_BYTES).then_some((used, limit))
}

impl Stop {
    /// The error a stopped request answers with (if anyone still listens); `started`: its
    /// statement was running, rather than about to start.
    pub(crate) fn error(self, started: bool) -> DbError {
        let message = match (self, started) {
            // The client library does not send a request that ends so again (it would run the
            // statement for as long again): it recognises it by that constant.
            (Stop::Deadline, true) => format!(
                "the request's deadline passed while its statement ran; {}",
                raftlite_client::STATEMENT_INTERRUPTED
            ),
            (Stop::Deadline, false) => "the request's deadline passed before it could run".into(),
            (Stop::Cancelled, _) => "the query was cancelled: its client went away".into(),
            (Stop::Memory(used, limit), _) => {
                return DbError::Overloaded(format!(
                    "stopped: SQLite's memory on this node is nearly full ({used} of {limit} \
                     bytes in use, by statements holding large values at once); send \
                     statements that hold fewer large values, or retry"
                ))
            }
        };
        DbError::Timeout(message)
    }
}

/// Tells whether the consumer of a statement's results went away.
pub(crate) type CancelCheck = Box<dyn Fn() -> bool + Send>;

/// What the progress handler checks the running client statement against.
#[derive(Default)]
struct Watch {
    deadline: Option<Instant>,
    cancelled: Option<CancelCheck>,
    stopped: Option<Stop>,
    /// A client statement runs (in a [`ClientScope`]): only such are stopped for memory.
    client: bool,
}

impl Watch {
    /// Why the statement must stop, once it must (and from then on).
    fn check(&mut self) -> Option<Stop> {
        if self.stopped.is_none() {
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                self.stopped = Some(Stop::Deadline);
            } else if self.cancelled.as_ref().is_some_and(|gone| gone()) {
                self.stopped = Some(Stop::Cancelled);
            } else if let Some((used, limit)) = self.client.then(heap_nearly_full).flatten() {
                self.stopped = Some(Stop::Memory(used, limit));
            }
        }
        self.stopped
    }
}

/// The bounds of one connection; see the module docs.
pub(crate) struct Bounds {
    max_value_bytes: i32,
    max_temp_file_bytes: u64,
    watch: Arc<Mutex<Watch>>,
}

impl Bounds {
    /// Apply the node's settings and bounds to `conn`; `cache_kib` is its page cache.
    pub(crate) fn install(
        conn: &mut Connection,
        options: &DbOptions,
        cache_kib: u32,
    ) -> Result<Bounds> {
        conn.execute_batch(&format!(
            "PRAGMA foreign_keys = {};
             PRAGMA recursive_triggers = {};
             PRAGMA temp_store = FILE;
             PRAGMA cache_size = -{};",
            on_off(options.foreign_keys),
            on_off(options.recursive_triggers),
            cache_kib.max(64),
        ))?;
        let max_value_bytes = clamp_length(options.max_value_bytes);
        conn.set_limit(
            Limit::SQLITE_LIMIT_SQL_LENGTH,
            clamp_length(options.max_value_bytes.max(MIN_SQL_LENGTH)),
        )?;
        conn.set_limit(
            Limit::SQLITE_LIMIT_LIKE_PATTERN_LENGTH,
            super::functions::LIKE_PATTERN_BYTES,
        )?;
        super::functions::install(conn)?;
        let bounds = Bounds {
            max_value_bytes,
            max_temp_file_bytes: options.max_temp_file_bytes,
            watch: Arc::new(Mutex::new(Watch::default())),
        };
        conn.progress_handler(CHECK_EVERY_OPS, Some(bounds.stop_check()))?;
        bounds.lift(conn)?;
        Ok(bounds)
    }

    /// Whether the client statement must stop now (see [`Bounds::enter`]); false outside a
    /// client scope. The progress handler asks it while a statement runs, and the authorizer
    /// while SQLite compiles one, where the progress handler never runs: a statement can
    /// make its compilation long and large (SQLite copies a CTE's query at every place it is
    /// used, so nested ones grow exponentially).
    pub(crate) fn stop_check(&self) -> impl Fn() -> bool + Send + 'static {
        let watch = Arc::clone(&self.watch);
        move || lock(&watch).check().is_some()
    }

    /// Put the client limits in force (on values and temporary files), and have the progress
    /// handler stop client statements at `deadline` or once `cancelled` says so, until the
    /// returned scope is dropped. Run every client statement (prepare, bind, step) inside one,
    /// and nothing of raftlite's own. Fails with [`DbError::Timeout`] if the deadline already
    /// passed (or the consumer left).
    pub(crate) fn enter<'c>(
        &'c self,
        conn: &'c Connection,
        deadline: Option<Instant>,
        cancelled: Option<CancelCheck>,
    ) -> Result<ClientScope<'c>> {
        {
            let mut watch = lock(&self.watch);
            *watch = Watch {
                deadline,
                cancelled,
                stopped: None,
                client: true,
            };
            if let Some(stop) = watch.check() {
                *watch = Watch::default();
                return Err(stop.error(false));
            }
        }
        conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, self.max_value_bytes)?;
        Ok(ClientScope {
            conn,
            bounds: self,
            temp: ClientTemp::enter(self.max_temp_file_bytes),
        })
    }

    /// raftlite's own statements run with SQLite's maximum length.
    fn lift(&self, conn: &Connection) -> Result<()> {
        conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, SQLITE_MAX_LENGTH as i32)?;
        Ok(())
    }
}

/// Client limits in force on a connection; see [`Bounds::enter`].
pub(crate) struct ClientScope<'c> {
    conn: &'c Connection,
    bounds: &'c Bounds,
    temp: ClientTemp,
}

impl ClientScope<'_> {
    /// Turn an error of a client statement into a `DbError`: why the progress handler or the
    /// authorizer stopped it, the authorizer's reason for a refusal, the limit for a value too big,
    /// memory exhaustion (the heap limit) as `TooLarge`, the temporary-file limit it ran into
    /// (a disk-full error that the shim did not cause stays as it was).
    pub(crate) fn client_error(&self, e: rusqlite::Error, lockdown: &Lockdown) -> DbError {
        // Interrupted by the progress handler, or refused by the authorizer while compiling
        // (whatever it was compiling: a refused function is an ordinary error to SQLite; see
        // [`Bounds::stop_check`]).
        if let Some(stop) = lock(&self.bounds.watch).stopped {
            return stop.error(true);
        }
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => match self.temp.refusal() {
                Some(refusal) => refusal.error(),
                None => self.name_limit(lockdown.client_error(e)),
            },
            Some(ErrorCode::OutOfMemory) => DbError::TooLarge(
                "out of memory: the statement holds more data at once than this node allows".into(),
            ),
            _ => self.name_limit(lockdown.client_error(e)),
        }
    }

    /// Add the node's limit to a "too big" error (e.g. from binding a parameter).
    pub(crate) fn name_limit(&self, e: DbError) -> DbError {
        match e {
            DbError::TooLarge(message) => DbError::TooLarge(format!(
                "{message} (this node's limit is {} bytes per value or row)",
                self.bounds.max_value_bytes
            )),
            other => other,
        }
    }
}

impl Drop for ClientScope<'_> {
    fn drop(&mut self) {
        // Also drops the cancellation check (and whatever it holds, e.g. a channel sender).
        *lock(&self.bounds.watch) = Watch::default();
        if let Err(e) = self.bounds.lift(self.conn) {
            tracing::warn!(error = %e, "lifting the client length limit failed");
        }
    }
}

/// Raise SQLite's process-wide hard heap limit to at least `bytes` (never lower it: several
/// databases may share the process, e.g. in tests). Returns the limit now in force.
pub(crate) fn raise_heap_limit(bytes: u64) -> u64 {
    static SERIALIZE: Mutex<()> = Mutex::new(());
    let _serialized = SERIALIZE.lock().unwrap_or_else(|p| p.into_inner());
    let wanted = i64::try_from(bytes).unwrap_or(i64::MAX);
    // SAFETY: plain calls into SQLite's thread-safe global configuration; -1 only queries.
    let current = unsafe { ffi::sqlite3_hard_heap_limit64(-1) };
    if current != 0 && current >= wanted {
        return current as u64;
    }
    // SAFETY: as above.
    unsafe { ffi::sqlite3_hard_heap_limit64(wanted) };
    wanted as u64
}

fn lock(watch: &Mutex<Watch>) -> MutexGuard<'_, Watch> {
    watch
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn on_off(on: bool) -> &'static str {
    if on {
        "ON"
    } else {
        "OFF"
    }
}

fn clamp_length(bytes: usize) -> i32 {
    bytes.clamp(1, SQLITE_MAX_LENGTH) as i32
}
