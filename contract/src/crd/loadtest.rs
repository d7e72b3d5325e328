//! The `LoadTest` custom resource: a run of scenarios against an `OutboxSystem`, and its
//! results as written by the load-test runner.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

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
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec is immutable: create a new LoadTest"))]
pub struct LoadTestSpec {
    /// The OutboxSystem (same namespace) to load.
    pub system_ref: SystemRef,
    /// Scenarios, run one after the other.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self.all(s, self.exists_one(t, t.name == s.name))").message("spec.scenarios: scenario names must be unique"))]
    pub scenarios: Vec<Scenario>,
    /// Payload size of each message in bytes.
    #[serde(default = "default_message_size")]
    #[schemars(range(min = 1, max = 1048576))]
    pub message_size: i32,
    /// Number of distinct message keys (per-key order is verified).
    #[serde(default = "default_keys")]
    #[schemars(range(min = 1))]
    pub keys: i64,
    /// Percentage of messages that must be accepted for the run to succeed (default 95).
    #[serde(default = "default_success_threshold")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub success_threshold: f64,
    /// How long verification waits for every consumer group to acknowledge everything.
    #[serde(default = "default_verification_timeout")]
    #[schemars(range(min = 1))]
    pub verification_timeout_seconds: i64,
    /// Delete the runner Job this many seconds after the run finished (results stay in
    /// this LoadTest's status). Absent: keep the Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,
    /// Runner image override (defaults to the OutboxSystem's image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Components outside the OutboxSystem whose CPU time the run accounts for (the
    /// Kafka brokers, PostgreSQL), each a Prometheus endpoint exposing
    /// `process_cpu_seconds_total`. The producers and consumers are found by the runner.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub cpu_sources: Vec<CpuSource>,
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

/// One scenario of a load test.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Scenario {
    /// Scenario name, e.g. `batch` or `immediate`.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Messages to send, split across all producers.
    #[schemars(range(min = 1))]
    pub messages: i64,
    /// True: the batch endpoint (bulk ingest); false: one request per message.
    pub batching: bool,
    /// Concurrent requests in flight per producer (runner default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub concurrency: Option<i32>,
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
    /// Scheduled (operator), Complete and Verified (runner; the operator sets Complete
    /// when the Job failed before the runner reported), Degraded (runner: a dependency
    /// is away and the runner is waiting for it).
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
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
    /// Latency from the outbox write to this group's first acknowledgement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyPercentiles>,
}
