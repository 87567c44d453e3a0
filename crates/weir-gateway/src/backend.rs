//! What the gateway calls: the controllers (topics, subscriptions, snapshots) and the
//! partition leaders (publish, pull, ack), with Weir's errors turned into the status codes
//! Google's clients expect.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::Status;
use weir_client::{ClientError, Metadata, Producer};
use weir_proto::call::CallError;
use weir_proto::call::Channel;
use weir_proto::v1 as pb;
use weir_proto::v1::admin_client::AdminClient;
use weir_proto::v1::broker_client::BrokerClient;
use weir_proto::v1::subscriptions_client::SubscriptionsClient;
use weir_types::ErrorCode;
use weir_types::subscription::SubscriptionSpec;

/// How long a controller call may take, retries and redirects included.
pub const CONTROLLER_PATIENCE: Duration = Duration::from_secs(10);
/// How long a broker call may take, retries to a new leader included.
pub const BROKER_PATIENCE: Duration = Duration::from_secs(15);
/// How long a subscription's definition is reused before it is read again.
const SUBSCRIPTION_CACHE_TTL: Duration = Duration::from_secs(2);

/// The status Google's clients expect for a Weir error code.
pub fn google_code(code: Option<ErrorCode>) -> tonic::Code {
    match code {
        Some(ErrorCode::InvalidArgument)
        | Some(ErrorCode::InvalidRecordBatch)
        | Some(ErrorCode::RecordBatchTooLarge) => tonic::Code::InvalidArgument,
        Some(ErrorCode::UnknownTopicOrPartition)
        | Some(ErrorCode::SubscriptionNotFound)
        | Some(ErrorCode::SnapshotNotFound) => tonic::Code::NotFound,
        Some(ErrorCode::TopicAlreadyExists)
        | Some(ErrorCode::SubscriptionAlreadyExists)
        | Some(ErrorCode::SnapshotAlreadyExists) => tonic::Code::AlreadyExists,
        Some(ErrorCode::Unknown) => tonic::Code::Internal,
        _ => tonic::Code::Unavailable,
    }
}

pub fn client_status(e: &ClientError) -> Status {
    let code = match e {
        ClientError::Invalid { .. } => tonic::Code::InvalidArgument,
        other => google_code(other.code()),
    };
    Status::new(code, e.to_string())
}

pub fn call_status(e: CallError) -> Status {
    match e {
        CallError::Status(s) => Status::new(
            google_code(weir_proto::status::error_code(&s)),
            s.message().to_string(),
        ),
        other => Status::unavailable(other.to_string()),
    }
}

/// A subscription as the gateway uses it.
#[derive(Debug, Clone)]
pub struct SubscriptionInfo {
    pub spec: SubscriptionSpec,
    pub uid: u64,
    pub partitions: u32,
    pub topic_deleted: bool,
}

impl TryFrom<pb::SubscriptionDescription> for SubscriptionInfo {
    type Error = Status;
    fn try_from(d: pb::SubscriptionDescription) -> Result<Self, Status> {
        let spec = d
            .spec
            .ok_or_else(|| Status::internal("subscription description without a spec"))?;
        Ok(SubscriptionInfo {
            spec: spec.into(),
            uid: d.uid,
            partitions: d.partitions,
            topic_deleted: d.topic_deleted,
        })
    }
}

pub struct Backend {
    pub controllers: Vec<String>,
    pub metadata: Metadata,
    pub producer: Producer,
    cache: Mutex<HashMap<String, (Instant, Arc<SubscriptionInfo>)>>,
    /// Who may call the gateway and what they may do (by the cluster's ACLs).
    pub security: Arc<weir_proto::auth::Security>,
}

/// The authenticated caller of a gateway RPC (none when authentication is off).
pub type Caller = Option<weir_proto::auth::Principal>;

/// The caller of `request`.
pub fn caller<T>(request: &tonic::Request<T>) -> Caller {
    weir_proto::auth::Security::principal(request).cloned()
}

impl Backend {
    pub fn new(
        controllers: Vec<String>,
        security: Arc<weir_proto::auth::Security>,
    ) -> Result<Backend, ClientError> {
        let mut producer = weir_client::ProducerConfig::new(controllers.clone());
        producer.linger_ms = 1;
        Ok(Backend {
            metadata: Metadata::new(controllers.clone()),
            producer: Producer::new(producer)?,
            controllers,
            cache: Mutex::new(HashMap::new()),
            security,
        })
    }

    /// Whether `caller` may do `operation` on the Weir resource `kind`/`name`, by the ACLs
    /// of the cluster's latest metadata.
    pub async fn authorize(
        &self,
        caller: &Caller,
        operation: weir_types::acl::Operation,
        kind: weir_types::acl::ResourceType,
        name: &str,
    ) -> Result<(), Status> {
        if !self.security.authorization() {
            return Ok(());
        }
        let view = self
            .metadata
            .cluster()
            .await
            .map_err(|e| Status::unavailable(format!("cluster metadata: {e}")))?;
        self.security
            .authorize_principal(caller.as_ref(), view.acls.iter(), operation, kind, name)
    }

    pub async fn admin<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn(AdminClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        weir_proto::call::with_controller(&self.controllers, CONTROLLER_PATIENCE, |ch| {
            call(AdminClient::new(ch))
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(call_status)
    }

    pub async fn subscriptions<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn(SubscriptionsClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        weir_proto::call::with_controller(&self.controllers, CONTROLLER_PATIENCE, |ch| {
            call(SubscriptionsClient::new(ch))
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(call_status)
    }

    /// Calls the leader of `topic`/`partition`, following leadership changes.
    pub async fn leader<T, F, Fut>(
        &self,
        topic: &str,
        partition: u32,
        patience: Duration,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(BrokerClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = tokio::time::Instant::now() + patience;
        self.metadata
            .call_leader(topic, partition, true, deadline, call)
            .await
    }

    /// The subscription `name` (a Weir name), read again after `SUBSCRIPTION_CACHE_TTL`.
    pub async fn subscription(&self, name: &str) -> Result<Arc<SubscriptionInfo>, Status> {
        if let Some((at, info)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            && at.elapsed() < SUBSCRIPTION_CACHE_TTL
        {
            return Ok(Arc::clone(info));
        }
        let request = pb::GetSubscriptionRequest { name: name.into() };
        let d = self
            .subscriptions(|mut c| {
                let request = request.clone();
                async move { c.get_subscription(request).await }
            })
            .await?;
        let info = Arc::new(SubscriptionInfo::try_from(d)?);
        self.remember(name, &info);
        Ok(info)
    }

    pub fn remember(&self, name: &str, info: &Arc<SubscriptionInfo>) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), (Instant::now(), Arc::clone(info)));
    }

    pub fn forget(&self, name: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// Each partition's offset for `spec` (latest, earliest or the first at a time).
    pub async fn offsets(
        &self,
        topic: &str,
        partitions: u32,
        spec: pb::OffsetSpec,
        timestamp_ms: i64,
    ) -> Result<Vec<i64>, Status> {
        let mut out = Vec::with_capacity(partitions as usize);
        let calls = (0..partitions).map(|partition| {
            let request = pb::ListOffsetsRequest {
                topic: topic.to_string(),
                partition,
                spec: spec as i32,
                timestamp_ms,
            };
            async move {
                self.leader(topic, partition, BROKER_PATIENCE, |mut c| {
                    let request = request.clone();
                    async move { c.list_offsets(request).await }
                })
                .await
            }
        });
        for r in futures_join(calls).await {
            out.push(r.map_err(|e| client_status(&e))?.offset);
        }
        Ok(out)
    }
}

/// What to do with leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Ack,
    /// A new deadline, seconds; 0 hands the messages back (a nack).
    Deadline(u32),
}

impl Backend {
    /// Acks or re-times leases of one partition at its leader; returns the leases that no
    /// longer held.
    pub async fn settle(
        &self,
        spec: &SubscriptionSpec,
        partition: u32,
        leases: Vec<pb::LeaseId>,
        how: Settle,
    ) -> Result<Vec<pb::LeaseId>, ClientError> {
        let (subscription, topic) = (spec.name.clone(), spec.topic.clone());
        let answer = match how {
            Settle::Ack => {
                let request = pb::SubscriptionAckRequest {
                    subscription,
                    topic: topic.clone(),
                    partition,
                    leases,
                };
                self.leader(&topic, partition, BROKER_PATIENCE, |mut c| {
                    let request = request.clone();
                    async move { c.acknowledge(request).await }
                })
                .await?
            }
            Settle::Deadline(seconds) => {
                let request = pb::SubscriptionModifyRequest {
                    subscription,
                    topic: topic.clone(),
                    partition,
                    leases,
                    deadline_seconds: seconds,
                };
                self.leader(&topic, partition, BROKER_PATIENCE, |mut c| {
                    let request = request.clone();
                    async move { c.modify_ack_deadline(request).await }
                })
                .await?
            }
        };
        Ok(answer.invalid)
    }
}

/// Runs the futures concurrently and returns their outputs in order.
pub async fn futures_join<F, T>(futures: impl IntoIterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    futures_util::future::join_all(futures).await
}
