//! The client's metadata library: a [`ClusterView`] kept current by following the
//! controllers' `WatchMetadata` stream (a snapshot, then deltas) in a background task, the
//! connections to brokers, and [`Metadata::call_leader`], the one retry loop every call to a
//! partition leader goes through. Used by the producer, the consumers, the CLI and anything
//! else built on this crate.
//!
//! No lock is held across an `.await`: the view is a `watch` value, and broker connections
//! are made outside the map that shares them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OnceCell, watch};
use weir_proto::call::Channel;
use weir_proto::v1 as pb;
use weir_proto::v1::admin_client::AdminClient;
use weir_proto::v1::broker_client::BrokerClient;
use weir_types::metadata::{ClusterView, MetadataUpdate};

use crate::error::ClientError;

/// Largest broker response this client reads (a fetch of up to the broker's 64 MiB default
/// cap, and a batch beyond it).
const RESPONSE_BYTES_MAX: usize = 128 << 20;

/// Where each partition of a topic is led.
#[derive(Debug, Clone)]
pub struct Route {
    /// Per partition: the leader's address (none while offline or its broker is fenced).
    pub leaders: Vec<Option<String>>,
}

/// How long a refresh waits for the pushed view to move on before asking the controller.
const REFRESH_WAIT: Duration = Duration::from_millis(100);

/// Pause before following the metadata from the next controller.
const WATCH_RETRY_PAUSE: Duration = Duration::from_millis(250);

#[derive(Debug)]
/// The cluster view pushed by the controllers, shared broker connections, and the retry
/// loop to partition leaders.
pub struct Metadata {
    bootstrap: Vec<String>,
    /// Started on first use (inside the caller's runtime); stopped when this is dropped.
    watch: OnceCell<(watch::Receiver<Arc<ClusterView>>, tokio::task::AbortHandle)>,
    /// Tells the watcher to move to the next controller (the one it follows may be cut off
    /// from the quorum and serve a view that no longer changes).
    move_on: Arc<tokio::sync::Notify>,
    channels: Mutex<HashMap<String, Channel>>,
}

const PATIENCE: Duration = Duration::from_secs(5);

/// The longest one request to a partition leader may take before it is given up and retried
/// (when the caller may retry): longer than a broker's default produce timeout would leave a
/// black-holed leader holding the whole delivery timeout.
const ATTEMPT_TIMEOUT_MAX: Duration = Duration::from_secs(10);

impl Drop for Metadata {
    fn drop(&mut self) {
        if let Some((_, task)) = self.watch.get() {
            task.abort();
        }
    }
}

/// Follows `WatchMetadata` from the controllers in turn, forever (until every receiver is
/// gone), publishing each new view.
async fn follow(
    bootstrap: Vec<String>,
    tx: watch::Sender<Arc<ClusterView>>,
    move_on: Arc<tokio::sync::Notify>,
) {
    if bootstrap.is_empty() {
        return; // nothing to follow; callers see no view and say so
    }
    let mut next = 0usize;
    loop {
        let addr = bootstrap[next % bootstrap.len()].clone();
        next += 1;
        let session = async {
            let channel = weir_proto::call::connect(&addr)
                .await
                .map_err(|e| e.to_string())?;
            let from_version = tx.borrow().version;
            let mut stream = AdminClient::new(channel)
                .watch_metadata(pb::WatchMetadataRequest { from_version })
                .await
                .map_err(|s| s.message().to_string())?
                .into_inner();
            while let Some(update) = stream
                .message()
                .await
                .map_err(|s| s.message().to_string())?
            {
                let update = MetadataUpdate::try_from(update).map_err(|e| e.to_string())?;
                let mut view = ClusterView::clone(&tx.borrow());
                if view.apply(update) {
                    tx.send_replace(Arc::new(view));
                }
            }
            Ok::<(), String>(())
        };
        tokio::select! {
            r = session => if let Err(e) = r {
                tracing::debug!(controller = %addr, error = %e, "metadata watch ended");
            },
            _ = move_on.notified() => {
                tracing::debug!(controller = %addr, "metadata view is stale; following another controller");
                continue;
            }
            _ = tx.closed() => return,
        }
        tokio::time::sleep(WATCH_RETRY_PAUSE).await;
    }
}

fn route_of(view: &ClusterView, topic: &str) -> Option<Route> {
    let t = view.topic(topic)?;
    Some(Route {
        leaders: (0..t.partitions.len() as u32)
            .map(|p| {
                view.leader(topic, p)
                    .and_then(|(_, address)| address.map(str::to_string))
            })
            .collect(),
    })
}

impl Metadata {
    pub fn new(bootstrap: Vec<String>) -> Metadata {
        Metadata {
            bootstrap,
            watch: OnceCell::new(),
            move_on: Arc::new(tokio::sync::Notify::new()),
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// The view, following the controllers from the first call on.
    async fn view(&self) -> watch::Receiver<Arc<ClusterView>> {
        let (rx, _) = self
            .watch
            .get_or_init(|| async {
                let (tx, rx) = watch::channel(Arc::new(ClusterView::default()));
                let task = tokio::spawn(follow(
                    self.bootstrap.clone(),
                    tx,
                    Arc::clone(&self.move_on),
                ));
                (rx, task.abort_handle())
            })
            .await;
        rx.clone()
    }

    /// The current cluster view, once the first one arrived (waits up to `PATIENCE`).
    pub async fn cluster(&self) -> Result<Arc<ClusterView>, ClientError> {
        let mut rx = self.view().await;
        let view = match tokio::time::timeout(PATIENCE, rx.wait_for(|v| v.version > 0)).await {
            Ok(Ok(view)) => Some(Arc::clone(&view)),
            _ => None,
        };
        match view {
            Some(view) => Ok(view),
            None => Err(ClientError::Unavailable(format!(
                "no metadata from the controllers at {} within {PATIENCE:?}",
                self.bootstrap.join(",")
            ))),
        }
    }

    /// The partition leaders of `topic`, from the pushed view. The active controller is
    /// asked directly (a linearizable answer) when the view does not show the topic (it does
    /// not exist, or was just created), and on `refresh` — the caller was sent to a broker
    /// that did not lead — when no newer view arrives within `REFRESH_WAIT`; the watcher then
    /// also moves to another controller, in case the one it follows is cut off.
    pub async fn route(&self, topic: &str, refresh: bool) -> Result<Arc<Route>, ClientError> {
        let mut view = self.cluster().await?;
        if refresh {
            let mut rx = self.view().await;
            let seen = view.version;
            let newer =
                match tokio::time::timeout(REFRESH_WAIT, rx.wait_for(|v| v.version > seen)).await {
                    Ok(Ok(newer)) => Some(Arc::clone(&newer)),
                    _ => None,
                };
            match newer {
                Some(newer) => view = newer,
                None => {
                    self.move_on.notify_one();
                    return self.route_from_controller(topic).await;
                }
            }
        }
        match route_of(&view, topic) {
            Some(route) => Ok(Arc::new(route)),
            None => self.route_from_controller(topic).await,
        }
    }

    /// The route as the active controller describes it now.
    async fn route_from_controller(&self, topic: &str) -> Result<Arc<Route>, ClientError> {
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
        Ok(Arc::new(Route { leaders }))
    }

    /// A client for the leader of `partition` (connections are shared per address).
    pub async fn leader(
        &self,
        topic: &str,
        partition: u32,
        refresh: bool,
    ) -> Result<BrokerClient<Channel>, ClientError> {
        let route = self.route(topic, refresh).await?;
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
        // fetch responses may be as large as the broker allows (`fetch_bytes_max`, 64 MiB by
        // default), far beyond tonic's 4 MiB default
        Ok(BrokerClient::new(self.channel(&addr).await?)
            .max_decoding_message_size(RESPONSE_BYTES_MAX))
    }

    /// A shared connection to `addr`; connecting happens outside the map's lock (two callers
    /// racing may both connect; the first to finish is kept).
    async fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        if let Some(c) = self
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(addr)
        {
            return Ok(c.clone());
        }
        let c = weir_proto::call::connect(addr).await?;
        Ok(self
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(addr.to_string())
            .or_insert(c)
            .clone())
    }

    pub fn forget_channels(&self) {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
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
                        return Err(ClientError::exhausted(attempts, &e));
                    }
                    tracing::debug!(%topic, partition, error = %e, "retrying");
                    refresh = true;
                    if matches!(e, ClientError::Unavailable(_)) {
                        self.forget_channels();
                    }
                    let pause = Duration::from_millis(50 * u64::from(attempts.min(10)));
                    tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + pause))
                        .await;
                    if tokio::time::Instant::now() >= deadline {
                        // no time left for another attempt: report the last real answer
                        return Err(ClientError::exhausted(attempts, &e));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}
