//! Google's Pub/Sub resources and messages ↔ Weir's subscription specs and records, with
//! Google's limits checked at the edge.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use tonic::Status;
use weir_proto::google::pubsub::v1 as gpb;
use weir_proto::v1 as pb;
use weir_types::subscription::{Push, SubscriptionSpec};
use weir_types::{Header, Record};

use crate::backend::SubscriptionInfo;
use crate::names::{self, Kind, Name};

/// Google's publish limits.
pub const PUBLISH_MESSAGES_MAX: usize = 1000;
pub const PUBLISH_BYTES_MAX: usize = 10 * 1000 * 1000;
pub const ATTRIBUTES_MAX: usize = 100;
pub const ATTRIBUTE_KEY_BYTES_MAX: usize = 256;
pub const ATTRIBUTE_VALUE_BYTES_MAX: usize = 1024;
pub const ORDERING_KEY_BYTES_MAX: usize = 1024;

/// A subscription created without an expiration policy is deleted after 31 idle days.
pub const DEFAULT_EXPIRATION_TTL_SECONDS: u64 = 31 * 24 * 3600;

pub fn duration_ms(d: &Option<prost_types::Duration>) -> u64 {
    d.as_ref().map_or(0, |d| {
        (d.seconds.max(0) as u64) * 1000 + (d.nanos.max(0) as u64) / 1_000_000
    })
}

pub fn duration(ms: u64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    })
}

pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn timestamp_ms(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

fn labels(raw: HashMap<String, String>) -> BTreeMap<String, String> {
    raw.into_iter().collect()
}

/// A Weir spec from a Google subscription (its name and topic already parsed).
pub fn spec(sub: gpb::Subscription, name: &Name, topic: &Name) -> Result<SubscriptionSpec, Status> {
    let mut spec = SubscriptionSpec::new(name.weir(), topic.weir());
    if sub.ack_deadline_seconds < 0 {
        return Err(Status::invalid_argument(
            "Invalid [ack_deadline_seconds]: must be 10 to 600",
        ));
    }
    spec.ack_deadline_seconds = sub.ack_deadline_seconds as u32;
    spec.retain_acked_messages = sub.retain_acked_messages;
    spec.message_retention_seconds = duration_ms(&sub.message_retention_duration) / 1000;
    // Google's defaults: no policy expires after 31 idle days, a policy without a TTL never
    spec.expiration_ttl_seconds = sub
        .expiration_policy
        .as_ref()
        .map_or(DEFAULT_EXPIRATION_TTL_SECONDS, |p| {
            duration_ms(&p.ttl) / 1000
        });
    spec.enable_message_ordering = sub.enable_message_ordering;
    spec.enable_exactly_once_delivery = sub.enable_exactly_once_delivery;
    spec.filter = sub.filter;
    spec.labels = labels(sub.labels);
    spec.push = push(sub.push_config);
    if let Some(r) = &sub.retry_policy {
        spec.retry_minimum_backoff_ms = match duration_ms(&r.minimum_backoff) {
            0 => 10_000,
            ms => ms,
        };
        spec.retry_maximum_backoff_ms = match duration_ms(&r.maximum_backoff) {
            0 => 600_000,
            ms => ms,
        };
    }
    if let Some(d) = sub.dead_letter_policy
        && !d.dead_letter_topic.is_empty()
    {
        let dlq = Name::parse("dead_letter_topic", &d.dead_letter_topic, Kind::Topics)?;
        spec.dead_letter_topic = dlq.weir();
        spec.max_delivery_attempts = d.max_delivery_attempts.max(0) as u32;
    }
    spec.detached = sub.detached;
    spec.normalize().map_err(|(field, reason)| {
        Status::invalid_argument(format!("Invalid [{field}]: {reason}"))
    })?;
    Ok(spec)
}

pub fn push(config: Option<gpb::PushConfig>) -> Option<Push> {
    let c = config?;
    if c.push_endpoint.is_empty() {
        return None;
    }
    let (sa, audience) = match c.authentication_method {
        Some(gpb::push_config::AuthenticationMethod::OidcToken(t)) => {
            (t.service_account_email, t.audience)
        }
        None => (String::new(), String::new()),
    };
    let (no_wrapper, write_metadata) = match c.wrapper {
        Some(gpb::push_config::Wrapper::NoWrapper(w)) => (true, w.write_metadata),
        _ => (false, false),
    };
    Some(Push {
        endpoint: c.push_endpoint,
        attributes: labels(c.attributes),
        no_wrapper,
        write_metadata,
        oidc_service_account_email: sa,
        oidc_audience: audience,
    })
}

fn push_config(p: &Option<Push>) -> Option<gpb::PushConfig> {
    let p = p.as_ref()?;
    Some(gpb::PushConfig {
        push_endpoint: p.endpoint.clone(),
        attributes: p.attributes.clone().into_iter().collect(),
        authentication_method: (!p.oidc_service_account_email.is_empty()).then(|| {
            gpb::push_config::AuthenticationMethod::OidcToken(gpb::push_config::OidcToken {
                service_account_email: p.oidc_service_account_email.clone(),
                audience: p.oidc_audience.clone(),
            })
        }),
        wrapper: Some(if p.no_wrapper {
            gpb::push_config::Wrapper::NoWrapper(gpb::push_config::NoWrapper {
                write_metadata: p.write_metadata,
            })
        } else {
            gpb::push_config::Wrapper::PubsubWrapper(gpb::push_config::PubsubWrapper {})
        }),
    })
}

/// Google's view of a Weir subscription.
pub fn subscription(info: &SubscriptionInfo) -> gpb::Subscription {
    let s = &info.spec;
    gpb::Subscription {
        name: names::google(&s.name, Kind::Subscriptions),
        topic: if info.topic_deleted {
            "_deleted-topic_".into()
        } else {
            names::google(&s.topic, Kind::Topics)
        },
        push_config: push_config(&s.push),
        ack_deadline_seconds: s.ack_deadline_seconds as i32,
        retain_acked_messages: s.retain_acked_messages,
        message_retention_duration: duration(s.message_retention_seconds * 1000),
        labels: s.labels.clone().into_iter().collect(),
        enable_message_ordering: s.enable_message_ordering,
        expiration_policy: Some(gpb::ExpirationPolicy {
            ttl: (s.expiration_ttl_seconds > 0)
                .then(|| duration(s.expiration_ttl_seconds * 1000))
                .flatten(),
        }),
        filter: s.filter.clone(),
        dead_letter_policy: (!s.dead_letter_topic.is_empty()).then(|| gpb::DeadLetterPolicy {
            dead_letter_topic: names::google(&s.dead_letter_topic, Kind::Topics),
            max_delivery_attempts: s.max_delivery_attempts as i32,
        }),
        retry_policy: (s.retry_maximum_backoff_ms > 0).then(|| gpb::RetryPolicy {
            minimum_backoff: duration(s.retry_minimum_backoff_ms),
            maximum_backoff: duration(s.retry_maximum_backoff_ms),
        }),
        detached: s.detached,
        enable_exactly_once_delivery: s.enable_exactly_once_delivery,
        state: gpb::subscription::State::Active as i32,
        ..Default::default()
    }
}

/// Google's update-mask paths → Weir spec fields.
pub fn update_mask(paths: &[String]) -> Result<Vec<String>, Status> {
    let mut out = Vec::new();
    for p in paths {
        let fields: &[&str] = match p.as_str() {
            "ack_deadline_seconds" => &["ack_deadline_seconds"],
            "retain_acked_messages" => &["retain_acked_messages"],
            "message_retention_duration" => &["message_retention_seconds"],
            "expiration_policy" => &["expiration_ttl_seconds"],
            "labels" => &["labels"],
            "push_config" => &["push"],
            "retry_policy" => &["retry_minimum_backoff_ms", "retry_maximum_backoff_ms"],
            "dead_letter_policy" => &["dead_letter_topic", "max_delivery_attempts"],
            "enable_exactly_once_delivery" => &["enable_exactly_once_delivery"],
            "detached" => &["detached"],
            other => {
                return Err(Status::invalid_argument(format!(
                    "Invalid [update_mask]: field {other:?} cannot be updated"
                )));
            }
        };
        out.extend(fields.iter().map(|f| f.to_string()));
    }
    if out.is_empty() {
        return Err(Status::invalid_argument(
            "Invalid [update_mask]: it names no field",
        ));
    }
    Ok(out)
}

/// A Weir record from a published message, checking Google's limits.
pub fn record(i: usize, m: gpb::PubsubMessage, now_ms: i64) -> Result<Record, Status> {
    let bad = |what: String| Status::invalid_argument(format!("Invalid [messages[{i}]]: {what}"));
    if m.data.is_empty() && m.attributes.is_empty() {
        return Err(bad("a message needs data or at least one attribute".into()));
    }
    if m.attributes.len() > ATTRIBUTES_MAX {
        return Err(bad(format!("more than {ATTRIBUTES_MAX} attributes")));
    }
    if m.ordering_key.len() > ORDERING_KEY_BYTES_MAX {
        return Err(bad(format!(
            "ordering_key longer than {ORDERING_KEY_BYTES_MAX} bytes"
        )));
    }
    let mut headers = Vec::with_capacity(m.attributes.len());
    let mut attrs: Vec<(String, String)> = m.attributes.into_iter().collect();
    attrs.sort();
    for (k, v) in attrs {
        if k.is_empty() || k.len() > ATTRIBUTE_KEY_BYTES_MAX {
            return Err(bad(format!(
                "attribute key must be 1 to {ATTRIBUTE_KEY_BYTES_MAX} bytes"
            )));
        }
        if k.starts_with("goog") {
            return Err(bad(format!("attribute key {k:?} starts with \"goog\"")));
        }
        if v.len() > ATTRIBUTE_VALUE_BYTES_MAX {
            return Err(bad(format!(
                "attribute {k:?} is longer than {ATTRIBUTE_VALUE_BYTES_MAX} bytes"
            )));
        }
        headers.push(Header {
            key: k,
            value: Some(Bytes::from(v)),
        });
    }
    Ok(Record {
        timestamp_ms: now_ms,
        key: (!m.ordering_key.is_empty()).then(|| Bytes::from(m.ordering_key)),
        value: Some(Bytes::from(m.data)),
        headers,
    })
}

/// A message id unique within the topic: the partition in the top 16 bits, the offset below.
pub use weir_types::pubsub::message_id;

/// The message a delivered record is.
pub fn message(partition: u32, offset: i64, r: pb::Record) -> gpb::PubsubMessage {
    gpb::PubsubMessage {
        data: r.value.map(|v| v.to_vec()).unwrap_or_default(),
        attributes: r
            .headers
            .into_iter()
            .map(|h| {
                let v = h
                    .value
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
                    .unwrap_or_default();
                (h.key, v)
            })
            .collect(),
        message_id: message_id(partition, offset),
        publish_time: Some(timestamp(r.timestamp_ms)),
        ordering_key: r
            .key
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .unwrap_or_default(),
    }
}

/// An ack id: `partition.offset.attempt`; the attempt names the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckId {
    pub partition: u32,
    pub offset: i64,
    pub attempt: u32,
}

impl AckId {
    pub fn encode(&self) -> String {
        format!("{}.{}.{}", self.partition, self.offset, self.attempt)
    }

    pub fn parse(raw: &str) -> Option<AckId> {
        let mut it = raw.split('.');
        let partition = it.next()?.parse().ok()?;
        let offset = it.next()?.parse().ok()?;
        let attempt = it.next()?.parse().ok()?;
        if it.next().is_some() || offset < 0 {
            return None;
        }
        Some(AckId {
            partition,
            offset,
            attempt,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_ids_round_trip_and_garbage_is_refused() {
        let id = AckId {
            partition: 3,
            offset: 1234,
            attempt: 2,
        };
        assert_eq!(AckId::parse(&id.encode()), Some(id));
        for bad in ["", "1.2", "1.2.3.4", "a.b.c", "1.-5.1"] {
            assert_eq!(AckId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn published_messages_are_checked_against_google_limits() {
        let ok = gpb::PubsubMessage {
            data: b"x".to_vec(),
            ordering_key: "k".into(),
            ..Default::default()
        };
        let r = record(0, ok, 5).expect("valid");
        assert_eq!(r.key.as_deref(), Some(&b"k"[..]));
        let empty = gpb::PubsubMessage::default();
        let e = record(7, empty, 5).expect_err("empty");
        assert!(e.message().contains("messages[7]"));
        let mut long = gpb::PubsubMessage {
            data: b"x".to_vec(),
            ..Default::default()
        };
        long.attributes
            .insert("k".into(), "v".repeat(ATTRIBUTE_VALUE_BYTES_MAX + 1));
        assert_eq!(
            record(0, long, 5).expect_err("long").code(),
            tonic::Code::InvalidArgument
        );
        assert_ne!(message_id(1, 5), message_id(0, 5));
    }
}
