//! Finding the node that can answer: try each bootstrap address, and follow a
//! NOT_CONTROLLER redirect to the active controller.

use std::future::Future;
use std::time::Duration;

use tonic::transport::Endpoint;

/// A connection to a Weir node, carrying this process's credentials on every request.
pub type Channel = tonic::service::interceptor::InterceptedService<
    tonic::transport::Channel,
    crate::auth::Credentials,
>;
use weir_types::ErrorCode;

use crate::status::{error_code, internal_leader_hint, leader_hint};

/// Why no controller answered.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{0}")]
    Bootstrap(String),
    /// The last failure seen before giving up (unreachable nodes, no active controller).
    #[error("{0}")]
    Unavailable(String),
    /// A definite answer from the server, e.g. INVALID_ARGUMENT.
    #[error("{}", .0.message())]
    Status(tonic::Status),
}

macro_rules! anyhow {
    ($($t:tt)*) => { CallError::Unavailable(format!($($t)*)) };
}

/// Whether `addr` is `host:port`: a host name or IP address (IPv6 in brackets) and a port.
pub fn is_host_port(addr: &str) -> bool {
    addr.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && port.parse::<u16>().is_ok()
            && (host.parse::<std::net::Ipv4Addr>().is_ok()
                || (host.starts_with('[') && host.ends_with(']'))
                || host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
    })
}

/// Addresses from `--bootstrap` / `WEIR_BOOTSTRAP`, comma separated.
pub fn parse_bootstrap(raw: &str) -> Result<Vec<String>, CallError> {
    let addrs: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    if addrs.is_empty() {
        return Err(CallError::Bootstrap("--bootstrap: no address given".into()));
    }
    Ok(addrs)
}

static SOURCE_ADDRESS: std::sync::OnceLock<std::net::IpAddr> = std::sync::OnceLock::new();

/// Makes this process's outgoing connections start from `ip` (set once, by a node that
/// listens on its own loopback address, so that firewall rules on addresses can cut it off
/// from its peers — the fault-injection suite's network partitions).
pub fn set_source_address(ip: std::net::IpAddr) {
    let _ = SOURCE_ADDRESS.set(ip);
}

/// The address outgoing connections start from, when one was set.
pub fn source_address() -> Option<std::net::IpAddr> {
    SOURCE_ADDRESS.get().copied()
}

/// How this process reaches the cluster: TLS (CA, and a client certificate for mutual TLS)
/// and a bearer token. Set once at start (`--tls-ca`, `--tls-cert`, `--tls-key`, `--token`);
/// every connection made through this module uses it.
#[derive(Debug, Clone, Default)]
pub struct ClientSecurity {
    pub tls: Option<crate::tls::ClientTlsFiles>,
    pub token: Option<String>,
}

static CLIENT_SECURITY: std::sync::OnceLock<(
    Option<tonic::transport::ClientTlsConfig>,
    crate::auth::Credentials,
)> = std::sync::OnceLock::new();

/// Sets this process's client security; checks the files now (an error names them).
pub fn set_client_security(security: &ClientSecurity) -> Result<(), String> {
    let tls = security.tls.as_ref().map(|t| t.config(None)).transpose()?;
    let credentials = match &security.token {
        Some(token) => crate::auth::Credentials::bearer(token)?,
        None => crate::auth::Credentials::default(),
    };
    let _ = CLIENT_SECURITY.set((tls, credentials));
    Ok(())
}

fn client_security() -> (
    Option<tonic::transport::ClientTlsConfig>,
    crate::auth::Credentials,
) {
    CLIENT_SECURITY.get().cloned().unwrap_or_default()
}

/// The largest HTTP/2 frame each side accepts (the protocol's default is 16 KiB). A 64 KiB
/// batch then goes out as one DATA frame, in one `writev`, instead of five, and is read in
/// fewer `recvfrom`s: on a 3-node RF 3 cluster at 25 MB/s, 44 % fewer `writev`s and 59 % fewer
/// `recvfrom`s per node, 22 % less CPU per node and 33 % less in the client
/// (benches/README.md). A frame this size holds up other streams on its connection for
/// well under a millisecond on any LAN.
pub const MAX_FRAME_BYTES: u32 = 1 << 20;

/// A gRPC server builder with the transport settings every Weir listener shares.
pub fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder().max_frame_size(MAX_FRAME_BYTES)
}

/// An endpoint for `addr` (`host:port`) with this process's TLS, when it has any.
pub fn endpoint(addr: &str) -> Result<(Endpoint, crate::auth::Credentials), CallError> {
    let (tls, credentials) = client_security();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| CallError::Bootstrap(format!("{addr:?} is not host:port ({e})")))?;
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| CallError::Bootstrap(format!("{addr}: TLS: {e}")))?;
    }
    Ok((
        endpoint
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(40))
            .max_frame_size(MAX_FRAME_BYTES)
            .local_address(source_address()),
        credentials,
    ))
}

/// A connected channel to `addr` (`host:port`).
pub async fn connect(addr: &str) -> Result<Channel, CallError> {
    let (endpoint, credentials) = endpoint(addr)?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| anyhow!("{addr}: {e}"))?;
    Ok(Channel::new(channel, credentials))
}

/// A channel to `addr` that connects on first use.
pub fn connect_lazy(addr: &str) -> Result<Channel, CallError> {
    let (endpoint, credentials) = endpoint(addr)?;
    Ok(Channel::new(endpoint.connect_lazy(), credentials))
}

/// A connected channel to `addr` over TLS with its own configuration (the internal
/// listener's, which checks the peer's identity).
pub async fn connect_tls(
    addr: &str,
    tls: tonic::transport::ClientTlsConfig,
) -> Result<Channel, CallError> {
    let (_, credentials) = client_security();
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| CallError::Bootstrap(format!("{addr:?} is not host:port ({e})")))?
        .tls_config(tls)
        .map_err(|e| CallError::Bootstrap(format!("{addr}: TLS: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(40))
        .max_frame_size(MAX_FRAME_BYTES)
        .local_address(source_address());
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| anyhow!("{addr}: {e}"))?;
    Ok(Channel::new(channel, credentials))
}

/// Runs `call` against the bootstrap controllers until one answers, following leader
/// redirects, and retrying for up to `patience` while no controller is active (an election
/// takes a moment).
pub async fn with_controller<T, F, Fut>(
    bootstrap: &[String],
    patience: Duration,
    call: F,
) -> Result<T, CallError>
where
    F: FnMut(Channel) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    follow_controller(bootstrap, patience, leader_hint, call).await
}

/// [`with_controller`] for the controllers' internal API (broker registry, cursors):
/// `bootstrap` names internal addresses, and redirects lead to the active controller's
/// internal listener when it has one.
pub async fn with_internal_controller<T, F, Fut>(
    bootstrap: &[String],
    patience: Duration,
    call: F,
) -> Result<T, CallError>
where
    F: FnMut(Channel) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    follow_controller(bootstrap, patience, internal_leader_hint, call).await
}

async fn follow_controller<T, F, Fut>(
    bootstrap: &[String],
    patience: Duration,
    hint: fn(&tonic::Status) -> Option<String>,
    mut call: F,
) -> Result<T, CallError>
where
    F: FnMut(Channel) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    let mut queue: Vec<String> = bootstrap.to_vec();
    let mut last_error = anyhow!("no controller reachable at {}", bootstrap.join(","));
    loop {
        let Some(addr) = queue.pop() else {
            if tokio::time::Instant::now() >= deadline {
                return Err(last_error);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            queue = bootstrap.to_vec();
            continue;
        };
        let channel = match connect(&addr).await {
            Ok(c) => c,
            Err(e) => {
                last_error = e;
                continue;
            }
        };
        match call(channel).await {
            Ok(v) => return Ok(v),
            Err(status) => match error_code(&status) {
                Some(ErrorCode::NotController) => {
                    if let Some(leader) = hint(&status)
                        && leader != addr
                    {
                        queue.push(leader);
                    }
                    last_error = anyhow!("{}", status.message());
                }
                _ if status.code() == tonic::Code::Unavailable && error_code(&status).is_none() => {
                    last_error = anyhow!("{addr}: {}", status.message());
                }
                _ => return Err(CallError::Status(status)),
            },
        }
    }
}

/// Serves `router` on `listener` until `shutdown`, over TLS when `tls` is given.
pub async fn serve(
    router: tonic::transport::server::Router,
    listener: tokio::net::TcpListener,
    tls: Option<std::sync::Arc<crate::tls::ServerTls>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    match tls {
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(crate::tls::incoming(listener, tls), shutdown)
                .await
        }
        None => {
            router
                .serve_with_incoming_shutdown(incoming(listener), shutdown)
                .await
        }
    }
}

/// Accepted connections with `TCP_NODELAY` set: small RPC responses must not wait for
/// Nagle's algorithm (a 40 ms stall against delayed ACKs).
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(conn)
    })
}

/// Binds a listener and returns it with the address actually bound (port 0 picks one).
pub async fn bind(
    addr: std::net::SocketAddr,
) -> std::io::Result<(tokio::net::TcpListener, std::net::SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
