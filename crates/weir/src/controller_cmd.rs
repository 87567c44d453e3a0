//! `weir controller`: runs one controller until SIGINT or SIGTERM.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use weir_controller::{Controller, ControllerConfig};

use crate::logging::{self, LogFormat};

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// This controller's id (positive, unique).
    #[arg(long)]
    id: u64,
    /// Address to listen on for Raft, admin and broker traffic.
    #[arg(long, default_value = "127.0.0.1:9093")]
    listen: SocketAddr,
    /// The initial voters, `id=host:port,...`, including this controller. Used only to
    /// bootstrap an empty cluster; restarts keep the membership they have.
    #[arg(long, env = "WEIR_CONTROLLERS")]
    controllers: Option<String>,
    /// Join an existing quorum instead of bootstrapping: start empty and wait for
    /// `weir cluster add-controller` to add this node.
    #[arg(long, conflicts_with = "controllers")]
    join: bool,
    /// Where the Raft log and state live.
    #[arg(long, default_value = "./weir-data/controller")]
    data_dir: PathBuf,
    /// Fence a broker after this many milliseconds without a heartbeat.
    #[arg(long, default_value_t = 6000)]
    broker_lease_ms: u64,
    /// How often leaderships move back to preferred replicas that are in sync again.
    #[arg(long, default_value_t = 30_000)]
    preferred_leader_check_ms: u64,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long)]
    http: Option<SocketAddr>,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// Parses `1=127.0.0.1:9093,2=127.0.0.2:9093`.
pub fn parse_voters(raw: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut voters = BTreeMap::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((id, addr)) = part.split_once('=') else {
            bail!("--controllers: {part:?} is not id=host:port");
        };
        let id: u64 = id
            .parse()
            .with_context(|| format!("--controllers: {id:?} is not a controller id"))?;
        if addr.parse::<SocketAddr>().is_err() {
            bail!("--controllers: {addr:?} is not host:port with a numeric IP");
        }
        if voters.insert(id, addr.to_string()).is_some() {
            bail!("--controllers: id {id} appears twice");
        }
    }
    if voters.is_empty() {
        bail!("--controllers: no voters given");
    }
    Ok(voters)
}

pub async fn run(args: ControllerArgs) -> anyhow::Result<i32> {
    logging::init(args.log_format);
    let mut config = ControllerConfig::new(args.id, args.listen, args.data_dir.clone());
    if let Some(raw) = &args.controllers {
        config.voters = parse_voters(raw)?;
    }
    config.join = args.join;
    config.preferred_leader_check_ms = args.preferred_leader_check_ms;
    config.broker_lease_ms = args.broker_lease_ms;
    config.heartbeat_ms = args.heartbeat_ms;
    config.election_timeout_min_ms = args.heartbeat_ms * 6;
    config.election_timeout_max_ms = args.heartbeat_ms * 12;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("--data-dir {}", args.data_dir.display()))?;
    crate::http::metrics_handle()?;
    let controller = Controller::start(config).await?;
    println!(
        "controller {} listening on {}",
        args.id, controller.local_addr
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    if let Some(addr) = args.http {
        let ready = std::sync::Arc::new(controller.readiness());
        let bound = crate::http::serve(addr, ready, stopped).await?;
        println!("controller {} http endpoints on {bound}", args.id);
    }
    wait_for_signal().await?;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    controller.shutdown().await;
    Ok(0)
}

pub async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
