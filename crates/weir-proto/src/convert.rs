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
