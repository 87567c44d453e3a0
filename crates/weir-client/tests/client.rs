//! The client against a real controller and broker in this process.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use weir_broker::{Broker, BrokerConfig};
use weir_client::{Consumer, ConsumerConfig, Producer, ProducerConfig, SeekTo};
use weir_controller::{Controller, ControllerConfig};
use weir_proto::v1 as pb;
use weir_testkit::free_addr;
use weir_types::{BrokerId, Compression, Offset, Record};

/// A controller and a broker in this process, with `topic` created (RF 1) and open.
async fn cluster(
    topic: &str,
    partitions: u32,
) -> (Controller, Broker, Vec<String>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let caddr = free_addr();
    let controller = Controller::start(ControllerConfig::new(1, caddr, dir.path().join("c")))
        .await
        .expect("controller");
    let broker = Broker::start(BrokerConfig::new(
        BrokerId(1),
        free_addr(),
        dir.path().join("b"),
        vec![caddr.to_string()],
    ))
    .await
    .expect("broker");
    while !broker.is_ready() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut admin = pb::admin_client::AdminClient::new(
        weir_proto::call::connect(&caddr.to_string())
            .await
            .expect("connect"),
    );
    admin
        .create_topic(pb::CreateTopicRequest {
            name: topic.into(),
            partitions,
            replication_factor: 1,
            config: None,
        })
        .await
        .expect("create");
    while (0..partitions).any(|p| broker.registry.get(topic, p).is_none()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (controller, broker, vec![caddr.to_string()], dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_batches_and_consumer_reads_everything_back() {
    let (controller, broker, bootstrap, _dir) = cluster("c", 4).await;

    let mut config = ProducerConfig::new(bootstrap.clone());
    config.compression = Compression::Lz4;
    config.linger_ms = 20;
    // a buffer far smaller than what is sent: sends wait for answers to make room
    config.batch_bytes_max = 4096;
    config.buffer_bytes_max = 16 << 10;
    let producer = Producer::new(config).expect("producer");
    let too_big = Record {
        timestamp_ms: 0,
        key: None,
        value: Some(Bytes::from(vec![b'x'; 20 << 10])),
        headers: Vec::new(),
    };
    let refused = producer
        .send("c", None, too_big)
        .await
        .err()
        .map(|e| e.to_string());
    assert!(
        refused
            .as_deref()
            .is_some_and(|e| e.contains("buffer_bytes_max")),
        "{refused:?}"
    );
    let mut futures = Vec::new();
    for i in 0..3000u32 {
        let key = (i % 3 == 0).then(|| Bytes::from(format!("key-{}", i % 10)));
        let record = Record {
            timestamp_ms: 1_000 + i64::from(i),
            key: key.clone(),
            value: Some(Bytes::from(format!("value-{i}"))),
            headers: Vec::new(),
        };
        futures.push((
            i,
            key,
            producer.send("c", None, record).await.expect("send"),
        ));
    }
    producer.flush().await;
    let mut placed: BTreeMap<(u32, i64), String> = BTreeMap::new();
    let mut key_partition: BTreeMap<Bytes, u32> = BTreeMap::new();
    for (i, key, future) in futures {
        let meta = future.await.expect("delivered");
        let offset = meta.offset.expect("acks=all gives offsets");
        assert!(
            placed
                .insert((meta.partition, offset.0), format!("value-{i}"))
                .is_none(),
            "two records at {}/{offset}",
            meta.partition
        );
        if let Some(key) = key {
            let p = *key_partition.entry(key).or_insert(meta.partition);
            assert_eq!(p, meta.partition, "a key moved partitions");
        }
    }
    // records were batched: far fewer batches than records
    let mut batches = 0;
    for p in 0..4 {
        let log = &broker.registry.get("c", p).expect("partition").log;
        batches += log
            .read(Offset(0), usize::MAX / 2, None)
            .expect("read")
            .len();
    }
    assert!(
        batches < 300,
        "{batches} batches for 3000 records: no batching"
    );

    let mut consumer = Consumer::new(ConsumerConfig::new(bootstrap)).expect("consumer");
    assert_eq!(consumer.partitions("c").await.expect("partitions"), 4);
    consumer
        .assign("c", &[0, 1, 2, 3], SeekTo::Beginning)
        .await
        .expect("assign");
    let mut read: BTreeMap<(u32, i64), String> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while read.len() < 3000 && tokio::time::Instant::now() < deadline {
        for r in consumer
            .poll(Duration::from_millis(200))
            .await
            .expect("poll")
        {
            let value = String::from_utf8_lossy(&r.value.expect("value")).into_owned();
            read.insert((r.partition, r.offset.0), value);
        }
    }
    assert_eq!(
        read, placed,
        "the consumer did not read back exactly what was acknowledged"
    );

    // seeks: to the end (nothing old), then by time
    consumer.seek("c", 0, SeekTo::End).await.expect("seek end");
    assert!(
        consumer
            .poll(Duration::from_millis(300))
            .await
            .expect("poll")
            .iter()
            .all(|r| r.partition != 0)
    );
    let target = placed
        .iter()
        .filter(|((p, _), _)| *p == 1)
        .nth(10)
        .map(|((_, o), _)| *o)
        .expect("records on partition 1");
    consumer
        .seek("c", 1, SeekTo::Offset(target))
        .await
        .expect("seek offset");
    let got = consumer.poll(Duration::from_secs(2)).await.expect("poll");
    let first = got
        .iter()
        .find(|r| r.partition == 1)
        .expect("partition 1 records");
    assert_eq!(first.offset.0, target);
    let seen: HashSet<u32> = got.iter().map(|r| r.partition).collect();
    assert!(!seen.contains(&0));
    consumer
        .seek("c", 2, SeekTo::Timestamp(i64::MAX / 2))
        .await
        .expect("seek time");
    assert!(matches!(
        consumer.seek("c", 2, SeekTo::Offset(-1)).await,
        Err(weir_client::ClientError::Invalid { .. })
    ));

    drop(consumer);
    broker.shutdown().await;
    controller.shutdown().await;
}

/// Five batches in flight on one partition: every record lands exactly once, in the order it
/// was sent (the broker's sequence check refuses a batch that overtakes its predecessor, and
/// the producer sends it again after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_batches_keep_their_order() {
    let (controller, broker, bootstrap, _dir) = cluster("ordered", 1).await;
    let mut config = ProducerConfig::new(bootstrap);
    config.linger_ms = 0;
    config.batch_bytes_max = 512; // many small batches, so several are in flight at once
    config.max_in_flight = 5;
    let producer = Producer::new(config).expect("producer");
    let mut futures = Vec::new();
    for i in 0..5000u32 {
        let record = Record {
            timestamp_ms: 0,
            key: None,
            value: Some(Bytes::from(format!("{i:06}"))),
            headers: Vec::new(),
        };
        futures.push(
            producer
                .send("ordered", Some(0), record)
                .await
                .expect("send"),
        );
    }
    let mut last = -1i64;
    for (i, f) in futures.into_iter().enumerate() {
        let offset = f.await.expect("delivered").offset.expect("offset").0;
        assert!(offset > last, "record {i} at {offset}, after {last}");
        last = offset;
    }
    let log = &broker.registry.get("ordered", 0).expect("partition").log;
    let values: Vec<String> = log
        .read(Offset(0), usize::MAX / 2, None)
        .expect("read")
        .iter()
        .flat_map(|b| b.records().expect("records"))
        .map(|(_, r)| String::from_utf8_lossy(&r.value.expect("value")).into_owned())
        .collect();
    let expected: Vec<String> = (0..5000u32).map(|i| format!("{i:06}")).collect();
    assert_eq!(
        values, expected,
        "the log holds every record once, in send order"
    );
    drop(producer);
    broker.shutdown().await;
    controller.shutdown().await;
}
