//! Google's `Subscriber` service over Weir subscriptions.
//!
//! Delivery state lives with the partition leaders; the gateway fans a pull out to the
//! partitions' leaders and routes each ack id (`partition.offset.attempt`) back to its
//! partition's leader, so any gateway can take any ack. A StreamingPull runs one pull loop
//! per partition under the stream's flow control (outstanding messages and bytes; a message
//! stops counting when it is acked or nacked through this gateway, or when its lease runs
//! out), and answers acks and deadline changes sent on the stream.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use weir_proto::google::pubsub::v1 as gpb;
use weir_proto::google::pubsub::v1::subscriber_server::Subscriber;
use weir_proto::v1 as pb;
use weir_types::ErrorCode;
use weir_types::subscription::Cursor;

use crate::backend::{
    BROKER_PATIENCE, Backend, Settle, SubscriptionInfo, caller, client_status, futures_join,
};
use crate::convert::{self, AckId};
use crate::deadletter;
use crate::names::{self, Kind, Name};
use crate::publisher::{not_found, page};
use weir_types::acl::{Operation, ResourceType};

/// Messages one partition pull of a stream asks for at most.
const STREAM_PULL_MESSAGES_MAX: usize = 500;
/// How long a stream's partition pull waits at the leader for messages.
const STREAM_PULL_WAIT_MS: u32 = 5_000;
/// Flow control when the client sets none.
const STREAM_OUTSTANDING_MESSAGES_DEFAULT: usize = 1_000;
const STREAM_OUTSTANDING_BYTES_DEFAULT: usize = 100 << 20;
/// Responses queued for a stream beyond one per partition.
const STREAM_RESPONSES_SPARE: usize = 2;
/// How long a unary Pull without `return_immediately` waits for messages.
const PULL_WAIT: Duration = Duration::from_secs(10);
/// Pause after a failed partition pull.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Snapshots expire after this long (Google: at most 7 days).
const SNAPSHOT_LIFETIME_MS: i64 = 7 * 24 * 3600 * 1000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One stream's flow control. Messages are leased only when the stream can take them:
/// each partition's pull first reserves a slot in the stream's bounded response queue, which
/// empties only as fast as the client reads (a client over its own flow-control limits stops
/// reading), and asks for at most its share of `max_outstanding_messages` and
/// `max_outstanding_bytes`. Acks may reach any gateway, so the limits bound what one pull
/// leases, not a count of unacked messages.
struct Flow {
    partitions: usize,
    messages_max: usize,
    bytes_max: usize,
    /// The stream's ack deadline, seconds.
    deadline_seconds: AtomicU32,
}

impl Flow {
    /// (messages, bytes) one partition's pull may lease.
    fn share(&self) -> (usize, usize) {
        let n = self.partitions.max(1);
        (
            self.messages_max
                .div_ceil(n)
                .clamp(1, STREAM_PULL_MESSAGES_MAX),
            self.bytes_max.div_ceil(n).max(1),
        )
    }
}

#[derive(Clone)]
pub struct SubscriberService {
    backend: Arc<Backend>,
    stopped: watch::Receiver<bool>,
    rotation: Arc<AtomicU32>,
}

/// Ack ids grouped by partition.
fn by_partition(ids: &[AckId]) -> BTreeMap<u32, Vec<AckId>> {
    let mut out: BTreeMap<u32, Vec<AckId>> = BTreeMap::new();
    for id in ids {
        out.entry(id.partition).or_default().push(*id);
    }
    out
}

fn parse_ack_ids(field: &str, raw: &[String], partitions: u32) -> Result<Vec<AckId>, Status> {
    raw.iter()
        .enumerate()
        .map(|(i, a)| {
            AckId::parse(a)
                .filter(|id| id.partition < partitions)
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "Invalid [{field}[{i}]]: {a:?} is not an ack id"
                    ))
                })
        })
        .collect()
}

fn lease_ids(ids: &[AckId]) -> Vec<pb::LeaseId> {
    ids.iter()
        .map(|id| pb::LeaseId {
            offset: id.offset,
            attempt: id.attempt,
        })
        .collect()
}

type PullStream = Pin<Box<dyn Stream<Item = Result<gpb::StreamingPullResponse, Status>> + Send>>;

impl SubscriberService {
    pub fn new(backend: Arc<Backend>, stopped: watch::Receiver<bool>) -> SubscriberService {
        SubscriberService {
            backend,
            stopped,
            rotation: Arc::new(AtomicU32::new(0)),
        }
    }

    async fn info(&self, field: &str, raw: &str) -> Result<(Name, Arc<SubscriptionInfo>), Status> {
        let name = Name::parse(field, raw, Kind::Subscriptions)?;
        let info = self
            .backend
            .subscription(&name.weir())
            .await
            .map_err(|s| not_found(s, "subscription", &name.weir()))?;
        Ok((name, info))
    }

    /// Acknowledges at the partition leaders; returns the ids whose lease no longer held.
    /// A snapshot is guarded by the ACLs of the subscription it was taken from.
    async fn authorize_snapshot(
        &self,
        caller: &crate::backend::Caller,
        operation: Operation,
        weir_name: &str,
    ) -> Result<(), Status> {
        if !self.backend.security.authorization() {
            return Ok(());
        }
        let request = pb::GetSnapshotRequest {
            name: weir_name.to_string(),
        };
        let snapshot = self
            .backend
            .subscriptions(|mut c| {
                let request = request.clone();
                async move { c.get_snapshot(request).await }
            })
            .await?;
        self.backend
            .authorize(
                caller,
                operation,
                ResourceType::Subscription,
                &snapshot.subscription,
            )
            .await
    }

    async fn ack(&self, info: &SubscriptionInfo, ids: &[AckId]) -> Result<Vec<AckId>, Status> {
        self.settle(info, ids, Settle::Ack).await
    }

    /// New deadlines at the partition leaders (0: nack).
    async fn modify(
        &self,
        info: &SubscriptionInfo,
        ids: &[AckId],
        seconds: u32,
    ) -> Result<Vec<AckId>, Status> {
        self.settle(info, ids, Settle::Deadline(seconds)).await
    }

    async fn settle(
        &self,
        info: &SubscriptionInfo,
        ids: &[AckId],
        how: Settle,
    ) -> Result<Vec<AckId>, Status> {
        let calls = by_partition(ids)
            .into_iter()
            .map(|(partition, ids)| async move {
                self.backend
                    .settle(&info.spec, partition, lease_ids(&ids), how)
                    .await
                    .map(|invalid| {
                        invalid
                            .into_iter()
                            .map(|l| AckId {
                                partition,
                                offset: l.offset,
                                attempt: l.attempt,
                            })
                            .collect::<Vec<_>>()
                    })
            });
        let mut invalid = Vec::new();
        for r in futures_join(calls).await {
            invalid.extend(r.map_err(|e| client_status(&e))?);
        }
        Ok(invalid)
    }

    /// One pull of one partition.
    async fn pull_partition(
        &self,
        info: &SubscriptionInfo,
        partition: u32,
        max_messages: usize,
        max_bytes: usize,
        wait_ms: u32,
        ack_deadline_seconds: u32,
    ) -> Result<pb::SubscriptionPullResponse, weir_client::ClientError> {
        let request = pb::SubscriptionPullRequest {
            subscription: info.spec.name.clone(),
            topic: info.spec.topic.clone(),
            partition,
            max_messages: max_messages as u32,
            max_bytes: max_bytes.min(u32::MAX as usize) as u32,
            wait_ms,
            ack_deadline_seconds,
        };
        let patience = BROKER_PATIENCE + Duration::from_millis(u64::from(wait_ms));
        self.backend
            .leader(&info.spec.topic, partition, patience, |mut c| {
                let request = request.clone();
                async move { c.pull(request).await }
            })
            .await
    }

    /// Pulls up to `max` messages spread over the partitions, without waiting: each round
    /// splits what is left among the partitions that may have more (the first round, all;
    /// later ones, those that filled their quota).
    async fn pull_once(
        &self,
        info: &SubscriptionInfo,
        max: usize,
    ) -> Result<Vec<gpb::ReceivedMessage>, Status> {
        let n = info.partitions.max(1) as usize;
        let first = self.rotation.fetch_add(1, Ordering::Relaxed) as usize;
        let mut candidates: Vec<u32> = (0..n).map(|i| ((first + i) % n) as u32).collect();
        let mut out = Vec::new();
        let mut failure = None;
        for _round in 0..4 {
            let left = max - out.len();
            if left == 0 || candidates.is_empty() {
                break;
            }
            let k = candidates.len();
            let quotas: Vec<(u32, usize)> = candidates
                .iter()
                .enumerate()
                .map(|(i, p)| (*p, left / k + usize::from(i < left % k)))
                .filter(|(_, q)| *q > 0)
                .collect();
            let calls = quotas.into_iter().map(|(p, q)| async move {
                (
                    p,
                    q,
                    self.pull_partition(info, p, q, usize::MAX, 0, 0).await,
                )
            });
            candidates.clear();
            for (partition, quota, r) in futures_join(calls).await {
                match r {
                    Ok(r) => {
                        if r.deliveries.len() >= quota {
                            candidates.push(partition);
                        }
                        let deliveries =
                            deadletter::split(&self.backend, info, partition, r.deliveries).await;
                        out.extend(received(partition, deliveries));
                    }
                    Err(e) => failure = Some(e),
                }
            }
        }
        match failure {
            Some(e) if out.is_empty() => Err(client_status(&e)),
            _ => Ok(out),
        }
    }

    fn spawn_stream(
        &self,
        name: Name,
        info: Arc<SubscriptionInfo>,
        first: gpb::StreamingPullRequest,
        inbound: Streaming<gpb::StreamingPullRequest>,
    ) -> Result<PullStream, Status> {
        let deadline = first.stream_ack_deadline_seconds;
        if !(10..=600).contains(&deadline) {
            return Err(Status::invalid_argument(
                "Invalid [stream_ack_deadline_seconds]: must be 10 to 600",
            ));
        }
        let limit = |raw: i64, default: usize| if raw <= 0 { default } else { raw as usize };
        let flow = Arc::new(Flow {
            partitions: info.partitions as usize,
            messages_max: limit(
                first.max_outstanding_messages,
                STREAM_OUTSTANDING_MESSAGES_DEFAULT,
            ),
            bytes_max: limit(
                first.max_outstanding_bytes,
                STREAM_OUTSTANDING_BYTES_DEFAULT,
            ),
            deadline_seconds: AtomicU32::new(deadline as u32),
        });
        // a slot per partition loop (one may hold it through a long poll) and a few more
        let (tx, rx) = mpsc::channel(info.partitions as usize + STREAM_RESPONSES_SPARE);
        let service = self.clone();
        tokio::spawn(async move {
            service
                .run_stream(name, info, first, inbound, flow, tx)
                .await;
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn run_stream(
        self,
        name: Name,
        info: Arc<SubscriptionInfo>,
        first: gpb::StreamingPullRequest,
        mut inbound: Streaming<gpb::StreamingPullRequest>,
        flow: Arc<Flow>,
        tx: mpsc::Sender<Result<gpb::StreamingPullResponse, Status>>,
    ) {
        let mut loops = tokio::task::JoinSet::new();
        for partition in 0..info.partitions {
            let service = self.clone();
            let (info, flow, tx) = (Arc::clone(&info), Arc::clone(&flow), tx.clone());
            loops.spawn(async move { service.partition_loop(info, partition, flow, tx).await });
        }
        let mut stopped = self.stopped.clone();
        let mut request = Some(first);
        loop {
            if let Some(r) = request.take()
                && let Err(e) = self.stream_request(&info, &flow, r, &tx).await
            {
                let _ = tx.send(Err(e)).await;
                break;
            }
            tokio::select! {
                next = inbound.message() => match next {
                    Ok(Some(r)) => {
                        if !r.subscription.is_empty() && r.subscription != name.google() {
                            let _ = tx.send(Err(Status::invalid_argument(
                                "Invalid [subscription]: only the first request names it",
                            ))).await;
                            break;
                        }
                        request = Some(r);
                    }
                    Ok(None) | Err(_) => break,
                },
                _ = tx.closed() => break,
                _ = async { let _ = stopped.wait_for(|s| *s).await; } => {
                    let _ = tx.send(Err(Status::unavailable("the gateway is shutting down"))).await;
                    break;
                }
                Some(_) = loops.join_next() => {
                    // a partition loop ended: the stream has failed (the loop sent why)
                    break;
                }
            }
        }
        loops.abort_all();
        tracing::debug!(subscription = %info.spec.name, "stream closed");
    }

    /// Acks, deadline changes and a new stream deadline sent on the stream.
    async fn stream_request(
        &self,
        info: &SubscriptionInfo,
        flow: &Flow,
        r: gpb::StreamingPullRequest,
        tx: &mpsc::Sender<Result<gpb::StreamingPullResponse, Status>>,
    ) -> Result<(), Status> {
        if r.stream_ack_deadline_seconds != 0 {
            if !(10..=600).contains(&r.stream_ack_deadline_seconds) {
                return Err(Status::invalid_argument(
                    "Invalid [stream_ack_deadline_seconds]: must be 10 to 600",
                ));
            }
            flow.deadline_seconds
                .store(r.stream_ack_deadline_seconds as u32, Ordering::Relaxed);
        }
        if r.modify_deadline_ack_ids.len() != r.modify_deadline_seconds.len() {
            return Err(Status::invalid_argument(
                "Invalid [modify_deadline_seconds]: must have one entry per modify_deadline_ack_ids entry",
            ));
        }
        let exactly_once = info.spec.enable_exactly_once_delivery;
        if !r.ack_ids.is_empty() {
            let ids = parse_ack_ids("ack_ids", &r.ack_ids, info.partitions)?;
            let invalid = self.ack(info, &ids).await?;
            if exactly_once {
                let _ = tx
                    .send(Ok(confirmed(info, Settle::Ack, &ids, &invalid)))
                    .await;
            }
        }
        let mut by_seconds: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        for (id, s) in r
            .modify_deadline_ack_ids
            .into_iter()
            .zip(r.modify_deadline_seconds)
        {
            by_seconds.entry(s).or_default().push(id);
        }
        for (seconds, raw) in by_seconds {
            if !(0..=600).contains(&seconds) {
                return Err(Status::invalid_argument(
                    "Invalid [modify_deadline_seconds]: must be 0 to 600",
                ));
            }
            let ids = parse_ack_ids("modify_deadline_ack_ids", &raw, info.partitions)?;
            let invalid = self.modify(info, &ids, seconds as u32).await?;
            if exactly_once {
                let how = Settle::Deadline(seconds as u32);
                let _ = tx.send(Ok(confirmed(info, how, &ids, &invalid))).await;
            }
        }
        Ok(())
    }

    /// Pulls one partition for a stream while it is open.
    async fn partition_loop(
        self,
        info: Arc<SubscriptionInfo>,
        partition: u32,
        flow: Arc<Flow>,
        tx: mpsc::Sender<Result<gpb::StreamingPullResponse, Status>>,
    ) {
        loop {
            // a slot for the answer first: nothing is leased that the stream cannot take
            let permit = tokio::select! {
                p = tx.reserve() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = tx.closed() => return,
            };
            let (messages, bytes) = flow.share();
            let deadline = flow.deadline_seconds.load(Ordering::Relaxed);
            let pulled = tokio::select! {
                r = self.pull_partition(&info, partition, messages, bytes, STREAM_PULL_WAIT_MS, deadline) => r,
                _ = tx.closed() => return,
            };
            match pulled {
                Ok(r) => {
                    tracing::debug!(subscription = %info.spec.name, partition, delivered = r.deliveries.len(), "stream pull");
                    let deliveries =
                        deadletter::split(&self.backend, &info, partition, r.deliveries).await;
                    if deliveries.is_empty() {
                        continue;
                    }
                    let messages = received(partition, deliveries);
                    if tx.is_closed() {
                        // the client left during the pull: hand the messages back at once
                        let ids: Vec<AckId> = messages
                            .iter()
                            .filter_map(|m| AckId::parse(&m.ack_id))
                            .collect();
                        let _ = self.modify(&info, &ids, 0).await;
                        return;
                    }
                    metrics::counter!("weir_gateway_delivered_total")
                        .increment(messages.len() as u64);
                    permit.send(Ok(gpb::StreamingPullResponse {
                        received_messages: messages,
                        subscription_properties: Some(properties(&info)),
                        ..Default::default()
                    }));
                }
                Err(e) => {
                    drop(permit);
                    // only the subscription's end (or a bad request) ends the stream; an
                    // unknown partition or a missing leader is a failover in progress
                    if matches!(
                        e.code(),
                        Some(ErrorCode::SubscriptionNotFound | ErrorCode::InvalidArgument)
                    ) {
                        let _ = tx.send(Err(client_status(&e))).await;
                        return;
                    }
                    tracing::debug!(subscription = %info.spec.name, partition, error = %e, "stream pull failed; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    /// The cursors of every partition, as the leaders hold them now (stored first).
    async fn cursors(&self, info: &SubscriptionInfo) -> Result<Vec<pb::PartitionCursor>, Status> {
        let calls = (0..info.partitions).map(|partition| {
            let request = pb::GetCursorRequest {
                subscription: info.spec.name.clone(),
                topic: info.spec.topic.clone(),
                partition,
            };
            async move {
                self.backend
                    .leader(&info.spec.topic, partition, BROKER_PATIENCE, |mut c| {
                        let request = request.clone();
                        async move { c.get_cursor(request).await }
                    })
                    .await
                    .map(|r| pb::PartitionCursor {
                        partition,
                        cursor: r.cursor,
                    })
            }
        });
        futures_join(calls)
            .await
            .into_iter()
            .map(|r| r.map_err(|e| client_status(&e)))
            .collect()
    }

    /// Replaces the cursor of each partition given.
    async fn seek_to(
        &self,
        info: &SubscriptionInfo,
        cursors: Vec<(u32, Cursor)>,
    ) -> Result<(), Status> {
        let calls = cursors.into_iter().map(|(partition, cursor)| {
            let request = pb::SeekSubscriptionRequest {
                subscription: info.spec.name.clone(),
                topic: info.spec.topic.clone(),
                partition,
                cursor: Some((&cursor).into()),
            };
            async move {
                self.backend
                    .leader(&info.spec.topic, partition, BROKER_PATIENCE, |mut c| {
                        let request = request.clone();
                        async move { c.seek_subscription(request).await }
                    })
                    .await
            }
        });
        for r in futures_join(calls).await {
            r.map_err(|e| client_status(&e))?;
        }
        Ok(())
    }

    async fn update(
        &self,
        spec: &weir_types::subscription::SubscriptionSpec,
        mask: Vec<String>,
    ) -> Result<gpb::Subscription, Status> {
        let request = pb::UpdateSubscriptionRequest {
            spec: Some(spec.into()),
            update_mask: mask,
        };
        let d = self
            .backend
            .subscriptions(|mut c| {
                let request = request.clone();
                async move { c.update_subscription(request).await }
            })
            .await?;
        self.backend.forget(&spec.name);
        Ok(convert::subscription(&SubscriptionInfo::try_from(d)?))
    }
}

fn properties(info: &SubscriptionInfo) -> gpb::streaming_pull_response::SubscriptionProperties {
    gpb::streaming_pull_response::SubscriptionProperties {
        exactly_once_delivery_enabled: info.spec.enable_exactly_once_delivery,
        message_ordering_enabled: info.spec.enable_message_ordering,
    }
}

/// The exactly-once confirmation of acks (or deadline changes) sent on a stream: which ids
/// counted and which no longer held.
fn confirmed(
    info: &SubscriptionInfo,
    how: Settle,
    ids: &[AckId],
    invalid: &[AckId],
) -> gpb::StreamingPullResponse {
    let (bad, good): (Vec<&AckId>, Vec<&AckId>) = ids.iter().partition(|id| invalid.contains(id));
    let ack_ids: Vec<String> = good.into_iter().map(AckId::encode).collect();
    let invalid_ack_ids: Vec<String> = bad.into_iter().map(AckId::encode).collect();
    let mut response = gpb::StreamingPullResponse {
        subscription_properties: Some(properties(info)),
        ..Default::default()
    };
    match how {
        Settle::Ack => {
            response.acknowledge_confirmation =
                Some(gpb::streaming_pull_response::AcknowledgeConfirmation {
                    ack_ids,
                    invalid_ack_ids,
                    ..Default::default()
                })
        }
        Settle::Deadline(_) => {
            response.modify_ack_deadline_confirmation = Some(
                gpb::streaming_pull_response::ModifyAckDeadlineConfirmation {
                    ack_ids,
                    invalid_ack_ids,
                    ..Default::default()
                },
            )
        }
    }
    response
}

fn received(partition: u32, deliveries: Vec<pb::Delivery>) -> Vec<gpb::ReceivedMessage> {
    deliveries
        .into_iter()
        .map(|d| gpb::ReceivedMessage {
            ack_id: AckId {
                partition,
                offset: d.offset,
                attempt: d.attempt,
            }
            .encode(),
            message: Some(convert::message(
                partition,
                d.offset,
                d.record.unwrap_or_default(),
            )),
            delivery_attempt: d.attempt as i32,
        })
        .collect()
}

fn google_snapshot(s: &pb::SnapshotDescription) -> gpb::Snapshot {
    gpb::Snapshot {
        name: names::google(&s.name, Kind::Snapshots),
        topic: names::google(&s.topic, Kind::Topics),
        expire_time: Some(convert::timestamp(s.expire_time_ms)),
        labels: s.labels.clone(),
    }
}

#[tonic::async_trait]
impl Subscriber for SubscriberService {
    async fn create_subscription(
        &self,
        request: Request<gpb::Subscription>,
    ) -> Result<Response<gpb::Subscription>, Status> {
        let caller = caller(&request);
        let sub = request.into_inner();
        let name = Name::parse("subscription", &sub.name, Kind::Subscriptions)?;
        let topic = Name::parse("topic", &sub.topic, Kind::Topics)?;
        self.backend
            .authorize(
                &caller,
                Operation::Create,
                ResourceType::Subscription,
                &name.weir(),
            )
            .await?;
        self.backend
            .authorize(&caller, Operation::Read, ResourceType::Topic, &topic.weir())
            .await?;
        let spec = convert::spec(sub, &name, &topic)?;
        let describe = pb::DescribeTopicRequest { name: topic.weir() };
        let t = self
            .backend
            .admin(|mut c| {
                let describe = describe.clone();
                async move { c.describe_topic(describe).await }
            })
            .await
            .map_err(|s| not_found(s, "topic", &topic.weir()))?;
        // delivery starts at each partition's end now: messages published from here on
        let ends = self
            .backend
            .offsets(
                &topic.weir(),
                t.partitions.len() as u32,
                pb::OffsetSpec::Latest,
                0,
            )
            .await?;
        let request = pb::CreateSubscriptionRequest {
            spec: Some((&spec).into()),
            start: ends
                .iter()
                .enumerate()
                .map(|(p, end)| pb::PartitionCursor {
                    partition: p as u32,
                    cursor: Some((&Cursor::at(*end)).into()),
                })
                .collect(),
        };
        let d = self
            .backend
            .subscriptions(|mut c| {
                let request = request.clone();
                async move { c.create_subscription(request).await }
            })
            .await
            .map_err(|s| {
                if s.code() == tonic::Code::AlreadyExists {
                    Status::already_exists("Subscription already exists")
                } else {
                    s
                }
            })?;
        Ok(Response::new(convert::subscription(
            &SubscriptionInfo::try_from(d)?,
        )))
    }

    async fn get_subscription(
        &self,
        request: Request<gpb::GetSubscriptionRequest>,
    ) -> Result<Response<gpb::Subscription>, Status> {
        let caller = caller(&request);
        let name = Name::parse(
            "subscription",
            &request.into_inner().subscription,
            Kind::Subscriptions,
        )?;
        self.backend
            .authorize(
                &caller,
                Operation::Describe,
                ResourceType::Subscription,
                &name.weir(),
            )
            .await?;
        self.backend.forget(&name.weir());
        let info = self
            .backend
            .subscription(&name.weir())
            .await
            .map_err(|s| not_found(s, "subscription", &name.weir()))?;
        Ok(Response::new(convert::subscription(&info)))
    }

    async fn update_subscription(
        &self,
        request: Request<gpb::UpdateSubscriptionRequest>,
    ) -> Result<Response<gpb::Subscription>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let sub = r
            .subscription
            .ok_or_else(|| Status::invalid_argument("Invalid [subscription]: must be set"))?;
        let name = Name::parse("subscription", &sub.name, Kind::Subscriptions)?;
        self.backend
            .authorize(
                &caller,
                Operation::Alter,
                ResourceType::Subscription,
                &name.weir(),
            )
            .await?;
        let mask = convert::update_mask(&r.update_mask.map(|m| m.paths).unwrap_or_default())?;
        self.backend.forget(&name.weir());
        let current = self
            .backend
            .subscription(&name.weir())
            .await
            .map_err(|s| not_found(s, "subscription", &name.weir()))?;
        let topic = Name::from_weir(&current.spec.topic, Kind::Topics)
            .ok_or_else(|| Status::internal("subscription on a topic outside any project"))?;
        let mut sub = sub;
        // fields not in the mask keep their stored values; the spec is checked whole
        if !mask.iter().any(|f| f == "ack_deadline_seconds") {
            sub.ack_deadline_seconds = current.spec.ack_deadline_seconds as i32;
        }
        if !mask.iter().any(|f| f == "message_retention_seconds") {
            sub.message_retention_duration =
                convert::duration(current.spec.message_retention_seconds * 1000);
        }
        let spec = convert::spec(sub, &name, &topic)?;
        Ok(Response::new(self.update(&spec, mask).await?))
    }

    async fn list_subscriptions(
        &self,
        request: Request<gpb::ListSubscriptionsRequest>,
    ) -> Result<Response<gpb::ListSubscriptionsResponse>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let project = names::project("project", &r.project)?;
        self.backend
            .authorize(
                &caller,
                Operation::Describe,
                ResourceType::Subscription,
                &format!("{project}."),
            )
            .await?;
        let request = pb::ListSubscriptionsRequest {
            prefix: format!("{project}."),
            topic: String::new(),
        };
        let list = self
            .backend
            .subscriptions(|mut c| {
                let request = request.clone();
                async move { c.list_subscriptions(request).await }
            })
            .await?;
        let mut subs = Vec::with_capacity(list.subscriptions.len());
        for d in list.subscriptions {
            subs.push(convert::subscription(&SubscriptionInfo::try_from(d)?));
        }
        subs.sort_by(|a, b| a.name.cmp(&b.name));
        let (subscriptions, next_page_token) = page(subs, |s| &s.name, r.page_size, &r.page_token);
        Ok(Response::new(gpb::ListSubscriptionsResponse {
            subscriptions,
            next_page_token,
        }))
    }

    async fn delete_subscription(
        &self,
        request: Request<gpb::DeleteSubscriptionRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller(&request);
        let name = Name::parse(
            "subscription",
            &request.into_inner().subscription,
            Kind::Subscriptions,
        )?;
        self.backend
            .authorize(
                &caller,
                Operation::Delete,
                ResourceType::Subscription,
                &name.weir(),
            )
            .await?;
        let request = pb::DeleteSubscriptionRequest { name: name.weir() };
        self.backend
            .subscriptions(|mut c| {
                let request = request.clone();
                async move { c.delete_subscription(request).await }
            })
            .await
            .map_err(|s| not_found(s, "subscription", &name.weir()))?;
        self.backend.forget(&name.weir());
        Ok(Response::new(()))
    }

    async fn modify_ack_deadline(
        &self,
        request: Request<gpb::ModifyAckDeadlineRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        if !(0..=600).contains(&r.ack_deadline_seconds) {
            return Err(Status::invalid_argument(
                "Invalid [ack_deadline_seconds]: must be 0 to 600",
            ));
        }
        let (_, info) = self.info("subscription", &r.subscription).await?;
        self.backend
            .authorize(
                &caller,
                Operation::Read,
                ResourceType::Subscription,
                &info.spec.name,
            )
            .await?;
        let ids = parse_ack_ids("ack_ids", &r.ack_ids, info.partitions)?;
        if ids.is_empty() {
            return Err(Status::invalid_argument("Invalid [ack_ids]: none given"));
        }
        self.modify(&info, &ids, r.ack_deadline_seconds as u32)
            .await?;
        Ok(Response::new(()))
    }

    async fn acknowledge(
        &self,
        request: Request<gpb::AcknowledgeRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let (_, info) = self.info("subscription", &r.subscription).await?;
        self.backend
            .authorize(
                &caller,
                Operation::Read,
                ResourceType::Subscription,
                &info.spec.name,
            )
            .await?;
        let ids = parse_ack_ids("ack_ids", &r.ack_ids, info.partitions)?;
        if ids.is_empty() {
            return Err(Status::invalid_argument("Invalid [ack_ids]: none given"));
        }
        self.ack(&info, &ids).await?;
        Ok(Response::new(()))
    }

    async fn pull(
        &self,
        request: Request<gpb::PullRequest>,
    ) -> Result<Response<gpb::PullResponse>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        if r.max_messages <= 0 {
            return Err(Status::invalid_argument(
                "Invalid [max_messages]: must be positive",
            ));
        }
        let (_, info) = self.info("subscription", &r.subscription).await?;
        self.backend
            .authorize(
                &caller,
                Operation::Read,
                ResourceType::Subscription,
                &info.spec.name,
            )
            .await?;
        if info.topic_deleted || info.spec.detached {
            return Err(Status::failed_precondition(
                "the subscription is detached or its topic was deleted",
            ));
        }
        let max = (r.max_messages as usize).min(1000);
        #[allow(deprecated)]
        let immediately = r.return_immediately;
        let until = tokio::time::Instant::now() + PULL_WAIT;
        loop {
            let received_messages = self.pull_once(&info, max).await?;
            if !received_messages.is_empty() || immediately {
                return Ok(Response::new(gpb::PullResponse { received_messages }));
            }
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(Response::new(gpb::PullResponse::default()));
            }
            // wait until some partition has something, then pull again
            let wait_ms = left.as_millis().min(5_000) as u32;
            let waits = (0..info.partitions).map(|p| {
                let info = Arc::clone(&info);
                Box::pin(async move {
                    match self.pull_partition(&info, p, 0, 0, wait_ms, 0).await {
                        Ok(r) if r.available => Ok(()),
                        Ok(_) => Err(None),
                        Err(e) => Err(Some(e)),
                    }
                })
            });
            if let Err(Some(e)) = futures_util::future::select_ok(waits)
                .await
                .map(|_| ())
                .map_err(|e: Option<weir_client::ClientError>| e)
            {
                return Err(client_status(&e));
            }
        }
    }

    type StreamingPullStream = PullStream;

    async fn streaming_pull(
        &self,
        request: Request<Streaming<gpb::StreamingPullRequest>>,
    ) -> Result<Response<Self::StreamingPullStream>, Status> {
        let caller = caller(&request);
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument("Invalid [subscription]: the stream sent nothing")
        })?;
        let (name, info) = self.info("subscription", &first.subscription).await?;
        self.backend
            .authorize(
                &caller,
                Operation::Read,
                ResourceType::Subscription,
                &info.spec.name,
            )
            .await?;
        tracing::debug!(
            subscription = %info.spec.name,
            partitions = info.partitions,
            deadline = first.stream_ack_deadline_seconds,
            max_messages = first.max_outstanding_messages,
            max_bytes = first.max_outstanding_bytes,
            "stream opened"
        );
        if info.topic_deleted || info.spec.detached {
            return Err(Status::failed_precondition(
                "the subscription is detached or its topic was deleted",
            ));
        }
        Ok(Response::new(
            self.spawn_stream(name, info, first, inbound)?,
        ))
    }

    async fn modify_push_config(
        &self,
        request: Request<gpb::ModifyPushConfigRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let (_, info) = self.info("subscription", &r.subscription).await?;
        self.backend
            .authorize(
                &caller,
                Operation::Alter,
                ResourceType::Subscription,
                &info.spec.name,
            )
            .await?;
        let mut spec = info.spec.clone();
        spec.push = convert::push(r.push_config);
        spec.normalize()
            .map_err(|(f, why)| Status::invalid_argument(format!("Invalid [{f}]: {why}")))?;
        self.update(&spec, vec!["push".into()]).await?;
        Ok(Response::new(()))
    }

    async fn get_snapshot(
        &self,
        request: Request<gpb::GetSnapshotRequest>,
    ) -> Result<Response<gpb::Snapshot>, Status> {
        let caller = caller(&request);
        let name = Name::parse("snapshot", &request.into_inner().snapshot, Kind::Snapshots)?;
        self.authorize_snapshot(&caller, Operation::Describe, &name.weir())
            .await?;
        let request = pb::GetSnapshotRequest { name: name.weir() };
        let s = self
            .backend
            .subscriptions(|mut c| {
                let request = request.clone();
                async move { c.get_snapshot(request).await }
            })
            .await?;
        Ok(Response::new(google_snapshot(&s)))
    }

    async fn list_snapshots(
        &self,
        request: Request<gpb::ListSnapshotsRequest>,
    ) -> Result<Response<gpb::ListSnapshotsResponse>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let project = names::project("project", &r.project)?;
        self.backend
            .authorize(
                &caller,
                Operation::Describe,
                ResourceType::Subscription,
                &format!("{project}."),
            )
            .await?;
        let request = pb::ListSnapshotsRequest {
            prefix: format!("{project}."),
            topic: String::new(),
        };
        let list = self
            .backend
            .subscriptions(|mut c| {
                let request = request.clone();
                async move { c.list_snapshots(request).await }
            })
            .await?;
        let mut snaps: Vec<gpb::Snapshot> = list.snapshots.iter().map(google_snapshot).collect();
        snaps.sort_by(|a, b| a.name.cmp(&b.name));
        let (snapshots, next_page_token) = page(snaps, |s| &s.name, r.page_size, &r.page_token);
        Ok(Response::new(gpb::ListSnapshotsResponse {
            snapshots,
            next_page_token,
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<gpb::CreateSnapshotRequest>,
    ) -> Result<Response<gpb::Snapshot>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let name = Name::parse("name", &r.name, Kind::Snapshots)?;
        let (_, info) = self.info("subscription", &r.subscription).await?;
        self.backend
            .authorize(
                &caller,
                Operation::Read,
                ResourceType::Subscription,
                &info.spec.name,
            )
            .await?;
        let cursors = self.cursors(&info).await?;
        let request = pb::CreateSnapshotRequest {
            name: name.weir(),
            subscription: info.spec.name.clone(),
            cursors,
            labels: r.labels,
            expire_time_ms: now_ms() + SNAPSHOT_LIFETIME_MS,
        };
        let s = self
            .backend
            .subscriptions(|mut c| {
                let request = request.clone();
                async move { c.create_snapshot(request).await }
            })
            .await?;
        Ok(Response::new(google_snapshot(&s)))
    }

    async fn update_snapshot(
        &self,
        request: Request<gpb::UpdateSnapshotRequest>,
    ) -> Result<Response<gpb::Snapshot>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let snap = r
            .snapshot
            .ok_or_else(|| Status::invalid_argument("Invalid [snapshot]: must be set"))?;
        let name = Name::parse("snapshot.name", &snap.name, Kind::Snapshots)?;
        self.authorize_snapshot(&caller, Operation::Alter, &name.weir())
            .await?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let mut expire = None;
        for p in &paths {
            match p.as_str() {
                "labels" => {}
                "expire_time" => expire = snap.expire_time.as_ref().map(convert::timestamp_ms),
                other => {
                    return Err(Status::invalid_argument(format!(
                        "Invalid [update_mask]: field {other:?} cannot be updated"
                    )));
                }
            }
        }
        let request = pb::UpdateSnapshotRequest {
            name: name.weir(),
            labels: snap.labels,
            expire_time_ms: expire,
        };
        let s = self
            .backend
            .subscriptions(|mut c| {
                let request = request.clone();
                async move { c.update_snapshot(request).await }
            })
            .await?;
        Ok(Response::new(google_snapshot(&s)))
    }

    async fn delete_snapshot(
        &self,
        request: Request<gpb::DeleteSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller(&request);
        let name = Name::parse("snapshot", &request.into_inner().snapshot, Kind::Snapshots)?;
        self.authorize_snapshot(&caller, Operation::Alter, &name.weir())
            .await?;
        let request = pb::DeleteSnapshotRequest { name: name.weir() };
        self.backend
            .subscriptions(|mut c| {
                let request = request.clone();
                async move { c.delete_snapshot(request).await }
            })
            .await?;
        Ok(Response::new(()))
    }

    async fn seek(
        &self,
        request: Request<gpb::SeekRequest>,
    ) -> Result<Response<gpb::SeekResponse>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let (_, info) = self.info("subscription", &r.subscription).await?;
        self.backend
            .authorize(
                &caller,
                Operation::Read,
                ResourceType::Subscription,
                &info.spec.name,
            )
            .await?;
        let cursors: Vec<(u32, Cursor)> = match r.target {
            Some(gpb::seek_request::Target::Time(t)) => {
                // everything published before the time counts as acknowledged, the rest not
                let offsets = self
                    .backend
                    .offsets(
                        &info.spec.topic,
                        info.partitions,
                        pb::OffsetSpec::Timestamp,
                        convert::timestamp_ms(&t),
                    )
                    .await?;
                offsets
                    .into_iter()
                    .enumerate()
                    .map(|(p, o)| (p as u32, Cursor::at(o)))
                    .collect()
            }
            Some(gpb::seek_request::Target::Snapshot(raw)) => {
                let name = Name::parse("snapshot", &raw, Kind::Snapshots)?;
                let request = pb::GetSnapshotRequest { name: name.weir() };
                let s = self
                    .backend
                    .subscriptions(|mut c| {
                        let request = request.clone();
                        async move { c.get_snapshot(request).await }
                    })
                    .await?;
                if s.topic != info.spec.topic {
                    return Err(Status::failed_precondition(format!(
                        "snapshot {raw} is of topic {}, the subscription's is {}",
                        names::google(&s.topic, Kind::Topics),
                        names::google(&info.spec.topic, Kind::Topics)
                    )));
                }
                s.cursors
                    .into_iter()
                    .map(|pc| {
                        (
                            pc.partition,
                            pc.cursor.map(Cursor::from).unwrap_or_default(),
                        )
                    })
                    .collect()
            }
            None => {
                return Err(Status::invalid_argument(
                    "Invalid [target]: give a time or a snapshot",
                ));
            }
        };
        self.seek_to(&info, cursors).await?;
        Ok(Response::new(gpb::SeekResponse {}))
    }
}
