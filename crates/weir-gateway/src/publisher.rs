//! Google's `Publisher` service: topics are Weir topics (`projects/p/topics/t` is `p.t`),
//! Publish appends through an idempotent `acks=all` producer (an ordering key is the record
//! key, so all messages of a key land in one partition, in order).

use std::sync::Arc;

use tonic::{Request, Response, Status};
use weir_proto::google::pubsub::v1 as gpb;
use weir_proto::google::pubsub::v1::publisher_server::Publisher;
use weir_proto::v1 as pb;

use crate::backend::{Backend, caller, client_status, futures_join};
use crate::convert;
use crate::names::{self, Kind, Name};
use weir_types::acl::{Operation, ResourceType};

/// A topic keeps messages at least this long (a subscription's default retention of
/// unacknowledged messages); Google's topic retention, when set, extends it.
const TOPIC_RETENTION_MS_MIN: u64 = 7 * 24 * 3600 * 1000;
/// Label that chooses a new topic's partition count.
pub const PARTITIONS_LABEL: &str = "weir-partitions";

#[derive(Clone)]
pub struct PublisherService {
    pub backend: Arc<Backend>,
    /// Spreads messages without an ordering key: each Publish call goes to the next
    /// partition (one batch per call), so subscribers' partitions share the load.
    pub next_partition: Arc<std::sync::atomic::AtomicU32>,
    pub topic_partitions: u32,
    pub replication_factor: u32,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn google_topic(t: &pb::TopicDescription) -> gpb::Topic {
    gpb::Topic {
        name: names::google(&t.name, Kind::Topics),
        message_retention_duration: (!t.retention_ms_unlimited)
            .then(|| convert::duration(t.retention_ms))
            .flatten(),
        state: gpb::topic::State::Active as i32,
        ..Default::default()
    }
}

/// A page of `items` after `token` (the last name of the previous page).
pub fn page<T>(
    mut items: Vec<T>,
    name: impl Fn(&T) -> &str,
    size: i32,
    token: &str,
) -> (Vec<T>, String) {
    items.retain(|i| token.is_empty() || name(i) > token);
    let size = if size <= 0 { 1000 } else { size as usize };
    let next = if items.len() > size {
        items.truncate(size);
        items
            .last()
            .map(|i| name(i).to_string())
            .unwrap_or_default()
    } else {
        String::new()
    };
    (items, next)
}

impl PublisherService {
    async fn describe(&self, weir: &str) -> Result<pb::TopicDescription, Status> {
        let request = pb::DescribeTopicRequest { name: weir.into() };
        self.backend
            .admin(|mut c| {
                let request = request.clone();
                async move { c.describe_topic(request).await }
            })
            .await
            .map_err(|s| not_found(s, "topic", weir))
    }
}

/// NOT_FOUND with Google's wording.
pub fn not_found(s: Status, kind: &str, weir: &str) -> Status {
    if s.code() == tonic::Code::NotFound {
        let k = if kind == "topic" {
            Kind::Topics
        } else {
            Kind::Subscriptions
        };
        Status::not_found(format!(
            "Resource not found (resource={})",
            names::google(weir, k)
        ))
    } else {
        s
    }
}

#[tonic::async_trait]
impl Publisher for PublisherService {
    async fn create_topic(
        &self,
        request: Request<gpb::Topic>,
    ) -> Result<Response<gpb::Topic>, Status> {
        let caller = caller(&request);
        let t = request.into_inner();
        let name = Name::parse("topic", &t.name, Kind::Topics)?;
        self.backend
            .authorize(
                &caller,
                Operation::Create,
                ResourceType::Topic,
                &name.weir(),
            )
            .await?;
        let partitions = match t.labels.get(PARTITIONS_LABEL) {
            Some(raw) => raw
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=10_000).contains(n))
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "Invalid [labels.{PARTITIONS_LABEL}]: {raw:?} is not 1 to 10000"
                    ))
                })?,
            None => self.topic_partitions,
        };
        let retention =
            convert::duration_ms(&t.message_retention_duration).max(TOPIC_RETENTION_MS_MIN);
        let request = pb::CreateTopicRequest {
            name: name.weir(),
            partitions,
            replication_factor: self.replication_factor,
            config: Some(pb::TopicConfig {
                retention_ms: Some(retention),
                ..Default::default()
            }),
        };
        let created = self
            .backend
            .admin(|mut c| {
                let request = request.clone();
                async move { c.create_topic(request).await }
            })
            .await
            .map_err(|s| {
                if s.code() == tonic::Code::AlreadyExists {
                    Status::already_exists("Topic already exists")
                } else {
                    s
                }
            })?;
        let mut topic = google_topic(&created);
        topic.labels = t.labels;
        Ok(Response::new(topic))
    }

    async fn update_topic(
        &self,
        request: Request<gpb::UpdateTopicRequest>,
    ) -> Result<Response<gpb::Topic>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let t = r
            .topic
            .ok_or_else(|| Status::invalid_argument("Invalid [topic]: must be set"))?;
        let name = Name::parse("topic", &t.name, Kind::Topics)?;
        self.backend
            .authorize(&caller, Operation::Alter, ResourceType::Topic, &name.weir())
            .await?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(Status::invalid_argument(
                "Invalid [update_mask]: it names no field",
            ));
        }
        for p in &paths {
            match p.as_str() {
                "message_retention_duration" => {
                    let retention = convert::duration_ms(&t.message_retention_duration)
                        .max(TOPIC_RETENTION_MS_MIN);
                    let request = pb::AlterTopicConfigRequest {
                        name: name.weir(),
                        config: Some(pb::TopicConfig {
                            retention_ms: Some(retention),
                            ..Default::default()
                        }),
                    };
                    self.backend
                        .admin(|mut c| {
                            let request = request.clone();
                            async move { c.alter_topic_config(request).await }
                        })
                        .await?;
                }
                "labels" => {}
                other => {
                    return Err(Status::invalid_argument(format!(
                        "Invalid [update_mask]: field {other:?} cannot be updated"
                    )));
                }
            }
        }
        let mut topic = google_topic(&self.describe(&name.weir()).await?);
        topic.labels = t.labels;
        Ok(Response::new(topic))
    }

    async fn publish(
        &self,
        request: Request<gpb::PublishRequest>,
    ) -> Result<Response<gpb::PublishResponse>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let name = Name::parse("topic", &r.topic, Kind::Topics)?;
        self.backend
            .authorize(&caller, Operation::Write, ResourceType::Topic, &name.weir())
            .await?;
        if r.messages.is_empty() {
            return Err(Status::invalid_argument("Invalid [messages]: none given"));
        }
        if r.messages.len() > convert::PUBLISH_MESSAGES_MAX {
            return Err(Status::invalid_argument(format!(
                "Invalid [messages]: more than {} messages",
                convert::PUBLISH_MESSAGES_MAX
            )));
        }
        let bytes: usize = r
            .messages
            .iter()
            .map(|m| {
                m.data.len()
                    + m.ordering_key.len()
                    + m.attributes
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>()
            })
            .sum();
        if bytes > convert::PUBLISH_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "Invalid [messages]: {bytes} bytes, at most {}",
                convert::PUBLISH_BYTES_MAX
            )));
        }
        let now = now_ms();
        let mut records = Vec::with_capacity(r.messages.len());
        for (i, m) in r.messages.into_iter().enumerate() {
            records.push(convert::record(i, m, now)?);
        }
        let topic = name.weir();
        let partitions = self
            .backend
            .metadata
            .route(&topic, false)
            .await
            .map_err(|e| not_found(client_status(&e), "topic", &topic))?
            .leaders
            .len() as u32;
        let spread = self
            .next_partition
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % partitions.max(1);
        let mut pending = Vec::with_capacity(records.len());
        for record in records {
            let partition = record.key.is_none().then_some(spread);
            let f = self
                .backend
                .producer
                .send(&topic, partition, record)
                .await
                .map_err(|e| not_found(client_status(&e), "topic", &topic))?;
            pending.push(f);
        }
        let mut message_ids = Vec::with_capacity(pending.len());
        for r in futures_join(pending).await {
            let meta = r.map_err(|e| not_found(client_status(&e), "topic", &topic))?;
            let offset = meta
                .offset
                .ok_or_else(|| Status::internal("the producer returned no offset"))?;
            message_ids.push(convert::message_id(meta.partition, offset.0));
        }
        metrics::counter!("weir_gateway_published_total").increment(message_ids.len() as u64);
        Ok(Response::new(gpb::PublishResponse { message_ids }))
    }

    async fn get_topic(
        &self,
        request: Request<gpb::GetTopicRequest>,
    ) -> Result<Response<gpb::Topic>, Status> {
        let caller = caller(&request);
        let name = Name::parse("topic", &request.into_inner().topic, Kind::Topics)?;
        self.backend
            .authorize(
                &caller,
                Operation::Describe,
                ResourceType::Topic,
                &name.weir(),
            )
            .await?;
        Ok(Response::new(google_topic(
            &self.describe(&name.weir()).await?,
        )))
    }

    async fn list_topics(
        &self,
        request: Request<gpb::ListTopicsRequest>,
    ) -> Result<Response<gpb::ListTopicsResponse>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let project = names::project("project", &r.project)?;
        self.backend
            .authorize(
                &caller,
                Operation::Describe,
                ResourceType::Topic,
                &format!("{project}."),
            )
            .await?;
        let all = self
            .backend
            .admin(|mut c| async move { c.list_topics(pb::ListTopicsRequest {}).await })
            .await?;
        let prefix = format!("{project}.");
        let mut topics: Vec<gpb::Topic> = all
            .topics
            .iter()
            .filter(|t| t.name.starts_with(&prefix))
            .map(google_topic)
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        let (topics, next_page_token) = page(topics, |t| &t.name, r.page_size, &r.page_token);
        Ok(Response::new(gpb::ListTopicsResponse {
            topics,
            next_page_token,
        }))
    }

    async fn list_topic_subscriptions(
        &self,
        request: Request<gpb::ListTopicSubscriptionsRequest>,
    ) -> Result<Response<gpb::ListTopicSubscriptionsResponse>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let name = Name::parse("topic", &r.topic, Kind::Topics)?;
        self.backend
            .authorize(
                &caller,
                Operation::Describe,
                ResourceType::Topic,
                &name.weir(),
            )
            .await?;
        self.describe(&name.weir()).await?;
        let request = pb::ListSubscriptionsRequest {
            prefix: String::new(),
            topic: name.weir(),
        };
        let subs = self
            .backend
            .subscriptions(|mut c| {
                let request = request.clone();
                async move { c.list_subscriptions(request).await }
            })
            .await?;
        let mut all: Vec<String> = subs
            .subscriptions
            .iter()
            .filter_map(|s| s.spec.as_ref())
            .map(|s| names::google(&s.name, Kind::Subscriptions))
            .collect();
        all.sort();
        let (subscriptions, next_page_token) = page(all, |s| s, r.page_size, &r.page_token);
        Ok(Response::new(gpb::ListTopicSubscriptionsResponse {
            subscriptions,
            next_page_token,
        }))
    }

    async fn list_topic_snapshots(
        &self,
        request: Request<gpb::ListTopicSnapshotsRequest>,
    ) -> Result<Response<gpb::ListTopicSnapshotsResponse>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let name = Name::parse("topic", &r.topic, Kind::Topics)?;
        self.backend
            .authorize(
                &caller,
                Operation::Describe,
                ResourceType::Topic,
                &name.weir(),
            )
            .await?;
        let request = pb::ListSnapshotsRequest {
            prefix: String::new(),
            topic: name.weir(),
        };
        let snaps = self
            .backend
            .subscriptions(|mut c| {
                let request = request.clone();
                async move { c.list_snapshots(request).await }
            })
            .await?;
        let mut all: Vec<String> = snaps
            .snapshots
            .iter()
            .map(|s| names::google(&s.name, Kind::Snapshots))
            .collect();
        all.sort();
        let (snapshots, next_page_token) = page(all, |s| s, r.page_size, &r.page_token);
        Ok(Response::new(gpb::ListTopicSnapshotsResponse {
            snapshots,
            next_page_token,
        }))
    }

    async fn delete_topic(
        &self,
        request: Request<gpb::DeleteTopicRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller(&request);
        let name = Name::parse("topic", &request.into_inner().topic, Kind::Topics)?;
        self.backend
            .authorize(
                &caller,
                Operation::Delete,
                ResourceType::Topic,
                &name.weir(),
            )
            .await?;
        let request = pb::DeleteTopicRequest { name: name.weir() };
        self.backend
            .admin(|mut c| {
                let request = request.clone();
                async move { c.delete_topic(request).await }
            })
            .await
            .map_err(|s| not_found(s, "topic", &name.weir()))?;
        Ok(Response::new(()))
    }

    async fn detach_subscription(
        &self,
        request: Request<gpb::DetachSubscriptionRequest>,
    ) -> Result<Response<gpb::DetachSubscriptionResponse>, Status> {
        let caller = caller(&request);
        let name = Name::parse(
            "subscription",
            &request.into_inner().subscription,
            Kind::Subscriptions,
        )?;
        self.backend
            .authorize(
                &caller,
                Operation::Alter,
                ResourceType::Subscription,
                &name.weir(),
            )
            .await?;
        let info = self.backend.subscription(&name.weir()).await?;
        let mut spec = info.spec.clone();
        spec.detached = true;
        let request = pb::UpdateSubscriptionRequest {
            spec: Some((&spec).into()),
            update_mask: vec!["detached".into()],
        };
        self.backend
            .subscriptions(|mut c| {
                let request = request.clone();
                async move { c.update_subscription(request).await }
            })
            .await?;
        self.backend.forget(&name.weir());
        Ok(Response::new(gpb::DetachSubscriptionResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_the_token() {
        let items: Vec<String> = (0..5).map(|i| format!("n{i}")).collect();
        let (first, token) = page(items.clone(), |s| s, 2, "");
        assert_eq!(first, vec!["n0", "n1"]);
        assert_eq!(token, "n1");
        let (second, token) = page(items.clone(), |s| s, 2, &token);
        assert_eq!(second, vec!["n2", "n3"]);
        let (third, token) = page(items, |s| s, 2, &token);
        assert_eq!(third, vec!["n4"]);
        assert_eq!(token, "");
    }
}
