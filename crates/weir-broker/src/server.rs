//! The `weir.v1.Broker` service: produce, fetch and offset look-ups for the partitions this
//! broker leads.

use std::sync::Arc;
use std::time::Duration;
use weir_faults::bugs::{self, Bug};

use tokio::sync::oneshot;
use tonic::{Request, Response, Status};
use weir_proto::auth::Security;
use weir_proto::internal::v1 as ipb;
use weir_proto::v1 as pb;
use weir_proto::v1::broker_server::Broker;
use weir_types::acl::{CLUSTER, Operation, ResourceType};
use weir_types::{Offset, RecordBatch};

use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::registry::Registry;
use crate::replica::{AppendRequest, Replica};
use crate::request::{Acks, Fetch, ListOffsets, OffsetQuery, Produce};

#[derive(Clone)]
pub struct BrokerService {
    pub subscriber: Arc<crate::subscriber::Subscriber>,
    pub config: BrokerConfig,
    pub registry: Arc<Registry>,
    pub session: tokio::sync::watch::Receiver<crate::session::SessionState>,
    /// `[next, end)` of the producer-id block this broker hands out from.
    pub producer_ids: Arc<tokio::sync::Mutex<(i64, i64)>>,
    pub security: Arc<Security>,
}

impl BrokerService {
    /// Whether the caller may do `operation` on `kind`/`name` by the ACLs of the latest
    /// metadata (PERMISSION_DENIED otherwise).
    fn authorize<T>(
        &self,
        request: &Request<T>,
        operation: Operation,
        kind: ResourceType,
        name: &str,
    ) -> Result<(), Status> {
        if !self.security.authorization() {
            return Ok(());
        }
        self.security
            .authorize(request, self.registry.acls().iter(), operation, kind, name)
    }
}

/// Producer ids reserved from the controller at a time.
const PRODUCER_ID_BLOCK: u32 = 1000;

impl BrokerService {
    /// The replica if this broker leads it (and the epoch matches, when given).
    pub(crate) fn leader_replica(
        &self,
        topic: &str,
        partition: u32,
        epoch: Option<weir_types::LeaderEpoch>,
    ) -> Result<Arc<Replica>, BrokerError> {
        let Some(replica) = self.registry.get(topic, partition) else {
            return Err(match self.registry.leader_of(topic, partition) {
                Some((leader, address)) => BrokerError::NotLeader {
                    topic: topic.into(),
                    partition,
                    leader,
                    address,
                },
                None => BrokerError::UnknownPartition {
                    topic: topic.into(),
                    partition,
                },
            });
        };
        let lead = replica.leadership();
        if lead.leader != Some(self.config.id) {
            return Err(match lead.leader {
                Some(leader) => BrokerError::NotLeader {
                    topic: topic.into(),
                    partition,
                    leader,
                    address: self.registry.broker_address(leader),
                },
                None => BrokerError::LeaderNotAvailable {
                    topic: topic.into(),
                    partition,
                },
            });
        }
        if let Some(given) = epoch {
            let current = lead.leader_epoch;
            if given < current {
                return Err(BrokerError::FencedLeaderEpoch { given, current });
            }
            if given > current {
                return Err(BrokerError::UnknownLeaderEpoch { given, current });
            }
        }
        Ok(replica)
    }
}

fn leases(raw: Vec<pb::LeaseId>) -> Vec<crate::lease::Delivered> {
    raw.into_iter()
        .map(|l| crate::lease::Delivered {
            offset: l.offset,
            attempt: l.attempt,
        })
        .collect()
}

fn lease_ids(raw: Vec<crate::lease::Delivered>) -> Vec<pb::LeaseId> {
    raw.into_iter()
        .map(|d| pb::LeaseId {
            offset: d.offset,
            attempt: d.attempt,
        })
        .collect()
}

impl BrokerService {
    async fn subscription_entry(
        &self,
        subscription: &str,
        topic: &str,
        partition: u32,
    ) -> Result<(Arc<Replica>, Arc<crate::subscriber::Entry>), BrokerError> {
        if subscription.is_empty() {
            return Err(BrokerError::invalid("subscription", "must be set"));
        }
        let replica = self.leader_replica(topic, partition, None)?;
        let entry = self.subscriber.entry(&replica, subscription).await?;
        Ok((replica, entry))
    }

    async fn pull_inner(
        &self,
        r: pb::SubscriptionPullRequest,
    ) -> Result<pb::SubscriptionPullResponse, BrokerError> {
        let (replica, entry) = self
            .subscription_entry(&r.subscription, &r.topic, r.partition)
            .await?;
        if r.ack_deadline_seconds != 0 && !(10..=600).contains(&r.ack_deadline_seconds) {
            return Err(BrokerError::invalid(
                "ack_deadline_seconds",
                "must be 0 (the subscription's) or 10 to 600",
            ));
        }
        let deadline = match r.ack_deadline_seconds {
            0 => entry.spec().ack_deadline_seconds,
            s => s,
        };
        let max_bytes = match r.max_bytes {
            0 => self.config.fetch_bytes_max,
            b => b.min(self.config.fetch_bytes_max),
        } as usize;
        let pulled = self
            .subscriber
            .pull(
                &replica,
                &entry,
                r.max_messages.min(crate::subscriber::PULL_MESSAGES_MAX),
                max_bytes,
                Duration::from_millis(u64::from(r.wait_ms.min(self.config.fetch_wait_ms_max))),
                Duration::from_secs(u64::from(deadline)),
            )
            .await?;
        Ok(pb::SubscriptionPullResponse {
            deliveries: pulled.deliveries,
            available: pulled.available,
            exactly_once: pulled.exactly_once,
        })
    }
}

#[tonic::async_trait]
impl Broker for BrokerService {
    async fn pull(
        &self,
        request: Request<pb::SubscriptionPullRequest>,
    ) -> Result<Response<pb::SubscriptionPullResponse>, Status> {
        self.authorize(
            &request,
            Operation::Read,
            ResourceType::Subscription,
            &request.get_ref().subscription,
        )?;
        let started = std::time::Instant::now();
        let result = self.pull_inner(request.into_inner()).await;
        record("pull", started, &result);
        result.map(Response::new).map_err(Status::from)
    }

    async fn acknowledge(
        &self,
        request: Request<pb::SubscriptionAckRequest>,
    ) -> Result<Response<pb::SubscriptionAckResponse>, Status> {
        self.authorize(
            &request,
            Operation::Read,
            ResourceType::Subscription,
            &request.get_ref().subscription,
        )?;
        let started = std::time::Instant::now();
        let r = request.into_inner();
        let result = async {
            let (_, entry) = self
                .subscription_entry(&r.subscription, &r.topic, r.partition)
                .await?;
            let invalid = self
                .subscriber
                .acknowledge(&entry, &leases(r.leases))
                .await?;
            Ok::<_, BrokerError>(pb::SubscriptionAckResponse {
                invalid: lease_ids(invalid),
            })
        }
        .await;
        record("acknowledge", started, &result);
        result.map(Response::new).map_err(Status::from)
    }

    async fn modify_ack_deadline(
        &self,
        request: Request<pb::SubscriptionModifyRequest>,
    ) -> Result<Response<pb::SubscriptionAckResponse>, Status> {
        self.authorize(
            &request,
            Operation::Read,
            ResourceType::Subscription,
            &request.get_ref().subscription,
        )?;
        let r = request.into_inner();
        let result = async {
            if r.deadline_seconds > 600 {
                return Err(BrokerError::invalid("deadline_seconds", "must be 0 to 600"));
            }
            let (_, entry) = self
                .subscription_entry(&r.subscription, &r.topic, r.partition)
                .await?;
            let invalid = self
                .subscriber
                .modify(&entry, &leases(r.leases), r.deadline_seconds);
            Ok::<_, BrokerError>(pb::SubscriptionAckResponse {
                invalid: lease_ids(invalid),
            })
        }
        .await;
        result.map(Response::new).map_err(Status::from)
    }

    async fn seek_subscription(
        &self,
        request: Request<pb::SeekSubscriptionRequest>,
    ) -> Result<Response<pb::SeekSubscriptionResponse>, Status> {
        self.authorize(
            &request,
            Operation::Read,
            ResourceType::Subscription,
            &request.get_ref().subscription,
        )?;
        let r = request.into_inner();
        let result = async {
            let cursor = weir_proto::convert::cursor("cursor", r.cursor)
                .map_err(|e| BrokerError::invalid(e.field, e.reason))?;
            let (_, entry) = self
                .subscription_entry(&r.subscription, &r.topic, r.partition)
                .await?;
            self.subscriber.seek(&entry, &cursor).await?;
            Ok::<_, BrokerError>(pb::SeekSubscriptionResponse {})
        }
        .await;
        result.map(Response::new).map_err(Status::from)
    }

    async fn get_cursor(
        &self,
        request: Request<pb::GetCursorRequest>,
    ) -> Result<Response<pb::GetCursorResponse>, Status> {
        self.authorize(
            &request,
            Operation::Describe,
            ResourceType::Subscription,
            &request.get_ref().subscription,
        )?;
        let r = request.into_inner();
        let result = async {
            let (_, entry) = self
                .subscription_entry(&r.subscription, &r.topic, r.partition)
                .await?;
            let cursor = self.subscriber.cursor(&entry).await?;
            Ok::<_, BrokerError>(pb::GetCursorResponse {
                cursor: Some((&cursor).into()),
            })
        }
        .await;
        result.map(Response::new).map_err(Status::from)
    }

    async fn produce(
        &self,
        request: Request<pb::ProduceRequest>,
    ) -> Result<Response<pb::ProduceResponse>, Status> {
        self.authorize(
            &request,
            Operation::Write,
            ResourceType::Topic,
            &request.get_ref().topic,
        )?;
        let started = std::time::Instant::now();
        let result = match Produce::try_from(request.into_inner()) {
            Ok(req) => self.produce_inner(req).await,
            Err(e) => Err(e),
        };
        record("produce", started, &result);
        result.map(Response::new).map_err(Status::from)
    }

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        self.authorize(
            &request,
            Operation::Read,
            ResourceType::Topic,
            &request.get_ref().topic,
        )?;
        let started = std::time::Instant::now();
        let result = match Fetch::try_from(request.into_inner()) {
            Ok(req) => self.fetch_inner(req).await,
            Err(e) => Err(e),
        };
        if let Ok(r) = &result {
            let bytes: usize = r.batches.iter().map(|b| b.data.len()).sum();
            metrics::counter!("weir_broker_fetch_bytes_total").increment(bytes as u64);
        }
        record("fetch", started, &result);
        result.map(Response::new).map_err(Status::from)
    }

    async fn init_producer_id(
        &self,
        request: Request<pb::InitProducerIdRequest>,
    ) -> Result<Response<pb::InitProducerIdResponse>, Status> {
        // an idempotent producer needs write on some topic (or on the cluster)
        if self.security.authorization()
            && self
                .authorize(&request, Operation::Write, ResourceType::Cluster, CLUSTER)
                .is_err()
        {
            self.security.authorize_any(
                &request,
                self.registry.acls().iter(),
                Operation::Write,
                ResourceType::Topic,
            )?;
        }
        let mut block = self.producer_ids.lock().await;
        if block.0 >= block.1 {
            let Some(incarnation) = self.session.borrow().incarnation else {
                return Err(BrokerError::NotRegistered.into());
            };
            let request = ipb::AllocateProducerIdsRequest {
                broker_id: self.config.id.0,
                incarnation,
                count: PRODUCER_ID_BLOCK,
            };
            let reserved = weir_proto::call::with_internal_controller(
                &self.config.controllers,
                std::time::Duration::from_secs(5),
                |ch| async move {
                    weir_proto::internal::v1::broker_registry_client::BrokerRegistryClient::new(ch)
                        .allocate_producer_ids(request)
                        .await
                },
            )
            .await
            .map_err(|e| Status::from(BrokerError::NoProducerIds(e.to_string())))?
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

    async fn list_offsets(
        &self,
        request: Request<pb::ListOffsetsRequest>,
    ) -> Result<Response<pb::ListOffsetsResponse>, Status> {
        self.authorize(
            &request,
            Operation::Describe,
            ResourceType::Topic,
            &request.get_ref().topic,
        )?;
        let started = std::time::Instant::now();
        let result = match ListOffsets::try_from(request.into_inner()) {
            Ok(req) => self.list_offsets_inner(req).await,
            Err(e) => Err(e),
        };
        record("list_offsets", started, &result);
        result.map(Response::new).map_err(Status::from)
    }
}

/// How far behind the end of the active segment a consumer may read in place, on its own
/// task: data written moments ago, still in the page cache (and within the log's cached
/// tail, which a broker may set smaller). Anything older is read on the blocking pool, where
/// a disk read cannot stall the runtime.
const TAIL_READ_BYTES: u64 = 4 << 20;

/// Committed batches from `from` (below `hw`), up to about `max_bytes`.
async fn read_committed(
    log: &Arc<weir_log::PartitionLog>,
    from: Offset,
    max_bytes: usize,
    hw: Offset,
) -> Result<Vec<RecordBatch>, BrokerError> {
    if from >= hw {
        return Ok(Vec::new());
    }
    if log.is_tail(from, TAIL_READ_BYTES) && log.reads_from_memory(from) {
        return Ok(log.read(from, max_bytes, Some(hw))?);
    }
    let log = Arc::clone(log);
    Ok(tokio::task::spawn_blocking(move || log.read(from, max_bytes, Some(hw))).await??)
}

pub(crate) fn record<T>(
    rpc: &'static str,
    started: std::time::Instant,
    result: &Result<T, BrokerError>,
) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(e) => e.code().name(),
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
    ) -> Result<(), BrokerError> {
        let mut hw = replica.subscribe_high_watermark();
        // a demotion must end the wait at once: after one the high watermark may not move
        // here again (a drained or fenced broker stops fetching)
        let mut leadership = replica.subscribe_leadership();
        let deadline = tokio::time::Instant::now()
            + std::time::Duration::from_millis(self.config.produce_timeout_ms);
        loop {
            let passed = *hw.borrow_and_update() > last;
            if passed && bugs::active(Bug::StaleLeaderEpoch) {
                break; // the bug this loop was fixed for: success before checking the epoch
            }
            if !replica.is_leader() || replica.leadership().leader_epoch != epoch {
                return Err(BrokerError::LeaderChangedAfterAppend);
            }
            if passed {
                break;
            }
            let changed = async {
                tokio::select! {
                    r = hw.changed() => r,
                    r = leadership.changed() => r,
                }
            };
            match tokio::time::timeout_at(deadline, changed).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(BrokerError::OwnerStopped),
                Err(_) => return Err(BrokerError::ReplicationTimedOut),
            }
        }
        let lead = replica.leadership();
        if (lead.isr.len() as u32) < lead.min_insync_replicas && !bugs::active(Bug::SkipMinIsr) {
            return Err(BrokerError::NotEnoughReplicasAfterAppend {
                isr: lead.isr,
                min: lead.min_insync_replicas,
            });
        }
        Ok(())
    }

    async fn produce_inner(&self, req: Produce) -> Result<pb::ProduceResponse, BrokerError> {
        let Produce {
            topic,
            partition,
            acks,
            leader_epoch,
            batch,
        } = req;
        let replica = self.leader_replica(&topic, partition, leader_epoch)?;
        let lead = replica.leadership();
        let all = acks == Acks::All;
        if all
            && (lead.isr.len() as u32) < lead.min_insync_replicas
            && !bugs::active(Bug::SkipMinIsr)
        {
            return Err(BrokerError::NotEnoughReplicas {
                isr: lead.isr,
                min: lead.min_insync_replicas,
            });
        }
        let started = std::time::Instant::now();
        let (tx, rx) = oneshot::channel();
        let append = AppendRequest {
            batch,
            epoch: lead.leader_epoch,
            reply: tx,
        };
        if replica.append(append).await.is_err() {
            return Err(BrokerError::Closing);
        }
        if acks == Acks::None {
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
        let info = rx.await.map_err(|_| BrokerError::OwnerStopped)??;
        // where a produce's time goes: written and fsynced here, then replicated
        metrics::histogram!("weir_broker_produce_stage_seconds", "stage" => "local")
            .record(started.elapsed().as_secs_f64());
        if all && !bugs::active(Bug::AckBeforeReplication) {
            self.await_replication(&replica, info.last_offset, lead.leader_epoch)
                .await?;
            metrics::histogram!("weir_broker_produce_stage_seconds", "stage" => "replicated")
                .record(started.elapsed().as_secs_f64());
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

    async fn fetch_inner(&self, req: Fetch) -> Result<pb::FetchResponse, BrokerError> {
        let replica = self.leader_replica(&req.topic, req.partition, req.leader_epoch)?;
        let from = req.offset;
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
                return Err(BrokerError::OffsetOutOfRange {
                    offset: from,
                    start,
                    high_watermark: hw,
                });
            }
            let batches = read_committed(&replica.log, from, max_bytes, hw).await?;
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
                let hw = replica.high_watermark();
                break read_committed(&replica.log, from, max_bytes, hw).await?;
            }
        };
        let mut records = Vec::new();
        if req.decode {
            for batch in &batches {
                let stored = weir_proto::convert::stored_records(batch)
                    .map_err(|e| BrokerError::Corrupt(e.to_string()))?;
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
        req: ListOffsets,
    ) -> Result<pb::ListOffsetsResponse, BrokerError> {
        let replica = self.leader_replica(&req.topic, req.partition, None)?;
        let (start, hw) = (replica.log.start_offset(), replica.high_watermark());
        let (offset, timestamp) = match req.query {
            OffsetQuery::Earliest => (start, -1),
            OffsetQuery::Latest => (hw, -1),
            OffsetQuery::Timestamp(ts) => {
                let log = Arc::clone(&replica.log);
                let found =
                    tokio::task::spawn_blocking(move || log.offset_for_timestamp(ts)).await??;
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
