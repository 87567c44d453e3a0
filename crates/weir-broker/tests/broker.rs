//! A controller and a broker in-process, driven over gRPC: the plain-records produce path,
//! request validation and error codes, epoch fencing, long-poll fetch, offset look-ups, and
//! fail-stop on a failed disk (injected, and a real EIO from a loop-mounted ext4 that is shut
//! down under the broker: those need root and loop devices, and skip, saying so, without).

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use weir_broker::{Broker, BrokerConfig};
use weir_controller::{Controller, ControllerConfig};
use weir_proto::status::error_code;
use weir_proto::v1 as pb;
use weir_proto::v1::admin_client::AdminClient;
use weir_proto::v1::broker_client::BrokerClient;
use weir_testkit::free_addr;
use weir_types::{BrokerId, ErrorCode};

struct Setup {
    controller: Controller,
    broker: Broker,
    client: BrokerClient<weir_proto::call::Channel>,
    _dir: tempfile::TempDir,
}

async fn setup(topic: &str) -> Setup {
    setup_on(topic, None).await
}

/// [`setup`] with the broker's data in `broker_dir` (else in the temporary directory).
async fn setup_on(topic: &str, broker_dir: Option<std::path::PathBuf>) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let caddr = free_addr();
    let controller = Controller::start(ControllerConfig::new(1, caddr, dir.path().join("c")))
        .await
        .expect("controller");
    let broker = Broker::start(BrokerConfig::new(
        BrokerId(1),
        free_addr(),
        broker_dir.unwrap_or_else(|| dir.path().join("b")),
        vec![caddr.to_string()],
    ))
    .await
    .expect("broker");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !broker.is_ready() {
        assert!(tokio::time::Instant::now() < deadline, "broker never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut admin = AdminClient::new(
        weir_proto::call::connect(&caddr.to_string())
            .await
            .expect("connect"),
    );
    admin
        .create_topic(pb::CreateTopicRequest {
            name: topic.into(),
            partitions: 2,
            replication_factor: 1,
            config: None,
        })
        .await
        .expect("create topic");
    while broker.registry.get(topic, 1).is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "partition never opened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = BrokerClient::new(
        weir_proto::call::connect(&broker.local_addr.to_string())
            .await
            .expect("connect broker"),
    );
    Setup {
        controller,
        broker,
        client,
        _dir: dir,
    }
}

fn record(value: &str, header_key: &str) -> pb::Record {
    pb::Record {
        key: Some(Bytes::from_static(b"k")),
        value: Some(Bytes::from(value.to_string())),
        headers: vec![pb::Header {
            key: header_key.into(),
            value: Some(Bytes::from_static(b"v")),
        }],
        timestamp_ms: 0,
    }
}

fn produce(topic: &str, partition: u32, records: Vec<pb::Record>) -> pb::ProduceRequest {
    pb::ProduceRequest {
        topic: topic.into(),
        partition,
        acks: pb::Acks::All as i32,
        leader_epoch: None,
        batch: None,
        records,
    }
}

fn fetch(topic: &str, offset: i64, wait_ms: u32) -> pb::FetchRequest {
    pb::FetchRequest {
        topic: topic.into(),
        partition: 0,
        offset,
        max_bytes: 1 << 20,
        max_wait_ms: wait_ms,
        min_bytes: 1,
        leader_epoch: None,
        decode: true,
    }
}

fn code(status: tonic::Status) -> (ErrorCode, String) {
    (
        error_code(&status).expect("weir error code"),
        status.message().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_records_round_trip_and_bad_requests_name_the_field() {
    let Setup {
        controller,
        broker,
        mut client,
        _dir,
    } = setup("t").await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let r = client
        .produce(produce("t", 0, vec![record("a", "h"), record("b", "h")]))
        .await
        .expect("produce")
        .into_inner();
    assert_eq!((r.base_offset, r.last_offset), (0, 1));
    let got = client
        .fetch(fetch("t", 1, 0))
        .await
        .expect("fetch")
        .into_inner();
    assert_eq!(got.high_watermark, 2);
    assert_eq!(
        got.records.len(),
        1,
        "records below the fetch offset are filtered"
    );
    let rec = got.records[0].record.clone().expect("record");
    assert_eq!(rec.value.as_deref(), Some(&b"b"[..]));
    assert_eq!(rec.headers[0].key, "h");
    assert!(
        rec.timestamp_ms >= before,
        "broker stamps timestamp 0 with its clock"
    );

    // both a batch and records
    let mut both = produce("t", 0, vec![record("a", "h")]);
    both.batch = Some(pb::RecordBatch {
        data: Bytes::from_static(b"x"),
    });
    let (c, msg) = code(client.produce(both).await.expect_err("both"));
    assert_eq!(c, ErrorCode::InvalidArgument);
    assert!(msg.contains("invalid batch"), "{msg}");
    // neither
    let (c, msg) = code(
        client
            .produce(produce("t", 0, vec![]))
            .await
            .expect_err("neither"),
    );
    assert_eq!(c, ErrorCode::InvalidArgument);
    assert!(msg.contains("invalid records"), "{msg}");
    // a bad header deep inside
    let bad = produce("t", 0, vec![record("a", "h"), record("b", "")]);
    let (c, msg) = code(client.produce(bad).await.expect_err("empty header key"));
    assert_eq!(c, ErrorCode::InvalidArgument);
    assert!(msg.contains("records[1].headers[0].key"), "{msg}");
    // a corrupt pre-encoded batch
    let mut batch = weir_types::BatchBuilder::default()
        .record(weir_types::Record::default())
        .build()
        .expect("batch")
        .into_bytes()
        .to_vec();
    let last = batch.len() - 1;
    batch[last] ^= 1;
    let mut corrupt = produce("t", 0, vec![]);
    corrupt.batch = Some(pb::RecordBatch { data: batch.into() });
    let (c, _) = code(client.produce(corrupt).await.expect_err("crc"));
    assert_eq!(c, ErrorCode::InvalidRecordBatch);
    // unknown partition, out-of-range offset, bad acks
    let (c, _) = code(
        client
            .produce(produce("t", 9, vec![record("a", "h")]))
            .await
            .expect_err("p9"),
    );
    assert_eq!(c, ErrorCode::UnknownTopicOrPartition);
    let (c, _) = code(client.fetch(fetch("t", 3, 0)).await.expect_err("past hw"));
    assert_eq!(c, ErrorCode::OffsetOutOfRange);
    let mut acks = produce("t", 0, vec![record("a", "h")]);
    acks.acks = 42;
    let (c, msg) = code(client.produce(acks).await.expect_err("acks"));
    assert_eq!(c, ErrorCode::InvalidArgument);
    assert!(msg.contains("acks"), "{msg}");
    // nothing above was half-applied
    let got = client
        .fetch(fetch("t", 0, 0))
        .await
        .expect("fetch")
        .into_inner();
    assert_eq!(got.high_watermark, 2);

    broker.shutdown().await;
    controller.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epochs_are_checked_and_fetch_long_polls() {
    let Setup {
        controller,
        broker,
        mut client,
        _dir,
    } = setup("e").await;
    let mut stale = produce("e", 0, vec![record("a", "h")]);
    stale.leader_epoch = Some(-1);
    let (c, _) = code(client.produce(stale).await.expect_err("stale"));
    assert_eq!(c, ErrorCode::FencedLeaderEpoch);
    let mut future = produce("e", 0, vec![record("a", "h")]);
    future.leader_epoch = Some(7);
    let (c, _) = code(client.produce(future).await.expect_err("future"));
    assert_eq!(c, ErrorCode::UnknownLeaderEpoch);
    let mut current = produce("e", 0, vec![record("a", "h")]);
    current.leader_epoch = Some(0);
    client.produce(current).await.expect("current epoch");

    // a fetch at the end waits for the next append instead of returning empty at once
    let mut poller = client.clone();
    let waiting = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let r = poller.fetch(fetch("e", 1, 5000)).await.expect("fetch");
        (r.into_inner(), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    client
        .produce(produce("e", 0, vec![record("late", "h")]))
        .await
        .expect("produce");
    let (got, took) = waiting.await.expect("join");
    assert_eq!(got.records.len(), 1);
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // with nothing arriving, it returns empty after max_wait
    let started = std::time::Instant::now();
    let got = client
        .fetch(fetch("e", 2, 300))
        .await
        .expect("fetch")
        .into_inner();
    assert!(got.records.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250));

    // offsets by time
    let far = client
        .list_offsets(pb::ListOffsetsRequest {
            topic: "e".into(),
            partition: 0,
            spec: pb::OffsetSpec::Timestamp as i32,
            timestamp_ms: i64::MAX / 2,
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!((far.offset, far.timestamp_ms), (2, -1));
    let first = client
        .list_offsets(pb::ListOffsetsRequest {
            topic: "e".into(),
            partition: 0,
            spec: pb::OffsetSpec::Timestamp as i32,
            timestamp_ms: 0,
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(first.offset, 0);
    assert!(first.timestamp_ms > 0);

    broker.shutdown().await;
    controller.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producers_get_ids_and_retries_are_not_written_twice() {
    let Setup {
        controller,
        broker,
        mut client,
        _dir,
    } = setup("i").await;
    let a = client
        .init_producer_id(pb::InitProducerIdRequest {})
        .await
        .expect("init")
        .into_inner();
    let b = client
        .init_producer_id(pb::InitProducerIdRequest {})
        .await
        .expect("init")
        .into_inner();
    assert_ne!(a.producer_id, b.producer_id, "producer ids are unique");
    let batch = |seq: i32, value: &str| -> pb::RecordBatch {
        weir_types::BatchBuilder::default()
            .producer(
                weir_types::ProducerId(a.producer_id),
                weir_types::ProducerEpoch(a.producer_epoch as i16),
                weir_types::Sequence(seq),
            )
            .record(weir_types::Record {
                value: Some(Bytes::from(value.to_string())),
                timestamp_ms: 1,
                ..weir_types::Record::default()
            })
            .build()
            .expect("batch")
            .into()
    };
    let send = |b: pb::RecordBatch| pb::ProduceRequest {
        batch: Some(b),
        ..produce("i", 0, vec![])
    };
    let first = client
        .produce(send(batch(0, "x")))
        .await
        .expect("produce")
        .into_inner();
    assert!(!first.duplicate);
    let again = client
        .produce(send(batch(0, "x")))
        .await
        .expect("retry")
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(again.base_offset, first.base_offset);
    let (c, _) = code(
        client
            .produce(send(batch(5, "gap")))
            .await
            .expect_err("gap"),
    );
    assert_eq!(c, ErrorCode::OutOfOrderSequence);
    let next = client
        .produce(send(batch(1, "y")))
        .await
        .expect("next")
        .into_inner();
    assert_eq!(next.base_offset, first.base_offset + 1);
    let got = client
        .fetch(fetch("i", 0, 0))
        .await
        .expect("fetch")
        .into_inner();
    assert_eq!(got.records.len(), 2, "the retry was not written twice");

    broker.shutdown().await;
    controller.shutdown().await;
}

/// Waits (up to `within`) until the controller at `controller` describes broker 1 so that
/// `ok` holds.
async fn until_broker(
    controller: std::net::SocketAddr,
    within: Duration,
    ok: impl Fn(&pb::BrokerDescription) -> bool,
) {
    let mut admin = AdminClient::new(
        weir_proto::call::connect(&controller.to_string())
            .await
            .expect("connect"),
    );
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let cluster = admin
            .describe_cluster(pb::DescribeClusterRequest {})
            .await
            .expect("describe")
            .into_inner();
        if cluster.brokers.iter().any(|b| b.id == 1 && ok(b)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "broker 1 never got there: {:?}",
            cluster.brokers
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fail-stop: once the disk fails (as an fsync error reports it), the broker is not ready,
/// leads nothing, and stops heartbeating, so the controller fences it when its lease runs out
/// (and would move its leaderships to replicas that still hold their data).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_disk_stops_leading_and_heartbeating() {
    let Setup {
        controller,
        broker,
        mut client,
        _dir,
    } = setup("d").await;
    client
        .produce(produce("d", 0, vec![record("before", "h")]))
        .await
        .expect("produce while healthy");

    broker
        .registry
        .disk
        .fail("fsync of d-0: injected I/O error".into());
    fail_stops(&broker, &mut client, "d").await;
    fenced_for_good(&controller, &broker).await;
    broker.shutdown().await;
    controller.shutdown().await;
}

/// Waits (at most 5 s) until the broker of a failed disk is not ready and refuses produces
/// to `topic` as not their leader.
async fn fail_stops(
    broker: &Broker,
    client: &mut BrokerClient<weir_proto::call::Channel>,
    topic: &str,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let refused = client
            .produce(produce(topic, 0, vec![record("after", "h")]))
            .await
            .err()
            .map(code);
        if !broker.is_ready()
            && matches!(
                refused,
                Some((ErrorCode::LeaderNotAvailable | ErrorCode::NotLeader, _))
            )
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still serving after the disk failed: ready {}, produce {refused:?}",
            broker.is_ready()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// No heartbeats from a failed disk: the controller fences the broker once the lease (6 s)
/// runs out, and it never turns ready again.
async fn fenced_for_good(controller: &Controller, broker: &Broker) {
    until_broker(controller.local_addr, Duration::from_secs(15), |b| b.fenced).await;
    assert!(
        !broker.is_ready(),
        "a failed disk never becomes ready again"
    );
}

/// With an internal listener, replication is served there and only there: the public port
/// answers `ReplicaFetch` as unimplemented, so firewalling the internal port is enough to
/// keep clients out of replication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_is_served_on_the_internal_listener_only() {
    use weir_proto::internal::v1 as ipb;
    use weir_proto::internal::v1::replication_client::ReplicationClient;

    let dir = tempfile::tempdir().expect("tempdir");
    let caddr = free_addr();
    let controller = Controller::start(ControllerConfig::new(1, caddr, dir.path().join("c")))
        .await
        .expect("controller");
    let mut config = BrokerConfig::new(
        BrokerId(1),
        free_addr(),
        dir.path().join("b"),
        vec![caddr.to_string()],
    );
    config.internal_listen = Some(free_addr());
    let broker = Broker::start(config).await.expect("broker");
    let internal = broker.internal_addr.expect("internal listener bound");
    let request = || ipb::ReplicaFetchRequest {
        follower_id: 2,
        partitions: vec![ipb::ReplicaFetchPartition {
            topic: "none".into(),
            partition: 0,
            fetch_offset: 0,
            last_fetched_epoch: -1,
            leader_epoch: 0,
        }],
        max_wait_ms: 0,
        max_bytes: 1 << 20,
    };
    let mut public = ReplicationClient::new(
        weir_proto::call::connect(&broker.local_addr.to_string())
            .await
            .expect("connect public"),
    );
    let refused = public
        .replica_fetch(request())
        .await
        .expect_err("replication on the public port");
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");
    let mut replication = ReplicationClient::new(
        weir_proto::call::connect(&internal.to_string())
            .await
            .expect("connect internal"),
    );
    let answer = replication
        .replica_fetch(request())
        .await
        .expect("replication on the internal port")
        .into_inner();
    assert_eq!(
        answer.partitions[0].error_code,
        ErrorCode::UnknownTopicOrPartition.as_i32()
    );
    // the controller tells followers where to replicate from
    let internal = internal.to_string();
    until_broker(caddr, Duration::from_secs(10), |b| {
        b.internal_address == internal
    })
    .await;
    broker.shutdown().await;
    controller.shutdown().await;
}

#[tokio::test]
async fn the_controllers_internal_api_is_served_on_their_internal_listener_only() {
    use weir_proto::internal::v1 as ipb;
    use weir_proto::internal::v1::broker_registry_client::BrokerRegistryClient;
    use weir_proto::internal::v1::controller_raft_client::ControllerRaftClient;

    let dir = tempfile::tempdir().expect("tempdir");
    let caddr = free_addr();
    let mut config = ControllerConfig::new(1, caddr, dir.path().join("c"));
    let internal = free_addr();
    config.internal_listen = Some(internal);
    // the voter entry must name the internal address too
    let refused = Controller::start(config.clone())
        .await
        .err()
        .expect("voter without its internal address");
    assert!(
        refused.to_string().contains("internal address"),
        "{refused}"
    );
    config.voters.insert(
        1,
        weir_controller::ControllerNode {
            addr: caddr.to_string(),
            internal: Some(internal.to_string()),
        },
    );
    let controller = Controller::start(config).await.expect("controller");
    assert_eq!(controller.internal_addr, Some(internal));

    let connect = |addr: std::net::SocketAddr| async move {
        weir_proto::call::connect(&addr.to_string())
            .await
            .expect("connect")
    };
    let register = || ipb::RegisterBrokerRequest {
        broker_id: 7,
        address: "127.0.0.1:1".into(),
        rack: String::new(),
        internal_address: String::new(),
    };
    let raft = || ipb::RaftPayload {
        data: Bytes::from_static(b"{}"),
    };
    // the public listener knows neither Raft nor the broker registry
    let public = connect(caddr).await;
    let refused = BrokerRegistryClient::new(public.clone())
        .register_broker(register())
        .await
        .expect_err("registry on the public port");
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");
    let refused = ControllerRaftClient::new(public.clone())
        .vote(raft())
        .await
        .expect_err("raft on the public port");
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");
    // the internal one serves both (a malformed vote is refused by Raft, not unknown)
    let inside = connect(internal).await;
    let vote = ControllerRaftClient::new(inside.clone())
        .vote(raft())
        .await
        .expect_err("malformed vote");
    assert_ne!(vote.code(), tonic::Code::Unimplemented, "{vote:?}");

    // a broker given the internal address registers and follows metadata there
    let broker = Broker::start(BrokerConfig::new(
        BrokerId(1),
        free_addr(),
        dir.path().join("b"),
        vec![internal.to_string()],
    ))
    .await
    .expect("broker");
    until_broker(caddr, Duration::from_secs(10), |b| !b.fenced).await;
    let cluster = AdminClient::new(public)
        .describe_cluster(pb::DescribeClusterRequest {})
        .await
        .expect("describe")
        .into_inner();
    assert_eq!(cluster.controllers[0].address, caddr.to_string());
    assert_eq!(
        cluster.controllers[0].internal_address,
        internal.to_string()
    );
    let registered = BrokerRegistryClient::new(inside)
        .register_broker(register())
        .await
        .expect("registry on the internal port")
        .into_inner();
    assert!(registered.incarnation > 0, "{registered:?}");
    broker.shutdown().await;
    controller.shutdown().await;
}

/// An ext4 filesystem in a file, mounted through a loop device; unmounted on drop. Shutting
/// it down (`EXT4_IOC_SHUTDOWN`) makes every later write and fsync on it fail with EIO — a
/// real I/O error from the kernel, what a dying disk does.
struct LoopDisk {
    mount: std::path::PathBuf,
}

impl LoopDisk {
    /// Mounts one under `dir`, or says why it cannot here (it needs root, loop devices and
    /// `mkfs.ext4`) and returns `None`.
    fn mount(dir: &std::path::Path) -> Option<LoopDisk> {
        let image = dir.join("disk.img");
        let mount = dir.join("mnt");
        let made = std::fs::create_dir_all(&mount)
            .and_then(|()| std::fs::File::create(&image)?.set_len(128 << 20))
            .map_err(|e| e.to_string())
            .and_then(|()| run(Command::new("mkfs.ext4").arg("-q").arg("-F").arg(&image)))
            .and_then(|()| {
                run(Command::new("mount")
                    .args(["-o", "loop"])
                    .arg(&image)
                    .arg(&mount))
            });
        match made {
            Ok(()) => Some(LoopDisk { mount }),
            Err(e) => {
                eprintln!("SKIPPED: no loop-mounted ext4 here (needs root and mkfs.ext4): {e}");
                None
            }
        }
    }

    /// Shuts the filesystem down without flushing its journal.
    fn shut_down(&self) {
        // EXT4_IOC_SHUTDOWN = _IOR('X', 125, __u32); EXT4_GOING_FLAGS_NOLOGFLUSH = 2
        let script = "import fcntl, os, struct, sys\n\
                      fd = os.open(sys.argv[1], os.O_RDONLY)\n\
                      fcntl.ioctl(fd, 0x8004587D, struct.pack('I', 2))\n";
        run(Command::new("python3")
            .args(["-c", script])
            .arg(&self.mount))
        .expect("shut the filesystem down");
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let out = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The same fail-stop on a real EIO: the broker's data is on a loop-mounted ext4 that is shut
/// down under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eio_from_the_disk_makes_the_broker_fail_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(disk) = LoopDisk::mount(dir.path()) else {
        return;
    };
    let Setup {
        controller,
        broker,
        mut client,
        _dir,
    } = setup_on("eio", Some(disk.mount.join("broker"))).await;
    client
        .produce(produce("eio", 0, vec![record("before", "h")]))
        .await
        .expect("produce while the disk is healthy");

    disk.shut_down();
    let failed = client
        .produce(produce("eio", 0, vec![record("after", "h")]))
        .await
        .expect_err("an acknowledgement from a dead disk");
    assert_eq!(code(failed).0, ErrorCode::StorageError);
    fail_stops(&broker, &mut client, "eio").await;
    let reason = broker
        .registry
        .disk
        .failure()
        .expect("the disk is marked failed");
    assert!(
        reason.contains("os error 5"),
        "not the kernel's EIO: {reason}"
    );
    fenced_for_good(&controller, &broker).await;
    broker.shutdown().await;
    controller.shutdown().await;
}

/// The fsync itself fails: the write reached the page cache, the disk died before the fsync
/// (a relaxed log, so the fsync comes later than the write). The flush reports the kernel's
/// EIO, the durable end does not move, and the flusher stays poisoned: nothing later is
/// acknowledged either (the kernel may have dropped the dirty pages, so no later fsync can
/// vouch for them).
#[test]
fn a_failed_fsync_is_reported_and_poisons_every_later_append() {
    use std::sync::Arc;
    use weir_log::{FlushPolicy, LogConfig, LogError, PartitionLog, SystemClock};
    use weir_types::{BatchBuilder, Compression, LeaderEpoch, Record};

    let dir = tempfile::tempdir().expect("tempdir");
    let Some(disk) = LoopDisk::mount(dir.path()) else {
        return;
    };
    let batch = |value: &str| {
        let mut builder = BatchBuilder::new(Compression::None);
        builder.push(Record {
            timestamp_ms: 0,
            key: None,
            value: Some(Bytes::from(value.to_string())),
            headers: Vec::new(),
        });
        builder.build().expect("batch")
    };
    let open = |dir: std::path::PathBuf, config, flusher| {
        PartitionLog::open(&dir, config, flusher, Arc::new(SystemClock)).expect("open")
    };
    let flusher = weir_log::Flusher::spawn("eio").expect("flusher");
    let relaxed = LogConfig {
        flush: FlushPolicy::IntervalAckBeforeFsync { ms: 60_000 },
        ..LogConfig::default()
    };
    let log = open(disk.mount.join("p"), relaxed, Arc::clone(&flusher));
    let _relaxed = log
        .append_nowait(&batch("written"), LeaderEpoch(0))
        .expect("write into the page cache");
    disk.shut_down();
    let failed = flusher.flush_all().expect_err("an fsync on a dead disk");
    assert!(matches!(failed, LogError::FlushFailed(_)), "{failed:?}");
    assert!(
        failed.to_string().contains("os error 5"),
        "not the kernel's EIO: {failed}"
    );
    assert_eq!(log.durable_end().0, 0, "the failed fsync counted");
    log.append_nowait(&batch("later"), LeaderEpoch(0))
        .expect_err("an append on a dead disk");
    // the flusher is poisoned: even a write that lands elsewhere is never acknowledged
    let elsewhere = open(dir.path().join("healthy"), LogConfig::default(), flusher);
    let later = elsewhere
        .append_nowait(&batch("later"), LeaderEpoch(0))
        .expect_err("an append through a poisoned flusher");
    assert!(matches!(later, LogError::FlushFailed(_)), "{later:?}");
}
