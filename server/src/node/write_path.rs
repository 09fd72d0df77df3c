//! The leader's write path: group commit, capture, propose, answer — pipelined.
//!
//! Writes queue on a channel. The batcher takes every write waiting at that moment (up to
//! `max_batch_requests`), executes them together on the executor connection (each request in
//! its own savepoint, so a failing one rolls back alone), captures the changed pages as ONE
//! delta, rolls back, and proposes the delta through Raft. When the entry is committed (on a
//! quorum's disks), every request gets its own result with the log index, before the leader
//! applies it; reads that must see it wait for the applied index.
//!
//! Writes that arrive meanwhile form the next batch. With `write_pipeline_depth` 1 (the
//! default) it waits for the previous one's commit and the leader's apply, collects every
//! write that arrived meanwhile, and waits a moment ([`Returns::gather`]) for the writers the
//! last batch answered that usually come back at once, so concurrent writers stay in one
//! batch. With a deeper pipeline it does not wait for the round trip: while a delta is still
//! waiting for its quorum, the executor runs the next batch on top of the deltas not yet
//! applied (see `db::chain`), so capture, the Raft round trip and the apply of consecutive
//! batches overlap; once everything is committed it waits for the apply instead (already
//! running, and cheaper than laying the pages again). Either way the batcher knows where a
//! batch will run before it collects it, so any wait makes the batch larger.
//!
//! Proposals are sent to Raft in capture order. A delta captured on top of another names that
//! one's tag and applies only right after it; if one is lost (a leadership change, a lost
//! quorum), those after it are skipped as stale on every node, their requests get UNAVAILABLE
//! (a retry with the same request id is safe), and the next batch waits until everything in
//! the log is applied ([`settled`]) and executes on the committed state. So does a batch
//! after a delta that cannot be stacked on (a schema change, a large delta, VACUUM, an
//! interactive transaction), and the first batch of a new term.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::error::NodeError;
use super::NodeInner;
use crate::db::{
    ExecutedBatch, ExecutorHandle, Link, Pipeline, StatementOutcome, WriteOutcome, WriteRequest,
};
use crate::raft::types::{ApplyResult, Command, TypeConfig};
use openraft::raft::responder::Responder;

/// How long a proposal may take before its requests are answered UNAVAILABLE (outcome unknown;
/// a retry with the same request id returns the real result).
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a batch (or a Begin) waits for an earlier entry of unknown outcome to settle before
/// its requests are answered UNAVAILABLE, unexecuted.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a batch waits for the writers the last one answered (see [`Returns::gather`]),
/// however long the last batch took.
const MAX_GATHER_WAIT: Duration = Duration::from_millis(3);

#[derive(Clone, Debug, PartialEq)]
pub struct WriteReply {
    pub results: Vec<StatementOutcome>,
    pub log_index: u64,
    pub deduplicated: bool,
}

/// What the write queue carries: a write for the next group commit, or an interactive
/// transaction waiting for the executor (see `transaction.rs`).
pub(crate) enum WriteJob {
    Write(PendingWrite),
    Begin(super::transaction::PendingBegin),
}

pub(crate) struct PendingWrite {
    pub request: WriteRequest,
    pub reply: oneshot::Sender<Result<WriteReply, NodeError>>,
    /// When it was queued: before or after the last batch was answered (see
    /// [`Returns::gather`]).
    pub queued: Instant,
    /// The span of the request that queued it: the batch that carries it joins its trace.
    pub span: tracing::Span,
}

/// Starts the batcher on a thread of its own, with a single-threaded runtime: it executes its
/// batches there itself ([`ExecutorHandle::execute_batch_on`]), which blocks that thread and
/// no runtime worker, and hands nothing to another thread on the way. The tasks it spawns
/// (one per delta in flight, which answers its writers) run on it too. It stops when the
/// node's runtime shuts down (it holds the node, so its queue never closes by itself).
pub(crate) fn spawn_batcher(
    node: Arc<NodeInner>,
    executor: ExecutorHandle,
    queue: mpsc::Receiver<WriteJob>,
    max_batch: usize,
    depth: usize,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (alive, node_runtime_gone) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _alive = alive;
        std::future::pending::<()>().await
    });
    std::thread::Builder::new()
        .name("write-batcher".into())
        .spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    () = run_batcher(node, executor, queue, max_batch, depth) => {}
                    _ = node_runtime_gone => {}
                }
            })
        })?;
    Ok(())
}

async fn run_batcher(
    node: Arc<NodeInner>,
    executor: ExecutorHandle,
    mut queue: mpsc::Receiver<WriteJob>,
    max_batch: usize,
    depth: usize,
) {
    let mut pipe = Pipe {
        depth,
        ..Pipe::default()
    };
    let mut returns = Returns::default();
    while let Some(job) = queue.recv().await {
        let mut batch = Vec::new();
        // A transaction takes its turn in queue order: the writes before it commit first.
        let mut begin = None;
        match job {
            WriteJob::Write(w) => batch.push(w),
            WriteJob::Begin(b) => begin = Some(b),
        }
        // Where the batch runs is settled before it is collected: the writes that arrive while
        // it waits for room in the pipeline, or for the leader's apply, join it.
        let place = match batch.is_empty() {
            true => None,
            false => Some(pipe.next(&node).await),
        };
        take_queued(&mut queue, &mut batch, &mut begin, max_batch);
        let mut ahead = RunAhead::new(&executor);
        if let Some(last) = pipe.gathers_after(&place) {
            let waited = returns
                .gather(
                    &mut queue, &mut batch, &mut begin, max_batch, last, &mut ahead,
                )
                .await;
            if let Some(waited) = waited {
                node.metrics.observe_gather_wait(waited);
            }
            node.metrics.ran_ahead(ahead.given);
        }
        returns.last_batch = batch.len();
        if let Some(place) = place {
            // One span per group commit, in the trace of its first request; the others link
            // to it.
            let span =
                tracing::info_span!(parent: &batch[0].span, "write.batch", size = batch.len());
            for w in &batch[1..] {
                span.follows_from(&w.span);
            }
            process_batch(&node, &executor, batch, place, ahead.given, &mut pipe)
                .instrument(span)
                .await;
        }
        if let Some(begin) = begin {
            pipe.drain().await;
            super::transaction::run(&node, &executor, begin).await;
        }
    }
}

/// What the batcher knows of writers coming back after their answer (see
/// [`Returns::gather`]).
struct Returns {
    /// Writes in the last batch.
    last_batch: usize,
    /// The share of a batch's writes followed by another write while the next batch was
    /// gathered: about 1 for writers that send their next write as soon as they are answered,
    /// less for writers that pause between writes.
    share: f64,
}

impl Default for Returns {
    fn default() -> Self {
        Returns {
            last_batch: 0,
            share: 1.0,
        }
    }
}

impl Returns {
    /// Waits until as many writes came since the `last` batch was answered as its writers are
    /// expected to send back (or a transaction comes), for at most the time that batch took
    /// (and [`MAX_GATHER_WAIT`]), then takes whatever else is queued. Returns how long it
    /// waited, if it did.
    ///
    /// Without it, concurrent writers split into alternating batches: the first writer back
    /// after a commit starts the next batch alone, the others arrive microseconds later and
    /// wait a whole round trip for the batch after it, so each write takes about two. The wait
    /// counts from the first write back, not from the answer: a load generator or a network
    /// slow to turn around delays them all alike. It is bounded by a batch's time, what a
    /// writer missing the batch would wait for the next (half of it cut off the last of 64
    /// writers once the batch no longer waited for the leader's apply first, and split them
    /// into two batches: BENCHMARKS.md, session 16). Writers that pause between writes do
    /// not come back in that time; the share that did is what the next batch expects, so
    /// they are not waited for. (Tokio's timers tick in milliseconds: a wait ends on the tick
    /// after its deadline.) While it waits, the executor runs the writes already there
    /// (`ahead`): the batch's execution overlaps the wait for its last writers.
    async fn gather(
        &mut self,
        queue: &mut mpsc::Receiver<WriteJob>,
        batch: &mut Vec<PendingWrite>,
        begin: &mut Option<super::transaction::PendingBegin>,
        max_batch: usize,
        last: &Answered,
        ahead: &mut RunAhead<'_>,
    ) -> Option<Duration> {
        // Every write in the batch but these came after the answer.
        let waiting = batch.iter().filter(|w| w.queued < last.at).count();
        let expected = (self.share * self.last_batch as f64) as usize;
        let target = (waiting + expected).min(max_batch);
        let started = Instant::now();
        let mut waited = None;
        if begin.is_none() && batch.len() < target {
            let wait = last.took.min(MAX_GATHER_WAIT);
            let deadline = tokio::time::Instant::from_std(started + wait);
            while begin.is_none() && batch.len() < target {
                ahead.catch_up(batch);
                match tokio::time::timeout_at(deadline, queue.recv()).await {
                    Ok(Some(WriteJob::Write(w))) => {
                        batch.push(w);
                        take_queued(queue, batch, begin, max_batch);
                    }
                    Ok(Some(WriteJob::Begin(b))) => *begin = Some(b),
                    Ok(None) | Err(_) => break,
                }
            }
            waited = Some(started.elapsed());
        }
        // What else came meanwhile joins too, and counts as having come back.
        take_queued(queue, batch, begin, max_batch);
        let back = batch.len() - waiting;
        if self.last_batch > 0 {
            self.share = (back as f64 / self.last_batch as f64).min(1.0);
        }
        tracing::debug!(
            expected,
            back,
            batch = batch.len(),
            waited_us = started.elapsed().as_micros() as u64,
            "write batch gathered"
        );
        waited
    }
}

/// The writes of a gathering batch the executor ran already ([`ExecutorHandle::run_ahead`]);
/// its capture runs the rest after them.
struct RunAhead<'e> {
    executor: &'e ExecutorHandle,
    /// Writes of the batch looked at...
    seen: usize,
    /// ...and of those, the ones given to the executor: all but VACUUMs, which run alone.
    given: usize,
}

impl<'e> RunAhead<'e> {
    fn new(executor: &'e ExecutorHandle) -> Self {
        RunAhead {
            executor,
            seen: 0,
            given: 0,
        }
    }

    /// Runs the writes that joined `batch` since the last call.
    fn catch_up(&mut self, batch: &[PendingWrite]) {
        let requests: Vec<WriteRequest> = batch[self.seen..]
            .iter()
            .filter(|w| !crate::db::runs_alone(&w.request))
            .map(|w| w.request.clone())
            .collect();
        self.seen = batch.len();
        if requests.is_empty() {
            return;
        }
        // Given even if they fail to run: the capture runs the whole batch again then.
        self.given += requests.len();
        if let Err(e) = self.executor.run_ahead(requests) {
            tracing::debug!(error = %e, "running a gathering batch's writes failed; they run at its capture");
        }
    }
}

/// Moves the writes already queued into `batch`, up to `max_batch`, stopping at a transaction.
fn take_queued(
    queue: &mut mpsc::Receiver<WriteJob>,
    batch: &mut Vec<PendingWrite>,
    begin: &mut Option<super::transaction::PendingBegin>,
    max_batch: usize,
) {
    while begin.is_none() && batch.len() < max_batch {
        match queue.try_recv() {
            Ok(WriteJob::Write(w)) => batch.push(w),
            Ok(WriteJob::Begin(b)) => *begin = Some(b),
            Err(_) => break,
        }
    }
}

/// The batcher's deltas in flight.
#[derive(Default)]
struct Pipe {
    /// One task per delta in flight, oldest first: answers its requests when the entry is
    /// committed or failed, and yields whether it was committed.
    in_flight: VecDeque<JoinHandle<Answered>>,
    /// The link of the last delta proposed, when the next batch may run on top of what is in
    /// flight. `None` after a failure, a delta that cannot be stacked on, or a settle.
    stack: Option<Link>,
    /// The term the last batch was executed in.
    term: u64,
    /// Most deltas in flight at once (`write_pipeline_depth`); 1: none is stacked on.
    depth: usize,
    /// The last delta to finish: when its requests were answered, and how long that took.
    answered: Option<Answered>,
}

impl Pipe {
    /// What the next batch executes on, once there is room in the pipeline; or the error to
    /// answer it with, unexecuted.
    async fn next(&mut self, node: &NodeInner) -> Result<Pipeline, NodeError> {
        loop {
            // Any delta in flight that already failed ends the chain, not only the oldest.
            while let Some(at) = self.in_flight.iter().position(|t| t.is_finished()) {
                if let Some(task) = self.in_flight.remove(at) {
                    self.finished(task).await;
                }
            }
            // With every delta committed, only the leader's own applies are outstanding: they
            // are running, and waiting for them costs less than laying their pages again.
            if self.stack.is_none() || self.in_flight.is_empty() {
                self.settle(node).await?;
                return Ok(Pipeline::Settled);
            }
            if self.in_flight.len() < self.depth {
                node.wait_leader_ready().await?;
                // A chain never crosses terms: what this node proposed in an earlier term may
                // be lost (its successors would only be skipped as stale).
                if self.term != current_term(node) {
                    self.stack = None;
                    continue;
                }
                return Ok(Pipeline::OnTop(self.stack.take()));
            }
            if let Some(task) = self.in_flight.pop_front() {
                self.finished(task).await;
            }
        }
    }

    /// The last delta answered, when a batch to run at `place` gathers the writers it
    /// answered (see [`Returns::gather`]): only at depth 1, where every batch runs on the
    /// settled state. A deeper pipeline runs the writers that come back on top of the batch
    /// in flight instead of waiting for them.
    fn gathers_after(&self, place: &Option<Result<Pipeline, NodeError>>) -> Option<&Answered> {
        match place {
            Some(Ok(Pipeline::Settled)) if self.depth == 1 => self.answered.as_ref(),
            _ => None,
        }
    }

    /// Waits for a delta's task; a failed one ends the chain. Returns whether it committed.
    async fn finished(&mut self, task: JoinHandle<Answered>) -> bool {
        let Ok(answered) = task.await else {
            self.stack = None;
            return false;
        };
        let committed = answered.committed;
        self.answered = Some(answered);
        if !committed {
            self.stack = None;
        }
        committed
    }

    /// Waits for every delta in flight; the next batch settles first. Returns whether all of
    /// them were committed.
    async fn drain(&mut self) -> bool {
        let mut all = true;
        while let Some(task) = self.in_flight.pop_front() {
            all &= self.finished(task).await;
        }
        self.stack = None;
        all
    }

    /// Drains the pipeline and waits until this ready leader has applied its whole log: what
    /// runs next, runs on the committed state.
    async fn settle(&mut self, node: &NodeInner) -> Result<(), NodeError> {
        self.drain().await;
        ready_to_capture(node).await?;
        self.term = current_term(node);
        Ok(())
    }
}

fn current_term(node: &NodeInner) -> u64 {
    node.raft.metrics().borrow().current_term
}

async fn process_batch(
    node: &Arc<NodeInner>,
    executor: &ExecutorHandle,
    batch: Vec<PendingWrite>,
    place: Result<Pipeline, NodeError>,
    ran_ahead: usize,
    pipe: &mut Pipe,
) {
    let (alone, writes): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .partition(|w| crate::db::runs_alone(&w.request));
    if !writes.is_empty() {
        match place {
            Ok(pipeline) => commit_batch(node, executor, writes, pipeline, ran_ahead, pipe).await,
            Err(e) => refuse(writes, &e),
        }
    }
    for w in alone {
        // VACUUM rewrites every page, and a request without foreign keys must not share its
        // transaction: on the committed state, and nothing on top of it.
        if let Err(e) = pipe.settle(node).await {
            refuse(vec![w], &e);
            continue;
        }
        commit_alone(node, executor, w).await;
    }
}

fn refuse(batch: Vec<PendingWrite>, e: &NodeError) {
    for w in batch {
        let _ = w.reply.send(Err(clone_unavailable(e)));
    }
}

fn clone_unavailable(e: &NodeError) -> NodeError {
    NodeError::unavailable(e.to_string(), e.leader_hint().cloned())
}

async fn commit_batch(
    node: &Arc<NodeInner>,
    executor: &ExecutorHandle,
    batch: Vec<PendingWrite>,
    pipeline: Pipeline,
    ran_ahead: usize,
    pipe: &mut Pipe,
) {
    let started = Instant::now();
    crate::stamp!("batch.start", 0);
    let requests: Vec<WriteRequest> = batch
        .iter()
        .skip(ran_ahead)
        .map(|w| w.request.clone())
        .collect();
    let executed = executor.execute_batch_on(requests, pipeline, ran_ahead);
    let ExecutedBatch {
        delta,
        outcomes,
        link,
        rows_held,
    } = match executed {
        Ok(b) => b,
        Err(crate::db::DbError::TooLarge(why)) => {
            // Nothing of it was proposed: what is in flight is unchanged.
            return too_large(node, executor, batch, why, pipe).await;
        }
        Err(crate::db::DbError::Stale(why)) => {
            // The chain was out of step with the database (a leadership change): nothing ran,
            // and a retry settles first.
            pipe.stack = None;
            tracing::warn!(reason = %why, "a write batch on the pipeline did not run");
            let error = NodeError::unavailable(
                format!("the write did not run: {why}; retry"),
                node.leader_hint(),
            );
            return refuse(batch, &error);
        }
        Err(e) => {
            pipe.stack = None;
            tracing::error!(error = %e, "executing a write batch failed");
            for w in batch {
                let _ = w.reply.send(Err(NodeError::Internal(format!(
                    "executing the write failed: {e}"
                ))));
            }
            return;
        }
    };
    let executed_us = started.elapsed().as_micros() as u64;
    let Some(delta) = delta else {
        // Nothing to replicate; the chain in flight is unchanged. The outcomes may have been
        // found on deltas still in flight (a retried request id recorded by one, a constraint
        // one of them broke): they stand only once those are committed, and the answer's
        // index covers them.
        let committed = match pipe.drain().await {
            true => Ok(node.committed_token()),
            false => Err(NodeError::unavailable(
                "an earlier write this one depends on was not committed; retry",
                node.leader_hint(),
            )),
        };
        return answer(batch, outcomes, committed);
    };
    let (base, stacked) = (Base::of(&delta), delta.parent_tag != 0);
    let bytes = match encoded_within_limit(node, &delta, "write") {
        Ok(bytes) => bytes,
        Err(why) => return too_large(node, executor, batch, why, pipe).await,
    };
    let batch_size = batch.len();
    let metrics = node.metrics.clone();
    let task = propose(node, executor, base, bytes, started, move |committed| {
        answer(batch, outcomes, committed);
        // The handlers hold their answers' rows from here.
        drop(rows_held);
        metrics.observe_batch(batch_size, started.elapsed());
    })
    .await;
    pipe.in_flight.push_back(task);
    node.metrics.batch_proposed(stacked);
    pipe.stack = link;
    tracing::debug!(batch_size, executed_us, "write batch proposed");
}

async fn commit_alone(node: &NodeInner, executor: &ExecutorHandle, v: PendingWrite) {
    let executed = match executor.execute_alone(v.request.clone()).await {
        Ok(executed) => executed,
        Err(e) => {
            tracing::error!(error = %e, "a write run alone (VACUUM, or without foreign keys) failed");
            let _ = v.reply.send(Err(match e {
                crate::db::DbError::TooLarge(why) => NodeError::TooLarge(why),
                e => NodeError::Internal(format!("executing the write failed: {e}")),
            }));
            return;
        }
    };
    let Some(delta) = executed.delta else {
        return answer(vec![v], executed.outcomes, Ok(node.applied_index()));
    };
    let outcomes = executed.outcomes;
    replicate(node, delta, move |committed| {
        answer(vec![v], outcomes, committed)
    })
    .await;
}

/// Proposes a captured delta, calls `on_commit` as soon as it is committed (or failed), and
/// returns once it is applied here: for what runs on the committed state alone (an
/// interactive transaction's commit, VACUUM).
pub(crate) async fn replicate(
    node: &NodeInner,
    delta: crate::db::PageDelta,
    on_commit: impl FnOnce(Result<u64, NodeError>) + Send + 'static,
) {
    let (tag, base) = (delta.tag, Base::of(&delta));
    let bytes = match encoded_within_limit(node, &delta, "transaction") {
        Ok(bytes) => bytes,
        Err(why) => return on_commit(Err(NodeError::TooLarge(why))),
    };
    let answer = AnswerOnce::new(on_commit);
    let (committed, sent) = send(node, base, bytes, &answer).await;
    let result = until_committed(node, tag, sent, committed).await;
    let index = result.as_ref().ok().copied();
    answer.give(result);
    if let Some(index) = index {
        if let Err(e) = node.wait_applied(index, PROPOSE_TIMEOUT).await {
            tracing::warn!(index, error = %e, "a committed write's apply was not confirmed");
        }
    }
}

/// The delta's wire bytes, or why they are over `max_delta_bytes` (the capture checks the page
/// bytes; the encoding adds a little per page). `what` names it to the client.
fn encoded_within_limit(
    node: &NodeInner,
    delta: &crate::db::PageDelta,
    what: &str,
) -> Result<Bytes, String> {
    let bytes = Bytes::from(delta.encode());
    let limit = node.config.max_delta_bytes;
    if bytes.len() > limit {
        return Err(format!(
            "the {what}'s delta is {} bytes, over the limit of {limit} bytes \
             (max_delta_bytes); split it into smaller transactions",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// What a proposal's task yields: whether the delta was committed, when its requests were
/// answered, and how long that took from the start of their batch.
struct Answered {
    committed: bool,
    at: Instant,
    took: Duration,
}

/// Sends a delta to Raft — in call order: a delta captured on top of another is proposed
/// after it — and returns the task that reports when `on_commit` ran: when it was committed
/// or failed. Once committed, the task commits the batch in place if the executor still keeps
/// it open ([`ExecutorHandle::commit_early`]), so the next batch need not wait for the leader's
/// apply; the task runs on the batcher's thread, like the batch.
async fn propose(
    node: &Arc<NodeInner>,
    executor: &ExecutorHandle,
    base: Base,
    bytes: Bytes,
    started: Instant,
    on_commit: impl FnOnce(Result<u64, NodeError>) + Send + 'static,
) -> JoinHandle<Answered> {
    let answer = AnswerOnce::new(on_commit);
    let (committed, sent) = send(node, base, bytes, &answer).await;
    let (node, executor) = (node.clone(), executor.clone());
    let span = tracing::Span::current();
    tokio::spawn(
        async move {
            let result = until_committed(&node, base.tag, sent, committed).await;
            let committed = result.as_ref().ok().copied();
            let at = answer.give(result);
            // Only at depth 1 does the executor keep a batch open for its commit in place.
            let in_place = node.config.write_pipeline_depth <= 1;
            if let Some(index) = committed.filter(|_| in_place) {
                // A quorum holds the entry, but it may be two followers: the database takes
                // it only once this node's own log does, so a crash never leaves the
                // database holding an entry the log lacks (`raft::lineage`). The leader's
                // flush starts before the followers' round trip, so this rarely waits; a
                // flush that never comes leaves the entry to the state machine's apply.
                let mut durable = node.log_store.durable_index();
                let flushed =
                    tokio::time::timeout(PROPOSE_TIMEOUT, durable.wait_for(|d| *d >= index))
                        .await
                        .is_ok_and(|r| r.is_ok());
                if flushed {
                    commit_early(&node, &executor, base, index);
                }
            }
            Answered {
                committed: committed.is_some(),
                at,
                took: at - started,
            }
        }
        .instrument(span),
    )
}

/// Commits the batch of the delta `base`, committed at `index`, in place if the executor
/// still keeps it open: every entry before it is applied or was committed so (the commit
/// notice comes in log order, and the batch ran on everything in the log). The state
/// machine's apply then finds it done; meanwhile the next batch settles on `index`.
fn commit_early(node: &NodeInner, executor: &ExecutorHandle, base: Base, index: u64) {
    match executor.commit_early(base.tag, base.version) {
        Ok(true) => {
            crate::stamp!("in_place", index);
            node.note_in_place(index);
            node.metrics.committed_in_place_early();
        }
        Ok(false) => {}
        // Rolled back (see `Executor::commit_early`): its apply lays the delta instead.
        Err(e) => tracing::warn!(index, error = %e, "committing a batch in place failed"),
    }
}

type OnCommit = Box<dyn FnOnce(Result<u64, NodeError>) + Send>;

/// A proposal's `on_commit`, run once by whoever knows its outcome first: the state machine's
/// commit notice, on its own task the moment it announces the entry (a hop to the proposal's
/// task and then to the writer's cost a thread wake-up each, about 60 µs of a 1 ms write), or
/// the proposal's task (an error, a timeout, or openraft's answer first).
#[derive(Clone)]
struct AnswerOnce(Arc<std::sync::Mutex<Answer>>);

enum Answer {
    Waiting(OnCommit),
    Given(Instant),
}

impl AnswerOnce {
    fn new(on_commit: impl FnOnce(Result<u64, NodeError>) + Send + 'static) -> Self {
        AnswerOnce(Arc::new(std::sync::Mutex::new(Answer::Waiting(Box::new(
            on_commit,
        )))))
    }

    /// Runs `on_commit` with `result` unless it ran already; when it ran.
    fn give(&self, result: Result<u64, NodeError>) -> Instant {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Answer::Given(at) = *state {
            return at;
        }
        crate::stamp!("answer", *result.as_ref().unwrap_or(&0));
        if let Answer::Waiting(on_commit) =
            std::mem::replace(&mut *state, Answer::Given(Instant::now()))
        {
            on_commit(result);
        }
        let at = Instant::now();
        *state = Answer::Given(at);
        at
    }
}

/// Where openraft answers a proposal.
type Response =
    <<TypeConfig as openraft::RaftTypeConfig>::Responder as Responder<TypeConfig>>::Receiver;
type Sent = Result<Response, openraft::error::Fatal<crate::raft::types::NodeId>>;

/// A proposed delta: its tag and the state it applies to.
#[derive(Clone, Copy)]
struct Base {
    tag: u64,
    version: u64,
    parent_tag: u64,
}

impl Base {
    fn of(delta: &crate::db::PageDelta) -> Self {
        Base {
            tag: delta.tag,
            version: delta.base_version,
            parent_tag: delta.parent_tag,
        }
    }
}

/// Registers the delta's commit notice, which answers through `answer` at once, and hands the
/// delta to Raft's core.
async fn send(
    node: &NodeInner,
    base: Base,
    bytes: Bytes,
    answer: &AnswerOnce,
) -> (oneshot::Receiver<u64>, Sent) {
    // The leader's apply of this delta joins the batch's trace (see `Proposals`).
    let tag = base.tag;
    let span = tracing::info_span!("raft.propose", tag);
    let (tx, committed) = oneshot::channel();
    let (answer, noted) = (answer.clone(), node.leader_commit.clone());
    let notice = move |index| {
        // Noted before anyone hears of it: a leased read's index covers every answered write.
        super::note_committed(&noted, index);
        answer.give(Ok(index));
        let _ = tx.send(index);
    };
    node.proposals
        .register(tag, base.version, base.parent_tag, span, Box::new(notice));
    crate::stamp!("propose", 0);
    let sent = node.raft.client_write_ff(Command::Delta(bytes)).await;
    (committed, sent)
}

/// The delta's log index once it is committed, or why it was not (maybe not yet: the outcome
/// of a timeout or a lost quorum is unknown, and the next capture settles first).
async fn until_committed(
    node: &NodeInner,
    tag: u64,
    sent: Sent,
    committed: tokio::sync::oneshot::Receiver<u64>,
) -> Result<u64, NodeError> {
    let result = match sent {
        Err(fatal) => Err(NodeError::unavailable(
            format!("the write could not be proposed: {fatal} (retry with the same request id)"),
            node.leader_hint(),
        )),
        Ok(response) => {
            let response = answered(node, response);
            tokio::pin!(response);
            tokio::select! {
                result = &mut response => result,
                // The commit notice (early commit's, or the state machine's as it is about to
                // apply the entry): committed, not stale (or it would not be announced), and
                // already noted. openraft's own answer comes a round through its core later.
                Ok(index) = committed => Ok(index),
            }
        }
    };
    // A committed proposal stays registered until the state machine applies its entry (its
    // apply joins the proposal's trace) and is removed there.
    if result.is_err() {
        node.proposals.forget(tag);
    }
    result
}

/// openraft's answer to a proposal, bounded by [`PROPOSE_TIMEOUT`] and by the leader's contact
/// with a quorum.
async fn answered(node: &NodeInner, response: Response) -> Result<u64, NodeError> {
    let lost_quorum = async {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            if let Err(e) = node.check_quorum_contact() {
                return e;
            }
        }
    };
    let outcome = tokio::select! {
        r = tokio::time::timeout(PROPOSE_TIMEOUT, response) => r,
        e = lost_quorum => {
            return Err(NodeError::unavailable(
                format!("{e} (the write's outcome is unknown; retry with the same request id)"),
                None,
            ))
        }
    };
    match outcome {
        Err(_) => Err(NodeError::unavailable(
            "the write was proposed but not committed in time (outcome unknown; retry with the same request id)",
            node.leader_hint(),
        )),
        Ok(Err(_)) => Err(NodeError::unavailable(
            "the write's proposal was dropped (leadership change?); retry with the same request id",
            node.leader_hint(),
        )),
        Ok(Ok(Err(e))) => Err(NodeError::unavailable(
            format!("the write could not be committed: {e} (retry with the same request id)"),
            node.leader_hint(),
        )),
        Ok(Ok(Ok(resp))) => match resp.data {
            ApplyResult::Applied => Ok(resp.log_id.index),
            ApplyResult::Stale | ApplyResult::NoOp => Err(NodeError::unavailable(
                "the write raced with a leadership change and was not applied; retry",
                node.leader_hint(),
            )),
        },
    }
}

/// Before anything is captured (a batch, a Begin) or looked up as committed or not (a retried
/// Commit): this node is a ready leader and its whole log is applied ([`settled`]), or the
/// error to answer, unexecuted.
pub(crate) async fn ready_to_capture(node: &NodeInner) -> Result<(), NodeError> {
    node.wait_leader_ready().await?;
    if settled(node, SETTLE_TIMEOUT).await {
        Ok(())
    } else {
        Err(NodeError::unavailable(
            "an earlier write's outcome is not known yet (no quorum?); retry with the same request id",
            node.leader_hint(),
        ))
    }
}

/// Whether everything in this leader's log is applied, waiting at most `within`. Nothing may
/// be captured before: after a proposal whose outcome is unknown (a timeout, a lost quorum),
/// its entry may still commit, and a delta captured meanwhile would be built on a state that
/// entry changes (and share its base version, so the entry's commit would answer for it).
/// Returns at once on the normal path, where the previous delta is applied before the next.
/// Everything answered counts too: a write answered by early commit may be in the log while
/// openraft's metrics do not show it yet (its core is still waiting for the leader's own flush).
/// A batch committed in place ahead of its apply counts as applied: the database holds it and
/// everything before it.
async fn settled(node: &NodeInner, within: Duration) -> bool {
    let mut metrics = node.raft.metrics();
    let mut applied = node.applied.clone();
    let until = tokio::time::Instant::now() + within;
    loop {
        let target = metrics
            .borrow_and_update()
            .last_log_index
            .unwrap_or(0)
            .max(node.answered_index());
        if (*applied.borrow_and_update()).max(node.in_place_index()) >= target {
            return true;
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return false },
            changed = applied.changed() => if changed.is_err() { return false },
            () = tokio::time::sleep_until(until) => return false,
        }
    }
}

/// Answers every request of a batch: its own outcome, or the batch's commit error (which
/// voids any outcome: the batch may have run on top of deltas that were lost with it).
fn answer(
    batch: Vec<PendingWrite>,
    outcomes: Vec<WriteOutcome>,
    committed: Result<u64, NodeError>,
) {
    for (w, outcome) in batch.into_iter().zip(outcomes) {
        let reply = match (outcome, &committed) {
            // First: an outcome found on deltas in flight is void if they were not committed.
            (_, Err(NodeError::TooLarge(why))) => Err(NodeError::TooLarge(why.clone())),
            (_, Err(e)) => Err(clone_unavailable(e)),
            (WriteOutcome::Failed(e), _) => Err(NodeError::Db(e)),
            (WriteOutcome::Executed(results), Ok(index)) => Ok(WriteReply {
                results,
                log_index: *index,
                deduplicated: false,
            }),
            (WriteOutcome::Duplicate(results), Ok(index)) => Ok(WriteReply {
                results,
                log_index: *index,
                deduplicated: true,
            }),
        };
        let _ = w.reply.send(reply);
    }
}

/// A batch whose delta is over `max_delta_bytes`: nothing was committed. With several
/// requests, which one made it this large is unknown, so each runs alone and only the one over
/// the limit fails; a single request gets RESOURCE_EXHAUSTED naming the sizes.
async fn too_large(
    node: &Arc<NodeInner>,
    executor: &ExecutorHandle,
    batch: Vec<PendingWrite>,
    why: String,
    pipe: &mut Pipe,
) {
    if batch.len() > 1 {
        tracing::info!(requests = batch.len(), reason = %why, "group commit too large: running its requests one by one");
        for w in batch {
            // Each on the committed state: the pipeline is drained first.
            match pipe.settle(node).await {
                Ok(()) => {
                    let settled = Pipeline::Settled;
                    Box::pin(commit_batch(node, executor, vec![w], settled, 0, pipe)).await
                }
                Err(e) => refuse(vec![w], &e),
            }
        }
    } else {
        // Executed, never proposed: nothing will commit it in place.
        if let Err(e) = executor.end_open_batch().await {
            tracing::warn!(error = %e, "ending an oversized batch failed");
        }
        for w in batch {
            let _ = w.reply.send(Err(NodeError::TooLarge(why.clone())));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{load, ServeArgs};

    /// Threads of this process named `name` (as `/proc` shows them).
    fn threads_named(name: &str) -> usize {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            panic!("/proc/self/task is not readable");
        };
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim_end() == name)
            .count()
    }

    /// Waits up to 5 s until `threads_named(name)` is `count` (a new thread names itself once
    /// it runs).
    fn until_threads_named(name: &str, count: usize, what: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while threads_named(name) != count {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The commit notice and the proposal's task race to answer a batch: the first outcome is
    /// the answer, given once, and the loser learns when it was given.
    #[test]
    fn a_proposal_is_answered_once_with_the_first_outcome() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let answer = super::AnswerOnce::new(move |r: Result<u64, super::NodeError>| {
            let _ = tx.send(r.map_err(|e| e.to_string()));
        });
        let notice = answer.clone();
        let first = notice.give(Ok(7));
        let second = answer.give(Err(super::NodeError::unavailable("timed out", None)));
        assert_eq!(first, second, "the loser is told when the answer was given");
        assert_eq!(rx.try_recv(), Ok(Ok(7)));
        assert!(rx.try_recv().is_err(), "answered twice");
    }

    /// The batcher's thread holds the node, so its queue never closes: it must stop with the
    /// node's runtime, or every node a process starts and drops would leave a thread (and its
    /// open database) behind. No other test of this binary starts a node.
    #[test]
    fn the_batcher_thread_stops_with_the_nodes_runtime() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("raftlite.yaml");
        std::fs::write(
            &file,
            format!(
                // Starting a node binds no port (serving gRPC is a separate step).
                "node_id: 1\ndata_dir: {}\nlisten: 127.0.0.1:47000\n\
                 peer_listen: 127.0.0.1:47001\ninsecure: true\nmetrics_addr: off\n",
                dir.path().join("data").display()
            ),
        )?;
        let config = load(&ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let node = runtime.block_on(super::super::Node::start(config))?;
        until_threads_named("write-batcher", 1, "the node started no batcher thread");
        drop(node);
        runtime.shutdown_timeout(std::time::Duration::from_secs(5));
        until_threads_named(
            "write-batcher",
            0,
            "the batcher's thread outlived the node's runtime",
        );
        Ok(())
    }
}
