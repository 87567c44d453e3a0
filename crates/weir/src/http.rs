//! The HTTP side door every role serves: `/metrics` (Prometheus), `/healthz` (the process
//! is up) and `/readyz` (the role can do its job: see each role's readiness rule).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;

/// Buckets for every `*_seconds` histogram: 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide metrics recorder (once).
pub fn metrics_handle() -> anyhow::Result<PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("seconds".into()), LATENCY_BUCKETS)?
        .install_recorder()
        .context("install metrics recorder")?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// Serves the endpoints on `addr` until `stop` turns true. Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    ready: Readiness,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    serve_with(addr, ready, stop, Router::new()).await
}

/// As `serve`, with a role's own routes beside them (the gateway's CloudEvents ingest).
pub async fn serve_with(
    addr: SocketAddr,
    ready: Readiness,
    mut stop: watch::Receiver<bool>,
    extra: Router,
) -> anyhow::Result<SocketAddr> {
    let handle = metrics_handle()?;
    let app = extra
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .route("/healthz", get(|| std::future::ready("ok\n")))
        .route(
            "/readyz",
            get(move || {
                let answer = if ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                };
                std::future::ready(answer)
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--http {addr}"))?;
    let local = listener.local_addr()?;
    let tls = crate::security_cmd::http_tls()?;
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let served = match tls {
            Some(tls) => {
                let listener = TlsListener {
                    connections: Box::pin(weir_proto::tls::incoming(listener, tls)),
                    local,
                };
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "http endpoint failed");
        }
    });
    Ok(local)
}

type TlsConnections = std::pin::Pin<
    Box<
        dyn tokio_stream::Stream<
                Item = std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
            > + Send,
    >,
>;

/// Connections after their TLS handshake, for axum.
struct TlsListener {
    connections: TlsConnections,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use tokio_stream::StreamExt;
        loop {
            match self.connections.next().await {
                Some(Ok(stream)) => {
                    let peer = stream.get_ref().0.peer_addr().unwrap_or(self.local);
                    return (stream, peer);
                }
                Some(Err(e)) => tracing::debug!(error = %e, "http connection failed"),
                // the acceptor stopped: nothing more will come
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[derive(Debug, clap::Args)]
pub struct ReadyArgs {
    /// The HTTP endpoint's address (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:9080")]
    http: SocketAddr,
    /// The path to ask.
    #[arg(long, default_value = "/readyz")]
    path: String,
}

/// GET `path` on `http`: 0 when it answers 200, 1 otherwise (2 when it cannot be asked).
pub async fn probe(args: ReadyArgs) -> anyhow::Result<i32> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut conn = tokio::net::TcpStream::connect(args.http).await?;
        conn.write_all(
            format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                args.path, args.http
            )
            .as_bytes(),
        )
        .await?;
        let mut head = vec![0u8; 64];
        let n = conn.read(&mut head).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&head[..n]).into_owned())
    };
    let answer = tokio::time::timeout(std::time::Duration::from_secs(3), ask)
        .await
        .context("--http: no answer within 3 s")?
        .with_context(|| format!("--http {}", args.http))?;
    let status = answer.split_whitespace().nth(1).unwrap_or("");
    println!("{status}");
    Ok(if status == "200" { 0 } else { 1 })
}
