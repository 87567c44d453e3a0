//! A test run: the cluster, the clients, the nemesis schedule, the final drain and the
//! check; and the self-test that proves planted bugs are caught.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use rand::Rng;
use weir_cluster::{Cluster, Spec};
use weir_jepsen::checker::{self, Options, Report};
use weir_jepsen::history::{self, Op};

use crate::nemesis::{self, Nemesis};
use crate::workload::{self, ClientContext, Recorder};

#[derive(Debug, Clone, Args)]
pub struct TestArgs {
    /// Faults, comma separated (`weir-jepsen faults` lists them): kill, kill-broker,
    /// kill-controller, kill-minority, kill-leaders, kill-all, pause, partition (a random
    /// shape) or partition-isolate|halves|ring|one-way|leaders|roles|replication,
    /// packet-loss, clock, power-loss, power-loss-all, corrupt, membership, reassign, zombie,
    /// none.
    #[arg(long, default_value = "kill,pause")]
    pub nemesis: String,
    /// Seconds of workload under faults (the final heal and drain come after).
    #[arg(long, default_value_t = 60)]
    pub time_limit: u64,
    #[arg(long, default_value_t = 10)]
    pub keys: u32,
    /// Concurrent producer clients.
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Concurrent consumer clients (each assigned every key).
    #[arg(long, default_value_t = 2)]
    pub consumers: usize,
    /// Concurrent consumer-group members (one group, subscribed to every key; they commit
    /// after every poll).
    #[arg(long, default_value_t = 2)]
    pub group_members: usize,
    /// Nodes, each running a controller and a broker in one process (the default shape).
    #[arg(long, default_value_t = 3, conflicts_with_all = ["controllers", "brokers"])]
    pub nodes: u32,
    /// Run separate controller processes instead (with --brokers).
    #[arg(long, requires = "brokers")]
    pub controllers: Option<u32>,
    /// Run separate broker processes (with --controllers).
    #[arg(long, requires = "controllers")]
    pub brokers: Option<u32>,
    /// Seconds between faults: a random value in this range (a fault is healed at the next
    /// step, so every other interval is quiet).
    #[arg(long, default_value = "5..15")]
    pub interval: String,
    /// Results directory (default: jepsen/results/<unix time>).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The weir binary (default: next to this one).
    #[arg(long, env = "WEIR_BIN")]
    pub weir: Option<PathBuf>,
    /// Switch on planted bugs in every node, comma separated (needs `weir` built with the
    /// `jepsen-bugs` feature; `weir-jepsen bugs` lists them).
    #[arg(long)]
    pub bug: Option<String>,
}

impl TestArgs {
    fn with(nemesis: &str, time_limit: u64, dir: PathBuf, weir: Option<PathBuf>) -> TestArgs {
        TestArgs {
            nemesis: nemesis.into(),
            time_limit,
            keys: 10,
            producers: 4,
            consumers: 1,
            group_members: 0,
            nodes: 3,
            controllers: None,
            brokers: None,
            interval: "3..6".into(),
            dir: Some(dir),
            weir,
            bug: None,
        }
    }
}

#[derive(Debug, Args)]
pub struct SelfTestArgs {
    /// Seconds of workload per run.
    #[arg(long, default_value_t = 40)]
    time_limit: u64,
    /// Only these planted bugs, comma separated (default: every one with a scenario).
    #[arg(long)]
    bugs: Option<String>,
    /// Results directory (default: jepsen/results/self-test-<unix time>).
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long, env = "WEIR_BIN")]
    weir: Option<PathBuf>,
}

/// A planted bug, the faults that expose it, and the anomalies that count as catching it.
pub struct Case {
    pub bug: &'static str,
    pub nemesis: &'static str,
    pub producers: usize,
    pub group_members: usize,
    /// Seconds between nemesis steps (a fault lasts one step).
    pub interval: &'static str,
    pub expected: &'static [&'static str],
}

/// Every planted bug the self-test runs. `skip-min-isr` and `truncate-to-hw` are not here:
/// with fsync before every acknowledgement and leaders elected only from the ISR, neither
/// can lose an acknowledged write under these faults (jepsen/README.md says why), so no
/// history can show them.
pub const CASES: &[Case] = &[
    Case {
        bug: "ack-before-replication",
        // a killed leader loses only what its followers had not fetched yet, a few
        // milliseconds of writes (one run caught a single one); a leader cut off from its
        // followers and the controller keeps acknowledging until its lease runs out
        nemesis: "kill-broker,partition-leaders",
        producers: 4,
        group_members: 0,
        interval: "3..6",
        expected: &["lost-write", "unseen"],
    },
    Case {
        bug: "ack-before-fsync",
        nemesis: "power-loss-all",
        producers: 4,
        group_members: 0,
        interval: "3..6",
        expected: &["lost-write", "unseen", "inconsistent-offsets"],
    },
    Case {
        bug: "unclean-election",
        nemesis: "kill-broker",
        producers: 4,
        group_members: 0,
        interval: "3..6",
        expected: &["lost-write", "unseen", "inconsistent-offsets"],
    },
    Case {
        bug: "stale-leader-epoch",
        nemesis: "pause",
        producers: 8,
        group_members: 0,
        // longer than the lease (the paused leader is replaced), shorter than the clients'
        // 5 s delivery timeout (its waiting produces are still answered after it resumes)
        interval: "2..4",
        expected: &["lost-write", "unseen", "inconsistent-offsets"],
    },
    Case {
        bug: "no-dedup",
        nemesis: "kill-broker,pause",
        producers: 4,
        group_members: 0,
        interval: "3..6",
        expected: &["duplicate"],
    },
    Case {
        bug: "stale-member-commit",
        nemesis: "zombie",
        producers: 4,
        group_members: 3,
        interval: "3..6",
        expected: &["committed-offset-backwards"],
    },
];

/// Runs a clean test under every fault the chosen cases use (it must pass), then one test
/// per planted bug (the checker must flag it with an anomaly that bug causes).
pub fn self_test(args: SelfTestArgs) -> anyhow::Result<bool> {
    let dir = args.dir.clone().unwrap_or_else(|| {
        PathBuf::from("jepsen/results").join(format!("self-test-{}", unix_secs()))
    });
    let chosen: Vec<&Case> = match &args.bugs {
        None => CASES.iter().collect(),
        Some(list) => {
            let mut out = Vec::new();
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let case = CASES.iter().find(|c| c.bug == name).with_context(|| {
                    let known: Vec<&str> = CASES.iter().map(|c| c.bug).collect();
                    format!("--bugs {name}: not one of {}", known.join(", "))
                })?;
                out.push(case);
            }
            out
        }
    };
    let mut clean_faults: Vec<&str> = Vec::new();
    for case in &chosen {
        for f in case.nemesis.split(',') {
            if !clean_faults.contains(&f) {
                clean_faults.push(f);
            }
        }
    }
    let mut clean = TestArgs::with(
        &clean_faults.join(","),
        args.time_limit,
        dir.join("clean"),
        args.weir.clone(),
    );
    clean.group_members = chosen.iter().map(|c| c.group_members).max().unwrap_or(0);
    clean.producers = chosen.iter().map(|c| c.producers).max().unwrap_or(4);
    let mut results = Vec::new();
    let report = run(&clean)?;
    results.push(("clean".to_string(), report.valid, report.counts.clone()));
    for case in &chosen {
        let mut t = TestArgs::with(
            case.nemesis,
            args.time_limit,
            dir.join(case.bug),
            args.weir.clone(),
        );
        t.group_members = case.group_members;
        t.producers = case.producers;
        t.interval = case.interval.to_string();
        t.bug = Some(case.bug.to_string());
        let report = run(&t)?;
        let caught = case.expected.iter().any(|a| report.counts.contains_key(*a));
        results.push((case.bug.to_string(), caught, report.counts.clone()));
    }
    let mut all_ok = true;
    for (name, ok, counts) in &results {
        println!(
            "self-test {name}: {} (anomalies: {counts:?})",
            if *ok {
                "as expected"
            } else {
                "NOT AS EXPECTED"
            }
        );
        all_ok &= ok;
    }
    println!("self-test {}", if all_ok { "passed" } else { "FAILED" });
    Ok(all_ok)
}

/// A nemesis event, for the summary and the timeline.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Fault {
    pub start_ns: u64,
    pub end_ns: u64,
    pub kind: String,
    pub node: String,
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
    let faults = nemesis::parse(&args.nemesis)?;
    let zombies = faults.iter().any(|f| f == "zombie");
    let scheduled: Vec<String> = faults
        .iter()
        .filter(|f| nemesis::scheduled(f))
        .cloned()
        .collect();
    if zombies && args.group_members == 0 {
        bail!("--nemesis zombie needs --group-members > 0");
    }
    let (controllers, brokers, combined) = match (args.controllers, args.brokers) {
        (Some(c), Some(b)) => (c, b, false),
        _ => (args.nodes, 0, true),
    };
    if controllers == 0 || (!combined && brokers == 0) {
        bail!("--nodes, --controllers and --brokers must be positive");
    }
    if faults.iter().any(|f| f == "membership") && controllers < 3 {
        bail!("--nemesis membership needs at least 3 controllers");
    }
    let interval = parse_interval(&args.interval)?;
    if args.keys == 0 || args.producers == 0 || args.consumers == 0 {
        bail!("--keys, --producers and --consumers must be positive");
    }
    let dir = match args.dir.clone() {
        Some(d) => d,
        None => PathBuf::from("jepsen/results").join(unix_secs().to_string()),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("--dir {}", dir.display()))?;
    // every run starts a new cluster: one left by an earlier run in the same --dir would
    // bring back its Raft state, with that run's node addresses
    let cluster_dir = dir.join("cluster");
    if cluster_dir.exists() {
        std::fs::remove_dir_all(&cluster_dir)
            .with_context(|| format!("remove the earlier run's {}", cluster_dir.display()))?;
    }
    let mut env = nemesis::node_env(&faults)?;
    if let Some(bugs) = &args.bug {
        env.push(("WEIR_JEPSEN_BUGS".to_string(), bugs.clone()));
    }
    let spec = Spec {
        controllers,
        brokers,
        combined,
        dir: dir.join("cluster"),
        weir: weir_binary(args.weir.clone())?,
        broker_lease_ms: 1500,
        env,
        tls: false,
    };
    let node_names: Vec<String> = if combined {
        (1..=controllers).map(|i| format!("node-{i}")).collect()
    } else {
        (1..=controllers)
            .map(|i| format!("controller-{i}"))
            .chain((1..=brokers).map(|i| format!("broker-{i}")))
            .collect()
    };
    Nemesis::prepare(&faults, &spec.dir, &node_names)?;
    if combined {
        eprintln!(
            "starting {controllers} nodes (controller + broker each) in {}",
            dir.display()
        );
    } else {
        eprintln!(
            "starting {controllers} controllers + {brokers} brokers in {}",
            dir.display()
        );
    }
    let mut cluster = Cluster::up(&spec, Duration::from_secs(60))?;
    let bootstrap: Vec<String> = cluster.bootstrap().split(',').map(str::to_string).collect();
    let rf = if combined { controllers } else { brokers }.min(3);
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
    let next_values: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.keys).map(|_| AtomicU64::new(1)).collect());
    let ctx = ClientContext {
        bootstrap: bootstrap.clone(),
        keys: args.keys,
        recorder: Arc::clone(&recorder),
        stop: Arc::clone(&stop),
        next_process: Arc::new(AtomicU64::new(0)),
        zombies,
    };
    let mut workers = Vec::new();
    for _ in 0..args.producers {
        workers.push(runtime.spawn(workload::producer_client(
            ctx.clone(),
            Arc::clone(&next_values),
        )));
    }
    for _ in 0..args.consumers {
        workers.push(runtime.spawn(workload::consumer_client(ctx.clone())));
    }
    for _ in 0..args.group_members {
        workers.push(runtime.spawn(workload::group_client(ctx.clone())));
    }

    // the nemesis runs on this thread: the cluster handle is blocking
    let mut nemesis = Nemesis::new(&scheduled, &cluster)?;
    let mut fault_log: Vec<Fault> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(args.time_limit);
    let mut rng = rand::rng();
    let mut active: Option<(nemesis::Applied, u64)> = None;
    while Instant::now() < deadline {
        let wait = Duration::from_secs(rng.random_range(interval.0..=interval.1));
        std::thread::sleep(wait.min(deadline.saturating_duration_since(Instant::now())));
        if let Some((applied, start_ns)) = active.take() {
            heal(&mut nemesis, &mut cluster, &applied);
            fault_log.push(Fault {
                start_ns,
                end_ns: recorder.now_ns(),
                kind: applied.kind,
                node: applied.detail,
            });
            continue;
        }
        if scheduled.is_empty() || Instant::now() >= deadline {
            continue;
        }
        let kind = scheduled[rng.random_range(0..scheduled.len())].clone();
        let start_ns = recorder.now_ns();
        match nemesis.inject(&mut cluster, &kind) {
            Ok(applied) => {
                eprintln!("nemesis: {} {}", applied.kind, applied.detail);
                active = Some((applied, start_ns));
            }
            Err(e) => eprintln!("nemesis: {kind} failed: {e:#}"),
        }
    }
    if let Some((applied, start_ns)) = active.take() {
        heal(&mut nemesis, &mut cluster, &applied);
        fault_log.push(Fault {
            start_ns,
            end_ns: recorder.now_ns(),
            kind: applied.kind,
            node: applied.detail,
        });
    }
    nemesis.heal_all(&mut cluster);
    let workload_end_ns = recorder.now_ns();
    stop.store(true, Ordering::SeqCst);
    runtime.block_on(async {
        for w in workers {
            let _ = w.await;
        }
    });
    eprintln!("healed; waiting for the cluster");
    if let Err(e) = cluster.wait_ready(Duration::from_secs(60)) {
        eprintln!("cluster not ready after the heal ({e:#}); draining what can be read");
    }
    std::thread::sleep(Duration::from_secs(3));
    eprintln!("draining every key from offset 0");
    let incomplete = runtime.block_on(workload::drain(
        bootstrap.clone(),
        args.keys,
        Arc::clone(&recorder),
        Duration::from_secs(90),
    ))?;
    for key in &incomplete {
        eprintln!("drain: {key}");
    }
    let _ = cluster.down(Duration::from_secs(3));
    drop(nemesis); // removes the firewall chain

    let ops = std::mem::take(&mut *recorder.ops.lock().unwrap_or_else(|p| p.into_inner()));
    let report = write_results(&dir, &ops, &fault_log, &incomplete, true)?;
    if let Err(e) = crate::plot::draw(&dir.join("timeline.png"), &ops, &fault_log, workload_end_ns)
    {
        eprintln!("plot: {e:#}");
    }
    Ok(report)
}

fn heal(nemesis: &mut Nemesis, cluster: &mut Cluster, applied: &nemesis::Applied) {
    match nemesis.heal(cluster, applied) {
        Ok(()) => eprintln!("nemesis: healed {} {}", applied.kind, applied.detail),
        Err(e) => eprintln!(
            "nemesis: healing {} {} failed: {e:#}",
            applied.kind, applied.detail
        ),
    }
}

fn summary(report: &Report, faults: &[Fault], ops: &[Op], incomplete: &[String]) -> String {
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
    for key in incomplete {
        s.push_str(&format!("drain incomplete: {key}\n"));
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
    incomplete: &[String],
    idempotent: bool,
) -> anyhow::Result<Report> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(dir.join("history.jsonl"))?);
    history::write(&mut file, ops)?;
    // on disk before the check runs: a history outlives a checker that fails on it
    std::io::Write::flush(&mut file)?;
    drop(file);
    let report = checker::check(ops, Options { idempotent });
    let results = serde_json::json!({
        "report": report,
        "faults": faults,
        "drain_incomplete": incomplete,
    });
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_vec_pretty(&results)?,
    )?;
    let text = summary(&report, faults, ops, incomplete);
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
    print!("{}", summary(&report, &[], &ops, &[]));
    Ok(report.valid)
}

/// Draws `<dir>/timeline.png` again from a run's `history.jsonl` and `results.json`.
pub fn plot_dir(dir: &Path) -> anyhow::Result<bool> {
    let path = dir.join("history.jsonl");
    let file = std::fs::File::open(&path).with_context(|| format!("{}", path.display()))?;
    let ops = history::read(std::io::BufReader::new(file))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let results = dir.join("results.json");
    let faults: Vec<Fault> = match std::fs::read(&results) {
        Ok(bytes) => {
            let value: serde_json::Value =
                serde_json::from_slice(&bytes).with_context(|| format!("{}", results.display()))?;
            serde_json::from_value(value["faults"].clone())
                .with_context(|| format!("{}: faults", results.display()))?
        }
        Err(_) => Vec::new(),
    };
    let end = faults.iter().map(|f| f.end_ns).max().unwrap_or(0);
    let out = dir.join("timeline.png");
    crate::plot::draw(&out, &ops, &faults, end)?;
    println!("{}", out.display());
    Ok(true)
}
