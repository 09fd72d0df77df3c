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
//!
//! `replace(X, Y, Z)` tries `Y` at every byte of `X` with a `memcmp` (`O(len X × len Y)`), and
//! two-argument `trim`, `ltrim` and `rtrim` try every character of `Y` at each character they
//! cut from `X` (`O(len X × len Y)` too): each is replaced, `replace` with the same two-way
//! search, the trims with `Y`'s characters sorted once and looked up by binary search
//! (`O((len X + len Y) × log len Y)`), answering exactly as SQLite's do. These two work on
//! SQLite's own values through its C API: they return the input's bytes as text, valid UTF-8
//! or not, and allocate from SQLite's heap, within its limit, as the built-ins do.
//!
//! Not replaced: `LIKE` and `GLOB` patterns are limited to [`LIKE_PATTERN_BYTES`] on client
//! statements (`SQLITE_LIMIT_LIKE_PATTERN_LENGTH`, SQLite's default 50,000), which bounds their
//! `O(len X × len pattern)` matching.

use rusqlite::ffi;
use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::ValueRef;
use rusqlite::Connection;
use std::ffi::{c_int, c_void, CStr};

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
    )?;
    install_raw(conn, c"replace", 3, replace, 0)?;
    install_raw(conn, c"trim", 2, trim, LEFT | RIGHT)?;
    install_raw(conn, c"ltrim", 2, trim, LEFT)?;
    install_raw(conn, c"rtrim", 2, trim, RIGHT)
}

/// A scalar function as SQLite's C API calls it.
type RawFunction =
    unsafe extern "C" fn(*mut ffi::sqlite3_context, c_int, *mut *mut ffi::sqlite3_value);

/// Register `function` of `args` arguments as `name` on `conn`, with `user_data` for
/// `sqlite3_user_data`.
fn install_raw(
    conn: &Connection,
    name: &CStr,
    args: c_int,
    function: RawFunction,
    user_data: usize,
) -> rusqlite::Result<()> {
    // SAFETY: the handle is the open connection's; `function` reads only its arguments and
    // `user_data`, which is a number, not a pointer SQLite would have to keep alive.
    let rc = unsafe {
        ffi::sqlite3_create_function_v2(
            conn.handle(),
            name.as_ptr(),
            args,
            ffi::SQLITE_UTF8 | ffi::SQLITE_DETERMINISTIC | ffi::SQLITE_INNOCUOUS,
            user_data as *mut c_void,
            Some(function),
            None,
            None,
            None,
        )
    };
    match rc {
        ffi::SQLITE_OK => Ok(()),
        rc => Err(rusqlite::Error::SqliteFailure(
            ffi::Error::new(rc),
            Some(format!("replace the built-in {name:?}")),
        )),
    }
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

/// `sqlite3_user_data` of the trims: which ends they cut.
const LEFT: usize = 1;
const RIGHT: usize = 2;

/// An argument's text as SQLite's built-ins read it (`sqlite3_value_text`: numbers rendered as
/// SQLite renders them, a blob's bytes as they are, every byte up to `sqlite3_value_bytes`);
/// `None` for NULL.
///
/// # Safety
/// `value` is an argument of the running call; the slice lives while the call does, and no
/// other conversion of `value` is asked for meanwhile.
unsafe fn text<'a>(value: *mut ffi::sqlite3_value) -> Option<&'a [u8]> {
    // SAFETY: as the caller promises; SQLite's text is `sqlite3_value_bytes` bytes long.
    unsafe {
        let bytes = ffi::sqlite3_value_text(value);
        if bytes.is_null() {
            return None;
        }
        let len = usize::try_from(ffi::sqlite3_value_bytes(value)).unwrap_or(0);
        Some(std::slice::from_raw_parts(bytes, len))
    }
}

/// The call's arguments.
///
/// # Safety
/// `argv` and `argc` are those SQLite passed to the running call.
unsafe fn arguments<'a>(
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) -> &'a [*mut ffi::sqlite3_value] {
    // SAFETY: SQLite passes `argc` valid values.
    unsafe { std::slice::from_raw_parts(argv, usize::try_from(argc).unwrap_or(0)) }
}

/// Answer `bytes` (copied) as text.
///
/// # Safety
/// `ctx` is the running call's.
unsafe fn result_text(ctx: *mut ffi::sqlite3_context, bytes: &[u8]) {
    // SAFETY: SQLITE_TRANSIENT makes SQLite copy the bytes before this returns.
    unsafe {
        ffi::sqlite3_result_text64(
            ctx,
            bytes.as_ptr().cast(),
            bytes.len() as u64,
            ffi::SQLITE_TRANSIENT(),
            ffi::SQLITE_UTF8 as u8,
        )
    }
}

/// SQLite's `replace(X, Y, Z)`: `X` with every occurrence of `Y` (leftmost first, without
/// overlaps) replaced by `Z`, as text; `X` itself when `Y` is empty or begins with a zero byte;
/// NULL if `X`, `Y` or (when `Y` is not empty) `Z` is; "string or blob too big" past the
/// connection's length limit.
unsafe extern "C" fn replace(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: called by SQLite with its arguments; each is read once, as text.
    unsafe {
        let args = arguments(argc, argv);
        let Some(x) = text(args[0]) else { return };
        let Some(y) = text(args[1]) else { return };
        if y.first().is_none_or(|&b| b == 0) {
            return result_text(ctx, x);
        }
        let Some(z) = text(args[2]) else { return };
        let limit = length_limit(ctx);
        // The built-in's first allocation, for a result as long as `x`, is refused past it.
        if x.len() as u64 + 1 > limit {
            return ffi::sqlite3_result_error_toobig(ctx);
        }
        let finder = memchr::memmem::Finder::new(y);
        let found = finder.find_iter(x).count();
        // Non-overlapping occurrences of `y` take at most all of `x`.
        let len = (x.len() - found * y.len()) as u64 + found as u64 * z.len() as u64;
        if len > limit {
            return ffi::sqlite3_result_error_toobig(ctx);
        }
        let out = ffi::sqlite3_malloc64(len + 1).cast::<u8>();
        if out.is_null() {
            return ffi::sqlite3_result_error_nomem(ctx);
        }
        let mut written = 0usize;
        let mut put = |bytes: &[u8]| {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.add(written), bytes.len());
            written += bytes.len();
        };
        let mut last = 0;
        for at in finder.find_iter(x) {
            put(&x[last..at]);
            put(z);
            last = at + y.len();
        }
        put(&x[last..]);
        ffi::sqlite3_result_text64(
            ctx,
            out.cast(),
            len,
            Some(ffi::sqlite3_free),
            ffi::SQLITE_UTF8 as u8,
        );
    }
}

/// SQLite's two-argument `trim`, `ltrim` and `rtrim` (`sqlite3_user_data`: [`LEFT`],
/// [`RIGHT`] or both): `X` as text without the characters of `Y` at its start, its end or
/// both; NULL if either is.
unsafe extern "C" fn trim(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: called by SQLite with its arguments; each is read once, as text.
    unsafe {
        let args = arguments(argc, argv);
        if ffi::sqlite3_value_type(args[0]) == ffi::SQLITE_NULL {
            return;
        }
        let Some(x) = text(args[0]) else { return };
        let Some(y) = text(args[1]) else { return };
        let set = match CharSet::of(y, length_limit(ctx)) {
            Ok(set) => set,
            Err(Refused::TooBig) => return ffi::sqlite3_result_error_toobig(ctx),
            Err(Refused::NoMemory) => return ffi::sqlite3_result_error_nomem(ctx),
        };
        let sides = ffi::sqlite3_user_data(ctx) as usize;
        let mut kept = x;
        if sides & LEFT != 0 {
            kept = &kept[set.left(kept)..];
        }
        if sides & RIGHT != 0 {
            kept = &kept[..set.right(kept)];
        }
        result_text(ctx, kept);
    }
}

/// Why a trim's characters were not taken.
enum Refused {
    /// Past the connection's length limit ("string or blob too big").
    TooBig,
    /// SQLite's heap is full.
    NoMemory,
}

/// The connection's `SQLITE_LIMIT_LENGTH`.
///
/// # Safety
/// `ctx` is the running call's.
unsafe fn length_limit(ctx: *mut ffi::sqlite3_context) -> u64 {
    // SAFETY: reads the limit of the call's own connection.
    let limit = unsafe {
        ffi::sqlite3_limit(
            ffi::sqlite3_context_db_handle(ctx),
            ffi::SQLITE_LIMIT_LENGTH,
            -1,
        )
    };
    u64::try_from(limit).unwrap_or(0)
}

/// Whether `byte` continues a UTF-8 character.
fn continues(byte: u8) -> bool {
    byte & 0xc0 == 0x80
}

/// The characters a trim cuts, as SQLite splits `Y`: up to its first zero byte, each one byte,
/// or a byte from 0xc0 up with the continuation bytes after it. A character found earlier in
/// `Y` wins over a later one, as SQLite tries them in order: each is known by its offset in `Y`.
struct CharSet<'a> {
    y: &'a [u8],
    /// The offset of the first one-byte character equal to each byte, if any.
    single: [Option<u32>; 256],
    /// The characters of two bytes or more (offset, length), sorted by their bytes, equal ones
    /// by offset; in SQLite's heap, within its limit, as the built-in's own list.
    multi: SqliteArray<(u32, u32)>,
}

impl<'a> CharSet<'a> {
    /// `None` when SQLite's heap has no room for the list.
    /// Refused as SQLite's built-in refuses: when its list of 12 bytes per character would
    /// pass the connection's length `limit`, or SQLite's heap has no room for ours.
    fn of(y: &'a [u8], limit: u64) -> Result<CharSet<'a>, Refused> {
        let y = &y[..memchr::memchr(0, y).unwrap_or(y.len())];
        let chars = || {
            let mut at = 0;
            std::iter::from_fn(move || {
                let start = at;
                let first = *y.get(at)?;
                at += 1;
                if first >= 0xc0 {
                    while y.get(at).is_some_and(|&b| continues(b)) {
                        at += 1;
                    }
                }
                // `y` is at most SQLite's length limit, below 2^31.
                Some((start as u32, (at - start) as u32))
            })
        };
        if chars().count() as u64 * 12 > limit {
            return Err(Refused::TooBig);
        }
        let mut single = [None; 256];
        let mut longer = 0;
        for (start, len) in chars() {
            match len {
                1 => {
                    let first = &mut single[usize::from(y[start as usize])];
                    first.get_or_insert(start);
                }
                _ => longer += 1,
            }
        }
        let mut multi = SqliteArray::new(longer, chars().filter(|&(_, len)| len > 1))
            .ok_or(Refused::NoMemory)?;
        let bytes = |(start, len): (u32, u32)| &y[start as usize..(start + len) as usize];
        multi
            .as_mut_slice()
            .sort_unstable_by(|&a, &b| bytes(a).cmp(bytes(b)).then(a.0.cmp(&b.0)));
        Ok(CharSet { y, single, multi })
    }

    /// Byte `depth` of character `c`, if it is that long.
    fn byte(&self, (start, len): (u32, u32), depth: usize) -> Option<u8> {
        (depth < len as usize).then(|| self.y[start as usize + depth])
    }

    /// Walk `x` from its start through the sorted characters, calling `found(length, offset)`
    /// for each length at which a character of two bytes or more equals `x`'s first bytes (the
    /// earliest such character). Stops where no character goes on: past the continuation
    /// bytes that follow `x`'s first byte at most.
    fn walk(&self, x: &[u8], mut found: impl FnMut(usize, u32)) {
        let (mut lo, mut hi) = (0, self.multi.as_slice().len());
        for (depth, &b) in x.iter().enumerate() {
            // Within [lo, hi) every character begins with x[..depth]: those that end there
            // come first, then by byte `depth`.
            let range = &self.multi.as_slice()[lo..hi];
            let from = range.partition_point(|&c| self.byte(c, depth).is_none_or(|cb| cb < b));
            let to = range.partition_point(|&c| self.byte(c, depth).is_none_or(|cb| cb <= b));
            (lo, hi) = (lo + from, lo + to);
            if lo == hi {
                return;
            }
            let (start, len) = self.multi.as_slice()[lo];
            if len as usize == depth + 1 {
                found(depth + 1, start);
            }
        }
    }

    /// How many bytes `ltrim` cuts from the start of `x`.
    fn left(&self, x: &[u8]) -> usize {
        let mut at = 0;
        while at < x.len() {
            let mut best = self.single[usize::from(x[at])].map(|offset| (offset, 1));
            if x[at] >= 0xc0 {
                self.walk(&x[at..], |len, offset| {
                    if best.is_none_or(|(o, _)| offset < o) {
                        best = Some((offset, len));
                    }
                });
            }
            match best {
                Some((_, len)) => at += len,
                None => break,
            }
        }
        at
    }

    /// Where `rtrim` ends `x`. A character of two bytes or more can end at `end` only if it
    /// begins at the last byte before `end` that is not a continuation byte: for each run of
    /// continuation bytes that byte is found, and the walk from it made, once.
    fn right(&self, x: &[u8]) -> usize {
        let mut end = x.len();
        // The run of continuation bytes being cut: where it starts, and the characters (length
        // from the byte before it, offset) that the walk from that byte found.
        let mut run: Option<(usize, Vec<(usize, u32)>)> = None;
        while end > 0 {
            let last = x[end - 1];
            let mut best = self.single[usize::from(last)].map(|offset| (offset, 1));
            if continues(last) && !self.multi.as_slice().is_empty() {
                if run.as_ref().is_none_or(|(start, _)| *start >= end) {
                    let start = x[..end]
                        .iter()
                        .rposition(|&b| !continues(b))
                        .map_or(0, |lead| lead + 1);
                    let mut found = Vec::new();
                    if start > 0 && x[start - 1] >= 0xc0 {
                        self.walk(&x[start - 1..end], |len, offset| found.push((len, offset)));
                    }
                    run = Some((start, found));
                }
                if let Some((start @ 1.., found)) = &run {
                    let len = end - (start - 1);
                    if let Ok(i) = found.binary_search_by_key(&len, |&(l, _)| l) {
                        let offset = found[i].1;
                        if best.is_none_or(|(o, _)| offset < o) {
                            best = Some((offset, len));
                        }
                    }
                }
            }
            match best {
                Some((_, len)) => end -= len,
                None => break,
            }
        }
        end
    }
}

/// A fixed array of `Copy` values in SQLite's heap (so that its hard limit counts it), freed
/// when dropped.
struct SqliteArray<T: Copy> {
    items: std::ptr::NonNull<T>,
    len: usize,
    /// Whether `items` was allocated (not for no bytes).
    allocated: bool,
}

impl<T: Copy> SqliteArray<T> {
    /// The first `len` of `items`; `None` when SQLite's heap has no room.
    fn new(len: usize, items: impl Iterator<Item = T>) -> Option<SqliteArray<T>> {
        let bytes = len.checked_mul(std::mem::size_of::<T>())?;
        let items_at = match bytes {
            0 => std::ptr::NonNull::dangling(),
            // SAFETY: a plain allocation; SQLite's are aligned to 8 bytes, enough for `T` here.
            _ => {
                std::ptr::NonNull::new(unsafe { ffi::sqlite3_malloc64(bytes as u64) }.cast::<T>())?
            }
        };
        let mut written = 0;
        for item in items.take(len) {
            // SAFETY: within the allocation of `len` items.
            unsafe { items_at.as_ptr().add(written).write(item) };
            written += 1;
        }
        Some(SqliteArray {
            items: items_at,
            len: written,
            allocated: bytes > 0,
        })
    }

    fn as_slice(&self) -> &[T] {
        // SAFETY: the first `len` items are written.
        unsafe { std::slice::from_raw_parts(self.items.as_ptr(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as `as_slice`, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.items.as_ptr(), self.len) }
    }
}

impl<T: Copy> Drop for SqliteArray<T> {
    fn drop(&mut self) {
        if self.allocated {
            // SAFETY: allocated by `sqlite3_malloc64` in `new`.
            unsafe { ffi::sqlite3_free(self.items.as_ptr().cast()) };
        }
    }
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

    /// `replace` and the two-argument trims answer as SQLite's built-ins do, type and bytes:
    /// on text, blobs, numbers and NULLs, on multi-byte characters, invalid UTF-8, zero bytes,
    /// characters that begin with others, and thousands of random short values of such bytes.
    #[test]
    fn replace_and_trim_answer_as_the_built_ins() -> rusqlite::Result<()> {
        use rand::{Rng, SeedableRng};
        let builtin = Connection::open_in_memory()?;
        let replaced = Connection::open_in_memory()?;
        install(&replaced)?;
        let compare = |call: &str| -> rusqlite::Result<()> {
            let sql = format!("SELECT typeof(r), hex(r) FROM (SELECT {call} AS r)");
            let answer = |conn: &Connection| {
                conn.query_row(&sql, [], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(|e| e.to_string())
            };
            assert_eq!(answer(&replaced), answer(&builtin), "{call}");
            Ok(())
        };
        let fixed = [
            "replace('hello', 'l', 'L')",
            "replace('hello', 'll', '')",
            "replace('aaaa', 'aa', 'b')",
            "replace('aaa', 'aa', 'xyz')",
            "replace('hello', '', 'x')",
            "replace('hello', '', NULL)",
            "replace(NULL, 'a', 'b')",
            "replace('a', NULL, 'b')",
            "replace('a', 'a', NULL)",
            "replace(12345, 3, 9)",
            "replace(1.5, '.', ',')",
            "replace(x'00ff00ff', x'ff', x'41')",
            "replace(x'00ff', x'00', 'z')",
            "replace('héllo wörld', 'ö', 'o')",
            "replace('', 'a', 'b')",
            "trim('  xx  ', ' ')",
            "ltrim('xxyxx', 'x')",
            "rtrim('xxyxx', 'x')",
            "trim('xyzzy', 'zyx')",
            "trim('ééaéé', 'é')",
            "trim('héh', 'é')",
            "trim(NULL, 'a')",
            "trim('a', NULL)",
            "trim('abc', '')",
            "trim(12321, 1)",
            "trim(1.5, '1')",
            "trim(x'c3a9c3', x'c3')",
            "rtrim(x'41c3a9a9', x'c3a9')",
            "rtrim(x'41c3a9a9', x'a9c3a9')",
            "ltrim(x'c3a9a941', x'c3a9a9c3a9')",
            "trim('aXa', 'a' || x'00' || 'X')",
            // A character of several bytes found before a one-byte one that also matches.
            "rtrim(x'41c380', x'c3806180')",
            "ltrim(x'c38041', x'c380c3')",
            "rtrim(x'41c38080', x'c38080c380')",
            "rtrim(x'41c38080', x'80c38080')",
        ];
        for call in fixed {
            compare(call)?;
        }
        // At a length limit of 1,024 bytes: X at the limit, a result past it, 86 characters
        // to trim (the built-in's list of them takes 12 bytes each). Lengths, not the texts:
        // their hex would pass the limit.
        for conn in [&builtin, &replaced] {
            conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, 1024)?;
        }
        for call in [
            "length(replace(zeroblob(1024), x'01', 'y'))",
            "length(replace(zeroblob(1023), x'01', 'y'))",
            "length(replace(zeroblob(600), x'00', 'yy'))",
            "length(replace(zeroblob(500), x'00', 'yy'))",
            "length(replace(zeroblob(1024), '', 'y'))",
            "ltrim('x', printf('%.*c', 85, 'a'))",
            "ltrim('x', printf('%.*c', 86, 'a'))",
            "rtrim('x', printf('%.*c', 86, 'a') || x'00')",
            "rtrim('x', x'00' || printf('%.*c', 86, 'a'))",
        ] {
            compare(call)?;
        }
        for conn in [&builtin, &replaced] {
            conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, 1_000_000_000)?;
        }
        // Bytes that make characters of one to several bytes, and cut them short.
        const BYTES: [u8; 8] = [b'a', b'b', b' ', 0xc3, 0xe2, 0x80, 0xa9, 0x00];
        let mut rng = rand::rngs::StdRng::seed_from_u64(20261207);
        let mut value = |most: usize| -> String {
            let len = rng.gen_range(0..=most);
            let hex: String = (0..len)
                .map(|_| format!("{:02x}", BYTES[rng.gen_range(0..BYTES.len())]))
                .collect();
            format!("CAST(x'{hex}' AS TEXT)")
        };
        for _ in 0..3000 {
            let (x, y, z) = (value(14), value(8), value(3));
            compare(&format!("replace({x}, {y}, {z})"))?;
            for f in ["trim", "ltrim", "rtrim"] {
                compare(&format!("{f}({x}, {y})"))?;
            }
        }
        Ok(())
    }
}
