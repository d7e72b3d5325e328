//! Counting what the producers answered: accepted and failed messages, failure reasons,
//! request latency (HdrHistogram), per producer and per scenario. A scenario's outcome
//! travels as JSON (the histograms in HdrHistogram's own compressed encoding, exact)
//! from every runner of a shared run to the one that merges them.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use outbox_contract::crd::{LatencyPercentiles, ProducerResult, ScenarioResult, StageResult};
use serde::{Deserialize, Serialize};

use super::series::Bucket;

/// Highest latency the histograms track exactly: one hour, in microseconds. Longer
/// samples are clamped to it (a request never takes that long: the client times out).
const MAX_TRACKABLE_MICROS: u64 = 3_600_000_000;

/// A latency histogram in microseconds with three significant digits.
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Serialize for Latencies {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        let mut bytes = Vec::new();
        hdrhistogram::serialization::Serializer::serialize(
            &mut hdrhistogram::serialization::V2DeflateSerializer::new(),
            &self.0,
            &mut bytes,
        )
        .map_err(|e| serde::ser::Error::custom(format!("encoding a latency histogram: {e:?}")))?;
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }
}

impl<'de> Deserialize<'de> for Latencies {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use base64::Engine;
        let text = String::deserialize(deserializer)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("a latency histogram: {e}")))?;
        let read: Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| serde::de::Error::custom(format!("a latency histogram: {e:?}")))?;
        let mut latencies = Latencies::new();
        latencies
            .0
            .add(&read)
            .map_err(|e| serde::de::Error::custom(format!("a latency histogram: {e:?}")))?;
        Ok(latencies)
    }
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

impl Latencies {
    /// An empty histogram from 1 µs to one hour.
    pub fn new() -> Self {
        // Constant bounds that hdrhistogram accepts (low >= 1, high >= 2 * low, sigfig
        // <= 5): creation cannot fail at run time.
        let histogram = Histogram::new_with_bounds(1, MAX_TRACKABLE_MICROS, 3)
            .unwrap_or_else(|e| unreachable!("constant histogram bounds refused: {e}"));
        Latencies(histogram)
    }

    /// Records one sample.
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_TRACKABLE_MICROS);
        self.0.saturating_record(micros);
    }

    /// Records `count` samples of the same value (e.g. one per message of a row range).
    pub fn record_n(&mut self, micros: u64, count: u64) {
        let micros = micros.clamp(1, MAX_TRACKABLE_MICROS);
        // Within bounds after the clamp: recording cannot fail.
        let _ = self.0.record_n(micros, count);
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The histogram in buckets whose upper bounds grow by half from 1 ms, up to the
    /// largest sample (empty without samples).
    pub fn buckets(&self) -> Vec<Bucket> {
        if self.0.is_empty() {
            return Vec::new();
        }
        self.0
            .iter_log(1000, 1.5)
            .map(|v| Bucket {
                le_ms: (v.value_iterated_to() as f64 / 1000.0 * 1000.0).round() / 1000.0,
                count: v.count_since_last_iteration(),
            })
            .collect()
    }

    /// p50, p90, p95, p99, p99.9 and max in milliseconds; `None` without samples.
    pub fn percentiles(&self) -> Option<LatencyPercentiles> {
        if self.0.is_empty() {
            return None;
        }
        let ms = |micros: u64| (micros as f64 / 1000.0 * 1000.0).round() / 1000.0;
        Some(LatencyPercentiles {
            p50: ms(self.0.value_at_quantile(0.50)),
            p90: ms(self.0.value_at_quantile(0.90)),
            p95: ms(self.0.value_at_quantile(0.95)),
            p99: ms(self.0.value_at_quantile(0.99)),
            p999: ms(self.0.value_at_quantile(0.999)),
            max: ms(self.0.max()),
        })
    }
}

/// What one producer (or a whole scenario, once merged) answered.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tally {
    /// Messages accepted with a 2xx.
    pub accepted: u64,
    /// Messages refused or lost in transport.
    pub failed: u64,
    /// Failed messages by reason.
    pub reasons: BTreeMap<String, u64>,
    /// Requests the producer answered 429 or 503 (nothing stored) that were sent
    /// again, by answer.
    pub retried: BTreeMap<String, u64>,
    /// Request latency.
    pub latency: Latencies,
}

impl Tally {
    /// A request carrying `messages` messages was accepted after `latency`.
    pub fn accepted(&mut self, messages: u64, latency: Duration) {
        self.accepted += messages;
        self.latency.record(latency);
    }

    /// A request carrying `messages` messages failed for `reason`.
    pub fn failed(&mut self, messages: u64, reason: &str, latency: Option<Duration>) {
        self.failed += messages;
        *self.reasons.entry(reason.to_string()).or_default() += messages;
        if let Some(latency) = latency {
            self.latency.record(latency);
        }
    }

    /// A request was answered `reason` (429, 503: nothing stored) and is sent again.
    pub fn retried(&mut self, reason: &str) {
        *self.retried.entry(reason.to_string()).or_default() += 1;
    }

    /// Adds another tally.
    pub fn merge(&mut self, other: &Tally) {
        self.accepted += other.accepted;
        self.failed += other.failed;
        for (reason, n) in &other.reasons {
            *self.reasons.entry(reason.clone()).or_default() += n;
        }
        for (reason, n) in &other.retried {
            *self.retried.entry(reason.clone()).or_default() += n;
        }
        self.latency.merge(&other.latency);
    }
}

/// Messages per second, 0 for an empty interval.
pub fn throughput(messages: u64, duration: Duration) -> f64 {
    let secs = duration.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    ((messages as f64 / secs) * 10.0).round() / 10.0
}

fn seconds(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0).round() / 1000.0
}

fn reasons(map: &BTreeMap<String, u64>) -> BTreeMap<String, i64> {
    map.iter().map(|(k, v)| (k.clone(), to_i64(*v))).collect()
}

/// Counts fit in an i64 (the API's integer type); saturate rather than wrap.
pub fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One producer's share of a scenario: what it was given and what it answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProducerOutcome {
    /// Producer name (pod or URL).
    pub producer: String,
    /// Messages assigned to it by the split of this attempt.
    pub messages: u64,
    /// What it answered in this attempt.
    pub tally: Tally,
    /// Wall time of its share.
    pub duration: Duration,
    /// Its arrival-rate stages, if the scenario had any.
    pub stages: Vec<StageTally>,
}

/// One producer's part of an arrival-rate stage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageTally {
    /// Arrivals scheduled.
    pub offered: u64,
    /// Arrivals sent on time.
    pub sent: u64,
    /// Arrivals due while every connection was busy.
    pub missed: u64,
    /// What the sent ones got.
    pub tally: Tally,
    /// From the stage's start to its end or its last answer, whichever came later.
    pub lasted: Duration,
}

/// An arrival-rate stage as planned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagePlan {
    /// Messages per second offered, over all producers.
    pub rate_per_second: i64,
    /// Its length in the spec.
    pub duration: Duration,
    /// The part this attempt sent.
    pub remaining: Duration,
}

impl ProducerOutcome {
    /// Adds another runner's share sent to the same producer.
    fn add(&mut self, other: &ProducerOutcome) {
        self.messages += other.messages;
        self.tally.merge(&other.tally);
        self.duration = self.duration.max(other.duration);
        for (i, stage) in other.stages.iter().enumerate() {
            match self.stages.get_mut(i) {
                Some(mine) => {
                    mine.offered += stage.offered;
                    mine.sent += stage.sent;
                    mine.missed += stage.missed;
                    mine.tally.merge(&stage.tally);
                    mine.lasted = mine.lasted.max(stage.lasted);
                }
                None => self.stages.push(stage.clone()),
            }
        }
    }

    /// The status entry for this producer.
    pub fn result(&self) -> ProducerResult {
        ProducerResult {
            producer: self.producer.clone(),
            accepted: to_i64(self.tally.accepted),
            failed: to_i64(self.tally.failed),
            messages: to_i64(self.messages),
            failure_reasons: reasons(&self.tally.reasons),
            retried_requests: reasons(&self.tally.retried),
            duration_seconds: seconds(self.duration),
            throughput: throughput(self.tally.accepted, self.duration),
            latency: self.tally.latency.percentiles(),
        }
    }
}

/// A whole scenario: its producers' outcomes and its wall time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioOutcome {
    /// Scenario name.
    pub name: String,
    /// True when sent through the batch endpoint.
    pub batching: bool,
    /// Messages the scenario asked for.
    pub messages: u64,
    /// Messages an earlier attempt of the same run got accepted (found in the outbox
    /// when this attempt started): counted as accepted, not sent again. The per-producer
    /// figures describe this attempt only.
    pub already_accepted: u64,
    /// Per producer, in the order of the split.
    pub producers: Vec<ProducerOutcome>,
    /// Wall time of this attempt's sending.
    pub duration: Duration,
    /// An arrival-rate scenario's stages (empty otherwise).
    pub stages: Vec<StagePlan>,
}

impl ScenarioOutcome {
    /// All producers' tallies together (this attempt only).
    pub fn tally(&self) -> Tally {
        let mut total = Tally::default();
        for p in &self.producers {
            total.merge(&p.tally);
        }
        total
    }

    /// Accepted messages, including those an earlier attempt got accepted.
    pub fn accepted(&self) -> u64 {
        self.already_accepted + self.producers.iter().map(|p| p.tally.accepted).sum::<u64>()
    }

    /// Percentage of the scenario's messages accepted (100 for an empty scenario).
    pub fn accepted_percent(&self) -> f64 {
        if self.messages == 0 {
            return 100.0;
        }
        self.accepted() as f64 * 100.0 / self.messages as f64
    }

    /// Each stage's figures over all producers.
    pub fn stage_results(&self) -> Vec<StageResult> {
        self.stages
            .iter()
            .enumerate()
            .map(|(i, plan)| {
                let mut total = StageTally {
                    lasted: plan.remaining,
                    ..StageTally::default()
                };
                for p in &self.producers {
                    if let Some(s) = p.stages.get(i) {
                        total.offered += s.offered;
                        total.sent += s.sent;
                        total.missed += s.missed;
                        total.tally.merge(&s.tally);
                        total.lasted = total.lasted.max(s.lasted);
                    }
                }
                // Accepted over the time it took to answer them: below the offered
                // rate when answers fell behind, even with nothing missed.
                let achieved = throughput(total.tally.accepted, total.lasted);
                let offered_rate = if plan.remaining.is_zero() {
                    0.0
                } else {
                    total.offered as f64 / plan.remaining.as_secs_f64()
                };
                StageResult {
                    rate_per_second: plan.rate_per_second,
                    duration_seconds: i64::try_from(plan.duration.as_secs()).unwrap_or(i64::MAX),
                    offered: to_i64(total.offered),
                    sent: to_i64(total.sent),
                    accepted: to_i64(total.tally.accepted),
                    missed_arrivals: to_i64(total.missed),
                    achieved_rate: achieved,
                    achieved_ratio: if offered_rate > 0.0 {
                        (achieved / offered_rate * 1000.0).round() / 1000.0
                    } else {
                        0.0
                    },
                    latency: total.tally.latency.percentiles(),
                }
            })
            .collect()
    }

    /// Arrivals missed over every producer and stage.
    pub fn missed(&self) -> u64 {
        self.producers
            .iter()
            .flat_map(|p| &p.stages)
            .map(|s| s.missed)
            .sum()
    }

    /// One scenario's outcomes from every runner of a shared run as one (pure): counts
    /// summed, histograms merged (so percentiles are those of every sample), each
    /// producer's figures over all runners, the longest wall time, stage rates summed.
    /// `None` without outcomes.
    pub fn merged(outcomes: &[ScenarioOutcome]) -> Option<ScenarioOutcome> {
        let (first, rest) = outcomes.split_first()?;
        let mut all = first.clone();
        for other in rest {
            all.messages += other.messages;
            all.already_accepted += other.already_accepted;
            all.duration = all.duration.max(other.duration);
            for (mine, theirs) in all.stages.iter_mut().zip(&other.stages) {
                mine.rate_per_second += theirs.rate_per_second;
                mine.remaining = mine.remaining.max(theirs.remaining);
            }
            for producer in &other.producers {
                match all
                    .producers
                    .iter_mut()
                    .find(|p| p.producer == producer.producer)
                {
                    Some(mine) => mine.add(producer),
                    None => all.producers.push(producer.clone()),
                }
            }
        }
        Some(all)
    }

    /// The status entry for this scenario.
    pub fn result(&self) -> ScenarioResult {
        let tally = self.tally();
        let stages = self.stage_results();
        ScenarioResult {
            name: self.name.clone(),
            messages: to_i64(self.messages),
            accepted: to_i64(self.accepted()),
            failed: to_i64(tally.failed),
            failure_reasons: reasons(&tally.reasons),
            retried_requests: reasons(&tally.retried),
            duration_seconds: seconds(self.duration),
            throughput: throughput(tally.accepted, self.duration),
            latency: tally.latency.percentiles(),
            per_producer: self.producers.iter().map(ProducerOutcome::result).collect(),
            missed_arrivals: (!stages.is_empty()).then(|| to_i64(self.missed())),
            stages,
            ..ScenarioResult::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_recorded_latencies() {
        let mut l = Latencies::new();
        for ms in 1..=1000u64 {
            l.record(Duration::from_millis(ms));
        }
        let p = l.percentiles().expect("samples were recorded");
        assert!((p.p50 - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p90 - 900.0).abs() < 1.0, "{p:?}");
        assert!((p.p99 - 990.0).abs() < 1.0, "{p:?}");
        assert!((p.max - 1000.0).abs() < 1.0, "{p:?}");
    }

    fn outcome_of(producer_samples: &[(&str, Vec<u64>)], duration_ms: u64) -> ScenarioOutcome {
        let producers = producer_samples
            .iter()
            .map(|(name, samples)| {
                let mut tally = Tally::default();
                for micros in samples {
                    tally.accepted(1, Duration::from_micros(*micros));
                }
                ProducerOutcome {
                    producer: (*name).to_string(),
                    messages: samples.len() as u64,
                    tally,
                    duration: Duration::from_millis(duration_ms),
                    stages: Vec::new(),
                }
            })
            .collect();
        ScenarioOutcome {
            name: "immediate".into(),
            batching: false,
            messages: producer_samples.iter().map(|(_, s)| s.len() as u64).sum(),
            already_accepted: 0,
            producers,
            duration: Duration::from_millis(duration_ms),
            stages: Vec::new(),
        }
    }

    #[test]
    fn merged_segments_have_the_percentiles_of_all_their_samples_not_an_average() {
        // Three runners with very different latencies: averaging their p99s would give
        // about 390 ms; 990 of all 1,000 samples take at most 59 ms, so that is the p99,
        // and only the p99.9 reaches the slow runner's tail.
        let fast: Vec<u64> = (1..=900).map(|i| 1_000 + i).collect();
        let medium: Vec<u64> = (1..=90).map(|i| 50_000 + i * 100).collect();
        let slow: Vec<u64> = (1..=10).map(|i| 1_000_000 + i * 10_000).collect();
        let runners = [
            outcome_of(
                &[("p-0", fast[..450].to_vec()), ("p-1", fast[450..].to_vec())],
                2_000,
            ),
            outcome_of(&[("p-0", medium.clone())], 3_000),
            outcome_of(&[("p-1", slow.clone())], 2_500),
        ];
        // Through JSON, as runner 0 reads them.
        let read: Vec<ScenarioOutcome> = runners
            .iter()
            .map(|o| {
                serde_json::from_str(&serde_json::to_string(o).expect("encodes")).expect("decodes")
            })
            .collect();
        let merged = ScenarioOutcome::merged(&read).expect("three outcomes");
        let all = outcome_of(
            &[
                ("p-0", fast.iter().chain(&medium).copied().collect()),
                ("p-1", slow.clone()),
            ],
            3_000,
        );
        let (m, a) = (merged.result(), all.result());
        assert_eq!(m.latency, a.latency, "percentiles of every sample");
        assert_eq!(m.accepted, 1000);
        assert_eq!(m.messages, 1000);
        assert_eq!(m.duration_seconds, 3.0, "the longest runner's wall time");
        let latency = m.latency.clone().unwrap_or_default();
        assert!((58.0..60.0).contains(&latency.p99), "{latency:?}");
        assert!(latency.p999 > 1000.0, "the slow runner's tail: {latency:?}");
        let per_producer: Vec<(String, i64)> = m
            .per_producer
            .iter()
            .map(|p| (p.producer.clone(), p.accepted))
            .collect();
        assert_eq!(
            per_producer,
            vec![("p-0".to_string(), 450 + 90), ("p-1".to_string(), 450 + 10)],
            "each producer over all runners"
        );
        assert!(ScenarioOutcome::merged(&[]).is_none());
    }

    #[test]
    fn no_samples_means_no_percentiles() {
        assert!(Latencies::new().percentiles().is_none());
    }

    #[test]
    fn failures_are_counted_per_message_and_by_reason() {
        let mut t = Tally::default();
        t.accepted(2000, Duration::from_millis(5));
        t.failed(2000, "http503", Some(Duration::from_millis(1)));
        t.failed(1, "timeout", None);
        assert_eq!(t.accepted, 2000);
        assert_eq!(t.failed, 2001);
        assert_eq!(t.reasons["http503"], 2000);
        assert_eq!(t.reasons["timeout"], 1);
        assert_eq!(t.latency.count(), 2);
    }

    #[test]
    fn scenario_results_add_up_the_producers_and_earlier_attempts() {
        let producer = |name: &str, accepted| {
            let mut tally = Tally::default();
            tally.accepted(accepted, Duration::from_millis(3));
            ProducerOutcome {
                producer: name.into(),
                messages: accepted,
                tally,
                duration: Duration::from_secs(2),
                stages: Vec::new(),
            }
        };
        let s = ScenarioOutcome {
            name: "batch".into(),
            batching: true,
            messages: 10,
            already_accepted: 2,
            producers: vec![producer("p0", 4), producer("p1", 2), producer("p2", 2)],
            duration: Duration::from_secs(2),
            stages: Vec::new(),
        };
        let r = s.result();
        assert_eq!(r.accepted, 10);
        assert_eq!(r.failed, 0);
        assert_eq!(
            r.throughput, 4.0,
            "only this attempt's messages count for speed"
        );
        assert_eq!(
            r.per_producer[1].accepted, 2,
            "per producer: this attempt only"
        );
        assert_eq!(s.accepted_percent(), 100.0);
    }

    fn producer(stages: Vec<StageTally>) -> ProducerOutcome {
        ProducerOutcome {
            producer: "p".into(),
            messages: stages.iter().map(|s| s.offered).sum(),
            tally: Tally::default(),
            duration: Duration::from_secs(2),
            stages,
        }
    }

    fn stage(offered: u64, accepted: u64, missed: u64, lasted_ms: u64) -> StageTally {
        let mut tally = Tally::default();
        tally.accepted(accepted, Duration::from_millis(4));
        StageTally {
            offered,
            sent: offered - missed,
            missed,
            tally,
            lasted: Duration::from_millis(lasted_ms),
        }
    }

    #[test]
    fn a_stage_achieves_what_its_producers_got_accepted_over_the_time_its_answers_took() {
        let plan = |rate| StagePlan {
            rate_per_second: rate,
            duration: Duration::from_secs(1),
            remaining: Duration::from_secs(1),
        };
        let outcome = ScenarioOutcome {
            name: "ramp".into(),
            batching: false,
            messages: 1200,
            already_accepted: 0,
            producers: vec![
                producer(vec![stage(100, 100, 0, 1000), stage(500, 400, 100, 1000)]),
                producer(vec![stage(100, 100, 0, 1000), stage(500, 500, 0, 1250)]),
            ],
            duration: Duration::from_secs(2),
            stages: vec![plan(200), plan(1000)],
        };
        let stages = outcome.stage_results();
        assert_eq!(stages[0].offered, 200);
        assert_eq!(stages[0].achieved_ratio, 1.0);
        let fast = &stages[1];
        assert_eq!(
            (fast.offered, fast.sent, fast.accepted, fast.missed_arrivals),
            (1000, 900, 900, 100)
        );
        // 900 in 1.25 s (the slower producer's last answer) = 720/s of 1,000/s offered.
        assert_eq!(fast.achieved_rate, 720.0);
        assert_eq!(fast.achieved_ratio, 0.72);
        let result = outcome.result();
        assert_eq!(result.missed_arrivals, Some(100));
        assert_eq!(result.stages.len(), 2);
    }
}
