//! A std thread that owns one SQLite object and runs jobs on it, awaitable from tokio.
//!
//! rusqlite calls block (disk I/O, fsync, busy waits), so they must never run on a tokio worker
//! thread as an ordinary task. Each long-lived connection (the applier, the executor) therefore
//! lives on its own thread; async callers send it a closure and await the answer on a oneshot
//! channel. Jobs run strictly in submission order, which is exactly the ordering the apply path
//! needs.
//!
//! The write batcher, on a thread of its own, instead runs its batches on the executor
//! itself ([`Worker::call_here`]): the two thread hand-offs of a job (to the worker thread and
//! back) cost more than the executor's own work for a small batch. The object sits behind a
//! mutex, so such a call and the thread's jobs never run at once; their order is the order in
//! which they take it.

use std::sync::{Arc, Mutex, MutexGuard};

use super::error::{DbError, Result};
use tokio::sync::oneshot;

type Job<T> = Box<dyn FnOnce(&mut T) + Send>;

/// Handle to the thread; dropping every clone lets the thread finish queued jobs and exit.
pub(crate) struct Worker<T> {
    jobs: crossbeam_channel::Sender<Job<T>>,
    state: Arc<Mutex<T>>,
}

impl<T> Clone for Worker<T> {
    fn clone(&self) -> Self {
        Worker {
            jobs: self.jobs.clone(),
            state: self.state.clone(),
        }
    }
}

/// The object, unless a closure panicked while holding it (then, as when its thread has
/// stopped, nothing runs on it any more).
fn lock<T>(state: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    state.lock().ok()
}

fn stopped() -> DbError {
    DbError::Internal("database worker thread stopped mid-job".into())
}

impl<T: Send + 'static> Worker<T> {
    /// Move `state` onto a new thread named `name`.
    pub(crate) fn spawn(name: &str, state: T) -> Result<Worker<T>> {
        let (jobs, rx) = crossbeam_channel::unbounded::<Job<T>>();
        let state = Arc::new(Mutex::new(state));
        let on_thread = state.clone();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                for job in rx {
                    let Some(mut state) = lock(&on_thread) else {
                        // Dropping the job drops its answer channel: the caller gets an error.
                        return;
                    };
                    job(&mut state);
                }
            })
            .map_err(|e| DbError::Internal(format!("spawn thread {name}: {e}")))?;
        Ok(Worker { jobs, state })
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
        rx.await.map_err(|_| stopped())?
    }

    /// Run `f` on the calling thread, once the thread's current job is done; it blocks that
    /// thread, which must be one that may block: the write batcher's own, never a worker of
    /// a multi-threaded runtime.
    pub(crate) fn call_here<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&mut T) -> Result<R>,
    {
        debug_assert!(
            !matches!(
                tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()),
                Ok(tokio::runtime::RuntimeFlavor::MultiThread)
            ),
            "a database call blocking a runtime worker"
        );
        // A panic poisons the mutex on its way out (the state is not used again, as if the
        // thread had stopped); the caller gets an error, not the panic.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut state = lock(&self.state).ok_or_else(stopped)?;
            f(&mut state)
        }))
        .unwrap_or_else(|_| Err(DbError::Internal("a database job panicked".into())))
    }
}
