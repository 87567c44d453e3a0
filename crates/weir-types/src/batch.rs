//! The record-batch format, shared by the wire and the disk (Kafka's v2 layout, magic 2).
//!
//! All integers are big-endian. `docs/storage-format.md` documents the layout byte by byte.
//!
//! ```text
//! 0  base_offset        i64   stamped by the leader
//! 8  batch_length       i32   bytes after this field
//! 12 leader_epoch       i32   stamped by the leader
//! 16 magic              i8    = 2
//! 17 crc                u32   CRC32C of bytes 21..end
//! 21 attributes         i16   bits 0-2 codec, 3 timestamp type, 4 transactional, 5 control
//! 23 last_offset_delta  i32
//! 27 base_timestamp     i64
//! 35 max_timestamp      i64
//! 43 producer_id        i64
//! 51 producer_epoch     i16
//! 53 base_sequence      i32
//! 57 record_count       i32
//! 61 records            (compressed as a whole when the codec is not none)
//! ```
//!
//! The CRC covers everything after itself, so a leader stamps the base offset and its epoch
//! without re-hashing. Fields outside the CRC are checked by other means in the log (offset
//! continuity, the leader-epoch cache).

use bytes::{Bytes, BytesMut};

use crate::compression::{CodecError, Compression};
use crate::id::{LeaderEpoch, Offset, ProducerEpoch, ProducerId, Sequence};
use crate::varint::{self, VarintError};

pub const MAGIC: i8 = 2;
pub const HEADER_LEN: usize = 61;
/// Bytes before `batch_length`'s payload: base offset and the length itself.
pub const LOG_OVERHEAD: usize = 12;

const BASE_OFFSET: usize = 0;
const BATCH_LENGTH: usize = 8;
const LEADER_EPOCH: usize = 12;
const MAGIC_AT: usize = 16;
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const BASE_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORD_COUNT: usize = 57;
const CRC_FROM: usize = ATTRIBUTES;

const CODEC_MASK: i16 = 0x07;

/// Why a batch was rejected.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("batch is {len} bytes, shorter than the {HEADER_LEN}-byte header")]
    TooShort { len: usize },
    #[error("batch_length says {declared} bytes follow but {actual} do")]
    LengthMismatch { declared: i64, actual: usize },
    #[error("batch is {len} bytes, over the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    #[error("unsupported magic {0} (expected {MAGIC})")]
    Magic(i8),
    #[error("CRC mismatch: header says {stored:#010x}, contents hash to {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
    #[error("record_count is {0}; a batch holds at least one record")]
    Empty(i32),
    #[error("last_offset_delta {last_offset_delta} disagrees with record_count {count}")]
    OffsetDeltaMismatch { last_offset_delta: i32, count: i32 },
    #[error("header says {declared} records but the payload holds {actual}")]
    CountMismatch { declared: i32, actual: usize },
    #[error("record {index}: {reason}")]
    Record { index: usize, reason: String },
    #[error("max_timestamp {max} is below base_timestamp {base}")]
    Timestamps { base: i64, max: i64 },
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// One record header: a UTF-8 key and an optional value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Option<Bytes>,
}

/// A record as a producer writes it and a consumer reads it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

/// Limits applied when validating a batch from the outside.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub batch_bytes_max: usize,
    pub decompressed_bytes_max: usize,
}

/// A framed record batch: at least a full header, and exactly as many bytes as
/// `batch_length` says. Cheap to clone (shares the buffer).
#[derive(Clone, PartialEq, Eq)]
pub struct RecordBatch {
    buf: Bytes,
}

impl std::fmt::Debug for RecordBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordBatch")
            .field("base_offset", &self.base_offset())
            .field("last_offset", &self.last_offset())
            .field("leader_epoch", &self.leader_epoch())
            .field("records", &self.record_count())
            .field("bytes", &self.buf.len())
            .finish()
    }
}

fn be_i16(buf: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([buf[at], buf[at + 1]])
}
fn be_i32(buf: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}
fn be_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}
fn be_i64(buf: &[u8], at: usize) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    i64::from_be_bytes(b)
}

/// Reads the `(base_offset, batch_length)` prefix that precedes every batch in a segment.
/// Returns `None` when fewer than [`LOG_OVERHEAD`] bytes are given.
pub fn peek_prefix(buf: &[u8]) -> Option<(Offset, i32)> {
    if buf.len() < LOG_OVERHEAD {
        return None;
    }
    Some((Offset(be_i64(buf, BASE_OFFSET)), be_i32(buf, BATCH_LENGTH)))
}

impl RecordBatch {
    /// Checks the framing (header present, `batch_length` matches, magic 2). The CRC and the
    /// records are checked by [`RecordBatch::validate`].
    pub fn from_bytes(buf: Bytes) -> Result<RecordBatch, BatchError> {
        if buf.len() < HEADER_LEN {
            return Err(BatchError::TooShort { len: buf.len() });
        }
        let declared = i64::from(be_i32(&buf, BATCH_LENGTH));
        if declared != (buf.len() - LOG_OVERHEAD) as i64 {
            return Err(BatchError::LengthMismatch {
                declared,
                actual: buf.len() - LOG_OVERHEAD,
            });
        }
        let magic = buf[MAGIC_AT] as i8;
        if magic != MAGIC {
            return Err(BatchError::Magic(magic));
        }
        Ok(RecordBatch { buf })
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.buf
    }

    pub fn into_bytes(self) -> Bytes {
        self.buf
    }

    pub fn size_bytes(&self) -> usize {
        self.buf.len()
    }

    pub fn base_offset(&self) -> Offset {
        Offset(be_i64(&self.buf, BASE_OFFSET))
    }

    pub fn last_offset_delta(&self) -> i32 {
        be_i32(&self.buf, LAST_OFFSET_DELTA)
    }

    pub fn last_offset(&self) -> Offset {
        self.base_offset().plus(i64::from(self.last_offset_delta()))
    }

    /// The offset after this batch.
    pub fn next_offset(&self) -> Offset {
        self.last_offset().plus(1)
    }

    pub fn leader_epoch(&self) -> LeaderEpoch {
        LeaderEpoch(be_i32(&self.buf, LEADER_EPOCH))
    }

    pub fn stored_crc(&self) -> u32 {
        be_u32(&self.buf, CRC)
    }

    pub fn computed_crc(&self) -> u32 {
        crc32c::crc32c(&self.buf[CRC_FROM..])
    }

    pub fn crc_ok(&self) -> bool {
        self.stored_crc() == self.computed_crc()
    }

    pub fn verify_crc(&self) -> Result<(), BatchError> {
        let (stored, computed) = (self.stored_crc(), self.computed_crc());
        if stored != computed {
            return Err(BatchError::Crc { stored, computed });
        }
        Ok(())
    }

    pub fn attributes(&self) -> i16 {
        be_i16(&self.buf, ATTRIBUTES)
    }

    pub fn compression(&self) -> Result<Compression, CodecError> {
        Compression::from_id((self.attributes() & CODEC_MASK) as u8)
    }

    pub fn base_timestamp(&self) -> i64 {
        be_i64(&self.buf, BASE_TIMESTAMP)
    }

    pub fn max_timestamp(&self) -> i64 {
        be_i64(&self.buf, MAX_TIMESTAMP)
    }

    pub fn producer_id(&self) -> ProducerId {
        ProducerId(be_i64(&self.buf, PRODUCER_ID))
    }

    pub fn producer_epoch(&self) -> ProducerEpoch {
        ProducerEpoch(be_i16(&self.buf, PRODUCER_EPOCH))
    }

    pub fn base_sequence(&self) -> Sequence {
        Sequence(be_i32(&self.buf, BASE_SEQUENCE))
    }

    pub fn record_count(&self) -> i32 {
        be_i32(&self.buf, RECORD_COUNT)
    }

    /// The 16-byte prefix with `base_offset` and `leader_epoch` replaced; the rest of the batch
    /// (including the CRC) is unchanged, because neither field is covered by the CRC.
    pub fn stamped_prefix(&self, base: Offset, epoch: LeaderEpoch) -> [u8; 16] {
        let mut prefix = [0u8; 16];
        prefix.copy_from_slice(&self.buf[..16]);
        prefix[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&base.0.to_be_bytes());
        prefix[LEADER_EPOCH..LEADER_EPOCH + 4].copy_from_slice(&epoch.0.to_be_bytes());
        prefix
    }

    /// A copy with the base offset and leader epoch stamped in.
    pub fn stamped(&self, base: Offset, epoch: LeaderEpoch) -> RecordBatch {
        let mut buf = BytesMut::from(&self.buf[..]);
        buf[..16].copy_from_slice(&self.stamped_prefix(base, epoch));
        RecordBatch { buf: buf.freeze() }
    }

    /// Full validation of a batch arriving from outside: size limit, CRC, header consistency,
    /// and every record decoded (after decompression) with the count checked.
    pub fn validate(&self, limits: &BatchLimits) -> Result<(), BatchError> {
        if self.buf.len() > limits.batch_bytes_max {
            return Err(BatchError::TooLarge {
                len: self.buf.len(),
                limit: limits.batch_bytes_max,
            });
        }
        self.verify_crc()?;
        let count = self.record_count();
        if count < 1 {
            return Err(BatchError::Empty(count));
        }
        if self.last_offset_delta() != count - 1 {
            return Err(BatchError::OffsetDeltaMismatch {
                last_offset_delta: self.last_offset_delta(),
                count,
            });
        }
        if self.max_timestamp() < self.base_timestamp() {
            return Err(BatchError::Timestamps {
                base: self.base_timestamp(),
                max: self.max_timestamp(),
            });
        }
        let actual = self.walk_records(limits.decompressed_bytes_max, |_, _| {}, false)?;
        if actual != count as usize {
            return Err(BatchError::CountMismatch {
                declared: count,
                actual,
            });
        }
        Ok(())
    }

    /// Decodes every record, decompressing first if needed. Returns `(offset, record)` pairs.
    pub fn records(&self) -> Result<Vec<(Offset, Record)>, BatchError> {
        self.records_with_limit(usize::MAX / 2)
    }

    pub fn records_with_limit(&self, limit: usize) -> Result<Vec<(Offset, Record)>, BatchError> {
        let mut out = Vec::with_capacity((self.record_count().max(0) as usize).min(1 << 16));
        self.walk_records(
            limit,
            |offset, record| {
                if let Some(record) = record {
                    out.push((offset, record));
                }
            },
            true,
        )?;
        Ok(out)
    }

    /// Decodes the records block (decompressing it first if needed), checking every record's
    /// framing and offset delta, and hands each to `visit`. With `keep` false no `Record` is
    /// built (validation); with `keep` true keys and values share the batch's buffer.
    /// Returns the number of records.
    fn walk_records(
        &self,
        limit: usize,
        mut visit: impl FnMut(Offset, Option<Record>),
        keep: bool,
    ) -> Result<usize, BatchError> {
        let codec = self.compression()?;
        let data: Bytes = if codec == Compression::None {
            self.buf.slice(HEADER_LEN..)
        } else {
            Bytes::from(codec.decompress(&self.buf[HEADER_LEN..], limit)?)
        };
        let base = self.base_offset();
        let base_ts = self.base_timestamp();
        let mut cursor = Cursor { data: &data, at: 0 };
        let mut index = 0usize;
        while cursor.at < data.len() {
            let err = |reason: String| BatchError::Record { index, reason };
            let (delta, record) = decode_record(&mut cursor, base_ts, keep).map_err(err)?;
            if delta != index as i32 {
                return Err(BatchError::Record {
                    index,
                    reason: format!("offset_delta is {delta}, expected {index}"),
                });
            }
            visit(base.plus(i64::from(delta)), record);
            index += 1;
        }
        Ok(index)
    }
}

fn varint_err(what: &str) -> impl Fn(VarintError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// A read position in a records block; slices of it share the block's buffer.
struct Cursor<'a> {
    data: &'a Bytes,
    at: usize,
}

impl Cursor<'_> {
    fn rest(&self) -> &[u8] {
        &self.data[self.at..]
    }

    fn varint(&mut self, what: &str) -> Result<i32, String> {
        let mut rest = self.rest();
        let before = rest.len();
        let v = varint::get_varint(&mut rest).map_err(varint_err(what))?;
        self.at += before - rest.len();
        Ok(v)
    }

    fn varlong(&mut self, what: &str) -> Result<i64, String> {
        let mut rest = self.rest();
        let before = rest.len();
        let v = varint::get_varlong(&mut rest).map_err(varint_err(what))?;
        self.at += before - rest.len();
        Ok(v)
    }

    /// The next `len` bytes as a range of the buffer.
    fn take(&mut self, len: usize, what: &str) -> Result<std::ops::Range<usize>, String> {
        if self.data.len() - self.at < len {
            return Err(format!("{what} runs past the end of the record"));
        }
        let range = self.at..self.at + len;
        self.at += len;
        Ok(range)
    }

    fn nullable(&mut self, what: &str) -> Result<Option<std::ops::Range<usize>>, String> {
        match self.varint(what)? {
            -1 => Ok(None),
            n if n < -1 => Err(format!("{what} length {n} is negative")),
            n => self.take(n as usize, what).map(Some),
        }
    }
}

fn decode_record(
    outer: &mut Cursor<'_>,
    base_ts: i64,
    keep: bool,
) -> Result<(i32, Option<Record>), String> {
    let len = outer.varint("record length")?;
    if len < 0 {
        return Err(format!("record length {len} is negative"));
    }
    let body = outer.take(len as usize, "record body")?;
    let body_bytes = outer.data.slice(body);
    let mut c = Cursor {
        data: &body_bytes,
        at: 0,
    };
    c.take(1, "record attributes")?;
    let ts_delta = c.varlong("timestamp delta")?;
    let offset_delta = c.varint("offset delta")?;
    let key = c.nullable("key")?;
    let value = c.nullable("value")?;
    let header_count = c.varint("header count")?;
    if header_count < 0 {
        return Err(format!("header count {header_count} is negative"));
    }
    let mut headers = Vec::new();
    for _ in 0..header_count {
        let key_len = c.varint("header key")?;
        if key_len < 0 {
            return Err("header key is null".into());
        }
        let key_range = c.take(key_len as usize, "header key")?;
        let key =
            std::str::from_utf8(&body_bytes[key_range]).map_err(|_| "header key is not UTF-8")?;
        let value = c.nullable("header value")?;
        if keep {
            headers.push(Header {
                key: key.to_string(),
                value: value.map(|r| body_bytes.slice(r)),
            });
        }
    }
    if c.at != body_bytes.len() {
        return Err(format!(
            "{} trailing bytes after the headers",
            body_bytes.len() - c.at
        ));
    }
    let record = keep.then(|| Record {
        timestamp_ms: base_ts.wrapping_add(ts_delta),
        key: key.map(|r| body_bytes.slice(r)),
        value: value.map(|r| body_bytes.slice(r)),
        headers,
    });
    Ok((offset_delta, record))
}

fn encode_record(out: &mut Vec<u8>, offset_delta: i32, base_ts: i64, record: &Record) {
    let mut body = Vec::with_capacity(
        16 + record.key.as_ref().map_or(0, Bytes::len)
            + record.value.as_ref().map_or(0, Bytes::len),
    );
    body.push(0); // attributes: unused
    varint::put_varlong(&mut body, record.timestamp_ms.wrapping_sub(base_ts));
    varint::put_varint(&mut body, offset_delta);
    put_nullable(&mut body, record.key.as_deref());
    put_nullable(&mut body, record.value.as_deref());
    varint::put_varint(&mut body, record.headers.len() as i32);
    for header in &record.headers {
        varint::put_varint(&mut body, header.key.len() as i32);
        body.extend_from_slice(header.key.as_bytes());
        put_nullable(&mut body, header.value.as_deref());
    }
    varint::put_varint(out, body.len() as i32);
    out.extend_from_slice(&body);
}

fn put_nullable(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        None => varint::put_varint(out, -1),
        Some(v) => {
            varint::put_varint(out, v.len() as i32);
            out.extend_from_slice(v);
        }
    }
}

/// Builds a batch from records, as a producer does. The base offset is 0 and the leader epoch
/// [`LeaderEpoch::NONE`]; the leader stamps both on append.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    compression: Compression,
    producer_id: ProducerId,
    producer_epoch: ProducerEpoch,
    base_sequence: Sequence,
    records: Vec<Record>,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder::new(Compression::None)
    }
}

impl BatchBuilder {
    pub fn new(compression: Compression) -> BatchBuilder {
        BatchBuilder {
            compression,
            producer_id: ProducerId::NONE,
            producer_epoch: ProducerEpoch::NONE,
            base_sequence: Sequence::NONE,
            records: Vec::new(),
        }
    }

    pub fn producer(mut self, id: ProducerId, epoch: ProducerEpoch, base: Sequence) -> Self {
        self.producer_id = id;
        self.producer_epoch = epoch;
        self.base_sequence = base;
        self
    }

    pub fn push(&mut self, record: Record) -> &mut Self {
        self.records.push(record);
        self
    }

    pub fn record(mut self, record: Record) -> Self {
        self.records.push(record);
        self
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn build(&self) -> Result<RecordBatch, BatchError> {
        if self.records.is_empty() {
            return Err(BatchError::Empty(0));
        }
        let base_ts = self
            .records
            .iter()
            .map(|r| r.timestamp_ms)
            .min()
            .unwrap_or(0);
        let max_ts = self
            .records
            .iter()
            .map(|r| r.timestamp_ms)
            .max()
            .unwrap_or(0);
        let mut payload = Vec::new();
        for (i, record) in self.records.iter().enumerate() {
            encode_record(&mut payload, i as i32, base_ts, record);
        }
        let payload = self.compression.compress(&payload)?;
        let count = self.records.len() as i32;
        let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
        buf.extend_from_slice(&0i64.to_be_bytes());
        let batch_length = (HEADER_LEN - LOG_OVERHEAD + payload.len()) as i32;
        buf.extend_from_slice(&batch_length.to_be_bytes());
        buf.extend_from_slice(&LeaderEpoch::NONE.0.to_be_bytes());
        buf.push(MAGIC as u8);
        buf.extend_from_slice(&0u32.to_be_bytes()); // CRC, filled below
        buf.extend_from_slice(&i16::from(self.compression.id()).to_be_bytes());
        buf.extend_from_slice(&(count - 1).to_be_bytes());
        buf.extend_from_slice(&base_ts.to_be_bytes());
        buf.extend_from_slice(&max_ts.to_be_bytes());
        buf.extend_from_slice(&self.producer_id.0.to_be_bytes());
        buf.extend_from_slice(&self.producer_epoch.0.to_be_bytes());
        buf.extend_from_slice(&self.base_sequence.0.to_be_bytes());
        buf.extend_from_slice(&count.to_be_bytes());
        debug_assert_eq!(buf.len(), HEADER_LEN);
        buf.extend_from_slice(&payload);
        let crc = crc32c::crc32c(&buf[CRC_FROM..]);
        buf[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
        RecordBatch::from_bytes(Bytes::from(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: BatchLimits = BatchLimits {
        batch_bytes_max: 1 << 20,
        decompressed_bytes_max: 8 << 20,
    };

    fn sample(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                timestamp_ms: 1_700_000_000_000 + i as i64,
                key: (i % 2 == 0).then(|| Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(vec![i as u8; i * 3])),
                headers: vec![Header {
                    key: "h".into(),
                    value: (i % 3 != 0).then(|| Bytes::from_static(b"v")),
                }],
            })
            .collect()
    }

    fn build(records: &[Record], codec: Compression) -> RecordBatch {
        let mut b = BatchBuilder::new(codec);
        for r in records {
            b.push(r.clone());
        }
        b.build().expect("build")
    }

    #[test]
    fn build_validate_decode_for_every_codec() {
        let records = sample(20);
        for codec in Compression::ALL {
            let batch = build(&records, codec);
            batch.validate(&LIMITS).expect("valid");
            assert_eq!(batch.compression().ok(), Some(codec));
            assert_eq!(batch.record_count(), 20);
            let decoded = batch.records().expect("decode");
            let got: Vec<Record> = decoded.into_iter().map(|(_, r)| r).collect();
            assert_eq!(got, records);
        }
    }

    #[test]
    fn stamping_keeps_the_crc_valid() {
        let batch = build(&sample(3), Compression::None);
        let stamped = batch.stamped(Offset(42), LeaderEpoch(7));
        assert!(stamped.crc_ok());
        assert_eq!(stamped.base_offset(), Offset(42));
        assert_eq!(stamped.last_offset(), Offset(44));
        assert_eq!(stamped.leader_epoch(), LeaderEpoch(7));
        let offsets: Vec<Offset> = stamped
            .records()
            .expect("decode")
            .into_iter()
            .map(|(o, _)| o)
            .collect();
        assert_eq!(offsets, vec![Offset(42), Offset(43), Offset(44)]);
    }

    fn patch(batch: &RecordBatch, at: usize, bytes: &[u8], fix_crc: bool) -> Bytes {
        let mut buf = batch.as_bytes().to_vec();
        buf[at..at + bytes.len()].copy_from_slice(bytes);
        if fix_crc {
            let crc = crc32c::crc32c(&buf[CRC_FROM..]);
            buf[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
        }
        Bytes::from(buf)
    }

    #[test]
    fn malformed_batches_are_rejected() {
        let batch = build(&sample(4), Compression::None);
        let bytes = batch.as_bytes().clone();

        assert!(matches!(
            RecordBatch::from_bytes(bytes.slice(..30)),
            Err(BatchError::TooShort { .. })
        ));
        assert!(matches!(
            RecordBatch::from_bytes(bytes.slice(..bytes.len() - 1)),
            Err(BatchError::LengthMismatch { .. })
        ));
        assert!(matches!(
            RecordBatch::from_bytes(patch(&batch, MAGIC_AT, &[1], false)),
            Err(BatchError::Magic(1))
        ));

        let flipped = patch(&batch, 70, &[bytes[70] ^ 1], false);
        let err = RecordBatch::from_bytes(flipped)
            .expect("framed")
            .validate(&LIMITS);
        assert!(matches!(err, Err(BatchError::Crc { .. })), "{err:?}");

        let wrong_count = patch(&batch, RECORD_COUNT, &5i32.to_be_bytes(), true);
        let wrong_count = patch(
            &RecordBatch::from_bytes(wrong_count).expect("framed"),
            LAST_OFFSET_DELTA,
            &4i32.to_be_bytes(),
            true,
        );
        let err = RecordBatch::from_bytes(wrong_count)
            .expect("framed")
            .validate(&LIMITS);
        assert!(
            matches!(
                err,
                Err(BatchError::CountMismatch {
                    declared: 5,
                    actual: 4
                })
            ),
            "{err:?}"
        );

        let bad_delta = patch(&batch, LAST_OFFSET_DELTA, &9i32.to_be_bytes(), true);
        let err = RecordBatch::from_bytes(bad_delta)
            .expect("framed")
            .validate(&LIMITS);
        assert!(
            matches!(err, Err(BatchError::OffsetDeltaMismatch { .. })),
            "{err:?}"
        );

        let bad_codec = patch(&batch, ATTRIBUTES, &6i16.to_be_bytes(), true);
        let err = RecordBatch::from_bytes(bad_codec)
            .expect("framed")
            .validate(&LIMITS);
        assert!(matches!(err, Err(BatchError::Codec(_))), "{err:?}");

        let small = BatchLimits {
            batch_bytes_max: 10,
            ..LIMITS
        };
        assert!(matches!(
            batch.validate(&small),
            Err(BatchError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_corrupt_record_inside_a_valid_crc_is_rejected() {
        // Record length varint claims more bytes than exist; CRC recomputed so only the record
        // decoder can notice.
        let batch = build(&sample(1), Compression::None);
        let mangled = patch(&batch, HEADER_LEN, &[0x7e], true);
        let err = RecordBatch::from_bytes(mangled)
            .expect("framed")
            .validate(&LIMITS);
        assert!(
            matches!(err, Err(BatchError::Record { index: 0, .. })),
            "{err:?}"
        );
    }

    proptest! {
        #[test]
        fn random_records_round_trip(
            values in proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)), 1..20),
            ts in -1_000_000i64..4_000_000_000_000,
            codec_id in 0u8..5,
        ) {
            let codec = Compression::from_id(codec_id).expect("codec");
            let records: Vec<Record> = values.iter().enumerate().map(|(i, v)| Record {
                timestamp_ms: ts + (i as i64 * 7) % 13,
                key: v.as_ref().map(|v| Bytes::from(v[..v.len().min(5)].to_vec())),
                value: v.clone().map(Bytes::from),
                headers: Vec::new(),
            }).collect();
            let batch = build(&records, codec);
            prop_assert!(batch.validate(&LIMITS).is_ok());
            let got: Vec<Record> = batch.records().expect("decode").into_iter().map(|(_, r)| r).collect();
            prop_assert_eq!(got, records);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(batch) = RecordBatch::from_bytes(Bytes::from(data)) {
                let _ = batch.validate(&LIMITS);
                let _ = batch.records();
            }
        }
    }
}
