//! A cached connection to the active controller: calls follow NOT_CONTROLLER redirects and
//! reconnect through the bootstrap list when the connection breaks.

use std::future::Future;
use std::time::Duration;

use tokio::sync::Mutex;
use weir_proto::call::Channel;
use weir_proto::status::{error_code, leader_hint};
use weir_types::ErrorCode;

use crate::error::ClientError;

#[derive(Debug)]
pub(crate) struct Controllers {
    bootstrap: Vec<String>,
    current: Mutex<Option<Channel>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Controllers {
    pub fn new(bootstrap: Vec<String>) -> Controllers {
        Controllers {
            bootstrap,
            current: Mutex::new(None),
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    async fn channel(&self, hint: Option<String>) -> Result<Channel, ClientError> {
        if let Some(c) = self.current.lock().await.clone() {
            return Ok(c);
        }
        let addr = match hint {
            Some(h) => h,
            None => {
                let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.bootstrap[i % self.bootstrap.len()].clone()
            }
        };
        let channel = weir_proto::call::connect(&addr).await?;
        *self.current.lock().await = Some(channel.clone());
        Ok(channel)
    }

    /// Runs `call` on the active controller, retrying redirects and unreachable nodes for up
    /// to `patience`. Only for requests that are safe to repeat.
    pub async fn call<T, F, Fut>(&self, patience: Duration, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + patience;
        let mut hint = None;
        loop {
            let last = match self.channel(hint.take()).await {
                Ok(channel) => match call(channel).await {
                    Ok(r) => return Ok(r.into_inner()),
                    Err(status) => match error_code(&status) {
                        Some(ErrorCode::NotController) => {
                            *self.current.lock().await = None;
                            hint = leader_hint(&status);
                            ClientError::from_status(&status)
                        }
                        None => {
                            *self.current.lock().await = None;
                            ClientError::Unavailable(status.message().to_string())
                        }
                        Some(_) => return Err(ClientError::from_status(&status)),
                    },
                },
                Err(e) => e,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(last);
            }
            if hint.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
