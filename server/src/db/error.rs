//! The one error type of the SQLite layer.
//!
//! Callers branch on the *kind* of failure (the gRPC layer turns it into a status code, the
//! executor decides whether one request failed or the whole batch), so the variants are kinds,
//! not wrapped dependency errors. Every variant carries a human-readable message; for SQL errors
//! it is SQLite's own message, which is what a client needs to fix its statement.

use rusqlite::ffi;
use serde::{Deserialize, Serialize};

/// Result alias for the `db` module.
pub type Result<T, E = DbError> = std::result::Result<T, E>;

/// What went wrong in the SQLite layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum DbError {
    /// The client's SQL or parameters are wrong: syntax error, no such table, wrong parameter
    /// count, unknown named parameter. Carries SQLite's own message.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A constraint (UNIQUE, NOT NULL, CHECK, FOREIGN KEY, ...) rejected the write.
    #[error("constraint failed: {0}")]
    Constraint(String),
    /// The statement is refused by raftlite's lock-down (authorizer), e.g. "ATTACH is not allowed".
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A value, statement or result exceeds a size limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// A page delta or database image is malformed or does not fit this database.
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// Anything else: I/O errors, a stopped worker thread, unexpected SQLite states.
    #[error("internal error: {0}")]
    Internal(String),
    /// The request's deadline passed: its statement was interrupted inside SQLite (its
    /// changes rolled back), or it never started.
    #[error("deadline exceeded: {0}")]
    Timeout(String),
    /// The node refused the work at once because it is saturated (e.g. the read queue is
    /// full); retrying later, or on another node, may succeed.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The work was prepared on a state that changed under it (the write pipeline's deltas in
    /// flight after a leadership change): nothing ran, and a retry runs on the current state.
    #[error("stale: {0}")]
    Stale(String),
}

impl DbError {
    /// Classify a rusqlite error by SQLite's (extended) result code.
    pub fn from_sqlite(e: rusqlite::Error) -> DbError {
        use rusqlite::Error as E;
        match e {
            E::SqliteFailure(err, msg) => {
                let text = msg.unwrap_or_else(|| err.to_string());
                classify(&err, text)
            }
            E::SqlInputError { error, msg, .. } => classify(&error, msg),
            E::MultipleStatement => DbError::InvalidArgument(
                "a statement may contain only one SQL statement; send several statements instead"
                    .into(),
            ),
            E::InvalidParameterCount(given, expected) => DbError::InvalidArgument(format!(
                "wrong number of parameters: {given} given, statement has {expected}"
            )),
            E::InvalidParameterName(name) => {
                DbError::InvalidArgument(format!("unknown parameter {name}"))
            }
            E::ToSqlConversionFailure(err) => DbError::InvalidArgument(err.to_string()),
            other => DbError::Internal(other.to_string()),
        }
    }

    /// The message without the kind prefix (for status messages).
    pub fn message(&self) -> &str {
        match self {
            DbError::InvalidArgument(m)
            | DbError::Constraint(m)
            | DbError::PermissionDenied(m)
            | DbError::TooLarge(m)
            | DbError::Corrupt(m)
            | DbError::Internal(m)
            | DbError::Timeout(m)
            | DbError::Overloaded(m)
            | DbError::Stale(m) => m,
        }
    }

    /// True for errors that say something about the client's request rather than the node.
    /// A [`DbError::Timeout`] is one: the statement needed more time than its request allowed.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            DbError::InvalidArgument(_)
                | DbError::Constraint(_)
                | DbError::PermissionDenied(_)
                | DbError::TooLarge(_)
                | DbError::Timeout(_)
        )
    }
}

/// Map a SQLite result code (primary = low byte of the extended code) to an error kind.
fn classify(err: &ffi::Error, text: String) -> DbError {
    match err.extended_code & 0xff {
        ffi::SQLITE_AUTH => DbError::PermissionDenied(text),
        ffi::SQLITE_ERROR | ffi::SQLITE_RANGE | ffi::SQLITE_MISMATCH => {
            DbError::InvalidArgument(text)
        }
        ffi::SQLITE_CONSTRAINT => DbError::Constraint(text),
        ffi::SQLITE_TOOBIG => DbError::TooLarge(text),
        // SQLite's heap is at its limit (`bounds.rs`): client statements hold it, and free it
        // when they end. (A client statement's own failure is reported as too large first.)
        ffi::SQLITE_NOMEM => DbError::Overloaded(text),
        ffi::SQLITE_CORRUPT | ffi::SQLITE_NOTADB => DbError::Corrupt(text),
        // Plain SQLITE_READONLY is a refused write (query_only, DEFENSIVE); the extended
        // variants are file-system problems.
        ffi::SQLITE_READONLY if err.extended_code == ffi::SQLITE_READONLY => {
            DbError::PermissionDenied(text)
        }
        _ => DbError::Internal(text),
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::from_sqlite(e)
    }
}

impl From<std::io::Error> for DbError {
    fn from(e: std::io::Error) -> Self {
        DbError::Internal(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn err_of(conn: &Connection, sql: &str) -> DbError {
        match conn.execute_batch(sql) {
            Ok(()) => panic!("{sql} unexpectedly succeeded"),
            Err(e) => DbError::from_sqlite(e),
        }
    }

    #[test]
    fn classifies_by_result_code() -> Result<()> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE)")?;
        assert!(matches!(
            err_of(&conn, "SELEC 1"),
            DbError::InvalidArgument(m) if m.contains("syntax error")
        ));
        assert!(matches!(
            err_of(&conn, "SELECT * FROM nope"),
            DbError::InvalidArgument(m) if m.contains("no such table: nope")
        ));
        assert!(matches!(
            err_of(&conn, "INSERT INTO t(v) VALUES(NULL)"),
            DbError::Constraint(m) if m.contains("NOT NULL")
        ));
        conn.execute_batch("PRAGMA query_only=ON")?;
        assert!(matches!(
            err_of(&conn, "INSERT INTO t(v) VALUES('x')"),
            DbError::PermissionDenied(_)
        ));
        Ok(())
    }
}
