//! `Sql.ExecuteStream`: many `Execute` calls on one long-lived stream.
//!
//! A unary call costs both ends an HTTP/2 stream, a HEADERS frame each way (HPACK), trailers,
//! a task hyper spawns for it and a pass through every tower layer; a message on an open
//! stream costs none of that (`bench/peer-rtt`: 100–108 µs against 143–153 for a round trip on
//! loopback; BENCHMARKS.md "Session 20"). The Rust client sends every `execute` on one such
//! stream per node.
//!
//! When the node stops, each stream takes no more calls, answers those running and ends with
//! UNAVAILABLE (the listener's graceful shutdown waits for open streams). A node keeps at most
//! `max_concurrent_requests` streams open; one more is refused with
//! RESOURCE_EXHAUSTED (the client library then sends its calls unary).
//!
//! Each call is the `Execute` call it carries, checked and limited as that call would be:
//! - its size against `max_request_bytes`, a permit of the listener's `max_concurrent_requests`
//!   (RESOURCE_EXHAUSTED for that call alone when none is left), and a deadline: the call's
//!   `timeout_ms` or `request_timeout_ms`, whichever is shorter;
//! - with an auth file, the stream's token passed the auth layer when the stream opened (the
//!   write role); when the file changed since, each call checks the token again, and a token
//!   that was removed or lost its role ends the stream with the refusal.
//!
//! A failed call answers its error and the stream goes on. Calls are answered as they finish,
//! each with the client's `call_id`. A stream has at most [`MAX_STREAM_CALLS`] calls
//! unanswered; past that it reads no more (HTTP/2 flow control holds the client back), so a
//! client that does not read its answers holds at most that many answers in memory and no
//! permit: a call gives its permit back when it finishes, not when its answer is read. The
//! rows of its unread answers count in the node's unread answers (`db/answers.rs`) until the
//! stream takes the next answer to send, so such clients together hold a bounded number of
//! bytes, not 64 maximal answers per stream. A
//! message that cannot be decoded (or is over the decode limit) ends the stream with its
//! status; calls still running then finish on the node unanswered, and a retry with the same
//! request id returns their results.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use raftlite_proto::v1;
use tokio::sync::mpsc;
use tonic::{Request, Status, Streaming};

use super::auth::{authorize, principal_name, AuthFile, Tokens};
use super::convert::leader_from_metadata;
use super::limits::{HeldItem, HeldItems};
use super::sql::{unread_answers_of, SqlService};
use crate::db::ClientAnswers;

/// Most calls one stream may have unanswered (running, or answered but not yet sent).
pub const MAX_STREAM_CALLS: usize = 64;

/// The method's path, as the auth layer checked it.
const PATH: &str = "/raftlite.v1.Sql/ExecuteStream";

/// One answer to send, with its rows' room in the node's unread answers.
type Answer = HeldItem<Result<v1::StreamedExecuteAnswer, Status>>;

type Answers = mpsc::Sender<Answer>;

/// The answers of a stream as tonic sends them, each holding its room until the next is taken.
pub type AnswerStream = HeldItems<Result<v1::StreamedExecuteAnswer, Status>>;

/// An answer that ends the stream with `status`.
fn ending(status: Status) -> Answer {
    (Err(status), None)
}

/// Opens the stream: a task of its own reads the calls and runs them.
pub fn start(
    service: SqlService,
    request: Request<Streaming<v1::StreamedExecute>>,
) -> Result<AnswerStream, Status> {
    let open = service.admission.admit_stream()?;
    let principal = principal_name(&request);
    let token = service
        .auth
        .as_ref()
        .map(|file| StreamToken::new(file.clone(), request.metadata()));
    let (answers, rx) = mpsc::channel(MAX_STREAM_CALLS);
    let stop = service.stop.clone();
    let conn = unread_answers_of(&request);
    let calls = Calls {
        service,
        principal,
        conn,
    };
    tokio::spawn(async move {
        drive(Arc::new(calls), token, request.into_inner(), answers, stop).await;
        drop(open);
    });
    Ok(HeldItems::new(rx))
}

/// The token a stream opened with, checked again when the auth file changes.
struct StreamToken {
    file: Arc<AuthFile>,
    header: Option<Vec<u8>>,
    /// The tokens it was last checked against (none yet: the auth layer checked it against
    /// the file as it was a moment before the stream opened).
    checked: Option<Arc<Tokens>>,
}

impl StreamToken {
    fn new(file: Arc<AuthFile>, metadata: &tonic::metadata::MetadataMap) -> Self {
        let header = metadata
            .as_ref()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes().to_vec());
        StreamToken {
            file,
            header,
            checked: None,
        }
    }

    /// The auth layer's refusal if the file no longer lets the token write (checked again
    /// only when the file changed).
    fn check(&mut self) -> Result<(), Status> {
        let now = self.file.tokens();
        if self.checked.as_ref().is_some_and(|c| Arc::ptr_eq(c, &now)) {
            return Ok(());
        }
        authorize(&now, PATH, self.header.as_deref())?;
        self.checked = Some(now);
        Ok(())
    }
}

struct Calls {
    service: SqlService,
    principal: String,
    /// The unread answers of the stream's connection.
    conn: Option<Arc<ClientAnswers>>,
}

impl Calls {
    /// Runs one call and sends its answer into the room reserved for it.
    async fn answer(self: Arc<Self>, room: mpsc::OwnedPermit<Answer>, call: v1::StreamedExecute) {
        let call_id = call.call_id;
        let (answer, held) = match self.run(call).await {
            Ok(response) => {
                let held = self.service.hold_answer(self.conn.as_ref(), &response);
                let answer = v1::StreamedExecuteAnswer {
                    call_id,
                    response: Some(response),
                    error: None,
                };
                (answer, Some(held))
            }
            Err(status) => {
                let answer = v1::StreamedExecuteAnswer {
                    call_id,
                    response: None,
                    error: Some(call_error(&status)),
                };
                (answer, None)
            }
        };
        room.send((Ok(answer), held));
    }

    async fn run(&self, call: v1::StreamedExecute) -> Result<v1::ExecuteResponse, Status> {
        let admission = &self.service.admission;
        let _permit = admission.admit()?;
        // The call's decoded request lives until it answers: its bytes count in the budget
        // of request bodies, as a unary call's do.
        let _bytes = admission.admit_bytes(prost::Message::encoded_len(&call))?;
        let request = call
            .request
            .ok_or_else(|| Status::invalid_argument("a StreamedExecute needs a request"))?;
        let client = (call.timeout_ms > 0).then(|| Duration::from_millis(call.timeout_ms));
        let deadline = admission.deadline(client);
        let execute = self
            .service
            .execute_one(&self.principal, Some(deadline), None, request);
        match tokio::time::timeout(super::limits::Admission::cut_off(deadline), execute).await {
            Ok(result) => result,
            Err(_) => Err(admission.timed_out(deadline)),
        }
    }
}

/// What the stream does next.
enum Next {
    Call(mpsc::OwnedPermit<Answer>, v1::StreamedExecute),
    /// The client closed its side: finish the calls running, then end.
    End,
    /// The client is gone (it reset the stream or stopped taking answers for good).
    Gone,
    Broken(Status),
}

/// Waits for room for one more answer, then reads the next call.
async fn next_call(inbound: &mut Streaming<v1::StreamedExecute>, answers: &Answers) -> Next {
    let Ok(room) = answers.clone().reserve_owned().await else {
        return Next::Gone;
    };
    match inbound.message().await {
        Ok(Some(call)) => Next::Call(room, call),
        Ok(None) => Next::End,
        Err(status) if status.code() == tonic::Code::OutOfRange => {
            Next::Broken(Status::resource_exhausted(format!(
                "a call on the stream is over the size limit (max_request_bytes): {}",
                status.message()
            )))
        }
        Err(status) if status.code() == tonic::Code::Internal => Next::Broken(status),
        Err(_) => Next::Gone,
    }
}

async fn drive(
    calls: Arc<Calls>,
    mut token: Option<StreamToken>,
    mut inbound: Streaming<v1::StreamedExecute>,
    answers: Answers,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut running = FuturesUnordered::new();
    let mut open = true;
    let mut stopping = false;
    // Until the client closed its side (or the node stops) and every call is answered.
    while open || !running.is_empty() {
        tokio::select! {
            biased;
            Some(()) = running.next(), if !running.is_empty() => {}
            () = crate::serve::until_stopped(&mut stop), if !stopping => {
                // The node stops: no more calls; those running finish and are answered.
                stopping = true;
                open = false;
            }
            next = next_call(&mut inbound, &answers), if open => match next {
                Next::Call(room, call) => {
                    if let Some(Err(refused)) = token.as_mut().map(StreamToken::check) {
                        room.send(ending(refused));
                        return;
                    }
                    running.push(calls.clone().answer(room, call));
                }
                Next::End => open = false,
                Next::Gone => return,
                Next::Broken(status) => {
                    let _ = answers.send(ending(status)).await;
                    return;
                }
            },
            else => break,
        }
    }
    if stopping {
        // Not waiting: a client that reads no answers must not hold up the node's shutdown.
        let _ = answers.try_send(ending(Status::unavailable(
            "the node is shutting down; send the next calls to another node",
        )));
    }
}

/// A failed call's status as the answer carries it.
fn call_error(status: &Status) -> v1::CallError {
    let leader = leader_from_metadata(status);
    v1::CallError {
        code: status.code() as i32,
        message: status.message().to_string(),
        leader_id: leader.as_ref().map_or(0, |l| l.id),
        leader_address: leader.map(|l| l.addr).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use raftlite_client::{Client, ClientOptions};

    /// A node of an older version, without `ExecuteStream`: a gRPC server that answers every
    /// SQL method UNIMPLEMENTED, recording the paths it is called on.
    #[tokio::test]
    async fn a_client_falls_back_to_unary_calls_on_a_node_without_the_stream() -> anyhow::Result<()>
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let paths = std::sync::Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = paths.clone();
        let record = tower::util::MapRequestLayer::new(move |request: http::Request<_>| {
            let mut paths = seen.lock().unwrap_or_else(|p| p.into_inner());
            paths.push(request.uri().path().to_string());
            request
        });
        let (_, health) = tonic_health::server::health_reporter();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .layer(record)
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let client = Client::with_options(
            [addr.to_string()],
            ClientOptions {
                retry_deadline: std::time::Duration::ZERO,
                ..ClientOptions::default()
            },
        )?;
        for _ in 0..2 {
            let err = client
                .execute(["INSERT INTO t VALUES (1)"])
                .await
                .expect_err("nothing serves SQL here");
            assert_eq!(err.code(), tonic::Code::Unimplemented, "{err}");
        }
        let paths = paths.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(
            paths,
            [
                "/raftlite.v1.Sql/ExecuteStream",
                "/raftlite.v1.Sql/Execute",
                "/raftlite.v1.Sql/Execute"
            ],
            "one try of the stream, then unary calls"
        );
        server.abort();
        Ok(())
    }
}
