//! The connection under every gRPC call a client (and a node, to its peers) makes: one HTTP/2
//! connection per node address, dialed on first use and again after it breaks, with each call
//! going straight onto it.
//!
//! tonic's `Channel` hands every request to a buffer task of its own before the request
//! reaches the connection: one more task wake-up per call, 6–60 µs of a 0.2 ms loopback
//! round trip on a busy two-core host (BENCHMARKS.md, "Session 12"), on every write a client
//! sends and every AppendEntries a leader sends. [`Direct`] does what `Channel` did for us
//! without that task: it dials lazily (a failed dial is UNAVAILABLE within the connect
//! timeout, as with `Channel`), shares one connection among clones, and holds a call to its
//! `grpc-timeout` header (CANCELLED "Timeout expired" once it passes, as `Channel` answers).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use tokio::runtime::Handle;
use tonic::body::Body;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A byte stream a connection runs over (TCP, or TLS over TCP).
pub trait Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static {}
impl<T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static> Io for T {}

/// What [`Dial`] returns: a new stream to the address, or why there is none.
pub type Dialing = Pin<Box<dyn Future<Output = std::io::Result<Box<dyn Io>>> + Send>>;

/// Opens a stream to a node's `http://host:port` (TCP, TLS, mutual TLS: the caller's choice).
pub type Dial = Arc<dyn Fn(&http::Uri) -> Dialing + Send + Sync>;

/// Plain TCP with Nagle off.
pub fn tcp() -> Dial {
    Arc::new(|uri: &http::Uri| {
        let target = host_port(uri);
        Box::pin(async move {
            let (host, port) = target?;
            let tcp = connect(&host, port).await?;
            Ok(Box::new(hyper_util::rt::TokioIo::new(tcp)) as Box<dyn Io>)
        })
    })
}

/// TLS over [`tcp`] with `config` (its ALPN should offer `h2`), the server's name taken
/// from the address.
pub async fn tls(
    config: Arc<rustls::ClientConfig>,
    uri: &http::Uri,
) -> std::io::Result<Box<dyn Io>> {
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
        .await?;
    Ok(Box::new(hyper_util::rt::TokioIo::new(stream)))
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
    sender: tokio::sync::Mutex<Option<SendRequest<Body>>>,
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
                sender: tokio::sync::Mutex::new(None),
            }),
        }
    }
}

/// Spawns hyper's connection tasks on a chosen runtime.
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
        let limit = self.settings.connect_timeout;
        let dialed = tokio::time::timeout(limit, self.dial())
            .await
            .map_err(|_| format!("connecting to {} timed out after {limit:?}", self.uri))
            .and_then(|r| r.map_err(|e| format!("connecting to {}: {e}", self.uri)))
            .map_err(|e| tonic::ConnectError(e.into()))?;
        *current = Some(dialed.clone());
        Ok(dialed)
    }

    async fn dial(&self) -> Result<SendRequest<Body>, BoxError> {
        let runtime = self
            .settings
            .runtime
            .clone()
            .unwrap_or_else(Handle::current);
        let stream = (self.dial)(&self.uri).await?;
        let (sender, connection) =
            hyper::client::conn::http2::Builder::new(OnRuntime(runtime.clone()))
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(self.settings.keep_alive_interval)
                .keep_alive_timeout(self.settings.keep_alive_timeout)
                .keep_alive_while_idle(true)
                .handshake(stream)
                .await?;
        let peer = self.uri.clone();
        runtime.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection closed");
            }
        });
        Ok(sender)
    }

    /// `request`'s path on this node's scheme and authority (tonic's clients send a path).
    fn address(&self, request: &mut http::Request<Body>) -> Result<(), BoxError> {
        let mut parts = self.uri.clone().into_parts();
        parts.path_and_query = request.uri().path_and_query().cloned();
        *request.uri_mut() = http::Uri::from_parts(parts)?;
        Ok(())
    }
}

impl tower_service::Service<http::Request<Body>> for Direct {
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

/// A call's deadline from its `grpc-timeout` header (what `tonic::Request::set_timeout`
/// writes): up to 8 digits and a unit (`H`ours, `M`inutes, `S`econds, `m`illis, `u`micros,
/// `n`anos). `None` without one or with a malformed one (no deadline, as tonic treats it).
/// The node's client port reads its callers' deadlines with it too.
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
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
}
