//! A runner's segment of a LoadTest with `parallelism` above 1 (pure): runner `i` of
//! `n` sends its share of every scenario's messages, of every arrival rate and of the
//! keys, so that the `n` segments add up to the scenario as written and no two runners
//! send the same key or reuse an idempotency key.

use outbox_contract::crd::Scenario;

use super::split;

/// Header naming the runner that sent a message (only in runs with several runners).
pub const RUNNER_HEADER: &str = "loadtest-runner";

/// Which runner this is, of how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// The runner's index (its pod's `JOB_COMPLETION_INDEX`), `0..runners`.
    pub index: u32,
    /// Runners in the run (`spec.parallelism`).
    pub runners: u32,
}

impl Default for Segment {
    fn default() -> Self {
        Segment::alone()
    }
}

impl Segment {
    /// The only runner of a run.
    pub fn alone() -> Segment {
        Segment {
            index: 0,
            runners: 1,
        }
    }

    /// Runner `index` of `runners`; an index outside the run is an error that names both.
    pub fn new(index: u32, runners: u32) -> Result<Segment, String> {
        if runners == 0 || index >= runners {
            return Err(format!(
                "runner index {index} is outside a run of {runners} runner(s)"
            ));
        }
        Ok(Segment { index, runners })
    }

    /// More than one runner shares the run.
    pub fn is_shared(&self) -> bool {
        self.runners > 1
    }

    /// The runner that merges the segments, verifies and writes the result.
    pub fn merges(&self) -> bool {
        self.index == 0
    }

    /// This runner's part of `total`, split as evenly as it goes (the first runners
    /// take one more).
    pub fn share(&self, total: u64) -> u64 {
        split::even(total, self.runners as usize)
            .get(self.index as usize)
            .copied()
            .unwrap_or(0)
    }

    /// The keys this runner sends: the first and how many, a block of its own of the
    /// run's `keys` (`keys >= runners`, which the API server checks).
    pub fn keys(&self, keys: u64) -> (u64, u64) {
        let shares = split::even(keys, self.runners as usize);
        let first = shares.iter().take(self.index as usize).sum();
        (first, self.share(keys).max(1))
    }

    /// The scenario as this runner sends it: its share of the messages, of each
    /// stage's rate and of the connections (at least one).
    pub fn scenario(&self, scenario: &Scenario) -> Scenario {
        let mut mine = scenario.clone();
        if !self.is_shared() {
            return mine;
        }
        if let Some(messages) = scenario.messages {
            mine.messages = Some(to_i64(self.share(to_u64(messages))));
        }
        if let Some(rate) = mine.arrival_rate.as_mut() {
            for stage in &mut rate.stages {
                stage.rate_per_second = to_i64(self.share(to_u64(stage.rate_per_second)));
            }
            rate.connections = i32::try_from(self.share(to_u64(i64::from(rate.connections))))
                .unwrap_or(i32::MAX)
                .max(1);
        }
        mine
    }

    /// The run id as idempotency keys carry it: each runner's own, so that two runners'
    /// requests for the same message numbers are not taken for one.
    pub fn idempotency_scope(&self, run_id: &str) -> String {
        if self.is_shared() {
            format!("{run_id}.r{}", self.index)
        } else {
            run_id.to_string()
        }
    }
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use outbox_contract::crd::{ArrivalRate, RateStage};

    fn segments(n: u32) -> Vec<Segment> {
        (0..n)
            .map(|i| Segment::new(i, n).expect("in the run"))
            .collect()
    }

    #[test]
    fn the_segments_of_a_scenario_add_up_to_the_scenario() {
        let batch = Scenario {
            name: "batch".into(),
            messages: Some(10_000_001),
            batching: true,
            ..Scenario::default()
        };
        let shares: Vec<i64> = segments(3)
            .iter()
            .map(|s| s.scenario(&batch).messages.unwrap_or(0))
            .collect();
        assert_eq!(shares, vec![3_333_334, 3_333_334, 3_333_333]);
        assert_eq!(shares.iter().sum::<i64>(), 10_000_001);
        let steady = Scenario {
            name: "steady".into(),
            arrival_rate: Some(ArrivalRate {
                stages: vec![
                    RateStage {
                        rate_per_second: 100,
                        duration_seconds: 10,
                    },
                    RateStage {
                        rate_per_second: 2,
                        duration_seconds: 5,
                    },
                ],
                connections: 2,
            }),
            ..Scenario::default()
        };
        let parts: Vec<Scenario> = segments(3).iter().map(|s| s.scenario(&steady)).collect();
        let offered: i64 = parts.iter().map(Scenario::offered_messages).sum();
        assert_eq!(offered, steady.offered_messages());
        let rates: Vec<i64> = parts
            .iter()
            .filter_map(|p| p.arrival_rate.as_ref())
            .map(|r| r.stages[0].rate_per_second)
            .collect();
        assert_eq!(rates, vec![34, 33, 33]);
        let connections: Vec<i32> = parts
            .iter()
            .filter_map(|p| p.arrival_rate.as_ref())
            .map(|r| r.connections)
            .collect();
        assert_eq!(connections, vec![1, 1, 1], "at least one each");
    }

    #[test]
    fn every_runner_sends_keys_of_its_own_and_together_they_are_all_the_keys() {
        let blocks: Vec<(u64, u64)> = segments(3).iter().map(|s| s.keys(1000)).collect();
        assert_eq!(blocks, vec![(0, 334), (334, 333), (667, 333)]);
        assert_eq!(Segment::alone().keys(1000), (0, 1000));
    }

    #[test]
    fn idempotency_keys_differ_between_runners_and_stay_as_they_were_for_one() {
        let [a, b] = [Segment::new(0, 2), Segment::new(1, 2)].map(|s| s.expect("in the run"));
        assert_ne!(a.idempotency_scope("run"), b.idempotency_scope("run"));
        assert_eq!(Segment::alone().idempotency_scope("run"), "run");
    }

    #[test]
    fn a_runner_index_outside_the_run_is_refused_naming_both() {
        let err = Segment::new(3, 3).expect_err("index 3 of 3");
        assert!(err.contains("index 3") && err.contains("3 runner"), "{err}");
        assert!(Segment::new(0, 0).is_err());
        assert!(!Segment::alone().is_shared());
        assert!(Segment::alone().merges());
    }
}
