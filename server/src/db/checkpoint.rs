//! The checkpointer: copies the WAL's committed frames into the database file on a thread of
//! its own, so that no write waits for it.
//!
//! SQLite's automatic checkpoint runs inside the `COMMIT` that crosses 1,000 WAL frames: on a
//! node that is the applier's (or the leader's executor's) commit, with two fsyncs of up to
//! 4 MiB, while the next write waits for that apply. Measured on a 3-node cluster on one disk,
//! that put 7–12 ms stalls into 1 % of sequential 1-row writes (BENCHMARKS.md, session 8). The
//! writing connections therefore set `wal_autocheckpoint=0`, and this thread runs a `PASSIVE`
//! checkpoint every [`INTERVAL`]: it never blocks a writer or a reader, copies what no reader
//! still needs, and lets the next writer restart the WAL from its start. Content is unaffected:
//! when a node checkpoints never changes its pages (the spike's finding), only how large its
//! WAL grows between checkpoints (a tick's worth of writes, instead of 1,000 frames).

use super::error::{DbError, Result};
use rusqlite::Connection;
use std::path::Path;
use std::time::Duration;

/// How often the WAL is checkpointed.
const INTERVAL: Duration = Duration::from_millis(100);

/// Stops its thread when dropped.
pub(crate) struct Checkpointer {
    _stop: crossbeam_channel::Sender<()>,
}

impl Checkpointer {
    /// Start checkpointing the WAL database at `path` every [`INTERVAL`].
    pub(crate) fn start(path: &Path) -> Result<Checkpointer> {
        let conn = Connection::open(path)?;
        conn.execute_batch("PRAGMA synchronous=NORMAL")?;
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let name = path.display().to_string();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(INTERVAL)
                {
                    if let Err(e) = checkpoint(&conn) {
                        tracing::warn!(database = %name, error = %e, "WAL checkpoint failed");
                    }
                }
            })
            .map_err(|e| DbError::Internal(format!("spawn the checkpoint thread: {e}")))?;
        Ok(Checkpointer { _stop: stop })
    }
}

/// One `PASSIVE` checkpoint; a no-op when every frame is in the database already.
fn checkpoint(conn: &Connection) -> Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
    Ok(())
}

/// Leave checkpoints to the [`Checkpointer`] on a connection that commits.
pub(crate) fn leave_to_checkpointer(conn: &Connection) -> Result<()> {
    conn.execute_batch("PRAGMA wal_autocheckpoint=0")?;
    Ok(())
}
