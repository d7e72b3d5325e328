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
pub mod drive;
pub mod error;
pub mod html_report;
pub mod ids;
pub mod judge;
pub mod measure;
pub mod outage;
pub mod progress;
pub mod report;
pub mod report_store;
pub mod sampler;
pub mod scenario_latency;
pub mod series;
pub mod split;
pub mod status;
pub mod thresholds;
pub mod verify;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use outbox_contract::crd::{LoadTestPhase, LoadTestStatus, Scenario};
use tracing::Instrument;

pub use args::LoadTestArgs;
pub use error::{LoadTestError, Result};

use database::OutboxDb;
use discover::Producer;
use drive::{Counters, MessageShape, ScenarioSend};
use progress::Display;
use report::{Report, ReportSettings};
use status::{StatusBook, Target, COMPLETE, THRESHOLDS_MET, VERIFIED};

use crate::ledger::IdSet;
use crate::shutdown::{self, ShutdownSignal};

/// Requests in flight per producer for batching scenarios unless told otherwise.
const DEFAULT_BATCH_CONCURRENCY: usize = 2;
/// Requests in flight per producer for immediate scenarios unless told otherwise.
const DEFAULT_IMMEDIATE_CONCURRENCY: usize = 16;
/// How long a runner in a Job waits for every producer replica to be ready.
const PRODUCER_WAIT: Duration = Duration::from_secs(300);
/// How often verification looks at the ledger.
const VERIFY_POLL: Duration = Duration::from_secs(2);

/// Everything a run needs, resolved from flags and (in a Job) the API server.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Run id stamped into every message.
    pub run_id: String,
    /// `namespace/name` of the LoadTest, if any.
    pub load_test: Option<String>,
    /// Kafka topic.
    pub topic: String,
    /// Producers to drive.
    pub producers: Vec<Producer>,
    /// Where a producer's requests go once it is unreachable: the producer Service,
    /// when the producers were discovered behind it.
    pub producer_fallback: Option<String>,
    /// Consumer groups to verify.
    pub groups: Vec<String>,
    /// Scenarios in order.
    pub scenarios: Vec<Scenario>,
    /// Payload bytes per message.
    pub message_size: usize,
    /// Distinct keys.
    pub keys: u64,
    /// Percentage that must be accepted.
    pub success_threshold: f64,
    /// How long verification waits.
    pub verification_timeout: Duration,
    /// Where the CPU accounting reads from.
    pub cpu: CpuPlan,
    /// The limits the run is judged against (the arrival-rate defaults apply without).
    pub thresholds: Option<outbox_contract::crd::Thresholds>,
    /// In a Job: where the HTML report goes (the ConfigMap `<loadtest>-report`).
    pub report_target: Option<report_store::ReportTarget>,
}

/// Where the CPU accounting of a run reads from (see `cpu_accounting`).
#[derive(Debug, Clone, Default)]
pub struct CpuPlan {
    /// Known up front: `cpuSources`, `--cpu-source`, and outside a Job the producers
    /// and `--consumer-metrics`.
    pub sources: Vec<cpu_accounting::Source>,
    /// In a Job: the namespace's pods and the system, to list its producer and
    /// consumer pods at each reading (they may change during the run).
    pub worker_pods: Option<(Api<Pod>, String)>,
}

impl CpuPlan {
    /// From the producers, the LoadTest's `cpuSources` and the flags.
    fn new(
        producers: &[Producer],
        spec_sources: &[outbox_contract::crd::CpuSource],
        args: &LoadTestArgs,
    ) -> Result<CpuPlan> {
        let mut sources: Vec<_> = producers
            .iter()
            .map(cpu_accounting::Source::producer)
            .collect();
        for s in spec_sources {
            sources.push(external(&s.component, &s.url));
        }
        for flag in &args.cpu_sources {
            let (component, url) = name_and_url("--cpu-source", flag)?;
            sources.push(external(component, url));
        }
        for flag in &args.consumer_metrics {
            let (group, url) = name_and_url("--consumer-metrics", flag)?;
            sources.push(cpu_accounting::Source {
                kind: cpu_accounting::Kind::Consumer(group.to_string()),
                instance: url.to_string(),
                url: url.to_string(),
            });
        }
        Ok(CpuPlan {
            sources,
            worker_pods: None,
        })
    }

    /// Reads every source now, the consumer pods listed afresh.
    async fn read(&self, http: &reqwest::Client) -> cpu_accounting::Reading {
        let mut sources = self.sources.clone();
        if let Some((pods, system)) = &self.worker_pods {
            match cpu_accounting::worker_sources(pods, system).await {
                Ok(found) => sources.extend(found),
                Err(e) => {
                    tracing::warn!(error = %e, "could not list the system's pods for the CPU accounting")
                }
            }
        }
        cpu_accounting::read(http, &sources).await
    }
}

fn external(component: &str, url: &str) -> cpu_accounting::Source {
    cpu_accounting::Source {
        kind: cpu_accounting::Kind::External(component.to_string()),
        instance: url.to_string(),
        url: url.to_string(),
    }
}

fn name_and_url<'a>(flag: &str, value: &'a str) -> Result<(&'a str, &'a str)> {
    value
        .split_once('=')
        .filter(|(name, url)| !name.is_empty() && url.starts_with("http"))
        .ok_or_else(|| {
            LoadTestError::Settings(format!(
                "{flag} {value:?}: expected NAME=http://HOST:PORT/PATH"
            ))
        })
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The LoadTest had finished before this runner started: nothing was done.
    AlreadyFinished(LoadTestPhase),
    /// The run finished with this phase (Succeeded or Failed).
    Finished(LoadTestPhase),
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
        Err(e) => {
            tracing::error!(
                reason = e.reason(),
                "load test runner failed: {}",
                crate::error_chain(&e)
            );
            eprintln!("outbox-worker loadtest: {}", crate::error_chain(&e));
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
    let mut book = StatusBook::new(
        target,
        current,
        args.progress_interval,
        outage::Board::default(),
        args.infrastructure_patience,
    );
    let result = execute(&args, &plan, &mut book, shutdown).await;
    match result {
        Ok(outcome) => Ok(outcome),
        Err(LoadTestError::Interrupted) => {
            book.status_mut().message = Some("the runner was stopped before the run finished; a rerun of the same run id resumes it".into());
            let _ = book.write_now().await;
            Err(LoadTestError::Interrupted)
        }
        Err(e) => {
            // The result of the run is this error: record it where users look.
            let message = format!("the load-test runner failed: {}", crate::error_chain(&e));
            book.advance(LoadTestPhase::Failed);
            book.set_condition(COMPLETE, true, e.reason(), message.clone());
            let status = book.status_mut();
            status.message = Some(message);
            status.completion_time = Some(Time(Timestamp::now()));
            if let Err(write) = book.write_now().await {
                tracing::error!(error = %crate::error_chain(&write), "could not record the failure in the LoadTest status");
            }
            Err(e)
        }
    }
}

enum Resolved {
    Finished(LoadTestPhase),
    Run(Box<Prepared>),
}

struct Prepared {
    plan: Plan,
    target: Option<Target>,
    current: LoadTestStatus,
}

/// Resolves the plan from flags and, with `--namespace/--name`, the API server.
async fn resolve(args: &LoadTestArgs) -> Result<Resolved> {
    let producers_from_flags: Vec<Producer> = args
        .producer_urls
        .iter()
        .map(|u| Producer::from_url(u))
        .collect();
    let (Some(namespace), Some(name)) = (&args.namespace, &args.name) else {
        let plan = local_plan(args, producers_from_flags)?;
        return Ok(Resolved::Run(Box::new(Prepared {
            plan,
            target: None,
            current: LoadTestStatus::default(),
        })));
    };
    let client = kube::Client::try_default()
        .await
        .map_err(|source| LoadTestError::KubeConfig { source })?;
    let lt = discover::load_test(&client, namespace, name).await?;
    let current = lt.status.clone().unwrap_or_default();
    if let Some(phase) = current.phase.filter(|p| p.is_finished()) {
        tracing::info!(?phase, "the LoadTest has already finished; nothing to do");
        return Ok(Resolved::Finished(phase));
    }
    let run_id = lt.metadata.uid.clone().ok_or_else(|| {
        LoadTestError::Settings(format!("LoadTest {namespace}/{name} has no metadata.uid"))
    })?;
    let spec = &lt.spec;
    let need_system =
        args.topic.is_none() || args.groups.is_empty() || producers_from_flags.is_empty();
    let system = if need_system {
        Some(discover::outbox_system(&client, namespace, &spec.system_ref.name).await?)
    } else {
        None
    };
    let port = system
        .as_ref()
        .map(|s| s.spec.producers.port)
        .unwrap_or(8080);
    // In a Job the producers and consumers whose CPU is accounted for are the pods
    // found at each reading.
    let listed = producers_from_flags.is_empty() && args.consumer_metrics.is_empty();
    let producer_fallback = producers_from_flags.is_empty().then(|| {
        format!(
            "http://{}.{namespace}.svc:{port}",
            discover::producer_service_name(&spec.system_ref.name)
        )
    });
    let producers = if producers_from_flags.is_empty() {
        let desired = system
            .as_ref()
            .map(|s| usize::try_from(s.spec.producers.replicas).unwrap_or(0))
            .unwrap_or(1);
        discover::wait_for_producers(
            &client,
            namespace,
            &spec.system_ref.name,
            port,
            desired,
            PRODUCER_WAIT,
        )
        .await?
    } else {
        producers_from_flags
    };
    let topic = match (&args.topic, &system) {
        (Some(t), _) => t.clone(),
        (None, Some(s)) => s.spec.topic.name.clone(),
        (None, None) => return Err(LoadTestError::Settings("no topic: give --topic".into())),
    };
    let groups = if args.groups.is_empty() {
        system
            .as_ref()
            .map(|s| {
                s.spec
                    .consumers
                    .groups
                    .iter()
                    .map(|g| g.name.clone())
                    .collect()
            })
            .unwrap_or_default()
    } else {
        args.groups.clone()
    };
    let cpu = if listed {
        CpuPlan {
            worker_pods: Some((
                Api::namespaced(client.clone(), namespace),
                spec.system_ref.name.clone(),
            )),
            ..CpuPlan::new(&[], &spec.cpu_sources, args)?
        }
    } else {
        CpuPlan::new(&producers, &spec.cpu_sources, args)?
    };
    let plan = Plan {
        run_id,
        load_test: Some(format!("{namespace}/{name}")),
        topic,
        producers,
        producer_fallback,
        groups,
        scenarios: spec.scenarios.clone(),
        message_size: usize::try_from(spec.message_size.max(1)).unwrap_or(256),
        keys: u64::try_from(spec.keys.max(1)).unwrap_or(1),
        success_threshold: spec.success_threshold,
        verification_timeout: Duration::from_secs(
            u64::try_from(spec.verification_timeout_seconds.max(1)).unwrap_or(600),
        ),
        cpu,
        thresholds: spec.thresholds.clone(),
        report_target: Some(report_store::ReportTarget {
            api: Api::namespaced(client.clone(), namespace),
            loadtest: name.clone(),
            uid: lt.metadata.uid.clone().unwrap_or_default(),
        }),
    };
    validate(&plan)?;
    let target = Target {
        api: Api::namespaced(client, namespace),
        name: name.clone(),
        generation: lt.metadata.generation,
    };
    Ok(Resolved::Run(Box::new(Prepared {
        plan,
        target: Some(target),
        current,
    })))
}

/// The plan of a run outside Kubernetes, from flags only.
fn local_plan(args: &LoadTestArgs, producers: Vec<Producer>) -> Result<Plan> {
    let topic = args.topic.clone().ok_or_else(|| {
        LoadTestError::Settings("--topic is required without --namespace/--name".into())
    })?;
    if producers.is_empty() {
        return Err(LoadTestError::Settings(
            "--producer-url is required without --namespace/--name (e.g. --producer-url http://127.0.0.1:5301)".into(),
        ));
    }
    let spec = match &args.spec {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| LoadTestError::Settings(format!("--spec {}: {e}", path.display())))?;
            Some(
                args::parse_spec(&text).map_err(|e| {
                    LoadTestError::Settings(format!("--spec {}: {e}", path.display()))
                })?,
            )
        }
        None => None,
    };
    let scenarios = match &spec {
        Some(spec) => spec.scenarios.clone(),
        None => args.scenarios.clone(),
    };
    if scenarios.is_empty() {
        return Err(LoadTestError::Settings(
            "at least one --scenario (or a --spec with scenarios) is required without --namespace/--name (e.g. --scenario batch:30000:batched)".into(),
        ));
    }
    let cpu = CpuPlan::new(&producers, &[], args)?;
    let from_spec = |f: fn(&outbox_contract::crd::LoadTestSpec) -> i64| spec.as_ref().map(f);
    let plan = Plan {
        run_id: args
            .run_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        load_test: None,
        topic,
        producers,
        producer_fallback: None,
        groups: args.groups.clone(),
        scenarios,
        message_size: usize::try_from(
            args.message_size
                .map(i64::from)
                .or(from_spec(|s| i64::from(s.message_size)))
                .unwrap_or(256)
                .max(1),
        )
        .unwrap_or(256),
        keys: u64::try_from(args.keys.or(from_spec(|s| s.keys)).unwrap_or(1000).max(1))
            .unwrap_or(1),
        success_threshold: args
            .success_threshold
            .or(spec.as_ref().map(|s| s.success_threshold))
            .unwrap_or(95.0),
        verification_timeout: args
            .verification_timeout
            .or(from_spec(|s| s.verification_timeout_seconds)
                .map(|s| Duration::from_secs(u64::try_from(s.max(1)).unwrap_or(600))))
            .unwrap_or(Duration::from_secs(600)),
        cpu,
        thresholds: spec.and_then(|s| s.thresholds),
        report_target: None,
    };
    validate(&plan)?;
    Ok(plan)
}

fn validate(plan: &Plan) -> Result<()> {
    if !(0.0..=100.0).contains(&plan.success_threshold) {
        return Err(LoadTestError::Settings(format!(
            "the success threshold {} is not a percentage between 0 and 100",
            plan.success_threshold
        )));
    }
    let mut names: Vec<&str> = plan.scenarios.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(LoadTestError::Settings(
            "scenario names must be unique".into(),
        ));
    }
    for s in &plan.scenarios {
        // The API server's CEL rules say the same for a LoadTest; a --spec file has
        // not been through them.
        let problem = match (&s.messages, &s.arrival_rate) {
            (Some(_), Some(_)) | (None, None) => {
                Some("sets exactly one of messages and arrivalRate")
            }
            (None, Some(_)) if s.batching => {
                Some("is an arrivalRate scenario: batching must be false")
            }
            (None, Some(rate)) if rate.stages.is_empty() => {
                Some("has an arrivalRate without stages")
            }
            _ => None,
        };
        if let Some(problem) = problem {
            return Err(LoadTestError::Settings(format!(
                "scenario {}: {problem}",
                s.name
            )));
        }
    }
    if plan.groups.is_empty() {
        tracing::warn!("no consumer group to verify: the run cannot be Verified");
    }
    Ok(())
}

/// Runs the load test as its steps: connect → resume point → read the CPU counters →
/// send every scenario (draining the backlog before one sent a message at a time) →
/// settle uncertain outcomes → verify → judge (pure, `judge`) → read the CPU counters
/// again, each one-at-a-time scenario's own latency → record → report.
async fn execute(
    args: &LoadTestArgs,
    plan: &Plan,
    book: &mut StatusBook,
    mut shutdown: ShutdownSignal,
) -> Result<Outcome> {
    let started = Instant::now();
    let display = Display::new(args.progress_interval);
    let http = http_client(args)?;
    let mut db = OutboxDb::connect(
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
    let resume = resume_point(args, plan, book, &mut db).await?;
    let cpu_started = Instant::now();
    let cpu_before = plan.cpu.read(&http).await;
    let live = Arc::new(sampler::Live::default());
    let sampling = sampler::Sampler::start(
        http.clone(),
        plan.cpu.clone(),
        args.database_url.clone(),
        args.sample_interval,
        live.clone(),
    );
    let mut sent = send_all(
        Sending {
            args,
            plan,
            resume: &resume,
            http: &http,
            display: &display,
            live: &live,
        },
        book,
        &mut db,
        &mut shutdown,
    )
    .await?;
    if sent.uncertain > 0 {
        // Requests of unknown fate may have stored messages: the outbox has the truth.
        tracing::warn!(
            uncertain = sent.uncertain,
            "some requests had an unknown outcome; taking the run's messages from the outbox"
        );
        let found = crate::with_db!(db, |c| verify::run_ids_by_scenario(c, &plan.run_id).await);
        for ids in found.values() {
            sent.expected = sent.expected.union(ids);
        }
    }
    start_verification(plan, book, &sent.expected).await?;
    let verification =
        verify_with_progress(&mut db, plan, &sent.expected, book, &display, &mut shutdown).await?;
    let cpu_after = plan.cpu.read(&http).await;
    let acknowledged_by_all = verification
        .reports
        .iter()
        .map(|r| r.acknowledged)
        .min()
        .unwrap_or(sent.expected.len());
    book.status_mut().cpu = Some(cpu_accounting::account(
        &cpu_before,
        &cpu_after,
        cpu_started.elapsed(),
        acknowledged_by_all,
    ));
    record_scenario_latency(&mut db, book, &sent.latency_windows).await?;
    let groups: Vec<_> = verification
        .reports
        .iter()
        .map(verify::group_status)
        .collect();
    let checks = thresholds::check(
        plan.thresholds.as_ref(),
        &plan.scenarios,
        &book.status().scenarios,
        &groups,
    );
    let (ok, reason, message) = verification.condition();
    let judgement = judge::judge(
        &book.status().scenarios,
        plan.success_threshold,
        judge::Said {
            ok,
            reason,
            message,
        },
        thresholds::condition(&checks),
    );
    book.status_mut().thresholds = checks;
    record(book, &judgement, &verification).await?;
    let mut series = sampling.finish().await;
    series.request_latency_histograms = std::mem::take(&mut sent.histograms);
    publish_report(
        args,
        plan,
        book,
        &display,
        Report {
            run_id: plan.run_id.clone(),
            load_test: plan.load_test.clone(),
            settings: ReportSettings {
                topic: plan.topic.clone(),
                producers: plan.producers.iter().map(|p| p.name.clone()).collect(),
                groups: plan.groups.clone(),
                message_size: plan.message_size,
                keys: plan.keys,
                success_threshold: plan.success_threshold,
                verification_timeout_seconds: plan.verification_timeout.as_secs(),
                messages_per_request: args.messages_per_request,
            },
            resumed: resume.resumed,
            uncertain_messages: sent.uncertain,
            wall_time_seconds: (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            verification_seconds: (verification.waited.as_secs_f64() * 1000.0).round() / 1000.0,
            verification: verification.reports.clone(),
            status: book.status().clone(),
            memory_growth: series.memory_growth(),
            series,
        },
    )
    .await?;
    tracing::info!(phase = ?book.phase(), verified = judgement.verified.ok, "load test finished");
    Ok(Outcome::Finished(book.phase()))
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

/// Where an earlier attempt of the same run left off.
struct ResumePoint {
    /// Whether this is a rerun of a run id.
    resumed: bool,
    /// The run's messages already in the outbox, by scenario.
    earlier: BTreeMap<String, IdSet>,
    /// Scenarios the status records as sent.
    finished: Vec<String>,
}

/// A rerun of the same run id: scenarios recorded in status are done; for the others
/// the outbox says what was already accepted.
async fn resume_point(
    args: &LoadTestArgs,
    plan: &Plan,
    book: &StatusBook,
    db: &mut OutboxDb,
) -> Result<ResumePoint> {
    let resumed = book.status().run_id.is_some() || args.run_id.is_some();
    let earlier = if resumed {
        let found = crate::with_db!(db, |c| verify::run_ids_by_scenario(c, &plan.run_id).await);
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
    let finished = book
        .status()
        .scenarios
        .iter()
        .map(|s| s.name.clone())
        .collect();
    Ok(ResumePoint {
        resumed,
        earlier,
        finished,
    })
}

/// What sending every scenario produced.
struct SentAll {
    /// Ids of every accepted message of the run (earlier attempts' included).
    expected: IdSet,
    /// Messages whose fate stayed unknown.
    uncertain: u64,
    /// Scenarios whose own end-to-end latency is measured after verification: the
    /// scenario, the ledger before it was sent, and its ids.
    latency_windows: Vec<(String, scenario_latency::Window, IdSet)>,
    /// Request latency histogram of each scenario sent one message per request.
    histograms: BTreeMap<String, Vec<series::Bucket>>,
}

/// What sending reads: the settings, the plan, where an earlier attempt left off, the
/// HTTP client, the progress display and the sampler's view of the live scenario.
#[derive(Clone, Copy)]
struct Sending<'a> {
    args: &'a LoadTestArgs,
    plan: &'a Plan,
    resume: &'a ResumePoint,
    http: &'a reqwest::Client,
    display: &'a Display,
    live: &'a sampler::Live,
}

/// Marks the run Running, then sends each scenario not sent before, recording each.
async fn send_all(
    sending: Sending<'_>,
    book: &mut StatusBook,
    db: &mut OutboxDb,
    shutdown: &mut ShutdownSignal,
) -> Result<SentAll> {
    let Sending {
        args,
        plan,
        resume,
        http,
        display,
        live,
    } = sending;
    {
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
    }
    book.advance(LoadTestPhase::Running);
    book.set_condition(COMPLETE, false, "Running", "sending messages");
    book.set_condition(
        VERIFIED,
        false,
        "NotYetVerified",
        "verification starts when every scenario is sent",
    );
    book.write_now().await?;

    let shape = MessageShape {
        topic: plan.topic.clone(),
        run_id: plan.run_id.clone(),
        message_size: plan.message_size,
        keys: plan.keys,
    };
    let mut expected = IdSet::default();
    let mut uncertain = 0u64;
    let mut attempt_accepted = 0u64;
    let mut attempt_seconds = 0f64;
    let mut latency_windows = Vec::new();
    let mut histograms = BTreeMap::new();
    for group in together(&plan.scenarios) {
        let mut todo = Vec::with_capacity(group.len());
        for scenario in group {
            let before = resume
                .earlier
                .get(&scenario.name)
                .cloned()
                .unwrap_or_default();
            expected = expected.union(&before);
            if resume.finished.contains(&scenario.name) {
                tracing::info!(scenario = %scenario.name, "scenario finished in an earlier attempt; keeping its result");
                continue;
            }
            todo.push(scenario_send(args, plan, scenario, before.len()));
        }
        if todo.is_empty() {
            continue;
        }
        // A scenario sent one message per request, alone, measures its own latency.
        let measures_own =
            matches!(todo.as_slice(), [send] if !send.batching) && !plan.groups.is_empty();
        // An earlier scenario's latency is read before anything new lands in its ledger
        // chunks: once every group acknowledged everything sent so far.
        let window = if measures_own || !latency_windows.is_empty() {
            let names: Vec<&str> = todo.iter().map(|s| s.name.as_str()).collect();
            Some(drain_before(db, plan, book, &names.join(" + "), &expected, shutdown).await?)
        } else {
            None
        };
        record_scenario_latency(db, book, &latency_windows).await?;
        latency_windows.clear();
        let window = window.filter(|_| measures_own);
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
        let sent_group =
            send_with_progress(http, plan, &shape, &todo, book, display, live, shutdown).await?;
        let mut longest = 0f64;
        for (send, sent) in todo.iter().zip(sent_group) {
            if !send.batching {
                histograms.insert(send.name.clone(), sent.outcome.tally().latency.buckets());
            }
            expected = expected.union(&sent.ids);
            uncertain += sent.uncertain;
            attempt_accepted += sent.outcome.tally().accepted;
            longest = longest.max(sent.outcome.duration.as_secs_f64());
            let mut result = sent.outcome.result();
            if let Some(window) = &window {
                result.backlog_drained = Some(window.drained);
                latency_windows.push((send.name.clone(), window.clone(), sent.ids.clone()));
            }
            tracing::info!(
                scenario = %result.name,
                accepted = result.accepted,
                failed = result.failed,
                seconds = result.duration_seconds,
                throughput = result.throughput,
                "scenario sent"
            );
            let status = book.status_mut();
            status.scenarios.retain(|s| s.name != result.name);
            status.scenarios.push(result);
            status.accepted_messages = Some(status.scenarios.iter().map(|s| s.accepted).sum());
        }
        attempt_seconds += longest;
        book.write_now().await?;
    }
    let status = book.status_mut();
    status.accepted_messages = Some(status.scenarios.iter().map(|s| s.accepted).sum());
    if attempt_seconds > 0.0 {
        status.throughput = Some((attempt_accepted as f64 / attempt_seconds * 10.0).round() / 10.0);
    } else if status.throughput.is_none() {
        status.throughput = Some(0.0);
    }
    Ok(SentAll {
        expected,
        uncertain,
        latency_windows,
        histograms,
    })
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
async fn record_scenario_latency(
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
        fallback_after: drive::FALLBACK_AFTER,
        stages,
    }
}

/// Marks the run Verifying.
async fn start_verification(plan: &Plan, book: &mut StatusBook, expected: &IdSet) -> Result<()> {
    book.advance(LoadTestPhase::Verifying);
    book.set_condition(
        COMPLETE,
        false,
        "Verifying",
        "every scenario is sent; waiting for the consumer groups",
    );
    book.set_condition(
        VERIFIED,
        false,
        "Verifying",
        format!(
            "waiting up to {}s for {} groups to acknowledge {} messages",
            plan.verification_timeout.as_secs(),
            plan.groups.len(),
            expected.len()
        ),
    );
    book.status_mut().message = Some(format!(
        "verifying {} messages in {} groups",
        expected.len(),
        plan.groups.len()
    ));
    book.write_now().await?;
    tracing::info!(
        messages = expected.len(),
        groups = plan.groups.len(),
        timeout_seconds = plan.verification_timeout.as_secs(),
        "every scenario sent; verifying"
    );
    Ok(())
}

/// Writes the verdict and the groups' figures into the status.
async fn record(
    book: &mut StatusBook,
    judgement: &judge::Judgement,
    verification: &verify::Verification,
) -> Result<()> {
    let said = |s: &judge::Said| (s.ok, s.reason, s.message.clone());
    let (ok, reason, message) = said(&judgement.verified);
    book.set_condition(VERIFIED, ok, reason, message);
    let (ok, reason, message) = said(&judgement.thresholds);
    book.set_condition(THRESHOLDS_MET, ok, reason, message);
    let (ok, reason, message) = said(&judgement.complete);
    book.set_condition(COMPLETE, ok, reason, message);
    book.advance(judgement.phase);
    let status = book.status_mut();
    status.groups = verification
        .reports
        .iter()
        .map(verify::group_status)
        .collect();
    status.end_to_end_latency = verify::overall_latency(&verification.reports);
    status.completion_time = Some(Time(Timestamp::now()));
    status.message = Some(judgement.message.clone());
    book.write_now().await
}

/// Writes the JSON and HTML reports (where asked; in a Job the HTML one into the
/// ConfigMap `<loadtest>-report`, named in the status) and shows the summary table.
async fn publish_report(
    args: &LoadTestArgs,
    plan: &Plan,
    book: &mut StatusBook,
    display: &Display,
    json: Report,
) -> Result<()> {
    if let Some(target) = &plan.report_target {
        let mut failed = None;
        let (html, every) = report_store::fitting(&json.series, |series| {
            let thinned = Report {
                series: series.clone(),
                ..json.clone()
            };
            html_report::render(&thinned).unwrap_or_else(|e| {
                failed = Some(e.to_string());
                String::new()
            })
        });
        match failed {
            Some(e) => tracing::warn!(error = %e, "could not render the HTML report"),
            None => match report_store::store(target, html).await {
                Ok(name) => {
                    tracing::info!(config_map = %name, every_nth_sample = every, "wrote the HTML report into a ConfigMap");
                    book.status_mut().report_config_map = Some(name);
                    book.write_now().await?;
                }
                Err(e) => {
                    tracing::warn!(error = %crate::error_chain(&e), "could not write the HTML report ConfigMap; the status holds the results")
                }
            },
        }
    }
    // The reports carry the status as it stands now, the ConfigMap's name included.
    let json = Report {
        status: book.status().clone(),
        ..json
    };
    if let Some(path) = &args.report {
        json.write(path)?;
        tracing::info!(path = %path.display(), "wrote the JSON report");
    }
    if let Some(path) = &args.html_report {
        html_report::write(path, &html_report::render(&json)?)?;
        tracing::info!(path = %path.display(), "wrote the HTML report");
    }
    let mut table = report::summary_table(&plan.run_id, book.status());
    table.push_str(&report::memory_table(&json.series));
    if display.is_terminal() {
        println!("{table}");
    } else {
        for line in table.lines() {
            tracing::info!(target: "loadtest", "{line}");
        }
    }
    Ok(())
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
) -> Result<Vec<drive::Sent>> {
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
    let tasks = futures::future::join_all(sends.iter().zip(&counters).map(|(send, c)| {
        let (http, producers, shape, send, c, board) = (
            http.clone(),
            plan.producers.clone(),
            shape.clone(),
            send.clone(),
            c.clone(),
            board.clone(),
        );
        tokio::spawn(async move {
            drive::send_scenario(&http, &producers, &shape, &send, c, &board).await
        })
    }));
    tokio::pin!(tasks);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let joined = loop {
        tokio::select! {
            joined = &mut tasks => break joined,
            _ = tick.tick() => {
                let mut parts = Vec::new();
                let mut accepted_now = 0;
                for ((send, c), bar) in sends.iter().zip(&counters).zip(&mut bars) {
                    let accepted = c.accepted.load(Ordering::Relaxed) + send.already_accepted;
                    let failed = c.failed.load(Ordering::Relaxed);
                    bar.set(send.already_accepted + c.done(), &format!("accepted {accepted} failed {failed}"));
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
            }
            _ = shutdown::wait(shutdown) => return Err(LoadTestError::Interrupted),
        }
    };
    live.idle();
    let mut sent = Vec::with_capacity(sends.len());
    for ((send, c), (bar, result)) in sends.iter().zip(&counters).zip(bars.iter_mut().zip(joined)) {
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

/// Waits for the acknowledgements while showing progress and writing it into the status.
async fn verify_with_progress(
    db: &mut OutboxDb,
    plan: &Plan,
    expected: &IdSet,
    book: &mut StatusBook,
    display: &Display,
    shutdown: &mut ShutdownSignal,
) -> Result<verify::Verification> {
    let bars: std::sync::Mutex<Vec<progress::Bar>> = std::sync::Mutex::new(
        plan.groups
            .iter()
            .map(|g| display.bar(g, expected.len()))
            .collect(),
    );
    let latest: std::sync::Mutex<Option<verify::VerifyProgress>> = std::sync::Mutex::new(None);
    let wait = verify::wait_for_acknowledgements(
        db,
        &plan.groups,
        expected,
        plan.verification_timeout,
        VERIFY_POLL,
        |p| {
            if let Ok(mut bars) = bars.lock() {
                for (bar, r) in bars.iter_mut().zip(&p.reports) {
                    bar.set(
                        r.acknowledged,
                        &format!("missing {} duplicates {}", r.missing, r.duplicates),
                    );
                }
            }
            if let Ok(mut latest) = latest.lock() {
                *latest = Some(p.clone());
            }
        },
    );
    tokio::pin!(wait);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let verification = loop {
        tokio::select! {
            done = &mut wait => break done?,
            _ = tick.tick() => {
                let outage = book.reflect_outages();
                // Progress into the status from the last look at the ledger.
                let last = latest.lock().ok().and_then(|l| l.clone());
                if let Some(message) = outage {
                    book.status_mut().message = Some(message);
                    book.write_progress().await;
                } else if let Some(p) = last {
                    let groups = p.reports.iter().map(verify::group_status).collect();
                    let summary: Vec<String> = p.reports.iter().map(|r| format!("{} {}/{}", r.group, r.acknowledged, r.expected)).collect();
                    let status = book.status_mut();
                    status.groups = groups;
                    status.message = Some(format!("verifying ({}s): {}", p.waited.as_secs(), summary.join(", ")));
                    book.write_progress().await;
                }
            }
            _ = shutdown::wait(shutdown) => return Err(LoadTestError::Interrupted),
        }
    };
    book.reflect_outages();
    if let Ok(mut bars) = bars.lock() {
        for (bar, r) in bars.iter_mut().zip(&verification.reports) {
            bar.finish(
                r.acknowledged,
                &format!(
                    "missing {} duplicates {} out of order {}",
                    r.missing, r.duplicates, r.out_of_order
                ),
            );
        }
    }
    Ok(verification)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(name: &str, with_previous: bool) -> Scenario {
        Scenario {
            name: name.into(),
            messages: Some(10),
            with_previous,
            ..Scenario::default()
        }
    }

    #[test]
    fn scenarios_marked_with_previous_are_sent_together_with_the_one_before() {
        let scenarios = [
            scenario("batch", false),
            scenario("steady", true),
            scenario("spike", true),
            scenario("immediate", false),
            // The first scenario has nothing before it (the API server refuses it).
            scenario("late", true),
        ];
        let names: Vec<Vec<&str>> = together(&scenarios)
            .iter()
            .map(|g| g.iter().map(|s| s.name.as_str()).collect())
            .collect();
        assert_eq!(
            names,
            vec![vec!["batch", "steady", "spike"], vec!["immediate", "late"]]
        );
        let first_alone = together(&scenarios[4..]);
        assert_eq!(first_alone.len(), 1);
    }
}
