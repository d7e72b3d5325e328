//! Time series sampled while a run goes: per interval, the messages sent, accepted and
//! acknowledged per group, request latency percentiles, the outbox backlog, consumer
//! lag, and each worker's resident memory and CPU. The JSON report and the HTML report
//! carry them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The series of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Series {
    /// Seconds between samples.
    pub interval_seconds: f64,
    /// Samples, oldest first.
    pub points: Vec<Point>,
    /// Request latency histogram of each scenario sent one message per request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub request_latency_histograms: BTreeMap<String, Vec<Bucket>>,
}

/// One worker's resident memory over a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryGrowth {
    /// Pod name or address.
    pub worker: String,
    /// `producer` or `consumer <group>`.
    pub component: String,
    /// At its first and last sample, and the most, in bytes.
    pub first_bytes: f64,
    pub last_bytes: f64,
    pub peak_bytes: f64,
    /// Seconds between its first and last sample.
    pub seconds: f64,
}

impl MemoryGrowth {
    /// Growth per minute in bytes (0 over less than a second).
    pub fn bytes_per_minute(&self) -> f64 {
        if self.seconds < 1.0 {
            0.0
        } else {
            (self.last_bytes - self.first_bytes) / self.seconds * 60.0
        }
    }
}

impl Series {
    /// Each worker's resident memory from its first sample to its last: does it stay
    /// flat over a long run?
    pub fn memory_growth(&self) -> Vec<MemoryGrowth> {
        let mut out: BTreeMap<&str, MemoryGrowth> = BTreeMap::new();
        let mut first_t: BTreeMap<&str, f64> = BTreeMap::new();
        for p in &self.points {
            for (name, w) in &p.workers {
                let Some(bytes) = w.resident_bytes else {
                    continue;
                };
                let start = *first_t.entry(name).or_insert(p.t);
                let g = out.entry(name).or_insert_with(|| MemoryGrowth {
                    worker: name.clone(),
                    component: w.component.clone(),
                    first_bytes: bytes,
                    ..MemoryGrowth::default()
                });
                g.last_bytes = bytes;
                g.peak_bytes = g.peak_bytes.max(bytes);
                g.seconds = p.t - start;
            }
        }
        out.into_values().collect()
    }

    /// Every `every`-th point (the last one always kept), for a report that must be
    /// smaller; `every` of 0 or 1 keeps them all.
    pub fn thinned(&self, every: usize) -> Series {
        if every <= 1 {
            return self.clone();
        }
        let last = self.points.len().saturating_sub(1);
        Series {
            interval_seconds: self.interval_seconds * every as f64,
            points: self
                .points
                .iter()
                .enumerate()
                .filter(|(i, _)| i % every == 0 || *i == last)
                .map(|(_, p)| p.clone())
                .collect(),
            request_latency_histograms: self.request_latency_histograms.clone(),
        }
    }
}

/// One sample: rates over the interval that ends at `t`, levels at `t`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// Seconds since the run started.
    pub t: f64,
    /// Scenario being sent, if any (none while the runner drains or verifies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<String>,
    /// Messages per second an arrival-rate scenario offered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offered_per_second: Option<f64>,
    /// Messages accepted per second.
    pub accepted_per_second: f64,
    /// Messages failed per second.
    pub failed_per_second: f64,
    /// Arrivals missed per second (every connection busy).
    #[serde(default)]
    pub missed_per_second: f64,
    /// Messages the relays published to Kafka per second (the producers'
    /// `outbox_relay_published_total`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relayed_per_second: Option<f64>,
    /// Latency of the requests answered in the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_latency_ms: Option<IntervalLatency>,
    /// Messages acknowledged per second, per consumer group (the group's members'
    /// `outbox_consumer_acknowledged_total`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub acknowledged_per_second: BTreeMap<String, f64>,
    /// Outbox rows not yet relayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<i64>,
    /// Messages not yet consumed, per consumer group (sum over its members).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub consumer_lag: BTreeMap<String, i64>,
    /// Each worker (pod name or address): resident memory and CPU.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub workers: BTreeMap<String, WorkerPoint>,
}

/// Request latency over one interval, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IntervalLatency {
    /// Requests answered in the interval.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

/// One worker at one sample.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPoint {
    /// `producer` or `consumer <group>`.
    pub component: String,
    /// Resident memory, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resident_bytes: Option<f64>,
    /// CPU cores used over the interval (CPU seconds per second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<f64>,
}

/// One histogram bucket: requests of latency at most `le_ms` and above the previous
/// bucket's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bucket {
    /// Upper bound, ms.
    pub le_ms: f64,
    /// Requests in the bucket.
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thinned_series_keeps_every_nth_point_and_the_last() {
        let series = Series {
            interval_seconds: 1.0,
            points: (0..10)
                .map(|t| Point {
                    t: f64::from(t),
                    ..Point::default()
                })
                .collect(),
            ..Series::default()
        };
        let t: Vec<f64> = series.thinned(4).points.iter().map(|p| p.t).collect();
        assert_eq!(t, vec![0.0, 4.0, 8.0, 9.0]);
        assert_eq!(series.thinned(4).interval_seconds, 4.0);
        assert_eq!(series.thinned(1), series);
    }

    #[test]
    fn memory_growth_runs_from_each_workers_first_sample_to_its_last() {
        let at = |t: f64, workers: &[(&str, f64)]| Point {
            t,
            workers: workers
                .iter()
                .map(|(n, mb)| {
                    (
                        n.to_string(),
                        WorkerPoint {
                            component: "producer".into(),
                            resident_bytes: Some(mb * 1e6),
                            cpu_cores: None,
                        },
                    )
                })
                .collect(),
            ..Point::default()
        };
        let series = Series {
            interval_seconds: 1.0,
            points: vec![
                at(0.0, &[("p-0", 30.0)]),
                at(60.0, &[("p-0", 50.0), ("p-1", 20.0)]),
                at(120.0, &[("p-0", 40.0), ("p-1", 20.0)]),
            ],
            ..Series::default()
        };
        let growth = series.memory_growth();
        assert_eq!(growth.len(), 2);
        let p0 = &growth[0];
        assert_eq!(
            (p0.first_bytes, p0.last_bytes, p0.peak_bytes),
            (30e6, 40e6, 50e6)
        );
        assert_eq!(p0.seconds, 120.0);
        assert_eq!(p0.bytes_per_minute(), 5e6);
        assert_eq!(growth[1].bytes_per_minute(), 0.0);
    }
}
