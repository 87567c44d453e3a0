//! Replication across real broker processes: kill the leader under a steady `acks=all` load
//! and check that every acknowledged record is read back exactly once at its offset; lose two
//! of three replicas and check that writes are refused while committed data stays readable;
//! bring them back and check that they catch up and rejoin the ISR.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_cluster::{Cluster, Spec};
use weir_proto::v1 as pb;

fn weir_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weir"))
}

struct Running(Cluster);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.down(Duration::from_secs(3));
    }
}

fn weir(bootstrap: &str, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(weir_bin())
        .args(args)
        .env("WEIR_BOOTSTRAP", bootstrap)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn weir");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("stdin");
    child.wait_with_output().expect("output")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `(leader, isr)` of partition 0 from `weir topic describe`.
fn partition0(bootstrap: &str, topic: &str) -> (u32, String) {
    let out = ok(weir(bootstrap, &["topic", "describe", topic], ""));
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("partition 0"))
        .expect("partition 0")
        .to_string();
    let words: Vec<&str> = line.split_whitespace().collect();
    let isr_at = words.iter().position(|w| *w == "isr").expect("isr");
    (words[3].parse().unwrap_or(0), words[isr_at + 1].to_string())
}

fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return (v, start.elapsed());
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
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
    let spec = Spec {
        controllers: 1,
        brokers: 3,
        dir: dir.path().to_path_buf(),
        weir: weir_bin(),
        broker_lease_ms: 1500,
    };
    let mut cluster = Running(Cluster::up(&spec, Duration::from_secs(60)).expect("cluster up"));
    let bootstrap = cluster.0.bootstrap();
    ok(weir(
        &bootstrap,
        &["topic", "create", "steady", "--partitions", "1"],
        "",
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
        "",
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
        "refused\n",
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
        "",
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
        "accepted again\n",
    ));
}
