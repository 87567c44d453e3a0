//! Subscription delivery and per-message acks against a running cluster (`weir dev` or
//! `weir-cluster up`), through the brokers' own `Pull` / `Acknowledge` RPCs.
//!
//! 1. Publishes `--messages` records over `--partitions` partitions.
//! 2. Leases all of them without acking (ack deadline 600 s): that many outstanding messages
//!    at once; with `--pid` (the broker's process) prints its resident memory before and after,
//!    per outstanding message.
//! 3. Acknowledges every one, `--ack-batch` per request, one request in flight per partition:
//!    prints acks/s.
//! 4. Publishes again and runs a pull → ack loop per partition: prints messages/s.
//!
//! `cargo run --release -p weir-benches --bin sub-bench -- --help`

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use weir_client::Metadata;
use weir_proto::call::parse_bootstrap;
use weir_proto::v1 as pb;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, env = "WEIR_BOOTSTRAP", default_value = "127.0.0.1:9093")]
    bootstrap: String,
    /// Messages per phase.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    #[arg(long, default_value_t = 64)]
    value_bytes: usize,
    /// Messages one pull asks for.
    #[arg(long, default_value_t = 5_000)]
    pull_batch: u32,
    /// Acks per Acknowledge request.
    #[arg(long, default_value_t = 1_000)]
    ack_batch: usize,
    /// The broker's process id, to report its memory with everything outstanding.
    #[arg(long)]
    pid: Option<u32>,
    #[arg(long, default_value_t = 0)]
    replication_factor: u32,
    /// Ack each partition's messages in a shuffled order (every ack a range of its own until
    /// the gaps fill) instead of in offset order.
    #[arg(long)]
    shuffle: bool,
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

async fn publish(args: &Args, topic: &str) -> anyhow::Result<Duration> {
    weir_benches::publish(
        &args.bootstrap,
        topic,
        args.messages,
        args.partitions,
        args.value_bytes,
    )
    .await
}

type Leases = Vec<pb::LeaseId>;

/// One pull of partition `p`; the leases it returned.
async fn pull(
    meta: &Metadata,
    topic: &str,
    sub: &str,
    p: u32,
    batch: u32,
    ack_deadline_seconds: u32,
) -> anyhow::Result<Leases> {
    let request = pb::SubscriptionPullRequest {
        subscription: sub.to_string(),
        topic: topic.to_string(),
        partition: p,
        max_messages: batch,
        max_bytes: 0,
        wait_ms: 1000,
        ack_deadline_seconds,
    };
    let r = meta
        .call_leader(topic, p, true, deadline(), |mut c| {
            let request = request.clone();
            async move { c.pull(request).await }
        })
        .await?;
    Ok(r.deliveries
        .iter()
        .map(|d| pb::LeaseId {
            offset: d.offset,
            attempt: d.attempt,
        })
        .collect())
}

/// Pulls every partition until `want` messages per partition are leased; returns them.
async fn lease_all(
    meta: &Arc<Metadata>,
    args: &Args,
    topic: &str,
    sub: &str,
    want: u64,
) -> anyhow::Result<Vec<Leases>> {
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..args.partitions {
        let (meta, topic, sub, batch) = (
            Arc::clone(meta),
            topic.to_string(),
            sub.to_string(),
            args.pull_batch,
        );
        tasks.spawn(async move {
            let mut got: Leases = Vec::new();
            while (got.len() as u64) < want {
                got.extend(pull(&meta, &topic, &sub, p, batch, 600).await?);
            }
            Ok::<_, anyhow::Error>((p, got))
        });
    }
    let mut out = vec![Vec::new(); args.partitions as usize];
    while let Some(r) = tasks.join_next().await {
        let (p, got) = r??;
        out[p as usize] = got;
    }
    Ok(out)
}

fn deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(30)
}

async fn ack_all(
    meta: &Arc<Metadata>,
    args: &Args,
    topic: &str,
    sub: &str,
    leases: Vec<Leases>,
) -> anyhow::Result<u64> {
    let mut tasks = tokio::task::JoinSet::new();
    for (p, leases) in leases.into_iter().enumerate() {
        let (meta, topic, sub, batch) = (
            Arc::clone(meta),
            topic.to_string(),
            sub.to_string(),
            args.ack_batch,
        );
        tasks.spawn(async move {
            let mut invalid = 0u64;
            for chunk in leases.chunks(batch) {
                let r = meta
                    .call_leader(&topic, p as u32, true, deadline(), |mut c| {
                        let request = pb::SubscriptionAckRequest {
                            subscription: sub.clone(),
                            topic: topic.clone(),
                            partition: p as u32,
                            leases: chunk.to_vec(),
                        };
                        async move { c.acknowledge(request).await }
                    })
                    .await?;
                invalid += r.invalid.len() as u64;
            }
            Ok::<_, anyhow::Error>(invalid)
        });
    }
    let mut invalid = 0;
    while let Some(r) = tasks.join_next().await {
        invalid += r??;
    }
    Ok(invalid)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.partitions == 0 || args.messages == 0 {
        bail!("--partitions and --messages must be positive");
    }
    let bootstrap = parse_bootstrap(&args.bootstrap)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let topic = format!("sub-bench-{stamp}");
    let sub = format!("{topic}-sub");
    weir_benches::create_topic(&bootstrap, &topic, args.partitions, args.replication_factor)
        .await?;
    weir_benches::create_subscription(
        &bootstrap,
        pb::SubscriptionSpec {
            name: sub.clone(),
            topic: topic.clone(),
            ..Default::default()
        },
    )
    .await?;
    let per_partition = args.messages / u64::from(args.partitions);
    let total = per_partition * u64::from(args.partitions);

    let took = publish(&args, &topic).await?;
    println!(
        "publish      {total} messages of {} B in {:.2}s: {:.0} msg/s",
        args.value_bytes,
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );

    let meta = Arc::new(Metadata::new(bootstrap.clone()));
    let before = args.pid.and_then(rss_bytes);
    let started = Instant::now();
    let leases = lease_all(&meta, &args, &topic, &sub, per_partition).await?;
    let took = started.elapsed();
    let leased: usize = leases.iter().map(Vec::len).sum();
    println!(
        "lease        {leased} messages outstanding in {:.2}s: {:.0} msg/s",
        took.as_secs_f64(),
        leased as f64 / took.as_secs_f64()
    );
    if let (Some(b), Some(a)) = (before, args.pid.and_then(rss_bytes)) {
        println!(
            "memory       broker RSS {:.0} MiB -> {:.0} MiB with {leased} outstanding: {:.0} bytes per outstanding message",
            b as f64 / 1048576.0,
            a as f64 / 1048576.0,
            a.saturating_sub(b) as f64 / leased as f64
        );
    }
    let mut leases = leases;
    if args.shuffle {
        use rand::seq::SliceRandom;
        let mut rng = rand::rng();
        for l in &mut leases {
            l.shuffle(&mut rng);
        }
    }
    let started = Instant::now();
    let invalid = ack_all(&meta, &args, &topic, &sub, leases).await?;
    let took = started.elapsed();
    println!(
        "ack          {leased} acks ({}, {} per request, {} partitions) in {:.2}s: {:.0} acks/s ({invalid} refused)",
        if args.shuffle {
            "shuffled"
        } else {
            "in offset order"
        },
        args.ack_batch,
        args.partitions,
        took.as_secs_f64(),
        leased as f64 / took.as_secs_f64()
    );

    let _ = publish(&args, &topic).await?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..args.partitions {
        let (meta, topic, sub, batch, ack_batch) = (
            Arc::clone(&meta),
            topic.clone(),
            sub.clone(),
            args.pull_batch,
            args.ack_batch,
        );
        tasks.spawn(async move {
            let mut done = 0u64;
            while done < per_partition {
                let ids = pull(&meta, &topic, &sub, p, batch, 60).await?;
                for chunk in ids.chunks(ack_batch) {
                    meta.call_leader(&topic, p, true, deadline(), |mut c| {
                        let request = pb::SubscriptionAckRequest {
                            subscription: sub.clone(),
                            topic: topic.clone(),
                            partition: p,
                            leases: chunk.to_vec(),
                        };
                        async move { c.acknowledge(request).await }
                    })
                    .await?;
                }
                done += ids.len() as u64;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let took = started.elapsed();
    println!(
        "pull+ack     {total} messages in {:.2}s: {:.0} msg/s (pull {} per request, then ack)",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64(),
        args.pull_batch
    );
    Ok(())
}
