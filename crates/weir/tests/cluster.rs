//! Multi-process tests: real `weir` controller and broker processes on loopback addresses,
//! started and disturbed through `weir-cluster`, driven through the `weir` CLI.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Running, ok, partitions, wait_for, weir, weir_bin};
use weir_cluster::describe_via;

const LEASE_MS: u64 = 1500;

fn up(controllers: u32, brokers: u32, dir: &tempfile::TempDir) -> Running {
    common::up(controllers, brokers, LEASE_MS, dir)
}

#[test]
fn controller_failover_keeps_metadata_and_a_restarted_controller_catches_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = up(3, 3, &dir);
    let bootstrap = cluster.0.bootstrap();

    ok(weir(
        &bootstrap,
        &["topic", "create", "orders", "--partitions", "6"],
        None,
    ));
    let parts = partitions(&bootstrap, "orders");
    assert_eq!(parts.len(), 6);
    for broker in 1..=3 {
        let led = parts.iter().filter(|p| p.0 == broker).count();
        assert_eq!(led, 2, "leaders are not spread evenly: {parts:?}");
    }
    assert!(
        parts
            .iter()
            .all(|p| p.2 == "[1,2,3]" || p.2.matches(',').count() == 2)
    );

    let before = cluster.0.describe().expect("describe");
    let old = before.leader_id;
    cluster
        .0
        .kill(&format!("controller-{old}"))
        .expect("kill leader");
    let (after, took) = wait_for("a new active controller", Duration::from_secs(15), || {
        cluster
            .0
            .describe()
            .ok()
            .filter(|d| d.leader_id != 0 && d.leader_id != old)
    });
    eprintln!("new active controller {} after {took:?}", after.leader_id);
    assert!(took < Duration::from_secs(10), "election took {took:?}");
    assert!(after.term > before.term);

    // metadata survived, and the new leader takes writes
    let list = ok(weir(&bootstrap, &["topic", "list"], None));
    assert!(list.contains("orders  partitions 6"), "{list}");
    ok(weir(
        &bootstrap,
        &["topic", "create", "audit", "--partitions", "2"],
        None,
    ));

    // the old leader comes back and catches up
    let name = format!("controller-{old}");
    cluster.0.restart(&name).expect("restart");
    let addr = cluster.0.node(&name).expect("node").addr.clone();
    let leader_applied = cluster.0.describe().expect("describe").applied_index;
    wait_for(
        "the restarted controller to catch up",
        Duration::from_secs(15),
        || {
            describe_via(std::slice::from_ref(&addr))
                .ok()
                .filter(|d| d.answered_by == old && d.applied_index >= leader_applied)
        },
    );
    // its own applied state (served locally by WatchMetadata) holds the topic created
    // while it was down
    let snapshot = first_snapshot(&addr);
    assert!(snapshot.snapshot, "a new watcher gets a full snapshot");
    let names: Vec<&str> = snapshot.topics.iter().map(|t| t.name.as_str()).collect();
    assert!(
        names.contains(&"audit"),
        "restarted controller has {names:?}"
    );
}

fn first_snapshot(addr: &str) -> weir_proto::v1::MetadataUpdate {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let channel = weir_proto::call::connect(addr).await.expect("connect");
        let mut stream = weir_proto::v1::admin_client::AdminClient::new(channel)
            .watch_metadata(weir_proto::v1::WatchMetadataRequest { from_version: 0 })
            .await
            .expect("watch")
            .into_inner();
        stream.message().await.expect("stream").expect("a snapshot")
    })
}

#[test]
fn broker_loss_moves_leaders_and_an_rf1_partition_returns_with_its_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = up(1, 3, &dir);
    let bootstrap = cluster.0.bootstrap();
    ok(weir(
        &bootstrap,
        &["topic", "create", "rf3", "--partitions", "3"],
        None,
    ));
    ok(weir(
        &bootstrap,
        &[
            "topic",
            "create",
            "rf1",
            "--partitions",
            "3",
            "--replication-factor",
            "1",
        ],
        None,
    ));
    let rf1 = partitions(&bootstrap, "rf1");
    let on_two = rf1
        .iter()
        .position(|p| p.0 == 2)
        .expect("an rf1 partition on broker 2") as u32;
    let lines: String = (0..20).map(|i| format!("record-{i}\n")).collect();
    let p = on_two.to_string();
    ok(weir(
        &bootstrap,
        &["produce", "rf1", "--partition", &p, "--acks", "leader"],
        Some(&lines),
    ));
    let rf3_before = partitions(&bootstrap, "rf3");

    cluster.0.kill("broker-2").expect("kill broker");
    let (_, took) = wait_for("broker 2 to be fenced", Duration::from_secs(15), || {
        cluster
            .0
            .describe()
            .ok()
            .filter(|d| d.brokers.iter().any(|b| b.id == 2 && b.fenced))
    });
    eprintln!("broker 2 fenced after {took:?} (lease {LEASE_MS} ms)");

    let rf3_after = partitions(&bootstrap, "rf3");
    for (before, after) in rf3_before.iter().zip(&rf3_after) {
        assert_ne!(after.0, 2, "broker 2 still leads: {rf3_after:?}");
        assert_ne!(after.0, 0, "an RF3 partition went offline: {rf3_after:?}");
        assert!(
            !after.2.contains('2'),
            "broker 2 is still in an ISR: {after:?}"
        );
        if before.0 == 2 {
            assert!(
                after.1 > before.1,
                "leader epoch not bumped: {before:?} -> {after:?}"
            );
        } else {
            assert_eq!(after.0, before.0, "a leader moved needlessly");
        }
    }
    let rf1_after = partitions(&bootstrap, "rf1");
    assert_eq!(
        rf1_after[on_two as usize].0, 0,
        "rf1 partition on broker 2 should be offline"
    );

    cluster.0.restart("broker-2").expect("restart broker");
    wait_for(
        "the rf1 partition to come back",
        Duration::from_secs(15),
        || {
            let p = partitions(&bootstrap, "rf1");
            (p[on_two as usize].0 == 2).then_some(())
        },
    );
    let got = ok(weir(
        &bootstrap,
        &[
            "consume",
            "rf1",
            "--partition",
            &p,
            "--from-beginning",
            "--max-messages",
            "20",
        ],
        None,
    ));
    assert_eq!(got, lines, "the partition came back without its data");
}

#[test]
fn controllers_are_added_and_removed_through_the_admin_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = up(3, 1, &dir);
    let bootstrap = cluster.0.bootstrap();
    // a fourth controller on the next loopback address of this cluster
    let first = cluster.0.node("controller-1").expect("node").addr.clone();
    let prefix = first.rsplit_once('.').expect("ip").0.to_string();
    let addr = format!("{prefix}.14:9093");
    let internal = format!("{prefix}.14:9095");
    let log = std::fs::File::create(dir.path().join("controller-4.log")).expect("log");
    let mut fourth = Command::new(weir_bin())
        .args([
            "controller",
            "--id",
            "4",
            "--join",
            "--listen",
            &addr,
            "--internal-listen",
            &internal,
            "--data-dir",
        ])
        .arg(dir.path().join("controller-4"))
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start controller 4");
    std::thread::sleep(Duration::from_millis(300));

    let out = ok(weir(
        &bootstrap,
        &[
            "cluster",
            "add-controller",
            "--id",
            "4",
            "--address",
            &addr,
            "--internal-address",
            &internal,
        ],
        None,
    ));
    assert!(out.contains("controller 4"), "{out}");
    assert!(out.contains(&format!("internal {internal}")), "{out}");
    let voters = |d: &weir_proto::v1::DescribeClusterResponse| {
        d.controllers
            .iter()
            .filter(|c| c.voter)
            .map(|c| c.id)
            .collect::<Vec<_>>()
    };
    let (d, _) = wait_for(
        "controller 4 to be a voter that has caught up",
        Duration::from_secs(15),
        || {
            describe_via(std::slice::from_ref(&addr))
                .ok()
                .filter(|d| d.answered_by == 4 && voters(d).contains(&4) && d.applied_index > 0)
        },
    );
    assert_eq!(voters(&d), vec![1, 2, 3, 4]);
    // the four-voter quorum commits writes
    let out = ok(weir(
        &bootstrap,
        &["topic", "create", "after-join", "--partitions", "1"],
        None,
    ));
    assert!(out.contains("topic after-join"), "{out}");

    let out = ok(weir(
        &bootstrap,
        &["cluster", "remove-controller", "--id", "4"],
        None,
    ));
    assert!(!out.contains("controller 4 "), "{out}");
    // every controller answers from its own view: wait until the answering one applied it
    wait_for("voters back to 1, 2, 3", Duration::from_secs(10), || {
        let d = cluster.0.describe().ok()?;
        (voters(&d) == vec![1, 2, 3]).then_some(())
    });
    let _ = fourth.kill();
    let _ = fourth.wait();

    // bad input is a clear error naming the field
    let out = weir(
        &bootstrap,
        &["cluster", "remove-controller", "--id", "9"],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid id"));
}

/// A plain HTTP/1.1 GET: `(status code, body)`.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect http");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

#[test]
fn every_role_serves_metrics_health_and_readiness() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = up(1, 1, &dir);
    let bootstrap = cluster.0.bootstrap();
    ok(weir(
        &bootstrap,
        &["topic", "create", "m", "--partitions", "1"],
        None,
    ));
    ok(weir(
        &bootstrap,
        &["produce", "m", "--acks", "leader"],
        Some("x\ny\n"),
    ));
    let controller = cluster.0.http_addr("controller-1").expect("addr");
    let broker = cluster.0.http_addr("broker-1").expect("addr");
    for addr in [&controller, &broker] {
        assert_eq!(http_get(addr, "/healthz").0, 200);
        assert_eq!(http_get(addr, "/readyz").0, 200, "{addr} not ready");
    }
    let ((_, body), _) = wait_for("controller gauges", Duration::from_secs(5), || {
        let (code, body) = http_get(&controller, "/metrics");
        (code == 200 && body.contains("weir_controller_raft_term")).then_some((code, body))
    });
    assert!(body.contains("weir_controller_brokers_live 1"), "{body}");
    let (_, body) = http_get(&broker, "/metrics");
    assert!(
        body.contains(r#"weir_broker_requests_total{rpc="produce",outcome="ok"} 1"#),
        "{body}"
    );
    assert!(
        body.contains("weir_broker_request_seconds_bucket"),
        "{body}"
    );
    // the produce above waited for an fsync round, and the round's time was recorded
    assert!(
        body.contains("weir_broker_fsync_round_seconds_bucket"),
        "{body}"
    );
    // every server role measures its own stalls, on the runtime and on a thread of its own
    for addr in [&controller, &broker] {
        let (_, body) = http_get(addr, "/metrics");
        for histogram in [
            "weir_runtime_tick_lag_seconds_count",
            "weir_process_tick_lag_seconds_count",
        ] {
            assert!(body.contains(histogram), "{addr}: no {histogram} in {body}");
        }
    }
}

#[test]
fn metadata_watchers_get_a_snapshot_then_deltas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = up(1, 1, &dir);
    let bootstrap = cluster.0.bootstrap();
    ok(weir(
        &bootstrap,
        &["topic", "create", "before", "--partitions", "1"],
        None,
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let channel = weir_proto::call::connect(&bootstrap)
            .await
            .expect("connect");
        let mut stream = weir_proto::v1::admin_client::AdminClient::new(channel)
            .watch_metadata(weir_proto::v1::WatchMetadataRequest { from_version: 0 })
            .await
            .expect("watch")
            .into_inner();
        let first = stream.message().await.expect("stream").expect("update");
        assert!(first.snapshot);
        assert_eq!(first.topics.len(), 1);
        assert_eq!(first.brokers.len(), 1);

        let create = weir(
            &bootstrap,
            &["topic", "create", "after", "--partitions", "2"],
            None,
        );
        ok(create);
        let delta = stream.message().await.expect("stream").expect("update");
        assert!(!delta.snapshot, "{delta:?}");
        assert!(delta.version > first.version);
        let names: Vec<&str> = delta.topics.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, vec!["after"], "only the changed topic travels");
        assert!(delta.brokers.is_empty());

        ok(weir(&bootstrap, &["topic", "delete", "before"], None));
        let delta = stream.message().await.expect("stream").expect("update");
        assert!(!delta.snapshot);
        assert_eq!(delta.deleted_topics, vec!["before".to_string()]);
        assert!(delta.topics.is_empty());

        // a watcher resuming from a known version gets only what it missed
        let channel = weir_proto::call::connect(&bootstrap)
            .await
            .expect("connect");
        let mut resumed = weir_proto::v1::admin_client::AdminClient::new(channel)
            .watch_metadata(weir_proto::v1::WatchMetadataRequest {
                from_version: first.version,
            })
            .await
            .expect("watch")
            .into_inner();
        let catch_up = resumed.message().await.expect("stream").expect("update");
        assert!(!catch_up.snapshot, "{catch_up:?}");
        assert_eq!(catch_up.deleted_topics, vec!["before".to_string()]);
        assert_eq!(catch_up.topics.len(), 1);
    });
}
