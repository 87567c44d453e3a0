//! The ISR manager: on a timer, asks every owner whether its ISR should change (the rule is
//! in [`crate::state`]) and sends the change to the controller (`AlterPartition`, fenced by
//! this broker's incarnation, the leader epoch and the partition epoch); asks every owner to
//! checkpoint its high watermark every [`CHECKPOINT_INTERVAL`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use weir_proto::internal::v1 as ipb;
use weir_proto::internal::v1::broker_registry_client::BrokerRegistryClient;

use crate::config::BrokerConfig;
use crate::registry::Registry;
use crate::session::SessionState;

/// How often each replica's recovery point and high watermark are persisted.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);

pub async fn run_isr_manager(
    config: BrokerConfig,
    registry: Arc<Registry>,
    session: watch::Receiver<SessionState>,
    mut stop: watch::Receiver<bool>,
) {
    let lag = Duration::from_millis(config.replica_lag_ms_max);
    let tick = (lag / 8).clamp(Duration::from_millis(50), Duration::from_millis(500));
    let mut last_checkpoint = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let Some(incarnation) = session.borrow().incarnation else {
            continue;
        };
        for replica in registry.all() {
            let Ok(Some(wish)) = replica.tick(lag).await else {
                continue;
            };
            let request = ipb::AlterPartitionRequest {
                broker_id: registry.me().0,
                incarnation,
                topic: replica.topic.clone(),
                partition: replica.partition,
                leader_epoch: wish.leader_epoch.0,
                partition_epoch: wish.partition_epoch,
                isr: wish.isr.iter().map(|b| b.0).collect(),
            };
            tracing::info!(topic = %replica.topic, partition = replica.partition, from = ?wish.current, to = ?wish.isr, "asking to change the ISR");
            let result = weir_proto::call::with_internal_controller(
                &config.controllers,
                Duration::from_secs(2),
                |ch| {
                    let request = request.clone();
                    async move { BrokerRegistryClient::new(ch).alter_partition(request).await }
                },
            )
            .await;
            if let Err(e) = result {
                tracing::warn!(topic = %replica.topic, partition = replica.partition, error = %e, "ISR change refused");
            }
        }
        if last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL {
            last_checkpoint = Instant::now();
            for replica in registry.all() {
                if let Ok(Err(e)) = replica.checkpoint().await {
                    tracing::warn!(topic = %replica.topic, partition = replica.partition, error = %e, "high-watermark checkpoint failed");
                }
            }
        }
    }
}
