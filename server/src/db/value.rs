//! SQL values, statements and write requests as the SQLite layer sees them.
//!
//! These are plain domain types: the gRPC layer converts its prost messages into them at the
//! edge (validating as it goes), and the Raft layer stores [`StatementOutcome`]s. Binding is
//! strict — a wrong parameter count or an unknown name is the client's mistake and is reported
//! as [`DbError::InvalidArgument`] instead of silently binding NULL.

use super::error::{DbError, Result};
use rusqlite::types::{ToSqlOutput, ValueRef};
use serde::{Deserialize, Serialize};

/// One SQLite value (the five storage classes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SqlValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl rusqlite::ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            SqlValue::Null => ValueRef::Null,
            SqlValue::Integer(i) => ValueRef::Integer(*i),
            SqlValue::Real(f) => ValueRef::Real(*f),
            SqlValue::Text(s) => ValueRef::Text(s.as_bytes()),
            SqlValue::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl SqlValue {
    /// The value SQLite returned in column `column` (0-based). TEXT is UTF-8 unless a client
    /// stored other bytes through a cast (`CAST(x'ff' AS TEXT)`): such a value cannot travel
    /// as text, and replacing its bytes would hand the client different data than it stored
    /// (data it might write back), so it is an error naming the column and the way to read
    /// its bytes, as Python's `sqlite3` refuses to decode it.
    pub fn read(v: ValueRef<'_>, column: usize) -> super::error::Result<SqlValue> {
        Ok(match v {
            ValueRef::Null => SqlValue::Null,
            ValueRef::Integer(i) => SqlValue::Integer(i),
            ValueRef::Real(f) => SqlValue::Real(f),
            ValueRef::Text(t) => match std::str::from_utf8(t) {
                Ok(text) => SqlValue::Text(text.to_owned()),
                Err(e) => {
                    return Err(super::error::DbError::InvalidArgument(format!(
                        "column {} holds TEXT that is not valid UTF-8 ({e}); select it as \
                         CAST(... AS BLOB) to read its bytes",
                        column + 1
                    )))
                }
            },
            ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
        })
    }
}

/// Parameters of one statement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Params {
    /// `?`, `?NNN` (and named parameters, by position).
    Positional(Vec<SqlValue>),
    /// `:name`, `@name`, `$name`; keys include the prefix, e.g. `":id"`.
    Named(Vec<(String, SqlValue)>),
}

impl Default for Params {
    fn default() -> Self {
        Params::Positional(Vec::new())
    }
}

/// One SQL statement with its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    pub sql: String,
    pub params: Params,
}

impl Statement {
    /// A statement without parameters.
    pub fn new(sql: impl Into<String>) -> Self {
        Statement {
            sql: sql.into(),
            params: Params::default(),
        }
    }

    /// A statement with positional parameters.
    pub fn with_params(sql: impl Into<String>, params: Vec<SqlValue>) -> Self {
        Statement {
            sql: sql.into(),
            params: Params::Positional(params),
        }
    }
}

/// A client write: its statements run atomically, in order. `request_id` deduplicates
/// retries; an empty id disables deduplication.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WriteRequest {
    pub request_id: String,
    pub statements: Vec<Statement>,
    /// When the client stops waiting: a statement still running then is interrupted and the
    /// request fails with [`DbError::Timeout`] (alone; the rest of its batch goes on). Local to
    /// this node, never serialized: a forwarded request carries its deadline in its RPC.
    #[serde(skip)]
    pub deadline: Option<std::time::Instant>,
    /// The most bytes of rows its answer may hold, when less than [`MAX_RESULT_BYTES`]: the
    /// room a follower that forwards it has for unread answers (`answers.rs`). Local to the
    /// nodes, never serialized: a forwarded request carries it in its RPC's metadata.
    #[serde(skip)]
    pub max_result_bytes: Option<usize>,
}

impl SqlValue {
    /// Roughly the bytes this value takes in memory and on the wire (for result limits).
    pub fn size(&self) -> usize {
        match self {
            SqlValue::Text(s) => s.len() + 8,
            SqlValue::Blob(b) => b.len() + 8,
            _ => 8,
        }
    }
}

/// Name and declared type of a result column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnInfo {
    pub name: String,
    /// Declared type (`INTEGER`, `TEXT`, ...); `None` for expressions.
    pub decl_type: Option<String>,
}

impl ColumnInfo {
    /// The result columns of a prepared statement.
    pub(crate) fn of(stmt: &rusqlite::Statement<'_>) -> Vec<ColumnInfo> {
        stmt.columns()
            .map(|c| ColumnInfo {
                name: c.name().to_string(),
                decl_type: c.decl_type().map(str::to_string),
            })
            .collect()
    }
}

/// Result of one executed write statement.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatementOutcome {
    pub rows_affected: u64,
    /// What `sqlite3_last_insert_rowid()` answers after this statement on a connection that
    /// ran only this request (or interactive transaction): 0 before its first insert.
    pub last_insert_rowid: i64,
    /// For a statement that returns rows (`... RETURNING`, a `SELECT`): its columns and every
    /// row, bounded by [`MAX_RESULT_BYTES`] per request. Empty otherwise.
    pub columns: Vec<ColumnInfo>,
    pub rows: Vec<Vec<SqlValue>>,
}

/// Most bytes of returned rows one write request (or one call of a transaction) may produce:
/// they travel in one response message and, for a request with an id, are kept for its
/// deduplicated retries. A request past it fails alone with RESOURCE_EXHAUSTED.
pub const MAX_RESULT_BYTES: usize = 4 << 20;

/// Bind `params` to a freshly prepared (or reset) statement.
pub(crate) fn bind(stmt: &mut rusqlite::Statement<'_>, params: &Params) -> Result<()> {
    let expected = stmt.parameter_count();
    match params {
        Params::Positional(values) => {
            if values.len() != expected {
                return Err(DbError::InvalidArgument(format!(
                    "wrong number of parameters: {} given, statement has {expected}",
                    values.len()
                )));
            }
            for (i, v) in values.iter().enumerate() {
                stmt.raw_bind_parameter(i + 1, v)?;
            }
        }
        Params::Named(pairs) => {
            if pairs.len() != expected {
                return Err(DbError::InvalidArgument(format!(
                    "wrong number of parameters: {} given, statement has {expected}",
                    pairs.len()
                )));
            }
            let mut bound = vec![false; expected];
            for (name, v) in pairs {
                let idx = stmt
                    .parameter_index(name)?
                    .ok_or_else(|| DbError::InvalidArgument(format!("unknown parameter {name}")))?;
                if std::mem::replace(&mut bound[idx - 1], true) {
                    return Err(DbError::InvalidArgument(format!(
                        "parameter {name} given twice"
                    )));
                }
                stmt.raw_bind_parameter(idx, v)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn run(conn: &Connection, sql: &str, params: Params) -> Result<Vec<SqlValue>> {
        let mut stmt = conn.prepare(sql)?;
        bind(&mut stmt, &params)?;
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(SqlValue::read(row.get_ref(0)?, 0)?);
        }
        Ok(out)
    }

    #[test]
    fn binds_positional_and_named() -> Result<()> {
        let conn = Connection::open_in_memory()?;
        let got = run(
            &conn,
            "SELECT ?1 || ?2",
            Params::Positional(vec![SqlValue::Text("a".into()), SqlValue::Integer(1)]),
        )?;
        assert_eq!(got, vec![SqlValue::Text("a1".into())]);
        let got = run(
            &conn,
            "SELECT :x + @y",
            Params::Named(vec![
                ("@y".into(), SqlValue::Integer(2)),
                (":x".into(), SqlValue::Integer(40)),
            ]),
        )?;
        assert_eq!(got, vec![SqlValue::Integer(42)]);
        let got = run(
            &conn,
            "SELECT ?",
            Params::Positional(vec![SqlValue::Blob(vec![1, 2])]),
        )?;
        assert_eq!(got, vec![SqlValue::Blob(vec![1, 2])]);
        Ok(())
    }

    #[test]
    fn rejects_bad_parameters() -> Result<()> {
        let conn = Connection::open_in_memory()?;
        let wrong_count = run(
            &conn,
            "SELECT ?1, ?2",
            Params::Positional(vec![SqlValue::Null]),
        );
        assert!(matches!(wrong_count, Err(DbError::InvalidArgument(m)) if m.contains("1 given")));
        let unknown = run(
            &conn,
            "SELECT :x",
            Params::Named(vec![(":y".into(), SqlValue::Null)]),
        );
        assert!(matches!(unknown, Err(DbError::InvalidArgument(m)) if m.contains(":y")));
        let twice = run(
            &conn,
            "SELECT :x, :z",
            Params::Named(vec![
                (":x".into(), SqlValue::Null),
                (":x".into(), SqlValue::Null),
            ]),
        );
        assert!(matches!(twice, Err(DbError::InvalidArgument(_))));
        Ok(())
    }
}
