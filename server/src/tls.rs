//! TLS for both listeners and for the connections a node opens to its peers (rustls with the
//! ring provider).
//!
//! - **Client port**: TLS with the node's certificate; clients authenticate with tokens.
//! - **Peer port**: mutual TLS. A peer must present a certificate signed by the cluster CA;
//!   [`PeerCert`] keeps the names in it so the peer service can check that the sender is the
//!   node it claims to be.
//! - **Dialing peers**: the node's own certificate as the client certificate, the cluster CA
//!   as the only trusted root, the peer's host name checked against its certificate.
//!
//! The certificate, key and CA files are re-read when they change (checked every
//! [`RELOAD_CHECK`]), so a cert-manager renewal or a rotated Secret is picked up without a
//! restart: new connections use the new files, open ones keep theirs. A file that cannot be
//! read or parsed is logged and the previous material stays in use.
//!
//! # Key decisions and trade-offs
//!
//! - **Our own acceptor instead of tonic's `ServerTlsConfig`**: tonic's configuration is fixed
//!   at start, and it offers no way to swap certificates. The acceptor is small: it hands
//!   each accepted connection to a handshake task (a slow or silent client never blocks the
//!   accept loop), bounded by [`HANDSHAKE_TIMEOUT`].
//! - **Node identity is a certificate name**: `raftlite-node-<id>` (works wherever nodes share
//!   a host, as on loopback in tests) or the host of the node's peer address when no other
//!   member shares that host (a StatefulSet pod's DNS name).

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

pub use crate::config::TlsFiles;
use crate::db::{AnswerBytes, ClientAnswers};
use crate::reload::{file_stamp, FileStamp};

/// How often the files are checked for changes.
pub const RELOAD_CHECK: Duration = Duration::from_secs(5);
/// Longest a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The certificate name that identifies node `id` (a DNS subject alternative name).
pub fn node_name(id: u64) -> String {
    format!("raftlite-node-{id}")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the node's TLS files hold, ready for use.
struct Material {
    stamp: Vec<FileStamp>,
    client_port: Arc<ServerConfig>,
    peer_port: Arc<ServerConfig>,
    dial: Arc<ClientConfig>,
}

/// The node's TLS configuration, re-read when its files change.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<Material>>,
}

impl Tls {
    /// Reads and checks the files; an error names the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<Tls>> {
        let material = Material::read(&files)?;
        Ok(Arc::new(Tls {
            files,
            current: RwLock::new(Arc::new(material)),
        }))
    }

    fn material(&self) -> Arc<Material> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Server configuration of the client port (no client certificate asked).
    pub fn client_port(&self) -> Arc<ServerConfig> {
        self.material().client_port.clone()
    }

    /// Server configuration of the peer port (a certificate signed by the CA required).
    pub fn peer_port(&self) -> Arc<ServerConfig> {
        self.material().peer_port.clone()
    }

    /// Client configuration for dialing peers (this node's certificate, the CA as root).
    pub fn dial(&self) -> Arc<ClientConfig> {
        self.material().dial.clone()
    }

    /// Checks the files every [`RELOAD_CHECK`] for as long as the node runs.
    pub async fn watch(self: Arc<Self>) {
        crate::reload::watch(self, RELOAD_CHECK).await
    }
}

impl crate::reload::Reloadable for Tls {
    fn reload_if_changed(&self) -> bool {
        let Ok(stamp) = stamp(&self.files) else {
            // A file missing for a moment (a Secret being updated): keep what we have.
            return false;
        };
        if stamp == self.material().stamp {
            return false;
        }
        match Material::read(&self.files) {
            Ok(material) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(material);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate files changed: reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "TLS certificate files changed but cannot be used; keeping the previous ones");
                false
            }
        }
    }
}

fn stamp(files: &TlsFiles) -> std::io::Result<Vec<FileStamp>> {
    [&files.cert, &files.key, &files.ca]
        .into_iter()
        .map(|p| file_stamp(p))
        .collect()
}

fn read_certs(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("read {what} {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parse {what} {} (PEM)", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{what} {} holds no PEM certificate",
        path.display()
    );
    Ok(certs)
}

impl Material {
    fn read(files: &TlsFiles) -> anyhow::Result<Material> {
        let stamp = stamp(files).context("read the TLS files")?;
        let chain = read_certs(&files.cert, "certificate (tls_cert)")?;
        let key = PrivateKeyDer::from_pem_file(&files.key).with_context(|| {
            format!(
                "read private key (tls_key) {}: a PEM PKCS#8, PKCS#1 or SEC1 key",
                files.key.display()
            )
        })?;
        let mut roots = RootCertStore::empty();
        for ca in read_certs(&files.ca, "CA certificate (tls_ca)")? {
            roots
                .add(ca)
                .with_context(|| format!("use CA certificate {}", files.ca.display()))?;
        }
        let roots = Arc::new(roots);
        let h2 = || vec![b"h2".to_vec()];

        let mut client_port = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .context("the certificate (tls_cert) does not match the key (tls_key)")?;
        client_port.alpn_protocols = h2();

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .context("client certificate verifier from the CA")?;
        let mut peer_port = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .context("the certificate (tls_cert) does not match the key (tls_key)")?;
        peer_port.alpn_protocols = h2();

        let mut dial = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .context("the certificate (tls_cert) as a client certificate")?;
        dial.alpn_protocols = h2();

        Ok(Material {
            stamp,
            client_port: Arc::new(client_port),
            peer_port: Arc::new(peer_port),
            dial: Arc::new(dial),
        })
    }
}

/// The names in a peer's client certificate (DNS and IP subject alternative names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCert {
    pub names: Vec<String>,
}

impl PeerCert {
    fn from_der(der: &[u8]) -> PeerCert {
        use x509_parser::extensions::GeneralName;
        let mut names = Vec::new();
        if let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) {
            if let Ok(Some(san)) = cert.subject_alternative_name() {
                for name in &san.value.general_names {
                    match name {
                        GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                        GeneralName::IPAddress(ip) => {
                            let ip = match ip.len() {
                                4 => <[u8; 4]>::try_from(*ip)
                                    .ok()
                                    .map(|b| std::net::IpAddr::from(b).to_string()),
                                16 => <[u8; 16]>::try_from(*ip)
                                    .ok()
                                    .map(|b| std::net::IpAddr::from(b).to_string()),
                                _ => None,
                            };
                            names.extend(ip);
                        }
                        _ => {}
                    }
                }
            }
        }
        PeerCert { names }
    }

    /// True when the certificate names node `id`: it carries `raftlite-node-<id>`, or the
    /// host of the node's peer address when `host_is_unique` (no other member shares it).
    pub fn names_node(&self, id: u64, peer_addr: Option<&str>, host_is_unique: bool) -> bool {
        let explicit = node_name(id);
        if self.names.contains(&explicit) {
            return true;
        }
        let Some(host) = peer_addr.and_then(addr_host) else {
            return false;
        };
        host_is_unique && self.names.iter().any(|n| n.eq_ignore_ascii_case(&host))
    }
}

/// The host of `HOST:PORT` (brackets of an IPv6 address removed).
pub fn addr_host(addr: &str) -> Option<String> {
    let (host, _) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Client,
    Peer,
}

/// What a handler can learn about the connection its request came on.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// The verified client certificate (peer port with TLS only).
    pub peer_cert: Option<Arc<PeerCert>>,
    /// The answers this connection has not read yet (client port only): the node closes the
    /// connection when it leaves them unread too long while others need the room.
    pub answers: Option<Arc<ClientAnswers>>,
}

impl ConnInfo {
    /// Whether the node closed this connection (see [`ConnInfo::answers`]); if not, `cx` is
    /// woken when it does.
    fn poll_closed(&self, cx: &mut Context<'_>) -> bool {
        self.answers.as_ref().is_some_and(|a| a.poll_closed(cx))
    }

    fn is_closed(&self) -> bool {
        self.answers.as_ref().is_some_and(|a| a.is_closed())
    }
}

fn closed_for_unread_answers() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "the node closed this connection: it left answers unread while other requests needed \
         their room",
    )
}

/// An accepted connection, plain or TLS.
pub enum Conn {
    Plain(TcpStream, ConnInfo, Slot),
    Tls(
        Box<tokio_rustls::server::TlsStream<TcpStream>>,
        ConnInfo,
        Slot,
    ),
}

/// A connection's place under its listener's limit, given back when the connection closes.
pub type Slot = tokio::sync::OwnedSemaphorePermit;

/// Longest a new connection on a full listener waits for the place of an unused one that
/// was told to end (it ends at its next turn, within microseconds unless the node is stuck).
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// Most connections the peer port holds at once (handshakes under way included): peers keep
/// a few each; the rest of a node's open files stay free whatever reaches the port.
pub const PEER_MAX_CONNECTIONS: usize = 256;

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        match self {
            Conn::Plain(_, info, _) | Conn::Tls(_, info, _) => info.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(_, info, _) | Conn::Tls(_, info, _) if info.poll_closed(cx) => {
                Poll::Ready(Err(closed_for_unread_answers()))
            }
            Conn::Plain(s, ..) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s, ..) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(_, info, _) | Conn::Tls(_, info, _) if info.is_closed() => {
                Poll::Ready(Err(closed_for_unread_answers()))
            }
            Conn::Plain(s, ..) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s, ..) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, ..) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s, ..) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, ..) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s, ..) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(_, info, _) | Conn::Tls(_, info, _) if info.is_closed() => {
                Poll::Ready(Err(closed_for_unread_answers()))
            }
            Conn::Plain(s, ..) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s, ..) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s, ..) => s.is_write_vectored(),
            Conn::Tls(s, ..) => s.is_write_vectored(),
        }
    }
}

/// Open files kept for the node's own use whatever its listeners hold: the Raft log's
/// segments, the database and its WAL, the readers, the archive, the peer port's
/// [`PEER_MAX_CONNECTIONS`] and the metrics port.
const FILES_KEPT_FOR_THE_NODE: u64 = 1024;

/// Raises this process's open-file limit to its hard limit, and returns how many client
/// connections fit beside [`FILES_KEPT_FOR_THE_NODE`]: `max_connections`, or fewer (at least
/// 64) when the limit is too low for it, saying so in a warning line.
pub fn client_connections(max_connections: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    let files = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return max_connections;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
        limit.rlim_cur
    };
    let fit = files.saturating_sub(FILES_KEPT_FOR_THE_NODE).max(64);
    if (max_connections as u64) <= fit {
        return max_connections;
    }
    tracing::warn!(
        max_connections,
        open_file_limit = files,
        using = fit,
        "max_connections does not fit the open-file limit beside the node's own files; raise the limit (ulimit -n) to allow more"
    );
    fit as usize
}

/// The TLS handshakes under way on a listener, oldest first, each with its place, so that a
/// full listener can hand the oldest one's place to a new connection at once.
#[derive(Clone, Default)]
struct Handshakes(Arc<std::sync::Mutex<HandshakesInner>>);

/// A handshake's place: taken by the handshake when it ends, or by an eviction before that.
type SharedSlot = Arc<std::sync::Mutex<Option<Slot>>>;

#[derive(Default)]
struct HandshakesInner {
    next: u64,
    pending: std::collections::VecDeque<(u64, SharedSlot, tokio::task::AbortHandle)>,
}

fn take_slot(slot: &SharedSlot) -> Option<Slot> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).take()
}

impl Handshakes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HandshakesInner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the oldest handshake under way and returns its place; `None` when there is none.
    fn evict_oldest(&self) -> Option<Slot> {
        loop {
            let (_, slot, task) = self.lock().pending.pop_front()?;
            if let Some(slot) = take_slot(&slot) {
                task.abort();
                return Some(slot);
            }
        }
    }
}

/// Takes handshake `.1` off the list when its handshake ends, however it ends.
struct HandshakeDone<'a>(&'a Handshakes, u64);

impl Drop for HandshakeDone<'_> {
    fn drop(&mut self) {
        self.0.lock().pending.retain(|(id, _, _)| *id != self.1);
    }
}

/// Binds `addr` and yields its connections: plain without `tls`, else after a TLS handshake
/// with the configuration of `port` (failed handshakes are dropped and logged at debug).
///
/// At most `max_connections` are held at once, handshakes under way included: past that, a
/// new connection takes the place of the oldest one still in its handshake, or else (on the
/// client port) of the oldest one that never made a request with a valid token, or else is
/// closed as soon as it is accepted (one warning line per 10 s says so),
/// so that connections nobody uses cannot take the files the node needs for its log and
/// database. A connection in the handshake holds its place for at most `HANDSHAKE_TIMEOUT`.
pub async fn incoming(
    addr: SocketAddr,
    tls: Option<Arc<Tls>>,
    port: Port,
    max_connections: usize,
    answers: Option<Arc<AnswerBytes>>,
) -> anyhow::Result<tokio_stream::wrappers::ReceiverStream<std::io::Result<Conn>>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {addr}"))?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let handshakes = Handshakes::default();
    tokio::spawn(async move {
        let mut warned: Option<std::time::Instant> = None;
        loop {
            let (stream, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment, keep serving.
                    tracing::warn!(error = %e, %addr, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Full: a connection still in its TLS handshake gives its place to this one (the
            // oldest such). Otherwise connections that never finish a handshake, reopened as
            // they time out, could keep every place and a peer could not reconnect.
            let evicted = || tls.as_ref().and_then(|_| handshakes.evict_oldest());
            let mut slot = slots.clone().try_acquire_owned().ok().or_else(evicted);
            let mut warn = |what: &str| {
                if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                    warned = Some(std::time::Instant::now());
                    tracing::warn!(%addr, ?port, max_connections, %remote,
                        "connection limit reached: {what}");
                }
            };
            // Still full: the oldest connection that never made a request with a valid token
            // ends, and its place goes to this one once it has.
            if slot.is_none() && answers.as_ref().is_some_and(|a| a.close_oldest_unused()) {
                warn("closing the oldest connections that never made a request with a valid token, to let new ones in");
                let freed = tokio::time::timeout(EVICTION_WAIT, slots.clone().acquire_owned());
                slot = freed.await.ok().and_then(Result::ok);
            }
            let Some(slot) = slot else {
                drop(stream);
                warn("closing new connections until some close");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let info = ConnInfo {
                remote: Some(remote),
                peer_cert: None,
                answers: answers.as_ref().map(|a| a.client(Some(remote))),
            };
            let Some(tls) = &tls else {
                if tx.send(Ok(Conn::Plain(stream, info, slot))).await.is_err() {
                    return;
                }
                continue;
            };
            let config = match port {
                Port::Client => tls.client_port(),
                Port::Peer => tls.peer_port(),
            };
            let tx = tx.clone();
            let done = handshakes.clone();
            let slot: SharedSlot = Arc::new(std::sync::Mutex::new(Some(slot)));
            let mut pending = handshakes.lock();
            pending.next += 1;
            let id = pending.next;
            let ours = slot.clone();
            let task = tokio::spawn(async move {
                let _done = HandshakeDone(&done, id);
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                let stream =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, ?port, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%remote, ?port, "TLS handshake timed out");
                            return;
                        }
                    };
                let peer_cert = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|leaf| Arc::new(PeerCert::from_der(leaf)));
                let info = ConnInfo { peer_cert, ..info };
                drop(_done);
                // Evicted meanwhile: its place went to another connection.
                let Some(slot) = take_slot(&ours) else { return };
                let _ = tx.send(Ok(Conn::Tls(Box::new(stream), info, slot))).await;
            });
            pending.pending.push_back((id, slot, task.abort_handle()));
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}
