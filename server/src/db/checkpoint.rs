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

use super::error::{DbError, Result};
use rusqlite::Connection;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the WAL is checkpointed.
const INTERVAL: Duration = Duration::from_millis(100);
/// WAL frames past which a commit checkpoints itself (and the next writer restarts the WAL).
pub(crate) const BACKSTOP_FRAMES: u32 = 4096;
/// Least time between two warnings of a failing checkpoint.
const WARN_EVERY: Duration = Duration::from_secs(60);

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
    /// Start checkpointing the WAL database at `path` every [`INTERVAL`].
    pub(crate) fn start(path: &Path) -> Result<Checkpointer> {
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
                        Ok(frames) => seen.wal_frames.store(frames, Ordering::Relaxed),
                        Err(e) => {
                            seen.failures.fetch_add(1, Ordering::Relaxed);
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
/// frames in the WAL.
fn checkpoint(conn: &Connection) -> Result<u64> {
    let frames: i64 = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?;
    Ok(u64::try_from(frames).unwrap_or(0))
}

/// Leave checkpoints to the [`Checkpointer`] on a connection that commits, but for the
/// backstop (see the module docs).
pub(crate) fn leave_to_checkpointer(conn: &Connection) -> Result<()> {
    conn.execute_batch(&format!("PRAGMA wal_autocheckpoint={BACKSTOP_FRAMES}"))?;
    Ok(())
}
