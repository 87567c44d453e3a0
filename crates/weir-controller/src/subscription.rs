//! Subscriptions and snapshots as a pure state machine, applied from the Raft log.
//!
//! A subscription's delivery state (leases, deadlines, attempts) lives with each partition's
//! leader; what is stored here is its definition and, per partition, the last cursor the
//! leader committed. Commits are fenced by the partition's leader epoch, judged at apply time
//! against the metadata: once a new leader epoch is committed, nothing the old leader sends
//! changes the cursor, so the new leader's load of the cursor is never overwritten.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weir_types::subscription::{Cursor, SubscriptionSpec};
use weir_types::{BrokerId, LeaderEpoch};

/// The stored state of one subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub spec: SubscriptionSpec,
    /// The Raft index that created it: a subscription deleted and created again under the
    /// same name has a new uid, so commits meant for the old one are refused.
    pub uid: u64,
    #[serde(default)]
    pub topic_deleted: bool,
    /// Partition → (the leader epoch that committed it, the cursor).
    #[serde(default)]
    pub cursors: BTreeMap<u32, (LeaderEpoch, Cursor)>,
    /// When it was created, updated or last had acknowledgements stored (the proposer's
    /// clock); with an expiration TTL it is deleted once idle that long.
    #[serde(default)]
    pub last_active_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub name: String,
    pub subscription: String,
    pub topic: String,
    pub cursors: BTreeMap<u32, Cursor>,
    pub expire_time_ms: i64,
    pub labels: BTreeMap<String, String>,
}

/// One partition leader's cursor commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorCommit {
    pub subscription: String,
    pub uid: u64,
    pub partition: u32,
    pub leader_epoch: LeaderEpoch,
    pub cursor: Cursor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommitResult {
    Stored,
    /// The subscription is gone (or was created again).
    Gone,
    /// The committer does not lead that partition at that epoch.
    Fenced,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubscriptionCommand {
    Create {
        spec: SubscriptionSpec,
        /// Partition → where delivery starts.
        start: BTreeMap<u32, Cursor>,
        #[serde(default)]
        now_ms: i64,
    },
    /// Replaces the named fields (SubscriptionSpec field names).
    Update {
        spec: SubscriptionSpec,
        mask: Vec<String>,
        #[serde(default)]
        now_ms: i64,
    },
    Delete {
        name: String,
    },
    Commit {
        broker: BrokerId,
        commits: Vec<CursorCommit>,
        #[serde(default)]
        now_ms: i64,
    },
    /// Deletes the subscriptions with an expiration TTL idle for longer than it at `now_ms`.
    Expire {
        now_ms: i64,
    },
    CreateSnapshot {
        name: String,
        subscription: String,
        cursors: BTreeMap<u32, Cursor>,
        labels: BTreeMap<String, String>,
        expire_time_ms: i64,
    },
    UpdateSnapshot {
        name: String,
        labels: Option<BTreeMap<String, String>>,
        expire_time_ms: Option<i64>,
    },
    DeleteSnapshot {
        name: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubscriptionOutcome {
    Subscription(Box<Subscription>),
    Deleted,
    Expired(Vec<String>),
    Committed(Vec<CommitResult>),
    Snapshot(Box<Snapshot>),
    SnapshotDeleted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum SubscriptionError {
    #[error("subscription {0:?} does not exist")]
    NotFound(String),
    #[error("subscription {0:?} already exists")]
    Exists(String),
    #[error("topic {0:?} does not exist")]
    UnknownTopic(String),
    #[error("snapshot {0:?} does not exist")]
    SnapshotNotFound(String),
    #[error("snapshot {0:?} already exists")]
    SnapshotExists(String),
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: &str, reason: impl Into<String>) -> SubscriptionError {
    SubscriptionError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// What the subscriptions need to know of the metadata.
pub trait Topics {
    /// The partition count, if the topic exists.
    fn partitions(&self, topic: &str) -> Option<u32>;
    /// The partition's leader and leader epoch.
    fn leader(&self, topic: &str, partition: u32) -> Option<(BrokerId, LeaderEpoch)>;
}

/// The subscription fields `Update` may change.
pub const UPDATABLE: &[&str] = &[
    "ack_deadline_seconds",
    "retain_acked_messages",
    "message_retention_seconds",
    "expiration_ttl_seconds",
    "enable_exactly_once_delivery",
    "labels",
    "push",
    "retry_minimum_backoff_ms",
    "retry_maximum_backoff_ms",
    "dead_letter_topic",
    "max_delivery_attempts",
    "detached",
];

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscriptions {
    pub subscriptions: BTreeMap<String, Subscription>,
    pub snapshots: BTreeMap<String, Snapshot>,
}

impl Subscriptions {
    /// Applies `command` at Raft index `version`.
    pub fn apply(
        &mut self,
        command: SubscriptionCommand,
        version: u64,
        topics: &dyn Topics,
    ) -> Result<SubscriptionOutcome, SubscriptionError> {
        match command {
            SubscriptionCommand::Create {
                mut spec,
                start,
                now_ms,
            } => {
                spec.normalize()
                    .map_err(|(field, reason)| invalid(&field, reason))?;
                if self.subscriptions.contains_key(&spec.name) {
                    return Err(SubscriptionError::Exists(spec.name));
                }
                if topics.partitions(&spec.topic).is_none() {
                    return Err(SubscriptionError::UnknownTopic(spec.topic));
                }
                if !spec.dead_letter_topic.is_empty()
                    && topics.partitions(&spec.dead_letter_topic).is_none()
                {
                    return Err(invalid(
                        "dead_letter_topic",
                        format!("topic {:?} does not exist", spec.dead_letter_topic),
                    ));
                }
                let mut cursors = BTreeMap::new();
                for (p, c) in start {
                    c.validate()
                        .map_err(|e| invalid(&format!("start[{p}]"), e))?;
                    let epoch = topics
                        .leader(&spec.topic, p)
                        .map_or(LeaderEpoch(-1), |(_, e)| e);
                    cursors.insert(p, (epoch, c));
                }
                let sub = Subscription {
                    spec,
                    uid: version,
                    topic_deleted: false,
                    cursors,
                    last_active_ms: now_ms,
                };
                self.subscriptions
                    .insert(sub.spec.name.clone(), sub.clone());
                Ok(SubscriptionOutcome::Subscription(Box::new(sub)))
            }
            SubscriptionCommand::Update { spec, mask, now_ms } => {
                let sub = self
                    .subscriptions
                    .get(&spec.name)
                    .ok_or_else(|| SubscriptionError::NotFound(spec.name.clone()))?;
                if mask.is_empty() {
                    return Err(invalid("update_mask", "names no field"));
                }
                let mut next = sub.spec.clone();
                for field in &mask {
                    match field.as_str() {
                        "ack_deadline_seconds" => {
                            next.ack_deadline_seconds = spec.ack_deadline_seconds
                        }
                        "retain_acked_messages" => {
                            next.retain_acked_messages = spec.retain_acked_messages
                        }
                        "message_retention_seconds" => {
                            next.message_retention_seconds = spec.message_retention_seconds
                        }
                        "expiration_ttl_seconds" => {
                            next.expiration_ttl_seconds = spec.expiration_ttl_seconds
                        }
                        "enable_exactly_once_delivery" => {
                            next.enable_exactly_once_delivery = spec.enable_exactly_once_delivery
                        }
                        "labels" => next.labels = spec.labels.clone(),
                        "push" => next.push = spec.push.clone(),
                        "retry_minimum_backoff_ms" => {
                            next.retry_minimum_backoff_ms = spec.retry_minimum_backoff_ms
                        }
                        "retry_maximum_backoff_ms" => {
                            next.retry_maximum_backoff_ms = spec.retry_maximum_backoff_ms
                        }
                        "dead_letter_topic" => {
                            next.dead_letter_topic = spec.dead_letter_topic.clone()
                        }
                        "max_delivery_attempts" => {
                            next.max_delivery_attempts = spec.max_delivery_attempts
                        }
                        "detached" => next.detached = spec.detached,
                        other => {
                            return Err(invalid(
                                "update_mask",
                                format!(
                                    "{other:?} cannot be updated (updatable: {})",
                                    UPDATABLE.join(", ")
                                ),
                            ));
                        }
                    }
                }
                next.normalize()
                    .map_err(|(field, reason)| invalid(&field, reason))?;
                if !next.dead_letter_topic.is_empty()
                    && topics.partitions(&next.dead_letter_topic).is_none()
                {
                    return Err(invalid(
                        "dead_letter_topic",
                        format!("topic {:?} does not exist", next.dead_letter_topic),
                    ));
                }
                let Some(sub) = self.subscriptions.get_mut(&spec.name) else {
                    return Err(SubscriptionError::NotFound(spec.name));
                };
                sub.spec = next;
                sub.last_active_ms = sub.last_active_ms.max(now_ms);
                Ok(SubscriptionOutcome::Subscription(Box::new(sub.clone())))
            }
            SubscriptionCommand::Delete { name } => match self.subscriptions.remove(&name) {
                Some(_) => Ok(SubscriptionOutcome::Deleted),
                None => Err(SubscriptionError::NotFound(name)),
            },
            SubscriptionCommand::Commit {
                broker,
                commits,
                now_ms,
            } => {
                let results = commits
                    .into_iter()
                    .map(|c| self.commit(broker, c, now_ms, topics))
                    .collect();
                Ok(SubscriptionOutcome::Committed(results))
            }
            SubscriptionCommand::Expire { now_ms } => {
                let expired = self.expired(now_ms);
                for name in &expired {
                    self.subscriptions.remove(name);
                }
                Ok(SubscriptionOutcome::Expired(expired))
            }
            SubscriptionCommand::CreateSnapshot {
                name,
                subscription,
                cursors,
                labels,
                expire_time_ms,
            } => {
                if self.snapshots.contains_key(&name) {
                    return Err(SubscriptionError::SnapshotExists(name));
                }
                if name.is_empty() || name.len() > 249 {
                    return Err(invalid("name", "must be 1 to 249 bytes"));
                }
                let sub = self
                    .subscriptions
                    .get(&subscription)
                    .ok_or_else(|| SubscriptionError::NotFound(subscription.clone()))?;
                for (p, c) in &cursors {
                    c.validate()
                        .map_err(|e| invalid(&format!("cursors[{p}]"), e))?;
                }
                let snapshot = Snapshot {
                    name: name.clone(),
                    subscription,
                    topic: sub.spec.topic.clone(),
                    cursors,
                    expire_time_ms,
                    labels,
                };
                self.snapshots.insert(name, snapshot.clone());
                Ok(SubscriptionOutcome::Snapshot(Box::new(snapshot)))
            }
            SubscriptionCommand::UpdateSnapshot {
                name,
                labels,
                expire_time_ms,
            } => {
                let s = self
                    .snapshots
                    .get_mut(&name)
                    .ok_or_else(|| SubscriptionError::SnapshotNotFound(name.clone()))?;
                if let Some(labels) = labels {
                    s.labels = labels;
                }
                if let Some(t) = expire_time_ms {
                    s.expire_time_ms = t;
                }
                Ok(SubscriptionOutcome::Snapshot(Box::new(s.clone())))
            }
            SubscriptionCommand::DeleteSnapshot { name } => match self.snapshots.remove(&name) {
                Some(_) => Ok(SubscriptionOutcome::SnapshotDeleted),
                None => Err(SubscriptionError::SnapshotNotFound(name)),
            },
        }
    }

    /// The subscriptions idle past their expiration TTL at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> Vec<String> {
        self.subscriptions
            .values()
            .filter(|s| {
                let ttl_ms = s.spec.expiration_ttl_seconds.saturating_mul(1000);
                ttl_ms > 0 && s.last_active_ms.saturating_add(ttl_ms as i64) <= now_ms
            })
            .map(|s| s.spec.name.clone())
            .collect()
    }

    fn commit(
        &mut self,
        broker: BrokerId,
        c: CursorCommit,
        now_ms: i64,
        topics: &dyn Topics,
    ) -> CommitResult {
        let Some(sub) = self.subscriptions.get_mut(&c.subscription) else {
            return CommitResult::Gone;
        };
        if sub.uid != c.uid || sub.topic_deleted {
            return CommitResult::Gone;
        }
        match topics.leader(&sub.spec.topic, c.partition) {
            Some((leader, epoch)) if leader == broker && epoch == c.leader_epoch => {}
            _ => return CommitResult::Fenced,
        }
        if c.cursor.validate().is_err() {
            // the broker built it; a broken one is refused rather than stored
            return CommitResult::Fenced;
        }
        sub.cursors.insert(c.partition, (c.leader_epoch, c.cursor));
        sub.last_active_ms = sub.last_active_ms.max(now_ms);
        CommitResult::Stored
    }

    /// The topic was deleted: its subscriptions stay (as Google's do) but deliver nothing.
    pub fn topic_deleted(&mut self, topic: &str) {
        for sub in self.subscriptions.values_mut() {
            if sub.spec.topic == topic {
                sub.topic_deleted = true;
                sub.cursors.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct OneTopic {
        leader: (BrokerId, LeaderEpoch),
    }

    impl Topics for OneTopic {
        fn partitions(&self, topic: &str) -> Option<u32> {
            (topic == "t" || topic == "dlq").then_some(2)
        }
        fn leader(&self, _topic: &str, _partition: u32) -> Option<(BrokerId, LeaderEpoch)> {
            Some(self.leader)
        }
    }

    fn create(name: &str, topic: &str) -> SubscriptionCommand {
        SubscriptionCommand::Create {
            spec: SubscriptionSpec::new(name, topic),
            start: BTreeMap::new(),
            now_ms: 0,
        }
    }

    fn commit(uid: u64, epoch: i32, low: i64) -> SubscriptionCommand {
        SubscriptionCommand::Commit {
            broker: BrokerId(1),
            commits: vec![CursorCommit {
                subscription: "s".into(),
                uid,
                partition: 0,
                leader_epoch: LeaderEpoch(epoch),
                cursor: Cursor::at(low),
            }],
            now_ms: 1_000,
        }
    }

    #[test]
    fn commits_are_fenced_by_leader_epoch_and_uid() {
        let mut subs = Subscriptions::default();
        let mut topics = OneTopic {
            leader: (BrokerId(1), LeaderEpoch(3)),
        };
        let created = subs.apply(create("s", "t"), 7, &topics);
        assert!(matches!(created, Ok(SubscriptionOutcome::Subscription(s)) if s.uid == 7));
        assert_eq!(
            subs.apply(commit(7, 3, 10), 8, &topics),
            Ok(SubscriptionOutcome::Committed(vec![CommitResult::Stored]))
        );
        // a new leader epoch: the old leader's commit changes nothing
        topics.leader = (BrokerId(2), LeaderEpoch(4));
        assert_eq!(
            subs.apply(commit(7, 3, 99), 9, &topics),
            Ok(SubscriptionOutcome::Committed(vec![CommitResult::Fenced]))
        );
        assert_eq!(subs.subscriptions["s"].cursors[&0].1, Cursor::at(10));
        // re-created: the old uid is gone
        subs.apply(
            SubscriptionCommand::Delete { name: "s".into() },
            10,
            &topics,
        )
        .expect("deleted");
        topics.leader = (BrokerId(1), LeaderEpoch(4));
        subs.apply(create("s", "t"), 11, &topics).expect("created");
        assert_eq!(
            subs.apply(commit(7, 4, 5), 12, &topics),
            Ok(SubscriptionOutcome::Committed(vec![CommitResult::Gone]))
        );
    }

    #[test]
    fn idle_subscriptions_with_a_ttl_expire_and_acks_keep_them() {
        let mut subs = Subscriptions::default();
        let topics = OneTopic {
            leader: (BrokerId(1), LeaderEpoch(0)),
        };
        let day = 86_400_000;
        let mut spec = SubscriptionSpec::new("s", "t");
        spec.expiration_ttl_seconds = 86_400;
        subs.apply(
            SubscriptionCommand::Create {
                spec,
                start: BTreeMap::new(),
                now_ms: 0,
            },
            1,
            &topics,
        )
        .expect("created");
        subs.apply(
            SubscriptionCommand::Create {
                spec: SubscriptionSpec::new("forever", "t"),
                start: BTreeMap::new(),
                now_ms: 0,
            },
            2,
            &topics,
        )
        .expect("created");
        assert!(subs.expired(day - 1).is_empty());
        // an ack stored half a day in moves the expiry
        subs.apply(
            SubscriptionCommand::Commit {
                broker: BrokerId(1),
                commits: vec![CursorCommit {
                    subscription: "s".into(),
                    uid: 1,
                    partition: 0,
                    leader_epoch: LeaderEpoch(0),
                    cursor: Cursor::at(3),
                }],
                now_ms: day / 2,
            },
            3,
            &topics,
        )
        .expect("committed");
        assert!(subs.expired(day).is_empty());
        assert_eq!(
            subs.apply(
                SubscriptionCommand::Expire {
                    now_ms: day + day / 2
                },
                4,
                &topics
            ),
            Ok(SubscriptionOutcome::Expired(vec!["s".into()]))
        );
        assert!(!subs.subscriptions.contains_key("s"));
        assert!(subs.subscriptions.contains_key("forever"));
    }

    #[test]
    fn bad_requests_change_nothing() {
        let mut subs = Subscriptions::default();
        let topics = OneTopic {
            leader: (BrokerId(1), LeaderEpoch(0)),
        };
        assert_eq!(
            subs.apply(create("s", "nope"), 1, &topics),
            Err(SubscriptionError::UnknownTopic("nope".into()))
        );
        subs.apply(create("s", "t"), 2, &topics).expect("created");
        let before = subs.clone();
        let mut spec = SubscriptionSpec::new("s", "t");
        spec.ack_deadline_seconds = 5;
        assert!(matches!(
            subs.apply(
                SubscriptionCommand::Update {
                    spec: spec.clone(),
                    mask: vec!["ack_deadline_seconds".into()],
                    now_ms: 0,
                },
                3,
                &topics
            ),
            Err(SubscriptionError::Invalid { field, .. }) if field == "ack_deadline_seconds"
        ));
        assert!(matches!(
            subs.apply(
                SubscriptionCommand::Update {
                    spec,
                    mask: vec!["topic".into()],
                    now_ms: 0,
                },
                4,
                &topics
            ),
            Err(SubscriptionError::Invalid { field, .. }) if field == "update_mask"
        ));
        assert_eq!(subs, before);
    }
}
