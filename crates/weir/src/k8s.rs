//! The one thing a node asks of the Kubernetes API: a label of the machine its pod runs on
//! (the rack), with the pod's service account (the chart grants `get` on nodes only).

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

const API: &str = "https://kubernetes.default.svc";
const ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The value of `label` on node `node` (`None` when the node has no such label).
pub async fn node_label(node: &str, label: &str) -> anyhow::Result<Option<String>> {
    let token = std::fs::read_to_string(format!("{ACCOUNT}/token"))
        .context("the pod's service account token")?;
    let ca = std::path::PathBuf::from(format!("{ACCOUNT}/ca.crt"));
    let client = weir_gateway::push::client(Some(&ca)).map_err(anyhow::Error::msg)?;
    let request = hyper::Request::get(format!("{API}/api/v1/nodes/{node}"))
        .header("authorization", format!("Bearer {}", token.trim()))
        .header("accept", "application/json")
        .body(Full::new(Bytes::new()))?;
    let response =
        tokio::time::timeout(std::time::Duration::from_secs(10), client.request(request))
            .await
            .context("the Kubernetes API did not answer within 10 s")??;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status.is_success(),
        "GET node {node}: {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let node: serde_json::Value = serde_json::from_slice(&body).context("the node as JSON")?;
    Ok(node["metadata"]["labels"][label]
        .as_str()
        .map(str::to_string))
}

/// `--rack`, or the label `WEIR_RACK_NODE_LABEL` of the node `WEIR_RACK_FROM_NODE` names.
pub async fn rack(given: Option<String>) -> anyhow::Result<Option<String>> {
    if given.is_some() {
        return Ok(given);
    }
    let (Ok(node), Ok(label)) = (
        std::env::var("WEIR_RACK_FROM_NODE"),
        std::env::var("WEIR_RACK_NODE_LABEL"),
    ) else {
        return Ok(None);
    };
    let rack = node_label(&node, &label)
        .await
        .with_context(|| format!("WEIR_RACK_FROM_NODE: the label {label:?} of node {node:?}"))?;
    match &rack {
        Some(r) => tracing::info!(node, label, rack = %r, "rack from the node's label"),
        None => tracing::warn!(node, label, "the node has no such label: no rack"),
    }
    Ok(rack)
}
