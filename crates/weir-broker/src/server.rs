//! The `weir.v1.Broker` service: produce, fetch and offset look-ups for the partitions this
//! broker leads.

use std::sync::Arc;
use std::time::Duration;
use weir_faults::bugs::{self, Bug};

use tokio::sync::oneshot;
use tonic::{Request, Response, Status};
use weir_proto::status::{redirect, status};
use weir_proto::v1 as pb;
use weir_proto::v1::broker_server::Broker;
use weir_types::{BatchBuilder, ErrorCode, Offset, Record, RecordBatch};

use crate::config::BrokerConfig;
use crate::registry::Registry;
use crate::replica::{AppendRequest, Replica};

#[derive(Clone)]
pub struct BrokerService {
    pub config: BrokerConfig,
    pub registry: Arc<Registry>,
    pub session: tokio::sync::watch::Receiver<crate::session::SessionState>,
    /// `[next, end)` of the producer-id block this broker hands out from.
    pub producer_ids: Arc<tokio::sync::Mutex<(i64, i64)>>,
}

/// Producer ids reserved from the controller at a time.
const PRODUCER_ID_BLOCK: u32 = 1000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn log_status(e: &weir_log::LogError) -> Status {
    status(e.code(), e.to_string())
}

impl BrokerService {
    /// The replica if this broker leads it (and the epoch matches, when given).
    pub(crate) fn leader_replica(
        &self,
        topic: &str,
        partition: u32,
        epoch: Option<i32>,
    ) -> Result<Arc<Replica>, Status> {
        if topic.is_empty() {
            return Err(status(
                ErrorCode::InvalidArgument,
                "invalid topic: must not be empty",
            ));
        }
        let Some(replica) = self.registry.get(topic, partition) else {
            return Err(match self.registry.leader_of(topic, partition) {
                Some((leader, addr)) => redirect(
                    ErrorCode::NotLeader,
                    format!("{topic}/{partition} is led by broker {leader}"),
                    addr.as_deref(),
                ),
                None => status(
                    ErrorCode::UnknownTopicOrPartition,
                    format!("{topic}/{partition} is not known here"),
                ),
            });
        };
        let lead = replica.leadership();
        if lead.leader != Some(self.config.id) {
            let addr = lead.leader.and_then(|l| self.registry.broker_address(l));
            return Err(match lead.leader {
                Some(l) => redirect(
                    ErrorCode::NotLeader,
                    format!("{topic}/{partition} is led by broker {l}"),
                    addr.as_deref(),
                ),
                None => status(
                    ErrorCode::LeaderNotAvailable,
                    format!("{topic}/{partition} has no leader right now"),
                ),
            });
        }
        if let Some(epoch) = epoch {
            let current = lead.leader_epoch.0;
            if epoch < current {
                return Err(status(
                    ErrorCode::FencedLeaderEpoch,
                    format!("leader epoch {epoch} is older than the current {current}"),
                ));
            }
            if epoch > current {
                return Err(status(
                    ErrorCode::UnknownLeaderEpoch,
                    format!("leader epoch {epoch} is newer than this broker knows ({current})"),
                ));
            }
        }
        Ok(replica)
    }
}

fn batch_from_request(req: &mut pb::ProduceRequest) -> Result<RecordBatch, Status> {
    let invalid = |field: &str, why: String| {
        status(
            ErrorCode::InvalidArgument,
            format!("invalid {field}: {why}"),
        )
    };
    match (req.batch.take(), req.records.is_empty()) {
        (Some(_), false) => Err(invalid(
            "batch",
            "set together with records; send one of them".into(),
        )),
        (None, true) => Err(invalid("records", "no batch and no records given".into())),
        (Some(batch), true) => RecordBatch::try_from(batch)
            .map_err(|e| invalid(&format!("batch.{}", e.field), e.reason)),
        (None, false) => {
            let now = now_ms();
            let mut builder = BatchBuilder::default();
            for (i, r) in std::mem::take(&mut req.records).into_iter().enumerate() {
                let mut record = Record::try_from(r)
                    .map_err(|e| invalid(&format!("records[{i}].{}", e.field), e.reason))?;
                if record.timestamp_ms == 0 {
                    record.timestamp_ms = now;
                }
                builder.push(record);
            }
            builder
                .build()
                .map_err(|e| invalid("records", e.to_string()))
        }
    }
}

#[tonic::async_trait]
impl Broker for BrokerService {
    async fn produce(
        &self,
        request: Request<pb::ProduceRequest>,
    ) -> Result<Response<pb::ProduceResponse>, Status> {
        let started = std::time::Instant::now();
        let result = self.produce_inner(request.into_inner()).await;
        record("produce", started, &result);
        result.map(Response::new)
    }

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        let started = std::time::Instant::now();
        let result = self.fetch_inner(request.into_inner()).await;
        if let Ok(r) = &result {
            let bytes: usize = r.batches.iter().map(|b| b.data.len()).sum();
            metrics::counter!("weir_broker_fetch_bytes_total").increment(bytes as u64);
        }
        record("fetch", started, &result);
        result.map(Response::new)
    }

    async fn init_producer_id(
        &self,
        _request: Request<pb::InitProducerIdRequest>,
    ) -> Result<Response<pb::InitProducerIdResponse>, Status> {
        let mut block = self.producer_ids.lock().await;
        if block.0 >= block.1 {
            let Some(incarnation) = self.session.borrow().incarnation else {
                return Err(status(
                    ErrorCode::LeaderNotAvailable,
                    "this broker is not registered yet",
                ));
            };
            let request = pb::AllocateProducerIdsRequest {
                broker_id: self.config.id.0,
                incarnation,
                count: PRODUCER_ID_BLOCK,
            };
            let reserved = weir_proto::call::with_controller(
                &self.config.controllers,
                std::time::Duration::from_secs(5),
                |ch| async move {
                    weir_proto::v1::broker_registry_client::BrokerRegistryClient::new(ch)
                        .allocate_producer_ids(request)
                        .await
                },
            )
            .await
            .map_err(|e| {
                status(
                    ErrorCode::NotController,
                    format!("no producer ids from the controller: {e}"),
                )
            })?
            .into_inner();
            *block = (
                reserved.first_id,
                reserved.first_id + i64::from(reserved.count),
            );
        }
        let id = block.0;
        block.0 += 1;
        Ok(Response::new(pb::InitProducerIdResponse {
            producer_id: id,
            producer_epoch: 0,
        }))
    }

    async fn replica_fetch(
        &self,
        request: Request<pb::ReplicaFetchRequest>,
    ) -> Result<Response<pb::ReplicaFetchResponse>, Status> {
        let started = std::time::Instant::now();
        let result = crate::leader::serve_fetch(self, request.into_inner()).await;
        record("replica_fetch", started, &result);
        result.map(Response::new)
    }

    async fn list_offsets(
        &self,
        request: Request<pb::ListOffsetsRequest>,
    ) -> Result<Response<pb::ListOffsetsResponse>, Status> {
        let started = std::time::Instant::now();
        let result = self.list_offsets_inner(request.into_inner()).await;
        record("list_offsets", started, &result);
        result.map(Response::new)
    }
}

fn record<T>(rpc: &'static str, started: std::time::Instant, result: &Result<T, Status>) {
    let outcome = match result {
        Ok(_) => "ok".to_string(),
        Err(s) => weir_proto::status::error_code(s)
            .map_or_else(|| format!("{:?}", s.code()), |c| c.name().to_string()),
    };
    metrics::counter!("weir_broker_requests_total", "rpc" => rpc, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("weir_broker_request_seconds", "rpc" => rpc)
        .record(started.elapsed().as_secs_f64());
}

impl BrokerService {
    /// Waits until the high watermark passes `last` while this broker still leads at
    /// `epoch`, the epoch the batch was appended under: every in-sync replica holds the batch.
    ///
    /// The high watermark is read before leadership is checked. After a demotion the same
    /// watch carries the new leader's high watermark, which can pass `last` over a log that
    /// was truncated and refilled with other records at those offsets; counting that as
    /// success acknowledged a batch that was gone.
    async fn await_replication(
        &self,
        replica: &Replica,
        last: Offset,
        epoch: weir_types::LeaderEpoch,
    ) -> Result<(), Status> {
        let mut hw = replica.subscribe_high_watermark();
        let deadline = tokio::time::Instant::now()
            + std::time::Duration::from_millis(self.config.produce_timeout_ms);
        loop {
            let passed = *hw.borrow_and_update() > last;
            if passed && bugs::active(Bug::StaleLeaderEpoch) {
                break; // the bug this loop was fixed for: success before checking the epoch
            }
            if !replica.is_leader() || replica.leadership().leader_epoch != epoch {
                return Err(status(
                    ErrorCode::LeaderChangedAfterAppend,
                    "leadership moved before the batch was replicated; it may or may not be committed",
                ));
            }
            if passed {
                break;
            }
            match tokio::time::timeout_at(deadline, hw.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(status(ErrorCode::StorageError, "the partition closed")),
                Err(_) => {
                    return Err(status(
                        ErrorCode::RequestTimedOut,
                        "the in-sync replicas did not confirm the batch in time; it may still be committed",
                    ));
                }
            }
        }
        let lead = replica.leadership();
        if (lead.isr.len() as u32) < lead.min_insync_replicas && !bugs::active(Bug::SkipMinIsr) {
            return Err(status(
                ErrorCode::NotEnoughReplicasAfterAppend,
                format!(
                    "the ISR shrank to {:?} (the topic needs {}) while the batch was replicated",
                    lead.isr, lead.min_insync_replicas
                ),
            ));
        }
        Ok(())
    }

    async fn produce_inner(
        &self,
        mut req: pb::ProduceRequest,
    ) -> Result<pb::ProduceResponse, Status> {
        let acks = pb::Acks::try_from(req.acks).map_err(|_| {
            status(
                ErrorCode::InvalidArgument,
                format!("invalid acks: {} is not an Acks value", req.acks),
            )
        })?;
        let replica = self.leader_replica(&req.topic, req.partition, req.leader_epoch)?;
        let batch = batch_from_request(&mut req)?;
        let lead = replica.leadership();
        let all = matches!(acks, pb::Acks::All | pb::Acks::Unspecified);
        if all
            && (lead.isr.len() as u32) < lead.min_insync_replicas
            && !bugs::active(Bug::SkipMinIsr)
        {
            return Err(status(
                ErrorCode::NotEnoughReplicas,
                format!(
                    "{} in-sync replicas {:?}, the topic needs {}",
                    lead.isr.len(),
                    lead.isr,
                    lead.min_insync_replicas
                ),
            ));
        }
        let (tx, rx) = oneshot::channel();
        let append = AppendRequest {
            batch,
            epoch: lead.leader_epoch,
            reply: tx,
        };
        if replica.append(append).await.is_err() {
            return Err(status(
                ErrorCode::NotLeader,
                "the partition is closing on this broker",
            ));
        }
        if acks == pb::Acks::None {
            let (topic, partition) = (req.topic.clone(), req.partition);
            tokio::spawn(async move {
                if let Ok(Err(e)) = rx.await {
                    tracing::warn!(%topic, partition, error = %e, "acks=none append failed");
                }
            });
            return Ok(pb::ProduceResponse {
                base_offset: -1,
                last_offset: -1,
                leader_epoch: lead.leader_epoch.0,
                duplicate: false,
            });
        }
        let info = rx
            .await
            .map_err(|_| status(ErrorCode::StorageError, "the partition owner stopped"))?
            .map_err(|e| log_status(&e))?;
        if all && !bugs::active(Bug::AckBeforeReplication) {
            self.await_replication(&replica, info.last_offset, lead.leader_epoch)
                .await?;
        }
        metrics::counter!("weir_broker_produce_records_total")
            .increment((info.last_offset.0 - info.base_offset.0 + 1) as u64);
        Ok(pb::ProduceResponse {
            base_offset: info.base_offset.0,
            last_offset: info.last_offset.0,
            leader_epoch: info.leader_epoch.0,
            duplicate: info.duplicate,
        })
    }

    async fn fetch_inner(&self, req: pb::FetchRequest) -> Result<pb::FetchResponse, Status> {
        let replica = self.leader_replica(&req.topic, req.partition, req.leader_epoch)?;
        let from = Offset(req.offset);
        let max_bytes = if req.max_bytes == 0 {
            1 << 20
        } else {
            req.max_bytes.min(self.config.fetch_bytes_max)
        } as usize;
        let wait = Duration::from_millis(u64::from(
            req.max_wait_ms.min(self.config.fetch_wait_ms_max),
        ));
        let deadline = tokio::time::Instant::now() + wait;
        let mut durable = replica.subscribe_high_watermark();
        let batches = loop {
            let (start, hw) = (replica.log.start_offset(), replica.high_watermark());
            // Above the high watermark but within the log (a new leader's high watermark can
            // trail its predecessor's for a moment): nothing to read yet, not an error.
            if from < start || from > hw.max(replica.log.end_offset()) {
                return Err(status(
                    ErrorCode::OffsetOutOfRange,
                    format!("offset {from} is outside [{start}, {hw}]"),
                ));
            }
            let log = Arc::clone(&replica.log);
            let batches = tokio::task::spawn_blocking(move || {
                if from >= hw {
                    return Ok(Vec::new());
                }
                log.read(from, max_bytes, Some(hw))
            })
            .await
            .map_err(|e| status(ErrorCode::Unknown, e.to_string()))?
            .map_err(|e| log_status(&e))?;
            let bytes: usize = batches.iter().map(RecordBatch::size_bytes).sum();
            let enough = bytes >= (req.min_bytes as usize).max(1);
            if enough || tokio::time::Instant::now() >= deadline {
                break batches;
            }
            if tokio::time::timeout_at(deadline, durable.changed())
                .await
                .is_err()
            {
                // timed out: answer with what there is
                let log = Arc::clone(&replica.log);
                let hw = replica.high_watermark();
                break tokio::task::spawn_blocking(move || {
                    if from >= hw {
                        return Ok(Vec::new());
                    }
                    log.read(from, max_bytes, Some(hw))
                })
                .await
                .map_err(|e| status(ErrorCode::Unknown, e.to_string()))?
                .map_err(|e| log_status(&e))?;
            }
        };
        let mut records = Vec::new();
        if req.decode {
            for batch in &batches {
                let stored = weir_proto::convert::stored_records(batch)
                    .map_err(|e| status(ErrorCode::CorruptRecord, e.to_string()))?;
                records.extend(stored.into_iter().filter(|r| r.offset >= from.0));
            }
        }
        Ok(pb::FetchResponse {
            batches: batches.into_iter().map(Into::into).collect(),
            records,
            high_watermark: replica.high_watermark().0,
            log_start_offset: replica.log.start_offset().0,
            leader_epoch: replica.leadership().leader_epoch.0,
        })
    }

    async fn list_offsets_inner(
        &self,
        req: pb::ListOffsetsRequest,
    ) -> Result<pb::ListOffsetsResponse, Status> {
        let replica = self.leader_replica(&req.topic, req.partition, None)?;
        let spec = pb::OffsetSpec::try_from(req.spec).map_err(|_| {
            status(
                ErrorCode::InvalidArgument,
                format!("invalid spec: {}", req.spec),
            )
        })?;
        let (start, hw) = (replica.log.start_offset(), replica.high_watermark());
        let (offset, timestamp) = match spec {
            pb::OffsetSpec::Earliest => (start, -1),
            pb::OffsetSpec::Latest => (hw, -1),
            pb::OffsetSpec::Timestamp => {
                let log = Arc::clone(&replica.log);
                let ts = req.timestamp_ms;
                let found = tokio::task::spawn_blocking(move || log.offset_for_timestamp(ts))
                    .await
                    .map_err(|e| status(ErrorCode::Unknown, e.to_string()))?
                    .map_err(|e| log_status(&e))?;
                match found {
                    Some((o, t)) if o < hw => (o, t),
                    _ => (hw, -1),
                }
            }
        };
        Ok(pb::ListOffsetsResponse {
            offset: offset.0,
            timestamp_ms: timestamp,
            log_start_offset: start.0,
            high_watermark: hw.0,
            leader_epoch: replica.leadership().leader_epoch.0,
        })
    }
}
