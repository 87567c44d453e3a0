//! The producer: records are routed to a partition, gathered per partition into batches
//! (sent when `batch_bytes_max` is reached or `linger_ms` passed), and sent by one task per
//! partition with one request in flight, so records of a partition keep their order. With
//! idempotence (the default) every batch carries the producer id and sequence, and any
//! retriable failure — even one whose outcome is unknown — is retried with the same sequence
//! until `delivery_timeout` passes: the broker answers a retry with the original offsets.
//! Records accepted but not yet answered are bounded in bytes (`buffer_bytes_max`): `send`
//! waits for room, so a producer faster than the cluster is slowed instead of growing.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use weir_proto::v1 as pb;
use weir_types::{BatchBuilder, Compression, Offset, ProducerEpoch, ProducerId, Record, Sequence};

use crate::error::ClientError;
use crate::metadata::Metadata;

/// Records queued per partition before `send` waits.
const QUEUE_MAX: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    None,
    Leader,
    All,
}

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub bootstrap: Vec<String>,
    /// How long a partition's batch waits for more records.
    pub linger_ms: u64,
    /// A batch is sent once its records reach this size.
    pub batch_bytes_max: usize,
    pub compression: Compression,
    pub acks: Acks,
    pub idempotence: bool,
    /// How long a record may take, retries included.
    pub delivery_timeout: Duration,
    /// Bytes of records accepted but not yet answered, over all partitions; `send` waits
    /// for room beyond it (Kafka's `buffer.memory`).
    pub buffer_bytes_max: usize,
    /// Batches in flight per partition, 1 to 5 (Kafka's `max.in.flight`); records keep their
    /// order. Without idempotence always 1.
    pub max_in_flight: usize,
}

impl ProducerConfig {
    pub fn new(bootstrap: Vec<String>) -> ProducerConfig {
        ProducerConfig {
            bootstrap,
            linger_ms: 5,
            batch_bytes_max: 256 * 1024,
            compression: Compression::None,
            acks: Acks::All,
            idempotence: true,
            delivery_timeout: Duration::from_secs(30),
            buffer_bytes_max: 32 << 20,
            max_in_flight: 5,
        }
    }
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMetadata {
    pub partition: u32,
    /// `None` with `Acks::None`.
    pub offset: Option<Offset>,
}

/// Resolves when the record is acknowledged (or failed for good).
pub struct DeliveryFuture(oneshot::Receiver<Result<RecordMetadata, ClientError>>);

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ClientError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed)))
    }
}

enum Item {
    /// A record, its answer, and its room in the buffer (released once answered).
    Record(
        Record,
        oneshot::Sender<Result<RecordMetadata, ClientError>>,
        OwnedSemaphorePermit,
    ),
    Flush(oneshot::Sender<()>),
}

/// The queue of each (topic, partition) this producer has sent to.
type PartitionQueues = HashMap<(String, u32), mpsc::Sender<Item>>;

struct Shared {
    config: ProducerConfig,
    metadata: Metadata,
    /// One permit per byte of `buffer_bytes_max`.
    buffer: Arc<Semaphore>,
}

/// A batching, idempotent producer. Cheap to clone; all clones share partitions and batches.
#[derive(Clone)]
pub struct Producer {
    shared: Arc<Shared>,
    partitions: Arc<Mutex<PartitionQueues>>,
    sticky: Arc<Mutex<HashMap<String, (u32, usize)>>>,
}

impl Producer {
    pub fn new(config: ProducerConfig) -> Result<Producer, ClientError> {
        if config.bootstrap.is_empty() {
            return Err(ClientError::Invalid {
                field: "bootstrap".into(),
                reason: "no address given".into(),
            });
        }
        if config.batch_bytes_max == 0 {
            return Err(ClientError::Invalid {
                field: "batch_bytes_max".into(),
                reason: "must be positive".into(),
            });
        }
        if !(1..=5).contains(&config.max_in_flight) {
            return Err(ClientError::Invalid {
                field: "max_in_flight".into(),
                reason: format!(
                    "{} is outside 1..=5 (the broker remembers 5 batches per producer)",
                    config.max_in_flight
                ),
            });
        }
        if config.buffer_bytes_max < config.batch_bytes_max
            || config.buffer_bytes_max > Semaphore::MAX_PERMITS
        {
            return Err(ClientError::Invalid {
                field: "buffer_bytes_max".into(),
                reason: format!(
                    "must be at least batch_bytes_max ({}) and at most {}",
                    config.batch_bytes_max,
                    Semaphore::MAX_PERMITS
                ),
            });
        }
        Ok(Producer {
            shared: Arc::new(Shared {
                metadata: Metadata::new(config.bootstrap.clone()),
                buffer: Arc::new(Semaphore::new(config.buffer_bytes_max)),
                config,
            }),
            partitions: Arc::new(Mutex::new(HashMap::new())),
            sticky: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Queues `record` for `topic`; a keyed record always goes to the same partition
    /// (`partition` overrides). The returned future resolves with its offset.
    pub async fn send(
        &self,
        topic: &str,
        partition: Option<u32>,
        record: Record,
    ) -> Result<DeliveryFuture, ClientError> {
        let metadata = &self.shared.metadata;
        let mut count = metadata.route(topic, false).await?.leaders.len() as u32;
        if partition.is_some_and(|p| p >= count) {
            // partitions may have been added since the route was cached
            count = metadata.route(topic, true).await?.leaders.len() as u32;
        }
        if count == 0 {
            return Err(ClientError::Invalid {
                field: "topic".into(),
                reason: format!("{topic} has no partitions"),
            });
        }
        let partition = match (partition, &record.key) {
            (Some(p), _) if p >= count => {
                return Err(ClientError::Invalid {
                    field: "partition".into(),
                    reason: format!("{topic} has {count} partitions"),
                });
            }
            (Some(p), _) => p,
            (None, Some(key)) => crc32c::crc32c(key) % count,
            (None, None) => {
                self.sticky_partition(topic, count, record_size(&record))
                    .await
            }
        };
        let size = record_size(&record);
        let room = u32::try_from(size)
            .ok()
            .filter(|n| *n as usize <= self.shared.config.buffer_bytes_max)
            .ok_or_else(|| ClientError::Invalid {
                field: "record".into(),
                reason: format!(
                    "{size} bytes do not fit in buffer_bytes_max ({})",
                    self.shared.config.buffer_bytes_max
                ),
            })?;
        let permit = Arc::clone(&self.shared.buffer)
            .acquire_many_owned(room)
            .await
            .map_err(|_| ClientError::Closed)?;
        let sender = self.partition_sender(topic, partition).await;
        let (tx, rx) = oneshot::channel();
        sender
            .send(Item::Record(record, tx, permit))
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(DeliveryFuture(rx))
    }

    /// Sends every queued batch now and waits until they are answered.
    pub async fn flush(&self) {
        let senders: Vec<mpsc::Sender<Item>> =
            self.partitions.lock().await.values().cloned().collect();
        for sender in senders {
            let (tx, rx) = oneshot::channel();
            if sender.send(Item::Flush(tx)).await.is_ok() {
                let _ = rx.await;
            }
        }
    }

    /// Keyless records stick to one partition until a batch's worth went there.
    async fn sticky_partition(&self, topic: &str, count: u32, size: usize) -> u32 {
        let mut sticky = self.sticky.lock().await;
        let seed = (std::process::id() + topic.len() as u32) % count;
        let entry = sticky.entry(topic.to_string()).or_insert((seed, 0));
        if entry.1 >= self.shared.config.batch_bytes_max {
            *entry = ((entry.0 + 1) % count, 0);
        }
        entry.1 += size;
        entry.0
    }

    async fn partition_sender(&self, topic: &str, partition: u32) -> mpsc::Sender<Item> {
        let mut partitions = self.partitions.lock().await;
        partitions
            .entry((topic.to_string(), partition))
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUE_MAX);
                tokio::spawn(run_partition(
                    Arc::clone(&self.shared),
                    topic.to_string(),
                    partition,
                    rx,
                ));
                tx
            })
            .clone()
    }
}

fn record_size(r: &Record) -> usize {
    16 + r.key.as_ref().map_or(0, |k| k.len())
        + r.value.as_ref().map_or(0, |v| v.len())
        + r.headers
            .iter()
            .map(|h| h.key.len() + h.value.as_ref().map_or(0, |v| v.len()))
            .sum::<usize>()
}

type Waiter = oneshot::Sender<Result<RecordMetadata, ClientError>>;

/// What one partition collected for its next batch.
#[derive(Default)]
struct Gathered {
    records: Vec<Record>,
    waiters: Vec<Waiter>,
    flushes: Vec<oneshot::Sender<()>>,
    bytes: usize,
    /// Dropped (room released) after the records are answered.
    room: Vec<OwnedSemaphorePermit>,
}

impl Gathered {
    fn push(&mut self, item: Item) {
        match item {
            Item::Record(r, w, permit) => {
                self.bytes += record_size(&r);
                self.records.push(r);
                self.waiters.push(w);
                self.room.push(permit);
            }
            Item::Flush(f) => self.flushes.push(f),
        }
    }
}

/// A batch sent and not yet answered.
struct InFlight {
    task: tokio::task::JoinHandle<Result<Option<Offset>, ClientError>>,
    records: Arc<Vec<Record>>,
    waiters: Vec<Waiter>,
    /// Answered after this batch (and so after every earlier one).
    flushes: Vec<oneshot::Sender<()>>,
    _room: Vec<OwnedSemaphorePermit>,
    producer: Option<(ProducerId, ProducerEpoch)>,
    sequence: i32,
    deadline: tokio::time::Instant,
}

/// Times one batch is sent again after `OUT_OF_ORDER_SEQUENCE` before it fails.
const RESENDS_MAX: u32 = 8;

/// One partition's sender: gathers records into batches and keeps up to `max_in_flight`
/// of them in flight, answering them in order.
///
/// Order with several in flight rests on the broker's sequence check: a batch that reaches
/// the leader before its predecessor is refused with `OUT_OF_ORDER_SEQUENCE`, never
/// appended. Answers are handled oldest first; such a batch is then sent again, alone and
/// awaited, once everything before it is settled — with the same sequence if its
/// predecessors were appended, or under a fresh producer id if one of them failed. After any
/// failure nothing new is sent until every batch in flight is settled, so a batch sent again
/// never overtakes a newer one.
struct PartitionSender {
    shared: Arc<Shared>,
    topic: String,
    partition: u32,
    producer: Option<(ProducerId, ProducerEpoch)>,
    sequence: i32,
    in_flight: std::collections::VecDeque<InFlight>,
    /// Set by a failure; cleared once nothing is in flight.
    draining: bool,
}

impl PartitionSender {
    fn max_in_flight(&self) -> usize {
        if self.shared.config.idempotence {
            self.shared.config.max_in_flight
        } else {
            1 // without sequences a retry could overtake a newer batch
        }
    }

    fn can_send(&self) -> bool {
        !self.draining && self.in_flight.len() < self.max_in_flight()
    }

    /// The producer id to send under, asked for when there is none.
    async fn ensure_producer(
        &mut self,
    ) -> Result<Option<(ProducerId, ProducerEpoch)>, ClientError> {
        if self.shared.config.idempotence && self.producer.is_none() {
            let p = init_producer(&self.shared, &self.topic, self.partition).await?;
            self.producer = Some(p);
            self.sequence = 0;
        }
        Ok(self.producer)
    }

    fn next_sequence(&mut self, count: usize) -> i32 {
        let seq = self.sequence;
        self.sequence = seq.wrapping_add(count as i32) & i32::MAX;
        seq
    }

    /// Sends what was gathered (it must hold records).
    async fn send(&mut self, gathered: Gathered) {
        let Gathered {
            records,
            waiters,
            flushes,
            room,
            ..
        } = gathered;
        let producer = match self.ensure_producer().await {
            Ok(p) => p,
            Err(e) => {
                for w in waiters {
                    let _ = w.send(Err(e.clone()));
                }
                self.answer_flushes(flushes);
                return;
            }
        };
        let sequence = self.next_sequence(records.len());
        let records = Arc::new(records);
        let deadline = tokio::time::Instant::now() + self.shared.config.delivery_timeout;
        let task = self.spawn_send(&records, producer, sequence, deadline);
        self.in_flight.push_back(InFlight {
            task,
            records,
            waiters,
            flushes,
            _room: room,
            producer,
            sequence,
            deadline,
        });
    }

    fn spawn_send(
        &self,
        records: &Arc<Vec<Record>>,
        producer: Option<(ProducerId, ProducerEpoch)>,
        sequence: i32,
        deadline: tokio::time::Instant,
    ) -> tokio::task::JoinHandle<Result<Option<Offset>, ClientError>> {
        let (shared, topic, partition) =
            (Arc::clone(&self.shared), self.topic.clone(), self.partition);
        let records = Arc::clone(records);
        tokio::spawn(async move {
            send_batch(
                &shared, &topic, partition, &records, producer, sequence, deadline,
            )
            .await
        })
    }

    /// Flushes wait for everything sent before them.
    fn answer_flushes(&mut self, flushes: Vec<oneshot::Sender<()>>) {
        match self.in_flight.back_mut() {
            Some(last) => last.flushes.extend(flushes),
            None => {
                for f in flushes {
                    let _ = f.send(());
                }
            }
        }
    }

    /// Settles the oldest batch in flight, given its answer.
    async fn settle(
        &mut self,
        mut entry: InFlight,
        mut result: Result<Option<Offset>, ClientError>,
    ) {
        let mut resends = 0;
        loop {
            match result {
                Err(e)
                    if e.code() == Some(weir_types::ErrorCode::OutOfOrderSequence)
                        && entry.producer.is_some()
                        && resends < RESENDS_MAX
                        && tokio::time::Instant::now() < entry.deadline =>
                {
                    // it reached the leader before a predecessor, which is settled now
                    resends += 1;
                    if entry.producer != self.producer {
                        // a predecessor failed and the producer id was replaced: this batch
                        // was never appended, so it takes the next sequence of the new id
                        match self.ensure_producer().await {
                            Ok(p) => {
                                entry.producer = p;
                                entry.sequence = self.next_sequence(entry.records.len());
                            }
                            Err(e) => {
                                result = Err(e);
                                continue;
                            }
                        }
                    }
                    tracing::debug!(topic = %self.topic, partition = self.partition, sequence = entry.sequence, "sending a batch again after a predecessor");
                    let task = self.spawn_send(
                        &entry.records,
                        entry.producer,
                        entry.sequence,
                        entry.deadline,
                    );
                    result = task.await.unwrap_or_else(|e| {
                        Err(ClientError::Unavailable(format!("send task failed: {e}")))
                    });
                }
                Ok(base) => {
                    for (i, w) in std::mem::take(&mut entry.waiters).into_iter().enumerate() {
                        let _ = w.send(Ok(RecordMetadata {
                            partition: self.partition,
                            offset: base.map(|b| b.plus(i as i64)),
                        }));
                    }
                    break;
                }
                Err(e) => {
                    // The batch's fate may be unknown: a new producer id keeps later batches
                    // from being mistaken for it, and nothing new is sent until the batches
                    // in flight are settled.
                    if entry.producer.is_some() && entry.producer == self.producer {
                        self.producer = None;
                    }
                    self.draining = true;
                    for w in std::mem::take(&mut entry.waiters) {
                        let _ = w.send(Err(e.clone()));
                    }
                    break;
                }
            }
        }
        for f in std::mem::take(&mut entry.flushes) {
            let _ = f.send(());
        }
        if self.in_flight.is_empty() {
            self.draining = false;
        }
    }
}

/// One partition: gather, send (up to `max_in_flight` batches at once), answer, in order.
async fn run_partition(
    shared: Arc<Shared>,
    topic: String,
    partition: u32,
    mut rx: mpsc::Receiver<Item>,
) {
    let linger = Duration::from_millis(shared.config.linger_ms);
    let batch_bytes_max = shared.config.batch_bytes_max;
    let mut sender = PartitionSender {
        shared,
        topic,
        partition,
        producer: None,
        sequence: 0,
        in_flight: std::collections::VecDeque::new(),
        draining: false,
    };
    let mut gathered = Gathered::default();
    let mut linger_until: Option<tokio::time::Instant> = None;
    let mut open = true;
    loop {
        let full = gathered.bytes >= batch_bytes_max;
        let flushing = !gathered.flushes.is_empty();
        // send now: a full batch, or one a flush is waiting for
        if !gathered.records.is_empty() && (full || flushing) && sender.can_send() {
            sender.send(std::mem::take(&mut gathered)).await;
            linger_until = None;
            continue;
        }
        if gathered.records.is_empty() && flushing {
            let flushes = std::mem::take(&mut gathered.flushes);
            sender.answer_flushes(flushes);
            continue;
        }
        if !open && gathered.records.is_empty() && sender.in_flight.is_empty() {
            return;
        }
        let lingering = !gathered.records.is_empty() && sender.can_send();
        let wake = linger_until.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            biased;
            result = async {
                match sender.in_flight.front_mut() {
                    Some(front) => (&mut front.task).await,
                    None => std::future::pending().await,
                }
            }, if !sender.in_flight.is_empty() => {
                let result = result.unwrap_or_else(|e| {
                    Err(ClientError::Unavailable(format!("send task failed: {e}")))
                });
                if let Some(entry) = sender.in_flight.pop_front() {
                    sender.settle(entry, result).await;
                }
            }
            _ = tokio::time::sleep_until(wake), if lingering => {
                sender.send(std::mem::take(&mut gathered)).await;
                linger_until = None;
            }
            item = rx.recv(), if open && !full && !flushing => match item {
                Some(item) => {
                    if gathered.records.is_empty() && matches!(item, Item::Record(..)) {
                        linger_until = Some(tokio::time::Instant::now() + linger);
                    }
                    gathered.push(item);
                }
                None => {
                    open = false;
                    // closing: what is gathered goes without waiting for the linger
                    if !gathered.records.is_empty() {
                        linger_until = Some(tokio::time::Instant::now());
                    }
                }
            },
            else => {
                // nothing to wait for but the draining batches' room: they are awaited above
                tokio::task::yield_now().await;
            }
        }
    }
}

async fn init_producer(
    shared: &Shared,
    topic: &str,
    partition: u32,
) -> Result<(ProducerId, ProducerEpoch), ClientError> {
    let deadline = tokio::time::Instant::now() + shared.config.delivery_timeout;
    let r = shared
        .metadata
        .call_leader(topic, partition, true, deadline, |mut client| async move {
            client.init_producer_id(pb::InitProducerIdRequest {}).await
        })
        .await?;
    Ok((
        ProducerId(r.producer_id),
        ProducerEpoch(r.producer_epoch as i16),
    ))
}

/// Sends one batch until it is acknowledged, a final error, or the delivery timeout.
async fn send_batch(
    shared: &Shared,
    topic: &str,
    partition: u32,
    records: &[Record],
    producer: Option<(ProducerId, ProducerEpoch)>,
    sequence: i32,
    deadline: tokio::time::Instant,
) -> Result<Option<Offset>, ClientError> {
    let mut builder = BatchBuilder::new(shared.config.compression);
    if let Some((id, epoch)) = producer {
        builder = builder.producer(id, epoch, Sequence(sequence));
    }
    for r in records {
        builder.push(r.clone());
    }
    let batch: pb::RecordBatch = builder
        .build()
        .map_err(|e| ClientError::Invalid {
            field: "records".into(),
            reason: e.to_string(),
        })?
        .into();
    let acks = match shared.config.acks {
        Acks::None => pb::Acks::None,
        Acks::Leader => pb::Acks::Leader,
        Acks::All => pb::Acks::All,
    };
    let r = shared
        .metadata
        .call_leader(
            topic,
            partition,
            producer.is_some(),
            deadline,
            |mut client| {
                let request = pb::ProduceRequest {
                    topic: topic.to_string(),
                    partition,
                    acks: acks as i32,
                    leader_epoch: None,
                    batch: Some(batch.clone()),
                    records: Vec::new(),
                };
                async move { client.produce(request).await }
            },
        )
        .await?;
    Ok((r.base_offset >= 0).then_some(Offset(r.base_offset)))
}
