//! A std thread that owns one SQLite object and runs jobs on it, awaitable from tokio.
//!
//! rusqlite calls block (disk I/O, fsync, busy waits), so they must never run on a tokio worker
//! thread. Each long-lived connection (the applier, the executor) therefore lives on its own
//! thread; async callers send it a closure and await the answer on a oneshot channel. Jobs run
//! strictly in submission order, which is exactly the ordering the apply path needs.

use super::error::{DbError, Result};
use tokio::sync::oneshot;

type Job<T> = Box<dyn FnOnce(&mut T) + Send>;

/// Handle to the thread; dropping every clone lets the thread finish queued jobs and exit.
pub(crate) struct Worker<T> {
    jobs: crossbeam_channel::Sender<Job<T>>,
}

impl<T> Clone for Worker<T> {
    fn clone(&self) -> Self {
        Worker {
            jobs: self.jobs.clone(),
        }
    }
}

impl<T: Send + 'static> Worker<T> {
    /// Move `state` onto a new thread named `name`.
    pub(crate) fn spawn(name: &str, mut state: T) -> Result<Worker<T>> {
        let (jobs, rx) = crossbeam_channel::unbounded::<Job<T>>();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                for job in rx {
                    job(&mut state);
                }
            })
            .map_err(|e| DbError::Internal(format!("spawn thread {name}: {e}")))?;
        Ok(Worker { jobs })
    }

    /// Run `f` on the thread and await its result.
    pub(crate) async fn call<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut T) -> Result<R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job<T> = Box::new(move |state: &mut T| {
            // The caller may have given up waiting; the job has still run to completion.
            let _ = tx.send(f(state));
        });
        self.jobs
            .send(job)
            .map_err(|_| DbError::Internal("database worker thread has stopped".into()))?;
        rx.await
            .map_err(|_| DbError::Internal("database worker thread stopped mid-job".into()))?
    }
}
