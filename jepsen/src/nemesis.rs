//! The nemesis: faults injected into a running cluster and healed at the next step.
//!
//! Every fault is one call to [`Nemesis::inject`], which returns what it did and how to undo
//! it; [`Nemesis::heal`] undoes it. The schedule (in `run`) alternates faults and quiet
//! periods. Faults act on processes (`kill -9`, `SIGSTOP`), on the network between node
//! addresses (iptables), on a node's wall clock (libfaketime), and on a stopped node's files
//! (power loss: back to what was fsynced; corruption).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use rand::Rng;
use rand::seq::SliceRandom;
use weir_cluster::{Cluster, Role};
use weir_faults::journal;

/// Every fault the nemesis knows, with what it does.
pub const FAULTS: &[(&str, &str)] = &[
    ("kill", "kill -9 a random node; restart it at the next step"),
    ("kill-broker", "kill -9 a random broker"),
    ("kill-controller", "kill -9 the active controller"),
    (
        "kill-minority",
        "kill -9 one random controller and one random broker",
    ),
    (
        "kill-leaders",
        "kill -9 the active controller and the broker leading the most partitions",
    ),
    ("kill-all", "kill -9 every node at once"),
    ("pause", "SIGSTOP a random node; SIGCONT at the next step"),
    (
        "partition",
        "a network partition of a random shape (one of the partition-* faults)",
    ),
    (
        "partition-isolate",
        "cut one random node off from all others",
    ),
    ("partition-halves", "split the nodes into two random halves"),
    (
        "partition-ring",
        "a ring: each node reaches a majority, no two the same majority",
    ),
    (
        "partition-one-way",
        "random halves; packets from one half to the other are dropped, not back",
    ),
    (
        "partition-leaders",
        "cut the active controller and the busiest partition leader off from the rest",
    ),
    ("partition-roles", "cut every controller-broker link"),
    ("partition-replication", "cut every broker-broker link"),
    (
        "packet-loss",
        "drop 10-40 % of the packets on every link between nodes (iptables statistic)",
    ),
    (
        "clock",
        "bump the wall clock of up to half the nodes by up to ±300 s (libfaketime)",
    ),
    (
        "power-loss",
        "kill -9 a random broker and cut its files back to what was fsynced, sometimes leaving a torn partial write",
    ),
    ("power-loss-all", "the same on every broker at once"),
    (
        "corrupt",
        "kill -9 a random broker and flip a bit, truncate, or scribble over one of its segment or index files",
    ),
    (
        "membership",
        "remove a follower controller from the quorum, wipe it, and add it back empty at the next step",
    ),
    (
        "reassign",
        "move a random partition to a random set of brokers (a new preferred leader)",
    ),
    (
        "zombie",
        "group members crash now and then and commit their stale positions after the group moved on",
    ),
];

/// Faults that act through the schedule (`zombie` lives in the workload).
pub fn scheduled(name: &str) -> bool {
    name != "zombie"
}

pub fn parse(raw: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for name in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if name == "none" {
            continue;
        }
        if !FAULTS.iter().any(|(n, _)| *n == name) {
            let known: Vec<&str> = FAULTS.iter().map(|(n, _)| *n).collect();
            bail!("--nemesis {name}: not one of {}, none", known.join(", "));
        }
        out.push(name.to_string());
    }
    Ok(out)
}

/// Where libfaketime lives on Debian (package `faketime`).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Environment every node needs for the chosen faults (`{node}`/`{dir}` are filled in by
/// the cluster).
pub fn node_env(faults: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut env = Vec::new();
    if faults.iter().any(|f| f == "clock") {
        if !Path::new(LIBFAKETIME).exists() {
            bail!("--nemesis clock needs libfaketime ({LIBFAKETIME}; apt-get install faketime)");
        }
        env.extend([
            ("LD_PRELOAD".to_string(), LIBFAKETIME.to_string()),
            (
                "FAKETIME_TIMESTAMP_FILE".to_string(),
                "{dir}/{node}.faketime".to_string(),
            ),
            // wall clock only: a monotonic clock does not jump on real machines either
            ("FAKETIME_DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
            ("FAKETIME_CACHE_DURATION".to_string(), "1".to_string()),
        ]);
    }
    if faults.iter().any(|f| f.starts_with("power-loss")) {
        env.push((
            "WEIR_FSYNC_JOURNAL".to_string(),
            "{dir}/{node}.fsync-journal".to_string(),
        ));
    }
    Ok(env)
}

/// What a fault did, and what undoes it.
#[derive(Debug, Clone)]
pub struct Applied {
    pub kind: String,
    /// Which nodes or links, for the timeline.
    pub detail: String,
    heal: Heal,
}

#[derive(Debug, Clone)]
enum Heal {
    Start(Vec<String>),
    Resume(Vec<String>),
    Firewall,
    Clock(Vec<String>),
    Rejoin { name: String, id: u32, addr: String },
    Nothing,
}

pub struct Nemesis {
    firewall: Option<Firewall>,
    weir: PathBuf,
    bootstrap: String,
}

impl Nemesis {
    pub fn new(faults: &[String], cluster: &Cluster) -> anyhow::Result<Nemesis> {
        let firewall = if faults
            .iter()
            .any(|f| f.starts_with("partition") || f == "packet-loss")
        {
            Some(Firewall::new()?)
        } else {
            None
        };
        Ok(Nemesis {
            firewall,
            weir: cluster.weir.clone(),
            bootstrap: cluster.bootstrap(),
        })
    }

    /// Files the clock fault needs before the nodes start.
    pub fn prepare(faults: &[String], dir: &Path, names: &[String]) -> anyhow::Result<()> {
        if faults.iter().any(|f| f == "clock") {
            std::fs::create_dir_all(dir)?;
            for name in names {
                std::fs::write(dir.join(format!("{name}.faketime")), "+0\n")?;
            }
        }
        Ok(())
    }

    pub fn inject(&mut self, cluster: &mut Cluster, kind: &str) -> anyhow::Result<Applied> {
        let mut rng = rand::rng();
        let brokers = names(cluster, Some(Role::Broker));
        let controllers = names(cluster, Some(Role::Controller));
        let all = names(cluster, None);
        let pick = |list: &[String], rng: &mut rand::rngs::ThreadRng| -> String {
            list[rng.random_range(0..list.len())].clone()
        };
        let (detail, heal) = match kind {
            "kill" | "kill-broker" | "kill-controller" | "kill-minority" | "kill-leaders"
            | "kill-all" => {
                let victims = match kind {
                    "kill" => vec![pick(&all, &mut rng)],
                    "kill-broker" => vec![pick(&brokers, &mut rng)],
                    "kill-controller" => {
                        vec![
                            active_controller(cluster)
                                .unwrap_or_else(|| pick(&controllers, &mut rng)),
                        ]
                    }
                    "kill-minority" => {
                        vec![pick(&controllers, &mut rng), pick(&brokers, &mut rng)]
                    }
                    "kill-leaders" => {
                        let mut v: Vec<String> = active_controller(cluster).into_iter().collect();
                        v.extend(busiest_leader(cluster));
                        v
                    }
                    _ => all.clone(),
                };
                let mut victims = victims;
                victims.sort();
                victims.dedup(); // a combined node may be picked for both roles
                for v in &victims {
                    cluster.kill(v)?;
                }
                (victims.join(","), Heal::Start(victims))
            }
            "pause" => {
                let victim = pick(&all, &mut rng);
                cluster.pause(&victim)?;
                (victim.clone(), Heal::Resume(vec![victim]))
            }
            k if k.starts_with("partition") => {
                let firewall = self
                    .firewall
                    .as_ref()
                    .context("the partition nemesis has no firewall")?;
                let shapes = [
                    "partition-isolate",
                    "partition-halves",
                    "partition-ring",
                    "partition-one-way",
                    "partition-leaders",
                    "partition-roles",
                    "partition-replication",
                ];
                // controllers and brokers share an address on a combined node
                let usable = if combined(cluster) {
                    &shapes[..5]
                } else {
                    &shapes[..]
                };
                let shape = if k == "partition" {
                    usable[rng.random_range(0..usable.len())]
                } else {
                    k
                };
                if !usable.contains(&shape) {
                    bail!("{shape} needs separate controller and broker nodes");
                }
                let cuts = grudge(cluster, shape, &mut rng);
                firewall.cut(cluster, &cuts, None)?;
                (format!("{shape}: {}", describe_cuts(&cuts)), Heal::Firewall)
            }
            "packet-loss" => {
                let firewall = self
                    .firewall
                    .as_ref()
                    .context("the packet-loss nemesis has no firewall")?;
                let percent: u32 = rng.random_range(10..=40);
                let mut links = Vec::new();
                for a in &all {
                    for b in all.iter().filter(|b| *b != a) {
                        links.push((a.clone(), b.clone()));
                    }
                }
                firewall.cut(cluster, &links, Some(f64::from(percent) / 100.0))?;
                (
                    format!("{percent}% of packets on every link"),
                    Heal::Firewall,
                )
            }
            "clock" => {
                let mut shuffled = all.clone();
                shuffled.shuffle(&mut rng);
                let n = rng.random_range(1..=all.len().div_ceil(2));
                let mut text = Vec::new();
                for name in &shuffled[..n] {
                    let secs: i64 =
                        rng.random_range(1..=300) * if rng.random_bool(0.5) { 1 } else { -1 };
                    set_clock(cluster, name, secs)?;
                    text.push(format!("{name} {secs:+}s"));
                }
                (text.join(", "), Heal::Clock(shuffled[..n].to_vec()))
            }
            "power-loss" | "power-loss-all" => {
                let victims = if kind == "power-loss" {
                    vec![pick(&brokers, &mut rng)]
                } else {
                    brokers.clone()
                };
                // stopped together first: what each had not fsynced at that instant is lost
                cluster.freeze(&victims)?;
                for v in &victims {
                    cluster.kill(v)?;
                }
                let mut text = Vec::new();
                for v in &victims {
                    match power_loss(cluster, v, &mut rng) {
                        Ok(lost) => text.push(format!("{v} lost {lost} bytes")),
                        Err(e) => text.push(format!("{v}: power loss failed: {e:#}")),
                    }
                }
                (text.join(", "), Heal::Start(victims))
            }
            "corrupt" => {
                let victim = pick(&brokers, &mut rng);
                cluster.kill(&victim)?;
                let node = cluster.node(&victim)?;
                let broker_dir = if node.role == Role::Node {
                    node.data_dir.join("broker")
                } else {
                    node.data_dir.clone()
                };
                // the node is down now: whatever happens next, the heal must restart it
                let what = corrupt(&broker_dir, &mut rng)
                    .unwrap_or_else(|e| format!("corruption failed: {e:#}"));
                // half the time the node is back before its lease runs out: the controller
                // has not fenced it, so it must not trust it as an in-sync replica either
                if rng.random_bool(0.5) {
                    cluster.start(&victim)?;
                    (
                        format!("{victim}: {what}; restarted at once"),
                        Heal::Nothing,
                    )
                } else {
                    (format!("{victim}: {what}"), Heal::Start(vec![victim]))
                }
            }
            "membership" => {
                let active = active_controller(cluster);
                let followers: Vec<String> = controllers
                    .iter()
                    .filter(|c| Some(*c) != active.as_ref())
                    .cloned()
                    .collect();
                if followers.is_empty() {
                    bail!("no follower controller to remove");
                }
                let name = pick(&followers, &mut rng);
                let node = cluster.node(&name)?.clone();
                self.weir_cli(&["cluster", "remove-controller", "--id", &node.id.to_string()])?;
                cluster.kill(&name)?;
                // the controller's state only: a combined node keeps its broker's data
                let wipe = if node.role == Role::Node {
                    node.data_dir.join("controller")
                } else {
                    node.data_dir.clone()
                };
                std::fs::remove_dir_all(&wipe)
                    .with_context(|| format!("wipe {}", wipe.display()))?;
                rejoin_args(cluster, &name)?;
                (
                    format!("{name} removed and wiped"),
                    Heal::Rejoin {
                        name,
                        id: node.id,
                        addr: node.addr,
                    },
                )
            }
            "reassign" => {
                let keys = partitions(cluster)?;
                if keys.is_empty() {
                    bail!("no partitions to reassign");
                }
                let p = keys[rng.random_range(0..keys.len())];
                let mut ids: Vec<u32> = cluster
                    .nodes
                    .iter()
                    .filter(|n| n.role.is_broker())
                    .map(|n| n.id)
                    .collect();
                ids.shuffle(&mut rng);
                ids.truncate(3);
                let list: Vec<String> = ids.iter().map(u32::to_string).collect();
                self.weir_cli(&[
                    "topic",
                    "reassign",
                    "jepsen",
                    "--partition",
                    &p.to_string(),
                    "--replicas",
                    &list.join(","),
                ])?;
                (
                    format!("partition {p} to brokers {}", list.join(",")),
                    Heal::Nothing,
                )
            }
            other => bail!("no fault named {other}"),
        };
        Ok(Applied {
            kind: kind.to_string(),
            detail,
            heal,
        })
    }

    pub fn heal(&mut self, cluster: &mut Cluster, applied: &Applied) -> anyhow::Result<()> {
        match &applied.heal {
            Heal::Start(nodes) => {
                for n in nodes {
                    if !cluster.is_alive(n) {
                        cluster.start(n)?;
                    }
                }
            }
            Heal::Resume(nodes) => {
                for n in nodes {
                    cluster.resume(n)?;
                }
            }
            Heal::Firewall => {
                if let Some(fw) = &self.firewall {
                    fw.heal()?;
                }
            }
            Heal::Clock(nodes) => {
                for n in nodes {
                    set_clock(cluster, n, 0)?;
                }
            }
            Heal::Rejoin { name, id, addr } => {
                cluster.start(name)?;
                // the new member must be reachable before the quorum waits on it
                std::thread::sleep(Duration::from_millis(500));
                self.weir_cli(&[
                    "cluster",
                    "add-controller",
                    "--id",
                    &id.to_string(),
                    "--address",
                    addr,
                    "--internal-address",
                    &weir_cluster::controller_internal_addr(addr),
                ])?;
            }
            Heal::Nothing => {}
        }
        Ok(())
    }

    /// Heals every network and clock fault (the end of a run).
    pub fn heal_all(&mut self, cluster: &mut Cluster) {
        if let Some(fw) = &self.firewall {
            let _ = fw.heal();
        }
        for node in cluster.nodes.clone() {
            let clock = cluster.dir.join(format!("{}.faketime", node.name));
            if clock.exists() {
                let _ = std::fs::write(&clock, "+0\n");
            }
        }
    }

    fn weir_cli(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut command = std::process::Command::new(&self.weir);
        command.env("WEIR_BOOTSTRAP", &self.bootstrap);
        run_tool(command, "weir", args, "")
    }
}

/// Node names holding `role` (a combined node holds both); every node for `None`.
fn names(cluster: &Cluster, role: Option<Role>) -> Vec<String> {
    cluster
        .nodes
        .iter()
        .filter(|n| match role {
            None => true,
            Some(Role::Controller) => n.role.is_controller(),
            Some(Role::Broker) => n.role.is_broker(),
            Some(Role::Node) => n.role == Role::Node,
        })
        .map(|n| n.name.clone())
        .collect()
}

fn combined(cluster: &Cluster) -> bool {
    cluster.nodes.iter().any(|n| n.role == Role::Node)
}

/// The node running the controller (or broker) with this id.
fn node_with(cluster: &Cluster, role: Role, id: u32) -> Option<String> {
    names(cluster, Some(role))
        .into_iter()
        .find(|name| cluster.node(name).is_ok_and(|n| n.id == id))
}

pub fn active_controller(cluster: &Cluster) -> Option<String> {
    let d = cluster.describe().ok()?;
    let id = u32::try_from(d.leader_id).ok().filter(|id| *id != 0)?;
    node_with(cluster, Role::Controller, id)
}

/// The jepsen topic's partitions as the controllers see them.
fn describe_topic(cluster: &Cluster) -> anyhow::Result<weir_proto::v1::TopicDescription> {
    let bootstrap: Vec<String> = cluster.bootstrap().split(',').map(str::to_string).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        weir_proto::call::with_controller(&bootstrap, Duration::from_secs(2), |ch| async move {
            weir_proto::v1::admin_client::AdminClient::new(ch)
                .describe_topic(weir_proto::v1::DescribeTopicRequest {
                    name: "jepsen".into(),
                })
                .await
        })
        .await
        .map(|r| r.into_inner())
        .map_err(anyhow::Error::from)
    })
}

fn partitions(cluster: &Cluster) -> anyhow::Result<Vec<u32>> {
    Ok(describe_topic(cluster)?
        .partitions
        .iter()
        .map(|p| p.partition)
        .collect())
}

/// The broker leading the most partitions of the jepsen topic.
fn busiest_leader(cluster: &Cluster) -> Option<String> {
    let topic = describe_topic(cluster).ok()?;
    let mut counts: std::collections::BTreeMap<u32, usize> = Default::default();
    for p in topic.partitions.iter().filter(|p| p.leader != 0) {
        *counts.entry(p.leader).or_default() += 1;
    }
    let (id, _) = counts.into_iter().max_by_key(|(_, n)| *n)?;
    node_with(cluster, Role::Broker, id)
}

/// Directed links to cut for a partition shape: (from, to) node names.
fn grudge(
    cluster: &Cluster,
    shape: &str,
    rng: &mut rand::rngs::ThreadRng,
) -> Vec<(String, String)> {
    let all = names(cluster, None);
    let both = |a: &[String], b: &[String]| -> Vec<(String, String)> {
        let mut out = Vec::new();
        for x in a {
            for y in b {
                out.push((x.clone(), y.clone()));
                out.push((y.clone(), x.clone()));
            }
        }
        out
    };
    let mut shuffled = all.clone();
    shuffled.shuffle(rng);
    let half = shuffled.len() / 2;
    match shape {
        "partition-isolate" => {
            let (one, rest) = shuffled.split_at(1);
            both(one, rest)
        }
        "partition-halves" => both(&shuffled[..half], &shuffled[half..]),
        "partition-one-way" => {
            let mut out = Vec::new();
            for x in &shuffled[..half] {
                for y in &shuffled[half..] {
                    out.push((x.clone(), y.clone()));
                }
            }
            out
        }
        "partition-ring" => ring(&shuffled),
        "partition-leaders" => {
            let mut leaders: Vec<String> = active_controller(cluster).into_iter().collect();
            leaders.extend(busiest_leader(cluster));
            leaders.sort();
            leaders.dedup();
            let rest: Vec<String> = all
                .iter()
                .filter(|n| !leaders.contains(n))
                .cloned()
                .collect();
            both(&leaders, &rest)
        }
        "partition-roles" => both(
            &names(cluster, Some(Role::Controller)),
            &names(cluster, Some(Role::Broker)),
        ),
        _ => {
            // partition-replication: brokers cannot reach each other
            let brokers = names(cluster, Some(Role::Broker));
            let mut out = Vec::new();
            for x in &brokers {
                for y in &brokers {
                    if x != y {
                        out.push((x.clone(), y.clone()));
                    }
                }
            }
            out
        }
    }
}

/// The links to cut for a ring over `order`: each node keeps the links to its neighbours
/// within `reach`, so itself plus `2 * reach` nodes is a majority and no two nodes see the
/// same majority (with three nodes every node sees every other: nothing to cut).
fn ring(order: &[String]) -> Vec<(String, String)> {
    let n = order.len();
    let majority = n / 2 + 1;
    let reach = (majority - 1).div_ceil(2);
    let mut out = Vec::new();
    for i in 0..n {
        for j in 0..n {
            let d = i.abs_diff(j);
            if i != j && d.min(n - d) > reach {
                out.push((order[i].clone(), order[j].clone()));
            }
        }
    }
    out
}

/// `a -> b,c; b -> a` for the timeline: every node's cut destinations.
fn describe_cuts(cuts: &[(String, String)]) -> String {
    let mut by_source: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (from, to) in cuts {
        by_source.entry(from).or_default().push(to);
    }
    by_source
        .iter()
        .map(|(from, to)| format!("{from} -/-> {}", to.join(",")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Writes a node's libfaketime offset (read by the node within a second).
fn set_clock(cluster: &Cluster, name: &str, secs: i64) -> anyhow::Result<()> {
    let path = cluster.dir.join(format!("{name}.faketime"));
    std::fs::write(&path, format!("{secs:+}\n"))
        .with_context(|| format!("write {}", path.display()))
}

/// A stopped broker loses what it had not fsynced: every file its fsync journal names is cut
/// to its last fsynced length, or, half the time, to that plus a random part of what was
/// written after (a torn write that reached the disk only partly). Returns the bytes cut.
fn power_loss(cluster: &Cluster, name: &str, rng: &mut impl Rng) -> anyhow::Result<u64> {
    let path = cluster.dir.join(format!("{name}.fsync-journal"));
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "read {} (power loss needs a weir built with --features jepsen-bugs)",
            path.display()
        )
    })?;
    cut_to_journal(&text, rng)
}

/// Cuts every file `journal` names back to its last fsynced length (half the time plus a
/// random part, at most 4 KiB, of what was written after). Returns the bytes cut.
fn cut_to_journal(journal_text: &str, rng: &mut impl Rng) -> anyhow::Result<u64> {
    let mut lost = 0;
    for (file, synced) in journal::read(journal_text) {
        let Ok(meta) = std::fs::metadata(&file) else {
            continue; // deleted since (retention, truncation)
        };
        let len = meta.len();
        if len <= synced {
            continue;
        }
        let keep = if rng.random_bool(0.5) {
            synced + rng.random_range(1..len - synced + 1).min(4096)
        } else {
            synced
        };
        let keep = keep.min(len);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .with_context(|| format!("open {}", file.display()))?;
        f.set_len(keep)
            .with_context(|| format!("truncate {}", file.display()))?;
        lost += len - keep;
    }
    Ok(lost)
}

/// Damages one file of a stopped broker: flips a bit in, or truncates, the newest segment of
/// a random partition, or scribbles over its offset index.
fn corrupt(data_dir: &Path, rng: &mut rand::rngs::ThreadRng) -> anyhow::Result<String> {
    let root = data_dir.join("partitions");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .with_context(|| format!("read {}", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        bail!("no partitions in {}", root.display());
    }
    let dir = &dirs[rng.random_range(0..dirs.len())];
    let newest = |ext: &str| -> Option<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == ext))
            .collect();
        files.sort();
        files.pop()
    };
    let segment = newest("log").with_context(|| format!("no segment in {}", dir.display()))?;
    let len = std::fs::metadata(&segment)?.len();
    let window = len.min(64 * 1024);
    let choice = rng.random_range(0..3);
    use std::io::{Read, Seek, SeekFrom, Write};
    match choice {
        0 if len > 0 => {
            let at = len - 1 - rng.random_range(0..window);
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&segment)?;
            let mut byte = [0u8; 1];
            f.seek(SeekFrom::Start(at))?;
            f.read_exact(&mut byte)?;
            byte[0] ^= 1 << rng.random_range(0..8);
            f.seek(SeekFrom::Start(at))?;
            f.write_all(&byte)?;
            Ok(format!(
                "flipped a bit at byte {at} of {}",
                segment.display()
            ))
        }
        1 if len > 0 => {
            let keep = len - 1 - rng.random_range(0..window);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&segment)?
                .set_len(keep)?;
            Ok(format!(
                "truncated {} from {len} to {keep} bytes",
                segment.display()
            ))
        }
        _ => {
            let index =
                newest("index").with_context(|| format!("no index in {}", dir.display()))?;
            let ilen = std::fs::metadata(&index)?.len();
            let mut f = std::fs::OpenOptions::new().write(true).open(&index)?;
            let at = if ilen > 16 {
                rng.random_range(0..ilen - 16)
            } else {
                0
            };
            let junk: [u8; 16] = rng.random();
            f.seek(SeekFrom::Start(at))?;
            f.write_all(&junk)?;
            Ok(format!("scribbled 16 bytes at {at} of {}", index.display()))
        }
    }
}

/// A removed controller comes back empty and waits to be added (`--join`; a separate
/// controller drops its initial voter list, a combined node keeps it for its broker).
fn rejoin_args(cluster: &mut Cluster, name: &str) -> anyhow::Result<()> {
    let node = cluster
        .nodes
        .iter_mut()
        .find(|n| n.name == name)
        .with_context(|| format!("no node {name}"))?;
    if node.args.iter().any(|a| a == "--join") {
        return cluster.save();
    }
    if node.role == Role::Controller
        && let Some(i) = node.args.iter().position(|a| a == "--controllers")
    {
        node.args.drain(i..=i + 1);
    }
    node.args.push("--join".into());
    cluster.save()
}

/// Network partitions: DROP rules on the nodes' addresses (each node listens on, and
/// connects from, its own loopback address) in an iptables chain of this run's own, hooked
/// into OUTPUT (loopback traffic passes it). Clients connect from 127.0.0.1 and are not cut.
struct Firewall {
    chain: String,
}

fn iptables(args: &[&str]) -> anyhow::Result<()> {
    run_tool(
        std::process::Command::new("iptables"),
        "iptables",
        args,
        " (the partition nemesis needs it, and root)",
    )
}

/// Runs a command line tool; a failure names the command and carries its stderr.
fn run_tool(
    mut command: std::process::Command,
    name: &str,
    args: &[&str],
    hint: &str,
) -> anyhow::Result<()> {
    let out = command
        .args(args)
        .output()
        .with_context(|| format!("run {name}{hint}"))?;
    if !out.status.success() {
        bail!(
            "{name} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Firewall {
    fn new() -> anyhow::Result<Firewall> {
        // chains left by runs that were killed before they could remove theirs
        if let Ok(out) = std::process::Command::new("iptables").arg("-S").output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let Some(old) = line.strip_prefix("-N WEIR-JEPSEN-") else {
                    continue;
                };
                if old
                    .parse::<u32>()
                    .is_ok_and(|pid| !weir_cluster::alive(pid))
                {
                    let chain = format!("WEIR-JEPSEN-{old}");
                    let _ = iptables(&["-D", "OUTPUT", "-j", &chain]);
                    let _ = iptables(&["-F", &chain]);
                    let _ = iptables(&["-X", &chain]);
                }
            }
        }
        let chain = format!("WEIR-JEPSEN-{}", std::process::id());
        iptables(&["-N", &chain])?;
        iptables(&["-I", "OUTPUT", "1", "-j", &chain])?;
        Ok(Firewall { chain })
    }

    /// Drops packets from the first node's address to the second's, per pair: all of them,
    /// or each with `probability`.
    fn cut(
        &self,
        cluster: &Cluster,
        links: &[(String, String)],
        probability: Option<f64>,
    ) -> anyhow::Result<()> {
        let ip = |name: &str| -> anyhow::Result<String> {
            let node = cluster.node(name)?;
            Ok(node
                .addr
                .rsplit_once(':')
                .map_or(node.addr.clone(), |(h, _)| h.to_string()))
        };
        for (from, to) in links {
            let (x, y) = (ip(from)?, ip(to)?);
            let mut rule = vec!["-A", &self.chain, "-s", &x, "-d", &y];
            let p = probability.map(|p| format!("{p:.2}"));
            if let Some(p) = &p {
                rule.extend(["-m", "statistic", "--mode", "random", "--probability", p]);
            }
            rule.extend(["-j", "DROP"]);
            iptables(&rule)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("n{i}")).collect()
    }

    #[test]
    fn a_ring_gives_every_node_a_different_majority() {
        assert!(ring(&nodes(3)).is_empty());
        for n in [5, 6, 7] {
            let order = nodes(n);
            let cuts = ring(&order);
            assert!(!cuts.is_empty(), "n={n}");
            let mut seen = Vec::new();
            for me in &order {
                let reach: Vec<&String> = order
                    .iter()
                    .filter(|o| !cuts.contains(&(me.clone(), (*o).clone())))
                    .collect();
                assert!(reach.len() > n / 2, "n={n}: {me} reaches {reach:?}");
                assert!(!seen.contains(&reach), "n={n}: two nodes see {reach:?}");
                seen.push(reach);
            }
            // symmetric: a ring cuts links both ways
            for (a, b) in &cuts {
                assert!(cuts.contains(&(b.clone(), a.clone())));
            }
        }
    }

    #[test]
    fn power_loss_cuts_files_back_to_what_was_fsynced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.log");
        let b = dir.path().join("b.log");
        let c = dir.path().join("c.log");
        std::fs::write(&a, vec![1u8; 10_000]).expect("write a");
        std::fs::write(&b, vec![2u8; 300]).expect("write b");
        std::fs::write(&c, vec![3u8; 50]).expect("write c");
        let journal = format!(
            "100 {a}\n5000 {a}\n300 {b}\n10 {c}\n20 {gone}\n",
            a = a.display(),
            b = b.display(),
            c = c.display(),
            gone = dir.path().join("deleted.log").display()
        );
        let mut rng = rand::rng();
        let lost = cut_to_journal(&journal, &mut rng).expect("cut");
        let len = |p: &std::path::Path| std::fs::metadata(p).expect("stat").len();
        assert!((5000..=9096).contains(&len(&a)), "a: {}", len(&a));
        assert_eq!(len(&b), 300, "fully fsynced: untouched");
        assert!((10..=50).contains(&len(&c)), "c: {}", len(&c));
        assert_eq!(lost, (10_000 - len(&a)) + (50 - len(&c)));
        // the kept part is the original prefix
        assert!(std::fs::read(&a).expect("read a").iter().all(|x| *x == 1));
    }
}
