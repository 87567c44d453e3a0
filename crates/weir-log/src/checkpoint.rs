//! Small files replaced atomically: write a temporary file, fsync it, rename it over the old
//! one, fsync the directory. A reader sees the old file or the new one, never a mix.
//!
//! - `checkpoint`: recovery point and high watermark.
//! - `leader-epoch-checkpoint`: the leader-epoch cache (epoch → first offset).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use weir_types::{LeaderEpoch, Offset};

use crate::error::{LogError, Result};

pub const CHECKPOINT_FILE: &str = "checkpoint";
pub const EPOCH_FILE: &str = "leader-epoch-checkpoint";
pub const TMP_SUFFIX: &str = ".tmp";

pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(LogError::io_with(|| {
            format!("fsync directory {}", dir.display())
        }))
}

pub fn write_atomic(dir: &Path, name: &str, contents: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(LogError::io_with(|| format!("create {}", tmp.display())))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(LogError::io_with(|| format!("write {}", tmp.display())))?;
    fs::rename(&tmp, &path).map_err(LogError::io_with(|| {
        format!("rename to {}", path.display())
    }))?;
    fsync_dir(dir)
}

fn parse_error(path: &Path, reason: impl Into<String>) -> LogError {
    LogError::Corruption {
        path: path.to_path_buf(),
        position: 0,
        reason: reason.into(),
    }
}

/// Where recovery starts scanning, and the last persisted high watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Every segment that starts below this offset was fsynced when it was sealed.
    pub recovery_point: Offset,
    pub high_watermark: Offset,
}

impl Checkpoint {
    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = format!(
            "weir-checkpoint 1\nrecovery_point {}\nhigh_watermark {}\n",
            self.recovery_point, self.high_watermark
        );
        write_atomic(dir, CHECKPOINT_FILE, text.as_bytes())
    }

    /// `Ok(None)` when the file does not exist.
    pub fn read(dir: &Path) -> Result<Option<Checkpoint>> {
        let path = dir.join(CHECKPOINT_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LogError::io_with(|| format!("read {}", path.display()))(e)),
        };
        let mut lines = text.lines();
        if lines.next() != Some("weir-checkpoint 1") {
            return Err(parse_error(&path, "unknown checkpoint version"));
        }
        let mut field = |name: &str| -> Result<Offset> {
            let line = lines.next().unwrap_or_default();
            let value = line
                .strip_prefix(name)
                .and_then(|rest| rest.trim().parse::<i64>().ok())
                .filter(|v| *v >= 0)
                .ok_or_else(|| parse_error(&path, format!("bad {name} line {line:?}")))?;
            Ok(Offset(value))
        };
        Ok(Some(Checkpoint {
            recovery_point: field("recovery_point")?,
            high_watermark: field("high_watermark")?,
        }))
    }
}

/// The leader-epoch cache: for each epoch, the first offset written in it. Followers use it to
/// find where their log diverged from a new leader's (the end offset of an epoch is the start
/// of the next one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochCache {
    entries: Vec<(LeaderEpoch, Offset)>,
}

impl EpochCache {
    pub fn entries(&self) -> &[(LeaderEpoch, Offset)] {
        &self.entries
    }

    pub fn latest(&self) -> Option<LeaderEpoch> {
        self.entries.last().map(|(e, _)| *e)
    }

    /// The epoch that wrote `offset`, if the cache covers it.
    pub fn epoch_at(&self, offset: Offset) -> Option<LeaderEpoch> {
        self.entries
            .iter()
            .rev()
            .find(|(_, start)| *start <= offset)
            .map(|(e, _)| *e)
    }

    /// Records that `epoch` starts at `start`. Returns whether the cache changed.
    pub fn assign(&mut self, epoch: LeaderEpoch, start: Offset) -> bool {
        match self.entries.last() {
            Some((latest, _)) if *latest >= epoch => false,
            _ => {
                self.entries.push((epoch, start));
                true
            }
        }
    }

    /// Drops epochs that start at or after `end` (the log was truncated to `end`).
    pub fn truncate_from(&mut self, end: Offset) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(_, start)| *start < end);
        before != self.entries.len()
    }

    /// Drops everything and records nothing; used when the log restarts at a new offset.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// For `requested`: the largest epoch not above it and the offset where that epoch ended
    /// (the next epoch's start, or `log_end` for the latest). `None` if every known epoch is
    /// newer than `requested`.
    pub fn end_offset_for(
        &self,
        requested: LeaderEpoch,
        log_end: Offset,
    ) -> Option<(LeaderEpoch, Offset)> {
        let idx = self.entries.iter().rposition(|(e, _)| *e <= requested)?;
        let end = self
            .entries
            .get(idx + 1)
            .map(|(_, start)| *start)
            .unwrap_or(log_end);
        Some((self.entries[idx].0, end))
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let mut text = format!("0\n{}\n", self.entries.len());
        for (epoch, start) in &self.entries {
            text.push_str(&format!("{epoch} {start}\n"));
        }
        write_atomic(dir, EPOCH_FILE, text.as_bytes())
    }

    /// `Ok(None)` when the file does not exist; corruption is an error (the caller rebuilds
    /// the cache from the batches themselves).
    pub fn read(dir: &Path) -> Result<Option<EpochCache>> {
        let path = dir.join(EPOCH_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LogError::io_with(|| format!("read {}", path.display()))(e)),
        };
        let mut lines = text.lines();
        if lines.next() != Some("0") {
            return Err(parse_error(&path, "unknown epoch checkpoint version"));
        }
        let count: usize = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| parse_error(&path, "bad entry count"))?;
        let mut cache = EpochCache::default();
        for _ in 0..count {
            let line = lines.next().unwrap_or_default();
            let mut parts = line.split_whitespace();
            let parsed = (|| {
                let epoch: i32 = parts.next()?.parse().ok()?;
                let start: i64 = parts.next()?.parse().ok()?;
                Some((LeaderEpoch(epoch), Offset(start)))
            })();
            let (epoch, start) =
                parsed.ok_or_else(|| parse_error(&path, format!("bad entry {line:?}")))?;
            if !cache.assign(epoch, start) {
                return Err(parse_error(&path, "epochs are not increasing"));
            }
        }
        Ok(Some(cache))
    }
}

/// Removes leftovers of interrupted atomic writes.
pub fn remove_temp_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries =
        fs::read_dir(dir).map_err(LogError::io_with(|| format!("list {}", dir.display())))?;
    for entry in entries {
        let path = entry
            .map_err(LogError::io_with(|| format!("list {}", dir.display())))?
            .path();
        if path.extension().is_some_and(|e| e == &TMP_SUFFIX[1..]) {
            fs::remove_file(&path)
                .map_err(LogError::io_with(|| format!("remove {}", path.display())))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trip_and_rejects_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(Checkpoint::read(dir.path()).ok().flatten(), None);
        let cp = Checkpoint {
            recovery_point: Offset(10),
            high_watermark: Offset(7),
        };
        cp.write(dir.path()).expect("write");
        assert_eq!(Checkpoint::read(dir.path()).ok().flatten(), Some(cp));
        fs::write(
            dir.path().join(CHECKPOINT_FILE),
            "weir-checkpoint 1\nrecovery_point x\n",
        )
        .expect("write");
        assert!(Checkpoint::read(dir.path()).is_err());
    }

    #[test]
    fn epoch_cache_queries() {
        let mut cache = EpochCache::default();
        assert!(cache.assign(LeaderEpoch(1), Offset(0)));
        assert!(!cache.assign(LeaderEpoch(1), Offset(5)));
        assert!(cache.assign(LeaderEpoch(3), Offset(10)));
        assert!(cache.assign(LeaderEpoch(4), Offset(20)));
        assert_eq!(cache.epoch_at(Offset(9)), Some(LeaderEpoch(1)));
        assert_eq!(cache.epoch_at(Offset(10)), Some(LeaderEpoch(3)));
        assert_eq!(
            cache.end_offset_for(LeaderEpoch(2), Offset(30)),
            Some((LeaderEpoch(1), Offset(10)))
        );
        assert_eq!(
            cache.end_offset_for(LeaderEpoch(4), Offset(30)),
            Some((LeaderEpoch(4), Offset(30)))
        );
        assert_eq!(cache.end_offset_for(LeaderEpoch(0), Offset(30)), None);
        assert!(cache.truncate_from(Offset(10)));
        assert_eq!(cache.latest(), Some(LeaderEpoch(1)));

        let dir = tempfile::tempdir().expect("tempdir");
        cache.write(dir.path()).expect("write");
        assert_eq!(EpochCache::read(dir.path()).ok().flatten(), Some(cache));
        fs::write(dir.path().join(EPOCH_FILE), "0\n2\n5 0\n3 9\n").expect("write");
        assert!(EpochCache::read(dir.path()).is_err());
    }
}
