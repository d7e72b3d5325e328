//! Sending every scenario: where an earlier attempt left off, the scenarios in the
//! groups they are sent in, the drain before a one-at-a-time scenario, and the
//! progress while the senders (`drive`) run.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use outbox_contract::crd::{CpuAccounting, LoadTestPhase, LoadTestStatus, Scenario, Via};

use super::cpu_accounting;
use super::database::OutboxDb;
use super::generator::{self, Counters, MessageShape, ScenarioSend};
use super::outage::Board;
use super::progress::{Bar, Display};
use super::shared_run::{SegmentReport, SharedRun};
use super::status::{StatusBook, COMPLETE, VERIFIED};
use super::{
    measure, sampler, scenario_latency, series, split, verdict, LoadTestArgs, LoadTestError, Plan,
    Result,
};
use outbox_core::ledger::IdSet;
use outbox_core::shutdown::{self, ShutdownSignal};

mod segments;
use segments::{send_segments, Together};

/// Requests in flight per producer for batching scenarios unless told otherwise.
const DEFAULT_BATCH_CONCURRENCY: usize = 2;
/// Requests in flight per producer for immediate scenarios unless told otherwise: one
/// at a time, so that the scenario measures how long a single message takes through
/// the pipeline. Sixteen per producer measured the queue of the saturated machine
/// instead: on 2 cores 2.5–3 × the messages per second at 2–4 × the latency
/// (docs/benchmarks.md, "Where the 2 cores go").
const DEFAULT_IMMEDIATE_CONCURRENCY: usize = 1;

/// Where an earlier attempt of the same run left off.
pub(super) struct ResumePoint {
    /// Whether this is a rerun of a run id.
    pub(super) resumed: bool,
    /// The run's messages already in the outbox, by scenario.
    pub(super) earlier: BTreeMap<String, IdSet>,
    /// Scenarios the status records as sent (in a shared run: this runner's segment
    /// records as sent).
    pub(super) finished: Vec<String>,
    /// In a shared run: what this runner's segment sent in earlier attempts.
    pub(super) segment: SegmentReport,
}

/// A rerun of the same run id: scenarios recorded in status are done; for the others
/// the outbox says what was already accepted.
pub(super) async fn resume_point(
    args: &LoadTestArgs,
    plan: &Plan,
    book: &StatusBook,
    db: &mut OutboxDb,
    shared: Option<&SharedRun>,
) -> Result<ResumePoint> {
    let segment = match shared {
        Some(run) => run
            .segments()
            .await?
            .remove(&plan.segment.index)
            .unwrap_or_default(),
        None => SegmentReport::default(),
    };
    let resumed =
        book.status().run_id.is_some() || args.run_id.is_some() || !segment.scenarios.is_empty();
    let runner = plan.segment.is_shared().then_some(plan.segment.index);
    let earlier = if resumed {
        let found = crate::with_db!(db, |c| verdict::run_ids_by_scenario(
            c,
            &plan.run_id,
            runner
        )
        .await);
        let total: u64 = found.values().map(IdSet::len).sum();
        tracing::info!(
            messages = total,
            "resuming run {}: found its earlier messages in the outbox",
            plan.run_id
        );
        found
    } else {
        BTreeMap::new()
    };
    let finished = if shared.is_some() {
        segment.scenarios.keys().cloned().collect()
    } else {
        book.status()
            .scenarios
            .iter()
            .map(|s| s.name.clone())
            .collect()
    };
    Ok(ResumePoint {
        resumed,
        earlier,
        finished,
        segment,
    })
}

/// What sending every scenario produced.
#[derive(Default)]
pub(super) struct SentAll {
    /// Ids of every accepted message of the run (earlier attempts' included).
    pub(super) expected: IdSet,
    /// Messages whose fate stayed unknown.
    pub(super) uncertain: u64,
    /// Scenarios whose own end-to-end latency is measured after verification: the
    /// scenario, the ledger before it was sent, and its ids.
    pub(super) latency_windows: Vec<(String, scenario_latency::Window, IdSet)>,
    /// Request latency histogram of each scenario sent one message per request.
    pub(super) histograms: BTreeMap<String, Vec<series::Bucket>>,
}

/// What sending reads: the settings, the plan, where an earlier attempt left off, the
/// HTTP client, the progress display and the sampler's view of the live scenario.
#[derive(Clone, Copy)]
pub(super) struct Sending<'a> {
    pub(super) args: &'a LoadTestArgs,
    pub(super) plan: &'a Plan,
    pub(super) resume: &'a ResumePoint,
    pub(super) http: &'a reqwest::Client,
    pub(super) display: &'a Display,
    pub(super) live: &'a sampler::Live,
}

/// Sends every scenario as its steps: mark the run Running → for each group of
/// scenarios sent together: the ones still to send (pure: `pending`) → the drain
/// before a one-at-a-time scenario (`latency_window`) → send with progress → the
/// results into the status (`record_sent`) → the attempt's throughput (pure).
pub(super) async fn send_all(
    sending: Sending<'_>,
    book: &mut StatusBook,
    db: &mut OutboxDb,
    shutdown: &mut ShutdownSignal,
    shared: Option<&mut SharedRun>,
) -> Result<SentAll> {
    let plan = sending.plan;
    if plan.segment.merges() {
        mark_running(plan, book).await?;
    }
    let (key_first, keys) = plan.segment.keys(plan.keys);
    let shape = MessageShape {
        topic: plan.topic.clone(),
        run_id: plan.run_id.clone(),
        message_size: plan.message_size,
        keys,
        key_first,
        segment: plan.segment,
    };
    if let Some(run) = shared {
        return send_segments(sending, &shape, book, db, shutdown, run).await;
    }
    let mut sent = SentAll::default();
    let mut attempt = Attempt::default();
    for group in together(&plan.scenarios) {
        let todo = pending(sending, &group, &mut sent.expected);
        if todo.is_empty() {
            continue;
        }
        let window = latency_window(db, plan, book, &todo, &mut sent, shutdown).await?;
        for send in &todo {
            tracing::info!(
                scenario = %send.name,
                messages = send.messages,
                already_accepted = send.already_accepted,
                shares = ?send.shares,
                batching = send.batching,
                concurrency = send.concurrency,
                together = todo.len(),
                "sending"
            );
        }
        let cpu = SendingCpu::open(plan, sending.http, &todo).await;
        let results = send_with_progress(
            sending.http,
            plan,
            &shape,
            &todo,
            book,
            sending.display,
            sending.live,
            shutdown,
            None,
        )
        .await?;
        let sending_cpu = cpu.close(plan, sending.http, &results).await;
        attempt.add(record_sent(
            book,
            &todo,
            (results, sending_cpu),
            window.as_ref(),
            &mut sent,
        ));
        book.write_now().await?;
    }
    attempt.into_status(book.status_mut());
    Ok(sent)
}

/// Marks the run Running (its start time kept from an earlier attempt).
async fn mark_running(plan: &Plan, book: &mut StatusBook) -> Result<()> {
    let status = book.status_mut();
    status.run_id = Some(plan.run_id.clone());
    if status.start_time.is_none() {
        status.start_time = Some(Time(Timestamp::now()));
    }
    status.message = Some(format!(
        "sending {} scenario(s) to {} producer(s)",
        plan.scenarios.len(),
        plan.producers.len()
    ));
    book.advance(LoadTestPhase::Running);
    book.set_condition(COMPLETE, false, "Running", "sending messages");
    book.set_condition(
        VERIFIED,
        false,
        "NotYetVerified",
        "verification starts when every scenario is sent",
    );
    book.write_now().await
}

/// How the scenarios of `group` are sent now (pure): the messages an earlier attempt
/// left in the outbox join `expected`; a scenario the status records as sent is kept,
/// not sent again.
fn pending(sending: Sending<'_>, group: &[&Scenario], expected: &mut IdSet) -> Vec<ScenarioSend> {
    let mut todo = Vec::with_capacity(group.len());
    for scenario in group {
        let before = sending
            .resume
            .earlier
            .get(&scenario.name)
            .cloned()
            .unwrap_or_default();
        *expected = expected.union(&before);
        if sending.resume.finished.contains(&scenario.name) {
            tracing::info!(scenario = %scenario.name, "scenario finished in an earlier attempt; keeping its result");
            continue;
        }
        todo.push(scenario_send(
            sending.args,
            sending.plan,
            scenario,
            before.len(),
        ));
    }
    todo
}

/// A scenario sent one message per request, alone, measures its own latency: the
/// backlog drains first, and its window opens. An earlier scenario's latency is read
/// before anything new lands in its ledger chunks: once every group acknowledged
/// everything sent so far.
async fn latency_window(
    db: &mut OutboxDb,
    plan: &Plan,
    book: &mut StatusBook,
    todo: &[ScenarioSend],
    sent: &mut SentAll,
    shutdown: &mut ShutdownSignal,
) -> Result<Option<scenario_latency::Window>> {
    let measures_own = measures_own_latency(todo, plan);
    let window = if measures_own || !sent.latency_windows.is_empty() {
        let names: Vec<&str> = todo.iter().map(|s| s.name.as_str()).collect();
        Some(drain_before(db, plan, book, &names.join(" + "), &sent.expected, shutdown).await?)
    } else {
        None
    };
    record_scenario_latency(db, book, &sent.latency_windows).await?;
    sent.latency_windows.clear();
    Ok(window.filter(|_| measures_own))
}

/// Whether `todo` is one scenario sent one message per request, with groups to
/// measure its latency in.
fn measures_own_latency(todo: &[ScenarioSend], plan: &Plan) -> bool {
    matches!(todo, [send] if !send.batching) && !plan.groups.is_empty()
}

/// What this attempt sent: its accepted messages over the longest sending time of
/// each group of scenarios.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Attempt {
    accepted: u64,
    seconds: f64,
}

impl Attempt {
    fn add(&mut self, group: Attempt) {
        self.accepted += group.accepted;
        self.seconds += group.seconds;
    }

    /// The accepted messages and the attempt's throughput into the status (pure); a
    /// resumed attempt that sent nothing keeps the earlier throughput.
    fn into_status(self, status: &mut LoadTestStatus) {
        status.accepted_messages = Some(status.scenarios.iter().map(|s| s.accepted).sum());
        if self.seconds > 0.0 {
            status.throughput = Some((self.accepted as f64 / self.seconds * 10.0).round() / 10.0);
        } else if status.throughput.is_none() {
            status.throughput = Some(0.0);
        }
    }
}

/// Each sent scenario's result into the status and what verification will expect
/// into `sent`; returns what the group added to the attempt.
fn record_sent(
    book: &mut StatusBook,
    todo: &[ScenarioSend],
    (results, sending_cpu): (Vec<generator::Sent>, Option<CpuAccounting>),
    window: Option<&scenario_latency::Window>,
    sent: &mut SentAll,
) -> Attempt {
    let mut group = Attempt::default();
    for (send, result) in todo.iter().zip(results) {
        if !send.batching {
            sent.histograms
                .insert(send.name.clone(), result.outcome.tally().latency.buckets());
        }
        sent.expected = sent.expected.union(&result.ids);
        sent.uncertain += result.uncertain;
        group.accepted += result.outcome.tally().accepted;
        group.seconds = group.seconds.max(result.outcome.duration.as_secs_f64());
        let mut scenario = result.outcome.result();
        scenario.sending_cpu = sending_cpu.clone();
        if let Some(window) = window {
            scenario.backlog_drained = Some(window.drained);
            sent.latency_windows
                .push((send.name.clone(), window.clone(), result.ids.clone()));
        }
        tracing::info!(
            scenario = %scenario.name,
            accepted = scenario.accepted,
            failed = scenario.failed,
            seconds = scenario.duration_seconds,
            throughput = scenario.throughput,
            "scenario sent"
        );
        let status = book.status_mut();
        status.scenarios.retain(|s| s.name != scenario.name);
        status.scenarios.push(scenario);
        status.accepted_messages = Some(status.scenarios.iter().map(|s| s.accepted).sum());
    }
    group
}

/// The CPU counters read before a scenario sent alone is sent (scenarios sent together
/// share the window, so none is theirs alone).
struct SendingCpu {
    before: Option<(Instant, cpu_accounting::Reading)>,
}

impl SendingCpu {
    async fn open(plan: &Plan, http: &reqwest::Client, todo: &[ScenarioSend]) -> SendingCpu {
        let before = match todo {
            [_] => Some((Instant::now(), plan.cpu.read(http).await)),
            _ => None,
        };
        SendingCpu { before }
    }

    /// Every component's CPU since `open`, per message the scenario stored meanwhile.
    async fn close(
        self,
        plan: &Plan,
        http: &reqwest::Client,
        results: &[generator::Sent],
    ) -> Option<CpuAccounting> {
        let (started, before) = self.before?;
        let after = plan.cpu.read(http).await;
        let stored = results.iter().map(|r| r.outcome.tally().accepted).sum();
        Some(cpu_accounting::account(
            &before,
            &after,
            started.elapsed(),
            stored,
        ))
    }
}

/// The scenarios in the groups they are sent in: each starts a group, unless it is
/// marked `withPrevious` (then it joins the group before it).
fn together(scenarios: &[Scenario]) -> Vec<Vec<&Scenario>> {
    let mut groups: Vec<Vec<&Scenario>> = Vec::new();
    for s in scenarios {
        match groups.last_mut() {
            Some(group) if s.with_previous => group.push(s),
            _ => groups.push(vec![s]),
        }
    }
    groups
}

/// Each one-at-a-time scenario's own end-to-end latency per group, into its result:
/// before the next scenario is sent, or after verification for the last one.
pub(super) async fn record_scenario_latency(
    db: &mut OutboxDb,
    book: &mut StatusBook,
    windows: &[(String, scenario_latency::Window, IdSet)],
) -> Result<()> {
    for (name, window, ids) in windows {
        let latency = scenario_latency::close(db, window, ids).await?;
        let scenarios = &mut book.status_mut().scenarios;
        if let Some(result) = scenarios.iter_mut().find(|s| &s.name == name) {
            result.end_to_end_latency = latency;
        }
    }
    Ok(())
}

/// Before `scenario` is sent one message at a time: waits until every group
/// acknowledged `earlier`, so that the scenario's latency is its own (see
/// `scenario_latency`).
async fn drain_before(
    db: &mut OutboxDb,
    plan: &Plan,
    book: &mut StatusBook,
    scenario: &str,
    earlier: &IdSet,
    shutdown: &mut ShutdownSignal,
) -> Result<scenario_latency::Window> {
    let message = format!(
        "waiting until every group acknowledged the {} messages sent so far before sending {scenario}, so that it measures its own latency",
        earlier.len()
    );
    tracing::info!(
        scenario,
        messages = earlier.len(),
        "draining the backlog before the scenario"
    );
    book.status_mut().message = Some(message);
    book.write_progress().await;
    let started = Instant::now();
    let window = scenario_latency::open(
        db,
        &plan.groups,
        earlier,
        plan.verification_timeout,
        shutdown,
    )
    .await?;
    if window.drained {
        tracing::info!(
            scenario,
            seconds = started.elapsed().as_secs_f64(),
            "backlog drained"
        );
    } else {
        tracing::warn!(
            scenario,
            seconds = started.elapsed().as_secs_f64(),
            "the backlog did not drain (no acknowledgement for {}s, or the verification timeout ran out); sending the scenario anyway, its latency includes the backlog",
            scenario_latency::DRAIN_STALL.as_secs()
        );
    }
    Ok(window)
}

/// How `scenario` is sent now, `already` of its messages being in the outbox.
fn scenario_send(
    args: &LoadTestArgs,
    plan: &Plan,
    scenario: &Scenario,
    already: u64,
) -> ScenarioSend {
    let scenario = &plan.segment.scenario(scenario);
    let messages = u64::try_from(scenario.offered_messages().max(0)).unwrap_or(0);
    let already = already.min(messages);
    let producers = plan.producers.len();
    let (concurrency, stages, shares) = match &scenario.arrival_rate {
        Some(rate) => {
            let stages = split::arrival_stages(&rate.stages, already, producers);
            let shares = (0..producers)
                .map(|p| stages.iter().map(|s| s.arrivals[p]).sum())
                .collect();
            let connections = usize::try_from(rate.connections.max(1)).unwrap_or(1);
            (connections.div_ceil(producers.max(1)), stages, shares)
        }
        None => {
            let concurrency = scenario
                .concurrency
                .and_then(|c| usize::try_from(c).ok())
                .or(args.concurrency)
                .unwrap_or(if scenario.batching {
                    DEFAULT_BATCH_CONCURRENCY
                } else {
                    DEFAULT_IMMEDIATE_CONCURRENCY
                });
            (
                concurrency,
                Vec::new(),
                split::split(messages - already, producers),
            )
        }
    };
    ScenarioSend {
        name: scenario.name.clone(),
        batching: scenario.batching,
        messages,
        already_accepted: already,
        shares,
        messages_per_request: args.messages_per_request,
        concurrency,
        retry_patience: args.retry_patience,
        infrastructure_patience: args.infrastructure_patience,
        fallback_url: plan.producer_fallback.clone(),
        fallback_after: generator::FALLBACK_AFTER,
        stages,
        enqueue_url: (scenario.via == Via::Enqueue).then(|| args.database_url.clone()),
    }
}

/// Sends one scenario while showing progress and writing it into the status.
#[allow(clippy::too_many_arguments)]
async fn send_with_progress(
    http: &reqwest::Client,
    plan: &Plan,
    shape: &MessageShape,
    sends: &[ScenarioSend],
    book: &mut StatusBook,
    display: &Display,
    live: &sampler::Live,
    shutdown: &mut ShutdownSignal,
    mut together: Option<Together<'_>>,
) -> Result<Vec<generator::Sent>> {
    let counters: Vec<Arc<Counters>> = sends.iter().map(|_| Arc::default()).collect();
    live.sending(
        sends
            .iter()
            .map(|s| s.name.clone())
            .zip(counters.iter().cloned())
            .collect(),
    );
    let mut bars: Vec<_> = sends
        .iter()
        .map(|s| display.bar(&s.name, s.messages))
        .collect();
    let accepted_before: i64 = book
        .status()
        .scenarios
        .iter()
        .filter(|s| !sends.iter().any(|send| send.name == s.name))
        .map(|s| s.accepted)
        .sum();
    let board = book.board().clone();
    let tasks = spawn_senders(http, plan, shape, sends, &counters, &board);
    tokio::pin!(tasks);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let joined = loop {
        tokio::select! {
            joined = &mut tasks => break joined,
            _ = tick.tick() => {
                // In a shared run: this runner's line, and the others' accepted
                // messages in runner 0's total.
                let base = together.as_ref().map_or(accepted_before, Together::base);
                let now = show_progress(sends, &counters, &mut bars, book, base).await;
                if let Some(t) = together.as_mut() {
                    t.run.progress(t.group, t.own_before + now, display.interval()).await;
                }
            }
            _ = shutdown::wait(shutdown) => return Err(LoadTestError::Interrupted),
        }
    };
    live.idle();
    finish_senders(sends, &counters, &mut bars, joined)
}

/// A task per scenario sending it (`generator::send_scenario`), counting into its
/// counters; all of them joined.
fn spawn_senders(
    http: &reqwest::Client,
    plan: &Plan,
    shape: &MessageShape,
    sends: &[ScenarioSend],
    counters: &[Arc<Counters>],
    board: &Board,
) -> futures::future::JoinAll<tokio::task::JoinHandle<generator::Sent>> {
    futures::future::join_all(sends.iter().zip(counters).map(|(send, c)| {
        let (http, producers, shape, send, c, board) = (
            http.clone(),
            plan.producers.clone(),
            shape.clone(),
            send.clone(),
            c.clone(),
            board.clone(),
        );
        tokio::spawn(async move {
            generator::send_scenario(&http, &producers, &shape, &send, c, &board).await
        })
    }))
}

/// Each scenario's progress so far on its bar, and all of them (with any outage) in
/// the status message, with the accepted messages.
async fn show_progress(
    sends: &[ScenarioSend],
    counters: &[Arc<Counters>],
    bars: &mut [Bar],
    book: &mut StatusBook,
    accepted_before: i64,
) -> u64 {
    let mut parts = Vec::new();
    let mut accepted_now = 0;
    for ((send, c), bar) in sends.iter().zip(counters).zip(bars) {
        let accepted = c.accepted.load(Ordering::Relaxed) + send.already_accepted;
        let failed = c.failed.load(Ordering::Relaxed);
        bar.set(
            send.already_accepted + c.done(),
            &format!("accepted {accepted} failed {failed}"),
        );
        parts.push(format!(
            "{}: {}/{} sent ({accepted} accepted, {failed} failed)",
            send.name,
            send.already_accepted + c.done(),
            send.messages,
        ));
        accepted_now += accepted;
    }
    let outage = book.reflect_outages();
    let status = book.status_mut();
    status.message = Some(format!(
        "{}{}",
        parts.join("; "),
        outage.map(|o| format!("; {o}")).unwrap_or_default()
    ));
    status.accepted_messages = Some(accepted_before + measure::to_i64(accepted_now));
    book.write_progress().await;
    accepted_now
}

/// Ends each scenario's bar with what its sender reports and returns the reports; a
/// sender that failed to finish is an error.
fn finish_senders(
    sends: &[ScenarioSend],
    counters: &[Arc<Counters>],
    bars: &mut [Bar],
    joined: Vec<std::result::Result<generator::Sent, tokio::task::JoinError>>,
) -> Result<Vec<generator::Sent>> {
    let mut sent = Vec::with_capacity(sends.len());
    for ((send, c), (bar, result)) in sends.iter().zip(counters).zip(bars.iter_mut().zip(joined)) {
        let result = result.map_err(|e| {
            LoadTestError::Settings(format!("the sender of scenario {} failed: {e}", send.name))
        })?;
        let to_send: u64 = send.shares.iter().sum();
        bar.finish(
            send.already_accepted + c.done(),
            &format!(
                "accepted {}, failed {} of {to_send} sent",
                result.outcome.accepted(),
                result.outcome.tally().failed
            ),
        );
        sent.push(result);
    }
    Ok(sent)
}

#[cfg(test)]
mod tests;
