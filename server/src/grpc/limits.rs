//! Overload protection for the public services, as a `tower` layer in front of every route.
//!
//! - **Concurrency limit and load shedding.** At most `max_concurrent_requests` public
//!   requests (`raftlite.v1.Sql`, `raftlite.v1.Admin`, reflection) run at once. One more is
//!   refused at once with RESOURCE_EXHAUSTED — no queue: a queue in front of a saturated node
//!   only turns overload into latency and then into timeouts for everyone. The client sees
//!   the refusal in microseconds and can back off or try another node.
//! - **Deadlines.** A public request gets the client's deadline (`grpc-timeout`, or the
//!   shorter `raftlite-timeout` its clients send: see [`client_timeout`]) or the server
//!   default `request_timeout_ms`, whichever is shorter. Its handler stops its statement at
//!   that deadline and says so; 200 ms later ([`Admission::cut_off`]) a handler still running
//!   is dropped and the call answers DEADLINE_EXCEEDED. A write that timed out may still
//!   commit (it is in the group-commit queue already): retrying with the same request id
//!   returns its real result.
//! - **Exempt:** `grpc.health.v1` (a probe that failed under load would get a busy pod
//!   restarted). The peer service (Raft votes, appends, snapshots and writes a follower
//!   forwards, which that follower already admitted) is not on this listener at all: it has
//!   its own port, where shedding Raft traffic would turn a load spike into elections; its
//!   messages are bounded by size there (`peer::PEER_MESSAGE_LIMIT`, `max_request_bytes` for
//!   forwarded writes, `max_snapshot_bytes`).
//! - Request size: `max_request_bytes`, checked by the handlers (RESOURCE_EXHAUSTED).
//! - **Request bytes.** The bodies of public requests take their bytes, as they arrive, from
//!   a node-wide budget of 16 × `max_request_bytes` (256 MiB at the default; one maximal
//!   request always fits). A DATA frame the budget cannot cover fails the body at once with
//!   RESOURCE_EXHAUSTED — no queue, as above — and counts as a shed request. Without it the
//!   concurrency limit counts requests, not bytes: 1024 requests of 16 MiB held behind an
//!   open transaction, or a far-future `at_index`, are 16 GiB (and a body that stalls short
//!   of its end sits in tonic's decoder). A unary request's bytes are held until its handler
//!   returns its response, as its permit is; a call stream's (`Sql.ExecuteStream`) only
//!   while a message is partly received: once a whole gRPC message has passed through, its
//!   bytes go back (see [`STREAM_PATHS`]).
//!
//! # Key decisions and trade-offs
//! - Our own small `tower::Service` rather than tower's `ConcurrencyLimit` + `LoadShed`:
//!   tonic's `Server::layer` wraps every route, and those layers cannot exempt the health
//!   checks; one per-path check keeps one semaphore for the public routes.
//! - The permit is held until the handler returns its response. A query streams its later
//!   row batches after that, bounded by the read pool (`read_threads`) instead.
//! - Bytes are metered per DATA frame as hyper hands them over (16 KiB by default), not per
//!   message from the length a message declares: a declared length costs the client nothing
//!   to send, the bytes it must actually deliver. The budget is no new setting: it follows
//!   `max_request_bytes`, so a node configured for larger requests buffers more of them.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::Status;

use crate::metrics::Metrics;

/// The path prefixes of services that are never limited.
const EXEMPT_PREFIXES: [&str; 1] = ["/grpc.health.v1.Health/"];

/// Long-lived call streams, whose body lives as long as the stream: a message's bytes go
/// back once the whole message has passed through the body, so only partly received
/// messages hold bytes.
///
/// The calls decoded from them leave the body's metering then. What bounds those is
/// `execute_stream`: a stream reads no more past [`super::execute_stream::MAX_STREAM_CALLS`]
/// unanswered calls, each call that runs holds a permit of `max_concurrent_requests`
/// (`Admission::admit`; one refused is answered at once and dropped) and its request's bytes
/// from the budget again (`Admission::admit_bytes`), and at most `max_concurrent_requests`
/// streams are open (`Admission::admit_stream`).
const STREAM_PATHS: [&str; 1] = ["/raftlite.v1.Sql/ExecuteStream"];

/// The budget of request bytes, in requests of `max_request_bytes`.
const BUDGET_REQUESTS: usize = 16;

/// gRPC's framing of a message: a compressed flag and a 4-byte big-endian length.
const MESSAGE_PREFIX: usize = 5;

/// Settings of [`LimitsLayer`].
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_concurrent_requests: usize,
    pub request_timeout: Duration,
    /// The largest request; the node buffers at most [`BUDGET_REQUESTS`] times as many bytes
    /// of request bodies at once.
    pub max_request_bytes: usize,
}

/// Applies [`Limits`] to the public routes of a tonic server.
#[derive(Clone)]
pub struct LimitsLayer {
    admission: Admission,
}

impl LimitsLayer {
    pub fn new(limits: Limits, metrics: Option<Arc<Metrics>>) -> Self {
        LimitsLayer {
            admission: Admission(Arc::new(Shared {
                permits: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
                streams: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
                bytes: Arc::new(Semaphore::new(budget(&limits))),
                limits,
                metrics,
            })),
        }
    }

    /// The same limits for the calls of a long-lived stream (`Sql.ExecuteStream`), which
    /// passes the layer once: each call takes a permit and gets a deadline of its own.
    pub fn admission(&self) -> Admission {
        self.admission.clone()
    }
}

/// [`LimitsLayer`]'s permits and deadlines, one request (or call on a stream) at a time.
#[derive(Clone)]
pub struct Admission(Arc<Shared>);

struct Shared {
    permits: Arc<Semaphore>,
    /// Long-lived call streams open at once (`Sql.ExecuteStream`), at most as many as
    /// requests: each costs the node a task and room for its answers while it is open.
    streams: Arc<Semaphore>,
    /// Bytes of request bodies buffered at once (see [`budget`]).
    bytes: Arc<Semaphore>,
    limits: Limits,
    metrics: Option<Arc<Metrics>>,
}

/// The bytes of request bodies a node buffers at once: [`BUDGET_REQUESTS`] ×
/// `max_request_bytes` (bounded by what a semaphore holds; `max_request_bytes` is at most
/// 1 GiB).
fn budget(limits: &Limits) -> usize {
    limits
        .max_request_bytes
        .saturating_mul(BUDGET_REQUESTS)
        .min(Semaphore::MAX_PERMITS)
}

impl Admission {
    /// A permit for one request or call, or the RESOURCE_EXHAUSTED the layer answers without
    /// one.
    pub fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.take(
            &self.0.permits,
            "requests are in progress",
            "retry with backoff or on another node",
        )
    }

    /// A permit to keep one call stream open (counted in `raftlite_sql_execute_streams` while
    /// it lives), or RESOURCE_EXHAUSTED when `max_concurrent_requests` streams are open.
    pub fn admit_stream(&self) -> Result<StreamPermit, Status> {
        let permit = self.take(
            &self.0.streams,
            "call streams are open",
            "send unary calls, or retry with backoff or on another node",
        )?;
        let metrics = self.0.metrics.clone();
        if let Some(m) = &metrics {
            m.execute_stream_open(true);
        }
        Ok(StreamPermit {
            _permit: permit,
            metrics,
        })
    }

    /// One of `permits`, or a shed request: `max_concurrent_requests` are `busy`.
    fn take(
        &self,
        permits: &Arc<Semaphore>,
        busy: &str,
        advice: &str,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        permits.clone().try_acquire_owned().map_err(|_| {
            self.shed(format!(
                "{} {busy} (max_concurrent_requests); {advice}",
                self.0.limits.max_concurrent_requests
            ))
        })
    }

    /// `len` bytes from the budget of request bodies, or the RESOURCE_EXHAUSTED of a shed
    /// request: for each DATA frame of a body as it arrives ([`LimitedService`]), and for a
    /// call on a stream, decoded and about to run, which holds them again until it answers
    /// (a whole message gives its bytes back as it is decoded).
    pub fn admit_bytes(&self, len: usize) -> Result<OwnedSemaphorePermit, Status> {
        u32::try_from(len)
            .ok()
            .and_then(|n| self.0.bytes.clone().try_acquire_many_owned(n).ok())
            .ok_or_else(|| {
                self.shed(format!(
                    "{} bytes of requests are in progress ({BUDGET_REQUESTS} × \
                     max_request_bytes); retry with backoff or on another node",
                    budget(&self.0.limits)
                ))
            })
    }

    /// A shed request: counted, and the RESOURCE_EXHAUSTED that says `why`.
    fn shed(&self, why: String) -> Status {
        if let Some(m) = &self.0.metrics {
            m.request_shed();
        }
        Status::resource_exhausted(format!("the node is overloaded: {why}"))
    }

    /// The deadline: the client's or `request_timeout`, whichever is shorter.
    pub fn deadline(&self, client: Option<Duration>) -> Duration {
        let limit = self.0.limits.request_timeout;
        match client {
            Some(client) if client < limit => client,
            _ => limit,
        }
    }

    /// How long a request or call with `deadline` may run before it is cut off: a grace
    /// longer. Handlers stop their statements at the deadline themselves and answer why
    /// ("SQLite interrupted it", which a client does not retry); cut off at the same instant,
    /// every such answer would lose the race to [`Admission::timed_out`]'s, which asks for a
    /// retry. The cut-off catches the rest (a write still waiting to commit).
    pub fn cut_off(deadline: Duration) -> Duration {
        deadline + Duration::from_millis(200)
    }

    /// The DEADLINE_EXCEEDED of a request or call that took longer than `deadline`.
    pub fn timed_out(&self, deadline: Duration) -> Status {
        if let Some(m) = &self.0.metrics {
            m.request_deadline_exceeded();
        }
        Status::deadline_exceeded(format!(
            "the request did not complete within {} ms (the client's deadline or \
             request_timeout_ms); a write may still commit: retry it with the same \
             request id",
            deadline.as_millis()
        ))
    }
}

/// An open call stream's place (see [`Admission::admit_stream`]).
pub struct StreamPermit {
    _permit: tokio::sync::OwnedSemaphorePermit,
    metrics: Option<Arc<Metrics>>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        if let Some(m) = &self.metrics {
            m.execute_stream_open(false);
        }
    }
}

impl<S> tower::Layer<S> for LimitsLayer {
    type Service = LimitedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LimitedService {
            inner,
            admission: self.admission.clone(),
        }
    }
}

#[derive(Clone)]
pub struct LimitedService<S> {
    inner: S,
    admission: Admission,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower::Service<http::Request<Body>> for LimitedService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path();
        if EXEMPT_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return Box::pin(self.inner.call(request));
        }
        let stream = STREAM_PATHS.contains(&path);
        let permit = match self.admission.admit() {
            Ok(permit) => permit,
            Err(status) => return Box::pin(std::future::ready(Ok(status.into_http()))),
        };
        let deadline = self.admission.deadline(client_timeout(request.headers()));
        let admission = self.admission.clone();
        // A stream's messages give their bytes back at once; a unary request's when its
        // handler has answered (`Answered`).
        let held = Arc::new(Mutex::new(Held {
            answered: stream,
            ..Held::default()
        }));
        let request = request.map(|body| {
            Body::new(MeteredBody {
                inner: body,
                admission: admission.clone(),
                partial: None,
                framing: Framing::default(),
                held: held.clone(),
                refused: None,
            })
        });
        // The clone is ready only if polled; the one we polled goes into the future.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let _permit = permit;
            let answered = Answered(held.clone());
            let response =
                match tokio::time::timeout(Admission::cut_off(deadline), inner.call(request)).await
                {
                    Ok(response) => response?,
                    Err(_) => admission.timed_out(deadline).into_http(),
                };
            drop(answered);
            Ok(sliced(response, stream.then_some(held)))
        })
    }
}

/// What a request's body and its response share.
#[derive(Default)]
struct Held {
    /// The bytes of the request's whole messages, kept until the handler has answered.
    permit: Option<OwnedSemaphorePermit>,
    /// The handler has answered (or the request is a stream): whole messages' bytes go back
    /// at once.
    answered: bool,
    /// The RESOURCE_EXHAUSTED the body failed with, for a stream's trailers.
    refused: Option<Status>,
}

fn lock(held: &Mutex<Held>) -> std::sync::MutexGuard<'_, Held> {
    held.lock().unwrap_or_else(|p| p.into_inner())
}

/// Gives a unary request's bytes back when its handler has answered, was cut off, or the
/// client went away (the layer's future dropped).
struct Answered(Arc<Mutex<Held>>);

impl Drop for Answered {
    fn drop(&mut self) {
        let permit = {
            let mut held = lock(&self.0);
            held.answered = true;
            held.permit.take()
        };
        drop(permit);
    }
}

/// A request body that takes each DATA frame's bytes from the node's budget as it arrives.
struct MeteredBody {
    inner: Body,
    admission: Admission,
    /// The bytes of the message not yet wholly received.
    partial: Option<OwnedSemaphorePermit>,
    framing: Framing,
    held: Arc<Mutex<Held>>,
    /// Once refused, the body fails with this for good.
    refused: Option<Status>,
}

impl MeteredBody {
    /// Takes `data`'s bytes; those that complete messages go to `held` (or back).
    fn meter(&mut self, data: &[u8]) -> Result<(), Status> {
        if data.is_empty() {
            return Ok(());
        }
        let taken = self.admission.admit_bytes(data.len())?;
        let (before, mut partial) = match self.partial.take() {
            Some(mut partial) => {
                let before = partial.num_permits();
                partial.merge(taken);
                (before, partial)
            }
            None => (0, taken),
        };
        let ended = self.framing.feed(data);
        if ended > 0 {
            // The message under way before `data` ends in it (and any after it that do).
            if let Some(done) = partial.split(before + ended) {
                self.release(done);
            }
        }
        self.partial = (partial.num_permits() > 0).then_some(partial);
        Ok(())
    }

    /// Whole messages' bytes: held until the handler has answered, or given back.
    fn release(&mut self, done: OwnedSemaphorePermit) {
        let mut held = lock(&self.held);
        if held.answered {
            drop(held);
            drop(done);
            return;
        }
        match held.permit.as_mut() {
            Some(permit) => permit.merge(done),
            None => held.permit = Some(done),
        }
    }
}

impl HttpBody for MeteredBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(refused) = &self.refused {
            return Poll::Ready(Some(Err(refused.clone())));
        }
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(data) = frame.as_ref().and_then(|f| f.as_ref().ok()?.data_ref()) {
            if let Err(status) = self.meter(data) {
                // The message under way and this frame go back with the refusal.
                self.partial = None;
                self.refused = Some(status.clone());
                lock(&self.held).refused = Some(status.clone());
                return Poll::Ready(Some(Err(status)));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.refused.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Where a body is in gRPC's framing: each message is [`MESSAGE_PREFIX`] bytes (a compressed
/// flag and a big-endian length) and that many bytes, split across DATA frames or sharing
/// them.
#[derive(Default)]
struct Framing {
    prefix: [u8; MESSAGE_PREFIX],
    /// Bytes of the current message's prefix seen so far.
    prefix_len: usize,
    /// Bytes of the current message still to come once its prefix is whole.
    remaining: usize,
}

impl Framing {
    /// Reads the next `data` of the body: how many of its bytes, from its start, end whole
    /// messages (0: none ends in it).
    fn feed(&mut self, data: &[u8]) -> usize {
        let mut at = 0;
        let mut ended = 0;
        loop {
            if self.prefix_len < MESSAGE_PREFIX {
                let take = (MESSAGE_PREFIX - self.prefix_len).min(data.len() - at);
                self.prefix[self.prefix_len..self.prefix_len + take]
                    .copy_from_slice(&data[at..at + take]);
                self.prefix_len += take;
                at += take;
                if self.prefix_len < MESSAGE_PREFIX {
                    return ended;
                }
                let [_, a, b, c, d] = self.prefix;
                self.remaining = u32::from_be_bytes([a, b, c, d]) as usize;
            }
            let take = self.remaining.min(data.len() - at);
            self.remaining -= take;
            at += take;
            if self.remaining > 0 {
                return ended;
            }
            self.prefix_len = 0;
            ended = at;
            if at == data.len() {
                return ended;
            }
        }
    }
}

/// A stream's response. Its handler sees a refused body only as its stream ending (and ends
/// its answers with OK); the trailers then say RESOURCE_EXHAUSTED instead.
struct StreamAnswer {
    inner: Body,
    held: Arc<Mutex<Held>>,
}

impl HttpBody for StreamAnswer {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        let Some(Ok(frame)) = frame else {
            return Poll::Ready(frame);
        };
        let mut trailers = match frame.into_trailers() {
            Ok(trailers) => trailers,
            Err(frame) => return Poll::Ready(Some(Ok(frame))),
        };
        let refused = lock(&self.held).refused.clone();
        if let Some(refused) = refused {
            let ok = trailers
                .get("grpc-status")
                .is_none_or(|code| code.as_bytes() == b"0");
            if ok {
                // A status whose message cannot be a header keeps the handler's trailers.
                let _ = refused.add_header(&mut trailers);
            }
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The bytes of an answer's rows, counted in the node's unread answers (`db::AnswerBytes`)
/// until the response is sent: a handler puts it in its response's extensions, and
/// [`LimitedService`] moves it into the body.
#[derive(Clone)]
pub struct HeldAnswer(pub Arc<crate::db::AnswerHold>);

/// An item of a response stream, with the room its rows take in the node's unread answers.
pub type HeldItem<T> = (T, Option<crate::db::AnswerHold>);

/// A response stream's items as tonic takes them: the last one taken keeps its room until the
/// next is taken (hyper asks for the next frame once the slices of the last have gone out).
pub struct HeldItems<T> {
    items: tokio::sync::mpsc::Receiver<HeldItem<T>>,
    sending: Option<crate::db::AnswerHold>,
}

impl<T> HeldItems<T> {
    pub fn new(items: tokio::sync::mpsc::Receiver<HeldItem<T>>) -> Self {
        HeldItems {
            items,
            sending: None,
        }
    }
}

impl<T> futures::Stream for HeldItems<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.sending = None;
        let item = ready!(self.items.poll_recv(cx));
        Poll::Ready(item.map(|(item, held)| {
            self.sending = held;
            item
        }))
    }
}

/// The most bytes of a response handed to hyper at once. hyper takes a body's next frame
/// once the stream has one byte of send capacity and gives all of it to h2, which buffers
/// whatever the client's window does not let out yet; so a 4 MB message would leave the
/// count of unread answers (and the stream take the next) while it still sat in memory. In
/// slices, a client that does not read holds at most about two of them in h2, and the rest
/// stays here, counted.
const SLICE_BYTES: usize = 16 * 1024;

/// Every public response as [`Sliced`], holding the [`HeldAnswer`] its handler gave it (if
/// any) until the body is sent or dropped; a stream's (`stream`) also answers a refused body
/// in its trailers ([`StreamAnswer`]).
fn sliced(
    mut response: http::Response<Body>,
    stream: Option<Arc<Mutex<Held>>>,
) -> http::Response<Body> {
    let held = response.extensions_mut().remove::<HeldAnswer>();
    response.map(|inner| {
        let inner = match stream {
            Some(held) => Body::new(StreamAnswer { inner, held }),
            None => inner,
        };
        Body::new(Sliced {
            inner,
            pending: Bytes::new(),
            _held: held,
        })
    })
}

/// A response body handed on in slices of at most [`SLICE_BYTES`].
struct Sliced {
    inner: Body,
    /// What is left of the inner body's last DATA frame.
    pending: Bytes,
    _held: Option<HeldAnswer>,
}

impl HttpBody for Sliced {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.pending.is_empty() {
            let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
            let Some(Ok(frame)) = frame else {
                return Poll::Ready(frame);
            };
            match frame.into_data() {
                Ok(data) => self.pending = data,
                Err(other) => return Poll::Ready(Some(Ok(other))),
            }
        }
        let take = self.pending.len().min(SLICE_BYTES);
        let slice = self.pending.split_to(take);
        Poll::Ready(Some(Ok(Frame::data(slice))))
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        let pending = self.pending.len() as u64;
        hint.set_lower(hint.lower().saturating_add(pending));
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper.saturating_add(pending));
        }
        hint
    }
}

/// The deadline a caller gave its request: `grpc-timeout`, or `raftlite-timeout` when that is
/// shorter (see `raftlite_client::transport::TIMEOUT_KEY`).
pub use raftlite_client::transport::node_deadline as client_timeout;

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::{BodyExt, StreamBody};
    use tower::{Layer, Service, ServiceExt};

    use super::*;

    const KIB: usize = 1024;

    /// A unary handler as tonic runs it: reads the whole body (answering its error, if any),
    /// then takes as long as the request's `x-sleep-ms` header says.
    fn slow_service() -> impl tower::Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
           + Send
           + 'static {
        tower::service_fn(|req: http::Request<Body>| async move {
            let ms: u64 = req
                .headers()
                .get("x-sleep-ms")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0);
            if let Err(status) = req.into_body().collect().await {
                return Ok(status.into_http());
            }
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, Infallible>(http::Response::new(Body::empty()))
        })
    }

    /// A bidi handler as `ExecuteStream`'s: answers at once, reads the body on its own and
    /// ends its answers with OK when the body ends or fails, with the bytes it read in
    /// `x-read`.
    fn stream_service() -> impl tower::Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
           + Send
           + 'static {
        tower::service_fn(|req: http::Request<Body>| async move {
            let mut body = req.into_body();
            let reader = tokio::spawn(async move {
                let mut read = 0;
                while let Some(Ok(frame)) = body.frame().await {
                    read += frame.data_ref().map_or(0, |d| d.len());
                }
                read
            });
            let end = futures::stream::once(async move {
                let read = reader.await.unwrap_or(0);
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                trailers.insert("x-read", http::HeaderValue::from(read));
                Ok::<_, Status>(Frame::trailers(trailers))
            });
            Ok::<_, Infallible>(http::Response::new(Body::new(StreamBody::new(end))))
        })
    }

    fn request(path: &str, sleep_ms: u64) -> http::Request<Body> {
        request_with(path, sleep_ms, Body::empty())
    }

    fn request_with(path: &str, sleep_ms: u64, body: Body) -> http::Request<Body> {
        http::Request::builder()
            .uri(path)
            .header("x-sleep-ms", sleep_ms.to_string())
            .body(body)
            .expect("request")
    }

    /// Messages of `sizes` bytes in gRPC's framing, in DATA frames of `chunk` bytes.
    fn grpc_body(sizes: &[usize], chunk: usize) -> Body {
        let mut wire = Vec::new();
        for &size in sizes {
            wire.push(0);
            wire.extend_from_slice(&u32::try_from(size).expect("size").to_be_bytes());
            wire.resize(wire.len() + size, 7);
        }
        let frames: Vec<_> = wire
            .chunks(chunk)
            .map(|c| Ok::<_, Status>(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        Body::new(StreamBody::new(futures::stream::iter(frames)))
    }

    fn grpc_status<B>(response: &http::Response<B>) -> Option<&str> {
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
    }

    /// A layer with a budget of 1 MiB of request bytes.
    fn one_mib_budget() -> LimitsLayer {
        LimitsLayer::new(
            Limits {
                max_concurrent_requests: 8,
                request_timeout: Duration::from_secs(600),
                max_request_bytes: 64 * KIB,
            },
            None,
        )
    }

    /// Bytes of the budget not taken.
    fn available(layer: &LimitsLayer) -> usize {
        layer.admission.0.bytes.available_permits()
    }

    /// Waits until at most `bytes` of the budget are left.
    async fn until_available(layer: &LimitsLayer, bytes: usize) {
        for _ in 0..500 {
            if available(layer) <= bytes {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} bytes of the budget left, not {bytes}", available(layer));
    }

    /// A stream's trailers, from a response that is not trailers-only.
    async fn trailers(response: http::Response<Body>) -> http::HeaderMap {
        assert_eq!(grpc_status(&response), None, "not trailers-only");
        let collected = response.into_body().collect().await.expect("answers");
        collected.trailers().cloned().expect("trailers")
    }

    #[test]
    fn framing_finds_where_messages_end() {
        let mut framing = Framing::default();
        // A prefix split across frames, a payload across three.
        assert_eq!(framing.feed(&[0, 0, 0]), 0);
        assert_eq!(framing.feed(&[0, 4, 1]), 0);
        assert_eq!(framing.feed(&[2, 3]), 0);
        assert_eq!(framing.feed(&[4]), 1);
        // Two whole messages (one empty) and the start of a third in one frame.
        assert_eq!(
            framing.feed(&[0, 0, 0, 0, 1, 9, 0, 0, 0, 0, 0, 1, 0, 0]),
            11
        );
        assert_eq!(framing.feed(&[0, 2, 5]), 0);
        assert_eq!(framing.feed(&[6, 0, 0, 0, 0, 0]), 6);
    }

    #[tokio::test]
    async fn request_bytes_over_the_budget_are_refused_until_the_holder_answers() {
        let layer = one_mib_budget();
        let svc = layer.layer(slow_service());
        let body = || grpc_body(&[700 * KIB], 16 * KIB);
        let held = tokio::spawn(svc.clone().oneshot(request_with(
            "/raftlite.v1.Sql/Execute",
            1000,
            body(),
        )));
        // The first request is read whole; its handler holds its bytes while it runs.
        let left = 1024 * KIB - 700 * KIB - MESSAGE_PREFIX;
        until_available(&layer, left).await;
        let refused = svc
            .clone()
            .oneshot(request_with("/raftlite.v1.Sql/Execute", 0, body()))
            .await
            .expect("infallible");
        assert_eq!(grpc_status(&refused), Some("8"), "RESOURCE_EXHAUSTED");
        let message = refused.headers().get("grpc-message").expect("message");
        assert!(
            message
                .to_str()
                .is_ok_and(|m| m.contains("bytes%20of%20requests")),
            "{message:?}"
        );
        // The refused request's bytes went back with it.
        assert_eq!(available(&layer), left);
        let done = held.await.expect("task").expect("infallible");
        assert_eq!(grpc_status(&done), None);
        assert_eq!(available(&layer), 1024 * KIB, "all bytes back");
        let admitted = svc
            .clone()
            .oneshot(request_with("/raftlite.v1.Sql/Execute", 0, body()))
            .await
            .expect("infallible");
        assert_eq!(grpc_status(&admitted), None);
    }

    #[tokio::test]
    async fn a_stream_holds_only_the_message_under_way() {
        let layer = one_mib_budget();
        let unary = layer.layer(slow_service());
        let streams = layer.layer(stream_service());
        let held = tokio::spawn(unary.oneshot(request_with(
            "/raftlite.v1.Sql/Execute",
            2000,
            grpc_body(&[700 * KIB], 16 * KIB),
        )));
        until_available(&layer, 1024 * KIB - 700 * KIB - MESSAGE_PREFIX).await;
        // 20 messages, more than the whole budget, in the 324 KiB left: each message's bytes
        // go back once it has passed through. Frames of 10,000 bytes straddle messages.
        let sizes = [64 * KIB; 20];
        let wire = sizes.iter().map(|s| s + MESSAGE_PREFIX).sum::<usize>();
        let response = streams
            .clone()
            .oneshot(request_with(
                "/raftlite.v1.Sql/ExecuteStream",
                0,
                grpc_body(&sizes, 10_000),
            ))
            .await
            .expect("infallible");
        let end = trailers(response).await;
        assert_eq!(end.get("grpc-status").expect("status"), "0");
        assert_eq!(end.get("x-read").expect("read"), &wire.to_string());
        // One message larger than what is left fails the stream: RESOURCE_EXHAUSTED, not the
        // OK its handler ended with.
        let response = streams
            .clone()
            .oneshot(request_with(
                "/raftlite.v1.Sql/ExecuteStream",
                0,
                grpc_body(&[KIB, KIB, 400 * KIB], 16 * KIB),
            ))
            .await
            .expect("infallible");
        let end = trailers(response).await;
        assert_eq!(end.get("grpc-status").expect("status"), "8", "{end:?}");
        let done = held.await.expect("task").expect("infallible");
        assert_eq!(grpc_status(&done), None);
        assert_eq!(available(&layer), 1024 * KIB, "all bytes back");
    }

    #[tokio::test]
    async fn over_the_limit_is_refused_at_once_and_peers_pass() {
        let layer = LimitsLayer::new(
            Limits {
                max_concurrent_requests: 2,
                request_timeout: Duration::from_secs(600),
                max_request_bytes: 64 * KIB,
            },
            None,
        );
        let svc = layer.layer(slow_service());
        let slow: Vec<_> = (0..2)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(svc.oneshot(request("/raftlite.v1.Sql/Query", 1000)))
            })
            .collect();
        tokio::task::yield_now().await;
        // Both permits are taken: the next public request is refused without waiting.
        let refused = svc
            .clone()
            .oneshot(request("/raftlite.v1.Sql/Execute", 0))
            .await
            .expect("infallible");
        assert_eq!(grpc_status(&refused), Some("8"), "RESOURCE_EXHAUSTED");
        // Health checks are not counted.
        for path in ["/grpc.health.v1.Health/Check"] {
            let ok = svc.clone().oneshot(request(path, 0)).await.expect("ok");
            assert_eq!(grpc_status(&ok), None, "{path}");
        }
        for handle in slow {
            let done = handle.await.expect("task").expect("infallible");
            assert_eq!(grpc_status(&done), None);
        }
        // The permits are back.
        let ok = svc
            .clone()
            .oneshot(request("/raftlite.v1.Sql/Execute", 0))
            .await
            .expect("ok");
        assert_eq!(grpc_status(&ok), None);
    }

    #[tokio::test]
    async fn deadlines_come_from_the_client_or_the_server_default() {
        let layer = LimitsLayer::new(
            Limits {
                max_concurrent_requests: 8,
                request_timeout: Duration::from_millis(100),
                max_request_bytes: 64 * KIB,
            },
            None,
        );
        let mut svc = layer.layer(slow_service());
        let late = svc
            .ready()
            .await
            .expect("ready")
            .call(request("/raftlite.v1.Sql/Query", 60_000))
            .await
            .expect("infallible");
        assert_eq!(grpc_status(&late), Some("4"), "DEADLINE_EXCEEDED");
        let layer = LimitsLayer::new(
            Limits {
                max_concurrent_requests: 8,
                request_timeout: Duration::from_secs(600),
                max_request_bytes: 64 * KIB,
            },
            None,
        );
        let mut svc = layer.layer(slow_service());
        let mut with_client_deadline = request("/raftlite.v1.Sql/Query", 60_000);
        with_client_deadline
            .headers_mut()
            .insert("grpc-timeout", http::HeaderValue::from_static("100m"));
        let late = svc
            .ready()
            .await
            .expect("ready")
            .call(with_client_deadline)
            .await
            .expect("infallible");
        assert_eq!(grpc_status(&late), Some("4"));
        // A shorter deadline in raftlite-timeout wins over a longer grpc-timeout.
        let mut with_our_deadline = request("/raftlite.v1.Sql/Query", 60_000);
        with_our_deadline
            .headers_mut()
            .insert("grpc-timeout", http::HeaderValue::from_static("60S"));
        with_our_deadline.headers_mut().insert(
            raftlite_client::transport::TIMEOUT_KEY,
            http::HeaderValue::from_static("100m"),
        );
        let late = svc
            .ready()
            .await
            .expect("ready")
            .call(with_our_deadline)
            .await
            .expect("infallible");
        assert_eq!(grpc_status(&late), Some("4"), "raftlite-timeout kept");
        let in_time = svc
            .ready()
            .await
            .expect("ready")
            .call(request("/raftlite.v1.Sql/Query", 1))
            .await
            .expect("infallible");
        assert_eq!(grpc_status(&in_time), None);
    }
}
