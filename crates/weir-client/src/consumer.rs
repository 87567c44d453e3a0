//! The consumer (manual assignment): one background fetch loop per assigned partition keeps
//! up to `prefetch_max` fetched chunks ready; `poll` returns what is ready.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use weir_proto::v1 as pb;
use weir_types::{Header, LeaderEpoch, Offset};

use crate::error::ClientError;
use crate::metadata::Metadata;

/// How long resolving a seek may retry.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a partition may be without a reachable leader before `poll` reports it.
const LEADER_OUTAGE_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub bootstrap: Vec<String>,
    /// Bytes one fetch returns at most.
    pub fetch_bytes_max: u32,
    /// How long a fetch waits at the broker for data.
    pub fetch_wait_ms: u32,
    /// Fetched chunks buffered per partition ahead of `poll`.
    pub prefetch_max: usize,
}

impl ConsumerConfig {
    pub fn new(bootstrap: Vec<String>) -> ConsumerConfig {
        ConsumerConfig {
            bootstrap,
            fetch_bytes_max: 1 << 20,
            fetch_wait_ms: 500,
            prefetch_max: 4,
        }
    }
}

/// Where to start (or move) reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekTo {
    Beginning,
    End,
    Offset(i64),
    /// The first record at or after this time (ms since the epoch).
    Timestamp(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub topic: String,
    pub partition: u32,
    pub offset: Offset,
    /// The leader epoch of the batch the record was written in.
    pub leader_epoch: LeaderEpoch,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

struct Fetcher {
    task: JoinHandle<()>,
    ready: mpsc::Receiver<Result<Vec<ConsumerRecord>, ClientError>>,
}

pub struct Consumer {
    config: ConsumerConfig,
    metadata: Arc<Metadata>,
    fetchers: HashMap<(String, u32), Fetcher>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        for f in self.fetchers.values() {
            f.task.abort();
        }
    }
}

impl Consumer {
    pub fn new(config: ConsumerConfig) -> Result<Consumer, ClientError> {
        if config.bootstrap.is_empty() {
            return Err(ClientError::Invalid {
                field: "bootstrap".into(),
                reason: "no address given".into(),
            });
        }
        Ok(Consumer {
            metadata: Arc::new(Metadata::new(config.bootstrap.clone())),
            config,
            fetchers: HashMap::new(),
        })
    }

    /// The number of partitions of `topic`.
    pub async fn partitions(&self, topic: &str) -> Result<u32, ClientError> {
        Ok(self.metadata.route(topic, false).await?.leaders.len() as u32)
    }

    /// Starts reading `partition` of `topic` from `start` (replacing any earlier position);
    /// returns the offset reading starts at.
    pub async fn seek(
        &mut self,
        topic: &str,
        partition: u32,
        start: SeekTo,
    ) -> Result<i64, ClientError> {
        let offset = self.resolve(topic, partition, start).await?;
        if let Some(old) = self.fetchers.remove(&(topic.to_string(), partition)) {
            old.task.abort();
        }
        let (tx, ready) = mpsc::channel(self.config.prefetch_max.max(1));
        let task = tokio::spawn(fetch_loop(
            Arc::clone(&self.metadata),
            self.config.clone(),
            topic.to_string(),
            partition,
            offset,
            tx,
        ));
        self.fetchers
            .insert((topic.to_string(), partition), Fetcher { task, ready });
        Ok(offset)
    }

    /// Stops reading `partition` of `topic` and drops what was prefetched for it.
    pub fn unassign(&mut self, topic: &str, partition: u32) {
        if let Some(old) = self.fetchers.remove(&(topic.to_string(), partition)) {
            old.task.abort();
        }
    }

    /// Assigns every given partition, each starting at `start`.
    pub async fn assign(
        &mut self,
        topic: &str,
        partitions: &[u32],
        start: SeekTo,
    ) -> Result<(), ClientError> {
        for p in partitions {
            self.seek(topic, *p, start).await?;
        }
        Ok(())
    }

    /// The offset `start` refers to in `partition` of `topic`, asked of its leader.
    pub async fn resolve(
        &self,
        topic: &str,
        partition: u32,
        start: SeekTo,
    ) -> Result<i64, ClientError> {
        let (spec, ts) = match start {
            SeekTo::Offset(o) if o < 0 => {
                return Err(ClientError::Invalid {
                    field: "offset".into(),
                    reason: "must not be negative".into(),
                });
            }
            SeekTo::Offset(o) => return Ok(o),
            SeekTo::Beginning => (pb::OffsetSpec::Earliest, 0),
            SeekTo::End => (pb::OffsetSpec::Latest, 0),
            SeekTo::Timestamp(t) => (pb::OffsetSpec::Timestamp, t),
        };
        let deadline = tokio::time::Instant::now() + RESOLVE_TIMEOUT;
        self.metadata
            .call_leader(topic, partition, true, deadline, |mut client| {
                let request = pb::ListOffsetsRequest {
                    topic: topic.to_string(),
                    partition,
                    spec: spec as i32,
                    timestamp_ms: ts,
                };
                async move { client.list_offsets(request).await }
            })
            .await
            .map(|r| r.offset)
    }

    /// Records ready now, waiting up to `max_wait` for the first.
    pub async fn poll(&mut self, max_wait: Duration) -> Result<Vec<ConsumerRecord>, ClientError> {
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            let mut out = Vec::new();
            for fetcher in self.fetchers.values_mut() {
                while let Ok(chunk) = fetcher.ready.try_recv() {
                    out.extend(chunk?);
                }
            }
            if !out.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(out);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn fetch_loop(
    metadata: Arc<Metadata>,
    config: ConsumerConfig,
    topic: String,
    partition: u32,
    mut offset: i64,
    ready: mpsc::Sender<Result<Vec<ConsumerRecord>, ClientError>>,
) {
    loop {
        let deadline = tokio::time::Instant::now() + LEADER_OUTAGE_MAX;
        let attempt = metadata
            .call_leader(&topic, partition, true, deadline, |mut client| {
                let request = pb::FetchRequest {
                    topic: topic.clone(),
                    partition,
                    offset,
                    max_bytes: config.fetch_bytes_max,
                    max_wait_ms: config.fetch_wait_ms,
                    min_bytes: 1,
                    leader_epoch: None,
                    decode: true,
                };
                async move { client.fetch(request).await }
            })
            .await;
        match attempt {
            Ok(r) => {
                let records: Vec<ConsumerRecord> = r
                    .records
                    .into_iter()
                    .filter_map(|s| {
                        let rec = s.record?;
                        Some(ConsumerRecord {
                            topic: topic.clone(),
                            partition,
                            offset: Offset(s.offset),
                            leader_epoch: LeaderEpoch(s.leader_epoch),
                            timestamp_ms: rec.timestamp_ms,
                            key: rec.key,
                            value: rec.value,
                            headers: rec
                                .headers
                                .into_iter()
                                .map(|h| Header {
                                    key: h.key,
                                    value: h.value,
                                })
                                .collect(),
                        })
                    })
                    .collect();
                if let Some(last) = records.last() {
                    offset = last.offset.0 + 1;
                    if ready.send(Ok(records)).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = ready.send(Err(e)).await;
                return;
            }
        }
    }
}
