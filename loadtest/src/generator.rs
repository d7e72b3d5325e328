//! Sending a scenario's messages to the producers: every producer in parallel, a few
//! requests in flight each, through the batch endpoint (batching scenarios) or one
//! message per request (immediate scenarios).
//!
//! Every request carries an `Idempotency-Key` made of the run, the scenario and the
//! message range, so a request whose fate is unknown (a timeout, a reset connection, a
//! 5xx, a producer killed mid-request) is simply sent again: a producer that had stored
//! it answers with the first request's ids and stores nothing twice. A producer that
//! cannot be reached is an outage on the runner's board: its requests are retried with
//! backoff for up to `--infrastructure-patience`; in a Job, after [`FALLBACK_AFTER`],
//! they go to the producer Service instead (the pod was deleted and replaced, say).
//! Only an outage longer than the patience fails the rest of that producer's share.
//!
//! An arrival-rate scenario (open model) starts its requests on schedule instead, one
//! message each, in stages of constant rate: an arrival due while all of a producer's
//! connections are busy is not sent and counts as missed, so the offered rate holds
//! when answers slow down.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::discover::Producer;
use super::ids::IdCollector;
use super::measure::{Latencies, ProducerOutcome, ScenarioOutcome, StagePlan, StageTally, Tally};
use super::outage::{self, Board};
use outbox_core::ledger::IdSet;

/// Header carrying the run id on every message the runner sends.
pub const RUN_HEADER: &str = "loadtest-run";
/// Header carrying the scenario name on every message the runner sends.
pub const SCENARIO_HEADER: &str = "loadtest-scenario";

/// How long a producer may be unreachable before its requests go to the fallback (the
/// producer Service), when there is one.
pub const FALLBACK_AFTER: Duration = Duration::from_secs(5);

pub use outbox_contract::http::IDEMPOTENCY_KEY;

/// Failure reason of the messages a producer was not sent because it had been
/// unreachable for longer than the patience.
pub const PRODUCER_UNREACHABLE: &str = "producerUnreachable";

/// What every message of the run shares.
#[derive(Debug, Clone)]
pub struct MessageShape {
    /// Kafka topic.
    pub topic: String,
    /// Run id, stamped into [`RUN_HEADER`].
    pub run_id: String,
    /// Payload bytes.
    pub message_size: usize,
    /// Distinct keys: message `i` of a scenario gets key `key-<i mod keys>`.
    pub keys: u64,
}

/// One scenario as it is about to be sent.
#[derive(Debug, Clone)]
pub struct ScenarioSend {
    /// Scenario name.
    pub name: String,
    /// Batch endpoint or one message per request.
    pub batching: bool,
    /// Messages the scenario asks for in total.
    pub messages: u64,
    /// Messages an earlier attempt of this run already got accepted.
    pub already_accepted: u64,
    /// This attempt's share per producer (same order as the producers).
    pub shares: Vec<u64>,
    /// Messages per request (1 for immediate scenarios).
    pub messages_per_request: usize,
    /// Requests in flight per producer.
    pub concurrency: usize,
    /// How long a request answered 429 or 503 is sent again.
    pub retry_patience: Duration,
    /// How long a producer may stay unreachable (or its answers lost) before the rest
    /// of its share fails.
    pub infrastructure_patience: Duration,
    /// Where requests go once a producer is unreachable for `fallback_after` (the
    /// producer Service in a Job), if anywhere.
    pub fallback_url: Option<String>,
    /// How long a producer may be unreachable before its requests go to the fallback
    /// ([`FALLBACK_AFTER`] in a run).
    pub fallback_after: Duration,
    /// An arrival-rate scenario's stages still to send (`concurrency` is then each
    /// producer's connections); empty for a scenario sent as fast as it goes.
    pub stages: Vec<StageSend>,
}

/// One arrival-rate stage as it is about to be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSend {
    /// Messages per second offered, over all producers.
    pub rate_per_second: i64,
    /// The stage's length in the spec.
    pub duration: Duration,
    /// The part of it still to send (shorter when an earlier attempt sent some).
    pub remaining: Duration,
    /// Arrivals still to send, per producer (same order as the producers).
    pub arrivals: Vec<u64>,
}

/// Live counters of a scenario, read by the progress reporter and the sampler.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages accepted so far in this attempt.
    pub accepted: AtomicU64,
    /// Messages failed so far in this attempt.
    pub failed: AtomicU64,
    /// Arrivals missed so far (every connection busy), arrival-rate scenarios only.
    pub missed: AtomicU64,
    /// Arrivals due so far (sent or missed), arrival-rate scenarios only.
    pub arrived: AtomicU64,
    /// Latency of the requests answered since the sampler last took it.
    latency: Mutex<Latencies>,
}

impl Counters {
    /// Accepted, failed and missed.
    pub fn done(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
            + self.failed.load(Ordering::Relaxed)
            + self.missed.load(Ordering::Relaxed)
    }

    /// A request was answered after `latency`.
    fn answered_after(&self, latency: Duration) {
        if let Ok(mut l) = self.latency.lock() {
            l.record(latency);
        }
    }

    /// The latency of the requests answered since the last call.
    pub fn take_latency(&self) -> Latencies {
        self.latency
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }
}

/// What sending a scenario produced.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Figures for status and report.
    pub outcome: ScenarioOutcome,
    /// Ids the producers assigned to the accepted messages.
    pub ids: IdSet,
    /// Messages whose fate stayed unknown (a producer away for longer than the
    /// patience mid-request, a 2xx without ids): they may be in the outbox.
    /// Verification then takes the set of expected ids from the outbox itself.
    pub uncertain: u64,
}

/// Sends a scenario; returns when every producer is done with its share.
pub async fn send_scenario(
    http: &reqwest::Client,
    producers: &[Producer],
    shape: &MessageShape,
    send: &ScenarioSend,
    counters: Arc<Counters>,
    board: &Board,
) -> Sent {
    let started = Instant::now();
    let tasks = spawn_producer_jobs(http, producers, shape, send, counters, board);
    let (outcomes, ids, uncertain) = join_producer_jobs(tasks, producers, send, started).await;
    Sent {
        outcome: ScenarioOutcome {
            name: send.name.clone(),
            batching: send.batching,
            messages: send.messages,
            already_accepted: send.already_accepted,
            producers: outcomes,
            duration: started.elapsed(),
            stages: send
                .stages
                .iter()
                .map(|s| StagePlan {
                    rate_per_second: s.rate_per_second,
                    duration: s.duration,
                    remaining: s.remaining,
                })
                .collect(),
        },
        ids: ids.finish(),
        uncertain,
    }
}

/// A task per producer sending its share of the scenario, in the producers' order.
fn spawn_producer_jobs(
    http: &reqwest::Client,
    producers: &[Producer],
    shape: &MessageShape,
    send: &ScenarioSend,
    counters: Arc<Counters>,
    board: &Board,
) -> Vec<tokio::task::JoinHandle<ProducerDone>> {
    let shape = Arc::new(shape.clone());
    let mut tasks = Vec::with_capacity(producers.len());
    // Message indexes continue after the earlier attempt's, producer after producer.
    let mut first_index = send.already_accepted;
    for (producer, &share) in producers.iter().zip(&send.shares) {
        let job = ProducerJob {
            http: http.clone(),
            producer: producer.clone(),
            shape: shape.clone(),
            scenario: send.name.clone(),
            batching: send.batching,
            first_index,
            share,
            messages_per_request: if send.batching {
                send.messages_per_request.max(1)
            } else {
                1
            },
            concurrency: send.concurrency.max(1),
            retry_patience: send.retry_patience,
            infrastructure_patience: send.infrastructure_patience,
            fallback_url: send.fallback_url.clone(),
            fallback_after: send.fallback_after,
            dependency: outage::producer(&producer.name),
            fallback_dependency: format!("{} (fallback)", outage::producer(&producer.name)),
            board: board.clone(),
            counters: counters.clone(),
            unreachable: AtomicBool::new(false),
            via_fallback: AtomicBool::new(false),
            stages: send
                .stages
                .iter()
                .map(|s| {
                    (
                        s.arrivals.get(tasks.len()).copied().unwrap_or(0),
                        s.remaining,
                    )
                })
                .collect(),
        };
        first_index += share;
        tasks.push(tokio::spawn(job.run()));
    }
    tasks
}

/// Waits for every producer's task: their outcomes, the ids they collected and the
/// messages of unknown fate. A task that panicked fails its whole share, as uncertain.
async fn join_producer_jobs(
    tasks: Vec<tokio::task::JoinHandle<ProducerDone>>,
    producers: &[Producer],
    send: &ScenarioSend,
    started: Instant,
) -> (Vec<ProducerOutcome>, IdCollector, u64) {
    let mut outcomes = Vec::with_capacity(tasks.len());
    let mut ids = IdCollector::default();
    let mut uncertain = 0;
    for (task, (producer, &share)) in tasks.into_iter().zip(producers.iter().zip(&send.shares)) {
        match task.await {
            Ok(done) => {
                ids.extend(&done.ids);
                uncertain += done.uncertain;
                outcomes.push(done.outcome);
            }
            Err(e) => {
                // A panicked sender: its whole share counts as failed and uncertain.
                tracing::error!(producer = %producer.name, error = %e, "sender task failed");
                let mut tally = Tally::default();
                tally.failed(share, "runnerPanic", None);
                uncertain += share;
                outcomes.push(ProducerOutcome {
                    producer: producer.name.clone(),
                    messages: share,
                    tally,
                    duration: started.elapsed(),
                    stages: Vec::new(),
                });
            }
        }
    }
    (outcomes, ids, uncertain)
}

struct ProducerJob {
    http: reqwest::Client,
    producer: Producer,
    shape: Arc<MessageShape>,
    scenario: String,
    batching: bool,
    first_index: u64,
    share: u64,
    messages_per_request: usize,
    concurrency: usize,
    retry_patience: Duration,
    infrastructure_patience: Duration,
    fallback_url: Option<String>,
    fallback_after: Duration,
    /// The producer's name on the board.
    dependency: String,
    /// Its fallback's name on the board.
    fallback_dependency: String,
    board: Board,
    counters: Arc<Counters>,
    /// Set once the producer was unreachable for longer than the patience: the rest of
    /// its share is then failed without sending.
    unreachable: AtomicBool,
    /// Set once the producer was unreachable for `fallback_after` and there is a
    /// fallback: the rest of its share goes there.
    via_fallback: AtomicBool,
    /// Arrival-rate stages: this producer's arrivals and the time they spread over.
    stages: Vec<(u64, Duration)>,
}

struct ProducerDone {
    outcome: ProducerOutcome,
    ids: IdSet,
    uncertain: u64,
}

#[derive(Default)]
struct WorkerDone {
    tally: Tally,
    ids: IdCollector,
    uncertain: u64,
}

impl WorkerDone {
    fn merge(&mut self, other: WorkerDone) {
        self.tally.merge(&other.tally);
        self.ids.extend(&other.ids.finish());
        self.uncertain += other.uncertain;
    }
}

impl ProducerJob {
    async fn run(self) -> ProducerDone {
        let started = Instant::now();
        let job = Arc::new(self);
        if !job.stages.is_empty() {
            return job.run_paced(started).await;
        }
        let next_request = Arc::new(AtomicU64::new(0));
        let requests = job.share.div_ceil(job.messages_per_request as u64);
        let workers = (job.concurrency as u64).min(requests).max(1);
        let mut handles = Vec::with_capacity(workers as usize);
        for _ in 0..workers {
            let job = job.clone();
            let next_request = next_request.clone();
            handles.push(tokio::spawn(async move {
                let mut done = WorkerDone {
                    tally: Tally::default(),
                    ids: IdCollector::default(),
                    uncertain: 0,
                };
                loop {
                    let request = next_request.fetch_add(1, Ordering::Relaxed);
                    if request >= requests {
                        break;
                    }
                    let offset = request * job.messages_per_request as u64;
                    let count = (job.share - offset).min(job.messages_per_request as u64);
                    if job.unreachable.load(Ordering::Relaxed) {
                        done.tally.failed(count, PRODUCER_UNREACHABLE, None);
                        job.counters.failed.fetch_add(count, Ordering::Relaxed);
                        continue;
                    }
                    job.request(job.first_index + offset, count, &mut done)
                        .await;
                }
                done
            }));
        }
        let mut tally = Tally::default();
        let mut ids = IdCollector::default();
        let mut uncertain = 0;
        for handle in handles {
            match handle.await {
                Ok(done) => {
                    tally.merge(&done.tally);
                    ids.extend(&done.ids.finish());
                    uncertain += done.uncertain;
                }
                Err(e) => {
                    tracing::error!(producer = %job.producer.name, error = %e, "request worker failed")
                }
            }
        }
        // Requests a crashed worker never reported are failures of unknown fate.
        let unreported = job.share.saturating_sub(tally.accepted + tally.failed);
        if unreported > 0 {
            tally.failed(unreported, "runnerPanic", None);
            uncertain += unreported;
        }
        ProducerDone {
            outcome: ProducerOutcome {
                producer: job.producer.name.clone(),
                messages: job.share,
                tally,
                duration: started.elapsed(),
                stages: Vec::new(),
            },
            ids: ids.finish(),
            uncertain,
        }
    }

    /// Sends an arrival-rate share: each stage's arrivals start evenly spread over the
    /// stage, one message per request, whether or not earlier requests were answered;
    /// at most `concurrency` are in flight, and an arrival due while all are busy is
    /// missed (counted, never sent late).
    async fn run_paced(self: Arc<Self>, started: Instant) -> ProducerDone {
        let connections = Arc::new(tokio::sync::Semaphore::new(self.concurrency.max(1)));
        let mut in_flight: tokio::task::JoinSet<(usize, WorkerDone, Duration)> =
            tokio::task::JoinSet::new();
        let mut stages: Vec<StageTally> = self
            .stages
            .iter()
            .map(|&(arrivals, _)| StageTally {
                offered: arrivals,
                ..StageTally::default()
            })
            .collect();
        let mut total = WorkerDone::default();
        let mut offset = 0u64;
        for (stage, &(arrivals, length)) in self.stages.iter().enumerate() {
            let stage_start = tokio::time::Instant::now();
            for k in 0..arrivals {
                let due = stage_start + length.mul_f64(k as f64 / arrivals as f64);
                tokio::time::sleep_until(due).await;
                let first = self.first_index + offset;
                offset += 1;
                self.counters.arrived.fetch_add(1, Ordering::Relaxed);
                if self.unreachable.load(Ordering::Relaxed) {
                    let mut done = WorkerDone::default();
                    done.tally.failed(1, PRODUCER_UNREACHABLE, None);
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    stages[stage].sent += 1;
                    self.collect_paced(Ok((stage, done, Duration::ZERO)), &mut stages, &mut total);
                    continue;
                }
                match connections.clone().try_acquire_owned() {
                    Ok(connection) => {
                        stages[stage].sent += 1;
                        let job = self.clone();
                        in_flight.spawn(async move {
                            let mut done = WorkerDone::default();
                            job.request(first, 1, &mut done).await;
                            drop(connection);
                            (stage, done, stage_start.elapsed())
                        });
                    }
                    Err(_) => {
                        stages[stage].missed += 1;
                        self.counters.missed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                while let Some(joined) = in_flight.try_join_next() {
                    self.collect_paced(joined, &mut stages, &mut total);
                }
            }
            tokio::time::sleep_until(stage_start + length).await;
            stages[stage].lasted = stages[stage].lasted.max(length);
        }
        while let Some(joined) = in_flight.join_next().await {
            self.collect_paced(joined, &mut stages, &mut total);
        }
        self.paced_done(started, stages, total)
    }

    /// Counts a finished request of an arrival-rate share into its stage and the total.
    /// A stage lasts until its last answer, when that comes after its end.
    fn collect_paced(
        &self,
        joined: Result<(usize, WorkerDone, Duration), tokio::task::JoinError>,
        stages: &mut [StageTally],
        total: &mut WorkerDone,
    ) {
        match joined {
            Ok((stage, done, since_stage_start)) => {
                if let Some(s) = stages.get_mut(stage) {
                    s.tally.merge(&done.tally);
                    s.lasted = s.lasted.max(since_stage_start);
                }
                total.merge(done);
            }
            Err(e) => {
                tracing::error!(producer = %self.producer.name, error = %e, "request task failed")
            }
        }
    }

    /// What an arrival-rate share came to, per stage and in total; requests a crashed
    /// task never reported count as failed, of unknown fate.
    fn paced_done(
        &self,
        started: Instant,
        stages: Vec<StageTally>,
        mut total: WorkerDone,
    ) -> ProducerDone {
        let missed: u64 = stages.iter().map(|s| s.missed).sum();
        // Requests a crashed task never reported are failures of unknown fate.
        let unreported = self
            .share
            .saturating_sub(total.tally.accepted + total.tally.failed + missed);
        if unreported > 0 {
            total.tally.failed(unreported, "runnerPanic", None);
            total.uncertain += unreported;
        }
        ProducerDone {
            outcome: ProducerOutcome {
                producer: self.producer.name.clone(),
                messages: self.share,
                tally: total.tally,
                duration: started.elapsed(),
                stages,
            },
            ids: total.ids.finish(),
            uncertain: total.uncertain,
        }
    }

    /// Sends messages `first..first + count` in one request (again, under the same
    /// idempotency key, while nothing or an unknown outcome came back) and counts the
    /// answer.
    async fn request(&self, first: u64, count: u64, done: &mut WorkerDone) {
        let (path, body) = self.body(first, count);
        let key = idempotency_key(&self.shape.run_id, &self.scenario, first, count);
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

/// The key of message `index`.
fn write_key(out: &mut Vec<u8>, index: u64, keys: u64) {
    use std::io::Write;
    let _ = write!(out, "\"key-{}\"", index % keys.max(1));
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
    write_key(out, index, shape.keys);
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
    let headers = serde_json::json!({ RUN_HEADER: shape.run_id, SCENARIO_HEADER: scenario });
    Prebuilt {
        topic: serde_json::Value::String(shape.topic.clone()).to_string(),
        headers: headers.to_string(),
    }
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

/// Body of `POST /api/messages/batch` for messages `first..first + count`.
pub fn batch_body(shape: &MessageShape, scenario: &str, first: u64, count: u64) -> Vec<u8> {
    let pre = prebuilt(shape, scenario);
    let per_message = shape.message_size + pre.topic.len() + pre.headers.len() + 64;
    let mut out = Vec::with_capacity(16 + per_message * count as usize);
    out.extend_from_slice(b"{\"messages\":[");
    for i in 0..count {
        if i > 0 {
            out.push(b',');
        }
        write_message(&mut out, &pre, first + i, shape);
    }
    out.extend_from_slice(b"]}");
    out
}

/// Body of `POST /api/messages/send` for message `index`.
pub fn single_body(shape: &MessageShape, scenario: &str, index: u64) -> Vec<u8> {
    let pre = prebuilt(shape, scenario);
    let mut out = Vec::with_capacity(shape.message_size + pre.headers.len() + 96);
    write_message(&mut out, &pre, index, shape);
    out
}

#[cfg(test)]
#[path = "generator_tests.rs"]
mod tests;
