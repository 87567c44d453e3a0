//! The broker's session with the controllers: register (getting an incarnation), heartbeat to
//! keep the lease, register again when fenced, and follow the metadata stream.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use weir_proto::call::{self, CallError};
use weir_proto::internal::v1 as ipb;
use weir_proto::internal::v1::broker_registry_client::BrokerRegistryClient;
use weir_proto::v1 as pb;
use weir_proto::v1::admin_client::AdminClient;

use crate::config::BrokerConfig;
use crate::registry::Registry;

/// Retry pause after a failed call to the controllers.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// Registration state shared with readiness checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionState {
    pub incarnation: Option<u64>,
    pub metadata_version: u64,
}

async fn register(config: &BrokerConfig) -> Result<ipb::RegisterBrokerResponse, CallError> {
    let request = ipb::RegisterBrokerRequest {
        broker_id: config.id.0,
        address: config
            .advertise
            .clone()
            .unwrap_or_else(|| config.listen.to_string()),
        rack: config.rack.clone().unwrap_or_default(),
        internal_address: config
            .internal_advertise
            .clone()
            .or_else(|| config.internal_listen.map(|a| a.to_string()))
            .unwrap_or_default(),
    };
    call::with_internal_controller(&config.controllers, Duration::from_secs(5), |ch| {
        let request = request.clone();
        async move { BrokerRegistryClient::new(ch).register_broker(request).await }
    })
    .await
    .map(tonic::Response::into_inner)
}

/// Registers and heartbeats until `stop`.
pub async fn run_lease(
    config: BrokerConfig,
    registry: Arc<Registry>,
    state: watch::Sender<SessionState>,
    draining: Arc<std::sync::atomic::AtomicBool>,
    mut stop: watch::Receiver<bool>,
) {
    'register: loop {
        if registry.disk.failure().is_some() {
            let _ = stop.wait_for(|s| *s).await;
            return; // a failed disk never registers again in this process
        }
        if draining.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = stop.wait_for(|s| *s).await;
            return; // drained: the next process registers
        }
        let registration = tokio::select! {
            r = register(&config) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let registration = match registration {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "registration failed, retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        tracing::info!(broker = %config.id, incarnation = registration.incarnation, "registered with the controller");
        state.send_modify(|s| s.incarnation = Some(registration.incarnation));
        // Leaderships are re-evaluated now that this registration is known; that may wait
        // for partitions being opened, so it runs beside the heartbeats, never before them.
        let reapply = registry.registered(registration.incarnation);
        tokio::pin!(reapply);
        let mut reapplied = false;
        let interval = Duration::from_millis((registration.lease_ms / 3).max(50));
        let mut disk = registry.disk.subscribe();
        loop {
            let tick = tokio::time::sleep(interval);
            tokio::pin!(tick);
            loop {
                tokio::select! {
                    _ = &mut tick => break,
                    _ = async { disk.wait_for(Option::is_some).await.map(|_| ()) } => {
                        // fail-stop: no more heartbeats, so the lease runs out and the
                        // controller moves every leadership to replicas that hold their data
                        state.send_modify(|s| s.incarnation = None);
                        if !reapplied {
                            let _ = (&mut reapply).await;
                        }
                        if let Err(e) = registry.registered(0).await {
                            tracing::error!(error = %e, "giving up leaderships failed");
                        }
                        continue 'register; // which waits for the stop
                    }
                    done = &mut reapply, if !reapplied => {
                        reapplied = true;
                        if let Err(e) = done {
                            tracing::error!(error = %e, "applying metadata after registration failed");
                        }
                    }
                    _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => return,
                }
            }
            let request = ipb::BrokerHeartbeatRequest {
                broker_id: config.id.0,
                incarnation: registration.incarnation,
            };
            let beat =
                call::with_internal_controller(&config.controllers, interval, |ch| async move {
                    BrokerRegistryClient::new(ch)
                        .broker_heartbeat(request)
                        .await
                })
                .await;
            match beat {
                Ok(r) if r.get_ref().fenced && r.get_ref().draining => {
                    tracing::info!(broker = %config.id, "drained by the controller: not registering again");
                    draining.store(true, std::sync::atomic::Ordering::SeqCst);
                    state.send_modify(|s| s.incarnation = None);
                    if !reapplied {
                        let _ = (&mut reapply).await;
                    }
                    if let Err(e) = registry.registered(0).await {
                        tracing::error!(error = %e, "giving up leaderships after the drain failed");
                    }
                    continue 'register; // which waits for the stop
                }
                Ok(r) if r.get_ref().fenced => {
                    tracing::warn!(broker = %config.id, "fenced by the controller, registering again");
                    state.send_modify(|s| s.incarnation = None);
                    if !reapplied {
                        let _ = (&mut reapply).await; // never left half applied
                    }
                    if let Err(e) = registry.registered(0).await {
                        tracing::error!(error = %e, "applying metadata after fencing failed");
                    }
                    continue 'register;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
        }
    }
}

/// Follows `WatchMetadata` from any controller and applies every update, converted at the
/// edge into the domain view.
pub async fn run_watch(
    config: BrokerConfig,
    registry: Arc<Registry>,
    state: watch::Sender<SessionState>,
    mut stop: watch::Receiver<bool>,
) {
    let mut next = 0usize;
    loop {
        let addr = config.controllers[next % config.controllers.len()].clone();
        next += 1;
        let session = async {
            let channel = call::connect(&addr).await?;
            let mut stream = AdminClient::new(channel)
                .watch_metadata(pb::WatchMetadataRequest {
                    from_version: registry.version(),
                })
                .await
                .map_err(CallError::Status)?
                .into_inner();
            while let Some(update) = stream.message().await.map_err(CallError::Status)? {
                let version = update.version;
                let update = match weir_types::metadata::MetadataUpdate::try_from(update) {
                    Ok(u) => u,
                    Err(e) => {
                        // a controller sent what this broker cannot read: try another
                        tracing::error!(controller = %addr, error = %e, "bad metadata update");
                        return Ok(());
                    }
                };
                if let Err(e) = registry.apply(update).await {
                    tracing::error!(error = %e, "applying metadata failed");
                }
                state.send_modify(|s| s.metadata_version = version);
            }
            Ok::<(), CallError>(())
        };
        tokio::select! {
            r = session => if let Err(e) = r {
                tracing::debug!(controller = %addr, error = %e, "metadata watch ended");
            },
            _ = stop.wait_for(|s| *s) => return,
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}
