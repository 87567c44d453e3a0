//! The group consumer: joins a consumer group through the active controller, reads the
//! partitions the group assigns it, and commits its positions.
//!
//! A background task heartbeats; `poll` applies assignment changes in the caller's task, so
//! rebalance callbacks run between polls, as in Kafka: revoked partitions are committed (with
//! auto-commit) and handed to `on_revoked` before the next heartbeat reports them released;
//! added partitions resume from the group's committed offset, or from the reset policy when
//! the group has none.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use weir_proto::v1 as pb;
use weir_proto::v1::group_coordinator_client::GroupCoordinatorClient;
use weir_types::ErrorCode;

use crate::consumer::{Consumer, ConsumerConfig, ConsumerRecord, SeekTo};
use crate::controllers::Controllers;
use crate::error::ClientError;

/// A partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

impl From<pb::TopicPartition> for TopicPartition {
    fn from(p: pb::TopicPartition) -> Self {
        TopicPartition {
            topic: p.topic,
            partition: p.partition,
        }
    }
}

impl From<&TopicPartition> for pb::TopicPartition {
    fn from(p: &TopicPartition) -> Self {
        pb::TopicPartition {
            topic: p.topic.clone(),
            partition: p.partition,
        }
    }
}

/// Where a partition with no committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    Earliest,
    Latest,
    /// The first record at or after this time (ms since the epoch).
    Timestamp(i64),
}

#[derive(Debug, Clone)]
pub struct GroupConsumerConfig {
    pub consumer: ConsumerConfig,
    pub group: String,
    pub topics: Vec<String>,
    /// A full-match regex over topic names, instead of or besides `topics`.
    pub regex: Option<String>,
    /// Static membership: a restart with the same instance id within the session timeout
    /// keeps the partitions without a rebalance.
    pub instance_id: Option<String>,
    pub client_id: String,
    pub session_timeout: Duration,
    /// How long revoking partitions may take (the time between polls) before the member is
    /// removed from the group.
    pub rebalance_timeout: Duration,
    /// Commit positions this often from `poll`, and on every revocation; `None` to commit
    /// only by hand.
    pub auto_commit: Option<Duration>,
    pub offset_reset: OffsetReset,
    /// "uniform" (default) or "range".
    pub assignor: Option<String>,
}

impl GroupConsumerConfig {
    pub fn new(bootstrap: Vec<String>, group: &str, topics: &[&str]) -> GroupConsumerConfig {
        GroupConsumerConfig {
            consumer: ConsumerConfig::new(bootstrap),
            group: group.to_string(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            regex: None,
            instance_id: None,
            client_id: "weir-client".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(60),
            auto_commit: Some(Duration::from_secs(5)),
            offset_reset: OffsetReset::Latest,
            assignor: None,
        }
    }
}

/// Told about assignment changes, from inside `poll`.
pub trait RebalanceListener: Send {
    /// Partitions now read by this consumer (after their start offsets are set).
    fn on_assigned(&mut self, _partitions: &[TopicPartition]) {}
    /// Partitions given up in a rebalance (after their positions were committed, with
    /// auto-commit), before another member gets them.
    fn on_revoked(&mut self, _partitions: &[TopicPartition]) {}
    /// Partitions lost without a chance to commit: this member was fenced or timed out, and
    /// another member may already be reading them.
    fn on_lost(&mut self, partitions: &[TopicPartition]) {
        self.on_revoked(partitions);
    }
}

/// What the heartbeat task and `poll` share.
#[derive(Debug, Default)]
struct Membership {
    epoch: i32,
    /// The latest assignment from the controller.
    target: Option<BTreeSet<TopicPartition>>,
    /// What this consumer reads now; reported in heartbeats.
    owned: BTreeSet<TopicPartition>,
    /// The controller no longer knows this member at its epoch: `poll` drops everything,
    /// then the heartbeat task rejoins.
    fenced: bool,
    /// Set by `close`: send a leave heartbeat and stop.
    closing: bool,
}

struct Shared {
    member_id: String,
    state: Mutex<Membership>,
    /// Wakes the heartbeat task (owned set changed, fence handled, closing).
    wake: Notify,
    /// Wakes `poll` (new assignment or fenced).
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Membership> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

const CONTROLLER_PATIENCE: Duration = Duration::from_secs(10);

pub struct GroupConsumer {
    config: GroupConsumerConfig,
    consumer: Consumer,
    controllers: Arc<Controllers>,
    shared: Arc<Shared>,
    heartbeat: JoinHandle<()>,
    /// Next offset to deliver per owned partition.
    positions: BTreeMap<TopicPartition, i64>,
    committed: BTreeMap<TopicPartition, i64>,
    owned: BTreeSet<TopicPartition>,
    /// Behind a mutex only so the consumer is `Sync` (its futures are `Send`); it is only
    /// reached through `&mut self`.
    listener: Mutex<Option<Box<dyn RebalanceListener>>>,
    last_auto_commit: tokio::time::Instant,
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

fn random_member_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl GroupConsumer {
    /// Joins the group (in the background; partitions arrive through `poll`).
    pub fn new(config: GroupConsumerConfig) -> Result<GroupConsumer, ClientError> {
        let invalid = |field: &str, reason: &str| ClientError::Invalid {
            field: field.into(),
            reason: reason.into(),
        };
        if config.group.is_empty() {
            return Err(invalid("group", "must not be empty"));
        }
        if config.topics.is_empty() && config.regex.is_none() {
            return Err(invalid(
                "topics",
                "subscribe to at least one topic or a regex",
            ));
        }
        let consumer = Consumer::new(config.consumer.clone())?;
        let controllers = Arc::new(Controllers::new(config.consumer.bootstrap.clone()));
        let shared = Arc::new(Shared {
            member_id: random_member_id(),
            state: Mutex::new(Membership::default()),
            wake: Notify::new(),
            changed: Notify::new(),
        });
        let heartbeat = tokio::spawn(heartbeat_loop(
            config.clone(),
            Arc::clone(&controllers),
            Arc::clone(&shared),
        ));
        Ok(GroupConsumer {
            config,
            consumer,
            controllers,
            shared,
            heartbeat,
            positions: BTreeMap::new(),
            committed: BTreeMap::new(),
            owned: BTreeSet::new(),
            listener: Mutex::new(None),
            last_auto_commit: tokio::time::Instant::now(),
        })
    }

    pub fn set_listener(&mut self, listener: Box<dyn RebalanceListener>) {
        *self.listener.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(listener);
    }

    fn listener_mut(&mut self) -> Option<&mut Box<dyn RebalanceListener>> {
        self.listener
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
    }

    pub fn member_id(&self) -> &str {
        &self.shared.member_id
    }

    /// The partitions this consumer reads now.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.owned.iter().cloned().collect()
    }

    /// The member epoch of the last heartbeat answer.
    pub fn member_epoch(&self) -> i32 {
        self.shared.lock().epoch
    }

    /// Records from the assigned partitions, waiting up to `max_wait` for the first. Applies
    /// assignment changes (running the listener) and auto-commits first.
    pub async fn poll(&mut self, max_wait: Duration) -> Result<Vec<ConsumerRecord>, ClientError> {
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            self.reconcile().await?;
            if let Some(every) = self.config.auto_commit
                && self.last_auto_commit.elapsed() >= every
            {
                self.last_auto_commit = tokio::time::Instant::now();
                if let Err(e) = self.commit().await {
                    tracing::warn!(error = %e, "auto-commit failed");
                }
            }
            let now = tokio::time::Instant::now();
            let slice = deadline
                .saturating_duration_since(now)
                .min(Duration::from_millis(100));
            let records = tokio::select! {
                r = self.consumer.poll(slice) => r?,
                _ = self.shared.changed.notified() => Vec::new(),
            };
            let records: Vec<ConsumerRecord> = records
                .into_iter()
                .filter(|r| {
                    let tp = TopicPartition {
                        topic: r.topic.clone(),
                        partition: r.partition,
                    };
                    // records of a partition dropped meanwhile are not delivered
                    match self.positions.get_mut(&tp) {
                        Some(pos) if *pos <= r.offset.0 => {
                            *pos = r.offset.0 + 1;
                            true
                        }
                        _ => false,
                    }
                })
                .collect();
            if !records.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(records);
            }
        }
    }

    /// Applies what the heartbeat task learned: a fence, revocations, new partitions.
    async fn reconcile(&mut self) -> Result<(), ClientError> {
        let (fenced, target) = {
            let s = self.shared.lock();
            (s.fenced, s.target.clone())
        };
        if fenced {
            let lost: Vec<TopicPartition> = self.owned.iter().cloned().collect();
            self.drop_partitions(&lost);
            if !lost.is_empty()
                && let Some(l) = self.listener_mut()
            {
                l.on_lost(&lost);
            }
            {
                let mut s = self.shared.lock();
                s.fenced = false;
                s.target = None;
                s.owned.clear();
            }
            self.shared.wake.notify_one();
            return Ok(());
        }
        let Some(target) = target else {
            return Ok(());
        };
        if target == self.owned {
            return Ok(());
        }
        let revoked: Vec<TopicPartition> = self.owned.difference(&target).cloned().collect();
        if !revoked.is_empty() {
            if self.config.auto_commit.is_some()
                && let Err(e) = self.commit_partitions(&revoked).await
            {
                tracing::warn!(error = %e, "commit on revoke failed");
            }
            if let Some(l) = self.listener_mut() {
                l.on_revoked(&revoked);
            }
            self.drop_partitions(&revoked);
        }
        let added: Vec<TopicPartition> = target.difference(&self.owned).cloned().collect();
        if !added.is_empty() {
            let starts = self.start_offsets(&added).await?;
            for tp in &added {
                let start = match starts.get(tp) {
                    Some(o) => SeekTo::Offset(*o),
                    None => match self.config.offset_reset {
                        OffsetReset::Earliest => SeekTo::Beginning,
                        OffsetReset::Latest => SeekTo::End,
                        OffsetReset::Timestamp(t) => SeekTo::Timestamp(t),
                    },
                };
                let offset = self.consumer.seek(&tp.topic, tp.partition, start).await?;
                self.positions.insert(tp.clone(), offset);
                if let Some(c) = starts.get(tp) {
                    self.committed.insert(tp.clone(), *c);
                }
                self.owned.insert(tp.clone());
            }
            if let Some(l) = self.listener_mut() {
                l.on_assigned(&added);
            }
        }
        self.shared.lock().owned = self.owned.clone();
        self.shared.wake.notify_one();
        Ok(())
    }

    fn drop_partitions(&mut self, partitions: &[TopicPartition]) {
        for tp in partitions {
            self.consumer.unassign(&tp.topic, tp.partition);
            self.positions.remove(tp);
            self.committed.remove(tp);
            self.owned.remove(tp);
        }
    }

    /// The group's committed offsets for `partitions` (those that have one).
    async fn start_offsets(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, i64>, ClientError> {
        let request = pb::FetchOffsetsRequest {
            group: self.config.group.clone(),
            member_id: self.shared.member_id.clone(),
            member_epoch: self.member_epoch(),
            partitions: partitions.iter().map(Into::into).collect(),
        };
        let r = self
            .controllers
            .call(CONTROLLER_PATIENCE, |ch| {
                let request = request.clone();
                async move { GroupCoordinatorClient::new(ch).fetch_offsets(request).await }
            })
            .await?;
        Ok(r.offsets
            .into_iter()
            .map(|o| {
                (
                    TopicPartition {
                        topic: o.topic,
                        partition: o.partition,
                    },
                    o.offset,
                )
            })
            .collect())
    }

    /// The next offset `poll` delivers for each owned partition.
    pub fn positions(&self) -> BTreeMap<TopicPartition, i64> {
        self.positions.clone()
    }

    /// Commits the position of every owned partition that moved since its last commit, and
    /// waits until the controller has committed it.
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        let owned: Vec<TopicPartition> = self.owned.iter().cloned().collect();
        self.commit_partitions(&owned).await
    }

    async fn commit_partitions(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<(), ClientError> {
        let offsets: Vec<(TopicPartition, i64)> = partitions
            .iter()
            .filter_map(|tp| {
                let pos = *self.positions.get(tp)?;
                (self.committed.get(tp) != Some(&pos)).then(|| (tp.clone(), pos))
            })
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        self.commit_offsets(&offsets).await?;
        for (tp, o) in offsets {
            self.committed.insert(tp, o);
        }
        Ok(())
    }

    /// Commits the given offsets (the next offset to read, per partition).
    pub async fn commit_offsets(
        &self,
        offsets: &[(TopicPartition, i64)],
    ) -> Result<(), ClientError> {
        commit_request(&self.controllers, self.request(offsets)).await
    }

    /// Starts committing every owned partition's position; the handle resolves when the
    /// controller has committed it.
    pub fn commit_async(&mut self) -> JoinHandle<Result<(), ClientError>> {
        let offsets: Vec<(TopicPartition, i64)> = self
            .positions
            .iter()
            .filter(|(tp, pos)| self.committed.get(*tp) != Some(*pos))
            .map(|(tp, pos)| (tp.clone(), *pos))
            .collect();
        // counted as committed once sent: a failure leaves the next commit to repeat it
        for (tp, pos) in &offsets {
            self.committed.insert(tp.clone(), *pos);
        }
        let controllers = Arc::clone(&self.controllers);
        let request = self.request(&offsets);
        tokio::spawn(async move {
            if request.offsets.is_empty() {
                return Ok(());
            }
            commit_request(&controllers, request).await
        })
    }

    fn request(&self, offsets: &[(TopicPartition, i64)]) -> pb::CommitOffsetsRequest {
        pb::CommitOffsetsRequest {
            group: self.config.group.clone(),
            member_id: self.shared.member_id.clone(),
            member_epoch: self.member_epoch(),
            offsets: offsets
                .iter()
                .map(|(tp, o)| pb::OffsetAndMetadata {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    offset: *o,
                    metadata: String::new(),
                    commit_time_ms: 0,
                })
                .collect(),
        }
    }

    /// Commits (with auto-commit) and leaves the group, so its partitions move at once. A
    /// static member leaves temporarily: its partitions wait for it for a session timeout.
    pub async fn close(mut self) -> Result<(), ClientError> {
        if self.config.auto_commit.is_some() {
            self.commit().await?;
        }
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        let _ = tokio::time::timeout(CONTROLLER_PATIENCE, &mut self.heartbeat).await;
        Ok(())
    }
}

async fn commit_request(
    controllers: &Controllers,
    request: pb::CommitOffsetsRequest,
) -> Result<(), ClientError> {
    controllers
        .call(CONTROLLER_PATIENCE, |ch| {
            let request = request.clone();
            async move {
                GroupCoordinatorClient::new(ch)
                    .commit_offsets(request)
                    .await
            }
        })
        .await
        .map(|_| ())
}

async fn heartbeat_loop(
    config: GroupConsumerConfig,
    controllers: Arc<Controllers>,
    shared: Arc<Shared>,
) {
    let mut interval = Duration::from_millis(500);
    let mut joined = false;
    loop {
        let (epoch, owned, closing, fenced) = {
            let s = shared.lock();
            (s.epoch, s.owned.clone(), s.closing, s.fenced)
        };
        if fenced {
            // wait for poll to drop the partitions before rejoining
            shared.wake.notified().await;
            continue;
        }
        let leave_epoch = if config.instance_id.is_some() { -2 } else { -1 };
        let request = pb::ConsumerGroupHeartbeatRequest {
            group: config.group.clone(),
            member_id: shared.member_id.clone(),
            member_epoch: if closing { leave_epoch } else { epoch },
            instance_id: config.instance_id.clone().unwrap_or_default(),
            client_id: config.client_id.clone(),
            subscribed_topics: (!joined).then(|| pb::SubscribedTopics {
                topics: config.topics.clone(),
            }),
            subscribed_regex: if joined { None } else { config.regex.clone() },
            owned: Some(pb::OwnedPartitions {
                partitions: owned.iter().map(Into::into).collect(),
            }),
            rebalance_timeout_ms: config.rebalance_timeout.as_millis() as u32,
            session_timeout_ms: config.session_timeout.as_millis() as u32,
            assignor: config.assignor.clone().unwrap_or_default(),
        };
        let answer = controllers
            .call(config.session_timeout / 2, |ch| {
                let request = request.clone();
                async move {
                    GroupCoordinatorClient::new(ch)
                        .consumer_group_heartbeat(request)
                        .await
                }
            })
            .await;
        if closing {
            return;
        }
        match answer {
            Ok(r) => {
                joined = true;
                interval = Duration::from_millis(r.heartbeat_interval_ms.max(50).into());
                let target: BTreeSet<TopicPartition> =
                    r.assignment.into_iter().map(Into::into).collect();
                let mut s = shared.lock();
                s.epoch = r.member_epoch;
                if s.target.as_ref() != Some(&target) {
                    s.target = Some(target);
                    shared.changed.notify_one();
                }
            }
            Err(ClientError::Server {
                code: ErrorCode::FencedMemberEpoch | ErrorCode::UnknownMemberId,
                message,
            }) => {
                tracing::warn!(%message, "fenced from the group; rejoining");
                joined = false;
                let mut s = shared.lock();
                s.epoch = 0;
                s.fenced = true;
                shared.changed.notify_one();
                continue;
            }
            Err(e) => tracing::warn!(error = %e, "group heartbeat failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shared.wake.notified() => {}
        }
    }
}
