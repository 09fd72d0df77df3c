//! Interactive transactions: `Begin`, any mix of statements that see the transaction's own
//! writes, then `Commit` (one delta, one log entry) or `Rollback`.
//!
//! A transaction lives on the leader's executor connection, inside the batcher
//! (`write_path`): `Begin` queues like a write, and when its turn comes the batcher opens
//! `BEGIN IMMEDIATE` and serves only that transaction's calls until it ends. Other writes wait
//! in the queue meanwhile, as they would wait for SQLite's write lock, and group commit goes on
//! once it ends. It ends on `Commit`, `Rollback`, a statement that rolled it back, an idle
//! period of `transaction_idle_timeout` without a call, `transaction_max` after it began
//! (however busy: it holds the write lock), or a leadership change: in every case
//! but a successful commit nothing of it remains (the executor commits only what Raft
//! committed; see `db`).
//!
//! * **Unary calls with an id**, not a stream: every language's gRPC client makes unary calls
//!   easily (a DB-API connection is synchronous), and a follower forwards each call to the
//!   leader as it forwards writes. The id is 128 random bits, valid only for the token that
//!   began the transaction; an unknown id, or another token's, is ABORTED.
//! * **Commit retries**: a `Commit` carries a request id recorded in the transaction's delta.
//!   A retried Commit for a transaction no longer open finds that id (on a leader that has
//!   applied everything of earlier terms) and answers `deduplicated`, or ABORTED when the
//!   transaction never committed — which then never can. While a commit is replicating, a
//!   retry hears UNAVAILABLE (retry again): its outcome is not known yet.
//! * **A retried call inside a transaction** (same request id on `Execute`) answers its first
//!   result: the transaction keeps its calls' request ids in memory.

use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::error::NodeError;
use super::write_path;
use super::NodeInner;
use crate::db::{DbError, ExecutorHandle, Statement, StatementOutcome, TransactionStep};

/// Calls that may wait for an open transaction's attention.
const CALL_QUEUE: usize = 16;

/// One call of an interactive transaction, as a node handles (or forwards) it.
#[derive(Debug, Clone, PartialEq)]
pub enum TransactionCall {
    Begin,
    Execute {
        transaction_id: String,
        /// Deduplicates a retried call within the transaction; empty: none.
        request_id: String,
        statements: Vec<Statement>,
        /// The most bytes of rows the answer may hold: a follower's room for it
        /// ([`crate::db::WriteRequest::max_result_bytes`]).
        max_result_bytes: Option<usize>,
    },
    Commit {
        transaction_id: String,
        request_id: String,
    },
    Rollback {
        transaction_id: String,
    },
}

/// The answer to a [`TransactionCall`] of the same kind.
#[derive(Debug, Clone, PartialEq)]
pub enum TransactionReply {
    Begun { transaction_id: String },
    Executed(Vec<StatementOutcome>),
    Committed { log_index: u64, deduplicated: bool },
    RolledBack,
}

/// What the leader's transaction task takes from callers.
enum Call {
    Execute {
        request_id: String,
        statements: Vec<Statement>,
        max_result_bytes: Option<usize>,
        deadline: Instant,
        reply: oneshot::Sender<Result<Vec<StatementOutcome>, NodeError>>,
    },
    Commit {
        request_id: String,
        reply: oneshot::Sender<Result<TransactionReply, NodeError>>,
    },
    Rollback {
        reply: oneshot::Sender<()>,
    },
}

/// A `Begin` waiting in the write queue for the executor.
pub(crate) struct PendingBegin {
    pub principal: String,
    pub reply: oneshot::Sender<Result<String, NodeError>>,
}

/// The transaction open on this leader, if any (at most one: it holds the executor).
#[derive(Default)]
pub(crate) struct OpenTransactions {
    open: Mutex<Option<Open>>,
}

struct Open {
    id: String,
    principal: String,
    calls: mpsc::Sender<Call>,
    /// Set once its Commit started: a retried Commit must wait for the outcome.
    committing: bool,
}

impl OpenTransactions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Open>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The call channel of transaction `id` if `principal` owns it and it takes calls.
    fn calls(&self, id: &str, principal: &str) -> Result<mpsc::Sender<Call>, NodeError> {
        match &*self.lock() {
            Some(open) if open.id == id && open.principal == principal => {
                if open.committing {
                    Err(NodeError::unavailable(
                        "the transaction is being committed; retry the Commit with the same \
                         request id to learn its outcome",
                        None,
                    ))
                } else {
                    Ok(open.calls.clone())
                }
            }
            _ => Err(not_open()),
        }
    }

    fn set_committing(&self, id: &str) {
        if let Some(open) = self.lock().as_mut().filter(|o| o.id == id) {
            open.committing = true;
        }
    }

    fn close(&self, id: &str) {
        let mut open = self.lock();
        if open.as_ref().is_some_and(|o| o.id == id) {
            *open = None;
        }
    }
}

fn not_open() -> NodeError {
    NodeError::Aborted(
        "the transaction is not open on the leader (rolled back after its idle timeout or \
         its time limit, ended by an error or a leader change, or never begun here): nothing of \
         it was applied; run the whole transaction again"
            .into(),
    )
}

fn new_id() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl NodeInner {
    /// Runs one call of an interactive transaction on this node, the leader.
    pub(crate) async fn transaction_here(
        &self,
        principal: &str,
        call: TransactionCall,
        deadline: Instant,
    ) -> Result<TransactionReply, NodeError> {
        match call {
            TransactionCall::Begin => {
                let (reply, rx) = oneshot::channel();
                let begin = PendingBegin {
                    principal: principal.to_string(),
                    reply,
                };
                self.writes
                    .send(write_path::WriteJob::Begin(begin))
                    .await
                    .map_err(|_| NodeError::unavailable("the node is shutting down", None))?;
                let transaction_id = tokio::time::timeout_at(deadline.into(), rx)
                    .await
                    .map_err(|_| {
                        NodeError::Timeout(
                            "another transaction held the write lock until this Begin's \
                             deadline"
                                .into(),
                        )
                    })?
                    .map_err(|_| NodeError::unavailable("the node is shutting down", None))??;
                Ok(TransactionReply::Begun { transaction_id })
            }
            TransactionCall::Execute {
                transaction_id,
                request_id,
                statements,
                max_result_bytes,
            } => {
                let calls = self.transactions.calls(&transaction_id, principal)?;
                let (reply, rx) = oneshot::channel();
                let call = Call::Execute {
                    request_id,
                    statements,
                    max_result_bytes,
                    deadline,
                    reply,
                };
                calls.send(call).await.map_err(|_| not_open())?;
                Ok(TransactionReply::Executed(
                    rx.await.map_err(|_| not_open())??,
                ))
            }
            TransactionCall::Commit {
                transaction_id,
                request_id,
            } => match self.transactions.calls(&transaction_id, principal) {
                Ok(calls) => {
                    let (reply, rx) = oneshot::channel();
                    calls
                        .send(Call::Commit {
                            request_id: request_id.clone(),
                            reply,
                        })
                        .await
                        .map_err(|_| not_open())?;
                    match rx.await {
                        Ok(result) => result,
                        // The task ended without answering: look the commit up like a retry.
                        Err(_) => self.commit_outcome(&request_id).await,
                    }
                }
                Err(NodeError::Aborted(_)) => self.commit_outcome(&request_id).await,
                Err(e) => Err(e),
            },
            TransactionCall::Rollback { transaction_id } => {
                match self.transactions.calls(&transaction_id, principal) {
                    Ok(calls) => {
                        let (reply, rx) = oneshot::channel();
                        if calls.send(Call::Rollback { reply }).await.is_ok() {
                            let _ = rx.await;
                        }
                    }
                    // Being committed: too late to roll back, and its outcome is not known yet.
                    Err(e @ NodeError::Unavailable { .. }) => return Err(e),
                    // Already ended: nothing of it remains, which is what a rollback wants.
                    Err(_) => {}
                }
                Ok(TransactionReply::RolledBack)
            }
        }
    }

    /// The outcome of a Commit whose transaction is no longer open: its request id is in the
    /// database if (and only if) it committed. Asked on a ready leader whose whole log is
    /// applied: it has applied everything earlier leaders committed and every entry of its own.
    async fn commit_outcome(&self, request_id: &str) -> Result<TransactionReply, NodeError> {
        if request_id.is_empty() {
            return Err(not_open());
        }
        // An entry of unknown outcome (this commit's, say) must settle first: until then
        // "not recorded" would not mean "never committed".
        write_path::ready_to_capture(self).await?;
        if self
            .executor
            .request_recorded(request_id.to_string())
            .await?
        {
            Ok(TransactionReply::Committed {
                log_index: self.applied_index(),
                deduplicated: true,
            })
        } else {
            Err(not_open())
        }
    }
}

/// Serves one transaction on the executor, from `Begin` to its end (called by the batcher,
/// which takes no other write meanwhile).
pub(crate) async fn run(node: &NodeInner, executor: &ExecutorHandle, begin: PendingBegin) {
    if begin.reply.is_closed() {
        // Its caller stopped waiting (deadline) while another transaction held the lock: do
        // not open one nobody will use.
        return;
    }
    // Everything this leader proposed is applied before the write lock is taken: the applier
    // must never wait for a transaction.
    if let Err(e) = write_path::ready_to_capture(node).await {
        let _ = begin.reply.send(Err(e));
        return;
    }
    if let Err(e) = executor.begin().await {
        let _ = begin
            .reply
            .send(Err(NodeError::Internal(format!("BEGIN failed: {e}"))));
        return;
    }
    let id = new_id();
    let (calls_tx, mut calls) = mpsc::channel(CALL_QUEUE);
    *node.transactions.lock() = Some(Open {
        id: id.clone(),
        principal: begin.principal.clone(),
        calls: calls_tx,
        committing: false,
    });
    if begin.reply.send(Ok(id.clone())).is_ok() {
        tracing::debug!(transaction = %id, "transaction begun");
        serve(node, executor, &id, &mut calls).await;
    }
    node.transactions.close(&id);
    // Whatever is still open is discarded (a no-op after a commit or rollback).
    if let Err(e) = executor.rollback().await {
        tracing::error!(error = %e, "rolling back an interactive transaction failed");
    }
}

async fn serve(
    node: &NodeInner,
    executor: &ExecutorHandle,
    id: &str,
    calls: &mut mpsc::Receiver<Call>,
) {
    let idle = node.config.transaction_idle_timeout;
    let ends_at = Instant::now() + node.config.transaction_max;
    let term = node.raft.metrics().borrow().current_term;
    // A call retried under the same request id answers its first result. Calls of one
    // transaction are sequential, so only the last one can be retried: only it is kept.
    let mut last_answer: Option<(String, Vec<StatementOutcome>)> = None;
    loop {
        let left = ends_at.saturating_duration_since(Instant::now());
        let call = tokio::select! {
            call = tokio::time::timeout(idle.min(left), calls.recv()) => call,
            () = leadership_lost(node, term) => {
                tracing::info!(transaction = %id, "leadership changed: interactive transaction aborted");
                return;
            }
        };
        let call = match call {
            Ok(Some(call)) => call,
            Ok(None) => return,
            Err(_) if left <= idle => {
                tracing::warn!(transaction = %id, limit_ms = node.config.transaction_max.as_millis() as u64, "interactive transaction open too long: rolled back");
                return;
            }
            Err(_) => {
                tracing::info!(transaction = %id, idle_ms = idle.as_millis() as u64, "interactive transaction idle: rolled back");
                return;
            }
        };
        match call {
            Call::Execute {
                request_id,
                statements,
                max_result_bytes,
                deadline,
                reply,
            } => {
                if let Some((_, first)) = last_answer
                    .as_ref()
                    .filter(|(id, _)| !request_id.is_empty() && *id == request_id)
                {
                    let _ = reply.send(Ok(first.clone()));
                    continue;
                }
                // No statement runs past the transaction's own time limit.
                let step = executor
                    .transaction_execute_within(
                        statements,
                        Some(deadline.min(ends_at)),
                        max_result_bytes,
                    )
                    .await;
                let (answer, ended) = match step {
                    Ok(TransactionStep::Done(results)) => {
                        last_answer =
                            (!request_id.is_empty()).then(|| (request_id, results.clone()));
                        (Ok(results), false)
                    }
                    Ok(TransactionStep::Failed(e)) => (Err(NodeError::Db(e)), false),
                    Ok(TransactionStep::Ended(e)) => (
                        Err(NodeError::Aborted(format!(
                            "{e}; the statement rolled back the whole transaction: nothing \
                             of it was applied"
                        ))),
                        true,
                    ),
                    Err(e) => (
                        Err(NodeError::Internal(format!(
                            "{e}; the transaction was rolled back"
                        ))),
                        true,
                    ),
                };
                let _ = reply.send(answer);
                if ended {
                    return;
                }
            }
            Call::Commit { request_id, reply } => {
                node.transactions.set_committing(id);
                let result = commit(node, executor, request_id).await;
                // Answered once applied here: a retry that finds the transaction closed
                // then finds its request id.
                let _ = reply.send(result);
                return;
            }
            Call::Rollback { reply } => {
                if let Err(e) = executor.rollback().await {
                    tracing::error!(error = %e, "rolling back an interactive transaction failed");
                }
                let _ = reply.send(());
                return;
            }
        }
    }
}

async fn commit(
    node: &NodeInner,
    executor: &ExecutorHandle,
    request_id: String,
) -> Result<TransactionReply, NodeError> {
    let delta = match executor.commit(request_id).await {
        Ok(Some(delta)) => delta,
        // Wrote nothing: nothing to replicate; the index it read at is the token.
        Ok(None) => {
            return Ok(TransactionReply::Committed {
                log_index: node.applied_index(),
                deduplicated: false,
            })
        }
        Err(DbError::TooLarge(why)) => return Err(NodeError::TooLarge(why)),
        // A request id used before, or a deferred foreign key still violated.
        Err(e @ (DbError::InvalidArgument(_) | DbError::Constraint(_))) => {
            return Err(NodeError::Db(e))
        }
        // Another leader's entry was applied: the transaction was rolled back for it.
        Err(DbError::Stale(_)) => return Err(not_open()),
        Err(e) => {
            return Err(NodeError::Internal(format!(
                "capturing the commit failed: {e}"
            )))
        }
    };
    let (tx, rx) = oneshot::channel();
    write_path::replicate(node, delta, move |committed| {
        let _ = tx.send(committed);
    })
    .await;
    let committed = rx.await;
    if !matches!(committed, Ok(Ok(_))) {
        // Kept open for its commit in place, which will not come here (if Raft still
        // commits it, it is applied like on any node).
        if let Err(e) = executor.end_open_batch().await {
            tracing::warn!(error = %e, "ending a transaction kept open failed");
        }
    }
    match committed {
        Ok(Ok(log_index)) => Ok(TransactionReply::Committed {
            log_index,
            deduplicated: false,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(NodeError::Internal("the commit was not answered".into())),
    }
}

/// Resolves when this node is no longer the leader of `term`.
async fn leadership_lost(node: &NodeInner, term: u64) {
    let mut metrics = node.raft.metrics();
    loop {
        {
            let m = metrics.borrow_and_update();
            if m.current_term != term || m.state != openraft::ServerState::Leader {
                return;
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_128_bit_hex() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn a_transaction_answers_only_its_token() {
        let open = OpenTransactions::default();
        let (calls, _rx) = mpsc::channel(1);
        *open.lock() = Some(Open {
            id: "t1".into(),
            principal: "app".into(),
            calls,
            committing: false,
        });
        assert!(open.calls("t1", "app").is_ok());
        assert!(matches!(
            open.calls("t1", "other"),
            Err(NodeError::Aborted(_))
        ));
        assert!(matches!(
            open.calls("t2", "app"),
            Err(NodeError::Aborted(_))
        ));
        open.set_committing("t1");
        assert!(matches!(
            open.calls("t1", "app"),
            Err(NodeError::Unavailable { .. })
        ));
        open.close("t2");
        assert!(open.lock().is_some(), "another id closes nothing");
        open.close("t1");
        assert!(open.lock().is_none());
    }
}
