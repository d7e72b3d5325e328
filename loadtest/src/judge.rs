//! The verdict of a run from what was sent and what verification found (pure, so it is
//! unit-tested): the phase, and the `Complete` and `Verified` conditions.

use outbox_contract::crd::{LoadTestPhase, ScenarioResult};

/// A condition as the verdict sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Said {
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    /// Succeeded or Failed.
    pub phase: LoadTestPhase,
    /// The `Complete` condition (always True: the run is over).
    pub complete: Said,
    /// The `Verified` condition.
    pub verified: Said,
    /// The `ThresholdsMet` condition.
    pub thresholds: Said,
    /// The status message.
    pub message: String,
}

/// The verdict: every scenario must have `success_threshold` percent of its messages
/// accepted, `thresholds` (the `ThresholdsMet` condition, see `thresholds`) must hold,
/// and so must `verified` (the `Verified` condition verification computed).
pub fn judge(
    scenarios: &[ScenarioResult],
    success_threshold: f64,
    verified: Said,
    thresholds: Said,
) -> Judgement {
    let below: Vec<String> = scenarios
        .iter()
        .filter_map(|s| {
            let pct = accepted_percent(s);
            (pct < success_threshold).then(|| {
                format!(
                    "{}: {:.2}% accepted ({} of {})",
                    s.name, pct, s.accepted, s.messages
                )
            })
        })
        .collect();
    let (reason, message) = if !below.is_empty() {
        (
            "ThresholdNotMet",
            format!(
                "below the {success_threshold}% success threshold: {}",
                below.join("; ")
            ),
        )
    } else if !thresholds.ok {
        ("ThresholdsCrossed", thresholds.message.clone())
    } else if !verified.ok {
        (
            "NotVerified",
            format!(
                "sending met the {success_threshold}% threshold; verification failed: {}",
                verified.message
            ),
        )
    } else {
        (
            "Succeeded",
            format!(
                "every scenario met the {success_threshold}% threshold and every group acknowledged every message"
            ),
        )
    };
    let phase = if below.is_empty() && verified.ok && thresholds.ok {
        LoadTestPhase::Succeeded
    } else {
        LoadTestPhase::Failed
    };
    let status_message = if verified.ok || !thresholds.ok {
        message.clone()
    } else {
        verified.message.clone()
    };
    Judgement {
        phase,
        complete: Said {
            ok: true,
            reason,
            message,
        },
        verified,
        thresholds,
        message: status_message,
    }
}

fn accepted_percent(s: &ScenarioResult) -> f64 {
    if s.messages > 0 {
        s.accepted as f64 * 100.0 / s.messages as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(name: &str, messages: i64, accepted: i64) -> ScenarioResult {
        ScenarioResult {
            name: name.into(),
            messages,
            accepted,
            ..Default::default()
        }
    }

    fn verified(ok: bool) -> Said {
        Said {
            ok,
            reason: if ok {
                "AllAcknowledged"
            } else {
                "MessagesMissing"
            },
            message: if ok { "all there" } else { "group-c missing 5" }.into(),
        }
    }

    fn held() -> Said {
        Said {
            ok: true,
            reason: "NoThresholds",
            message: "none".into(),
        }
    }

    #[test]
    fn a_crossed_threshold_fails_a_verified_run_and_says_which() {
        let crossed = Said {
            ok: false,
            reason: "ThresholdsCrossed",
            message: "1 of 3 threshold checks crossed: scenario steady: requestLatency.p95 250 ms > 200 ms".into(),
        };
        let j = judge(
            &[scenario("steady", 100, 100)],
            95.0,
            verified(true),
            crossed,
        );
        assert_eq!(j.phase, LoadTestPhase::Failed);
        assert_eq!(j.complete.reason, "ThresholdsCrossed");
        assert!(
            j.message.contains("requestLatency.p95 250 ms > 200 ms"),
            "{}",
            j.message
        );
        assert!(j.verified.ok, "delivery itself was verified");
        assert!(!j.thresholds.ok);
    }

    #[test]
    fn a_run_that_met_the_threshold_and_was_verified_succeeds() {
        let j = judge(&[scenario("batch", 100, 100)], 95.0, verified(true), held());
        assert_eq!(j.phase, LoadTestPhase::Succeeded);
        assert_eq!(j.complete.reason, "Succeeded");
        assert!(j.complete.ok && j.verified.ok);
        assert_eq!(j.message, j.complete.message);
    }

    #[test]
    fn a_scenario_below_the_threshold_fails_the_run_naming_it() {
        let j = judge(
            &[scenario("batch", 100, 100), scenario("single", 100, 90)],
            95.0,
            verified(true),
            held(),
        );
        assert_eq!(j.phase, LoadTestPhase::Failed);
        assert_eq!(j.complete.reason, "ThresholdNotMet");
        assert!(
            j.complete
                .message
                .contains("single: 90.00% accepted (90 of 100)")
                && !j.complete.message.contains("batch:"),
            "{}",
            j.complete.message
        );
    }

    #[test]
    fn a_run_not_verified_fails_with_what_verification_found() {
        let j = judge(
            &[scenario("batch", 100, 100)],
            95.0,
            verified(false),
            held(),
        );
        assert_eq!(j.phase, LoadTestPhase::Failed);
        assert_eq!(j.complete.reason, "NotVerified");
        assert!(j.complete.message.contains("group-c missing 5"));
        assert_eq!(j.message, "group-c missing 5");
        assert_eq!(j.verified.reason, "MessagesMissing");
    }
}
