//! The controller's client-facing gRPC services: `Admin` (topics, cluster, controller
//! membership) and `BrokerRegistry` (registration and leases).
//!
//! Writes go through Raft on the active controller; a follower answers NOT_CONTROLLER with
//! the leader's address. Reads are answered from the local applied state and say which
//! version they reflect.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};

use crate::raft::ControllerNode;
use tonic::{Request, Response, Status};
use weir_proto::auth::Security;
use weir_proto::internal::v1 as ipb;
use weir_proto::internal::v1::broker_registry_server::BrokerRegistry;
use weir_proto::status::status;
use weir_proto::v1::admin_server::Admin;
use weir_proto::v1::{self as pb};
use weir_types::acl::{CLUSTER, Operation, ResourceType};
use weir_types::{BrokerId, ErrorCode};

use crate::metadata::{
    CleanupPolicy, Command, ConfigChange, Outcome, Rejection, Topic, TopicConfig,
};
use crate::raft::{NodeId, Raft};
use crate::store::StateMachine;

/// In-memory broker leases, meaningful only on the active controller.
#[derive(Debug, Default)]
pub struct Leases {
    /// broker → (incarnation, last heartbeat)
    seen: Mutex<HashMap<BrokerId, (u64, Instant)>>,
}

impl Leases {
    pub fn renew(&self, id: BrokerId, incarnation: u64) {
        self.lock().insert(id, (incarnation, Instant::now()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BrokerId, (u64, Instant)>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives every broker a fresh lease: a new active controller cannot know when brokers
    /// last heartbeated to its predecessor.
    pub fn reset_all(&self) {
        let now = Instant::now();
        for (_, seen) in self.lock().iter_mut() {
            seen.1 = now;
        }
    }

    /// Live brokers (per `registered`) whose lease ran out, with their incarnations.
    pub fn expired(&self, registered: &[(BrokerId, u64)], lease: Duration) -> Vec<(BrokerId, u64)> {
        let now = Instant::now();
        let mut seen = self.lock();
        let mut out = Vec::new();
        for (id, incarnation) in registered {
            let entry = seen.entry(*id).or_insert((*incarnation, now));
            if entry.0 != *incarnation {
                *entry = (*incarnation, now);
            }
            if now.duration_since(entry.1) > lease {
                out.push((*id, *incarnation));
            }
        }
        out
    }
}

/// Shared state of the services.
#[derive(Clone)]
pub struct Services {
    /// Set when the controller shuts down: open metadata watches end, so clients move to
    /// another controller and the server can finish.
    pub stopped: tokio::sync::watch::Receiver<bool>,
    pub id: NodeId,
    pub raft: Raft,
    pub sm: StateMachine,
    pub leases: Arc<Leases>,
    pub lease: Duration,
    pub preferred_leader_check: Duration,
    pub security: Arc<Security>,
}

fn acl_filter(filter: Option<pb::AclFilter>) -> Result<weir_types::acl::AclFilter, Status> {
    weir_types::acl::AclFilter::try_from(filter.unwrap_or_default())
        .map_err(|e| invalid(&format!("filter.{}", e.field), &e.reason))
}

fn rejection_status(r: Rejection) -> Status {
    let code = match &r {
        Rejection::TopicExists(_) => ErrorCode::TopicAlreadyExists,
        Rejection::UnknownTopic(_) => ErrorCode::UnknownTopicOrPartition,
        Rejection::StaleIncarnation { .. } | Rejection::UnknownBroker(_) => ErrorCode::FencedBroker,
        Rejection::Invalid { .. } | Rejection::NotEnoughBrokers { .. } => {
            ErrorCode::InvalidArgument
        }
        Rejection::Stale(_) => ErrorCode::FencedLeaderEpoch,
    };
    status(code, r.to_string())
}

fn unexpected(outcome: Outcome) -> Status {
    status(
        ErrorCode::Unknown,
        format!("unexpected outcome {outcome:?}"),
    )
}

/// NOT_CONTROLLER pointing at `node`'s public and internal addresses.
fn to_controller(message: impl Into<String>, node: Option<&ControllerNode>) -> Status {
    weir_proto::status::redirect_controller(
        message,
        node.map(|n| n.addr.as_str()),
        node.and_then(|n| n.internal.as_deref()),
    )
}

fn invalid(field: &str, reason: &str) -> Status {
    status(
        ErrorCode::InvalidArgument,
        format!("invalid {field}: {reason}"),
    )
}

impl Services {
    /// Proposes `command` and waits until it is committed and applied.
    pub async fn propose(&self, command: Command) -> Result<Outcome, Status> {
        match self.raft.client_write(command).await {
            Ok(response) => match response.data {
                Some(Outcome::Rejected(r)) => Err(rejection_status(r)),
                Some(outcome) => Ok(outcome),
                None => Err(status(ErrorCode::Unknown, "command produced no outcome")),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(to_controller(
                match (&f.leader_id, &f.leader_node) {
                    (Some(id), Some(n)) => {
                        format!("the active controller is {id} at {}", n.addr)
                    }
                    _ => "no active controller right now".to_string(),
                },
                f.leader_node.as_ref(),
            )),
            Err(e) => Err(status(ErrorCode::NotController, e.to_string())),
        }
    }

    /// Confirms this node is the active controller with a quorum round trip, so a read
    /// that follows reflects every write acknowledged before it.
    pub(crate) async fn linearizable(&self) -> Result<(), Status> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(to_controller(
                "reads are served by the active controller",
                f.leader_node.as_ref(),
            )),
            Err(e) => Err(status(ErrorCode::NotController, e.to_string())),
        }
    }

    /// The current voters of the controller quorum.
    fn voters(&self) -> BTreeSet<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    pub(crate) fn leader_only(&self) -> Result<(), Status> {
        let receiver = self.raft.metrics();
        let metrics = receiver.borrow();
        if metrics.current_leader == Some(self.id) {
            return Ok(());
        }
        let node = metrics
            .current_leader
            .and_then(|l| metrics.membership_config.membership().get_node(&l));
        Err(to_controller("this controller is not the active one", node))
    }

    async fn topic(&self, name: &str) -> Result<Topic, Status> {
        let state = self.sm.read().await;
        state.metadata.topics.get(name).cloned().ok_or_else(|| {
            status(
                ErrorCode::UnknownTopicOrPartition,
                format!("topic {name:?} does not exist"),
            )
        })
    }

    async fn describe_cluster_now(&self) -> pb::DescribeClusterResponse {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let mut controllers = Vec::new();
        for (id, node) in membership.nodes() {
            let role = if *id == self.id {
                match metrics.state {
                    ServerState::Leader => "leader",
                    ServerState::Follower => "follower",
                    ServerState::Candidate => "candidate",
                    ServerState::Learner => "learner",
                    ServerState::Shutdown => "shutdown",
                }
            } else if metrics.current_leader == Some(*id) {
                "leader"
            } else if let Some(replication) = &metrics.replication {
                match replication.get(id) {
                    Some(Some(_)) if voters.contains(id) => "follower",
                    Some(Some(_)) => "learner",
                    _ => "unreachable",
                }
            } else if voters.contains(id) {
                "follower"
            } else {
                "learner"
            };
            controllers.push(pb::ControllerDescription {
                id: *id,
                address: node.addr.clone(),
                role: role.to_string(),
                voter: voters.contains(id),
                internal_address: node.internal.clone().unwrap_or_default(),
            });
        }
        let state = self.sm.read().await;
        let brokers = state
            .metadata
            .brokers
            .values()
            .map(describe_broker)
            .collect();
        pb::DescribeClusterResponse {
            answered_by: self.id,
            leader_id: metrics.current_leader.unwrap_or(0),
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            applied_index: metrics.last_applied.map_or(0, |l| l.index),
            controllers,
            brokers,
        }
    }
}

pub fn describe_topic(topic: &Topic) -> pb::TopicDescription {
    let c = &topic.config;
    pb::TopicDescription {
        name: topic.name.clone(),
        topic_id: topic.id.clone(),
        retention_ms: c.retention_ms.unwrap_or(0),
        retention_ms_unlimited: c.retention_ms.is_none(),
        retention_bytes: c.retention_bytes.unwrap_or(0),
        retention_bytes_unlimited: c.retention_bytes.is_none(),
        segment_bytes: c.segment_bytes,
        cleanup_policy: c.cleanup_policy.name().to_string(),
        min_insync_replicas: c.min_insync_replicas,
        partitions: topic
            .partitions
            .iter()
            .enumerate()
            .map(|(i, p)| pb::PartitionDescription {
                partition: i as u32,
                leader: p.leader.map_or(0, |b| b.0),
                leader_epoch: p.leader_epoch.0,
                replicas: p.replicas.iter().map(|b| b.0).collect(),
                isr: p.isr.iter().map(|b| b.0).collect(),
                partition_epoch: p.partition_epoch,
                reassigning_to: p.reassigning_to.iter().flatten().map(|b| b.0).collect(),
                reassign_throttle_bytes_per_s: p.reassign_throttle_bytes_per_s,
            })
            .collect(),
    }
}

fn cleanup_policy(raw: &str) -> Result<CleanupPolicy, Status> {
    match raw {
        "delete" => Ok(CleanupPolicy::Delete),
        // Refused rather than stored: no broker compacts logs yet, and a setting that does
        // nothing would mislead.
        "compact" => Err(invalid(
            "config.cleanup_policy",
            "\"compact\" is not supported yet (log compaction is not implemented); use \"delete\"",
        )),
        other => Err(invalid(
            "config.cleanup_policy",
            &format!("{other:?} is not \"delete\" or \"compact\""),
        )),
    }
}

fn config_change(config: Option<pb::TopicConfig>) -> Result<ConfigChange, Status> {
    let Some(c) = config else {
        return Ok(ConfigChange::default());
    };
    if c.clear_retention_ms && c.retention_ms.is_some() {
        return Err(invalid(
            "config.retention_ms",
            "set together with clear_retention_ms",
        ));
    }
    if c.clear_retention_bytes && c.retention_bytes.is_some() {
        return Err(invalid(
            "config.retention_bytes",
            "set together with clear_retention_bytes",
        ));
    }
    Ok(ConfigChange {
        retention_ms: if c.clear_retention_ms {
            Some(None)
        } else {
            c.retention_ms.map(Some)
        },
        retention_bytes: if c.clear_retention_bytes {
            Some(None)
        } else {
            c.retention_bytes.map(Some)
        },
        segment_bytes: c.segment_bytes,
        cleanup_policy: c
            .cleanup_policy
            .as_deref()
            .map(cleanup_policy)
            .transpose()?,
        min_insync_replicas: c.min_insync_replicas,
    })
}

fn random_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Coalesced snapshots queued per watcher before the oldest is dropped for a newer one.
const WATCH_QUEUE_MAX: usize = 4;

fn describe_broker(b: &crate::metadata::Broker) -> pb::BrokerDescription {
    pb::BrokerDescription {
        id: b.id.0,
        address: b.address.clone(),
        rack: b.rack.clone().unwrap_or_default(),
        incarnation: b.incarnation,
        fenced: b.fenced,
        internal_address: b.internal_address.clone().unwrap_or_default(),
    }
}

impl Services {
    /// Whether the request's principal may do `operation` on the resource, by the ACLs this
    /// controller has applied (PERMISSION_DENIED otherwise).
    pub(crate) async fn authorize<T>(
        &self,
        request: &Request<T>,
        operation: Operation,
        kind: ResourceType,
        name: &str,
    ) -> Result<(), Status> {
        if !self.security.authorization() {
            return Ok(());
        }
        let state = self.sm.read().await;
        self.security
            .authorize(request, &state.acls, operation, kind, name)
    }

    /// The update that brings a watcher at `since` to the current version: only the changes
    /// when the history reaches back to `since`, a full snapshot otherwise.
    pub async fn metadata_update(&self, since: u64) -> pb::MetadataUpdate {
        let state = self.sm.read().await;
        let md = &state.metadata;
        match state.changed_since(since).filter(|_| since > 0) {
            Some((topics, brokers)) => pb::MetadataUpdate {
                version: state.version(),
                snapshot: false,
                topics: topics
                    .iter()
                    .filter_map(|n| md.topics.get(n))
                    .map(describe_topic)
                    .collect(),
                deleted_topics: topics
                    .into_iter()
                    .filter(|n| !md.topics.contains_key(n))
                    .collect(),
                brokers: brokers
                    .iter()
                    .filter_map(|b| md.brokers.get(b))
                    .map(describe_broker)
                    .collect(),
                acls_included: state.acls_version > since,
                acls: if state.acls_version > since {
                    state.acls.iter().map(pb::Acl::from).collect()
                } else {
                    Vec::new()
                },
            },
            None => pb::MetadataUpdate {
                version: state.version(),
                snapshot: true,
                topics: md.topics.values().map(describe_topic).collect(),
                brokers: md.brokers.values().map(describe_broker).collect(),
                deleted_topics: Vec::new(),
                acls_included: true,
                acls: state.acls.iter().map(pb::Acl::from).collect(),
            },
        }
    }
}

#[tonic::async_trait]
impl Admin for Services {
    type WatchMetadataStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::MetadataUpdate, Status>>;

    async fn watch_metadata(
        &self,
        request: Request<pb::WatchMetadataRequest>,
    ) -> Result<Response<Self::WatchMetadataStream>, Status> {
        self.authorize(
            &request,
            Operation::Describe,
            ResourceType::Cluster,
            CLUSTER,
        )
        .await?;
        let from = request.into_inner().from_version;
        let mut last = from;
        let mut sent_any = false;
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_QUEUE_MAX);
        let mut versions = self.sm.subscribe();
        let services = self.clone();
        let mut stopped = self.stopped.clone();
        tokio::spawn(async move {
            loop {
                let current = *versions.borrow_and_update();
                if current > last || !sent_any {
                    let update = services
                        .metadata_update(if sent_any { last } else { from })
                        .await;
                    last = update.version;
                    sent_any = true;
                    if tx.send(Ok(update)).await.is_err() {
                        return; // the watcher went away
                    }
                }
                tokio::select! {
                    changed = versions.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        self.authorize(
            &request,
            Operation::Create,
            ResourceType::Topic,
            &request.get_ref().name,
        )
        .await?;
        let req = request.into_inner();
        crate::metadata::validate_topic_name(&req.name).map_err(rejection_status)?;
        if req.partitions == 0 {
            return Err(invalid("partitions", "must be at least 1"));
        }
        let change = config_change(req.config)?;
        let mut config = TopicConfig::default();
        change.apply_to(&mut config);
        let live = self.sm.read().await.metadata.live_brokers().len() as u32;
        let replication_factor = match req.replication_factor {
            0 if live >= 3 => 3,
            0 => 1,
            rf => rf,
        };
        // Safe default: with three replicas, an acknowledged write is on two of them.
        config.min_insync_replicas = change
            .min_insync_replicas
            .unwrap_or(if replication_factor >= 3 { 2 } else { 1 });
        let outcome = self
            .propose(Command::CreateTopic {
                id: random_id(),
                name: req.name,
                partitions: req.partitions,
                replication_factor,
                config,
            })
            .await?;
        match outcome {
            Outcome::TopicCreated { topic } => Ok(Response::new(describe_topic(&topic))),
            other => Err(unexpected(other)),
        }
    }

    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        self.authorize(
            &request,
            Operation::Delete,
            ResourceType::Topic,
            &request.get_ref().name,
        )
        .await?;
        let name = request.into_inner().name;
        if name.is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        match self.propose(Command::DeleteTopic { name }).await? {
            Outcome::TopicDeleted { id } => {
                Ok(Response::new(pb::DeleteTopicResponse { topic_id: id }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn list_topics(
        &self,
        request: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        self.authorize(
            &request,
            Operation::Describe,
            ResourceType::Cluster,
            CLUSTER,
        )
        .await?;
        self.linearizable().await?;
        let state = self.sm.read().await;
        Ok(Response::new(pb::ListTopicsResponse {
            topics: state.metadata.topics.values().map(describe_topic).collect(),
            version: state.version(),
        }))
    }

    async fn describe_topic(
        &self,
        request: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        self.authorize(
            &request,
            Operation::Describe,
            ResourceType::Topic,
            &request.get_ref().name,
        )
        .await?;
        self.linearizable().await?;
        let topic = self.topic(&request.into_inner().name).await?;
        Ok(Response::new(describe_topic(&topic)))
    }

    async fn create_partitions(
        &self,
        request: Request<pb::CreatePartitionsRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        self.authorize(
            &request,
            Operation::Alter,
            ResourceType::Topic,
            &request.get_ref().name,
        )
        .await?;
        let req = request.into_inner();
        self.propose(Command::CreatePartitions {
            name: req.name.clone(),
            total: req.total,
        })
        .await?;
        Ok(Response::new(describe_topic(&self.topic(&req.name).await?)))
    }

    async fn alter_topic_config(
        &self,
        request: Request<pb::AlterTopicConfigRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        self.authorize(
            &request,
            Operation::Alter,
            ResourceType::Topic,
            &request.get_ref().name,
        )
        .await?;
        let req = request.into_inner();
        let change = config_change(req.config)?;
        if change == ConfigChange::default() {
            return Err(invalid("config", "names no setting to change"));
        }
        self.propose(Command::AlterConfig {
            name: req.name.clone(),
            change,
        })
        .await?;
        Ok(Response::new(describe_topic(&self.topic(&req.name).await?)))
    }

    async fn describe_cluster(
        &self,
        request: Request<pb::DescribeClusterRequest>,
    ) -> Result<Response<pb::DescribeClusterResponse>, Status> {
        self.authorize(
            &request,
            Operation::Describe,
            ResourceType::Cluster,
            CLUSTER,
        )
        .await?;
        Ok(Response::new(self.describe_cluster_now().await))
    }

    async fn add_controller(
        &self,
        request: Request<pb::AddControllerRequest>,
    ) -> Result<Response<pb::DescribeClusterResponse>, Status> {
        self.authorize(&request, Operation::Alter, ResourceType::Cluster, CLUSTER)
            .await?;
        let req = request.into_inner();
        if req.id == 0 {
            return Err(invalid("id", "must be positive"));
        }
        if !weir_proto::call::is_host_port(&req.address) {
            return Err(invalid("address", "must be host:port"));
        }
        if !req.internal_address.is_empty()
            && !weir_proto::call::is_host_port(&req.internal_address)
        {
            return Err(invalid("internal_address", "must be host:port or empty"));
        }
        self.leader_only()?;
        let node = ControllerNode {
            addr: req.address,
            internal: (!req.internal_address.is_empty()).then_some(req.internal_address),
        };
        self.raft
            .add_learner(req.id, node, true)
            .await
            .map_err(|e| status(ErrorCode::NotController, e.to_string()))?;
        let mut voters = self.voters();
        voters.insert(req.id);
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| status(ErrorCode::NotController, e.to_string()))?;
        Ok(Response::new(self.describe_cluster_now().await))
    }

    async fn reassign_partition(
        &self,
        request: Request<pb::ReassignPartitionRequest>,
    ) -> Result<Response<pb::TopicDescription>, Status> {
        self.authorize(&request, Operation::Alter, ResourceType::Cluster, CLUSTER)
            .await?;
        let req = request.into_inner();
        match self
            .propose(Command::Reassign {
                topic: req.topic.clone(),
                partition: req.partition,
                replicas: req.replicas.into_iter().map(BrokerId).collect(),
                throttle_bytes_per_s: req.throttle_bytes_per_s,
            })
            .await?
        {
            Outcome::ReassignmentStarted { .. } => Ok(Response::new(describe_topic(
                &self.topic(&req.topic).await?,
            ))),
            other => Err(unexpected(other)),
        }
    }

    async fn elect_leader(
        &self,
        request: Request<pb::ElectLeaderRequest>,
    ) -> Result<Response<pb::ElectLeaderResponse>, Status> {
        self.authorize(&request, Operation::Alter, ResourceType::Cluster, CLUSTER)
            .await?;
        let req = request.into_inner();
        if req.unclean {
            tracing::warn!(topic = %req.topic, partition = req.partition, "unclean leader election requested");
        }
        match self
            .propose(Command::ElectLeader {
                topic: req.topic.clone(),
                partition: req.partition,
                unclean: req.unclean,
            })
            .await?
        {
            Outcome::LeaderElected {
                leader,
                leader_epoch,
                unclean,
            } => {
                if unclean {
                    tracing::warn!(topic = %req.topic, partition = req.partition, %leader, %leader_epoch, "UNCLEAN leader elected: records only the lost in-sync replicas held are gone");
                }
                Ok(Response::new(pb::ElectLeaderResponse {
                    leader: leader.0,
                    leader_epoch: leader_epoch.0,
                    unclean,
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn drain_broker(
        &self,
        request: Request<pb::DrainBrokerRequest>,
    ) -> Result<Response<pb::DrainBrokerResponse>, Status> {
        // a broker drains itself; anyone else needs alter on the cluster
        let id = request.get_ref().broker_id;
        if Security::require_broker(&request, Some(id)).is_err()
            || !weir_proto::tls::is_tls(&request)
        {
            self.authorize(&request, Operation::Alter, ResourceType::Cluster, CLUSTER)
                .await?;
        }
        if id == 0 {
            return Err(invalid("broker_id", "must be positive"));
        }
        match self
            .propose(Command::DrainBroker { id: BrokerId(id) })
            .await?
        {
            Outcome::Fenced {
                leaders_moved,
                offline,
            } => {
                tracing::info!(broker = id, leaders_moved, offline, "broker drained");
                Ok(Response::new(pb::DrainBrokerResponse {
                    leaders_moved,
                    offline,
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn create_acls(
        &self,
        request: Request<pb::CreateAclsRequest>,
    ) -> Result<Response<pb::CreateAclsResponse>, Status> {
        self.authorize(&request, Operation::Alter, ResourceType::Cluster, CLUSTER)
            .await?;
        let acls = request
            .into_inner()
            .acls
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                weir_types::acl::Acl::try_from(a)
                    .map_err(|e| invalid(&format!("acls[{i}].{}", e.field), &e.reason))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if acls.is_empty() {
            return Err(invalid("acls", "must not be empty"));
        }
        match self.propose(Command::CreateAcls(acls)).await? {
            Outcome::AclsCreated { created } => {
                Ok(Response::new(pb::CreateAclsResponse { created }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn delete_acls(
        &self,
        request: Request<pb::DeleteAclsRequest>,
    ) -> Result<Response<pb::DeleteAclsResponse>, Status> {
        self.authorize(&request, Operation::Alter, ResourceType::Cluster, CLUSTER)
            .await?;
        let filter = acl_filter(request.into_inner().filter)?;
        if filter == weir_types::acl::AclFilter::default() {
            return Err(invalid(
                "filter",
                "sets no field (to remove every ACL, name a permission)",
            ));
        }
        match self.propose(Command::DeleteAcls(filter)).await? {
            Outcome::AclsDeleted { deleted } => Ok(Response::new(pb::DeleteAclsResponse {
                deleted: deleted.iter().map(pb::Acl::from).collect(),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn list_acls(
        &self,
        request: Request<pb::ListAclsRequest>,
    ) -> Result<Response<pb::ListAclsResponse>, Status> {
        self.authorize(
            &request,
            Operation::Describe,
            ResourceType::Cluster,
            CLUSTER,
        )
        .await?;
        let filter = acl_filter(request.into_inner().filter)?;
        self.linearizable().await?;
        let state = self.sm.read().await;
        Ok(Response::new(pb::ListAclsResponse {
            acls: state
                .acls
                .iter()
                .filter(|a| filter.matches(a))
                .map(pb::Acl::from)
                .collect(),
        }))
    }

    async fn remove_controller(
        &self,
        request: Request<pb::RemoveControllerRequest>,
    ) -> Result<Response<pb::DescribeClusterResponse>, Status> {
        self.authorize(&request, Operation::Alter, ResourceType::Cluster, CLUSTER)
            .await?;
        let id = request.into_inner().id;
        self.leader_only()?;
        let mut voters = self.voters();
        if !voters.remove(&id) {
            return Err(invalid("id", &format!("controller {id} is not a voter")));
        }
        if voters.is_empty() {
            return Err(invalid("id", "cannot remove the last voter"));
        }
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| status(ErrorCode::NotController, e.to_string()))?;
        Ok(Response::new(self.describe_cluster_now().await))
    }
}

#[tonic::async_trait]
impl BrokerRegistry for Services {
    async fn register_broker(
        &self,
        request: Request<ipb::RegisterBrokerRequest>,
    ) -> Result<Response<ipb::RegisterBrokerResponse>, Status> {
        Security::require_broker(&request, Some(request.get_ref().broker_id))?;
        let req = request.into_inner();
        if req.broker_id == 0 {
            return Err(invalid("broker_id", "must be positive"));
        }
        if req.address.is_empty() {
            return Err(invalid("address", "must not be empty"));
        }
        let id = BrokerId(req.broker_id);
        let outcome = self
            .propose(Command::RegisterBroker {
                id,
                address: req.address,
                rack: (!req.rack.is_empty()).then_some(req.rack),
                internal_address: (!req.internal_address.is_empty())
                    .then_some(req.internal_address),
            })
            .await?;
        let Outcome::Registered { incarnation } = outcome else {
            return Err(unexpected(outcome));
        };
        self.leases.renew(id, incarnation);
        Ok(Response::new(ipb::RegisterBrokerResponse {
            incarnation,
            lease_ms: self.lease.as_millis() as u64,
        }))
    }

    async fn alter_partition(
        &self,
        request: Request<ipb::AlterPartitionRequest>,
    ) -> Result<Response<ipb::AlterPartitionResponse>, Status> {
        Security::require_broker(&request, Some(request.get_ref().broker_id))?;
        let req = request.into_inner();
        let outcome = self
            .propose(Command::AlterIsr {
                topic: req.topic,
                partition: req.partition,
                leader: BrokerId(req.broker_id),
                incarnation: req.incarnation,
                leader_epoch: weir_types::LeaderEpoch(req.leader_epoch),
                partition_epoch: req.partition_epoch,
                isr: req.isr.into_iter().map(BrokerId).collect(),
            })
            .await?;
        match outcome {
            Outcome::IsrChanged {
                isr,
                partition_epoch,
            } => Ok(Response::new(ipb::AlterPartitionResponse {
                isr: isr.into_iter().map(|b| b.0).collect(),
                partition_epoch,
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn allocate_producer_ids(
        &self,
        request: Request<ipb::AllocateProducerIdsRequest>,
    ) -> Result<Response<ipb::AllocateProducerIdsResponse>, Status> {
        Security::require_broker(&request, Some(request.get_ref().broker_id))?;
        let req = request.into_inner();
        match self
            .propose(Command::AllocateProducerIds {
                broker: BrokerId(req.broker_id),
                count: req.count,
            })
            .await?
        {
            Outcome::ProducerIds { first, count } => {
                Ok(Response::new(ipb::AllocateProducerIdsResponse {
                    first_id: first,
                    count,
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn broker_heartbeat(
        &self,
        request: Request<ipb::BrokerHeartbeatRequest>,
    ) -> Result<Response<ipb::BrokerHeartbeatResponse>, Status> {
        Security::require_broker(&request, Some(request.get_ref().broker_id))?;
        let req = request.into_inner();
        self.leader_only()?;
        let id = BrokerId(req.broker_id);
        let state = self.sm.read().await;
        let current = state.metadata.brokers.get(&id);
        let fenced = match current {
            Some(b) => b.fenced || b.incarnation != req.incarnation,
            None => true,
        };
        if !fenced {
            self.leases.renew(id, req.incarnation);
        }
        Ok(Response::new(ipb::BrokerHeartbeatResponse {
            fenced,
            metadata_version: state.version(),
            draining: current.is_some_and(|b| b.draining && b.incarnation == req.incarnation),
        }))
    }
}

/// Registered live brokers and their incarnations.
pub fn live_incarnations(metadata: &crate::metadata::Metadata) -> Vec<(BrokerId, u64)> {
    metadata
        .brokers
        .values()
        .filter(|b| !b.fenced)
        .map(|b| (b.id, b.incarnation))
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .collect()
}
