//! Samples a run into its time series (`series`) every interval while it goes: the
//! scenario being sent (from its live counters), the workers' `/metrics` (CPU,
//! resident memory, each consumer's acknowledgements and lag) and the outbox backlog.
//!
//! Turning two readings into a point is pure ([`point`]), so it is unit-tested; the
//! task around it only reads.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cpu_accounting::{Kind, Source};
use super::generator::Counters;
use super::series::{IntervalLatency, Point, Series, WorkerPoint};
use super::CpuPlan;

/// How long one worker's `/metrics` may take to answer.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the worker pods are listed again in a Job.
const LIST_EVERY: u32 = 10;
/// A scenario still being sent is first read this long after it started, at the
/// earliest: a tick (or the previous scenario's end) right after the start rated the
/// ramp's first 50 arrivals a second as 474 per second in CI.
const FIRST_WINDOW: Duration = Duration::from_millis(250);

/// The scenario being sent, set by the sender and read by the sampler. Its end wakes
/// the sampler at once, so a scenario shorter than the interval still gets its point,
/// with its final counters; its start is read at the next tick, and never sooner than
/// [`FIRST_WINDOW`] after it (a point a few milliseconds after the start would rate two
/// arrivals over 5 ms as 400 per second).
#[derive(Default)]
pub struct Live {
    state: Mutex<LiveState>,
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct LiveState {
    /// The scenarios being sent (several when sent together) and their counters.
    current: Vec<(String, Arc<Counters>)>,
    /// When they started.
    since: Option<Instant>,
    /// They are sent: they are read once more, then forgotten.
    finished: bool,
}

impl Live {
    /// `scenarios` are being sent, each with its counters.
    pub fn sending(&self, scenarios: Vec<(String, Arc<Counters>)>) {
        if let Ok(mut live) = self.state.lock() {
            *live = LiveState {
                current: scenarios,
                since: Some(Instant::now()),
                finished: false,
            };
        }
    }

    /// The scenario is sent.
    pub fn idle(&self) {
        if let Ok(mut live) = self.state.lock() {
            live.finished = true;
        }
        self.changed.notify_one();
    }

    /// How long to wait before reading, so that a scenario still being sent is not
    /// rated over the first moments of its life ([`FIRST_WINDOW`]).
    fn settle(&self) -> Duration {
        let Ok(live) = self.state.lock() else {
            return Duration::ZERO;
        };
        match live.since {
            Some(since) if !live.finished && !live.current.is_empty() => {
                FIRST_WINDOW.saturating_sub(since.elapsed())
            }
            _ => Duration::ZERO,
        }
    }

    /// The scenarios to read now (finished ones for the last time), and when they
    /// started.
    fn take(&self) -> (Vec<(String, Arc<Counters>)>, Option<Instant>) {
        let Ok(mut live) = self.state.lock() else {
            return (Vec::new(), None);
        };
        let current = (live.current.clone(), live.since);
        if live.finished {
            live.current.clear();
        }
        current
    }
}

/// What one worker's `/metrics` said.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerReading {
    /// Seconds since the run started when its answer came (its rates are over the
    /// time between two of its own answers: one slow answer must not squeeze another
    /// worker's interval).
    pub at: f64,
    /// `producer` or `consumer <group>`.
    pub component: String,
    /// The consumer's group, if a consumer.
    pub group: Option<String>,
    /// CPU seconds of the process.
    pub cpu_seconds: Option<f64>,
    /// Resident memory, bytes.
    pub resident_bytes: Option<f64>,
    /// Messages acknowledged since the process started (consumers).
    pub acknowledged: Option<f64>,
    /// Messages in its partitions not yet consumed (consumers).
    pub lag: Option<f64>,
    /// Messages its relay published since the process started (producers).
    pub relayed: Option<f64>,
}

/// Everything read at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    /// Seconds since the run started.
    pub t: f64,
    /// The scenario being sent, if any.
    pub scenario: Option<String>,
    /// Its counters: accepted, failed, missed, arrived.
    pub counts: [u64; 4],
    /// When it started, on the same clock as `t`.
    pub scenario_since: Option<f64>,
    /// Latency of the requests answered since the last reading.
    pub latency: Option<IntervalLatency>,
    /// Each worker by name.
    pub workers: BTreeMap<String, WorkerReading>,
    /// Outbox rows not yet relayed.
    pub backlog: Option<i64>,
}

/// The point between readings `before` and `now` (pure): rates over the interval,
/// levels at `now`. Counters of a scenario that changed since start from zero, and
/// count over the time since it started (shorter than the interval when it started
/// between the two readings); a worker seen first now, or whose counters went back (it
/// restarted), adds no rate.
pub fn point(before: &Reading, now: &Reading) -> Point {
    let dt = (now.t - before.t).max(1e-3);
    let same_scenario = before.scenario.is_some() && before.scenario == now.scenario;
    let prior = |i: usize| if same_scenario { before.counts[i] } else { 0 };
    let counted_over = match now.scenario_since {
        Some(since) if !same_scenario => (now.t - since).max(1e-3),
        _ => dt,
    };
    let rate = |i: usize| round(now.counts[i].saturating_sub(prior(i)) as f64 / counted_over);
    let mut acknowledged: BTreeMap<String, f64> = BTreeMap::new();
    let mut relayed: Option<f64> = None;
    let mut lag: BTreeMap<String, i64> = BTreeMap::new();
    let mut workers = BTreeMap::new();
    for (name, w) in &now.workers {
        let was = before.workers.get(name);
        // Growth per second between this worker's two answers.
        let delta = |f: fn(&WorkerReading) -> Option<f64>| {
            let was = was?;
            let (b, n) = (f(was)?, f(w)?);
            (n >= b).then(|| (n - b) / (w.at - was.at).max(1e-3))
        };
        if let Some(d) = delta(|r| r.relayed) {
            *relayed.get_or_insert(0.0) += d;
        }
        if let Some(group) = &w.group {
            if let Some(d) = delta(|r| r.acknowledged) {
                *acknowledged.entry(group.clone()).or_default() += d;
            }
            if let Some(l) = w.lag {
                *lag.entry(group.clone()).or_default() += l as i64;
            }
        }
        workers.insert(
            name.clone(),
            WorkerPoint {
                component: w.component.clone(),
                resident_bytes: w.resident_bytes,
                cpu_cores: delta(|r| r.cpu_seconds).map(round),
            },
        );
    }
    Point {
        t: round(now.t),
        scenario: now.scenario.clone(),
        // Only arrival-rate scenarios count arrivals.
        offered_per_second: (now.counts[3] > 0 && now.scenario.is_some()).then(|| rate(3)),
        accepted_per_second: rate(0),
        failed_per_second: rate(1),
        missed_per_second: rate(2),
        relayed_per_second: relayed.map(round),
        request_latency_ms: now.latency.clone(),
        acknowledged_per_second: acknowledged
            .into_iter()
            .map(|(g, v)| (g, round(v)))
            .collect(),
        backlog: now.backlog,
        consumer_lag: lag,
        workers,
    }
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// A worker's metrics text read into a [`WorkerReading`].
pub fn read_worker(kind: &Kind, text: &str) -> WorkerReading {
    let sum = |metric: &str| {
        let found = outbox_core::cpu::samples(text, metric);
        (!found.is_empty()).then(|| found.iter().map(|(_, v)| v).sum())
    };
    let (component, group) = match kind {
        Kind::Producer => ("producer".to_string(), None),
        Kind::Consumer(g) => (format!("consumer {g}"), Some(g.clone())),
        Kind::External(c) => (c.clone(), None),
    };
    let consumer = group.is_some();
    WorkerReading {
        at: 0.0,
        component,
        group,
        cpu_seconds: sum("outbox_cpu_seconds_total").or_else(|| sum("process_cpu_seconds_total")),
        resident_bytes: sum("process_resident_memory_bytes"),
        acknowledged: consumer
            .then(|| sum("outbox_consumer_acknowledged_total"))
            .flatten(),
        lag: consumer.then(|| sum("outbox_consumer_lag")).flatten(),
        relayed: matches!(kind, Kind::Producer)
            .then(|| sum("outbox_relay_published_total"))
            .flatten(),
    }
}

/// The running sampler (stopped when dropped).
pub struct Sampler {
    task: Option<tokio::task::JoinHandle<Series>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for Sampler {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Sampler {
    /// Starts sampling every `interval`: the `live` scenario, the workers of `cpu`
    /// (its producer and consumer sources, or in a Job the pods listed), and the
    /// backlog in the database at `database_url`.
    pub fn start(
        http: reqwest::Client,
        cpu: CpuPlan,
        database_url: String,
        interval: Duration,
        live: Arc<Live>,
    ) -> Sampler {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut series = Series {
                interval_seconds: interval.as_secs_f64(),
                ..Series::default()
            };
            let mut db: Option<tokio_postgres::Client> = None;
            let mut sources = Vec::new();
            let mut before: Option<Reading> = None;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n: u32 = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = live.changed.notified() => {}
                    _ = stopped.changed() => break,
                }
                // The first reading is the baseline, taken at once: held back, it could
                // be a short first scenario's final one, and no point would carry it.
                if before.is_some() {
                    tokio::time::sleep(live.settle()).await;
                }
                if n.is_multiple_of(LIST_EVERY) {
                    sources = worker_sources(&cpu).await;
                }
                n = n.wrapping_add(1);
                let reading = read(&http, &sources, &mut db, &database_url, &live, started).await;
                if let Some(b) = &before {
                    series.points.push(point(b, &reading));
                }
                before = Some(reading);
            }
            series
        });
        Sampler {
            task: Some(task),
            stop,
        }
    }

    /// Stops sampling and returns the series.
    pub async fn finish(mut self) -> Series {
        let _ = self.stop.send(true);
        match self.task.take() {
            Some(task) => task.await.unwrap_or_default(),
            None => Series::default(),
        }
    }
}

async fn worker_sources(cpu: &CpuPlan) -> Vec<Source> {
    let mut sources: Vec<Source> = cpu
        .sources
        .iter()
        .filter(|s| !matches!(s.kind, Kind::External(_)))
        .cloned()
        .collect();
    if let Some((pods, system)) = &cpu.worker_pods {
        match super::cpu_accounting::worker_sources(pods, system).await {
            Ok(found) => sources.extend(found),
            Err(e) => {
                tracing::debug!(error = %e, "could not list the system's pods for the time series")
            }
        }
    }
    sources
}

async fn read(
    http: &reqwest::Client,
    sources: &[Source],
    db: &mut Option<tokio_postgres::Client>,
    database_url: &str,
    live: &Live,
    started: Instant,
) -> Reading {
    let answers = futures::future::join_all(sources.iter().map(|s| async move {
        let response = http.get(&s.url).timeout(READ_TIMEOUT).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let text = response.text().await.ok()?;
        Some((text, started.elapsed().as_secs_f64()))
    }))
    .await;
    let workers = sources
        .iter()
        .zip(answers)
        .filter_map(|(s, answer)| {
            let (text, at) = answer?;
            Some((
                s.instance.clone(),
                WorkerReading {
                    at,
                    ..read_worker(&s.kind, &text)
                },
            ))
        })
        .collect();
    let backlog = backlog(db, database_url).await;
    // Scenarios sent together are read as one: their names joined, their counts added.
    let (current, since) = live.take();
    let mut counts = [0u64; 4];
    let mut latencies = super::measure::Latencies::default();
    for (_, c) in &current {
        for (sum, counter) in counts
            .iter_mut()
            .zip([&c.accepted, &c.failed, &c.missed, &c.arrived])
        {
            *sum += counter.load(Ordering::Relaxed);
        }
        latencies.merge(&c.take_latency());
    }
    let scenario = (!current.is_empty()).then(|| {
        current
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(" + ")
    });
    let latency = latencies.percentiles().map(|p| IntervalLatency {
        count: latencies.count(),
        p50: p.p50,
        p95: p.p95,
        p99: p.p99,
        max: p.max,
    });
    Reading {
        t: started.elapsed().as_secs_f64(),
        scenario,
        counts,
        scenario_since: since.map(|s| s.saturating_duration_since(started).as_secs_f64()),
        latency,
        workers,
        backlog,
    }
}

/// The outbox backlog (`outbox_backlog.pending`), reconnecting when needed; `None`
/// while the database does not answer.
async fn backlog(db: &mut Option<tokio_postgres::Client>, database_url: &str) -> Option<i64> {
    if db.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
        *db = outbox_core::db::connect(database_url).await.ok();
    }
    let client = db.as_ref()?;
    let row = tokio::time::timeout(
        READ_TIMEOUT,
        client.query_one("SELECT pending FROM outbox_backlog", &[]),
    )
    .await
    .ok()?
    .ok()?;
    row.try_get::<_, i64>(0).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(at: f64, group: &str, cpu: f64, acknowledged: f64, lag: f64) -> WorkerReading {
        WorkerReading {
            at,
            component: format!("consumer {group}"),
            group: Some(group.into()),
            cpu_seconds: Some(cpu),
            resident_bytes: Some(50e6),
            acknowledged: Some(acknowledged),
            lag: Some(lag),
            relayed: None,
        }
    }

    fn reading(t: f64, scenario: Option<&str>, counts: [u64; 4]) -> Reading {
        Reading {
            t,
            scenario: scenario.map(str::to_string),
            counts,
            ..Reading::default()
        }
    }

    #[test]
    fn rates_are_the_counters_growth_over_the_interval() {
        let mut before = reading(10.0, Some("steady"), [1000, 10, 5, 1015]);
        let mut now = reading(12.0, Some("steady"), [1400, 10, 25, 1435]);
        before
            .workers
            .insert("c-1".into(), consumer(10.0, "a", 3.0, 900.0, 0.0));
        before
            .workers
            .insert("c-2".into(), consumer(9.0, "a", 3.0, 100.0, 0.0));
        now.workers
            .insert("c-1".into(), consumer(12.0, "a", 4.0, 1300.0, 40.0));
        now.workers
            .insert("c-2".into(), consumer(11.0, "a", 3.5, 300.0, 2.0));
        now.workers
            .insert("c-3".into(), consumer(12.0, "b", 1.0, 5.0, 7.0));
        let producer = |at: f64, relayed: f64| WorkerReading {
            at,
            component: "producer".into(),
            relayed: Some(relayed),
            ..WorkerReading::default()
        };
        before.workers.insert("p-0".into(), producer(10.0, 5000.0));
        now.workers.insert("p-0".into(), producer(12.0, 6000.0));
        before.workers.insert("p-1".into(), producer(10.0, 0.0));
        now.workers.insert("p-1".into(), producer(12.0, 0.0));
        now.backlog = Some(120);
        let p = point(&before, &now);
        assert_eq!(p.accepted_per_second, 200.0);
        assert_eq!(p.missed_per_second, 10.0);
        assert_eq!(p.offered_per_second, Some(210.0));
        // c-1: 400 in its 2 s; c-2: 200 between its answers 2 s apart.
        assert_eq!(p.acknowledged_per_second["a"], 300.0);
        assert!(
            !p.acknowledged_per_second.contains_key("b"),
            "a member seen first now has no rate yet"
        );
        assert_eq!(p.consumer_lag["a"], 42);
        assert_eq!(p.consumer_lag["b"], 7);
        assert_eq!(p.workers["c-1"].cpu_cores, Some(0.5));
        assert_eq!(p.workers["c-3"].cpu_cores, None);
        assert_eq!(p.backlog, Some(120));
        assert_eq!(
            p.relayed_per_second,
            Some(500.0),
            "the relays' publishing over 2 s"
        );
    }

    #[test]
    fn a_worker_answering_late_gets_its_own_interval_not_a_spike() {
        // The last reading took 2 s: c-1 answered at its start, the reading ended at
        // 137.7 s, and the next one came 0.1 s later. c-1 grew 1,000 in the 2.1 s
        // between its own answers, not in 0.1 s.
        let mut before = reading(137.7, None, [0; 4]);
        let mut now = reading(137.8, None, [0; 4]);
        before
            .workers
            .insert("c-1".into(), consumer(135.7, "a", 10.0, 5000.0, 0.0));
        now.workers
            .insert("c-1".into(), consumer(137.8, "a", 10.21, 6000.0, 0.0));
        let p = point(&before, &now);
        assert_eq!(p.acknowledged_per_second["a"], 476.19);
        assert_eq!(p.workers["c-1"].cpu_cores, Some(0.1));
    }

    #[test]
    fn a_new_scenario_counts_from_zero_and_a_restarted_worker_adds_no_rate() {
        let mut before = reading(10.0, Some("batch"), [5000, 0, 0, 0]);
        let mut now = reading(11.0, Some("immediate"), [30, 0, 0, 0]);
        before
            .workers
            .insert("c-1".into(), consumer(10.0, "a", 30.0, 9000.0, 0.0));
        now.workers
            .insert("c-1".into(), consumer(11.0, "a", 0.2, 10.0, 0.0));
        let p = point(&before, &now);
        assert_eq!(p.accepted_per_second, 30.0);
        assert_eq!(p.offered_per_second, None, "not an arrival-rate scenario");
        assert!(p.acknowledged_per_second.is_empty());
        assert_eq!(p.workers["c-1"].cpu_cores, None);
    }

    #[test]
    fn a_scenario_wakes_the_sampler_when_it_ends_not_when_it_starts() {
        use futures::FutureExt;
        let live = Live::default();
        live.sending(vec![("ramp".into(), Arc::default())]);
        assert!(live.changed.notified().now_or_never().is_none());
        live.idle();
        assert!(live.changed.notified().now_or_never().is_some());
        let (read, since) = live.take();
        assert_eq!(read.len(), 1, "read once more after it ended");
        assert!(since.is_some());
        assert!(live.take().0.is_empty(), "then forgotten");
    }

    #[test]
    fn a_scenario_is_first_read_a_quarter_second_after_it_started_unless_it_ended() {
        let live = Live::default();
        assert_eq!(live.settle(), Duration::ZERO, "nothing being sent");
        live.sending(vec![("ramp".into(), Arc::default())]);
        let wait = live.settle();
        assert!(
            wait > FIRST_WINDOW - Duration::from_millis(100) && wait <= FIRST_WINDOW,
            "{wait:?}"
        );
        live.idle();
        assert_eq!(live.settle(), Duration::ZERO, "its end is read at once");
    }

    #[test]
    fn a_new_scenarios_first_point_counts_over_the_time_since_it_started() {
        // The last reading labelled with the old scenario was taken after the new one
        // started (its final reading came late): the new one's 150 arrivals of its
        // first 3 s are 50 per second, not 150 in the 0.2 s since that reading.
        let before = reading(10.0, Some("steady"), [1600, 0, 0, 1600]);
        let mut now = reading(10.2, Some("ramp"), [150, 0, 0, 150]);
        now.scenario_since = Some(7.2);
        let p = point(&before, &now);
        assert_eq!(p.offered_per_second, Some(50.0));
        assert_eq!(p.accepted_per_second, 50.0);
        // Once it is the same scenario, rates are over the interval again.
        let mut later = reading(11.2, Some("ramp"), [200, 0, 0, 200]);
        later.scenario_since = Some(7.2);
        assert_eq!(point(&now, &later).offered_per_second, Some(50.0));
    }

    #[test]
    fn metrics_text_gives_cpu_memory_acknowledgements_and_lag() {
        let text = "# HELP x\noutbox_cpu_seconds_total{part=\"main\"} 1.5\noutbox_cpu_seconds_total{part=\"other\"} 0.5\nprocess_resident_memory_bytes 1048576\noutbox_consumer_acknowledged_total 77\noutbox_consumer_lag 3\noutbox_relay_published_total 9\n";
        let r = read_worker(&Kind::Consumer("a".into()), text);
        assert_eq!(r.cpu_seconds, Some(2.0));
        assert_eq!(r.resident_bytes, Some(1048576.0));
        assert_eq!((r.acknowledged, r.lag), (Some(77.0), Some(3.0)));
        let p = read_worker(&Kind::Producer, text);
        assert_eq!((p.acknowledged, p.lag), (None, None));
        assert_eq!((p.relayed, r.relayed), (Some(9.0), None));
        assert_eq!(p.component, "producer");
    }
}
