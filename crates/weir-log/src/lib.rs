//! Weir's storage engine: one directory per partition, holding segment files of record
//! batches with sparse offset and time indexes, a leader-epoch checkpoint and a
//! recovery-point / high-watermark checkpoint. No async runtime inside: callers drive it from
//! their own threads or tasks.
//!
//! - [`PartitionLog`] (`partition`): append, read, truncate, roll, retention, recovery.
//! - [`Flusher`] (`flusher`): group commit — one thread per disk fsyncs all files written
//!   since its previous round; appends wait for the round that covers them.
//! - [`producer`]: idempotent-producer state (deduplication by sequence).
//! - `segment`, `index`: one segment's files, scanning and positioned reads.
//! - `checkpoint`: atomically replaced small files and the leader-epoch cache.
//! - [`inspect`]: read-only dumps and verification for `weir log inspect|verify`.
//!
//! Invariants: an append is acknowledged only after the flusher fsynced it (unless the
//! partition chose `FlushPolicy::IntervalAckBeforeFsync`); a batch that fails its CRC is never
//! served; only the last segment can have a torn tail, which recovery cuts.

pub mod checkpoint;
pub mod clock;
pub mod config;
pub mod error;
pub mod flusher;
pub mod index;
pub mod inspect;
pub mod partition;
pub mod producer;
pub mod segment;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{FlushPolicy, LogConfig};
pub use error::{LogError, Result};
pub use flusher::{FlushStats, Flusher, RoundObserver, Ticket};
pub use partition::{AppendInfo, PartitionLog, RecoveryReport, RetentionOutcome, SegmentInfo};
