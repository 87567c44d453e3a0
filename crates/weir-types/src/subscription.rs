//! Subscriptions (Pub/Sub semantics on a topic): their definition and the cursor a partition
//! leader keeps for each of a subscription's partitions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Ack deadline bounds, seconds (Google's).
pub const ACK_DEADLINE_SECONDS_MIN: u32 = 10;
pub const ACK_DEADLINE_SECONDS_MAX: u32 = 600;
pub const ACK_DEADLINE_SECONDS_DEFAULT: u32 = 10;
/// Retention of unacknowledged messages, seconds: 10 minutes to 31 days, 7 days by default.
pub const MESSAGE_RETENTION_SECONDS_MIN: u64 = 600;
pub const MESSAGE_RETENTION_SECONDS_MAX: u64 = 31 * 24 * 3600;
pub const MESSAGE_RETENTION_SECONDS_DEFAULT: u64 = 7 * 24 * 3600;
/// A stored cursor keeps at most this many acknowledged ranges above its low mark; acks past
/// them are stored again once the low mark moves (until then a failover redelivers them).
pub const CURSOR_RANGES_MAX: usize = 10_000;
pub const SUBSCRIPTION_NAME_BYTES_MAX: usize = 249;

/// Where a push subscription delivers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Push {
    pub endpoint: String,
    pub attributes: BTreeMap<String, String>,
    pub no_wrapper: bool,
    pub write_metadata: bool,
    pub oidc_service_account_email: String,
    pub oidc_audience: String,
}

/// A subscription as defined by its creator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionSpec {
    pub name: String,
    pub topic: String,
    pub ack_deadline_seconds: u32,
    pub retain_acked_messages: bool,
    pub message_retention_seconds: u64,
    /// 0: never expires.
    pub expiration_ttl_seconds: u64,
    pub enable_message_ordering: bool,
    pub enable_exactly_once_delivery: bool,
    pub filter: String,
    pub labels: BTreeMap<String, String>,
    pub push: Option<Push>,
    pub retry_minimum_backoff_ms: u64,
    pub retry_maximum_backoff_ms: u64,
    pub dead_letter_topic: String,
    pub max_delivery_attempts: u32,
    pub detached: bool,
}

impl SubscriptionSpec {
    pub fn new(name: impl Into<String>, topic: impl Into<String>) -> SubscriptionSpec {
        SubscriptionSpec {
            name: name.into(),
            topic: topic.into(),
            ack_deadline_seconds: ACK_DEADLINE_SECONDS_DEFAULT,
            retain_acked_messages: false,
            message_retention_seconds: MESSAGE_RETENTION_SECONDS_DEFAULT,
            expiration_ttl_seconds: 0,
            enable_message_ordering: false,
            enable_exactly_once_delivery: false,
            filter: String::new(),
            labels: BTreeMap::new(),
            push: None,
            retry_minimum_backoff_ms: 0,
            retry_maximum_backoff_ms: 0,
            dead_letter_topic: String::new(),
            max_delivery_attempts: 0,
            detached: false,
        }
    }

    /// Fills defaults for zero values, then checks every field; the error names the field.
    pub fn normalize(&mut self) -> Result<(), (String, String)> {
        let bad = |f: &str, r: String| Err((f.to_string(), r));
        if self.name.is_empty() || self.name.len() > SUBSCRIPTION_NAME_BYTES_MAX {
            return bad(
                "name",
                format!("must be 1 to {SUBSCRIPTION_NAME_BYTES_MAX} bytes"),
            );
        }
        if let Some(c) = self
            .name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return bad("name", format!("character {c:?} is not allowed"));
        }
        if self.topic.is_empty() {
            return bad("topic", "must be set".into());
        }
        if self.ack_deadline_seconds == 0 {
            self.ack_deadline_seconds = ACK_DEADLINE_SECONDS_DEFAULT;
        }
        if !(ACK_DEADLINE_SECONDS_MIN..=ACK_DEADLINE_SECONDS_MAX)
            .contains(&self.ack_deadline_seconds)
        {
            return bad(
                "ack_deadline_seconds",
                format!(
                    "must be {ACK_DEADLINE_SECONDS_MIN} to {ACK_DEADLINE_SECONDS_MAX}, got {}",
                    self.ack_deadline_seconds
                ),
            );
        }
        if self.message_retention_seconds == 0 {
            self.message_retention_seconds = MESSAGE_RETENTION_SECONDS_DEFAULT;
        }
        if !(MESSAGE_RETENTION_SECONDS_MIN..=MESSAGE_RETENTION_SECONDS_MAX)
            .contains(&self.message_retention_seconds)
        {
            return bad(
                "message_retention_seconds",
                format!(
                    "must be {MESSAGE_RETENTION_SECONDS_MIN} to {MESSAGE_RETENTION_SECONDS_MAX}, got {}",
                    self.message_retention_seconds
                ),
            );
        }
        if self.expiration_ttl_seconds != 0 && self.expiration_ttl_seconds < 86_400 {
            return bad(
                "expiration_ttl_seconds",
                "must be 0 (never) or at least one day".into(),
            );
        }
        if !self.filter.is_empty()
            && let Err(e) = crate::filter::SubscriptionFilter::parse(&self.filter)
        {
            return bad("filter", e);
        }
        if self.retry_maximum_backoff_ms < self.retry_minimum_backoff_ms {
            return bad(
                "retry_maximum_backoff_ms",
                "must not be below retry_minimum_backoff_ms".into(),
            );
        }
        if self.retry_maximum_backoff_ms > 600_000 {
            return bad("retry_maximum_backoff_ms", "must be at most 600 s".into());
        }
        if !self.dead_letter_topic.is_empty() {
            if self.max_delivery_attempts == 0 {
                self.max_delivery_attempts = 5;
            }
            if !(5..=100).contains(&self.max_delivery_attempts) {
                return bad("max_delivery_attempts", "must be 5 to 100".into());
            }
        }
        if let Some(push) = &self.push
            && !(push.endpoint.starts_with("http://") || push.endpoint.starts_with("https://"))
        {
            return bad(
                "push.endpoint",
                format!("{:?} is not an http(s) URL", push.endpoint),
            );
        }
        Ok(())
    }
}

/// A subscription's place in one partition: every offset below `low` is acknowledged, and so
/// is every offset in `acked` (sorted, disjoint `[start, end)` ranges above `low`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cursor {
    pub low: i64,
    pub acked: Vec<(i64, i64)>,
}

impl Cursor {
    pub fn at(low: i64) -> Cursor {
        Cursor {
            low,
            acked: Vec::new(),
        }
    }

    /// Whether `offset` is acknowledged.
    pub fn is_acked(&self, offset: i64) -> bool {
        if offset < self.low {
            return true;
        }
        let i = self.acked.partition_point(|(s, _)| *s <= offset);
        i > 0 && offset < self.acked[i - 1].1
    }

    /// Checks the invariants of a cursor that came from outside.
    pub fn validate(&self) -> Result<(), String> {
        if self.low < 0 {
            return Err(format!("low {} is negative", self.low));
        }
        if self.acked.len() > CURSOR_RANGES_MAX {
            return Err(format!(
                "{} acked ranges, at most {CURSOR_RANGES_MAX}",
                self.acked.len()
            ));
        }
        let mut floor = self.low;
        for (s, e) in &self.acked {
            if *s <= floor || e <= s {
                return Err(format!(
                    "acked range [{s}, {e}) is empty, unsorted or not above {floor}"
                ));
            }
            floor = *e;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_membership_and_validation() {
        let c = Cursor {
            low: 5,
            acked: vec![(7, 9), (12, 13)],
        };
        let acked: Vec<i64> = (0..15).filter(|o| c.is_acked(*o)).collect();
        assert_eq!(acked, vec![0, 1, 2, 3, 4, 7, 8, 12]);
        assert!(c.validate().is_ok());
        for bad in [
            Cursor {
                low: 5,
                acked: vec![(5, 6)],
            },
            Cursor {
                low: 5,
                acked: vec![(8, 9), (7, 8)],
            },
            Cursor {
                low: 5,
                acked: vec![(8, 8)],
            },
            Cursor {
                low: -1,
                acked: vec![],
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn spec_defaults_and_field_errors() {
        let mut s = SubscriptionSpec::new("p.sub", "p.topic");
        s.ack_deadline_seconds = 0;
        s.normalize().expect("valid");
        assert_eq!(s.ack_deadline_seconds, 10);
        s.ack_deadline_seconds = 601;
        assert_eq!(
            s.normalize().map_err(|e| e.0),
            Err("ack_deadline_seconds".into())
        );
        let mut s = SubscriptionSpec::new("bad name", "t");
        assert_eq!(s.normalize().map_err(|e| e.0), Err("name".into()));
        let mut s = SubscriptionSpec::new("s", "t");
        s.dead_letter_topic = "dlq".into();
        s.max_delivery_attempts = 3;
        assert_eq!(
            s.normalize().map_err(|e| e.0),
            Err("max_delivery_attempts".into())
        );
    }
}
