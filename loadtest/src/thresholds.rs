//! Judging a run against the LoadTest's thresholds (pure, so it is unit-tested): each
//! limit that applies becomes a [`ThresholdCheck`] with the measured value, and the
//! `ThresholdsMet` condition names every crossed one.
//!
//! Which limits apply where:
//! - request latency: scenarios sent one message per request (immediate and
//!   arrival-rate ones); arrival-rate scenarios get the seed suites' targets (p50 50 ms,
//!   p95 200 ms, p99 500 ms) when the spec sets none;
//! - end-to-end latency: per group, scenarios whose own latency was measured;
//! - throughput: every scenario; achieved ratio: every arrival-rate stage;
//! - duplicates: every group.

use outbox_contract::crd::{
    GroupVerification, LatencyLimits, LatencyPercentiles, Scenario, ScenarioResult, ThresholdCheck,
    Thresholds,
};

use super::judge::Said;

/// Checks every limit of `thresholds` (and the arrival-rate defaults) that applies to
/// the `results` of the `scenarios` and to the `groups`' verification.
pub fn check(
    thresholds: Option<&Thresholds>,
    scenarios: &[Scenario],
    results: &[ScenarioResult],
    groups: &[GroupVerification],
) -> Vec<ThresholdCheck> {
    let none = Thresholds::default();
    let t = thresholds.unwrap_or(&none);
    let mut checks = Vec::new();
    for result in results {
        let spec = scenarios.iter().find(|s| s.name == result.name);
        request_latency_checks(&mut checks, t, spec, result);
        end_to_end_latency_checks(&mut checks, t, result);
        rate_checks(&mut checks, t, result);
    }
    duplicate_checks(&mut checks, t, groups);
    checks
}

/// Request latency, for a scenario sent one message per request: the spec's limits,
/// else the arrival-rate defaults for an arrival-rate scenario.
fn request_latency_checks(
    checks: &mut Vec<ThresholdCheck>,
    t: &Thresholds,
    spec: Option<&Scenario>,
    result: &ScenarioResult,
) {
    let one_per_request = spec.is_some_and(|s| !s.batching);
    let arrival_rate = spec.is_some_and(|s| s.arrival_rate.is_some());
    let request_limits = t
        .request_latency_ms
        .clone()
        .or_else(|| arrival_rate.then(LatencyLimits::arrival_rate_default));
    if let (true, Some(limits), Some(latency)) = (one_per_request, &request_limits, &result.latency)
    {
        latency_checks(
            checks,
            "requestLatency",
            &result.name,
            None,
            limits,
            latency,
        );
    }
}

/// End-to-end latency, per group whose latency the scenario measured.
fn end_to_end_latency_checks(
    checks: &mut Vec<ThresholdCheck>,
    t: &Thresholds,
    result: &ScenarioResult,
) {
    if let Some(limits) = &t.end_to_end_latency_ms {
        for group in &result.end_to_end_latency {
            let measured = LatencyPercentiles {
                p50: group.p50,
                p95: group.p95,
                p99: group.p99,
                max: group.max,
                ..LatencyPercentiles::default()
            };
            latency_checks(
                checks,
                "endToEndLatency",
                &result.name,
                Some(group.group.clone()),
                limits,
                &measured,
            );
        }
    }
}

/// The scenario's throughput, and the achieved ratio of each of its arrival-rate stages.
fn rate_checks(checks: &mut Vec<ThresholdCheck>, t: &Thresholds, result: &ScenarioResult) {
    if let Some(limit) = t.min_throughput {
        checks.push(at_least(
            "throughput",
            Some(&result.name),
            None,
            limit,
            result.throughput,
        ));
    }
    if let Some(limit) = t.min_achieved_ratio {
        for (i, stage) in result.stages.iter().enumerate() {
            checks.push(at_least(
                "achievedRatio",
                Some(&result.name),
                Some(format!("stage {}", i + 1)),
                limit,
                stage.achieved_ratio,
            ));
        }
    }
}

/// The duplicates each group received.
fn duplicate_checks(
    checks: &mut Vec<ThresholdCheck>,
    t: &Thresholds,
    groups: &[GroupVerification],
) {
    if let Some(limit) = t.max_duplicates {
        for group in groups {
            checks.push(at_most(
                "duplicates",
                None,
                Some(group.group.clone()),
                limit as f64,
                group.duplicates as f64,
            ));
        }
    }
}

fn latency_checks(
    checks: &mut Vec<ThresholdCheck>,
    metric: &str,
    scenario: &str,
    subject: Option<String>,
    limits: &LatencyLimits,
    measured: &LatencyPercentiles,
) {
    for (name, limit, value) in [
        ("p50", limits.p50, measured.p50),
        ("p95", limits.p95, measured.p95),
        ("p99", limits.p99, measured.p99),
    ] {
        if let Some(limit) = limit {
            checks.push(at_most(
                &format!("{metric}.{name}"),
                Some(scenario),
                subject.clone(),
                limit,
                value,
            ));
        }
    }
}

fn at_most(
    metric: &str,
    scenario: Option<&str>,
    subject: Option<String>,
    limit: f64,
    measured: f64,
) -> ThresholdCheck {
    ThresholdCheck {
        metric: metric.to_string(),
        scenario: scenario.map(str::to_string),
        subject,
        limit,
        measured,
        passed: measured <= limit,
    }
}

fn at_least(
    metric: &str,
    scenario: Option<&str>,
    subject: Option<String>,
    limit: f64,
    measured: f64,
) -> ThresholdCheck {
    ThresholdCheck {
        passed: measured >= limit,
        ..at_most(metric, scenario, subject, limit, measured)
    }
}

/// How a crossed check reads in the condition, e.g. `scenario steady:
/// requestLatency.p95 212.4 ms > 200 ms`.
pub fn describe(c: &ThresholdCheck) -> String {
    let mut place = Vec::new();
    if let Some(s) = &c.scenario {
        place.push(format!("scenario {s}"));
    }
    if let Some(s) = &c.subject {
        place.push(s.clone());
    }
    let unit = if c.metric.contains("Latency") {
        " ms"
    } else if c.metric == "throughput" {
        " msg/s"
    } else {
        ""
    };
    let relation = if c.passed {
        "within"
    } else if c.measured > c.limit {
        ">"
    } else {
        "<"
    };
    let where_ = if place.is_empty() {
        String::new()
    } else {
        format!("{}: ", place.join(", "))
    };
    format!(
        "{where_}{} {}{unit} {relation} {}{unit}",
        c.metric,
        round(c.measured),
        round(c.limit)
    )
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The `ThresholdsMet` condition for `checks`.
pub fn condition(checks: &[ThresholdCheck]) -> Said {
    let crossed: Vec<String> = checks.iter().filter(|c| !c.passed).map(describe).collect();
    if checks.is_empty() {
        Said {
            ok: true,
            reason: "NoThresholds",
            message: "no threshold applies to this run".into(),
        }
    } else if crossed.is_empty() {
        Said {
            ok: true,
            reason: "WithinThresholds",
            message: format!("all {} threshold checks held", checks.len()),
        }
    } else {
        Said {
            ok: false,
            reason: "ThresholdsCrossed",
            message: format!(
                "{} of {} threshold checks crossed: {}",
                crossed.len(),
                checks.len(),
                crossed.join("; ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outbox_contract::crd::{ArrivalRate, GroupLatency, RateStage, StageResult};

    fn latency(p50: f64, p95: f64, p99: f64) -> Option<LatencyPercentiles> {
        Some(LatencyPercentiles {
            p50,
            p95,
            p99,
            ..LatencyPercentiles::default()
        })
    }

    fn rate_scenario(name: &str) -> Scenario {
        Scenario {
            name: name.into(),
            arrival_rate: Some(ArrivalRate {
                stages: vec![RateStage {
                    rate_per_second: 100,
                    duration_seconds: 10,
                }],
                connections: 10,
            }),
            ..Scenario::default()
        }
    }

    fn batch_scenario(name: &str) -> Scenario {
        Scenario {
            name: name.into(),
            messages: Some(1000),
            batching: true,
            ..Scenario::default()
        }
    }

    fn result(name: &str, l: Option<LatencyPercentiles>) -> ScenarioResult {
        ScenarioResult {
            name: name.into(),
            latency: l,
            throughput: 99.0,
            ..ScenarioResult::default()
        }
    }

    #[test]
    fn an_arrival_rate_scenario_gets_the_seed_targets_when_the_spec_sets_none() {
        let checks = check(
            None,
            &[rate_scenario("steady")],
            &[result("steady", latency(12.0, 250.0, 300.0))],
            &[],
        );
        assert_eq!(checks.len(), 3);
        let crossed: Vec<_> = checks.iter().filter(|c| !c.passed).collect();
        assert_eq!(crossed.len(), 1);
        assert_eq!(crossed[0].metric, "requestLatency.p95");
        assert_eq!((crossed[0].limit, crossed[0].measured), (200.0, 250.0));
        let said = condition(&checks);
        assert!(!said.ok);
        assert_eq!(said.reason, "ThresholdsCrossed");
        assert!(
            said.message
                .contains("scenario steady: requestLatency.p95 250 ms > 200 ms"),
            "{}",
            said.message
        );
    }

    #[test]
    fn a_batch_request_latency_is_never_judged_and_no_limit_means_no_threshold() {
        let checks = check(
            Some(&Thresholds {
                request_latency_ms: Some(LatencyLimits {
                    p50: Some(1.0),
                    ..LatencyLimits::default()
                }),
                ..Thresholds::default()
            }),
            &[batch_scenario("batch")],
            &[result("batch", latency(900.0, 950.0, 990.0))],
            &[],
        );
        assert!(checks.is_empty(), "{checks:?}");
        assert_eq!(condition(&checks).reason, "NoThresholds");
        assert!(condition(&checks).ok);
    }

    #[test]
    fn end_to_end_throughput_ratio_and_duplicate_limits_each_name_where_they_were_measured() {
        let t = Thresholds {
            end_to_end_latency_ms: Some(LatencyLimits {
                p99: Some(100.0),
                ..LatencyLimits::default()
            }),
            min_throughput: Some(100.0),
            min_achieved_ratio: Some(0.95),
            max_duplicates: Some(0),
            ..Thresholds::default()
        };
        let mut r = result("steady", latency(1.0, 2.0, 3.0));
        r.end_to_end_latency = vec![
            GroupLatency {
                group: "a".into(),
                p99: 80.0,
                ..GroupLatency::default()
            },
            GroupLatency {
                group: "b".into(),
                p99: 140.0,
                ..GroupLatency::default()
            },
        ];
        r.stages = vec![StageResult {
            achieved_ratio: 0.5,
            ..StageResult::default()
        }];
        let groups = vec![GroupVerification {
            group: "a".into(),
            duplicates: 3,
            ..GroupVerification::default()
        }];
        let checks = check(Some(&t), &[rate_scenario("steady")], &[r], &groups);
        let said = condition(&checks);
        for expected in [
            "scenario steady, b: endToEndLatency.p99 140 ms > 100 ms",
            "scenario steady: throughput 99 msg/s < 100 msg/s",
            "scenario steady, stage 1: achievedRatio 0.5 < 0.95",
            "a: duplicates 3 > 0",
        ] {
            assert!(
                said.message.contains(expected),
                "{expected} in {}",
                said.message
            );
        }
        assert!(
            !said.message.contains("scenario steady, a:"),
            "{}",
            said.message
        );
        assert!(checks
            .iter()
            .any(|c| c.passed && c.subject.as_deref() == Some("a")));
    }

    #[test]
    fn all_checks_held_says_how_many() {
        let checks = check(
            None,
            &[rate_scenario("steady")],
            &[result("steady", latency(1.0, 2.0, 3.0))],
            &[],
        );
        let said = condition(&checks);
        assert!(said.ok);
        assert_eq!(said.message, "all 3 threshold checks held");
    }
}
