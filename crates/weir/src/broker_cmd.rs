//! `weir broker` (one broker) and `weir dev` (a controller and a broker in one process).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use weir_broker::{Broker, BrokerConfig};
use weir_controller::{Controller, ControllerConfig};
use weir_types::BrokerId;

use crate::controller_cmd::wait_for_signal;
use crate::logging::{self, LogFormat};

#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// A TOML file with a [broker] section (see deploy/weir.example.toml); flags override it.
    #[arg(long, env = "WEIR_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// This broker's id (positive, unique among brokers).
    #[arg(long)]
    pub(crate) id: Option<u32>,
    /// Address for producers and consumers; also advertised to the controller
    /// [default: 127.0.0.1:9092].
    #[arg(long)]
    pub(crate) listen: Option<SocketAddr>,
    /// Address for replication between brokers (the internal API: firewall it); advertised
    /// to the controller [default: none, `--listen` serves it too].
    #[arg(long)]
    pub(crate) internal_listen: Option<SocketAddr>,
    /// The `host:port` clients reach this broker at, when not `--listen` (e.g. a bind on
    /// 0.0.0.0 behind a DNS name).
    #[arg(long, env = "WEIR_ADVERTISE")]
    pub(crate) advertise: Option<String>,
    /// The same for `--internal-listen`.
    #[arg(long, env = "WEIR_INTERNAL_ADVERTISE")]
    pub(crate) internal_advertise: Option<String>,
    /// Mutual TLS on `--internal-listen` and for fetching from other brokers: this broker's
    /// certificate (PEM), valid for `broker-<id>.weir`; with `--internal-tls-key` and
    /// `--internal-tls-ca`.
    #[arg(long, requires_all = ["internal_tls_key", "internal_tls_ca"])]
    pub(crate) internal_tls_cert: Option<std::path::PathBuf>,
    /// The key of `--internal-tls-cert` (PEM).
    #[arg(long, requires = "internal_tls_cert")]
    pub(crate) internal_tls_key: Option<std::path::PathBuf>,
    /// The CA that signs every broker's certificate (PEM).
    #[arg(long, requires = "internal_tls_cert")]
    pub(crate) internal_tls_ca: Option<std::path::PathBuf>,
    /// Controller addresses (`host:port` or `id=host:port`), comma separated: their
    /// internal listeners where they have them (`id=public/internal` takes the internal
    /// one) [default: 127.0.0.1:9093].
    #[arg(long, env = "WEIR_CONTROLLERS")]
    pub(crate) controllers: Option<String>,
    /// Rack (or zone) name; replicas of a partition are spread across racks.
    #[arg(long)]
    pub(crate) rack: Option<String>,
    /// Where partitions are stored [default: ./weir-data/broker].
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long)]
    pub(crate) http: Option<SocketAddr>,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    #[command(flatten)]
    pub(crate) security: crate::security_cmd::ServerSecurityArgs,
}

/// The broker's settings: flags over the `--config` file over defaults.
pub(crate) fn resolve(args: &BrokerArgs) -> anyhow::Result<(BrokerConfig, Option<SocketAddr>)> {
    let file = crate::file_config::load(args.config.as_deref())?.broker;
    let id = args
        .id
        .or(file.id)
        .context("--id (or broker.id in --config) is required")?;
    anyhow::ensure!(id > 0, "--id must be positive");
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9092)));
    let data_dir = args
        .data_dir
        .clone()
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("./weir-data/broker"));
    let controllers = args
        .controllers
        .clone()
        .or(file.controllers)
        .unwrap_or_else(|| "127.0.0.1:9093".to_string());
    let mut config = BrokerConfig::new(
        BrokerId(id),
        listen,
        data_dir,
        controller_addresses(&controllers)?,
    );
    config.rack = args.rack.clone().or(file.rack);
    config.internal_listen = args.internal_listen.or(file.internal_listen);
    config.advertise = args.advertise.clone().or(file.advertise);
    config.internal_advertise = args.internal_advertise.clone().or(file.internal_advertise);
    if let (Some(cert), Some(key), Some(ca)) = (
        &args.internal_tls_cert,
        &args.internal_tls_key,
        &args.internal_tls_ca,
    ) {
        anyhow::ensure!(
            config.internal_listen.is_some(),
            "--internal-tls-cert needs --internal-listen (replication apart from clients)"
        );
        let files = weir_broker::config::InternalTlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: ca.clone(),
        };
        files
            .load()
            .map_err(|e| anyhow::anyhow!("--internal-tls-cert: {e}"))?;
        config.internal_tls = Some(files);
    }
    anyhow::ensure!(
        config.internal_listen != Some(config.listen),
        "--internal-listen must differ from --listen ({})",
        config.listen
    );
    if let Some(v) = file.replica_lag_ms_max {
        config.replica_lag_ms_max = v;
    }
    if let Some(v) = file.produce_timeout_ms {
        config.produce_timeout_ms = v;
    }
    if let Some(v) = file.fetch_wait_ms_max {
        config.fetch_wait_ms_max = v;
    }
    if let Some(v) = file.fetch_bytes_max {
        config.fetch_bytes_max = v;
    }
    if let Some(v) = file.batch_bytes_max {
        config.batch_bytes_max = v;
    }
    if let Some(v) = file.page_cache_tail_bytes {
        config.page_cache_tail_bytes = v;
    }
    if let Some(v) = file.retention_check_ms {
        config.retention_check_ms = v;
    }
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("broker settings: {e}"))?;
    Ok((config, args.http.or(file.http)))
}

/// Accepts `a:1,b:2` and `1=a:1,2=b:2`.
pub fn controller_addresses(raw: &str) -> anyhow::Result<Vec<String>> {
    let addrs: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.split_once('=').map_or(s, |(_, a)| a))
        // `public/internal`: a broker talks to the internal listener
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .collect();
    for a in &addrs {
        anyhow::ensure!(
            weir_proto::call::is_host_port(a),
            "--controllers: {a:?} is not host:port"
        );
    }
    anyhow::ensure!(!addrs.is_empty(), "--controllers: no address given");
    Ok(addrs)
}

pub async fn run_broker(args: BrokerArgs) -> anyhow::Result<i32> {
    logging::init(args.log_format);
    let (mut config, http) = resolve(&args)?;
    config.security = crate::security_cmd::listener_security(&args.security)?;
    config.rack = crate::k8s::rack(config.rack.take()).await?;
    let id = config.id;
    bind_outgoing_to(config.listen);
    crate::faults::init()?;
    crate::http::metrics_handle()?;
    let broker = Broker::start(config).await?;
    println!("broker {id} listening on {}", broker.local_addr);
    if let Some(addr) = broker.internal_addr {
        println!("broker {id} internal (replication) on {addr}");
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    if let Some(addr) = http {
        let bound =
            crate::http::serve(addr, std::sync::Arc::new(broker.readiness()), stopped).await?;
        println!("broker {id} http endpoints on {bound}");
    }
    wait_for_signal().await?;
    tracing::info!("shutting down: draining first");
    if let Err(e) = broker.drain(crate::node_cmd::DRAIN_PATIENCE).await {
        tracing::warn!(error = %e, "controlled shutdown incomplete; stopping anyway");
    }
    let _ = stop.send(true);
    broker.shutdown().await;
    Ok(0)
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where the controller's and the broker's data live (kept across restarts).
    #[arg(long, default_value = "./weir-data")]
    data_dir: PathBuf,
    /// Controller (admin) address; the CLI's default `--bootstrap`.
    #[arg(long, default_value = "127.0.0.1:9093")]
    controller: SocketAddr,
    /// Broker (produce/fetch) address.
    #[arg(long, default_value = "127.0.0.1:9092")]
    broker: SocketAddr,
    /// /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:9080")]
    http: SocketAddr,
    /// Google Pub/Sub gRPC API (`PUBSUB_EMULATOR_HOST=127.0.0.1:8085`).
    #[arg(long, default_value = "127.0.0.1:8085")]
    gateway: SocketAddr,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// A node listening on a loopback address of its own (`127.x.y.z` other than 127.0.0.1, as
/// `weir-cluster` runs them) starts its outgoing connections from that address too, so rules
/// on addresses can partition it from its peers. Other nodes keep the kernel's choice.
pub(crate) fn bind_outgoing_to(listen: std::net::SocketAddr) {
    let ip = listen.ip();
    if ip.is_loopback() && ip != std::net::IpAddr::from([127, 0, 0, 1]) {
        weir_proto::call::set_source_address(ip);
    }
}

pub async fn run_dev(args: DevArgs) -> anyhow::Result<i32> {
    logging::init(args.log_format);
    crate::http::metrics_handle()?;
    let controller_dir = args.data_dir.join("controller");
    std::fs::create_dir_all(&controller_dir)
        .with_context(|| format!("--data-dir {}", args.data_dir.display()))?;
    let controller =
        Controller::start(ControllerConfig::new(1, args.controller, controller_dir)).await?;
    let controller_addr = controller.local_addr.to_string();
    let broker = Broker::start(BrokerConfig::new(
        BrokerId(1),
        args.broker,
        args.data_dir.join("broker"),
        vec![controller_addr.clone()],
    ))
    .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !broker.is_ready() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the broker did not register with the controller within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let ready = {
        let (c, b) = (controller.readiness(), broker.readiness());
        std::sync::Arc::new(move || c() && b())
    };
    let mut gateway_config =
        weir_gateway::GatewayConfig::new(args.gateway, vec![controller_addr.clone()]);
    std::fs::create_dir_all(args.data_dir.join("gateway"))?;
    gateway_config.push_signing_key = Some(args.data_dir.join("gateway").join("push-signing.key"));
    gateway_config.push_token_issuer = format!("http://{}", args.http);
    let gateway = weir_gateway::Gateway::start(gateway_config).await?;
    let http = crate::http::serve_with(args.http, ready, stopped, gateway.http_routes()).await?;
    println!("weir dev: single-node cluster ready (Ctrl-C to stop)");
    println!(
        "  controller 1  {controller_addr:<21}  admin and metadata   data {}",
        args.data_dir.join("controller").display()
    );
    println!(
        "  broker 1      {:<21}  produce and fetch    data {}",
        broker.local_addr.to_string(),
        args.data_dir.join("broker").display()
    );
    println!(
        "  http          {:<21}  /metrics /healthz /readyz, CloudEvents: POST /v1/topics/{{topic}}:cloudevents",
        http.to_string()
    );
    println!(
        "  gateway       {:<21}  google.pubsub.v1     PUBSUB_EMULATOR_HOST={}",
        gateway.local_addr.to_string(),
        gateway.local_addr
    );
    println!("try:");
    println!("  weir topic create demo --partitions 3");
    println!("  echo hello | weir produce demo");
    println!("  weir consume demo --from-beginning --max-messages 1");
    wait_for_signal().await?;
    println!("weir dev: shutting down");
    let _ = stop.send(true);
    gateway.shutdown().await;
    broker.shutdown().await;
    controller.shutdown().await;
    Ok(0)
}
