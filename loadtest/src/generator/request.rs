//! One request and its retries: sent again under its idempotency key while its fate is
//! unknown or the producer pushes back (within the patience), the verdict of each
//! answer, and the outages of the producer it finds (the fallback after a while, the
//! rest of the share failed once the outage outlasts the patience).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::body::{batch_body, single_body};
use super::{ProducerJob, WorkerDone, IDEMPOTENCY_KEY};

impl ProducerJob {
    /// Sends messages `first..first + count` in one request (again, under the same
    /// idempotency key, while nothing or an unknown outcome came back) and counts the
    /// answer.
    pub(super) async fn request(&self, first: u64, count: u64, done: &mut WorkerDone) {
        let (path, body) = self.body(first, count);
        let key = idempotency_key(
            &self.shape.segment.idempotency_scope(&self.shape.run_id),
            &self.scenario,
            first,
            count,
        );
        // Shared, so a retry does not copy a body of megabytes.
        let body = bytes::Bytes::from(body);
        let mut attempt = 1;
        let first_sent = Instant::now();
        loop {
            let (verdict, latency) = self.try_once(path, &key, &body).await;
            let maybe_stored = matches!(verdict, Verdict::Uncertain(_));
            match verdict {
                Verdict::Accepted(ids) => {
                    done.tally.accepted(count, latency);
                    if ids.len() as u64 == count {
                        for id in ids {
                            done.ids.push(id);
                        }
                    } else {
                        tracing::warn!(producer = %self.producer.name, expected = count, got = ids.len(), "accepted answer without the assigned ids");
                        done.uncertain += count;
                    }
                    self.counters.accepted.fetch_add(count, Ordering::Relaxed);
                    return;
                }
                Verdict::Retry(reason, asked)
                    if first_sent.elapsed() < self.retry_patience
                        && !self.unreachable.load(Ordering::Relaxed) =>
                {
                    // The producer is there and stored nothing (backlog at its bound,
                    // busy, database down): wait as long as it asks, for as long as
                    // the patience lasts.
                    done.tally.retried(&reason);
                    tracing::debug!(producer = %self.producer.name, %reason, attempt, "the producer stored nothing and asked to retry");
                    tokio::time::sleep(asked.unwrap_or_else(|| backoff(attempt))).await;
                    attempt += 1;
                }
                Verdict::Retry(reason, _) | Verdict::Refused(reason) => {
                    done.tally.failed(count, &reason, Some(latency));
                    self.counters.failed.fetch_add(count, Ordering::Relaxed);
                    return;
                }
                Verdict::Unreachable(reason) | Verdict::Uncertain(reason) => {
                    // Nothing stored, or maybe stored: the same key makes another try
                    // safe either way, for as long as the outage is within the patience.
                    if self.away(&reason) {
                        done.tally.retried(&reason);
                        tracing::debug!(producer = %self.producer.name, %reason, attempt, "sending the request again under its idempotency key");
                        tokio::time::sleep(backoff(attempt)).await;
                        attempt += 1;
                        continue;
                    }
                    done.tally.failed(count, &reason, Some(latency));
                    self.counters.failed.fetch_add(count, Ordering::Relaxed);
                    if maybe_stored {
                        done.uncertain += count;
                    }
                    return;
                }
            }
        }
    }

    /// The endpoint and body of the request for messages `first..first + count`: the
    /// batch endpoint, or one message to the send endpoint.
    fn body(&self, first: u64, count: u64) -> (&'static str, Vec<u8>) {
        if self.batching {
            (
                "/api/messages/batch",
                batch_body(&self.shape, &self.scenario, first, count),
            )
        } else {
            (
                "/api/messages/send",
                single_body(&self.shape, &self.scenario, first),
            )
        }
    }

    /// One try of a request, to the producer or (once it switched) its fallback: what
    /// the answer says and how long it took. The latency is counted, and an answer
    /// from the producer ends an outage of it.
    async fn try_once(&self, path: &str, key: &str, body: &bytes::Bytes) -> (Verdict, Duration) {
        let base = match (
            &self.fallback_url,
            self.via_fallback.load(Ordering::Relaxed),
        ) {
            (Some(fallback), true) => fallback.as_str(),
            _ => self.producer.base_url.as_str(),
        };
        let sent_at = Instant::now();
        let answer = self
            .http
            .post(format!("{base}{path}"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(IDEMPOTENCY_KEY, key)
            .body(body.clone())
            .send()
            .await;
        let verdict = match answer {
            Ok(response) => {
                let status = response.status();
                if status.is_success() {
                    match response.bytes().await {
                        Ok(bytes) => Verdict::Accepted(parse_ids(&bytes)),
                        Err(e) => Verdict::Uncertain(transport_reason(&e)),
                    }
                } else {
                    let reason = format!("http{}", status.as_u16());
                    match status.as_u16() {
                        429 | 503 => Verdict::Retry(reason, retry_after(&response)),
                        400..=499 => Verdict::Refused(reason),
                        _ => Verdict::Uncertain(reason),
                    }
                }
            }
            Err(e) if e.is_connect() => Verdict::Unreachable(transport_reason(&e)),
            Err(e) => Verdict::Uncertain(transport_reason(&e)),
        };
        let latency = sent_at.elapsed();
        self.counters.answered_after(latency);
        if matches!(
            verdict,
            Verdict::Accepted(_) | Verdict::Retry(..) | Verdict::Refused(_)
        ) {
            self.answered();
        }
        (verdict, latency)
    }

    /// The producer (or the fallback) answered: an outage of it is over.
    fn answered(&self) {
        if let Some(lasted) = self.board.answered(self.in_use()) {
            tracing::info!(producer = %self.producer.name, seconds = format!("{:.1}", lasted.as_secs_f64()), "producer answers again");
        }
    }

    /// The board's name for where requests go now: the producer, or its fallback.
    fn in_use(&self) -> &str {
        if self.via_fallback.load(Ordering::Relaxed) {
            &self.fallback_dependency
        } else {
            &self.dependency
        }
    }

    /// A request found the producer away (`reason`): notes the outage; switches to the
    /// fallback once it lasts `fallback_after`. Returns whether to try again: false
    /// once the outage outlasts the patience (the rest of the share then fails).
    fn away(&self, reason: &str) -> bool {
        if self.unreachable.load(Ordering::Relaxed) {
            return false;
        }
        let (lasted, new) = self.board.failed(self.in_use());
        if new {
            tracing::warn!(producer = %self.producer.name, %reason, patience_seconds = self.infrastructure_patience.as_secs(), "producer unreachable or its answer lost; retrying under the same idempotency keys");
        }
        if lasted >= self.fallback_after && !self.via_fallback.load(Ordering::Relaxed) {
            if let Some(fallback) = &self.fallback_url {
                if !self.via_fallback.swap(true, Ordering::Relaxed) {
                    tracing::warn!(producer = %self.producer.name, %fallback, seconds = lasted.as_secs(), "producer unreachable; sending the rest of its share through the fallback");
                    self.board.answered(&self.dependency);
                }
                return true;
            }
        }
        if lasted >= self.infrastructure_patience {
            if !self.unreachable.swap(true, Ordering::Relaxed) {
                tracing::warn!(producer = %self.producer.name, %reason, seconds = lasted.as_secs(), "producer unreachable for longer than the patience; failing the rest of its share without sending");
            }
            return false;
        }
        true
    }
}

/// The idempotency key of the request carrying messages `first..first + count` of
/// `scenario` in run `run_id`: the same for every try of that request, different for
/// every other (characters a header cannot carry are percent-encoded; a scenario name
/// too long for the producer's 255 characters is replaced by a hash of it).
pub fn idempotency_key(run_id: &str, scenario: &str, first: u64, count: u64) -> String {
    let key = key_of_parts(run_id, scenario, first, count);
    if key.len() <= 255 {
        return key;
    }
    // FNV-1a: stable across runs and builds, unlike the std hasher.
    let hash = scenario.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    key_of_parts(run_id, &format!("#{hash:016x}"), first, count)
}

fn key_of_parts(run_id: &str, scenario: &str, first: u64, count: u64) -> String {
    let mut key = String::with_capacity(run_id.len() + scenario.len() + 24);
    for part in [run_id, scenario] {
        for c in part.chars() {
            if c.is_ascii_graphic() && c != '%' && c != '/' {
                key.push(c);
            } else {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    key.push_str(&format!("%{b:02X}"));
                }
            }
        }
        key.push('/');
    }
    key.push_str(&format!("{first}+{count}"));
    key
}

enum Verdict {
    /// 2xx, with the ids the answer named.
    Accepted(Vec<i64>),
    /// Nothing was stored; worth another try (after `Retry-After`, when given).
    Retry(String, Option<Duration>),
    /// Nothing was stored; another try would fail the same way.
    Refused(String),
    /// No connection could be made (refused, timed out): nothing was stored.
    Unreachable(String),
    /// Maybe stored, maybe not.
    Uncertain(String),
}

fn transport_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else if e.is_body() || e.is_decode() {
        "responseBody".into()
    } else {
        "transport".into()
    }
}

/// An id as a JSON number or a decimal string.
#[derive(Deserialize)]
#[serde(untagged)]
enum AnyId {
    Number(i64),
    Text(String),
}

impl AnyId {
    fn value(&self) -> Option<i64> {
        match self {
            AnyId::Number(n) => Some(*n),
            AnyId::Text(s) => s.parse().ok(),
        }
    }
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    id: Option<AnyId>,
    #[serde(default)]
    ids: Vec<AnyId>,
}

/// The ids a producer's 2xx answer names: `{"id": n}` for one message,
/// `{"ids": [..]}` for a batch (other fields ignored).
pub fn parse_ids(body: &[u8]) -> Vec<i64> {
    let Ok(answer) = serde_json::from_slice::<Answer>(body) else {
        return Vec::new();
    };
    let mut ids: Vec<i64> = answer.ids.iter().filter_map(AnyId::value).collect();
    if let Some(id) = answer.id.as_ref().and_then(AnyId::value) {
        ids.push(id);
    }
    ids
}

/// The wait between tries when the producer did not say: 400 ms, doubling to 3.2 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64 << attempt.clamp(1, 4))
}

/// A `Retry-After` in seconds, at most 30 s.
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let seconds: u64 = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds.min(30)))
}
