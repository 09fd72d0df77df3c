//! The one error type of the client, shaped for callers that branch on it.

use tonic::Code;

/// Metadata keys the server sets on UNAVAILABLE when it knows the current leader.
pub(crate) const LEADER_ID_KEY: &str = "raftlite-leader-id";
pub(crate) const LEADER_ADDR_KEY: &str = "raftlite-leader-addr";

/// What a node's DEADLINE_EXCEEDED says when it interrupted the request's statement at its
/// deadline (the server builds its message with this constant). The client does not send
/// such a request again.
pub const STATEMENT_INTERRUPTED: &str = "SQLite interrupted it";

/// How much longer than the deadline it sends a node the client waits for the node's answer:
/// a node that ran out of time answers with why, and that answer, not a local timeout, is
/// what the caller should hear.
pub const ANSWER_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server (or a local deadline) answered with a gRPC status.
    #[error("{}: {message}", code_name(*.code))]
    Status {
        code: Code,
        message: String,
        /// `(node id, address)` of the leader when the server told us who it is.
        leader_hint: Option<(u64, String)>,
    },
    /// The request did not reach a server or its connection broke (refused, reset, GOAWAY).
    #[error("transport error: {0}")]
    Transport(String),
    /// An endpoint that is not `host:port`, `http(s)://host:port` or a valid `raftlite://`
    /// URL, or credentials that cannot be used (an unreadable CA file, a token that is not
    /// header-safe).
    #[error("invalid endpoint: {0}")]
    InvalidEndpoint(String),
    /// A value that does not convert to the requested type, or a malformed server message.
    #[error("conversion error: {0}")]
    Conversion(String),
}

impl Error {
    /// True for failures after which sending the same request again may succeed: UNAVAILABLE
    /// (no leader, no quorum, node going down), DEADLINE_EXCEEDED and transport errors. Writes
    /// are only safe to retry with the same request id, which [`crate::Client::execute`] does.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Status { code, .. } => {
                matches!(code, Code::Unavailable | Code::DeadlineExceeded)
            }
            Error::Transport(_) => true,
            Error::InvalidEndpoint(_) | Error::Conversion(_) => false,
        }
    }

    /// True when an interactive transaction ended before its commit (idle timeout, leader
    /// change, a statement that rolled it back): nothing of it was applied; run the whole
    /// transaction again.
    pub fn is_aborted(&self) -> bool {
        self.code() == Code::Aborted
    }

    /// The leader the server pointed to, if any.
    pub fn leader_hint(&self) -> Option<(u64, &str)> {
        match self {
            Error::Status {
                leader_hint: Some((id, addr)),
                ..
            } => Some((*id, addr.as_str())),
            _ => None,
        }
    }

    /// The gRPC code of this error; local errors map to the closest code (transport errors to
    /// UNAVAILABLE, bad endpoints and conversions to INVALID_ARGUMENT).
    pub fn code(&self) -> Code {
        match self {
            Error::Status { code, .. } => *code,
            Error::Transport(_) => Code::Unavailable,
            Error::InvalidEndpoint(_) | Error::Conversion(_) => Code::InvalidArgument,
        }
    }

    /// A local deadline that expired before the server answered.
    pub(crate) fn timeout(after: std::time::Duration) -> Self {
        Error::Status {
            code: Code::DeadlineExceeded,
            message: format!("no answer within {after:?}"),
            leader_hint: None,
        }
    }

    /// This error, the last of a call's retries, with how they went: `attempts` in `elapsed`,
    /// and what each other node last answered (`(address, error)`). The last error alone
    /// depends on which node happened to be tried last: a dead one, say, when another node
    /// knew what was wrong.
    pub(crate) fn after_retries(
        self,
        attempts: u32,
        elapsed: std::time::Duration,
        others: &[(String, String)],
    ) -> Self {
        let mut note = format!("; gave up after {attempts} attempts in {elapsed:.1?}");
        if !others.is_empty() {
            let answers: Vec<String> = others.iter().map(|(a, e)| format!("{a}: {e}")).collect();
            note.push_str(&format!(
                "; the other nodes last answered: {}",
                answers.join("; ")
            ));
        }
        match self {
            Error::Status {
                code,
                message,
                leader_hint,
            } => Error::Status {
                code,
                message: message + &note,
                leader_hint,
            },
            Error::Transport(message) => Error::Transport(message + &note),
            other => other,
        }
    }

    /// True when a node stopped the request's statement at the deadline the attempt gave it
    /// (DEADLINE_EXCEEDED saying [`STATEMENT_INTERRUPTED`]): nothing was recorded, and another
    /// attempt would run the statement for as long again, holding every other write back.
    pub(crate) fn is_statement_interrupted(&self) -> bool {
        matches!(
            self,
            Error::Status { code: Code::DeadlineExceeded, message, .. }
                if message.contains(STATEMENT_INTERRUPTED)
        )
    }
}

/// How tonic begins the message of a status it made from an HTTP/2 error.
const H2_ERROR: &str = "h2 protocol error: ";

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        // A status built by the local tonic stack carries the error that caused it (connect
        // refused, connection reset, h2 GOAWAY); one decoded from the server never does.
        if let Some(source) = std::error::Error::source(&status) {
            let mut message = status.message().to_string();
            let mut cause = Some(source);
            while let Some(err) = cause {
                let text = err.to_string();
                // tonic's wrapper says only "transport error", which the variant already does.
                if text != "transport error" && !message.contains(&text) {
                    message = format!("{message}: {text}");
                }
                cause = err.source();
            }
            // No retry fixes a connection the node and this client disagree on TLS about.
            if let Some(at) = message.find(crate::transport::TLS_MISMATCH) {
                let why = &message[at + crate::transport::TLS_MISMATCH.len()..];
                return Error::InvalidEndpoint(why.to_string());
            }
            return Error::Transport(message);
        }
        // The connection ended under a call (an HTTP/2 GOAWAY or reset, say from a node
        // shutting down gracefully) and the status lost its cause on the way (a stream's
        // trailers): tonic names it so. Nothing came from the node: a transport error.
        if status.code() == Code::Internal && status.message().starts_with(H2_ERROR) {
            return Error::Transport(status.message().to_string());
        }
        let leader_hint = leader_hint(status.metadata());
        Error::Status {
            code: status.code(),
            message: status.message().to_string(),
            leader_hint,
        }
    }
}

fn leader_hint(metadata: &tonic::metadata::MetadataMap) -> Option<(u64, String)> {
    let id = metadata
        .get(LEADER_ID_KEY)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    if id == 0 {
        return None;
    }
    let addr = metadata
        .get(LEADER_ADDR_KEY)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    Some((id, addr))
}

/// The gRPC name of a code as operators know it (`UNAVAILABLE`, `INVALID_ARGUMENT`, ...).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_after_retries_says_what_every_node_last_answered() {
        let dead = Error::Transport("connecting to http://a:7000/: Connection refused".into());
        let others = [(
            "http://b:7000".to_string(),
            "UNAVAILABLE: no leader (an election is under way)".to_string(),
        )];
        let err = dead.after_retries(7, std::time::Duration::from_millis(2500), &others);
        assert!(err.is_retryable(), "still the last error: {err:?}");
        assert_eq!(
            err.to_string(),
            "transport error: connecting to http://a:7000/: Connection refused; gave up after 7 \
             attempts in 2.5s; the other nodes last answered: http://b:7000: UNAVAILABLE: no \
             leader (an election is under way)"
        );
        let alone = Error::Status {
            code: Code::Unavailable,
            message: "no quorum".into(),
            leader_hint: Some((2, "b:7000".into())),
        }
        .after_retries(3, std::time::Duration::from_millis(400), &[]);
        assert_eq!(alone.code(), Code::Unavailable);
        assert_eq!(alone.leader_hint(), Some((2, "b:7000")));
        assert_eq!(
            alone.to_string(),
            "UNAVAILABLE: no quorum; gave up after 3 attempts in 400.0ms"
        );
    }

    fn status_with_leader(code: Code, id: &str, addr: &str) -> tonic::Status {
        let mut status = tonic::Status::new(code, "no leader");
        status
            .metadata_mut()
            .insert(LEADER_ID_KEY, id.parse().expect("ascii"));
        status
            .metadata_mut()
            .insert(LEADER_ADDR_KEY, addr.parse().expect("ascii"));
        status
    }

    #[test]
    fn classifies_retryable_codes() {
        for (code, retryable) in [
            (Code::Unavailable, true),
            (Code::DeadlineExceeded, true),
            (Code::InvalidArgument, false),
            (Code::PermissionDenied, false),
            (Code::FailedPrecondition, false),
            (Code::ResourceExhausted, false),
            (Code::Internal, false),
        ] {
            let err = Error::from(tonic::Status::new(code, "x"));
            assert_eq!(err.is_retryable(), retryable, "{code:?}");
            assert_eq!(err.code(), code);
        }
        assert!(Error::Transport("connection refused".into()).is_retryable());
        // A call on a stream whose connection a node shutting down closed (seen in the soak).
        let goaway = Error::from(tonic::Status::internal(
            "h2 protocol error: connection error received: not a result of an error",
        ));
        assert!(goaway.is_retryable(), "{goaway}");
        assert!(matches!(goaway, Error::Transport(_)));
        assert!(!Error::Conversion("x".into()).is_retryable());
        assert!(!Error::InvalidEndpoint("x".into()).is_retryable());
        assert!(Error::timeout(std::time::Duration::from_millis(5)).is_retryable());
    }

    #[test]
    fn only_an_interrupted_statement_is_told_apart_from_other_deadlines() {
        let interrupted = Error::from(tonic::Status::deadline_exceeded(format!(
            "the request's deadline passed while its statement ran; {STATEMENT_INTERRUPTED}"
        )));
        assert!(interrupted.is_statement_interrupted());
        for other in [
            Error::timeout(std::time::Duration::from_secs(1)),
            Error::from(tonic::Status::deadline_exceeded(
                "the request did not complete within 1000 ms; a write may still commit",
            )),
            Error::from(tonic::Status::unavailable(STATEMENT_INTERRUPTED)),
        ] {
            assert!(!other.is_statement_interrupted(), "{other}");
        }
    }

    #[test]
    fn reads_leader_hint_from_metadata() {
        let err = Error::from(status_with_leader(Code::Unavailable, "2", "10.0.0.2:7401"));
        assert_eq!(err.leader_hint(), Some((2, "10.0.0.2:7401")));
        // Leader id 0 means "none known".
        let err = Error::from(status_with_leader(Code::Unavailable, "0", ""));
        assert_eq!(err.leader_hint(), None);
        let err = Error::from(tonic::Status::unavailable("no quorum"));
        assert_eq!(err.leader_hint(), None);
    }

    #[test]
    fn status_with_a_local_cause_is_a_transport_error() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let status = tonic::Status::from_error(Box::new(io));
        let err = Error::from(status);
        assert!(
            matches!(err, Error::Transport(ref m) if m.contains("connection refused")),
            "{err:?}"
        );
        assert!(err.is_retryable());
    }

    #[test]
    fn display_uses_grpc_code_names() {
        let err = Error::from(tonic::Status::invalid_argument(
            "near \"SELEC\": syntax error",
        ));
        assert_eq!(
            err.to_string(),
            "INVALID_ARGUMENT: near \"SELEC\": syntax error"
        );
    }
}
