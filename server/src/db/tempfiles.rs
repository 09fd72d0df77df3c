//! A VFS shim that bounds the temporary files of client statements, so that no request can
//! fill the node's disk (a node whose Raft log cannot be written stops).
//!
//! With `temp_store = FILE` (see `bounds.rs`), sorts, `DISTINCT`, `GROUP BY`, materialized
//! subqueries and statement journals spill to temporary files, and SQLite lets those grow
//! without limit: `max_page_count` does not apply to them and the heap limit does not see them.
//! One read-only `ORDER BY` over generated blobs wrote 2 GB in 9 s.
//!
//! [`install`] registers, once and before the first connection opens, a VFS that wraps the
//! platform's default one ("unix") as the new default:
//!
//! * **`xOpen`** of a temporary file (flags `TEMP_DB`, `TRANSIENT_DB`, `TEMP_JOURNAL`,
//!   `SUBJOURNAL`, or no name) while a client statement runs on the calling thread (a
//!   [`ClientTemp`] is alive there: inside `Bounds::enter`'s scope) wraps it: a [`TempFile`]
//!   header, whose methods count the bytes the file holds and forward every call to the base
//!   file, which lives right after the header in the same allocation (the shim's `szOsFile` is
//!   the base's plus the header). Every other file (databases, WAL, shm, journals, and the
//!   temporary files of raftlite's own statements) is opened by the base VFS in that same
//!   memory: it is exactly the base's file, with the base's methods, and costs nothing more.
//! * **`xWrite`** that would take a wrapped file past its limit (`DbOptions::
//!   max_temp_file_bytes`, default [`MAX_TEMP_FILE_BYTES`]), or all wrapped files of the
//!   process together past [`MAX_TEMP_BYTES`], writes nothing and returns `SQLITE_FULL`: the
//!   statement fails ("database or disk is full") and SQLite closes, and so deletes, its
//!   temporary files. The refusal is noted on the thread, and `ClientScope::client_error`
//!   reports it ([`Refusal::error`]) as `TooLarge` (one file) or `Overloaded` (all of them),
//!   both `RESOURCE_EXHAUSTED`; an `SQLITE_FULL` from a really full disk stays what it was.
//!
//! # The limits
//!
//! 256 MiB per file is four times the default `max_delta_bytes`: a write's statement journal
//! holds the original of each page it changes, and an index build sorts about the index's size,
//! both bounded by the delta a write may produce anyway (raise `max_temp_file_bytes` with
//! `max_delta_bytes`). A query sorting more than that without an index is refused. A limit per
//! file does not bound a statement, though (it may hold several sorters and materialized
//! subqueries at once, each its own file), nor the node (several readers): hence the total of
//! 1 GiB per process, which makes the worst case a known amount of free space in the temporary
//! directory (`SQLITE_TMPDIR`, else `/tmp`). The price: while statements hold most of it,
//! another statement that spills fails (`Overloaded`, retryable) although its own file is
//! small; statements whose temporary data fits in their page cache never notice. A client can
//! hold that space only until its request's deadline, and on as many threads as the node has
//! readers, so it can delay large sorts, not stop the node.
//!
//! # Soundness
//!
//! SQLite allocates `szOsFile` bytes for every file, 8-byte aligned; [`TempFile`] needs no more
//! alignment and the base file starts at [`BASE_OFFSET`], a multiple of 8. xOpen allocates
//! nothing. The shim copies the base VFS's other methods (`xDelete`, `xAccess`,
//! `xFullPathname`, time, randomness, ...), which SQLite then calls with the shim's pointer:
//! the unix VFS's methods ignore that pointer (its variants `unix-dotfile`, `unix-excl`, ...
//! share them so), which is why [`install`] only wraps a VFS named "unix". The base's own
//! xOpen gets the base's pointer. Wrapped files have `iVersion` 1 methods: SQLite then never
//! asks them for shared memory or memory mapping (temporary databases cannot be in WAL mode,
//! and fetch/mmap need version 3), so every byte they take goes through `xWrite`; the one
//! control that could allocate space ahead of writes (`SQLITE_FCNTL_SIZE_HINT`) is dropped. A
//! file is used by one connection at a time (SQLite's rule), so its counters need no lock. No
//! method can panic: thread-locals are read with `try_with`, arithmetic saturates.

use super::error::DbError;
use rusqlite::ffi;
use std::cell::Cell;
use std::ffi::{c_int, c_void, CStr};
use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::Once;

/// Default largest temporary file of a client statement (`DbOptions::max_temp_file_bytes`).
pub(crate) const MAX_TEMP_FILE_BYTES: u64 = 256 << 20;
/// Most bytes the temporary files of all client statements of the process hold together.
pub(crate) const MAX_TEMP_BYTES: u64 = 1 << 30;

/// `xOpen` flags of temporary files.
const TEMPORARY: c_int = ffi::SQLITE_OPEN_TEMP_DB
    | ffi::SQLITE_OPEN_TRANSIENT_DB
    | ffi::SQLITE_OPEN_TEMP_JOURNAL
    | ffi::SQLITE_OPEN_SUBJOURNAL;

/// The wrapped VFS; stored before the shim is registered, never freed.
static BASE: AtomicPtr<ffi::sqlite3_vfs> = AtomicPtr::new(ptr::null_mut());
/// Bytes all wrapped files hold together: the sum of their `size`.
static IN_USE: AtomicU64 = AtomicU64::new(0);

/// The head of a wrapped file; the base file follows at [`BASE_OFFSET`].
#[repr(C)]
struct TempFile {
    /// What SQLite sees (and reads): `pMethods` is [`METHODS`].
    #[allow(dead_code)]
    header: ffi::sqlite3_file,
    /// Bytes the file may hold on disk: its highest written offset, lowered by truncation.
    size: u64,
    limit: u64,
}

/// Where the base file starts in a wrapped file's memory.
const BASE_OFFSET: usize = size_of::<TempFile>().next_multiple_of(8);
const _: () = assert!(align_of::<TempFile>() <= 8);

/// Why a write to a temporary file was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The file would have grown past this limit.
    File(u64),
    /// All wrapped files together would have grown past this limit.
    All(u64),
}

impl Refusal {
    /// What the client is told.
    pub(crate) fn error(self) -> DbError {
        match self {
            Refusal::File(limit) => DbError::TooLarge(format!(
                "the statement needs more than {limit} bytes of temporary space (sorting, \
                 grouping or a large intermediate result); narrow it or add an index"
            )),
            Refusal::All(limit) => DbError::Overloaded(format!(
                "the temporary space of this node's statements ({limit} bytes in all) is in \
                 use; retry later, or narrow the statement"
            )),
        }
    }
}

thread_local! {
    /// The temporary-file limit of the client statement running on this thread, if one is.
    static CLIENT_LIMIT: Cell<Option<u64>> = const { Cell::new(None) };
    /// The last refused write of this thread's client statement.
    static REFUSED: Cell<Option<Refusal>> = const { Cell::new(None) };
}

/// While it lives, the temporary files that statements on this thread open are limited to
/// `limit` bytes each (and count toward [`MAX_TEMP_BYTES`]). See `Bounds::enter`.
pub(crate) struct ClientTemp {
    outer: Option<u64>,
    /// It sets and restores this thread's state: it stays on the thread.
    _thread: PhantomData<*const ()>,
}

impl ClientTemp {
    pub(crate) fn enter(limit: u64) -> ClientTemp {
        let outer = CLIENT_LIMIT.with(|l| l.replace(Some(limit)));
        REFUSED.with(|r| r.set(None));
        ClientTemp {
            outer,
            _thread: PhantomData,
        }
    }

    /// The limit a write on this thread ran into since [`ClientTemp::enter`] (told once).
    pub(crate) fn refusal(&self) -> Option<Refusal> {
        REFUSED.with(Cell::take)
    }
}

impl Drop for ClientTemp {
    fn drop(&mut self) {
        let _ = CLIENT_LIMIT.try_with(|l| l.set(self.outer));
    }
}

/// Make the shim SQLite's default VFS (once per process). Call it before opening the
/// connections it should cover: a connection keeps the VFS it was opened with.
pub(crate) fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        if let Err(why) = register() {
            tracing::warn!(
                %why,
                "temporary files of client statements are not bounded: the disk can fill up"
            );
        }
    });
}

fn register() -> Result<(), String> {
    // SAFETY: thread-safe lookup of the default VFS. A registered VFS outlives every use
    // here: nothing in raftlite unregisters one.
    let base = unsafe { ffi::sqlite3_vfs_find(ptr::null()) };
    // SAFETY: as above; null when SQLite has no VFS.
    let Some(base_vfs) = (unsafe { base.as_ref() }) else {
        return Err("SQLite has no default VFS".into());
    };
    // SAFETY: a VFS's name is a NUL-terminated string (checked for null first).
    let name = (!base_vfs.zName.is_null()).then(|| unsafe { CStr::from_ptr(base_vfs.zName) });
    if name != Some(c"unix") {
        return Err(format!("the default VFS is {name:?}, not unix"));
    }
    let size = c_int::try_from(BASE_OFFSET)
        .ok()
        .and_then(|offset| offset.checked_add(base_vfs.szOsFile))
        .ok_or("the base VFS's files are too large")?;
    BASE.store(base, Ordering::Release);
    let shim = Box::leak(Box::new(ffi::sqlite3_vfs {
        szOsFile: size,
        pNext: ptr::null_mut(),
        zName: c"raftlite".as_ptr(),
        xOpen: Some(x_open),
        ..*base_vfs
    }));
    // SAFETY: the shim is leaked, so it lives as long as SQLite may use it; its methods are
    // the base's (see the module docs) and `x_open`.
    match unsafe { ffi::sqlite3_vfs_register(shim, 1) } {
        ffi::SQLITE_OK => Ok(()),
        rc => Err(format!("sqlite3_vfs_register failed ({rc})")),
    }
}

/// `xOpen`: the temporary file of a client statement is wrapped, anything else is the base's.
///
/// SAFETY (of every method here): SQLite calls them as the VFS interface says: `file` points to
/// `szOsFile` bytes, 8-byte aligned, that only this call uses now; after a successful open it
/// holds what that open wrote, until `xClose`.
unsafe extern "C" fn x_open(
    _shim: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: stored before the shim was registered; a registered VFS is never freed.
    let base = BASE.load(Ordering::Acquire);
    let Some(base_open) = (unsafe { base.as_ref() }).and_then(|b| b.xOpen) else {
        return ffi::SQLITE_CANTOPEN;
    };
    let temporary = name.is_null() || flags & TEMPORARY != 0;
    let Some(limit) = temporary.then(client_limit).flatten() else {
        // SAFETY: the base's own open, in memory larger than it needs.
        return unsafe { base_open(base, name, file, flags, out_flags) };
    };
    let inner = inner(file);
    // SAFETY: the base file's part of the memory: `base.szOsFile` bytes, 8-byte aligned.
    let rc = unsafe { base_open(base, name, inner, flags, out_flags) };
    if rc != ffi::SQLITE_OK {
        // SAFETY: SQLite's rule for a failed open, applied to the base file: one whose methods
        // are set must still be closed (the unix VFS sets them only on success). Ours must
        // have none.
        unsafe {
            if let Some(close) = (*inner).pMethods.as_ref().and_then(|m| m.xClose) {
                close(inner);
            }
            (*file).pMethods = ptr::null();
        }
        return rc;
    }
    // SAFETY: the header's part of the memory, aligned for it (see BASE_OFFSET).
    unsafe {
        file.cast::<TempFile>().write(TempFile {
            header: ffi::sqlite3_file { pMethods: &METHODS },
            size: 0,
            limit,
        })
    };
    ffi::SQLITE_OK
}

/// The temporary-file limit of the client statement running on this thread, if one is.
fn client_limit() -> Option<u64> {
    // `try_with`: no panic (it would cross into SQLite) while the thread's locals are dropped.
    CLIENT_LIMIT.try_with(Cell::get).ok().flatten()
}

/// The base file of a wrapped file (the pointer only; using it is up to the caller).
fn inner(file: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    file.cast::<u8>().wrapping_add(BASE_OFFSET).cast()
}

/// The methods of wrapped files. Version 1: no shared memory, no memory mapping.
static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// A method of wrapped files that calls the base file's own (or returns `$missing` if the
/// base has none; the unix VFS has them all).
macro_rules! forward {
    ($name:ident => $method:ident($($arg:ident: $ty:ty),*), $missing:expr) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> c_int {
            let inner = inner(file);
            // SAFETY: `file` is a wrapped file, open (see `x_open`): its base file is open, and
            // the arguments are SQLite's own for this method.
            match unsafe { (*(*inner).pMethods).$method } {
                Some(method) => unsafe { method(inner $(, $arg)*) },
                None => $missing,
            }
        }
    };
}

forward!(x_read => xRead(buf: *mut c_void, amount: c_int, offset: i64), ffi::SQLITE_IOERR_READ);
forward!(x_sync => xSync(flags: c_int), ffi::SQLITE_OK);
forward!(x_file_size => xFileSize(size: *mut i64), ffi::SQLITE_IOERR_FSTAT);
forward!(x_lock => xLock(level: c_int), ffi::SQLITE_OK);
forward!(x_unlock => xUnlock(level: c_int), ffi::SQLITE_OK);
forward!(x_check_reserved_lock => xCheckReservedLock(out: *mut c_int), ffi::SQLITE_OK);
forward!(x_sector_size => xSectorSize(), 4096);
forward!(x_device_characteristics => xDeviceCharacteristics(), 0);
forward!(base_close => xClose(), ffi::SQLITE_OK);
forward!(
    base_write => xWrite(buf: *const c_void, amount: c_int, offset: i64),
    ffi::SQLITE_IOERR_WRITE
);
forward!(base_truncate => xTruncate(size: i64), ffi::SQLITE_IOERR_TRUNCATE);
forward!(base_file_control => xFileControl(op: c_int, arg: *mut c_void), ffi::SQLITE_NOTFOUND);

/// `xClose`: gives the file's bytes back to the total, then closes the base file (which
/// deletes it: temporary files are opened delete-on-close).
unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: a wrapped file, open (see `x_open`); the reference ends before the base's call.
    let temp = unsafe { &mut *file.cast::<TempFile>() };
    IN_USE.fetch_sub(std::mem::take(&mut temp.size), Ordering::Relaxed);
    // SAFETY: as above.
    unsafe { base_close(file) }
}

/// `xWrite`: refused with `SQLITE_FULL` if the file, or all of them, would grow past a limit.
unsafe extern "C" fn x_write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    let end = u64::try_from(offset)
        .unwrap_or(0)
        .saturating_add(u64::try_from(amount).unwrap_or(0));
    // SAFETY: a wrapped file, open (see `x_open`); the reference ends before the base's call.
    if let Err(refusal) = grow(unsafe { &mut *file.cast::<TempFile>() }, end) {
        let _ = REFUSED.try_with(|r| r.set(Some(refusal)));
        return ffi::SQLITE_FULL;
    }
    // SAFETY: as above; SQLite's arguments.
    unsafe { base_write(file, buf, amount, offset) }
}

/// Count the file as holding `end` bytes, if that is more than it did and within the limits.
fn grow(temp: &mut TempFile, end: u64) -> Result<(), Refusal> {
    if end <= temp.size {
        return Ok(());
    }
    if end > temp.limit {
        return Err(Refusal::File(temp.limit));
    }
    let more = end - temp.size;
    IN_USE
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
            used.checked_add(more).filter(|&n| n <= MAX_TEMP_BYTES)
        })
        .map_err(|_| Refusal::All(MAX_TEMP_BYTES))?;
    temp.size = end;
    Ok(())
}

/// `xTruncate`: forwarded; a file cut shorter gives the bytes past its new end back.
unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    // SAFETY: a wrapped file, open (see `x_open`).
    let rc = unsafe { base_truncate(file, size) };
    // SAFETY: as above; no other reference to the header is alive.
    let temp = unsafe { &mut *file.cast::<TempFile>() };
    let size = u64::try_from(size).unwrap_or(0);
    if rc == ffi::SQLITE_OK && size < temp.size {
        IN_USE.fetch_sub(temp.size - size, Ordering::Relaxed);
        temp.size = size;
    }
    rc
}

/// `xFileControl`: forwarded, except the size hint (a hint: SQLite ignores the answer), with
/// which the base could allocate space ahead of the writes this file counts.
unsafe extern "C" fn x_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    match op {
        ffi::SQLITE_FCNTL_SIZE_HINT => ffi::SQLITE_OK,
        // SAFETY: a wrapped file, open (see `x_open`); SQLite's arguments.
        _ => unsafe { base_file_control(file, op, arg) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_grows_within_its_limit_and_the_total() {
        let mut file = TempFile {
            header: ffi::sqlite3_file {
                pMethods: ptr::null(),
            },
            size: 0,
            limit: 100,
        };
        assert_eq!(grow(&mut file, 60), Ok(()));
        assert_eq!(grow(&mut file, 10), Ok(()));
        assert_eq!(file.size, 60);
        assert_eq!(grow(&mut file, 101), Err(Refusal::File(100)));
        assert_eq!(file.size, 60);
        assert_eq!(grow(&mut file, 100), Ok(()));
        IN_USE.fetch_sub(100, Ordering::Relaxed);
        let mut huge = TempFile {
            header: file.header,
            size: 0,
            limit: u64::MAX,
        };
        assert_eq!(
            grow(&mut huge, MAX_TEMP_BYTES + 1),
            Err(Refusal::All(MAX_TEMP_BYTES))
        );
        assert_eq!(huge.size, 0);
    }
}
