//! `raftlite health`: ask a node's `grpc.health.v1` service, exit 0 only if it is SERVING.
//!
//! For container health checks where no gRPC probe exists (docker compose, exec probes): the
//! image has no shell and no `grpc_health_probe`. Service `""` (default) is readiness — the node
//! is caught up with a leader; `raftlite.v1.Admin` is liveness — the process answers.
//! Prints the status (`SERVING`, `NOT_SERVING`, ...) on stdout.

use std::process::ExitCode;
use std::time::Duration;

use raftlite_client::ClusterUrl;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Check a node's health: exit 0 if SERVING (readiness by default).
#[derive(Debug, Clone, clap::Args)]
pub struct HealthArgs {
    /// Node to ask (HOST:PORT, or https://HOST:PORT for TLS); of a raftlite:// URL, its first
    /// node, with its tls_ca (its token is not needed).
    #[arg(
        long,
        value_name = "HOST:PORT",
        env = "RAFTLITE_ADDR",
        default_value = "localhost:7000"
    )]
    pub addr: String,
    /// CA certificate (PEM) that signed the node's certificate; turns TLS on. Health needs no
    /// token.
    #[arg(long, value_name = "FILE", env = "RAFTLITE_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Health service name: "" for readiness, raftlite.v1.Admin for liveness.
    #[arg(long, default_value = "")]
    pub service: String,
    /// Give up after this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub timeout_ms: u64,
}

pub async fn run(args: HealthArgs) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let (addr, tls_ca) = match target(&args) {
        Ok(target) => target,
        Err(e) => return Ok(super::fail(&e)),
    };
    let status =
        tokio::time::timeout(timeout, check(&addr, tls_ca.as_deref(), &args.service)).await;
    match status {
        Ok(Ok(status)) => {
            println!("{}", status.as_str_name());
            Ok(
                if status == tonic_health::pb::health_check_response::ServingStatus::Serving {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                },
            )
        }
        Ok(Err(e)) => {
            eprintln!("error: {}", crate::error_text(&e));
            Ok(ExitCode::FAILURE)
        }
        Err(_) => {
            eprintln!("error: no answer from {addr} within {timeout:?}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The node to ask and the CA to trust: `--addr` and `--tls-ca` as given, or a URL's first
/// node and CA (`--tls-ca` still wins). Never the URL itself, which may hold a token.
fn target(
    args: &HealthArgs,
) -> Result<(String, Option<std::path::PathBuf>), raftlite_client::Error> {
    if !ClusterUrl::is_url(&args.addr) {
        return Ok((args.addr.clone(), args.tls_ca.clone()));
    }
    let url = ClusterUrl::parse(&args.addr)?;
    let addr = url.endpoints().into_iter().next().ok_or_else(|| {
        raftlite_client::Error::InvalidEndpoint("raftlite:// URL: no node".into())
    })?;
    Ok((addr, args.tls_ca.clone().or(url.tls_ca)))
}

async fn check(
    addr: &str,
    tls_ca: Option<&std::path::Path>,
    service: &str,
) -> anyhow::Result<tonic_health::pb::health_check_response::ServingStatus> {
    use anyhow::Context;
    let host_port = addr
        .strip_prefix("https://")
        .or_else(|| addr.strip_prefix("http://"))
        .unwrap_or(addr);
    let tls = addr.starts_with("https://") || (tls_ca.is_some() && !addr.starts_with("http://"));
    let scheme = if tls { "https" } else { "http" };
    let ca = if tls {
        let path =
            tls_ca.context("an https:// address needs --tls-ca FILE (or RAFTLITE_TLS_CA)")?;
        Some(
            std::fs::read(path)
                .with_context(|| format!("read the CA certificate {}", path.display()))?,
        )
    } else {
        None
    };
    let response = health_client(&format!("{scheme}://{host_port}"), ca.as_deref())?
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(raftlite_client::Error::from)
        .with_context(|| format!("health check of {service:?} on {addr}"))?;
    Ok(response.into_inner().status())
}

/// A health client on the client library's connection to `addr` (`http://` or `https://`),
/// trusting the CA `ca_pem`: it says plainly when the node and this end disagree on TLS
/// (tonic's channel reported an HTTP/2 framing error).
pub(crate) fn health_client(
    addr: &str,
    ca_pem: Option<&[u8]>,
) -> anyhow::Result<HealthClient<raftlite_client::transport::Direct>> {
    use anyhow::Context;
    use raftlite_client::transport;
    let uri: http::Uri = addr
        .parse()
        .with_context(|| format!("bad address {addr:?}"))?;
    let dial = transport::tcp_or_tls(ca_pem).map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
    let settings = transport::Settings::client(Duration::from_secs(2));
    Ok(HealthClient::new(transport::Direct::new(
        uri, dial, settings,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(addr: &str, tls_ca: Option<&str>) -> HealthArgs {
        HealthArgs {
            addr: addr.to_owned(),
            tls_ca: tls_ca.map(Into::into),
            service: String::new(),
            timeout_ms: 1000,
        }
    }

    #[test]
    fn a_url_gives_its_first_node_and_ca_never_its_token() {
        let url = "raftlite://app:s3cret@10.0.0.1:7000,10.0.0.2:7000?tls_ca=/ca.crt";
        let (addr, ca) = target(&args(url, None)).expect("valid");
        assert_eq!(addr, "https://10.0.0.1:7000");
        assert_eq!(ca.as_deref(), Some(std::path::Path::new("/ca.crt")));
        let (_, ca) = target(&args(url, Some("/flag.crt"))).expect("valid");
        assert_eq!(ca.as_deref(), Some(std::path::Path::new("/flag.crt")));
        let (addr, ca) = target(&args("localhost:7000", None)).expect("valid");
        assert_eq!((addr.as_str(), ca), ("localhost:7000", None));
        let err = target(&args("raftlite://app:s3cret@h", None)).expect_err("no port");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}
