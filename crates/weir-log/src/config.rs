//! Per-partition storage settings.

use serde::{Deserialize, Serialize};
use weir_types::batch::BatchLimits;

/// When an append is acknowledged relative to its fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FlushPolicy {
    /// The default: `append` returns only after its bytes are fsynced. Appends that arrive
    /// while an fsync runs share the next one (group commit).
    #[default]
    Fsync,
    /// Relaxed: `append` returns as soon as the bytes are in the page cache and an fsync
    /// follows within `ms` milliseconds. A machine crash can lose acknowledged appends from that
    /// window; a process crash cannot.
    IntervalAckBeforeFsync { ms: u64 },
}

/// Settings for one partition's log. Every bound is named `*_max`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A segment is rolled before it would grow past this many bytes.
    pub segment_bytes_max: u64,
    /// A segment is rolled once it has been appended to for this long.
    pub segment_ms_max: Option<u64>,
    /// Whole sealed segments whose newest record is older than this are deleted.
    pub retention_ms: Option<u64>,
    /// Oldest sealed segments are deleted while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// One sparse index entry is written per this many bytes of batches.
    pub index_interval_bytes: u32,
    /// Appended batches larger than this are rejected.
    pub batch_bytes_max: u32,
    /// Decompressing a batch to validate it may produce at most this many bytes.
    pub decompressed_bytes_max: u32,
    pub flush: FlushPolicy,
    /// How much of the active segment's end stays in the page cache: once fsynced, data
    /// further back is dropped from it, so followers and tail readers are served from memory
    /// while the cache does not grow with the log. `None`: the kernel decides.
    pub page_cache_tail_bytes: Option<u64>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes_max: 1 << 30,
            segment_ms_max: Some(7 * 24 * 3600 * 1000),
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            index_interval_bytes: 4096,
            batch_bytes_max: 1 << 20,
            decompressed_bytes_max: 32 << 20,
            flush: FlushPolicy::Fsync,
            page_cache_tail_bytes: Some(Self::PAGE_CACHE_TAIL_BYTES),
        }
    }
}

impl LogConfig {
    /// Positions in the offset index are 32-bit, so a segment holds at most 2 GiB.
    pub const SEGMENT_BYTES_LIMIT: u64 = i32::MAX as u64;

    /// The default [`LogConfig::page_cache_tail_bytes`].
    pub const PAGE_CACHE_TAIL_BYTES: u64 = 8 << 20;

    pub fn validate(&self) -> Result<(), String> {
        if self.segment_bytes_max < 1024 || self.segment_bytes_max > Self::SEGMENT_BYTES_LIMIT {
            return Err(format!(
                "segment_bytes_max must be between 1024 and {} (got {})",
                Self::SEGMENT_BYTES_LIMIT,
                self.segment_bytes_max
            ));
        }
        if self.batch_bytes_max < 128 {
            return Err(format!(
                "batch_bytes_max must be at least 128 (got {})",
                self.batch_bytes_max
            ));
        }
        if u64::from(self.batch_bytes_max) > self.segment_bytes_max {
            return Err(format!(
                "batch_bytes_max ({}) must not exceed segment_bytes_max ({})",
                self.batch_bytes_max, self.segment_bytes_max
            ));
        }
        if self.index_interval_bytes == 0 {
            return Err("index_interval_bytes must be positive".into());
        }
        if self.decompressed_bytes_max < self.batch_bytes_max {
            return Err("decompressed_bytes_max must be at least batch_bytes_max".into());
        }
        if self.segment_ms_max == Some(0) {
            return Err("segment_ms_max must be positive when set".into());
        }
        if let FlushPolicy::IntervalAckBeforeFsync { ms: 0 } = self.flush {
            return Err("flush interval ms must be positive".into());
        }
        Ok(())
    }

    pub fn batch_limits(&self) -> BatchLimits {
        BatchLimits {
            batch_bytes_max: self.batch_bytes_max as usize,
            decompressed_bytes_max: self.decompressed_bytes_max as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_bad_values_are_named() {
        assert_eq!(LogConfig::default().validate(), Ok(()));
        let bad = LogConfig {
            segment_bytes_max: 10,
            ..LogConfig::default()
        };
        assert!(
            bad.validate()
                .expect_err("invalid")
                .contains("segment_bytes_max")
        );
        let bad = LogConfig {
            flush: FlushPolicy::IntervalAckBeforeFsync { ms: 0 },
            ..LogConfig::default()
        };
        assert!(bad.validate().expect_err("invalid").contains("flush"));
    }
}
