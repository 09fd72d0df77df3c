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

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::error::{DbError, Result};
use tokio::sync::oneshot;

type Job<T> = Box<dyn FnOnce(&mut T) + Send>;

/// Handle to the thread; dropping every clone lets the thread finish queued jobs and exit.
pub(crate) struct Worker<T> {
    queue: Arc<Queue<T>>,
    state: Arc<Mutex<T>>,
}

/// The jobs waiting for the thread. A mutex and a condition variable, not a channel: a
/// channel's receiver spins and yields the CPU several times before it sleeps, and a
/// follower's applier, which waits for every delta, spent a fifth of its time in those yields
/// (BENCHMARKS.md, session 22).
struct Queue<T> {
    waiting: Mutex<Waiting<T>>,
    ready: Condvar,
}

struct Waiting<T> {
    jobs: VecDeque<Job<T>>,
    /// Live [`Worker`] handles; at 0 the thread ends once the queue is empty.
    handles: usize,
    /// The thread has ended: nothing queued would run.
    closed: bool,
}

impl<T> Queue<T> {
    /// Jobs run outside this lock, so a panicking job cannot poison it.
    fn lock(&self) -> MutexGuard<'_, Waiting<T>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next job; `None` once it is empty and no handle is left.
    fn next(&self) -> Option<Job<T>> {
        let mut waiting = self.lock();
        loop {
            if let Some(job) = waiting.jobs.pop_front() {
                return Some(job);
            }
            if waiting.handles == 0 {
                return None;
            }
            waiting = self.ready.wait(waiting).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Queues `job`; `false` if the thread has ended.
    fn push(&self, job: Job<T>) -> bool {
        {
            let mut waiting = self.lock();
            if waiting.closed {
                return false;
            }
            waiting.jobs.push_back(job);
        }
        self.ready.notify_one();
        true
    }
}

/// Closes the queue when the thread ends, however it ends: the jobs still queued are dropped
/// (their callers get an error), and later ones are refused.
struct CloseOnExit<T>(Arc<Queue<T>>);

impl<T> Drop for CloseOnExit<T> {
    fn drop(&mut self) {
        let dropped = {
            let mut waiting = self.0.lock();
            waiting.closed = true;
            std::mem::take(&mut waiting.jobs)
        };
        drop(dropped);
    }
}

impl<T> Clone for Worker<T> {
    fn clone(&self) -> Self {
        self.queue.lock().handles += 1;
        Worker {
            queue: self.queue.clone(),
            state: self.state.clone(),
        }
    }
}

impl<T> Drop for Worker<T> {
    fn drop(&mut self) {
        let last = {
            let mut waiting = self.queue.lock();
            waiting.handles -= 1;
            waiting.handles == 0
        };
        if last {
            self.queue.ready.notify_all();
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
        let queue: Arc<Queue<T>> = Arc::new(Queue {
            waiting: Mutex::new(Waiting {
                jobs: VecDeque::new(),
                handles: 1,
                closed: false,
            }),
            ready: Condvar::new(),
        });
        let state = Arc::new(Mutex::new(state));
        let (on_thread, jobs) = (state.clone(), queue.clone());
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let jobs = CloseOnExit(jobs);
                while let Some(job) = jobs.0.next() {
                    let Some(mut state) = lock(&on_thread) else {
                        // Dropping the job drops its answer channel: the caller gets an error.
                        return;
                    };
                    job(&mut *state);
                }
            })
            .map_err(|e| DbError::Internal(format!("spawn thread {name}: {e}")))?;
        Ok(Worker { queue, state })
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
        if !self.queue.push(job) {
            return Err(DbError::Internal(
                "database worker thread has stopped".into(),
            ));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Jobs run in the order they were sent, on the worker's thread.
    #[tokio::test]
    async fn jobs_run_in_order_on_the_thread() -> anyhow::Result<()> {
        let worker = Worker::spawn("test-worker", Vec::<u32>::new())?;
        let calls: Vec<_> = (0..100u32)
            .map(|i| {
                let worker = worker.clone();
                async move {
                    worker
                        .call(move |seen| {
                            seen.push(i);
                            Ok(std::thread::current().name().map(str::to_owned))
                        })
                        .await
                }
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            // Awaited one by one: each is queued only when first polled.
            let name = call.await?;
            anyhow::ensure!(
                name.as_deref() == Some("test-worker"),
                "job {i} ran on {name:?}"
            );
        }
        let seen = worker.call(|seen| Ok(seen.clone())).await?;
        anyhow::ensure!(seen == (0..100).collect::<Vec<_>>(), "{seen:?}");
        Ok(())
    }

    /// A job that panics ends the thread: the calls after it get an error, none hangs.
    #[tokio::test]
    async fn a_panicking_job_fails_the_later_calls_instead_of_hanging() -> anyhow::Result<()> {
        let worker = Worker::spawn("test-worker", 0u32)?;
        let panicked = worker.call(|_| -> Result<()> { panic!("boom") }).await;
        anyhow::ensure!(panicked.is_err());
        for _ in 0..3 {
            let later = tokio::time::timeout(Duration::from_secs(5), worker.call(|n| Ok(*n)))
                .await
                .map_err(|_| anyhow::anyhow!("a call after the panic hangs"))?;
            anyhow::ensure!(later.is_err(), "{later:?}");
        }
        Ok(())
    }

    /// Dropping every handle lets the thread finish what is queued and stop.
    #[tokio::test]
    async fn the_thread_finishes_queued_jobs_after_the_last_handle_is_dropped() -> anyhow::Result<()>
    {
        let (done, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let worker = Worker::spawn("test-worker", done)?;
        let queued = worker.clone();
        let call = tokio::spawn(async move {
            queued
                .call(|done| {
                    std::thread::sleep(Duration::from_millis(50));
                    let _ = done.send(1);
                    Ok(())
                })
                .await
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(worker);
        call.await??;
        anyhow::ensure!(rx.recv().await == Some(1));
        // The thread dropped its state (and the sender in it) when it stopped.
        let ended = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await?;
        anyhow::ensure!(ended.is_none());
        Ok(())
    }
}
