//! `weir node`: a controller and a broker in one process, sharing an id, an address (two
//! ports) and a data directory — the shape of a small cluster where every machine runs both
//! roles (the fault-injection suite's default).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use weir_broker::Broker;
use weir_controller::Controller;

use crate::broker_cmd::{self, BrokerArgs};
use crate::controller_cmd::{self, ControllerArgs, wait_for_signal};
use crate::logging::{self, LogFormat};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct NodeArgs {
    #[command(subcommand)]
    command: Option<NodeCommand>,
    /// A TOML file with [controller] and [broker] sections (see deploy/weir.example.toml);
    /// flags override it.
    #[arg(long, env = "WEIR_CONFIG")]
    config: Option<PathBuf>,
    /// This node's id: its controller id and its broker id.
    #[arg(long, required = true)]
    id: Option<u32>,
    /// The controller's address (admin, metadata, groups; and Raft and brokers without
    /// `--internal-listen`) [default: 127.0.0.1:9093].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The controller's internal address (Raft, the broker registry; firewall it)
    /// [default: none, `--listen` serves it too]. `--controllers` then names both
    /// addresses of every voter, `id=public/internal`.
    #[arg(long)]
    internal_listen: Option<SocketAddr>,
    /// The broker's address (produce, fetch) [default: 127.0.0.1:9092].
    #[arg(long)]
    broker_listen: Option<SocketAddr>,
    /// The broker's internal address (replication between brokers; firewall it)
    /// [default: none, `--broker-listen` serves it too].
    #[arg(long)]
    broker_internal_listen: Option<SocketAddr>,
    /// The `host:port` clients reach the broker at, when not `--broker-listen` (a bind on
    /// 0.0.0.0 behind a DNS name, as in a StatefulSet).
    #[arg(long, env = "WEIR_BROKER_ADVERTISE")]
    broker_advertise: Option<String>,
    /// The same for `--broker-internal-listen`.
    #[arg(long, env = "WEIR_BROKER_INTERNAL_ADVERTISE")]
    broker_internal_advertise: Option<String>,
    /// Mutual TLS between brokers (see `weir broker --internal-tls-cert`).
    #[arg(long, requires_all = ["broker_internal_tls_key", "broker_internal_tls_ca"])]
    broker_internal_tls_cert: Option<std::path::PathBuf>,
    #[arg(long, requires = "broker_internal_tls_cert")]
    broker_internal_tls_key: Option<std::path::PathBuf>,
    #[arg(long, requires = "broker_internal_tls_cert")]
    broker_internal_tls_ca: Option<std::path::PathBuf>,
    /// Every controller, `id=host:port,...` (`id=host:port/host:port` with internal
    /// listeners), including this node's. Bootstraps an empty quorum (unless `--join`); the
    /// broker finds the active controller among them.
    #[arg(long, env = "WEIR_CONTROLLERS", required = true)]
    controllers: Option<String>,
    /// Join an existing quorum: the controller starts empty and waits for
    /// `weir cluster add-controller`.
    #[arg(long)]
    join: bool,
    /// The controller's data goes to `<DIR>/controller`, the broker's to `<DIR>/broker`
    /// [default: ./weir-data].
    #[arg(long, default_value = "./weir-data")]
    data_dir: PathBuf,
    /// Rack (or zone) name of the broker.
    #[arg(long)]
    rack: Option<String>,
    /// Fence a broker after this many milliseconds without a heartbeat [default: 6000].
    #[arg(long)]
    broker_lease_ms: Option<u64>,
    /// How often leaderships move back to preferred replicas [default: 30000].
    #[arg(long)]
    preferred_leader_check_ms: Option<u64>,
    /// Serve /metrics, /healthz and /readyz (ready when both roles are).
    #[arg(long)]
    http: Option<SocketAddr>,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(flatten)]
    security: crate::security_cmd::ServerSecurityArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// A controlled shutdown of node ID's broker: its leaderships move to in-sync replicas
    /// now and it stops serving until its process restarts (run before stopping a node,
    /// e.g. as a Kubernetes preStop hook; SIGTERM does the same).
    Drain {
        /// The node (broker) id.
        #[arg(long)]
        id: u32,
        #[command(flatten)]
        target: crate::admin_cmd::Bootstrap,
    },
}

async fn drain(id: u32, target: &crate::admin_cmd::Bootstrap) -> anyhow::Result<i32> {
    anyhow::ensure!(id > 0, "--id must be positive");
    let bootstrap = weir_proto::call::parse_bootstrap(&target.bootstrap)?;
    let request = weir_proto::v1::DrainBrokerRequest { broker_id: id };
    let answer = crate::admin_cmd::with_controller(&bootstrap, |ch| async move {
        weir_proto::v1::admin_client::AdminClient::new(ch)
            .drain_broker(request)
            .await
    })
    .await?
    .into_inner();
    println!(
        "broker {id} drained: {} leaderships moved, {} partitions without another in-sync replica",
        answer.leaders_moved, answer.offline
    );
    Ok(0)
}

/// How long a stopping node waits for its leaderships to move.
pub const DRAIN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn run(args: NodeArgs) -> anyhow::Result<i32> {
    if let Some(NodeCommand::Drain { id, target }) = &args.command {
        return drain(*id, target).await;
    }
    logging::init(args.log_format);
    let (Some(id), Some(controllers)) = (args.id, args.controllers.clone()) else {
        anyhow::bail!("--id and --controllers are required");
    };
    anyhow::ensure!(id > 0, "--id must be positive");
    let controller_args = ControllerArgs {
        config: args.config.clone(),
        id: Some(u64::from(id)),
        listen: args.listen,
        internal_listen: args.internal_listen,
        controllers: (!args.join).then(|| controllers.clone()),
        join: args.join,
        data_dir: Some(args.data_dir.join("controller")),
        broker_lease_ms: args.broker_lease_ms,
        preferred_leader_check_ms: args.preferred_leader_check_ms,
        group_heartbeat_interval_ms: None,
        group_session_timeout_ms: None,
        heartbeat_ms: None,
        http: None,
        log_format: args.log_format,
        security: args.security.clone(),
    };
    let broker_args = BrokerArgs {
        config: args.config.clone(),
        id: Some(id),
        listen: args.broker_listen,
        internal_listen: args.broker_internal_listen,
        advertise: args.broker_advertise.clone(),
        internal_advertise: args.broker_internal_advertise.clone(),
        internal_tls_cert: args.broker_internal_tls_cert.clone(),
        internal_tls_key: args.broker_internal_tls_key.clone(),
        internal_tls_ca: args.broker_internal_tls_ca.clone(),
        controllers: Some(controllers.clone()),
        rack: args.rack.clone(),
        data_dir: Some(args.data_dir.join("broker")),
        http: None,
        log_format: args.log_format,
        security: args.security.clone(),
    };
    let (mut controller_config, _) = controller_cmd::resolve(&controller_args)?;
    let (mut broker_config, _) = broker_cmd::resolve(&broker_args)?;
    broker_config.rack = crate::k8s::rack(broker_config.rack.take()).await?;
    // one security for both roles: the same certificates, tokens and ACL checks
    let security = crate::security_cmd::listener_security(&args.security)?;
    controller_config.security = security.clone();
    broker_config.security = security;
    std::fs::create_dir_all(&controller_config.data_dir)
        .map_err(|e| anyhow::anyhow!("--data-dir {}: {e}", controller_config.data_dir.display()))?;
    broker_cmd::bind_outgoing_to(controller_config.listen);
    crate::faults::init()?;
    crate::http::metrics_handle()?;

    let controller = Controller::start(controller_config).await?;
    println!(
        "node {id}: controller listening on {}",
        controller.local_addr
    );
    if let Some(addr) = controller.internal_addr {
        println!("node {id}: controller internal (Raft, brokers) on {addr}");
    }
    let broker = Broker::start(broker_config).await?;
    println!("node {id}: broker listening on {}", broker.local_addr);
    if let Some(addr) = broker.internal_addr {
        println!("node {id}: broker internal (replication) on {addr}");
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    if let Some(addr) = args.http {
        let ready = {
            let (c, b) = (controller.readiness(), broker.readiness());
            std::sync::Arc::new(move || c() && b())
        };
        let bound = crate::http::serve(addr, ready, stopped).await?;
        println!("node {id}: http endpoints on {bound}");
    }
    wait_for_signal().await?;
    tracing::info!("shutting down: draining the broker first");
    match broker.drain(DRAIN_PATIENCE).await {
        Ok(d) => tracing::info!(
            leaders_moved = d.leaders_moved,
            offline = d.offline,
            "drained"
        ),
        Err(e) => tracing::warn!(error = %e, "controlled shutdown incomplete; stopping anyway"),
    }
    let _ = stop.send(true);
    broker.shutdown().await;
    controller.shutdown().await;
    Ok(0)
}
