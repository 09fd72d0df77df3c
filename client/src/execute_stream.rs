//! Every [`crate::Client::execute`] to a node goes on one long-lived `Sql.ExecuteStream`
//! to it, shared by the client's clones: no HTTP/2 stream, headers or trailers per write
//! (BENCHMARKS.md "Session 20").
//!
//! - The stream opens with the first write to the node (that write goes out with the stream's
//!   headers, so it costs no extra round trip) and again after it breaks. Calls carry a
//!   number of their own and are answered as they finish; at most [`MAX_CALLS`] are
//!   unanswered at once (the server's limit per stream), more wait for room.
//! - A call's own error (a constraint, UNAVAILABLE with the leader's address, ...) comes back
//!   as the same [`Error`] a unary `Execute` gives. A call given up (its timeout, a dropped
//!   future) stops waiting; its late answer is dropped.
//! - A broken stream (the node went away, a reset, a refusal of the stream itself) fails every
//!   call waiting on it with a transport error, which the client retries with the same
//!   request id (the write applies once), and the next call opens a new stream. The
//!   connection's keep-alive pings break a stream to a node that stopped answering.
//! - Requests over 1 MiB go as unary calls: one over the server's decode limit would end the
//!   stream, and fail the calls beside it.
//! - A node with as many streams open as it allows refuses one more (RESOURCE_EXHAUSTED):
//!   the calls that waited for it go unary, and the next call tries a stream again.
//! - A node that does not know the method (UNIMPLEMENTED: an older version, mid-upgrade) gets
//!   unary `Execute` calls from then on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc;
use prost::Message;
use raftlite_proto::v1;
use tokio::sync::{oneshot, Semaphore};
use tonic::Code;

use crate::client::sql_client;
use crate::endpoint::Transport;
use crate::Error;

/// Most calls unanswered on one stream (the server's `MAX_STREAM_CALLS`).
pub const MAX_CALLS: usize = 64;

/// Larger requests go as unary calls: one over the server's decode limit (at least 8 MiB)
/// ends the stream it is on, and would fail the calls beside it.
const MAX_STREAMED_BYTES: usize = 1 << 20;

type Answer = Result<v1::ExecuteResponse, Error>;

/// What a waiting call gets.
enum Outcome {
    Answer(Answer),
    /// The node has no `ExecuteStream`: send the call unary.
    Unsupported,
    /// The node refused the stream (it has as many open as it allows): send the call unary.
    Busy,
}

/// `request` as a unary `Execute` call.
pub(crate) async fn unary(
    channel: Transport,
    request: &v1::ExecuteRequest,
    timeout: Duration,
) -> Answer {
    let mut unary = tonic::Request::new(request.clone());
    crate::transport::set_deadline(&mut unary, timeout);
    Ok(sql_client(channel).execute(unary).await?.into_inner())
}

/// The `ExecuteStream` to one node.
#[derive(Debug, Default)]
pub(crate) struct ExecuteStream {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Closed,
    Open(Arc<Open>),
    /// The node answered UNIMPLEMENTED: unary calls only.
    Unsupported,
}

/// One stream. Its sending half lives only here, so the stream ends (and its reader with it)
/// once the client and its calls let go of it.
#[derive(Debug)]
struct Open {
    calls: mpsc::UnboundedSender<v1::StreamedExecute>,
    next_id: AtomicU64,
    shared: Arc<Shared>,
}

/// What the stream's reader shares with its callers.
#[derive(Debug)]
struct Shared {
    waiting: Mutex<Waiting>,
    room: Semaphore,
}

#[derive(Default)]
struct Waiting {
    calls: HashMap<u64, oneshot::Sender<Outcome>>,
    /// How the stream ended, once it did: calls after that get it at once.
    ended: Option<Ended>,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting")
            .field("calls", &self.calls.len())
            .field("ended", &self.ended)
            .finish()
    }
}

#[derive(Debug, Clone)]
enum Ended {
    /// The stream failed or was refused, with this status (from the transport, or the
    /// server's, e.g. UNAUTHENTICATED once a token was revoked).
    Failed(tonic::Status),
    Unsupported,
    Busy,
}

impl Ended {
    fn outcome(&self) -> Outcome {
        match self {
            Ended::Failed(status) => Outcome::Answer(Err(Error::from(status.clone()))),
            Ended::Unsupported => Outcome::Unsupported,
            Ended::Busy => Outcome::Busy,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes a call's waiter out of the stream's list when the call is given up.
struct Registered<'a> {
    shared: &'a Shared,
    call_id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        lock(&self.shared.waiting).calls.remove(&self.call_id);
    }
}

impl ExecuteStream {
    /// Runs `request` on the node behind `channel`: on its stream, or as a unary call where
    /// the node has no streams. `timeout` is the call's deadline.
    pub(crate) async fn execute(
        &self,
        channel: Transport,
        request: &v1::ExecuteRequest,
        timeout: Duration,
    ) -> Answer {
        if request.encoded_len() > MAX_STREAMED_BYTES {
            return unary(channel, request, timeout).await;
        }
        let Some(open) = self.open(&channel) else {
            return unary(channel, request, timeout).await;
        };
        let shared = &open.shared;
        let Ok(_room) = shared.room.acquire().await else {
            let ended = Self::ended(&open);
            return self.finish(&open, ended, channel, request, timeout).await;
        };
        let call_id = open.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let registered = {
            let mut waiting = lock(&shared.waiting);
            let open = waiting.ended.is_none();
            if open {
                waiting.calls.insert(call_id, tx);
            }
            open
        };
        if !registered {
            let ended = Self::ended(&open);
            return self.finish(&open, ended, channel, request, timeout).await;
        }
        let _registered = Registered { shared, call_id };
        let call = v1::StreamedExecute {
            call_id,
            request: Some(request.clone()),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        // A stream that ended meanwhile no longer takes calls; its reader then tells this call
        // how it ended.
        let _ = open.calls.unbounded_send(call);
        match tokio::time::timeout(timeout + crate::error::ANSWER_GRACE, rx).await {
            Ok(Ok(outcome)) => self.finish(&open, outcome, channel, request, timeout).await,
            Ok(Err(_)) => Err(Error::Transport("the execute stream closed".into())),
            Err(_) => Err(Error::timeout(timeout)),
        }
    }

    /// What a call that found `open` ended gets.
    fn ended(open: &Open) -> Outcome {
        match &lock(&open.shared.waiting).ended {
            Some(ended) => ended.outcome(),
            None => Outcome::Answer(Err(Error::Transport("the execute stream closed".into()))),
        }
    }

    /// The call's result from its `outcome` on `open`: the answer, or a unary call where the
    /// node has no streams (or no room for one more).
    async fn finish(
        &self,
        open: &Open,
        outcome: Outcome,
        channel: Transport,
        request: &v1::ExecuteRequest,
        timeout: Duration,
    ) -> Answer {
        match outcome {
            Outcome::Answer(answer) => answer,
            Outcome::Unsupported => {
                self.unsupported(open);
                unary(channel, request, timeout).await
            }
            Outcome::Busy => unary(channel, request, timeout).await,
        }
    }

    fn unsupported(&self, open: &Open) {
        let mut state = lock(&self.state);
        if matches!(&*state, State::Open(o) if std::ptr::eq(Arc::as_ptr(o), open)) {
            tracing::debug!("the node has no ExecuteStream: unary Execute calls from now on");
            *state = State::Unsupported;
        }
    }

    /// The open stream, opened now if there is none (or it ended); `None` where the node
    /// has no streams.
    fn open(&self, channel: &Transport) -> Option<Arc<Open>> {
        let mut state = lock(&self.state);
        match &*state {
            State::Open(open) if lock(&open.shared.waiting).ended.is_none() => {
                return Some(open.clone())
            }
            State::Unsupported => return None,
            State::Open(_) | State::Closed => {}
        }
        let (calls, outgoing) = mpsc::unbounded();
        let shared = Arc::new(Shared {
            waiting: Mutex::new(Waiting::default()),
            room: Semaphore::new(MAX_CALLS),
        });
        tokio::spawn(run(shared.clone(), channel.clone(), outgoing));
        let open = Arc::new(Open {
            calls,
            next_id: AtomicU64::new(1),
            shared,
        });
        *state = State::Open(open.clone());
        Some(open)
    }
}

/// Opens the stream (its first calls go out with it) and hands each answer to its call; when
/// the stream ends, every call still waiting gets how.
async fn run(
    shared: Arc<Shared>,
    channel: Transport,
    outgoing: mpsc::UnboundedReceiver<v1::StreamedExecute>,
) {
    let mut end = EndCalls {
        shared: shared.clone(),
        ended: None,
    };
    end.ended = Some(match sql_client(channel).execute_stream(outgoing).await {
        Ok(response) => read_answers(&shared, response.into_inner()).await,
        Err(status) if status.code() == Code::Unimplemented => Ended::Unsupported,
        Err(status) if status.code() == Code::ResourceExhausted => Ended::Busy,
        Err(status) => Ended::Failed(status),
    });
}

/// Ends a stream's calls when its task ends, also when it is dropped unfinished (the runtime
/// it ran on shut down).
struct EndCalls {
    shared: Arc<Shared>,
    ended: Option<Ended>,
}

impl Drop for EndCalls {
    fn drop(&mut self) {
        let ended = self.ended.take().unwrap_or_else(|| {
            Ended::Failed(tonic::Status::unavailable(
                "the execute stream's task stopped (its runtime shut down)",
            ))
        });
        let mut waiting = lock(&self.shared.waiting);
        for (_, waiter) in waiting.calls.drain() {
            let _ = waiter.send(ended.outcome());
        }
        waiting.ended = Some(ended);
        self.shared.room.close();
    }
}

async fn read_answers(
    shared: &Shared,
    mut answers: tonic::Streaming<v1::StreamedExecuteAnswer>,
) -> Ended {
    loop {
        match answers.message().await {
            Ok(Some(answer)) => {
                let waiter = lock(&shared.waiting).calls.remove(&answer.call_id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(Outcome::Answer(decode(answer)));
                }
            }
            Ok(None) => {
                return Ended::Failed(tonic::Status::unavailable(
                    "the node ended the execute stream",
                ))
            }
            Err(status) => return Ended::Failed(status),
        }
    }
}

/// One answer as the result a unary `Execute` would have given.
fn decode(answer: v1::StreamedExecuteAnswer) -> Answer {
    match (answer.response, answer.error) {
        (Some(response), None) => Ok(response),
        (None, Some(error)) => Err(Error::Status {
            code: Code::from_i32(error.code),
            message: error.message,
            leader_hint: (error.leader_id != 0).then_some((error.leader_id, error.leader_address)),
        }),
        _ => Err(Error::Conversion(
            "an ExecuteStream answer must carry a response or an error".into(),
        )),
    }
}
