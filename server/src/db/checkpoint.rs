//! The checkpointer: copies the WAL's committed frames into the database file on a thread of
//! its own, so that no write waits for it.
//!
//! SQLite's automatic checkpoint runs inside the `COMMIT` that crosses 1,000 WAL frames: on a
//! node that is the applier's (or the leader's executor's) commit, with two fsyncs of up to
//! 4 MiB, while the next write waits for that apply. Measured on a 3-node cluster on one disk,
//! that put 7–12 ms stalls into 1 % of sequential 1-row writes (BENCHMARKS.md, session 8). This
//! thread runs a `PASSIVE` checkpoint every [`INTERVAL`] instead: it never blocks a writer or a
//! reader and copies what no reader still needs. Content is unaffected: when a node
//! checkpoints never changes its pages (the spike's finding).
//!
//! It cannot restart the WAL, though: SQLite goes back to the WAL's start only when a write
//! transaction begins with every frame already copied, and a busy leader opens its next batch
//! within microseconds of committing the last (commit in place), before any checkpoint of
//! another thread can finish. So the writing connections keep a backstop: they checkpoint
//! inside the commit that crosses [`BACKSTOP_FRAMES`] (16 MiB of 4 KiB pages, against SQLite's
//! default 1,000), when little is left to copy, and the next writer restarts the WAL. Without
//! it a leader's WAL grew by every frame it wrote.
//!
//! Readers can hold the restart off as well: SQLite restarts the WAL only when no read
//! transaction still reads from it, and one that is open at every moment (queries of a few
//! seconds, each begun before the last ended, as any client with a `read` token can send)
//! kept it from ever restarting, so the WAL grew by every write until the disk was full. Past
//! [`DbOptions::max_wal_frames`](super::DbOptions) the [`ReadGate`] closes: new reads wait
//! (within their deadlines) while those in flight end, the backstop's checkpoint copies
//! everything, the next write restarts the WAL, and the gate opens again. Reads are held
//! back only while a WAL past the limit waits for them, which an ordinary load never reaches
//! (its WAL stays near the backstop). A Raft snapshot's image is a long read too, which
//! holding reads back cannot shorten: the gate opens when one begins and does not close while
//! one is built. It opens too when a checkpoint fails (a full disk): reads keep working.

use super::error::{DbError, Result};
use rusqlite::Connection;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often the WAL is checkpointed.
const INTERVAL: Duration = Duration::from_millis(100);
/// WAL frames past which a commit checkpoints itself (and the next writer restarts the WAL).
pub(crate) const BACKSTOP_FRAMES: u32 = 4096;
/// Least time between two warnings of a failing checkpoint.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// The default [`DbOptions::max_wal_frames`](super::DbOptions): 64 MiB of 4 KiB pages.
pub(crate) const MAX_WAL_FRAMES: u32 = 4 * BACKSTOP_FRAMES;
/// The size a WAL file is cut back to after a restart: twice the backstop, above what an
/// ordinary load leaves (see [`leave_to_checkpointer`]).
const WAL_KEEP_BYTES: u64 = 2 * BACKSTOP_FRAMES as u64 * 4096;
/// How often a read waiting at the closed [`ReadGate`] looks whether its client is gone.
const GATE_RECHECK: Duration = Duration::from_millis(50);

/// Stops its thread when dropped.
pub(crate) struct Checkpointer {
    _stop: crossbeam_channel::Sender<()>,
    status: Arc<Status>,
}

/// What the last checkpoints found, for `/metrics`.
#[derive(Default)]
struct Status {
    /// Frames in the WAL at the last checkpoint.
    wal_frames: AtomicU64,
    /// Checkpoints that failed since the start.
    failures: AtomicU64,
}

impl Checkpointer {
    /// Start checkpointing the WAL database at `path` every [`INTERVAL`], closing `gate` while
    /// the WAL is past `max_frames` and reads keep it from restarting.
    pub(crate) fn start(path: &Path, gate: Arc<ReadGate>, max_frames: u32) -> Result<Checkpointer> {
        let conn = Connection::open(path)?;
        conn.execute_batch("PRAGMA synchronous=NORMAL")?;
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let name = path.display().to_string();
        let status = Arc::new(Status::default());
        let seen = status.clone();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                let mut warned: Option<std::time::Instant> = None;
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(INTERVAL)
                {
                    match checkpoint(&conn) {
                        // Another connection's checkpoint ran: it told nothing.
                        Ok(None) => {}
                        Ok(Some((frames, copied))) => {
                            seen.wal_frames.store(frames, Ordering::Relaxed);
                            gate.after_checkpoint(frames, copied, u64::from(max_frames), &name);
                        }
                        Err(e) => {
                            seen.failures.fetch_add(1, Ordering::Relaxed);
                            gate.checkpoint_failed();
                            if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                                warned = Some(std::time::Instant::now());
                                tracing::warn!(database = %name, error = %e, "WAL checkpoint failed (commits still checkpoint past the backstop)");
                            }
                        }
                    }
                }
            })
            .map_err(|e| DbError::Internal(format!("spawn the checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            _stop: stop,
            status,
        })
    }

    /// Frames in the WAL at the last checkpoint (the WAL's size in pages; it restarts from
    /// its start once all are copied).
    pub(crate) fn wal_frames(&self) -> u64 {
        self.status.wal_frames.load(Ordering::Relaxed)
    }

    /// Checkpoints that failed since the database was opened.
    pub(crate) fn failures(&self) -> u64 {
        self.status.failures.load(Ordering::Relaxed)
    }
}

/// One `PASSIVE` checkpoint (a no-op when every frame is in the database already); the
/// frames in the WAL, and how many of them are in the database file now. `None` when it could
/// not run: another connection was checkpointing (a commit past the backstop).
fn checkpoint(conn: &Connection) -> Result<Option<(u64, u64)>> {
    let (frames, copied): (i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(1)?, r.get(2)?))
        })?;
    Ok(u64::try_from(frames).ok().zip(u64::try_from(copied).ok()))
}

/// Where the read pool's transactions, and the images' (see `snapshot.rs`), begin: closed
/// while the WAL is past its limit and waits for the reads in flight to end (see the module
/// docs). It does not close while an image is being built: that read takes as long as it
/// takes, and holding the others back would not make the WAL restart any sooner.
#[derive(Default)]
pub(crate) struct ReadGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    /// Since when new reads wait, if they do.
    closed: Option<Instant>,
    /// The read pool's transactions open now.
    reading: usize,
    /// Images being built now.
    imaging: usize,
    /// Frames in the WAL at the last checkpoint.
    frames: u64,
}

/// One read transaction counted in at the [`ReadGate`] until dropped.
pub(crate) struct Reading {
    gate: Arc<ReadGate>,
    image: bool,
}

impl Drop for Reading {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        match self.image {
            true => state.imaging -= 1,
            false => state.reading -= 1,
        }
    }
}

impl ReadGate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        // Nothing panics while holding it; a poisoned state is still consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Count a pool read in, once the gate is open. While it is closed, wait until it opens,
    /// `deadline` passes or `gone()` (the client left) tells to give up.
    pub(crate) fn enter(
        self: &Arc<Self>,
        deadline: Option<Instant>,
        gone: impl Fn() -> bool,
    ) -> Result<Reading> {
        let mut state = self.lock();
        while state.closed.is_some() {
            let now = Instant::now();
            if gone() {
                return Err(super::bounds::Stop::Cancelled.error(false));
            }
            let wait = match deadline {
                Some(d) if d <= now => {
                    return Err(DbError::Timeout(
                        "the request's deadline passed before it could run: reads on this \
                         node wait while the reads in flight end, so that its WAL, past its \
                         limit, can restart (long queries that overlap one another kept it \
                         from restarting); retry, or send shorter queries"
                            .into(),
                    ))
                }
                Some(d) => (d - now).min(GATE_RECHECK),
                None => GATE_RECHECK,
            };
            state = self.wait(state, wait);
        }
        state.reading += 1;
        Ok(Reading {
            gate: self.clone(),
            image: false,
        })
    }

    /// Count an image's read in, at once: an image is built on openraft's state-machine task,
    /// which must not wait for the pool's reads. Holding reads back while an image holds the
    /// WAL would not make it restart any sooner, so a closed gate opens.
    pub(crate) fn enter_image(self: &Arc<Self>) -> Reading {
        let mut state = self.lock();
        state.imaging += 1;
        self.open(&mut state, "an image is being built");
        Reading {
            gate: self.clone(),
            image: true,
        }
    }

    /// Open the gate after a checkpoint failed (a full disk, an I/O error): the gate cannot
    /// tell any more when the WAL may restart, and reads must not wait for what may never come.
    fn checkpoint_failed(&self) {
        self.open(&mut self.lock(), "the checkpoint failed");
    }

    /// Open the gate if it is closed, saying why.
    fn open(&self, state: &mut GateState, why: &str) {
        if let Some(since) = state.closed.take() {
            self.changed.notify_all();
            tracing::info!(
                frames = state.frames,
                waited_ms = since.elapsed().as_millis() as u64,
                "reads go on: {why}"
            );
        }
    }

    fn wait<'a>(
        &self,
        state: MutexGuard<'a, GateState>,
        at_most: Duration,
    ) -> MutexGuard<'a, GateState> {
        self.changed
            .wait_timeout(state, at_most)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
    }

    /// Whether new reads wait now.
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }

    /// Close the gate when a checkpoint found `frames` in the WAL, more than `max_frames`, not
    /// all of them copied (reads hold them); open it once the WAL restarted (it holds no more
    /// than that then: it only grows until it restarts), or once it stopped growing with no
    /// read open and every frame copied (no write came to restart it; reads that begin now read
    /// the database file alone, and do not keep the next write from restarting it).
    fn after_checkpoint(&self, frames: u64, copied: u64, max_frames: u64, database: &str) {
        let mut state = self.lock();
        let idle = frames == std::mem::replace(&mut state.frames, frames);
        if state.closed.is_none() {
            // With every frame copied nothing keeps the next write from restarting the WAL.
            if frames > max_frames && copied < frames && state.imaging == 0 {
                state.closed = Some(Instant::now());
                tracing::warn!(
                    database,
                    frames,
                    max_frames,
                    reading = state.reading,
                    "the WAL is past its limit and read transactions keep it from restarting: \
                     new reads wait until those in flight end"
                );
            }
        } else if frames <= max_frames {
            self.open(&mut state, "the WAL restarted");
        } else if idle && state.reading == 0 && copied == frames {
            self.open(
                &mut state,
                "every frame is copied, for the next write to restart the WAL",
            );
        }
    }
}

/// Leave checkpoints to the [`Checkpointer`] on a connection that commits, but for the
/// backstop (see the module docs). Its first commit after the WAL restarts cuts a WAL file
/// grown past [`WAL_KEEP_BYTES`] (by a large batch, or while readers held the restart off)
/// back to that size; below it the file is reused as it is.
pub(crate) fn leave_to_checkpointer(conn: &Connection) -> Result<()> {
    conn.execute_batch(&format!(
        "PRAGMA wal_autocheckpoint={BACKSTOP_FRAMES}; PRAGMA journal_size_limit={WAL_KEEP_BYTES}"
    ))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gate's decisions, checkpoint by checkpoint: it closes for a WAL past its limit that
    /// reads keep from being copied, opens once the WAL restarted, and, with no write coming to
    /// restart it, once every frame is copied and no read is open, and then stays open (it
    /// closed again at the next checkpoint, holding reads back for nothing). A failed
    /// checkpoint and an image opens it too, and a read waiting at it stops at its deadline.
    #[test]
    fn the_read_gate_closes_only_while_reads_hold_the_wal() {
        let gate = Arc::new(ReadGate::default());
        let max = 100;
        let reading = gate.enter(None, || false).expect("open");
        gate.after_checkpoint(150, 150, max, "t");
        assert!(
            !gate.is_closed(),
            "every frame is copied: nothing to wait for"
        );
        gate.after_checkpoint(200, 120, max, "t");
        assert!(gate.is_closed(), "a read holds frames past the limit");
        let soon = Instant::now() + Duration::from_millis(120);
        let waited = gate.enter(Some(soon), || false).map(|_| ());
        assert!(
            matches!(&waited, Err(DbError::Timeout(m)) if m.contains("WAL")),
            "{waited:?}"
        );
        assert!(Instant::now() >= soon, "it waited for its deadline");
        drop(reading);
        gate.after_checkpoint(250, 250, max, "t");
        assert!(
            gate.is_closed(),
            "the WAL still grew: a write may restart it"
        );
        gate.after_checkpoint(250, 250, max, "t");
        assert!(
            !gate.is_closed(),
            "no write came, every frame copied, no read open"
        );
        for _ in 0..3 {
            gate.after_checkpoint(250, 250, max, "t");
            assert!(!gate.is_closed(), "nothing holds the WAL: it stays open");
        }
        gate.after_checkpoint(300, 250, max, "t");
        assert!(gate.is_closed());
        gate.after_checkpoint(20, 0, max, "t");
        assert!(!gate.is_closed(), "the WAL restarted");
        gate.after_checkpoint(300, 250, max, "t");
        gate.checkpoint_failed();
        assert!(!gate.is_closed(), "a failed checkpoint opens it");
        gate.after_checkpoint(400, 250, max, "t");
        let image = gate.enter_image();
        assert!(!gate.is_closed(), "an image opens it");
        gate.after_checkpoint(500, 250, max, "t");
        assert!(
            !gate.is_closed(),
            "and it does not close while one is built"
        );
        drop(image);
        gate.after_checkpoint(600, 250, max, "t");
        assert!(gate.is_closed());
    }
}
