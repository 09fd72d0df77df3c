//! `raftlite-counter`: the Litestream Kubernetes guide's `myapp`, with its count in raftlite.
//!
//! An HTTP server whose `GET /` answers "This server has been visited N times." Each visit
//! increments one row in raftlite through `raftlite-client` and reads it back at the write's
//! log index (read-your-writes), so the app keeps no state: run as many replicas as you like,
//! kill them, move them; the count lives in the raftlite cluster and survives any pod.
//!
//! Environment:
//! * `RAFTLITE_ADDR` — the raftlite nodes, comma-separated `host:port` (default
//!   `127.0.0.1:7000`). List every pod (or the client Service): the client fails over between
//!   them and retries a write under the same request id, so a visit is counted once.
//! * `PORT` — the HTTP port (default 8080), bound on every interface.
//! * `RUST_LOG` — log filter (default `info`).
//!
//! `GET /healthz` answers `ok` without touching the database (a liveness probe). The table
//! is created on the first visit (or at start, whichever reaches the cluster first), so the
//! app may start before its database is reachable: visits answer 503 until it is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use raftlite_client::{Client, ClientOptions, Consistency, Statement};
use tokio::sync::OnceCell;

/// Created once per app start; both statements are idempotent, so every replica runs them.
const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO counter (id, n) VALUES (1, 0)",
];
const INCREMENT: &str = "UPDATE counter SET n = n + 1 WHERE id = 1";
const READ: &str = "SELECT n FROM counter WHERE id = 1";

/// What every request handler shares.
struct App {
    client: Client,
    /// Set once the schema exists.
    schema: OnceCell<()>,
}

impl App {
    async fn ensure_schema(&self) -> Result<(), raftlite_client::Error> {
        self.schema
            .get_or_try_init(|| async {
                self.client.execute(SCHEMA).await?;
                tracing::info!("table counter is ready");
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Counts one visit and returns the count, which includes this visit.
    ///
    /// The increment and the read are two requests: the read runs at the increment's log
    /// index, on whichever node answers, so it sees this visit (and possibly visits that
    /// landed in between, as any counter read after an increment would).
    async fn visit(&self) -> Result<i64, raftlite_client::Error> {
        self.ensure_schema().await?;
        let written = self.client.execute([INCREMENT]).await?;
        let rows = self
            .client
            .query_with(
                Statement::new(READ),
                Consistency::AtIndex(written.log_index),
                1,
            )
            .await?;
        match rows.rows.first() {
            Some(row) => row.get(0),
            None => Err(raftlite_client::Error::Conversion(
                "table counter has no row".into(),
            )),
        }
    }

    async fn respond<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/") => match self.visit().await {
                Ok(n) => text(
                    StatusCode::OK,
                    format!("This server has been visited {n} times.\n"),
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "visit not counted");
                    let status = if e.is_retryable() {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::INTERNAL_SERVER_ERROR
                    };
                    text(status, format!("error: {e}\n"))
                }
            },
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
            (&Method::GET, _) => text(StatusCode::NOT_FOUND, "not found\n".into()),
            _ => text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into()),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `RAFTLITE_ADDR` split on commas, blanks dropped.
fn endpoints(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();

    let addrs = endpoints(&env_or("RAFTLITE_ADDR", "127.0.0.1:7000"));
    let port: u16 = env_or("PORT", "8080")
        .parse()
        .context("PORT must be a port number")?;
    let client = Client::with_options(
        &addrs,
        ClientOptions {
            // Long enough to ride out a leader failover within one visit.
            retry_deadline: Duration::from_secs(15),
            ..ClientOptions::default()
        },
    )
    .with_context(|| format!("RAFTLITE_ADDR={addrs:?} is not a list of host:port"))?;
    let app = Arc::new(App {
        client,
        schema: OnceCell::new(),
    });

    let listen = SocketAddr::from(([0, 0, 0, 0], port));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("bind {listen}"))?;
    tracing::info!(%listen, raftlite = ?addrs, "counter listening");
    {
        let app = app.clone();
        tokio::spawn(async move {
            if let Err(e) = app.ensure_schema().await {
                tracing::warn!(error = %e, "cannot create the table yet; the first visit retries");
            }
        });
    }

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listen for SIGTERM")?;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            // PID 1 in a container: without a handler SIGTERM would be ignored.
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let app = app.clone();
                async move { Ok::<_, std::convert::Infallible>(app.respond(&request).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            // A client that hangs up early is not worth a log line.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
    tracing::info!("shutting down");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_split_on_commas() {
        assert_eq!(
            endpoints(" a:1, b:2,,c:3 "),
            ["a:1".to_string(), "b:2".into(), "c:3".into()]
        );
        assert!(endpoints("").is_empty());
    }
}
