//! Push delivery: for every push subscription, a worker per partition leases messages from
//! the partition's leader and POSTs each to the subscription's endpoint. 102, 200, 201, 202
//! and 204 acknowledge; any other answer, a refused connection or a timeout (the ack
//! deadline) is a nack, after which the leader redelivers with the retry policy's backoff.
//!
//! Every gateway runs workers for every push subscription: leases make sure each message is
//! out with one gateway at a time, so a gateway that dies only delays what it held (until its
//! leases run out), and no membership protocol is needed.
//!
//! Concurrency per worker starts at one request and grows by one per success up to
//! `PUSH_WINDOW_MAX`; a failure halves it (slow start), and once it is down to one, failures
//! in a row pause the worker (100 ms doubling to 60 s, Google's push backoff), so a failing
//! endpoint is not hammered. All workers pushing to one endpoint share `PUSH_ENDPOINT_CONCURRENCY_MAX`
//! requests. An ordered subscription pushes one message at a time per partition.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use weir_proto::v1 as pb;
use weir_types::subscription::Push;

use crate::backend::{Backend, Settle, SubscriptionInfo};
use crate::convert::{self, AckId};
use crate::deadletter;
use crate::names::{self, Kind};
use crate::token::PushSigner;

/// Requests one worker may have in flight at most.
pub const PUSH_WINDOW_MAX: usize = 64;
/// Requests to one endpoint at once, over all its subscriptions and partitions.
pub const PUSH_ENDPOINT_CONCURRENCY_MAX: usize = 256;
/// How often the gateway looks for new, changed and deleted push subscriptions.
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(2);
/// How long a worker's pull waits at the leader for messages.
const PUSH_PULL_WAIT_MS: u32 = 5_000;
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// The longest pause of a worker whose pushes keep failing.
const PUSH_BACKOFF_MAX: Duration = Duration::from_secs(60);

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The client pushes go out on: http and https (Mozilla's roots, plus the certificates in
/// `extra_roots`, a PEM file, for endpoints behind a private CA).
pub fn client(extra_roots: Option<&std::path::Path>) -> Result<HttpClient, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_roots {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("{}: no certificate in the file", path.display()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// The status codes that acknowledge a pushed message.
pub fn acknowledges(status: u16) -> bool {
    matches!(status, 102 | 200 | 201 | 202 | 204)
}

pub use weir_types::pubsub::rfc3339;

fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The request for one delivery: Google's JSON envelope, or the bare data with metadata
/// headers (`no_wrapper`).
pub fn request(
    push: &Push,
    subscription: &str,
    topic: &str,
    partition: u32,
    d: &pb::Delivery,
) -> Result<hyper::Request<Full<Bytes>>, hyper::http::Error> {
    let record = d.record.clone().unwrap_or_default();
    let message = convert::message(partition, d.offset, record);
    if let Some(mode) = crate::cloudevents::mode(&push.attributes) {
        let event = crate::cloudevents::Event::of_message(&message, topic);
        let (headers, body) = crate::cloudevents::delivery(&event, mode);
        let mut builder = hyper::Request::post(push.endpoint.as_str());
        for (k, v) in &headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        return builder.body(Full::new(Bytes::from(body)));
    }
    let publish_time = rfc3339(
        message
            .publish_time
            .as_ref()
            .map_or(0, convert::timestamp_ms),
    );
    let google_sub = names::google(subscription, Kind::Subscriptions);
    let builder = hyper::Request::post(push.endpoint.as_str());
    if push.no_wrapper {
        let mut builder = builder.header("content-type", "application/octet-stream");
        if push.write_metadata {
            builder = builder
                .header("x-goog-pubsub-subscription-name", google_sub.as_str())
                .header("x-goog-pubsub-message-id", message.message_id.as_str())
                .header("x-goog-pubsub-publish-time", publish_time.as_str());
            if !message.ordering_key.is_empty() {
                builder =
                    builder.header("x-goog-pubsub-ordering-key", message.ordering_key.as_str());
            }
            for (k, v) in &message.attributes {
                builder = builder.header(k.as_str(), v.as_str());
            }
        }
        return builder.body(Full::new(Bytes::from(message.data)));
    }
    let mut m = serde_json::Map::new();
    m.insert("data".into(), base64(&message.data).into());
    m.insert(
        "attributes".into(),
        serde_json::Value::Object(
            message
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
                .collect(),
        ),
    );
    m.insert("messageId".into(), message.message_id.clone().into());
    m.insert("message_id".into(), message.message_id.clone().into());
    m.insert("publishTime".into(), publish_time.clone().into());
    m.insert("publish_time".into(), publish_time.into());
    if !message.ordering_key.is_empty() {
        m.insert("orderingKey".into(), message.ordering_key.clone().into());
    }
    let envelope = serde_json::json!({
        "message": serde_json::Value::Object(m),
        "subscription": google_sub,
        "deliveryAttempt": d.attempt,
    });
    builder
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(envelope.to_string())))
}

/// Runs the push workers of this gateway until `stopped`.
pub async fn run(
    backend: Arc<Backend>,
    client: HttpClient,
    signer: Arc<PushSigner>,
    mut stopped: watch::Receiver<bool>,
) {
    let endpoints: Arc<std::sync::Mutex<HashMap<String, Arc<Semaphore>>>> = Default::default();
    // (subscription, uid) → (the spec its workers run with, their tasks)
    let mut running: HashMap<
        (String, u64),
        (weir_types::subscription::SubscriptionSpec, JoinSet<()>),
    > = HashMap::new();
    loop {
        let request = pb::ListSubscriptionsRequest::default();
        match backend
            .subscriptions(|mut c| {
                let request = request.clone();
                async move { c.list_subscriptions(request).await }
            })
            .await
        {
            Ok(list) => {
                let mut wanted = HashMap::new();
                for d in list.subscriptions {
                    let Ok(info) = SubscriptionInfo::try_from(d) else {
                        continue;
                    };
                    if info.spec.push.is_some() && !info.spec.detached && !info.topic_deleted {
                        wanted.insert((info.spec.name.clone(), info.uid), info);
                    }
                }
                running.retain(|key, (spec, _)| {
                    wanted.get(key).is_some_and(|info| info.spec == *spec)
                });
                for (key, info) in wanted {
                    if running.contains_key(&key) {
                        continue;
                    }
                    let Some(push) = info.spec.push.clone() else {
                        continue;
                    };
                    let endpoint = Arc::clone(
                        endpoints
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(push.endpoint.clone())
                            .or_insert_with(|| {
                                Arc::new(Semaphore::new(PUSH_ENDPOINT_CONCURRENCY_MAX))
                            }),
                    );
                    let info = Arc::new(info);
                    let mut tasks = JoinSet::new();
                    for partition in 0..info.partitions {
                        tasks.spawn(worker(
                            Arc::clone(&backend),
                            client.clone(),
                            Arc::clone(&signer),
                            Arc::clone(&info),
                            partition,
                            Arc::clone(&endpoint),
                        ));
                    }
                    tracing::info!(subscription = %info.spec.name, endpoint = %push.endpoint, partitions = info.partitions, "pushing");
                    running.insert(key, (info.spec.clone(), tasks));
                }
            }
            Err(e) => tracing::debug!(error = %e, "listing push subscriptions failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(DISCOVERY_INTERVAL) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

/// What one push attempt came to (already acked or nacked at the leader).
struct Outcome {
    acked: bool,
}

async fn worker(
    backend: Arc<Backend>,
    client: HttpClient,
    signer: Arc<PushSigner>,
    info: Arc<SubscriptionInfo>,
    partition: u32,
    endpoint: Arc<Semaphore>,
) {
    let Some(push) = info.spec.push.clone() else {
        return;
    };
    let push = Arc::new(push);
    let ordered = info.spec.enable_message_ordering;
    let timeout = Duration::from_secs(u64::from(info.spec.ack_deadline_seconds));
    let acks = acker(Arc::clone(&backend), Arc::clone(&info), partition);
    let mut window = 1usize;
    // pushes failed in a row: past the first, the worker pauses before it pulls again
    let mut failures = 0u32;
    let mut in_flight: JoinSet<Outcome> = JoinSet::new();
    loop {
        // settle what finished; wait while the window is full
        let mut settled = |o: Outcome, window: &mut usize| {
            *window = next_window(*window, o.acked);
            failures = if o.acked {
                0
            } else {
                failures.saturating_add(1)
            };
        };
        // pull once half the window is free, so a pull brings many messages, not one
        while window.saturating_sub(in_flight.len()) < window.div_ceil(2)
            || (ordered && !in_flight.is_empty())
        {
            if let Some(Ok(o)) = in_flight.join_next().await {
                settled(o, &mut window);
            }
        }
        while let Some(Ok(o)) = in_flight.try_join_next() {
            settled(o, &mut window);
        }
        if window == 1
            && let Some(pause) = push_backoff(failures)
        {
            tokio::time::sleep(pause).await;
        }
        let room = if ordered { 1 } else { window - in_flight.len() };
        let pull = pb::SubscriptionPullRequest {
            subscription: info.spec.name.clone(),
            topic: info.spec.topic.clone(),
            partition,
            max_messages: room as u32,
            max_bytes: 0,
            wait_ms: PUSH_PULL_WAIT_MS,
            ack_deadline_seconds: 0,
        };
        let pulled = backend
            .leader(
                &info.spec.topic,
                partition,
                crate::backend::BROKER_PATIENCE
                    + Duration::from_millis(u64::from(PUSH_PULL_WAIT_MS)),
                |mut c| {
                    let pull = pull.clone();
                    async move { c.pull(pull).await }
                },
            )
            .await;
        let deliveries = match pulled {
            Ok(r) => r.deliveries,
            Err(e) => {
                if e.code() == Some(weir_types::ErrorCode::SubscriptionNotFound) {
                    return;
                }
                tracing::debug!(subscription = %info.spec.name, partition, error = %e, "push pull failed; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        for d in deliveries {
            let id = AckId {
                partition,
                offset: d.offset,
                attempt: d.attempt,
            };
            if deadletter::due(&info.spec, d.attempt) {
                deadletter::forward(&backend, &info, partition, d).await;
                continue;
            }
            let (client, push, endpoint, signer) = (
                client.clone(),
                Arc::clone(&push),
                Arc::clone(&endpoint),
                Arc::clone(&signer),
            );
            let (backend, info) = (Arc::clone(&backend), Arc::clone(&info));
            let acks = acks.clone();
            let sub = info.spec.name.clone();
            in_flight.spawn(async move {
                let _permit = endpoint.acquire_owned().await;
                let acked = match request(&push, &sub, &info.spec.topic, partition, &d)
                    .and_then(|req| authorize(req, &push, &signer))
                {
                    Ok(req) => match tokio::time::timeout(timeout, client.request(req)).await {
                        Ok(Ok(resp)) => {
                            let status = resp.status().as_u16();
                            // drain the body so the connection can be reused
                            let _ = resp.into_body().collect().await;
                            metrics::counter!("weir_push_responses_total", "subscription" => sub.clone(), "status" => status.to_string()).increment(1);
                            acknowledges(status)
                        }
                        Ok(Err(e)) => {
                            let mut why = e.to_string();
                            let mut source = std::error::Error::source(&e);
                            while let Some(s) = source {
                                why = format!("{why}: {s}");
                                source = s.source();
                            }
                            tracing::debug!(subscription = %sub, error = %why, "push failed");
                            metrics::counter!("weir_push_responses_total", "subscription" => sub.clone(), "status" => "error").increment(1);
                            false
                        }
                        Err(_) => {
                            metrics::counter!("weir_push_responses_total", "subscription" => sub.clone(), "status" => "timeout").increment(1);
                            false
                        }
                    },
                    Err(e) => {
                        tracing::warn!(subscription = %sub, error = %e, "push request could not be built");
                        false
                    }
                };
                if acked {
                    // acks go out in batches; the acker outlives the worker to send the last
                    let _ = acks
                        .send(pb::LeaseId {
                            offset: id.offset,
                            attempt: id.attempt,
                        })
                        .await;
                } else {
                    // at once: a nack's backoff starts now, not at the worker's next turn
                    settle(&backend, &info, partition, id, false).await;
                }
                Outcome { acked }
            });
        }
    }
}

/// Adds the push token when the push config names a service account: audience as
/// configured, else the endpoint URL (as Google does).
fn authorize(
    mut req: hyper::Request<Full<Bytes>>,
    push: &Push,
    signer: &PushSigner,
) -> Result<hyper::Request<Full<Bytes>>, hyper::http::Error> {
    if push.oidc_service_account_email.is_empty() {
        return Ok(req);
    }
    let audience = if push.oidc_audience.is_empty() {
        push.endpoint.as_str()
    } else {
        push.oidc_audience.as_str()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match signer.token(&push.oidc_service_account_email, audience, now) {
        Ok(token) => {
            let value = hyper::http::HeaderValue::try_from(format!("Bearer {token}"))?;
            req.headers_mut()
                .insert(hyper::header::AUTHORIZATION, value);
        }
        // unauthenticated, the endpoint refuses it and the message comes again
        Err(e) => tracing::warn!(error = %e, "push token could not be signed"),
    }
    Ok(req)
}

/// Google's push backoff: once the window is down to one request and pushes keep failing,
/// the worker waits 100 ms, doubling per failure up to 60 s, before it pushes again.
fn push_backoff(failures: u32) -> Option<Duration> {
    if failures == 0 {
        return None;
    }
    let ms = 100u64.saturating_mul(1 << failures.saturating_sub(1).min(20));
    Some(Duration::from_millis(
        ms.min(PUSH_BACKOFF_MAX.as_millis() as u64),
    ))
}

/// Slow start: one more request in flight per success, half as many after a failure.
fn next_window(window: usize, acked: bool) -> usize {
    if acked {
        (window + 1).min(PUSH_WINDOW_MAX)
    } else {
        (window / 2).max(1)
    }
}

/// Acks at most this many leases per request.
const ACK_BATCH_MAX: usize = 1_000;

/// A task that acknowledges what its channel brings, as many per request as have arrived
/// meanwhile (one request in flight), until every sender is gone. The channel is bounded:
/// while the leader is slow to take acks, pushes wait for room.
fn acker(
    backend: Arc<Backend>,
    info: Arc<SubscriptionInfo>,
    partition: u32,
) -> tokio::sync::mpsc::Sender<pb::LeaseId> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<pb::LeaseId>(ACK_BATCH_MAX * 4);
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < ACK_BATCH_MAX {
                match rx.try_recv() {
                    Ok(l) => batch.push(l),
                    Err(_) => break,
                }
            }
            if let Err(e) = backend
                .settle(&info.spec, partition, batch, Settle::Ack)
                .await
            {
                // the leases run out and the messages come again
                tracing::debug!(subscription = %info.spec.name, partition, error = %e, "acking pushes failed");
            }
        }
    });
    tx
}

/// Acks or nacks one pushed message.
async fn settle(
    backend: &Backend,
    info: &SubscriptionInfo,
    partition: u32,
    id: AckId,
    acked: bool,
) {
    let lease = vec![pb::LeaseId {
        offset: id.offset,
        attempt: id.attempt,
    }];
    let how = if acked {
        Settle::Ack
    } else {
        Settle::Deadline(0)
    };
    if let Err(e) = backend.settle(&info.spec, partition, lease, how).await {
        // the lease runs out and the message comes again
        tracing::debug!(subscription = %info.spec.name, partition, error = %e, "settling a push failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_codes_are_googles() {
        for ok in [102, 200, 201, 202, 204] {
            assert!(acknowledges(ok));
        }
        for bad in [203, 301, 400, 404, 429, 500, 503] {
            assert!(!acknowledges(bad));
        }
        assert_eq!(next_window(1, true), 2);
        assert_eq!(next_window(PUSH_WINDOW_MAX, true), PUSH_WINDOW_MAX);
        assert_eq!(next_window(8, false), 4);
        assert_eq!(next_window(1, false), 1);
        assert_eq!(push_backoff(0), None);
        assert_eq!(push_backoff(1), Some(Duration::from_millis(100)));
        assert_eq!(push_backoff(4), Some(Duration::from_millis(800)));
        assert_eq!(push_backoff(30), Some(PUSH_BACKOFF_MAX));
    }

    #[test]
    fn the_envelope_has_both_spellings_and_base64_data() {
        let push = Push {
            endpoint: "http://127.0.0.1:1/p".into(),
            ..Default::default()
        };
        let d = pb::Delivery {
            offset: 7,
            attempt: 3,
            record: Some(pb::Record {
                key: Some(Bytes::from_static(b"k")),
                value: Some(Bytes::from_static(b"hi")),
                headers: vec![pb::Header {
                    key: "a".into(),
                    value: Some(Bytes::from_static(b"b")),
                }],
                timestamp_ms: 0,
            }),
        };
        let req = request(&push, "p.s", "p.t", 1, &d).expect("request");
        let body = futures_util::FutureExt::now_or_never(req.into_body().collect())
            .expect("ready")
            .expect("body")
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["message"]["data"], "aGk=");
        assert_eq!(v["message"]["attributes"]["a"], "b");
        assert_eq!(v["message"]["messageId"], v["message"]["message_id"]);
        assert_eq!(v["message"]["orderingKey"], "k");
        assert_eq!(v["subscription"], "projects/p/subscriptions/s");
        assert_eq!(v["deliveryAttempt"], 3);
    }
}
