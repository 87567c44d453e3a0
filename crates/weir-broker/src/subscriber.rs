//! Subscriptions served by the partition leader: per (subscription, partition) a [`Leases`]
//! state, loaded from the controllers' stored cursor the first time it is needed under a
//! leader epoch, and stored back by [`run_committer`] every `COMMIT_INTERVAL` (coalesced: one
//! request for every changed cursor). A failover therefore redelivers at most the unacked
//! messages and the acks of the last interval; with exactly-once delivery an ack is stored
//! before it is confirmed, so none of those.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use weir_proto::internal::v1 as ipb;
use weir_proto::internal::v1::subscription_cursors_client::SubscriptionCursorsClient;
use weir_proto::v1 as pb;
use weir_types::subscription::{Cursor, SubscriptionSpec};
use weir_types::{ErrorCode, LeaderEpoch, Offset};

use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::lease::{Delivered, Leases, Policy};
use crate::replica::Replica;

/// How long a loaded definition is used before it is read again (updates to the ack
/// deadline or retry policy, deletion).
pub const SPEC_REFRESH: Duration = Duration::from_secs(5);
/// How often changed cursors are stored.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// Leased plus waiting messages per subscription and partition (about 270 bytes each,
/// measured by `sub-bench`).
pub const OUTSTANDING_MAX: usize = 1_000_000;
/// Most messages one pull returns.
pub const PULL_MESSAGES_MAX: u32 = 10_000;
const CONTROLLER_PATIENCE: Duration = Duration::from_secs(5);

/// One subscription's state in one partition this broker leads.
pub struct Entry {
    pub subscription: String,
    pub topic: String,
    pub partition: u32,
    pub uid: u64,
    pub leader_epoch: LeaderEpoch,
    /// The definition and when it was read.
    spec: Mutex<(SubscriptionSpec, Instant)>,
    /// The parsed `spec.filter` (Google's syntax is immutable after creation).
    filter: Option<weir_types::filter::SubscriptionFilter>,
    leases: Mutex<Leases>,
    /// Pinged when a nack makes something deliverable.
    changed: Notify,
    /// The records of the last log read, for the next pulls: a read returns whole batches
    /// (a producer's batch may hold thousands of records) and a pull may want a few.
    read_cache: Mutex<ReadCache>,
    /// (cursor low, its record's timestamp), for the oldest-unacked gauge.
    oldest: Mutex<Option<(i64, i64)>>,
}

/// A record as a subscription filter reads it: headers are the attributes.
struct FilterInput<'a> {
    entry: &'a Entry,
    offset: i64,
    record: Option<&'a pb::Record>,
}

impl FilterInput<'_> {
    fn headers(&self) -> impl Iterator<Item = (&str, std::borrow::Cow<'_, str>)> {
        self.record
            .map(|r| r.headers.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|h| {
                (
                    h.key.as_str(),
                    String::from_utf8_lossy(h.value.as_deref().unwrap_or_default()),
                )
            })
    }
}

impl weir_types::filter::Message for FilterInput<'_> {
    fn attribute(&self, key: &str) -> Option<String> {
        self.headers()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.into_owned())
    }

    fn event(&self) -> std::collections::BTreeMap<String, String> {
        let headers: Vec<(&str, std::borrow::Cow<'_, str>)> = self.headers().collect();
        weir_types::pubsub::cloudevent(
            headers.iter().map(|(k, v)| (*k, v.as_ref())),
            &weir_types::pubsub::message_id(self.entry.partition, self.offset),
            &self.entry.topic,
            self.record.map_or(0, |r| r.timestamp_ms),
        )
    }
}

impl Entry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a record passes the subscription's filter (attributes are its headers).
    fn passes(&self, offset: i64, record: Option<&pb::Record>) -> bool {
        let Some(f) = &self.filter else {
            return true;
        };
        f.matches(&FilterInput {
            entry: self,
            offset,
            record,
        })
    }

    pub fn spec(&self) -> SubscriptionSpec {
        self.spec
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    fn fresh(&self) -> bool {
        self.spec
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .elapsed()
            < SPEC_REFRESH
    }

    /// A newer definition of the same subscription: its policy applies from now on.
    fn refresh(&self, spec: SubscriptionSpec) {
        self.lock().set_policy(policy(&spec));
        *self.spec.lock().unwrap_or_else(|p| p.into_inner()) = (spec, Instant::now());
    }
}

fn policy(spec: &SubscriptionSpec) -> Policy {
    Policy {
        ordered: spec.enable_message_ordering,
        serial: spec.enable_message_ordering && spec.push.is_some(),
        exactly_once: spec.enable_exactly_once_delivery,
        retry_minimum_backoff: Duration::from_millis(spec.retry_minimum_backoff_ms),
        retry_maximum_backoff: Duration::from_millis(spec.retry_maximum_backoff_ms),
        outstanding_max: OUTSTANDING_MAX,
    }
}

type Key = (String, u32);

pub struct Subscriber {
    config: BrokerConfig,
    entries: Mutex<HashMap<Key, Arc<Entry>>>,
    /// Bytes held by the entries' read caches, bounded by `read_cache_bytes_max`.
    cached_bytes: Arc<std::sync::atomic::AtomicUsize>,
}

/// What all read caches of a broker hold at most: 256 MiB, or an eighth of the memory the
/// process's cgroup may use when that is less (a container's limit).
fn read_cache_bytes_max() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        let limit = crate::memory::cgroup_limit_bytes();
        let max = limit.map_or(256 << 20, |l| (l / 8).min(256 << 20) as usize);
        tracing::info!(cgroup_limit = ?limit, read_cache_bytes_max = max, "read cache bound");
        max
    })
}

fn stored_bytes(records: &[pb::StoredRecord]) -> usize {
    records
        .iter()
        .map(|r| 32 + r.record.as_ref().map_or(0, record_bytes))
        .sum()
}

/// One entry's cached read; what it holds counts against the broker's budget until it is
/// replaced or the entry goes.
struct ReadCache {
    budget: Arc<std::sync::atomic::AtomicUsize>,
    records: Option<Arc<Vec<pb::StoredRecord>>>,
}

impl ReadCache {
    fn clear(&mut self) {
        if let Some(old) = self.records.take() {
            self.budget
                .fetch_sub(stored_bytes(&old), std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Drop for ReadCache {
    fn drop(&mut self) {
        self.clear();
    }
}

impl Subscriber {
    /// The cached records of `entry`'s last read if they hold `from`.
    fn cached_read(&self, entry: &Entry, from: i64) -> Option<Arc<Vec<pb::StoredRecord>>> {
        let cache = entry.read_cache.lock().unwrap_or_else(|p| p.into_inner());
        let records = cache.records.as_ref()?;
        let (first, last) = (records.first()?.offset, records.last()?.offset);
        (first <= from && from <= last).then(|| Arc::clone(records))
    }

    /// Keeps `records` as `entry`'s read cache (in place of the last), within the broker's
    /// budget; returns them.
    fn cache_read(
        &self,
        entry: &Entry,
        records: Vec<pb::StoredRecord>,
    ) -> Arc<Vec<pb::StoredRecord>> {
        use std::sync::atomic::Ordering;
        let records = Arc::new(records);
        let mut cache = entry.read_cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.clear();
        let size = stored_bytes(&records);
        if self.cached_bytes.load(Ordering::Relaxed) + size <= read_cache_bytes_max() {
            self.cached_bytes.fetch_add(size, Ordering::Relaxed);
            cache.records = Some(Arc::clone(&records));
        }
        records
    }
}

fn controller_error(e: weir_proto::call::CallError) -> BrokerError {
    match e {
        weir_proto::call::CallError::Status(s) => BrokerError::Remote {
            code: weir_proto::status::error_code(&s).unwrap_or(ErrorCode::Unknown),
            message: s.message().to_string(),
        },
        other => BrokerError::Remote {
            code: ErrorCode::NotController,
            message: other.to_string(),
        },
    }
}

/// What one pull produced.
pub struct Pulled {
    pub deliveries: Vec<pb::Delivery>,
    pub available: bool,
    pub exactly_once: bool,
}

impl Subscriber {
    pub fn new(config: BrokerConfig) -> Subscriber {
        Subscriber {
            config,
            entries: Mutex::new(HashMap::new()),
            cached_bytes: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Entry>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state of `subscription` in this partition under the replica's current leader
    /// epoch, loaded from the controllers when there is none yet.
    pub async fn entry(
        &self,
        replica: &Replica,
        subscription: &str,
    ) -> Result<Arc<Entry>, BrokerError> {
        let epoch = replica.leadership().leader_epoch;
        let key = (subscription.to_string(), replica.partition);
        let known = self
            .entries()
            .get(&key)
            .filter(|e| e.leader_epoch == epoch && e.topic == replica.topic)
            .cloned();
        if let Some(e) = &known
            && e.fresh()
        {
            return Ok(Arc::clone(e));
        }
        let request = ipb::LoadCursorRequest {
            subscription: subscription.to_string(),
            partition: replica.partition,
        };
        let loaded = weir_proto::call::with_internal_controller(
            &self.config.controllers,
            CONTROLLER_PATIENCE,
            |ch| {
                let request = request.clone();
                async move {
                    SubscriptionCursorsClient::new(ch)
                        .load_cursor(request)
                        .await
                }
            },
        )
        .await
        .map_err(|e| {
            let e = controller_error(e);
            if e.code() == ErrorCode::SubscriptionNotFound {
                self.entries().remove(&key);
            }
            e
        })?
        .into_inner();
        let description = loaded.subscription.ok_or_else(|| {
            BrokerError::Task("load_cursor answered without a subscription".into())
        })?;
        let spec: SubscriptionSpec = description
            .spec
            .ok_or_else(|| BrokerError::Task("load_cursor answered without a spec".into()))?
            .into();
        if spec.topic != replica.topic {
            return Err(BrokerError::invalid(
                "topic",
                format!(
                    "subscription {subscription:?} is on topic {:?}, not {:?}",
                    spec.topic, replica.topic
                ),
            ));
        }
        if let Some(e) = known
            && e.uid == description.uid
        {
            // the same subscription under the same epoch: keep its leases, take the new spec
            e.refresh(spec);
            return Ok(e);
        }
        let cursor = match loaded.cursor {
            Some(c) => {
                let c = Cursor::from(c);
                c.validate()
                    .map_err(|e| BrokerError::Corrupt(format!("stored cursor: {e}")))?;
                c
            }
            None => Cursor::at(replica.log.start_offset().0),
        };
        let entry = Arc::new(Entry {
            subscription: subscription.to_string(),
            topic: replica.topic.clone(),
            partition: replica.partition,
            uid: description.uid,
            leader_epoch: epoch,
            leases: Mutex::new(Leases::new(&cursor, policy(&spec))),
            filter: (!spec.filter.is_empty())
                .then(|| weir_types::filter::SubscriptionFilter::parse(&spec.filter))
                .transpose()
                .map_err(|e| BrokerError::Corrupt(format!("stored filter: {e}")))?,
            spec: Mutex::new((spec, Instant::now())),
            changed: Notify::new(),
            oldest: Mutex::new(None),
            read_cache: Mutex::new(ReadCache {
                budget: Arc::clone(&self.cached_bytes),
                records: None,
            }),
        });
        let mut entries = self.entries();
        match entries.get(&key) {
            // another request loaded it meanwhile
            Some(e) if e.leader_epoch == epoch && e.uid == entry.uid => Ok(Arc::clone(e)),
            _ => {
                entries.insert(key, Arc::clone(&entry));
                Ok(entry)
            }
        }
    }

    /// Leases up to `max_messages` (redeliveries first), waiting up to `wait` for some.
    pub async fn pull(
        &self,
        replica: &Arc<Replica>,
        entry: &Arc<Entry>,
        max_messages: u32,
        max_bytes: usize,
        wait: Duration,
        ack_deadline: Duration,
    ) -> Result<Pulled, BrokerError> {
        let wait_until = tokio::time::Instant::now() + wait;
        let mut hw_changes = replica.subscribe_high_watermark();
        let exactly_once = entry.spec().enable_exactly_once_delivery;
        loop {
            // listening before looking: a change between the look and the wait still wakes
            let changed = entry.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = Instant::now();
            let hw = replica.high_watermark();
            let start = replica.log.start_offset();
            let (redeliveries, fresh, room, wake) = {
                let mut l = entry.lock();
                if l.low() < start.0 {
                    // retention removed messages never acknowledged: they are gone
                    l.seek(&Cursor::at(start.0));
                }
                l.expire(now);
                if max_messages == 0 {
                    if l.deliverable(now, hw.0) {
                        return Ok(Pulled {
                            deliveries: Vec::new(),
                            available: true,
                            exactly_once,
                        });
                    }
                    (Vec::new(), None, 0, l.next_wake())
                } else {
                    let deadline = now + ack_deadline;
                    let redeliveries = l.take_redeliveries(now, max_messages as usize, deadline);
                    let room = (max_messages as usize - redeliveries.len()).min(l.fresh_room());
                    let fresh = l.fresh_from().filter(|n| room > 0 && *n < hw.0);
                    (redeliveries, fresh, room, l.next_wake())
                }
            };
            let mut deliveries = Vec::new();
            // filtered-out messages were passed over: read on at once rather than wait
            let mut passed_over = false;
            if !redeliveries.is_empty() {
                deliveries.extend(read_offsets(replica, &redeliveries, hw).await?);
            }
            if let Some(from) = fresh {
                let log = Arc::clone(&replica.log);
                let budget = max_bytes.saturating_sub(
                    deliveries
                        .iter()
                        .map(|d: &pb::Delivery| d.record.as_ref().map_or(0, record_bytes))
                        .sum(),
                );
                let read = match self.cached_read(entry, from) {
                    Some(r) => r,
                    None => {
                        let batches = tokio::task::spawn_blocking(move || {
                            log.read(Offset(from), budget.max(1), Some(hw))
                        })
                        .await??;
                        let mut decoded = Vec::new();
                        for batch in &batches {
                            decoded.extend(
                                weir_proto::convert::stored_records(batch)
                                    .map_err(|e| BrokerError::Corrupt(e.to_string()))?,
                            );
                        }
                        self.cache_read(entry, decoded)
                    }
                };
                let mut records = Vec::new();
                let mut read_end = from;
                let mut bytes = 0usize;
                for r in read.iter() {
                    if r.offset < from || r.offset >= hw.0 {
                        continue;
                    }
                    let size = r.record.as_ref().map_or(0, record_bytes);
                    if records.len() >= room || (!records.is_empty() && bytes + size > budget) {
                        break;
                    }
                    bytes += size;
                    read_end = r.offset + 1;
                    records.push(r.clone());
                }
                let read: Vec<(i64, bool)> = records
                    .iter()
                    .map(|r| (r.offset, entry.passes(r.offset, r.record.as_ref())))
                    .collect();
                let leased = {
                    let mut l = entry.lock();
                    l.lease_read(from, &read, read_end, Instant::now() + ack_deadline)
                };
                if let Some((leased, filtered)) = leased {
                    if filtered > 0 {
                        passed_over = true;
                        metrics::counter!("weir_subscription_filtered_total", "subscription" => entry.subscription.clone())
                            .increment(filtered as u64);
                    }
                    let mut by_offset: HashMap<i64, pb::StoredRecord> =
                        records.into_iter().map(|r| (r.offset, r)).collect();
                    for d in leased {
                        if let Some(r) = by_offset.remove(&d.offset) {
                            deliveries.push(pb::Delivery {
                                offset: d.offset,
                                attempt: d.attempt,
                                record: r.record,
                            });
                        }
                    }
                }
            }
            if !deliveries.is_empty() {
                metrics::counter!("weir_subscription_delivered_total")
                    .increment(deliveries.len() as u64);
                return Ok(Pulled {
                    deliveries,
                    available: true,
                    exactly_once,
                });
            }
            if passed_over {
                continue;
            }
            if tokio::time::Instant::now() >= wait_until {
                return Ok(Pulled {
                    deliveries,
                    available: false,
                    exactly_once,
                });
            }
            let wake_at = wake
                .map(|w| tokio::time::Instant::from_std(w).min(wait_until))
                .unwrap_or(wait_until);
            tokio::select! {
                _ = hw_changes.changed() => {}
                _ = &mut changed => {}
                _ = tokio::time::sleep_until(wake_at) => {}
            }
            if replica.leadership().leader_epoch != entry.leader_epoch {
                return Err(BrokerError::Closing);
            }
        }
    }

    /// Acknowledges; returns the leases that no longer held.
    pub async fn acknowledge(
        &self,
        entry: &Arc<Entry>,
        leases: &[Delivered],
    ) -> Result<Vec<Delivered>, BrokerError> {
        let now = Instant::now();
        let invalid: Vec<Delivered> = {
            let mut l = entry.lock();
            leases
                .iter()
                .filter(|d| !l.ack(d.offset, d.attempt, now))
                .copied()
                .collect::<Vec<_>>()
        };
        // an ack may be what a waiting pull needs: room under the outstanding bound, or the
        // next message of a serial partition
        entry.changed.notify_waiters();
        metrics::counter!("weir_subscription_acks_total").increment(leases.len() as u64);
        if entry.spec().enable_exactly_once_delivery {
            self.commit_now(entry).await?;
        }
        Ok(invalid)
    }

    /// New deadlines (0: nack); returns the leases that no longer held.
    pub fn modify(&self, entry: &Arc<Entry>, leases: &[Delivered], seconds: u32) -> Vec<Delivered> {
        let now = Instant::now();
        let invalid = {
            let mut l = entry.lock();
            leases
                .iter()
                .filter(|d| !l.modify(d.offset, d.attempt, seconds, now))
                .copied()
                .collect()
        };
        if seconds == 0 {
            entry.changed.notify_waiters();
        }
        invalid
    }

    /// Replaces the cursor and stores it.
    pub async fn seek(&self, entry: &Arc<Entry>, cursor: &Cursor) -> Result<(), BrokerError> {
        entry.lock().seek(cursor);
        entry.changed.notify_waiters();
        self.commit_now(entry).await
    }

    /// The cursor now, stored first.
    pub async fn cursor(&self, entry: &Arc<Entry>) -> Result<Cursor, BrokerError> {
        let cursor = entry.lock().cursor();
        entry.lock().mark_dirty();
        self.commit_now(entry).await?;
        Ok(cursor)
    }

    async fn commit_now(&self, entry: &Arc<Entry>) -> Result<(), BrokerError> {
        let Some(cursor) = entry.lock().take_dirty() else {
            return Ok(());
        };
        let results = self.commit(vec![(Arc::clone(entry), cursor)]).await?;
        match results.first() {
            Some(ipb::CommitResult::Stored) => Ok(()),
            Some(ipb::CommitResult::Gone) => Err(BrokerError::Remote {
                code: ErrorCode::SubscriptionNotFound,
                message: format!("subscription {:?} was deleted", entry.subscription),
            }),
            _ => Err(BrokerError::Closing),
        }
    }

    /// Stores cursors; entries whose commit was refused are forgotten (the subscription is
    /// gone, or this broker no longer leads the partition at that epoch). A failed request
    /// leaves them dirty for the next round.
    async fn commit(
        &self,
        batch: Vec<(Arc<Entry>, Cursor)>,
    ) -> Result<Vec<ipb::CommitResult>, BrokerError> {
        let request = ipb::CommitCursorsRequest {
            broker_id: self.config.id.0,
            commits: batch
                .iter()
                .map(|(e, c)| ipb::CursorCommit {
                    subscription: e.subscription.clone(),
                    uid: e.uid,
                    partition: e.partition,
                    leader_epoch: e.leader_epoch.0,
                    cursor: Some(c.into()),
                })
                .collect(),
        };
        let answer = weir_proto::call::with_internal_controller(
            &self.config.controllers,
            CONTROLLER_PATIENCE,
            |ch| {
                let request = request.clone();
                async move {
                    SubscriptionCursorsClient::new(ch)
                        .commit_cursors(request)
                        .await
                }
            },
        )
        .await;
        let results: Vec<ipb::CommitResult> = match answer {
            Ok(r) => r
                .into_inner()
                .results
                .into_iter()
                .map(|r| ipb::CommitResult::try_from(r).unwrap_or(ipb::CommitResult::Fenced))
                .collect(),
            Err(e) => {
                for (entry, _) in &batch {
                    entry.lock().mark_dirty();
                }
                return Err(controller_error(e));
            }
        };
        let mut entries = self.entries();
        for ((entry, _), result) in batch.iter().zip(&results) {
            if *result != ipb::CommitResult::Stored {
                let key = (entry.subscription.clone(), entry.partition);
                if entries.get(&key).is_some_and(|e| Arc::ptr_eq(e, entry)) {
                    entries.remove(&key);
                }
            }
        }
        Ok(results)
    }

    /// Forgets the state of partitions no longer led at the entry's epoch.
    fn sweep(&self, registry: &crate::registry::Registry) {
        let id = self.config.id;
        self.entries().retain(|_, e| {
            registry.get(&e.topic, e.partition).is_some_and(|r| {
                let lead = r.leadership();
                lead.leader == Some(id) && lead.leader_epoch == e.leader_epoch
            })
        });
    }

    /// Per subscription, for the metrics: backlog, outstanding, and the publish time of the
    /// oldest unacknowledged message (ms since the epoch; over all partitions led here).
    async fn gauges(&self, registry: &crate::registry::Registry) -> HashMap<String, Gauges> {
        let entries: Vec<Arc<Entry>> = self.entries().values().cloned().collect();
        let mut out: HashMap<String, Gauges> = HashMap::new();
        for e in entries {
            let Some(replica) = registry.get(&e.topic, e.partition) else {
                continue;
            };
            let hw = replica.high_watermark().0;
            let (backlog, outstanding, low) = {
                let l = e.lock();
                (l.backlog(hw), l.outstanding(), l.low())
            };
            let oldest = if backlog > 0 {
                oldest_timestamp(&replica, &e, low, hw).await
            } else {
                None
            };
            let slot = out.entry(e.subscription.clone()).or_default();
            slot.backlog += backlog;
            slot.outstanding += outstanding;
            slot.oldest_ms = match (slot.oldest_ms, oldest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        out
    }
}

#[derive(Debug, Default)]
struct Gauges {
    backlog: i64,
    outstanding: usize,
    oldest_ms: Option<i64>,
}

/// The timestamp of the first record at or past `low`, read once per cursor position.
async fn oldest_timestamp(replica: &Arc<Replica>, e: &Entry, low: i64, hw: i64) -> Option<i64> {
    if let Some((at, ts)) = *e.oldest.lock().unwrap_or_else(|p| p.into_inner())
        && at == low
    {
        return Some(ts);
    }
    let log = Arc::clone(&replica.log);
    let batches = tokio::task::spawn_blocking(move || log.read(Offset(low), 1, Some(Offset(hw))))
        .await
        .ok()?
        .ok()?;
    let ts = batches
        .iter()
        .filter_map(|b| weir_proto::convert::stored_records(b).ok())
        .flatten()
        .find(|r| r.offset >= low)
        .and_then(|r| r.record.map(|r| r.timestamp_ms))?;
    *e.oldest.lock().unwrap_or_else(|p| p.into_inner()) = Some((low, ts));
    Some(ts)
}

fn record_bytes(r: &pb::Record) -> usize {
    r.value.as_ref().map_or(0, |v| v.len())
        + r.key.as_ref().map_or(0, |k| k.len())
        + r.headers
            .iter()
            .map(|h| h.key.len() + h.value.as_ref().map_or(0, |v| v.len()))
            .sum::<usize>()
}

/// The records of redelivered offsets (ascending), read in as few reads as they allow.
async fn read_offsets(
    replica: &Arc<Replica>,
    wanted: &[Delivered],
    hw: Offset,
) -> Result<Vec<pb::Delivery>, BrokerError> {
    let log = Arc::clone(&replica.log);
    let wanted = wanted.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::with_capacity(wanted.len());
        let mut i = 0;
        while i < wanted.len() {
            let from = wanted[i].offset;
            let batches = log.read(Offset(from), 1 << 20, Some(hw))?;
            if batches.is_empty() {
                break;
            }
            let mut found = HashMap::new();
            for batch in &batches {
                for r in weir_proto::convert::stored_records(batch)
                    .map_err(|e| BrokerError::Corrupt(e.to_string()))?
                {
                    found.insert(r.offset, r);
                }
            }
            let before = i;
            while i < wanted.len() {
                let d = wanted[i];
                match found.remove(&d.offset) {
                    Some(r) => out.push(pb::Delivery {
                        offset: d.offset,
                        attempt: d.attempt,
                        record: r.record,
                    }),
                    None if d.offset < found.keys().copied().max().unwrap_or(i64::MIN) => {}
                    None => break,
                }
                i += 1;
            }
            if i == before {
                // the offset is not in the log (compacted away): skip it
                i += 1;
            }
        }
        Ok::<_, BrokerError>(out)
    })
    .await?
}

/// Stores changed cursors every `COMMIT_INTERVAL`, forgets partitions no longer led, and
/// publishes the subscription gauges.
pub async fn run_committer(
    subscriber: Arc<Subscriber>,
    registry: Arc<crate::registry::Registry>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut last_gauges = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(COMMIT_INTERVAL) => {}
            _ = stopped.wait_for(|s| *s) => break,
        }
        subscriber.flush().await;
        if last_gauges.elapsed() >= Duration::from_secs(1) {
            last_gauges = Instant::now();
            subscriber.sweep(&registry);
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            for (sub, g) in subscriber.gauges(&registry).await {
                metrics::gauge!("weir_subscription_backlog_messages", "subscription" => sub.clone())
                    .set(g.backlog as f64);
                metrics::gauge!("weir_subscription_outstanding_messages", "subscription" => sub.clone())
                    .set(g.outstanding as f64);
                let age = g
                    .oldest_ms
                    .map_or(0.0, |ts| (now_ms - ts).max(0) as f64 / 1000.0);
                metrics::gauge!("weir_subscription_oldest_unacked_message_age_seconds", "subscription" => sub)
                    .set(age);
            }
        }
    }
    // stopping: store what changed last
    subscriber.flush().await;
}

impl Subscriber {
    /// Stores every changed cursor in one request.
    pub async fn flush(&self) {
        let entries: Vec<Arc<Entry>> = self.entries().values().cloned().collect();
        let batch: Vec<(Arc<Entry>, Cursor)> = entries
            .into_iter()
            .filter_map(|e| {
                let c = e.lock().take_dirty()?;
                Some((e, c))
            })
            .collect();
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.commit(batch).await {
            tracing::warn!(error = %e, "storing subscription cursors failed; retrying");
        }
    }
}
