//! Weir's broker: hosts partition replicas (stored with `weir-log`), registers with the
//! controllers and keeps a lease by heartbeating, follows the metadata stream, and serves
//! `weir.v1.Broker` (produce, fetch, list offsets) for the partitions it leads.
//!
//! - [`state`]: the rules of one replica as a pure state machine (events in, actions out):
//!   follower progress ([`progress`]), the high watermark, ISR wishes, truncation targets.
//! - [`replica`]: one partition: its log and the owner task that alone changes it (appends,
//!   copies, truncation, checkpoints, retention), driving [`state`]; an fsync failure fails
//!   the disk ([`replica::DiskHealth`]) and the broker stops leading and heartbeating.
//! - [`registry`]: the set of hosted replicas, reconciled with each metadata snapshot.
//! - [`session`]: registration, heartbeats, re-registration when fenced, metadata watch.
//! - [`server`]: the gRPC service, on [`request`] values (each request converted whole at
//!   the edge, every field checked) and [`error`]'s typed failures, turned into a gRPC
//!   status only there.
//! - Subscriptions: [`lease`] is one subscription's delivery state in one partition as a
//!   pure state machine (cursor, leases, redelivery with backoff, ordering holds);
//!   [`subscriber`] loads it from the controllers' stored cursor when this broker leads the
//!   partition, serves pull/ack/modify/seek on it, and stores changed cursors every 100 ms.
//! - Replication, three parts: [`leader`] serves `ReplicaFetch`; [`fetcher`] runs one
//!   fetcher per followed leader (one fsync wait per response, throttles only catching-up
//!   partitions); [`isr`] sends the owners' ISR wishes to the controller and checkpoints.

pub mod config;
pub mod error;
pub mod fetcher;
pub mod isr;
pub mod leader;
pub mod lease;
pub mod memory;
pub mod progress;
pub mod registry;
pub mod replica;
pub mod request;
pub mod server;
pub mod session;
pub mod state;
pub mod subscriber;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use weir_log::Flusher;
use weir_proto::internal::v1::replication_server::ReplicationServer;
use weir_proto::v1::broker_server::BrokerServer;

pub use config::BrokerConfig;
pub use session::SessionState;

/// An fsync round this slow is logged at warn (the disk, not the broker, held its appends).
pub const SLOW_FSYNC_ROUND: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid broker config: {0}")]
    Config(String),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("storage: {0}")]
    Storage(#[from] weir_log::LogError),
    #[error("internal TLS: {0}")]
    Tls(String),
}

/// A running broker.
pub struct Broker {
    /// The public listener (produce, fetch, offsets).
    pub local_addr: SocketAddr,
    /// The internal listener (replication), when one was asked for.
    pub internal_addr: Option<SocketAddr>,
    pub registry: Arc<registry::Registry>,
    pub session: watch::Receiver<SessionState>,
    config: BrokerConfig,
    draining: Arc<std::sync::atomic::AtomicBool>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// What a controlled shutdown did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Leaderships moved to other in-sync replicas.
    pub leaders_moved: u32,
    /// Partitions this broker led that no other live in-sync replica could take.
    pub offline: u32,
}

impl Broker {
    /// Binds, then registers and starts following metadata in the background.
    pub async fn start(mut config: BrokerConfig) -> Result<Broker, StartError> {
        config.validate().map_err(StartError::Config)?;
        let (listener, local_addr) =
            weir_proto::call::bind(config.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: config.listen,
                    source,
                })?;
        // Port 0 was asked for: advertise the port actually bound.
        config.listen = local_addr;
        let internal = match config.internal_listen {
            Some(addr) => {
                let (listener, bound) = weir_proto::call::bind(addr)
                    .await
                    .map_err(|source| StartError::Listen { addr, source })?;
                config.internal_listen = Some(bound);
                Some((listener, bound))
            }
            None => None,
        };
        let internal_addr = internal.as_ref().map(|(_, a)| *a);
        std::fs::create_dir_all(config.data_dir.join("partitions")).map_err(|source| {
            StartError::Storage(weir_log::LogError::Io {
                context: format!("create {}", config.data_dir.display()),
                source,
            })
        })?;
        let flusher = Flusher::spawn(&format!("broker-{}", config.id))?;
        // the disk's latency, as the appends waiting on it see it; a slow round is logged, so
        // a latency spike can be matched to the disk
        flusher.observe(Box::new(|took, files| {
            metrics::histogram!("weir_broker_fsync_round_seconds").record(took.as_secs_f64());
            if took >= SLOW_FSYNC_ROUND {
                tracing::warn!(ms = took.as_millis() as u64, files, "slow fsync round");
            }
        }));
        let registry = Arc::new(registry::Registry::new(
            config.id,
            &config.data_dir,
            weir_log::LogConfig {
                batch_bytes_max: config.batch_bytes_max,
                page_cache_tail_bytes: (config.page_cache_tail_bytes > 0)
                    .then_some(config.page_cache_tail_bytes),
                ..weir_log::LogConfig::default()
            },
            flusher,
        ));
        let (stop, stopped) = watch::channel(false);
        let (session_tx, session) = watch::channel(SessionState::default());
        let mut tasks = JoinSet::new();
        let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
        tasks.spawn(session::run_lease(
            config.clone(),
            Arc::clone(&registry),
            session_tx.clone(),
            Arc::clone(&draining),
            stopped.clone(),
        ));
        tasks.spawn(session::run_watch(
            config.clone(),
            Arc::clone(&registry),
            session_tx,
            stopped.clone(),
        ));
        tasks.spawn(metrics_task(
            config.id,
            Arc::clone(&registry),
            stopped.clone(),
        ));
        tasks.spawn(fetcher::run_fetchers(
            config.clone(),
            Arc::clone(&registry),
            stopped.clone(),
        ));
        tasks.spawn(isr::run_isr_manager(
            config.clone(),
            Arc::clone(&registry),
            session.clone(),
            stopped.clone(),
        ));
        tasks.spawn(retention_task(
            Arc::clone(&registry),
            Duration::from_millis(config.retention_check_ms),
            stopped.clone(),
        ));
        let subscriber = Arc::new(subscriber::Subscriber::new(config.clone()));
        tasks.spawn(subscriber::run_committer(
            Arc::clone(&subscriber),
            Arc::clone(&registry),
            stopped.clone(),
        ));
        let service = server::BrokerService {
            subscriber,
            config: config.clone(),
            registry: Arc::clone(&registry),
            session: session.clone(),
            producer_ids: Arc::new(tokio::sync::Mutex::new((0, 0))),
            security: Arc::clone(&config.security.security),
        };
        let replication = ReplicationServer::new(leader::ReplicationService {
            registry: Arc::clone(&registry),
            fetch_wait_ms_max: config.fetch_wait_ms_max,
        });
        let auth = config.security.interceptor();
        let mut public = weir_proto::call::server();
        let mut public = public.add_service(BrokerServer::with_interceptor(service, auth.clone()));
        match internal {
            Some((listener, addr)) => {
                let mut server_stop = stopped.clone();
                let shutdown = async move {
                    let _ = server_stop.wait_for(|s| *s).await;
                };
                let server: std::pin::Pin<
                    Box<
                        dyn std::future::Future<Output = Result<(), tonic::transport::Error>>
                            + Send,
                    >,
                > = match &config.internal_tls {
                    // mutual TLS with the replication certificates
                    Some(files) => {
                        let tls = weir_proto::tls::InternalTls::reloading_server(
                            &weir_proto::tls::TlsFiles {
                                cert: files.cert.clone(),
                                key: files.key.clone(),
                                ca: files.ca.clone(),
                            },
                        )
                        .map_err(StartError::Tls)?;
                        let router = weir_proto::call::server().add_service(replication);
                        Box::pin(weir_proto::call::serve(
                            router,
                            listener,
                            Some(Arc::new(tls)),
                            shutdown,
                        ))
                    }
                    // the node's own TLS (followers present their node certificates), or
                    // plain text when it has none
                    None => {
                        let router = weir_proto::call::server().add_service(
                            tonic::service::interceptor::InterceptedService::new(
                                replication,
                                auth.clone(),
                            ),
                        );
                        Box::pin(weir_proto::call::serve(
                            router,
                            listener,
                            config.security.tls.clone(),
                            shutdown,
                        ))
                    }
                };
                tasks.spawn(async move {
                    if let Err(e) = server.await {
                        tracing::error!(error = %e, %addr, "broker internal gRPC server failed");
                    }
                });
            }
            // no internal listener: replication shares the public one
            None => {
                public = public.add_service(tonic::service::interceptor::InterceptedService::new(
                    replication,
                    auth,
                ))
            }
        }
        let mut server_stop = stopped;
        let server =
            weir_proto::call::serve(public, listener, config.security.tls.clone(), async move {
                let _ = server_stop.wait_for(|s| *s).await;
            });
        tasks.spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "broker gRPC server failed");
            }
        });
        tracing::info!(id = %config.id, addr = %local_addr, internal = ?internal_addr, "broker started");
        Ok(Broker {
            local_addr,
            internal_addr,
            registry,
            session,
            config,
            draining,
            stop,
            tasks,
        })
    }

    /// A controlled shutdown, before [`Broker::shutdown`]: asks the controllers to move this
    /// broker's leaderships to in-sync replicas now (new epochs) and take it out of the ISRs,
    /// then waits (at most `patience`) until its metadata shows it fenced, so clients and
    /// followers have moved on before the process stops. It does not register again.
    pub async fn drain(&self, patience: Duration) -> Result<Drained, String> {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let request = weir_proto::v1::DrainBrokerRequest {
            broker_id: self.config.id.0,
        };
        let answer = weir_proto::call::with_internal_controller(
            &self.config.controllers,
            patience,
            |ch| async move {
                weir_proto::v1::admin_client::AdminClient::new(ch)
                    .drain_broker(request)
                    .await
            },
        )
        .await
        .map_err(|e| format!("drain: {e}"))?
        .into_inner();
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let fenced = self
                .registry
                .view()
                .broker(self.config.id)
                .is_none_or(|b| b.fenced);
            if fenced {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "drain: the metadata did not show broker {} fenced within {patience:?}",
                    self.config.id
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // give up what this process still believes it leads
        if let Err(e) = self.registry.registered(0).await {
            tracing::warn!(error = %e, "giving up leaderships after the drain failed");
        }
        Ok(Drained {
            leaders_moved: answer.leaders_moved,
            offline: answer.offline,
        })
    }

    /// Whether the broker is registered and has applied metadata.
    pub fn is_ready(&self) -> bool {
        (self.readiness())()
    }

    /// Ready: registered (not fenced), metadata applied, every assigned partition open, and
    /// the disk has not failed.
    pub fn readiness(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let session = self.session.clone();
        let registry = Arc::clone(&self.registry);
        move || {
            let s = *session.borrow();
            s.incarnation.is_some()
                && s.metadata_version > 0
                && registry.failed_partitions() == 0
                && registry.disk.failure().is_none()
        }
    }

    /// Stops serving, finishes queued appends, checkpoints every partition.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        self.registry.close_all().await;
    }
}

async fn retention_task(
    registry: Arc<registry::Registry>,
    every: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        for replica in registry.all() {
            match replica.enforce_retention().await {
                Ok(Ok(out)) if out.segments_deleted > 0 => tracing::info!(
                    topic = %replica.topic,
                    partition = replica.partition,
                    segments = out.segments_deleted,
                    bytes = out.bytes_deleted,
                    "retention deleted segments"
                ),
                Ok(Err(e)) => {
                    tracing::warn!(topic = %replica.topic, error = %e, "retention failed")
                }
                _ => {}
            }
        }
    }
}

/// Publishes partition and fsync gauges once a second.
async fn metrics_task(
    id: weir_types::BrokerId,
    registry: Arc<registry::Registry>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let replicas = registry.all();
        let led = replicas
            .iter()
            .filter(|r| r.leadership().leader == Some(id))
            .count();
        let bytes: u64 = replicas.iter().map(|r| r.log.size_bytes()).sum();
        metrics::gauge!("weir_broker_partitions").set(replicas.len() as f64);
        metrics::gauge!("weir_broker_partitions_led").set(led as f64);
        metrics::gauge!("weir_broker_partitions_failed").set(registry.failed_partitions() as f64);
        metrics::gauge!("weir_broker_log_bytes").set(bytes as f64);
        let flush = registry.flusher_stats();
        metrics::counter!("weir_broker_fsync_rounds_total").absolute(flush.rounds);
        metrics::counter!("weir_broker_fsyncs_total").absolute(flush.fsyncs);
    }
}
