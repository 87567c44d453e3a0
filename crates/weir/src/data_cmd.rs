//! `weir produce` and `weir consume`: records from lines and back, through the partition
//! leaders.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use weir_proto::call::{self, CallError, parse_bootstrap};
use weir_proto::status::error_code;
use weir_proto::v1 as pb;
use weir_proto::v1::admin_client::AdminClient;
use weir_proto::v1::broker_client::BrokerClient;
use weir_types::{BatchBuilder, Header, ProducerEpoch, ProducerId, Record, Sequence};

/// Records per produce request.
const PRODUCE_BATCH_RECORDS_MAX: usize = 500;
/// Attempts for a request that fails with a retriable error (leader moved, election).
const ATTEMPTS_MAX: usize = 20;

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
    topic: String,
    /// Read only this partition (default: all).
    #[arg(long)]
    partition: Option<u32>,
    /// Start at the first retained record (default: only records produced from now on).
    #[arg(long, conflicts_with = "offset")]
    from_beginning: bool,
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

/// Where each partition of a topic is led.
struct Route {
    partitions: Vec<pb::PartitionDescription>,
    brokers: HashMap<u32, String>,
}

impl Route {
    async fn load(bootstrap: &[String], topic: &str) -> anyhow::Result<Route> {
        let patience = Duration::from_secs(20);
        let name = topic.to_string();
        let t = call::with_controller(bootstrap, patience, |ch| {
            let name = name.clone();
            async move {
                AdminClient::new(ch)
                    .describe_topic(pb::DescribeTopicRequest { name })
                    .await
            }
        })
        .await?
        .into_inner();
        let cluster = call::with_controller(bootstrap, patience, |ch| async move {
            AdminClient::new(ch)
                .describe_cluster(pb::DescribeClusterRequest {})
                .await
        })
        .await?
        .into_inner();
        Ok(Route {
            partitions: t.partitions,
            brokers: cluster
                .brokers
                .into_iter()
                .map(|b| (b.id, b.address))
                .collect(),
        })
    }

    fn leader(&self, partition: u32) -> anyhow::Result<(String, i32)> {
        let p = self.partitions.get(partition as usize).ok_or_else(|| {
            anyhow!(
                "--partition {partition}: the topic has {} partitions",
                self.partitions.len()
            )
        })?;
        let addr = self
            .brokers
            .get(&p.leader)
            .ok_or_else(|| anyhow!("partition {partition} has no leader right now"))?;
        Ok((addr.clone(), p.leader_epoch))
    }
}

/// Safe to send again: retriable, and either definitely not applied or sent by an idempotent
/// producer (whose retry the broker recognises). Without idempotence a timed-out produce may
/// have been committed, and sending it again would write it twice.
fn retriable(e: &CallError, idempotent: bool) -> bool {
    match e {
        CallError::Status(s) => match error_code(s) {
            Some(c) => {
                c.is_retriable()
                    && (idempotent || c.outcome() == weir_types::error::Outcome::Definite)
            }
            // the connection broke mid-call: the outcome is unknown
            None => idempotent,
        },
        CallError::Unavailable(_) => true,
        CallError::Bootstrap(_) => false,
    }
}

/// Calls the leader of `partition`, refreshing the route and retrying retriable failures.
async fn with_leader<T, F, Fut>(
    bootstrap: &[String],
    topic: &str,
    route: &mut Route,
    partition: u32,
    idempotent: bool,
    mut call: F,
) -> anyhow::Result<T>
where
    F: FnMut(BrokerClient<tonic::transport::Channel>, i32) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let outcome = async {
            let (addr, epoch) = route
                .leader(partition)
                .map_err(|e| CallError::Unavailable(e.to_string()))?;
            let channel = call::connect(&addr).await?;
            call(BrokerClient::new(channel), epoch)
                .await
                .map(tonic::Response::into_inner)
                .map_err(CallError::Status)
        }
        .await;
        match outcome {
            Ok(v) => return Ok(v),
            Err(e) if retriable(&e, idempotent) && attempt < ATTEMPTS_MAX => {
                tokio::time::sleep(Duration::from_millis(100 * attempt.min(5) as u64)).await;
                *route = Route::load(bootstrap, topic).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
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
    let mut route = Route::load(&bootstrap, &args.topic).await?;
    let count = route.partitions.len() as u32;
    if let Some(p) = args.partition
        && p >= count
    {
        bail!(
            "--partition {p}: topic {} has {count} partitions",
            args.topic
        );
    }
    let input: Box<dyn BufRead> = match &args.file {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("--file {}", path.display()))?,
        )),
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    // A key always maps to the same partition; keyless records rotate per request.
    let keyed = args
        .key
        .as_ref()
        .map(|k| crc32c::crc32c(k.as_bytes()) % count);
    let mut next_partition = (std::process::id() % count.max(1)) as u32;
    let acks = match args.acks {
        AcksArg::None => pb::Acks::None,
        AcksArg::Leader => pb::Acks::Leader,
        AcksArg::All => pb::Acks::All,
    };
    let idempotent = !args.no_idempotence;
    let producer = if idempotent {
        let first = args.partition.or(keyed).unwrap_or(0);
        let id =
            with_leader(
                &bootstrap,
                &args.topic,
                &mut route,
                first,
                true,
                |mut client, _| async move {
                    client.init_producer_id(pb::InitProducerIdRequest {}).await
                },
            )
            .await?;
        Some((
            ProducerId(id.producer_id),
            ProducerEpoch(id.producer_epoch as i16),
        ))
    } else {
        None
    };
    // the next sequence per partition
    let mut sequences: HashMap<u32, i32> = HashMap::new();
    let mut lines = input.lines();
    let mut total = 0u64;
    loop {
        let partition = args.partition.or(keyed).unwrap_or_else(|| {
            next_partition = (next_partition + 1) % count;
            next_partition
        });
        let mut builder = match producer {
            Some((id, epoch)) => BatchBuilder::default().producer(
                id,
                epoch,
                Sequence(*sequences.entry(partition).or_insert(0)),
            ),
            None => BatchBuilder::default(),
        };
        for line in lines.by_ref() {
            let line = line.context("read input")?;
            builder.push(Record {
                timestamp_ms: now_ms(),
                key: args.key.clone().map(Bytes::from),
                value: Some(Bytes::from(line)),
                headers: headers.clone(),
            });
            if builder.len() >= PRODUCE_BATCH_RECORDS_MAX {
                break;
            }
        }
        if builder.is_empty() {
            break;
        }
        let batch = builder.build()?;
        let n = builder.len() as u64;
        let topic = args.topic.clone();
        let response = with_leader(
            &bootstrap,
            &args.topic,
            &mut route,
            partition,
            idempotent,
            |mut client, epoch| {
                let request = pb::ProduceRequest {
                    topic: topic.clone(),
                    partition,
                    acks: acks as i32,
                    leader_epoch: Some(epoch),
                    batch: Some(batch.clone().into()),
                    records: Vec::new(),
                };
                async move { client.produce(request).await }
            },
        )
        .await?;
        total += n;
        if let Some(seq) = sequences.get_mut(&partition) {
            *seq = seq.wrapping_add(n as i32) & i32::MAX;
        }
        if response.base_offset >= 0 {
            println!(
                "produced {n} records to {}/{partition} at offsets {}..={}",
                args.topic, response.base_offset, response.last_offset
            );
        } else {
            println!("sent {n} records to {}/{partition} (acks=none)", args.topic);
        }
    }
    if total == 0 {
        println!("no input: nothing produced");
    }
    Ok(0)
}

fn text(b: &Option<Bytes>) -> serde_json::Value {
    match b {
        None => serde_json::Value::Null,
        Some(b) => serde_json::Value::String(String::from_utf8_lossy(b).into_owned()),
    }
}

pub async fn run_consume(args: ConsumeArgs) -> anyhow::Result<i32> {
    let bootstrap = parse_bootstrap(&args.bootstrap)?;
    let mut route = Route::load(&bootstrap, &args.topic).await?;
    let partitions: Vec<u32> = match args.partition {
        Some(p) => {
            route.leader(p)?;
            vec![p]
        }
        None => (0..route.partitions.len() as u32).collect(),
    };
    if args.offset.is_some_and(|o| o < 0) {
        bail!("--offset must not be negative");
    }
    let spec = if args.from_beginning {
        pb::OffsetSpec::Earliest
    } else {
        pb::OffsetSpec::Latest
    };
    let mut positions = Vec::new();
    for &p in &partitions {
        let start = match args.offset {
            Some(o) => o,
            None => {
                let topic = args.topic.clone();
                with_leader(
                    &bootstrap,
                    &args.topic,
                    &mut route,
                    p,
                    true,
                    |mut client, _| {
                        let request = pb::ListOffsetsRequest {
                            topic: topic.clone(),
                            partition: p,
                            spec: spec as i32,
                            timestamp_ms: 0,
                        };
                        async move { client.list_offsets(request).await }
                    },
                )
                .await?
                .offset
            }
        };
        positions.push((p, start));
    }
    let mut printed = 0u64;
    let mut last_data = tokio::time::Instant::now();
    let wait_ms = if partitions.len() == 1 { 1000 } else { 100 };
    let mut out = std::io::stdout().lock();
    loop {
        for (p, offset) in positions.iter_mut() {
            let topic = args.topic.clone();
            let (partition, from) = (*p, *offset);
            let response = with_leader(
                &bootstrap,
                &args.topic,
                &mut route,
                partition,
                true,
                |mut client, _| {
                    let request = pb::FetchRequest {
                        topic: topic.clone(),
                        partition,
                        offset: from,
                        max_bytes: 1 << 20,
                        max_wait_ms: wait_ms,
                        min_bytes: 1,
                        leader_epoch: None,
                        decode: true,
                    };
                    async move { client.fetch(request).await }
                },
            )
            .await?;
            for r in response.records {
                let Some(record) = r.record else { continue };
                match args.format {
                    Format::Value => {
                        let value = record.value.as_deref().unwrap_or_default();
                        out.write_all(value)?;
                        out.write_all(b"\n")?;
                    }
                    Format::Json => {
                        let headers: serde_json::Map<String, serde_json::Value> = record
                            .headers
                            .iter()
                            .map(|h| (h.key.clone(), text(&h.value)))
                            .collect();
                        let line = serde_json::json!({
                            "partition": partition,
                            "offset": r.offset,
                            "timestamp": record.timestamp_ms,
                            "key": text(&record.key),
                            "value": text(&record.value),
                            "headers": headers,
                        });
                        writeln!(out, "{line}")?;
                    }
                }
                *offset = r.offset + 1;
                printed += 1;
                last_data = tokio::time::Instant::now();
                if args.max_messages.is_some_and(|m| printed >= m) {
                    out.flush()?;
                    return Ok(0);
                }
            }
            out.flush()?;
        }
        if let Some(idle) = args.idle_exit_ms
            && last_data.elapsed() >= Duration::from_millis(idle)
        {
            return Ok(0);
        }
    }
}
