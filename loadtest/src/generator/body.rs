//! Request bodies, the JSON built by hand: 10,000,000 messages must not cost an
//! allocation each. Message `i` of a scenario has key `key-<first + i mod keys>` (`first`
//! is 0 unless several runners share the run) and a payload `m<i>` padded to the
//! message size, with the run and scenario headers (and the runner's, when shared).

use super::{MessageShape, RUN_HEADER, SCENARIO_HEADER};

/// The key of message `index`.
fn write_key(out: &mut Vec<u8>, index: u64, shape: &MessageShape) {
    use std::io::Write;
    let _ = write!(
        out,
        "\"key-{}\"",
        shape.key_first + index % shape.keys.max(1)
    );
}

/// The payload of message `index`: `m<index>` padded with `x` to `size` bytes.
fn write_payload(out: &mut Vec<u8>, index: u64, size: usize) {
    use std::io::Write;
    out.push(b'"');
    let start = out.len();
    let _ = write!(out, "m{index:012}-");
    let written = out.len() - start;
    if written > size {
        out.truncate(start + size);
    } else {
        out.resize(start + size, b'x');
    }
    out.push(b'"');
}

/// JSON of one message object, built by hand: 10,000,000 of them must not cost an
/// allocation each. Strings that could need escaping are escaped once per run.
fn write_message(out: &mut Vec<u8>, pre: &Prebuilt, index: u64, shape: &MessageShape) {
    out.extend_from_slice(b"{\"topic\":");
    out.extend_from_slice(pre.topic.as_bytes());
    out.extend_from_slice(b",\"key\":");
    write_key(out, index, shape);
    out.extend_from_slice(b",\"message\":");
    write_payload(out, index, shape.message_size);
    out.extend_from_slice(b",\"headers\":");
    out.extend_from_slice(pre.headers.as_bytes());
    out.push(b'}');
}

struct Prebuilt {
    topic: String,
    headers: String,
}

fn prebuilt(shape: &MessageShape, scenario: &str) -> Prebuilt {
    let mut headers = serde_json::json!({ RUN_HEADER: shape.run_id, SCENARIO_HEADER: scenario });
    if shape.segment.is_shared() {
        headers[crate::segment::RUNNER_HEADER] = shape.segment.index.to_string().into();
    }
    Prebuilt {
        topic: serde_json::Value::String(shape.topic.clone()).to_string(),
        headers: headers.to_string(),
    }
}

/// The JSON array of messages `first..first + count` into `out`.
fn write_messages(out: &mut Vec<u8>, shape: &MessageShape, scenario: &str, first: u64, count: u64) {
    let pre = prebuilt(shape, scenario);
    let per_message = shape.message_size + pre.topic.len() + pre.headers.len() + 64;
    out.reserve(16 + per_message * count as usize);
    out.push(b'[');
    for i in 0..count {
        if i > 0 {
            out.push(b',');
        }
        write_message(out, &pre, first + i, shape);
    }
    out.push(b']');
}

/// Body of `POST /api/messages/batch` for messages `first..first + count`.
pub fn batch_body(shape: &MessageShape, scenario: &str, first: u64, count: u64) -> Vec<u8> {
    let mut out = b"{\"messages\":".to_vec();
    write_messages(&mut out, shape, scenario, first, count);
    out.push(b'}');
    out
}

/// The messages `first..first + count` as `outbox_enqueue_many` takes them: the same
/// JSON array as the batch endpoint's `messages`.
pub fn messages_json(shape: &MessageShape, scenario: &str, first: u64, count: u64) -> String {
    let mut out = Vec::new();
    write_messages(&mut out, shape, scenario, first, count);
    // Built from strings and JSON escapes only.
    String::from_utf8(out).unwrap_or_default()
}

/// Message `index` as `outbox_enqueue` takes it: key, payload and headers (JSON).
pub struct SingleMessage {
    pub key: String,
    pub payload: String,
    pub headers: String,
}

/// Message `index` of `scenario`, as [`single_body`] sends it.
pub fn single_message(shape: &MessageShape, scenario: &str, index: u64) -> SingleMessage {
    let mut key = Vec::new();
    write_key(&mut key, index, shape);
    let mut payload = Vec::new();
    write_payload(&mut payload, index, shape.message_size);
    let unquote = |v: Vec<u8>| {
        let text = String::from_utf8(v).unwrap_or_default();
        text.trim_matches('"').to_string()
    };
    SingleMessage {
        key: unquote(key),
        payload: unquote(payload),
        headers: prebuilt(shape, scenario).headers,
    }
}

/// Body of `POST /api/messages/send` for message `index`.
pub fn single_body(shape: &MessageShape, scenario: &str, index: u64) -> Vec<u8> {
    let pre = prebuilt(shape, scenario);
    let mut out = Vec::with_capacity(shape.message_size + pre.headers.len() + 96);
    write_message(&mut out, &pre, index, shape);
    out
}
