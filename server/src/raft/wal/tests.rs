//! The engine on real files: recovery from each kind of damage, segments, truncate, purge.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::*;

fn payload(index: u64) -> Vec<u8> {
    // Sizes vary so that record boundaries do not line up with anything.
    let len = 10 + (index as usize * 37) % 300;
    (0..len).map(|i| (index as usize + i) as u8).collect()
}

fn append_range(wal: &mut Wal, range: std::ops::Range<u64>) {
    let records: Vec<(u64, Vec<u8>)> = range.map(|i| (i, payload(i))).collect();
    wal.append(records.iter().map(|(i, p)| (*i, p.as_slice())))
        .expect("append");
}

fn small_segments() -> WalOptions {
    WalOptions {
        segment_bytes: 2048,
        ..WalOptions::default()
    }
}

/// Asserts the log holds exactly `expected`, each with its payload.
fn assert_holds(reader: &WalReader, expected: std::ops::Range<u64>) {
    let got = reader.read(0, u64::MAX).expect("read");
    let indexes: Vec<u64> = got.iter().map(|(i, _)| *i).collect();
    assert_eq!(indexes, expected.clone().collect::<Vec<_>>());
    for (index, bytes) in got {
        assert_eq!(bytes, payload(index), "payload of {index}");
    }
    assert_eq!(
        reader.first_index(),
        (!expected.is_empty()).then_some(expected.start)
    );
    assert_eq!(reader.last_index(), expected.end.checked_sub(1));
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    paths.sort();
    paths
}

/// Closes the log the way a restart does: opening trims the preallocated zeros after the
/// records, so the file ends where its last record does.
fn close_and_trim(wal: Wal, dir: &Path, options: WalOptions) {
    drop(wal);
    drop(Wal::open(dir, options).expect("reopen to trim"));
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").len()
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    let mut file = OpenOptions::new().append(true).open(path).expect("open");
    file.write_all(bytes).expect("write");
}

#[test]
fn appends_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut wal = Wal::open(dir.path(), WalOptions::default()).expect("open");
    append_range(&mut wal, 1..51);
    append_range(&mut wal, 51..52);
    drop(wal);
    let wal = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
    assert_holds(&wal.reader(), 1..52);
    assert_eq!(wal.reader().read(10, 13).expect("read").len(), 3);
}

#[test]
fn torn_last_record_is_cut_and_appending_continues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut wal = Wal::open(dir.path(), WalOptions::default()).expect("open");
    append_range(&mut wal, 1..11);
    close_and_trim(wal, dir.path(), WalOptions::default());
    let last = segments(dir.path()).pop().expect("a segment");
    // Cut the file in the middle of the last record's payload.
    let len = file_len(&last);
    let torn_at = len - payload(10).len() as u64 / 2;
    OpenOptions::new()
        .write(true)
        .open(&last)
        .expect("open")
        .set_len(torn_at)
        .expect("cut");

    let mut wal = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
    assert_holds(&wal.reader(), 1..10);
    assert!(file_len(&last) < torn_at, "the torn record is cut away");
    append_range(&mut wal, 10..13);
    drop(wal);
    let wal = Wal::open(dir.path(), WalOptions::default()).expect("reopen again");
    assert_holds(&wal.reader(), 1..13);
}

#[test]
fn torn_record_header_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut wal = Wal::open(dir.path(), WalOptions::default()).expect("open");
    append_range(&mut wal, 1..4);
    close_and_trim(wal, dir.path(), WalOptions::default());
    let last = segments(dir.path()).pop().expect("a segment");
    let good_len = file_len(&last);
    // Seven bytes of the next record's 16-byte header.
    append_bytes(&last, &[9, 0, 0, 0, 1, 2, 3]);
    let wal = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
    assert_holds(&wal.reader(), 1..4);
    assert_eq!(file_len(&last), good_len);
}

#[test]
fn garbage_tail_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut wal = Wal::open(dir.path(), WalOptions::default()).expect("open");
    append_range(&mut wal, 1..6);
    close_and_trim(wal, dir.path(), WalOptions::default());
    let last = segments(dir.path()).pop().expect("a segment");
    let good_len = file_len(&last);
    // What a crash can leave after the last synced write: zeros (an extended file whose data
    // never made it), then random bytes.
    append_bytes(&last, &[0u8; 4096]);
    let garbage: Vec<u8> = (0..3000u32).map(|i| (i * 7919 % 251) as u8).collect();
    append_bytes(&last, &garbage);

    let mut wal = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
    assert_holds(&wal.reader(), 1..6);
    assert_eq!(file_len(&last), good_len);
    append_range(&mut wal, 6..8);
    assert_holds(&wal.reader(), 1..8);
}

/// Flips one byte of the file at `at` (bit rot: the sector was written, then went bad).
fn flip_byte(path: &Path, at: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).expect("read");
    file.write_all_at(&[byte[0] ^ 0x40], at).expect("write");
}

/// Damage that a torn write cannot leave, in the last segment, is cut like a torn tail (some
/// file systems leave stale bytes after a crash that read the same), and said so with an
/// error; the log store refuses the start when the cut took entries recorded as committed
/// (`log_store`'s tests). The segment module classifies it.
#[test]
fn damage_in_the_last_segment_is_told_from_a_torn_write_and_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut wal = Wal::open(dir.path(), WalOptions::default()).expect("open");
    append_range(&mut wal, 1..11);
    close_and_trim(wal, dir.path(), WalOptions::default());
    let last = segments(dir.path()).pop().expect("a segment");
    let scan = || {
        let file = File::open(&last).expect("open");
        segment::scan(&file, file_len(&last)).expect("scan")
    };
    let frame = |i: u64| segment::RECORD_HEADER_LEN + payload(i).len() as u64;
    let third = segment::HEADER_LEN + frame(1) + frame(2);
    flip_byte(&last, third + segment::RECORD_HEADER_LEN + 5);
    let scan1 = scan();
    assert!(
        matches!(&scan1.defect, Some(segment::Defect::Damaged(_))),
        "a flipped byte in a fully written record: {:?}",
        scan1.defect
    );
    flip_byte(&last, third + segment::RECORD_HEADER_LEN + 5);
    // An impossible length: a torn write leaves a length right or smaller.
    let fourth = third + frame(3);
    OpenOptions::new()
        .write(true)
        .open(&last)
        .expect("open")
        .write_all_at(&[0xff; 4], fourth)
        .expect("write");
    let scan2 = scan();
    assert!(
        matches!(&scan2.defect, Some(segment::Defect::Damaged(_))),
        "{:?}",
        scan2.defect
    );

    let wal = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
    assert_holds(&wal.reader(), 1..4);
}

#[test]
fn a_record_with_a_sector_that_never_reached_the_disk_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut wal = Wal::open(dir.path(), WalOptions::default()).expect("open");
    append_range(&mut wal, 1..4);
    let large: Vec<u8> = (0..3000u32).map(|i| (i % 250 + 1) as u8).collect();
    wal.append([(4, large.as_slice())]).expect("append");
    close_and_trim(wal, dir.path(), WalOptions::default());
    let last = segments(dir.path()).pop().expect("a segment");
    // A torn write of record 4: one whole sector of its payload still holds the zeros that
    // were there before.
    let start = file_len(&last) - segment::RECORD_HEADER_LEN - large.len() as u64;
    let sector = (start + segment::RECORD_HEADER_LEN).div_ceil(512) * 512;
    let file = OpenOptions::new().write(true).open(&last).expect("open");
    file.write_all_at(&[0u8; 512], sector).expect("write");
    drop(file);
    let file = File::open(&last).expect("open");
    let scan = segment::scan(&file, file_len(&last)).expect("scan");
    assert!(
        matches!(&scan.defect, Some(segment::Defect::Corrupt(_))),
        "a sector of zeros is what a torn write leaves: {:?}",
        scan.defect
    );
    drop(file);

    let mut wal = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
    assert_holds(&wal.reader(), 1..4);
    assert_eq!(file_len(&last), start, "the torn record is cut away");
    append_range(&mut wal, 4..6);
    assert_holds(&wal.reader(), 1..6);
}

#[test]
fn damage_in_an_earlier_segment_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut wal = Wal::open(dir.path(), small_segments()).expect("open");
    append_range(&mut wal, 1..40);
    drop(wal);
    let paths = segments(dir.path());
    assert!(paths.len() >= 3, "several segments: {paths:?}");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&paths[0])
        .expect("open");
    let at = segment::HEADER_LEN + segment::RECORD_HEADER_LEN + 2;
    file.write_all_at(&[0xff, 0xee], at).expect("write");
    drop(file);

    let err = Wal::open(dir.path(), small_segments())
        .err()
        .expect("a corrupt record in a non-last segment must not open");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("only the last"), "{err}");
    // Nothing was cut: the damaged file is left for inspection.
    assert!(file_len(&paths[0]) > segment::HEADER_LEN + 100);
}

#[test]
fn partial_header_of_a_new_last_segment_is_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut wal = Wal::open(dir.path(), WalOptions::default()).expect("open");
    append_range(&mut wal, 1..4);
    close_and_trim(wal, dir.path(), WalOptions::default());
    // A crash while the next segment's header was being written.
    let partial = dir.path().join(segment_name(2));
    std::fs::write(&partial, &segment::encode_header(2)[..11]).expect("write");

    let mut wal = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
    assert!(!partial.exists());
    assert_holds(&wal.reader(), 1..4);
    append_range(&mut wal, 4..6);
    drop(wal);
    let wal = Wal::open(dir.path(), WalOptions::default()).expect("reopen again");
    assert_holds(&wal.reader(), 1..6);
}

#[test]
fn bad_header_of_an_earlier_segment_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut wal = Wal::open(dir.path(), small_segments()).expect("open");
    append_range(&mut wal, 1..40);
    drop(wal);
    let first = segments(dir.path()).remove(0);
    let file = OpenOptions::new().write(true).open(&first).expect("open");
    file.write_all_at(b"XX", 0).expect("write");
    drop(file);
    let err = Wal::open(dir.path(), small_segments())
        .err()
        .expect("must not open");
    assert!(err.to_string().contains("bad header"), "{err}");
}

#[test]
fn rollover_spreads_the_log_over_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut wal = Wal::open(dir.path(), small_segments()).expect("open");
    for i in 1..100 {
        append_range(&mut wal, i..i + 1);
    }
    let count = wal.reader().segment_count();
    assert!(count > 5, "{count} segments");
    assert_eq!(segments(dir.path()).len(), count);
    assert_holds(&wal.reader(), 1..100);
    drop(wal);
    let wal = Wal::open(dir.path(), small_segments()).expect("reopen");
    assert_eq!(wal.reader().segment_count(), count);
    assert_holds(&wal.reader(), 1..100);
}

/// Index of the first record of the second segment.
fn second_segment_start(wal: &Wal) -> u64 {
    wal.segments.read().expect("lock")[1].first_index
}

#[test]
fn truncate_across_a_segment_boundary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut wal = Wal::open(dir.path(), small_segments()).expect("open");
    append_range(&mut wal, 1..60);
    let boundary = second_segment_start(&wal);
    let before = segments(dir.path()).len();
    assert!(before > 3);

    // Exactly at the start of the second segment: every later segment goes.
    wal.truncate(boundary).expect("truncate");
    assert_holds(&wal.reader(), 1..boundary);
    assert_eq!(segments(dir.path()).len(), 1);
    // Appending continues with new entries at the truncated indexes.
    append_range(&mut wal, boundary..boundary + 5);
    // Inside the first segment.
    wal.truncate(3).expect("truncate");
    assert_holds(&wal.reader(), 1..3);
    append_range(&mut wal, 3..30);
    drop(wal);
    let wal = Wal::open(dir.path(), small_segments()).expect("reopen");
    assert_holds(&wal.reader(), 1..30);
}

#[test]
fn truncate_everything_then_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut wal = Wal::open(dir.path(), small_segments()).expect("open");
    append_range(&mut wal, 5..40);
    // Below the first index: everything goes.
    wal.truncate(2).expect("truncate");
    assert_holds(&wal.reader(), 0..0);
    append_range(&mut wal, 5..8);
    drop(wal);
    let wal = Wal::open(dir.path(), small_segments()).expect("reopen");
    assert_holds(&wal.reader(), 5..8);
}

#[test]
fn overlapping_append_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut wal = Wal::open(dir.path(), WalOptions::default()).expect("open");
    append_range(&mut wal, 1..5);
    let p = payload(3);
    let err = wal.append([(3, p.as_slice())]).expect_err("overlap");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("append in the Raft log"), "{err}");
    // A failed change stops the log until the node restarts and recovers from the files.
    let next = payload(5);
    let err = wal.append([(5, next.as_slice())]).expect_err("stopped");
    assert!(err.to_string().contains("restart the node"), "{err}");
    drop(wal);
    let wal = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
    assert_holds(&wal.reader(), 1..5);
}

#[test]
fn purge_deletes_whole_segments_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut wal = Wal::open(dir.path(), small_segments()).expect("open");
    for i in 1..80 {
        append_range(&mut wal, i..i + 1);
    }
    let boundary = second_segment_start(&wal);
    let before = segments(dir.path()).len();

    // Not all of the first segment: nothing goes.
    wal.purge(boundary - 2).expect("purge");
    assert_eq!(segments(dir.path()).len(), before);
    assert_holds(&wal.reader(), 1..80);
    // All of it: exactly the first segment goes.
    wal.purge(boundary - 1).expect("purge");
    assert_eq!(segments(dir.path()).len(), before - 1);
    assert_holds(&wal.reader(), boundary..80);
    // Past the end: every segment but the last goes; its records stay readable.
    wal.purge(1000).expect("purge");
    assert_eq!(segments(dir.path()).len(), 1);
    let first_kept = wal
        .reader()
        .first_index()
        .expect("the last segment's records");
    assert_holds(&wal.reader(), first_kept..80);

    // After a snapshot install the log goes on past a gap, in a new segment.
    append_range(&mut wal, 2000..2003);
    assert_eq!(segments(dir.path()).len(), 2);
    drop(wal);
    let wal = Wal::open(dir.path(), small_segments()).expect("reopen");
    let got: Vec<u64> = wal
        .reader()
        .read(0, u64::MAX)
        .expect("read")
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    let expected: Vec<u64> = (first_kept..80).chain(2000..2003).collect();
    assert_eq!(got, expected);
}

#[test]
fn writer_groups_concurrent_appends_and_reports_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), small_segments()).expect("open");
    let writer = WalWriter::start(wal).expect("start");
    let (tx, rx) = mpsc::channel();
    let reported = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for i in 1..=200u64 {
        let (tx, reported) = (tx.clone(), reported.clone());
        writer
            .append(
                vec![(i, payload(i))],
                Box::new(move |r| {
                    reported.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = tx.send((i, r.is_ok()));
                }),
            )
            .expect("queue");
    }
    // What waits behind the appends (the committed index) runs after all of them.
    let (after, after_rx) = mpsc::channel();
    writer
        .after_writes(Box::new(move |r| {
            let seen = reported.load(std::sync::atomic::Ordering::SeqCst);
            let _ = after.send((seen, r.is_ok()));
        }))
        .expect("queue");
    let (truncated, truncated_rx) = mpsc::channel();
    writer
        .truncate(
            150,
            Box::new(move |r| {
                let _ = truncated.send(r.is_ok());
            }),
        )
        .expect("queue");
    drop(tx);
    let mut reported: Vec<(u64, bool)> = rx.iter().collect();
    reported.sort();
    assert_eq!(reported, (1..=200).map(|i| (i, true)).collect::<Vec<_>>());
    assert!(truncated_rx.recv().expect("truncate done"));
    assert_eq!(after_rx.recv().expect("after_writes ran"), (200, true));
    assert_holds(writer.reader(), 1..150);
}

#[test]
fn preallocated_zeros_are_trimmed_and_never_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut wal = Wal::open(dir.path(), small_segments()).expect("open");
    append_range(&mut wal, 1..3);
    let only = segments(dir.path()).pop().expect("a segment");
    let with_zeros = file_len(&only);
    assert!(
        with_zeros > (PREALLOCATE as u64),
        "the first small append preallocates"
    );
    for i in 3..60 {
        append_range(&mut wal, i..i + 1);
    }
    // Every segment but the last was trimmed to its records when the next one began.
    let paths = segments(dir.path());
    for path in &paths[..paths.len() - 1] {
        assert!(file_len(path) < 4096, "{} is trimmed", path.display());
    }
    drop(wal);
    let mut wal = Wal::open(dir.path(), small_segments()).expect("reopen");
    assert_holds(&wal.reader(), 1..60);
    assert!(
        file_len(paths.last().expect("last")) < 4096,
        "the last is trimmed on open"
    );
    append_range(&mut wal, 60..62);
    drop(wal);
    let wal = Wal::open(dir.path(), small_segments()).expect("reopen again");
    assert_holds(&wal.reader(), 1..62);
}

#[test]
fn zeros_after_the_records_of_an_earlier_segment_are_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut wal = Wal::open(dir.path(), small_segments()).expect("open");
    append_range(&mut wal, 1..40);
    drop(wal);
    let first = segments(dir.path()).remove(0);
    append_bytes(&first, &[0u8; 100]);
    let err = Wal::open(dir.path(), small_segments())
        .err()
        .expect("must not open");
    assert!(
        err.to_string().contains("zeros after its last record"),
        "{err}"
    );
}

#[test]
fn a_record_behind_a_zero_gap_is_not_resurrected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut wal = Wal::open(dir.path(), WalOptions::default()).expect("open");
    append_range(&mut wal, 1..6);
    close_and_trim(wal, dir.path(), WalOptions::default());
    // A torn batch of 6 and 7 in preallocated space: 6's pages never reached the disk (zeros),
    // 7's did.
    let last = segments(dir.path()).pop().expect("a segment");
    let mut frame6 = Vec::new();
    segment::encode_record(&mut frame6, 6, &payload(6)).expect("encode");
    let mut frame7 = Vec::new();
    segment::encode_record(&mut frame7, 7, &payload(7)).expect("encode");
    append_bytes(&last, &vec![0u8; frame6.len()]);
    append_bytes(&last, &frame7);

    let mut wal = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
    assert_holds(&wal.reader(), 1..6);
    // 6 arrives again, the same size: 7 must not line up behind it.
    append_range(&mut wal, 6..7);
    close_and_trim(wal, dir.path(), WalOptions::default());
    let wal = Wal::open(dir.path(), WalOptions::default()).expect("reopen again");
    assert_holds(&wal.reader(), 1..7);
}

/// Direct I/O writes whole blocks, the page cache path only the records: the files must come
/// out the same, through appends that start mid-block, cross blocks and segments, follow a
/// truncation to the middle of a block, and follow a reopen.
#[test]
fn direct_io_writes_the_same_files_as_the_page_cache() {
    let run = |direct_io: bool| {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = WalOptions {
            segment_bytes: 64 << 10,
            direct_io,
        };
        let mut wal = Wal::open(dir.path(), options.clone()).expect("open");
        append_range(&mut wal, 1..40);
        let big: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        wal.append([(40, big.as_slice())])
            .expect("append across blocks");
        append_range(&mut wal, 41..300);
        wal.truncate(250).expect("truncate");
        append_range(&mut wal, 250..320);
        assert_eq!(
            wal.reader().direct_io(),
            direct_io,
            "this file system takes direct I/O"
        );
        drop(wal);
        let mut wal = Wal::open(dir.path(), options.clone()).expect("reopen");
        append_range(&mut wal, 320..400);
        assert_eq!(wal.reader().last_index(), Some(399));
        let records = wal.reader().read(0, u64::MAX).expect("read");
        assert_eq!(records.len(), 399);
        for (index, data) in &records {
            let expected = if *index == 40 {
                big.clone()
            } else {
                payload(*index)
            };
            assert_eq!(data, &expected, "record {index}");
        }
        close_and_trim(wal, dir.path(), options);
        let files: Vec<Vec<u8>> = segments(dir.path())
            .iter()
            .map(|p| std::fs::read(p).expect("read segment"))
            .collect();
        files
    };
    let direct = run(true);
    assert!(direct.len() > 1, "the log spans segments");
    assert_eq!(direct, run(false));
}
