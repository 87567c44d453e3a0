//! The `GroupCoordinator` gRPC service: consumer-group heartbeats, offset commits and fetches,
//! and group administration, on the active controller.
//!
//! - A heartbeat is first run against a copy of the group; only one that changes the group
//!   (join, leave, new subscription, a revocation confirmed, an epoch advanced) is written
//!   through Raft. Liveness (last heartbeat) stays in memory on the active controller.
//! - Commits are queued and coalesced: one Raft entry carries every commit that arrived while
//!   the previous entries were being replicated; each request is answered once its entry is
//!   applied.
//! - The session task removes members whose session or rebalance timeout ran out.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tonic::{Request, Response, Status};
use weir_proto::status::status;
use weir_proto::v1::group_coordinator_server::GroupCoordinator;
use weir_proto::v1::{self as pb};
use weir_types::ErrorCode;
use weir_types::acl::{CLUSTER, Operation, ResourceType};

use crate::admin::Services;
use crate::group::{
    self, Assignor, CommitRequest, Group, GroupCommand, GroupError, GroupOutcome, Groups,
    Heartbeat, OffsetCommit, TopicPartition,
};
use crate::metadata::{Command, Outcome};

/// Commits one Raft entry carries at most.
const COMMITS_PER_ENTRY_MAX: usize = 2000;
/// Commit entries in flight at once.
const COMMIT_ENTRIES_IN_FLIGHT: usize = 1;
/// Commits queued before callers wait.
const COMMIT_QUEUE: usize = 16_384;
pub const SESSION_TIMEOUT_MIN_MS: u32 = 1000;
pub const SESSION_TIMEOUT_MAX_MS: u32 = 300_000;
const REBALANCE_TIMEOUT_DEFAULT_MS: u32 = 60_000;

#[derive(Debug, Clone, Copy)]
pub struct GroupSettings {
    pub heartbeat_interval_ms: u32,
    pub session_timeout_ms: u32,
}

type Pending = (CommitRequest, oneshot::Sender<Result<(), Status>>);

/// In-memory liveness of members, meaningful only on the active controller.
#[derive(Debug, Default)]
struct Sessions {
    /// (group, member) → last heartbeat.
    seen: HashMap<(String, String), Instant>,
    /// (group, member) → when it was first seen revoking.
    revoking: HashMap<(String, String), Instant>,
}

#[derive(Clone)]
pub struct Coordinator {
    services: Services,
    settings: GroupSettings,
    commits: mpsc::Sender<Pending>,
    sessions: Arc<Mutex<Sessions>>,
}

pub fn group_status(e: GroupError) -> Status {
    let code = match &e {
        GroupError::UnknownMember { .. } => ErrorCode::UnknownMemberId,
        GroupError::FencedEpoch { .. } | GroupError::NotOwned { .. } => {
            ErrorCode::FencedMemberEpoch
        }
        GroupError::UnknownGroup(_) => ErrorCode::GroupIdNotFound,
        GroupError::NotEmpty { .. } => ErrorCode::GroupNotEmpty,
        GroupError::Invalid { .. } => ErrorCode::InvalidArgument,
    };
    status(code, e.to_string())
}

fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    status(
        ErrorCode::InvalidArgument,
        format!("invalid {field}: {reason}"),
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn tp_from(p: pb::TopicPartition) -> TopicPartition {
    TopicPartition::new(p.topic, p.partition)
}

fn tp_to(p: &TopicPartition) -> pb::TopicPartition {
    pb::TopicPartition {
        topic: p.topic.clone(),
        partition: p.partition,
    }
}

fn offsets_from(raw: Vec<pb::OffsetAndMetadata>) -> Result<Vec<OffsetCommit>, Status> {
    raw.into_iter()
        .map(|o| {
            if o.topic.is_empty() {
                return Err(invalid("offsets.topic", "must not be empty"));
            }
            Ok(OffsetCommit {
                partition: TopicPartition::new(o.topic, o.partition),
                offset: o.offset,
                metadata: o.metadata,
            })
        })
        .collect()
}

fn lock(s: &Mutex<Sessions>) -> std::sync::MutexGuard<'_, Sessions> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl Coordinator {
    /// Starts the commit batcher and the session task; both stop with `stopped`.
    pub fn start(
        services: Services,
        settings: GroupSettings,
        stopped: watch::Receiver<bool>,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Coordinator {
        let (tx, rx) = mpsc::channel(COMMIT_QUEUE);
        let coordinator = Coordinator {
            services,
            settings,
            commits: tx,
            sessions: Arc::default(),
        };
        tasks.spawn(commit_batcher(
            coordinator.services.clone(),
            rx,
            stopped.clone(),
        ));
        tasks.spawn(session_task(coordinator.clone(), stopped));
        coordinator
    }

    fn heartbeat_from(&self, r: pb::ConsumerGroupHeartbeatRequest) -> Result<Heartbeat, Status> {
        let session = match r.session_timeout_ms {
            0 => self.settings.session_timeout_ms,
            ms if (SESSION_TIMEOUT_MIN_MS..=SESSION_TIMEOUT_MAX_MS).contains(&ms) => ms,
            ms => {
                return Err(invalid(
                    "session_timeout_ms",
                    format!("{ms} is outside {SESSION_TIMEOUT_MIN_MS}..={SESSION_TIMEOUT_MAX_MS}"),
                ));
            }
        };
        let assignor = match r.assignor.as_str() {
            "" => None,
            raw => Some(Assignor::parse(raw).ok_or_else(|| {
                invalid(
                    "assignor",
                    format!("{raw:?} is not \"uniform\" or \"range\""),
                )
            })?),
        };
        if let Some(t) = &r.subscribed_topics
            && let Some(bad) = t.topics.iter().find(|t| t.is_empty())
        {
            return Err(invalid("subscribed_topics", format!("{bad:?} is empty")));
        }
        Ok(Heartbeat {
            group: r.group,
            member_id: r.member_id,
            member_epoch: r.member_epoch,
            instance_id: Some(r.instance_id).filter(|s| !s.is_empty()),
            client_id: r.client_id,
            host: String::new(),
            topics: r.subscribed_topics.map(|t| t.topics),
            regex: r.subscribed_regex,
            owned: r
                .owned
                .map(|o| o.partitions.into_iter().map(tp_from).collect()),
            rebalance_timeout_ms: match r.rebalance_timeout_ms {
                0 => REBALANCE_TIMEOUT_DEFAULT_MS,
                ms => ms,
            },
            session_timeout_ms: session,
            assignor,
        })
    }

    async fn propose_group(&self, command: GroupCommand) -> Result<GroupOutcome, Status> {
        match self.services.propose(Command::Group(command)).await? {
            Outcome::Group(o) => Ok(o),
            other => Err(status(
                ErrorCode::Unknown,
                format!("unexpected outcome {other:?}"),
            )),
        }
    }

    async fn group(&self, name: &str) -> Result<(Group, Vec<pb::OffsetAndMetadata>), Status> {
        let state = self.services.sm.read().await;
        let group = state
            .groups
            .groups
            .get(name)
            .cloned()
            .ok_or_else(|| group_status(GroupError::UnknownGroup(name.to_string())))?;
        Ok((group, committed(&state.groups, name, None)))
    }
}

/// The committed offsets of `group`, all or those in `only`.
fn committed(
    groups: &Groups,
    group: &str,
    only: Option<&[TopicPartition]>,
) -> Vec<pb::OffsetAndMetadata> {
    let Some(topics) = groups.offsets.get(group) else {
        return Vec::new();
    };
    let entry = |topic: &str, partition: u32, c: &group::Committed| pb::OffsetAndMetadata {
        topic: topic.to_string(),
        partition,
        offset: c.offset,
        metadata: c.metadata.clone(),
        commit_time_ms: c.commit_time_ms,
    };
    match only {
        Some(list) => list
            .iter()
            .filter_map(|tp| {
                let c = topics.get(&tp.topic)?.get(&tp.partition)?;
                Some(entry(&tp.topic, tp.partition, c))
            })
            .collect(),
        None => topics
            .iter()
            .flat_map(|(t, parts)| parts.iter().map(move |(p, c)| entry(t, *p, c)))
            .collect(),
    }
}

pub fn describe_group(g: &Group, offsets: Vec<pb::OffsetAndMetadata>) -> pb::GroupDescription {
    pb::GroupDescription {
        group: g.name.clone(),
        state: g.state().name().to_string(),
        group_epoch: g.group_epoch,
        assignment_epoch: g.assignment_epoch,
        assignor: g.assignor.name().to_string(),
        members: g
            .members
            .values()
            .map(|m| pb::GroupMember {
                member_id: m.id.clone(),
                instance_id: m.instance_id.clone().unwrap_or_default(),
                client_id: m.client_id.clone(),
                host: m.host.clone(),
                member_epoch: m.epoch,
                subscribed_topics: m.topics.iter().cloned().collect(),
                subscribed_regex: m.regex.clone().unwrap_or_default(),
                assigned: m.assigned.iter().map(tp_to).collect(),
                revoking: m.revoking.iter().map(tp_to).collect(),
                target: g
                    .target
                    .get(&m.id)
                    .into_iter()
                    .flatten()
                    .map(tp_to)
                    .collect(),
            })
            .collect(),
        offsets,
    }
}

#[tonic::async_trait]
impl GroupCoordinator for Coordinator {
    async fn consumer_group_heartbeat(
        &self,
        request: Request<pb::ConsumerGroupHeartbeatRequest>,
    ) -> Result<Response<pb::ConsumerGroupHeartbeatResponse>, Status> {
        self.services
            .authorize(
                &request,
                Operation::Read,
                ResourceType::Group,
                &request.get_ref().group,
            )
            .await?;
        if let Some(topics) = &request.get_ref().subscribed_topics {
            for topic in &topics.topics {
                self.services
                    .authorize(&request, Operation::Read, ResourceType::Topic, topic)
                    .await?;
            }
        }
        if request
            .get_ref()
            .subscribed_regex
            .as_deref()
            .is_some_and(|r| !r.is_empty())
        {
            // a pattern may match any topic: it needs read on every one
            self.services
                .authorize(&request, Operation::Read, ResourceType::Topic, "*")
                .await?;
        }
        self.services.leader_only()?;
        let host = request
            .remote_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let mut hb = self.heartbeat_from(request.into_inner())?;
        hb.host = host;
        let key = (hb.group.clone(), hb.member_id.clone());
        // Try it on a copy: write to Raft only if the group would change.
        let (dry, unchanged) = {
            let state = self.services.sm.read().await;
            let existing = state.groups.groups.get(&hb.group);
            let mut copy = existing.cloned().unwrap_or_else(|| Group::new(&hb.group));
            let reply = copy.heartbeat(&hb, &state.metadata.partition_counts());
            let unchanged = match existing {
                Some(g) => *g == copy,
                None => copy.members.is_empty(),
            };
            (reply, unchanged)
        };
        let reply = match dry {
            Err(e) => return Err(group_status(e)),
            Ok(reply) if unchanged => reply,
            Ok(_) => match self
                .propose_group(GroupCommand::Heartbeat(hb.clone()))
                .await?
            {
                GroupOutcome::Heartbeat(r) => r.map_err(group_status)?,
                other => {
                    return Err(status(
                        ErrorCode::Unknown,
                        format!("unexpected outcome {other:?}"),
                    ));
                }
            },
        };
        {
            let mut sessions = lock(&self.sessions);
            if hb.member_epoch < 0 {
                sessions.seen.remove(&key);
                sessions.revoking.remove(&key);
            } else {
                sessions.seen.insert(key, Instant::now());
            }
        }
        metrics::counter!("weir_group_heartbeats_total").increment(1);
        Ok(Response::new(pb::ConsumerGroupHeartbeatResponse {
            member_id: reply.member_id,
            member_epoch: reply.member_epoch,
            heartbeat_interval_ms: if reply.settled {
                self.settings.heartbeat_interval_ms
            } else {
                (self.settings.heartbeat_interval_ms / 10).max(50)
            },
            assignment: reply.assignment.iter().map(tp_to).collect(),
        }))
    }

    async fn commit_offsets(
        &self,
        request: Request<pb::CommitOffsetsRequest>,
    ) -> Result<Response<pb::CommitOffsetsResponse>, Status> {
        self.services
            .authorize(
                &request,
                Operation::Read,
                ResourceType::Group,
                &request.get_ref().group,
            )
            .await?;
        for o in &request.get_ref().offsets {
            self.services
                .authorize(&request, Operation::Read, ResourceType::Topic, &o.topic)
                .await?;
        }
        self.services.leader_only()?;
        let r = request.into_inner();
        let commit = CommitRequest {
            group: r.group,
            member_id: r.member_id,
            member_epoch: r.member_epoch,
            offsets: offsets_from(r.offsets)?,
        };
        // Fencing is checked when the commit is applied, against the group at that point
        // of the log (a check here as well would cost every commit a state lock).
        let (tx, rx) = oneshot::channel();
        self.commits
            .send((commit, tx))
            .await
            .map_err(|_| status(ErrorCode::NotController, "the controller is stopping"))?;
        rx.await
            .map_err(|_| status(ErrorCode::NotController, "the controller is stopping"))??;
        Ok(Response::new(pb::CommitOffsetsResponse {}))
    }

    async fn fetch_offsets(
        &self,
        request: Request<pb::FetchOffsetsRequest>,
    ) -> Result<Response<pb::FetchOffsetsResponse>, Status> {
        self.services
            .authorize(
                &request,
                Operation::Describe,
                ResourceType::Group,
                &request.get_ref().group,
            )
            .await?;
        self.services.linearizable().await?;
        let r = request.into_inner();
        group::validate_group_name(&r.group).map_err(group_status)?;
        let partitions: Vec<TopicPartition> = r.partitions.into_iter().map(tp_from).collect();
        let state = self.services.sm.read().await;
        if !r.member_id.is_empty() {
            let g = state.groups.groups.get(&r.group).ok_or_else(|| {
                group_status(GroupError::UnknownMember {
                    group: r.group.clone(),
                    member: r.member_id.clone(),
                })
            })?;
            g.check_member(&r.member_id, r.member_epoch, &partitions, false)
                .map_err(group_status)?;
        }
        let only = (!partitions.is_empty()).then_some(partitions.as_slice());
        Ok(Response::new(pb::FetchOffsetsResponse {
            offsets: committed(&state.groups, &r.group, only),
        }))
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        self.services
            .authorize(
                &request,
                Operation::Describe,
                ResourceType::Cluster,
                CLUSTER,
            )
            .await?;
        self.services.linearizable().await?;
        let state = self.services.sm.read().await;
        Ok(Response::new(pb::ListGroupsResponse {
            groups: state
                .groups
                .groups
                .values()
                .map(|g| pb::GroupSummary {
                    group: g.name.clone(),
                    state: g.state().name().to_string(),
                    members: g.members.len() as u32,
                    group_epoch: g.group_epoch,
                })
                .collect(),
        }))
    }

    async fn describe_group(
        &self,
        request: Request<pb::DescribeGroupRequest>,
    ) -> Result<Response<pb::GroupDescription>, Status> {
        self.services
            .authorize(
                &request,
                Operation::Describe,
                ResourceType::Group,
                &request.get_ref().group,
            )
            .await?;
        self.services.linearizable().await?;
        let (g, offsets) = self.group(&request.into_inner().group).await?;
        Ok(Response::new(describe_group(&g, offsets)))
    }

    async fn reset_offsets(
        &self,
        request: Request<pb::ResetOffsetsRequest>,
    ) -> Result<Response<pb::GroupDescription>, Status> {
        self.services
            .authorize(
                &request,
                Operation::Alter,
                ResourceType::Group,
                &request.get_ref().group,
            )
            .await?;
        let r = request.into_inner();
        let offsets = offsets_from(r.offsets)?;
        match self
            .propose_group(GroupCommand::ResetOffsets {
                group: r.group.clone(),
                time_ms: now_ms(),
                offsets,
            })
            .await?
        {
            GroupOutcome::Reset(result) => result.map_err(group_status)?,
            other => {
                return Err(status(
                    ErrorCode::Unknown,
                    format!("unexpected outcome {other:?}"),
                ));
            }
        }
        let (g, offsets) = self.group(&r.group).await?;
        Ok(Response::new(describe_group(&g, offsets)))
    }

    async fn delete_group(
        &self,
        request: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        self.services
            .authorize(
                &request,
                Operation::Delete,
                ResourceType::Group,
                &request.get_ref().group,
            )
            .await?;
        let group = request.into_inner().group;
        match self
            .propose_group(GroupCommand::DeleteGroup { group })
            .await?
        {
            GroupOutcome::Deleted(result) => result.map_err(group_status)?,
            other => {
                return Err(status(
                    ErrorCode::Unknown,
                    format!("unexpected outcome {other:?}"),
                ));
            }
        }
        Ok(Response::new(pb::DeleteGroupResponse {}))
    }
}

/// Coalesces queued commits into Raft entries, a few entries in flight at once.
async fn commit_batcher(
    services: Services,
    mut queue: mpsc::Receiver<Pending>,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(COMMIT_ENTRIES_IN_FLIGHT));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let first = tokio::select! {
            first = queue.recv() => first,
            _ = stopped.wait_for(|s| *s) => return,
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        while batch.len() < COMMITS_PER_ENTRY_MAX {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let services = services.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (commits, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let count = commits.len() as u64;
            metrics::histogram!("weir_group_commits_per_entry").record(count as f64);
            let command = Command::Group(GroupCommand::CommitOffsets {
                time_ms: now_ms(),
                commits,
            });
            match services.propose(command).await {
                Ok(Outcome::Group(GroupOutcome::Committed(results)))
                    if results.len() == replies.len() =>
                {
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(result.map_err(group_status));
                    }
                    metrics::counter!("weir_group_offset_commits_total").increment(count);
                }
                Ok(other) => {
                    for reply in replies {
                        let _ = reply.send(Err(status(
                            ErrorCode::Unknown,
                            format!("unexpected outcome {other:?}"),
                        )));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

/// On the active controller, removes members whose session timed out or who kept revoked
/// partitions past their rebalance timeout.
async fn session_task(c: Coordinator, mut stopped: watch::Receiver<bool>) {
    let mut was_leader = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let is_leader = c.services.raft.metrics().borrow().state == ServerState::Leader;
        if is_leader && !was_leader {
            // A new active controller cannot know when members last heartbeated: every
            // member starts a fresh session.
            let mut s = lock(&c.sessions);
            s.seen.clear();
            s.revoking.clear();
        }
        was_leader = is_leader;
        if !is_leader {
            continue;
        }
        let expired = {
            let state = c.services.sm.read().await;
            let now = Instant::now();
            let mut s = lock(&c.sessions);
            let mut expired: BTreeMap<(String, String), &'static str> = BTreeMap::new();
            let mut live = std::collections::HashSet::new();
            for g in state.groups.groups.values() {
                for m in g.members.values() {
                    let key = (g.name.clone(), m.id.clone());
                    live.insert(key.clone());
                    let seen = *s.seen.entry(key.clone()).or_insert(now);
                    if now.duration_since(seen) > Duration::from_millis(m.session_timeout_ms.into())
                    {
                        expired.insert(key.clone(), "session timeout");
                    }
                    if m.revoking.is_empty() {
                        s.revoking.remove(&key);
                    } else {
                        let since = *s.revoking.entry(key.clone()).or_insert(now);
                        if now.duration_since(since)
                            > Duration::from_millis(m.rebalance_timeout_ms.into())
                        {
                            expired.insert(key, "rebalance timeout");
                        }
                    }
                }
            }
            s.seen.retain(|k, _| live.contains(k));
            s.revoking.retain(|k, _| live.contains(k));
            expired
        };
        for ((group, member_id), why) in expired {
            tracing::info!(%group, member = %member_id, reason = why, "removing group member");
            match c
                .propose_group(GroupCommand::RemoveMember {
                    group: group.clone(),
                    member_id: member_id.clone(),
                })
                .await
            {
                Ok(_) => {
                    let mut s = lock(&c.sessions);
                    let key = (group, member_id);
                    s.seen.remove(&key);
                    s.revoking.remove(&key);
                }
                Err(e) => tracing::warn!(error = %e.message(), "removing member failed"),
            }
        }
    }
}
