//! Conversions between protobuf messages and `weir-types`, checking every field.

use weir_types::batch::{Header, Record, RecordBatch};
use weir_types::{LeaderEpoch, Offset};

use crate::v1;

/// A request field that failed validation. `field` is a dotted path such as
/// `records[3].headers[0].key`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Prefixes the field path, e.g. `key` inside `records[2]` becomes `records[2].key`.
    pub fn within(self, parent: impl std::fmt::Display) -> FieldError {
        FieldError {
            field: format!("{parent}.{}", self.field),
            reason: self.reason,
        }
    }
}

/// The largest header key a record may carry.
pub const HEADER_KEY_BYTES_MAX: usize = 32 * 1024;

impl TryFrom<v1::Header> for Header {
    type Error = FieldError;

    fn try_from(h: v1::Header) -> Result<Self, Self::Error> {
        if h.key.is_empty() {
            return Err(FieldError::new("key", "must not be empty"));
        }
        if h.key.len() > HEADER_KEY_BYTES_MAX {
            return Err(FieldError::new(
                "key",
                format!("is {} bytes, over {HEADER_KEY_BYTES_MAX}", h.key.len()),
            ));
        }
        Ok(Header {
            key: h.key,
            value: h.value,
        })
    }
}

impl From<Header> for v1::Header {
    fn from(h: Header) -> Self {
        v1::Header {
            key: h.key,
            value: h.value,
        }
    }
}

impl TryFrom<v1::Record> for Record {
    type Error = FieldError;

    fn try_from(r: v1::Record) -> Result<Self, Self::Error> {
        if r.timestamp_ms < 0 {
            return Err(FieldError::new("timestamp_ms", "must not be negative"));
        }
        let headers = r
            .headers
            .into_iter()
            .enumerate()
            .map(|(i, h)| Header::try_from(h).map_err(|e| e.within(format!("headers[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Record {
            timestamp_ms: r.timestamp_ms,
            key: r.key,
            value: r.value,
            headers,
        })
    }
}

impl From<Record> for v1::Record {
    fn from(r: Record) -> Self {
        v1::Record {
            key: r.key,
            value: r.value,
            headers: r.headers.into_iter().map(Into::into).collect(),
            timestamp_ms: r.timestamp_ms,
        }
    }
}

/// Checks the framing only; the CRC and the records are checked where the batch is appended,
/// against the partition's limits.
impl TryFrom<v1::RecordBatch> for RecordBatch {
    type Error = FieldError;

    fn try_from(b: v1::RecordBatch) -> Result<Self, Self::Error> {
        RecordBatch::from_bytes(b.data).map_err(|e| FieldError::new("data", e.to_string()))
    }
}

impl From<RecordBatch> for v1::RecordBatch {
    fn from(b: RecordBatch) -> Self {
        v1::RecordBatch {
            data: b.into_bytes(),
        }
    }
}

/// Every record of a stored batch, as the wire's `StoredRecord`s.
pub fn stored_records(
    batch: &RecordBatch,
) -> Result<Vec<v1::StoredRecord>, weir_types::BatchError> {
    let epoch: LeaderEpoch = batch.leader_epoch();
    Ok(batch
        .records()?
        .into_iter()
        .map(|(offset, record): (Offset, Record)| v1::StoredRecord {
            offset: offset.0,
            record: Some(record.into()),
            leader_epoch: epoch.0,
        })
        .collect())
}

fn broker_ids(ids: &[u32], field: &str) -> Result<Vec<weir_types::BrokerId>, FieldError> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| match id {
            0 => Err(FieldError::new(
                format!("{field}[{i}]"),
                "broker ids are positive",
            )),
            id => Ok(weir_types::BrokerId(*id)),
        })
        .collect()
}

impl TryFrom<v1::PartitionDescription> for weir_types::metadata::PartitionInfo {
    type Error = FieldError;

    fn try_from(p: v1::PartitionDescription) -> Result<Self, Self::Error> {
        Ok(weir_types::metadata::PartitionInfo {
            partition: p.partition,
            leader: (p.leader != 0).then_some(weir_types::BrokerId(p.leader)),
            leader_epoch: LeaderEpoch(p.leader_epoch),
            replicas: broker_ids(&p.replicas, "replicas")?,
            isr: broker_ids(&p.isr, "isr")?,
            partition_epoch: p.partition_epoch,
            catch_up_bytes_per_s: p.reassign_throttle_bytes_per_s,
        })
    }
}

impl TryFrom<v1::TopicDescription> for weir_types::metadata::TopicInfo {
    type Error = FieldError;

    fn try_from(t: v1::TopicDescription) -> Result<Self, Self::Error> {
        if t.name.is_empty() {
            return Err(FieldError::new("name", "must not be empty"));
        }
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for (i, p) in t.partitions.into_iter().enumerate() {
            if p.partition as usize != i {
                return Err(FieldError::new(
                    format!("partitions[{i}].partition"),
                    format!("is {}, expected {i}", p.partition),
                ));
            }
            partitions.push(
                weir_types::metadata::PartitionInfo::try_from(p)
                    .map_err(|e| e.within(format!("partitions[{i}]")))?,
            );
        }
        Ok(weir_types::metadata::TopicInfo {
            name: t.name,
            topic_id: t.topic_id,
            retention_ms: (!t.retention_ms_unlimited).then_some(t.retention_ms),
            retention_bytes: (!t.retention_bytes_unlimited).then_some(t.retention_bytes),
            segment_bytes: t.segment_bytes,
            min_insync_replicas: t.min_insync_replicas,
            partitions,
        })
    }
}

impl TryFrom<v1::BrokerDescription> for weir_types::metadata::BrokerInfo {
    type Error = FieldError;

    fn try_from(b: v1::BrokerDescription) -> Result<Self, Self::Error> {
        if b.id == 0 {
            return Err(FieldError::new("id", "broker ids are positive"));
        }
        Ok(weir_types::metadata::BrokerInfo {
            id: weir_types::BrokerId(b.id),
            address: b.address,
            internal_address: (!b.internal_address.is_empty()).then_some(b.internal_address),
            rack: (!b.rack.is_empty()).then_some(b.rack),
            incarnation: b.incarnation,
            fenced: b.fenced,
        })
    }
}

/// A whole `WatchMetadata` update; the first bad field names where it is.
impl TryFrom<v1::MetadataUpdate> for weir_types::metadata::MetadataUpdate {
    type Error = FieldError;

    fn try_from(u: v1::MetadataUpdate) -> Result<Self, Self::Error> {
        let topics = u
            .topics
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                weir_types::metadata::TopicInfo::try_from(t)
                    .map_err(|e| e.within(format!("topics[{i}]")))
            })
            .collect::<Result<_, _>>()?;
        let brokers = u
            .brokers
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                weir_types::metadata::BrokerInfo::try_from(b)
                    .map_err(|e| e.within(format!("brokers[{i}]")))
            })
            .collect::<Result<_, _>>()?;
        let acls = if u.acls_included {
            let acls = u
                .acls
                .into_iter()
                .enumerate()
                .map(|(i, a)| {
                    weir_types::acl::Acl::try_from(a).map_err(|e| e.within(format!("acls[{i}]")))
                })
                .collect::<Result<_, _>>()?;
            Some(acls)
        } else {
            None
        };
        Ok(weir_types::metadata::MetadataUpdate {
            version: u.version,
            snapshot: u.snapshot,
            topics,
            brokers,
            deleted_topics: u.deleted_topics,
            acls,
        })
    }
}

impl From<v1::Cursor> for weir_types::subscription::Cursor {
    fn from(c: v1::Cursor) -> Self {
        weir_types::subscription::Cursor {
            low: c.low,
            acked: c.acked.into_iter().map(|r| (r.start, r.end)).collect(),
        }
    }
}

impl From<&weir_types::subscription::Cursor> for v1::Cursor {
    fn from(c: &weir_types::subscription::Cursor) -> Self {
        v1::Cursor {
            low: c.low,
            acked: c
                .acked
                .iter()
                .map(|(start, end)| v1::OffsetRange {
                    start: *start,
                    end: *end,
                })
                .collect(),
        }
    }
}

/// A cursor from the network, checked.
pub fn cursor(
    field: &str,
    c: Option<v1::Cursor>,
) -> Result<weir_types::subscription::Cursor, FieldError> {
    let c: weir_types::subscription::Cursor = c
        .ok_or_else(|| FieldError::new(field, "must be set"))?
        .into();
    c.validate().map_err(|e| FieldError::new(field, e))?;
    Ok(c)
}

impl From<v1::SubscriptionSpec> for weir_types::subscription::SubscriptionSpec {
    fn from(s: v1::SubscriptionSpec) -> Self {
        weir_types::subscription::SubscriptionSpec {
            name: s.name,
            topic: s.topic,
            ack_deadline_seconds: s.ack_deadline_seconds,
            retain_acked_messages: s.retain_acked_messages,
            message_retention_seconds: s.message_retention_seconds,
            expiration_ttl_seconds: s.expiration_ttl_seconds,
            enable_message_ordering: s.enable_message_ordering,
            enable_exactly_once_delivery: s.enable_exactly_once_delivery,
            filter: s.filter,
            labels: s.labels.into_iter().collect(),
            push: s.push.map(|p| weir_types::subscription::Push {
                endpoint: p.endpoint,
                attributes: p.attributes.into_iter().collect(),
                no_wrapper: p.no_wrapper,
                write_metadata: p.write_metadata,
                oidc_service_account_email: p.oidc_service_account_email,
                oidc_audience: p.oidc_audience,
            }),
            retry_minimum_backoff_ms: s.retry_minimum_backoff_ms,
            retry_maximum_backoff_ms: s.retry_maximum_backoff_ms,
            dead_letter_topic: s.dead_letter_topic,
            max_delivery_attempts: s.max_delivery_attempts,
            detached: s.detached,
        }
    }
}

impl From<&weir_types::subscription::SubscriptionSpec> for v1::SubscriptionSpec {
    fn from(s: &weir_types::subscription::SubscriptionSpec) -> Self {
        v1::SubscriptionSpec {
            name: s.name.clone(),
            topic: s.topic.clone(),
            ack_deadline_seconds: s.ack_deadline_seconds,
            retain_acked_messages: s.retain_acked_messages,
            message_retention_seconds: s.message_retention_seconds,
            expiration_ttl_seconds: s.expiration_ttl_seconds,
            enable_message_ordering: s.enable_message_ordering,
            enable_exactly_once_delivery: s.enable_exactly_once_delivery,
            filter: s.filter.clone(),
            labels: s.labels.clone().into_iter().collect(),
            push: s.push.as_ref().map(|p| v1::PushSpec {
                endpoint: p.endpoint.clone(),
                attributes: p.attributes.clone().into_iter().collect(),
                no_wrapper: p.no_wrapper,
                write_metadata: p.write_metadata,
                oidc_service_account_email: p.oidc_service_account_email.clone(),
                oidc_audience: p.oidc_audience.clone(),
            }),
            retry_minimum_backoff_ms: s.retry_minimum_backoff_ms,
            retry_maximum_backoff_ms: s.retry_maximum_backoff_ms,
            dead_letter_topic: s.dead_letter_topic.clone(),
            max_delivery_attempts: s.max_delivery_attempts,
            detached: s.detached,
        }
    }
}

fn acl_field<T: std::str::FromStr<Err = String>>(field: &str, raw: &str) -> Result<T, FieldError> {
    raw.parse().map_err(|e: String| FieldError::new(field, e))
}

fn acl_filter_field<T: std::str::FromStr<Err = String>>(
    field: &str,
    raw: &str,
) -> Result<Option<T>, FieldError> {
    if raw.is_empty() {
        Ok(None)
    } else {
        acl_field(field, raw).map(Some)
    }
}

impl TryFrom<v1::Acl> for weir_types::acl::Acl {
    type Error = FieldError;

    fn try_from(a: v1::Acl) -> Result<Self, Self::Error> {
        let acl = weir_types::acl::Acl {
            principal: a.principal,
            resource_type: acl_field("resource_type", &a.resource_type)?,
            pattern_type: if a.pattern_type.is_empty() {
                weir_types::acl::PatternType::Literal
            } else {
                acl_field("pattern_type", &a.pattern_type)?
            },
            resource: a.resource,
            operation: acl_field("operation", &a.operation)?,
            permission: acl_field("permission", &a.permission)?,
        };
        acl.validate()
            .map_err(|(field, reason)| FieldError::new(field, reason))?;
        Ok(acl)
    }
}

impl From<&weir_types::acl::Acl> for v1::Acl {
    fn from(a: &weir_types::acl::Acl) -> Self {
        v1::Acl {
            principal: a.principal.clone(),
            resource_type: a.resource_type.name().into(),
            pattern_type: a.pattern_type.name().into(),
            resource: a.resource.clone(),
            operation: a.operation.name().into(),
            permission: a.permission.name().into(),
        }
    }
}

impl TryFrom<v1::AclFilter> for weir_types::acl::AclFilter {
    type Error = FieldError;

    fn try_from(f: v1::AclFilter) -> Result<Self, Self::Error> {
        Ok(weir_types::acl::AclFilter {
            principal: (!f.principal.is_empty()).then_some(f.principal),
            resource_type: acl_filter_field("resource_type", &f.resource_type)?,
            pattern_type: acl_filter_field("pattern_type", &f.pattern_type)?,
            resource: (!f.resource.is_empty()).then_some(f.resource),
            operation: acl_filter_field("operation", &f.operation)?,
            permission: acl_filter_field("permission", &f.permission)?,
        })
    }
}

impl From<&weir_types::acl::AclFilter> for v1::AclFilter {
    fn from(f: &weir_types::acl::AclFilter) -> Self {
        v1::AclFilter {
            principal: f.principal.clone().unwrap_or_default(),
            resource_type: f.resource_type.map(|t| t.name().into()).unwrap_or_default(),
            pattern_type: f.pattern_type.map(|t| t.name().into()).unwrap_or_default(),
            resource: f.resource.clone().unwrap_or_default(),
            operation: f.operation.map(|o| o.name().into()).unwrap_or_default(),
            permission: f.permission.map(|p| p.name().into()).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use weir_types::BatchBuilder;

    #[test]
    fn records_round_trip_and_bad_fields_are_named() {
        let record = Record {
            timestamp_ms: 5,
            key: Some(Bytes::from_static(b"k")),
            value: None,
            headers: vec![Header {
                key: "trace".into(),
                value: Some(Bytes::from_static(b"1")),
            }],
        };
        let wire: v1::Record = record.clone().into();
        assert_eq!(Record::try_from(wire.clone()), Ok(record));

        let mut bad = wire.clone();
        bad.headers.push(v1::Header {
            key: String::new(),
            value: None,
        });
        let err = Record::try_from(bad).expect_err("empty header key");
        assert_eq!(err.field, "headers[1].key");

        let mut bad = wire;
        bad.timestamp_ms = -1;
        assert_eq!(
            Record::try_from(bad).expect_err("negative").field,
            "timestamp_ms"
        );
    }

    #[test]
    fn batches_cross_the_wire_unchanged() {
        let batch = BatchBuilder::default()
            .record(Record {
                value: Some(Bytes::from_static(b"hello")),
                ..Record::default()
            })
            .build()
            .expect("build")
            .stamped(Offset(9), LeaderEpoch(2));
        let wire: v1::RecordBatch = batch.clone().into();
        assert_eq!(RecordBatch::try_from(wire).expect("framed"), batch);
        let stored = stored_records(&batch).expect("records");
        assert_eq!(stored[0].offset, 9);
        assert_eq!(stored[0].leader_epoch, 2);

        let err = RecordBatch::try_from(v1::RecordBatch {
            data: Bytes::from_static(b"short"),
        })
        .expect_err("too short");
        assert_eq!(err.field, "data");
    }
}
