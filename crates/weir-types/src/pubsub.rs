//! How a stored record looks as a Pub/Sub message and as a CloudEvent, shared by the broker
//! (which filters) and the gateway (which delivers), so both see the same event.

use std::collections::BTreeMap;

/// The `type` of a message published without CloudEvents attributes, as Google names it.
pub const MESSAGE_PUBLISHED_TYPE: &str = "google.cloud.pubsub.topic.v1.messagePublished";

/// A message's id: its partition in the top 16 bits, its offset below.
pub fn message_id(partition: u32, offset: i64) -> String {
    ((u64::from(partition) << 48) | (offset as u64 & ((1 << 48) - 1))).to_string()
}

/// `projects/{project}/topics/{id}` for the Weir topic `project.id` (or the name as it is,
/// for one outside any project).
pub fn google_topic(weir: &str) -> String {
    match weir.split_once('.') {
        Some((project, id)) => format!("projects/{project}/topics/{id}"),
        None => weir.to_string(),
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// RFC 3339 in UTC with milliseconds, as Pub/Sub writes `publishTime`.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60,
        ms.rem_euclid(1000)
    )
}

/// The CloudEvent context attributes of a message (the CloudEvents Pub/Sub binding): its
/// `ce-` attributes without the prefix; a message without `ce-id` is Pub/Sub's own
/// "messagePublished" event of the topic.
pub fn cloudevent<'a>(
    attributes: impl IntoIterator<Item = (&'a str, &'a str)>,
    message_id: &str,
    weir_topic: &str,
    publish_ms: i64,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = attributes
        .into_iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("ce-")
                .map(|k| (k.to_string(), v.to_string()))
        })
        .collect();
    if !out.contains_key("id") {
        out.insert("id".into(), message_id.to_string());
        out.insert("specversion".into(), "1.0".into());
        out.insert(
            "source".into(),
            format!("//pubsub.googleapis.com/{}", google_topic(weir_topic)),
        );
        out.insert("type".into(), MESSAGE_PUBLISHED_TYPE.into());
        out.insert("time".into(), rfc3339(publish_ms));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_ids_and_events() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_ne!(message_id(1, 5), message_id(0, 5));
        let ce = cloudevent(
            [("ce-id", "1"), ("ce-type", "t"), ("k", "v")],
            "9",
            "p.t",
            0,
        );
        assert_eq!(ce.len(), 2);
        let ps = cloudevent([("k", "v")], "9", "p.t", 0);
        assert_eq!(ps["source"], "//pubsub.googleapis.com/projects/p/topics/t");
        assert_eq!(ps["type"], MESSAGE_PUBLISHED_TYPE);
    }
}
