//! How large a message Kafka takes, per topic: the smaller of the relay producer's
//! `message.max.bytes` and the topic's `max.message.bytes` (read from the brokers),
//! less room for the record framing and the headers the relay adds.
//!
//! Ingest refuses (413) what is larger, so a client learns at once; the relay checks
//! again (a row written straight into the table, or a topic limit lowered later) and
//! quarantines what Kafka cannot take instead of stalling on it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

use crate::error::{Error, KafkaContext, Result};

/// The relay producer's `message.max.bytes` (librdkafka's default, set explicitly).
pub const RELAY_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// Bytes kept free for the record batch framing and the relay's `outbox-*` headers.
pub const RECORD_OVERHEAD: usize = 512;

/// Headers one message may carry at most; ingest refuses more (413).
pub const MAX_HEADERS: usize = 64;

/// Bytes one message's headers may hold at most, names, values and Kafka's framing
/// counted as [`header_bytes`] does; ingest refuses more (413). Headers are metadata:
/// a few W3C trace contexts and baggage fit many times over, a document does not
/// (it belongs in the payload, which the topic's limit bounds).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// A message's size as Kafka counts it, before compression: payload, key, and every
/// header with its framing ([`header_bytes`]).
pub fn record_size<'a>(
    payload: &str,
    key: Option<&str>,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> usize {
    payload.len() + key.map_or(0, str::len) + header_bytes(headers)
}

/// Bytes the headers take in a Kafka record (v2): each name and value with the
/// varint that gives its length. Ten thousand empty headers are not free.
pub fn header_bytes<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> usize {
    headers
        .into_iter()
        .map(|(k, v)| varint_len(k.len()) + k.len() + varint_len(v.len()) + v.len())
        .sum()
}

/// Bytes of Kafka's zig-zag varint for a length `n`.
fn varint_len(n: usize) -> usize {
    let mut zigzag = (n as u64).saturating_mul(2);
    let mut bytes = 1;
    while zigzag >= 0x80 {
        zigzag >>= 7;
        bytes += 1;
    }
    bytes
}

/// Why a message's headers are refused at ingest, if they are: more than
/// [`MAX_HEADERS`], or more than [`MAX_HEADER_BYTES`].
pub fn refuse_headers<'a>(
    headers: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
) -> Option<String> {
    let count = headers.len();
    if count > MAX_HEADERS {
        return Some(format!(
            "{count} headers; at most {MAX_HEADERS} per message are allowed"
        ));
    }
    let bytes = header_bytes(headers);
    (bytes > MAX_HEADER_BYTES).then(|| {
        format!(
            "the headers take {bytes} bytes (names, values and Kafka's framing); at most {MAX_HEADER_BYTES} per message are allowed"
        )
    })
}

/// The largest message a topic takes, and why. Cheap to get (it is asked for every
/// message): the explanation is only written out by [`Limit::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Largest `record_size` accepted.
    pub bytes: usize,
    /// The topic's `max.message.bytes` when it, not the relay's limit, sets `bytes`.
    topic_max_message_bytes: Option<usize>,
}

impl Limit {
    /// Which setting sets the limit, for the 413 answer and the quarantine record.
    pub fn reason(&self) -> String {
        match self.topic_max_message_bytes {
            Some(topic) => format!(
                "the topic's max.message.bytes={topic} less {RECORD_OVERHEAD} bytes of framing"
            ),
            None => format!(
                "the relay's message.max.bytes={RELAY_MESSAGE_MAX_BYTES} less {RECORD_OVERHEAD} bytes of framing"
            ),
        }
    }
}

/// The per-topic limits, refreshed from the brokers; shared by ingest and the relay.
#[derive(Debug, Default)]
pub struct TopicLimits {
    /// `max.message.bytes` of each topic, when the brokers told us.
    topics: RwLock<HashMap<String, usize>>,
}

impl TopicLimits {
    /// Limits before the brokers were asked: the relay producer's only.
    pub fn new() -> Arc<Self> {
        Arc::new(TopicLimits::default())
    }

    /// The limit for `topic`.
    pub fn limit(&self, topic: &str) -> Limit {
        let known = self.topics.read().ok().and_then(|t| t.get(topic).copied());
        limit_for(known)
    }

    /// Whether the brokers have told `topic`'s limit.
    pub fn knows(&self, topic: &str) -> bool {
        self.topics.read().is_ok_and(|t| t.contains_key(topic))
    }

    /// The smallest topic limit known (the relay's producer batches no larger).
    pub fn smallest_topic_limit(&self) -> Option<usize> {
        self.topics
            .read()
            .ok()
            .and_then(|t| t.values().copied().min())
    }

    /// Records the brokers' answer.
    pub fn set(&self, topic: &str, max_message_bytes: usize) {
        if let Ok(mut topics) = self.topics.write() {
            topics.insert(topic.to_string(), max_message_bytes);
        }
    }

    /// Asks the brokers for every topic's `max.message.bytes` and records it.
    pub async fn refresh(&self, base: &ClientConfig, topics: &[String]) -> Result<()> {
        for (topic, bytes) in describe_max_message_bytes(base, topics).await? {
            self.set(&topic, bytes);
        }
        Ok(())
    }
}

/// The limit from a topic's `max.message.bytes`, when known.
pub fn limit_for(topic_max_message_bytes: Option<usize>) -> Limit {
    match topic_max_message_bytes {
        Some(topic) if topic < RELAY_MESSAGE_MAX_BYTES => Limit {
            bytes: topic.saturating_sub(RECORD_OVERHEAD),
            topic_max_message_bytes: Some(topic),
        },
        _ => Limit {
            bytes: RELAY_MESSAGE_MAX_BYTES - RECORD_OVERHEAD,
            topic_max_message_bytes: None,
        },
    }
}

async fn describe_max_message_bytes(
    base: &ClientConfig,
    topics: &[String],
) -> Result<Vec<(String, usize)>> {
    let admin: AdminClient<DefaultClientContext> =
        base.create().kafka("creating a Kafka admin client")?;
    let resources: Vec<ResourceSpecifier> = topics
        .iter()
        .map(|t| ResourceSpecifier::Topic(t.as_str()))
        .collect();
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .describe_configs(resources.iter(), &options)
        .await
        .kafka("describing the topics' configuration")?;
    let mut limits = Vec::new();
    for (topic, result) in topics.iter().zip(results) {
        let resource = result.map_err(|code| {
            Error::KafkaMissing(format!("describing topic `{topic}` failed: {code}"))
        })?;
        let value = resource
            .get("max.message.bytes")
            .and_then(|entry| entry.value.as_deref())
            .and_then(|v| v.parse::<usize>().ok());
        if let Some(bytes) = value {
            limits.push((topic.clone(), bytes));
        }
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smaller_of_the_topic_and_the_relay_limit_applies() {
        assert_eq!(limit_for(None).bytes, 1_000_000 - RECORD_OVERHEAD);
        assert!(limit_for(None)
            .reason()
            .contains("message.max.bytes=1000000"));
        // Kafka's default topic limit (1048588) is above the relay's.
        assert_eq!(
            limit_for(Some(1_048_588)).bytes,
            1_000_000 - RECORD_OVERHEAD
        );
        let small = limit_for(Some(20_000));
        assert_eq!(small.bytes, 20_000 - RECORD_OVERHEAD);
        assert!(small.reason().contains("max.message.bytes=20000"));
    }

    #[test]
    fn a_record_counts_payload_key_and_headers_with_their_framing() {
        assert_eq!(record_size("abc", None, []), 3);
        // Each header name and value carries a varint of its length.
        assert_eq!(
            record_size("abc", Some("kk"), [("h", "vv")]),
            3 + 2 + 1 + 1 + 1 + 2
        );
        // 63 is the largest length whose zig-zag varint fits one byte.
        let long = "v".repeat(64);
        assert_eq!(header_bytes([("", long.as_str())]), 1 + 2 + 64);
        let short = "v".repeat(63);
        assert_eq!(header_bytes([("", short.as_str())]), 1 + 1 + 63);
        assert_eq!(varint_len(1 << 19), 3);
        assert_eq!(varint_len(1 << 20), 4);
        // Empty headers still take two bytes each.
        let empty = vec![("", ""); 10_000];
        assert_eq!(header_bytes(empty.iter().copied()), 20_000);
    }

    #[test]
    fn ingest_refuses_too_many_headers_or_too_many_header_bytes() {
        let names: Vec<String> = (0..=MAX_HEADERS).map(|i| format!("h{i}")).collect();
        let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "")).collect();
        assert_eq!(refuse_headers(many[..MAX_HEADERS].iter().copied()), None);
        let refused = refuse_headers(many.iter().copied()).expect("65 headers are refused");
        assert!(refused.contains("65 headers; at most 64"), "{refused}");
        let value = "x".repeat(MAX_HEADER_BYTES);
        let refused = refuse_headers([("h", value.as_str())].into_iter())
            .expect("32 KiB and more is refused");
        assert!(refused.contains("at most 32768"), "{refused}");
        let fits = "x".repeat(MAX_HEADER_BYTES - 1 - 1 - 3);
        assert_eq!(refuse_headers([("h", fits.as_str())].into_iter()), None);
    }

    #[test]
    fn known_topic_limits_are_used_per_topic() {
        let limits = TopicLimits::new();
        assert_eq!(limits.smallest_topic_limit(), None);
        limits.set("small", 20_000);
        limits.set("big", 5_000_000);
        assert_eq!(limits.limit("small").bytes, 20_000 - RECORD_OVERHEAD);
        assert_eq!(limits.limit("big").bytes, 1_000_000 - RECORD_OVERHEAD);
        assert_eq!(limits.limit("unknown").bytes, 1_000_000 - RECORD_OVERHEAD);
        assert_eq!(limits.smallest_topic_limit(), Some(20_000));
    }
}
