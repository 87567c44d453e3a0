//! A test run: the cluster, the clients, the nemesis, the final drain and the check.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use rand::Rng;
use weir_client::{
    Acks, ClientError, Consumer, ConsumerConfig, GroupConsumer, GroupConsumerConfig, OffsetReset,
    Producer, ProducerConfig, RebalanceListener, SeekTo, TopicPartition,
};
use weir_cluster::{Cluster, Spec};
use weir_jepsen::checker::{self, Options, Report};
use weir_jepsen::history::{self, F, Op, Send, Type};
use weir_types::ErrorCode;
use weir_types::error::Outcome;

#[derive(Debug, Clone, Args)]
pub struct TestArgs {
    /// Faults, comma separated: kill (kill -9 a random node, restart it later), kill-broker
    /// (a random broker), pause (SIGSTOP a random node, SIGCONT later), kill-controller (the
    /// active controller), partition (isolate a node or split the nodes in two halves, with
    /// iptables; needs root), none.
    #[arg(long, default_value = "kill,pause")]
    nemesis: String,
    /// Seconds of workload under faults (the final heal and drain come after).
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    #[arg(long, default_value_t = 10)]
    keys: u32,
    /// Concurrent producer clients.
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Concurrent consumer clients (each assigned every key).
    #[arg(long, default_value_t = 2)]
    consumers: usize,
    /// Concurrent consumer-group members (one group, subscribed to every key; they commit
    /// after every poll).
    #[arg(long, default_value_t = 2)]
    group_members: usize,
    #[arg(long, default_value_t = 3)]
    controllers: u32,
    #[arg(long, default_value_t = 3)]
    brokers: u32,
    /// Seconds between faults: a random value in this range (a fault is healed at the next
    /// step, so every other interval is quiet).
    #[arg(long, default_value = "5..15")]
    interval: String,
    /// Results directory (default: jepsen/results/<unix time>).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The weir binary (default: next to this one).
    #[arg(long, env = "WEIR_BIN")]
    weir: Option<PathBuf>,
    /// Switch on a planted bug in every broker (needs `weir` built with the `jepsen-bugs`
    /// feature): ack-before-replication.
    #[arg(long)]
    bug: Option<String>,
}

#[derive(Debug, Args)]
pub struct SelfTestArgs {
    /// Seconds of workload per run.
    #[arg(long, default_value_t = 40)]
    time_limit: u64,
    /// Results directory (default: jepsen/results/self-test-<unix time>).
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long, env = "WEIR_BIN")]
    weir: Option<PathBuf>,
}

/// Runs a clean test, which must pass, and one test per planted bug, which the checker must
/// flag with the anomaly that bug causes.
pub fn self_test(args: SelfTestArgs) -> anyhow::Result<bool> {
    let dir = args.dir.clone().unwrap_or_else(|| {
        PathBuf::from("jepsen/results").join(format!(
            "self-test-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        ))
    });
    // (bug, anomalies that count as catching it)
    let cases: [(Option<&str>, &[&str]); 2] = [
        (None, &[]),
        (Some("ack-before-replication"), &["lost-write", "unseen"]),
    ];
    let mut all_ok = true;
    for (bug, expected) in cases {
        let name = bug.unwrap_or("clean");
        let args = TestArgs {
            nemesis: "kill-broker".into(),
            time_limit: args.time_limit,
            keys: 10,
            producers: 4,
            consumers: 1,
            group_members: 0,
            controllers: 3,
            brokers: 3,
            interval: "3..6".into(),
            dir: Some(dir.join(name)),
            weir: args.weir.clone(),
            bug: bug.map(str::to_string),
        };
        let report = run(&args)?;
        let ok = match bug {
            None => report.valid,
            Some(_) => expected.iter().any(|a| report.counts.contains_key(*a)),
        };
        println!(
            "self-test {name}: {} (anomalies: {:?})",
            if ok { "as expected" } else { "NOT AS EXPECTED" },
            report.counts
        );
        all_ok &= ok;
    }
    println!("self-test {}", if all_ok { "passed" } else { "FAILED" });
    Ok(all_ok)
}

/// The history being recorded, shared by every client.
#[derive(Default)]
struct Recorder {
    ops: Mutex<Vec<Op>>,
    started: Option<Instant>,
}

impl Recorder {
    fn record(&self, mut op: Op) {
        op.time_ns = self.started.map_or(0, |s| s.elapsed().as_nanos() as u64);
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        op.index = ops.len() as u64;
        ops.push(op);
    }
}

/// What every workload client shares: where the cluster is, the keys, the history, the stop
/// flag and the process-id counter.
#[derive(Clone)]
struct ClientContext {
    bootstrap: Vec<String>,
    keys: u32,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    next_process: Arc<AtomicU64>,
}

/// A nemesis event, for the summary and the timeline.
#[derive(Debug, Clone, serde::Serialize)]
struct Fault {
    start_ns: u64,
    end_ns: u64,
    kind: String,
    node: String,
}

fn parse_interval(raw: &str) -> anyhow::Result<(u64, u64)> {
    let (lo, hi) = raw
        .split_once("..")
        .context("--interval: expected LOW..HIGH seconds")?;
    let (lo, hi): (u64, u64) = (lo.trim().parse()?, hi.trim().parse()?);
    if lo == 0 || hi < lo {
        bail!("--interval {raw}: need 0 < LOW <= HIGH");
    }
    Ok((lo, hi))
}

fn weir_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let me = std::env::current_exe()?;
    let next = me.with_file_name("weir");
    if next.exists() {
        return Ok(next);
    }
    bail!("no weir binary next to {}; pass --weir", me.display())
}

pub fn test(args: TestArgs) -> anyhow::Result<bool> {
    Ok(run(&args)?.valid)
}

/// One test run; prints the summary and returns the checker's report.
fn run(args: &TestArgs) -> anyhow::Result<Report> {
    let faults: Vec<String> = args
        .nemesis
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s != "none")
        .collect();
    for f in &faults {
        if ![
            "kill",
            "kill-broker",
            "pause",
            "kill-controller",
            "partition",
        ]
        .contains(&f.as_str())
        {
            bail!(
                "--nemesis {f}: not one of kill, kill-broker, pause, kill-controller, partition, none"
            );
        }
    }
    let interval = parse_interval(&args.interval)?;
    if args.keys == 0 || args.producers == 0 || args.consumers == 0 {
        bail!("--keys, --producers and --consumers must be positive");
    }
    let dir = match args.dir.clone() {
        Some(d) => d,
        None => PathBuf::from("jepsen/results").join(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs()
                .to_string(),
        ),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("--dir {}", dir.display()))?;
    let spec = Spec {
        controllers: args.controllers,
        brokers: args.brokers,
        dir: dir.join("cluster"),
        weir: weir_binary(args.weir.clone())?,
        broker_lease_ms: 1500,
        env: args
            .bug
            .iter()
            .map(|b| ("WEIR_JEPSEN_BUGS".to_string(), b.clone()))
            .collect(),
    };
    eprintln!(
        "starting {} controllers + {} brokers in {}",
        args.controllers,
        args.brokers,
        dir.display()
    );
    let mut cluster = Cluster::up(&spec, Duration::from_secs(60))?;
    let bootstrap: Vec<String> = cluster.bootstrap().split(',').map(str::to_string).collect();
    let rf = args.brokers.min(3);
    let out = std::process::Command::new(&spec.weir)
        .args([
            "topic",
            "create",
            "jepsen",
            "--partitions",
            &args.keys.to_string(),
            "--replication-factor",
            &rf.to_string(),
        ])
        .env("WEIR_BOOTSTRAP", bootstrap.join(","))
        .output()?;
    if !out.status.success() {
        bail!("create topic: {}", String::from_utf8_lossy(&out.stderr));
    }

    let recorder = Arc::new(Recorder {
        ops: Mutex::new(Vec::new()),
        started: Some(Instant::now()),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let next_process = Arc::new(AtomicU64::new(0));
    let next_values: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.keys).map(|_| AtomicU64::new(1)).collect());
    let ctx = ClientContext {
        bootstrap: bootstrap.clone(),
        keys: args.keys,
        recorder: Arc::clone(&recorder),
        stop: Arc::clone(&stop),
        next_process,
    };
    let mut workers = Vec::new();
    for _ in 0..args.producers {
        workers.push(runtime.spawn(producer_client(ctx.clone(), Arc::clone(&next_values))));
    }
    for _ in 0..args.consumers {
        workers.push(runtime.spawn(consumer_client(ctx.clone())));
    }
    for _ in 0..args.group_members {
        workers.push(runtime.spawn(group_client(ctx.clone())));
    }

    // the nemesis runs on this thread: the cluster handle is blocking
    let mut fault_log: Vec<Fault> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(args.time_limit);
    let mut rng = rand::rng();
    let firewall = if faults.iter().any(|f| f == "partition") {
        Some(Firewall::new()?)
    } else {
        None
    };
    let mut active: Option<(String, String, u64)> = None;
    while Instant::now() < deadline {
        let wait = Duration::from_secs(rng.random_range(interval.0..=interval.1));
        std::thread::sleep(wait.min(deadline.saturating_duration_since(Instant::now())));
        let now_ns = recorder
            .started
            .map_or(0, |s| s.elapsed().as_nanos() as u64);
        if let Some((kind, node, start_ns)) = active.take() {
            heal(&mut cluster, firewall.as_ref(), &kind, &node);
            fault_log.push(Fault {
                start_ns,
                end_ns: now_ns,
                kind,
                node,
            });
            continue;
        }
        if faults.is_empty() || Instant::now() >= deadline {
            continue;
        }
        let kind = faults[rng.random_range(0..faults.len())].clone();
        let node = match kind.as_str() {
            "kill-controller" => {
                active_controller(&cluster).unwrap_or_else(|| "controller-1".into())
            }
            "kill-broker" => {
                let names: Vec<String> = cluster
                    .nodes
                    .iter()
                    .filter(|n| n.name.starts_with("broker"))
                    .map(|n| n.name.clone())
                    .collect();
                names[rng.random_range(0..names.len())].clone()
            }
            "partition" => {
                // isolate one node, or split the nodes into two random halves
                let mut names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
                if rng.random_bool(0.5) {
                    names[rng.random_range(0..names.len())].clone()
                } else {
                    use rand::seq::SliceRandom;
                    names.shuffle(&mut rng);
                    let half = names.len() / 2;
                    format!("{}|{}", names[..half].join(","), names[half..].join(","))
                }
            }
            _ => {
                let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
                names[rng.random_range(0..names.len())].clone()
            }
        };
        eprintln!("nemesis: {kind} {node}");
        let done = match (kind.as_str(), firewall.as_ref()) {
            ("pause", _) => cluster.pause(&node),
            ("partition", Some(fw)) => fw.partition(&cluster, &node),
            _ => cluster.kill(&node),
        };
        if let Err(e) = done {
            eprintln!("nemesis: {kind} {node} failed: {e:#}");
            continue;
        }
        active = Some((kind, node, now_ns));
    }
    if let Some((kind, node, start_ns)) = active.take() {
        heal(&mut cluster, firewall.as_ref(), &kind, &node);
        let end_ns = recorder
            .started
            .map_or(0, |s| s.elapsed().as_nanos() as u64);
        fault_log.push(Fault {
            start_ns,
            end_ns,
            kind,
            node,
        });
    }
    stop.store(true, Ordering::SeqCst);
    runtime.block_on(async {
        for w in workers {
            let _ = w.await;
        }
    });
    eprintln!("healed; waiting for the cluster");
    cluster.wait_ready(Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_secs(3));
    eprintln!("draining every key from offset 0");
    runtime.block_on(drain(bootstrap.clone(), args.keys, Arc::clone(&recorder)))?;
    let _ = cluster.down(Duration::from_secs(3));

    let ops = std::mem::take(&mut *recorder.ops.lock().unwrap_or_else(|p| p.into_inner()));
    write_results(&dir, &ops, &fault_log, true)
}

fn heal(cluster: &mut Cluster, firewall: Option<&Firewall>, kind: &str, node: &str) {
    let healed = match (kind, firewall) {
        ("pause", _) => cluster.resume(node),
        ("partition", Some(fw)) => fw.heal(),
        _ => cluster.start(node),
    };
    match healed {
        Ok(()) => eprintln!("nemesis: healed {kind} {node}"),
        Err(e) => eprintln!("nemesis: healing {kind} {node} failed: {e:#}"),
    }
}

/// Network partitions: DROP rules on the nodes' addresses (each node listens on, and
/// connects from, its own loopback address) in an iptables chain of this run's own, hooked
/// into OUTPUT (loopback traffic passes it). Clients connect from 127.0.0.1 and are not cut.
struct Firewall {
    chain: String,
}

fn iptables(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("iptables")
        .args(args)
        .output()
        .context("run iptables (the partition nemesis needs it, and root)")?;
    if !out.status.success() {
        bail!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Firewall {
    fn new() -> anyhow::Result<Firewall> {
        let chain = format!("WEIR-JEPSEN-{}", std::process::id());
        iptables(&["-N", &chain])?;
        iptables(&["-I", "OUTPUT", "1", "-j", &chain])?;
        Ok(Firewall { chain })
    }

    /// `spec` is one node name (cut from every other node) or `a,b|c,d` (two sides).
    fn partition(&self, cluster: &Cluster, spec: &str) -> anyhow::Result<()> {
        let ip = |name: &str| -> anyhow::Result<String> {
            let node = cluster.node(name)?;
            Ok(node
                .addr
                .rsplit_once(':')
                .map_or(node.addr.clone(), |(h, _)| h.to_string()))
        };
        let (a, b): (Vec<&str>, Vec<String>) = match spec.split_once('|') {
            Some((x, y)) => (
                x.split(',').collect(),
                y.split(',').map(str::to_string).collect(),
            ),
            None => (
                vec![spec],
                cluster
                    .nodes
                    .iter()
                    .filter(|n| n.name != spec)
                    .map(|n| n.name.clone())
                    .collect(),
            ),
        };
        for x in &a {
            for y in &b {
                let (x, y) = (ip(x)?, ip(y)?);
                iptables(&["-A", &self.chain, "-s", &x, "-d", &y, "-j", "DROP"])?;
                iptables(&["-A", &self.chain, "-s", &y, "-d", &x, "-j", "DROP"])?;
            }
        }
        Ok(())
    }

    fn heal(&self) -> anyhow::Result<()> {
        iptables(&["-F", &self.chain])
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        let _ = iptables(&["-D", "OUTPUT", "-j", &self.chain]);
        let _ = iptables(&["-F", &self.chain]);
        let _ = iptables(&["-X", &self.chain]);
    }
}

fn active_controller(cluster: &Cluster) -> Option<String> {
    let d = cluster.describe().ok()?;
    Some(format!("controller-{}", d.leader_id)).filter(|_| d.leader_id != 0)
}

/// ok / fail / info for a client error.
fn classify(e: &ClientError) -> Type {
    match e {
        ClientError::Server { code, .. } if code.outcome() == Outcome::Definite => Type::Fail,
        ClientError::Invalid { .. } => Type::Fail,
        ClientError::Server {
            code: ErrorCode::InvalidArgument,
            ..
        } => Type::Fail,
        _ => Type::Info,
    }
}

/// Sends values 1, 2, 3, ... per key, one at a time, as an idempotent acks=all producer. A
/// client whose send ends `info` is replaced (new process id, new producer).
async fn producer_client(ctx: ClientContext, next_values: Arc<Vec<AtomicU64>>) {
    let ClientContext {
        bootstrap,
        keys,
        recorder,
        stop,
        next_process,
    } = ctx;
    'client: while !stop.load(Ordering::SeqCst) {
        let process = next_process.fetch_add(1, Ordering::SeqCst);
        let mut config = ProducerConfig::new(bootstrap.clone());
        config.acks = Acks::All;
        config.idempotence = true;
        config.linger_ms = 0;
        config.delivery_timeout = Duration::from_secs(5);
        let Ok(producer) = Producer::new(config) else {
            return;
        };
        while !stop.load(Ordering::SeqCst) {
            let key = rand::rng().random_range(0..keys);
            let value = next_values[key as usize].fetch_add(1, Ordering::SeqCst);
            let mut invoke = Op::new(process, Type::Invoke, F::Send);
            invoke.sends = vec![Send {
                key,
                value,
                offset: None,
            }];
            recorder.record(invoke.clone());
            let record = weir_types::Record {
                timestamp_ms: 0,
                key: None,
                value: Some(Bytes::from(value.to_string())),
                headers: Vec::new(),
            };
            let sent = match producer.send("jepsen", Some(key), record).await {
                Ok(delivery) => {
                    producer.flush().await;
                    delivery.await
                }
                Err(e) => Err(e),
            };
            let mut done = invoke;
            match sent {
                Ok(meta) => {
                    done.kind = Type::Ok;
                    done.sends[0].offset = meta.offset.map(|o| o.0);
                    recorder.record(done);
                }
                Err(e) => {
                    done.kind = classify(&e);
                    done.error = Some(e.to_string());
                    let replace = done.kind == Type::Info;
                    recorder.record(done);
                    if replace {
                        continue 'client;
                    }
                }
            }
        }
    }
}

fn decode(records: Vec<weir_client::ConsumerRecord>) -> BTreeMap<u32, Vec<(i64, u64)>> {
    let mut polls: BTreeMap<u32, Vec<(i64, u64)>> = BTreeMap::new();
    for r in records {
        let value = r
            .value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse().ok());
        if let Some(v) = value {
            polls.entry(r.partition).or_default().push((r.offset.0, v));
        }
    }
    polls
}

/// Assigns every key from the beginning and polls; a client whose poll fails is replaced.
async fn consumer_client(ctx: ClientContext) {
    let ClientContext {
        bootstrap,
        keys,
        recorder,
        stop,
        next_process,
    } = ctx;
    while !stop.load(Ordering::SeqCst) {
        let process = next_process.fetch_add(1, Ordering::SeqCst);
        let mut config = ConsumerConfig::new(bootstrap.clone());
        config.fetch_wait_ms = 200;
        let Ok(mut consumer) = Consumer::new(config) else {
            return;
        };
        let all: Vec<u32> = (0..keys).collect();
        let mut assign = Op::new(process, Type::Invoke, F::Assign);
        assign.keys = all.clone();
        recorder.record(assign.clone());
        match tokio::time::timeout(
            Duration::from_secs(10),
            consumer.assign("jepsen", &all, SeekTo::Beginning),
        )
        .await
        {
            Ok(Ok(())) => {
                assign.kind = Type::Ok;
                recorder.record(assign);
            }
            outcome => {
                assign.kind = Type::Info;
                assign.error = Some(match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".into(),
                });
                recorder.record(assign);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        }
        while !stop.load(Ordering::SeqCst) {
            let invoke = Op::new(process, Type::Invoke, F::Poll);
            recorder.record(invoke.clone());
            let mut done = invoke;
            match consumer.poll(Duration::from_millis(300)).await {
                Ok(records) => {
                    done.kind = Type::Ok;
                    done.polls = decode(records);
                    recorder.record(done);
                }
                Err(e) => {
                    done.kind = Type::Info;
                    done.error = Some(e.to_string());
                    recorder.record(done);
                    break;
                }
            }
        }
    }
}

/// Collects partitions taken away inside `poll`.
struct Revocations(Arc<Mutex<Vec<u32>>>);

impl RebalanceListener for Revocations {
    fn on_revoked(&mut self, partitions: &[TopicPartition]) {
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        r.extend(partitions.iter().map(|p| p.partition));
    }
}

/// A consumer-group member: subscribes, polls, and commits its positions after every poll.
/// Rebalances are recorded as assign operations (first without the revoked keys, then with
/// the current assignment), so the checker forgets what the member gave up. A member whose
/// poll fails is replaced by a new member.
async fn group_client(ctx: ClientContext) {
    let ClientContext {
        bootstrap,
        recorder,
        stop,
        next_process,
        ..
    } = ctx;
    while !stop.load(Ordering::SeqCst) {
        let process = next_process.fetch_add(1, Ordering::SeqCst);
        let mut config = GroupConsumerConfig::new(bootstrap.clone(), "jepsen-group", &["jepsen"]);
        config.auto_commit = None;
        config.offset_reset = OffsetReset::Earliest;
        config.session_timeout = Duration::from_secs(6);
        config.consumer.fetch_wait_ms = 200;
        let Ok(mut consumer) = GroupConsumer::new(config) else {
            return;
        };
        let revoked = Arc::new(Mutex::new(Vec::new()));
        consumer.set_listener(Box::new(Revocations(Arc::clone(&revoked))));
        recorder.record(Op::new(process, Type::Ok, F::Subscribe));
        let mut owned: Vec<u32> = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let invoke = Op::new(process, Type::Invoke, F::Poll);
            recorder.record(invoke.clone());
            let polled = consumer.poll(Duration::from_millis(300)).await;
            let now: Vec<u32> = consumer.assignment().iter().map(|p| p.partition).collect();
            let gone: Vec<u32> =
                std::mem::take(&mut *revoked.lock().unwrap_or_else(|p| p.into_inner()));
            if !gone.is_empty() || now != owned {
                let mut forget = Op::new(process, Type::Ok, F::Assign);
                forget.keys = now.iter().copied().filter(|k| !gone.contains(k)).collect();
                recorder.record(forget);
                let mut assign = Op::new(process, Type::Ok, F::Assign);
                assign.keys = now.clone();
                recorder.record(assign);
                owned = now;
            }
            let mut done = invoke;
            match polled {
                Ok(records) => {
                    done.kind = Type::Ok;
                    done.polls = decode(records);
                    recorder.record(done);
                }
                Err(e) => {
                    done.kind = Type::Info;
                    done.error = Some(e.to_string());
                    recorder.record(done);
                    break;
                }
            }
            let positions = consumer.positions();
            if positions.is_empty() {
                continue;
            }
            let mut commit = Op::new(process, Type::Invoke, F::Commit);
            commit.group = Some("jepsen-group".into());
            commit.commits = positions.iter().map(|(tp, o)| (tp.partition, *o)).collect();
            recorder.record(commit.clone());
            match consumer.commit().await {
                Ok(()) => {
                    commit.kind = Type::Ok;
                    recorder.record(commit);
                }
                Err(e) => {
                    commit.kind = classify(&e);
                    commit.error = Some(e.to_string());
                    recorder.record(commit);
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), consumer.close()).await;
    }
}

/// Reads every key from offset 0 up to its high watermark with a fresh client.
async fn drain(bootstrap: Vec<String>, keys: u32, recorder: Arc<Recorder>) -> anyhow::Result<()> {
    let process = u64::MAX / 2;
    let mut consumer = Consumer::new(ConsumerConfig::new(bootstrap))?;
    let mut ends = BTreeMap::new();
    for key in 0..keys {
        ends.insert(key, consumer.resolve("jepsen", key, SeekTo::End).await?);
    }
    let all: Vec<u32> = (0..keys).collect();
    let mut assign = Op::new(process, Type::Ok, F::Assign);
    assign.keys = all.clone();
    recorder.record(assign);
    consumer.assign("jepsen", &all, SeekTo::Beginning).await?;
    let mut reached: BTreeMap<u32, i64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while ends
        .iter()
        .any(|(k, end)| reached.get(k).copied().unwrap_or(0) < *end)
    {
        if Instant::now() > deadline {
            bail!("drain did not reach the end of every key in 120 s: {reached:?} of {ends:?}");
        }
        let records = consumer.poll(Duration::from_millis(500)).await?;
        let polls = decode(records);
        for (k, read) in &polls {
            if let Some((o, _)) = read.last() {
                reached.insert(*k, o + 1);
            }
        }
        if !polls.is_empty() {
            let mut op = Op::new(process, Type::Ok, F::Poll);
            op.polls = polls;
            recorder.record(op);
        }
    }
    Ok(())
}

fn summary(report: &Report, faults: &[Fault], ops: &[Op]) -> String {
    let mut s = String::new();
    let secs = ops.last().map_or(0.0, |o| o.time_ns as f64 / 1e9);
    s.push_str(&format!(
        "{} operations over {:.1} s; sends ok {} / info {} / fail {}; ok polls {} reading {} values over {} keys\n",
        ops.len(),
        secs,
        report.stats.sends_ok,
        report.stats.sends_info,
        report.stats.sends_fail,
        report.stats.polls_ok,
        report.stats.values_read,
        report.stats.keys
    ));
    s.push_str(&format!("faults: {}\n", faults.len()));
    for f in faults {
        s.push_str(&format!(
            "  {:>7.1}s - {:>7.1}s  {} {}\n",
            f.start_ns as f64 / 1e9,
            f.end_ns as f64 / 1e9,
            f.kind,
            f.node
        ));
    }
    if report.counts.is_empty() {
        s.push_str("anomalies: none\n");
    } else {
        s.push_str("anomalies:\n");
        for (name, n) in &report.counts {
            let failure = if report.failures.contains(name) {
                "FAILURE"
            } else {
                "allowed"
            };
            s.push_str(&format!("  {name}: {n} ({failure})\n"));
        }
    }
    s.push_str(if report.valid {
        "valid: yes\n"
    } else {
        "valid: NO\n"
    });
    s
}

fn write_results(
    dir: &Path,
    ops: &[Op],
    faults: &[Fault],
    idempotent: bool,
) -> anyhow::Result<Report> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(dir.join("history.jsonl"))?);
    history::write(&mut file, ops)?;
    let report = checker::check(ops, Options { idempotent });
    let results = serde_json::json!({ "report": report, "faults": faults });
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_vec_pretty(&results)?,
    )?;
    let text = summary(&report, faults, ops);
    std::fs::write(dir.join("summary.txt"), &text)?;
    print!("{text}");
    println!("results in {}", dir.display());
    Ok(report)
}

pub fn check_file(path: &Path, idempotent: bool) -> anyhow::Result<bool> {
    let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let ops = history::read(std::io::BufReader::new(file))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let report = checker::check(&ops, Options { idempotent });
    print!("{}", summary(&report, &[], &ops));
    Ok(report.valid)
}
