//! The connection under every gRPC call a client (and a node, to its peers) makes: one HTTP/2
//! connection per node address, dialed on first use and again after it breaks, with each call
//! going straight onto it, in one write.
//!
//! tonic's `Channel` hands every request to a buffer task of its own before the request
//! reaches the connection: one more task wake-up per call, 6–60 µs of a 0.2 ms loopback
//! round trip on a busy two-core host (BENCHMARKS.md, "Session 12"), on every write a client
//! sends and every AppendEntries a leader sends. hyper's HTTP/2 client, under both, sends a
//! request's HEADERS at once and pipes its body from a task of its own once the stream has
//! flow-control capacity: a unary call leaves in three writes (HEADERS, DATA, an empty
//! END_STREAM), and the server's handler starts only after the third (tonic reads to the end
//! of a unary request). [`Direct`] speaks HTTP/2 through the `h2` crate instead: the body a
//! unary call is made of is ready when the call starts, so its frames are queued together
//! and the connection flushes them in one write (see [`Link::send`]). It dials lazily (a
//! failed dial is UNAVAILABLE within the connect timeout, as with `Channel`), shares one
//! connection among clones, pings an idle connection and drops one whose pings go
//! unanswered, and holds a call to its `grpc-timeout` header (CANCELLED "Timeout expired"
//! once it passes, as `Channel` answers).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as _, Frame};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::runtime::Handle;
use tonic::body::Body;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A byte stream a connection runs over (TCP, or TLS over TCP).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// What [`Dial`] returns: a new stream to the address, or why there is none.
pub type Dialing = Pin<Box<dyn Future<Output = std::io::Result<Box<dyn Io>>> + Send>>;

/// Opens a stream to a node's `http://host:port` (TCP, TLS, mutual TLS: the caller's choice).
pub type Dial = Arc<dyn Fn(&http::Uri) -> Dialing + Send + Sync>;

/// Plain TCP with Nagle off. A node that answers with TLS fails the connection with
/// [`TLS_MISMATCH`] (h2 would report "frame with invalid size").
pub fn tcp() -> Dial {
    Arc::new(|uri: &http::Uri| {
        let target = host_port(uri);
        Box::pin(async move {
            let (host, port) = target?;
            let tcp = connect(&host, port).await?;
            Ok(Box::new(Plaintext {
                inner: tcp,
                checked: false,
            }) as Box<dyn Io>)
        })
    })
}

/// How an error that no retry can fix begins: the node and this end disagree on TLS.
/// [`crate::Error`] turns it into an invalid endpoint, which is not retried.
pub const TLS_MISMATCH: &str = "TLS mismatch: ";

fn tls_mismatch(why: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{TLS_MISMATCH}{why}"),
    )
}

/// A plaintext stream that checks the first bytes the node sends: a TLS record there
/// (handshake 0x16 or alert 0x15; an HTTP/2 server opens with a SETTINGS frame, whose first
/// byte, the top of its length, is 0) means the node speaks TLS.
struct Plaintext<S> {
    inner: S,
    checked: bool,
}

impl<S: AsyncRead + Unpin> AsyncRead for Plaintext<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if !self.checked {
            if let Some(&first) = buf.filled().get(before) {
                self.checked = true;
                if first == 0x15 || first == 0x16 {
                    return Poll::Ready(Err(tls_mismatch(
                        "the node speaks TLS and this connection does not; give the CA that \
                         signed its certificate (tls_ca=FILE in a raftlite:// URL, --tls-ca, \
                         or ClientOptions::tls_ca)",
                    )));
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Plaintext<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// TLS over [`tcp`] with `config` (its ALPN should offer `h2`), the server's name taken
/// from the address.
async fn tls(config: Arc<rustls::ClientConfig>, uri: &http::Uri) -> std::io::Result<Box<dyn Io>> {
    let (host, port) = host_port(uri)?;
    let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{host:?} is not a TLS server name: {e}"),
        )
    })?;
    let tcp = connect(&host, port).await?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(
            |e| match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                // A plaintext HTTP/2 server answers a ClientHello with a GOAWAY frame, which is
                // no TLS record.
                Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) => {
                    tls_mismatch(
                        "this connection speaks TLS and the node does not (it answered in \
                     plaintext); connect without a CA (no tls_ca), or start the node with \
                     --tls-cert and --tls-key",
                    )
                }
                _ => e,
            },
        )?;
    Ok(Box::new(stream))
}

/// [`tls`] with the configuration `config` gives at each dial (a node's certificate may have
/// been renewed since the last one).
pub fn tls_with(config: impl Fn() -> Arc<rustls::ClientConfig> + Send + Sync + 'static) -> Dial {
    Arc::new(move |uri: &http::Uri| {
        let (config, uri) = (config(), uri.clone());
        Box::pin(async move { tls(config, &uri).await })
    })
}

/// Plain [`tcp`] without a CA; with one, TLS trusting only the CAs in `ca_pem` (a client's
/// dial: server authentication only).
pub fn tcp_or_tls(ca_pem: Option<&[u8]>) -> Result<Dial, String> {
    match ca_pem {
        None => Ok(tcp()),
        Some(ca) => {
            let config = tls_config(ca)?;
            Ok(tls_with(move || config.clone()))
        }
    }
}

/// Trusts only the CAs in `ca_pem` (server authentication only; HTTP/2 by ALPN).
fn tls_config(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| format!("the CA file is not PEM certificates: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("the CA file holds a certificate rustls rejects: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the CA file holds no certificate".into());
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS protocol versions: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A TCP connection to `host:port` with Nagle off (a call's frames go out at once).
async fn connect(host: &str, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

fn host_port(uri: &http::Uri) -> std::io::Result<(String, u16)> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let host = uri
        .host()
        .ok_or_else(|| invalid(format!("{uri} has no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri
        .port_u16()
        .ok_or_else(|| invalid(format!("{uri} has no port")))?;
    Ok((host, port))
}

/// How a [`Direct`] connection is made and kept.
#[derive(Clone)]
pub struct Settings {
    /// Longest a dial (and a TLS handshake) may take.
    pub connect_timeout: Duration,
    /// HTTP/2 pings on an idle connection, so a node that vanished without a reset is noticed.
    pub keep_alive_interval: Duration,
    /// How long a ping may go unanswered before the connection counts as broken.
    pub keep_alive_timeout: Duration,
    /// Where the connection's task runs; `None`: the runtime of the call that dials.
    pub runtime: Option<Handle>,
}

impl Settings {
    /// A client's: a ping every 10 s, a connection counted broken after 5 s without an
    /// answer, driven on the runtime of the call that dials.
    pub fn client(connect_timeout: Duration) -> Self {
        Settings {
            connect_timeout,
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
            runtime: None,
        }
    }
}

/// Flow-control windows and limits as hyper's HTTP/2 client sets them (tonic's `Channel`
/// used those): h2's own defaults (64 KiB windows) would make a large query result or
/// snapshot wait for window updates every 64 KiB.
const CONNECTION_WINDOW: u32 = 5 << 20;
const STREAM_WINDOW: u32 = 2 << 20;
const MAX_FRAME: u32 = 16 << 10;
const MAX_HEADER_LIST: u32 = 16 << 10;
const MAX_SEND_BUFFER: usize = 1 << 20;

/// One node's connection, as the service tonic's generated clients call. Clones share it.
#[derive(Clone)]
pub struct Direct {
    link: Arc<Link>,
}

struct Link {
    /// `scheme://host:port`: the scheme and authority of every request.
    uri: http::Uri,
    dial: Dial,
    settings: Settings,
    /// The open connection; `None` before the first call and after a failed dial.
    open: tokio::sync::Mutex<Option<Open>>,
}

/// A dialed connection: where calls are sent, and whether its task has ended.
#[derive(Clone)]
struct Open {
    sender: h2::client::SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("uri", &self.link.uri)
            .finish_non_exhaustive()
    }
}

impl Direct {
    /// A connection to `uri` (`http://host:port` or `https://host:port`), not dialed yet.
    pub fn new(uri: http::Uri, dial: Dial, settings: Settings) -> Self {
        Direct {
            link: Arc::new(Link {
                uri,
                dial,
                settings,
                open: tokio::sync::Mutex::new(None),
            }),
        }
    }
}

impl Link {
    /// The open connection, or a new one when there is none or it broke. One dial at a time:
    /// calls that find the connection broken wait for the same dial.
    async fn sender(&self) -> Result<h2::client::SendRequest<Bytes>, BoxError> {
        let mut current = self.open.lock().await;
        if let Some(open) = current
            .as_ref()
            .filter(|o| !o.closed.load(Ordering::Acquire))
        {
            return Ok(open.sender.clone());
        }
        *current = None;
        let limit = self.settings.connect_timeout;
        let dialed = tokio::time::timeout(limit, self.dial())
            .await
            .map_err(|_| format!("connecting to {} timed out after {limit:?}", self.uri))
            .and_then(|r| r.map_err(|e| format!("connecting to {}: {e}", self.uri)))
            .map_err(|e| tonic::ConnectError(e.into()))?;
        let sender = dialed.sender.clone();
        *current = Some(dialed);
        Ok(sender)
    }

    /// Dials, and starts the connection's task: it drives the connection, pings it every
    /// keep-alive interval, and drops it (failing the calls on it) when a ping goes
    /// unanswered for the keep-alive timeout.
    async fn dial(&self) -> Result<Open, BoxError> {
        let runtime = self
            .settings
            .runtime
            .clone()
            .unwrap_or_else(Handle::current);
        let stream = (self.dial)(&self.uri).await?;
        let (sender, mut connection) = h2::client::Builder::new()
            .enable_push(false)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_header_list_size(MAX_HEADER_LIST)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .handshake::<_, Bytes>(stream)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        let pings = connection.ping_pong();
        let (peer, ended) = (self.uri.clone(), closed.clone());
        let (interval, timeout) = (
            self.settings.keep_alive_interval,
            self.settings.keep_alive_timeout,
        );
        runtime.spawn(async move {
            tokio::select! {
                result = &mut connection => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection closed");
                    }
                }
                why = keep_alive(pings, interval, timeout) => {
                    tracing::debug!(%peer, reason = %why, "connection dropped");
                }
            }
            ended.store(true, Ordering::Release);
            // Dropping the connection fails the calls still on it.
        });
        Ok(Open { sender, closed })
    }

    /// `uri`'s path on this node's scheme and authority (tonic's clients send a path).
    fn address(&self, uri: &http::Uri) -> Result<http::Uri, BoxError> {
        let mut parts = self.uri.clone().into_parts();
        parts.path_and_query = uri.path_and_query().cloned();
        Ok(http::Uri::from_parts(parts)?)
    }

    /// Sends `request` and waits for its response's headers.
    ///
    /// What of the body is ready now (all of it, for a unary call) is queued with the
    /// HEADERS before the connection's task runs, so they leave in one write, the last frame
    /// carrying END_STREAM. A body that is not all ready (a client stream) is piped by a
    /// task of its own.
    async fn send(&self, request: http::Request<Body>) -> Result<http::Response<Recv>, BoxError> {
        let (mut head, mut body) = request.into_parts();
        head.uri = self.address(&head.uri)?;
        let mut ready = Vec::new();
        let mut ended = body.is_end_stream();
        while !ended {
            let polled =
                std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
            match polled {
                Poll::Pending => break,
                Poll::Ready(None) => ended = true,
                Poll::Ready(Some(frame)) => {
                    let frame = frame?;
                    ended = frame.is_trailers() || body.is_end_stream();
                    ready.push(frame);
                }
            }
        }
        let mut sender = self.sender().await?.ready().await?;
        let (response, mut stream) = sender.send_request(
            http::Request::from_parts(head, ()),
            ended && ready.is_empty(),
        )?;
        let last = ready.len().saturating_sub(1);
        for (i, frame) in ready.into_iter().enumerate() {
            send_frame(&mut stream, frame, ended && i == last)?;
        }
        if !ended {
            tokio::spawn(pipe(body, stream));
        }
        Ok(response.await?.map(Recv::new))
    }
}

/// Puts one body frame on `stream`; `last` ends the stream (trailers always do).
fn send_frame(
    stream: &mut h2::SendStream<Bytes>,
    frame: Frame<Bytes>,
    last: bool,
) -> Result<(), h2::Error> {
    match frame.into_data() {
        Ok(data) => stream.send_data(data, last),
        Err(frame) => match frame.into_trailers() {
            Ok(trailers) => stream.send_trailers(trailers),
            // A frame neither data nor trailers: nothing to send, but the end still must be.
            Err(_) if last => stream.send_data(Bytes::new(), true),
            Err(_) => Ok(()),
        },
    }
}

/// Sends the rest of a request body that was not ready when its call started (no raftlite
/// call streams its request; this keeps [`Direct`] a general gRPC transport).
async fn pipe(mut body: Body, mut stream: h2::SendStream<Bytes>) {
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        let (frame, last) = match frame {
            None => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "a request body failed; resetting its stream");
                stream.send_reset(h2::Reason::CANCEL);
                return;
            }
            Some(Ok(frame)) => {
                let last = frame.is_trailers() || body.is_end_stream();
                (frame, last)
            }
        };
        if send_frame(&mut stream, frame, last).is_err() || last {
            return;
        }
    }
}

/// Pings the connection every `interval`; returns why it counts as broken once a ping goes
/// unanswered for `timeout` (or cannot be sent).
async fn keep_alive(pings: Option<h2::PingPong>, interval: Duration, timeout: Duration) -> String {
    let Some(mut pings) = pings else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(e)) => return format!("keep-alive ping failed: {e}"),
            Err(_) => return format!("no answer to a keep-alive ping within {timeout:?}"),
        }
    }
}

/// A response body straight from the HTTP/2 stream; what is read is given back to the
/// stream's flow-control window.
pub struct Recv {
    stream: h2::RecvStream,
    data_done: bool,
}

impl Recv {
    fn new(stream: h2::RecvStream) -> Self {
        Recv {
            stream,
            data_done: false,
        }
    }
}

impl http_body::Body for Recv {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match std::task::ready!(self.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        match std::task::ready!(self.stream.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }
}

impl tower_service::Service<http::Request<Body>> for Direct {
    type Response = http::Response<Recv>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is the connection's, awaited in `call` (after a dial if need be).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let link = self.link.clone();
        Box::pin(async move {
            match grpc_timeout(request.headers()) {
                None => link.send(request).await,
                Some(limit) => tokio::time::timeout(limit, link.send(request))
                    .await
                    .map_err(|_| tonic::TimeoutExpired(()))?,
            }
        })
    }
}

/// The metadata key of the deadline a node keeps for a call, in `grpc-timeout`'s format.
/// gRPC servers (tonic's among them) and clients end a call at its `grpc-timeout` exactly; a
/// node that stopped its statement at that same deadline would answer why ("SQLite interrupted
/// it", which is not to be retried) too late for anyone to hear. So a call carries the
/// node's deadline here and a `grpc-timeout` a grace later (see [`set_deadline`]).
pub const TIMEOUT_KEY: &str = "raftlite-timeout";

/// Gives `request` the deadline `limit` for the node's work ([`TIMEOUT_KEY`]) and ends the
/// call itself (`grpc-timeout`) [`crate::error::ANSWER_GRACE`] later, so that the node's
/// answer at its deadline reaches the caller.
pub fn set_deadline<T>(request: &mut tonic::Request<T>, limit: Duration) {
    let millis = limit.as_millis().clamp(1, 99_999_999);
    if let Ok(value) = format!("{millis}m").parse() {
        request.metadata_mut().insert(TIMEOUT_KEY, value);
    }
    request.set_timeout(limit + crate::error::ANSWER_GRACE);
}

/// The deadline in `headers` a node keeps for a call: `grpc-timeout`, or [`TIMEOUT_KEY`] when
/// that is shorter.
pub fn node_deadline(headers: &http::HeaderMap) -> Option<Duration> {
    let grpc = grpc_timeout(headers);
    let ours = timeout_header(headers, TIMEOUT_KEY);
    match (grpc, ours) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A call's deadline from its `grpc-timeout` header (what `tonic::Request::set_timeout`
/// writes): up to 8 digits and a unit (`H`ours, `M`inutes, `S`econds, `m`illis, `u`micros,
/// `n`anos). `None` without one or with a malformed one (no deadline, as tonic treats it).
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    timeout_header(headers, "grpc-timeout")
}

/// A deadline in `grpc-timeout`'s format from the header `name`.
fn timeout_header(headers: &http::HeaderMap, name: &str) -> Option<Duration> {
    let value = headers.get(name)?.to_str().ok()?;
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(split);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
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
        for bad in [
            "",
            "m",
            "S",
            "5",
            "12",
            "1x",
            "5s",
            "123456789S",
            "-1S",
            "+1S",
            "1.5S",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[test]
    fn a_node_keeps_the_shorter_deadline_and_the_call_ends_a_grace_later() {
        let mut request = tonic::Request::new(());
        set_deadline(&mut request, Duration::from_millis(1500));
        let headers = request.into_parts().0.into_headers();
        assert_eq!(node_deadline(&headers), Some(Duration::from_millis(1500)));
        assert_eq!(
            grpc_timeout(&headers),
            Some(Duration::from_millis(1500) + crate::error::ANSWER_GRACE)
        );
        let only_grpc = |v: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", http::HeaderValue::from_static(v));
            h
        };
        assert_eq!(
            node_deadline(&only_grpc("2S")),
            Some(Duration::from_secs(2))
        );
        let mut both = only_grpc("2S");
        both.insert(TIMEOUT_KEY, http::HeaderValue::from_static("5S"));
        assert_eq!(node_deadline(&both), Some(Duration::from_secs(2)));
        assert_eq!(node_deadline(&http::HeaderMap::new()), None);
    }
}
