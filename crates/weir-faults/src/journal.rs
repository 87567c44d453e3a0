//! The fsync journal: a line `<length> <path>` appended for every file the storage engine
//! fsynced, naming the length the fsync covered (taken before the fsync started, so bytes
//! written while it ran are not counted).
//!
//! The journal is written without fsync: it simulates a power loss after a `kill -9`, when
//! the page cache — and so the journal — survives. The fault-injection suite then truncates
//! every journaled file to its last line's length, which drops exactly what a power loss
//! could have dropped.

use std::fs::File;

#[cfg(feature = "enabled")]
static JOURNAL: std::sync::OnceLock<std::sync::Mutex<File>> = std::sync::OnceLock::new();

/// Starts journaling to `path` (appended to; created if missing). Returns false when built
/// without the `enabled` feature.
pub fn enable(path: &std::path::Path) -> std::io::Result<bool> {
    #[cfg(feature = "enabled")]
    {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let _ = JOURNAL.set(std::sync::Mutex::new(file));
        Ok(true)
    }
    #[cfg(not(feature = "enabled"))]
    {
        let _ = path;
        Ok(false)
    }
}

/// What an fsync about to start will cover; report it with [`Pending::synced`] once the fsync
/// succeeded.
#[must_use]
pub struct Pending {
    #[cfg(feature = "enabled")]
    covered: Option<(std::path::PathBuf, u64)>,
}

/// Call right before fsyncing `file`.
#[inline]
pub fn before_sync(file: &File) -> Pending {
    #[cfg(feature = "enabled")]
    {
        use std::os::fd::AsRawFd;
        let covered = JOURNAL.get().and_then(|_| {
            let len = file.metadata().ok()?.len();
            let path = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
            Some((path, len))
        });
        Pending { covered }
    }
    #[cfg(not(feature = "enabled"))]
    {
        let _ = file;
        Pending {}
    }
}

impl Pending {
    /// The fsync succeeded: journal the length it covered.
    #[inline]
    pub fn synced(self) {
        #[cfg(feature = "enabled")]
        if let (Some(journal), Some((path, len))) = (JOURNAL.get(), self.covered) {
            use std::io::Write;
            let line = format!("{len} {}\n", path.display());
            let mut file = journal.lock().unwrap_or_else(|p| p.into_inner());
            let _ = file.write_all(line.as_bytes());
        }
    }
}

/// Reads a journal: the last journaled length of every path, in the order first seen.
pub fn read(text: &str) -> Vec<(std::path::PathBuf, u64)> {
    let mut order: Vec<std::path::PathBuf> = Vec::new();
    let mut last: std::collections::HashMap<std::path::PathBuf, u64> =
        std::collections::HashMap::new();
    // only whole lines: the last one may be torn
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    for line in whole.lines() {
        let Some((len, path)) = line.split_once(' ') else {
            continue;
        };
        let Ok(len) = len.parse::<u64>() else {
            continue;
        };
        let path = std::path::PathBuf::from(path);
        if last.insert(path.clone(), len).is_none() {
            order.push(path);
        }
    }
    order
        .into_iter()
        .filter_map(|p| last.get(&p).map(|len| (p.clone(), *len)))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_last_length_of_each_path_wins_and_torn_lines_are_skipped() {
        let text = "10 /d/a.log\n5 /d/b.log\n30 /d/a.log\n7 /d/b.lo";
        let got = super::read(text);
        assert_eq!(
            got,
            vec![("/d/a.log".into(), 30), ("/d/b.log".into(), 5)],
            "{got:?}"
        );
    }
}
