//! CloudEvents over HTTP: ingest into a topic, and the CloudEvent a push delivers.
//!
//! Ingest: `POST /v1/projects/{project}/topics/{topic}:cloudevents` (or
//! `/v1/topics/{weir-topic}:cloudevents`) takes one event in binary mode (`ce-*` headers, the
//! body is the data), one in structured mode (`application/cloudevents+json`) or a batch
//! (`application/cloudevents-batch+json`). Each event becomes a message the way the
//! CloudEvents Pub/Sub binding says: attribute `ce-<name>` per context attribute and
//! extension, `content-type` for `datacontenttype`, the data as the message data; the
//! `partitionkey` extension is the ordering key. The answer is `{"messageIds": [...]}`.
//!
//! Delivery: a push subscription whose `push_config.attributes` has `cloudevents = binary`
//! (or `structured`) receives each message as a CloudEvent: the `ce-` attributes back as
//! the event's, or for a message published without them Pub/Sub's own event
//! (`google.cloud.pubsub.topic.v1.messagePublished`, the message id, the topic as source).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use weir_proto::google::pubsub::v1 as gpb;
use weir_types::{Header, Record};

use crate::backend::{Backend, futures_join};
use crate::convert;
use crate::names::{Kind, Name};

/// The largest request ingest takes (Pub/Sub's publish limit).
const INGEST_BYTES_MAX: usize = 10 * 1000 * 1000;
/// Events one batch may hold (Pub/Sub's publish limit).
const BATCH_EVENTS_MAX: usize = 1000;
const REQUIRED: [&str; 4] = ["id", "source", "specversion", "type"];

/// A CloudEvent: context attributes and extensions (strings), the data's content type, and
/// the data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    pub attributes: BTreeMap<String, String>,
    pub content_type: Option<String>,
    pub data: Vec<u8>,
}

fn bad(why: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, why.into()).into_response()
}

impl Event {
    fn check(self, at: &str) -> Result<Event, String> {
        for name in REQUIRED {
            if self.attributes.get(name).is_none_or(|v| v.is_empty()) {
                return Err(format!("{at}: attribute {name:?} is required"));
            }
        }
        if self.attributes.get("specversion").map(String::as_str) != Some("1.0") {
            return Err(format!("{at}: specversion must be \"1.0\""));
        }
        for name in self.attributes.keys() {
            if name.is_empty()
                || name.len() > 20
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            {
                return Err(format!(
                    "{at}: attribute name {name:?} must be 1 to 20 of a-z, 0-9"
                ));
            }
        }
        Ok(self)
    }

    /// Binary mode: `ce-*` headers and the body.
    pub fn from_binary(headers: &HeaderMap, body: &[u8]) -> Result<Event, String> {
        let mut attributes = BTreeMap::new();
        for (name, value) in headers {
            if let Some(attr) = name.as_str().strip_prefix("ce-") {
                let value = value
                    .to_str()
                    .map_err(|_| format!("header {name} is not text"))?;
                attributes.insert(attr.to_string(), value.to_string());
            }
        }
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Event {
            attributes,
            content_type,
            data: body.to_vec(),
        }
        .check("binary event")
    }

    /// Structured mode: one JSON object.
    pub fn from_json(v: &serde_json::Value, at: &str) -> Result<Event, String> {
        let obj = v
            .as_object()
            .ok_or_else(|| format!("{at}: an event is a JSON object"))?;
        let mut e = Event::default();
        for (k, v) in obj {
            match k.as_str() {
                "data" => {
                    e.data = match v {
                        serde_json::Value::String(s)
                            if !obj
                                .get("datacontenttype")
                                .and_then(|t| t.as_str())
                                .is_some_and(|t| t.contains("json")) =>
                        {
                            s.clone().into_bytes()
                        }
                        other => other.to_string().into_bytes(),
                    }
                }
                "data_base64" => {
                    use base64::Engine;
                    let s = v
                        .as_str()
                        .ok_or_else(|| format!("{at}: data_base64 must be a string"))?;
                    e.data = base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .map_err(|err| format!("{at}: data_base64: {err}"))?;
                }
                "datacontenttype" => e.content_type = v.as_str().map(str::to_string),
                name => {
                    let s = match v {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Bool(_) | serde_json::Value::Number(_) => v.to_string(),
                        _ => return Err(format!("{at}: attribute {name:?} must be a string")),
                    };
                    e.attributes.insert(name.to_string(), s);
                }
            }
        }
        if e.content_type.is_none() && obj.contains_key("data") && !obj["data"].is_string() {
            e.content_type = Some("application/json".into());
        }
        e.check(at)
    }

    /// The record this event is stored as.
    pub fn record(&self, now_ms: i64) -> Record {
        let mut headers: Vec<Header> = self
            .attributes
            .iter()
            .map(|(k, v)| Header {
                key: format!("ce-{k}"),
                value: Some(bytes::Bytes::from(v.clone())),
            })
            .collect();
        if let Some(t) = &self.content_type {
            headers.push(Header {
                key: "content-type".into(),
                value: Some(bytes::Bytes::from(t.clone())),
            });
        }
        Record {
            timestamp_ms: now_ms,
            key: self
                .attributes
                .get("partitionkey")
                .map(|k| bytes::Bytes::from(k.clone())),
            value: Some(bytes::Bytes::from(self.data.clone())),
            headers,
        }
    }

    /// The event a delivered message is: its `ce-` attributes, or Pub/Sub's own event.
    pub fn of_message(m: &gpb::PubsubMessage, topic: &str) -> Event {
        let attributes = weir_types::pubsub::cloudevent(
            m.attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            &m.message_id,
            topic,
            m.publish_time.as_ref().map_or(0, convert::timestamp_ms),
        );
        Event {
            attributes,
            content_type: m.attributes.get("content-type").cloned(),
            data: m.data.clone(),
        }
    }

    /// Structured mode: the JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let mut obj = serde_json::Map::new();
        for (k, v) in &self.attributes {
            obj.insert(k.clone(), v.clone().into());
        }
        let json_data = self
            .content_type
            .as_deref()
            .is_some_and(|t| t.contains("json"))
            .then(|| serde_json::from_slice::<serde_json::Value>(&self.data).ok())
            .flatten();
        if let Some(t) = &self.content_type {
            obj.insert("datacontenttype".into(), t.clone().into());
        }
        match json_data {
            Some(v) => {
                obj.insert("data".into(), v);
            }
            None if !self.data.is_empty() => {
                use base64::Engine;
                obj.insert(
                    "data_base64".into(),
                    base64::engine::general_purpose::STANDARD
                        .encode(&self.data)
                        .into(),
                );
            }
            None => {}
        }
        serde_json::Value::Object(obj)
    }
}

/// The events of one ingest request.
pub fn events(headers: &HeaderMap, body: &[u8]) -> Result<Vec<Event>, String> {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    match essence {
        "application/cloudevents+json" => {
            let v: serde_json::Value =
                serde_json::from_slice(body).map_err(|e| format!("structured event: {e}"))?;
            Ok(vec![Event::from_json(&v, "structured event")?])
        }
        "application/cloudevents-batch+json" => {
            let v: serde_json::Value =
                serde_json::from_slice(body).map_err(|e| format!("batch: {e}"))?;
            let list = v.as_array().ok_or("a batch is a JSON array")?;
            if list.is_empty() || list.len() > BATCH_EVENTS_MAX {
                return Err(format!("a batch holds 1 to {BATCH_EVENTS_MAX} events"));
            }
            list.iter()
                .enumerate()
                .map(|(i, e)| Event::from_json(e, &format!("batch[{i}]")))
                .collect()
        }
        _ => Ok(vec![Event::from_binary(headers, body)?]),
    }
}

#[derive(Clone)]
struct Ingest {
    backend: Arc<Backend>,
    next_partition: Arc<AtomicU32>,
}

/// The HTTP routes of the gateway (merged into the process's HTTP server).
pub fn router(backend: Arc<Backend>) -> Router {
    let state = Ingest {
        backend,
        next_partition: Arc::new(AtomicU32::new(0)),
    };
    Router::new()
        .route(
            "/v1/projects/{project}/topics/{topic}",
            post(ingest_project),
        )
        .route("/v1/topics/{topic}", post(ingest_weir))
        .layer(DefaultBodyLimit::max(INGEST_BYTES_MAX))
        .with_state(state)
}

async fn ingest_project(
    State(s): State<Ingest>,
    Path((project, topic)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(topic) = topic.strip_suffix(":cloudevents") else {
        return (StatusCode::NOT_FOUND, "POST .../topics/{topic}:cloudevents").into_response();
    };
    match Name::parse(
        "topic",
        &format!("projects/{project}/topics/{topic}"),
        Kind::Topics,
    ) {
        Ok(name) => publish(&s, &name.weir(), &headers, &body).await,
        Err(e) => bad(e.message().to_string()),
    }
}

async fn ingest_weir(
    State(s): State<Ingest>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match topic.strip_suffix(":cloudevents") {
        Some(topic) => publish(&s, topic, &headers, &body).await,
        None => (StatusCode::NOT_FOUND, "POST /v1/topics/{topic}:cloudevents").into_response(),
    }
}

async fn publish(s: &Ingest, topic: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let events = match events(headers, body) {
        Ok(e) => e,
        Err(why) => return bad(why),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let partitions = match s.backend.metadata.route(topic, false).await {
        Ok(r) => r.leaders.len() as u32,
        Err(_) => {
            return (
                StatusCode::NOT_FOUND,
                format!("topic {topic:?} does not exist"),
            )
                .into_response();
        }
    };
    let spread = s.next_partition.fetch_add(1, Ordering::Relaxed) % partitions.max(1);
    let mut pending = Vec::with_capacity(events.len());
    for e in &events {
        let record = e.record(now);
        let partition = record.key.is_none().then_some(spread);
        match s.backend.producer.send(topic, partition, record).await {
            Ok(f) => pending.push(f),
            Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
        }
    }
    let mut ids = Vec::with_capacity(pending.len());
    for r in futures_join(pending).await {
        match r {
            Ok(meta) => ids.push(convert::message_id(
                meta.partition,
                meta.offset.map_or(-1, |o| o.0),
            )),
            Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
        }
    }
    metrics::counter!("weir_gateway_cloudevents_ingested_total").increment(ids.len() as u64);
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        serde_json::json!({ "messageIds": ids }).to_string(),
    )
        .into_response()
}

/// How a push subscription wants its messages as CloudEvents, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Binary,
    Structured,
}

pub fn mode(push_attributes: &BTreeMap<String, String>) -> Option<Mode> {
    match push_attributes.get("cloudevents").map(String::as_str) {
        Some("binary") => Some(Mode::Binary),
        Some("structured") => Some(Mode::Structured),
        _ => None,
    }
}

/// Headers and body of a pushed CloudEvent.
pub fn delivery(e: &Event, mode: Mode) -> (HashMap<String, String>, Vec<u8>) {
    match mode {
        Mode::Binary => {
            let mut h: HashMap<String, String> = e
                .attributes
                .iter()
                .map(|(k, v)| (format!("ce-{k}"), v.clone()))
                .collect();
            if let Some(t) = &e.content_type {
                h.insert("content-type".into(), t.clone());
            }
            (h, e.data.clone())
        }
        Mode::Structured => (
            HashMap::from([(
                "content-type".to_string(),
                "application/cloudevents+json".to_string(),
            )]),
            e.to_json().to_string().into_bytes(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header"));
        }
        h
    }

    #[test]
    fn binary_structured_and_batch_ingest_agree() {
        let binary = events(
            &headers(&[
                ("ce-id", "1"),
                ("ce-source", "/s"),
                ("ce-type", "t"),
                ("ce-specversion", "1.0"),
                ("ce-partitionkey", "k"),
                ("content-type", "application/json"),
            ]),
            br#"{"a":1}"#,
        )
        .expect("binary");
        let structured = events(
            &headers(&[("content-type", "application/cloudevents+json")]),
            br#"{"id":"1","source":"/s","type":"t","specversion":"1.0","partitionkey":"k","datacontenttype":"application/json","data":{"a":1}}"#,
        )
        .expect("structured");
        assert_eq!(binary, structured);
        let r = binary[0].record(5);
        assert_eq!(r.key.as_deref(), Some(&b"k"[..]));
        let batch = events(
            &headers(&[("content-type", "application/cloudevents-batch+json")]),
            br#"[{"id":"1","source":"/s","type":"t","specversion":"1.0","data_base64":"aGk="},
                 {"id":"2","source":"/s","type":"t","specversion":"1.0"}]"#,
        )
        .expect("batch");
        assert_eq!(batch[0].data, b"hi");
        assert_eq!(batch.len(), 2);
    }

    #[test]
    fn a_missing_attribute_is_named() {
        let e = events(
            &headers(&[
                ("ce-id", "1"),
                ("ce-source", "/s"),
                ("ce-specversion", "1.0"),
            ]),
            b"",
        )
        .expect_err("no type");
        assert!(e.contains("\"type\""), "{e}");
        let e = events(
            &headers(&[("content-type", "application/cloudevents-batch+json")]),
            br#"[{"id":"1","source":"/s","type":"t","specversion":"0.3"}]"#,
        )
        .expect_err("old version");
        assert!(e.contains("batch[0]") && e.contains("specversion"), "{e}");
    }

    #[test]
    fn a_plain_message_is_delivered_as_pubsubs_event() {
        let m = gpb::PubsubMessage {
            data: b"x".to_vec(),
            message_id: "42".into(),
            ..Default::default()
        };
        let e = Event::of_message(&m, "p.t");
        assert_eq!(e.attributes["id"], "42");
        assert_eq!(
            e.attributes["source"],
            "//pubsub.googleapis.com/projects/p/topics/t"
        );
        let (h, body) = delivery(&e, Mode::Binary);
        assert_eq!(
            h["ce-type"],
            "google.cloud.pubsub.topic.v1.messagePublished"
        );
        assert_eq!(body, b"x");
        let (_, body) = delivery(&e, Mode::Structured);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["data_base64"], "eA==");
    }
}
