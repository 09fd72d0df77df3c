//! SQLite built-in functions replaced on the connections that run client SQL, where the
//! built-in's running time is out of proportion to its input.
//!
//! A statement's deadline is checked between VM instructions (`bounds.rs`); one call of a
//! built-in function is one instruction, however long it runs. SQLite's `instr(X, Y)` compares
//! `Y` at every position of `X` (`O(len X × len Y)`): with both near the value limit (64 MiB)
//! one call runs for hours, and on the executor it holds every write of the cluster back that
//! long (a 1.8 MB × 0.9 MB call took 26 s past a 500 ms deadline). The replacement finds `Y`
//! with the two-way algorithm (`memchr::memmem`), linear in both lengths, with SQLite's
//! results: character positions for text, byte positions when both are blobs, 1 for an
//! empty `Y`, NULL if either is NULL, numbers compared as their text.
//!
//! Not replaced (each bounded otherwise, or left as a known limit): `LIKE` and `GLOB` patterns
//! are limited to [`LIKE_PATTERN_BYTES`] on client statements (`SQLITE_LIMIT_LIKE_PATTERN_LENGTH`,
//! SQLite's default 50,000), which bounds their `O(len X × len pattern)` matching; `replace`
//! and two-argument `trim` keep SQLite's `O(n × m)` loops (README, "Bounded work"): a
//! replacement must return text with the input's bytes, valid UTF-8 or not, which rusqlite's
//! function results cannot carry.

use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::ValueRef;
use rusqlite::Connection;

/// Longest `LIKE`/`GLOB` pattern a client statement may use.
pub(crate) const LIKE_PATTERN_BYTES: i32 = 1000;

/// Replaces the built-ins named in the module docs on `conn`.
pub(crate) fn install(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_scalar_function(
        "instr",
        2,
        FunctionFlags::SQLITE_UTF8
            | FunctionFlags::SQLITE_DETERMINISTIC
            | FunctionFlags::SQLITE_INNOCUOUS,
        instr,
    )
}

/// An argument as SQLite's `instr` reads it: its bytes, and whether they are a blob; `None`
/// for NULL.
type Arg<'a> = Option<(std::borrow::Cow<'a, [u8]>, bool)>;

fn arg<'a>(ctx: &'a Context<'_>, idx: usize) -> rusqlite::Result<Arg<'a>> {
    Ok(match ctx.get_raw(idx) {
        ValueRef::Null => None,
        ValueRef::Blob(b) => Some((b.into(), true)),
        ValueRef::Text(t) => Some((t.into(), false)),
        ValueRef::Integer(i) => Some((i.to_string().into_bytes().into(), false)),
        // A real's text is SQLite's own rendering: ask it (a few bytes, any cost is small).
        ValueRef::Real(r) => {
            // SAFETY: the connection is only used to run one read-only expression while this
            // function runs on it, as SQLite allows.
            let conn = unsafe { ctx.get_connection()? };
            let text: String = conn.query_row("SELECT CAST(?1 AS TEXT)", [r], |row| row.get(0))?;
            Some((text.into_bytes().into(), false))
        }
    })
}

fn instr(ctx: &Context<'_>) -> rusqlite::Result<Option<i64>> {
    let (Some((haystack, haystack_blob)), Some((needle, needle_blob))) =
        (arg(ctx, 0)?, arg(ctx, 1)?)
    else {
        return Ok(None);
    };
    Ok(Some(position(
        &haystack,
        &needle,
        !(haystack_blob && needle_blob),
    )))
}

/// Whether `byte` begins a UTF-8 character (is not a continuation byte).
fn starts_char(byte: u8) -> bool {
    byte & 0xc0 != 0x80
}

/// SQLite's `instr` on bytes: the 1-based position of `needle`'s first occurrence in
/// `haystack`, 0 if none, 1 if `needle` is empty. For text, positions count characters, and
/// only the first byte and those where a character starts are tried (as SQLite steps over
/// UTF-8 continuation bytes).
fn position(haystack: &[u8], needle: &[u8], text: bool) -> i64 {
    if needle.is_empty() {
        return 1;
    }
    let Some(at) = memchr::memmem::find_iter(haystack, needle)
        .find(|&i| !text || i == 0 || starts_char(haystack[i]))
    else {
        return 0;
    };
    let before = match text {
        true => haystack[..at].iter().filter(|b| starts_char(**b)).count(),
        false => at,
    };
    before as i64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The replacement answers as SQLite's built-in does, on text, blobs, numbers, NULLs,
    /// multi-byte characters and invalid UTF-8.
    #[test]
    fn instr_answers_as_the_built_in() -> rusqlite::Result<()> {
        let builtin = Connection::open_in_memory()?;
        let replaced = Connection::open_in_memory()?;
        install(&replaced)?;
        let cases = [
            "'hello', 'l'",
            "'hello', 'lo'",
            "'hello', 'x'",
            "'hello', ''",
            "'', ''",
            "'', 'a'",
            "NULL, 'a'",
            "'a', NULL",
            "'héllo wörld', 'ö'",
            "'日本語テキスト', 'テ'",
            "x'00ff00ff', x'ff00'",
            "x'c3a9c3a9', x'a9'",
            "'éé', CAST(x'a9' AS TEXT)",
            "CAST(x'a9a9c3a9' AS TEXT), CAST(x'a9' AS TEXT)",
            "'x' || x'a9c3', x'c3'",
            "12345, 34",
            "12345, '45'",
            "1.5, '.5'",
            "0.1, '0.1'",
            "1e100, 'e+'",
            "-0.0, '0'",
            "x'31323334', 23",
            "'aaaaaaaaab', 'aab'",
        ];
        for case in cases {
            let sql = format!("SELECT instr({case})");
            let want: Option<i64> = builtin.query_row(&sql, [], |r| r.get(0))?;
            let got: Option<i64> = replaced.query_row(&sql, [], |r| r.get(0))?;
            assert_eq!(got, want, "instr({case})");
        }
        Ok(())
    }
}
