//! `weir controller`: runs one controller until SIGINT or SIGTERM.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use weir_controller::{Controller, ControllerConfig, ControllerNode};

use crate::logging::{self, LogFormat};

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// A TOML file with a [controller] section (see deploy/weir.example.toml); flags
    /// override it.
    #[arg(long, env = "WEIR_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// This controller's id (positive, unique).
    #[arg(long)]
    pub(crate) id: Option<u64>,
    /// Address to listen on for clients (admin, metadata, groups) and, without
    /// `--internal-listen`, for Raft and brokers [default: 127.0.0.1:9093].
    #[arg(long)]
    pub(crate) listen: Option<SocketAddr>,
    /// Serve the internal API here instead (Raft between controllers, the broker registry,
    /// subscription cursors, the metadata stream for brokers), so it can be firewalled;
    /// the voters in `--controllers` then name both addresses, `id=public/internal`.
    #[arg(long)]
    pub(crate) internal_listen: Option<SocketAddr>,
    /// The initial voters, `id=host:port,...` (`id=host:port/host:port` for a controller
    /// with `--internal-listen`: public, then internal), including this controller. Used
    /// only to bootstrap an empty cluster; restarts keep the membership they have.
    #[arg(long, env = "WEIR_CONTROLLERS")]
    pub(crate) controllers: Option<String>,
    /// Join an existing quorum instead of bootstrapping: start empty and wait for
    /// `weir cluster add-controller` to add this node.
    #[arg(long, conflicts_with = "controllers")]
    pub(crate) join: bool,
    /// Where the Raft log and state live [default: ./weir-data/controller].
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Fence a broker after this many milliseconds without a heartbeat [default: 6000].
    #[arg(long)]
    pub(crate) broker_lease_ms: Option<u64>,
    /// How often leaderships move back to preferred replicas that are in sync again
    /// [default: 30000].
    #[arg(long)]
    pub(crate) preferred_leader_check_ms: Option<u64>,
    /// How often consumer-group members heartbeat, in milliseconds [default: 1000].
    #[arg(long)]
    pub(crate) group_heartbeat_interval_ms: Option<u32>,
    /// Session timeout of group members that do not ask for their own [default: 10000].
    #[arg(long)]
    pub(crate) group_session_timeout_ms: Option<u32>,
    /// Raft heartbeat interval in milliseconds [default: 100].
    #[arg(long)]
    pub(crate) heartbeat_ms: Option<u64>,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long)]
    pub(crate) http: Option<SocketAddr>,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    #[command(flatten)]
    pub(crate) security: crate::security_cmd::ServerSecurityArgs,
}

/// The controller's settings: flags over the `--config` file over defaults.
pub(crate) fn resolve(
    args: &ControllerArgs,
) -> anyhow::Result<(ControllerConfig, Option<SocketAddr>)> {
    let file = crate::file_config::load(args.config.as_deref())?.controller;
    let id = args
        .id
        .or(file.id)
        .context("--id (or controller.id in --config) is required")?;
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9093)));
    let data_dir = args
        .data_dir
        .clone()
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("./weir-data/controller"));
    let mut config = ControllerConfig::new(id, listen, data_dir);
    config.internal_listen = args.internal_listen.or(file.internal_listen);
    match args.controllers.as_ref().or(file.controllers.as_ref()) {
        Some(raw) => config.voters = parse_voters(raw)?,
        None => {
            if let (Some(me), Some(internal)) = (config.voters.get_mut(&id), config.internal_listen)
            {
                me.internal = Some(internal.to_string());
            }
        }
    }
    config.join = args.join || file.join.unwrap_or(false);
    if let Some(v) = args.broker_lease_ms.or(file.broker_lease_ms) {
        config.broker_lease_ms = v;
    }
    if let Some(v) = args
        .preferred_leader_check_ms
        .or(file.preferred_leader_check_ms)
    {
        config.preferred_leader_check_ms = v;
    }
    if let Some(v) = args
        .group_heartbeat_interval_ms
        .or(file.group_heartbeat_interval_ms)
    {
        config.group_heartbeat_interval_ms = v;
    }
    if let Some(v) = args
        .group_session_timeout_ms
        .or(file.group_session_timeout_ms)
    {
        config.group_session_timeout_ms = v;
    }
    if let Some(v) = file.snapshot_logs_max {
        config.snapshot_logs_max = v;
    }
    if let Some(v) = args.heartbeat_ms.or(file.heartbeat_ms) {
        config.heartbeat_ms = v;
        config.election_timeout_min_ms = v * 6;
        config.election_timeout_max_ms = v * 12;
    }
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("controller settings: {e}"))?;
    Ok((config, args.http.or(file.http)))
}

/// Parses `1=127.0.0.1:9093,2=127.0.0.2:9093`; a voter with an internal listener is
/// `1=127.0.0.1:9093/127.0.0.1:9095`.
pub fn parse_voters(raw: &str) -> anyhow::Result<BTreeMap<u64, ControllerNode>> {
    let mut voters = BTreeMap::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((id, addrs)) = part.split_once('=') else {
            bail!("--controllers: {part:?} is not id=host:port");
        };
        let id: u64 = id
            .parse()
            .with_context(|| format!("--controllers: {id:?} is not a controller id"))?;
        let (addr, internal) = match addrs.split_once('/') {
            Some((public, internal)) => (public, Some(internal)),
            None => (addrs, None),
        };
        for a in std::iter::once(addr).chain(internal) {
            if !weir_proto::call::is_host_port(a) {
                bail!("--controllers: {a:?} is not host:port");
            }
        }
        let node = ControllerNode {
            addr: addr.to_string(),
            internal: internal.map(str::to_string),
        };
        if voters.insert(id, node).is_some() {
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
    let (mut config, http) = resolve(&args)?;
    config.security = crate::security_cmd::listener_security(&args.security)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("--data-dir {}", config.data_dir.display()))?;
    let id = config.id;
    crate::broker_cmd::bind_outgoing_to(config.listen);
    crate::faults::init()?;
    crate::http::metrics_handle()?;
    let controller = Controller::start(config).await?;
    println!("controller {id} listening on {}", controller.local_addr);
    if let Some(addr) = controller.internal_addr {
        println!("controller {id} internal (Raft, brokers) on {addr}");
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    if let Some(addr) = http {
        let ready = std::sync::Arc::new(controller.readiness());
        let bound = crate::http::serve(addr, ready, stopped).await?;
        println!("controller {id} http endpoints on {bound}");
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
