//! Tokens and roles on the client port, as a `tower` layer in front of every route.
//!
//! The auth file (`--auth-file`) lists tokens by the hex SHA-256 of their value, each with a
//! name and a role:
//!
//! ```yaml
//! tokens:
//!   - name: app
//!     sha256: 5e884898da28047151d0e56f8dc62927...   # hex SHA-256 of the token
//!     role: write        # read | write | admin
//! ```
//!
//! Clients send `authorization: Bearer TOKEN`. What each role may call:
//!
//! | role  | calls |
//! |-------|-------|
//! | read  | `Sql.Query`, `Admin.Status`, server reflection |
//! | write | also `Sql.Execute` |
//! | admin | also `Admin.AddLearner`, `AddVoter`, `RemoveNode`, `TransferLeadership`, `TriggerSnapshot` |
//!
//! `grpc.health.v1` needs no token (probes). No token or an unknown one is UNAUTHENTICATED; a
//! token without the role is PERMISSION_DENIED naming the role needed. A method this table
//! does not know needs `admin`.
//!
//! The file is re-read when it changes (checked every [`RELOAD_CHECK`]); a file that cannot be
//! read or parsed is logged and the previous tokens stay in force. Logs name a token by its
//! `name`, never its value or hash.
//!
//! # Key decisions and trade-offs
//! - **Hashes, not tokens, on disk**: a leaked config or Secret mount of the auth file does not
//!   leak credentials. Tokens are random 256-bit values, so an unsalted SHA-256 is enough (no
//!   password-hashing cost on every request).
//! - **Checked on the node the client called**: a follower checks the token and forwards the
//!   write to the leader over the peer port, where mutual TLS says it comes from a node.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::reload::{file_stamp, FileStamp};

/// How often the auth file is checked for changes.
pub const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Write,
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The role a gRPC method needs; `None`: no token needed.
pub fn required_role(path: &str) -> Option<Role> {
    if path.starts_with("/grpc.health.v1.Health/") {
        return None;
    }
    Some(match path {
        "/raftlite.v1.Sql/Query" | "/raftlite.v1.Admin/Status" => Role::Read,
        p if p.starts_with("/grpc.reflection.") => Role::Read,
        "/raftlite.v1.Sql/Execute"
        | "/raftlite.v1.Sql/ExecuteStream"
        | "/raftlite.v1.Sql/Begin"
        | "/raftlite.v1.Sql/Commit"
        | "/raftlite.v1.Sql/Rollback" => Role::Write,
        _ => Role::Admin,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFileText {
    tokens: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    sha256: String,
    role: Role,
}

/// The tokens of one version of the auth file.
#[derive(Debug, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], (String, Role)>,
}

impl Tokens {
    /// Parses the auth file's text; errors name the entry and what is wrong.
    pub fn parse(text: &str) -> anyhow::Result<Tokens> {
        let file: AuthFileText = serde_yaml::from_str(text)
            .context("not an auth file (tokens: [{name, sha256, role}])")?;
        let mut by_hash = HashMap::new();
        for (i, t) in file.tokens.into_iter().enumerate() {
            let hash = parse_hex32(t.sha256.trim()).with_context(|| {
                format!(
                    "token {:?} (entry {}): sha256 must be 64 hex digits (the SHA-256 of the token)",
                    t.name,
                    i + 1
                )
            })?;
            anyhow::ensure!(
                !t.name.trim().is_empty(),
                "token entry {} has an empty name",
                i + 1
            );
            if let Some((other, _)) = by_hash.insert(hash, (t.name.clone(), t.role)) {
                anyhow::bail!("tokens {other:?} and {:?} have the same sha256", t.name);
            }
        }
        Ok(Tokens { by_hash })
    }

    /// The name and role of `token`, if it is known.
    pub fn check(&self, token: &str) -> Option<&(String, Role)> {
        self.by_hash.get(&sha256(token))
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

pub fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn parse_hex32(text: &str) -> anyhow::Result<[u8; 32]> {
    anyhow::ensure!(
        text.len() == 64 && text.is_ascii(),
        "{} characters",
        text.len()
    );
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .map_err(|_| anyhow::anyhow!("not hex"))?;
    }
    Ok(out)
}

/// The auth file, re-read when it changes.
pub struct AuthFile {
    path: PathBuf,
    current: RwLock<(Option<FileStamp>, Arc<Tokens>)>,
}

impl AuthFile {
    pub fn load(path: &Path) -> anyhow::Result<Arc<AuthFile>> {
        let (stamp, tokens) = read(path)?;
        tracing::info!(file = %path.display(), tokens = tokens.len(), "auth file loaded");
        Ok(Arc::new(AuthFile {
            path: path.to_owned(),
            current: RwLock::new((Some(stamp), Arc::new(tokens))),
        }))
    }

    pub fn tokens(&self) -> Arc<Tokens> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// Checks the file every [`RELOAD_CHECK`] for as long as the node runs.
    pub async fn watch(self: Arc<Self>) {
        crate::reload::watch(self, RELOAD_CHECK).await
    }
}

impl crate::reload::Reloadable for AuthFile {
    fn reload_if_changed(&self) -> bool {
        let Ok(stamp) = file_stamp(&self.path) else {
            return false;
        };
        if self.current.read().unwrap_or_else(|p| p.into_inner()).0 == Some(stamp) {
            return false;
        }
        match read(&self.path) {
            Ok((stamp, tokens)) => {
                tracing::info!(file = %self.path.display(), tokens = tokens.len(), "auth file changed: reloaded");
                *self.current.write().unwrap_or_else(|p| p.into_inner()) =
                    (Some(stamp), Arc::new(tokens));
                true
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "auth file changed but cannot be used; keeping the previous tokens");
                // Do not retry the same broken version every tick.
                self.current.write().unwrap_or_else(|p| p.into_inner()).0 = Some(stamp);
                false
            }
        }
    }
}

fn read(path: &Path) -> anyhow::Result<(FileStamp, Tokens)> {
    let stamp = file_stamp(path).with_context(|| format!("read auth file {}", path.display()))?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read auth file {}", path.display()))?;
    let tokens = Tokens::parse(&text).with_context(|| format!("auth file {}", path.display()))?;
    Ok((stamp, tokens))
}

/// Who made a request: the name and role of its token. Handlers find it in the request's
/// extensions (absent on a node without an auth file: everyone is the same anonymous caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

/// Who the caller of `request` is, as one string: its token's name and role (`app:write`; ""
/// without an auth file). Names need not be unique in the auth file, so the role is part of it:
/// a `read` token named like a `write` one is another caller.
pub fn principal_name<T>(request: &tonic::Request<T>) -> String {
    request
        .extensions()
        .get::<Principal>()
        .map(|p| format!("{}:{}", p.name, p.role.name()))
        .unwrap_or_default()
}

/// Who sent the request, or why it was refused, as the status the client gets.
pub fn authorize(
    tokens: &Tokens,
    path: &str,
    authorization: Option<&[u8]>,
) -> Result<Option<Principal>, Status> {
    let Some(needed) = required_role(path) else {
        return Ok(None);
    };
    let Some(header) = authorization else {
        return Err(Status::unauthenticated(
            "this node requires a token: send `authorization: Bearer TOKEN` \
             (raftlite CLI: --token, --token-file or RAFTLITE_TOKEN)",
        ));
    };
    let token = std::str::from_utf8(header)
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err(Status::unauthenticated(
            "the authorization header must be `Bearer TOKEN`",
        ));
    };
    let Some((name, role)) = tokens.check(token) else {
        return Err(Status::unauthenticated("unknown token"));
    };
    if *role < needed {
        tracing::info!(token = %name, role = role.name(), %path, "refused: role too low");
        return Err(Status::permission_denied(format!(
            "{path} needs the {} role; token {name:?} has the {} role",
            needed.name(),
            role.name()
        )));
    }
    Ok(Some(Principal {
        name: name.to_string(),
        role: *role,
    }))
}

/// Checks every request's token against the auth file, when there is one (see the module
/// docs), and marks the connection of each request that carried a valid token (any request,
/// without an auth file) as used ([`crate::db::ClientAnswers::mark_used`]): requests that
/// need no token (health checks, reflection) do not count when there are tokens, or a
/// connection could keep its place on a full listener with them.
#[derive(Clone)]
pub struct AuthLayer {
    file: Option<Arc<AuthFile>>,
}

impl AuthLayer {
    pub fn new(file: Option<Arc<AuthFile>>) -> Self {
        AuthLayer { file }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            file: self.file.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    file: Option<Arc<AuthFile>>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for AuthService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future =
        futures::future::Either<S::Future, std::future::Ready<Result<Self::Response, Self::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let Some(file) = &self.file else {
            mark_used(&request);
            return futures::future::Either::Left(self.inner.call(request));
        };
        let tokens = file.tokens();
        let header = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        match authorize(&tokens, request.uri().path(), header) {
            Ok(principal) => {
                if let Some(principal) = principal {
                    mark_used(&request);
                    request.extensions_mut().insert(principal);
                }
                futures::future::Either::Left(self.inner.call(request))
            }
            Err(status) => {
                futures::future::Either::Right(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// Marks the client connection `request` came on as used.
fn mark_used<B>(request: &http::Request<B>) {
    let info = request.extensions().get::<crate::tls::ConnInfo>();
    if let Some(answers) = info.and_then(|info| info.answers.as_ref()) {
        answers.mark_used();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn tokens() -> Tokens {
        let text = format!(
            "tokens:\n  - name: r\n    sha256: {}\n    role: read\n  - name: w\n    sha256: {}\n    role: write\n  - name: a\n    sha256: {}\n    role: admin\n",
            hex(&sha256("read-token")),
            hex(&sha256("write-token")),
            hex(&sha256("admin-token")),
        );
        Tokens::parse(&text).expect("valid auth file")
    }

    #[test]
    fn role_matrix() {
        let t = tokens();
        let call = |path: &str, token: Option<&str>| {
            let header = token.map(|t| format!("Bearer {t}"));
            authorize(&t, path, header.as_deref().map(str::as_bytes))
                .map(|p| p.map(|p| p.name))
                .map_err(|s| s.code())
        };
        let ok = |name: &str| Ok(Some(name.to_string()));
        use tonic::Code::{PermissionDenied, Unauthenticated};
        let query = "/raftlite.v1.Sql/Query";
        let execute = "/raftlite.v1.Sql/Execute";
        let add_voter = "/raftlite.v1.Admin/AddVoter";
        let health = "/grpc.health.v1.Health/Check";
        assert_eq!(call(health, None), Ok(None));
        assert_eq!(call(query, None), Err(Unauthenticated));
        assert_eq!(call(query, Some("nope")), Err(Unauthenticated));
        assert_eq!(call(query, Some("read-token")), ok("r"));
        assert_eq!(call(execute, Some("read-token")), Err(PermissionDenied));
        assert_eq!(call(execute, Some("write-token")), ok("w"));
        for tx in ["ExecuteStream", "Begin", "Commit", "Rollback"] {
            let path = format!("/raftlite.v1.Sql/{tx}");
            assert_eq!(
                call(&path, Some("read-token")),
                Err(PermissionDenied),
                "{tx}"
            );
            assert_eq!(call(&path, Some("write-token")), ok("w"), "{tx}");
        }
        assert_eq!(call(add_voter, Some("write-token")), Err(PermissionDenied));
        assert_eq!(call(add_voter, Some("admin-token")), ok("a"));
        assert_eq!(
            call("/raftlite.v1.Admin/Unknown", Some("write-token")),
            Err(PermissionDenied)
        );
        let denied = authorize(&t, add_voter, Some(b"Bearer write-token")).expect_err("denied");
        assert!(
            denied.message().contains("admin role"),
            "{}",
            denied.message()
        );
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let short = Tokens::parse("tokens:\n  - name: x\n    sha256: abc\n    role: read\n")
            .expect_err("short hash");
        assert!(format!("{short:#}").contains("64 hex digits"), "{short:#}");
        assert!(Tokens::parse(&format!(
            "tokens:\n  - name: x\n    sha256: {}\n    role: root\n",
            "0".repeat(64)
        ))
        .is_err());
    }
}
