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

use super::discover::Producer;
use super::ids::IdCollector;
use super::measure::{Latencies, ProducerOutcome, ScenarioOutcome, StagePlan, Tally};
use super::outage::{self, Board};
use outbox_core::ledger::IdSet;

pub(crate) mod body;
pub mod enqueue;
mod pacing;
mod request;

pub use body::{batch_body, single_body};
pub use request::{idempotency_key, parse_ids};

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
    /// Distinct keys: message `i` of a scenario gets key `key-<key_first + i mod keys>`.
    pub keys: u64,
    /// The first key of this runner's block (0 for a run's only runner).
    pub key_first: u64,
    /// Which runner sends, of how many: in a run with several, every message carries
    /// [`crate::segment::RUNNER_HEADER`] and the idempotency keys the runner's own scope.
    pub segment: crate::segment::Segment,
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
    /// For a scenario `via: enqueue`: the database whose SQL contract the runner calls
    /// instead of the producers (`concurrency` is then its sessions).
    pub enqueue_url: Option<String>,
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

/// Sends a scenario; returns when every producer (or, `via: enqueue`, every database
/// session) is done with its share.
pub async fn send_scenario(
    http: &reqwest::Client,
    producers: &[Producer],
    shape: &MessageShape,
    send: &ScenarioSend,
    counters: Arc<Counters>,
    board: &Board,
) -> Sent {
    if let Some(url) = &send.enqueue_url {
        return enqueue::send_scenario(url, shape, send, counters).await;
    }
    let started = Instant::now();
    let tasks = spawn_producer_jobs(http, producers, shape, send, counters, board);
    let (outcomes, ids, uncertain) = join_producer_jobs(tasks, producers, send, started).await;
    sent(send, outcomes, ids.finish(), uncertain, started)
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

    /// Messages of `share` that no worker reported (one crashed): failures of unknown
    /// fate.
    fn fail_unreported(&mut self, share: u64) {
        let unreported = share.saturating_sub(self.tally.accepted + self.tally.failed);
        if unreported > 0 {
            self.tally.failed(unreported, "runnerPanic", None);
            self.uncertain += unreported;
        }
    }
}

/// What sending `send` produced, from what each of its producers (or the database)
/// did since `started`.
fn sent(
    send: &ScenarioSend,
    producers: Vec<ProducerOutcome>,
    ids: IdSet,
    uncertain: u64,
    started: Instant,
) -> Sent {
    Sent {
        outcome: ScenarioOutcome {
            name: send.name.clone(),
            batching: send.batching,
            messages: send.messages,
            already_accepted: send.already_accepted,
            producers,
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
        ids,
        uncertain,
    }
}

impl ProducerJob {
    /// Sends the share as fast as it goes: `concurrency` workers, each taking the next
    /// request when its last is answered (an arrival-rate share is paced instead).
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
        let mut done = WorkerDone::default();
        for handle in handles {
            match handle.await {
                Ok(worker) => done.merge(worker),
                Err(e) => {
                    tracing::error!(producer = %job.producer.name, error = %e, "request worker failed")
                }
            }
        }
        done.fail_unreported(job.share);
        ProducerDone {
            outcome: ProducerOutcome {
                producer: job.producer.name.clone(),
                messages: job.share,
                tally: done.tally,
                duration: started.elapsed(),
                stages: Vec::new(),
            },
            ids: done.ids.finish(),
            uncertain: done.uncertain,
        }
    }
}

#[cfg(test)]
#[path = "generator_tests.rs"]
mod tests;
