//! The optional TOML file behind `--config` (`deploy/weir.example.toml` documents every
//! key). Precedence: a command-line flag (or the WEIR_* variable behind it) over the file,
//! the file over the built-in default. Environment variables are read only here, in the
//! binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub controller: ControllerFile,
    #[serde(default)]
    pub broker: BrokerFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerFile {
    pub id: Option<u64>,
    pub listen: Option<SocketAddr>,
    pub internal_listen: Option<SocketAddr>,
    pub controllers: Option<String>,
    pub join: Option<bool>,
    pub data_dir: Option<PathBuf>,
    pub http: Option<SocketAddr>,
    pub broker_lease_ms: Option<u64>,
    pub heartbeat_ms: Option<u64>,
    pub preferred_leader_check_ms: Option<u64>,
    pub snapshot_logs_max: Option<u64>,
    pub group_heartbeat_interval_ms: Option<u32>,
    pub group_session_timeout_ms: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerFile {
    pub id: Option<u32>,
    pub listen: Option<SocketAddr>,
    pub internal_listen: Option<SocketAddr>,
    pub advertise: Option<String>,
    pub internal_advertise: Option<String>,
    pub controllers: Option<String>,
    pub rack: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub http: Option<SocketAddr>,
    pub replica_lag_ms_max: Option<u64>,
    pub produce_timeout_ms: Option<u64>,
    pub fetch_wait_ms_max: Option<u32>,
    pub fetch_bytes_max: Option<u32>,
    pub batch_bytes_max: Option<u32>,
    pub page_cache_tail_bytes: Option<u64>,
    pub retention_check_ms: Option<u64>,
}

pub fn parse(text: &str, origin: &str) -> anyhow::Result<FileConfig> {
    toml::from_str(text).with_context(|| format!("--config {origin}"))
}

/// The file at `path`, or an empty configuration when none is given.
pub fn load(path: Option<&Path>) -> anyhow::Result<FileConfig> {
    match path {
        None => Ok(FileConfig::default()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--config {}", path.display()))?;
            parse(&text, &path.display().to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_loads_and_every_setting_validates() {
        let example = include_str!("../../../deploy/weir.example.toml");
        let file = parse(example, "deploy/weir.example.toml").expect("example parses");
        let c = &file.controller;
        assert_eq!(c.id, Some(1));
        let mut controller = weir_controller::ControllerConfig::new(
            c.id.expect("id"),
            c.listen.expect("listen"),
            c.data_dir.clone().expect("data_dir"),
        );
        controller.voters =
            crate::controller_cmd::parse_voters(c.controllers.as_deref().expect("controllers"))
                .expect("voters");
        controller.broker_lease_ms = c.broker_lease_ms.expect("lease");
        controller.snapshot_logs_max = c.snapshot_logs_max.expect("snapshots");
        controller
            .validate()
            .expect("controller settings are valid");
        let b = &file.broker;
        let mut broker = weir_broker::BrokerConfig::new(
            weir_types::BrokerId(b.id.expect("id")),
            b.listen.expect("listen"),
            b.data_dir.clone().expect("data_dir"),
            crate::broker_cmd::controller_addresses(b.controllers.as_deref().expect("controllers"))
                .expect("controllers"),
        );
        broker.replica_lag_ms_max = b.replica_lag_ms_max.expect("lag");
        broker.fetch_bytes_max = b.fetch_bytes_max.expect("fetch bytes");
        assert_eq!(
            b.page_cache_tail_bytes,
            Some(weir_log::LogConfig::PAGE_CACHE_TAIL_BYTES),
            "the example shows the default"
        );
        broker.validate().expect("broker settings are valid");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = parse("[broker]\nreplica_lag_ms = 5\n", "x.toml").expect_err("typo");
        assert!(format!("{err:#}").contains("replica_lag_ms"), "{err:#}");
        let err = parse("[controller]\nlisten = \"nowhere\"\n", "x.toml").expect_err("bad address");
        assert!(format!("{err:#}").contains("listen"), "{err:#}");
    }
}
