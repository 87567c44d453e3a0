//! End-to-end load over gRPC against a running cluster (`weir dev` or `weir-cluster up`):
//! producers send pre-encoded batches to partition leaders while consumers fetch them back;
//! prints MB/s, records/s and produce latency percentiles. `--controller-ops` instead
//! measures the controller: topic creations per second and broker heartbeats per second.
//!
//! `cargo run --release -p weir-benches --bin e2e-bench -- --help`

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use weir_proto::call::Channel;
use weir_proto::call::{self, parse_bootstrap};
use weir_proto::internal::v1 as ipb;
use weir_proto::internal::v1::broker_registry_client::BrokerRegistryClient;
use weir_proto::v1 as pb;
use weir_proto::v1::admin_client::AdminClient;
use weir_proto::v1::broker_client::BrokerClient;
use weir_types::{BatchBuilder, Record};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Acks {
    None,
    Leader,
    All,
}

#[derive(Debug, Parser)]
struct Args {
    /// Controller addresses.
    #[arg(long, env = "WEIR_BOOTSTRAP", default_value = "127.0.0.1:9093")]
    bootstrap: String,
    /// Topic to create (a fresh name per run is used when omitted).
    #[arg(long)]
    topic: Option<String>,
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    #[arg(long, default_value_t = 1)]
    replication_factor: u32,
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    #[arg(long, default_value_t = 64)]
    batch_records: usize,
    /// Concurrent producer tasks (each with one request in flight).
    #[arg(long, default_value_t = 8)]
    producers: usize,
    /// Consumers: one fetch loop per partition when set.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    consume: bool,
    #[arg(long, value_enum, default_value_t = Acks::Leader)]
    acks: Acks,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Open-loop load: this many MB/s in all, spread evenly over the producers (default:
    /// closed loop, each producer sends its next batch when the last is answered). Latency is
    /// then measured from each batch's scheduled send time, so falling behind shows.
    #[arg(long)]
    rate_mb_s: Option<f64>,
    /// Also print produce latency per window of this many ms (by send time): p50, p99 and
    /// max, to tell steady latency from stalls.
    #[arg(long)]
    window_ms: Option<u64>,
    /// Measure the controller instead: this many topic creations, then heartbeats.
    #[arg(long)]
    controller_ops: Option<u64>,
    /// Connect over TLS with the CA and client certificate of a `weir-cluster up --tls`
    /// cluster (its `<dir>/tls`).
    #[arg(long)]
    tls_dir: Option<std::path::PathBuf>,
}

async fn admin(bootstrap: &[String]) -> anyhow::Result<(AdminClient<Channel>, String)> {
    let cluster = call::with_controller(bootstrap, Duration::from_secs(10), |ch| async move {
        AdminClient::new(ch)
            .describe_cluster(pb::DescribeClusterRequest {})
            .await
    })
    .await?
    .into_inner();
    let leader = cluster
        .controllers
        .iter()
        .find(|c| c.id == cluster.leader_id)
        .map(|c| c.address.clone())
        .ok_or_else(|| anyhow!("no active controller"))?;
    Ok((AdminClient::new(call::connect(&leader).await?), leader))
}

fn percentiles(h: &Histogram<u64>) -> String {
    format!(
        "p50 {} us  p99 {} us  p999 {} us  max {} us",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    )
}

async fn controller_bench(bootstrap: &[String], ops: u64) -> anyhow::Result<()> {
    let (mut admin, leader) = admin(bootstrap).await?;
    let run = format!("{:x}", rand_suffix());
    // creations: one at a time (each is a Raft commit with fsync on a quorum)
    let mut hist = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    for i in 0..ops {
        let t = Instant::now();
        admin
            .create_topic(pb::CreateTopicRequest {
                name: format!("bench-{run}-{i}"),
                partitions: 1,
                replication_factor: 1,
                config: None,
            })
            .await
            .context("create topic")?;
        hist.record(t.elapsed().as_micros() as u64)?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "controller  topic creates (sequential): {:.0}/s  {}",
        ops as f64 / secs,
        percentiles(&hist)
    );
    for i in 0..ops {
        admin
            .delete_topic(pb::DeleteTopicRequest {
                name: format!("bench-{run}-{i}"),
            })
            .await?;
    }
    // heartbeats: 64 concurrent brokers-to-be
    let channel = call::connect(&leader).await?;
    let mut registry = BrokerRegistryClient::new(channel.clone());
    let mut incarnations = Vec::new();
    for id in 0..64u32 {
        let r = registry
            .register_broker(ipb::RegisterBrokerRequest {
                broker_id: 10_000 + id,
                address: format!("127.0.0.1:{}", 20_000 + id),
                rack: String::new(),
                internal_address: String::new(),
            })
            .await?
            .into_inner();
        incarnations.push((10_000 + id, r.incarnation));
    }
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut tasks = Vec::new();
    for (id, incarnation) in incarnations {
        let mut client = BrokerRegistryClient::new(channel.clone());
        let done = Arc::clone(&done);
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let r = client
                    .broker_heartbeat(ipb::BrokerHeartbeatRequest {
                        broker_id: id,
                        incarnation,
                    })
                    .await;
                if r.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    println!(
        "controller  broker heartbeats (64 concurrent): {:.0}/s (the 64 bench brokers stay registered and are fenced when their leases expire)",
        done.load(Ordering::Relaxed) as f64 / 5.0
    );
    Ok(())
}

/// Per window: the worst (runtime, thread) timer lag in µs.
type WorstLag = std::collections::BTreeMap<u64, (u64, u64)>;

/// How late a 10 ms timer fires in the load generator, on its runtime and on a thread of its
/// own, kept as the worst lag per window of `window_ms`.
struct StallClock {
    late: Arc<std::sync::Mutex<WorstLag>>,
}

impl StallClock {
    const TICK: Duration = Duration::from_millis(10);

    fn start(started: Instant, window_ms: u64, until: Instant) -> Self {
        let late: Arc<std::sync::Mutex<WorstLag>> = Arc::default();
        let note = {
            let late = Arc::clone(&late);
            move |on_thread: bool, last: Instant, now: Instant| {
                let lag = now.duration_since(last).saturating_sub(Self::TICK);
                let window =
                    last.saturating_duration_since(started).as_millis() as u64 / window_ms.max(1);
                if let Ok(mut late) = late.lock() {
                    let worst = late.entry(window).or_default();
                    let slot = if on_thread {
                        &mut worst.1
                    } else {
                        &mut worst.0
                    };
                    *slot = (*slot).max(lag.as_micros() as u64);
                }
            }
        };
        let on_runtime = note.clone();
        tokio::spawn(async move {
            let mut last = Instant::now();
            while last < until {
                tokio::time::sleep(Self::TICK).await;
                let now = Instant::now();
                on_runtime(false, last, now);
                last = now;
            }
        });
        std::thread::spawn(move || {
            let mut last = Instant::now();
            while last < until {
                std::thread::sleep(Self::TICK);
                let now = Instant::now();
                note(true, last, now);
                last = now;
            }
        });
        StallClock { late }
    }

    fn by_window(&self) -> WorstLag {
        self.late.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.tls_dir {
        call::set_client_security(&call::ClientSecurity {
            tls: Some(weir_proto::tls::ClientTlsFiles {
                ca: dir.join("ca.crt"),
                cert: Some(dir.join("client.crt")),
                key: Some(dir.join("client.key")),
            }),
            token: None,
        })
        .map_err(|e| anyhow::anyhow!("--tls-dir: {e}"))?;
    }
    let bootstrap = parse_bootstrap(&args.bootstrap)?;
    if let Some(ops) = args.controller_ops {
        return controller_bench(&bootstrap, ops).await;
    }
    if args.partitions == 0 || args.producers == 0 || args.batch_records == 0 {
        bail!("--partitions, --producers and --batch-records must be positive");
    }
    let (mut admin, _) = admin(&bootstrap).await?;
    let topic = args
        .topic
        .clone()
        .unwrap_or_else(|| format!("e2e-{:x}", rand_suffix()));
    let created = admin
        .create_topic(pb::CreateTopicRequest {
            name: topic.clone(),
            partitions: args.partitions,
            replication_factor: args.replication_factor,
            config: None,
        })
        .await;
    let description = match created {
        Ok(d) => d.into_inner(),
        Err(_) => admin
            .describe_topic(pb::DescribeTopicRequest {
                name: topic.clone(),
            })
            .await?
            .into_inner(),
    };
    let cluster = admin
        .describe_cluster(pb::DescribeClusterRequest {})
        .await?
        .into_inner();
    let brokers: HashMap<u32, String> = cluster
        .brokers
        .into_iter()
        .map(|b| (b.id, b.address))
        .collect();
    let mut leaders = Vec::new();
    for p in &description.partitions {
        let addr = brokers
            .get(&p.leader)
            .ok_or_else(|| anyhow!("partition {} has no leader", p.partition))?;
        leaders.push(BrokerClient::new(call::connect(addr).await?));
    }
    // the brokers open new partitions when the metadata reaches them: wait for that
    for (p, client) in leaders.iter().enumerate() {
        let mut client = client.clone();
        let ready_by = Instant::now() + Duration::from_secs(10);
        loop {
            let r = client
                .list_offsets(pb::ListOffsetsRequest {
                    topic: topic.clone(),
                    partition: p as u32,
                    spec: pb::OffsetSpec::Latest as i32,
                    timestamp_ms: 0,
                })
                .await;
            match r {
                Ok(_) => break,
                Err(e) if Instant::now() < ready_by => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => bail!("partition {p} never became ready: {}", e.message()),
            }
        }
    }
    let value = Bytes::from(vec![b'x'; args.record_bytes]);
    // The first record's key carries the send time, so consumers measure end-to-end latency.
    let make_batch = {
        let value = value.clone();
        let count = args.batch_records;
        move || -> anyhow::Result<pb::RecordBatch> {
            let mut builder = BatchBuilder::default();
            for i in 0..count {
                builder.push(Record {
                    timestamp_ms: 0,
                    key: (i == 0).then(|| Bytes::copy_from_slice(&now_nanos().to_be_bytes())),
                    value: Some(value.clone()),
                    headers: Vec::new(),
                });
            }
            Ok(builder.build()?.into())
        }
    };
    let batch_bytes = make_batch()?.data.len() as u64;
    let acks = match args.acks {
        Acks::None => pb::Acks::None,
        Acks::Leader => pb::Acks::Leader,
        Acks::All => pb::Acks::All,
    } as i32;
    println!(
        "e2e-bench: topic {topic}  partitions {}  rf {}  record {} B  batch {} records ({} B)  producers {}  acks {:?}  {} s",
        args.partitions,
        args.replication_factor,
        args.record_bytes,
        args.batch_records,
        batch_bytes,
        args.producers,
        args.acks,
        args.seconds
    );

    // Warm up: one acknowledged batch per partition, so the measurement does not start with
    // followers still opening the new partitions (the first acks=all requests would wait
    // for them, and an open-loop run would never catch up with its schedule).
    for (p, client) in leaders.iter().enumerate() {
        let mut client = client.clone();
        let ready_by = Instant::now() + Duration::from_secs(10);
        loop {
            let r = client
                .produce(pb::ProduceRequest {
                    topic: topic.clone(),
                    partition: p as u32,
                    acks,
                    leader_epoch: None,
                    batch: Some(make_batch()?),
                    records: Vec::new(),
                })
                .await;
            match r {
                Ok(_) => break,
                Err(_) if Instant::now() < ready_by => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => bail!("partition {p}: warm-up produce failed: {}", e.message()),
            }
        }
    }

    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let consumed = Arc::new(AtomicU64::new(0));
    let end_to_end = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new(3)?));
    let mut consumers = Vec::new();
    if args.consume {
        for (p, client) in leaders.iter().enumerate() {
            let mut client = client.clone();
            let (topic, consumed) = (topic.clone(), Arc::clone(&consumed));
            let end_to_end = Arc::clone(&end_to_end);
            consumers.push(tokio::spawn(async move {
                let mut offset = client
                    .list_offsets(pb::ListOffsetsRequest {
                        topic: topic.clone(),
                        partition: p as u32,
                        spec: pb::OffsetSpec::Latest as i32,
                        timestamp_ms: 0,
                    })
                    .await
                    .map(|r| r.into_inner().offset)
                    .unwrap_or(0);
                while Instant::now() < deadline + Duration::from_secs(2) {
                    let Ok(r) = client
                        .fetch(pb::FetchRequest {
                            topic: topic.clone(),
                            partition: p as u32,
                            offset,
                            max_bytes: 4 << 20,
                            max_wait_ms: 200,
                            min_bytes: 1,
                            leader_epoch: None,
                            decode: false,
                        })
                        .await
                    else {
                        break;
                    };
                    let received = now_nanos();
                    for b in r.into_inner().batches {
                        let Ok(batch) = weir_types::RecordBatch::try_from(b) else {
                            continue;
                        };
                        offset = batch.next_offset().0;
                        consumed.fetch_add(batch.size_bytes() as u64, Ordering::Relaxed);
                        let sent = batch
                            .records()
                            .ok()
                            .and_then(|r| r.into_iter().next())
                            .and_then(|(_, rec)| rec.key)
                            .and_then(|k| <[u8; 8]>::try_from(&k[..]).ok())
                            .map(u64::from_be_bytes);
                        if let Some(sent) = sent
                            && let Ok(mut h) = end_to_end.lock()
                        {
                            let _ = h.record(received.saturating_sub(sent) / 1000);
                        }
                    }
                }
            }));
        }
    }
    let started = Instant::now();
    // the load generator's own stalls, per window: a latency spike the generator caused
    // (its runtime or the whole process not scheduled) is not the cluster's
    let stalls = args
        .window_ms
        .map(|ms| StallClock::start(started, ms, deadline));
    let mut producers = Vec::new();
    for i in 0..args.producers {
        let leaders = leaders.clone();
        let (topic, make_batch) = (topic.clone(), make_batch.clone());
        let (partitions, producers_n, window_ms) =
            (args.partitions, args.producers, args.window_ms);
        let started_at = started;
        // each producer's share of an open-loop rate: one batch every `interval`
        let interval = args.rate_mb_s.map(|rate| {
            Duration::from_secs_f64(batch_bytes as f64 * args.producers as f64 / (rate * 1e6))
        });
        producers.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3)?;
            // (window, latency in µs) per batch, when windows are asked for
            let mut windows: Vec<(u64, u64)> = Vec::new();
            let mut sent = 0u64;
            let mut p = i as u32 % partitions;
            // producers spread evenly over one interval: all of them firing at the same
            // instants would be a burst at the full rate every interval, not this rate
            let first = Instant::now()
                + interval.map_or(Duration::ZERO, |every| {
                    every.mul_f64(i as f64 / producers_n as f64)
                });
            while Instant::now() < deadline {
                let mut client = leaders[p as usize].clone();
                let t = match interval {
                    Some(every) => {
                        let due = first + every.mul_f64(sent as f64);
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => Instant::now(),
                };
                client
                    .produce(pb::ProduceRequest {
                        topic: topic.clone(),
                        partition: p,
                        acks,
                        leader_epoch: None,
                        batch: Some(make_batch()?),
                        records: Vec::new(),
                    })
                    .await
                    .map_err(|s| anyhow!("produce: {}", s.message()))?;
                let latency = t.elapsed().as_micros() as u64;
                hist.record(latency)?;
                if let Some(ms) = window_ms {
                    let at = t.saturating_duration_since(started_at).as_millis() as u64;
                    windows.push((at / ms.max(1), latency));
                }
                sent += 1;
                p = (p + 1) % partitions;
            }
            Ok::<_, anyhow::Error>((sent, hist, windows))
        }));
    }
    let mut hist = Histogram::<u64>::new(3)?;
    let mut batches = 0u64;
    let mut windows: std::collections::BTreeMap<u64, Histogram<u64>> = Default::default();
    for task in producers {
        let (sent, h, w) = task.await??;
        batches += sent;
        hist.add(h)?;
        for (window, latency) in w {
            match windows.entry(window) {
                std::collections::btree_map::Entry::Occupied(mut e) => {
                    e.get_mut().record(latency)?
                }
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(Histogram::<u64>::new(3)?).record(latency)?
                }
            }
        }
    }
    if let (Some(ms), Some(stalls)) = (args.window_ms, &stalls) {
        let late = stalls.by_window();
        for (window, h) in &windows {
            let (runtime, thread) = late.get(window).copied().unwrap_or_default();
            println!(
                "window {:>7.2} s  {:>5} batches  p50 {:>6} us  p99 {:>6} us  max {:>6} us  \
                 generator late {:>5} us (runtime) {:>5} us (thread)",
                (window * ms) as f64 / 1000.0,
                h.len(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.max(),
                runtime,
                thread
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    for c in consumers {
        let _ = c.await;
    }
    let bytes = batches * batch_bytes;
    println!(
        "produce   {:>8.1} MB/s  {:>10.0} records/s  {:>7.0} requests/s  latency {}",
        bytes as f64 / secs / 1e6,
        (batches * args.batch_records as u64) as f64 / secs,
        batches as f64 / secs,
        percentiles(&hist)
    );
    if args.consume {
        let got = consumed.load(Ordering::Relaxed);
        println!(
            "consume   {:>8.1} MB/s  ({} of {} MB produced read back)",
            got as f64 / secs / 1e6,
            got >> 20,
            bytes >> 20
        );
        if let Ok(h) = end_to_end.lock() {
            println!("end-to-end latency (send to fetched)  {}", percentiles(&h));
        }
    }
    Ok(())
}
