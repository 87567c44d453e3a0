//! Dead letters: a message whose delivery failed `max_delivery_attempts` times is published
//! to the subscription's dead-letter topic (its data, ordering key and attributes, plus
//! Google's `CloudPubSubDeadLetterSource*` attributes) and then acknowledged on the source,
//! instead of being delivered again. Applies to pull, streaming pull and push alike.

use bytes::Bytes;
use weir_proto::v1 as pb;
use weir_types::subscription::SubscriptionSpec;
use weir_types::{Header, Record};

use crate::backend::{Backend, Settle, SubscriptionInfo};
use crate::names::{Kind, Name};

/// Whether delivery attempt `attempt` is past the subscription's limit.
pub fn due(spec: &SubscriptionSpec, attempt: u32) -> bool {
    !spec.dead_letter_topic.is_empty() && attempt > spec.max_delivery_attempts
}

/// The record the dead-letter topic receives for a delivery.
pub fn record(spec: &SubscriptionSpec, d: &pb::Delivery) -> Record {
    let r = d.record.clone().unwrap_or_default();
    let mut headers: Vec<Header> = r
        .headers
        .into_iter()
        .filter(|h| !h.key.starts_with("CloudPubSubDeadLetterSource"))
        .map(|h| Header {
            key: h.key,
            value: h.value,
        })
        .collect();
    let source = Name::from_weir(&spec.name, Kind::Subscriptions);
    let mut add = |k: &str, v: String| {
        headers.push(Header {
            key: k.into(),
            value: Some(Bytes::from(v)),
        })
    };
    add(
        "CloudPubSubDeadLetterSourceDeliveryCount",
        d.attempt.saturating_sub(1).to_string(),
    );
    add(
        "CloudPubSubDeadLetterSourceSubscription",
        source.as_ref().map_or(spec.name.clone(), |n| n.id.clone()),
    );
    add(
        "CloudPubSubDeadLetterSourceSubscriptionProject",
        source.map(|n| n.project).unwrap_or_default(),
    );
    add(
        "CloudPubSubDeadLetterSourceTopicPublishTime",
        crate::push::rfc3339(r.timestamp_ms),
    );
    Record {
        timestamp_ms: r.timestamp_ms,
        key: r.key,
        value: r.value,
        headers,
    }
}

/// Publishes the delivery to the dead-letter topic, then acknowledges it on the source. On
/// failure the lease runs out and the message comes (and is forwarded) again.
pub async fn forward(backend: &Backend, info: &SubscriptionInfo, partition: u32, d: pb::Delivery) {
    let spec = &info.spec;
    let published = match backend
        .producer
        .send(&spec.dead_letter_topic, None, record(spec, &d))
        .await
    {
        Ok(f) => f.await,
        Err(e) => Err(e),
    };
    if let Err(e) = published {
        tracing::warn!(subscription = %spec.name, topic = %spec.dead_letter_topic, error = %e, "dead-lettering failed; retried when the lease runs out");
        return;
    }
    let lease = vec![pb::LeaseId {
        offset: d.offset,
        attempt: d.attempt,
    }];
    match backend.settle(spec, partition, lease, Settle::Ack).await {
        Ok(_) => {
            metrics::counter!("weir_subscription_dead_lettered_total", "subscription" => spec.name.clone())
                .increment(1)
        }
        Err(e) => {
            tracing::warn!(subscription = %spec.name, error = %e, "acknowledging a dead-lettered message failed")
        }
    }
}

/// Forwards the deliveries that are past the limit; returns the others.
pub async fn split(
    backend: &Backend,
    info: &SubscriptionInfo,
    partition: u32,
    deliveries: Vec<pb::Delivery>,
) -> Vec<pb::Delivery> {
    if info.spec.dead_letter_topic.is_empty() {
        return deliveries;
    }
    let mut keep = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        if due(&info.spec, d.attempt) {
            forward(backend, info, partition, d).await;
        } else {
            keep.push(d);
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dead_letter_carries_the_source_and_the_count() {
        let mut spec = SubscriptionSpec::new("proj.orders-sub", "proj.orders");
        spec.dead_letter_topic = "proj.dlq".into();
        spec.max_delivery_attempts = 5;
        assert!(!due(&spec, 5));
        assert!(due(&spec, 6));
        let d = pb::Delivery {
            offset: 1,
            attempt: 6,
            record: Some(pb::Record {
                value: Some(Bytes::from_static(b"x")),
                headers: vec![pb::Header {
                    key: "a".into(),
                    value: Some(Bytes::from_static(b"b")),
                }],
                ..Default::default()
            }),
        };
        let r = record(&spec, &d);
        let get = |k: &str| {
            r.headers
                .iter()
                .find(|h| h.key == k)
                .and_then(|h| h.value.clone())
        };
        assert_eq!(get("a").as_deref(), Some(&b"b"[..]));
        assert_eq!(
            get("CloudPubSubDeadLetterSourceDeliveryCount").as_deref(),
            Some(&b"5"[..])
        );
        assert_eq!(
            get("CloudPubSubDeadLetterSourceSubscription").as_deref(),
            Some(&b"orders-sub"[..])
        );
        assert_eq!(
            get("CloudPubSubDeadLetterSourceSubscriptionProject").as_deref(),
            Some(&b"proj"[..])
        );
    }
}
