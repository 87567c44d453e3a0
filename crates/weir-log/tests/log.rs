//! Behaviour of the partition log through its public API.

mod common;

use std::sync::Arc;

use common::{batch, batch_with, open, small_config};
use weir_log::{FlushPolicy, LogConfig, LogError, ManualClock};
use weir_types::{Compression, LeaderEpoch, Offset};

const EPOCH: LeaderEpoch = LeaderEpoch(1);

#[test]
fn append_assigns_offsets_and_reads_return_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_000));
    let log = open(dir.path(), small_config(), &clock);
    let a = log.append(&batch(1, 3, 10, 100), EPOCH).expect("append");
    let b = log.append(&batch(2, 2, 10, 200), EPOCH).expect("append");
    assert_eq!((a.base_offset, a.last_offset), (Offset(0), Offset(2)));
    assert_eq!((b.base_offset, b.last_offset), (Offset(3), Offset(4)));
    assert_eq!(log.end_offset(), Offset(5));
    assert_eq!(log.durable_end(), Offset(5));

    let read = log.read(Offset(1), 1 << 20, None).expect("read");
    assert_eq!(read.len(), 2);
    assert_eq!(read[0].base_offset(), Offset(0));
    assert_eq!(read[0].leader_epoch(), EPOCH);
    assert!(read.iter().all(|b| b.crc_ok()));
    let values: Vec<String> = read
        .iter()
        .flat_map(|b| b.records().expect("records"))
        .map(|(_, r)| String::from_utf8_lossy(&r.value.expect("value")[..4]).into_owned())
        .collect();
    assert_eq!(values, ["1:0:", "1:1:", "1:2:", "2:0:", "2:1:"]);

    assert!(
        log.read(Offset(5), 100, None)
            .expect("read at end")
            .is_empty()
    );
    assert!(matches!(
        log.read(Offset(6), 100, None),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    // `until` stops before a batch that would reach it
    assert_eq!(
        log.read(Offset(0), 1 << 20, Some(Offset(3)))
            .expect("read")
            .len(),
        1
    );
}

#[test]
fn bad_batches_are_rejected_before_anything_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(0));
    let log = open(dir.path(), small_config(), &clock);
    log.append(&batch(1, 1, 10, 0), EPOCH).expect("append");
    let size = log.size_bytes();

    let too_big = batch(2, 1, 4000, 0);
    let err = log.append(&too_big, EPOCH).expect_err("too large");
    assert_eq!(err.code(), weir_types::ErrorCode::RecordBatchTooLarge);

    let mut corrupt = batch(3, 2, 10, 0).as_bytes().to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x40;
    let corrupt = weir_types::RecordBatch::from_bytes(corrupt.into()).expect("framed");
    let err = log.append(&corrupt, EPOCH).expect_err("crc");
    assert_eq!(err.code(), weir_types::ErrorCode::InvalidRecordBatch);

    let err = log
        .append(&batch(4, 1, 10, 0), LeaderEpoch(0))
        .expect_err("stale epoch");
    assert!(matches!(err, LogError::StaleEpoch { .. }));

    assert_eq!(log.size_bytes(), size);
    assert_eq!(log.end_offset(), Offset(1));
}

#[test]
fn segments_roll_by_size_and_age_and_reads_cross_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(0));
    let config = LogConfig {
        segment_ms_max: Some(60_000),
        ..small_config()
    };
    let log = open(dir.path(), config, &clock);
    for i in 0..20 {
        log.append(&batch(i, 4, 100, 0), EPOCH).expect("append");
    }
    let by_size = log.segments().len();
    assert!(
        by_size >= 3,
        "expected rolls by size, got {by_size} segments"
    );
    for s in log.segments() {
        assert!(s.size_bytes <= 4096, "{s:?}");
    }
    clock.advance(60_000);
    log.append(&batch(99, 1, 10, 0), EPOCH).expect("append");
    assert_eq!(log.segments().len(), by_size + 1, "rolled by age");

    let all = log.read(Offset(0), usize::MAX / 2, None).expect("read");
    assert_eq!(all.len(), 21);
    let offsets: Vec<i64> = all.iter().map(|b| b.base_offset().0).collect();
    assert_eq!(
        offsets,
        (0..21).map(|i| (i * 4).min(80)).collect::<Vec<_>>()
    );
    // a byte limit smaller than one batch still returns one
    assert_eq!(log.read(Offset(7), 1, None).expect("read").len(), 1);
}

/// Thirty batches of two records (timestamps 0, 10, ... 290) over several small segments,
/// closed; returns what reads back and the segments.
fn thirty_batches_closed(
    dir: &std::path::Path,
    clock: &Arc<ManualClock>,
) -> (Vec<weir_types::RecordBatch>, Vec<weir_log::SegmentInfo>) {
    let log = open(dir, small_config(), clock);
    for i in 0..30 {
        log.append(&batch(i, 2, 100, i as i64 * 10), EPOCH)
            .expect("append");
    }
    let before = log.read(Offset(0), usize::MAX / 2, None).expect("read");
    let segments = log.segments();
    log.close().expect("close");
    (before, segments)
}

/// Reopens the log of `thirty_batches_closed` and checks it reads and looks up as before.
fn reopens_whole(
    dir: &std::path::Path,
    clock: &Arc<ManualClock>,
    before: &[weir_types::RecordBatch],
    segments: &[weir_log::SegmentInfo],
) -> weir_log::PartitionLog {
    let log = open(dir, small_config(), clock);
    assert_eq!(
        log.read(Offset(0), usize::MAX / 2, None).expect("read"),
        before
    );
    assert_eq!(log.segments(), segments);
    assert_eq!(log.end_offset(), Offset(60));
    assert_eq!(
        log.offset_for_timestamp(155).expect("ts"),
        Some((Offset(32), 160))
    );
    log
}

/// The segment index files in `dir` and their sizes, sorted.
fn index_sizes(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut sizes: Vec<(std::path::PathBuf, u64)> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "index" || e == "timeindex")
        })
        .map(|p| {
            let len = std::fs::metadata(&p).expect("stat").len();
            (p, len)
        })
        .collect();
    sizes.sort();
    sizes
}

#[test]
fn reopen_keeps_everything_and_rebuilds_lost_indexes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(0));
    let (before, segments) = thirty_batches_closed(dir.path(), &clock);
    // lose every index file
    for (path, _) in index_sizes(dir.path()) {
        std::fs::remove_file(path).expect("rm");
    }
    reopens_whole(dir.path(), &clock, &before, &segments);
}

#[test]
fn reopen_completes_indexes_that_lag_the_log() {
    // a crash before an index's last entries were written (they are written in runs)
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(0));
    let (before, segments) = thirty_batches_closed(dir.path(), &clock);
    let complete = index_sizes(dir.path());
    // every index keeps only its first entry
    let mut cut = 0;
    for (path, len) in &complete {
        let keep = if path.extension().is_some_and(|e| e == "index") {
            8
        } else {
            12
        };
        if *len > keep {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .expect("open");
            file.set_len(keep).expect("cut");
            cut += 1;
        }
    }
    assert!(cut > 0, "nothing to cut: the test proves nothing");
    let log = reopens_whole(dir.path(), &clock, &before, &segments);
    for offset in [1, 17, 33, 59] {
        let read = log.read(Offset(offset), 1, None).expect("read");
        assert!(
            read[0].base_offset().0 <= offset && offset <= read[0].last_offset().0,
            "offset {offset}: {:?}",
            read[0].base_offset()
        );
    }
    log.close().expect("close");
    assert_eq!(
        index_sizes(dir.path()),
        complete,
        "the indexes were not completed"
    );
}

#[test]
fn timestamp_lookup_finds_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(0));
    let log = open(dir.path(), small_config(), &clock);
    for i in 0..40 {
        // records i*10, i*10+1, i*10+2
        let codec = if i % 2 == 0 {
            Compression::None
        } else {
            Compression::Lz4
        };
        log.append(&batch_with(i, 3, 50, i as i64 * 10, codec), EPOCH)
            .expect("append");
    }
    assert_eq!(
        log.offset_for_timestamp(-5).expect("ts"),
        Some((Offset(0), 0))
    );
    assert_eq!(
        log.offset_for_timestamp(2).expect("ts"),
        Some((Offset(2), 2))
    );
    assert_eq!(
        log.offset_for_timestamp(3).expect("ts"),
        Some((Offset(3), 10))
    );
    assert_eq!(
        log.offset_for_timestamp(251).expect("ts"),
        Some((Offset(76), 251))
    );
    assert_eq!(
        log.offset_for_timestamp(392).expect("ts"),
        Some((Offset(119), 392))
    );
    assert_eq!(log.offset_for_timestamp(393).expect("ts"), None);
}

#[test]
fn truncation_cuts_at_batch_boundaries_and_epochs_follow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(0));
    let log = open(dir.path(), small_config(), &clock);
    for i in 0..10 {
        log.append(&batch(i, 3, 100, 0), LeaderEpoch(1))
            .expect("append");
    }
    for i in 10..20 {
        log.append(&batch(i, 3, 100, 0), LeaderEpoch(3))
            .expect("append");
    }
    log.set_high_watermark(Offset(60));
    assert_eq!(
        log.epochs(),
        vec![(LeaderEpoch(1), Offset(0)), (LeaderEpoch(3), Offset(30))]
    );
    assert_eq!(
        log.end_offset_for_epoch(LeaderEpoch(2)),
        Some((LeaderEpoch(1), Offset(30)))
    );

    // offset 25 lies in the batch 24..=26, which goes whole
    assert_eq!(log.truncate_to(Offset(25)).expect("truncate"), Offset(24));
    assert_eq!(log.end_offset(), Offset(24));
    assert_eq!(log.epochs(), vec![(LeaderEpoch(1), Offset(0))]);
    assert_eq!(log.high_watermark(), Offset(24));
    assert_eq!(log.durable_end(), Offset(24));
    let last = log.read(Offset(21), 1 << 20, None).expect("read");
    assert_eq!(last.last().map(|b| b.last_offset()), Some(Offset(23)));

    // appending continues after the cut, in a new epoch, and survives reopen
    let info = log
        .append(&batch(50, 2, 10, 0), LeaderEpoch(4))
        .expect("append");
    assert_eq!(info.base_offset, Offset(24));
    log.close().expect("close");
    let log = open(dir.path(), small_config(), &clock);
    assert_eq!(log.end_offset(), Offset(26));
    assert_eq!(
        log.epochs(),
        vec![(LeaderEpoch(1), Offset(0)), (LeaderEpoch(4), Offset(24))]
    );
    assert_eq!(log.high_watermark(), Offset(24));

    // truncating below the start restarts the log there
    assert_eq!(log.truncate_to(Offset(0)).expect("truncate"), Offset(0));
    assert_eq!(log.end_offset(), Offset(0));
    assert_eq!(log.segments().len(), 1);
}

#[test]
fn replicated_appends_keep_offsets_and_must_be_contiguous() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(0));
    let leader = open(&dir.path().join("leader"), small_config(), &clock);
    let follower = open(&dir.path().join("follower"), small_config(), &clock);
    for i in 0..5 {
        leader
            .append(&batch(i, 2, 10, 0), LeaderEpoch(7))
            .expect("append");
    }
    let batches = leader.read(Offset(0), 1 << 20, None).expect("read");
    let err = follower.append_replicated(&batches[1]).expect_err("gap");
    assert!(matches!(err, LogError::NonContiguous { .. }));
    for b in &batches {
        follower.append_replicated(b).expect("replicate");
    }
    assert_eq!(
        follower.read(Offset(0), 1 << 20, None).expect("read"),
        batches
    );
    assert_eq!(follower.epochs(), vec![(LeaderEpoch(7), Offset(0))]);
}

#[test]
fn retention_deletes_old_sealed_segments_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_000_000));
    let config = LogConfig {
        retention_ms: Some(10_000),
        retention_bytes: Some(8192),
        ..small_config()
    };
    let log = open(dir.path(), config, &clock);
    for i in 0..40 {
        log.append(&batch(i, 4, 100, 1_000_000 + i as i64 * 1000), EPOCH)
            .expect("append");
    }
    let total = log.size_bytes();
    let outcome = log.enforce_retention().expect("retention");
    assert!(outcome.segments_deleted > 0);
    assert!(
        log.size_bytes() < 8192 + 4096,
        "size retention: {}",
        log.size_bytes()
    );
    assert_eq!(log.size_bytes(), total - outcome.bytes_deleted);
    assert_eq!(log.start_offset(), outcome.log_start);
    assert!(matches!(
        log.read(Offset(0), 100, None),
        Err(LogError::OffsetOutOfRange { .. })
    ));

    // far in the future every sealed segment is expired, the active one stays
    clock.advance(10_000_000);
    log.enforce_retention().expect("retention");
    assert_eq!(log.segments().len(), 1);
    assert_eq!(log.end_offset(), Offset(160));
    log.append(&batch(99, 1, 10, 0), EPOCH)
        .expect("append after retention");
}

#[test]
fn relaxed_flush_acknowledges_before_fsync_and_catches_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(0));
    let config = LogConfig {
        flush: FlushPolicy::IntervalAckBeforeFsync { ms: 20 },
        ..small_config()
    };
    let log = open(dir.path(), config, &clock);
    log.append(&batch(1, 1, 10, 0), EPOCH).expect("append");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while log.durable_end() != Offset(1) {
        assert!(std::time::Instant::now() < deadline, "never became durable");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn a_corrupt_sealed_segment_is_an_error_not_a_silent_skip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(0));
    let log = open(dir.path(), small_config(), &clock);
    for i in 0..20 {
        log.append(&batch(i, 4, 100, 0), EPOCH).expect("append");
    }
    let first = log.segments()[0].path.clone();
    // roll points past the corrupt segment so it is a sealed one; force a full scan by
    // dropping the checkpoint
    log.close().expect("close");
    std::fs::remove_file(dir.path().join("checkpoint")).expect("rm checkpoint");
    let mut bytes = std::fs::read(&first).expect("read");
    bytes[100] ^= 0x01;
    std::fs::write(&first, bytes).expect("write");
    let flusher = weir_log::Flusher::spawn("t").expect("flusher");
    let err = weir_log::PartitionLog::open(dir.path(), small_config(), flusher, clock)
        .expect_err("corruption");
    assert!(matches!(err, LogError::Corruption { .. }), "{err}");
    assert_eq!(err.code(), weir_types::ErrorCode::CorruptRecord);
}

#[test]
fn reads_never_serve_a_batch_that_fails_its_crc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(0));
    let log = open(dir.path(), small_config(), &clock);
    for i in 0..3 {
        log.append(&batch(i, 2, 100, 0), EPOCH).expect("append");
    }
    let path = log.segments()[0].path.clone();
    let mut bytes = std::fs::read(&path).expect("read");
    let len = bytes.len();
    bytes[len - 5] ^= 0x10;
    std::fs::write(&path, bytes).expect("write");
    assert!(matches!(
        log.read(Offset(4), 1 << 20, None),
        Err(LogError::Corruption { .. })
    ));
    assert_eq!(
        log.read(Offset(0), 10, None).expect("intact prefix").len(),
        1
    );
}

#[test]
fn nowait_appends_keep_call_order_and_one_wait_covers_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(0));
    let log = open(dir.path(), small_config(), &clock);
    let mut tickets = Vec::new();
    for i in 0..5 {
        let (info, ticket) = log
            .append_nowait(&batch(i, 2, 10, 0), EPOCH)
            .expect("append");
        assert_eq!(info.base_offset, Offset(i as i64 * 2));
        tickets.push(ticket);
    }
    log.wait_durable(tickets[4]).expect("durable");
    assert_eq!(log.durable_end(), Offset(10));
}

#[test]
fn new_settings_apply_to_an_open_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_000_000));
    let log = open(dir.path(), small_config(), &clock);
    for i in 0..30 {
        log.append(&batch(i, 4, 100, 1_000_000), EPOCH)
            .expect("append");
    }
    let segments = log.segments().len();
    assert!(segments > 2);
    assert_eq!(
        log.enforce_retention().expect("retention").segments_deleted,
        0
    );
    let bad = LogConfig {
        segment_bytes_max: 1,
        ..small_config()
    };
    assert!(matches!(log.set_config(bad), Err(LogError::Config(_))));
    log.set_config(LogConfig {
        retention_bytes: Some(1),
        ..small_config()
    })
    .expect("set config");
    let out = log.enforce_retention().expect("retention");
    assert_eq!(out.segments_deleted, segments - 1, "all sealed segments go");
    assert_eq!(log.config().retention_bytes, Some(1));
}

fn idempotent(seq: i32, epoch: i16, count: usize) -> weir_types::RecordBatch {
    let mut builder = weir_types::BatchBuilder::default().producer(
        weir_types::ProducerId(42),
        weir_types::ProducerEpoch(epoch),
        weir_types::Sequence(seq),
    );
    for i in 0..count {
        builder.push(weir_types::Record {
            timestamp_ms: 1,
            value: Some(bytes::Bytes::from(format!("{seq}-{i}"))),
            ..weir_types::Record::default()
        });
    }
    builder.build().expect("batch")
}

#[test]
fn idempotent_retries_get_their_original_offsets_even_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(0));
    let log = open(dir.path(), small_config(), &clock);
    let first = log.append(&idempotent(0, 0, 3), EPOCH).expect("append");
    assert!(!first.duplicate);
    log.append(&batch(9, 1, 10, 0), EPOCH)
        .expect("someone else's batch");
    let retry = log.append(&idempotent(0, 0, 3), EPOCH).expect("retry");
    assert!(retry.duplicate);
    assert_eq!(
        (retry.base_offset, retry.last_offset),
        (Offset(0), Offset(2))
    );
    assert_eq!(log.end_offset(), Offset(4), "the retry appended nothing");

    let gap = log.append(&idempotent(5, 0, 1), EPOCH).expect_err("gap");
    assert_eq!(gap.code(), weir_types::ErrorCode::OutOfOrderSequence);
    let second = log.append(&idempotent(3, 0, 2), EPOCH).expect("next");
    assert_eq!(second.base_offset, Offset(4));

    // state survives a reopen (rebuilt from the batches)
    log.close().expect("close");
    let log = open(dir.path(), small_config(), &clock);
    let retry = log
        .append(&idempotent(3, 0, 2), EPOCH)
        .expect("retry after reopen");
    assert!(retry.duplicate);
    assert_eq!(retry.base_offset, Offset(4));

    // a new epoch fences the old one
    log.append(&idempotent(0, 1, 1), EPOCH).expect("new epoch");
    let fenced = log.append(&idempotent(5, 0, 1), EPOCH).expect_err("fenced");
    assert_eq!(fenced.code(), weir_types::ErrorCode::InvalidProducerEpoch);

    // truncation forgets what it removes, including the newer epoch: the retry of 3..4 is
    // appended again, as new
    log.truncate_to(Offset(4)).expect("truncate");
    let again = log
        .append(&idempotent(3, 0, 2), EPOCH)
        .expect("appended again");
    assert!(!again.duplicate);
    assert_eq!(again.base_offset, Offset(4));
}

#[test]
fn only_the_end_of_the_active_segment_is_its_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(0));
    let config = LogConfig {
        segment_bytes_max: 64 << 10,
        index_interval_bytes: 1024,
        batch_bytes_max: 8 << 10,
        ..small_config()
    };
    let log = open(dir.path(), config, &clock);
    // 1 KiB records, 4 to a batch: the first segment fills and rolls
    for tag in 0..40 {
        log.append(&batch(tag, 4, 1024, 0), EPOCH).expect("append");
    }
    let segments = log.segments();
    assert!(segments.len() >= 2, "no roll: {segments:?}");
    let active = segments.last().expect("active").base_offset;
    let end = log.end_offset();
    let last = Offset(end.0 - 1);
    // the last batch is within a few KiB of the end; the whole log is not
    assert!(log.is_tail(last, 8 << 10));
    assert!(log.is_tail(active, 1 << 20));
    assert!(!log.is_tail(active, 4 << 10));
    // a sealed segment is never the tail, however large the window
    assert!(!log.is_tail(Offset(0), u64::MAX));
    // nor is the end itself (nothing to read there) or beyond it
    assert!(!log.is_tail(end, u64::MAX));
}

#[test]
fn an_unchanged_checkpoint_is_not_written_again() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(0));
    let log = open(dir.path(), small_config(), &clock);
    let file = dir.path().join("checkpoint");
    // every write replaces the file (a new inode), so the inode tells writes apart
    let inode = || std::fs::metadata(&file).expect("checkpoint file").ino();
    log.append(&batch(1, 2, 10, 0), EPOCH).expect("append");
    log.set_high_watermark(Offset(2));
    assert!(!log.checkpoint_is_current());
    log.checkpoint().expect("checkpoint");
    assert!(log.checkpoint_is_current());
    let written = inode();
    log.checkpoint().expect("checkpoint");
    assert_eq!(inode(), written, "rewritten though nothing changed");
    log.set_high_watermark(Offset(1));
    log.append(&batch(2, 1, 10, 0), EPOCH).expect("append");
    log.set_high_watermark(Offset(3));
    assert!(!log.checkpoint_is_current());
    log.checkpoint().expect("checkpoint");
    assert_ne!(inode(), written, "a moved high watermark was not written");
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(text.contains("high_watermark 3"), "{text}");
}
