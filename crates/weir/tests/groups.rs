//! Consumer groups across real processes: a 3-controller cluster, `weir consume --group`
//! members that are started, killed and joined by new partitions, and a zombie member fenced
//! at the RPC level.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{ok, up, wait_for, weir, weir_bin};
use weir_proto::v1 as pb;
use weir_proto::v1::group_coordinator_client::GroupCoordinatorClient;
use weir_types::ErrorCode;

const SESSION_MS: u64 = 3000;

struct Member {
    child: Child,
    out: PathBuf,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_member(bootstrap: &str, topic: &str, group: &str, dir: &Path, name: &str) -> Member {
    start_member_with(bootstrap, topic, group, dir, name, SESSION_MS, &[])
}

fn start_member_with(
    bootstrap: &str,
    topic: &str,
    group: &str,
    dir: &Path,
    name: &str,
    session_ms: u64,
    extra: &[&str],
) -> Member {
    let out = dir.join(format!("{name}.out"));
    let child = Command::new(weir_bin())
        .args([
            "consume",
            topic,
            "--group",
            group,
            "--format",
            "json",
            "--from-beginning",
            "--session-timeout-ms",
            &session_ms.to_string(),
            "--auto-commit-ms",
            "200",
        ])
        .args(extra)
        .env("WEIR_BOOTSTRAP", bootstrap)
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).expect("stderr file"))
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn consumer");
    Member { child, out }
}

/// `(partition, offset)` of every record a member printed, in order.
fn records(path: &Path) -> Vec<(u32, i64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["partition"].as_u64()? as u32, v["offset"].as_i64()?)))
        .collect()
}

/// The partitions a member owned when it stopped, replaying its "assigned"/"revoked" lines.
fn owned_at_exit(stderr: &Path) -> BTreeSet<u32> {
    let mut owned = BTreeSet::new();
    for line in std::fs::read_to_string(stderr).unwrap_or_default().lines() {
        let mut words = line.split_whitespace();
        let verb = words.next();
        let parts = words.filter_map(|w| w.rsplit_once('/')?.1.parse::<u32>().ok());
        match verb {
            Some("assigned") => owned.extend(parts),
            Some("revoked" | "lost") => {
                for p in parts {
                    owned.remove(&p);
                }
            }
            _ => {}
        }
    }
    owned
}

/// One row of `weir group describe`.
#[derive(Debug, Clone)]
struct Row {
    partition: u32,
    current: Option<i64>,
    end: Option<i64>,
    member: Option<String>,
}

fn describe(bootstrap: &str, group: &str) -> (usize, String, Vec<Row>) {
    let out = weir(bootstrap, &["group", "describe", group], None);
    if !out.status.success() {
        eprintln!(
            "group describe failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return (0, String::new(), Vec::new());
    }
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = out.lines();
    let head: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let field = |name: &str| {
        head.iter()
            .position(|w| *w == name)
            .and_then(|i| head.get(i + 1))
            .map(|s| s.to_string())
            .unwrap_or_default()
    };
    let members = field("members").parse().unwrap_or(0);
    let state = field("state");
    let num = |s: &str| s.parse::<i64>().ok();
    let rows = lines
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() >= 6)
        .map(|w| Row {
            partition: w[1].parse().expect("partition"),
            current: num(w[2]),
            end: num(w[3]),
            member: (w[5] != "-").then(|| w[5].to_string()),
        })
        .collect();
    (members, state, rows)
}

/// Partitions per member id, when the group is stable with `members` members owning
/// `partitions` partitions.
fn stable_owners(
    bootstrap: &str,
    group: &str,
    members: usize,
    partitions: u32,
) -> Option<BTreeMap<String, BTreeSet<u32>>> {
    let (n, state, rows) = describe(bootstrap, group);
    if n != members || state != "stable" {
        return None;
    }
    let mut owners: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for r in &rows {
        if let Some(m) = &r.member {
            owners.entry(m.clone()).or_default().insert(r.partition);
        }
    }
    let owned: usize = owners.values().map(BTreeSet::len).sum();
    (owned == partitions as usize && owners.len() == members).then_some(owners)
}

/// Sends records round-robin to partitions `0..partitions` (read each round) until `stop`.
fn spawn_producer(
    bootstrap: String,
    topic: &'static str,
    partitions: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let producer = weir_client::Producer::new(weir_client::ProducerConfig::new(
                bootstrap.split(',').map(str::to_string).collect(),
            ))
            .expect("producer");
            let mut sent = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let mut pending = Vec::new();
                for p in 0..partitions.load(Ordering::SeqCst) {
                    let record = weir_types::Record {
                        timestamp_ms: 0,
                        key: None,
                        value: Some(bytes::Bytes::from(format!("{p}-{sent}"))),
                        headers: Vec::new(),
                    };
                    pending.push(producer.send(topic, Some(p), record).await.expect("send"));
                }
                producer.flush().await;
                for f in pending {
                    f.await.expect("acknowledged");
                    sent += 1;
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            sent
        })
    })
}

/// Every partition's records, over all members, cover 0..end without a gap (a member may
/// jump forward when it gets a partition back that another member read meanwhile).
fn check_coverage(outputs: &[Vec<(u32, i64)>], ends: &BTreeMap<u32, i64>) {
    for (p, end) in ends {
        let mut seen = BTreeSet::new();
        for out in outputs {
            seen.extend(out.iter().filter(|r| r.0 == *p).map(|r| r.1));
        }
        let missing: Vec<i64> = (0..*end).filter(|o| !seen.contains(o)).collect();
        assert!(missing.is_empty(), "partition {p}: never read {missing:?}");
    }
}

/// A 3-controller, 1-broker cluster with `topic` created; keep the tempdir and the cluster
/// alive for the test.
fn cluster_with_topic(
    topic: &str,
    partitions: u32,
) -> (tempfile::TempDir, common::Running, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = up(3, 1, 1500, &dir);
    let bootstrap = cluster.0.bootstrap();
    ok(weir(
        &bootstrap,
        &[
            "topic",
            "create",
            topic,
            "--partitions",
            &partitions.to_string(),
        ],
        None,
    ));
    (dir, cluster, bootstrap)
}

#[test]
fn members_share_partitions_take_over_a_killed_member_and_pick_up_new_partitions() {
    let (dir, _cluster, bootstrap) = cluster_with_topic("events", 6);
    let count = Arc::new(AtomicU32::new(6));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = spawn_producer(bootstrap.clone(), "events", count.clone(), stop.clone());

    let mut members: Vec<Member> = (0..3)
        .map(|i| start_member(&bootstrap, "events", "g", dir.path(), &format!("m{i}")))
        .collect();
    let (owners, took) = wait_for(
        "3 members with 2 partitions each",
        Duration::from_secs(30),
        || stable_owners(&bootstrap, "g", 3, 6),
    );
    eprintln!("stable with 3 members after {took:?}: {owners:?}");
    for parts in owners.values() {
        assert_eq!(parts.len(), 2, "{owners:?}");
    }
    std::thread::sleep(Duration::from_secs(2));

    // Kill one member without a chance to commit or leave.
    let victim = members.remove(0);
    let mut victim = victim;
    victim.child.kill().expect("kill");
    victim.child.wait().expect("wait");
    let killed_at = Instant::now();
    // what the survivors had printed when the victim died: the victim's partitions show up in
    // their output only after this
    let printed_before: Vec<usize> = members.iter().map(|m| records(&m.out).len()).collect();
    let victim_parts = owned_at_exit(&dir.path().join("m0.err"));
    assert_eq!(victim_parts.len(), 2, "the victim owned two partitions");
    // its last commits may still be in flight for a moment
    std::thread::sleep(Duration::from_millis(500));
    let (_, _, rows) = describe(&bootstrap, "g");
    let committed: BTreeMap<u32, i64> = rows
        .iter()
        .filter(|r| victim_parts.contains(&r.partition))
        .map(|r| (r.partition, r.current.expect("victim committed")))
        .collect();

    let (owners, _) = wait_for("2 members own all 6", Duration::from_secs(30), || {
        stable_owners(&bootstrap, "g", 2, 6)
    });
    let takeover = killed_at.elapsed();
    eprintln!("taken over {takeover:?} after the kill: {owners:?}");
    // the session timeout, then one heartbeat interval (1 s) for the survivors to hear of it,
    // with slack for a loaded machine
    assert!(
        takeover < Duration::from_millis(SESSION_MS + 6000),
        "takeover took {takeover:?}"
    );
    for parts in owners.values() {
        assert_eq!(parts.len(), 3, "{owners:?}");
    }

    // New partitions reach the running members without a restart.
    ok(weir(
        &bootstrap,
        &["topic", "add-partitions", "events", "--total", "9"],
        None,
    ));
    count.store(9, Ordering::SeqCst);
    let (owners, took) = wait_for("2 members own all 9", Duration::from_secs(30), || {
        stable_owners(&bootstrap, "g", 2, 9)
    });
    eprintln!("new partitions assigned after {took:?}: {owners:?}");
    std::thread::sleep(Duration::from_secs(2));

    stop.store(true, Ordering::SeqCst);
    let sent = producer.join().expect("producer");
    // wait until the group has read and committed everything
    let (ends, _) = wait_for("lag 0 everywhere", Duration::from_secs(30), || {
        let (_, _, rows) = describe(&bootstrap, "g");
        let done = rows.len() == 9
            && rows
                .iter()
                .all(|r| r.current.is_some() && r.current == r.end);
        done.then(|| {
            rows.iter()
                .map(|r| (r.partition, r.end.unwrap_or(0)))
                .collect::<BTreeMap<_, _>>()
        })
    });
    assert_eq!(ends.values().sum::<i64>() as u64, sent);
    for m in &mut members {
        let _ = Command::new("kill")
            .args(["-INT", &m.child.id().to_string()])
            .status();
        let _ = m.child.wait();
    }
    let outputs: Vec<Vec<(u32, i64)>> = std::iter::once(&victim)
        .chain(members.iter())
        .map(|m| records(&m.out))
        .collect();
    // The survivors resume the victim's partitions exactly at its committed offsets: no
    // committed record read again, none skipped.
    for (p, c) in &committed {
        let resumed: Vec<Vec<i64>> = outputs[1..]
            .iter()
            .zip(&printed_before)
            .map(|(out, before)| {
                out[*before..]
                    .iter()
                    .filter(|r| r.0 == *p)
                    .map(|r| r.1)
                    .collect::<Vec<i64>>()
            })
            .filter(|v| !v.is_empty())
            .collect();
        assert_eq!(resumed.len(), 1, "partition {p}: one new owner");
        assert_eq!(
            resumed[0][0], *c,
            "partition {p}: resumed at {}, committed {c}",
            resumed[0][0]
        );
        assert!(
            resumed[0].windows(2).all(|w| w[1] == w[0] + 1),
            "partition {p}: not consecutive after the takeover"
        );
    }
    // the new partitions were read
    for p in 6..9 {
        assert!(
            outputs.iter().any(|o| o.iter().any(|r| r.0 == p)),
            "partition {p} never read"
        );
    }
    check_coverage(&outputs, &ends);
}

#[test]
fn seed_scenario_one_partition_three_members_then_three_partitions() {
    let (dir, _cluster, bootstrap) = cluster_with_topic("orders", 1);
    let members: Vec<Member> = (0..3)
        .map(|i| start_member(&bootstrap, "orders", "seed", dir.path(), &format!("s{i}")))
        .collect();
    wait_for(
        "one of three members owns the partition",
        Duration::from_secs(30),
        || {
            let (n, state, rows) = describe(&bootstrap, "seed");
            (n == 3 && state == "stable" && rows.iter().filter(|r| r.member.is_some()).count() == 1)
                .then_some(())
        },
    );
    ok(weir(
        &bootstrap,
        &["topic", "add-partitions", "orders", "--total", "3"],
        None,
    ));
    wait_for(
        "each member owns one partition",
        Duration::from_secs(30),
        || stable_owners(&bootstrap, "seed", 3, 3).filter(|o| o.values().all(|p| p.len() == 1)),
    );
    for p in 0..3 {
        let p = p.to_string();
        ok(weir(
            &bootstrap,
            &["produce", "orders", "--partition", &p],
            Some("a\nb\nc\n"),
        ));
    }
    let (_, took) = wait_for(
        "messages reach all three members",
        Duration::from_secs(20),
        || {
            members
                .iter()
                .all(|m| records(&m.out).len() == 3)
                .then_some(())
        },
    );
    eprintln!("all three members consumed after {took:?}");
}

#[test]
fn a_zombie_members_commit_is_rejected() {
    let (_dir, _cluster, bootstrap) = cluster_with_topic("z", 2);
    let addrs: Vec<String> = bootstrap.split(',').map(str::to_string).collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let call = |req: pb::ConsumerGroupHeartbeatRequest| {
            let addrs = addrs.clone();
            async move {
                weir_proto::call::with_controller(&addrs, Duration::from_secs(10), |ch| {
                    let req = req.clone();
                    async move {
                        GroupCoordinatorClient::new(ch)
                            .consumer_group_heartbeat(req)
                            .await
                    }
                })
                .await
                .map(tonic::Response::into_inner)
            }
        };
        let commit = |member: &str, epoch: i32| {
            let addrs = addrs.clone();
            let req = pb::CommitOffsetsRequest {
                group: "zg".into(),
                member_id: member.into(),
                member_epoch: epoch,
                offsets: vec![pb::OffsetAndMetadata {
                    topic: "z".into(),
                    partition: 0,
                    offset: 7,
                    metadata: String::new(),
                    commit_time_ms: 0,
                }],
            };
            async move {
                weir_proto::call::with_controller(&addrs, Duration::from_secs(10), |ch| {
                    let req = req.clone();
                    async move { GroupCoordinatorClient::new(ch).commit_offsets(req).await }
                })
                .await
            }
        };
        let code = |r: Result<_, weir_proto::call::CallError>| match r {
            Err(weir_proto::call::CallError::Status(s)) => weir_proto::status::error_code(&s),
            _ => None,
        };
        let join = pb::ConsumerGroupHeartbeatRequest {
            group: "zg".into(),
            member_id: "zombie".into(),
            member_epoch: 0,
            subscribed_topics: Some(pb::SubscribedTopics {
                topics: vec!["z".into()],
            }),
            owned: Some(pb::OwnedPartitions { partitions: vec![] }),
            session_timeout_ms: 1000,
            ..Default::default()
        };
        let joined = call(join).await.expect("join");
        assert_eq!(joined.assignment.len(), 2);
        commit("zombie", joined.member_epoch)
            .await
            .expect("a live member commits");
        assert_eq!(
            code(commit("zombie", joined.member_epoch + 1).await),
            Some(ErrorCode::FencedMemberEpoch)
        );
        // silent past its session timeout: removed, and its commit is refused
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(
            code(commit("zombie", joined.member_epoch).await),
            Some(ErrorCode::UnknownMemberId)
        );
        let beat = pb::ConsumerGroupHeartbeatRequest {
            group: "zg".into(),
            member_id: "zombie".into(),
            member_epoch: joined.member_epoch,
            ..Default::default()
        };
        assert_eq!(
            code(
                call(beat)
                    .await
                    .map(|_| tonic::Response::new(pb::CommitOffsetsResponse {}))
            ),
            Some(ErrorCode::UnknownMemberId)
        );
    });
    let (_, _, rows) = describe(&bootstrap, "zg");
    assert_eq!(
        rows.iter()
            .find(|r| r.partition == 0)
            .and_then(|r| r.current),
        Some(7)
    );
}

/// The group epoch from `weir group describe`.
fn group_epoch(bootstrap: &str, group: &str) -> i64 {
    let out = ok(weir(bootstrap, &["group", "describe", group], None));
    let head: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    head.iter()
        .position(|w| *w == "epoch")
        .and_then(|i| head.get(i + 1))
        .and_then(|e| e.parse().ok())
        .expect("group epoch")
}

#[test]
fn a_static_member_restarts_without_a_rebalance_and_admin_commands_work() {
    let (dir, _cluster, bootstrap) = cluster_with_topic("s", 4);
    for p in 0..4 {
        let p = p.to_string();
        ok(weir(
            &bootstrap,
            &["produce", "s", "--partition", &p],
            Some("1\n2\n3\n4\n5\n"),
        ));
    }
    let a = ["--instance-id", "host-a"];
    let b = ["--instance-id", "host-b"];
    // long enough for a restart on a loaded machine
    let session = 8000;
    let mut first_a = start_member_with(&bootstrap, "s", "sg", dir.path(), "a1", session, &a);
    let _b = start_member_with(&bootstrap, "s", "sg", dir.path(), "b1", session, &b);
    let (before, _) = wait_for(
        "two static members own two each",
        Duration::from_secs(30),
        || stable_owners(&bootstrap, "sg", 2, 4).filter(|o| o.values().all(|p| p.len() == 2)),
    );
    let epoch = group_epoch(&bootstrap, "sg");
    let a_parts = owned_at_exit(&dir.path().join("a1.err"));
    // kill -9 and restart within the session timeout: same partitions, no new group epoch
    first_a.child.kill().expect("kill");
    first_a.child.wait().expect("wait");
    let _second_a = start_member_with(&bootstrap, "s", "sg", dir.path(), "a2", session, &a);
    wait_for(
        "the restarted member reads its partitions",
        Duration::from_secs(20),
        || (owned_at_exit(&dir.path().join("a2.err")) == a_parts).then_some(()),
    );
    assert_eq!(group_epoch(&bootstrap, "sg"), epoch, "a rebalance happened");
    let (after, _) = wait_for("stable again", Duration::from_secs(10), || {
        stable_owners(&bootstrap, "sg", 2, 4)
    });
    let sets = |o: &BTreeMap<String, BTreeSet<u32>>| o.values().cloned().collect::<BTreeSet<_>>();
    assert_eq!(sets(&after), sets(&before));

    // admin commands refuse an active group
    let out = weir(&bootstrap, &["group", "delete", "sg"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("GROUP_NOT_EMPTY"));
    let out = weir(
        &bootstrap,
        &[
            "group",
            "reset-offsets",
            "sg",
            "--topic",
            "s",
            "--to-earliest",
        ],
        None,
    );
    assert!(!out.status.success());
    drop(_second_a);
    drop(_b);
    // killed static members stay until their session times out
    wait_for("the group empties", Duration::from_secs(30), || {
        (describe(&bootstrap, "sg").0 == 0).then_some(())
    });
    let listed = ok(weir(&bootstrap, &["group", "list"], None));
    assert!(listed.contains("sg  state empty"), "{listed}");
    ok(weir(
        &bootstrap,
        &[
            "group",
            "reset-offsets",
            "sg",
            "--topic",
            "s",
            "--to-offset",
            "99",
        ],
        None,
    ));
    let (_, _, rows) = describe(&bootstrap, "sg");
    assert!(
        rows.iter().all(|r| r.current == Some(5)),
        "clamped to the log end: {rows:?}"
    );
    ok(weir(
        &bootstrap,
        &[
            "group",
            "reset-offsets",
            "sg",
            "--topic",
            "s",
            "--partition",
            "1",
            "--shift-by",
            "-2",
        ],
        None,
    ));
    let (_, _, rows) = describe(&bootstrap, "sg");
    assert_eq!(
        rows.iter()
            .find(|r| r.partition == 1)
            .and_then(|r| r.current),
        Some(3)
    );
    let out = weir(
        &bootstrap,
        &[
            "group",
            "reset-offsets",
            "sg",
            "--topic",
            "s",
            "--partition",
            "9",
            "--to-latest",
        ],
        None,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--partition 9"));
    ok(weir(&bootstrap, &["group", "delete", "sg"], None));
    let out = weir(&bootstrap, &["group", "describe", "sg"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("GROUP_ID_NOT_FOUND"));
}
