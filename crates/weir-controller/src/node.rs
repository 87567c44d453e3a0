//! A running controller: the Raft node, its gRPC server, and the lease task that fences
//! brokers whose heartbeats stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::{Config, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;
use weir_proto::internal::v1::broker_registry_server::BrokerRegistryServer;
use weir_proto::internal::v1::controller_raft_server::ControllerRaftServer;
use weir_proto::v1::admin_server::AdminServer;

use crate::admin::{Leases, Services, live_incarnations};
use crate::coordinator::{
    Coordinator, GroupSettings, SESSION_TIMEOUT_MAX_MS, SESSION_TIMEOUT_MIN_MS,
};
use crate::metadata::Command;
use crate::raft::{ControllerNode, Network, NodeId, Raft, RaftService};
use crate::store::{self, LogStore, StateMachine};
use weir_proto::internal::v1::subscription_cursors_server::SubscriptionCursorsServer;
use weir_proto::v1::group_coordinator_server::GroupCoordinatorServer;
use weir_proto::v1::subscriptions_server::SubscriptionsServer;

/// Settings of one controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// This controller's id (positive, unique among controllers).
    pub id: NodeId,
    /// Where to listen for clients (admin, metadata, groups) and, without `internal_listen`,
    /// for Raft and brokers too.
    pub listen: SocketAddr,
    /// Where to serve the internal API apart (Raft between controllers, the broker registry,
    /// subscription cursors; and the metadata stream for brokers), so it can be firewalled.
    #[serde(default)]
    pub internal_listen: Option<SocketAddr>,
    /// The initial voters, `id → address(es)`, including this node. Used once, to bootstrap an
    /// empty cluster; later membership changes go through the admin API.
    pub voters: BTreeMap<NodeId, ControllerNode>,
    /// Start empty and wait to be added by `AddController` instead of bootstrapping.
    pub join: bool,
    pub data_dir: PathBuf,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// A broker that has not heartbeated for this long is fenced.
    pub broker_lease_ms: u64,
    /// Build a snapshot (and purge the log before it) after this many new entries.
    pub snapshot_logs_max: u64,
    /// How often the active controller moves leaderships back to preferred replicas.
    pub preferred_leader_check_ms: u64,
    /// How often consumer-group members are asked to heartbeat.
    pub group_heartbeat_interval_ms: u32,
    /// Session timeout for members that do not ask for their own.
    pub group_session_timeout_ms: u32,
    /// TLS on the listener and who may call (not part of a config file: built from the
    /// security settings at start).
    #[serde(skip)]
    pub security: weir_proto::auth::ListenerSecurity,
}

impl ControllerConfig {
    pub fn new(id: NodeId, listen: SocketAddr, data_dir: PathBuf) -> ControllerConfig {
        ControllerConfig {
            id,
            listen,
            internal_listen: None,
            voters: BTreeMap::from([(id, ControllerNode::new(listen.to_string()))]),
            join: false,
            data_dir,
            heartbeat_ms: 100,
            election_timeout_min_ms: 600,
            election_timeout_max_ms: 1200,
            broker_lease_ms: 6000,
            snapshot_logs_max: 5000,
            preferred_leader_check_ms: 30_000,
            group_heartbeat_interval_ms: 1000,
            group_session_timeout_ms: 10_000,
            security: Default::default(),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("id must be positive".into());
        }
        if !self.join && !self.voters.contains_key(&self.id) {
            return Err(format!(
                "voters must include this controller's id {}",
                self.id
            ));
        }
        for (id, node) in &self.voters {
            if *id == 0 {
                return Err("voter ids must be positive".into());
            }
            for addr in std::iter::once(&node.addr).chain(&node.internal) {
                if !weir_proto::call::is_host_port(addr) {
                    return Err(format!("voter {id} address {addr:?} is not host:port"));
                }
            }
        }
        if self.internal_listen == Some(self.listen) {
            return Err(format!(
                "internal_listen must differ from listen ({})",
                self.listen
            ));
        }
        if let Some(me) = self.voters.get(&self.id)
            && !self.join
            && me.internal.is_some() != self.internal_listen.is_some()
        {
            return Err(match me.internal {
                Some(_) => format!(
                    "voter {} names an internal address but this controller has no internal_listen",
                    self.id
                ),
                None => format!(
                    "this controller has internal_listen: its voter entry must name the internal address too ({}=public/internal)",
                    self.id
                ),
            });
        }
        if self.heartbeat_ms == 0 || self.election_timeout_min_ms <= self.heartbeat_ms {
            return Err("election_timeout_min_ms must exceed heartbeat_ms > 0".into());
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err("election_timeout_max_ms must exceed election_timeout_min_ms".into());
        }
        if self.broker_lease_ms < 3 * self.heartbeat_ms {
            return Err("broker_lease_ms must be at least three Raft heartbeats".into());
        }
        if self.snapshot_logs_max == 0 {
            return Err("snapshot_logs_max must be positive".into());
        }
        if self.preferred_leader_check_ms < 100 {
            return Err("preferred_leader_check_ms must be at least 100".into());
        }
        if !(SESSION_TIMEOUT_MIN_MS..=SESSION_TIMEOUT_MAX_MS)
            .contains(&self.group_session_timeout_ms)
        {
            return Err(format!(
                "group_session_timeout_ms must be {SESSION_TIMEOUT_MIN_MS} to {SESSION_TIMEOUT_MAX_MS}"
            ));
        }
        if self.group_heartbeat_interval_ms < 50
            || self.group_heartbeat_interval_ms >= self.group_session_timeout_ms
        {
            return Err(
                "group_heartbeat_interval_ms must be at least 50 and below group_session_timeout_ms"
                    .into(),
            );
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid controller config: {0}")]
    Config(String),
    #[error("open {path}: {source}")]
    Storage { path: PathBuf, source: sled::Error },
    #[error("storage: {0}")]
    Raft(String),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started controller. Dropping it does not stop it; call [`Controller::shutdown`].
pub struct Controller {
    pub raft: Raft,
    pub state: StateMachine,
    pub local_addr: SocketAddr,
    /// Where the internal API is served, when apart (`internal_listen`).
    pub internal_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Controller {
    pub async fn start(config: ControllerConfig) -> Result<Controller, StartError> {
        config.validate().map_err(StartError::Config)?;
        let db = store::open_db(&config.data_dir)
            .await
            .map_err(|source| StartError::Storage {
                path: config.data_dir.clone(),
                source,
            })?;
        let log = LogStore::open(&db).map_err(|source| StartError::Storage {
            path: config.data_dir.clone(),
            source,
        })?;
        let state = StateMachine::open(&db).map_err(|e| StartError::Raft(e.to_string()))?;
        let raft_config = Config {
            cluster_name: "weir-controllers".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_logs_max),
            max_in_snapshot_log_to_keep: config.snapshot_logs_max,
            ..Config::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config),
            Network,
            log,
            state.clone(),
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;

        let (listener, local_addr) =
            weir_proto::call::bind(config.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: config.listen,
                    source,
                })?;

        // Bootstrap once: a node with an empty log proposes the static voter set. Every node
        // proposes the same set, so whichever wins the first election, the membership agrees;
        // a restarted node has a log and skips this.
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        if !initialized
            && !config.join
            && let Err(e) = raft.initialize(config.voters.clone()).await
        {
            tracing::info!(error = %e, "bootstrap skipped");
        }

        let (stop, stopped) = watch::channel(false);
        let leases = Arc::new(Leases::default());
        let services = Services {
            stopped: stopped.clone(),
            id: config.id,
            raft: raft.clone(),
            sm: state.clone(),
            leases: Arc::clone(&leases),
            lease: Duration::from_millis(config.broker_lease_ms),
            preferred_leader_check: Duration::from_millis(config.preferred_leader_check_ms),
            security: Arc::clone(&config.security.security),
        };
        let mut tasks = JoinSet::new();
        let coordinator = Coordinator::start(
            services.clone(),
            GroupSettings {
                heartbeat_interval_ms: config.group_heartbeat_interval_ms,
                session_timeout_ms: config.group_session_timeout_ms,
            },
            stopped.clone(),
            &mut tasks,
        );
        let internal = match config.internal_listen {
            Some(addr) => Some(
                weir_proto::call::bind(addr)
                    .await
                    .map_err(|source| StartError::Listen { addr, source })?,
            ),
            None => None,
        };
        let internal_addr = internal.as_ref().map(|(_, addr)| *addr);
        let auth = config.security.interceptor();
        let internal_services = InternalServices {
            raft: ControllerRaftServer::with_interceptor(
                RaftService { raft: raft.clone() },
                auth.clone(),
            ),
            registry: BrokerRegistryServer::with_interceptor(services.clone(), auth.clone()),
            cursors: SubscriptionCursorsServer::with_interceptor(services.clone(), auth.clone()),
        };
        let admin = AdminServer::with_interceptor(services.clone(), auth.clone());
        let public = weir_proto::call::server()
            .add_service(admin.clone())
            .add_service(GroupCoordinatorServer::with_interceptor(
                coordinator,
                auth.clone(),
            ))
            .add_service(SubscriptionsServer::with_interceptor(
                services.clone(),
                auth,
            ));
        // Without an internal listener the public one serves the internal API as well.
        let public = match internal {
            Some((listener, _)) => {
                // brokers follow the metadata stream on the internal listener too
                let router =
                    internal_services.add_to(weir_proto::call::server().add_service(admin));
                spawn_server(&mut tasks, router, listener, &config, &stopped, "internal");
                public
            }
            None => internal_services.add_to(public),
        };
        spawn_server(&mut tasks, public, listener, &config, &stopped, "public");
        tasks.spawn(lease_task(services.clone(), stopped.clone()));
        tasks.spawn(metrics_task(services, stopped));
        tracing::info!(id = config.id, addr = %local_addr, internal = ?internal_addr, "controller started");
        Ok(Controller {
            raft,
            state,
            local_addr,
            internal_addr,
            stop,
            tasks,
        })
    }

    /// Stops serving and shuts the Raft node down.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }

    /// Ready when a leader is known and this node has applied the log up to its start.
    pub fn readiness(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let raft = self.raft.clone();
        move || {
            let m = raft.metrics().borrow().clone();
            m.current_leader.is_some() && m.last_applied.is_some()
        }
    }

    /// The current voters.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }
}

type Authenticated<S> =
    tonic::service::interceptor::InterceptedService<S, weir_proto::auth::Authenticate>;

/// The internal API: Raft between controllers, the broker registry, subscription cursors.
struct InternalServices {
    raft: Authenticated<ControllerRaftServer<RaftService>>,
    registry: Authenticated<BrokerRegistryServer<Services>>,
    cursors: Authenticated<SubscriptionCursorsServer<Services>>,
}

impl InternalServices {
    fn add_to(self, router: tonic::transport::server::Router) -> tonic::transport::server::Router {
        router
            .add_service(self.raft)
            .add_service(self.registry)
            .add_service(self.cursors)
    }
}

fn spawn_server(
    tasks: &mut JoinSet<()>,
    router: tonic::transport::server::Router,
    listener: tokio::net::TcpListener,
    config: &ControllerConfig,
    stopped: &watch::Receiver<bool>,
    name: &'static str,
) {
    let mut stop = stopped.clone();
    let server =
        weir_proto::call::serve(router, listener, config.security.tls.clone(), async move {
            let _ = stop.wait_for(|s| *s).await;
        });
    tasks.spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, listener = name, "controller gRPC server failed");
        }
    });
}

/// How often the active controller looks for subscriptions idle past their expiration TTL.
const SUBSCRIPTION_EXPIRY_CHECK: Duration = Duration::from_secs(60);

/// On the active controller: fences every live broker whose lease ran out, completes
/// reassignments, moves leaderships back to preferred replicas, deletes idle subscriptions.
async fn lease_task(services: Services, mut stopped: watch::Receiver<bool>) {
    let tick = (services.lease / 4).max(Duration::from_millis(50));
    let mut was_leader = false;
    let mut last_rebalance = std::time::Instant::now();
    let mut last_expiry = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let is_leader = services.raft.metrics().borrow().state == ServerState::Leader;
        if is_leader && !was_leader {
            services.leases.reset_all();
        }
        was_leader = is_leader;
        if !is_leader {
            continue;
        }
        let completable = services
            .sm
            .read()
            .await
            .metadata
            .completable_reassignments();
        if completable > 0 {
            tracing::info!(partitions = completable, "completing reassignments");
            if let Err(e) = services.propose(Command::CompleteReassignments).await {
                tracing::warn!(error = %e, "completing reassignments failed");
            }
        }
        if last_rebalance.elapsed() >= services.preferred_leader_check {
            last_rebalance = std::time::Instant::now();
            let unbalanced = services.sm.read().await.metadata.unbalanced_leaders();
            if unbalanced > 0 {
                tracing::info!(
                    partitions = unbalanced,
                    "moving leaderships back to preferred replicas"
                );
                if let Err(e) = services.propose(Command::RebalanceLeaders).await {
                    tracing::warn!(error = %e, "preferred-leader rebalance failed");
                }
            }
        }
        if last_expiry.elapsed() >= SUBSCRIPTION_EXPIRY_CHECK {
            last_expiry = std::time::Instant::now();
            let now_ms = crate::subscriptions::now_ms();
            let expired = services.sm.read().await.subscriptions.expired(now_ms);
            if !expired.is_empty() {
                tracing::info!(subscriptions = ?expired, "deleting subscriptions idle past their expiration");
                let command =
                    Command::Subscription(crate::subscription::SubscriptionCommand::Expire {
                        now_ms,
                    });
                if let Err(e) = services.propose(command).await {
                    tracing::warn!(error = %e, "expiring subscriptions failed");
                }
            }
        }
        let registered = live_incarnations(&services.sm.read().await.metadata);
        for (id, incarnation) in services.leases.expired(&registered, services.lease) {
            tracing::warn!(broker = %id, incarnation, "broker lease expired, fencing");
            if let Err(e) = services
                .propose(Command::FenceBroker { id, incarnation })
                .await
            {
                tracing::warn!(broker = %id, error = %e, "fencing failed");
            }
        }
    }
}

/// Publishes Raft and cluster-health gauges once a second.
async fn metrics_task(services: Services, mut stopped: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let m = services.raft.metrics().borrow().clone();
        metrics::gauge!("weir_controller_raft_term").set(m.current_term as f64);
        metrics::gauge!("weir_controller_raft_last_log_index")
            .set(m.last_log_index.unwrap_or(0) as f64);
        metrics::gauge!("weir_controller_raft_applied_index")
            .set(m.last_applied.map_or(0, |l| l.index) as f64);
        metrics::gauge!("weir_controller_is_active").set(if m.state == ServerState::Leader {
            1.0
        } else {
            0.0
        });
        let state = services.sm.read().await;
        let md = &state.metadata;
        let (mut offline, mut under) = (0usize, 0usize);
        for p in md.topics.values().flat_map(|t| &t.partitions) {
            if p.leader.is_none() {
                offline += 1;
            }
            if p.isr.len() < p.replicas.len() {
                under += 1;
            }
        }
        metrics::gauge!("weir_controller_brokers_live").set(md.live_brokers().len() as f64);
        metrics::gauge!("weir_controller_brokers_fenced")
            .set((md.brokers.len() - md.live_brokers().len()) as f64);
        metrics::gauge!("weir_controller_topics").set(md.topics.len() as f64);
        metrics::gauge!("weir_controller_offline_partitions").set(offline as f64);
        metrics::gauge!("weir_controller_under_replicated_partitions").set(under as f64);
    }
}
