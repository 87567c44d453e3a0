//! The log keeps only its tail in the page cache (`page_cache_tail_bytes`).

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use common::{batch, open};
use weir_log::{LogConfig, ManualClock, PartitionLog};
use weir_types::{LeaderEpoch, Offset};

const MIB: u64 = 1 << 20;

/// Whether the byte at `position` of `file` is in the page cache: a read that may not wait for
/// the disk (`RWF_NOWAIT`) fails with `EAGAIN` when it is not.
fn cached(file: &File, position: u64) -> bool {
    let mut byte = [0u8; 1];
    let iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: byte.len(),
    };
    let offset = libc::off_t::try_from(position).expect("position fits off_t");
    // SAFETY: `iov` points at `byte`, which lives across the call and is `iov_len` long; the
    // descriptor is owned by `file`, which outlives the call.
    #[allow(unsafe_code)]
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    if n < 0 {
        let err = std::io::Error::last_os_error();
        assert_eq!(err.raw_os_error(), Some(libc::EAGAIN), "preadv2: {err}");
        return false;
    }
    n == 1
}

/// Appends about `mib` MiB in 64 KiB batches (each fsynced before the next), then one more
/// small batch: the flusher drops pages after a round's answers, so the round that answers
/// this last append starts only after every earlier round's drop. Returns the log and its
/// segment file.
fn write_log(dir: &Path, page_cache_tail_bytes: Option<u64>, mib: u64) -> (PartitionLog, File) {
    let clock = Arc::new(ManualClock::new(1_000));
    let config = LogConfig {
        page_cache_tail_bytes,
        retention_ms: None,
        segment_ms_max: None,
        ..LogConfig::default()
    };
    let log = open(dir, config, &clock);
    let mut tag = 0;
    while log.size_bytes() < mib * MIB {
        tag += 1;
        log.append(&batch(tag, 64, 1000, 1_000), LeaderEpoch(1))
            .expect("append");
    }
    log.append(&batch(0, 1, 10, 1_000), LeaderEpoch(1))
        .expect("append");
    let segment = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .expect("a segment file");
    (log, File::open(segment).expect("open segment"))
}

#[test]
fn only_the_tail_of_the_log_stays_in_the_page_cache() {
    // on the build's disk: a tmpfs /tmp keeps every page whatever the advice
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let (log, file) = write_log(dir.path(), Some(MIB), 4);
    let size = file.metadata().expect("stat").len();
    for position in [0, MIB / 2, MIB, 2 * MIB - 1] {
        assert!(
            !cached(&file, position),
            "byte {position} of {size} is still cached"
        );
    }
    for position in [size - MIB / 2, size - 1] {
        assert!(
            cached(&file, position),
            "byte {position} of {size} is not cached"
        );
    }
    // the log knows which reads the cache serves (the leader serves those in place)
    let end = log.end_offset();
    assert!(!log.reads_from_memory(Offset(0)));
    assert!(!log.reads_from_memory(Offset(end.0 / 2)));
    assert!(log.reads_from_memory(Offset(end.0 - 64)));
    assert!(log.reads_from_memory(end));
}

#[test]
fn without_a_tail_bound_the_kernel_keeps_what_was_written() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let (log, file) = write_log(dir.path(), None, 4);
    for position in [0, MIB, 2 * MIB] {
        assert!(cached(&file, position), "byte {position} was dropped");
    }
    assert!(log.reads_from_memory(Offset(0)));
    // asked to, the log drops all of it (cold-read measurements)
    log.evict_page_cache().expect("evict");
    let size = file.metadata().expect("stat").len();
    for position in [0, MIB, size - 1] {
        assert!(!cached(&file, position), "byte {position} is still cached");
    }
}
