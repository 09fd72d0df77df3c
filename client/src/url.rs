//! `raftlite://` URLs: one string that names a cluster's nodes and the credentials to reach
//! them, shared by the Rust client, the `raftlite` CLI (`--addr`, `RAFTLITE_ADDR`) and the
//! Python client.
//!
//! ```text
//! raftlite://[NAME:TOKEN@]HOST:PORT[,HOST:PORT...][?tls_ca=PATH]
//! ```
//!
//! - `NAME:TOKEN@`: `TOKEN` is sent as `authorization: Bearer TOKEN`; `NAME` is a label for
//!   people (say, the token's name in the auth file) and is never sent.
//! - `HOST:PORT`, comma-separated: the nodes, in the order they are tried. IPv6 literals in
//!   brackets (`[::1]:7000`).
//! - `tls_ca=PATH`: the CA certificate (PEM) that signed the nodes' certificates; turns TLS on.
//!   A relative path is relative to the working directory.
//!
//! `NAME`, `TOKEN` and `PATH` may hold `%XX` escapes (RFC 3986), needed only for characters
//! such as `@`, `:`, `&`, `%` or `#`; tokens made by `raftlite token new` never need them.
//! The token never appears in [`ClusterUrl`]'s `Debug` or `Display`, nor in a parse error.

use std::path::{Path, PathBuf};

use crate::endpoint::normalize;
use crate::{ClientOptions, Error};

/// The URL scheme, without `://`.
pub const SCHEME: &str = "raftlite";

/// A parsed `raftlite://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterUrl {
    /// Label of the credentials; not sent to the nodes.
    pub name: Option<String>,
    token: Option<String>,
    /// `HOST:PORT` of each node, in order.
    pub nodes: Vec<String>,
    /// CA certificate file; TLS is on when it is set.
    pub tls_ca: Option<PathBuf>,
}

impl ClusterUrl {
    /// A URL for `nodes` (`HOST:PORT` each) without credentials or TLS.
    pub fn new(nodes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ClusterUrl {
            name: None,
            token: None,
            nodes: nodes.into_iter().map(Into::into).collect(),
            tls_ca: None,
        }
    }

    /// With the token `token`, labelled `name`.
    pub fn with_token(self, name: impl Into<String>, token: impl Into<String>) -> Self {
        ClusterUrl {
            name: Some(name.into()),
            token: Some(token.into()),
            ..self
        }
    }

    /// With TLS, trusting the CA certificate in `path`.
    pub fn with_tls_ca(self, path: impl Into<PathBuf>) -> Self {
        ClusterUrl {
            tls_ca: Some(path.into()),
            ..self
        }
    }

    /// Whether `s` is meant as a `raftlite://` URL (rather than `HOST:PORT` or `https://`).
    pub fn is_url(s: &str) -> bool {
        s.trim()
            .get(..SCHEME.len() + 3)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case("raftlite://"))
    }

    /// Parses `raftlite://[NAME:TOKEN@]HOST:PORT[,HOST:PORT...][?tls_ca=PATH]`.
    pub fn parse(raw: &str) -> Result<Self, Error> {
        let invalid = |why: String| Error::InvalidEndpoint(format!("raftlite:// URL: {why}"));
        let raw = raw.trim();
        if !Self::is_url(raw) {
            let scheme = raw.split_once("://").map_or("none", |(s, _)| s);
            return Err(invalid(format!(
                "expected it to start with raftlite://, the scheme is {scheme:?}"
            )));
        }
        let rest = &raw[SCHEME.len() + 3..];
        if rest.contains('#') {
            return Err(invalid(
                "a fragment (#...) is not allowed; write # in a value as %23".into(),
            ));
        }
        let (authority, query) = match rest.split_once('?') {
            Some((authority, query)) => (authority, Some(query)),
            None => (rest, None),
        };
        if authority.contains("://") {
            return Err(invalid(
                "expected HOST:PORT after raftlite://, not another scheme (TLS: ?tls_ca=PATH)"
                    .into(),
            ));
        }
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        if authority.contains('/') {
            return Err(invalid(
                "a path is not allowed after the nodes (raftlite://HOST:PORT,...?tls_ca=PATH)"
                    .into(),
            ));
        }
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let (name, token) = match userinfo {
            None => (None, None),
            Some(userinfo) => {
                // Never quote `userinfo` in an error: it holds the token.
                let Some((name, token)) = userinfo.split_once(':') else {
                    return Err(invalid(
                        "credentials must be NAME:TOKEN before the @ (no ':' found)".into(),
                    ));
                };
                let name = decode(name).map_err(|e| invalid(format!("NAME: {e}")))?;
                let token = decode(token).map_err(|e| invalid(format!("TOKEN: {e}")))?;
                if name.is_empty() {
                    return Err(invalid("NAME before the ':' is empty".into()));
                }
                if token.trim().is_empty() {
                    return Err(invalid("TOKEN after the ':' is empty".into()));
                }
                (Some(name), Some(token))
            }
        };
        if hosts.is_empty() {
            return Err(invalid("no HOST:PORT given".into()));
        }
        let nodes = hosts
            .split(',')
            .map(|node| {
                let node = node.trim();
                if node.is_empty() {
                    return Err(invalid(format!("empty node in {hosts:?}")));
                }
                normalize(node).map_err(|e| invalid(e.to_string()))?;
                Ok(node.to_owned())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut tls_ca = None;
        for pair in query.unwrap_or_default().split('&') {
            if pair.is_empty() {
                continue;
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "tls_ca" => {
                    if tls_ca.is_some() {
                        return Err(invalid("tls_ca given twice".into()));
                    }
                    let path = decode(value).map_err(|e| invalid(format!("tls_ca: {e}")))?;
                    if path.is_empty() {
                        return Err(invalid("tls_ca needs a path (tls_ca=/path/ca.crt)".into()));
                    }
                    tls_ca = Some(PathBuf::from(path));
                }
                other => {
                    return Err(invalid(format!(
                        "unknown parameter {other:?} (known: tls_ca)"
                    )))
                }
            }
        }
        Ok(ClusterUrl {
            name,
            token,
            nodes,
            tls_ca,
        })
    }

    /// The token, to send or to override.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The nodes as the client takes them: `https://HOST:PORT` with TLS, else `HOST:PORT`.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| match self.tls_ca {
                Some(_) => format!("https://{node}"),
                None => node.clone(),
            })
            .collect()
    }

    /// `base` with this URL's token and CA certificate (read from its file).
    pub fn client_options(&self, base: ClientOptions) -> Result<ClientOptions, Error> {
        let tls_ca = match &self.tls_ca {
            Some(path) => Some(read_ca(path)?),
            None => base.tls_ca,
        };
        Ok(ClientOptions {
            token: self.token.clone().or(base.token),
            tls_ca,
            ..base
        })
    }

    /// The URL, token included: what to hand to a client. [`std::fmt::Display`] hides the
    /// token instead.
    pub fn to_url_with_token(&self) -> String {
        self.format(self.token.as_deref().map(encode).as_deref())
    }

    fn format(&self, token: Option<&str>) -> String {
        let mut url = format!("{SCHEME}://");
        if let Some(token) = token {
            url.push_str(&encode(self.name.as_deref().unwrap_or("token")));
            url.push(':');
            url.push_str(token);
            url.push('@');
        }
        url.push_str(&self.nodes.join(","));
        if let Some(ca) = &self.tls_ca {
            url.push_str("?tls_ca=");
            url.push_str(&encode(&ca.to_string_lossy()));
        }
        url
    }
}

impl std::fmt::Display for ClusterUrl {
    /// The URL with the token shown as `<redacted>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = self.token.as_ref().map(|_| "<redacted>");
        f.write_str(&self.format(token))
    }
}

impl std::fmt::Debug for ClusterUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterUrl")
            .field("name", &self.name)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("nodes", &self.nodes)
            .field("tls_ca", &self.tls_ca)
            .finish()
    }
}

impl std::str::FromStr for ClusterUrl {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        ClusterUrl::parse(s)
    }
}

/// Reads a CA certificate file named by a URL or a flag.
pub(crate) fn read_ca(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| {
        Error::InvalidEndpoint(format!(
            "cannot read the CA certificate {}: {e}",
            path.display()
        ))
    })
}

/// Decodes `%XX` escapes. The error never quotes the input (it may be a token).
fn decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("'%' at offset {i} is not followed by two hex digits"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "%-escapes do not decode to UTF-8".to_owned())
}

/// Escapes what would end or split a URL part (RFC 3986 unreserved characters and `/` stay).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "6f1c0d9e8b7a";

    #[test]
    fn parses_nodes_credentials_and_ca() {
        let url = ClusterUrl::parse(&format!(
            "raftlite://app:{TOKEN}@10.0.0.1:7000,node-2.raftlite:7000,[::1]:7001?tls_ca=/etc/raftlite/ca.crt"
        ))
        .expect("valid");
        assert_eq!(url.name.as_deref(), Some("app"));
        assert_eq!(url.token(), Some(TOKEN));
        assert_eq!(
            url.nodes,
            ["10.0.0.1:7000", "node-2.raftlite:7000", "[::1]:7001"]
        );
        assert_eq!(
            url.tls_ca.as_deref(),
            Some(Path::new("/etc/raftlite/ca.crt"))
        );
        assert_eq!(
            url.endpoints(),
            [
                "https://10.0.0.1:7000",
                "https://node-2.raftlite:7000",
                "https://[::1]:7001"
            ]
        );
    }

    #[test]
    fn plain_nodes_need_nothing_else() {
        for raw in [
            "raftlite://127.0.0.1:7401,127.0.0.1:7402",
            " RAFTLITE://127.0.0.1:7401,127.0.0.1:7402/ ",
            "raftlite://127.0.0.1:7401, 127.0.0.1:7402?",
        ] {
            let url = ClusterUrl::parse(raw).expect(raw);
            assert_eq!(
                url,
                ClusterUrl::new(["127.0.0.1:7401", "127.0.0.1:7402"]),
                "{raw}"
            );
            assert_eq!(url.endpoints(), ["127.0.0.1:7401", "127.0.0.1:7402"]);
        }
    }

    #[test]
    fn percent_escapes_are_decoded() {
        let url = ClusterUrl::parse("raftlite://a%40b:t%3Ak%25@h:1?tls_ca=/my%20dir/ca.crt")
            .expect("valid");
        assert_eq!(url.name.as_deref(), Some("a@b"));
        assert_eq!(url.token(), Some("t:k%"));
        assert_eq!(url.tls_ca.as_deref(), Some(Path::new("/my dir/ca.crt")));
    }

    #[test]
    fn formats_back_to_what_it_parses() {
        let url = ClusterUrl::new(["127.0.0.1:7401", "127.0.0.1:7402"])
            .with_token("dev", "to:ken@")
            .with_tls_ca("/tmp/raftlite dev/tls/ca.crt");
        let text = url.to_url_with_token();
        assert_eq!(
            text,
            "raftlite://dev:to%3Aken%40@127.0.0.1:7401,127.0.0.1:7402?tls_ca=/tmp/raftlite%20dev/tls/ca.crt"
        );
        assert_eq!(ClusterUrl::parse(&text).expect("round trip"), url);
        let plain = ClusterUrl::new(["h:1"]);
        assert_eq!(plain.to_url_with_token(), "raftlite://h:1");
        assert_eq!(ClusterUrl::parse(&plain.to_string()).expect("valid"), plain);
    }

    #[test]
    fn the_token_is_never_shown() {
        let url = ClusterUrl::parse(&format!("raftlite://app:{TOKEN}@h:1")).expect("valid");
        for shown in [format!("{url:?}"), url.to_string()] {
            assert!(!shown.contains(TOKEN), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
        assert_eq!(url.to_string(), "raftlite://app:<redacted>@h:1");
        // Errors in URLs that carry a token do not quote it.
        for bad in [
            format!("raftlite://app:{TOKEN}@h"),
            format!("raftlite://app:{TOKEN}@h:1,,h:2"),
            format!("raftlite://app:{TOKEN}@h:1?tls=x"),
            format!("raftlite://app:{TOKEN}%zz@h:1"),
            format!("raftlite://app{TOKEN}@h:1"),
            format!("raftlite://app:{TOKEN}@h:1/db"),
        ] {
            let err = ClusterUrl::parse(&bad).expect_err(&bad);
            assert!(!err.to_string().contains(TOKEN), "{err}");
            assert!(!format!("{err:?}").contains(TOKEN), "{err:?}");
        }
    }

    #[test]
    fn rejects_malformed_urls_with_a_reason() {
        for (raw, why) in [
            ("http://h:1", "start with raftlite://"),
            ("h:1", "start with raftlite://"),
            ("raftlite://", "no HOST:PORT"),
            ("raftlite://h", "missing :port"),
            ("raftlite://h:0", "port 0"),
            ("raftlite://h:1,", "empty node"),
            ("raftlite://https://h:1", "expected HOST:PORT"),
            ("raftlite://h:1/db", "a path is not allowed"),
            ("raftlite://h:1#x", "fragment"),
            ("raftlite://h:1?tls_ca=", "needs a path"),
            ("raftlite://h:1?tls_ca=a&tls_ca=b", "twice"),
            ("raftlite://h:1?token=x", "unknown parameter \"token\""),
            ("raftlite://app@h:1", "NAME:TOKEN"),
            ("raftlite://:t@h:1", "NAME before the ':' is empty"),
            ("raftlite://app:@h:1", "TOKEN after the ':' is empty"),
            ("raftlite://a:b%2@h:1", "two hex digits"),
            ("raftlite://::1:7000", "IPv6"),
        ] {
            let err = ClusterUrl::parse(raw).expect_err(raw);
            assert!(matches!(err, Error::InvalidEndpoint(_)), "{raw}: {err:?}");
            assert!(err.to_string().contains(why), "{raw}: {err}");
        }
    }

    #[test]
    fn options_carry_the_token_and_read_the_ca() {
        let dir = std::env::temp_dir().join(format!("raftlite-url-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca = dir.join("ca.crt");
        std::fs::write(&ca, b"-----BEGIN CERTIFICATE-----\n").expect("write");
        let url = ClusterUrl::new(["h:1"])
            .with_token("app", TOKEN)
            .with_tls_ca(&ca);
        let options = url
            .client_options(ClientOptions::default())
            .expect("readable CA");
        assert_eq!(options.token.as_deref(), Some(TOKEN));
        assert_eq!(
            options.tls_ca.as_deref(),
            Some(&b"-----BEGIN CERTIFICATE-----\n"[..])
        );
        let missing = ClusterUrl::new(["h:1"]).with_tls_ca(dir.join("absent.crt"));
        let err = missing
            .client_options(ClientOptions::default())
            .expect_err("no such file");
        assert!(err.to_string().contains("absent.crt"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
