//! Consumer groups: membership, server-side assignment, incremental reconciliation and
//! committed offsets, as a pure state machine (KIP-848 style).
//!
//! Every change goes through [`Groups::apply`] on every controller from the Raft log, so the
//! logic here is deterministic: no clock (the proposer stamps times into commands), no
//! randomness. The active controller runs a heartbeat against a copy of the group first and
//! writes to Raft only when something changed.
//!
//! Reconciliation: when the group epoch moves past the target assignment's epoch, the assignor
//! computes a new target. A member that owns partitions outside its target first has them
//! moved to `revoking` (it keeps its epoch); once its heartbeat reports it no longer owns them
//! it advances to the target epoch and receives the target partitions no other member still
//! holds. A partition is therefore never in two members' `assigned ∪ revoking` at once.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicPartition {
    // short names: commits are most of the Raft log, and every byte is written three times
    #[serde(rename = "t")]
    pub topic: String,
    #[serde(rename = "p")]
    pub partition: u32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: u32) -> TopicPartition {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// How the target assignment is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Assignor {
    /// Balanced over all subscribed partitions (counts differ by at most one among members
    /// with the same subscription), keeping each partition where it was when possible.
    #[default]
    Uniform,
    /// Per topic, consecutive ranges of partitions to members in member-id order.
    Range,
}

impl Assignor {
    pub fn parse(raw: &str) -> Option<Assignor> {
        match raw {
            "uniform" | "sticky" => Some(Assignor::Uniform),
            "range" => Some(Assignor::Range),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Assignor::Uniform => "uniform",
            Assignor::Range => "range",
        }
    }
}

/// A member of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    /// Static membership: a restarted process with the same instance id takes over this
    /// member's partitions without a rebalance.
    pub instance_id: Option<String>,
    pub client_id: String,
    pub host: String,
    pub topics: BTreeSet<String>,
    pub regex: Option<String>,
    pub rebalance_timeout_ms: u32,
    pub session_timeout_ms: u32,
    pub epoch: i32,
    /// The epoch before the last bump: a heartbeat or commit whose response was lost may still
    /// carry it.
    pub previous_epoch: i32,
    /// Partitions the member owns and may keep.
    pub assigned: BTreeSet<TopicPartition>,
    /// Partitions the member still owns but must give up (commit, then confirm by heartbeat).
    pub revoking: BTreeSet<TopicPartition>,
    /// A static member that left temporarily (epoch -2): kept, with its partitions, until its
    /// session times out.
    pub departed: bool,
}

impl Member {
    pub fn owns(&self, tp: &TopicPartition) -> bool {
        self.assigned.contains(tp) || self.revoking.contains(tp)
    }

    fn subscribes(&self, topic: &str, regex: Option<&regex::Regex>) -> bool {
        self.topics.contains(topic) || regex.is_some_and(|r| r.is_match(topic))
    }
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub offset: i64,
    pub metadata: String,
    pub commit_time_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub group_epoch: i32,
    /// The epoch the target assignment was computed for.
    pub assignment_epoch: i32,
    pub assignor: Assignor,
    pub members: BTreeMap<String, Member>,
    /// Member id → the partitions it should end up with.
    pub target: BTreeMap<String, BTreeSet<TopicPartition>>,
    /// Subscribed topic → partition count, as the target was computed.
    pub subscribed: BTreeMap<String, u32>,
}

/// A heartbeat as the member sent it. `None` fields are unchanged since the last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub group: String,
    pub member_id: String,
    /// 0 to join, -1 to leave, -2 for a static member's temporary leave, otherwise the
    /// member's current epoch.
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub host: String,
    pub topics: Option<Vec<String>>,
    pub regex: Option<String>,
    pub owned: Option<Vec<TopicPartition>>,
    pub rebalance_timeout_ms: u32,
    pub session_timeout_ms: u32,
    pub assignor: Option<Assignor>,
}

pub const LEAVE: i32 = -1;
pub const STATIC_LEAVE: i32 = -2;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub member_id: String,
    pub member_epoch: i32,
    /// Everything the member may own now (its assignment minus what it must revoke).
    pub assignment: Vec<TopicPartition>,
    /// The member holds exactly its target. While it does not, it should heartbeat sooner:
    /// partitions it waits for are handed over as soon as their owners release them.
    pub settled: bool,
}

/// Why a group request was refused. Refusals change nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum GroupError {
    #[error("member {member:?} is not in group {group:?}")]
    UnknownMember { group: String, member: String },
    #[error("member {member:?} of group {group:?} sent epoch {got}, current is {current}")]
    FencedEpoch {
        group: String,
        member: String,
        got: i32,
        current: i32,
    },
    #[error("member {member:?} of group {group:?} does not own {partition}")]
    NotOwned {
        group: String,
        member: String,
        partition: TopicPartition,
    },
    #[error("group {0:?} does not exist")]
    UnknownGroup(String),
    #[error("group {group:?} has {members} active member(s); stop them first")]
    NotEmpty { group: String, members: usize },
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: &str, reason: impl Into<String>) -> GroupError {
    GroupError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// One offset in a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetCommit {
    #[serde(rename = "tp")]
    pub partition: TopicPartition,
    #[serde(rename = "o")]
    pub offset: i64,
    #[serde(rename = "m", default, skip_serializing_if = "String::is_empty")]
    pub metadata: String,
}

/// One client's commit request (a Raft entry carries many).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRequest {
    #[serde(rename = "g")]
    pub group: String,
    /// Empty for a commit outside group membership (only while the group has no members).
    #[serde(rename = "m")]
    pub member_id: String,
    #[serde(rename = "e")]
    pub member_epoch: i32,
    #[serde(rename = "o")]
    pub offsets: Vec<OffsetCommit>,
}

pub const GROUP_NAME_BYTES_MAX: usize = 249;
pub const METADATA_BYTES_MAX: usize = 4096;

pub fn validate_group_name(name: &str) -> Result<(), GroupError> {
    if name.is_empty() || name.len() > GROUP_NAME_BYTES_MAX {
        return Err(invalid(
            "group",
            format!("must be 1 to {GROUP_NAME_BYTES_MAX} bytes"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("group", "must not contain control characters"));
    }
    Ok(())
}

/// What a group looks like from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members (only committed offsets, if any).
    Empty,
    /// Members are moving partitions toward the target assignment.
    Reconciling,
    /// Every member holds exactly its target at the group's epoch.
    Stable,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "empty",
            GroupState::Reconciling => "reconciling",
            GroupState::Stable => "stable",
        }
    }
}

impl Group {
    pub fn new(name: &str) -> Group {
        Group {
            name: name.to_string(),
            ..Group::default()
        }
    }

    pub fn state(&self) -> GroupState {
        if self.members.is_empty() {
            return GroupState::Empty;
        }
        let settled = self.assignment_epoch == self.group_epoch
            && self.members.values().all(|m| {
                m.epoch == self.assignment_epoch
                    && m.revoking.is_empty()
                    && self.target.get(&m.id).is_none_or(|t| *t == m.assigned)
            });
        if settled {
            GroupState::Stable
        } else {
            GroupState::Reconciling
        }
    }

    /// The partition's owner, if any member holds it.
    pub fn owner(&self, tp: &TopicPartition) -> Option<&Member> {
        self.members.values().find(|m| m.owns(tp))
    }

    /// The topics (with partition counts) the members subscribe to, among `topics`.
    fn subscription(&self, topics: &BTreeMap<String, u32>) -> BTreeMap<String, u32> {
        let regexes = self.regexes();
        topics
            .iter()
            .filter(|(name, _)| {
                self.members
                    .values()
                    .any(|m| m.subscribes(name, regexes.get(&m.id).and_then(Option::as_ref)))
            })
            .map(|(n, c)| (n.clone(), *c))
            .collect()
    }

    fn regexes(&self) -> BTreeMap<String, Option<regex::Regex>> {
        self.members
            .values()
            .map(|m| (m.id.clone(), m.regex.as_deref().and_then(compile)))
            .collect()
    }

    fn bump(&mut self) {
        self.group_epoch += 1;
    }

    /// Processes one heartbeat against the topics that exist (name → partition count).
    pub fn heartbeat(
        &mut self,
        hb: &Heartbeat,
        topics: &BTreeMap<String, u32>,
    ) -> Result<HeartbeatReply, GroupError> {
        validate_heartbeat(hb)?;
        if hb.member_epoch == LEAVE || hb.member_epoch == STATIC_LEAVE {
            return Ok(self.leave(hb));
        }
        let id = hb.member_id.clone();
        if hb.member_epoch == 0 {
            self.join(hb);
        } else {
            let member = self
                .members
                .get(&id)
                .ok_or_else(|| GroupError::UnknownMember {
                    group: self.name.clone(),
                    member: id.clone(),
                })?;
            let lost_response = hb.member_epoch == member.previous_epoch
                && hb
                    .owned
                    .as_ref()
                    .is_some_and(|o| o.iter().all(|tp| member.owns(tp)));
            if hb.member_epoch != member.epoch && !lost_response {
                return Err(GroupError::FencedEpoch {
                    group: self.name.clone(),
                    member: id,
                    got: hb.member_epoch,
                    current: member.epoch,
                });
            }
        }
        self.update_member(hb);
        if let Some(assignor) = hb.assignor
            && assignor != self.assignor
        {
            self.assignor = assignor;
            self.bump();
        }
        let subscription = self.subscription(topics);
        if subscription != self.subscribed {
            self.subscribed = subscription;
            self.bump();
        }
        if self.group_epoch > self.assignment_epoch {
            self.retarget();
        }
        if let Some(owned) = &hb.owned {
            let owned: BTreeSet<&TopicPartition> = owned.iter().collect();
            if let Some(m) = self.members.get_mut(&id) {
                m.revoking.retain(|tp| owned.contains(tp));
            }
        }
        self.reconcile(&id);
        let m = &self.members[&id];
        let settled = m.revoking.is_empty()
            && m.epoch == self.assignment_epoch
            && self.target.get(&id).is_none_or(|t| *t == m.assigned);
        Ok(HeartbeatReply {
            member_id: id,
            member_epoch: m.epoch,
            assignment: m.assigned.iter().cloned().collect(),
            settled,
        })
    }

    fn leave(&mut self, hb: &Heartbeat) -> HeartbeatReply {
        let reply = HeartbeatReply {
            member_id: hb.member_id.clone(),
            member_epoch: hb.member_epoch,
            assignment: Vec::new(),
            settled: true,
        };
        let Some(member) = self.members.get_mut(&hb.member_id) else {
            return reply;
        };
        if hb.member_epoch == STATIC_LEAVE && member.instance_id.is_some() {
            member.departed = true;
        } else {
            self.remove(&hb.member_id);
        }
        reply
    }

    /// Removes a member (left, timed out or fenced): its partitions are free at once.
    pub fn remove(&mut self, member_id: &str) -> bool {
        if self.members.remove(member_id).is_none() {
            return false;
        }
        self.target.remove(member_id);
        self.bump();
        true
    }

    fn join(&mut self, hb: &Heartbeat) {
        // A member that rejoins with epoch 0 lost its state: start it over.
        if self.members.contains_key(&hb.member_id) {
            self.remove(&hb.member_id);
        }
        let predecessor = hb.instance_id.as_ref().and_then(|instance| {
            self.members
                .values()
                .find(|m| m.instance_id.as_ref() == Some(instance))
                .map(|m| m.id.clone())
        });
        match predecessor {
            Some(old) => {
                // Static member restarted: take over its epoch and partitions; the old id is
                // fenced (its commits get UNKNOWN_MEMBER_ID).
                if let Some(mut m) = self.members.remove(&old) {
                    m.id = hb.member_id.clone();
                    m.departed = false;
                    self.members.insert(hb.member_id.clone(), m);
                }
                if let Some(t) = self.target.remove(&old) {
                    self.target.insert(hb.member_id.clone(), t);
                }
            }
            None => {
                self.members.insert(
                    hb.member_id.clone(),
                    Member {
                        id: hb.member_id.clone(),
                        instance_id: hb.instance_id.clone(),
                        client_id: String::new(),
                        host: String::new(),
                        topics: BTreeSet::new(),
                        regex: None,
                        rebalance_timeout_ms: 0,
                        session_timeout_ms: 0,
                        epoch: 0,
                        previous_epoch: 0,
                        assigned: BTreeSet::new(),
                        revoking: BTreeSet::new(),
                        departed: false,
                    },
                );
                self.bump();
            }
        }
    }

    fn update_member(&mut self, hb: &Heartbeat) {
        let Some(m) = self.members.get_mut(&hb.member_id) else {
            return;
        };
        m.client_id.clone_from(&hb.client_id);
        m.host.clone_from(&hb.host);
        m.rebalance_timeout_ms = hb.rebalance_timeout_ms;
        m.session_timeout_ms = hb.session_timeout_ms;
        m.departed = false;
        let mut changed = false;
        if let Some(topics) = &hb.topics {
            let topics: BTreeSet<String> = topics.iter().cloned().collect();
            if topics != m.topics {
                m.topics = topics;
                changed = true;
            }
        }
        if hb.topics.is_some() || hb.regex.is_some() {
            let regex = hb.regex.clone().filter(|r| !r.is_empty());
            if regex != m.regex {
                m.regex = regex;
                changed = true;
            }
        }
        if changed {
            self.bump();
        }
    }

    /// Computes the target assignment for the current group epoch.
    fn retarget(&mut self) {
        let regexes = self.regexes();
        let partitions: Vec<TopicPartition> = self
            .subscribed
            .iter()
            .flat_map(|(t, n)| (0..*n).map(move |p| TopicPartition::new(t.clone(), p)))
            .collect();
        let eligible: BTreeMap<String, BTreeSet<String>> = self
            .members
            .values()
            .map(|m| {
                let topics = self
                    .subscribed
                    .keys()
                    .filter(|t| m.subscribes(t, regexes.get(&m.id).and_then(Option::as_ref)))
                    .cloned()
                    .collect();
                (m.id.clone(), topics)
            })
            .collect();
        self.target = match self.assignor {
            Assignor::Uniform => assign_uniform(&partitions, &eligible, &self.target),
            Assignor::Range => assign_range(&self.subscribed, &eligible),
        };
        self.assignment_epoch = self.group_epoch;
    }

    /// Moves one member toward its target: revoke first, then take what is free.
    fn reconcile(&mut self, id: &str) {
        let target = self.target.get(id).cloned().unwrap_or_default();
        let held_elsewhere: BTreeSet<TopicPartition> = self
            .members
            .values()
            .filter(|m| m.id != id)
            .flat_map(|m| m.assigned.iter().chain(m.revoking.iter()).cloned())
            .collect();
        let assignment_epoch = self.assignment_epoch;
        let Some(m) = self.members.get_mut(id) else {
            return;
        };
        if !m.revoking.is_empty() {
            return;
        }
        let to_revoke: BTreeSet<TopicPartition> = m.assigned.difference(&target).cloned().collect();
        if !to_revoke.is_empty() {
            m.assigned.retain(|tp| target.contains(tp));
            m.revoking = to_revoke;
            return;
        }
        if m.epoch != assignment_epoch {
            m.previous_epoch = m.epoch;
            m.epoch = assignment_epoch;
        }
        for tp in target {
            if !held_elsewhere.contains(&tp) {
                m.assigned.insert(tp);
            }
        }
    }

    /// Checks that `member_id` at `epoch` may commit or fetch `partitions`. An empty member
    /// id acts outside membership: allowed only while the group has no members.
    pub fn check_member<'a>(
        &self,
        member_id: &str,
        epoch: i32,
        partitions: impl IntoIterator<Item = &'a TopicPartition>,
        write: bool,
    ) -> Result<(), GroupError> {
        if member_id.is_empty() {
            if write && !self.members.is_empty() {
                return Err(GroupError::NotEmpty {
                    group: self.name.clone(),
                    members: self.members.len(),
                });
            }
            return Ok(());
        }
        let m = self
            .members
            .get(member_id)
            .ok_or_else(|| GroupError::UnknownMember {
                group: self.name.clone(),
                member: member_id.to_string(),
            })?;
        if epoch != m.epoch && epoch != m.previous_epoch {
            return Err(GroupError::FencedEpoch {
                group: self.name.clone(),
                member: member_id.to_string(),
                got: epoch,
                current: m.epoch,
            });
        }
        for tp in partitions {
            if !m.owns(tp) {
                return Err(GroupError::NotOwned {
                    group: self.name.clone(),
                    member: member_id.to_string(),
                    partition: tp.clone(),
                });
            }
        }
        Ok(())
    }
}

fn compile(raw: &str) -> Option<regex::Regex> {
    regex::Regex::new(&format!("^(?:{raw})$")).ok()
}

fn validate_heartbeat(hb: &Heartbeat) -> Result<(), GroupError> {
    validate_group_name(&hb.group)?;
    if hb.member_id.is_empty() || hb.member_id.len() > 255 {
        return Err(invalid("member_id", "must be 1 to 255 bytes"));
    }
    if hb.member_epoch < STATIC_LEAVE {
        return Err(invalid("member_epoch", "must be -2, -1, 0 or positive"));
    }
    if let Some(r) = &hb.regex
        && !r.is_empty()
        && compile(r).is_none()
    {
        return Err(invalid("subscribed_regex", format!("{r:?} is not a regex")));
    }
    if hb.member_epoch == 0 && hb.topics.is_none() && hb.regex.is_none() {
        return Err(invalid(
            "subscribed_topics",
            "a joining member must subscribe to topics or a regex",
        ));
    }
    Ok(())
}

/// Uniform, sticky assignment: each partition stays with its previous owner while that keeps
/// the counts balanced; the rest go to the least-loaded eligible member; then partitions move
/// from the most to the least loaded member until no eligible pair differs by two or more.
pub fn assign_uniform(
    partitions: &[TopicPartition],
    eligible: &BTreeMap<String, BTreeSet<String>>,
    previous: &BTreeMap<String, BTreeSet<TopicPartition>>,
) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    let mut out: BTreeMap<String, BTreeSet<TopicPartition>> = eligible
        .keys()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    let can = |m: &str, tp: &TopicPartition| eligible.get(m).is_some_and(|t| t.contains(&tp.topic));
    let mut unassigned: Vec<&TopicPartition> = Vec::new();
    let previous_owner: BTreeMap<&TopicPartition, &String> = previous
        .iter()
        .flat_map(|(m, tps)| tps.iter().map(move |tp| (tp, m)))
        .collect();
    for tp in partitions {
        match previous_owner.get(tp) {
            Some(m) if out.contains_key(*m) && can(m, tp) => {
                if let Some(set) = out.get_mut(*m) {
                    set.insert(tp.clone());
                }
            }
            _ => unassigned.push(tp),
        }
    }
    for tp in unassigned {
        let least = out
            .iter()
            .filter(|(m, _)| can(m, tp))
            .min_by_key(|(m, set)| (set.len(), (*m).clone()))
            .map(|(m, _)| m.clone());
        if let Some(m) = least
            && let Some(set) = out.get_mut(&m)
        {
            set.insert(tp.clone());
        }
    }
    // Balance: move one partition at a time from a member to an eligible member holding at
    // least two fewer. Each move lowers the sum of squared counts, so this ends.
    loop {
        let mut moved = false;
        let mut by_load: Vec<(usize, String)> =
            out.iter().map(|(m, s)| (s.len(), m.clone())).collect();
        by_load.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        'outer: for (load, from) in &by_load {
            for (other_load, to) in by_load.iter().rev() {
                if other_load + 1 >= *load {
                    break;
                }
                let candidate = out[from].iter().rev().find(|tp| can(to, tp)).cloned();
                if let Some(tp) = candidate {
                    if let Some(s) = out.get_mut(from) {
                        s.remove(&tp);
                    }
                    if let Some(s) = out.get_mut(to) {
                        s.insert(tp);
                    }
                    moved = true;
                    break 'outer;
                }
            }
        }
        if !moved {
            return out;
        }
    }
}

/// Range assignment: per topic, members subscribed to it in id order get consecutive ranges,
/// the first `partitions % members` one partition more.
pub fn assign_range(
    topics: &BTreeMap<String, u32>,
    eligible: &BTreeMap<String, BTreeSet<String>>,
) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    let mut out: BTreeMap<String, BTreeSet<TopicPartition>> = eligible
        .keys()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    for (topic, count) in topics {
        let members: Vec<&String> = eligible
            .iter()
            .filter(|(_, t)| t.contains(topic))
            .map(|(m, _)| m)
            .collect();
        if members.is_empty() {
            continue;
        }
        let n = members.len() as u32;
        let (base, extra) = (count / n, count % n);
        let mut next = 0;
        for (i, m) in members.iter().enumerate() {
            let take = base + u32::from((i as u32) < extra);
            if let Some(set) = out.get_mut(*m) {
                set.extend((next..next + take).map(|p| TopicPartition::new(topic.clone(), p)));
            }
            next += take;
        }
    }
    out
}

/// Group commands as replicated through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupCommand {
    Heartbeat(Heartbeat),
    /// Commits from many clients, coalesced into one entry; each succeeds or fails alone.
    CommitOffsets {
        time_ms: i64,
        commits: Vec<CommitRequest>,
    },
    /// Removes a member whose session or rebalance timeout ran out.
    RemoveMember {
        group: String,
        member_id: String,
    },
    /// Sets offsets of a group with no members (admin reset).
    ResetOffsets {
        group: String,
        time_ms: i64,
        offsets: Vec<OffsetCommit>,
    },
    DeleteGroup {
        group: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupOutcome {
    Heartbeat(Result<HeartbeatReply, GroupError>),
    Committed(Vec<Result<(), GroupError>>),
    Removed(bool),
    Reset(Result<(), GroupError>),
    Deleted(Result<(), GroupError>),
}

/// Group name → topic → partition → committed offset.
pub type Offsets = BTreeMap<String, BTreeMap<String, BTreeMap<u32, Committed>>>;

/// Every group and its committed offsets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Groups {
    pub groups: BTreeMap<String, Group>,
    pub offsets: Offsets,
}

impl Groups {
    /// Applies a command against the current topics (name → partition count).
    pub fn apply(&mut self, command: GroupCommand, topics: &BTreeMap<String, u32>) -> GroupOutcome {
        match command {
            GroupCommand::Heartbeat(hb) => {
                let mut group = self
                    .groups
                    .get(&hb.group)
                    .cloned()
                    .unwrap_or_else(|| Group::new(&hb.group));
                let result = group.heartbeat(&hb, topics);
                if result.is_ok()
                    && (self.groups.contains_key(&hb.group) || !group.members.is_empty())
                {
                    self.put(group);
                }
                GroupOutcome::Heartbeat(result)
            }
            GroupCommand::CommitOffsets { time_ms, commits } => GroupOutcome::Committed(
                commits
                    .into_iter()
                    .map(|c| self.commit(c, time_ms))
                    .collect(),
            ),
            GroupCommand::RemoveMember { group, member_id } => {
                let Some(mut g) = self.groups.get(&group).cloned() else {
                    return GroupOutcome::Removed(false);
                };
                let removed = g.remove(&member_id);
                self.put(g);
                GroupOutcome::Removed(removed)
            }
            GroupCommand::ResetOffsets {
                group,
                time_ms,
                offsets,
            } => GroupOutcome::Reset(self.reset(&group, time_ms, offsets)),
            GroupCommand::DeleteGroup { group } => GroupOutcome::Deleted(self.delete(&group)),
        }
    }

    fn put(&mut self, group: Group) {
        if self.groups.get(&group.name) != Some(&group) {
            self.groups.insert(group.name.clone(), group);
        }
    }

    fn set_offset(&mut self, group: &str, o: OffsetCommit, time_ms: i64) {
        self.offsets
            .entry(group.to_string())
            .or_default()
            .entry(o.partition.topic.clone())
            .or_default()
            .insert(
                o.partition.partition,
                Committed {
                    offset: o.offset,
                    metadata: o.metadata,
                    commit_time_ms: time_ms,
                },
            );
    }

    /// Validates a commit request as a whole, then stores every offset in it.
    pub fn check_commit(&self, c: &CommitRequest) -> Result<(), GroupError> {
        validate_group_name(&c.group)?;
        validate_offsets(&c.offsets)?;
        match self.groups.get(&c.group) {
            Some(g) => g.check_member(
                &c.member_id,
                c.member_epoch,
                c.offsets.iter().map(|o| &o.partition),
                true,
            ),
            None if c.member_id.is_empty() => Ok(()),
            None => Err(GroupError::UnknownMember {
                group: c.group.clone(),
                member: c.member_id.clone(),
            }),
        }
    }

    fn commit(&mut self, c: CommitRequest, time_ms: i64) -> Result<(), GroupError> {
        if !weir_faults::bugs::active(weir_faults::bugs::Bug::StaleMemberCommit) {
            self.check_commit(&c)?;
        }
        if !self.groups.contains_key(&c.group) {
            self.put(Group::new(&c.group));
        }
        for o in c.offsets {
            self.set_offset(&c.group, o, time_ms);
        }
        Ok(())
    }

    fn reset(
        &mut self,
        group: &str,
        time_ms: i64,
        offsets: Vec<OffsetCommit>,
    ) -> Result<(), GroupError> {
        validate_group_name(group)?;
        validate_offsets(&offsets)?;
        if let Some(g) = self.groups.get(group)
            && !g.members.is_empty()
        {
            return Err(GroupError::NotEmpty {
                group: group.to_string(),
                members: g.members.len(),
            });
        }
        if !self.groups.contains_key(group) {
            self.put(Group::new(group));
        }
        for o in offsets {
            self.set_offset(group, o, time_ms);
        }
        Ok(())
    }

    fn delete(&mut self, group: &str) -> Result<(), GroupError> {
        let g = self
            .groups
            .get(group)
            .ok_or_else(|| GroupError::UnknownGroup(group.to_string()))?;
        if !g.members.is_empty() {
            return Err(GroupError::NotEmpty {
                group: group.to_string(),
                members: g.members.len(),
            });
        }
        self.groups.remove(group);
        self.offsets.remove(group);
        Ok(())
    }

    /// Drops every group's committed offsets for a deleted topic.
    pub fn topic_deleted(&mut self, topic: &str) {
        for topics in self.offsets.values_mut() {
            topics.remove(topic);
        }
        self.offsets.retain(|_, t| !t.is_empty());
    }

    pub fn committed(&self, group: &str, tp: &TopicPartition) -> Option<&Committed> {
        self.offsets.get(group)?.get(&tp.topic)?.get(&tp.partition)
    }
}

fn validate_offsets(offsets: &[OffsetCommit]) -> Result<(), GroupError> {
    if offsets.is_empty() {
        return Err(invalid("offsets", "must not be empty"));
    }
    for o in offsets {
        if o.offset < 0 {
            return Err(invalid(
                "offsets.offset",
                format!("{} for {} is negative", o.offset, o.partition),
            ));
        }
        if o.metadata.len() > METADATA_BYTES_MAX {
            return Err(invalid(
                "offsets.metadata",
                format!("longer than {METADATA_BYTES_MAX} bytes"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
