//! `raftlite-counter`: the Litestream Kubernetes guide's `myapp`, with its count in raftlite.
//!
//! An HTTP server whose `GET /` answers "This server has been visited N times." Each visit
//! increments one row in raftlite through `raftlite-client` and gets the new count back from
//! the same write (`RETURNING`), so the app keeps no state: run as many replicas as you like,
//! kill them, move them; the count lives in the raftlite cluster and survives any pod.
//!
//! Environment:
//! * `RAFTLITE_ADDR` — the raftlite nodes, comma-separated `host:port` or `https://host:port`
//!   (default `127.0.0.1:7000`). List every pod (or the client Service): the client fails over
//!   between them and retries a write under the same request id, so a visit is counted once.
//! * `RAFTLITE_TLS_CA` — file with the CA certificate (PEM) that signed the nodes'
//!   certificates (the chart's Secret `<release>-tls`, key `ca.crt`). With it the app speaks
//!   TLS; an `https://` address requires it.
//! * `RAFTLITE_TOKEN` — the token sent as `authorization: Bearer TOKEN` (nodes started with
//!   an auth file require one; the app needs role `write`). Or `RAFTLITE_TOKEN_FILE`: a file
//!   holding it (a mounted Secret, e.g. the chart's `<release>-tokens`, key `app`), read once
//!   at start; `RAFTLITE_TOKEN` wins when both are set. Surrounding whitespace is ignored.
//!
//!   `RAFTLITE_ADDR=https://raftlite:7000 RAFTLITE_TLS_CA=/etc/raftlite/tls/ca.crt \
//!    RAFTLITE_TOKEN_FILE=/etc/raftlite/tokens/app raftlite-counter` (the compose file's
//!   `counter` service does this).
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
use raftlite_client::{Client, ClientOptions};
use tokio::sync::OnceCell;

/// Created once per app start; both statements are idempotent, so every replica runs them.
const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO counter (id, n) VALUES (1, 0)",
];
const INCREMENT: &str = "UPDATE counter SET n = n + 1 WHERE id = 1 RETURNING n";

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

    /// Counts one visit and returns the count, which includes this visit: one round trip,
    /// the increment answers its own result. A retry after a failover is answered from the
    /// stored result, rows included, so the count shown is the one this visit made.
    async fn visit(&self) -> Result<i64, raftlite_client::Error> {
        self.ensure_schema().await?;
        let written = self.client.execute([INCREMENT]).await?;
        match written.results.first().and_then(|r| r.rows.first()) {
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

/// The token and CA the environment names (`RAFTLITE_TOKEN` or `RAFTLITE_TOKEN_FILE`,
/// `RAFTLITE_TLS_CA`), read through `var` and `read`; empty variables count as unset.
fn credentials(
    var: impl Fn(&str) -> Option<String>,
    read: impl Fn(&str) -> std::io::Result<Vec<u8>>,
) -> anyhow::Result<(Option<String>, Option<Vec<u8>>)> {
    let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let token = match (var("RAFTLITE_TOKEN"), var("RAFTLITE_TOKEN_FILE")) {
        (Some(token), _) => Some(token.trim().to_owned()),
        (None, Some(file)) => {
            let bytes = read(&file)
                .with_context(|| format!("read the token file RAFTLITE_TOKEN_FILE={file}"))?;
            let token = String::from_utf8(bytes)
                .with_context(|| format!("the token file {file} is not UTF-8"))?;
            anyhow::ensure!(!token.trim().is_empty(), "the token file {file} is empty");
            Some(token.trim().to_owned())
        }
        (None, None) => None,
    };
    let tls_ca = match var("RAFTLITE_TLS_CA") {
        Some(file) => Some(
            read(&file)
                .with_context(|| format!("read the CA certificate RAFTLITE_TLS_CA={file}"))?,
        ),
        None => None,
    };
    Ok((token, tls_ca))
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
    let (token, tls_ca) = credentials(|name| std::env::var(name).ok(), |path| std::fs::read(path))?;
    let (has_token, tls) = (token.is_some(), tls_ca.is_some());
    let client = Client::with_options(
        &addrs,
        ClientOptions {
            // Long enough to ride out a leader failover within one visit.
            retry_deadline: Duration::from_secs(15),
            token,
            tls_ca,
            ..ClientOptions::default()
        },
    )
    .with_context(|| format!("RAFTLITE_ADDR={addrs:?}"))?;
    let app = Arc::new(App {
        client,
        schema: OnceCell::new(),
    });

    let listen = SocketAddr::from(([0, 0, 0, 0], port));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("bind {listen}"))?;
    tracing::info!(%listen, raftlite = ?addrs, tls, token = has_token, "counter listening");
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

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn files(path: &str) -> std::io::Result<Vec<u8>> {
        match path {
            "/t/app" => Ok(b"file-token\n".to_vec()),
            "/t/empty" => Ok(b" \n".to_vec()),
            "/t/ca.crt" => Ok(b"PEM".to_vec()),
            _ => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
        }
    }

    #[test]
    fn credentials_come_from_the_environment() {
        assert_eq!(
            credentials(env(&[]), files).expect("credentials"),
            (None, None)
        );
        assert_eq!(
            credentials(env(&[("RAFTLITE_TOKEN_FILE", "/t/app")]), files).expect("credentials"),
            (Some("file-token".into()), None)
        );
        assert_eq!(
            credentials(
                env(&[
                    ("RAFTLITE_TOKEN", " env-token "),
                    ("RAFTLITE_TOKEN_FILE", "/t/app"),
                    ("RAFTLITE_TLS_CA", "/t/ca.crt"),
                ]),
                files
            )
            .expect("credentials"),
            (Some("env-token".into()), Some(b"PEM".to_vec()))
        );
        // Empty variables are unset.
        assert_eq!(
            credentials(
                env(&[("RAFTLITE_TOKEN", ""), ("RAFTLITE_TLS_CA", "")]),
                files
            )
            .expect("credentials"),
            (None, None)
        );
    }

    #[test]
    fn unreadable_credentials_are_errors_naming_the_variable() {
        let e = credentials(env(&[("RAFTLITE_TOKEN_FILE", "/t/missing")]), files)
            .expect_err("an error");
        assert!(
            format!("{e:#}").contains("RAFTLITE_TOKEN_FILE=/t/missing"),
            "{e:#}"
        );
        let e =
            credentials(env(&[("RAFTLITE_TOKEN_FILE", "/t/empty")]), files).expect_err("an error");
        assert!(format!("{e:#}").contains("empty"), "{e:#}");
        let e =
            credentials(env(&[("RAFTLITE_TLS_CA", "/t/missing")]), files).expect_err("an error");
        assert!(
            format!("{e:#}").contains("RAFTLITE_TLS_CA=/t/missing"),
            "{e:#}"
        );
    }
}
