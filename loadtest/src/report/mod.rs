//! The JSON report and the summary table printed at the end.
//!
//! The report embeds the very status written to the LoadTest (`status`), so the two
//! cannot disagree, plus what does not fit in a status: the producers and groups used,
//! the settings, and per group a sample of missing ids.

pub mod html;
pub mod store;

use std::fmt::Write as _;
use std::path::Path;

use outbox_contract::crd::{CpuAccounting, LatencyPercentiles, LoadTestStatus, ScenarioResult};
use serde::Serialize;

use crate::error::{LoadTestError, Result};
use outbox_core::ledger::GroupReport;

/// Settings the run used.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportSettings {
    /// Kafka topic.
    pub topic: String,
    /// Producers, by name.
    pub producers: Vec<String>,
    /// Consumer groups verified.
    pub groups: Vec<String>,
    /// Payload bytes per message.
    pub message_size: usize,
    /// Distinct keys.
    pub keys: u64,
    /// Percentage of messages that must be accepted.
    pub success_threshold: f64,
    /// Verification timeout in seconds.
    pub verification_timeout_seconds: u64,
    /// Messages per batch request.
    pub messages_per_request: usize,
}

/// The JSON report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The run id stamped into every message (`loadtest-run` header).
    pub run_id: String,
    /// `namespace/name` of the LoadTest, when the run had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_test: Option<String>,
    /// Settings used.
    pub settings: ReportSettings,
    /// True when this attempt resumed an earlier one of the same run id.
    pub resumed: bool,
    /// Messages whose requests had an unknown outcome (they were looked up in the outbox).
    pub uncertain_messages: u64,
    /// Wall time of this attempt, seconds.
    pub wall_time_seconds: f64,
    /// Seconds spent waiting for acknowledgements.
    pub verification_seconds: f64,
    /// Per group, the ledger's full report (with up to 20 missing ids).
    pub verification: Vec<GroupReport>,
    /// Exactly the status written to the LoadTest.
    pub status: LoadTestStatus,
    /// What was sampled while the run went.
    pub series: crate::series::Series,
    /// Each worker's resident memory from its first sample to its last.
    pub memory_growth: Vec<crate::series::MemoryGrowth>,
}

impl Report {
    /// Writes the report as pretty JSON to `path` (through a temporary file, so a
    /// reader never sees half a report).
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(|source| LoadTestError::Json {
            context: "the report",
            source,
        })?;
        let tmp = path.with_extension("json.tmp");
        let io = |source| LoadTestError::Report {
            path: path.display().to_string(),
            source,
        };
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

fn ms(l: &Option<LatencyPercentiles>) -> [String; 5] {
    match l {
        Some(l) => [l.p50, l.p90, l.p99, l.p999, l.max].map(|v| format!("{v:.1}")),
        None => std::array::from_fn(|_| "-".to_string()),
    }
}

/// What the CPU accounting covers, e.g. `over 240.5 s; node busy 471.7 s, 47.1 CPU-µs
/// per message end to end` (the summary and the HTML report both show it).
pub fn cpu_heading(cpu: &CpuAccounting) -> String {
    let per_message = cpu
        .micros_per_message
        .map(|m| format!(", {m:.1} CPU-µs per message end to end"))
        .unwrap_or_default();
    let node = cpu
        .node_seconds
        .map(|n| format!("; node busy {n:.1} s"))
        .unwrap_or_default();
    format!("over {:.1} s{node}{per_message}", cpu.window_seconds)
}

/// Each component's CPU seconds and percentage of all the components' seconds.
pub fn cpu_shares(cpu: &CpuAccounting) -> Vec<(&str, f64, f64)> {
    let total: f64 = cpu.components.iter().map(|c| c.seconds).sum();
    cpu.components
        .iter()
        .map(|c| {
            let share = if total > 0.0 {
                100.0 * c.seconds / total
            } else {
                0.0
            };
            (c.component.as_str(), c.seconds, share)
        })
        .collect()
}

/// Each worker's resident memory over the run, as the summary prints it.
pub fn memory_table(series: &crate::series::Series) -> String {
    let growth = series.memory_growth();
    let mut out = String::new();
    if growth.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "resident memory over the run (first → last, peak; growth per minute):"
    );
    let mb = |b: f64| b / 1_048_576.0;
    for g in &growth {
        let _ = writeln!(
            out,
            "  {:<40} {:<18} {:>7.1} → {:>7.1} MiB, peak {:>7.1} MiB; {:+.2} MiB/min over {:.0} s",
            g.worker,
            g.component,
            mb(g.first_bytes),
            mb(g.last_bytes),
            mb(g.peak_bytes),
            mb(g.bytes_per_minute()),
            g.seconds
        );
    }
    out
}

/// The summary table of a finished run: the scenarios (with each producer's share and
/// the details of each), the groups, the thresholds, the conditions and the CPU.
pub fn summary_table(run_id: &str, status: &LoadTestStatus) -> String {
    let mut out = String::new();
    let phase = status
        .phase
        .map(|p| format!("{p:?}"))
        .unwrap_or_else(|| "Pending".into());
    let _ = writeln!(out, "load test {run_id}: {phase}");
    scenarios_section(&mut out, status);
    groups_section(&mut out, status);
    thresholds_section(&mut out, status);
    let _ = writeln!(out);
    for c in &status.conditions {
        let _ = writeln!(
            out,
            "{}: {} ({}) {}",
            c.type_, c.status, c.reason, c.message
        );
    }
    cpu_section(&mut out, status);
    if let (Some(accepted), Some(throughput)) = (status.accepted_messages, status.throughput) {
        let _ = writeln!(
            out,
            "accepted {accepted} messages, {throughput:.1} msg/s while sending"
        );
    }
    out
}

/// One line per scenario and per producer, each scenario's details below it.
fn scenarios_section(out: &mut String, status: &LoadTestStatus) {
    let _ = writeln!(
        out,
        "{:<24} {:>10} {:>10} {:>8} {:>9} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "scenario / producer",
        "messages",
        "accepted",
        "failed",
        "seconds",
        "msg/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms"
    );
    for s in &status.scenarios {
        let [p50, p90, p99, p999, max] = ms(&s.latency);
        let _ = writeln!(
            out,
            "{:<24} {:>10} {:>10} {:>8} {:>9.2} {:>11.1} {:>8} {:>8} {:>8} {:>8} {:>8}",
            s.name,
            s.messages,
            s.accepted,
            s.failed,
            s.duration_seconds,
            s.throughput,
            p50,
            p90,
            p99,
            p999,
            max
        );
        for p in &s.per_producer {
            let [p50, p90, p99, p999, max] = ms(&p.latency);
            let _ = writeln!(
                out,
                "  {:<22} {:>10} {:>10} {:>8} {:>9.2} {:>11.1} {:>8} {:>8} {:>8} {:>8} {:>8}",
                p.producer,
                p.messages,
                p.accepted,
                p.failed,
                p.duration_seconds,
                p.throughput,
                p50,
                p90,
                p99,
                p999,
                max
            );
        }
        scenario_details(out, s);
    }
}

/// Failures, retries, missed arrivals, stages and the scenario's own end-to-end
/// latency, where it has them.
fn scenario_details(out: &mut String, s: &ScenarioResult) {
    for (label, counts) in [
        ("failures", &s.failure_reasons),
        ("pushed back (requests sent again)", &s.retried_requests),
    ] {
        if !counts.is_empty() {
            let counts: Vec<String> = counts.iter().map(|(r, n)| format!("{r}: {n}")).collect();
            let _ = writeln!(out, "  {label}: {}", counts.join(", "));
        }
    }
    if let Some(missed) = s.missed_arrivals {
        let _ = writeln!(out, "  arrivals missed (every connection busy): {missed}");
    }
    if let Some(cpu) = &s.sending_cpu {
        sending_cpu_line(out, cpu);
    }
    for (i, stage) in s.stages.iter().enumerate() {
        let p95 = stage
            .latency
            .as_ref()
            .map(|l| format!(", p95 {:.1} ms", l.p95))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  stage {}: {} msg/s offered for {} s: {} sent, {} accepted, {} missed; achieved {:.1} msg/s ({:.3} of offered){p95}",
            i + 1,
            stage.rate_per_second,
            stage.duration_seconds,
            stage.sent,
            stage.accepted,
            stage.missed_arrivals,
            stage.achieved_rate,
            stage.achieved_ratio
        );
    }
    if !s.end_to_end_latency.is_empty() {
        let drained = match s.backlog_drained {
            Some(false) => "the earlier backlog NOT drained first",
            _ => "the earlier backlog drained first",
        };
        let _ = writeln!(out, "  end to end, this scenario alone ({drained}):");
        for g in &s.end_to_end_latency {
            let _ = writeln!(
                out,
                "    {:<22} p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} acks)",
                g.group, g.p50, g.p95, g.p99, g.max, g.count
            );
        }
    }
}

/// What storing a message cost while the scenario was sent: per message, and the
/// components that spent the most.
fn sending_cpu_line(out: &mut String, cpu: &CpuAccounting) {
    let Some(per_message) = cpu.micros_per_message else {
        return;
    };
    let top: Vec<String> = cpu
        .components
        .iter()
        .take(4)
        .map(|c| format!("{} {:.1} s", c.component, c.seconds))
        .collect();
    let _ = writeln!(
        out,
        "  CPU while sending: {per_message:.1} µs per message stored ({:.1} s over {:.1} s: {})",
        cpu.node_seconds
            .unwrap_or_else(|| cpu.components.iter().map(|c| c.seconds).sum()),
        cpu.window_seconds,
        top.join(", ")
    );
}

/// One line per consumer group.
fn groups_section(out: &mut String, status: &LoadTestStatus) {
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<24} {:>10} {:>12} {:>8} {:>10} {:>12} {:>10} {:>10} {:>10}",
        "consumer group",
        "expected",
        "acknowledged",
        "missing",
        "duplicates",
        "out of order",
        "e2e p50",
        "e2e p99",
        "e2e max"
    );
    for g in &status.groups {
        let [p50, _, p99, _, max] = ms(&g.latency);
        let _ = writeln!(
            out,
            "{:<24} {:>10} {:>12} {:>8} {:>10} {:>12} {:>10} {:>10} {:>10}",
            g.group,
            g.expected,
            g.acknowledged,
            g.missing,
            g.duplicates,
            g.out_of_order,
            p50,
            p99,
            max
        );
    }
}

/// Every threshold checked, crossed ones marked.
fn thresholds_section(out: &mut String, status: &LoadTestStatus) {
    if !status.thresholds.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "thresholds:");
        for c in &status.thresholds {
            let mark = if c.passed { "ok     " } else { "CROSSED" };
            let _ = writeln!(out, "  {mark} {}", crate::thresholds::describe(c));
        }
    }
}

/// Where the CPU went.
fn cpu_section(out: &mut String, status: &LoadTestStatus) {
    if let Some(cpu) = &status.cpu {
        let _ = writeln!(out);
        let _ = writeln!(out, "CPU {}:", cpu_heading(cpu));
        for (component, seconds, share) in cpu_shares(cpu) {
            let _ = writeln!(
                out,
                "  {:<28} {:>9.1} s {:>5.1} %",
                component, seconds, share
            );
        }
        if !cpu.unreadable.is_empty() {
            let _ = writeln!(out, "  not readable: {}", cpu.unreadable.join(", "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outbox_contract::crd::{GroupVerification, LoadTestPhase};

    #[test]
    fn the_summary_names_every_scenario_and_group() {
        let status = LoadTestStatus {
            phase: Some(LoadTestPhase::Failed),
            scenarios: vec![
                ScenarioResult {
                    name: "batch".into(),
                    messages: 30_000,
                    accepted: 30_000,
                    ..Default::default()
                },
                ScenarioResult {
                    name: "immediate".into(),
                    messages: 500,
                    accepted: 500,
                    backlog_drained: Some(true),
                    end_to_end_latency: vec![outbox_contract::crd::GroupLatency {
                        group: "group-c".into(),
                        count: 500,
                        p50: 12.0,
                        p95: 40.5,
                        p99: 80.0,
                        max: 99.0,
                    }],
                    ..Default::default()
                },
            ],
            groups: vec![GroupVerification {
                group: "group-c".into(),
                expected: 30_000,
                missing: 30_000,
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut status = status;
        status.cpu = Some(outbox_contract::crd::CpuAccounting {
            window_seconds: 60.0,
            node_seconds: Some(100.0),
            components: vec![
                outbox_contract::crd::ComponentCpu {
                    component: "relay".into(),
                    seconds: 75.0,
                },
                outbox_contract::crd::ComponentCpu {
                    component: "rest of node".into(),
                    seconds: 25.0,
                },
            ],
            micros_per_message: Some(3333.3),
            unreadable: vec!["kafka".into()],
        });
        let table = summary_table("run-1", &status);
        assert!(
            table
                .lines()
                .any(|l| l.trim_start().starts_with("relay") && l.contains("75.0 %")),
            "{table}"
        );
        assert!(table.contains("3333.3 CPU-µs per message"), "{table}");
        assert!(
            table.contains("end to end, this scenario alone (the earlier backlog drained first)"),
            "{table}"
        );
        assert!(
            table
                .lines()
                .any(|l| l.trim_start().starts_with("group-c") && l.contains("p95 40.5 ms")),
            "{table}"
        );
        assert!(table.contains("not readable: kafka"), "{table}");
        assert!(table.starts_with("load test run-1: Failed"), "{table}");
        assert!(table.contains("batch"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("group-c") && l.contains("30000")),
            "{table}"
        );
    }
}
