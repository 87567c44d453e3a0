//! Consumer-group load against a running cluster (`weir-cluster up` or `weir dev`).
//!
//! - `commits` (default): G groups × M members over a topic with M partitions; every member
//!   joins through real heartbeats, waits until it owns its one partition, keeps heartbeating,
//!   and commits that partition's offset in a closed loop (one commit in flight per member).
//!   Prints commits/s and commit latency percentiles.
//! - `rebalance`: a group of N `GroupConsumer`s (the real client, against real brokers) over a
//!   P-partition topic; one member leaves, and the time until the other N-1 own every
//!   partition again is printed (also for a member joining).
//!
//! `cargo run --release -p weir-benches --bin group-bench -- --help`

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use tokio::sync::Mutex;
use weir_client::{GroupConsumer, GroupConsumerConfig};
use weir_proto::call::Channel;
use weir_proto::call::{self, parse_bootstrap};
use weir_proto::v1 as pb;
use weir_proto::v1::admin_client::AdminClient;
use weir_proto::v1::group_coordinator_client::GroupCoordinatorClient;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Mode {
    Commits,
    Rebalance,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, env = "WEIR_BOOTSTRAP", default_value = "127.0.0.1:9093")]
    bootstrap: String,
    #[arg(long, value_enum, default_value_t = Mode::Commits)]
    mode: Mode,
    /// commits: groups, each with `members` members.
    #[arg(long, default_value_t = 32)]
    groups: usize,
    /// commits: members per group (= partitions of the topic); rebalance: group size.
    #[arg(long, default_value_t = 8)]
    members: usize,
    /// rebalance: partitions of the topic.
    #[arg(long, default_value_t = 100)]
    partitions: u32,
    /// commits: HTTP/2 connections to the active controller shared by the members.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    #[arg(long, default_value_t = 15)]
    seconds: u64,
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

fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}", nanos & 0xffff_ffff)
}

async fn create_topic(bootstrap: &[String], name: &str, partitions: u32) -> anyhow::Result<()> {
    call::with_controller(bootstrap, Duration::from_secs(10), |ch| {
        let name = name.to_string();
        async move {
            AdminClient::new(ch)
                .create_topic(pb::CreateTopicRequest {
                    name,
                    partitions,
                    replication_factor: 1,
                    config: None,
                })
                .await
        }
    })
    .await
    .context("create topic")?;
    Ok(())
}

async fn active_controller(bootstrap: &[String]) -> anyhow::Result<String> {
    let d = call::with_controller(bootstrap, Duration::from_secs(10), |ch| async move {
        AdminClient::new(ch)
            .describe_cluster(pb::DescribeClusterRequest {})
            .await
    })
    .await?
    .into_inner();
    d.controllers
        .iter()
        .find(|c| c.id == d.leader_id)
        .map(|c| c.address.clone())
        .context("no active controller")
}

/// One bench member: its heartbeat state.
struct Member {
    group: String,
    id: String,
    epoch: i32,
    owned: Vec<pb::TopicPartition>,
}

async fn heartbeat(
    client: &mut GroupCoordinatorClient<Channel>,
    m: &mut Member,
    topic: &str,
) -> anyhow::Result<u32> {
    let r = client
        .consumer_group_heartbeat(pb::ConsumerGroupHeartbeatRequest {
            group: m.group.clone(),
            member_id: m.id.clone(),
            member_epoch: m.epoch,
            subscribed_topics: (m.epoch == 0).then(|| pb::SubscribedTopics {
                topics: vec![topic.to_string()],
            }),
            owned: Some(pb::OwnedPartitions {
                partitions: m.owned.clone(),
            }),
            session_timeout_ms: 30_000,
            ..Default::default()
        })
        .await?
        .into_inner();
    m.epoch = r.member_epoch;
    m.owned = r.assignment;
    Ok(r.heartbeat_interval_ms)
}

async fn commits(args: &Args, bootstrap: &[String]) -> anyhow::Result<()> {
    let run = run_id();
    let topic = format!("gbench-{run}");
    create_topic(bootstrap, &topic, args.members as u32).await?;
    let leader = active_controller(bootstrap).await?;
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(call::connect(&leader).await?);
    }
    // join everyone, then heartbeat until each member owns exactly one partition
    let mut members = Vec::new();
    for g in 0..args.groups {
        for m in 0..args.members {
            members.push(Member {
                group: format!("gbench-{run}-{g}"),
                id: format!("member-{g}-{m}"),
                epoch: 0,
                owned: Vec::new(),
            });
        }
    }
    let joined = Instant::now();
    let mut client = GroupCoordinatorClient::new(channels[0].clone());
    loop {
        for m in &mut members {
            heartbeat(&mut client, m, &topic).await?;
        }
        if members.iter().all(|m| m.owned.len() == 1) {
            break;
        }
        if joined.elapsed() > Duration::from_secs(60) {
            bail!("members did not settle on one partition each");
        }
    }
    println!(
        "{} groups x {} members joined and settled in {:.2}s",
        args.groups,
        args.members,
        joined.elapsed().as_secs_f64()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let mut tasks = Vec::new();
    for (i, mut m) in members.into_iter().enumerate() {
        let channel = channels[i % channels.len()].clone();
        let (stop, done, hist, topic) = (stop.clone(), done.clone(), hist.clone(), topic.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = GroupCoordinatorClient::new(channel);
            let mut local = Histogram::<u64>::new(3).expect("histogram");
            let mut offset = 0i64;
            let mut last_beat = Instant::now();
            let tp = m.owned[0].clone();
            while !stop.load(Ordering::Relaxed) {
                if last_beat.elapsed() > Duration::from_secs(1) {
                    last_beat = Instant::now();
                    heartbeat(&mut client, &mut m, &topic).await?;
                }
                offset += 1;
                let t = Instant::now();
                client
                    .commit_offsets(pb::CommitOffsetsRequest {
                        group: m.group.clone(),
                        member_id: m.id.clone(),
                        member_epoch: m.epoch,
                        offsets: vec![pb::OffsetAndMetadata {
                            topic: tp.topic.clone(),
                            partition: tp.partition,
                            offset,
                            metadata: String::new(),
                            commit_time_ms: 0,
                        }],
                    })
                    .await?;
                local.record(t.elapsed().as_micros() as u64)?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            hist.lock().await.add(&local)?;
            anyhow::Ok(())
        }));
    }
    let started = Instant::now();
    let mut last = 0;
    for _ in 0..args.seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = done.load(Ordering::Relaxed);
        println!("  {:>8} commits/s", now - last);
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    for t in tasks {
        t.await??;
    }
    let total = done.load(Ordering::Relaxed);
    println!(
        "offset commits: {} members (one partition each, one commit in flight each): {:.0} commits/s over {:.1}s  {}",
        args.groups * args.members,
        total as f64 / secs,
        secs,
        percentiles(&*hist.lock().await)
    );
    Ok(())
}

/// Polls every consumer until the union of their assignments is all `partitions`, no two
/// overlap, and the counts differ by at most one; returns how long it took.
async fn settle(consumers: &mut [GroupConsumer], partitions: u32) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        for c in consumers.iter_mut() {
            c.poll(Duration::from_millis(1)).await?;
        }
        let mut all = BTreeSet::new();
        let mut count = 0;
        let (mut lo, mut hi) = (usize::MAX, 0);
        for c in consumers.iter() {
            let a = c.assignment();
            count += a.len();
            lo = lo.min(a.len());
            hi = hi.max(a.len());
            all.extend(a);
        }
        if all.len() == partitions as usize && count == all.len() && hi - lo <= 1 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "no settled assignment after 60 s ({} of {partitions})",
                all.len()
            );
        }
    }
}

async fn rebalance(args: &Args, bootstrap: &[String]) -> anyhow::Result<()> {
    let run = run_id();
    let topic = format!("rbench-{run}");
    create_topic(bootstrap, &topic, args.partitions).await?;
    let group = format!("rbench-{run}");
    let config = || {
        let mut c = GroupConsumerConfig::new(bootstrap.to_vec(), &group, &[topic.as_str()]);
        c.auto_commit = Some(Duration::from_millis(500));
        c
    };
    let mut consumers = Vec::new();
    for _ in 0..args.members {
        consumers.push(GroupConsumer::new(config())?);
    }
    let first = settle(&mut consumers, args.partitions).await?;
    println!(
        "{} members joined, {} partitions assigned in {:.0} ms",
        args.members,
        args.partitions,
        first.as_secs_f64() * 1000.0
    );
    let (mut leaves, mut joins) = (Vec::new(), Vec::new());
    for round in 0..5 {
        let leaving = consumers.pop().context("a member")?;
        let t = Instant::now();
        leaving.close().await?;
        let leave = t.elapsed() + settle(&mut consumers, args.partitions).await?;
        consumers.push(GroupConsumer::new(config())?);
        let join = settle(&mut consumers, args.partitions).await?;
        println!(
            "round {round}: member leaves -> {} members own all {} partitions in {:.0} ms; member joins -> {:.0} ms",
            args.members - 1,
            args.partitions,
            leave.as_secs_f64() * 1000.0,
            join.as_secs_f64() * 1000.0
        );
        leaves.push(leave);
        joins.push(join);
    }
    leaves.sort();
    joins.sort();
    println!(
        "rebalance, {} partitions: member leaves median {:.0} ms (max {:.0}); member joins median {:.0} ms (max {:.0})",
        args.partitions,
        leaves[leaves.len() / 2].as_secs_f64() * 1000.0,
        leaves[leaves.len() - 1].as_secs_f64() * 1000.0,
        joins[joins.len() / 2].as_secs_f64() * 1000.0,
        joins[joins.len() - 1].as_secs_f64() * 1000.0
    );
    for c in consumers {
        c.close().await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bootstrap = parse_bootstrap(&args.bootstrap)?;
    match args.mode {
        Mode::Commits => commits(&args, &bootstrap).await,
        Mode::Rebalance => rebalance(&args, &bootstrap).await,
    }
}
