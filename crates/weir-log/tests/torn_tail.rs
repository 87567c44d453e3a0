//! Recovery keeps exactly the intact prefix when the last batch is cut at any byte or has any
//! single bit flipped.

mod common;

use std::path::Path;
use std::sync::Arc;

use weir_log::{LogConfig, ManualClock};
use weir_types::{LeaderEpoch, Offset, RecordBatch};

fn config() -> LogConfig {
    LogConfig {
        index_interval_bytes: 128,
        ..common::small_config()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("ls") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// Writes five batches and returns them, the segment path and the last batch's position.
fn prepare(dir: &Path) -> (Vec<RecordBatch>, std::path::PathBuf, u64) {
    let clock = Arc::new(ManualClock::new(0));
    let log = common::open(dir, config(), &clock);
    for i in 0..4 {
        log.append(&common::batch(i, 3, 40, 1000 + i as i64), LeaderEpoch(2))
            .expect("append");
    }
    // the last batch opens a new epoch, so a flipped epoch bit matters twice over
    log.append(&common::batch(9, 2, 30, 2000), LeaderEpoch(3))
        .expect("append");
    let batches = log.read(Offset(0), 1 << 20, None).expect("read");
    let segments = log.segments();
    assert_eq!(segments.len(), 1);
    let path = segments[0].path.clone();
    log.close().expect("close");
    let last_pos = batches[..4].iter().map(|b| b.size_bytes() as u64).sum();
    (batches, path, last_pos)
}

fn assert_intact_prefix(dir: &Path, batches: &[RecordBatch], what: &str) {
    let clock = Arc::new(ManualClock::new(0));
    let log = common::open(dir, config(), &clock);
    let prefix = &batches[..4];
    let end = prefix[3].next_offset();
    assert_eq!(log.end_offset(), end, "{what}: end offset");
    assert_eq!(
        log.read(Offset(0), 1 << 20, None).expect("read"),
        prefix,
        "{what}"
    );
    assert_eq!(
        log.epochs(),
        vec![(LeaderEpoch(2), Offset(0))],
        "{what}: epochs"
    );
    assert!(
        log.read(end, 1 << 20, None)
            .expect("read at end")
            .is_empty(),
        "{what}"
    );
    // and the log takes appends again right where the prefix ends
    let info = log
        .append(&common::batch(77, 1, 5, 0), LeaderEpoch(4))
        .expect("append after recovery");
    assert_eq!(info.base_offset, end, "{what}");
}

#[test]
fn every_cut_of_the_last_batch_recovers_the_prefix() {
    let root = tempfile::tempdir().expect("tempdir");
    let original = root.path().join("original");
    let (batches, segment, last_pos) = prepare(&original);
    let file_len = std::fs::metadata(&segment).expect("stat").len();
    assert_eq!(file_len, last_pos + batches[4].size_bytes() as u64);
    for cut in last_pos..file_len {
        let work = root.path().join(format!("cut-{cut}"));
        copy_dir(&original, &work);
        let seg = work.join(segment.file_name().expect("name"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("open");
        file.set_len(cut).expect("truncate");
        drop(file);
        assert_intact_prefix(&work, &batches, &format!("cut at {cut}"));
        std::fs::remove_dir_all(&work).expect("cleanup");
    }
}

#[test]
fn every_bit_flip_in_the_last_batch_recovers_the_prefix() {
    let root = tempfile::tempdir().expect("tempdir");
    let original = root.path().join("original");
    let (batches, segment, last_pos) = prepare(&original);
    let pristine = std::fs::read(&segment).expect("read");
    let work = root.path().join("work");
    for byte in last_pos as usize..pristine.len() {
        for bit in 0..8 {
            copy_dir(&original, &work);
            let mut bytes = pristine.clone();
            bytes[byte] ^= 1 << bit;
            std::fs::write(work.join(segment.file_name().expect("name")), &bytes).expect("write");
            assert_intact_prefix(&work, &batches, &format!("bit {bit} of byte {byte}"));
            std::fs::remove_dir_all(&work).expect("cleanup");
        }
    }
}
