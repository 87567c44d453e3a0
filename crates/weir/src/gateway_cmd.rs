//! `weir gateway`: Google Pub/Sub's gRPC API in front of a cluster.

use std::net::SocketAddr;

use clap::Args;
use weir_gateway::{Gateway, GatewayConfig};

use crate::logging::{self, LogFormat};

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Where Pub/Sub clients connect (`PUBSUB_EMULATOR_HOST`).
    #[arg(long, default_value = "127.0.0.1:8085")]
    listen: SocketAddr,
    /// Controller addresses, comma separated.
    #[arg(long, env = "WEIR_BOOTSTRAP", default_value = "127.0.0.1:9093")]
    bootstrap: String,
    /// Partitions of a topic created through the gateway (a `weir-partitions` label on the
    /// topic overrides it).
    #[arg(long, default_value_t = 4)]
    topic_partitions: u32,
    /// Replicas of a topic created through the gateway; 0: the cluster default.
    #[arg(long, default_value_t = 0)]
    replication_factor: u32,
    /// /metrics, /healthz, /readyz and CloudEvents ingest
    /// (`POST /v1/projects/{p}/topics/{t}:cloudevents`); none when not given.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// The key push tokens (`oidc_token` push configs) are signed with: a PKCS#8 P-256 key,
    /// PEM or DER, made there if missing. Give every gateway the same file; without one, each
    /// signs with a key of its own.
    #[arg(long)]
    push_signing_key: Option<std::path::PathBuf>,
    /// `iss` of push tokens: the URL where this gateway's HTTP port is reached
    /// (`/.well-known/openid-configuration`); default `http://<--http>`.
    #[arg(long)]
    push_token_issuer: Option<String>,
    /// Certificates (PEM) to trust for https push endpoints, besides Mozilla's roots.
    #[arg(long)]
    push_ca_file: Option<std::path::PathBuf>,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(flatten)]
    security: crate::security_cmd::ServerSecurityArgs,
}

pub async fn run(args: GatewayArgs) -> anyhow::Result<i32> {
    logging::init(args.log_format);
    let controllers = weir_proto::call::parse_bootstrap(&args.bootstrap)
        .map_err(|e| anyhow::anyhow!("--bootstrap: {e}"))?;
    let mut config = GatewayConfig::new(args.listen, controllers);
    config.topic_partitions = args.topic_partitions;
    config.replication_factor = args.replication_factor;
    config.push_signing_key = args.push_signing_key.clone();
    config.push_ca_file = args.push_ca_file.clone();
    config.security = crate::security_cmd::listener_security(&args.security)?;
    config.push_token_issuer = match (&args.push_token_issuer, args.http) {
        (Some(i), _) => i.clone(),
        (None, Some(http)) => format!("http://{http}"),
        (None, None) => "weir-gateway".into(),
    };
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("--{}", e.replacen('_', "-", 1)))?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    if let Some(p) = &args.push_ca_file {
        weir_gateway::push::client(Some(p)).map_err(|e| anyhow::anyhow!("--push-ca-file: {e}"))?;
    }
    let gateway = Gateway::start(config).await.map_err(|e| match e {
        weir_gateway::StartError::Key(k) => anyhow::anyhow!("--push-signing-key: {k}"),
        other => other.into(),
    })?;
    let http = match args.http {
        Some(addr) => {
            crate::http::metrics_handle()?;
            let ready = std::sync::Arc::new(|| true);
            Some(crate::http::serve_with(addr, ready, stopped, gateway.http_routes()).await?)
        }
        None => None,
    };
    println!("weir gateway: google.pubsub.v1 on {}", gateway.local_addr);
    if let Some(http) = http {
        println!(
            "  http {http}  /metrics /healthz /readyz, CloudEvents ingest, /.well-known/jwks.json"
        );
    }
    crate::controller_cmd::wait_for_signal().await?;
    let _ = stop.send(true);
    gateway.shutdown().await;
    Ok(0)
}
