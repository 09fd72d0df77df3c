//! raftlite's own tables inside the user's database.
//!
//! They live in the replicated database itself — not in a side store — so that what they
//! record travels in the same page delta as the data it describes:
//!
//! * `_raftlite_meta(key, value)`, key `version`: a counter the executor bumps in every
//!   captured transaction. A delta records the value it was captured on (`base_version`), and
//!   an applier applies it only to a database at exactly that version. That makes replaying a
//!   log suffix after a crash a no-op for deltas already applied, and refuses deltas captured
//!   on an older state. Key `tag`: the tag of the last delta applied (see `delta.rs`), which a
//!   delta captured on top of another one in flight must find.
//! * `_raftlite_requests(id, results, created_ms)`: request ids with their encoded results, so
//!   a client retry (e.g. after a leader failover) is answered from the table instead of being
//!   applied twice.
//!
//! Clients cannot write these tables (nor create TEMP objects with their names): the
//! executor's authorizer refuses it. Every statement here names the `main` schema anyway, so
//! a shadowing TEMP table could never capture raftlite's bookkeeping.

use super::error::{DbError, Result};
use super::value::{ColumnInfo, SqlValue, StatementOutcome};
use rusqlite::{Connection, OptionalExtension};

/// An internal statement's text: the literal behind [`INTERNAL_SQL_MARKER`].
macro_rules! internal_sql {
    ($sql:literal) => {
        concat!("/*raftlite-internal*/ ", $sql)
    };
}

/// How every statement raftlite itself prepares on a connection that also runs client SQL
/// begins. Internal statements go into the connection's statement cache (parsing them afresh
/// cost about a quarter of a small batch's execution), and that cache is shared with client
/// statements, keyed by the trimmed text. The authorizer that keeps clients off internal
/// tables runs when a statement is prepared, not when a cached one is reused: so the client
/// path never takes a statement whose trimmed text starts with this marker from the cache
/// (see [`is_internal_sql`]), and a client cannot be handed a statement prepared for
/// raftlite.
pub(crate) const INTERNAL_SQL_MARKER: &str = internal_sql!("");

pub(crate) use internal_sql;

/// Whether client SQL could name a cached internal statement (its trimmed text, the cache's
/// key, starts with [`INTERNAL_SQL_MARKER`]): such SQL is prepared afresh, never from the cache.
pub(crate) fn is_internal_sql(sql: &str) -> bool {
    sql.trim().starts_with(INTERNAL_SQL_MARKER.trim_end())
}

/// Prefix of every internal table; clients may not create or write such tables.
pub(crate) const INTERNAL_PREFIX: &str = "_raftlite_";

const CREATE_META: &str =
    internal_sql!("CREATE TABLE IF NOT EXISTS main._raftlite_meta(key TEXT PRIMARY KEY, value)");
const CREATE_REQUESTS: &str = internal_sql!(
    "CREATE TABLE IF NOT EXISTS main._raftlite_requests(
        id TEXT PRIMARY KEY,
        results BLOB NOT NULL,
        created_ms INTEGER NOT NULL
    )"
);

/// True if `name` is (or would be) an internal table.
pub(crate) fn is_internal_table(name: &str) -> bool {
    name.len() >= INTERNAL_PREFIX.len()
        && name.as_bytes()[..INTERNAL_PREFIX.len()].eq_ignore_ascii_case(INTERNAL_PREFIX.as_bytes())
}

/// Create the internal tables if missing (a no-op that changes no page when they exist).
pub(crate) fn ensure_tables(conn: &Connection) -> Result<()> {
    conn.prepare_cached(CREATE_META)?.execute([])?;
    conn.prepare_cached(CREATE_REQUESTS)?.execute([])?;
    Ok(())
}

/// The database's version counter; 0 when the meta table does not exist yet.
pub(crate) fn read_version(conn: &Connection) -> Result<u64> {
    let v = read_meta(conn, "version")?;
    u64::try_from(v.unwrap_or(0))
        .map_err(|_| DbError::Corrupt(format!("negative database version {v:?}")))
}

/// Set the version counter and the tag in one statement (the meta table must exist): once
/// per batch on the leader.
pub(crate) fn write_version_and_tag(conn: &Connection, version: u64, tag: u64) -> Result<()> {
    let v = i64::try_from(version)
        .map_err(|_| DbError::Internal(format!("version {version} overflows")))?;
    // The tag is stored as the i64 with the same bits.
    conn.prepare_cached(internal_sql!(
        "INSERT INTO main._raftlite_meta(key, value) VALUES('version', ?1), ('tag', ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value"
    ))?
    .execute(rusqlite::params![v, tag as i64])?;
    Ok(())
}

/// The tag of the last delta applied (see `delta.rs`); 0 when none was stored (a database
/// written before tags).
pub(crate) fn read_tag(conn: &Connection) -> Result<u64> {
    // Stored as the i64 with the same bits.
    Ok(read_meta(conn, "tag")?.map_or(0, |t| t as u64))
}

/// One value of the meta table; none before the table exists. One cached statement: before
/// the first write the table is missing, the statement does not compile and the answer is
/// none (an `EXISTS` query on the schema before each read cost a statement per batch on
/// every node).
fn read_meta(conn: &Connection, key: &str) -> Result<Option<i64>> {
    let read = conn
        .prepare_cached(internal_sql!(
            "SELECT value FROM main._raftlite_meta WHERE key = ?1"
        ))
        .and_then(|mut stmt| stmt.query_row([key], |r| r.get(0)).optional());
    match read {
        Ok(value) => Ok(value),
        Err(e) if no_such_table(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// SQLite's refusal of a statement that names a table the database does not have.
fn no_such_table(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(msg))
        | rusqlite::Error::SqlInputError { msg, .. } => msg.starts_with("no such table"),
        _ => false,
    }
}

/// Stored results of an earlier request with this id, if any; none while the table does not
/// exist yet (as [`read_meta`] reads a missing table).
pub(crate) fn lookup_request(conn: &Connection, id: &str) -> Result<Option<Vec<StatementOutcome>>> {
    let read = conn
        .prepare_cached(internal_sql!(
            "SELECT results FROM main._raftlite_requests WHERE id = ?1"
        ))
        .and_then(|mut stmt| stmt.query_row([id], |r| r.get::<_, Vec<u8>>(0)).optional());
    match read {
        Ok(blob) => blob.map(|b| decode_outcomes(&b)).transpose(),
        Err(e) if no_such_table(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether a request id is recorded; false while the table does not exist yet.
pub(crate) fn request_recorded(conn: &Connection, id: &str) -> Result<bool> {
    Ok(lookup_request(conn, id)?.is_some())
}

/// Record a request id with its results.
pub(crate) fn record_request(
    conn: &Connection,
    id: &str,
    outcomes: &[StatementOutcome],
    now_ms: i64,
) -> Result<()> {
    conn.prepare_cached(internal_sql!(
        "INSERT INTO main._raftlite_requests(id, results, created_ms) VALUES(?1, ?2, ?3)"
    ))?
    .execute(rusqlite::params![id, encode_outcomes(outcomes), now_ms])?;
    Ok(())
}

/// Forget request ids recorded before `cutoff_ms`. Looks only at the oldest `limit` rows (in
/// insertion order), so one call costs a bounded amount of work inside a write batch.
pub(crate) fn prune_requests(conn: &Connection, cutoff_ms: i64, limit: u32) -> Result<usize> {
    Ok(conn
        .prepare_cached(internal_sql!(
            "DELETE FROM main._raftlite_requests
             WHERE rowid IN (SELECT rowid FROM main._raftlite_requests ORDER BY rowid LIMIT ?2)
               AND created_ms < ?1"
        ))?
        .execute(rusqlite::params![cutoff_ms, limit])?)
}

/// Results are stored in a small binary format of our own, little-endian, independent of any
/// serialization crate: `RLR2`, the outcome count (u32), then per outcome rows_affected (u64),
/// last_insert_rowid (i64), the column count (u32) with each column's name and declared type,
/// and the row count (u32) with each row's values (a tag byte, then i64 / f64 bits /
/// length-prefixed bytes). Rows recorded before RETURNING was kept have no magic: a count and
/// two numbers per outcome.
const RESULTS_MAGIC: &[u8; 4] = b"RLR2";

fn encode_outcomes(outcomes: &[StatementOutcome]) -> Vec<u8> {
    fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    }
    let mut out = Vec::with_capacity(8 + outcomes.len() * 24);
    out.extend_from_slice(RESULTS_MAGIC);
    out.extend_from_slice(&(outcomes.len() as u32).to_le_bytes());
    for o in outcomes {
        out.extend_from_slice(&o.rows_affected.to_le_bytes());
        out.extend_from_slice(&o.last_insert_rowid.to_le_bytes());
        out.extend_from_slice(&(o.columns.len() as u32).to_le_bytes());
        for c in &o.columns {
            bytes(&mut out, c.name.as_bytes());
            match &c.decl_type {
                None => out.push(0),
                Some(t) => {
                    out.push(1);
                    bytes(&mut out, t.as_bytes());
                }
            }
        }
        out.extend_from_slice(&(o.rows.len() as u32).to_le_bytes());
        for row in &o.rows {
            for v in row {
                match v {
                    SqlValue::Null => out.push(0),
                    SqlValue::Integer(i) => {
                        out.push(1);
                        out.extend_from_slice(&i.to_le_bytes());
                    }
                    SqlValue::Real(f) => {
                        out.push(2);
                        out.extend_from_slice(&f.to_bits().to_le_bytes());
                    }
                    SqlValue::Text(t) => {
                        out.push(3);
                        bytes(&mut out, t.as_bytes());
                    }
                    SqlValue::Blob(b) => {
                        out.push(4);
                        bytes(&mut out, b);
                    }
                }
            }
        }
    }
    out
}

/// Reads the stored format back; anything malformed is [`DbError::Corrupt`], never a panic.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(DbError::Corrupt("malformed stored request results".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<usize> {
        Ok(u32::from_le_bytes(self.array()?) as usize)
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()?;
        self.take(n)
    }
    fn text(&mut self) -> Result<String> {
        Ok(String::from_utf8_lossy(self.bytes()?).into_owned())
    }
    /// A count of items that each take at least `min_bytes`: a count the rest cannot hold is
    /// malformed (and must not size an allocation).
    fn count(&mut self, min_bytes: usize) -> Result<usize> {
        let n = self.u32()?;
        if n.saturating_mul(min_bytes) > self.0.len() {
            return Err(DbError::Corrupt("malformed stored request results".into()));
        }
        Ok(n)
    }
}

fn decode_outcomes(stored: &[u8]) -> Result<Vec<StatementOutcome>> {
    let mut c = Cursor(stored);
    let v2 = stored.starts_with(RESULTS_MAGIC);
    if v2 {
        c.take(RESULTS_MAGIC.len())?;
    }
    let count = c.count(16)?;
    let mut outcomes = Vec::with_capacity(count);
    for _ in 0..count {
        let mut o = StatementOutcome {
            rows_affected: c.u64()?,
            last_insert_rowid: c.u64()? as i64,
            ..StatementOutcome::default()
        };
        if v2 {
            for _ in 0..c.count(5)? {
                let name = c.text()?;
                let decl_type = match c.u8()? {
                    0 => None,
                    _ => Some(c.text()?),
                };
                o.columns.push(ColumnInfo { name, decl_type });
            }
            let width = o.columns.len();
            for _ in 0..c.count(width.max(1))? {
                let mut row = Vec::with_capacity(width);
                for _ in 0..width {
                    row.push(match c.u8()? {
                        0 => SqlValue::Null,
                        1 => SqlValue::Integer(c.u64()? as i64),
                        2 => SqlValue::Real(f64::from_bits(c.u64()?)),
                        3 => SqlValue::Text(c.text()?),
                        4 => SqlValue::Blob(c.bytes()?.to_vec()),
                        tag => {
                            return Err(DbError::Corrupt(format!(
                                "stored request results: unknown value tag {tag}"
                            )))
                        }
                    });
                }
                o.rows.push(row);
            }
        }
        outcomes.push(o);
    }
    if !c.0.is_empty() {
        return Err(DbError::Corrupt("malformed stored request results".into()));
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_and_reject_garbage() -> Result<()> {
        let o = vec![
            StatementOutcome {
                rows_affected: 3,
                last_insert_rowid: -1,
                ..Default::default()
            },
            StatementOutcome {
                rows_affected: 2,
                last_insert_rowid: i64::MAX,
                columns: vec![
                    ColumnInfo {
                        name: "id".into(),
                        decl_type: Some("INTEGER".into()),
                    },
                    ColumnInfo {
                        name: "v + 1".into(),
                        decl_type: None,
                    },
                ],
                rows: vec![
                    vec![SqlValue::Integer(-7), SqlValue::Real(1.5)],
                    vec![SqlValue::Text("é".into()), SqlValue::Blob(vec![0, 255])],
                    vec![SqlValue::Null, SqlValue::Null],
                ],
            },
        ];
        let encoded = encode_outcomes(&o);
        assert_eq!(decode_outcomes(&encoded)?, o);
        assert_eq!(decode_outcomes(&encode_outcomes(&[]))?, vec![]);
        // Every cut-off prefix is an error, never a panic or a huge allocation.
        for len in 0..encoded.len() {
            assert!(decode_outcomes(&encoded[..len]).is_err(), "prefix {len}");
        }
        assert!(decode_outcomes(&[1, 0, 0, 0, 1]).is_err());
        assert!(decode_outcomes(&[0xff; 4]).is_err());
        assert!(decode_outcomes(b"RLR2\xff\xff\xff\x7f").is_err());
        // The format before RETURNING: a count, then two numbers per outcome.
        let mut old = 1u32.to_le_bytes().to_vec();
        old.extend_from_slice(&5u64.to_le_bytes());
        old.extend_from_slice(&9i64.to_le_bytes());
        assert_eq!(
            decode_outcomes(&old)?,
            vec![StatementOutcome {
                rows_affected: 5,
                last_insert_rowid: 9,
                ..Default::default()
            }]
        );
        Ok(())
    }

    #[test]
    fn version_defaults_to_zero_and_updates() -> Result<()> {
        let conn = Connection::open_in_memory()?;
        assert_eq!(read_version(&conn)?, 0);
        ensure_tables(&conn)?;
        assert_eq!(read_version(&conn)?, 0);
        assert_eq!(read_tag(&conn)?, 0);
        write_version_and_tag(&conn, 41, 7)?;
        write_version_and_tag(&conn, 42, u64::MAX - 1)?;
        assert_eq!(read_version(&conn)?, 42);
        assert_eq!(read_tag(&conn)?, u64::MAX - 1);
        conn.execute_batch("DROP TABLE _raftlite_meta")?;
        assert_eq!(
            read_version(&conn)?,
            0,
            "a cached read of a table that went away"
        );
        assert!(is_internal_table("_RaftLite_meta"));
        assert!(!is_internal_table("raftlite_meta"));
        Ok(())
    }
}
