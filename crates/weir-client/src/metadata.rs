//! Topic routes: which broker leads each partition, asked of the controllers and cached.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tonic::transport::Channel;
use weir_proto::v1 as pb;
use weir_proto::v1::admin_client::AdminClient;
use weir_proto::v1::broker_client::BrokerClient;

use crate::error::ClientError;

/// Where each partition of a topic is led.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    /// Per partition: the leader's address (none while offline).
    pub leaders: Vec<Option<String>>,
    fetched: std::time::Instant,
}

/// A cached route older than this is fetched again (new partitions show up).
const ROUTE_AGE_MAX: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub(crate) struct Metadata {
    bootstrap: Vec<String>,
    routes: Mutex<HashMap<String, Arc<Route>>>,
    channels: Mutex<HashMap<String, Channel>>,
}

const PATIENCE: Duration = Duration::from_secs(5);

/// The longest one request to a partition leader may take before it is given up and retried
/// (when the caller may retry): longer than a broker's default produce timeout would leave a
/// black-holed leader holding the whole delivery timeout.
const ATTEMPT_TIMEOUT_MAX: Duration = Duration::from_secs(10);

impl Metadata {
    pub fn new(bootstrap: Vec<String>) -> Metadata {
        Metadata {
            bootstrap,
            routes: Mutex::new(HashMap::new()),
            channels: Mutex::new(HashMap::new()),
        }
    }

    pub async fn route(&self, topic: &str, refresh: bool) -> Result<Arc<Route>, ClientError> {
        if !refresh
            && let Some(route) = self.routes.lock().await.get(topic)
            && route.fetched.elapsed() < ROUTE_AGE_MAX
        {
            return Ok(Arc::clone(route));
        }
        let name = topic.to_string();
        let t = weir_proto::call::with_controller(&self.bootstrap, PATIENCE, |ch| {
            let name = name.clone();
            async move {
                AdminClient::new(ch)
                    .describe_topic(pb::DescribeTopicRequest { name })
                    .await
            }
        })
        .await?
        .into_inner();
        let cluster =
            weir_proto::call::with_controller(&self.bootstrap, PATIENCE, |ch| async move {
                AdminClient::new(ch)
                    .describe_cluster(pb::DescribeClusterRequest {})
                    .await
            })
            .await?
            .into_inner();
        let leaders = t
            .partitions
            .iter()
            .map(|p| {
                cluster
                    .brokers
                    .iter()
                    .find(|b| b.id == p.leader && !b.fenced)
                    .map(|b| b.address.clone())
            })
            .collect();
        let route = Arc::new(Route {
            leaders,
            fetched: std::time::Instant::now(),
        });
        self.routes
            .lock()
            .await
            .insert(topic.to_string(), Arc::clone(&route));
        Ok(route)
    }

    /// A client for the leader of `partition` (connections are shared per address).
    pub async fn leader(
        &self,
        topic: &str,
        partition: u32,
        refresh: bool,
    ) -> Result<BrokerClient<Channel>, ClientError> {
        let mut route = self.route(topic, refresh).await?;
        if !refresh && partition as usize >= route.leaders.len() {
            // partitions may have been added since the route was cached
            route = self.route(topic, true).await?;
        }
        let addr = route
            .leaders
            .get(partition as usize)
            .ok_or_else(|| ClientError::Invalid {
                field: "partition".into(),
                reason: format!("{topic} has {} partitions", route.leaders.len()),
            })?
            .clone()
            .ok_or_else(|| {
                ClientError::Unavailable(format!("{topic}/{partition} has no leader"))
            })?;
        let mut channels = self.channels.lock().await;
        let channel = match channels.get(&addr) {
            Some(c) => c.clone(),
            None => {
                let c = weir_proto::call::connect(&addr).await?;
                channels.insert(addr, c.clone());
                c
            }
        };
        Ok(BrokerClient::new(channel))
    }

    pub async fn forget_channels(&self) {
        self.channels.lock().await.clear();
    }

    /// Calls the leader of `partition` until it answers, a final error comes back, or
    /// `deadline` passes; each retriable failure (for an `idempotent` caller, also failures
    /// that may have been applied) refreshes the route and backs off.
    pub async fn call_leader<T, F, Fut>(
        &self,
        topic: &str,
        partition: u32,
        idempotent: bool,
        deadline: tokio::time::Instant,
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(BrokerClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut attempts = 0u32;
        let mut refresh = false;
        loop {
            attempts += 1;
            // A leader cut off by the network may accept the request and never answer; each
            // attempt ends by the caller's deadline and by `ATTEMPT_TIMEOUT_MAX`, so the next
            // one can ask for fresh metadata and reach the new leader.
            let started = tokio::time::Instant::now();
            let attempt_deadline = deadline.min(started + ATTEMPT_TIMEOUT_MAX);
            let attempt = tokio::time::timeout_at(attempt_deadline, async {
                match self.leader(topic, partition, refresh).await {
                    Ok(client) => call(client)
                        .await
                        .map(tonic::Response::into_inner)
                        .map_err(|s| ClientError::from_status(&s)),
                    Err(e) => Err(e),
                }
            })
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::Unavailable(format!(
                    "the leader of {topic}/{partition} did not answer within {:?}",
                    attempt_deadline - started
                )))
            });
            match attempt {
                Ok(v) => return Ok(v),
                Err(e) if e.retriable(idempotent) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(ClientError::Exhausted {
                            attempts,
                            last: e.to_string(),
                        });
                    }
                    tracing::debug!(%topic, partition, error = %e, "retrying");
                    refresh = true;
                    if matches!(e, ClientError::Unavailable(_)) {
                        self.forget_channels().await;
                    }
                    let pause = Duration::from_millis(50 * u64::from(attempts.min(10)));
                    tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + pause))
                        .await;
                    if tokio::time::Instant::now() >= deadline {
                        // no time left for another attempt: report the last real answer
                        return Err(ClientError::Exhausted {
                            attempts,
                            last: e.to_string(),
                        });
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}
