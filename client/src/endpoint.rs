//! Node endpoints: parsing and one lazily dialed connection per endpoint
//! ([`crate::transport::Direct`]), with TLS and the bearer token when the options have them.

use std::sync::Arc;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;

use crate::execute_stream::ExecuteStream;
use crate::transport::{self, Direct};
use crate::{ClientOptions, Error};

/// A node's connection with the client's token added to every call.
pub(crate) type Transport = InterceptedService<Direct, TokenInterceptor>;

/// Adds `authorization: Bearer TOKEN` to every request (when there is a token).
#[derive(Clone)]
pub(crate) struct TokenInterceptor {
    header: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for TokenInterceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = self.header.as_ref().map(|_| "<redacted>");
        f.debug_struct("TokenInterceptor")
            .field("token", &token)
            .finish()
    }
}

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.header {
            request.metadata_mut().insert("authorization", h.clone());
        }
        Ok(request)
    }
}

/// One node the client may talk to.
#[derive(Debug)]
pub(crate) struct NodeEndpoint {
    /// Normalized URI, `http://host:port` or `https://host:port`.
    pub(crate) uri: String,
    token: TokenInterceptor,
    /// Dialed on the first call (on that call's runtime), so `Client::connect` needs none.
    connection: Direct,
    /// Where this client's writes to the node go (see [`ExecuteStream`]).
    pub(crate) execute_stream: Arc<ExecuteStream>,
}

impl NodeEndpoint {
    pub(crate) fn parse(raw: &str, options: &ClientOptions) -> Result<Self, Error> {
        let explicit_http = raw.trim().starts_with("http://");
        let mut uri = normalize(raw)?;
        let tls = uri.starts_with("https://") || (options.tls_ca.is_some() && !explicit_http);
        if tls && uri.starts_with("http://") {
            uri = uri.replacen("http://", "https://", 1);
        }
        let parsed: http::Uri = uri
            .parse()
            .map_err(|e| Error::InvalidEndpoint(format!("{raw:?}: {e}")))?;
        let ca = match (tls, &options.tls_ca) {
            (false, _) => None,
            (true, Some(ca)) => Some(ca.as_slice()),
            (true, None) => {
                return Err(Error::InvalidEndpoint(format!(
                    "{raw:?}: an https:// address needs the CA certificate that signed the \
                     nodes' certificates (--tls-ca FILE or RAFTLITE_TLS_CA)"
                )))
            }
        };
        let dial = transport::tcp_or_tls(ca)
            .map_err(|e| Error::InvalidEndpoint(format!("{raw:?}: TLS: {e}")))?;
        let header = match &options.token {
            None => None,
            Some(t) => Some(
                format!("Bearer {}", t.trim())
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| {
                        Error::InvalidEndpoint(
                            "the token holds characters that cannot be sent in a header".into(),
                        )
                    })?,
            ),
        };
        let settings = transport::Settings::client(options.connect_timeout);
        Ok(NodeEndpoint {
            uri,
            token: TokenInterceptor { header },
            connection: Direct::new(parsed, dial, settings),
            execute_stream: Arc::default(),
        })
    }

    pub(crate) fn channel(&self) -> Transport {
        InterceptedService::new(self.connection.clone(), self.token.clone())
    }

    /// Whether `addr` (as a server reports a node's address) names this endpoint.
    pub(crate) fn matches(&self, addr: &str) -> bool {
        let host_port = |u: &str| {
            u.split_once("://")
                .map(|(_, rest)| rest.to_owned())
                .unwrap_or_default()
        };
        normalize(addr).is_ok_and(|a| host_port(&a) == host_port(&self.uri))
    }
}

/// Turns `host:port`, `http://host:port` or `https://host:port` into `http://host:port` (or
/// `https://...`); rejects anything else.
pub(crate) fn normalize(raw: &str) -> Result<String, Error> {
    let invalid = |why: &str| Error::InvalidEndpoint(format!("{raw:?}: {why}"));
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(invalid("empty"));
    }
    let (scheme, rest) = match trimmed.split_once("://") {
        Some(("http", rest)) => ("http", rest),
        Some(("https", rest)) => ("https", rest),
        Some((scheme, _)) => {
            return Err(invalid(&format!(
                "unsupported scheme {scheme:?}, use http or https"
            )))
        }
        None => ("http", trimmed),
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
    let uri = format!("{scheme}://{host}:{port}");
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
            "ftp://localhost:7401",
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
        let node = NodeEndpoint::parse("127.0.0.1:7401", &ClientOptions::default()).expect("valid");
        assert!(node.matches("http://127.0.0.1:7401"));
        assert!(node.matches("127.0.0.1:7401"));
        assert!(!node.matches("127.0.0.1:7402"));
    }
}
