//! How a scenario's messages are shared among the producers.

use std::time::Duration;

use outbox_contract::crd::RateStage;

use super::generator::StageSend;

/// Splits `total` messages over `producers` producers as the reference run does: each
/// producer gets `ceil(total / producers)` until the messages run out, so the last one
/// takes the rest (10,000,000 over 3 gives 3,333,334 / 3,333,334 / 3,333,332).
/// Shares always add up to `total`; with no producer there is nothing to split.
pub fn split(total: u64, producers: usize) -> Vec<u64> {
    if producers == 0 {
        return Vec::new();
    }
    let n = producers as u64;
    let share = total.div_ceil(n);
    let mut remaining = total;
    (0..producers)
        .map(|i| {
            let this = if i + 1 == producers {
                remaining
            } else {
                share.min(remaining)
            };
            remaining -= this;
            this
        })
        .collect()
}

/// Splits `total` as evenly as it goes: the first `total mod producers` producers get
/// one more (a rate of 100 msg/s over 3 producers: 34 / 33 / 33).
pub fn even(total: u64, producers: usize) -> Vec<u64> {
    if producers == 0 {
        return Vec::new();
    }
    let n = producers as u64;
    (0..n)
        .map(|i| total / n + u64::from(i < total % n))
        .collect()
}

/// An arrival-rate scenario's stages still to send when an earlier attempt of the run
/// got `already` of its messages accepted: those come off the first stages (a stage
/// partly sent keeps its rate over the rest of its time), and each stage's arrivals are
/// split evenly over `producers`.
pub fn arrival_stages(stages: &[RateStage], already: u64, producers: usize) -> Vec<StageSend> {
    let mut skip = already;
    stages
        .iter()
        .filter_map(|stage| {
            let offered = u64::try_from(stage.messages()).unwrap_or(0);
            let duration = Duration::from_secs(u64::try_from(stage.duration_seconds).unwrap_or(0));
            let skipped = skip.min(offered);
            skip -= skipped;
            let left = offered - skipped;
            if left == 0 {
                return None;
            }
            Some(StageSend {
                rate_per_second: stage.rate_per_second,
                duration,
                remaining: duration.mul_f64(left as f64 / offered as f64),
                arrivals: even(left, producers),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(rate_per_second: i64, duration_seconds: i64) -> RateStage {
        RateStage {
            rate_per_second,
            duration_seconds,
        }
    }

    #[test]
    fn a_rate_is_split_evenly_over_the_producers() {
        assert_eq!(even(100, 3), vec![34, 33, 33]);
        assert_eq!(even(2, 3), vec![1, 1, 0]);
        assert!(even(5, 0).is_empty());
    }

    #[test]
    fn a_ramp_offers_each_stage_rate_times_duration_split_over_the_producers() {
        let stages = arrival_stages(&[stage(100, 10), stage(1000, 5)], 0, 2);
        assert_eq!(stages.len(), 2);
        assert_eq!(stages[0].arrivals, vec![500, 500]);
        assert_eq!(stages[0].remaining, Duration::from_secs(10));
        assert_eq!(stages[1].arrivals, vec![2500, 2500]);
        assert_eq!(stages[1].rate_per_second, 1000);
    }

    #[test]
    fn a_resumed_rate_scenario_skips_what_the_earlier_attempt_got_accepted() {
        // 1,000 + 500 of the first stage's 1,000 went out before the runner restarted.
        let stages = arrival_stages(&[stage(100, 10), stage(1000, 1)], 1500, 1);
        assert_eq!(stages.len(), 1, "the first stage is done");
        assert_eq!(stages[0].arrivals, vec![500]);
        assert_eq!(stages[0].remaining, Duration::from_millis(500));
        assert_eq!(stages[0].duration, Duration::from_secs(1));
    }

    #[test]
    fn reference_run_splits_ten_million_over_three_producers() {
        assert_eq!(split(10_000_000, 3), vec![3_333_334, 3_333_334, 3_333_332]);
    }

    #[test]
    fn shares_always_add_up_to_the_total() {
        for total in [0, 1, 2, 5, 7, 500, 30_000, 5_000, 10_000_001] {
            for producers in 1..=7 {
                let shares = split(total, producers);
                assert_eq!(shares.len(), producers);
                assert_eq!(
                    shares.iter().sum::<u64>(),
                    total,
                    "{total} over {producers}"
                );
            }
        }
    }

    #[test]
    fn fewer_messages_than_producers_leaves_the_last_ones_idle() {
        assert_eq!(split(1, 3), vec![1, 0, 0]);
        assert_eq!(split(4, 3), vec![2, 2, 0]);
    }

    #[test]
    fn one_producer_takes_everything() {
        assert_eq!(split(5_000, 1), vec![5_000]);
    }

    #[test]
    fn no_producer_gets_nothing() {
        assert!(split(10, 0).is_empty());
    }
}
