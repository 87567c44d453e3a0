//! What the benchmark binaries share.

use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_client::{Producer, ProducerConfig};
use weir_proto::call::parse_bootstrap;
use weir_types::Record;

/// Publishes `messages` records of `value_bytes` round-robin over `partitions`, 10,000 in
/// flight at most; returns how long it took.
pub async fn publish(
    bootstrap: &str,
    topic: &str,
    messages: u64,
    partitions: u32,
    value_bytes: usize,
) -> anyhow::Result<Duration> {
    let producer = Producer::new(ProducerConfig::new(parse_bootstrap(bootstrap)?))?;
    let value = Bytes::from(vec![b'x'; value_bytes]);
    let started = Instant::now();
    let mut pending = Vec::with_capacity(10_000);
    for i in 0..messages {
        let record = Record {
            timestamp_ms: 0,
            key: None,
            value: Some(value.clone()),
            headers: Vec::new(),
        };
        let p = (i % u64::from(partitions)) as u32;
        pending.push(producer.send(topic, Some(p), record).await?);
        if pending.len() == 10_000 {
            for f in pending.drain(..) {
                f.await?;
            }
        }
    }
    for f in pending {
        f.await?;
    }
    Ok(started.elapsed())
}

/// Creates a topic through the controllers.
pub async fn create_topic(
    bootstrap: &[String],
    name: &str,
    partitions: u32,
    replication_factor: u32,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let request = weir_proto::v1::CreateTopicRequest {
        name: name.to_string(),
        partitions,
        replication_factor,
        config: None,
    };
    weir_proto::call::with_controller(bootstrap, Duration::from_secs(10), |ch| {
        let request = request.clone();
        async move {
            weir_proto::v1::admin_client::AdminClient::new(ch)
                .create_topic(request)
                .await
        }
    })
    .await
    .context("create topic")?;
    Ok(())
}

/// Creates a subscription from each partition's log start.
pub async fn create_subscription(
    bootstrap: &[String],
    spec: weir_proto::v1::SubscriptionSpec,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let request = weir_proto::v1::CreateSubscriptionRequest {
        spec: Some(spec),
        start: Vec::new(),
    };
    weir_proto::call::with_controller(bootstrap, Duration::from_secs(10), |ch| {
        let request = request.clone();
        async move {
            weir_proto::v1::subscriptions_client::SubscriptionsClient::new(ch)
                .create_subscription(request)
                .await
        }
    })
    .await
    .context("create subscription")?;
    Ok(())
}
