//! Connections to peers: one lazily dialed HTTP/2 connection per peer address, reused by every
//! call to that peer; with TLS, over mutual TLS (`crate::tls::dial`).
//!
//! Requests go straight onto the connection ([`PeerTransport`]), not through tonic's
//! `Channel`: a `Channel` hands every request to a buffer task of its own before it reaches
//! the connection, one more task wake-up on each AppendEntries of every replicated write (about
//! 30 µs of a 0.25 ms loopback round trip here, BENCHMARKS.md "Session 12"). What `Channel`
//! did besides is done here: dial on first use and again after the connection breaks (a
//! failed dial is UNAVAILABLE, within [`CONNECT_TIMEOUT`]), and hold a call to its
//! `grpc-timeout` (CANCELLED "Timeout expired" once it passes, as `Channel` answers).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use raftlite_proto::v1::peer_client::PeerClient as ProtoClient;
use tokio::runtime::Handle;
use tonic::body::Body;

use super::PEER_MESSAGE_LIMIT;
use crate::tls::Tls;

/// Longest a dial (TCP, and TLS with TLS on) may take before the call fails UNAVAILABLE.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// HTTP/2 pings on an idle connection, so a peer that vanished without a reset is noticed.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A peer's gRPC client over [`PeerTransport`].
pub(crate) type PeerProtoClient = ProtoClient<PeerTransport>;

/// Builds (and keeps) the connections this node opens to its peers.
pub struct Dialer {
    channels: Mutex<HashMap<String, PeerProtoClient>>,
    /// With TLS, peers are dialed with this node's certificate and only the cluster CA trusted.
    tls: Option<Arc<Tls>>,
    /// The node's runtime: each connection is driven by a task on it, whichever thread (the
    /// write batcher's has a runtime of its own) makes the first call.
    runtime: Handle,
}

impl Dialer {
    /// Must be called on the node's runtime.
    pub fn new(tls: Option<Arc<Tls>>) -> Self {
        Dialer {
            channels: Mutex::new(HashMap::new()),
            tls,
            runtime: Handle::current(),
        }
    }

    /// The peer service at `addr` ("host:port"), connected on first use and reused after.
    pub(crate) fn proto_client(&self, addr: &str) -> Result<PeerProtoClient, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let transport = self.transport(addr)?;
        let client = ProtoClient::new(transport)
            .max_decoding_message_size(PEER_MESSAGE_LIMIT)
            .max_encoding_message_size(PEER_MESSAGE_LIMIT);
        channels.insert(addr.to_owned(), client.clone());
        Ok(client)
    }

    /// A new connection (not yet dialed) to `addr` ("host:port").
    fn transport(&self, addr: &str) -> Result<PeerTransport, String> {
        let uri: http::Uri = format!("http://{addr}")
            .parse()
            .map_err(|e| format!("bad peer address {addr:?}: {e}"))?;
        if uri.port_u16().is_none() || uri.path() != "/" {
            return Err(format!("bad peer address {addr:?}: expected host:port"));
        }
        Ok(PeerTransport {
            link: Arc::new(Link {
                uri,
                tls: self.tls.clone(),
                runtime: self.runtime.clone(),
                sender: tokio::sync::Mutex::new(None),
            }),
        })
    }
}

/// The connection to one peer, as a service tonic's generated client calls. Clones share it.
#[derive(Clone)]
pub(crate) struct PeerTransport {
    link: Arc<Link>,
}

struct Link {
    /// `http://host:port`: where to dial, and the scheme and authority of every request.
    uri: http::Uri,
    tls: Option<Arc<Tls>>,
    runtime: Handle,
    /// The open connection; `None` before the first call and after a failed dial.
    sender: tokio::sync::Mutex<Option<SendRequest<Body>>>,
}

/// Spawns hyper's connection tasks on the node's runtime.
#[derive(Clone)]
struct OnRuntime(Handle);

impl<F> hyper::rt::Executor<F> for OnRuntime
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        self.0.spawn(future);
    }
}

impl Link {
    /// The open connection, or a new one when there is none or it broke. One dial at a time:
    /// calls that find the connection broken wait for the same dial.
    async fn sender(&self) -> Result<SendRequest<Body>, BoxError> {
        let mut current = self.sender.lock().await;
        if let Some(open) = current.as_ref().filter(|s| !s.is_closed()) {
            return Ok(open.clone());
        }
        *current = None;
        let dialed = tokio::time::timeout(CONNECT_TIMEOUT, self.dial())
            .await
            .map_err(|_| {
                format!(
                    "connecting to peer {} timed out after {CONNECT_TIMEOUT:?}",
                    self.uri
                )
            })
            .and_then(|r| r.map_err(|e| format!("connecting to peer {}: {e}", self.uri)))
            .map_err(|e| tonic::ConnectError(e.into()))?;
        *current = Some(dialed.clone());
        Ok(dialed)
    }

    async fn dial(&self) -> Result<SendRequest<Body>, BoxError> {
        let mut builder = hyper::client::conn::http2::Builder::new(OnRuntime(self.runtime.clone()));
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_while_idle(true);
        let (sender, connection) = match &self.tls {
            None => {
                let host = self.uri.host().unwrap_or_default();
                let port = self.uri.port_u16().unwrap_or_default();
                let tcp = tokio::net::TcpStream::connect((host, port)).await?;
                tcp.set_nodelay(true)?;
                let (sender, connection) =
                    builder.handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
                (
                    sender,
                    Box::pin(connection) as Pin<Box<dyn Future<Output = _> + Send>>,
                )
            }
            Some(tls) => {
                let stream = crate::tls::dial(tls, &self.uri).await?;
                let (sender, connection) = builder.handshake(stream).await?;
                (
                    sender,
                    Box::pin(connection) as Pin<Box<dyn Future<Output = _> + Send>>,
                )
            }
        };
        let peer = self.uri.clone();
        self.runtime.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "peer connection closed");
            }
        });
        Ok(sender)
    }

    /// `request`'s path on this peer's scheme and authority (tonic's client sends only a path).
    fn address(&self, request: &mut http::Request<Body>) -> Result<(), BoxError> {
        let mut parts = self.uri.clone().into_parts();
        parts.path_and_query = request.uri().path_and_query().cloned();
        *request.uri_mut() = http::Uri::from_parts(parts)?;
        Ok(())
    }
}

impl tower::Service<http::Request<Body>> for PeerTransport {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is the connection's, awaited in `call` (after a dial if need be).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let link = self.link.clone();
        Box::pin(async move {
            let deadline = grpc_timeout(request.headers());
            let send = async {
                link.address(&mut request)?;
                let mut sender = link.sender().await?;
                sender.ready().await?;
                Ok::<_, BoxError>(sender.send_request(request).await?)
            };
            match deadline {
                None => send.await,
                Some(limit) => tokio::time::timeout(limit, send)
                    .await
                    .map_err(|_| tonic::TimeoutExpired(()))?,
            }
        })
    }
}

/// The call's `grpc-timeout` header (set by `tonic::Request::set_timeout`): digits and a unit,
/// H M S m u n. `None` without one, or with one that does not parse (no deadline, as tonic's
/// `Channel` treats it).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(split);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn grpc_timeouts_parse_as_tonic_writes_them() {
        let parse = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", v.parse().expect("header value"));
            grpc_timeout(&h)
        };
        assert_eq!(parse("150m"), Some(Duration::from_millis(150)));
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("10M"), Some(Duration::from_secs(600)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("9n"), Some(Duration::from_nanos(9)));
        for bad in ["", "m", "12", "1x", "123456789S", "-1S"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    /// Serves gRPC health on `listener` until the returned sender is dropped.
    async fn serve_health(listener: tokio::net::TcpListener) -> tokio::sync::oneshot::Sender<()> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (_reporter, health) = tonic_health::server::health_reporter();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        stop
    }

    fn health(
        transport: PeerTransport,
    ) -> tonic_health::pb::health_client::HealthClient<PeerTransport> {
        tonic_health::pb::health_client::HealthClient::new(transport)
    }

    fn transport(dialer: &Dialer, addr: &str) -> PeerTransport {
        dialer.transport(addr).expect("a host:port")
    }

    /// The connection is dialed on first use, a peer that went away is UNAVAILABLE (what
    /// openraft treats as unreachable), and the next call after it came back dials again.
    #[tokio::test]
    async fn a_peer_that_restarts_is_dialed_again() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let stop = serve_health(listener).await;
        let dialer = Dialer::new(None);
        let mut client = health(transport(&dialer, &addr));
        let check = tonic_health::pb::HealthCheckRequest::default();
        client.check(check.clone()).await.expect("first call");
        client
            .check(check.clone())
            .await
            .expect("reused connection");

        drop(stop);
        let mut down = None;
        for _ in 0..50 {
            match client.check(check.clone()).await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(status) => {
                    down = Some(status);
                    break;
                }
            }
        }
        let status = down.expect("the stopped peer kept answering");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

        let listener = tokio::net::TcpListener::bind(&addr).await.expect("rebind");
        let _stop = serve_health(listener).await;
        client
            .check(check)
            .await
            .expect("redialed after the restart");
    }

    /// Calls to a peer that takes the connection and never answers: a call ends at its
    /// deadline (CANCELLED, as tonic's `Channel` ends it), both when the peer never speaks
    /// HTTP/2 and when its handler never returns.
    #[tokio::test]
    async fn a_silent_peer_costs_a_call_its_deadline_and_no_more() {
        let dialer = Dialer::new(None);
        // Takes connections and never reads from them.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mute = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        // An HTTP/2 server whose handler never returns.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let stuck = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(socket),
                            hyper::service::service_fn(|_req| {
                                std::future::pending::<
                                    Result<
                                        http::Response<http_body_util::Empty<bytes::Bytes>>,
                                        std::convert::Infallible,
                                    >,
                                >()
                            }),
                        ),
                );
            }
        });
        for addr in [mute, stuck] {
            let mut client = health(transport(&dialer, &addr));
            let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest::default());
            request.set_timeout(Duration::from_millis(200));
            let started = Instant::now();
            let status = tokio::time::timeout(Duration::from_secs(10), client.check(request))
                .await
                .expect("the deadline ends the call")
                .expect_err("the peer never answers");
            assert_eq!(status.code(), tonic::Code::Cancelled, "{addr}: {status:?}");
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{:?}",
                started.elapsed()
            );
        }
    }
}
