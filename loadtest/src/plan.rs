//! What a run is: the plan resolved from flags and, in a Job, from the LoadTest, its
//! OutboxSystem and the producer pods the API server lists (`discover`).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use outbox_contract::crd::{LoadTest, LoadTestPhase, LoadTestStatus, OutboxSystem, Scenario};

use super::discover::{self, Producer};
use super::segment::Segment;
use super::status::Target;
use super::{args, cpu_accounting, report::store, LoadTestArgs, LoadTestError, Result};

/// How long a runner in a Job waits for every producer replica to be ready.
const PRODUCER_WAIT: Duration = Duration::from_secs(300);

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
    pub report_target: Option<store::ReportTarget>,
    /// Which runner this is, of how many (`spec.parallelism`).
    pub segment: Segment,
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
    pub(super) async fn read(&self, http: &reqwest::Client) -> cpu_accounting::Reading {
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

pub(super) enum Resolved {
    Finished(LoadTestPhase),
    Run(Box<Prepared>),
}

pub(super) struct Prepared {
    pub(super) plan: Plan,
    pub(super) target: Option<Target>,
    pub(super) current: LoadTestStatus,
}

/// Resolves the plan from flags and, with `--namespace/--name`, the API server.
pub(super) async fn resolve(args: &LoadTestArgs) -> Result<Resolved> {
    let producers_from_flags: Vec<Producer> = args
        .producer_urls
        .iter()
        .map(|u| Producer::from_url(u))
        .collect();
    match (&args.namespace, &args.name) {
        (Some(namespace), Some(name)) => {
            in_cluster(args, namespace, name, producers_from_flags).await
        }
        _ => Ok(Resolved::Run(Box::new(Prepared {
            plan: local_plan(args, producers_from_flags)?,
            target: None,
            current: LoadTestStatus::default(),
        }))),
    }
}

/// The plan of a run in a Job, as its steps: read the LoadTest → already finished? →
/// its OutboxSystem (unless the flags say everything it would) → the producers (ready
/// pods, unless given) → topic and groups (pure) → the CPU plan → validate.
async fn in_cluster(
    args: &LoadTestArgs,
    namespace: &str,
    name: &str,
    producers_from_flags: Vec<Producer>,
) -> Result<Resolved> {
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
    // In a Job the producers and consumers whose CPU is accounted for are the pods
    // found at each reading.
    let listed = producers_from_flags.is_empty() && args.consumer_metrics.is_empty();
    let (producers, producer_fallback) = find_producers(
        &client,
        namespace,
        &lt,
        system.as_ref(),
        producers_from_flags,
    )
    .await?;
    let (topic, groups) = topic_and_groups(args, system.as_ref())?;
    let cpu = job_cpu_plan(&client, namespace, &lt, &producers, listed, args)?;
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
        report_target: Some(store::ReportTarget {
            api: Api::namespaced(client.clone(), namespace),
            loadtest: name.to_string(),
        }),
        segment: segment_of(args, spec.parallelism)?,
    };
    validate(&plan)?;
    let target = Target {
        api: Api::namespaced(client, namespace),
        name: name.to_string(),
        generation: lt.metadata.generation,
    };
    Ok(Resolved::Run(Box::new(Prepared {
        plan,
        target: Some(target),
        current,
    })))
}

/// Which runner this is: `--runner-index` (`JOB_COMPLETION_INDEX`) of the LoadTest's
/// `parallelism`, which `--runners`, when given, must repeat.
fn segment_of(args: &LoadTestArgs, parallelism: i32) -> Result<Segment> {
    let runners = u32::try_from(parallelism.max(1)).unwrap_or(1);
    if let Some(told) = args.runners.filter(|told| *told != runners) {
        return Err(LoadTestError::Settings(format!(
            "--runners {told} disagrees with the LoadTest's spec.parallelism {runners}"
        )));
    }
    Segment::new(args.runner_index, runners).map_err(LoadTestError::Settings)
}

/// The CPU plan of a run in a Job: the LoadTest's `cpuSources` and the flags' sources,
/// and either the system's pods, listed afresh at each reading (`listed`: the flags named
/// no producers and no consumers), or the producers found now.
fn job_cpu_plan(
    client: &kube::Client,
    namespace: &str,
    lt: &LoadTest,
    producers: &[Producer],
    listed: bool,
    args: &LoadTestArgs,
) -> Result<CpuPlan> {
    let spec = &lt.spec;
    Ok(if listed {
        CpuPlan {
            worker_pods: Some((
                Api::namespaced(client.clone(), namespace),
                spec.system_ref.name.clone(),
            )),
            ..CpuPlan::new(&[], &spec.cpu_sources, args)?
        }
    } else {
        CpuPlan::new(producers, &spec.cpu_sources, args)?
    })
}

/// The producers to drive: the flags' when given (no fallback), else the system's
/// ready pods, waited for, with the producer Service as the fallback.
async fn find_producers(
    client: &kube::Client,
    namespace: &str,
    lt: &LoadTest,
    system: Option<&OutboxSystem>,
    from_flags: Vec<Producer>,
) -> Result<(Vec<Producer>, Option<String>)> {
    if !from_flags.is_empty() {
        return Ok((from_flags, None));
    }
    let name = &lt.spec.system_ref.name;
    let port = system.map(|s| s.spec.producers.port).unwrap_or(8080);
    let fallback = format!(
        "http://{}.{namespace}.svc:{port}",
        discover::producer_service_name(name)
    );
    let desired = system
        .map(|s| usize::try_from(s.spec.producers.replicas).unwrap_or(0))
        .unwrap_or(1);
    let producers =
        discover::wait_for_producers(client, namespace, name, port, desired, PRODUCER_WAIT).await?;
    Ok((producers, Some(fallback)))
}

/// The topic and the groups to verify (pure): the flags' when given, else the
/// OutboxSystem's.
fn topic_and_groups(
    args: &LoadTestArgs,
    system: Option<&OutboxSystem>,
) -> Result<(String, Vec<String>)> {
    let topic = match (&args.topic, system) {
        (Some(t), _) => t.clone(),
        (None, Some(s)) => s.spec.topic.name.clone(),
        (None, None) => return Err(LoadTestError::Settings("no topic: give --topic".into())),
    };
    let groups = match system {
        Some(s) if args.groups.is_empty() => s
            .spec
            .consumers
            .groups
            .iter()
            .map(|g| g.name.clone())
            .collect(),
        _ => args.groups.clone(),
    };
    Ok((topic, groups))
}

/// The plan of a run outside Kubernetes, from flags only.
pub(super) fn local_plan(args: &LoadTestArgs, producers: Vec<Producer>) -> Result<Plan> {
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
        segment: Segment::alone(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use outbox_contract::crd::OutboxSystemSpec;

    fn system() -> OutboxSystem {
        let spec: OutboxSystemSpec = serde_yaml::from_str(
            "image: outbox-worker:dev\ndatabase: {urlSecretRef: {name: db, key: url}}\n\
             kafka: {bootstrapServers: kafka:9092}\ntopic: {name: orders, partitions: 6}\n\
             consumers: {groups: [{name: a, replicas: 3}, {name: b, replicas: 1}]}\n",
        )
        .expect("an OutboxSystem spec");
        OutboxSystem::new("shop", spec)
    }

    #[test]
    fn topic_and_groups_come_from_the_flags_before_the_system() {
        let system = system();
        let from_system = topic_and_groups(&args::from_flags(&[]), Some(&system));
        assert_eq!(
            from_system.expect("from the system"),
            ("orders".to_string(), vec!["a".to_string(), "b".to_string()])
        );
        let flags = args::from_flags(&["--topic", "other", "--group", "x"]);
        assert_eq!(
            topic_and_groups(&flags, Some(&system)).expect("from the flags"),
            ("other".to_string(), vec!["x".to_string()])
        );
        let missing = topic_and_groups(&args::from_flags(&[]), None).unwrap_err();
        assert!(missing.to_string().contains("--topic"), "{missing}");
    }

    #[test]
    fn a_local_plan_refuses_what_the_api_server_would() {
        let producers = vec![Producer::from_url("http://127.0.0.1:5301")];
        let plan = |flags: &[&str]| local_plan(&args::from_flags(flags), producers.clone());
        let ok = plan(&["--topic", "t", "--scenario", "batch:100:batched"]).expect("a plan");
        assert_eq!(ok.scenarios.len(), 1);
        assert_eq!(ok.producers, producers);
        let twice = plan(&[
            "--topic",
            "t",
            "--scenario",
            "s:1:batched",
            "--scenario",
            "s:2:immediate",
        ])
        .unwrap_err();
        assert!(twice.to_string().contains("unique"), "{twice}");
        let none = plan(&["--topic", "t"]).unwrap_err();
        assert!(none.to_string().contains("--scenario"), "{none}");
        let percent = plan(&[
            "--topic",
            "t",
            "--scenario",
            "s:1:batched",
            "--success-threshold",
            "120",
        ])
        .unwrap_err();
        assert!(percent.to_string().contains("120"), "{percent}");
    }
}
