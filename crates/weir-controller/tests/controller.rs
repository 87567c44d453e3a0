//! A controller in-process: snapshots and log purging keep the Raft log bounded, and a
//! restart rebuilds the same metadata, groups and committed offsets from snapshot plus log.

use std::time::Duration;

use weir_controller::{Controller, ControllerConfig};
use weir_proto::internal::v1 as ipb;
use weir_proto::internal::v1::broker_registry_client::BrokerRegistryClient;
use weir_proto::v1 as pb;
use weir_proto::v1::admin_client::AdminClient;
use weir_testkit::free_addr;

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

/// A started controller with broker 1 registered, and a channel to it.
async fn start_with_a_broker(
    dir: &std::path::Path,
    addr: std::net::SocketAddr,
) -> (Controller, weir_proto::call::Channel) {
    let controller = start(dir, addr).await;
    let channel = weir_proto::call::connect(&addr.to_string())
        .await
        .expect("connect");
    BrokerRegistryClient::new(channel.clone())
        .register_broker(ipb::RegisterBrokerRequest {
            broker_id: 1,
            address: "127.0.0.1:1".into(),
            rack: String::new(),
            internal_address: String::new(),
        })
        .await
        .expect("register");
    (controller, channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_bound_the_log_and_restart_restores_the_metadata() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_addr();
    let (controller, channel) = start_with_a_broker(dir.path(), addr).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_and_committed_offsets_survive_a_restart_through_snapshots_and_the_log() {
    use weir_proto::v1::group_coordinator_client::GroupCoordinatorClient;
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_addr();
    let (controller, channel) = start_with_a_broker(dir.path(), addr).await;
    AdminClient::new(channel.clone())
        .create_topic(pb::CreateTopicRequest {
            name: "t".into(),
            partitions: 3,
            replication_factor: 1,
            config: None,
        })
        .await
        .expect("create");
    let mut groups = GroupCoordinatorClient::new(channel);
    let joined = groups
        .consumer_group_heartbeat(pb::ConsumerGroupHeartbeatRequest {
            group: "g".into(),
            member_id: "m1".into(),
            member_epoch: 0,
            subscribed_topics: Some(pb::SubscribedTopics {
                topics: vec!["t".into()],
            }),
            owned: Some(pb::OwnedPartitions::default()),
            session_timeout_ms: 60_000,
            ..Default::default()
        })
        .await
        .expect("join")
        .into_inner();
    assert_eq!(joined.assignment.len(), 3);
    // enough single commits (one Raft entry each) to take several snapshots
    for i in 1..=70 {
        groups
            .commit_offsets(pb::CommitOffsetsRequest {
                group: "g".into(),
                member_id: "m1".into(),
                member_epoch: joined.member_epoch,
                offsets: vec![pb::OffsetAndMetadata {
                    topic: "t".into(),
                    partition: i % 3,
                    offset: i64::from(i),
                    metadata: format!("commit {i}"),
                    commit_time_ms: 0,
                }],
            })
            .await
            .expect("commit");
    }
    let fetch = pb::FetchOffsetsRequest {
        group: "g".into(),
        ..Default::default()
    };
    let before = groups
        .fetch_offsets(fetch.clone())
        .await
        .expect("fetch")
        .into_inner();
    let offsets: Vec<i64> = before.offsets.iter().map(|o| o.offset).collect();
    assert_eq!(offsets, vec![69, 70, 68]);
    let snapshot = controller
        .raft
        .metrics()
        .borrow()
        .snapshot
        .map_or(0, |s| s.index);
    assert!(snapshot > 20, "snapshot at {snapshot}");
    controller.shutdown().await;

    let _controller = start(dir.path(), addr).await;
    let channel = weir_proto::call::connect(&addr.to_string())
        .await
        .expect("connect");
    let mut groups = GroupCoordinatorClient::new(channel);
    let after = groups
        .fetch_offsets(fetch)
        .await
        .expect("fetch")
        .into_inner();
    assert_eq!(
        after.offsets, before.offsets,
        "offsets changed across restart"
    );
    let g = groups
        .describe_group(pb::DescribeGroupRequest { group: "g".into() })
        .await
        .expect("describe")
        .into_inner();
    assert_eq!(g.members.len(), 1);
    assert_eq!(g.members[0].member_epoch, joined.member_epoch);
    assert_eq!(g.members[0].assigned.len(), 3);
}
