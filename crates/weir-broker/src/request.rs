//! The broker's public requests as domain values, converted whole at the edge: every field
//! is checked here (a failure names it), so the handlers in [`crate::server`] work on typed
//! values only.

use weir_proto::v1 as pb;
use weir_types::{BatchBuilder, LeaderEpoch, Offset, Record, RecordBatch};

use crate::error::BrokerError;

/// When a produce is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// When queued; no offsets returned.
    None,
    /// After the leader's fsync.
    Leader,
    /// After every in-sync replica's fsync (the default).
    All,
}

#[derive(Debug)]
pub struct Produce {
    pub topic: String,
    pub partition: u32,
    pub acks: Acks,
    pub leader_epoch: Option<LeaderEpoch>,
    pub batch: RecordBatch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    pub topic: String,
    pub partition: u32,
    pub offset: Offset,
    /// 0: the default.
    pub max_bytes: u32,
    pub max_wait_ms: u32,
    pub min_bytes: u32,
    pub leader_epoch: Option<LeaderEpoch>,
    pub decode: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetQuery {
    Earliest,
    Latest,
    /// The first record at or after this time.
    Timestamp(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOffsets {
    pub topic: String,
    pub partition: u32,
    pub query: OffsetQuery,
}

fn topic(name: String) -> Result<String, BrokerError> {
    if name.is_empty() {
        return Err(BrokerError::invalid("topic", "must not be empty"));
    }
    Ok(name)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Exactly one of a pre-encoded batch or plain records (encoded here, stamped with the
/// broker's time where the client gave none).
fn batch(
    batch: Option<pb::RecordBatch>,
    records: Vec<pb::Record>,
) -> Result<RecordBatch, BrokerError> {
    match (batch, records.is_empty()) {
        (Some(_), false) => Err(BrokerError::invalid(
            "batch",
            "set together with records; send one of them",
        )),
        (None, true) => Err(BrokerError::invalid(
            "records",
            "no batch and no records given",
        )),
        (Some(batch), true) => RecordBatch::try_from(batch)
            .map_err(|e| BrokerError::invalid(format!("batch.{}", e.field), e.reason)),
        (None, false) => {
            let now = now_ms();
            let mut builder = BatchBuilder::default();
            for (i, r) in records.into_iter().enumerate() {
                let mut record = Record::try_from(r).map_err(|e| {
                    BrokerError::invalid(format!("records[{i}].{}", e.field), e.reason)
                })?;
                if record.timestamp_ms == 0 {
                    record.timestamp_ms = now;
                }
                builder.push(record);
            }
            builder
                .build()
                .map_err(|e| BrokerError::invalid("records", e.to_string()))
        }
    }
}

impl TryFrom<pb::ProduceRequest> for Produce {
    type Error = BrokerError;

    fn try_from(req: pb::ProduceRequest) -> Result<Self, Self::Error> {
        let acks = match pb::Acks::try_from(req.acks) {
            Ok(pb::Acks::None) => Acks::None,
            Ok(pb::Acks::Leader) => Acks::Leader,
            Ok(pb::Acks::All | pb::Acks::Unspecified) => Acks::All,
            Err(_) => {
                return Err(BrokerError::invalid(
                    "acks",
                    format!("{} is not an Acks value", req.acks),
                ));
            }
        };
        Ok(Produce {
            topic: topic(req.topic)?,
            partition: req.partition,
            acks,
            leader_epoch: req.leader_epoch.map(LeaderEpoch),
            batch: batch(req.batch, req.records)?,
        })
    }
}

impl TryFrom<pb::FetchRequest> for Fetch {
    type Error = BrokerError;

    fn try_from(req: pb::FetchRequest) -> Result<Self, Self::Error> {
        Ok(Fetch {
            topic: topic(req.topic)?,
            partition: req.partition,
            offset: Offset(req.offset),
            max_bytes: req.max_bytes,
            max_wait_ms: req.max_wait_ms,
            min_bytes: req.min_bytes,
            leader_epoch: req.leader_epoch.map(LeaderEpoch),
            decode: req.decode,
        })
    }
}

impl TryFrom<pb::ListOffsetsRequest> for ListOffsets {
    type Error = BrokerError;

    fn try_from(req: pb::ListOffsetsRequest) -> Result<Self, Self::Error> {
        let query = match pb::OffsetSpec::try_from(req.spec) {
            Ok(pb::OffsetSpec::Earliest) => OffsetQuery::Earliest,
            Ok(pb::OffsetSpec::Latest) => OffsetQuery::Latest,
            Ok(pb::OffsetSpec::Timestamp) => OffsetQuery::Timestamp(req.timestamp_ms),
            Err(_) => {
                return Err(BrokerError::invalid(
                    "spec",
                    format!("{} is not an OffsetSpec value", req.spec),
                ));
            }
        };
        Ok(ListOffsets {
            topic: topic(req.topic)?,
            partition: req.partition,
            query,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record(value: &str) -> pb::Record {
        pb::Record {
            key: None,
            value: Some(Bytes::from(value.to_string())),
            headers: Vec::new(),
            timestamp_ms: 0,
        }
    }

    fn produce(topic: &str, acks: i32, records: Vec<pb::Record>) -> pb::ProduceRequest {
        pb::ProduceRequest {
            topic: topic.into(),
            partition: 0,
            acks,
            leader_epoch: Some(3),
            batch: None,
            records,
        }
    }

    #[test]
    fn produce_requests_are_checked_whole_and_name_the_field() {
        let ok = Produce::try_from(produce("t", 0, vec![record("a"), record("b")])).expect("ok");
        assert_eq!(ok.acks, Acks::All, "unspecified means all");
        assert_eq!(ok.leader_epoch, Some(LeaderEpoch(3)));
        assert_eq!(ok.batch.record_count(), 2);
        let with_batch = pb::ProduceRequest {
            batch: Some(ok.batch.clone().into()),
            ..produce("t", 0, vec![record("c")])
        };
        let cases: Vec<(pb::ProduceRequest, &str)> = vec![
            (produce("", 1, vec![record("a")]), "invalid topic"),
            (produce("t", 99, vec![record("a")]), "invalid acks"),
            (produce("t", 1, vec![]), "invalid records"),
            (with_batch, "invalid batch"),
        ];
        for (req, expected) in cases {
            let e = Produce::try_from(req).expect_err(expected).to_string();
            assert!(e.starts_with(expected), "{e}");
        }
    }

    #[test]
    fn offset_queries_are_typed() {
        let q = |spec: i32| {
            ListOffsets::try_from(pb::ListOffsetsRequest {
                topic: "t".into(),
                partition: 1,
                spec,
                timestamp_ms: 42,
            })
        };
        assert_eq!(q(0).expect("latest").query, OffsetQuery::Latest);
        assert_eq!(q(1).expect("earliest").query, OffsetQuery::Earliest);
        assert_eq!(q(2).expect("time").query, OffsetQuery::Timestamp(42));
        assert!(
            q(7).expect_err("bad")
                .to_string()
                .starts_with("invalid spec")
        );
    }
}
