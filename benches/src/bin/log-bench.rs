//! Load generator for the storage engine alone. For every combination of partition count and
//! record size it appends with the chosen flush policy from one writer thread per partition
//! (all partitions sharing one group-commit flusher, as on one broker disk), then reads every
//! partition back from a cold and then a warm page cache. Prints one line per case.
//!
//! `cargo run --release -p weir-benches --bin log-bench -- --help`

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use weir_log::{FlushPolicy, Flusher, LogConfig, PartitionLog, SystemClock};
use weir_types::{BatchBuilder, LeaderEpoch, Offset, Record, RecordBatch};

#[derive(Debug, Parser)]
struct Args {
    /// Partition counts to run, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    partitions: Vec<usize>,
    /// Record value sizes in bytes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1024,16384")]
    record_bytes: Vec<usize>,
    /// Target size of each appended batch in bytes (records per batch = this / record size).
    #[arg(long, default_value_t = 64 * 1024)]
    batch_bytes: usize,
    /// Writer threads per partition (concurrent appends to one partition share fsyncs too).
    #[arg(long, default_value_t = 1)]
    writers: usize,
    /// Megabytes to append per case (split across partitions).
    #[arg(long, default_value_t = 512)]
    total_mb: u64,
    /// Stop a case's append phase after this many seconds even if `total_mb` is not reached.
    #[arg(long, default_value_t = 30)]
    seconds_max: u64,
    /// `fsync` (acknowledge after fsync, the default) or `interval:<ms>` (acknowledge before).
    #[arg(long, default_value = "fsync")]
    flush: String,
    /// Directory to create the partitions under (default: a temporary directory in ./target).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

fn parse_flush(s: &str) -> anyhow::Result<FlushPolicy> {
    if s == "fsync" {
        return Ok(FlushPolicy::Fsync);
    }
    if let Some(ms) = s.strip_prefix("interval:") {
        let ms = ms
            .parse()
            .with_context(|| format!("--flush {s}: bad milliseconds"))?;
        return Ok(FlushPolicy::IntervalAckBeforeFsync { ms });
    }
    bail!("--flush {s:?}: expected `fsync` or `interval:<ms>`")
}

fn make_batch(record_bytes: usize, count: usize) -> anyhow::Result<RecordBatch> {
    let mut builder = BatchBuilder::default();
    let value = Bytes::from(
        (0..record_bytes)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    for i in 0..count {
        builder.push(Record {
            timestamp_ms: 1_700_000_000_000 + i as i64,
            key: None,
            value: Some(value.clone()),
            headers: Vec::new(),
        });
    }
    Ok(builder.build()?)
}

struct Case {
    partitions: usize,
    record_bytes: usize,
}

fn run_case(args: &Args, case: &Case, root: &Path, flush: FlushPolicy) -> anyhow::Result<()> {
    let records_per_batch = (args.batch_bytes / case.record_bytes.max(1)).max(1);
    let batch = make_batch(case.record_bytes, records_per_batch)?;
    let config = LogConfig {
        batch_bytes_max: (batch.size_bytes() as u32).max(1 << 20),
        decompressed_bytes_max: 64 << 20,
        flush,
        ..LogConfig::default()
    };
    let dir = tempfile::tempdir_in(root)?;
    let flusher = Flusher::spawn("bench")?;
    let logs: Vec<Arc<PartitionLog>> = (0..case.partitions)
        .map(|p| {
            PartitionLog::open(
                &dir.path().join(format!("p{p}")),
                config.clone(),
                Arc::clone(&flusher),
                Arc::new(SystemClock),
            )
            .map(Arc::new)
        })
        .collect::<Result<_, _>>()?;

    let total_bytes = args.total_mb << 20;
    let writers = case.partitions * args.writers;
    let appends_per_writer = (total_bytes / batch.size_bytes() as u64 / writers as u64).max(1);
    let deadline = Instant::now() + Duration::from_secs(args.seconds_max);
    let started = Instant::now();
    let results: Vec<anyhow::Result<(u64, Histogram<u64>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let log = Arc::clone(&logs[w % case.partitions]);
                let batch = batch.clone();
                s.spawn(move || -> anyhow::Result<(u64, Histogram<u64>)> {
                    let mut hist = Histogram::<u64>::new(3)?;
                    let mut done = 0u64;
                    while done < appends_per_writer && Instant::now() < deadline {
                        let t = Instant::now();
                        log.append(&batch, LeaderEpoch(0))?;
                        hist.record(t.elapsed().as_micros() as u64)?;
                        done += 1;
                    }
                    Ok((done, hist))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("writer panicked")))
            })
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut hist = Histogram::<u64>::new(3)?;
    let mut appends = 0u64;
    for r in results {
        let (n, h) = r?;
        appends += n;
        hist.add(h)?;
    }
    let bytes = appends * batch.size_bytes() as u64;
    let records = appends * records_per_batch as u64;
    let stats = flusher.stats();
    println!(
        "append  partitions {:>3}  record {:>5} B  batch {:>6} B  {:>8.1} MB/s  {:>10.0} records/s  latency us p50 {:>6} p99 {:>6} p999 {:>6}  fsync rounds {} ({:.1} appends/round, {:.1} files/round)",
        case.partitions,
        case.record_bytes,
        batch.size_bytes(),
        bytes as f64 / elapsed / 1e6,
        records as f64 / elapsed,
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        stats.rounds,
        appends as f64 / stats.rounds.max(1) as f64,
        stats.fsyncs as f64 / stats.rounds.max(1) as f64,
    );

    for (label, evict) in [("cold", true), ("warm", false)] {
        if evict {
            for log in &logs {
                log.evict_page_cache()?;
            }
        }
        let started = Instant::now();
        let mut read_bytes = 0u64;
        for log in &logs {
            let mut next = Offset::ZERO;
            let end = log.end_offset();
            while next < end {
                let batches = log.read(next, 1 << 20, None)?;
                let Some(last) = batches.last() else { break };
                next = last.next_offset();
                read_bytes += batches.iter().map(|b| b.size_bytes() as u64).sum::<u64>();
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "read    partitions {:>3}  record {:>5} B  {label} cache  {:>8.1} MB/s  ({} MB read)",
            case.partitions,
            case.record_bytes,
            read_bytes as f64 / elapsed / 1e6,
            read_bytes >> 20
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let flush = parse_flush(&args.flush)?;
    if args.partitions.contains(&0) || args.record_bytes.contains(&0) || args.writers == 0 {
        bail!("--partitions, --record-bytes and --writers must be positive");
    }
    let root = match &args.dir {
        Some(d) => d.clone(),
        None => std::path::PathBuf::from("target/log-bench"),
    };
    std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
    println!(
        "log-bench: flush {}  batch ~{} B  {} writer(s)/partition  {} MB per case  dir {}",
        args.flush,
        args.batch_bytes,
        args.writers,
        args.total_mb,
        root.display()
    );
    for &partitions in &args.partitions {
        for &record_bytes in &args.record_bytes {
            run_case(
                &args,
                &Case {
                    partitions,
                    record_bytes,
                },
                &root,
                flush,
            )?;
        }
    }
    Ok(())
}
