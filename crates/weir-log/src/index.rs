//! Sparse indexes of one segment, kept in memory and mirrored to a file by appending.
//!
//! - offset index: 8-byte entries `[relative offset: u32 BE][position: u32 BE]`, one per
//!   `index_interval_bytes` of batches; maps an offset to a byte position at or before it.
//! - time index: 12-byte entries `[max timestamp so far: i64 BE][relative offset: u32 BE]`,
//!   added at the same points when the running maximum timestamp grew.
//!
//! Both are derived data: recovery rebuilds them from the segment whenever they are missing
//! or do not match it. So new entries are written to the file in runs (the segment flushes
//! both indexes together every [`FLUSH_EVERY`] entries, and before the fsync that seals it),
//! not one `write` per append: after a crash, the scan that recovery does anyway indexes
//! what the files had not got yet.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{LogError, Result};

pub const OFFSET_ENTRY: usize = 8;
pub const TIME_ENTRY: usize = 12;
/// Entries held in memory only, at most, before the segment writes both indexes' new entries.
pub const FLUSH_EVERY: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative: u32,
    pub position: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp: i64,
    pub relative: u32,
}

/// An index file plus its entries in memory; the file holds the first `written` of them.
#[derive(Debug)]
pub struct IndexFile<E: Entry> {
    path: PathBuf,
    file: File,
    entries: Vec<E>,
    /// How many of `entries` the file holds; behind a lock so a sealed segment can be
    /// flushed through a shared reference.
    written: Mutex<usize>,
}

pub trait Entry: Copy + std::fmt::Debug {
    const SIZE: usize;
    fn encode(&self, out: &mut Vec<u8>);
    fn decode(bytes: &[u8]) -> Self;
    fn relative(&self) -> u32;
}

impl Entry for OffsetEntry {
    const SIZE: usize = OFFSET_ENTRY;
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.relative.to_be_bytes());
        out.extend_from_slice(&self.position.to_be_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        OffsetEntry {
            relative: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            position: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
    fn relative(&self) -> u32 {
        self.relative
    }
}

impl Entry for TimeEntry {
    const SIZE: usize = TIME_ENTRY;
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.relative.to_be_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&b[..8]);
        TimeEntry {
            timestamp: i64::from_be_bytes(ts),
            relative: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        }
    }
    fn relative(&self) -> u32 {
        self.relative
    }
}

impl<E: Entry> IndexFile<E> {
    /// Opens (creating if needed) and loads the file. Entries that are cut short or whose
    /// relative offsets do not increase end the load: what follows them is dropped.
    pub fn open(path: &Path) -> Result<IndexFile<E>> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(LogError::io_with(|| format!("read {}", path.display()))(e)),
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(LogError::io_with(|| format!("open {}", path.display())))?;
        let mut entries: Vec<E> = Vec::with_capacity(bytes.len() / E::SIZE);
        for chunk in bytes.chunks_exact(E::SIZE) {
            let entry = E::decode(chunk);
            if entries
                .last()
                .is_some_and(|last| last.relative() >= entry.relative())
            {
                break;
            }
            entries.push(entry);
        }
        let written = entries.len();
        let mut index = IndexFile {
            path: path.to_path_buf(),
            file,
            entries,
            written: Mutex::new(written),
        };
        if (index.entries.len() * E::SIZE) as usize != bytes.len() {
            let keep = index.entries.len();
            index.truncate_entries(keep)?;
        }
        Ok(index)
    }

    pub fn entries(&self) -> &[E] {
        &self.entries
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds an entry in memory; [`IndexFile::flush`] writes it to the file.
    pub fn push(&mut self, entry: E) {
        self.entries.push(entry);
    }

    /// Entries not written to the file yet.
    pub fn unwritten(&mut self) -> usize {
        let written = *self.written.get_mut().unwrap_or_else(|e| e.into_inner());
        self.entries.len() - written
    }

    /// Writes the entries the file does not hold yet, in one `write`.
    pub fn flush(&self) -> Result<()> {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if *written >= self.entries.len() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity((self.entries.len() - *written) * E::SIZE);
        for entry in &self.entries[*written..] {
            entry.encode(&mut buf);
        }
        (&self.file).write_all(&buf).map_err(LogError::io_with(|| {
            format!("append to {}", self.path.display())
        }))?;
        *written = self.entries.len();
        Ok(())
    }

    /// Keeps the first `keep` entries.
    pub fn truncate_entries(&mut self, keep: usize) -> Result<()> {
        self.entries.truncate(keep);
        let written = self.written.get_mut().unwrap_or_else(|e| e.into_inner());
        if keep <= *written {
            self.file
                .set_len((keep * E::SIZE) as u64)
                .map_err(LogError::io_with(|| {
                    format!("truncate {}", self.path.display())
                }))?;
            *written = keep;
        }
        Ok(())
    }

    /// Keeps the entries whose relative offset is below `relative`.
    pub fn truncate_from_relative(&mut self, relative: u32) -> Result<()> {
        let keep = self.entries.partition_point(|e| e.relative() < relative);
        if keep < self.entries.len() {
            self.truncate_entries(keep)?;
        }
        Ok(())
    }

    /// Writes what the file lacks, then fsyncs it.
    pub fn sync(&self) -> Result<()> {
        self.flush()?;
        self.file.sync_data().map_err(LogError::io_with(|| {
            format!("fsync {}", self.path.display())
        }))
    }
}

impl<E: Entry> Drop for IndexFile<E> {
    fn drop(&mut self) {
        // Best effort: an index is derived data, and recovery indexes what it lacks.
        let _ = self.flush();
    }
}

impl IndexFile<OffsetEntry> {
    /// The last entry at or before `relative`.
    pub fn floor(&self, relative: u32) -> Option<OffsetEntry> {
        let idx = self.entries.partition_point(|e| e.relative <= relative);
        idx.checked_sub(1).map(|i| self.entries[i])
    }
}

impl IndexFile<TimeEntry> {
    /// The last entry whose timestamp is strictly below `timestamp`: every batch up to and
    /// including the one at its offset is older than `timestamp`.
    pub fn last_before(&self, timestamp: i64) -> Option<TimeEntry> {
        let idx = self.entries.partition_point(|e| e.timestamp < timestamp);
        idx.checked_sub(1).map(|i| self.entries[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_and_out_of_order_entries_are_dropped_on_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.index");
        {
            let mut idx = IndexFile::<OffsetEntry>::open(&path).expect("open");
            for (r, p) in [(0, 0), (10, 4096), (20, 8192)] {
                idx.push(OffsetEntry {
                    relative: r,
                    position: p,
                });
            }
            idx.flush().expect("flush");
        }
        // a torn fourth entry
        let mut bytes = std::fs::read(&path).expect("read");
        bytes.extend_from_slice(&[0, 0, 0]);
        std::fs::write(&path, &bytes).expect("write");
        let idx = IndexFile::<OffsetEntry>::open(&path).expect("open");
        assert_eq!(idx.entries().len(), 3);
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), 24);
        assert_eq!(idx.floor(15).map(|e| e.position), Some(4096));
        assert_eq!(idx.floor(20).map(|e| e.position), Some(8192));

        // an entry going backwards ends the load
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[16..20].copy_from_slice(&5u32.to_be_bytes());
        std::fs::write(&path, &bytes).expect("write");
        let idx = IndexFile::<OffsetEntry>::open(&path).expect("open");
        assert_eq!(idx.entries().len(), 2);
    }

    fn entry(relative: u32) -> OffsetEntry {
        OffsetEntry {
            relative,
            position: relative * 100,
        }
    }

    fn file_len(path: &Path) -> u64 {
        std::fs::metadata(path).expect("stat").len()
    }

    #[test]
    fn entries_reach_the_file_in_runs_and_truncation_covers_both_sides() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.index");
        let mut idx = IndexFile::<OffsetEntry>::open(&path).expect("open");
        for r in 0..3 {
            idx.push(entry(r));
        }
        assert_eq!(idx.unwritten(), 3);
        assert_eq!(file_len(&path), 0, "written before a flush");
        idx.flush().expect("flush");
        assert_eq!((idx.unwritten(), file_len(&path)), (0, 24));

        // truncating into the unwritten tail leaves the file alone
        for r in 3..6 {
            idx.push(entry(r));
        }
        idx.truncate_entries(4).expect("truncate");
        assert_eq!((idx.unwritten(), file_len(&path)), (1, 24));
        // truncating below what the file holds cuts the file and drops the rest
        idx.push(entry(5));
        idx.truncate_entries(2).expect("truncate");
        assert_eq!((idx.unwritten(), file_len(&path)), (0, 16));

        // a sync writes what is missing first; dropping writes the rest
        idx.push(entry(2));
        idx.sync().expect("sync");
        assert_eq!(file_len(&path), 24);
        idx.push(entry(3));
        drop(idx);
        let idx = IndexFile::<OffsetEntry>::open(&path).expect("open");
        let relatives: Vec<u32> = idx.entries().iter().map(|e| e.relative).collect();
        assert_eq!(relatives, [0, 1, 2, 3]);
    }
}
