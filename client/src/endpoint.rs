//! Node endpoints: parsing and one lazily connected channel per endpoint.

use std::sync::OnceLock;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::Error;

/// One node the client may talk to.
#[derive(Debug)]
pub(crate) struct NodeEndpoint {
    /// Normalized URI, `http://host:port`.
    pub(crate) uri: String,
    endpoint: Endpoint,
    /// Created on first use: a channel spawns a background task, which needs a Tokio runtime,
    /// and `Client::connect` should not.
    channel: OnceLock<Channel>,
}

impl NodeEndpoint {
    pub(crate) fn parse(raw: &str, connect_timeout: Duration) -> Result<Self, Error> {
        let uri = normalize(raw)?;
        let endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|e| Error::InvalidEndpoint(format!("{raw:?}: {e}")))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        Ok(NodeEndpoint {
            uri,
            endpoint,
            channel: OnceLock::new(),
        })
    }

    pub(crate) fn channel(&self) -> Channel {
        self.channel
            .get_or_init(|| self.endpoint.connect_lazy())
            .clone()
    }

    /// Whether `addr` (as a server reports a node's address) names this endpoint.
    pub(crate) fn matches(&self, addr: &str) -> bool {
        normalize(addr).is_ok_and(|a| a == self.uri)
    }
}

/// Turns `host:port` or `http://host:port` into `http://host:port`; rejects anything else.
pub(crate) fn normalize(raw: &str) -> Result<String, Error> {
    let invalid = |why: &str| Error::InvalidEndpoint(format!("{raw:?}: {why}"));
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(invalid("empty"));
    }
    let rest = match trimmed.split_once("://") {
        Some(("http", rest)) => rest,
        Some((scheme, _)) => {
            return Err(invalid(&format!("unsupported scheme {scheme:?}, use http")))
        }
        None => trimmed,
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) {
        return Err(invalid("expected host:port without a path"));
    }
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| invalid("missing :port"))?;
    if host.is_empty() {
        return Err(invalid("missing host"));
    }
    // An IPv6 literal must be bracketed, otherwise its colons are ambiguous.
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(invalid("IPv6 addresses must be written as [addr]:port"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| invalid("port is not a number in 1..=65535"))?;
    if port == 0 {
        return Err(invalid("port 0"));
    }
    let uri = format!("http://{host}:{port}");
    uri.parse::<tonic::codegen::http::Uri>()
        .map_err(|e| invalid(&e.to_string()))?;
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_host_port_and_http_uris() {
        for (raw, want) in [
            ("127.0.0.1:7401", "http://127.0.0.1:7401"),
            ("http://localhost:7401", "http://localhost:7401"),
            (
                "http://node-0.raftlite.default.svc:7401/",
                "http://node-0.raftlite.default.svc:7401",
            ),
            (" [::1]:80 ", "http://[::1]:80"),
        ] {
            assert_eq!(normalize(raw).expect(raw), want);
        }
    }

    #[test]
    fn rejects_malformed_endpoints() {
        for raw in [
            "",
            "localhost",
            ":7401",
            "localhost:http",
            "localhost:0",
            "localhost:70000",
            "https://localhost:7401",
            "http://localhost:7401/path",
            "::1:7401",
            "bad host:1",
        ] {
            let err = normalize(raw).expect_err(raw);
            assert!(matches!(err, Error::InvalidEndpoint(_)), "{raw}: {err:?}");
        }
    }

    #[test]
    fn matches_reported_addresses() {
        let node = NodeEndpoint::parse("127.0.0.1:7401", Duration::from_secs(1)).expect("valid");
        assert!(node.matches("http://127.0.0.1:7401"));
        assert!(node.matches("127.0.0.1:7401"));
        assert!(!node.matches("127.0.0.1:7402"));
    }
}
