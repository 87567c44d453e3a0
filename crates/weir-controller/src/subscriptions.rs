//! The `Subscriptions` gRPC service (definitions and snapshots, for the gateway and the CLI)
//! and the internal `SubscriptionCursors` service (partition leaders load and commit
//! cursors). Writes go through Raft on the active controller; reads are linearizable.

use std::collections::BTreeMap;

use tonic::{Request, Response, Status};
use weir_proto::auth::Security;
use weir_proto::internal::v1 as ipb;
use weir_proto::internal::v1::subscription_cursors_server::SubscriptionCursors;
use weir_proto::status::status;
use weir_proto::v1 as pb;
use weir_proto::v1::subscriptions_server::Subscriptions as SubscriptionsApi;
use weir_types::acl::{CLUSTER, Operation, ResourceType};
use weir_types::subscription::{Cursor, SubscriptionSpec};
use weir_types::{BrokerId, ErrorCode, LeaderEpoch};

use crate::admin::Services;
use crate::metadata::{Command, Outcome};
use crate::subscription::{
    CommitResult, CursorCommit, Snapshot, Subscription, SubscriptionCommand, SubscriptionError,
    SubscriptionOutcome,
};

/// The proposer's clock, stamped into commands (the state machine has none).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn error_status(e: SubscriptionError) -> Status {
    let code = match &e {
        SubscriptionError::NotFound(_) => ErrorCode::SubscriptionNotFound,
        SubscriptionError::Exists(_) => ErrorCode::SubscriptionAlreadyExists,
        SubscriptionError::UnknownTopic(_) => ErrorCode::UnknownTopicOrPartition,
        SubscriptionError::SnapshotNotFound(_) => ErrorCode::SnapshotNotFound,
        SubscriptionError::SnapshotExists(_) => ErrorCode::SnapshotAlreadyExists,
        SubscriptionError::Invalid { .. } => ErrorCode::InvalidArgument,
    };
    status(code, e.to_string())
}

/// The description of a stored subscription.
pub fn describe(sub: &Subscription, partitions: u32) -> pb::SubscriptionDescription {
    pb::SubscriptionDescription {
        spec: Some((&sub.spec).into()),
        uid: sub.uid,
        partitions,
        topic_deleted: sub.topic_deleted,
    }
}

fn describe_snapshot(s: &Snapshot) -> pb::SnapshotDescription {
    pb::SnapshotDescription {
        name: s.name.clone(),
        subscription: s.subscription.clone(),
        topic: s.topic.clone(),
        cursors: s
            .cursors
            .iter()
            .map(|(p, c)| pb::PartitionCursor {
                partition: *p,
                cursor: Some(c.into()),
            })
            .collect(),
        expire_time_ms: s.expire_time_ms,
        labels: s.labels.clone().into_iter().collect(),
    }
}

impl Services {
    async fn propose_subscription(
        &self,
        command: SubscriptionCommand,
    ) -> Result<SubscriptionOutcome, Status> {
        match self.propose(Command::Subscription(command)).await? {
            Outcome::Subscription(Ok(o)) => Ok(o),
            Outcome::Subscription(Err(e)) => Err(error_status(e)),
            other => Err(status(
                ErrorCode::Unknown,
                format!("unexpected outcome {other:?}"),
            )),
        }
    }

    async fn subscription_description(
        &self,
        outcome: SubscriptionOutcome,
    ) -> Result<pb::SubscriptionDescription, Status> {
        match outcome {
            SubscriptionOutcome::Subscription(sub) => {
                let partitions = self.partition_count(&sub.spec.topic).await;
                Ok(describe(&sub, partitions))
            }
            other => Err(status(
                ErrorCode::Unknown,
                format!("unexpected outcome {other:?}"),
            )),
        }
    }

    /// A snapshot is guarded by its subscription's ACLs; one that does not exist needs
    /// describe on the cluster to learn so.
    async fn authorize_snapshot<T>(
        &self,
        request: &Request<T>,
        operation: Operation,
        name: &str,
    ) -> Result<(), Status> {
        let subscription = {
            let state = self.sm.read().await;
            state
                .subscriptions
                .snapshots
                .get(name)
                .map(|s| s.subscription.clone())
        };
        match subscription {
            Some(sub) => {
                self.authorize(request, operation, ResourceType::Subscription, &sub)
                    .await
            }
            None => {
                self.authorize(request, Operation::Describe, ResourceType::Cluster, CLUSTER)
                    .await
            }
        }
    }

    async fn partition_count(&self, topic: &str) -> u32 {
        let state = self.sm.read().await;
        state
            .metadata
            .topics
            .get(topic)
            .map_or(0, |t| t.partitions.len() as u32)
    }

    fn snapshot_of(outcome: SubscriptionOutcome) -> Result<pb::SnapshotDescription, Status> {
        match outcome {
            SubscriptionOutcome::Snapshot(s) => Ok(describe_snapshot(&s)),
            other => Err(status(
                ErrorCode::Unknown,
                format!("unexpected outcome {other:?}"),
            )),
        }
    }
}

fn cursors_from(raw: Vec<pb::PartitionCursor>) -> Result<BTreeMap<u32, Cursor>, Status> {
    let mut out = BTreeMap::new();
    for (i, pc) in raw.into_iter().enumerate() {
        let c = weir_proto::convert::cursor(&format!("cursors[{i}].cursor"), pc.cursor)
            .map_err(|e| weir_proto::status::invalid_field(&e))?;
        out.insert(pc.partition, c);
    }
    Ok(out)
}

#[tonic::async_trait]
impl SubscriptionsApi for Services {
    async fn create_subscription(
        &self,
        request: Request<pb::CreateSubscriptionRequest>,
    ) -> Result<Response<pb::SubscriptionDescription>, Status> {
        self.authorize(
            &request,
            Operation::Create,
            ResourceType::Subscription,
            request
                .get_ref()
                .spec
                .as_ref()
                .map_or("", |s| s.name.as_str()),
        )
        .await?;
        self.authorize(
            &request,
            Operation::Read,
            ResourceType::Topic,
            request
                .get_ref()
                .spec
                .as_ref()
                .map_or("", |s| s.topic.as_str()),
        )
        .await?;
        let r = request.into_inner();
        let spec: SubscriptionSpec = r.spec.ok_or_else(|| error_status(invalid_spec()))?.into();
        let start = cursors_from(r.start)?;
        let outcome = self
            .propose_subscription(SubscriptionCommand::Create {
                spec,
                start,
                now_ms: now_ms(),
            })
            .await?;
        Ok(Response::new(self.subscription_description(outcome).await?))
    }

    async fn get_subscription(
        &self,
        request: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::SubscriptionDescription>, Status> {
        self.authorize(
            &request,
            Operation::Describe,
            ResourceType::Subscription,
            &request.get_ref().name,
        )
        .await?;
        self.linearizable().await?;
        let name = request.into_inner().name;
        let state = self.sm.read().await;
        let sub = state
            .subscriptions
            .subscriptions
            .get(&name)
            .ok_or_else(|| error_status(SubscriptionError::NotFound(name.clone())))?;
        let partitions = state
            .metadata
            .topics
            .get(&sub.spec.topic)
            .map_or(0, |t| t.partitions.len() as u32);
        Ok(Response::new(describe(sub, partitions)))
    }

    async fn update_subscription(
        &self,
        request: Request<pb::UpdateSubscriptionRequest>,
    ) -> Result<Response<pb::SubscriptionDescription>, Status> {
        self.authorize(
            &request,
            Operation::Alter,
            ResourceType::Subscription,
            request
                .get_ref()
                .spec
                .as_ref()
                .map_or("", |s| s.name.as_str()),
        )
        .await?;
        let r = request.into_inner();
        let spec: SubscriptionSpec = r.spec.ok_or_else(|| error_status(invalid_spec()))?.into();
        let outcome = self
            .propose_subscription(SubscriptionCommand::Update {
                spec,
                mask: r.update_mask,
                now_ms: now_ms(),
            })
            .await?;
        Ok(Response::new(self.subscription_description(outcome).await?))
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        self.authorize(
            &request,
            Operation::Describe,
            ResourceType::Cluster,
            CLUSTER,
        )
        .await?;
        self.linearizable().await?;
        let r = request.into_inner();
        let state = self.sm.read().await;
        let subscriptions = state
            .subscriptions
            .subscriptions
            .values()
            .filter(|s| s.spec.name.starts_with(&r.prefix))
            .filter(|s| r.topic.is_empty() || s.spec.topic == r.topic)
            .map(|s| {
                let partitions = state
                    .metadata
                    .topics
                    .get(&s.spec.topic)
                    .map_or(0, |t| t.partitions.len() as u32);
                describe(s, partitions)
            })
            .collect();
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions,
        }))
    }

    async fn delete_subscription(
        &self,
        request: Request<pb::DeleteSubscriptionRequest>,
    ) -> Result<Response<pb::DeleteSubscriptionResponse>, Status> {
        self.authorize(
            &request,
            Operation::Delete,
            ResourceType::Subscription,
            &request.get_ref().name,
        )
        .await?;
        let name = request.into_inner().name;
        self.propose_subscription(SubscriptionCommand::Delete { name })
            .await?;
        Ok(Response::new(pb::DeleteSubscriptionResponse {}))
    }

    async fn create_snapshot(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::SnapshotDescription>, Status> {
        self.authorize(
            &request,
            Operation::Read,
            ResourceType::Subscription,
            &request.get_ref().subscription,
        )
        .await?;
        let r = request.into_inner();
        let outcome = self
            .propose_subscription(SubscriptionCommand::CreateSnapshot {
                name: r.name,
                subscription: r.subscription,
                cursors: cursors_from(r.cursors)?,
                labels: r.labels.into_iter().collect(),
                expire_time_ms: r.expire_time_ms,
            })
            .await?;
        Ok(Response::new(Services::snapshot_of(outcome)?))
    }

    async fn get_snapshot(
        &self,
        request: Request<pb::GetSnapshotRequest>,
    ) -> Result<Response<pb::SnapshotDescription>, Status> {
        self.authorize_snapshot(&request, Operation::Describe, &request.get_ref().name)
            .await?;
        self.linearizable().await?;
        let name = request.into_inner().name;
        let state = self.sm.read().await;
        let s = state
            .subscriptions
            .snapshots
            .get(&name)
            .ok_or_else(|| error_status(SubscriptionError::SnapshotNotFound(name.clone())))?;
        Ok(Response::new(describe_snapshot(s)))
    }

    async fn update_snapshot(
        &self,
        request: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::SnapshotDescription>, Status> {
        self.authorize_snapshot(&request, Operation::Alter, &request.get_ref().name)
            .await?;
        let r = request.into_inner();
        let outcome = self
            .propose_subscription(SubscriptionCommand::UpdateSnapshot {
                name: r.name,
                labels: Some(r.labels.into_iter().collect()),
                expire_time_ms: r.expire_time_ms,
            })
            .await?;
        Ok(Response::new(Services::snapshot_of(outcome)?))
    }

    async fn list_snapshots(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        self.authorize(
            &request,
            Operation::Describe,
            ResourceType::Cluster,
            CLUSTER,
        )
        .await?;
        self.linearizable().await?;
        let r = request.into_inner();
        let state = self.sm.read().await;
        let snapshots = state
            .subscriptions
            .snapshots
            .values()
            .filter(|s| s.name.starts_with(&r.prefix))
            .filter(|s| r.topic.is_empty() || s.topic == r.topic)
            .map(describe_snapshot)
            .collect();
        Ok(Response::new(pb::ListSnapshotsResponse { snapshots }))
    }

    async fn delete_snapshot(
        &self,
        request: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        self.authorize_snapshot(&request, Operation::Alter, &request.get_ref().name)
            .await?;
        let name = request.into_inner().name;
        self.propose_subscription(SubscriptionCommand::DeleteSnapshot { name })
            .await?;
        Ok(Response::new(pb::DeleteSnapshotResponse {}))
    }
}

fn invalid_spec() -> SubscriptionError {
    SubscriptionError::Invalid {
        field: "spec".into(),
        reason: "must be set".into(),
    }
}

#[tonic::async_trait]
impl SubscriptionCursors for Services {
    async fn load_cursor(
        &self,
        request: Request<ipb::LoadCursorRequest>,
    ) -> Result<Response<ipb::LoadCursorResponse>, Status> {
        Security::require_broker(&request, None)?;
        self.linearizable().await?;
        let r = request.into_inner();
        let state = self.sm.read().await;
        let sub = state
            .subscriptions
            .subscriptions
            .get(&r.subscription)
            .ok_or_else(|| error_status(SubscriptionError::NotFound(r.subscription.clone())))?;
        let partitions = state
            .metadata
            .topics
            .get(&sub.spec.topic)
            .map_or(0, |t| t.partitions.len() as u32);
        Ok(Response::new(ipb::LoadCursorResponse {
            subscription: Some(describe(sub, partitions)),
            cursor: sub.cursors.get(&r.partition).map(|(_, c)| c.into()),
        }))
    }

    async fn commit_cursors(
        &self,
        request: Request<ipb::CommitCursorsRequest>,
    ) -> Result<Response<ipb::CommitCursorsResponse>, Status> {
        Security::require_broker(&request, Some(request.get_ref().broker_id))?;
        let r = request.into_inner();
        let mut commits = Vec::with_capacity(r.commits.len());
        for (i, c) in r.commits.into_iter().enumerate() {
            let cursor = weir_proto::convert::cursor(&format!("commits[{i}].cursor"), c.cursor)
                .map_err(|e| weir_proto::status::invalid_field(&e))?;
            commits.push(CursorCommit {
                subscription: c.subscription,
                uid: c.uid,
                partition: c.partition,
                leader_epoch: LeaderEpoch(c.leader_epoch),
                cursor,
            });
        }
        let outcome = self
            .propose_subscription(SubscriptionCommand::Commit {
                broker: BrokerId(r.broker_id),
                commits,
                now_ms: now_ms(),
            })
            .await?;
        let SubscriptionOutcome::Committed(results) = outcome else {
            return Err(status(ErrorCode::Unknown, "unexpected commit outcome"));
        };
        Ok(Response::new(ipb::CommitCursorsResponse {
            results: results
                .into_iter()
                .map(|r| {
                    (match r {
                        CommitResult::Stored => ipb::CommitResult::Stored,
                        CommitResult::Gone => ipb::CommitResult::Gone,
                        CommitResult::Fenced => ipb::CommitResult::Fenced,
                    }) as i32
                })
                .collect(),
        }))
    }
}
