//! The leader's write path: group commit, capture, propose, answer.
//!
//! Writes queue on a channel. The batcher takes every write waiting at that moment (up to
//! `max_batch_requests`), executes them together on the executor connection (each request in
//! its own savepoint, so a failing one rolls back alone), captures the changed pages as ONE
//! delta, rolls back, and proposes the delta through Raft. When the entry is committed (on a
//! quorum's disks), every request gets its own result with the log index, before the leader
//! applies it; reads that must see it wait for the applied index. Writes that arrive meanwhile
//! form the next batch, executed once the delta is applied: that is what turns
//! one-at-a-time Raft round trips into throughput.
//!
//! The executor must capture on exactly the state the delta will be applied to, so the
//! pipeline is one delta deep, and a new leader executes only after it has applied an entry of
//! its own term (everything earlier is then applied). A delta that still races with a
//! leadership change is detected by its base version and skipped on every node; its requests
//! get UNAVAILABLE and a retry with the same request id is safe.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::error::NodeError;
use super::NodeInner;
use crate::db::{ExecutedBatch, ExecutorHandle, StatementOutcome, WriteOutcome, WriteRequest};
use crate::raft::types::{ApplyResult, Command};

/// How long a proposal may take before its requests are answered UNAVAILABLE (outcome unknown;
/// a retry with the same request id returns the real result).
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a batch (or a Begin) waits for an earlier entry of unknown outcome to settle before
/// its requests are answered UNAVAILABLE, unexecuted.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// The span of the request that queued it: the batch that carries it joins its trace.
    pub span: tracing::Span,
}

pub(crate) async fn run_batcher(
    node: Arc<NodeInner>,
    executor: ExecutorHandle,
    mut queue: mpsc::Receiver<WriteJob>,
    max_batch: usize,
) {
    while let Some(job) = queue.recv().await {
        let mut batch = Vec::new();
        // A transaction takes its turn in queue order: the writes before it commit first.
        let mut begin = None;
        match job {
            WriteJob::Write(w) => batch.push(w),
            WriteJob::Begin(b) => begin = Some(b),
        }
        while begin.is_none() && batch.len() < max_batch {
            match queue.try_recv() {
                Ok(WriteJob::Write(w)) => batch.push(w),
                Ok(WriteJob::Begin(b)) => begin = Some(b),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            // One span per group commit, in the trace of its first request; the others link
            // to it.
            let span =
                tracing::info_span!(parent: &batch[0].span, "write.batch", size = batch.len());
            for w in &batch[1..] {
                span.follows_from(&w.span);
            }
            process_batch(&node, &executor, batch)
                .instrument(span)
                .await;
        }
        if let Some(begin) = begin {
            super::transaction::run(&node, &executor, begin).await;
        }
    }
}

async fn process_batch(node: &NodeInner, executor: &ExecutorHandle, batch: Vec<PendingWrite>) {
    if let Err(e) = ready_to_capture(node).await {
        for w in batch {
            let _ = w.reply.send(Err(clone_unavailable(&e)));
        }
        return;
    }
    let (vacuums, writes): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .partition(|w| crate::db::is_vacuum(&w.request));
    if !writes.is_empty() {
        commit_batch(node, executor, writes, false).await;
    }
    for v in vacuums {
        commit_batch(node, executor, vec![v], true).await;
    }
}

fn clone_unavailable(e: &NodeError) -> NodeError {
    NodeError::unavailable(e.to_string(), e.leader_hint().cloned())
}

async fn commit_batch(
    node: &NodeInner,
    executor: &ExecutorHandle,
    batch: Vec<PendingWrite>,
    vacuum: bool,
) {
    let started = Instant::now();
    let requests: Vec<WriteRequest> = batch.iter().map(|w| w.request.clone()).collect();
    let executed = if vacuum {
        executor.execute_vacuum().await
    } else {
        executor.execute_batch(requests).await
    };
    let ExecutedBatch { delta, outcomes } = match executed {
        Ok(b) => b,
        Err(crate::db::DbError::TooLarge(why)) => {
            return too_large(node, executor, batch, vacuum, why).await;
        }
        Err(e) => {
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
    let encoded = delta.map(|d| (d.base_version, Bytes::from(d.encode())));
    let limit = node.config.max_delta_bytes;
    if let Some(size) = encoded
        .as_ref()
        .map(|(_, b)| b.len())
        .filter(|s| *s > limit)
    {
        // The capture checks the page bytes; the encoding adds a little per page.
        let why = format!(
            "the write's delta is {size} bytes, over the limit of {limit} bytes \
             (max_delta_bytes); split it into smaller transactions"
        );
        return too_large(node, executor, batch, vacuum, why).await;
    }
    let batch_size = batch.len();
    match encoded {
        None => answer(batch, outcomes, Ok(node.applied_index())),
        Some((base_version, bytes)) => {
            replicate_encoded(node, base_version, bytes, |committed| {
                answer(batch, outcomes, committed)
            })
            .await
        }
    }
    node.metrics.observe_batch(batch_size, started.elapsed());
    tracing::debug!(
        batch_size,
        executed_us,
        elapsed_us = started.elapsed().as_micros() as u64,
        "write batch committed"
    );
}

/// Proposes a captured delta, calls `on_commit` as soon as it is committed (or failed), and
/// returns once it is applied here: the next delta executes on the state this one leads to.
pub(crate) async fn replicate(
    node: &NodeInner,
    delta: crate::db::PageDelta,
    on_commit: impl FnOnce(Result<u64, NodeError>),
) {
    let base_version = delta.base_version;
    let bytes = Bytes::from(delta.encode());
    let limit = node.config.max_delta_bytes;
    if bytes.len() > limit {
        return on_commit(Err(NodeError::TooLarge(format!(
            "the transaction's delta is {} bytes, over the limit of {limit} bytes \
             (max_delta_bytes); split it into smaller transactions",
            bytes.len()
        ))));
    }
    replicate_encoded(node, base_version, bytes, on_commit).await
}

async fn replicate_encoded(
    node: &NodeInner,
    base_version: u64,
    bytes: Bytes,
    on_commit: impl FnOnce(Result<u64, NodeError>),
) {
    // The leader's apply of this delta joins the batch's trace, and the clients hear as soon
    // as it is committed (see `Proposals`).
    let span = tracing::info_span!("raft.propose", base_version);
    let committed = node.proposals.register(base_version, span.clone());
    let proposal = propose(node, bytes).instrument(span);
    tokio::pin!(proposal);
    tokio::select! {
        // On an error the entry may still commit: the next capture waits for it (`settled`).
        result = &mut proposal => on_commit(result),
        Ok(index) = committed => {
            node.note_committed(index);
            on_commit(Ok(index));
            // The next delta executes on the state this one leads to. The state machine
            // publishes the applied index as soon as the pages are written; openraft's answer
            // to the proposal comes a round through its core later, and is not needed (the
            // entry is committed and not stale, or it would not have been announced).
            if let Err(e) = node.wait_applied(index, PROPOSE_TIMEOUT).await {
                tracing::warn!(index, error = %e, "a committed write's apply was not confirmed");
            }
        }
    }
    node.proposals.forget(base_version);
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
async fn settled(node: &NodeInner, within: Duration) -> bool {
    let mut metrics = node.raft.metrics();
    let mut applied = node.applied.clone();
    let until = tokio::time::Instant::now() + within;
    loop {
        let target = metrics.borrow_and_update().last_log_index.unwrap_or(0);
        if *applied.borrow_and_update() >= target {
            return true;
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return false },
            changed = applied.changed() => if changed.is_err() { return false },
            () = tokio::time::sleep_until(until) => return false,
        }
    }
}

/// Answers every request of a batch: its own outcome, or the batch's commit error.
fn answer(
    batch: Vec<PendingWrite>,
    outcomes: Vec<WriteOutcome>,
    committed: Result<u64, NodeError>,
) {
    for (w, outcome) in batch.into_iter().zip(outcomes) {
        let reply = match (outcome, &committed) {
            (WriteOutcome::Failed(e), _) => Err(NodeError::Db(e)),
            (_, Err(e)) => Err(clone_unavailable(e)),
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
    node: &NodeInner,
    executor: &ExecutorHandle,
    batch: Vec<PendingWrite>,
    vacuum: bool,
    why: String,
) {
    if batch.len() > 1 {
        tracing::info!(requests = batch.len(), reason = %why, "group commit too large: running its requests one by one");
        for w in batch {
            Box::pin(commit_batch(node, executor, vec![w], vacuum)).await;
        }
    } else {
        for w in batch {
            let _ = w.reply.send(Err(NodeError::TooLarge(why.clone())));
        }
    }
}

/// Proposes a delta and waits until it is applied on this node; returns its log index.
async fn propose(node: &NodeInner, delta: Bytes) -> Result<u64, NodeError> {
    let write = node.raft.client_write(Command::Delta(delta));
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
        r = tokio::time::timeout(PROPOSE_TIMEOUT, write) => r,
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
        Ok(Err(e)) => Err(NodeError::unavailable(
            format!("the write could not be committed: {e} (retry with the same request id)"),
            node.leader_hint(),
        )),
        Ok(Ok(resp)) => match resp.data {
            ApplyResult::Applied => Ok(resp.log_id.index),
            ApplyResult::Stale | ApplyResult::NoOp => Err(NodeError::unavailable(
                "the write raced with a leadership change and was not applied; retry",
                node.leader_hint(),
            )),
        },
    }
}
