//! `weir-rolling`: an idempotent acks=all producer and a consumer-group member run against a
//! cluster while shell commands disturb it one after another (restart a container, kill
//! one, cut one off the network); after each step it waits until every broker is live and
//! every partition's ISR is whole again, and prints how produce latency fared during it. At
//! the end it checks that no send failed and that every acknowledged record is in the log
//! exactly once, at the offset it was acknowledged at, and that the group saw them all.
//!
//!   weir-rolling --bootstrap 10.231.0.11:9093 --topic t \
//!     --step "docker stop -t 30 n1 && docker start n1" --step "..."
//!
//! Exit code 0 only when all of that holds.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use weir_client::{
    Consumer, ConsumerConfig, GroupConsumer, GroupConsumerConfig, OffsetReset, Producer,
    ProducerConfig, SeekTo,
};
use weir_proto::v1 as pb;
use weir_proto::v1::admin_client::AdminClient;
use weir_types::Record;

#[derive(Debug, Parser)]
#[command(name = "weir-rolling")]
struct Args {
    /// Controller addresses, comma separated.
    #[arg(long)]
    bootstrap: String,
    #[arg(long, default_value = "rolling")]
    topic: String,
    #[arg(long, default_value_t = 6)]
    partitions: u32,
    /// Records per second.
    #[arg(long, default_value_t = 400)]
    rate: u64,
    /// Shell commands run one after another, each followed by a wait for a whole cluster.
    #[arg(long)]
    step: Vec<String>,
    /// Load before the first step and after each recovery.
    #[arg(long, default_value_t = 5)]
    settle_s: u64,
    /// Longest a step's recovery may take.
    #[arg(long, default_value_t = 120)]
    recover_s: u64,
}

/// One send: when it was sent, how long until its outcome, and the outcome.
#[derive(Debug, Clone)]
struct Sent {
    value: u64,
    at: Instant,
    took: Duration,
    result: Result<(u32, i64), String>,
}

async fn admin<T, F, Fut>(bootstrap: &[String], call: F) -> anyhow::Result<T>
where
    F: FnMut(weir_proto::call::Channel) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    Ok(
        weir_proto::call::with_controller(bootstrap, Duration::from_secs(10), call)
            .await?
            .into_inner(),
    )
}

/// A controller leads, and every partition of `topic` has a leader and its whole replica set
/// in sync on live brokers (brokers that hold none of it may come and go).
async fn whole(bootstrap: &[String], topic: &str) -> anyhow::Result<bool> {
    let cluster = admin(bootstrap, |ch| async move {
        AdminClient::new(ch)
            .describe_cluster(pb::DescribeClusterRequest {})
            .await
    })
    .await?;
    if cluster.leader_id == 0 {
        return Ok(false);
    }
    let fenced: Vec<u32> = cluster
        .brokers
        .iter()
        .filter(|b| b.fenced)
        .map(|b| b.id)
        .collect();
    let name = topic.to_string();
    let t = admin(bootstrap, |ch| {
        let name = name.clone();
        async move {
            AdminClient::new(ch)
                .describe_topic(pb::DescribeTopicRequest { name })
                .await
        }
    })
    .await?;
    Ok(t.partitions.iter().all(|p| {
        let mut isr = p.isr.clone();
        let mut replicas = p.replicas.clone();
        isr.sort_unstable();
        replicas.sort_unstable();
        p.leader != 0 && isr == replicas && !replicas.iter().any(|r| fenced.contains(r))
    }))
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(label: &str, sent: &[Sent], from: Instant, to: Instant) -> Duration {
    let mut lat: Vec<Duration> = sent
        .iter()
        .filter(|s| s.at >= from && s.at < to)
        .map(|s| s.took)
        .collect();
    lat.sort_unstable();
    let failed = sent
        .iter()
        .filter(|s| s.at >= from && s.at < to && s.result.is_err())
        .count();
    let p99 = percentile(&lat, 0.99);
    println!(
        "{label}: {} sends, {failed} failed, produce latency p50 {:?} p99 {:?} max {:?} (window {:.1} s)",
        lat.len(),
        percentile(&lat, 0.5),
        p99,
        lat.last().copied().unwrap_or_default(),
        to.duration_since(from).as_secs_f64()
    );
    p99
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bootstrap = weir_proto::call::parse_bootstrap(&args.bootstrap)?;
    anyhow::ensure!(args.rate > 0, "--rate must be positive");
    let topic = args.topic.clone();
    let create = pb::CreateTopicRequest {
        name: topic.clone(),
        partitions: args.partitions,
        replication_factor: 3,
        config: None,
    };
    match weir_proto::call::with_controller(&bootstrap, Duration::from_secs(30), |ch| {
        let create = create.clone();
        async move { AdminClient::new(ch).create_topic(create).await }
    })
    .await
    {
        Ok(_) => {}
        Err(weir_proto::call::CallError::Status(s)) if s.code() == tonic::Code::AlreadyExists => {}
        Err(e) => bail!("create topic {topic}: {e}"),
    }
    let deadline = Instant::now() + Duration::from_secs(args.recover_s);
    while !whole(&bootstrap, &topic).await.unwrap_or(false) {
        anyhow::ensure!(Instant::now() < deadline, "the cluster never became whole");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // the group member: counts what it sees (at least once)
    let group_seen: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut config = GroupConsumerConfig::new(bootstrap.clone(), "weir-rolling", &[&topic]);
    config.offset_reset = OffsetReset::Earliest;
    let mut member = GroupConsumer::new(config)?;
    // the member reads until the check at the end is done, not only while producing
    let member_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let member_task = tokio::spawn({
        let (seen, stop) = (Arc::clone(&group_seen), Arc::clone(&member_stop));
        async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match member.poll(Duration::from_millis(500)).await {
                    Ok(records) => {
                        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                        for r in records {
                            if let Some(v) = r
                                .value
                                .as_deref()
                                .and_then(|b| std::str::from_utf8(b).ok())
                                .and_then(|s| s.parse::<u64>().ok())
                            {
                                *seen.entry(v).or_default() += 1;
                            }
                        }
                    }
                    Err(e) => {
                        eprintln!("group poll: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            let _ = member.close().await;
        }
    });

    // the producer: `rate` records a second, each send's outcome kept
    let producer = Arc::new(Producer::new(ProducerConfig::new(bootstrap.clone()))?);
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let producing = tokio::spawn({
        let (producer, sent, stop, topic) = (
            Arc::clone(&producer),
            Arc::clone(&sent),
            Arc::clone(&stop),
            topic.clone(),
        );
        let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            let mut next = tokio::time::Instant::now();
            let mut value = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                next += interval;
                tokio::time::sleep_until(next).await;
                value += 1;
                let at = Instant::now();
                let record = Record {
                    timestamp_ms: 0,
                    key: None,
                    value: Some(Bytes::from(value.to_string())),
                    headers: Vec::new(),
                };
                let delivery = producer.send(&topic, None, record).await;
                let sent = Arc::clone(&sent);
                tasks.spawn(async move {
                    let result = match delivery {
                        Ok(d) => d.await.map_err(|e| e.to_string()).and_then(|m| {
                            m.offset
                                .map(|o| (m.partition, o.0))
                                .ok_or_else(|| "no offset".to_string())
                        }),
                        Err(e) => Err(e.to_string()),
                    };
                    sent.lock().unwrap_or_else(|p| p.into_inner()).push(Sent {
                        value,
                        at,
                        took: at.elapsed(),
                        result,
                    });
                });
            }
            while tasks.join_next().await.is_some() {}
        }
    });

    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.settle_s)).await;
    let mut windows = Vec::new();
    for (i, step) in args.step.iter().enumerate() {
        let from = Instant::now();
        println!("step {}: {step}", i + 1);
        let status = tokio::process::Command::new("sh")
            .args(["-c", step])
            .status()
            .await
            .with_context(|| format!("run {step:?}"))?;
        anyhow::ensure!(status.success(), "step {step:?} failed: {status}");
        let deadline = Instant::now() + Duration::from_secs(args.recover_s);
        while !whole(&bootstrap, &topic).await.unwrap_or(false) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the cluster was not whole {} s after step {step:?}",
                args.recover_s
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let recovered = from.elapsed();
        tokio::time::sleep(Duration::from_secs(args.settle_s)).await;
        windows.push((i + 1, from, Instant::now(), recovered));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    producing.await?;
    producer.flush().await;
    let sent = sent.lock().unwrap_or_else(|p| p.into_inner()).clone();

    println!();
    report(
        "before the steps",
        &sent,
        started,
        windows.first().map_or(Instant::now(), |w| w.1),
    );
    let mut worst_p99 = Duration::ZERO;
    for (i, from, to, recovered) in &windows {
        let p99 = report(
            &format!(
                "step {i} (whole again after {:.1} s)",
                recovered.as_secs_f64()
            ),
            &sent,
            *from,
            *to,
        );
        worst_p99 = worst_p99.max(p99);
    }
    let failed: Vec<&Sent> = sent.iter().filter(|s| s.result.is_err()).collect();
    for f in failed.iter().take(5) {
        println!("failed send {}: {:?}", f.value, f.result);
    }

    // the log: every acknowledged record once, at its offset
    let acked: BTreeMap<u64, (u32, i64)> = sent
        .iter()
        .filter_map(|s| s.result.clone().ok().map(|r| (s.value, r)))
        .collect();
    let mut consumer = Consumer::new(ConsumerConfig::new(bootstrap.clone()))?;
    let partitions: Vec<u32> = (0..args.partitions).collect();
    let mut ends = BTreeMap::new();
    for p in &partitions {
        ends.insert(*p, consumer.resolve(&topic, *p, SeekTo::End).await?);
    }
    consumer
        .assign(&topic, &partitions, SeekTo::Beginning)
        .await?;
    let mut positions: BTreeMap<u32, i64> = partitions.iter().map(|p| (*p, 0)).collect();
    let mut stored: HashMap<u64, Vec<(u32, i64)>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while positions.iter().any(|(p, o)| *o < ends[p]) {
        anyhow::ensure!(Instant::now() < deadline, "could not read the log back");
        for r in consumer.poll(Duration::from_millis(500)).await? {
            positions.insert(r.partition, r.offset.0 + 1);
            if let Some(v) = r
                .value
                .as_deref()
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| s.parse::<u64>().ok())
            {
                stored.entry(v).or_default().push((r.partition, r.offset.0));
            }
        }
    }
    let mut missing = 0;
    let mut misplaced = 0;
    for (value, at) in &acked {
        match stored.get(value).map(Vec::as_slice) {
            None | Some([]) => missing += 1,
            Some([one]) if one == at => {}
            Some(_) => misplaced += 1,
        }
    }
    let duplicated = stored.values().filter(|v| v.len() > 1).count();

    // the group: it saw every acknowledged record (it may see some twice after rebalances)
    let deadline = Instant::now() + Duration::from_secs(60);
    let group_missing = loop {
        let n = {
            let seen = group_seen.lock().unwrap_or_else(|p| p.into_inner());
            acked.keys().filter(|v| !seen.contains_key(v)).count()
        };
        if n == 0 || Instant::now() >= deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    {
        let seen = group_seen.lock().unwrap_or_else(|p| p.into_inner());
        for (v, at) in acked.iter().filter(|(v, _)| !seen.contains_key(v)).take(5) {
            println!(
                "never seen by the group: value {v} at partition {} offset {}",
                at.0, at.1
            );
        }
    }
    member_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(10), member_task).await;
    let redelivered = group_seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .filter(|n| **n > 1)
        .count();
    println!(
        "{} sends: {} acknowledged, {} failed; log: {missing} acknowledged records missing, \
         {misplaced} elsewhere than acknowledged, {duplicated} stored twice; group: {group_missing} \
         never seen, {redelivered} seen more than once; worst step p99 {worst_p99:?}",
        sent.len(),
        acked.len(),
        failed.len(),
    );
    if !failed.is_empty() || missing > 0 || misplaced > 0 || duplicated > 0 || group_missing > 0 {
        bail!("anomalies (above)");
    }
    println!("ok: no failed send, every acknowledged record read back exactly once");
    Ok(())
}
