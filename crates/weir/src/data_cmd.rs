//! `weir produce` and `weir consume`: records from lines and back, through the partition
//! leaders.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use weir_client::{
    Acks, Consumer, ConsumerConfig, ConsumerRecord, GroupConsumer, GroupConsumerConfig,
    OffsetReset, Producer, ProducerConfig, RebalanceListener, SeekTo, TopicPartition,
};
use weir_proto::call::parse_bootstrap;
use weir_types::{Header, Record};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AcksArg {
    None,
    Leader,
    All,
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    topic: String,
    /// Send every record to this partition (default: by key hash, or round robin).
    #[arg(long)]
    partition: Option<u32>,
    /// Key for every record.
    #[arg(long)]
    key: Option<String>,
    /// Header `name=value` for every record; repeatable.
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// Read lines from this file instead of stdin.
    #[arg(long)]
    file: Option<PathBuf>,
    /// When the broker answers: none, leader (fsynced on the leader), all (every in-sync replica).
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    acks: AcksArg,
    /// Send batches without a producer id: a retried batch could then be written twice, so
    /// failures that may have been applied are reported instead of retried.
    #[arg(long)]
    no_idempotence: bool,
    /// Give up on a record after this long, retries included.
    #[arg(long, default_value_t = 30_000)]
    delivery_timeout_ms: u64,
    /// Controller addresses, comma separated.
    #[arg(long, env = "WEIR_BOOTSTRAP", default_value = "127.0.0.1:9093")]
    bootstrap: String,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// The value as text, one record per line.
    Value,
    /// One JSON object per record: partition, offset, timestamp, key, value, headers.
    Json,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic to read; with --group, several may be given, comma separated.
    topic: String,
    /// Read only this partition (default: all).
    #[arg(long, conflicts_with = "group")]
    partition: Option<u32>,
    /// Start at the first retained record (default: only records produced from now on). With
    /// --group: where partitions the group never committed start.
    #[arg(long, conflicts_with = "offset")]
    from_beginning: bool,
    /// Read as a member of this consumer group: the group shares the topic's partitions among
    /// its members and resumes from committed offsets.
    #[arg(long)]
    group: Option<String>,
    /// With --group: a static member id that survives restarts (no rebalance on restart).
    #[arg(long, requires = "group")]
    instance_id: Option<String>,
    /// With --group: leave the group if no heartbeat reaches the controller for this long.
    #[arg(long, requires = "group", default_value_t = 10_000)]
    session_timeout_ms: u64,
    /// With --group: commit positions this often (and on every revocation and at exit).
    #[arg(long, requires = "group", default_value_t = 5_000)]
    auto_commit_ms: u64,
    /// Start at this offset (with --partition).
    #[arg(long, requires = "partition")]
    offset: Option<i64>,
    /// Exit after printing this many records.
    #[arg(long)]
    max_messages: Option<u64>,
    /// Exit when no record arrived for this many milliseconds.
    #[arg(long)]
    idle_exit_ms: Option<u64>,
    #[arg(long, value_enum, default_value_t = Format::Value)]
    format: Format,
    /// Controller addresses, comma separated.
    #[arg(long, env = "WEIR_BOOTSTRAP", default_value = "127.0.0.1:9093")]
    bootstrap: String,
}

/// `--header NAME=VALUE` flags as record headers.
pub(crate) fn parse_headers(raw: &[String]) -> anyhow::Result<Vec<Header>> {
    raw.iter()
        .map(|h| match h.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok(Header {
                key: k.to_string(),
                value: Some(Bytes::from(v.to_string())),
            }),
            _ => bail!("--header {h:?}: expected NAME=VALUE"),
        })
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub async fn run_produce(args: ProduceArgs) -> anyhow::Result<i32> {
    let bootstrap = parse_bootstrap(&args.bootstrap)?;
    let headers = parse_headers(&args.headers)?;
    let mut config = ProducerConfig::new(bootstrap);
    config.acks = match args.acks {
        AcksArg::None => Acks::None,
        AcksArg::Leader => Acks::Leader,
        AcksArg::All => Acks::All,
    };
    config.idempotence = !args.no_idempotence;
    config.delivery_timeout = Duration::from_millis(args.delivery_timeout_ms);
    let producer = Producer::new(config)?;
    let input: Box<dyn BufRead> = match &args.file {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("--file {}", path.display()))?,
        )),
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    let mut pending = Vec::new();
    for line in input.lines() {
        let line = line.context("read input")?;
        let record = Record {
            timestamp_ms: now_ms(),
            key: args.key.clone().map(Bytes::from),
            value: Some(Bytes::from(line)),
            headers: headers.clone(),
        };
        pending.push(producer.send(&args.topic, args.partition, record).await?);
    }
    producer.flush().await;
    if pending.is_empty() {
        println!("no input: nothing produced");
        return Ok(0);
    }
    // per partition: how many, and the offset range
    let mut placed: BTreeMap<u32, (u64, Option<(i64, i64)>)> = BTreeMap::new();
    for future in pending {
        let meta = future.await?;
        let entry = placed.entry(meta.partition).or_insert((0, None));
        entry.0 += 1;
        if let Some(o) = meta.offset {
            entry.1 = Some(
                entry
                    .1
                    .map_or((o.0, o.0), |(lo, hi)| (lo.min(o.0), hi.max(o.0))),
            );
        }
    }
    for (partition, (n, range)) in placed {
        match range {
            Some((lo, hi)) => println!(
                "produced {n} records to {}/{partition} at offsets {lo}..={hi}",
                args.topic
            ),
            None => println!("sent {n} records to {}/{partition} (acks=none)", args.topic),
        }
    }
    Ok(0)
}

fn text(b: &Option<Bytes>) -> serde_json::Value {
    match b {
        None => serde_json::Value::Null,
        Some(b) => serde_json::Value::String(String::from_utf8_lossy(b).into_owned()),
    }
}

fn print_record(out: &mut impl Write, format: Format, r: &ConsumerRecord) -> std::io::Result<()> {
    match format {
        Format::Value => {
            out.write_all(r.value.as_deref().unwrap_or_default())?;
            out.write_all(b"\n")
        }
        Format::Json => {
            let headers: serde_json::Map<String, serde_json::Value> = r
                .headers
                .iter()
                .map(|h| (h.key.clone(), text(&h.value)))
                .collect();
            let line = serde_json::json!({
                "topic": r.topic,
                "partition": r.partition,
                "offset": r.offset.0,
                "timestamp": r.timestamp_ms,
                "key": text(&r.key),
                "value": text(&r.value),
                "headers": headers,
            });
            writeln!(out, "{line}")
        }
    }
}

/// Reports assignment changes on stderr.
struct PrintRebalances;

impl RebalanceListener for PrintRebalances {
    fn on_assigned(&mut self, partitions: &[TopicPartition]) {
        eprintln!("assigned {}", list(partitions));
    }
    fn on_revoked(&mut self, partitions: &[TopicPartition]) {
        eprintln!("revoked {}", list(partitions));
    }
    fn on_lost(&mut self, partitions: &[TopicPartition]) {
        eprintln!("lost {}", list(partitions));
    }
}

fn list(partitions: &[TopicPartition]) -> String {
    partitions
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

async fn run_group_consume(args: ConsumeArgs, group: String) -> anyhow::Result<i32> {
    let bootstrap = parse_bootstrap(&args.bootstrap)?;
    let topics: Vec<&str> = args
        .topic
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let mut config = GroupConsumerConfig::new(bootstrap, &group, &topics);
    config.instance_id = args.instance_id.clone();
    config.client_id = "weir-cli".into();
    config.session_timeout = Duration::from_millis(args.session_timeout_ms);
    config.auto_commit = Some(Duration::from_millis(args.auto_commit_ms.max(1)));
    config.offset_reset = if args.from_beginning {
        OffsetReset::Earliest
    } else {
        OffsetReset::Latest
    };
    let mut consumer = GroupConsumer::new(config)?;
    consumer.set_listener(Box::new(PrintRebalances));
    let mut printed = 0u64;
    let mut last_data = tokio::time::Instant::now();
    let mut out = std::io::stdout().lock();
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let records = tokio::select! {
            r = consumer.poll(Duration::from_millis(200)) => r?,
            _ = &mut stop => break,
        };
        if !records.is_empty() {
            last_data = tokio::time::Instant::now();
        }
        let mut done = false;
        for r in &records {
            print_record(&mut out, args.format, r)?;
            printed += 1;
            if args.max_messages.is_some_and(|m| printed >= m) {
                done = true;
                break;
            }
        }
        out.flush()?;
        if done
            || args
                .idle_exit_ms
                .is_some_and(|idle| last_data.elapsed() >= Duration::from_millis(idle))
        {
            break;
        }
    }
    consumer.close().await?;
    Ok(0)
}

pub async fn run_consume(args: ConsumeArgs) -> anyhow::Result<i32> {
    if let Some(group) = args.group.clone() {
        return run_group_consume(args, group).await;
    }
    let bootstrap = parse_bootstrap(&args.bootstrap)?;
    if args.offset.is_some_and(|o| o < 0) {
        bail!("--offset must not be negative");
    }
    let mut consumer = Consumer::new(ConsumerConfig::new(bootstrap))?;
    let count = consumer.partitions(&args.topic).await?;
    let partitions: Vec<u32> = match args.partition {
        Some(p) if p >= count => bail!("--partition {p}: the topic has {count} partitions"),
        Some(p) => vec![p],
        None => (0..count).collect(),
    };
    let start = match (args.offset, args.from_beginning) {
        (Some(o), _) => SeekTo::Offset(o),
        (None, true) => SeekTo::Beginning,
        (None, false) => SeekTo::End,
    };
    consumer.assign(&args.topic, &partitions, start).await?;
    let mut printed = 0u64;
    let mut last_data = tokio::time::Instant::now();
    let mut out = std::io::stdout().lock();
    loop {
        let records = consumer.poll(Duration::from_millis(200)).await?;
        if !records.is_empty() {
            last_data = tokio::time::Instant::now();
        }
        for r in records {
            print_record(&mut out, args.format, &r)?;
            printed += 1;
            if args.max_messages.is_some_and(|m| printed >= m) {
                out.flush()?;
                return Ok(0);
            }
        }
        out.flush()?;
        if let Some(idle) = args.idle_exit_ms
            && last_data.elapsed() >= Duration::from_millis(idle)
        {
            return Ok(0);
        }
    }
}
