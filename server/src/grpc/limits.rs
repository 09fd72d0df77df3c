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
//!
//! # Key decisions and trade-offs
//! - Our own small `tower::Service` rather than tower's `ConcurrencyLimit` + `LoadShed`:
//!   tonic's `Server::layer` wraps every route, and those layers cannot exempt the health
//!   checks; one per-path check keeps one semaphore for the public routes.
//! - The permit is held until the handler returns its response. A query streams its later
//!   row batches after that, bounded by the read pool (`read_threads`) instead.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Semaphore;
use tonic::Status;

use crate::metrics::Metrics;

/// The path prefixes of services that are never limited.
const EXEMPT_PREFIXES: [&str; 1] = ["/grpc.health.v1.Health/"];

/// Settings of [`LimitsLayer`].
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_concurrent_requests: usize,
    pub request_timeout: Duration,
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
    limits: Limits,
    metrics: Option<Arc<Metrics>>,
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
            if let Some(m) = &self.0.metrics {
                m.request_shed();
            }
            Status::resource_exhausted(format!(
                "the node is overloaded: {} {busy} (max_concurrent_requests); {advice}",
                self.0.limits.max_concurrent_requests
            ))
        })
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

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for LimitedService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        if EXEMPT_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return Box::pin(self.inner.call(request));
        }
        let permit = match self.admission.admit() {
            Ok(permit) => permit,
            Err(status) => return Box::pin(std::future::ready(Ok(status.into_http()))),
        };
        let deadline = self.admission.deadline(client_timeout(request.headers()));
        let admission = self.admission.clone();
        // The clone is ready only if polled; the one we polled goes into the future.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let _permit = permit;
            match tokio::time::timeout(Admission::cut_off(deadline), inner.call(request)).await {
                Ok(response) => response,
                Err(_) => Ok(admission.timed_out(deadline).into_http()),
            }
        })
    }
}

/// The deadline a caller gave its request: `grpc-timeout`, or `raftlite-timeout` when that is
/// shorter (see `raftlite_client::transport::TIMEOUT_KEY`).
pub use raftlite_client::transport::node_deadline as client_timeout;

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{Layer, Service, ServiceExt};

    use super::*;

    /// A handler that takes as long as the request's `x-sleep-ms` header says.
    fn slow_service() -> impl tower::Service<
        http::Request<()>,
        Response = http::Response<String>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
           + Send
           + 'static {
        tower::service_fn(|req: http::Request<()>| async move {
            let ms: u64 = req
                .headers()
                .get("x-sleep-ms")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, Infallible>(http::Response::new("done".to_owned()))
        })
    }

    fn request(path: &str, sleep_ms: u64) -> http::Request<()> {
        http::Request::builder()
            .uri(path)
            .header("x-sleep-ms", sleep_ms.to_string())
            .body(())
            .expect("request")
    }

    fn grpc_status(response: &http::Response<String>) -> Option<&str> {
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn over_the_limit_is_refused_at_once_and_peers_pass() {
        let layer = LimitsLayer::new(
            Limits {
                max_concurrent_requests: 2,
                request_timeout: Duration::from_secs(600),
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
