//! Weir's shared vocabulary, free of any runtime (no tokio, no tonic).
//!
//! - [`id`]: newtypes for every id, offset and epoch.
//! - [`acl`]: access control lists and the allow/deny decision.
//! - [`batch`]: the record-batch wire and disk format (Kafka v2 layout), its builder, its
//!   validation and its record iterator. The storage engine stores these bytes as sent.
//! - [`compression`]: the codecs a batch may be compressed with; batches are never
//!   recompressed, only decompressed to validate or to read records.
//! - [`varint`]: zig-zag varints used inside records.
//! - [`error`]: the wire `ErrorCode` enum with its retriable / definite classification.
//! - [`filter`]: subscription filters in Google Pub/Sub's syntax over attributes.
//! - [`subscription`]: subscription definitions and per-partition cursors.
//! - [`metadata`]: the cluster view (brokers, topics, leadership) brokers and clients keep
//!   current from the controllers' updates.

pub mod acl;
pub mod batch;
pub mod cesql;
pub mod compression;
pub mod error;
pub mod filter;
pub mod id;
pub mod metadata;
pub mod pubsub;
pub mod subscription;
pub mod trigger;
pub mod varint;

pub use batch::{BatchBuilder, BatchError, Header, Record, RecordBatch};
pub use compression::Compression;
pub use error::ErrorCode;
pub use id::{BrokerId, LeaderEpoch, Offset, PartitionId, ProducerEpoch, ProducerId, Sequence};
