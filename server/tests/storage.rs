//! openraft's storage conformance suite against raftlite's WAL log store and SQLite state
//! machine (real files in a temporary directory).

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use raftlite::db::{Database, DbOptions};
use raftlite::raft::log_store::LogStore;
use raftlite::raft::state_machine::StateMachine;
use raftlite::raft::store::RaftStore;
use raftlite::raft::types::{StorageError, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("create temp dir");
        let store = RaftStore::open(dir.path()).expect("open raft store");
        let db = Database::open(dir.path().join("db.sqlite"), DbOptions::default())
            .expect("open database");
        let (applied_tx, _) = tokio::sync::watch::channel(0);
        let sm = StateMachine::open(
            Arc::new(db),
            store.clone(),
            dir.path().join("snapshots"),
            applied_tx,
        )
        .await
        .expect("open state machine");
        let log = LogStore::open(store, &dir.path().join("raft-log")).expect("open log store");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(Builder)?;
    Ok(())
}

// ---- Crash tests of the Raft log's engine (`raftlite::raft::wal`) ----
//
// The test binary runs itself as a child (the ignored test `wal_crash_child`) that appends
// from several threads and prints `flushed N` when entry N is reported durable. The child dies
// at a fail point (`failpoints` feature, armed by RAFTLITE_FAILPOINT) or by SIGKILL; the parent
// then reopens the log and checks that every entry reported flushed is there, intact, and
// that the log is one contiguous run with nothing after a torn record.

use std::io::BufRead;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use raftlite::raft::wal::{Wal, WalOptions, WalWriter};

const CHILD_DIR_ENV: &str = "RAFTLITE_WAL_CRASH_DIR";
/// "0": the child appends through the page cache and `fdatasync` instead of direct I/O.
const CHILD_DIRECT_ENV: &str = "RAFTLITE_WAL_CRASH_DIRECT";
const CHILD_APPENDS: u64 = 3000;

/// Entry `index`'s payload: sizes from a few bytes to 96 KiB, so that groups span pages.
fn crash_payload(index: u64) -> Vec<u8> {
    let len = match index % 10 {
        0 => 96 << 10,
        1..=3 => 4 << 10,
        _ => 20 + (index as usize * 13) % 500,
    };
    (0..len).map(|i| (i as u64 ^ index) as u8).collect()
}

#[test]
#[ignore = "child process of the WAL crash tests"]
fn wal_crash_child() {
    let dir = std::env::var(CHILD_DIR_ENV).expect("run by the crash tests only");
    let options = WalOptions {
        segment_bytes: 512 << 10,
        direct_io: std::env::var(CHILD_DIRECT_ENV).as_deref() != Ok("0"),
    };
    let wal = Wal::open(std::path::Path::new(&dir), options).expect("open WAL");
    let writer = WalWriter::start(wal).expect("start writer");
    let next = std::sync::Arc::new(std::sync::Mutex::new(1u64));
    let appenders: Vec<_> = (0..4)
        .map(|_| {
            let (writer, next) = (writer.clone(), next.clone());
            std::thread::spawn(move || loop {
                let (tx, rx) = std::sync::mpsc::channel();
                let index = {
                    let mut next = next.lock().expect("lock");
                    let index = *next;
                    if index > CHILD_APPENDS {
                        return;
                    }
                    *next += 1;
                    writer
                        .append(
                            vec![(index, crash_payload(index))],
                            Box::new(move |r| {
                                if r.is_ok() {
                                    println!("flushed {index}");
                                }
                                let _ = tx.send(r.is_ok());
                            }),
                        )
                        .expect("queue append");
                    index
                };
                assert!(rx.recv().expect("append completes"), "append {index}");
            })
        })
        .collect();
    for a in appenders {
        a.join().expect("appender");
    }
    println!("direct_io {}", writer.reader().direct_io());
}

/// Starts the child on `dir` with the fail point `failpoint` armed (if any), appending with
/// direct I/O or through the page cache.
fn start_child(
    dir: &std::path::Path,
    failpoint: Option<&str>,
    direct_io: bool,
) -> std::process::Child {
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command
        .args(["wal_crash_child", "--exact", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_DIRECT_ENV, if direct_io { "1" } else { "0" })
        .env_remove("RAFTLITE_FAILPOINT")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(point) = failpoint {
        command.env("RAFTLITE_FAILPOINT", point);
    }
    command.spawn().expect("start child")
}

/// The index of a `flushed N` line (the first may follow the test harness's own `test ... `).
fn flushed_index(line: &str) -> Option<u64> {
    line.split_once("flushed ")?.1.trim().parse().ok()
}

/// Reopens the log after the child died and checks it against what the child was told.
fn check_after_crash(dir: &std::path::Path, flushed: &[u64]) {
    let options = WalOptions {
        segment_bytes: 512 << 10,
        ..WalOptions::default()
    };
    let mut wal = Wal::open(dir, options.clone()).expect("reopen after the crash");
    let records = wal.reader().read(0, u64::MAX).expect("read the log");
    let last = records.last().map(|(i, _)| *i).unwrap_or(0);
    for (position, (index, payload)) in records.iter().enumerate() {
        assert_eq!(*index, position as u64 + 1, "the log is one contiguous run");
        assert!(*payload == crash_payload(*index), "entry {index} is intact");
    }
    let max_flushed = flushed.iter().copied().max().unwrap_or(0);
    assert!(
        max_flushed <= last,
        "entry {max_flushed} was reported flushed but the log ends at {last}"
    );
    // The node goes on: the next append works and survives another reopen.
    let next = crash_payload(last + 1);
    wal.append([(last + 1, next.as_slice())])
        .expect("append after recovery");
    drop(wal);
    let wal = Wal::open(dir, options).expect("reopen again");
    assert_eq!(wal.reader().last_index(), Some(last + 1));
}

#[test]
fn wal_crash_at_every_append_phase() {
    let phases = [
        "wal-before-write",
        "wal-torn-write",
        "wal-after-write",
        "wal-after-sync",
    ];
    for (phase, direct_io) in phases.iter().flat_map(|p| [(p, true), (p, false)]) {
        for hit in [1, 40] {
            let dir = tempfile::tempdir().expect("temp dir");
            let armed = format!("{phase}@{hit}");
            let output = start_child(dir.path(), Some(&armed), direct_io)
                .wait_with_output()
                .expect("run child");
            assert_eq!(
                output.status.signal(),
                Some(libc::SIGABRT),
                "the child dies at {armed} (direct I/O {direct_io}): {:?}",
                output.status
            );
            let flushed: Vec<u64> = String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter_map(flushed_index)
                .collect();
            if hit > 1 {
                assert!(!flushed.is_empty(), "appends were flushed before {armed}");
            }
            check_after_crash(dir.path(), &flushed);
        }
    }
}

#[test]
fn wal_sigkill_during_appends() {
    for direct_io in [true, false] {
        sigkill_during_appends(direct_io);
    }
}

fn sigkill_during_appends(direct_io: bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = start_child(dir.path(), None, direct_io);
    let stdout = child.stdout.take().expect("child stdout");
    let mut flushed = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.expect("read child output");
        if let Some(index) = flushed_index(&line) {
            flushed.push(index);
        }
        if flushed.len() == 500 {
            child.kill().expect("SIGKILL the child");
            break;
        }
    }
    let status = child.wait().expect("reap child");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    check_after_crash(dir.path(), &flushed);
}

/// Appends with direct I/O, and through the page cache when the file system refuses it (a fail
/// point makes opening the segment for direct I/O fail with EINVAL, as tmpfs did before Linux
/// 6.6): every append completes, is reported durable and reads back after a reopen.
#[test]
fn wal_appends_with_direct_io_or_through_the_page_cache() {
    for (failpoint, expected) in [
        (None, "direct_io true"),
        (Some("wal-direct-refused"), "direct_io false"),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let output = start_child(dir.path(), failpoint, true)
            .wait_with_output()
            .expect("run child");
        assert!(
            output.status.success(),
            "{failpoint:?}: {:?}",
            output.status
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let flushed: Vec<u64> = stdout.lines().filter_map(flushed_index).collect();
        assert_eq!(flushed.len() as u64, CHILD_APPENDS, "{failpoint:?}");
        assert!(
            stdout.lines().any(|l| l == expected),
            "{failpoint:?}: the log should report `{expected}` (a file system of the test \
             directory that refuses direct I/O fails the first case)"
        );
        check_after_crash(dir.path(), &flushed);
    }
}

/// `save_committed` writes to redb at most once per `LAZY_EVERY`; in between the store answers
/// from memory, and what redb holds is never newer than what was saved.
#[tokio::test]
async fn committed_ids_are_written_lazily_and_read_back_from_memory() -> Result<(), StorageError> {
    use openraft::storage::RaftLogStorage;
    use raftlite::raft::store::LAZY_EVERY;
    use raftlite::raft::types::LogId;

    let dir = tempfile::tempdir().expect("create temp dir");
    let store = RaftStore::open(dir.path()).expect("open raft store");
    let mut log = LogStore::open(store.clone(), &dir.path().join("raft-log")).expect("open log");
    let id = |index| Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), index));
    let written = || -> Result<Option<LogId>, StorageError> {
        Ok(store.read_meta::<Option<LogId>>("committed")?.flatten())
    };

    log.save_committed(id(1)).await?;
    log.save_committed(id(2)).await?;
    assert_eq!(
        log.read_committed().await?,
        id(2),
        "the newest, from memory"
    );
    assert_eq!(
        written()?,
        id(1),
        "the second came within LAZY_EVERY: not written"
    );

    tokio::time::sleep(LAZY_EVERY).await;
    log.save_committed(id(3)).await?;
    assert_eq!(log.read_committed().await?, id(3));
    assert_eq!(written()?, id(3), "due again after LAZY_EVERY");
    Ok(())
}
