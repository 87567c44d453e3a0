//! A partition's log: a directory of segments, a leader-epoch cache and a checkpoint.
//!
//! Concurrency: one `RwLock` guards the segment map. Appends hold it for writing only while
//! they write (never while they wait for fsync); reads hold it for reading while they read.
//! Waiting for durability happens outside the lock, so concurrent appends to the same
//! partition share an fsync as well. The fsyncs of a new epoch's checkpoint, of sealing a
//! full segment and of the periodic checkpoint happen outside the write lock, so reads go on
//! meanwhile; a mutex (`files`, always taken before the lock) orders those file writes.
//! Truncation and resets (rare, follower-only) still fsync under the write lock, and a roll
//! fsyncs the directory entry of the new segment under it.
//!
//! Durability ordering (see `docs/storage-format.md`):
//! 1. a new leader epoch is written to `leader-epoch-checkpoint` before its first batch;
//! 2. a batch is written, then fsynced by the flusher, then acknowledged;
//! 3. a full segment is fsynced (data and indexes) before the next segment is created, and the
//!    checkpoint's recovery point then moves to the new segment;
//! 4. recovery trusts segments below the recovery point and scans the rest, verifying every
//!    batch; only the last segment may have a torn tail, which is cut.

use std::collections::BTreeMap;
use std::fs;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use weir_types::{LeaderEpoch, Offset, RecordBatch};

use crate::checkpoint::{self, Checkpoint, EpochCache};
use crate::clock::Clock;
use crate::config::{FlushPolicy, LogConfig};
use crate::error::{LogError, Result};
use crate::flusher::{DurableMark, Flusher, Ticket};
use crate::producer::{ProducerBatch, ProducerTable, Verdict};
use crate::segment::{self, ScanChecks, Segment};

static NEXT_SEGMENT_ID: AtomicU64 = AtomicU64::new(1);

fn next_segment_id() -> u64 {
    NEXT_SEGMENT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: Offset,
    pub last_offset: Offset,
    pub leader_epoch: LeaderEpoch,
    /// The batch was a producer's retry of one already in the log: these are the original
    /// offsets and nothing was appended.
    pub duplicate: bool,
}

/// What opening the log found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments scanned batch by batch with CRC checks (the rest were trusted as sealed).
    pub segments_scanned: usize,
    /// Bytes cut from the tail of the last segment, and why the valid data ended there.
    pub truncated_bytes: u64,
    pub truncation_reason: Option<String>,
    pub epoch_cache_rebuilt: bool,
    pub checkpoint_unreadable: bool,
}

/// A summary of one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub base_offset: Offset,
    pub next_offset: Offset,
    pub size_bytes: u64,
    pub max_timestamp: Option<i64>,
    pub index_entries: usize,
    pub time_index_entries: usize,
    pub path: PathBuf,
}

/// What retention removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    pub log_start: Offset,
}

#[derive(Debug)]
struct Inner {
    /// Never empty; the last one is the active segment.
    segments: BTreeMap<Offset, Segment>,
    epochs: EpochCache,
    producers: ProducerTable,
    high_watermark: Offset,
    recovery_point: Offset,
    /// Set when the log can no longer be trusted in memory (failed write or fsync).
    failed: Option<String>,
}

impl Inner {
    fn active(&self) -> &Segment {
        self.segments
            .values()
            .next_back()
            .expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log always has an active segment")
    }

    fn start(&self) -> Offset {
        self.segments
            .keys()
            .next()
            .copied()
            .expect("a log always has an active segment")
    }

    fn end(&self) -> Offset {
        self.active().next_offset
    }

    fn size(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }

    fn check_usable(&self) -> Result<()> {
        match &self.failed {
            Some(reason) => Err(LogError::FlushFailed(reason.clone())),
            None => Ok(()),
        }
    }
}

/// One partition's log on disk. `Send + Sync`: share it behind an `Arc`.
#[derive(Debug)]
pub struct PartitionLog {
    dir: PathBuf,
    /// Replaced whole by [`PartitionLog::set_config`] (a topic's settings changed).
    config: RwLock<LogConfig>,
    flusher: Arc<Flusher>,
    clock: Arc<dyn Clock>,
    durable: Arc<DurableMark>,
    recovery: RecoveryReport,
    inner: RwLock<Inner>,
    /// Orders writes of the checkpoint and epoch files and segment rolls. Taken before
    /// `inner`, never while holding it.
    files: Mutex<()>,
    /// The checkpoint last written (`None` until one is, or after a write failed): an
    /// unchanged one is not written again.
    written: Mutex<Option<Checkpoint>>,
}

/// Fsync work done before an append takes the write lock.
#[derive(Debug, Default)]
struct Prepared {
    /// The active segment (base, size) was fsynced whole: the roll need not sync it again.
    sealed: Option<(Offset, u64)>,
    /// This epoch entry is already in the durable epoch checkpoint.
    epoch: Option<(LeaderEpoch, Offset)>,
}

impl PartitionLog {
    /// Opens the log in `dir` (creating it if missing) and recovers it.
    pub fn open(
        dir: &Path,
        config: LogConfig,
        flusher: Arc<Flusher>,
        clock: Arc<dyn Clock>,
    ) -> Result<PartitionLog> {
        config.validate().map_err(LogError::Config)?;
        fs::create_dir_all(dir)
            .map_err(LogError::io_with(|| format!("create {}", dir.display())))?;
        checkpoint::remove_temp_files(dir)?;
        let mut report = RecoveryReport::default();

        let mut bases = list_segments(dir)?;
        let fresh = bases.is_empty();
        if fresh {
            bases.push(Offset::ZERO);
        }
        let checkpoint = match Checkpoint::read(dir) {
            Ok(cp) => cp,
            Err(LogError::Corruption { .. }) => {
                report.checkpoint_unreadable = true;
                None
            }
            Err(e) => return Err(e),
        };
        let recovery_point = checkpoint.map_or(Offset::ZERO, |c| c.recovery_point);

        let mut segments = BTreeMap::new();
        for base in &bases {
            let segment = if fresh {
                Segment::create(dir, *base, next_segment_id())?
            } else {
                Segment::open(dir, *base, next_segment_id())?
            };
            segments.insert(*base, segment);
        }
        if fresh {
            checkpoint::fsync_dir(dir)?;
        }

        let epochs = match EpochCache::read(dir) {
            Ok(Some(cache)) => Some(cache),
            Ok(None) if fresh => Some(EpochCache::default()),
            Ok(None) | Err(LogError::Corruption { .. }) => None,
            Err(e) => return Err(e),
        };
        let mut epochs = match epochs {
            Some(cache) => cache,
            None => {
                report.epoch_cache_rebuilt = true;
                rebuild_epoch_cache(&segments)?
            }
        };

        let interval = config.index_interval_bytes;
        let last_base = *bases.last().expect("at least one segment");
        let mut expected_base: Option<Offset> = None;
        let next_bases: Vec<Option<Offset>> = bases
            .iter()
            .skip(1)
            .map(|b| Some(*b))
            .chain([None])
            .collect();
        for (segment, next_base) in segments.values_mut().zip(next_bases) {
            if let Some(expected) = expected_base
                && segment.base != expected
            {
                return Err(LogError::Corruption {
                    path: segment.log_path().to_path_buf(),
                    position: 0,
                    reason: format!(
                        "segment starts at offset {}, the previous one ends at {expected}",
                        segment.base
                    ),
                });
            }
            let sealed_and_clean = next_base.is_some_and(|next| next <= recovery_point);
            let stop = if sealed_and_clean {
                segment.scan_and_index(
                    false,
                    ScanChecks {
                        verify_crc: false,
                        epochs: None,
                    },
                    interval,
                )?
            } else {
                report.segments_scanned += 1;
                segment.scan_and_index(
                    true,
                    ScanChecks {
                        verify_crc: true,
                        epochs: Some(&epochs),
                    },
                    interval,
                )?
            };
            if let Some(stop) = stop {
                if segment.base != last_base {
                    return Err(LogError::Corruption {
                        path: segment.log_path().to_path_buf(),
                        position: stop.position,
                        reason: format!("in a sealed segment: {}", stop.reason),
                    });
                }
                let file_len = segment
                    .file
                    .metadata()
                    .map_err(LogError::io("stat segment"))?
                    .len();
                report.truncated_bytes = file_len - stop.position;
                report.truncation_reason = Some(stop.reason);
                let next = segment.next_offset;
                segment.truncate_at(stop.position, next, interval)?;
            }
            expected_base = Some(segment.next_offset);
        }

        let mut inner = Inner {
            segments,
            epochs: EpochCache::default(),
            producers: ProducerTable::default(),
            high_watermark: Offset::ZERO,
            recovery_point: Offset::ZERO,
            failed: None,
        };
        let end = inner.end();
        if epochs.truncate_from(end) || report.epoch_cache_rebuilt {
            epochs.write(dir)?;
        }
        inner.epochs = epochs;
        inner.producers = rebuild_producers(&inner.segments)?;
        // What survived a process crash may still be only in the page cache: make it durable
        // before anyone is told it is.
        inner.active().sync()?;
        inner.recovery_point = inner.active().base;
        inner.high_watermark = checkpoint
            .map_or(Offset::ZERO, |c| c.high_watermark)
            .min(end);
        let log = PartitionLog {
            dir: dir.to_path_buf(),
            config: RwLock::new(config),
            flusher,
            clock,
            durable: Arc::new(DurableMark::new(end)),
            recovery: report,
            inner: RwLock::new(inner),
            files: Mutex::new(()),
            written: Mutex::new(None),
        };
        log.write_checkpoint(&log.read_inner())?;
        Ok(log)
    }

    fn read_inner(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_inner(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_files(&self) -> MutexGuard<'_, ()> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the checkpoint from the current state, outside the lock (hold `files`).
    fn write_checkpoint_unlocked(&self) -> Result<()> {
        let checkpoint = Self::checkpoint_of(&self.read_inner());
        self.store_checkpoint(checkpoint)
    }

    fn checkpoint_of(inner: &Inner) -> Checkpoint {
        Checkpoint {
            recovery_point: inner.recovery_point,
            high_watermark: inner.high_watermark,
        }
    }

    /// Writes `checkpoint` and remembers it as the one on disk. Every caller holds the file
    /// lock, so writes do not race; `written` itself is never held across the fsyncs (an
    /// async task asks [`PartitionLog::checkpoint_is_current`] and must not wait for them).
    fn store_checkpoint(&self, checkpoint: Checkpoint) -> Result<()> {
        let written = || self.written.lock().unwrap_or_else(|p| p.into_inner());
        *written() = None;
        checkpoint.write(&self.dir)?;
        *written() = Some(checkpoint);
        Ok(())
    }

    /// Whether appending `batch` under `epoch` is only a buffered write: no segment roll and
    /// no new epoch to record, the two appends that fsync first. Such an append takes
    /// microseconds and may run on an async task; the others belong on a blocking thread.
    /// `appends` is a group written one after another: none of them may roll.
    pub fn appends_are_buffered<'a>(
        &self,
        appends: impl IntoIterator<Item = (&'a RecordBatch, LeaderEpoch)>,
    ) -> bool {
        let inner = self.read_inner();
        let Some(latest) = inner.epochs.latest() else {
            return false;
        };
        let (mut bytes, mut offsets) = (0u64, 0i64);
        for (batch, epoch) in appends {
            if epoch > latest {
                return false;
            }
            bytes += batch.size_bytes() as u64;
            offsets += i64::from(batch.last_offset_delta()) + 1;
        }
        !self.roll_due_for(&inner, bytes, offsets)
    }

    /// Before an append that starts a new epoch or fills the active segment: fsyncs the
    /// epoch checkpoint and the full segment without the write lock. `None` when there is
    /// nothing to prepare (the common case: `files` is not taken).
    fn prepare(
        &self,
        batch: &RecordBatch,
        epoch: LeaderEpoch,
    ) -> Result<Option<(MutexGuard<'_, ()>, Prepared)>> {
        let due = {
            let inner = self.read_inner();
            self.roll_due(&inner, batch) || inner.epochs.latest().is_none_or(|l| epoch > l)
        };
        if !due {
            return Ok(None);
        }
        let files = self.lock_files();
        let mut prepared = Prepared::default();
        let epochs = {
            let inner = self.read_inner();
            inner.check_usable()?;
            if self.roll_due(&inner, batch) {
                // under the read lock: readers go on, only writers wait
                let active = inner.active();
                active.sync()?;
                self.durable.raise(active.next_offset);
                prepared.sealed = Some((active.base, active.size));
            }
            let mut epochs = inner.epochs.clone();
            let base = inner.end();
            epochs.assign(epoch, base).then(|| {
                prepared.epoch = Some((epoch, base));
                epochs
            })
        };
        if let Some(epochs) = epochs {
            epochs.write(&self.dir)?;
        }
        Ok(Some((files, prepared)))
    }

    fn write_checkpoint(&self, inner: &Inner) -> Result<()> {
        self.store_checkpoint(Self::checkpoint_of(inner))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current settings.
    pub fn config(&self) -> LogConfig {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies new settings (retention, segment size, limits) to the open log; they take
    /// effect from the next append, roll or retention pass.
    pub fn set_config(&self, config: LogConfig) -> Result<()> {
        config.validate().map_err(LogError::Config)?;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Validates a producer's batch, assigns it the next offsets, stamps `epoch`, appends it
    /// and (under the default flush policy) returns once it is fsynced.
    pub fn append(&self, batch: &RecordBatch, epoch: LeaderEpoch) -> Result<AppendInfo> {
        batch.validate(&self.config().batch_limits())?;
        self.append_checked(batch, None, epoch)
    }

    /// Appends a batch copied from the leader, keeping its offsets and epoch. It must start at
    /// this log's end.
    pub fn append_replicated(&self, batch: &RecordBatch) -> Result<AppendInfo> {
        let (info, ticket) = self.append_replicated_nowait(batch)?;
        self.wait_durable(ticket)?;
        Ok(info)
    }

    /// [`Self::append_replicated`] without waiting for the fsync (see [`Self::wait_durable`]).
    pub fn append_replicated_nowait(&self, batch: &RecordBatch) -> Result<(AppendInfo, Ticket)> {
        let limits = self.config().batch_limits();
        if batch.size_bytes() > limits.batch_bytes_max {
            return Err(weir_types::BatchError::TooLarge {
                len: batch.size_bytes(),
                limit: limits.batch_bytes_max,
            }
            .into());
        }
        batch.verify_crc()?;
        if batch.record_count() < 1 || batch.last_offset_delta() != batch.record_count() - 1 {
            return Err(weir_types::BatchError::OffsetDeltaMismatch {
                last_offset_delta: batch.last_offset_delta(),
                count: batch.record_count(),
            }
            .into());
        }
        self.write_batch(batch, Some(batch.base_offset()), batch.leader_epoch())
    }

    /// Like [`Self::append`], but returns as soon as the batch is written, with a ticket to
    /// pass to [`Self::wait_durable`]. A partition owner writes every queued batch this way and
    /// then waits once, so one fsync acknowledges them all (the order of offsets is the order
    /// of the calls). Under the relaxed policy the wait returns at once.
    pub fn append_nowait(
        &self,
        batch: &RecordBatch,
        epoch: LeaderEpoch,
    ) -> Result<(AppendInfo, Ticket)> {
        batch.validate(&self.config().batch_limits())?;
        self.write_batch(batch, None, epoch)
    }

    /// Calls `done` once the write that returned `ticket` is fsynced (at once under a relaxed
    /// policy), from the flusher's thread: no thread waits for it. A failed fsync fails
    /// this log as [`Self::wait_durable`] does.
    pub fn on_durable(
        self: &Arc<Self>,
        ticket: Ticket,
        done: impl FnOnce(Result<()>) + Send + 'static,
    ) {
        if self.config().flush != FlushPolicy::Fsync {
            return done(Ok(()));
        }
        let log = Arc::downgrade(self);
        self.flusher.on_complete(
            ticket,
            Box::new(move |result| {
                if let Err(e) = &result
                    && let Some(log) = log.upgrade()
                {
                    log.write_inner().failed = Some(e.to_string());
                }
                done(result)
            }),
        );
    }

    /// Waits until the append that produced `ticket` is fsynced (default policy).
    pub fn wait_durable(&self, ticket: Ticket) -> Result<()> {
        if self.config().flush != FlushPolicy::Fsync {
            return Ok(());
        }
        if let Err(e) = self.flusher.wait(ticket) {
            self.write_inner().failed = Some(e.to_string());
            return Err(e);
        }
        Ok(())
    }

    fn append_checked(
        &self,
        batch: &RecordBatch,
        expected_base: Option<Offset>,
        epoch: LeaderEpoch,
    ) -> Result<AppendInfo> {
        let (info, ticket) = self.write_batch(batch, expected_base, epoch)?;
        self.wait_durable(ticket)?;
        Ok(info)
    }

    fn write_batch(
        &self,
        batch: &RecordBatch,
        expected_base: Option<Offset>,
        epoch: LeaderEpoch,
    ) -> Result<(AppendInfo, Ticket)> {
        let prepared = self.prepare(batch, epoch)?;
        let (files, prepared) = match prepared {
            Some((files, prepared)) => (Some(files), prepared),
            None => (None, Prepared::default()),
        };
        let mut rolled = false;
        let (ticket, info) = {
            let mut inner = self.write_inner();
            inner.check_usable()?;
            let base = inner.end();
            if let Some(got) = expected_base
                && got != base
            {
                return Err(LogError::NonContiguous {
                    expected: base,
                    got,
                });
            }
            if let Some(latest) = inner.epochs.latest()
                && epoch < latest
            {
                return Err(LogError::StaleEpoch { epoch, latest });
            }
            let producer = producer_fields(batch);
            if let Some(fields) = producer
                && expected_base.is_none()
                && !weir_faults::bugs::active(weir_faults::bugs::Bug::NoDedup)
                && let Verdict::Duplicate {
                    base,
                    last: last_offset,
                } = inner.producers.check(fields)?
            {
                // The original may still be waiting for its fsync: wait for a round too.
                let active = inner.active();
                let ticket = self.flusher.submit(
                    active.id,
                    &active.file,
                    &self.durable,
                    last_offset.plus(1),
                    Duration::ZERO,
                    None,
                )?;
                let info = AppendInfo {
                    base_offset: base,
                    last_offset,
                    leader_epoch: inner.epochs.epoch_at(base).unwrap_or(epoch),
                    duplicate: true,
                };
                return Ok((info, ticket));
            }
            if self.roll_due(&inner, batch) {
                self.roll_locked(&mut inner, prepared.sealed)?;
                rolled = true;
            }
            if inner.epochs.assign(epoch, base) && prepared.epoch != Some((epoch, base)) {
                // not prepared (another writer moved the end meanwhile): write it now
                inner.epochs.write(&self.dir)?;
            }
            let prefix = batch.stamped_prefix(base, epoch);
            let now = self.clock.now_ms();
            let interval = self.config().index_interval_bytes;
            if let Err(e) = inner.active_mut().append(batch, &prefix, interval, now) {
                if matches!(&e, LogError::Io { context, .. } if context.starts_with("cut")) {
                    inner.failed = Some(e.to_string());
                }
                return Err(e);
            }
            let info = AppendInfo {
                base_offset: base,
                last_offset: base.plus(i64::from(batch.last_offset_delta())),
                leader_epoch: epoch,
                duplicate: false,
            };
            if let Some(fields) = producer {
                inner.producers.record(
                    fields,
                    info.base_offset,
                    info.last_offset,
                    batch.max_timestamp(),
                );
            }
            let delay = match self.config().flush {
                // the planted bug: a lazy fsync, as in systems that acknowledge before it
                _ if weir_faults::bugs::active(weir_faults::bugs::Bug::AckBeforeFsync) => {
                    Duration::from_secs(1)
                }
                FlushPolicy::Fsync => Duration::ZERO,
                FlushPolicy::IntervalAckBeforeFsync { ms } => Duration::from_millis(ms),
            };
            let uncache = self
                .config()
                .page_cache_tail_bytes
                .and_then(|keep| inner.active_mut().take_uncacheable(keep));
            let active = inner.active();
            let submitted = self.flusher.submit(
                active.id,
                &active.file,
                &self.durable,
                info.last_offset.plus(1),
                delay,
                uncache,
            );
            match submitted {
                Ok(ticket) => (ticket, info),
                Err(e) => {
                    inner.failed = Some(e.to_string());
                    return Err(e);
                }
            }
        };
        if rolled {
            // the recovery point moved to the new segment
            self.write_checkpoint_unlocked()?;
        }
        drop(files);
        Ok((info, ticket))
    }

    /// Whether `batch` must go to a new segment.
    fn roll_due(&self, inner: &Inner, batch: &RecordBatch) -> bool {
        self.roll_due_for(
            inner,
            batch.size_bytes() as u64,
            i64::from(batch.last_offset_delta()),
        )
    }

    /// Whether `bytes` more, spanning `offset_delta` offsets past the end, must go to a new
    /// segment.
    fn roll_due_for(&self, inner: &Inner, bytes: u64, offset_delta: i64) -> bool {
        let active = inner.active();
        if active.is_empty() {
            return false;
        }
        let too_big = active.size + bytes > self.config().segment_bytes_max;
        let too_old = match (self.config().segment_ms_max, active.first_append_ms) {
            (Some(max), Some(first)) => self.clock.now_ms().saturating_sub(first) >= max as i64,
            _ => false,
        };
        // Relative offsets in the index are 32-bit.
        let offsets_full = inner.end().0 - active.base.0 + offset_delta >= i64::from(u32::MAX);
        too_big || too_old || offsets_full
    }

    /// Seals the active segment and starts the next; the caller writes the checkpoint (the
    /// recovery point moved) after releasing the lock. `sealed`: the active segment as it was
    /// fsynced before the lock was taken; synced again only if it changed since.
    fn roll_locked(&self, inner: &mut Inner, sealed: Option<(Offset, u64)>) -> Result<()> {
        let active = inner.active();
        if active.is_empty() {
            return Ok(());
        }
        if sealed != Some((active.base, active.size)) {
            active.sync()?;
            self.durable.raise(active.next_offset);
        }
        let base = active.next_offset;
        let segment = Segment::create(&self.dir, base, next_segment_id())?;
        checkpoint::fsync_dir(&self.dir)?;
        // the new, empty file is durable now (its directory entry is)
        weir_faults::journal::before_sync(&segment.file).synced();
        inner.segments.insert(base, segment);
        inner.recovery_point = base;
        Ok(())
    }

    /// Seals the active segment and starts a new one (no-op when it is empty).
    pub fn roll(&self) -> Result<()> {
        let _files = self.lock_files();
        let sealed = {
            let inner = self.read_inner();
            inner.check_usable()?;
            let active = inner.active();
            active.sync()?;
            self.durable.raise(active.next_offset);
            (active.base, active.size)
        };
        {
            let mut inner = self.write_inner();
            inner.check_usable()?;
            self.roll_locked(&mut inner, Some(sealed))?;
        }
        self.write_checkpoint_unlocked()
    }

    /// Whether a read from `from` starts in the active segment's cached tail
    /// ([`LogConfig::page_cache_tail_bytes`]; anywhere in the active segment when the kernel
    /// manages the cache), so it can be served without waiting for the disk.
    pub fn reads_from_memory(&self, from: Offset) -> bool {
        self.read_inner().active().in_cached_tail(from)
    }

    /// Batches from `from` (the first may begin before it) up to about `max_bytes`, always
    /// at least one when any is available, none reaching `until` (default: the log end).
    pub fn read(
        &self,
        from: Offset,
        max_bytes: usize,
        until: Option<Offset>,
    ) -> Result<Vec<RecordBatch>> {
        let inner = self.read_inner();
        inner.check_usable()?;
        let (start, end) = (inner.start(), inner.end());
        if from < start || from > end {
            return Err(LogError::OffsetOutOfRange {
                offset: from,
                start,
                end,
            });
        }
        let until = until.map_or(end, |u| u.min(end));
        let mut out: Vec<RecordBatch> = Vec::new();
        let mut bytes = 0usize;
        let mut cursor = from;
        let first = inner
            .segments
            .range(..=from)
            .next_back()
            .map_or(start, |(b, _)| *b);
        for segment in inner.segments.range(first..).map(|(_, s)| s) {
            if cursor >= until || (bytes >= max_bytes && !out.is_empty()) {
                break;
            }
            let batches = segment.read(
                cursor,
                max_bytes.saturating_sub(bytes),
                until,
                out.is_empty(),
            )?;
            for batch in batches {
                bytes += batch.size_bytes();
                cursor = batch.next_offset();
                out.push(batch);
            }
            if cursor < segment.next_offset {
                break;
            }
        }
        Ok(out)
    }

    /// Whether a read from `from` stays within the last `window` bytes written (the active
    /// segment's tail, which the page cache still holds unless memory is short): such a read
    /// can run on an async task without a hop to a blocking thread.
    pub fn is_tail(&self, from: Offset, window: u64) -> bool {
        let inner = self.read_inner();
        inner
            .active()
            .bytes_from(from)
            .is_some_and(|bytes| bytes <= window)
    }

    /// The first record whose timestamp is at or after `timestamp`: its offset and timestamp.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(Offset, i64)>> {
        let inner = self.read_inner();
        inner.check_usable()?;
        for segment in inner.segments.values() {
            if segment.max_timestamp >= timestamp {
                return segment.offset_for_timestamp(timestamp);
            }
        }
        Ok(None)
    }

    /// Removes every batch holding an offset at or after `offset` (a batch straddling it is
    /// removed whole). Returns the new log end. Truncating at or below the log start empties
    /// the log and restarts it at `offset`.
    pub fn truncate_to(&self, offset: Offset) -> Result<Offset> {
        let _files = self.lock_files();
        let mut inner = self.write_inner();
        inner.check_usable()?;
        if offset >= inner.end() {
            return Ok(inner.end());
        }
        let interval = self.config().index_interval_bytes;
        if offset <= inner.start() {
            return self.restart_at(&mut inner, offset);
        }
        let holder = inner
            .segments
            .range(..=offset)
            .next_back()
            .map(|(b, _)| *b)
            .expect("offset above the log start lies in a segment");
        // 1. Recovery must not trust the segment being cut.
        inner.recovery_point = inner.recovery_point.min(holder);
        self.write_checkpoint(&inner)?;
        // 2. Later segments go, newest first, so no crash leaves a gap.
        let later: Vec<Offset> = inner
            .segments
            .range((Bound::Excluded(holder), Bound::Unbounded))
            .rev()
            .map(|(b, _)| *b)
            .collect();
        for base in later {
            if let Some(segment) = inner.segments.remove(&base) {
                segment.delete_files()?;
            }
        }
        checkpoint::fsync_dir(&self.dir)?;
        // 3. Cut the holder at the batch containing `offset`.
        let segment = inner
            .segments
            .get_mut(&holder)
            .expect("holder segment exists");
        let (position, new_end) = match segment.locate(offset)? {
            Some((position, base, _)) => (position, base),
            None => (segment.size, segment.next_offset),
        };
        segment.truncate_at(position, new_end, interval)?;
        segment.first_append_ms = None;
        // 4. Epochs and producer batches that began after the new end are gone.
        if inner.epochs.truncate_from(new_end) {
            inner.epochs.write(&self.dir)?;
        }
        // Rebuilt rather than trimmed: a newer producer epoch that began after the cut
        // must not outlive its batches.
        inner.producers = rebuild_producers(&inner.segments)?;
        inner.high_watermark = inner.high_watermark.min(new_end);
        self.durable.reset(new_end);
        Ok(new_end)
    }

    /// Deletes everything and restarts the log, empty, at `offset` (a follower whose log is
    /// entirely behind the leader's log start).
    pub fn reset_to(&self, offset: Offset) -> Result<Offset> {
        let _files = self.lock_files();
        let mut inner = self.write_inner();
        inner.check_usable()?;
        self.restart_at(&mut inner, offset)
    }

    fn restart_at(&self, inner: &mut Inner, offset: Offset) -> Result<Offset> {
        let bases: Vec<Offset> = inner.segments.keys().rev().copied().collect();
        for base in bases {
            if let Some(segment) = inner.segments.remove(&base) {
                segment.delete_files()?;
            }
        }
        let segment = Segment::create(&self.dir, offset, next_segment_id())?;
        checkpoint::fsync_dir(&self.dir)?;
        inner.segments.insert(offset, segment);
        inner.epochs.clear();
        inner.epochs.write(&self.dir)?;
        inner.producers = ProducerTable::default();
        inner.recovery_point = offset;
        inner.high_watermark = offset;
        self.write_checkpoint(inner)?;
        self.durable.reset(offset);
        self.durable.raise(offset);
        Ok(offset)
    }

    /// Deletes whole sealed segments past the retention time or size. Never the active one.
    /// The segments leave the map under the write lock (no read can reach them after it);
    /// their files are deleted and the directory fsynced after it is released.
    pub fn enforce_retention(&self) -> Result<RetentionOutcome> {
        let mut outcome = RetentionOutcome::default();
        let removed = {
            let mut inner = self.write_inner();
            inner.check_usable()?;
            let now = self.clock.now_ms();
            let mut size = inner.size();
            let mut removed = Vec::new();
            loop {
                if inner.segments.len() < 2 {
                    break;
                }
                let oldest = inner.segments.values().next().expect("two segments");
                let expired = self.config().retention_ms.is_some_and(|ms| {
                    oldest.max_timestamp != i64::MIN && oldest.max_timestamp < now - ms as i64
                });
                let oversize = self
                    .config()
                    .retention_bytes
                    .is_some_and(|max| size.saturating_sub(oldest.size) >= max);
                if !(expired || oversize) {
                    break;
                }
                let base = oldest.base;
                let Some(segment) = inner.segments.remove(&base) else {
                    break;
                };
                size -= segment.size;
                outcome.segments_deleted += 1;
                outcome.bytes_deleted += segment.size;
                removed.push(segment);
            }
            outcome.log_start = inner.start();
            removed
        };
        for segment in &removed {
            segment.delete_files()?;
        }
        if !removed.is_empty() {
            checkpoint::fsync_dir(&self.dir)?;
        }
        Ok(outcome)
    }

    /// The first offset still stored.
    pub fn start_offset(&self) -> Offset {
        self.read_inner().start()
    }

    /// The offset the next appended record will get.
    pub fn end_offset(&self) -> Offset {
        self.read_inner().end()
    }

    /// Everything below this offset is fsynced.
    pub fn durable_end(&self) -> Offset {
        self.durable.offset().min(self.end_offset())
    }

    pub fn size_bytes(&self) -> u64 {
        self.read_inner().size()
    }

    pub fn high_watermark(&self) -> Offset {
        self.read_inner().high_watermark
    }

    /// Sets the high watermark (clamped to the log end); persisted by [`Self::checkpoint`].
    pub fn set_high_watermark(&self, offset: Offset) {
        let mut inner = self.write_inner();
        inner.high_watermark = offset.min(inner.end());
    }

    /// Persists the recovery point and high watermark (the fsync runs outside the lock),
    /// unless the checkpoint on disk already holds them: an idle partition costs no fsync.
    pub fn checkpoint(&self) -> Result<()> {
        let _files = self.lock_files();
        let checkpoint = Self::checkpoint_of(&self.read_inner());
        if *self.written.lock().unwrap_or_else(|p| p.into_inner()) == Some(checkpoint) {
            return Ok(());
        }
        self.store_checkpoint(checkpoint)
    }

    /// Whether the checkpoint on disk holds the current recovery point and high watermark
    /// (without waiting for a roll or truncation in progress: a hint, for skipping work).
    pub fn checkpoint_is_current(&self) -> bool {
        let checkpoint = Self::checkpoint_of(&self.read_inner());
        *self.written.lock().unwrap_or_else(|p| p.into_inner()) == Some(checkpoint)
    }

    pub fn latest_epoch(&self) -> Option<LeaderEpoch> {
        self.read_inner().epochs.latest()
    }

    pub fn epochs(&self) -> Vec<(LeaderEpoch, Offset)> {
        self.read_inner().epochs.entries().to_vec()
    }

    /// For a follower asking about `epoch`: the largest epoch not above it and where it ended.
    pub fn end_offset_for_epoch(&self, epoch: LeaderEpoch) -> Option<(LeaderEpoch, Offset)> {
        let inner = self.read_inner();
        inner.epochs.end_offset_for(epoch, inner.end())
    }

    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.read_inner()
            .segments
            .values()
            .map(|s| SegmentInfo {
                base_offset: s.base,
                next_offset: s.next_offset,
                size_bytes: s.size,
                max_timestamp: (s.max_timestamp != i64::MIN).then_some(s.max_timestamp),
                index_entries: s.offset_index.entries().len(),
                time_index_entries: s.time_index.entries().len(),
                path: s.log_path().to_path_buf(),
            })
            .collect()
    }

    /// Fsyncs the log and drops its pages from the kernel's cache (for cold-read measurements
    /// and after bulk catch-up reads that should not evict hotter data).
    pub fn evict_page_cache(&self) -> Result<()> {
        let inner = self.read_inner();
        inner.active().sync()?;
        for segment in inner.segments.values() {
            segment.evict_page_cache()?;
        }
        Ok(())
    }

    /// Fsyncs everything and writes the checkpoint.
    pub fn close(self) -> Result<()> {
        let inner = self.read_inner();
        inner.check_usable()?;
        inner.active().sync()?;
        self.write_checkpoint(&inner)
    }
}

/// The segment base offsets in `dir`, ascending.
pub fn list_segments(dir: &Path) -> Result<Vec<Offset>> {
    let mut bases = Vec::new();
    let entries =
        fs::read_dir(dir).map_err(LogError::io_with(|| format!("list {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(LogError::io_with(|| format!("list {}", dir.display())))?;
        if let Some(base) = entry.file_name().to_str().and_then(segment::parse_log_name) {
            bases.push(base);
        }
    }
    bases.sort();
    Ok(bases)
}

/// Rebuilds the epoch cache from the batches themselves (the checkpoint file was lost).
fn rebuild_epoch_cache(segments: &BTreeMap<Offset, Segment>) -> Result<EpochCache> {
    let mut cache = EpochCache::default();
    for segment in segments.values() {
        let mut scanner = segment::Scanner::open(segment.log_path(), 0, segment.base)?;
        let checks = ScanChecks {
            verify_crc: true,
            epochs: None,
        };
        while let Ok(Some((_, batch))) = scanner.next_batch(checks) {
            cache.assign(batch.leader_epoch(), batch.base_offset());
        }
    }
    Ok(cache)
}

/// The idempotence fields of a batch from an idempotent producer.
fn producer_fields(batch: &RecordBatch) -> Option<ProducerBatch> {
    let producer = batch.producer_id();
    if producer.0 < 0 || batch.base_sequence().0 < 0 {
        return None;
    }
    let first_seq = batch.base_sequence().0;
    Some(ProducerBatch {
        producer,
        epoch: batch.producer_epoch(),
        first_seq,
        last_seq: crate::producer::last_seq(first_seq, batch.record_count()),
    })
}

/// Producer state rebuilt from the batches on disk (headers only). A log of many small
/// batches pays for this scan at open; a producer-state snapshot would bound it.
fn rebuild_producers(segments: &BTreeMap<Offset, Segment>) -> Result<ProducerTable> {
    let mut table = ProducerTable::default();
    for segment in segments.values() {
        let mut scanner = segment::Scanner::open(segment.log_path(), 0, segment.base)?;
        let checks = ScanChecks {
            verify_crc: false,
            epochs: None,
        };
        while scanner.position() < segment.size {
            let Ok(Some((_, batch))) = scanner.next_batch(checks) else {
                break;
            };
            if let Some(fields) = producer_fields(&batch) {
                table.record(
                    fields,
                    batch.base_offset(),
                    batch.last_offset(),
                    batch.max_timestamp(),
                );
            }
        }
    }
    Ok(table)
}
