//! Weir's Rust client.
//!
//! - [`Producer`]: per-partition batching (`linger_ms`, `batch_bytes_max`), compression, a
//!   stable key partitioner and sticky partitioning for keyless records, idempotence on by
//!   default (a retried batch is never written twice), retries driven by the error
//!   classification with metadata refresh, and a future per record with its offset. One
//!   request in flight per partition keeps records in order.
//! - [`Consumer`]: manual assignment, a background fetch loop per partition with bounded
//!   prefetch, seek to an offset, the beginning, the end or a timestamp.
//! - [`GroupConsumer`]: consumer-group membership through the active controller —
//!   subscribe to topics or a regex, partitions assigned and revoked by the controller,
//!   rebalance callbacks, auto-commit on an interval and on revoke, manual commits (sync and
//!   async), resume from committed offsets or the reset policy, static membership.
//! - `metadata`: the metadata library — a cluster view pushed by the controllers'
//!   `WatchMetadata` stream, shared broker connections, and the retry loop to partition
//!   leaders.

mod consumer;
mod controllers;
mod error;
mod group;
mod metadata;
mod producer;

pub use consumer::{Consumer, ConsumerConfig, ConsumerRecord, SeekTo};
pub use error::ClientError;
pub use group::{
    GroupConsumer, GroupConsumerConfig, OffsetReset, RebalanceListener, TopicPartition,
};
pub use metadata::{Metadata, Route};
pub use producer::{Acks, DeliveryFuture, Producer, ProducerConfig, RecordMetadata};
