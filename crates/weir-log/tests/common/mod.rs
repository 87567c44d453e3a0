//! Helpers shared by the storage-engine tests.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use weir_log::{Clock, Flusher, LogConfig, ManualClock, PartitionLog};
use weir_types::{BatchBuilder, Compression, Record, RecordBatch};

/// A batch of `count` records whose values encode `tag` and their index, so content can be
/// checked after reads.
pub fn batch(tag: u64, count: usize, value_bytes: usize, timestamp_ms: i64) -> RecordBatch {
    batch_with(tag, count, value_bytes, timestamp_ms, Compression::None)
}

pub fn batch_with(
    tag: u64,
    count: usize,
    value_bytes: usize,
    timestamp_ms: i64,
    codec: Compression,
) -> RecordBatch {
    let mut builder = BatchBuilder::new(codec);
    for i in 0..count {
        let mut value = format!("{tag}:{i}:").into_bytes();
        value.resize(value_bytes.max(value.len()), b'x');
        builder.push(Record {
            timestamp_ms: timestamp_ms + i as i64,
            key: Some(Bytes::from(format!("key-{tag}"))),
            value: Some(Bytes::from(value)),
            headers: Vec::new(),
        });
    }
    builder.build().expect("build batch")
}

pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 4096,
        index_interval_bytes: 256,
        batch_bytes_max: 2048,
        decompressed_bytes_max: 1 << 20,
        retention_ms: None,
        segment_ms_max: None,
        ..LogConfig::default()
    }
}

pub fn open(dir: &Path, config: LogConfig, clock: &Arc<ManualClock>) -> PartitionLog {
    let flusher = Flusher::spawn("test").expect("flusher");
    PartitionLog::open(dir, config, flusher, Arc::clone(clock) as Arc<dyn Clock>).expect("open log")
}
