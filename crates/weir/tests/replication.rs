//! Replication across real broker processes: kill the leader under a steady `acks=all` load
//! and check that every acknowledged record is read back exactly once at its offset; lose two
//! of three replicas and check that writes are refused while committed data stays readable;
//! bring them back and check that they catch up and rejoin the ISR.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{ok, partitions, wait_for, weir};
use weir_proto::v1 as pb;

/// `(leader, isr)` of partition 0.
fn partition0(bootstrap: &str, topic: &str) -> (u32, String) {
    let p = partitions(bootstrap, topic)
        .into_iter()
        .next()
        .expect("partition 0");
    (p.0, p.2)
}

/// Produces single-record batches with unique values and acks=all as an idempotent producer,
/// following leader changes and retrying every failure with the same sequence until it is
/// acknowledged, until `stop`. Returns value -> acknowledged offset and how many sends were
/// retries.
fn produce_steadily(bootstrap: String, stop: Arc<AtomicBool>) -> (BTreeMap<u64, i64>, u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let bootstrap: Vec<String> = bootstrap.split(',').map(str::to_string).collect();
        let leader_addr = || async {
            let topic = weir_proto::call::with_controller(
                &bootstrap,
                Duration::from_secs(5),
                |ch| async move {
                    pb::admin_client::AdminClient::new(ch)
                        .describe_topic(pb::DescribeTopicRequest {
                            name: "steady".into(),
                        })
                        .await
                },
            )
            .await
            .ok()?
            .into_inner();
            let cluster = weir_proto::call::with_controller(
                &bootstrap,
                Duration::from_secs(5),
                |ch| async move {
                    pb::admin_client::AdminClient::new(ch)
                        .describe_cluster(pb::DescribeClusterRequest {})
                        .await
                },
            )
            .await
            .ok()?
            .into_inner();
            let id = topic.partitions.first()?.leader;
            cluster
                .brokers
                .into_iter()
                .find(|b| b.id == id && !b.fenced)
                .map(|b| b.address)
        };
        let mut producer = None;
        while producer.is_none() {
            if let Some(addr) = leader_addr().await
                && let Ok(ch) = weir_proto::call::connect(&addr).await
                && let Ok(r) = pb::broker_client::BrokerClient::new(ch)
                    .init_producer_id(pb::InitProducerIdRequest {})
                    .await
            {
                producer = Some(r.into_inner());
            }
        }
        let producer = producer.expect("producer id");
        let mut acked = BTreeMap::new();
        let mut retries = 0u64;
        let mut value = 1u64;
        let mut sequence = 0i32;
        let mut attempt_of_current = 0;
        while !stop.load(Ordering::Relaxed) {
            let Some(addr) = leader_addr().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Ok(channel) = weir_proto::call::connect(&addr).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let mut client = pb::broker_client::BrokerClient::new(channel);
            while !stop.load(Ordering::Relaxed) {
                let batch = weir_types::BatchBuilder::default()
                    .producer(
                        weir_types::ProducerId(producer.producer_id),
                        weir_types::ProducerEpoch(producer.producer_epoch as i16),
                        weir_types::Sequence(sequence),
                    )
                    .record(weir_types::Record {
                        timestamp_ms: 1,
                        value: Some(Bytes::from(value.to_string())),
                        ..weir_types::Record::default()
                    })
                    .build()
                    .expect("batch");
                let request = pb::ProduceRequest {
                    topic: "steady".into(),
                    partition: 0,
                    acks: pb::Acks::All as i32,
                    leader_epoch: None,
                    batch: Some(batch.into()),
                    records: Vec::new(),
                };
                if attempt_of_current > 0 {
                    retries += 1;
                }
                attempt_of_current += 1;
                match tokio::time::timeout(Duration::from_secs(5), client.produce(request)).await {
                    Ok(Ok(r)) => {
                        acked.insert(value, r.into_inner().base_offset);
                        value += 1;
                        sequence += 1;
                        attempt_of_current = 0;
                    }
                    // unknown outcome or not the leader: the same batch is sent again
                    _ => break,
                }
            }
        }
        (acked, retries)
    })
}

/// Every acknowledged value of partition 0 of `steady` is there, once, at its offset.
fn assert_read_back_once(bootstrap: &str, acked: &BTreeMap<u64, i64>) {
    let out = ok(weir(
        bootstrap,
        &[
            "consume",
            "steady",
            "--partition",
            "0",
            "--from-beginning",
            "--idle-exit-ms",
            "1500",
            "--format",
            "json",
        ],
        None,
    ));
    let mut seen: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        let value: u64 = v["value"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("value");
        seen.entry(value)
            .or_default()
            .push(v["offset"].as_i64().expect("offset"));
    }
    for (value, offset) in acked {
        assert_eq!(
            seen.get(value),
            Some(&vec![*offset]),
            "acknowledged value {value} at offset {offset}: found at {:?}",
            seen.get(value)
        );
    }
    let dupes: Vec<_> = seen.iter().filter(|(_, o)| o.len() > 1).collect();
    assert!(
        dupes.is_empty(),
        "values stored twice despite idempotence: {dupes:?}"
    );
    eprintln!("{} acknowledged records, all read back once", acked.len());
}

#[test]
fn a_stopped_leader_drains_first_so_no_one_waits_for_its_lease() {
    let dir = tempfile::tempdir().expect("tempdir");
    // a 6 s lease: without the drain, leadership would move only when it ran out
    let mut cluster = common::up(1, 3, 6000, &dir);
    let bootstrap = cluster.0.bootstrap();
    ok(weir(
        &bootstrap,
        &["topic", "create", "steady", "--partitions", "1"],
        None,
    ));
    let (first_leader, _) = partition0(&bootstrap, "steady");
    let stop = Arc::new(AtomicBool::new(false));
    let producer = std::thread::spawn({
        let (bootstrap, stop) = (bootstrap.clone(), Arc::clone(&stop));
        move || produce_steadily(bootstrap, stop)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let name = format!("broker-{first_leader}");
    let exited = cluster
        .0
        .stop(&name, Duration::from_secs(15))
        .expect("SIGTERM");
    eprintln!("the leader drained and exited {exited:?} after SIGTERM");
    let (leader, isr) = partition0(&bootstrap, "steady");
    assert!(
        leader != 0 && leader != first_leader,
        "leadership moved before the process exited: leader {leader}"
    );
    assert!(
        !isr.contains(&first_leader.to_string()),
        "the drained broker left the ISR: {isr}"
    );
    assert!(
        exited < Duration::from_secs(5),
        "the drain took {exited:?}, about the lease it should not wait for"
    );
    // back again: it catches up and rejoins the ISR
    cluster.0.start(&name).expect("restart");
    wait_for(
        "the restarted broker in the ISR",
        Duration::from_secs(30),
        || {
            let (_, isr) = partition0(&bootstrap, "steady");
            isr.contains(&first_leader.to_string()).then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (acked, retries) = producer.join().expect("producer");
    assert!(
        acked.len() > 20,
        "too few acknowledged records: {}",
        acked.len()
    );
    eprintln!("{retries} sends were retries");
    assert_read_back_once(&bootstrap, &acked);
}

#[test]
fn leader_loss_under_acks_all_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = common::up(1, 3, 1500, &dir);
    let bootstrap = cluster.0.bootstrap();
    ok(weir(
        &bootstrap,
        &["topic", "create", "steady", "--partitions", "1"],
        None,
    ));
    let (first_leader, isr) = partition0(&bootstrap, "steady");
    assert_eq!(
        isr.matches(',').count(),
        2,
        "RF 3 by default with three brokers: {isr}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let producer = std::thread::spawn({
        let (bootstrap, stop) = (bootstrap.clone(), Arc::clone(&stop));
        move || produce_steadily(bootstrap, stop)
    });
    std::thread::sleep(Duration::from_millis(1500));
    cluster
        .0
        .kill(&format!("broker-{first_leader}"))
        .expect("kill leader");
    let killed_at = Instant::now();
    let ((), took) = wait_for("a new leader", Duration::from_secs(15), || {
        let (leader, _) = partition0(&bootstrap, "steady");
        (leader != 0 && leader != first_leader).then_some(())
    });
    eprintln!("new leader elected {took:?} after the kill");
    assert!(killed_at.elapsed() < Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let (acked, retries) = producer.join().expect("producer");
    assert!(
        acked.len() > 20,
        "too few acknowledged records: {}",
        acked.len()
    );
    eprintln!("{retries} sends were retries of a batch whose outcome was unknown");

    assert_read_back_once(&bootstrap, &acked);

    // lose a second replica: acks=all is refused, committed data stays readable
    let (leader, _) = partition0(&bootstrap, "steady");
    let other = (1..=3)
        .find(|b| *b != leader && *b != first_leader)
        .expect("third broker");
    cluster.0.kill(&format!("broker-{other}")).expect("kill");
    wait_for(
        "the ISR to shrink to the leader",
        Duration::from_secs(15),
        || {
            let (l, isr) = partition0(&bootstrap, "steady");
            (l == leader && isr == format!("[{leader}]")).then_some(())
        },
    );
    let out = weir(
        &bootstrap,
        &[
            "produce",
            "steady",
            "--partition",
            "0",
            "--delivery-timeout-ms",
            "2000",
        ],
        Some("refused\n"),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NOT_ENOUGH_REPLICAS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let max = acked.len().to_string();
    let read = ok(weir(
        &bootstrap,
        &[
            "consume",
            "steady",
            "--partition",
            "0",
            "--from-beginning",
            "--max-messages",
            &max,
        ],
        None,
    ));
    assert_eq!(
        read.lines().count(),
        acked.len(),
        "committed records are still readable"
    );

    // both come back, catch up and rejoin
    cluster
        .0
        .restart(&format!("broker-{first_leader}"))
        .expect("restart");
    cluster
        .0
        .restart(&format!("broker-{other}"))
        .expect("restart");
    let (_, took) = wait_for("the ISR to expand again", Duration::from_secs(30), || {
        let (_, isr) = partition0(&bootstrap, "steady");
        (isr.matches(',').count() == 2).then_some(())
    });
    eprintln!("ISR back to three after {took:?}");
    // the preferred replica (the first leader) leads again once it is back in sync
    let (_, took) = wait_for(
        "leadership back on the preferred replica",
        Duration::from_secs(20),
        || (partition0(&bootstrap, "steady").0 == first_leader).then_some(()),
    );
    eprintln!("preferred leader back after {took:?}");
    ok(weir(
        &bootstrap,
        &["produce", "steady", "--partition", "0"],
        Some("accepted again\n"),
    ));

    // lose every in-sync replica: the partition is offline until an operator decides
    let survivor = (1..=3)
        .find(|b| *b != first_leader)
        .expect("another broker");
    cluster.0.kill(&format!("broker-{survivor}")).expect("kill");
    let last = (1..=3)
        .find(|b| *b != first_leader && *b != survivor)
        .expect("third");
    cluster.0.kill(&format!("broker-{last}")).expect("kill");
    wait_for(
        "the ISR to shrink to the leader",
        Duration::from_secs(15),
        || (partition0(&bootstrap, "steady").1 == format!("[{first_leader}]")).then_some(()),
    );
    cluster
        .0
        .kill(&format!("broker-{first_leader}"))
        .expect("kill the last in-sync replica");
    wait_for(
        "the partition to go offline",
        Duration::from_secs(15),
        || (partition0(&bootstrap, "steady").0 == 0).then_some(()),
    );
    cluster
        .0
        .restart(&format!("broker-{survivor}"))
        .expect("restart an out-of-sync replica");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        partition0(&bootstrap, "steady").0,
        0,
        "never elected outside the ISR on its own"
    );
    let clean = weir(
        &bootstrap,
        &["topic", "elect-leader", "steady", "--partition", "0"],
        None,
    );
    assert!(!clean.status.success(), "a clean election has no candidate");
    let out = ok(weir(
        &bootstrap,
        &[
            "topic",
            "elect-leader",
            "steady",
            "--partition",
            "0",
            "--unclean",
        ],
        None,
    ));
    assert!(out.contains(&format!("leader {survivor}")), "{out}");
    assert!(out.contains("WARNING: unclean election"), "{out}");
    ok(weir(
        &bootstrap,
        &["produce", "steady", "--partition", "0", "--acks", "leader"],
        Some("after unclean\n"),
    ));
}

#[test]
fn a_paused_follower_leaves_the_isr_and_rejoins_after_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = common::up(1, 3, 1500, &dir);
    let bootstrap = cluster.0.bootstrap();
    ok(weir(
        &bootstrap,
        &["topic", "create", "paused", "--partitions", "1"],
        None,
    ));
    let (leader, _) = partition0(&bootstrap, "paused");
    let follower = (1..=3).find(|b| *b != leader).expect("a follower");
    cluster
        .0
        .pause(&format!("broker-{follower}"))
        .expect("SIGSTOP");
    let (_, took) = wait_for(
        "the paused follower to leave the ISR",
        Duration::from_secs(20),
        || {
            let (_, isr) = partition0(&bootstrap, "paused");
            (!isr.contains(&follower.to_string())).then_some(())
        },
    );
    eprintln!("paused follower left the ISR after {took:?}");
    // writes go on with the two others (min ISR 2)
    let lines: String = (0..50).map(|i| format!("while-paused-{i}\n")).collect();
    ok(weir(
        &bootstrap,
        &["produce", "paused", "--partition", "0"],
        Some(&lines),
    ));
    cluster
        .0
        .resume(&format!("broker-{follower}"))
        .expect("SIGCONT");
    let (_, took) = wait_for(
        "the resumed follower to rejoin the ISR",
        Duration::from_secs(30),
        || {
            let (_, isr) = partition0(&bootstrap, "paused");
            isr.contains(&follower.to_string()).then_some(())
        },
    );
    eprintln!("resumed follower back in the ISR after {took:?}");
    let log = dir
        .path()
        .join(format!("broker-{follower}"))
        .join("partitions");
    let part = std::fs::read_dir(&log)
        .expect("partitions")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("paused-0-"))
        .expect("partition dir")
        .path();
    let verify = ok(weir(
        &bootstrap,
        &["log", "verify", part.to_str().expect("utf-8")],
        None,
    ));
    assert!(
        verify.contains("offsets [0, 50)"),
        "the follower caught up: {verify}"
    );
}

/// Moves partition 0 of `topic` to `replicas` (`1,2,3`), new replicas copying at most
/// `bytes_per_s`.
fn reassign_throttled(bootstrap: &str, topic: &str, replicas: &str, bytes_per_s: u64) {
    let out = ok(weir(
        bootstrap,
        &[
            "topic",
            "reassign",
            topic,
            "--partition",
            "0",
            "--replicas",
            replicas,
            "--throttle-bytes-per-s",
            &bytes_per_s.to_string(),
        ],
        None,
    ));
    assert!(out.contains("reassigning to"), "{out}");
}

#[test]
fn a_partition_moves_to_new_replicas_with_its_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = common::up(1, 4, 1500, &dir);
    let bootstrap = cluster.0.bootstrap();
    ok(weir(
        &bootstrap,
        &[
            "topic",
            "create",
            "moving",
            "--partitions",
            "1",
            "--replication-factor",
            "3",
        ],
        None,
    ));
    let describe = ok(weir(&bootstrap, &["topic", "describe", "moving"], None));
    let line = describe
        .lines()
        .find(|l| l.contains("partition 0"))
        .expect("partition 0")
        .to_string();
    let replicas: Vec<u32> = line
        .split("replicas [")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .expect("replicas")
        .split(',')
        .map(|b| b.parse().expect("id"))
        .collect();
    let (leader, _) = partition0(&bootstrap, "moving");
    let joining = (1..=4)
        .find(|b| !replicas.contains(b))
        .expect("a fourth broker");
    let target: Vec<u32> = replicas
        .iter()
        .copied()
        .filter(|b| *b != leader)
        .chain([joining])
        .collect();
    let lines: String = (0..300)
        .map(|i| format!("record-{i:04}-{}\n", "x".repeat(200)))
        .collect();
    ok(weir(
        &bootstrap,
        &["produce", "moving", "--partition", "0"],
        Some(&lines),
    ));

    let list = target
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    reassign_throttled(&bootstrap, "moving", &list, 100_000);
    let (_, took) = wait_for(
        "the reassignment to finish",
        Duration::from_secs(30),
        || {
            let d = ok(weir(&bootstrap, &["topic", "describe", "moving"], None));
            let l = d.lines().find(|l| l.contains("partition 0"))?.to_string();
            (!l.contains("reassigning") && l.contains(&format!("replicas [{list}]"))).then_some(l)
        },
    );
    eprintln!("reassignment finished after {took:?}");
    // throttled at 100 KB/s, ~70 KB of batches take a while to copy
    assert!(
        took >= Duration::from_millis(300),
        "the throttle did not slow the copy: {took:?}"
    );
    let (new_leader, isr) = partition0(&bootstrap, "moving");
    assert!(
        target.contains(&new_leader),
        "leader {new_leader} is not a target replica"
    );
    assert_eq!(isr.matches(',').count(), 2, "{isr}");
    let read = ok(weir(
        &bootstrap,
        &[
            "consume",
            "moving",
            "--partition",
            "0",
            "--from-beginning",
            "--max-messages",
            "300",
        ],
        None,
    ));
    assert_eq!(read, lines, "the moved partition lost or changed data");
    // the replica that left deletes its copy
    let gone = dir
        .path()
        .join(format!("broker-{leader}"))
        .join("partitions");
    wait_for(
        "the old replica's directory to go",
        Duration::from_secs(10),
        || {
            let left = std::fs::read_dir(&gone)
                .map(|d| {
                    d.flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with("moving-0-"))
                })
                .unwrap_or(false);
            (!left).then_some(())
        },
    );
    ok(weir(
        &bootstrap,
        &["produce", "moving", "--partition", "0"],
        Some("after the move\n"),
    ));
}

#[test]
fn a_throttled_reassignment_leaves_the_leaders_in_sync_partitions_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = common::up(1, 2, 1500, &dir);
    let bootstrap = cluster.0.bootstrap();
    let create = |name: &str, partitions: &str, rf: &str| {
        ok(weir(
            &bootstrap,
            &[
                "topic",
                "create",
                name,
                "--partitions",
                partitions,
                "--replication-factor",
                rf,
            ],
            None,
        ))
    };
    create("moving", "1", "1");
    let (leader, _) = partition0(&bootstrap, "moving");
    let joining = 3 - leader;
    // a partition in sync on both brokers, led by the same broker, so the joining broker's
    // one fetcher from that leader serves both
    create("steady", "2", "2");
    let steady = partitions(&bootstrap, "steady")
        .iter()
        .position(|(l, _, isr)| *l == leader && isr.matches(',').count() == 1)
        .expect("a steady partition led by the moving partition's leader");
    // more than one replica fetch response holds (8 MiB)
    let lines: String = (0..12_000)
        .map(|i| format!("record-{i:05}-{}\n", "x".repeat(900)))
        .collect();
    ok(weir(
        &bootstrap,
        &["produce", "moving", "--partition", "0"],
        Some(&lines),
    ));
    // ~11 MB at 50 KB/s: the new replica sits out the requests for seconds after its first
    // response, before it can fetch the rest
    let replicas = format!("{leader},{joining}");
    reassign_throttled(&bootstrap, "moving", &replicas, 50_000);
    let reassigning =
        || ok(weir(&bootstrap, &["topic", "describe", "moving"], None)).contains("reassigning");
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    for i in 0..10 {
        ok(weir(
            &bootstrap,
            &[
                "produce",
                "steady",
                "--partition",
                &steady.to_string(),
                "--acks",
                "all",
            ],
            Some(&format!("steady-{i}\n")),
        ));
    }
    let took = started.elapsed();
    assert!(
        reassigning(),
        "the throttled copy ended before the check was done"
    );
    // a throttle sleeping in the shared fetcher would hold every acks=all produce of the
    // steady partition until it ended, or until its follower fell out of the ISR
    assert!(
        took < Duration::from_secs(5),
        "10 acks=all produces took {took:?} while the other partition was throttled"
    );
    let (_, _, isr) = &partitions(&bootstrap, "steady")[steady];
    assert_eq!(
        isr.matches(',').count(),
        1,
        "the steady follower left: {isr}"
    );
    // and the throttled copy, larger than a response, completes (each response of it is
    // larger than gRPC's default message limit too)
    wait_for(
        "the reassignment to finish",
        Duration::from_secs(60),
        || {
            let (_, isr) = partition0(&bootstrap, "moving");
            (!reassigning() && isr.matches(',').count() == 1).then_some(())
        },
    );
}
