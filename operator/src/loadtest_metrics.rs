//! The last result of each LoadTest as Prometheus gauges (`outbox_loadtest_*`), for
//! alert rules and dashboards. [`LoadTestCollector`] computes them on every scrape from
//! the LoadTest controller's reflector store, so a deleted LoadTest's series vanish
//! with it, without bookkeeping; [`samples`] is the pure part: one LoadTest's status →
//! its samples.
//!
//! Every series carries `namespace`, `loadtest` (the LoadTest's name) and `system`
//! (`spec.systemRef.name`). A replica that does not lead runs no controller and serves
//! none of them, so only the leader's `/metrics` has them.

use std::sync::{Arc, OnceLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use crate::conditions;
use crate::crd::{GroupVerification, LoadTest, LoadTestPhase, LoadTestStatus};

/// The gauges of a LoadTest, in the order they are exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadTestGauge {
    /// `outbox_loadtest_phase{phase}`.
    Phase,
    /// `outbox_loadtest_verified`.
    Verified,
    /// `outbox_loadtest_thresholds_met`.
    ThresholdsMet,
    /// `outbox_loadtest_messages_accepted`.
    MessagesAccepted,
    /// `outbox_loadtest_messages_missing`.
    MessagesMissing,
    /// `outbox_loadtest_messages_duplicated`.
    MessagesDuplicated,
    /// `outbox_loadtest_throughput_messages_per_second`.
    Throughput,
    /// `outbox_loadtest_end_to_end_latency_seconds{quantile}`.
    EndToEndLatency,
    /// `outbox_loadtest_cpu_micros_per_message`.
    CpuMicrosPerMessage,
    /// `outbox_loadtest_start_timestamp_seconds`.
    StartTimestamp,
    /// `outbox_loadtest_completion_timestamp_seconds`.
    CompletionTimestamp,
}

impl LoadTestGauge {
    /// Every gauge, in exposition order.
    pub const ALL: [LoadTestGauge; 11] = [
        LoadTestGauge::Phase,
        LoadTestGauge::Verified,
        LoadTestGauge::ThresholdsMet,
        LoadTestGauge::MessagesAccepted,
        LoadTestGauge::MessagesMissing,
        LoadTestGauge::MessagesDuplicated,
        LoadTestGauge::Throughput,
        LoadTestGauge::EndToEndLatency,
        LoadTestGauge::CpuMicrosPerMessage,
        LoadTestGauge::StartTimestamp,
        LoadTestGauge::CompletionTimestamp,
    ];

    /// The name as exposed (with its unit suffix, if any).
    pub fn name(self) -> String {
        match self.unit() {
            Some(unit) => format!("{}_{}", self.base_name(), unit.as_str()),
            None => self.base_name().to_string(),
        }
    }

    /// The name without the unit suffix, which the encoder appends.
    fn base_name(self) -> &'static str {
        match self {
            LoadTestGauge::Phase => "outbox_loadtest_phase",
            LoadTestGauge::Verified => "outbox_loadtest_verified",
            LoadTestGauge::ThresholdsMet => "outbox_loadtest_thresholds_met",
            LoadTestGauge::MessagesAccepted => "outbox_loadtest_messages_accepted",
            LoadTestGauge::MessagesMissing => "outbox_loadtest_messages_missing",
            LoadTestGauge::MessagesDuplicated => "outbox_loadtest_messages_duplicated",
            LoadTestGauge::Throughput => "outbox_loadtest_throughput_messages_per_second",
            LoadTestGauge::EndToEndLatency => "outbox_loadtest_end_to_end_latency",
            LoadTestGauge::CpuMicrosPerMessage => "outbox_loadtest_cpu_micros_per_message",
            LoadTestGauge::StartTimestamp => "outbox_loadtest_start_timestamp",
            LoadTestGauge::CompletionTimestamp => "outbox_loadtest_completion_timestamp",
        }
    }

    fn unit(self) -> Option<Unit> {
        match self {
            LoadTestGauge::EndToEndLatency
            | LoadTestGauge::StartTimestamp
            | LoadTestGauge::CompletionTimestamp => Some(Unit::Seconds),
            _ => None,
        }
    }

    /// What the gauge is and where it comes from.
    pub fn help(self) -> &'static str {
        match self {
            LoadTestGauge::Phase => "Phase of the LoadTest (status.phase): 1 for the phase it is in, 0 for the others; no series before it has a phase",
            LoadTestGauge::Verified => "Whether every consumer group acknowledged every accepted message: the LoadTest's Verified condition, 1 True, 0 False; no series without the condition",
            LoadTestGauge::ThresholdsMet => "Whether every threshold of the LoadTest held: its ThresholdsMet condition, 1 True, 0 False; no series without the condition",
            LoadTestGauge::MessagesAccepted => "Messages the producers accepted over all scenarios of the LoadTest (status.acceptedMessages)",
            LoadTestGauge::MessagesMissing => "Accepted messages a consumer group never acknowledged, summed over the groups (status.groups[].missing); no series before verification",
            LoadTestGauge::MessagesDuplicated => "Redeliveries beyond the first acknowledgement, summed over the consumer groups (status.groups[].duplicates); no series before verification",
            LoadTestGauge::Throughput => "Accepted messages per second over all scenarios of the LoadTest (status.throughput)",
            LoadTestGauge::EndToEndLatency => "Latency from the produce request to the acknowledgement by a consumer group, at the quantile, in seconds (status.endToEndLatency p50, p95, p99, there in ms)",
            LoadTestGauge::CpuMicrosPerMessage => "CPU microseconds per message end to end over the LoadTest's run (status.cpu.microsPerMessage)",
            LoadTestGauge::StartTimestamp => "When the LoadTest's runner started, in unix seconds (status.startTime)",
            LoadTestGauge::CompletionTimestamp => "When the LoadTest finished, Succeeded or Failed, in unix seconds (status.completionTime)",
        }
    }
}

/// A sample's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A count, a 1/0 or a timestamp.
    Int(i64),
    /// A rate, a latency or a CPU time.
    Float(f64),
}

/// One sample of a LoadTest gauge.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The gauge.
    pub gauge: LoadTestGauge,
    /// `namespace`, `loadtest`, `system`, then `phase` or `quantile` where the gauge has it.
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: Value,
}

/// Every phase, each a series of `outbox_loadtest_phase`.
const PHASES: [LoadTestPhase; 5] = [
    LoadTestPhase::Pending,
    LoadTestPhase::Running,
    LoadTestPhase::Verifying,
    LoadTestPhase::Succeeded,
    LoadTestPhase::Failed,
];

/// The `phase` label: the phase as `status.phase` spells it.
pub fn phase_label(phase: LoadTestPhase) -> &'static str {
    match phase {
        LoadTestPhase::Pending => "Pending",
        LoadTestPhase::Running => "Running",
        LoadTestPhase::Verifying => "Verifying",
        LoadTestPhase::Succeeded => "Succeeded",
        LoadTestPhase::Failed => "Failed",
    }
}

/// The samples of one LoadTest's status (pure); none without a status.
pub fn samples(loadtest: &LoadTest) -> Vec<Sample> {
    let Some(status) = &loadtest.status else {
        return Vec::new();
    };
    let mut out = Samples {
        labels: vec![
            ("namespace", loadtest.namespace().unwrap_or_default()),
            ("loadtest", loadtest.name_any()),
            ("system", loadtest.spec.system_ref.name.clone()),
        ],
        list: Vec::new(),
    };
    if let Some(current) = status.phase {
        for phase in PHASES {
            let value = Value::Int(i64::from(phase == current));
            out.add_labelled(LoadTestGauge::Phase, ("phase", phase_label(phase)), value);
        }
    }
    let verified = condition_value(status, conditions::loadtest::VERIFIED);
    out.add(LoadTestGauge::Verified, verified);
    let thresholds_met = condition_value(status, conditions::loadtest::THRESHOLDS_MET);
    out.add(LoadTestGauge::ThresholdsMet, thresholds_met);
    out.add(
        LoadTestGauge::MessagesAccepted,
        status.accepted_messages.map(Value::Int),
    );
    let groups_sum = |count: fn(&GroupVerification) -> i64| {
        (!status.groups.is_empty())
            .then(|| Value::Int(status.groups.iter().map(count).fold(0, i64::saturating_add)))
    };
    out.add(LoadTestGauge::MessagesMissing, groups_sum(|g| g.missing));
    out.add(
        LoadTestGauge::MessagesDuplicated,
        groups_sum(|g| g.duplicates),
    );
    out.add(
        LoadTestGauge::Throughput,
        status.throughput.map(Value::Float),
    );
    if let Some(latency) = &status.end_to_end_latency {
        for (quantile, ms) in [
            ("0.5", latency.p50),
            ("0.95", latency.p95),
            ("0.99", latency.p99),
        ] {
            let seconds = Value::Float(ms / 1000.0);
            out.add_labelled(
                LoadTestGauge::EndToEndLatency,
                ("quantile", quantile),
                seconds,
            );
        }
    }
    let cpu = status.cpu.as_ref().and_then(|c| c.micros_per_message);
    out.add(LoadTestGauge::CpuMicrosPerMessage, cpu.map(Value::Float));
    out.add(
        LoadTestGauge::StartTimestamp,
        unix_seconds(&status.start_time),
    );
    out.add(
        LoadTestGauge::CompletionTimestamp,
        unix_seconds(&status.completion_time),
    );
    out.list
}

/// 1 for a condition of `type_` that is True, 0 for False; none without it (or Unknown).
fn condition_value(status: &LoadTestStatus, type_: &str) -> Option<Value> {
    match conditions::find(&status.conditions, type_)?.status.as_str() {
        "True" => Some(Value::Int(1)),
        "False" => Some(Value::Int(0)),
        _ => None,
    }
}

fn unix_seconds(time: &Option<Time>) -> Option<Value> {
    time.as_ref().map(|t| Value::Int(t.0.as_second()))
}

/// One LoadTest's samples as they are gathered, each with its labels.
struct Samples {
    labels: Vec<(&'static str, String)>,
    list: Vec<Sample>,
}

impl Samples {
    fn add(&mut self, gauge: LoadTestGauge, value: Option<Value>) {
        if let Some(value) = value {
            self.list.push(Sample {
                gauge,
                labels: self.labels.clone(),
                value,
            });
        }
    }

    fn add_labelled(&mut self, gauge: LoadTestGauge, label: (&'static str, &str), value: Value) {
        let mut labels = self.labels.clone();
        labels.push((label.0, label.1.to_string()));
        self.list.push(Sample {
            gauge,
            labels,
            value,
        });
    }
}

/// Writes `samples` (of any number of LoadTests) as one family per gauge; a gauge
/// without samples is left out, as `prometheus_client` leaves out an empty family.
pub fn encode_samples(
    encoder: &mut DescriptorEncoder,
    samples: &[Sample],
) -> Result<(), std::fmt::Error> {
    for gauge in LoadTestGauge::ALL {
        let mut of_gauge = samples.iter().filter(|s| s.gauge == gauge).peekable();
        if of_gauge.peek().is_none() {
            continue;
        }
        let unit = gauge.unit();
        let mut family = encoder.encode_descriptor(
            gauge.base_name(),
            gauge.help(),
            unit.as_ref(),
            MetricType::Gauge,
        )?;
        for sample in of_gauge {
            let metric = family.encode_family(&sample.labels)?;
            match sample.value {
                Value::Int(v) => ConstGauge::new(v).encode(metric)?,
                Value::Float(v) => ConstGauge::new(v).encode(metric)?,
            }
        }
    }
    Ok(())
}

/// Serves the samples of every LoadTest in the LoadTest controller's store on each
/// scrape; nothing until [`LoadTestCollector::serve`] hands it the store. Clones share
/// the store.
#[derive(Debug, Clone, Default)]
pub struct LoadTestCollector {
    store: Arc<OnceLock<Store<LoadTest>>>,
}

impl LoadTestCollector {
    /// Reads the LoadTests from `store` from now on. A collector serves one store: a
    /// second is refused (false).
    pub fn serve(&self, store: Store<LoadTest>) -> bool {
        self.store.set(store).is_ok()
    }
}

impl Collector for LoadTestCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(store) = self.store.get() else {
            return Ok(());
        };
        let mut loadtests = store.state();
        loadtests.sort_by_key(|lt| (lt.namespace(), lt.name_any()));
        let all: Vec<Sample> = loadtests.iter().flat_map(|lt| samples(lt)).collect();
        encode_samples(&mut encoder, &all)
    }
}

#[cfg(test)]
#[path = "loadtest_metrics_tests.rs"]
mod tests;
