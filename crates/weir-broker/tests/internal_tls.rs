//! Mutual TLS between brokers: replication works over it, and a follower is the broker its
//! certificate names — a client claiming another broker's `follower_id` (the way to make a
//! leader count unreplicated records as replicated) is refused, as are clients without a
//! certificate from the cluster's CA and plain-text clients.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use weir_broker::config::InternalTlsFiles;
use weir_broker::{Broker, BrokerConfig};
use weir_controller::{Controller, ControllerConfig};
use weir_proto::internal::v1 as ipb;
use weir_proto::internal::v1::replication_client::ReplicationClient;
use weir_proto::v1 as pb;
use weir_proto::v1::admin_client::AdminClient;
use weir_proto::v1::broker_client::BrokerClient;
use weir_testkit::free_addr;
use weir_types::BrokerId;

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn ca() -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "weir test CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    Ca { cert, key }
}

/// PEM files for broker `id` signed by `ca`, in `dir`.
fn broker_files(dir: &Path, ca: &Ca, id: u32) -> InternalTlsFiles {
    let params =
        rcgen::CertificateParams::new(vec![weir_proto::tls::broker_name(id)]).expect("params");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.cert, &ca.key).expect("signed");
    let files = InternalTlsFiles {
        cert: dir.join(format!("broker-{id}.crt")),
        key: dir.join(format!("broker-{id}.key")),
        ca: dir.join("ca.crt"),
    };
    std::fs::write(&files.cert, cert.pem()).expect("write");
    std::fs::write(&files.key, key.serialize_pem()).expect("write");
    std::fs::write(&files.ca, ca.cert.pem()).expect("write");
    files
}

fn fetch_request(follower_id: u32, topic: &str) -> ipb::ReplicaFetchRequest {
    ipb::ReplicaFetchRequest {
        follower_id,
        partitions: vec![ipb::ReplicaFetchPartition {
            topic: topic.into(),
            partition: 0,
            fetch_offset: 0,
            last_fetched_epoch: -1,
            leader_epoch: 0,
        }],
        max_wait_ms: 0,
        max_bytes: 1 << 20,
    }
}

async fn replication_as(
    addr: std::net::SocketAddr,
    files: &InternalTlsFiles,
    leader: u32,
) -> ReplicationClient<weir_proto::call::Channel> {
    let tls = files.load().expect("load");
    ReplicationClient::new(
        weir_proto::call::connect_tls(&addr.to_string(), tls.client(leader))
            .await
            .expect("connect over mTLS"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_are_who_their_certificates_say() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca();
    let caddr = free_addr();
    let controller = Controller::start(ControllerConfig::new(1, caddr, dir.path().join("c")))
        .await
        .expect("controller");
    let mut brokers = Vec::new();
    for id in [1u32, 2] {
        let certs = dir.path().join(format!("certs-{id}"));
        std::fs::create_dir_all(&certs).expect("mkdir");
        let mut config = BrokerConfig::new(
            BrokerId(id),
            free_addr(),
            dir.path().join(format!("b{id}")),
            vec![caddr.to_string()],
        );
        config.internal_listen = Some(free_addr());
        config.internal_tls = Some(broker_files(&certs, &ca, id));
        config.validate().expect("valid config");
        brokers.push(Broker::start(config).await.expect("broker"));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !brokers.iter().all(|b| b.is_ready()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "brokers never ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut admin = AdminClient::new(
        weir_proto::call::connect(&caddr.to_string())
            .await
            .expect("connect"),
    );
    admin
        .create_topic(pb::CreateTopicRequest {
            name: "t".into(),
            partitions: 1,
            replication_factor: 2,
            config: None,
        })
        .await
        .expect("create topic");

    // replication runs over mutual TLS: acks=all needs the follower's fetches
    let leader = loop {
        let view = admin
            .describe_topic(pb::DescribeTopicRequest { name: "t".into() })
            .await
            .expect("describe")
            .into_inner();
        let p = view.partitions.first().cloned().unwrap_or_default();
        if p.isr.len() == 2 && p.leader != 0 {
            break p.leader;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ISR never formed: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let leader_broker = brokers
        .iter()
        .find(|b| b.registry.me().0 == leader)
        .expect("leader");
    let mut producer = BrokerClient::new(
        weir_proto::call::connect(&leader_broker.local_addr.to_string())
            .await
            .expect("connect"),
    );
    let request = pb::ProduceRequest {
        topic: "t".into(),
        partition: 0,
        acks: pb::Acks::All as i32,
        leader_epoch: None,
        batch: None,
        records: vec![pb::Record {
            key: None,
            value: Some(Bytes::from_static(b"replicated over mTLS")),
            headers: Vec::new(),
            timestamp_ms: 0,
        }],
    };
    // until the leader has opened the partition
    let acked = loop {
        match producer.produce(request.clone()).await {
            Ok(r) => break r.into_inner(),
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("acks=all through TLS replication: {e:?}"),
        }
    };
    assert_eq!(acked.base_offset, 0);

    let internal = leader_broker.internal_addr.expect("internal listener");
    let other = if leader == 1 { 2 } else { 1 };
    // an outsider with a certificate for broker 3 claiming to be the real follower
    let certs3 = dir.path().join("certs-3");
    std::fs::create_dir_all(&certs3).expect("mkdir");
    let spoofer = broker_files(&certs3, &ca, 3);
    let mut rpc = replication_as(internal, &spoofer, leader).await;
    let refused = rpc
        .replica_fetch(fetch_request(other, "t"))
        .await
        .expect_err("a follower_id its certificate does not name");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("follower_id"), "{refused:?}");
    // as itself it is let through to the replication rules (not a replica of t: no records)
    let answer = rpc
        .replica_fetch(fetch_request(3, "t"))
        .await
        .expect("broker 3 as itself")
        .into_inner();
    assert!(answer.partitions[0].batches.is_empty());

    // a certificate from another CA never gets a connection
    let rogue_dir = dir.path().join("rogue");
    std::fs::create_dir_all(&rogue_dir).expect("mkdir");
    let rogue = broker_files(&rogue_dir, &self::ca(), other);
    let mut rogue_files = rogue.clone();
    rogue_files.ca = dir.path().join(format!("certs-{other}")).join("ca.crt");
    let tls = rogue_files.load().expect("load");
    let attempt = tokio::time::timeout(Duration::from_secs(10), async {
        let ch = weir_proto::call::connect_tls(&internal.to_string(), tls.client(leader)).await?;
        ReplicationClient::new(ch)
            .replica_fetch(fetch_request(other, "t"))
            .await
            .map_err(|s| weir_proto::call::CallError::Bootstrap(s.to_string()))
    })
    .await
    .expect("refused promptly, not hung");
    assert!(attempt.is_err(), "a rogue CA's certificate was let in");

    // a plain-text client to the TLS port fails cleanly
    let plain = tokio::time::timeout(Duration::from_secs(10), async {
        let ch = weir_proto::call::connect(&internal.to_string()).await?;
        ReplicationClient::new(ch)
            .replica_fetch(fetch_request(other, "t"))
            .await
            .map_err(|s| weir_proto::call::CallError::Bootstrap(s.to_string()))
    })
    .await
    .expect("plain text refused promptly, not hung");
    assert!(plain.is_err(), "plain text reached replication");

    for b in brokers {
        b.shutdown().await;
    }
    controller.shutdown().await;
}
