//! Broker settings.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use weir_types::BrokerId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InternalTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl InternalTlsFiles {
    pub fn load(&self) -> Result<weir_proto::tls::InternalTls, String> {
        weir_proto::tls::InternalTls::load(&weir_proto::tls::TlsFiles {
            cert: self.cert.clone(),
            key: self.key.clone(),
            ca: self.ca.clone(),
        })
    }
}

fn page_cache_tail_bytes() -> u64 {
    weir_log::LogConfig::PAGE_CACHE_TAIL_BYTES
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    pub id: BrokerId,
    /// Where clients reach this broker's data plane.
    pub listen: SocketAddr,
    /// Where other brokers replicate from this one (the internal API, to be firewalled);
    /// `None`: `listen` serves it too.
    #[serde(default)]
    pub internal_listen: Option<SocketAddr>,
    /// The `host:port` clients are told to reach this broker at, when it differs from
    /// `listen` (a bind on 0.0.0.0 behind a DNS name, as in a StatefulSet).
    #[serde(default)]
    pub advertise: Option<String>,
    /// The same for `internal_listen`.
    #[serde(default)]
    pub internal_advertise: Option<String>,
    /// Mutual TLS on the internal listener (and for fetching from other brokers): PEM files.
    /// A peer's broker id is the one its certificate names (`broker-<id>.weir`).
    #[serde(default)]
    pub internal_tls: Option<InternalTlsFiles>,
    pub rack: Option<String>,
    /// Partition directories live under `<data_dir>/partitions`.
    pub data_dir: PathBuf,
    /// Controller addresses to register with and watch metadata from: their internal
    /// listeners, where they have them.
    pub controllers: Vec<String>,
    /// Longest a fetch may wait for data.
    pub fetch_wait_ms_max: u32,
    /// Largest fetch response.
    pub fetch_bytes_max: u32,
    /// Largest batch a producer may send.
    pub batch_bytes_max: u32,
    /// Per hosted partition, how much of the log's end stays in the page cache for followers
    /// and tail readers; fsynced data further back is dropped from it, so the cache (which
    /// counts against a container's memory) does not grow with the log. 0: the kernel decides.
    #[serde(default = "page_cache_tail_bytes")]
    pub page_cache_tail_bytes: u64,
    /// How often retention runs.
    pub retention_check_ms: u64,
    /// A follower not caught up for this long leaves the ISR.
    pub replica_lag_ms_max: u64,
    /// How long an `acks=all` produce waits for the in-sync replicas.
    pub produce_timeout_ms: u64,
    /// How long a follower's fetch waits at the leader when there is nothing new.
    pub replica_fetch_wait_ms: u32,
    /// TLS on the public listener and who may call (built from the security settings at
    /// start, not part of a config file).
    #[serde(skip)]
    pub security: weir_proto::auth::ListenerSecurity,
}

impl BrokerConfig {
    pub fn new(
        id: BrokerId,
        listen: SocketAddr,
        data_dir: PathBuf,
        controllers: Vec<String>,
    ) -> Self {
        BrokerConfig {
            id,
            listen,
            internal_listen: None,
            advertise: None,
            internal_advertise: None,
            internal_tls: None,
            rack: None,
            data_dir,
            controllers,
            fetch_wait_ms_max: 30_000,
            fetch_bytes_max: 64 << 20,
            batch_bytes_max: 1 << 20,
            page_cache_tail_bytes: page_cache_tail_bytes(),
            retention_check_ms: 60_000,
            replica_lag_ms_max: 10_000,
            produce_timeout_ms: 30_000,
            replica_fetch_wait_ms: 500,
            security: Default::default(),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.id.0 == 0 {
            return Err("id must be positive".into());
        }
        if let Some(tls) = &self.internal_tls {
            if self.internal_listen.is_none() {
                return Err(
                    "internal_tls needs internal_listen (replication apart from clients)".into(),
                );
            }
            tls.load().map_err(|e| format!("internal_tls: {e}"))?;
        }
        for (field, value) in [
            ("advertise", &self.advertise),
            ("internal_advertise", &self.internal_advertise),
        ] {
            if let Some(v) = value
                && !weir_proto::call::is_host_port(v)
            {
                return Err(format!("{field}: {v:?} is not host:port"));
            }
        }
        if self.internal_advertise.is_some() && self.internal_listen.is_none() {
            return Err("internal_advertise needs internal_listen".into());
        }
        if self.controllers.is_empty() {
            return Err("controllers must name at least one controller address".into());
        }
        if self.fetch_bytes_max == 0 || self.batch_bytes_max < 128 {
            return Err("fetch_bytes_max must be positive and batch_bytes_max at least 128".into());
        }
        if self.retention_check_ms == 0 {
            return Err("retention_check_ms must be positive".into());
        }
        if self.replica_lag_ms_max < 100 || self.produce_timeout_ms == 0 {
            return Err(
                "replica_lag_ms_max must be at least 100 and produce_timeout_ms positive".into(),
            );
        }
        Ok(())
    }
}
