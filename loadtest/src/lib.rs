//! The load-test runner (`outbox-worker loadtest`): drives every producer of an
//! OutboxSystem in parallel through the LoadTest's scenarios, verifies that every
//! consumer group acknowledged every accepted message, and writes the results into the
//! LoadTest's status, a JSON report, an HTML report and a summary table.
//!
//! A run is identified by its run id (the LoadTest's uid; a fresh UUID in local mode)
//! stamped into every message as the `loadtest-run` header, with the scenario in
//! `loadtest-scenario`. Verification is exact: the runner collects the ids the
//! producers assign to the accepted messages and asks the acknowledgement ledger, per
//! group, which of exactly those ids were acknowledged.
//!
//! Reruns do not double-count: a runner that finds its LoadTest Succeeded or Failed
//! does nothing; one that finds it Running or Verifying (its pod restarted) keeps the
//! scenarios already recorded in status, looks up in the outbox which messages of the
//! run were accepted for the others, counts those as accepted and sends only the
//! remainder. `--run-id` does the same outside Kubernetes.

pub mod args;
pub mod cpu_accounting;
pub mod database;
pub mod discover;
pub mod error;
pub mod generator;
pub mod ids;
pub mod judge;
pub mod measure;
pub mod outage;
mod outcome;
pub mod plan;
pub mod progress;
pub mod report;
pub mod sampler;
pub mod scenario_latency;
pub mod segment;
mod send;
pub mod series;
pub mod shared_run;
pub mod split;
pub mod status;
pub mod thresholds;
pub mod verdict;
mod verify;

use std::process::ExitCode;
use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use outbox_contract::crd::LoadTestPhase;
use tracing::Instrument;

pub use args::LoadTestArgs;
pub use error::{LoadTestError, Result};
pub use plan::{CpuPlan, Plan};

use database::OutboxDb;
use outbox_contract::crd::RunnerState;
use plan::{resolve, Prepared, Resolved};
use progress::Display;
use report::Report;
use send::{Sending, SentAll};
use shared_run::SharedRun;
use status::{StatusBook, COMPLETE};

use outbox_core::shutdown::ShutdownSignal;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The LoadTest had finished before this runner started: nothing was done.
    AlreadyFinished(LoadTestPhase),
    /// The run finished with this phase (Succeeded or Failed).
    Finished(LoadTestPhase),
    /// This runner of a shared run sent its segment of every scenario; runner 0
    /// verifies and writes the result.
    SegmentSent,
}

/// Entry point of the subcommand: runs, logs, and maps the outcome to an exit code
/// (0 succeeded or nothing to do; 2 the run failed, in local mode; 1 the runner failed).
/// With a LoadTest the result lives in its status, so a failed run still exits 0 and
/// the Job completes rather than being retried.
pub async fn main(args: LoadTestArgs, shutdown: ShutdownSignal) -> ExitCode {
    let with_status = args.name.is_some();
    match run(args, shutdown).await {
        Ok(Outcome::Finished(LoadTestPhase::Failed)) if !with_status => ExitCode::from(2),
        Ok(_) => ExitCode::SUCCESS,
        Err(LoadTestError::RunEnded(phase)) => {
            tracing::info!(
                ?phase,
                "the run ended while this runner waited; nothing left to do"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(
                reason = e.reason(),
                "load test runner failed: {}",
                outbox_core::error_chain(&e)
            );
            eprintln!("outbox-worker loadtest: {}", outbox_core::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Runs the load test described by `args`.
pub async fn run(args: LoadTestArgs, shutdown: ShutdownSignal) -> Result<Outcome> {
    let label = match (&args.namespace, &args.name) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        _ => "local".to_string(),
    };
    let span = tracing::info_span!("loadtest", loadtest = %label);
    run_inner(args, shutdown).instrument(span).await
}

async fn run_inner(args: LoadTestArgs, shutdown: ShutdownSignal) -> Result<Outcome> {
    let (plan, target, current) = match resolve(&args).await? {
        Resolved::Finished(phase) => return Ok(Outcome::AlreadyFinished(phase)),
        Resolved::Run(prepared) => {
            let Prepared {
                plan,
                target,
                current,
            } = *prepared;
            (plan, target, current)
        }
    };
    let mut shared = shared_run(&args, &plan, target.as_ref());
    // In a shared run only runner 0 writes the run's status; the others their lines.
    let target = target.filter(|_| plan.segment.merges());
    let mut book = StatusBook::new(
        target,
        current,
        args.progress_interval,
        outage::Board::default(),
        args.infrastructure_patience,
    );
    let result = execute(&args, &plan, &mut book, shutdown, shared.as_mut()).await;
    match result {
        Ok(outcome) => Ok(outcome),
        Err(LoadTestError::Interrupted) => {
            book.status_mut().message = Some("the runner was stopped before the run finished; a rerun of the same run id resumes it".into());
            let _ = book.write_now().await;
            Err(LoadTestError::Interrupted)
        }
        Err(e @ LoadTestError::RunEnded(_)) => Err(e),
        Err(e) if !plan.segment.merges() => {
            // Runner 0 fails the run when it reads this line.
            if let Some(run) = shared.as_mut() {
                let message = outbox_core::error_chain(&e);
                if let Err(write) = run.publish(RunnerState::Failed, 0, 0, Some(message)).await {
                    tracing::error!(error = %outbox_core::error_chain(&write), "could not record the failure in this runner's line");
                }
            }
            Err(e)
        }
        Err(e) => {
            // The result of the run is this error: record it where users look.
            let message = format!(
                "the load-test runner failed: {}",
                outbox_core::error_chain(&e)
            );
            book.advance(LoadTestPhase::Failed);
            book.set_condition(COMPLETE, true, e.reason(), message.clone());
            let status = book.status_mut();
            status.message = Some(message);
            status.completion_time = Some(Time(Timestamp::now()));
            if let Err(write) = book.write_now().await {
                tracing::error!(error = %outbox_core::error_chain(&write), "could not record the failure in the LoadTest status");
            }
            Err(e)
        }
    }
}

/// Runs the load test as its steps: connect → resume point → open the CPU window and
/// start sampling → send every scenario (draining the backlog before one sent a message
/// at a time) → settle uncertain outcomes → verify → close the CPU window, each
/// one-at-a-time scenario's own latency → judge (pure: `outcome::judge_run`) →
/// record → report.
async fn execute(
    args: &LoadTestArgs,
    plan: &Plan,
    book: &mut StatusBook,
    mut shutdown: ShutdownSignal,
    mut shared: Option<&mut SharedRun>,
) -> Result<Outcome> {
    let started = Instant::now();
    let display = Display::new(args.progress_interval);
    let http = http_client(args)?;
    let mut db = connect(args, plan, book).await?;
    let resume = send::resume_point(args, plan, book, &mut db, shared.as_deref()).await?;
    if let Some(run) = shared.as_mut() {
        run.join(&mut shutdown).await?;
    }
    let live = std::sync::Arc::new(sampler::Live::default());
    let sending = Sending {
        args,
        plan,
        resume: &resume,
        http: &http,
        display: &display,
        live: &live,
    };
    if !plan.segment.merges() {
        return send_segment_only(sending, book, &mut db, &mut shutdown, shared).await;
    }
    let cpu = CpuWindow::open(plan, &http).await;
    let sampling = sampler::Sampler::start(
        http.clone(),
        plan.cpu.clone(),
        args.database_url.clone(),
        args.sample_interval,
        live.clone(),
    );
    let mut sent =
        send::send_all(sending, book, &mut db, &mut shutdown, shared.as_deref_mut()).await?;
    settle_uncertain(&mut db, plan, &mut sent).await?;
    verify::start_verification(plan, book, &sent.expected).await?;
    let verification =
        verify::verify_with_progress(&mut db, plan, &sent.expected, book, &display, &mut shutdown)
            .await?;
    book.status_mut().cpu = Some(
        cpu.close(plan, &http, &verification, &sent, shared.as_deref())
            .await?,
    );
    send::record_scenario_latency(&mut db, book, &sent.latency_windows).await?;
    let (judgement, checks) = outcome::judge_run(plan, book.status(), &verification);
    book.status_mut().thresholds = checks;
    outcome::record(book, &judgement, &verification);
    let mut series = sampling.finish().await;
    series.request_latency_histograms = std::mem::take(&mut sent.histograms);
    let mut report = Report {
        run_id: plan.run_id.clone(),
        load_test: plan.load_test.clone(),
        settings: outcome::settings(args, plan),
        resumed: resume.resumed,
        uncertain_messages: sent.uncertain,
        wall_time_seconds: outcome::seconds(started.elapsed()),
        verification_seconds: outcome::seconds(verification.waited),
        verification: verification.reports.clone(),
        status: book.status().clone(),
        memory_growth: series.memory_growth(),
        series,
    };
    if let Some(run) = shared {
        report.status.runners = run.lines().await?;
        run.clear().await?;
    }
    outcome::publish_report(args, plan, book, &display, report).await?;
    tracing::info!(phase = ?book.phase(), verified = judgement.verified.ok, "load test finished");
    Ok(Outcome::Finished(book.phase()))
}

/// A runner other than 0 of a shared run: sends its segment of every scenario and
/// stops; runner 0 verifies the run and writes its result.
async fn send_segment_only(
    sending: Sending<'_>,
    book: &mut StatusBook,
    db: &mut OutboxDb,
    shutdown: &mut ShutdownSignal,
    shared: Option<&mut SharedRun>,
) -> Result<Outcome> {
    send::send_all(sending, book, db, shutdown, shared).await?;
    tracing::info!("this runner's segment of every scenario is sent; runner 0 verifies the run");
    Ok(Outcome::SegmentSent)
}

/// In a shared run (`parallelism` above 1, in a Job): this runner's place in it.
fn shared_run(
    args: &LoadTestArgs,
    plan: &Plan,
    target: Option<&status::Target>,
) -> Option<SharedRun> {
    let (target, report) = (target?, plan.report_target.as_ref()?);
    plan.segment.is_shared().then(|| {
        let messages = plan
            .scenarios
            .iter()
            .map(|s| u64::try_from(plan.segment.scenario(s).offered_messages()).unwrap_or(0))
            .sum();
        let pod = args
            .pod_name
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok());
        SharedRun::new(
            target.api.clone(),
            report.api.clone(),
            &target.name,
            plan.segment,
            pod,
            messages,
        )
    })
}

/// Connects to the outbox database (waiting out an outage up to the patience).
async fn connect(args: &LoadTestArgs, plan: &Plan, book: &StatusBook) -> Result<OutboxDb> {
    let db = OutboxDb::connect(
        &args.database_url,
        args.infrastructure_patience,
        book.board().clone(),
    )
    .await?;
    tracing::info!(
        run_id = %plan.run_id,
        topic = %plan.topic,
        producers = ?plan.producers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        groups = ?plan.groups,
        "starting the load test"
    );
    Ok(db)
}

/// Requests of unknown fate may have stored messages: the outbox has the truth, so
/// the run's messages found there join the expected ones.
async fn settle_uncertain(db: &mut OutboxDb, plan: &Plan, sent: &mut SentAll) -> Result<()> {
    if sent.uncertain == 0 {
        return Ok(());
    }
    tracing::warn!(
        uncertain = sent.uncertain,
        "some requests had an unknown outcome; taking the run's messages from the outbox"
    );
    let found = crate::with_db!(db, |c| verdict::run_ids_by_scenario(c, &plan.run_id, None)
        .await);
    for ids in found.values() {
        sent.expected = sent.expected.union(ids);
    }
    Ok(())
}

/// Every component's CPU counters as read before sending.
struct CpuWindow {
    started: Instant,
    before: cpu_accounting::Reading,
}

impl CpuWindow {
    async fn open(plan: &Plan, http: &reqwest::Client) -> CpuWindow {
        CpuWindow {
            started: Instant::now(),
            before: plan.cpu.read(http).await,
        }
    }

    /// Reads the counters again: the CPU each component spent since, and per message
    /// acknowledged by every group. In a shared run the other runners' processes count
    /// as `runner` too (each whole: they started with the run).
    async fn close(
        self,
        plan: &Plan,
        http: &reqwest::Client,
        verification: &verdict::Verification,
        sent: &SentAll,
        shared: Option<&SharedRun>,
    ) -> Result<outbox_contract::crd::CpuAccounting> {
        let mut after = plan.cpu.read(http).await;
        let other_runners = match shared {
            Some(run) => run.other_runners_cpu().await?,
            None => Vec::new(),
        };
        for (instance, seconds) in other_runners {
            after
                .counters
                .insert((cpu_accounting::RUNNER.to_string(), instance), seconds);
        }
        let acknowledged_by_all = verification
            .reports
            .iter()
            .map(|r| r.acknowledged)
            .min()
            .unwrap_or(sent.expected.len());
        Ok(cpu_accounting::account(
            &self.before,
            &after,
            self.started.elapsed(),
            acknowledged_by_all,
        ))
    }
}

/// The HTTP client for the producers.
fn http_client(args: &LoadTestArgs) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(args.request_timeout)
        // A deleted producer pod's address answers nothing: fail the connection fast
        // instead of waiting out the whole request timeout.
        .connect_timeout(std::time::Duration::from_secs(3))
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .build()
        .map_err(|source| LoadTestError::Http { source })
}
