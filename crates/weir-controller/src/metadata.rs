//! The cluster metadata state machine: brokers, topics and partitions.
//!
//! Pure: [`Metadata::apply`] takes a [`Command`] and returns an [`Outcome`], with no I/O, no
//! clock and no randomness, so every controller replica applying the same Raft log reaches the
//! same state. Anything non-deterministic (topic ids, the current time) is decided by the
//! proposer and carried inside the command.

use std::collections::BTreeMap;
use weir_faults::bugs::{self, Bug};

use serde::{Deserialize, Serialize};
use weir_types::{BrokerId, LeaderEpoch};

/// A broker as the controller knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Broker {
    pub id: BrokerId,
    /// `host:port` of the broker's data-plane gRPC endpoint.
    pub address: String,
    /// `host:port` of its internal listener (replication); `None`: `address` serves it.
    #[serde(default)]
    pub internal_address: Option<String>,
    pub rack: Option<String>,
    /// Bumped on every registration; requests from an older incarnation are fenced.
    pub incarnation: u64,
    /// A fenced broker leads nothing and is not in any ISR until it registers again.
    pub fenced: bool,
    /// Fenced on purpose (a controlled shutdown): the process must not register again; its
    /// next process does.
    #[serde(default)]
    pub draining: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CleanupPolicy {
    #[default]
    Delete,
    Compact,
}

impl CleanupPolicy {
    pub fn name(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
        }
    }
}

/// Per-topic settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub segment_bytes: u64,
    pub cleanup_policy: CleanupPolicy,
    pub min_insync_replicas: u32,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            segment_bytes: 1 << 30,
            cleanup_policy: CleanupPolicy::Delete,
            min_insync_replicas: 1,
        }
    }
}

/// Changes to a topic's settings; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChange {
    pub retention_ms: Option<Option<u64>>,
    pub retention_bytes: Option<Option<u64>>,
    pub segment_bytes: Option<u64>,
    pub cleanup_policy: Option<CleanupPolicy>,
    pub min_insync_replicas: Option<u32>,
}

impl ConfigChange {
    /// Writes the fields this change sets into `config`.
    pub fn apply_to(&self, config: &mut TopicConfig) {
        if let Some(v) = self.retention_ms {
            config.retention_ms = v;
        }
        if let Some(v) = self.retention_bytes {
            config.retention_bytes = v;
        }
        if let Some(v) = self.segment_bytes {
            config.segment_bytes = v;
        }
        if let Some(v) = self.cleanup_policy {
            config.cleanup_policy = v;
        }
        if let Some(v) = self.min_insync_replicas {
            config.min_insync_replicas = v;
        }
    }
}

/// One partition's replication state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    pub replicas: Vec<BrokerId>,
    pub leader: Option<BrokerId>,
    pub leader_epoch: LeaderEpoch,
    pub isr: Vec<BrokerId>,
    /// Bumped on every change to this partition (leader or ISR); fences stale ISR updates.
    pub partition_epoch: i32,
    /// An ongoing reassignment: `replicas` holds the old and the new replicas until every
    /// target replica is in sync, then it becomes exactly this.
    #[serde(default)]
    pub reassigning_to: Option<Vec<BrokerId>>,
    /// Bytes per second a replica catching up for the reassignment may copy (0: unlimited).
    #[serde(default)]
    pub reassign_throttle_bytes_per_s: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topic {
    /// Chosen by the proposer (128-bit, hex); distinguishes a re-created topic from the old one.
    pub id: String,
    pub name: String,
    pub config: TopicConfig,
    pub partitions: Vec<Partition>,
}

/// A change to the metadata, as replicated through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    RegisterBroker {
        id: BrokerId,
        address: String,
        rack: Option<String>,
        #[serde(default)]
        internal_address: Option<String>,
    },
    /// The broker's lease expired (or it shut down): it loses leaderships and ISR places.
    FenceBroker {
        id: BrokerId,
        incarnation: u64,
    },
    /// A controlled shutdown: the broker's current incarnation is fenced (its leaderships move
    /// to in-sync replicas under new epochs, it leaves every ISR with other members) and
    /// marked draining, so it does not register again before it restarts.
    DrainBroker {
        id: BrokerId,
    },
    CreateTopic {
        id: String,
        name: String,
        partitions: u32,
        replication_factor: u32,
        config: TopicConfig,
    },
    DeleteTopic {
        name: String,
    },
    /// Grows the topic to `total` partitions.
    CreatePartitions {
        name: String,
        total: u32,
    },
    AlterConfig {
        name: String,
        change: ConfigChange,
    },
    /// Reserves `count` producer ids for a broker.
    AllocateProducerIds {
        broker: BrokerId,
        count: u32,
    },
    /// Moves every partition's leadership back to its preferred replica (the first one) where
    /// that replica is live and in sync.
    RebalanceLeaders,
    /// Starts moving a partition to `replicas`: they are added to the current ones and catch
    /// up (at most `throttle_bytes_per_s` each, 0 for no limit).
    Reassign {
        topic: String,
        partition: u32,
        replicas: Vec<BrokerId>,
        throttle_bytes_per_s: u64,
    },
    /// Finishes every reassignment whose target replicas are all in sync.
    CompleteReassignments,
    /// Operator's election for one partition. `unclean` picks a live replica outside the ISR
    /// when no ISR member is live: records only the lost ISR held are gone.
    ElectLeader {
        topic: String,
        partition: u32,
        unclean: bool,
    },
    /// A partition leader changes its ISR; fenced by incarnation, leader epoch and partition
    /// epoch.
    AlterIsr {
        topic: String,
        partition: u32,
        leader: BrokerId,
        incarnation: u64,
        leader_epoch: LeaderEpoch,
        partition_epoch: i32,
        isr: Vec<BrokerId>,
    },
    /// A consumer-group change, applied by [`crate::group::Groups`].
    Group(crate::group::GroupCommand),
    /// A subscription change, applied by [`crate::subscription::Subscriptions`].
    Subscription(crate::subscription::SubscriptionCommand),
    /// Adds access control lists (those present already stay as they are).
    CreateAcls(Vec<weir_types::acl::Acl>),
    /// Removes every ACL the filter matches.
    DeleteAcls(weir_types::acl::AclFilter),
}

/// Why a command was rejected. Rejections change nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("topic {0:?} does not exist")]
    UnknownTopic(String),
    #[error("broker {0} is not registered")]
    UnknownBroker(BrokerId),
    #[error("broker {id} incarnation {got} is stale (current {current})")]
    StaleIncarnation {
        id: BrokerId,
        got: u64,
        current: u64,
    },
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("stale request: {0}")]
    Stale(String),
    #[error("replication factor {wanted} exceeds the {available} live brokers")]
    NotEnoughBrokers { wanted: u32, available: u32 },
}

fn invalid(field: &str, reason: impl Into<String>) -> Rejection {
    Rejection::Invalid {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// What applying a command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Registered {
        incarnation: u64,
    },
    Fenced {
        leaders_moved: u32,
        offline: u32,
    },
    TopicCreated {
        topic: Topic,
    },
    TopicDeleted {
        id: String,
    },
    PartitionsCreated {
        total: u32,
    },
    ConfigAltered {
        config: TopicConfig,
    },
    ProducerIds {
        first: i64,
        count: u32,
    },
    LeadersRebalanced {
        moved: u32,
    },
    ReassignmentStarted {
        replicas: Vec<BrokerId>,
    },
    ReassignmentsCompleted {
        completed: u32,
    },
    LeaderElected {
        leader: BrokerId,
        leader_epoch: LeaderEpoch,
        unclean: bool,
    },
    IsrChanged {
        isr: Vec<BrokerId>,
        partition_epoch: i32,
    },
    Group(crate::group::GroupOutcome),
    Subscription(
        Result<crate::subscription::SubscriptionOutcome, crate::subscription::SubscriptionError>,
    ),
    AclsCreated {
        created: u32,
    },
    AclsDeleted {
        deleted: Vec<weir_types::acl::Acl>,
    },
    Rejected(Rejection),
}

/// Limits on what one command may ask for.
pub const PARTITIONS_MAX: u32 = 10_000;
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// The replicated metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub brokers: BTreeMap<BrokerId, Broker>,
    pub topics: BTreeMap<String, Topic>,
    next_incarnation: u64,
    /// The next producer id not yet handed out.
    #[serde(default)]
    next_producer_id: i64,
}

/// The most producer ids one request reserves.
pub const PRODUCER_ID_BLOCK_MAX: u32 = 10_000;

pub fn validate_topic_name(name: &str) -> Result<(), Rejection> {
    if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(invalid(
            "name",
            format!("must be 1 to {TOPIC_NAME_BYTES_MAX} bytes"),
        ));
    }
    if name == "." || name == ".." {
        return Err(invalid("name", "must not be . or .."));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(
            "name",
            format!("character {c:?} is not allowed (use a-z, A-Z, 0-9, '.', '_', '-')"),
        ));
    }
    Ok(())
}

fn validate_config(config: &TopicConfig, replication_factor: Option<u32>) -> Result<(), Rejection> {
    if config.segment_bytes < 1024 || config.segment_bytes > i32::MAX as u64 {
        return Err(invalid(
            "segment_bytes",
            "must be between 1024 and 2147483647",
        ));
    }
    if config.min_insync_replicas == 0 {
        return Err(invalid("min_insync_replicas", "must be at least 1"));
    }
    if let Some(rf) = replication_factor
        && config.min_insync_replicas > rf
    {
        return Err(invalid(
            "min_insync_replicas",
            format!(
                "{} exceeds the replication factor {rf}",
                config.min_insync_replicas
            ),
        ));
    }
    if config.retention_ms == Some(0) {
        return Err(invalid("retention_ms", "must be positive when set"));
    }
    Ok(())
}

impl Metadata {
    pub fn apply(&mut self, command: Command) -> Outcome {
        let result = match command {
            Command::RegisterBroker {
                id,
                address,
                rack,
                internal_address,
            } => self.register(id, address, rack, internal_address),
            Command::FenceBroker { id, incarnation } => self.fence(id, incarnation),
            Command::DrainBroker { id } => self.drain(id),
            Command::CreateTopic {
                id,
                name,
                partitions,
                replication_factor,
                config,
            } => self.create_topic(id, name, partitions, replication_factor, config),
            Command::DeleteTopic { name } => match self.topics.remove(&name) {
                Some(topic) => Ok(Outcome::TopicDeleted { id: topic.id }),
                None => Err(Rejection::UnknownTopic(name)),
            },
            Command::CreatePartitions { name, total } => self.create_partitions(name, total),
            Command::AlterConfig { name, change } => self.alter_config(name, change),
            Command::AllocateProducerIds { broker, count } => {
                if self.brokers.get(&broker).is_none_or(|b| b.fenced) {
                    Err(Rejection::UnknownBroker(broker))
                } else if count == 0 || count > PRODUCER_ID_BLOCK_MAX {
                    Err(invalid(
                        "count",
                        format!("must be 1 to {PRODUCER_ID_BLOCK_MAX}"),
                    ))
                } else {
                    let first = self.next_producer_id;
                    self.next_producer_id += i64::from(count);
                    Ok(Outcome::ProducerIds { first, count })
                }
            }
            Command::RebalanceLeaders => Ok(self.rebalance_leaders()),
            Command::Reassign {
                topic,
                partition,
                replicas,
                throttle_bytes_per_s,
            } => self.reassign(&topic, partition, replicas, throttle_bytes_per_s),
            Command::CompleteReassignments => Ok(self.complete_reassignments()),
            Command::ElectLeader {
                topic,
                partition,
                unclean,
            } => self.elect_leader(&topic, partition, unclean),
            Command::AlterIsr {
                topic,
                partition,
                leader,
                incarnation,
                leader_epoch,
                partition_epoch,
                isr,
            } => self.alter_isr(
                &topic,
                partition,
                leader,
                incarnation,
                leader_epoch,
                partition_epoch,
                isr,
            ),
            Command::Group(_)
            | Command::Subscription(_)
            | Command::CreateAcls(_)
            | Command::DeleteAcls(_) => Err(invalid(
                "command",
                "group, subscription and ACL commands are applied to their own state",
            )),
        };
        result.unwrap_or_else(Outcome::Rejected)
    }

    /// Topic name → partition count.
    pub fn partition_counts(&self) -> BTreeMap<String, u32> {
        self.topics
            .iter()
            .map(|(n, t)| (n.clone(), t.partitions.len() as u32))
            .collect()
    }

    pub fn live_brokers(&self) -> Vec<&Broker> {
        self.brokers.values().filter(|b| !b.fenced).collect()
    }

    fn register(
        &mut self,
        id: BrokerId,
        address: String,
        rack: Option<String>,
        internal_address: Option<String>,
    ) -> Result<Outcome, Rejection> {
        if address.is_empty() {
            return Err(invalid("address", "must not be empty"));
        }
        if internal_address.as_deref() == Some("") {
            return Err(invalid("internal_address", "must not be empty when given"));
        }
        self.next_incarnation += 1;
        let incarnation = self.next_incarnation;
        let returning = self.brokers.contains_key(&id);
        self.brokers.insert(
            id,
            Broker {
                id,
                address,
                internal_address,
                rack,
                incarnation,
                fenced: false,
                draining: false,
            },
        );
        // A broker that comes back (a new process, maybe before its lease ran out, so never
        // fenced) is no longer trusted to hold what it held: its disk may have lost fsynced
        // data (corruption, a replaced disk). It leaves every ISR that has other members and
        // every leadership that another in-sync replica can take; it rejoins the ISR once it
        // has caught up, like any follower. As the last ISR member it stays: it is the only
        // replica known to hold every acknowledged record.
        if returning {
            let live: Vec<BrokerId> = self.live_brokers().iter().map(|b| b.id).collect();
            for p in self.topics.values_mut().flat_map(|t| &mut t.partitions) {
                if !p.isr.contains(&id) || p.isr.len() < 2 {
                    continue;
                }
                p.isr.retain(|b| *b != id);
                if p.leader == Some(id) {
                    p.leader = p.isr.iter().copied().find(|b| live.contains(b));
                    p.leader_epoch = LeaderEpoch(p.leader_epoch.0 + 1);
                }
                p.partition_epoch += 1;
            }
        }
        // Partitions left without a leader whose ISR holds this broker get it back as leader
        // (it has every acknowledged record: it was in the ISR when the others left).
        for topic in self.topics.values_mut() {
            for p in &mut topic.partitions {
                if p.leader.is_none() && p.isr.contains(&id) {
                    p.leader = Some(id);
                    p.leader_epoch = LeaderEpoch(p.leader_epoch.0 + 1);
                    p.partition_epoch += 1;
                } else if bugs::active(Bug::UncleanElection)
                    && p.replicas.first() == Some(&id)
                    && p.leader != Some(id)
                {
                    // the planted bug: the preferred replica leads again the moment it is
                    // back, before it caught up
                    if !p.isr.contains(&id) {
                        p.isr.push(id);
                    }
                    p.leader = Some(id);
                    p.leader_epoch = LeaderEpoch(p.leader_epoch.0 + 1);
                    p.partition_epoch += 1;
                }
            }
        }
        Ok(Outcome::Registered { incarnation })
    }

    fn drain(&mut self, id: BrokerId) -> Result<Outcome, Rejection> {
        let incarnation = self
            .brokers
            .get(&id)
            .ok_or(Rejection::UnknownBroker(id))?
            .incarnation;
        let outcome = self.fence(id, incarnation)?;
        if let Some(b) = self.brokers.get_mut(&id) {
            b.draining = true;
        }
        Ok(outcome)
    }

    fn fence(&mut self, id: BrokerId, incarnation: u64) -> Result<Outcome, Rejection> {
        let broker = self
            .brokers
            .get_mut(&id)
            .ok_or(Rejection::UnknownBroker(id))?;
        if broker.incarnation != incarnation {
            return Err(Rejection::StaleIncarnation {
                id,
                got: incarnation,
                current: broker.incarnation,
            });
        }
        broker.fenced = true;
        let live: Vec<BrokerId> = self.live_brokers().iter().map(|b| b.id).collect();
        let (mut moved, mut offline) = (0, 0);
        for topic in self.topics.values_mut() {
            for p in &mut topic.partitions {
                let touched = p.leader == Some(id) || p.isr.contains(&id);
                if !touched {
                    continue;
                }
                // Keep the last ISR member even if it is fenced: it is the only replica known
                // to hold every acknowledged record, and it leads again when it returns.
                if p.isr.len() > 1 {
                    p.isr.retain(|b| *b != id);
                }
                if p.leader == Some(id) {
                    let candidates = if bugs::active(Bug::UncleanElection) {
                        &p.replicas
                    } else {
                        &p.isr
                    };
                    let next = candidates
                        .iter()
                        .copied()
                        .find(|b| *b != id && live.contains(b));
                    if let Some(next) = next
                        && !p.isr.contains(&next)
                    {
                        p.isr.push(next); // only with the planted bug
                    }
                    p.leader = next;
                    p.leader_epoch = LeaderEpoch(p.leader_epoch.0 + 1);
                    match next {
                        Some(_) => moved += 1,
                        None => offline += 1,
                    }
                }
                p.partition_epoch += 1;
            }
        }
        Ok(Outcome::Fenced {
            leaders_moved: moved,
            offline,
        })
    }

    /// Places `count` new partitions' replicas round-robin over the live brokers, starting
    /// each partition one broker further along and spreading racks, so replicas and leaders
    /// (the first replica) are even across brokers.
    fn place(
        &self,
        first_partition: u32,
        count: u32,
        replication_factor: u32,
    ) -> Result<Vec<Partition>, Rejection> {
        let live = self.live_brokers();
        if replication_factor as usize > live.len() {
            return Err(Rejection::NotEnoughBrokers {
                wanted: replication_factor,
                available: live.len() as u32,
            });
        }
        // Interleave racks: r1b1, r2b1, r3b1, r1b2, ... so consecutive replicas differ in rack.
        let mut by_rack: BTreeMap<Option<&str>, Vec<BrokerId>> = BTreeMap::new();
        for b in &live {
            by_rack.entry(b.rack.as_deref()).or_default().push(b.id);
        }
        let mut order = Vec::with_capacity(live.len());
        let deepest = by_rack.values().map(Vec::len).max().unwrap_or(0);
        for i in 0..deepest {
            for ids in by_rack.values() {
                if let Some(id) = ids.get(i) {
                    order.push(*id);
                }
            }
        }
        // Leaders already held, so new leaders go to the least loaded brokers first.
        let mut led: BTreeMap<BrokerId, usize> = order.iter().map(|b| (*b, 0)).collect();
        for topic in self.topics.values() {
            for p in &topic.partitions {
                if let Some(l) = p.leader
                    && let Some(n) = led.get_mut(&l)
                {
                    *n += 1;
                }
            }
        }
        let n = order.len();
        let start = order
            .iter()
            .enumerate()
            .min_by_key(|(i, b)| (led.get(b).copied().unwrap_or(0), *i))
            .map_or(0, |(i, _)| i);
        let mut out = Vec::with_capacity(count as usize);
        for k in 0..count as usize {
            let first = (start + k + first_partition as usize) % n;
            let replicas: Vec<BrokerId> = (0..replication_factor as usize)
                .map(|r| order[(first + r) % n])
                .collect();
            out.push(Partition {
                leader: replicas.first().copied(),
                leader_epoch: LeaderEpoch(0),
                isr: replicas.clone(),
                replicas,
                partition_epoch: 0,
                reassigning_to: None,
                reassign_throttle_bytes_per_s: 0,
            });
        }
        Ok(out)
    }

    fn create_topic(
        &mut self,
        id: String,
        name: String,
        partitions: u32,
        replication_factor: u32,
        config: TopicConfig,
    ) -> Result<Outcome, Rejection> {
        validate_topic_name(&name)?;
        if self.topics.contains_key(&name) {
            return Err(Rejection::TopicExists(name));
        }
        if partitions == 0 || partitions > PARTITIONS_MAX {
            return Err(invalid(
                "partitions",
                format!("must be 1 to {PARTITIONS_MAX}"),
            ));
        }
        if replication_factor == 0 {
            return Err(invalid("replication_factor", "must be at least 1"));
        }
        validate_config(&config, Some(replication_factor))?;
        let placed = self.place(0, partitions, replication_factor)?;
        let topic = Topic {
            id,
            name: name.clone(),
            config,
            partitions: placed,
        };
        self.topics.insert(name, topic.clone());
        Ok(Outcome::TopicCreated { topic })
    }

    fn create_partitions(&mut self, name: String, total: u32) -> Result<Outcome, Rejection> {
        let topic = self
            .topics
            .get(&name)
            .ok_or_else(|| Rejection::UnknownTopic(name.clone()))?;
        let current = topic.partitions.len() as u32;
        if total <= current || total > PARTITIONS_MAX {
            return Err(invalid(
                "partitions",
                format!("must be above the current {current} and at most {PARTITIONS_MAX}"),
            ));
        }
        let rf = topic
            .partitions
            .first()
            .map_or(1, |p| p.replicas.len() as u32);
        let placed = self.place(current, total - current, rf)?;
        if let Some(topic) = self.topics.get_mut(&name) {
            topic.partitions.extend(placed);
        }
        Ok(Outcome::PartitionsCreated { total })
    }

    fn reassign(
        &mut self,
        topic: &str,
        partition: u32,
        target: Vec<BrokerId>,
        throttle_bytes_per_s: u64,
    ) -> Result<Outcome, Rejection> {
        let live: Vec<BrokerId> = self.live_brokers().iter().map(|b| b.id).collect();
        if target.is_empty() {
            return Err(invalid("replicas", "must name at least one broker"));
        }
        let mut sorted = target.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != target.len() {
            return Err(invalid("replicas", "lists a broker twice"));
        }
        if let Some(b) = target.iter().find(|b| !live.contains(b)) {
            return Err(invalid(
                "replicas",
                format!("broker {b} is not a live broker"),
            ));
        }
        let t = self
            .topics
            .get_mut(topic)
            .ok_or_else(|| Rejection::UnknownTopic(topic.to_string()))?;
        let min_isr = t.config.min_insync_replicas;
        if (target.len() as u32) < min_isr {
            return Err(invalid(
                "replicas",
                format!(
                    "{} replicas cannot satisfy min_insync_replicas {min_isr}",
                    target.len()
                ),
            ));
        }
        let p = t
            .partitions
            .get_mut(partition as usize)
            .ok_or_else(|| invalid("partition", format!("{topic} has no partition {partition}")))?;
        if p.reassigning_to.is_some() {
            return Err(invalid(
                "partition",
                "a reassignment is already in progress",
            ));
        }
        for b in &target {
            if !p.replicas.contains(b) {
                p.replicas.push(*b);
            }
        }
        p.reassigning_to = Some(target.clone());
        p.reassign_throttle_bytes_per_s = throttle_bytes_per_s;
        p.partition_epoch += 1;
        Ok(Outcome::ReassignmentStarted {
            replicas: p.replicas.clone(),
        })
    }

    /// Partitions whose reassignment can finish: every target replica is in sync.
    pub fn completable_reassignments(&self) -> usize {
        self.topics
            .values()
            .flat_map(|t| &t.partitions)
            .filter(|p| {
                p.reassigning_to
                    .as_ref()
                    .is_some_and(|target| target.iter().all(|b| p.isr.contains(b)))
            })
            .count()
    }

    fn complete_reassignments(&mut self) -> Outcome {
        let mut completed = 0;
        for p in self.topics.values_mut().flat_map(|t| &mut t.partitions) {
            let Some(target) = p.reassigning_to.clone() else {
                continue;
            };
            if !target.iter().all(|b| p.isr.contains(b)) {
                continue;
            }
            p.replicas = target.clone();
            p.isr.retain(|b| target.contains(b));
            if !p.leader.is_some_and(|l| target.contains(&l)) {
                p.leader = target.iter().copied().find(|b| p.isr.contains(b));
                p.leader_epoch = LeaderEpoch(p.leader_epoch.0 + 1);
            }
            p.reassigning_to = None;
            p.reassign_throttle_bytes_per_s = 0;
            p.partition_epoch += 1;
            completed += 1;
        }
        Outcome::ReassignmentsCompleted { completed }
    }

    fn partition_mut(&mut self, topic: &str, partition: u32) -> Result<&mut Partition, Rejection> {
        self.topics
            .get_mut(topic)
            .ok_or_else(|| Rejection::UnknownTopic(topic.to_string()))?
            .partitions
            .get_mut(partition as usize)
            .ok_or_else(|| invalid("partition", format!("{topic} has no partition {partition}")))
    }

    /// Partitions whose preferred replica is live, in sync and not leading.
    pub fn unbalanced_leaders(&self) -> usize {
        let live: Vec<BrokerId> = self.live_brokers().iter().map(|b| b.id).collect();
        self.topics
            .values()
            .flat_map(|t| &t.partitions)
            .filter(|p| {
                p.replicas.first().is_some_and(|pref| {
                    p.leader != Some(*pref)
                        && live.contains(pref)
                        && (p.isr.contains(pref) || bugs::active(Bug::UncleanElection))
                })
            })
            .count()
    }

    fn rebalance_leaders(&mut self) -> Outcome {
        let live: Vec<BrokerId> = self.live_brokers().iter().map(|b| b.id).collect();
        let mut moved = 0;
        for p in self.topics.values_mut().flat_map(|t| &mut t.partitions) {
            let Some(&pref) = p.replicas.first() else {
                continue;
            };
            let unclean = bugs::active(Bug::UncleanElection);
            if p.leader != Some(pref) && live.contains(&pref) && (p.isr.contains(&pref) || unclean)
            {
                if !p.isr.contains(&pref) {
                    p.isr.push(pref); // only with the planted bug
                }
                p.leader = Some(pref);
                p.leader_epoch = LeaderEpoch(p.leader_epoch.0 + 1);
                p.partition_epoch += 1;
                moved += 1;
            }
        }
        Outcome::LeadersRebalanced { moved }
    }

    fn elect_leader(
        &mut self,
        topic: &str,
        partition: u32,
        unclean: bool,
    ) -> Result<Outcome, Rejection> {
        let live: Vec<BrokerId> = self.live_brokers().iter().map(|b| b.id).collect();
        let p = self.partition_mut(topic, partition)?;
        let live_isr: Vec<BrokerId> = p.isr.iter().copied().filter(|b| live.contains(b)).collect();
        let leader = if unclean {
            if !live_isr.is_empty() {
                return Err(invalid(
                    "unclean",
                    format!("in-sync replicas {live_isr:?} are alive; elect one of them instead"),
                ));
            }
            let candidate = p
                .replicas
                .iter()
                .copied()
                .find(|b| live.contains(b))
                .ok_or_else(|| invalid("partition", "no replica is alive"))?;
            p.isr = vec![candidate];
            candidate
        } else {
            let preferred = p
                .replicas
                .iter()
                .copied()
                .find(|b| live_isr.contains(b))
                .ok_or_else(|| {
                    invalid(
                        "partition",
                        "no in-sync replica is alive (an unclean election may lose data)",
                    )
                })?;
            if p.leader == Some(preferred) {
                return Ok(Outcome::LeaderElected {
                    leader: preferred,
                    leader_epoch: p.leader_epoch,
                    unclean: false,
                });
            }
            preferred
        };
        p.leader = Some(leader);
        p.leader_epoch = LeaderEpoch(p.leader_epoch.0 + 1);
        p.partition_epoch += 1;
        Ok(Outcome::LeaderElected {
            leader,
            leader_epoch: p.leader_epoch,
            unclean,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn alter_isr(
        &mut self,
        topic: &str,
        partition: u32,
        leader: BrokerId,
        incarnation: u64,
        leader_epoch: LeaderEpoch,
        partition_epoch: i32,
        isr: Vec<BrokerId>,
    ) -> Result<Outcome, Rejection> {
        let broker = self
            .brokers
            .get(&leader)
            .ok_or(Rejection::UnknownBroker(leader))?;
        if broker.fenced || broker.incarnation != incarnation {
            return Err(Rejection::StaleIncarnation {
                id: leader,
                got: incarnation,
                current: broker.incarnation,
            });
        }
        let live: Vec<BrokerId> = self.live_brokers().iter().map(|b| b.id).collect();
        let p = self.partition_mut(topic, partition)?;
        if p.leader != Some(leader) || p.leader_epoch != leader_epoch {
            return Err(Rejection::Stale(format!(
                "broker {leader} at epoch {leader_epoch} does not lead {topic}/{partition} (leader {:?}, epoch {})",
                p.leader, p.leader_epoch
            )));
        }
        if p.partition_epoch != partition_epoch {
            return Err(Rejection::Stale(format!(
                "partition epoch {partition_epoch} is not the current {}",
                p.partition_epoch
            )));
        }
        let mut sorted = isr.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != isr.len() {
            return Err(invalid("isr", "lists a broker twice"));
        }
        if !isr.contains(&leader) {
            return Err(invalid("isr", "must contain the leader"));
        }
        if let Some(b) = isr.iter().find(|b| !p.replicas.contains(b)) {
            return Err(invalid("isr", format!("broker {b} is not a replica")));
        }
        if let Some(b) = isr.iter().find(|b| !live.contains(b)) {
            return Err(invalid("isr", format!("broker {b} is fenced")));
        }
        p.isr = isr;
        p.partition_epoch += 1;
        Ok(Outcome::IsrChanged {
            isr: p.isr.clone(),
            partition_epoch: p.partition_epoch,
        })
    }

    fn alter_config(&mut self, name: String, change: ConfigChange) -> Result<Outcome, Rejection> {
        let topic = self
            .topics
            .get_mut(&name)
            .ok_or_else(|| Rejection::UnknownTopic(name.clone()))?;
        let mut config = topic.config.clone();
        change.apply_to(&mut config);
        let rf = topic.partitions.first().map(|p| p.replicas.len() as u32);
        validate_config(&config, rf)?;
        topic.config = config.clone();
        Ok(Outcome::ConfigAltered { config })
    }
}

impl crate::subscription::Topics for Metadata {
    fn partitions(&self, topic: &str) -> Option<u32> {
        self.topics.get(topic).map(|t| t.partitions.len() as u32)
    }

    fn leader(&self, topic: &str, partition: u32) -> Option<(BrokerId, LeaderEpoch)> {
        let p = self.topics.get(topic)?.partitions.get(partition as usize)?;
        Some((p.leader?, p.leader_epoch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(m: &mut Metadata, id: u32, rack: Option<&str>) -> u64 {
        match m.apply(Command::RegisterBroker {
            id: BrokerId(id),
            address: format!("127.0.0.{id}:9092"),
            rack: rack.map(str::to_string),
            internal_address: None,
        }) {
            Outcome::Registered { incarnation } => incarnation,
            other => panic!("register failed: {other:?}"),
        }
    }

    fn create(m: &mut Metadata, name: &str, partitions: u32, rf: u32) -> Outcome {
        m.apply(Command::CreateTopic {
            id: format!("id-{name}"),
            name: name.into(),
            partitions,
            replication_factor: rf,
            config: TopicConfig::default(),
        })
    }

    #[test]
    fn placement_spreads_replicas_and_leaders_evenly() {
        let mut m = Metadata::default();
        for id in 1..=3 {
            register(&mut m, id, None);
        }
        let Outcome::TopicCreated { topic } = create(&mut m, "orders", 6, 3) else {
            panic!("create failed");
        };
        let mut leaders = BTreeMap::new();
        for p in &topic.partitions {
            let mut r = p.replicas.clone();
            r.sort();
            r.dedup();
            assert_eq!(r.len(), 3, "replicas must be distinct: {p:?}");
            assert_eq!(p.isr, p.replicas);
            *leaders.entry(p.leader).or_insert(0) += 1;
        }
        assert_eq!(leaders.len(), 3);
        assert!(leaders.values().all(|n| *n == 2), "{leaders:?}");

        // a second topic keeps the leader count balanced
        let Outcome::TopicCreated { topic } = create(&mut m, "audit", 1, 1) else {
            panic!()
        };
        assert_eq!(topic.partitions.len(), 1);
    }

    #[test]
    fn racks_are_interleaved() {
        let mut m = Metadata::default();
        register(&mut m, 1, Some("a"));
        register(&mut m, 2, Some("a"));
        register(&mut m, 3, Some("b"));
        register(&mut m, 4, Some("b"));
        let Outcome::TopicCreated { topic } = create(&mut m, "t", 8, 2) else {
            panic!()
        };
        let rack = |b: &BrokerId| m.brokers[b].rack.clone();
        for p in &topic.partitions {
            assert_ne!(rack(&p.replicas[0]), rack(&p.replicas[1]), "{p:?}");
        }
    }

    #[test]
    fn bad_creates_are_rejected_and_change_nothing() {
        let mut m = Metadata::default();
        register(&mut m, 1, None);
        let before = m.clone();
        let cases = [
            ("bad name!", 1, 1, "name"),
            ("", 1, 1, "name"),
            ("ok", 0, 1, "partitions"),
            ("ok", 1, 0, "replication_factor"),
        ];
        for (name, parts, rf, field) in cases {
            match create(&mut m, name, parts, rf) {
                Outcome::Rejected(Rejection::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{name:?}: {other:?}"),
            }
        }
        assert!(matches!(
            create(&mut m, "ok", 1, 2),
            Outcome::Rejected(Rejection::NotEnoughBrokers {
                wanted: 2,
                available: 1
            })
        ));
        assert_eq!(m, before);
        create(&mut m, "ok", 1, 1);
        assert!(matches!(
            create(&mut m, "ok", 1, 1),
            Outcome::Rejected(Rejection::TopicExists(_))
        ));
    }

    #[test]
    fn a_returning_broker_is_not_trusted_until_it_catches_up() {
        let mut m = Metadata::default();
        register(&mut m, 1, None);
        register(&mut m, 2, None);
        register(&mut m, 3, None);
        create(&mut m, "t", 3, 3);
        create(&mut m, "solo", 3, 1);
        let led: Vec<(usize, LeaderEpoch)> = m.topics["t"]
            .partitions
            .iter()
            .enumerate()
            .filter(|(_, p)| p.leader == Some(BrokerId(1)))
            .map(|(i, p)| (i, p.leader_epoch))
            .collect();
        assert!(!led.is_empty(), "broker 1 leads something");
        // a new process of broker 1 registers before its old lease ran out (never fenced):
        // its disk may have lost data, so it leaves every ISR with other members and every
        // leadership another in-sync replica can take
        register(&mut m, 1, None);
        for (i, p) in m.topics["t"].partitions.iter().enumerate() {
            assert!(!p.isr.contains(&BrokerId(1)), "{p:?}");
            assert!(
                p.leader
                    .is_some_and(|l| l != BrokerId(1) && p.isr.contains(&l))
            );
            if let Some((_, before)) = led.iter().find(|(n, _)| *n == i) {
                assert!(
                    p.leader_epoch > *before,
                    "a moved leadership has a new epoch"
                );
            }
        }
        // as the only replica it stays leader: nobody else holds what it acknowledged
        for p in m.topics["solo"]
            .partitions
            .iter()
            .filter(|p| p.replicas == [BrokerId(1)])
        {
            assert_eq!(p.isr, vec![BrokerId(1)]);
            assert_eq!(p.leader, Some(BrokerId(1)));
        }
    }

    #[test]
    fn fencing_moves_leaders_within_the_isr_and_bumps_epochs() {
        let mut m = Metadata::default();
        let inc1 = register(&mut m, 1, None);
        register(&mut m, 2, None);
        register(&mut m, 3, None);
        create(&mut m, "t", 3, 3);
        create(&mut m, "solo", 3, 1);
        assert!(matches!(
            m.apply(Command::FenceBroker {
                id: BrokerId(1),
                incarnation: inc1 + 100
            }),
            Outcome::Rejected(Rejection::StaleIncarnation { .. })
        ));
        let out = m.apply(Command::FenceBroker {
            id: BrokerId(1),
            incarnation: inc1,
        });
        let Outcome::Fenced {
            leaders_moved,
            offline,
        } = out
        else {
            panic!("{out:?}")
        };
        assert_eq!(leaders_moved, 1, "the RF3 partition led by broker 1 moves");
        assert_eq!(offline, 1, "the RF1 partition on broker 1 goes offline");
        for p in &m.topics["t"].partitions {
            assert_ne!(p.leader, Some(BrokerId(1)));
            assert!(p.leader.is_some_and(|l| p.isr.contains(&l)));
            assert!(!p.isr.contains(&BrokerId(1)));
        }
        let solo = &m.topics["solo"].partitions;
        let offline_p = solo
            .iter()
            .find(|p| p.replicas == vec![BrokerId(1)])
            .expect("one partition on broker 1");
        assert_eq!(offline_p.leader, None);
        assert_eq!(offline_p.isr, vec![BrokerId(1)], "last ISR member is kept");
        let epoch = offline_p.leader_epoch;

        // the broker comes back: the offline partition is led by it again, newer epoch
        register(&mut m, 1, None);
        let back = m.topics["solo"]
            .partitions
            .iter()
            .find(|p| p.replicas == vec![BrokerId(1)])
            .expect("partition");
        assert_eq!(back.leader, Some(BrokerId(1)));
        assert!(back.leader_epoch > epoch);
    }

    #[test]
    fn isr_changes_are_fenced_and_validated() {
        let mut m = Metadata::default();
        let inc1 = register(&mut m, 1, None);
        register(&mut m, 2, None);
        let inc3 = register(&mut m, 3, None);
        create(&mut m, "t", 1, 3);
        let p = m.topics["t"].partitions[0].clone();
        let leader = p.leader.expect("leader");
        let inc = m.brokers[&leader].incarnation;
        let alter = |isr: Vec<u32>, epoch: i32, pe: i32, inc: u64| Command::AlterIsr {
            topic: "t".into(),
            partition: 0,
            leader,
            incarnation: inc,
            leader_epoch: LeaderEpoch(epoch),
            partition_epoch: pe,
            isr: isr.into_iter().map(BrokerId).collect(),
        };
        let follower = p
            .replicas
            .iter()
            .find(|b| **b != leader)
            .expect("follower")
            .0;
        let cases: Vec<(Command, &str)> = vec![
            (alter(vec![leader.0], 0, 5, inc), "stale"),
            (alter(vec![leader.0], 3, 0, inc), "stale"),
            (alter(vec![leader.0], 0, 0, inc + 99), "incarnation"),
            (alter(vec![follower], 0, 0, inc), "isr"),
            (alter(vec![leader.0, leader.0], 0, 0, inc), "isr"),
            (alter(vec![leader.0, 9], 0, 0, inc), "isr"),
        ];
        for (command, what) in cases {
            let before = m.clone();
            let out = m.apply(command.clone());
            assert!(
                matches!(out, Outcome::Rejected(_)),
                "{what}: {command:?} -> {out:?}"
            );
            assert_eq!(m, before, "a rejected change changed something");
        }
        let shrunk = m.apply(alter(vec![leader.0], 0, 0, inc));
        assert_eq!(
            shrunk,
            Outcome::IsrChanged {
                isr: vec![leader],
                partition_epoch: 1
            }
        );
        // the old partition epoch is now stale; the new one works
        assert!(matches!(
            m.apply(alter(vec![leader.0, follower], 0, 0, inc)),
            Outcome::Rejected(_)
        ));
        assert!(matches!(
            m.apply(alter(vec![leader.0, follower], 0, 1, inc)),
            Outcome::IsrChanged {
                partition_epoch: 2,
                ..
            }
        ));
        // a fenced broker cannot join the ISR
        let other = [1u32, 2, 3]
            .into_iter()
            .find(|b| *b != leader.0 && *b != follower)
            .expect("third");
        let other_inc = if other == 1 { inc1 } else { inc3 };
        let _ = other_inc;
        m.apply(Command::FenceBroker {
            id: BrokerId(other),
            incarnation: m.brokers[&BrokerId(other)].incarnation,
        });
        let pe = m.topics["t"].partitions[0].partition_epoch;
        let le = m.topics["t"].partitions[0].leader_epoch.0;
        let out = m.apply(alter(vec![leader.0, follower, other], le, pe, inc));
        assert!(
            matches!(out, Outcome::Rejected(Rejection::Invalid { .. })),
            "{out:?}"
        );
    }

    #[test]
    fn preferred_leaders_return_and_unclean_election_is_explicit() {
        let mut m = Metadata::default();
        let inc1 = register(&mut m, 1, None);
        register(&mut m, 2, None);
        register(&mut m, 3, None);
        create(&mut m, "t", 3, 3);
        m.apply(Command::FenceBroker {
            id: BrokerId(1),
            incarnation: inc1,
        });
        assert_eq!(m.unbalanced_leaders(), 0, "broker 1 is fenced");
        register(&mut m, 1, None);
        // back, but not in sync yet: nothing moves
        assert_eq!(m.unbalanced_leaders(), 0);
        for p in &mut m.topics.get_mut("t").expect("t").partitions {
            p.isr.push(BrokerId(1)); // as the leaders' AlterIsr would
        }
        assert_eq!(m.unbalanced_leaders(), 1);
        let before = m.topics["t"].partitions[0].leader_epoch;
        assert_eq!(
            m.apply(Command::RebalanceLeaders),
            Outcome::LeadersRebalanced { moved: 1 }
        );
        let p0 = &m.topics["t"].partitions[0];
        assert_eq!(p0.leader, Some(p0.replicas[0]));
        assert!(p0.leader_epoch > before);
        assert_eq!(m.unbalanced_leaders(), 0);

        // unclean election only when no in-sync replica is alive
        let elect = |unclean| Command::ElectLeader {
            topic: "t".into(),
            partition: 0,
            unclean,
        };
        assert!(matches!(
            m.apply(elect(true)),
            Outcome::Rejected(Rejection::Invalid { .. })
        ));
        let p = m
            .topics
            .get_mut("t")
            .expect("t")
            .partitions
            .get_mut(0)
            .expect("p0");
        let leader = p.leader.expect("leader");
        p.isr = vec![leader];
        let inc = m.brokers[&leader].incarnation;
        m.apply(Command::FenceBroker {
            id: leader,
            incarnation: inc,
        });
        assert_eq!(
            m.topics["t"].partitions[0].leader, None,
            "offline: its only ISR member is gone"
        );
        assert!(matches!(m.apply(elect(false)), Outcome::Rejected(_)));
        let out = m.apply(elect(true));
        let Outcome::LeaderElected {
            leader: new,
            unclean: true,
            ..
        } = out
        else {
            panic!("{out:?}")
        };
        assert_ne!(new, leader);
        assert_eq!(m.topics["t"].partitions[0].isr, vec![new]);
    }

    #[test]
    fn reassignment_adds_catches_up_then_switches() {
        let mut m = Metadata::default();
        for id in 1..=4 {
            register(&mut m, id, None);
        }
        create(&mut m, "t", 1, 3);
        let before = m.topics["t"].partitions[0].clone();
        let leaving = before.replicas[0];
        let joining = BrokerId(4);
        let target: Vec<BrokerId> = before.replicas[1..]
            .iter()
            .copied()
            .chain([joining])
            .collect();
        let reassign = |replicas: Vec<BrokerId>| Command::Reassign {
            topic: "t".into(),
            partition: 0,
            replicas,
            throttle_bytes_per_s: 1000,
        };
        for bad in [vec![], vec![joining, joining], vec![BrokerId(9)]] {
            assert!(matches!(
                m.apply(reassign(bad)),
                Outcome::Rejected(Rejection::Invalid { .. })
            ));
        }
        assert!(matches!(
            m.apply(reassign(target.clone())),
            Outcome::ReassignmentStarted { .. }
        ));
        let p = &m.topics["t"].partitions[0];
        assert_eq!(p.replicas.len(), 4, "old and new replicas together: {p:?}");
        assert_eq!(p.reassign_throttle_bytes_per_s, 1000);
        assert!(
            matches!(m.apply(reassign(target.clone())), Outcome::Rejected(_)),
            "one at a time"
        );
        // not in sync yet: nothing completes
        assert_eq!(m.completable_reassignments(), 0);
        assert_eq!(
            m.apply(Command::CompleteReassignments),
            Outcome::ReassignmentsCompleted { completed: 0 }
        );
        // the new replica catches up (as the leader's AlterIsr would record)
        m.topics.get_mut("t").expect("t").partitions[0]
            .isr
            .push(joining);
        assert_eq!(m.completable_reassignments(), 1);
        m.apply(Command::CompleteReassignments);
        let p = &m.topics["t"].partitions[0];
        assert_eq!(p.replicas, target);
        assert!(!p.isr.contains(&leaving));
        assert!(
            p.leader.is_some_and(|l| target.contains(&l)),
            "the leader moved off the leaving replica"
        );
        assert!(p.leader_epoch > before.leader_epoch);
        assert_eq!(p.reassigning_to, None);
    }

    #[test]
    fn partitions_and_config_change() {
        let mut m = Metadata::default();
        register(&mut m, 1, None);
        register(&mut m, 2, None);
        create(&mut m, "t", 1, 2);
        assert!(matches!(
            m.apply(Command::CreatePartitions {
                name: "t".into(),
                total: 1
            }),
            Outcome::Rejected(Rejection::Invalid { .. })
        ));
        assert_eq!(
            m.apply(Command::CreatePartitions {
                name: "t".into(),
                total: 3
            }),
            Outcome::PartitionsCreated { total: 3 }
        );
        assert_eq!(m.topics["t"].partitions.len(), 3);
        assert!(
            m.topics["t"]
                .partitions
                .iter()
                .all(|p| p.replicas.len() == 2)
        );
        let out = m.apply(Command::AlterConfig {
            name: "t".into(),
            change: ConfigChange {
                min_insync_replicas: Some(3),
                ..ConfigChange::default()
            },
        });
        assert!(
            matches!(out, Outcome::Rejected(Rejection::Invalid { ref field, .. }) if field == "min_insync_replicas")
        );
        let out = m.apply(Command::AlterConfig {
            name: "t".into(),
            change: ConfigChange {
                retention_ms: Some(None),
                min_insync_replicas: Some(2),
                ..ConfigChange::default()
            },
        });
        let Outcome::ConfigAltered { config } = out else {
            panic!("{out:?}")
        };
        assert_eq!(config.retention_ms, None);
        assert_eq!(config.min_insync_replicas, 2);
        assert!(matches!(
            m.apply(Command::DeleteTopic { name: "t".into() }),
            Outcome::TopicDeleted { .. }
        ));
        assert!(m.topics.is_empty());
    }
}
