//! `weir log inspect|verify|append`: offline tools over one partition directory.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Subcommand, ValueEnum};
use weir_log::inspect::{self, DirReport};
use weir_log::{Flusher, LogConfig, PartitionLog, SystemClock};
use weir_types::{BatchBuilder, Compression, Header, LeaderEpoch, Record, RecordBatch};

#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Dump a partition directory: checkpoints, segments, batches, offsets, CRC status.
    /// Read-only: nothing is repaired.
    Inspect {
        /// The partition directory.
        dir: PathBuf,
        /// Also print every record (key, value, headers, timestamp).
        #[arg(long)]
        records: bool,
        /// Print only segment summaries, not batches.
        #[arg(long, conflicts_with = "records")]
        summary: bool,
    },
    /// Check every batch's framing and CRC, offset continuity, epochs and indexes. Exits 1 if
    /// anything is wrong. Read-only.
    Verify {
        /// The partition directory.
        dir: PathBuf,
    },
    /// Append lines from stdin as records to a partition directory (created if missing),
    /// each batch fsynced before the next. For local experiments and debugging.
    Append {
        /// The partition directory.
        dir: PathBuf,
        /// Key for every record.
        #[arg(long)]
        key: Option<String>,
        /// A header `name=value` for every record; repeatable.
        #[arg(long = "header", value_name = "NAME=VALUE")]
        headers: Vec<String>,
        /// Records per batch.
        #[arg(long, default_value_t = 100)]
        batch_records: usize,
        /// Compression codec of each batch.
        #[arg(long, value_enum, default_value_t = Codec::None)]
        codec: Codec,
        /// Leader epoch stamped on the batches.
        #[arg(long, default_value_t = 0)]
        epoch: i32,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl From<Codec> for Compression {
    fn from(c: Codec) -> Self {
        match c {
            Codec::None => Compression::None,
            Codec::Gzip => Compression::Gzip,
            Codec::Snappy => Compression::Snappy,
            Codec::Lz4 => Compression::Lz4,
            Codec::Zstd => Compression::Zstd,
        }
    }
}

/// Returns the process exit code.
pub fn run(cmd: LogCommand) -> anyhow::Result<i32> {
    match cmd {
        LogCommand::Inspect {
            dir,
            records,
            summary,
        } => {
            let report = open_report(&dir, !summary)?;
            let mut out = std::io::stdout().lock();
            print_report(&mut out, &report, records, summary)?;
            Ok(0)
        }
        LogCommand::Verify { dir } => {
            let report = open_report(&dir, false)?;
            let mut out = std::io::stdout().lock();
            let batches: usize = report.segments.iter().map(|s| s.batch_count).sum();
            let (start, end) = offsets(&report);
            if report.problems.is_empty() {
                writeln!(
                    out,
                    "ok: {} segments, {batches} batches, offsets [{start}, {end}) verified",
                    report.segments.len()
                )?;
                Ok(0)
            } else {
                for problem in &report.problems {
                    writeln!(out, "problem: {problem}")?;
                }
                writeln!(out, "FAILED: {} problems", report.problems.len())?;
                Ok(1)
            }
        }
        LogCommand::Append {
            dir,
            key,
            headers,
            batch_records,
            codec,
            epoch,
        } => {
            if batch_records == 0 {
                bail!("--batch-records must be at least 1");
            }
            let headers = crate::data_cmd::parse_headers(&headers)?;
            append_stdin(
                &dir,
                key,
                headers,
                batch_records,
                codec.into(),
                LeaderEpoch(epoch),
            )
        }
    }
}

fn open_report(dir: &Path, keep_batches: bool) -> anyhow::Result<DirReport> {
    if !dir.is_dir() {
        bail!("{}: not a directory", dir.display());
    }
    inspect::inspect(dir, keep_batches).with_context(|| format!("inspect {}", dir.display()))
}

fn offsets(report: &DirReport) -> (i64, i64) {
    let start = report.segments.first().map_or(0, |s| s.base_offset.0);
    let end = report.segments.last().map_or(0, |s| s.next_offset.0);
    (start, end)
}

fn now_ms() -> i64 {
    use weir_log::Clock;
    SystemClock.now_ms()
}

fn append_stdin(
    dir: &Path,
    key: Option<String>,
    headers: Vec<Header>,
    batch_records: usize,
    codec: Compression,
    epoch: LeaderEpoch,
) -> anyhow::Result<i32> {
    let flusher = Flusher::spawn("cli")?;
    let log = PartitionLog::open(dir, LogConfig::default(), flusher, Arc::new(SystemClock))
        .with_context(|| format!("open {}", dir.display()))?;
    let mut builder = BatchBuilder::new(codec);
    let mut appended = 0usize;
    let mut first = None;
    let mut flush = |builder: &mut BatchBuilder| -> anyhow::Result<()> {
        if builder.is_empty() {
            return Ok(());
        }
        let batch: RecordBatch = builder.build()?;
        let info = log.append(&batch, epoch)?;
        first.get_or_insert(info.base_offset);
        appended += builder.len();
        *builder = BatchBuilder::new(codec);
        Ok(())
    };
    for line in std::io::stdin().lock().lines() {
        let line = line.context("read stdin")?;
        builder.push(Record {
            timestamp_ms: now_ms(),
            key: key.clone().map(Bytes::from),
            value: Some(Bytes::from(line)),
            headers: headers.clone(),
        });
        if builder.len() >= batch_records {
            flush(&mut builder)?;
        }
    }
    flush(&mut builder)?;
    let end = log.end_offset();
    log.close()?;
    match first {
        Some(first) => println!("appended {appended} records at offsets [{first}, {end})"),
        None => println!("appended nothing (stdin was empty); log end offset {end}"),
    }
    Ok(0)
}

fn show(bytes: Option<&Bytes>) -> String {
    match bytes {
        None => "null".into(),
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => serde_json::to_string(s).unwrap_or_default(),
            Err(_) => format!(
                "0x{}",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            ),
        },
    }
}

fn print_report(
    out: &mut impl Write,
    report: &DirReport,
    records: bool,
    summary: bool,
) -> anyhow::Result<()> {
    writeln!(out, "partition directory {}", report.dir.display())?;
    match &report.checkpoint {
        Ok(Some(cp)) => writeln!(
            out,
            "checkpoint: recovery_point={} high_watermark={}",
            cp.recovery_point, cp.high_watermark
        )?,
        Ok(None) => writeln!(out, "checkpoint: none")?,
        Err(e) => writeln!(out, "checkpoint: UNREADABLE ({e})")?,
    }
    match &report.epochs {
        Ok(Some(cache)) => {
            let list: Vec<String> = cache
                .entries()
                .iter()
                .map(|(e, s)| format!("epoch {e} from offset {s}"))
                .collect();
            writeln!(
                out,
                "leader epochs: {}",
                if list.is_empty() {
                    "none".into()
                } else {
                    list.join(", ")
                }
            )?;
        }
        Ok(None) => writeln!(out, "leader epochs: no checkpoint file")?,
        Err(e) => writeln!(out, "leader epochs: UNREADABLE ({e})")?,
    }
    for seg in &report.segments {
        writeln!(
            out,
            "segment {}  offsets [{}, {})  {} batches  {} bytes ({} valid)  index {} entries  timeindex {} entries",
            seg.path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            seg.base_offset,
            seg.next_offset,
            seg.batch_count,
            seg.file_bytes,
            seg.valid_bytes,
            seg.index_entries,
            seg.time_index_entries
        )?;
        if summary {
            continue;
        }
        for b in &seg.batches {
            let batch = &b.batch;
            let codec = batch
                .compression()
                .map(|c| c.name().to_string())
                .unwrap_or_else(|e| format!("?({e})"));
            writeln!(
                out,
                "  batch @{:<10} offsets {}..={}  epoch {}  records {}  codec {}  crc {}  timestamps {}..{}  producer {}/{} seq {}  {} bytes",
                b.position,
                batch.base_offset(),
                batch.last_offset(),
                batch.leader_epoch(),
                batch.record_count(),
                codec,
                if b.crc_ok { "ok" } else { "BAD" },
                batch.base_timestamp(),
                batch.max_timestamp(),
                batch.producer_id(),
                batch.producer_epoch(),
                batch.base_sequence(),
                batch.size_bytes()
            )?;
            if records && b.crc_ok {
                match batch.records() {
                    Ok(list) => {
                        for (offset, r) in list {
                            let headers: Vec<String> = r
                                .headers
                                .iter()
                                .map(|h| format!("{}={}", h.key, show(h.value.as_ref())))
                                .collect();
                            writeln!(
                                out,
                                "    offset {offset}  timestamp {}  key {}  value {}  headers [{}]",
                                r.timestamp_ms,
                                show(r.key.as_ref()),
                                show(r.value.as_ref()),
                                headers.join(", ")
                            )?;
                        }
                    }
                    Err(e) => writeln!(out, "    records unreadable: {e}")?,
                }
            }
        }
        if let Some(stop) = &seg.stop {
            writeln!(
                out,
                "  STOP at byte {}: {} ({} bytes not readable as batches)",
                stop.position,
                stop.reason,
                seg.file_bytes - stop.position
            )?;
        }
    }
    let (start, end) = offsets(report);
    writeln!(
        out,
        "{} segments, offsets [{start}, {end}), {} problems",
        report.segments.len(),
        report.problems.len()
    )?;
    for problem in &report.problems {
        writeln!(out, "problem: {problem}")?;
    }
    Ok(())
}
