//! The `LoadTest` custom resource: a run of scenarios against an `OutboxSystem`, and its
//! results as written by the load-test runner.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::PodSettings;

/// A load test: the operator runs it as one Kubernetes Job; the runner drives every
/// producer of the referenced OutboxSystem, verifies that every consumer group
/// acknowledged every message, and writes the results here.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "outbox.dev",
    version = "v1alpha1",
    kind = "LoadTest",
    plural = "loadtests",
    shortname = "lt",
    namespaced,
    status = "LoadTestStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"System","type":"string","jsonPath":".spec.systemRef.name"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Messages","type":"integer","description":"Messages accepted over all scenarios","jsonPath":".status.acceptedMessages"}"#,
    printcolumn = r#"{"name":"Throughput","type":"number","description":"Overall accepted messages per second","jsonPath":".status.throughput"}"#,
    printcolumn = r#"{"name":"Verified","type":"string","jsonPath":".status.conditions[?(@.type==\"Verified\")].status"}"#,
    printcolumn = r#"{"name":"Thresholds","type":"string","description":"True when every threshold held","jsonPath":".status.conditions[?(@.type==\"ThresholdsMet\")].status"}"#,
    printcolumn = r#"{"name":"Runners","type":"string","description":"Runner pods ready / parallelism (while the run goes on)","jsonPath":".status.runnersReady"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec is immutable: create a new LoadTest"))]
#[x_kube(validation = Rule::new("!has(self.parallelism) || !has(self.keys) || self.parallelism <= self.keys").message("spec.parallelism: every runner sends its own keys, so keys must be at least parallelism"))]
pub struct LoadTestSpec {
    /// The OutboxSystem (same namespace) to load.
    pub system_ref: SystemRef,
    /// Scenarios, run one after the other, except those marked `withPrevious`, which
    /// start together with the scenario before them.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self.all(s, self.exists_one(t, t.name == s.name))").message("spec.scenarios: scenario names must be unique"))]
    #[x_kube(validation = Rule::new("!has(self[0].withPrevious) || !self[0].withPrevious").message("spec.scenarios[0].withPrevious: the first scenario has no scenario before it"))]
    pub scenarios: Vec<Scenario>,
    /// Payload size of each message in bytes.
    #[serde(default = "default_message_size")]
    #[schemars(range(min = 1, max = 1048576))]
    pub message_size: i32,
    /// Number of distinct message keys (per-key order is verified).
    #[serde(default = "default_keys")]
    #[schemars(range(min = 1))]
    pub keys: i64,
    /// Percentage of each scenario's messages that must be accepted for the run to
    /// succeed (default 95).
    #[serde(default = "default_success_threshold")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub success_threshold: f64,
    /// How long verification waits for every consumer group to acknowledge everything.
    #[serde(default = "default_verification_timeout")]
    #[schemars(range(min = 1))]
    pub verification_timeout_seconds: i64,
    /// Seconds after the runner Job finished that Kubernetes deletes it and its pod (the
    /// Job's own `ttlSecondsAfterFinished`; the results stay in this LoadTest's status).
    /// Absent: keep the Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub ttl_seconds_after_finished: Option<i64>,
    /// Runner image override (defaults to the OutboxSystem's image, then to the
    /// operator's worker image: its `--worker-image`, the Helm chart's `workerImage`).
    /// The runner gets this namespace's database URL. Where the operator has allowed
    /// image repositories (the chart's `imagePolicy.allowedRepositories`), a runner
    /// image (this one, else the system's) outside them fails the run at once, without
    /// a Job (`ImageNotAllowed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Components outside the OutboxSystem whose CPU time the run accounts for (the
    /// Kafka brokers, PostgreSQL), each a Prometheus endpoint exposing
    /// `process_cpu_seconds_total`. The producers and consumers are found by the runner.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub cpu_sources: Vec<CpuSource>,
    /// Limits the run must stay within to succeed, beside the success threshold and
    /// verification (which tolerates no missing and no out-of-order message). Each
    /// crossed limit is named in the `ThresholdsMet` condition with its measured value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Thresholds>,
    /// The runner Job's pod: its CPU and memory, scheduling and metadata.
    #[serde(default, skip_serializing_if = "RunnerSpec::is_default")]
    pub runner: RunnerSpec,
    /// Runner pods that drive the run together (default 1): still one Job, an Indexed
    /// Job with this many pods. Pod `i` sends its own segment of every scenario (its
    /// share of the messages, of each arrival rate and of the keys); all start at one
    /// time the operator sets once every runner pod is ready; runner 0 merges the
    /// segments into one result (counts summed, request-latency histograms merged)
    /// and verifies every accepted message once. `status.runners` has a line per pod.
    #[serde(default = "default_parallelism", skip_serializing_if = "is_one")]
    #[schemars(range(min = 1, max = 16))]
    pub parallelism: i32,
}

fn default_parallelism() -> i32 {
    1
}

fn is_one(n: &i32) -> bool {
    *n == 1
}

/// The load-test runner's pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RunnerSpec {
    /// CPU and memory requests and limits of the runner container. Absent: requests
    /// 50m CPU and 128Mi memory, a 256Mi memory limit and no CPU limit (a throttled
    /// runner would measure its own stalls as latency). `{}` sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Scheduling and metadata of the runner pod: node selector, tolerations,
    /// affinity, topology spread, priority class, image pull secrets, labels and
    /// annotations.
    #[serde(default, skip_serializing_if = "is_default_pod")]
    pub pod: PodSettings,
}

fn is_default_pod(pod: &PodSettings) -> bool {
    *pod == PodSettings::default()
}

impl RunnerSpec {
    fn is_default(&self) -> bool {
        *self == RunnerSpec::default()
    }

    /// The runner container's resources: `resources` when set, else
    /// [`RunnerSpec::default_resources`].
    pub fn resources_or_default(&self) -> ResourceRequirements {
        self.resources
            .clone()
            .unwrap_or_else(RunnerSpec::default_resources)
    }

    /// The runner's resources when the LoadTest names none, sized from the reference
    /// run (10,000,000 + 5,000 messages, `make demo`, docs/benchmarks.md "Where the 2 cores go"):
    /// the runner used 5.0–8.6 CPU seconds over runs of 180–232 s, 0.03–0.05 of a core,
    /// which the CPU request (50m) covers without reserving a node's share that the
    /// producers and consumers, whose load it is, need more; no container of the run exceeded 92 MiB. The runner's own memory peak
    /// was not recorded apart from the others', so 92 MiB is an upper bound, not its
    /// figure: the request (128Mi) sits above it and the limit (256Mi, the workers'
    /// in the sample) leaves room for longer arrival-rate runs' time series. No CPU
    /// limit: throttling would show up as request latency in the results.
    pub fn default_resources() -> ResourceRequirements {
        let quantities = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                .collect::<BTreeMap<_, _>>()
        };
        ResourceRequirements {
            requests: Some(quantities(&[("cpu", "50m"), ("memory", "128Mi")])),
            limits: Some(quantities(&[("memory", "256Mi")])),
            ..ResourceRequirements::default()
        }
    }
}

/// Limits a run must stay within. Latency limits apply to the scenarios sent one
/// message per request (immediate and arrival-rate ones); a batch request's latency is
/// that of a whole batch and is not judged.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Thresholds {
    /// Request latency (send → the producer's answer) in ms. Default for arrival-rate
    /// scenarios when absent: p50 50, p95 200, p99 500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_latency_ms: Option<LatencyLimits>,
    /// End-to-end latency (outbox write → acknowledged) in ms, per consumer group, of
    /// each scenario whose own latency is measured (sent one message per request after
    /// earlier scenarios' backlog drained).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_to_end_latency_ms: Option<LatencyLimits>,
    /// Least accepted messages per second of every scenario.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub min_throughput: Option<f64>,
    /// Least ratio of achieved to offered rate of every arrival-rate stage, e.g. 0.95.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_achieved_ratio: Option<f64>,
    /// Most redelivered messages in any consumer group (at-least-once delivery allows
    /// them; absent: any number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_duplicates: Option<i64>,
}

/// Upper limits on latency percentiles, in milliseconds; an absent one is not judged.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.p50) || has(self.p95) || has(self.p99)").message("a latency limit names at least one of p50, p95, p99"))]
pub struct LatencyLimits {
    /// Median, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub p50: Option<f64>,
    /// 95th percentile, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub p95: Option<f64>,
    /// 99th percentile, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub p99: Option<f64>,
}

impl LatencyLimits {
    /// The seed suites' targets, for arrival-rate scenarios without limits of their own.
    pub fn arrival_rate_default() -> LatencyLimits {
        LatencyLimits {
            p50: Some(50.0),
            p95: Some(200.0),
            p99: Some(500.0),
        }
    }
}

/// A Prometheus endpoint reporting one component's CPU time.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CpuSource {
    /// The component's name in the accounting, e.g. `kafka` or `postgresql`.
    #[schemars(length(min = 1, max = 63))]
    pub component: String,
    /// URL of its metrics, e.g. `http://kafka-exporter:9404/metrics`; every sample of
    /// `process_cpu_seconds_total` in it is summed.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("cpuSources[].url must be an http:// or https:// URL"))]
    pub url: String,
}

fn default_message_size() -> i32 {
    256
}

fn default_keys() -> i64 {
    1000
}

fn default_success_threshold() -> f64 {
    95.0
}

fn default_verification_timeout() -> i64 {
    600
}

/// Reference to an OutboxSystem.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SystemRef {
    /// Name of the OutboxSystem in the LoadTest's namespace.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// One scenario of a load test: either a number of messages sent as fast as
/// `concurrency` allows (closed model), or an arrival rate held for a duration, in one
/// or more stages (open model).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.messages) != has(self.arrivalRate)").message("a scenario sets exactly one of messages (sent as fast as its concurrency allows) and arrivalRate (an open-model rate)"))]
#[x_kube(validation = Rule::new("!has(self.arrivalRate) || !self.batching").message("an arrivalRate scenario sends one message per request: batching must be false"))]
#[x_kube(validation = Rule::new("!has(self.arrivalRate) || !has(self.concurrency)").message("an arrivalRate scenario bounds its requests in flight with arrivalRate.connections, not concurrency"))]
#[x_kube(validation = Rule::new("!has(self.arrivalRate) || !has(self.via) || self.via == 'http'").message("an arrivalRate scenario goes through the producers' HTTP endpoints: via enqueue sends as fast as its concurrency allows"))]
pub struct Scenario {
    /// Scenario name, e.g. `batch` or `immediate`.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Messages to send, split across all producers (closed model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub messages: Option<i64>,
    /// True: the batch endpoint (bulk ingest); false: one request per message.
    #[serde(default)]
    pub batching: bool,
    /// Concurrent requests in flight per producer (when absent: 2 for batching
    /// scenarios, 1, one message at a time, for the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub concurrency: Option<i32>,
    /// An arrival rate (open model): requests start on schedule whether or not earlier
    /// ones were answered, one message each, spread over all producers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrival_rate: Option<ArrivalRate>,
    /// Start together with the scenario before it instead of after it (e.g. a
    /// constant rate of single messages while a batch is ingested). The scenarios sent
    /// together share the producers; a scenario's own end-to-end latency is measured
    /// only when it is sent alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub with_previous: bool,
    /// How the runner stores the messages: `http` (the producers' endpoints, the
    /// default) or `enqueue` (`outbox_enqueue`, or `outbox_enqueue_many` when batching,
    /// in transactions of the runner's own on the system's database, as an application
    /// enqueues in its own transaction; `concurrency` is then its sessions).
    #[serde(default, skip_serializing_if = "Via::is_http")]
    pub via: Via,
}

/// How a scenario's messages reach the outbox.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum Via {
    /// The producers' HTTP endpoints.
    #[default]
    Http,
    /// The SQL contract, in the runner's own database transactions.
    Enqueue,
}

impl Via {
    /// The default: left out of the spec.
    pub fn is_http(&self) -> bool {
        *self == Via::Http
    }
}

impl Scenario {
    /// Messages the scenario offers: its `messages`, or every stage's rate × duration.
    pub fn offered_messages(&self) -> i64 {
        match (&self.messages, &self.arrival_rate) {
            (Some(m), _) => *m,
            (None, Some(rate)) => rate.stages.iter().map(RateStage::messages).sum(),
            (None, None) => 0,
        }
    }
}

/// An open-model arrival rate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ArrivalRate {
    /// Stages, one after the other, each holding its rate for its duration: one stage
    /// is a constant rate, several a ramp (e.g. 100 → 1,000 → 10,000 msg/s).
    #[schemars(length(min = 1, max = 20))]
    pub stages: Vec<RateStage>,
    /// Requests in flight at most, over all producers (default 100). An arrival due
    /// while all are busy is not sent: it counts as a missed arrival, and the rate
    /// does not slow down when answers do.
    #[serde(default = "default_connections")]
    #[schemars(range(min = 1, max = 500))]
    pub connections: i32,
}

fn default_connections() -> i32 {
    100
}

/// One stage of an arrival rate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RateStage {
    /// Messages per second offered during the stage.
    #[schemars(range(min = 1, max = 100000))]
    pub rate_per_second: i64,
    /// How long the stage lasts, in seconds.
    #[schemars(range(min = 1, max = 86400))]
    pub duration_seconds: i64,
}

impl RateStage {
    /// Messages the stage offers.
    pub fn messages(&self) -> i64 {
        self.rate_per_second.saturating_mul(self.duration_seconds)
    }
}

/// Phase of a load test. Moves only forward: Pending, Running, Verifying, then
/// Succeeded or Failed.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum LoadTestPhase {
    /// The Job is created, the runner has not started.
    #[default]
    Pending,
    /// The runner is sending messages.
    Running,
    /// Sending is done, the runner is checking acknowledgements.
    Verifying,
    /// Every scenario met its threshold and verification passed.
    Succeeded,
    /// The run or its verification failed.
    Failed,
}

impl LoadTestPhase {
    /// Order of the phases: a phase may only be replaced by one of a higher rank.
    pub fn rank(self) -> u8 {
        match self {
            LoadTestPhase::Pending => 0,
            LoadTestPhase::Running => 1,
            LoadTestPhase::Verifying => 2,
            LoadTestPhase::Succeeded | LoadTestPhase::Failed => 3,
        }
    }

    /// Succeeded or Failed.
    pub fn is_finished(self) -> bool {
        self.rank() == 3
    }
}

/// Results of a load test, written by the runner (and phase/job bookkeeping by the operator).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LoadTestStatus {
    /// Where the run is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<LoadTestPhase>,
    /// Identifier of this run (stamped into every message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// When the runner started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the run finished (Succeeded or Failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Name of the runner Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// Human-readable summary of the current state or the failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Messages accepted over all scenarios.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_messages: Option<i64>,
    /// Accepted messages per second over all scenarios.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<f64>,
    /// Per-scenario results, in run order.
    #[serde(default)]
    pub scenarios: Vec<ScenarioResult>,
    /// Per consumer group verification results.
    #[serde(default)]
    pub groups: Vec<GroupVerification>,
    /// Latency from the produce request to the acknowledgement by a consumer group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_to_end_latency: Option<LatencyPercentiles>,
    /// Dependencies the runner found away and waited for (the outbox database
    /// `database`, the API server `apiServer`, a producer `producer <pod>`), each with
    /// how often and how long; empty when there were none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["dependency".into()]))]
    pub outages: Vec<OutageSummary>,
    /// Where the CPU went from the first send until verification ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuAccounting>,
    /// Every threshold judged, passed or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thresholds: Vec<ThresholdCheck>,
    /// The ConfigMap holding this run's HTML report (key `report.html`), written by a
    /// runner in a Job: `kubectl get configmap <it> -o jsonpath='{.data.report\.html}'`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_config_map: Option<String>,
    /// Scheduled (operator), Complete and Verified (runner; the operator sets Complete
    /// when the Job failed before the runner reported), Degraded (runner: a dependency
    /// is away and the runner is waiting for it).
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// With `parallelism` above 1: a line per runner pod, each written by that runner
    /// (its own field manager, so none overwrites another's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["index".into()]))]
    pub runners: Vec<RunnerLine>,
    /// With `parallelism` above 1: runner pods ready over `parallelism`, e.g. `3/3`
    /// (operator, from the Job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runners_ready: Option<String>,
    /// With `parallelism` above 1: when every runner starts sending, set once by the
    /// operator when all runner pods are ready, so a slow image pull does not stretch
    /// the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<Time>,
}

/// One runner pod of a LoadTest with `parallelism` above 1.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RunnerLine {
    /// The pod's index in the Indexed Job (its `JOB_COMPLETION_INDEX`).
    pub index: i32,
    /// The pod that wrote this line last (a replaced runner's successor resumes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Messages of its segment over all scenarios (arrival-rate ones as offered).
    pub messages: i64,
    /// Messages of its segment accepted so far.
    pub accepted: i64,
    /// Groups of scenarios (a scenario with those marked `withPrevious` after it) it
    /// has sent; runners start a group together.
    pub groups_sent: i32,
    /// `Waiting` (for the start time or the others), `Sending`, `Sent`, `Failed`.
    pub state: RunnerState,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where one runner of a parallel run is.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum RunnerState {
    /// Waiting for the start time or for the other runners.
    #[default]
    Waiting,
    /// Sending its segment.
    Sending,
    /// Its segment of every scenario is sent.
    Sent,
    /// It could not send its segment.
    Failed,
}

/// CPU time over a run, by component.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CpuAccounting {
    /// Seconds of wall time the accounting covers (this runner attempt's first send to
    /// the end of verification).
    pub window_seconds: f64,
    /// CPU seconds the runner's node spent busy (user, system, interrupts) in that
    /// window, from its `/proc/stat`; absent where unreadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_seconds: Option<f64>,
    /// CPU seconds per component: `runner`, `producer http`, `relay` (with its Kafka
    /// client), `producer other`, `consumers <group>`, each `cpuSources` component, and
    /// `rest of node` (what the node spent beyond them).
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["component".into()]))]
    pub components: Vec<ComponentCpu>,
    /// CPU microseconds per message, end to end: the node's busy time (or, without
    /// it, the components' sum) over the messages every group acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micros_per_message: Option<f64>,
    /// Sources that could not be read (their component is missing from the list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

/// One component's CPU time over a run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ComponentCpu {
    /// The component.
    pub component: String,
    /// CPU seconds it used.
    pub seconds: f64,
}

/// Outages of one dependency during a run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OutageSummary {
    /// The dependency: `database`, `apiServer` or `producer <pod>`.
    pub dependency: String,
    /// How many outages.
    pub count: i64,
    /// The longest, in seconds (counting one still going on).
    pub longest_seconds: f64,
    /// Whether one goes on now.
    #[serde(default)]
    pub ongoing: bool,
}

/// Results of one scenario.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScenarioResult {
    /// Scenario name.
    pub name: String,
    /// Messages the scenario tried to send.
    pub messages: i64,
    /// Messages accepted (2xx).
    pub accepted: i64,
    /// Messages refused or lost in transport.
    pub failed: i64,
    /// Failed messages by reason (e.g. `http503`, `timeout`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failure_reasons: BTreeMap<String, i64>,
    /// Requests answered `http429` (backlog at its bound) or `http503` (busy, database
    /// unavailable) with nothing stored, and sent again: how often the system pushed
    /// back.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retried_requests: BTreeMap<String, i64>,
    /// Wall time of the scenario in seconds.
    pub duration_seconds: f64,
    /// Accepted messages per second.
    pub throughput: f64,
    /// Request latency percentiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyPercentiles>,
    /// How the messages were split across producers.
    #[serde(default)]
    pub per_producer: Vec<ProducerResult>,
    /// End-to-end latency of this scenario's messages alone, per consumer group (from
    /// the outbox write to the acknowledgement). Measured for a scenario sent one
    /// message at a time after others, once their backlog was drained.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub end_to_end_latency: Vec<GroupLatency>,
    /// Whether every group had acknowledged the earlier scenarios before this one was
    /// sent (false: the wait ran out after `verificationTimeoutSeconds`, and the
    /// latency includes the backlog).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog_drained: Option<bool>,
    /// Arrivals of an arrival-rate scenario that were due while every connection was
    /// busy, and so were not sent (not counted in `messages`' accepted or failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed_arrivals: Option<i64>,
    /// Each stage of an arrival-rate scenario: offered and achieved rate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageResult>,
    /// What the system spent while this scenario was sent (a scenario sent alone):
    /// every component's CPU time over its sending, and `microsPerMessage` over the
    /// messages it stored then. Beside another scenario's, it compares what storing a
    /// message costs by each path (`via`: HTTP ingest or enqueue in a transaction).
    /// The relay and the consumers that run meanwhile are in it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sending_cpu: Option<CpuAccounting>,
}

/// One arrival-rate stage as it went.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StageResult {
    /// Messages per second offered.
    pub rate_per_second: i64,
    /// The stage's length, in seconds.
    pub duration_seconds: i64,
    /// Arrivals scheduled (rate × duration).
    pub offered: i64,
    /// Arrivals sent on time.
    pub sent: i64,
    /// Messages accepted.
    pub accepted: i64,
    /// Arrivals due while every connection was busy.
    pub missed_arrivals: i64,
    /// Accepted messages per second of the stage's duration.
    pub achieved_rate: f64,
    /// `achievedRate / ratePerSecond`: 1.0 when the system kept up.
    pub achieved_ratio: f64,
    /// Request latency of the stage's requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyPercentiles>,
}

/// One threshold as judged.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ThresholdCheck {
    /// What was measured, e.g. `requestLatency.p95`, `endToEndLatency.p99`,
    /// `throughput`, `achievedRatio`, `duplicates`.
    pub metric: String,
    /// Scenario it was measured in, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<String>,
    /// Consumer group, for end-to-end latency and duplicates; stage number (from 1)
    /// for an achieved ratio, as `stage N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The limit.
    pub limit: f64,
    /// The measured value.
    pub measured: f64,
    /// Whether the value is within the limit.
    pub passed: bool,
}

/// Latency percentiles in milliseconds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LatencyPercentiles {
    /// Median, ms.
    pub p50: f64,
    /// 90th percentile, ms.
    pub p90: f64,
    /// 95th percentile, ms.
    #[serde(default)]
    pub p95: f64,
    /// 99th percentile, ms.
    pub p99: f64,
    /// 99.9th percentile, ms.
    pub p999: f64,
    /// Maximum, ms.
    pub max: f64,
}

/// One consumer group's end-to-end latency over a scenario, in milliseconds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GroupLatency {
    /// Consumer group.
    pub group: String,
    /// Acknowledgements measured.
    pub count: i64,
    /// Median, ms.
    pub p50: f64,
    /// 95th percentile, ms.
    pub p95: f64,
    /// 99th percentile, ms.
    pub p99: f64,
    /// Maximum, ms.
    pub max: f64,
}

/// One producer's share of a scenario.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProducerResult {
    /// Producer (pod name or address).
    pub producer: String,
    /// Messages it accepted.
    pub accepted: i64,
    /// Messages it refused or that failed in transport.
    pub failed: i64,
    /// Messages assigned to it by the split.
    #[serde(default)]
    pub messages: i64,
    /// Failed messages by reason (e.g. `http503`, `timeout`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failure_reasons: BTreeMap<String, i64>,
    /// Its requests answered 429 or 503 and sent again, by answer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retried_requests: BTreeMap<String, i64>,
    /// Wall time of its share in seconds.
    #[serde(default)]
    pub duration_seconds: f64,
    /// Messages it accepted per second.
    #[serde(default)]
    pub throughput: f64,
    /// Request latency percentiles of its requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyPercentiles>,
}

/// Verification of one consumer group.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GroupVerification {
    /// Consumer group name.
    pub group: String,
    /// Messages the group should have acknowledged (all accepted ones).
    pub expected: i64,
    /// Distinct messages it acknowledged.
    pub acknowledged: i64,
    /// Expected messages never acknowledged.
    pub missing: i64,
    /// Redeliveries recorded beyond the first acknowledgement.
    pub duplicates: i64,
    /// Messages acknowledged out of per-key order.
    pub out_of_order: i64,
    /// Expected messages the group gave up on and sent to its dead-letter topic.
    #[serde(default)]
    pub dead_lettered: i64,
    /// Expected messages the group gave up on that its dead-letter topic refused too
    /// (too large for it, or no such topic): skipped, never delivered anywhere.
    #[serde(default)]
    pub abandoned: i64,
    /// Latency from the outbox write to this group's first acknowledgement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyPercentiles>,
}
