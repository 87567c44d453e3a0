//! Read-only inspection of a partition directory, for `weir log inspect` and
//! `weir log verify`. Nothing here writes: unlike opening a [`crate::PartitionLog`], it never
//! cuts a torn tail or rebuilds an index, it only reports.

use std::path::{Path, PathBuf};

use weir_types::{Offset, RecordBatch};

use crate::checkpoint::{Checkpoint, EpochCache};
use crate::error::Result;
use crate::index::{Entry, OffsetEntry, TimeEntry};
use crate::partition::list_segments;
use crate::segment::{self, ScanChecks, Scanner};

/// One batch as found on disk.
#[derive(Debug, Clone)]
pub struct BatchReport {
    pub position: u64,
    pub batch: RecordBatch,
    pub crc_ok: bool,
}

#[derive(Debug, Clone)]
pub struct SegmentReport {
    pub base_offset: Offset,
    pub path: PathBuf,
    pub file_bytes: u64,
    /// Bytes of well-framed batches from the start of the file.
    pub valid_bytes: u64,
    pub next_offset: Offset,
    pub batch_count: usize,
    pub batches: Vec<BatchReport>,
    pub index_entries: usize,
    pub time_index_entries: usize,
    /// Where and why the scan stopped before the end of the file.
    pub stop: Option<segment::ScanStop>,
}

#[derive(Debug, Clone)]
pub struct DirReport {
    pub dir: PathBuf,
    pub checkpoint: std::result::Result<Option<Checkpoint>, String>,
    pub epochs: std::result::Result<Option<EpochCache>, String>,
    pub segments: Vec<SegmentReport>,
    /// Everything that `verify` fails on, one sentence each.
    pub problems: Vec<String>,
}

/// Scans every segment of `dir`. With `keep_batches`, every batch is kept in the report.
pub fn inspect(dir: &Path, keep_batches: bool) -> Result<DirReport> {
    let mut problems = Vec::new();
    let checkpoint = Checkpoint::read(dir).map_err(|e| e.to_string());
    if let Err(e) = &checkpoint {
        problems.push(format!("checkpoint unreadable: {e}"));
    }
    let epochs = EpochCache::read(dir).map_err(|e| e.to_string());
    if let Err(e) = &epochs {
        problems.push(format!("leader-epoch checkpoint unreadable: {e}"));
    }
    let cache = epochs.as_ref().ok().and_then(|c| c.clone());

    let bases = list_segments(dir)?;
    let mut segments = Vec::new();
    let mut expected_next: Option<Offset> = None;
    let count = bases.len();
    for (i, base) in bases.into_iter().enumerate() {
        let path = dir.join(segment::file_name(base, segment::LOG_SUFFIX));
        if let Some(expected) = expected_next
            && expected != base
        {
            problems.push(format!(
                "{}: starts at offset {base} but the previous segment ends at {expected}",
                path.display()
            ));
        }
        let report = scan_segment(
            dir,
            &path,
            base,
            keep_batches,
            cache.as_ref(),
            &mut problems,
        )?;
        if let Some(stop) = &report.stop {
            let what = if i + 1 == count {
                "torn or corrupt tail in the active segment (opening the log cuts it)"
            } else {
                "corruption in a sealed segment (the partition cannot be served)"
            };
            problems.push(format!(
                "{}: {what}: {} bytes from byte {}: {}",
                path.display(),
                report.file_bytes - stop.position,
                stop.position,
                stop.reason
            ));
        }
        expected_next = Some(report.next_offset);
        segments.push(report);
    }
    Ok(DirReport {
        dir: dir.to_path_buf(),
        checkpoint,
        epochs,
        segments,
        problems,
    })
}

fn scan_segment(
    dir: &Path,
    path: &Path,
    base: Offset,
    keep_batches: bool,
    epochs: Option<&EpochCache>,
    problems: &mut Vec<String>,
) -> Result<SegmentReport> {
    let mut scanner = Scanner::open(path, 0, base)?;
    let checks = ScanChecks {
        verify_crc: false,
        epochs: None,
    };
    let mut batches = Vec::new();
    let mut positions = std::collections::HashMap::new();
    let mut next_offset = base;
    let mut batch_count = 0;
    let stop = loop {
        match scanner.next_batch(checks) {
            Ok(Some((position, batch))) => {
                let crc_ok = batch.crc_ok();
                if !crc_ok {
                    problems.push(format!(
                        "{}: batch at byte {position} (offsets {}..={}) fails its CRC",
                        path.display(),
                        batch.base_offset(),
                        batch.last_offset()
                    ));
                }
                if let Some(cache) = epochs
                    && cache.epoch_at(batch.base_offset()) != Some(batch.leader_epoch())
                {
                    problems.push(format!(
                        "{}: batch at byte {position} has leader epoch {} but the epoch cache says {:?}",
                        path.display(),
                        batch.leader_epoch(),
                        cache.epoch_at(batch.base_offset())
                    ));
                }
                positions.insert(position, batch.base_offset());
                next_offset = batch.next_offset();
                batch_count += 1;
                if keep_batches {
                    batches.push(BatchReport {
                        position,
                        batch,
                        crc_ok,
                    });
                }
            }
            Ok(None) => break None,
            Err(stop) => break Some(stop),
        }
    };
    let index_path = dir.join(segment::file_name(base, segment::INDEX_SUFFIX));
    let time_path = dir.join(segment::file_name(base, segment::TIME_INDEX_SUFFIX));
    let (index_entries, time_index_entries) = read_only_index_counts(&index_path, &time_path);
    for entry in &index_entries {
        let target = base.plus(i64::from(entry.relative));
        if positions.get(&u64::from(entry.position)) != Some(&target) {
            problems.push(format!(
                "{}: entry for offset {target} points at byte {}, which does not start that batch (the index is rebuilt on open)",
                index_path.display(),
                entry.position
            ));
            break;
        }
    }
    Ok(SegmentReport {
        base_offset: base,
        path: path.to_path_buf(),
        file_bytes: scanner.file_len(),
        valid_bytes: stop.as_ref().map_or(scanner.file_len(), |s| s.position),
        next_offset,
        batch_count,
        batches,
        index_entries: index_entries.len(),
        time_index_entries,
        stop,
    })
}

/// Index entries decoded straight from the files; `IndexFile::open` would repair them.
fn read_only_index_counts(index: &Path, time: &Path) -> (Vec<OffsetEntry>, usize) {
    let offsets = std::fs::read(index)
        .map(|b| {
            b.chunks_exact(OffsetEntry::SIZE)
                .map(OffsetEntry::decode)
                .collect()
        })
        .unwrap_or_default();
    let times = std::fs::read(time)
        .map(|b| b.len() / TimeEntry::SIZE)
        .unwrap_or(0);
    (offsets, times)
}
