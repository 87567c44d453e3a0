//! Finding the controller that can answer: try each bootstrap address, and follow a
//! NOT_CONTROLLER redirect to the active controller.

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, bail};
use tonic::transport::{Channel, Endpoint};
use weir_proto::status::{error_code, leader_hint};
use weir_types::ErrorCode;

/// Addresses from `--bootstrap` / `WEIR_BOOTSTRAP`, comma separated.
pub fn parse_bootstrap(raw: &str) -> anyhow::Result<Vec<String>> {
    let addrs: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    if addrs.is_empty() {
        bail!("--bootstrap: no address given");
    }
    Ok(addrs)
}

async fn connect(addr: &str) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| anyhow!("--bootstrap: {addr:?} is not host:port ({e})"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(15));
    Ok(endpoint.connect().await?)
}

/// Runs `call` against the bootstrap controllers until one answers, following leader
/// redirects, and retrying while no controller is active (an election takes a moment).
pub async fn with_controller<T, F, Fut>(bootstrap: &[String], mut call: F) -> anyhow::Result<T>
where
    F: FnMut(Channel) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
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
                last_error = anyhow!("{addr}: {e:#}");
                continue;
            }
        };
        match call(channel).await {
            Ok(v) => return Ok(v),
            Err(status) => match error_code(&status) {
                Some(ErrorCode::NotController) => {
                    if let Some(leader) = leader_hint(&status)
                        && leader != addr
                    {
                        queue.push(leader);
                    }
                    last_error = anyhow!("{}", status.message());
                }
                _ if status.code() == tonic::Code::Unavailable && error_code(&status).is_none() => {
                    last_error = anyhow!("{addr}: {}", status.message());
                }
                _ => bail!("{}", status.message()),
            },
        }
    }
}
