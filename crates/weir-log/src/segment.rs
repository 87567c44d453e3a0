//! One segment of a partition's log: `<base offset, 20 digits>.log` with its `.index` and
//! `.timeindex`. Batches are appended at the end and read with positioned reads.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use weir_types::batch::{self, HEADER_LEN, LOG_OVERHEAD};
use weir_types::{Offset, RecordBatch};

use crate::checkpoint::EpochCache;
use crate::error::{LogError, Result};
use crate::index::{self, IndexFile, OffsetEntry, TimeEntry};

/// Pages leave the cached tail in steps of at least this much: one `posix_fadvise` per step,
/// not per append.
pub const UNCACHE_STEP_BYTES: u64 = 1 << 20;

/// Asks the kernel to drop `file`'s clean cached pages in `range` (an empty range drops
/// nothing). Dirty pages are not dropped (the kernel starts writing them back), so callers
/// pass ranges that are already fsynced.
pub fn drop_cached(file: &File, range: Range<u64>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if range.is_empty() {
        // a length of 0 would mean "to the end of the file" to posix_fadvise
        return Ok(());
    }
    let too_far = || std::io::Error::other("page cache range past the largest file offset");
    let start = libc::off_t::try_from(range.start).map_err(|_| too_far())?;
    let len =
        libc::off_t::try_from(range.end.saturating_sub(range.start)).map_err(|_| too_far())?;
    // SAFETY: the descriptor is owned by `file`, which outlives this call; posix_fadvise only
    // reads its integer arguments and touches no Rust memory.
    #[allow(unsafe_code)]
    let rc =
        unsafe { libc::posix_fadvise(file.as_raw_fd(), start, len, libc::POSIX_FADV_DONTNEED) };
    match rc {
        0 => Ok(()),
        rc => Err(std::io::Error::from_raw_os_error(rc)),
    }
}

/// Writes `parts` one after the other at `position`, in one `pwritev` when the kernel takes
/// it all (a batch's rewritten prefix and its body: one system call per append, not two).
fn write_all_at(file: &File, parts: [&[u8]; 2], mut position: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let [mut first, mut second] = parts;
    while !first.is_empty() || !second.is_empty() {
        let iov = [
            libc::iovec {
                iov_base: first.as_ptr() as *mut libc::c_void,
                iov_len: first.len(),
            },
            libc::iovec {
                iov_base: second.as_ptr() as *mut libc::c_void,
                iov_len: second.len(),
            },
        ];
        let offset = libc::off_t::try_from(position).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "position past off_t")
        })?;
        // SAFETY: both iovecs point into slices borrowed for this call (`iov_len` is their
        // length, zero for an empty one); the kernel only reads them. `file` owns the open
        // descriptor for the duration of the call.
        #[allow(unsafe_code)]
        let n = unsafe { libc::pwritev(file.as_raw_fd(), iov.as_ptr(), 2, offset) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut n = n as usize;
        position += n as u64;
        let from_first = n.min(first.len());
        first = &first[from_first..];
        n -= from_first;
        second = &second[n.min(second.len())..];
    }
    Ok(())
}

pub const LOG_SUFFIX: &str = "log";
pub const INDEX_SUFFIX: &str = "index";
pub const TIME_INDEX_SUFFIX: &str = "timeindex";

/// Bytes of a batch header needed to know its last offset.
const HEADER_PREFIX_FOR_LAST: usize = 27;

pub fn file_name(base: Offset, suffix: &str) -> String {
    format!("{:020}.{suffix}", base.0)
}

/// Parses `00000000000000000042.log` into offset 42.
pub fn parse_log_name(name: &str) -> Option<Offset> {
    let stem = name.strip_suffix(".log")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok().map(Offset)
}

/// Why a sequential scan stopped before the end of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanStop {
    pub position: u64,
    pub reason: String,
}

/// What a scan checks beyond framing.
#[derive(Debug, Clone, Copy)]
pub struct ScanChecks<'a> {
    pub verify_crc: bool,
    /// Each batch's epoch must be the one the cache assigns to its base offset.
    pub epochs: Option<&'a EpochCache>,
}

/// Walks the batches of a log file from a position, checking each as it goes.
pub struct Scanner {
    reader: BufReader<File>,
    position: u64,
    file_len: u64,
    expected: Offset,
}

impl Scanner {
    pub fn open(path: &Path, position: u64, expected: Offset) -> Result<Scanner> {
        let mut file =
            File::open(path).map_err(LogError::io_with(|| format!("open {}", path.display())))?;
        let file_len = file
            .metadata()
            .map_err(LogError::io_with(|| format!("stat {}", path.display())))?
            .len();
        file.seek(SeekFrom::Start(position))
            .map_err(LogError::io_with(|| format!("seek {}", path.display())))?;
        Ok(Scanner {
            reader: BufReader::with_capacity(256 * 1024, file),
            position,
            file_len,
            expected,
        })
    }

    pub fn position(&self) -> u64 {
        self.position
    }

    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The next batch and its position; `Ok(None)` at a clean end of file; `Err(stop)` where
    /// the data stops being a valid continuation of the log.
    pub fn next_batch(
        &mut self,
        checks: ScanChecks<'_>,
    ) -> std::result::Result<Option<(u64, RecordBatch)>, ScanStop> {
        let position = self.position;
        let stop = |reason: String| ScanStop { position, reason };
        let remaining = self.file_len - position;
        if remaining == 0 {
            return Ok(None);
        }
        if remaining < LOG_OVERHEAD as u64 {
            return Err(stop(format!(
                "{remaining} trailing bytes, too few for a batch"
            )));
        }
        let mut prefix = [0u8; LOG_OVERHEAD];
        self.reader
            .read_exact(&mut prefix)
            .map_err(|e| stop(format!("read: {e}")))?;
        let Some((_, length)) = batch::peek_prefix(&prefix) else {
            return Err(stop("short prefix".into()));
        };
        if length < (HEADER_LEN - LOG_OVERHEAD) as i32 {
            return Err(stop(format!(
                "batch_length {length} is below the header size"
            )));
        }
        let total = LOG_OVERHEAD as u64 + length as u64;
        if total > remaining {
            return Err(stop(format!(
                "batch of {total} bytes runs past the end of the file ({remaining} left)"
            )));
        }
        let mut buf = vec![0u8; total as usize];
        buf[..LOG_OVERHEAD].copy_from_slice(&prefix);
        self.reader
            .read_exact(&mut buf[LOG_OVERHEAD..])
            .map_err(|e| stop(format!("read: {e}")))?;
        let batch = RecordBatch::from_bytes(Bytes::from(buf)).map_err(|e| stop(e.to_string()))?;
        if batch.base_offset() != self.expected {
            return Err(stop(format!(
                "batch starts at offset {}, expected {}",
                batch.base_offset(),
                self.expected
            )));
        }
        if batch.last_offset_delta() < 0 || batch.record_count() != batch.last_offset_delta() + 1 {
            return Err(stop(format!(
                "record_count {} disagrees with last_offset_delta {}",
                batch.record_count(),
                batch.last_offset_delta()
            )));
        }
        if checks.verify_crc {
            batch.verify_crc().map_err(|e| stop(e.to_string()))?;
        }
        if let Some(epochs) = checks.epochs {
            let expected = epochs.epoch_at(batch.base_offset());
            if expected != Some(batch.leader_epoch()) {
                return Err(stop(format!(
                    "leader epoch {} does not match the epoch cache ({expected:?})",
                    batch.leader_epoch()
                )));
            }
        }
        self.position += total;
        self.expected = batch.next_offset();
        Ok(Some((position, batch)))
    }
}

/// Running state for sparse index insertion, identical for appends and rebuilds.
#[derive(Debug, Clone, Copy)]
struct IndexCursor {
    bytes_since_entry: u64,
    /// The first batch after a resume point already has its entry.
    skip_next: bool,
}

#[derive(Debug)]
pub struct Segment {
    pub base: Offset,
    /// Unique within the process; names the file to the flusher.
    pub id: u64,
    log_path: PathBuf,
    pub file: Arc<File>,
    /// Bytes of valid batches.
    pub size: u64,
    /// The offset after the last batch (`base` when empty).
    pub next_offset: Offset,
    /// Newest timestamp in the segment; `i64::MIN` when empty.
    pub max_timestamp: i64,
    pub offset_index: IndexFile<OffsetEntry>,
    pub time_index: IndexFile<TimeEntry>,
    cursor: IndexCursor,
    /// When this process first appended to the segment (for rolling by age).
    pub first_append_ms: Option<i64>,
    /// Bytes before this position were handed to [`drop_cached`] (or never needed to be).
    uncached_to: u64,
}

impl Segment {
    fn open_files(dir: &Path, base: Offset, id: u64, truncate: bool) -> Result<Segment> {
        let log_path = dir.join(file_name(base, LOG_SUFFIX));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(truncate)
            .open(&log_path)
            .map_err(LogError::io_with(|| format!("open {}", log_path.display())))?;
        let size = file
            .metadata()
            .map_err(LogError::io_with(|| format!("stat {}", log_path.display())))?
            .len();
        let index_path = dir.join(file_name(base, INDEX_SUFFIX));
        let time_path = dir.join(file_name(base, TIME_INDEX_SUFFIX));
        if truncate {
            for path in [&index_path, &time_path] {
                match fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(LogError::io_with(|| format!("remove {}", path.display()))(
                            e,
                        ));
                    }
                }
            }
        }
        Ok(Segment {
            base,
            id,
            file: Arc::new(file),
            size,
            next_offset: base,
            max_timestamp: i64::MIN,
            offset_index: IndexFile::open(&index_path)?,
            time_index: IndexFile::open(&time_path)?,
            log_path,
            cursor: IndexCursor {
                bytes_since_entry: 0,
                skip_next: false,
            },
            first_append_ms: None,
            uncached_to: 0,
        })
    }

    /// Creates an empty segment (replacing any leftover files of the same name).
    pub fn create(dir: &Path, base: Offset, id: u64) -> Result<Segment> {
        Self::open_files(dir, base, id, true)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    fn relative(&self, offset: Offset) -> u32 {
        (offset.0 - self.base.0).clamp(0, i64::from(u32::MAX)) as u32
    }

    /// Adds index entries for a batch about to be (or already) stored at `position`.
    fn index_batch(
        &mut self,
        position: u64,
        base: Offset,
        max_timestamp: i64,
        size: u64,
        interval: u32,
    ) -> Result<()> {
        let relative = self.relative(base);
        self.max_timestamp = self.max_timestamp.max(max_timestamp);
        if self.cursor.skip_next {
            self.cursor.skip_next = false;
        } else if self.cursor.bytes_since_entry >= u64::from(interval) {
            self.offset_index.push(OffsetEntry {
                relative,
                position: position as u32,
            });
            let grew = self
                .time_index
                .entries()
                .last()
                .is_none_or(|last| last.timestamp < self.max_timestamp);
            if grew {
                self.time_index.push(TimeEntry {
                    timestamp: self.max_timestamp,
                    relative,
                });
            }
            // both indexes' files move together, so after a crash they end at the same point
            if self.offset_index.unwritten() >= index::FLUSH_EVERY {
                self.offset_index.flush()?;
                self.time_index.flush()?;
            }
            self.cursor.bytes_since_entry = 0;
        }
        self.cursor.bytes_since_entry += size;
        Ok(())
    }

    /// Writes a batch at the end with `prefix` replacing its first 16 bytes.
    pub fn append(
        &mut self,
        batch: &RecordBatch,
        prefix: &[u8; 16],
        interval: u32,
        now_ms: i64,
    ) -> Result<()> {
        let position = self.size;
        let bytes = batch.as_bytes();
        let write = write_all_at(&self.file, [prefix, &bytes[16..]], position);
        if let Err(e) = write {
            // Take the partial batch back off so the file matches memory; if even that fails
            // the caller poisons the log.
            self.file.set_len(position).map_err(LogError::io_with(|| {
                format!("cut partial write in {}", self.log_path.display())
            }))?;
            return Err(LogError::io_with(|| {
                format!("append to {}", self.log_path.display())
            })(e));
        }
        let base = Offset(i64::from_be_bytes([
            prefix[0], prefix[1], prefix[2], prefix[3], prefix[4], prefix[5], prefix[6], prefix[7],
        ]));
        self.index_batch(
            position,
            base,
            batch.max_timestamp(),
            bytes.len() as u64,
            interval,
        )?;
        self.size = position + bytes.len() as u64;
        self.next_offset = base.plus(i64::from(batch.last_offset_delta()) + 1);
        self.first_append_ms.get_or_insert(now_ms);
        Ok(())
    }

    /// Scans from the last offset-index entry (or from the start when `rebuild`), adding index
    /// entries, and sets `size`, `next_offset` and `max_timestamp`. Returns where the valid
    /// data ends and, if the scan stopped early, why.
    pub fn scan_and_index(
        &mut self,
        rebuild: bool,
        checks: ScanChecks<'_>,
        interval: u32,
    ) -> Result<Option<ScanStop>> {
        let file_len = self
            .file
            .metadata()
            .map_err(LogError::io_with(|| {
                format!("stat {}", self.log_path.display())
            }))?
            .len();
        let resume = if rebuild {
            None
        } else {
            self.resume_point(file_len)?
        };
        let (position, expected) = match resume {
            Some((entry, ts)) => {
                self.cursor = IndexCursor {
                    bytes_since_entry: 0,
                    skip_next: true,
                };
                self.max_timestamp = ts;
                (
                    u64::from(entry.position),
                    self.base.plus(i64::from(entry.relative)),
                )
            }
            None => {
                self.offset_index.truncate_entries(0)?;
                self.time_index.truncate_entries(0)?;
                self.cursor = IndexCursor {
                    bytes_since_entry: 0,
                    skip_next: false,
                };
                self.max_timestamp = i64::MIN;
                (0, self.base)
            }
        };
        let mut scanner = Scanner::open(&self.log_path, position, expected)?;
        let mut next_offset = expected;
        let stop = loop {
            match scanner.next_batch(checks) {
                Ok(Some((pos, batch))) => {
                    self.index_batch(
                        pos,
                        batch.base_offset(),
                        batch.max_timestamp(),
                        batch.size_bytes() as u64,
                        interval,
                    )?;
                    next_offset = batch.next_offset();
                }
                Ok(None) => break None,
                Err(stop) => break Some(stop),
            }
        };
        self.size = scanner.position();
        self.uncached_to = self.uncached_to.min(self.size);
        self.next_offset = next_offset;
        Ok(stop)
    }

    /// The last offset-index entry if the loaded indexes agree with the file, with the running
    /// maximum timestamp at that point; `None` means rebuild from the start.
    fn resume_point(&mut self, file_len: u64) -> Result<Option<(OffsetEntry, i64)>> {
        let entries = self.offset_index.entries();
        let Some(&last) = entries.last() else {
            return Ok(None);
        };
        let positions_ok = entries.windows(2).all(|w| w[0].position < w[1].position)
            && u64::from(last.position) < file_len;
        let last_time = self.time_index.entries().last().copied();
        let time_ok = last_time.is_some_and(|t| t.relative <= last.relative);
        if !positions_ok || !time_ok {
            return Ok(None);
        }
        // The entry must point at the start of the batch with that base offset.
        let mut prefix = [0u8; LOG_OVERHEAD];
        if self
            .file
            .read_exact_at(&mut prefix, u64::from(last.position))
            .is_err()
        {
            return Ok(None);
        }
        match batch::peek_prefix(&prefix) {
            Some((base, _)) if base == self.base.plus(i64::from(last.relative)) => {}
            _ => return Ok(None),
        }
        Ok(last_time.map(|t| (last, t.timestamp)))
    }

    /// Cuts the file (and indexes) at byte `position`, which must be a batch boundary, and
    /// fsyncs it.
    pub fn truncate_at(&mut self, position: u64, next_offset: Offset, interval: u32) -> Result<()> {
        self.file.set_len(position).map_err(LogError::io_with(|| {
            format!("truncate {}", self.log_path.display())
        }))?;
        let covered = weir_faults::journal::before_sync(&self.file);
        self.file.sync_all().map_err(LogError::io_with(|| {
            format!("fsync {}", self.log_path.display())
        }))?;
        covered.synced();
        let relative = self.relative(next_offset);
        self.offset_index.truncate_from_relative(relative)?;
        self.time_index.truncate_from_relative(relative)?;
        self.size = position;
        self.uncached_to = self.uncached_to.min(position);
        self.next_offset = next_offset;
        // Recompute what the remaining entries imply; cheap relative to a truncation.
        self.scan_and_index(
            false,
            ScanChecks {
                verify_crc: false,
                epochs: None,
            },
            interval,
        )
        .map(|_| ())
    }

    /// Makes the segment's data and indexes durable; called when it is sealed.
    pub fn sync(&self) -> Result<()> {
        let covered = weir_faults::journal::before_sync(&self.file);
        self.file.sync_data().map_err(LogError::io_with(|| {
            format!("fsync {}", self.log_path.display())
        }))?;
        covered.synced();
        self.offset_index.sync()?;
        self.time_index.sync()
    }

    /// Asks the kernel to drop this segment's clean cached pages (after they are fsynced), so
    /// the next reads come from the disk.
    pub fn evict_page_cache(&self) -> Result<()> {
        drop_cached(&self.file, 0..self.size).map_err(LogError::io_with(|| {
            format!("fadvise {}", self.log_path.display())
        }))
    }

    /// The bytes that fell out of the last `keep` with the latest appends, once there are at
    /// least [`UNCACHE_STEP_BYTES`] of them: to drop from the page cache after the fsync that
    /// covers them ([`drop_cached`]).
    pub fn take_uncacheable(&mut self, keep: u64) -> Option<Range<u64>> {
        let to = self.size.saturating_sub(keep);
        if to < self.uncached_to.saturating_add(UNCACHE_STEP_BYTES) {
            return None;
        }
        let range = self.uncached_to..to;
        self.uncached_to = to;
        Some(range)
    }

    pub fn delete_files(&self) -> Result<()> {
        for path in [
            self.log_path.clone(),
            self.offset_index.path().to_path_buf(),
            self.time_index.path().to_path_buf(),
        ] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(LogError::io_with(|| format!("remove {}", path.display()))(
                        e,
                    ));
                }
            }
        }
        Ok(())
    }

    fn corruption(&self, position: u64, reason: impl Into<String>) -> LogError {
        LogError::Corruption {
            path: self.log_path.clone(),
            position,
            reason: reason.into(),
        }
    }

    /// At most how many bytes of this segment lie at or after `offset` (from the index entry
    /// at or before it, so never fewer than the truth); `None` if `offset` is not in it.
    pub fn bytes_from(&self, offset: Offset) -> Option<u64> {
        if offset < self.base || offset >= self.next_offset {
            return None;
        }
        let floor = self
            .offset_index
            .floor(self.relative(offset))
            .map_or(0, |e| u64::from(e.position));
        Some(self.size.saturating_sub(floor))
    }

    /// Whether the batch holding `offset` (or the next one to be written) starts in the part
    /// of this segment kept in the page cache: judged from the sparse index, without I/O, and
    /// `false` when unsure.
    pub fn in_cached_tail(&self, offset: Offset) -> bool {
        if offset < self.base || offset > self.next_offset {
            return false;
        }
        let floor = self
            .offset_index
            .floor(self.relative(offset))
            .map_or(0, |e| u64::from(e.position));
        floor >= self.uncached_to
    }

    /// The position of the batch holding `offset` and that batch's base and last offsets.
    /// `None` if the segment has no such batch.
    pub fn locate(&self, offset: Offset) -> Result<Option<(u64, Offset, Offset)>> {
        if offset < self.base || offset >= self.next_offset {
            return Ok(None);
        }
        let mut position = self
            .offset_index
            .floor(self.relative(offset))
            .map_or(0, |e| u64::from(e.position));
        let mut header = [0u8; HEADER_PREFIX_FOR_LAST];
        while position < self.size {
            self.file
                .read_exact_at(&mut header, position)
                .map_err(LogError::io_with(|| {
                    format!("read {}", self.log_path.display())
                }))?;
            let (base, length) = batch::peek_prefix(&header)
                .ok_or_else(|| self.corruption(position, "short header"))?;
            let delta = i32::from_be_bytes([header[23], header[24], header[25], header[26]]);
            let last = base.plus(i64::from(delta));
            if length < (HEADER_LEN - LOG_OVERHEAD) as i32 || delta < 0 {
                return Err(self.corruption(position, "bad batch header"));
            }
            if last >= offset {
                return Ok(Some((position, base, last)));
            }
            position += LOG_OVERHEAD as u64 + length as u64;
        }
        Ok(None)
    }

    /// Batches holding offsets from `from` (the first may start before it), whole, up to
    /// about `max_bytes` (always at least one batch), none reaching `until` or beyond.
    /// With `at_least_one` false, a first batch larger than `max_bytes` is not returned.
    pub fn read(
        &self,
        from: Offset,
        max_bytes: usize,
        until: Offset,
        at_least_one: bool,
    ) -> Result<Vec<RecordBatch>> {
        let Some((start, _, last)) = self.locate(from)? else {
            return Ok(Vec::new());
        };
        if last >= until {
            return Ok(Vec::new());
        }
        let mut prefix = [0u8; LOG_OVERHEAD];
        self.file
            .read_exact_at(&mut prefix, start)
            .map_err(LogError::io_with(|| {
                format!("read {}", self.log_path.display())
            }))?;
        let first_len = batch::peek_prefix(&prefix).map_or(0, |(_, l)| l as usize + LOG_OVERHEAD);
        if !at_least_one && first_len > max_bytes {
            return Ok(Vec::new());
        }
        let want = (max_bytes.max(first_len) as u64).min(self.size - start) as usize;
        let mut buf = vec![0u8; want];
        self.file
            .read_exact_at(&mut buf, start)
            .map_err(LogError::io_with(|| {
                format!("read {}", self.log_path.display())
            }))?;
        let buf = Bytes::from(buf);
        let mut out = Vec::new();
        let mut at = 0usize;
        while at < buf.len() {
            let Some((_, length)) = batch::peek_prefix(&buf[at..]) else {
                break;
            };
            let end = at + LOG_OVERHEAD + length.max(0) as usize;
            if end > buf.len() {
                break;
            }
            let position = start + at as u64;
            let batch = RecordBatch::from_bytes(buf.slice(at..end))
                .map_err(|e| self.corruption(position, e.to_string()))?;
            if batch.last_offset() >= until {
                break;
            }
            batch
                .verify_crc()
                .map_err(|e| self.corruption(position, e.to_string()))?;
            out.push(batch);
            at = end;
        }
        if out.is_empty() && first_len > 0 && last < until {
            return Err(self.corruption(start, "batch could not be read whole"));
        }
        Ok(out)
    }

    /// The first record at or after `timestamp` in this segment, as `(offset, timestamp)`.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(Offset, i64)>> {
        if self.max_timestamp < timestamp {
            return Ok(None);
        }
        let start_relative = self
            .time_index
            .last_before(timestamp)
            .map_or(0, |e| e.relative);
        let position = self
            .offset_index
            .floor(start_relative)
            .map_or(0, |e| u64::from(e.position));
        let expected = match self.locate_at(position)? {
            Some(base) => base,
            None => return Ok(None),
        };
        let mut scanner = Scanner::open(&self.log_path, position, expected)?;
        let checks = ScanChecks {
            verify_crc: true,
            epochs: None,
        };
        while scanner.position() < self.size {
            let batch = match scanner.next_batch(checks) {
                Ok(Some((_, batch))) => batch,
                Ok(None) => break,
                Err(stop) => return Err(self.corruption(stop.position, stop.reason)),
            };
            if batch.max_timestamp() < timestamp {
                continue;
            }
            let records = batch
                .records()
                .map_err(|e| self.corruption(scanner.position(), e.to_string()))?;
            if let Some((offset, record)) = records
                .into_iter()
                .find(|(_, r)| r.timestamp_ms >= timestamp)
            {
                return Ok(Some((offset, record.timestamp_ms)));
            }
        }
        Ok(None)
    }

    fn locate_at(&self, position: u64) -> Result<Option<Offset>> {
        if position >= self.size {
            return Ok(None);
        }
        let mut prefix = [0u8; LOG_OVERHEAD];
        self.file
            .read_exact_at(&mut prefix, position)
            .map_err(LogError::io_with(|| {
                format!("read {}", self.log_path.display())
            }))?;
        Ok(batch::peek_prefix(&prefix).map(|(base, _)| base))
    }

    /// Opens an existing segment's files without checking them (recovery does that).
    pub fn open(dir: &Path, base: Offset, id: u64) -> Result<Segment> {
        Self::open_files(dir, base, id, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_parts_are_written_back_to_back_at_the_position() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.log");
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        file.write_all_at(b"0123456789", 0).expect("write");
        write_all_at(&file, [b"ab", b"cdef"], 3).expect("pwritev");
        write_all_at(&file, [b"XY", b""], 12).expect("pwritev, empty second part");
        let body = vec![7u8; 300_000];
        write_all_at(&file, [b"", &body], 14).expect("pwritev, empty first part");
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(&bytes[..14], b"012abcdef9\0\0XY");
        assert_eq!(bytes.len(), 14 + body.len());
        assert!(bytes[14..].iter().all(|&b| b == 7));
        // a read-only descriptor: the kernel's error comes back, nothing is retried forever
        let read_only = File::open(&path).expect("open");
        assert!(write_all_at(&read_only, [b"a", b"b"], 0).is_err());
    }
}
