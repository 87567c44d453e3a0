//! A controller in-process: snapshots and log purging keep the Raft log bounded, and a
//! restart rebuilds the same metadata from snapshot plus log.

use std::time::Duration;

use weir_controller::{Controller, ControllerConfig};
use weir_proto::v1 as pb;
use weir_proto::v1::admin_client::AdminClient;
use weir_proto::v1::broker_registry_client::BrokerRegistryClient;

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

async fn start(dir: &std::path::Path, addr: std::net::SocketAddr) -> Controller {
    let mut config = ControllerConfig::new(1, addr, dir.to_path_buf());
    config.snapshot_logs_max = 20;
    let controller = Controller::start(config).await.expect("start");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while controller.raft.metrics().borrow().current_leader != Some(1) {
        assert!(tokio::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    controller
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_bound_the_log_and_restart_restores_the_metadata() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_addr();
    let controller = start(dir.path(), addr).await;
    let channel = weir_proto::call::connect(&addr.to_string())
        .await
        .expect("connect");
    BrokerRegistryClient::new(channel.clone())
        .register_broker(pb::RegisterBrokerRequest {
            broker_id: 1,
            address: "127.0.0.1:1".into(),
            rack: String::new(),
        })
        .await
        .expect("register");
    let mut admin = AdminClient::new(channel);
    let refused = admin
        .create_topic(pb::CreateTopicRequest {
            name: "compacted".into(),
            partitions: 1,
            replication_factor: 1,
            config: Some(pb::TopicConfig {
                cleanup_policy: Some("compact".into()),
                ..pb::TopicConfig::default()
            }),
        })
        .await
        .expect_err("compaction is not implemented");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("config.cleanup_policy"),
        "{}",
        refused.message()
    );
    for i in 0..60 {
        admin
            .create_topic(pb::CreateTopicRequest {
                name: format!("t{i}"),
                partitions: 2,
                replication_factor: 1,
                config: None,
            })
            .await
            .expect("create");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = controller.raft.metrics().borrow().clone();
        let snapshot = m.snapshot.map_or(0, |s| s.index);
        let purged = m.purged.map_or(0, |p| p.index);
        if snapshot >= 40 && purged > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "log not compacted: snapshot {snapshot}, purged {purged}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = admin
        .list_topics(pb::ListTopicsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(before.topics.len(), 60);
    controller.shutdown().await;

    let controller = start(dir.path(), addr).await;
    let channel = weir_proto::call::connect(&addr.to_string())
        .await
        .expect("connect");
    let after = AdminClient::new(channel)
        .list_topics(pb::ListTopicsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        after.topics, before.topics,
        "metadata changed across restart"
    );
    controller.shutdown().await;
}
