//! Connections to peers: one lazily dialed HTTP/2 connection per peer address, reused by every
//! call to that peer; with TLS, over mutual TLS with the node's current certificate.
//!
//! Calls go straight onto the connection (`raftlite_client::transport::Direct`, shared with
//! the client), not through tonic's `Channel`, whose buffer task costs one more task wake-up
//! on each AppendEntries of every replicated write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftlite_client::transport::{self, Direct};
use raftlite_proto::v1::peer_client::PeerClient as ProtoClient;

use super::PEER_MESSAGE_LIMIT;
use crate::tls::Tls;

/// Longest a dial (TCP, and TLS with TLS on) may take before the call fails UNAVAILABLE.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// A peer's gRPC client.
pub(crate) type PeerProtoClient = ProtoClient<Direct>;

/// Builds (and keeps) the connections this node opens to its peers.
pub struct Dialer {
    channels: Mutex<HashMap<String, PeerProtoClient>>,
    /// Opens a stream to a peer: TCP, or with TLS this node's certificate and only the
    /// cluster CA trusted (read at each dial, so a renewed certificate is used).
    dial: transport::Dial,
    /// Connect timeout, keep-alive, and the node's runtime: each connection is driven by a
    /// task on it, whichever thread (the write batcher's has a runtime of its own) makes the
    /// first call.
    settings: transport::Settings,
}

impl Dialer {
    /// Must be called on the node's runtime.
    pub fn new(tls: Option<Arc<Tls>>) -> Self {
        let dial = match tls {
            None => transport::tcp(),
            Some(tls) => transport::tls_with(move || tls.dial()),
        };
        Dialer {
            channels: Mutex::new(HashMap::new()),
            dial,
            settings: transport::Settings {
                connect_timeout: CONNECT_TIMEOUT,
                keep_alive_interval: Duration::from_secs(10),
                keep_alive_timeout: Duration::from_secs(20),
                runtime: Some(tokio::runtime::Handle::current()),
            },
        }
    }

    /// The peer service at `addr` ("host:port"), connected on first use and reused after.
    pub(crate) fn proto_client(&self, addr: &str) -> Result<PeerProtoClient, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let client = ProtoClient::new(self.transport(addr)?)
            .max_decoding_message_size(PEER_MESSAGE_LIMIT)
            .max_encoding_message_size(PEER_MESSAGE_LIMIT);
        channels.insert(addr.to_owned(), client.clone());
        Ok(client)
    }

    /// A new connection (not yet dialed) to `addr` ("host:port").
    fn transport(&self, addr: &str) -> Result<Direct, String> {
        let uri: http::Uri = format!("http://{addr}")
            .parse()
            .map_err(|e| format!("bad peer address {addr:?}: {e}"))?;
        if uri.port_u16().is_none() || uri.path() != "/" {
            return Err(format!("bad peer address {addr:?}: expected host:port"));
        }
        Ok(Direct::new(uri, self.dial.clone(), self.settings.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

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

    /// A peer serving gRPC health on a free port: its address, and the sender whose drop
    /// stops it.
    async fn healthy_peer() -> (String, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        (addr, serve_health(listener).await)
    }

    /// A peer that takes connections and never reads from them (nor answers a ping).
    async fn mute_peer() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        addr
    }

    /// The error `call` ends with, which must come within 3 s (the test gives up after 10).
    async fn fails_within_3s<T: std::fmt::Debug>(
        call: impl std::future::Future<Output = Result<T, tonic::Status>>,
    ) -> tonic::Status {
        let started = Instant::now();
        let status = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("the call ended")
            .expect_err("the peer never answers");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        status
    }

    fn health(transport: Direct) -> tonic_health::pb::health_client::HealthClient<Direct> {
        tonic_health::pb::health_client::HealthClient::new(transport)
    }

    fn transport(dialer: &Dialer, addr: &str) -> Direct {
        dialer.transport(addr).expect("a host:port")
    }

    /// The connection is dialed on first use, a peer that went away is UNAVAILABLE (what
    /// openraft treats as unreachable), and the next call after it came back dials again.
    #[tokio::test]
    async fn a_peer_that_restarts_is_dialed_again() {
        let (addr, stop) = healthy_peer().await;
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
        let mute = mute_peer().await;
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
            let status = fails_within_3s(client.check(request)).await;
            assert_eq!(status.code(), tonic::Code::Cancelled, "{addr}: {status:?}");
        }
    }

    /// A connection whose peer stops answering (it never reads, so its pings go unanswered)
    /// is dropped after the keep-alive timeout, failing a call that set no deadline rather
    /// than leaving it waiting forever; a peer that answers keeps its idle connection.
    #[tokio::test]
    async fn keep_alive_drops_a_connection_whose_pings_go_unanswered() {
        let settings = transport::Settings {
            connect_timeout: Duration::from_millis(500),
            keep_alive_interval: Duration::from_millis(100),
            keep_alive_timeout: Duration::from_millis(200),
            runtime: None,
        };
        let direct = |addr: &str| {
            let uri = format!("http://{addr}").parse().expect("uri");
            Direct::new(uri, transport::tcp(), settings.clone())
        };
        let check = tonic_health::pb::HealthCheckRequest::default();

        let (addr, _stop) = healthy_peer().await;
        let mut client = health(direct(&addr));
        client.check(check.clone()).await.expect("first call");
        tokio::time::sleep(Duration::from_millis(600)).await;
        client
            .check(check.clone())
            .await
            .expect("the idle connection answered its pings and still serves");

        let mut client = health(direct(&mute_peer().await));
        fails_within_3s(client.check(check)).await;
    }

    /// A request body that is not all ready when the call starts (a client stream) still
    /// reaches the server whole: what is ready goes with the HEADERS, the rest follows.
    #[tokio::test]
    async fn a_request_body_that_comes_later_is_sent_when_it_comes() {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let (addr, _stop) = healthy_peer().await;
        let dialer = Dialer::new(None);
        let (tx, rx) = tokio::sync::mpsc::channel::<
            Result<hyper::body::Frame<bytes::Bytes>, tonic::Status>,
        >(1);
        let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let request = http::Request::builder()
            .uri("/grpc.health.v1.Health/Check")
            .method("POST")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(tonic::body::Body::new(body))
            .expect("request");
        let feed = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            // One gRPC message: uncompressed, 0 bytes (an empty HealthCheckRequest).
            let frame = hyper::body::Frame::data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]));
            tx.send(Ok(frame)).await.expect("send the body");
        });
        let response = tokio::time::timeout(
            Duration::from_secs(5),
            transport(&dialer, &addr).oneshot(request),
        )
        .await
        .expect("answered")
        .expect("a response");
        feed.await.expect("fed");
        let collected =
            tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
                .await
                .expect("the body ends")
                .expect("the body");
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(
            trailers.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"0"[..]),
            "{trailers:?}"
        );
        // SERVING (1) in a framed HealthCheckResponse.
        assert_eq!(collected.to_bytes().as_ref(), &[0, 0, 0, 0, 2, 8, 1]);
    }
}
