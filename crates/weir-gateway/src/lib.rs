//! Weir's gateway: a stateless front door that serves Google Pub/Sub's `google.pubsub.v1`
//! Publisher and Subscriber APIs over Weir, so Google's own client libraries work against a
//! durable, replicated cluster (`PUBSUB_EMULATOR_HOST=<gateway>`). Run any number of them.
//!
//! - [`names`]: Google resource names ↔ Weir names (`projects/p/topics/t` ↔ topic `p.t`).
//! - [`backend`]: calls to the controllers and the partition leaders, and Weir's errors as
//!   the status codes Google's clients expect.
//! - [`convert`]: Google's resources ↔ Weir's subscription specs and records.
//! - [`publisher`]: topics and Publish (ordering key → partition by hash).
//! - [`subscriber`]: subscriptions, Pull, StreamingPull (per-partition pull loops under the
//!   stream's flow control), acks and deadlines routed to partition leaders by ack id,
//!   snapshots and Seek.
//! - [`cloudevents`]: CloudEvents over HTTP — ingest (binary, structured, batch) into a topic
//!   and push delivery as CloudEvents (binary or structured).
//! - [`push`]: push subscriptions — a worker per partition POSTs each message (Google's JSON
//!   envelope or the bare data), 2xx-style codes ack, the rest nack; slow-start concurrency.
//! - [`token`]: push authentication — ES256-signed OIDC-style ID tokens on pushes, the keys
//!   as a JWKS on the HTTP port.
//! - [`deadletter`]: past `max_delivery_attempts`, a message goes to the dead-letter topic
//!   and is acknowledged on the source (pull, streaming pull and push).
//!
//! The gateway keeps no state that matters: delivery state lives with the partition leaders,
//! definitions with the controllers. A killed gateway loses only its streams; the client
//! reconnects (to it or another) and unacknowledged messages are redelivered when their
//! deadlines pass.

pub mod backend;
pub mod cloudevents;
pub mod convert;
pub mod deadletter;
pub mod names;
pub mod publisher;
pub mod push;
pub mod subscriber;
pub mod token;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;
use weir_proto::google::pubsub::v1::publisher_server::PublisherServer;
use weir_proto::google::pubsub::v1::subscriber_server::SubscriberServer;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// Controller addresses.
    pub controllers: Vec<String>,
    /// Partitions of a topic created through the gateway (unless its `weir-partitions`
    /// label says otherwise).
    pub topic_partitions: u32,
    /// Replicas of a topic created through the gateway; 0: the cluster default.
    pub replication_factor: u32,
    /// The key push tokens are signed with (made there if missing); none: a key of this
    /// gateway only.
    pub push_signing_key: Option<std::path::PathBuf>,
    /// `iss` of push tokens: where the gateway's `/.well-known/openid-configuration` is.
    pub push_token_issuer: String,
    /// Certificates (PEM) trusted for https push endpoints besides Mozilla's roots.
    pub push_ca_file: Option<std::path::PathBuf>,
    /// TLS on the gRPC listener, how Pub/Sub clients authenticate, and whether the
    /// cluster's ACLs apply to them.
    pub security: weir_proto::auth::ListenerSecurity,
}

impl GatewayConfig {
    pub fn new(listen: SocketAddr, controllers: Vec<String>) -> GatewayConfig {
        GatewayConfig {
            listen,
            controllers,
            topic_partitions: 4,
            replication_factor: 0,
            push_signing_key: None,
            push_token_issuer: "weir-gateway".into(),
            push_ca_file: None,
            security: Default::default(),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.controllers.is_empty() {
            return Err("controllers: at least one address is needed".into());
        }
        if self.topic_partitions == 0 || self.topic_partitions > 10_000 {
            return Err("topic_partitions: must be 1 to 10000".into());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid gateway config: {0}")]
    Config(String),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Client(#[from] weir_client::ClientError),
    #[error("push signing key: {0}")]
    Key(#[from] token::KeyError),
}

/// A running gateway.
pub struct Gateway {
    pub local_addr: SocketAddr,
    backend: Arc<backend::Backend>,
    signer: Arc<token::PushSigner>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Gateway {
    pub async fn start(config: GatewayConfig) -> Result<Gateway, StartError> {
        config.validate().map_err(StartError::Config)?;
        let (listener, local_addr) =
            weir_proto::call::bind(config.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let backend = Arc::new(backend::Backend::new(
            config.controllers.clone(),
            Arc::clone(&config.security.security),
        )?);
        let signer = Arc::new(token::PushSigner::new(
            config.push_signing_key.as_deref(),
            config.push_token_issuer.clone(),
        )?);
        let (stop, stopped) = watch::channel(false);
        let publisher = publisher::PublisherService {
            backend: Arc::clone(&backend),
            next_partition: Default::default(),
            topic_partitions: config.topic_partitions,
            replication_factor: config.replication_factor,
        };
        let subscriber = subscriber::SubscriberService::new(Arc::clone(&backend), stopped.clone());
        let mut tasks = JoinSet::new();
        let push_client = push::client(config.push_ca_file.as_deref())
            .map_err(|e| StartError::Config(format!("push_ca_file: {e}")))?;
        tasks.spawn(push::run(
            Arc::clone(&backend),
            push_client,
            Arc::clone(&signer),
            stopped.clone(),
        ));
        let mut server_stop = stopped;
        let auth = config.security.interceptor();
        let router = weir_proto::call::server()
            .add_service(PublisherServer::with_interceptor(publisher, auth.clone()))
            .add_service(SubscriberServer::with_interceptor(subscriber, auth));
        let server =
            weir_proto::call::serve(router, listener, config.security.tls.clone(), async move {
                let _ = server_stop.wait_for(|s| *s).await;
            });
        tasks.spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "gateway gRPC server failed");
            }
        });
        tracing::info!(addr = %local_addr, "gateway started");
        Ok(Gateway {
            local_addr,
            backend,
            signer,
            stop,
            tasks,
        })
    }

    /// The gateway's HTTP routes (CloudEvents ingest, the push token keys), to serve beside
    /// `/metrics`.
    pub fn http_routes(&self) -> axum::Router {
        cloudevents::router(Arc::clone(&self.backend))
            .merge(token::router(Arc::clone(&self.signer)))
    }

    /// Ends every stream and stops serving.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}
