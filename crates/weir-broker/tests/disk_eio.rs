//! A real I/O error from the kernel, not an injected signal: the broker's data directory is on
//! an ext4 filesystem in a loop device, and the filesystem is shut down under it
//! (`EXT4_IOC_SHUTDOWN`), after which every write and fsync fails with EIO — what a dying disk
//! does. The broker must fail-stop: give up its leaderships, turn not ready, stop heartbeating.
//!
//! Needs root (mount, loop devices) and `mkfs.ext4`; where they are missing it says so and
//! does nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use weir_broker::{Broker, BrokerConfig};
use weir_controller::{Controller, ControllerConfig};
use weir_proto::status::error_code;
use weir_proto::v1 as pb;
use weir_proto::v1::admin_client::AdminClient;
use weir_proto::v1::broker_client::BrokerClient;
use weir_types::{BrokerId, ErrorCode};

/// An ext4 filesystem in a file, mounted through a loop device; unmounted on drop.
struct LoopDisk {
    mount: PathBuf,
}

impl LoopDisk {
    fn mount(dir: &Path) -> Result<LoopDisk, String> {
        let image = dir.join("disk.img");
        let mount = dir.join("mnt");
        std::fs::create_dir_all(&mount).map_err(|e| e.to_string())?;
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(128 << 20))
            .map_err(|e| e.to_string())?;
        run(Command::new("mkfs.ext4").arg("-q").arg("-F").arg(&image))?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount))?;
        Ok(LoopDisk { mount })
    }

    /// Shuts the filesystem down without flushing its journal: from now on every write and
    /// fsync on it fails with EIO.
    fn shut_down(&self) -> Result<(), String> {
        // EXT4_IOC_SHUTDOWN = _IOR('X', 125, __u32); EXT4_GOING_FLAGS_NOLOGFLUSH = 2
        let script = "import fcntl, os, struct, sys\n\
                      fd = os.open(sys.argv[1], os.O_RDONLY)\n\
                      fcntl.ioctl(fd, 0x8004587D, struct.pack('I', 2))\n";
        run(Command::new("python3")
            .args(["-c", script])
            .arg(&self.mount))
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

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

fn produce(value: &str) -> pb::ProduceRequest {
    pb::ProduceRequest {
        topic: "eio".into(),
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
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eio_from_the_disk_makes_the_broker_fail_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = match LoopDisk::mount(dir.path()) {
        Ok(disk) => disk,
        Err(e) => {
            eprintln!("SKIPPED: no loop-mounted ext4 here (needs root and mkfs.ext4): {e}");
            return;
        }
    };
    let caddr = free_addr();
    let controller = Controller::start(ControllerConfig::new(1, caddr, dir.path().join("c")))
        .await
        .expect("controller");
    let broker = Broker::start(BrokerConfig::new(
        BrokerId(1),
        free_addr(),
        disk.mount.join("broker"),
        vec![caddr.to_string()],
    ))
    .await
    .expect("broker");
    let mut admin = AdminClient::new(
        weir_proto::call::connect(&caddr.to_string())
            .await
            .expect("connect"),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !broker.is_ready() {
        assert!(tokio::time::Instant::now() < deadline, "broker never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    admin
        .create_topic(pb::CreateTopicRequest {
            name: "eio".into(),
            partitions: 1,
            replication_factor: 1,
            config: None,
        })
        .await
        .expect("create topic");
    while broker.registry.get("eio", 0).is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "partition never opened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut client = BrokerClient::new(
        weir_proto::call::connect(&broker.local_addr.to_string())
            .await
            .expect("connect broker"),
    );
    client
        .produce(produce("before"))
        .await
        .expect("produce while the disk is healthy");

    disk.shut_down().expect("shut the filesystem down");

    // the next write meets the EIO; nothing after it is acknowledged
    let failed = client
        .produce(produce("after"))
        .await
        .expect_err("an acknowledgement from a dead disk");
    eprintln!("produce on the dead disk: {failed:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let refused = client
            .produce(produce("later"))
            .await
            .err()
            .and_then(|s| error_code(&s));
        if !broker.is_ready()
            && matches!(
                refused,
                Some(ErrorCode::LeaderNotAvailable | ErrorCode::NotLeader)
            )
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still serving on a dead disk: ready {}, produce {refused:?}",
            broker.is_ready()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reason = broker
        .registry
        .disk
        .failure()
        .expect("the disk is marked failed");
    eprintln!("disk failure: {reason}");
    assert!(
        reason.contains("os error 5") || reason.contains("Input/output error"),
        "not the kernel's EIO: {reason}"
    );
    // no heartbeats: the controller fences it once the lease (6 s) runs out
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let cluster = admin
            .describe_cluster(pb::DescribeClusterRequest {})
            .await
            .expect("describe")
            .into_inner();
        if cluster.brokers.iter().any(|b| b.id == 1 && b.fenced) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broker of a dead disk was never fenced"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !broker.is_ready(),
        "a failed disk never becomes ready again"
    );
    broker.shutdown().await;
    controller.shutdown().await;
}

/// The fsync itself fails: the write reached the page cache, the disk died before the fsync
/// (a relaxed log, so the fsync comes later than the write). The flush reports the kernel's
/// EIO, the durable end does not move, and the flusher stays poisoned: nothing later is acknowledged either
/// (the kernel may have dropped the dirty pages, so no later fsync can vouch for them).
#[test]
fn a_failed_fsync_is_reported_and_poisons_every_later_append() {
    use std::sync::Arc;
    use weir_log::{FlushPolicy, LogConfig, LogError, PartitionLog, SystemClock};
    use weir_types::{BatchBuilder, Compression, LeaderEpoch, Record};

    let dir = tempfile::tempdir().expect("tempdir");
    let disk = match LoopDisk::mount(dir.path()) {
        Ok(disk) => disk,
        Err(e) => {
            eprintln!("SKIPPED: no loop-mounted ext4 here (needs root and mkfs.ext4): {e}");
            return;
        }
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
    // the fsync is due only later, so the write lands in the page cache first
    let config = LogConfig {
        flush: FlushPolicy::IntervalAckBeforeFsync { ms: 60_000 },
        ..LogConfig::default()
    };
    let flusher = weir_log::Flusher::spawn("eio").expect("flusher");
    let log = PartitionLog::open(
        &disk.mount.join("p"),
        config,
        Arc::clone(&flusher),
        Arc::new(SystemClock),
    )
    .expect("open");
    let _relaxed = log
        .append_nowait(&batch("written"), LeaderEpoch(0))
        .expect("write into the page cache");
    disk.shut_down().expect("shut the filesystem down");
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
    let elsewhere = PartitionLog::open(
        &dir.path().join("healthy"),
        LogConfig::default(),
        flusher,
        Arc::new(SystemClock),
    )
    .expect("open on the healthy disk");
    let later = elsewhere
        .append_nowait(&batch("later"), LeaderEpoch(0))
        .expect_err("an append through a poisoned flusher");
    assert!(matches!(later, LogError::FlushFailed(_)), "{later:?}");
}
