//! A real S3 server for archive scenarios: `moto_server` on a free loopback port, reached
//! through [`S3Proxy`], a TCP forwarder the scenario can take down and bring back (an S3
//! outage without losing moto's in-memory objects).

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context};

/// A running `moto_server` (S3 API only, in memory). Killed on drop.
pub struct MotoServer {
    child: Child,
    addr: SocketAddr,
}

impl MotoServer {
    /// Starts `moto_server` (from `MOTO_SERVER` or `PATH`) on a free loopback port and waits
    /// until it answers.
    pub fn start() -> anyhow::Result<MotoServer> {
        MotoServer::start_on(IpAddr::from([127, 0, 0, 1]))
    }

    /// Like [`MotoServer::start`], on a free port of `ip`, a local address such as the
    /// gateway of a Docker network (so that containers on it reach the server).
    pub fn start_on(ip: IpAddr) -> anyhow::Result<MotoServer> {
        let port = TcpListener::bind((ip, 0))
            .with_context(|| format!("bind a free port on {ip}"))?
            .local_addr()?
            .port();
        let program = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let child = Command::new(&program)
            .args(["-H", &ip.to_string(), "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!("start {program} (install it with: pip install 'moto[server]')")
            })?;
        let server = MotoServer {
            child,
            addr: SocketAddr::new(ip, port),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(server.addr).is_err() {
            ensure!(
                std::time::Instant::now() < deadline,
                "moto_server did not listen on {} within 30 s",
                server.addr
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Creates a bucket with a plain (unsigned) `PUT /bucket`, which moto accepts.
    pub fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        self.request("PUT", &format!("/{bucket}"), &[]).map(|_| ())
    }

    /// One HTTP/1.1 request; returns the body of a 2xx answer.
    fn request(&self, method: &str, path: &str, body: &[u8]) -> anyhow::Result<Vec<u8>> {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect(self.addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let text = String::from_utf8_lossy(&response);
        let status = text.split_whitespace().nth(1).unwrap_or("");
        if !status.starts_with('2') {
            bail!(
                "{method} {path}: moto answered {}",
                text.lines().next().unwrap_or("")
            );
        }
        let start = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4)
            .unwrap_or(response.len());
        Ok(response[start..].to_vec())
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP forwarder in front of the S3 server. While down, it accepts no connection and has
/// cut every open one: to the nodes, S3 is unreachable.
pub struct S3Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
}

#[derive(Default)]
struct ProxyState {
    accept: Option<tokio::task::JoinHandle<()>>,
    connections: Vec<tokio::task::JoinHandle<()>>,
}

impl S3Proxy {
    /// Starts forwarding a free loopback port to `target`. Needs a tokio runtime.
    pub async fn start(target: SocketAddr) -> anyhow::Result<S3Proxy> {
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let proxy = S3Proxy {
            addr,
            target,
            state: Arc::default(),
        };
        proxy.up().await?;
        Ok(proxy)
    }

    /// The endpoint URL the nodes use.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts every connection and stops accepting new ones.
    pub fn down(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(accept) = state.accept.take() {
            accept.abort();
        }
        for c in state.connections.drain(..) {
            c.abort();
        }
    }

    /// Binds the proxy's port again: an aborted accept task lets go of it only once it is
    /// dropped, on its runtime's next turn.
    async fn bind(&self) -> anyhow::Result<tokio::net::TcpListener> {
        let mut tries = 0;
        loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(listener) => return Ok(listener),
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("bind the S3 proxy to {}", self.addr))
                }
            }
        }
    }

    /// Cuts every connection, then accepts new ones but never answers on them: to the nodes,
    /// S3 hangs. [`S3Proxy::up`] ends it.
    pub async fn stall(&self) -> anyhow::Result<()> {
        self.down();
        let listener = self.bind().await?;
        let state = self.state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let held = tokio::spawn(async move {
                    let _inbound = inbound;
                    std::future::pending::<()>().await;
                });
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                s.connections.retain(|c| !c.is_finished());
                s.connections.push(held);
            }
        });
        self.state.lock().unwrap_or_else(|p| p.into_inner()).accept = Some(accept);
        Ok(())
    }

    /// Accepts and forwards connections again (on the same port); ends a stall.
    pub async fn up(&self) -> anyhow::Result<()> {
        self.down();
        let listener = self.bind().await?;
        let (target, state) = (self.target, self.state.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                s.connections.retain(|c| !c.is_finished());
                s.connections.push(conn);
            }
        });
        self.state.lock().unwrap_or_else(|p| p.into_inner()).accept = Some(accept);
        Ok(())
    }
}

impl Drop for S3Proxy {
    fn drop(&mut self) {
        self.down();
    }
}
