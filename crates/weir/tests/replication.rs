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

/// Produces single-record batches with unique values and acks=all, following leader changes,
/// until `stop`. Returns value -> acknowledged offset. Failures that may have been applied
/// are never retried with the same value.
fn produce_steadily(bootstrap: String, stop: Arc<AtomicBool>) -> BTreeMap<u64, i64> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let bootstrap: Vec<String> = bootstrap.split(',').map(str::to_string).collect();
        let mut acked = BTreeMap::new();
        let mut value = 0u64;
        while !stop.load(Ordering::Relaxed) {
            value += 1;
            let leader = async {
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
            }
            .await;
            let Some(addr) = leader else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Ok(channel) = weir_proto::call::connect(&addr).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let mut client = pb::broker_client::BrokerClient::new(channel);
            // several records per connection until something fails
            while !stop.load(Ordering::Relaxed) {
                let request = pb::ProduceRequest {
                    topic: "steady".into(),
                    partition: 0,
                    acks: pb::Acks::All as i32,
                    leader_epoch: None,
                    batch: None,
                    records: vec![pb::Record {
                        key: None,
                        value: Some(Bytes::from(value.to_string())),
                        headers: Vec::new(),
                        timestamp_ms: 0,
                    }],
                };
                match tokio::time::timeout(Duration::from_secs(5), client.produce(request)).await {
                    Ok(Ok(r)) => {
                        acked.insert(value, r.into_inner().base_offset);
                        value += 1;
                    }
                    _ => break, // unknown or failed: the next record gets a new value
                }
            }
        }
        acked
    })
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
    let acked = producer.join().expect("producer");
    assert!(
        acked.len() > 20,
        "too few acknowledged records: {}",
        acked.len()
    );

    // every acknowledged value is there, once, at its offset
    let out = ok(weir(
        &bootstrap,
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
    for (value, offset) in &acked {
        assert_eq!(
            seen.get(value),
            Some(&vec![*offset]),
            "acknowledged value {value} at offset {offset}: found at {:?}",
            seen.get(value)
        );
    }
    let dupes: Vec<_> = seen.iter().filter(|(_, o)| o.len() > 1).collect();
    assert!(dupes.is_empty(), "values stored twice: {dupes:?}");
    eprintln!("{} acknowledged records, all read back once", acked.len());

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
        &["produce", "steady", "--partition", "0"],
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
    ok(weir(
        &bootstrap,
        &["produce", "steady", "--partition", "0"],
        Some("accepted again\n"),
    ));
}
