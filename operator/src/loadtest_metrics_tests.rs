use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::{reflector, watcher};

use super::*;
use crate::crd::{CpuAccounting, GroupVerification, LatencyPercentiles, LoadTestSpec};
use crate::metrics::Metrics;

/// LoadTest `ns/lt` of system `sys` with `status`.
fn loadtest(status: Option<LoadTestStatus>) -> LoadTest {
    let spec: LoadTestSpec = serde_json::from_value(serde_json::json!({
        "systemRef": {"name": "sys"},
        "scenarios": [{"name": "batch", "messages": 1000, "batching": true}]
    }))
    .expect("a LoadTest spec");
    let mut lt = LoadTest::new("lt", spec);
    lt.metadata.namespace = Some("ns".into());
    lt.status = status;
    lt
}

fn in_phase(phase: LoadTestPhase) -> LoadTest {
    loadtest(Some(LoadTestStatus {
        phase: Some(phase),
        ..LoadTestStatus::default()
    }))
}

fn condition(type_: &str, status: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: "Because".into(),
        message: String::new(),
        observed_generation: None,
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
    }
}

fn with_conditions(conditions: Vec<Condition>) -> LoadTest {
    loadtest(Some(LoadTestStatus {
        conditions,
        ..LoadTestStatus::default()
    }))
}

fn group(missing: i64, duplicates: i64) -> GroupVerification {
    GroupVerification {
        missing,
        duplicates,
        ..GroupVerification::default()
    }
}

fn base_labels() -> Vec<(&'static str, String)> {
    vec![
        ("namespace", "ns".to_string()),
        ("loadtest", "lt".to_string()),
        ("system", "sys".to_string()),
    ]
}

/// The values of `gauge` in `samples`, each with the label beyond the base ones (if any).
fn values(samples: &[Sample], gauge: LoadTestGauge) -> Vec<(Option<String>, Value)> {
    samples
        .iter()
        .filter(|s| s.gauge == gauge)
        .map(|s| (s.labels.get(3).map(|(_, v)| v.clone()), s.value))
        .collect()
}

fn one(samples: &[Sample], gauge: LoadTestGauge) -> Option<Value> {
    match values(samples, gauge).as_slice() {
        [] => None,
        [(None, value)] => Some(*value),
        other => panic!("{gauge:?}: expected at most one sample, got {other:?}"),
    }
}

#[test]
fn a_loadtest_in_each_phase_has_a_one_for_that_phase_and_a_zero_for_every_other() {
    for current in PHASES {
        let got = samples(&in_phase(current));
        let phases = values(&got, LoadTestGauge::Phase);
        let expected: Vec<(Option<String>, Value)> = PHASES
            .iter()
            .map(|p| {
                let value = Value::Int(if *p == current { 1 } else { 0 });
                (Some(phase_label(*p).to_string()), value)
            })
            .collect();
        assert_eq!(phases, expected, "in phase {current:?}");
    }
}

#[test]
fn the_phase_label_spells_each_phase_as_the_status_does() {
    for phase in PHASES {
        let json = serde_json::to_value(phase).expect("a phase serializes");
        assert_eq!(json, serde_json::json!(phase_label(phase)));
    }
}

#[test]
fn a_status_without_a_phase_has_no_phase_series() {
    let got = samples(&loadtest(Some(LoadTestStatus {
        accepted_messages: Some(5),
        ..LoadTestStatus::default()
    })));
    assert!(values(&got, LoadTestGauge::Phase).is_empty());
    assert_eq!(
        one(&got, LoadTestGauge::MessagesAccepted),
        Some(Value::Int(5))
    );
}

#[test]
fn a_loadtest_without_a_status_gives_no_samples() {
    assert!(samples(&loadtest(None)).is_empty());
}

#[test]
fn verified_and_thresholds_met_are_one_when_true_and_zero_when_false() {
    let got = samples(&with_conditions(vec![
        condition("Verified", "True"),
        condition("ThresholdsMet", "False"),
    ]));
    assert_eq!(one(&got, LoadTestGauge::Verified), Some(Value::Int(1)));
    assert_eq!(one(&got, LoadTestGauge::ThresholdsMet), Some(Value::Int(0)));

    let got = samples(&with_conditions(vec![
        condition("Verified", "False"),
        condition("ThresholdsMet", "True"),
    ]));
    assert_eq!(one(&got, LoadTestGauge::Verified), Some(Value::Int(0)));
    assert_eq!(one(&got, LoadTestGauge::ThresholdsMet), Some(Value::Int(1)));
}

#[test]
fn verified_and_thresholds_met_are_absent_without_their_condition_or_when_unknown() {
    let got = samples(&with_conditions(vec![
        condition("Complete", "True"),
        condition("Verified", "Unknown"),
    ]));
    assert_eq!(one(&got, LoadTestGauge::Verified), None);
    assert_eq!(one(&got, LoadTestGauge::ThresholdsMet), None);
}

#[test]
fn end_to_end_latency_percentiles_in_ms_become_quantiles_in_seconds() {
    let got = samples(&loadtest(Some(LoadTestStatus {
        end_to_end_latency: Some(LatencyPercentiles {
            p50: 12.0,
            p90: 100.0,
            p95: 250.0,
            p99: 1500.0,
            p999: 3000.0,
            max: 4000.0,
        }),
        ..LoadTestStatus::default()
    })));
    assert_eq!(
        values(&got, LoadTestGauge::EndToEndLatency),
        vec![
            (Some("0.5".to_string()), Value::Float(0.012)),
            (Some("0.95".to_string()), Value::Float(0.25)),
            (Some("0.99".to_string()), Value::Float(1.5)),
        ]
    );
    let quantile_label = got
        .iter()
        .find(|s| s.gauge == LoadTestGauge::EndToEndLatency)
        .and_then(|s| s.labels.get(3))
        .map(|(k, _)| *k);
    assert_eq!(quantile_label, Some("quantile"));
}

#[test]
fn missing_and_duplicated_messages_are_summed_over_the_groups() {
    let got = samples(&loadtest(Some(LoadTestStatus {
        groups: vec![group(2, 10), group(3, 0), group(0, 7)],
        ..LoadTestStatus::default()
    })));
    assert_eq!(
        one(&got, LoadTestGauge::MessagesMissing),
        Some(Value::Int(5))
    );
    assert_eq!(
        one(&got, LoadTestGauge::MessagesDuplicated),
        Some(Value::Int(17))
    );
}

#[test]
fn a_status_before_verification_has_no_missing_duplicated_or_result_series() {
    let got = samples(&in_phase(LoadTestPhase::Running));
    // Every gauge but the phase (the first).
    for &gauge in &LoadTestGauge::ALL[1..] {
        assert!(values(&got, gauge).is_empty(), "{gauge:?} present");
    }
}

#[test]
fn throughput_cpu_and_timestamps_come_from_the_status() {
    let at = |s| Some(Time(Timestamp::from_second(s).expect("a timestamp")));
    let got = samples(&loadtest(Some(LoadTestStatus {
        throughput: Some(62409.5),
        cpu: Some(CpuAccounting {
            micros_per_message: Some(183.6),
            ..CpuAccounting::default()
        }),
        start_time: at(1_765_000_000),
        completion_time: at(1_765_000_180),
        ..LoadTestStatus::default()
    })));
    assert_eq!(
        one(&got, LoadTestGauge::Throughput),
        Some(Value::Float(62409.5))
    );
    assert_eq!(
        one(&got, LoadTestGauge::CpuMicrosPerMessage),
        Some(Value::Float(183.6))
    );
    assert_eq!(
        one(&got, LoadTestGauge::StartTimestamp),
        Some(Value::Int(1_765_000_000))
    );
    assert_eq!(
        one(&got, LoadTestGauge::CompletionTimestamp),
        Some(Value::Int(1_765_000_180))
    );
}

#[test]
fn every_sample_is_labelled_with_namespace_loadtest_and_system_first() {
    let mut lt = in_phase(LoadTestPhase::Succeeded);
    if let Some(status) = lt.status.as_mut() {
        status.accepted_messages = Some(1000);
        status.conditions = vec![condition("Verified", "True")];
    }
    let got = samples(&lt);
    assert!(!got.is_empty());
    for sample in &got {
        assert_eq!(sample.labels[..3], base_labels()[..], "{:?}", sample.gauge);
    }
    let phase = got
        .iter()
        .find(|s| s.gauge == LoadTestGauge::Phase)
        .map(|s| s.labels.clone());
    let mut expected = base_labels();
    expected.push(("phase", "Pending".to_string()));
    assert_eq!(phase, Some(expected));
}

/// The exposition of `metrics` after the store holds `loadtests`.
fn exposition_with(loadtests: &[LoadTest]) -> String {
    let (store, mut writer) = reflector::store::<LoadTest>();
    for lt in loadtests {
        writer.apply_watcher_event(&watcher::Event::Apply(lt.clone()));
    }
    let metrics = Metrics::default();
    metrics.serve_loadtests(store);
    metrics.encode().expect("encodes")
}

#[test]
fn the_exposition_has_a_line_per_phase_under_the_unprefixed_name() {
    let text = exposition_with(&[in_phase(LoadTestPhase::Failed)]);
    assert!(
        text.contains(
            "outbox_loadtest_phase{namespace=\"ns\",loadtest=\"lt\",system=\"sys\",phase=\"Failed\"} 1\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "outbox_loadtest_phase{namespace=\"ns\",loadtest=\"lt\",system=\"sys\",phase=\"Running\"} 0\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("# TYPE outbox_loadtest_phase gauge\n"),
        "{text}"
    );
    assert!(
        text.contains("# HELP outbox_loadtest_phase Phase of the LoadTest"),
        "{text}"
    );
    assert_eq!(text.matches("# TYPE outbox_loadtest_phase ").count(), 1);
}

#[test]
fn the_exposition_names_seconds_with_their_unit_and_groups_loadtests_in_one_family() {
    let other = named(
        "other",
        loadtest(Some(LoadTestStatus {
            end_to_end_latency: Some(LatencyPercentiles {
                p95: 250.0,
                ..LatencyPercentiles::default()
            }),
            ..LoadTestStatus::default()
        })),
    );
    // Stored out of order: the exposition sorts them.
    let text = exposition_with(&[other.clone(), named("first", other)]);
    assert!(text.contains("# UNIT outbox_loadtest_end_to_end_latency_seconds seconds\n"));
    assert!(
        text.contains(
            "outbox_loadtest_end_to_end_latency_seconds{namespace=\"ns\",loadtest=\"other\",system=\"sys\",quantile=\"0.95\"} 0.25\n"
        ),
        "{text}"
    );
    assert_eq!(
        text.matches("# TYPE outbox_loadtest_end_to_end_latency_seconds gauge")
            .count(),
        1,
        "{text}"
    );
    let first = text.find("loadtest=\"first\"");
    let second = text.find("loadtest=\"other\"");
    assert!(first < second, "sorted by name: {text}");
}

fn named(name: &str, mut lt: LoadTest) -> LoadTest {
    lt.metadata.name = Some(name.into());
    lt
}

#[test]
fn the_operators_own_metrics_keep_their_prefix_beside_the_loadtest_gauges() {
    let (store, mut writer) = reflector::store::<LoadTest>();
    writer.apply_watcher_event(&watcher::Event::Apply(in_phase(LoadTestPhase::Running)));
    let metrics = Metrics::default();
    metrics.serve_loadtests(store);
    drop(metrics.reconcile_started("loadtest"));
    let text = metrics.encode().expect("encodes");
    assert!(
        text.contains("outbox_operator_reconciliations_total{controller=\"loadtest\"} 1\n"),
        "{text}"
    );
    assert!(!text.contains("outbox_operator_outbox_loadtest"), "{text}");
}

#[test]
fn a_deleted_loadtest_vanishes_from_the_next_scrape() {
    let (store, mut writer) = reflector::store::<LoadTest>();
    let lt = in_phase(LoadTestPhase::Succeeded);
    writer.apply_watcher_event(&watcher::Event::Apply(lt.clone()));
    let metrics = Metrics::default();
    metrics.serve_loadtests(store);
    assert!(metrics
        .encode()
        .expect("encodes")
        .contains("loadtest=\"lt\""));

    writer.apply_watcher_event(&watcher::Event::Delete(lt));
    let text = metrics.encode().expect("encodes");
    assert!(!text.contains("outbox_loadtest_"), "{text}");
}

#[test]
fn before_the_store_is_known_no_loadtest_gauge_is_served() {
    let text = Metrics::default().encode().expect("encodes");
    assert!(!text.contains("outbox_loadtest_"), "{text}");
}

#[test]
fn every_gauge_has_its_own_name_and_help() {
    let names: std::collections::BTreeSet<String> =
        LoadTestGauge::ALL.iter().map(|g| g.name()).collect();
    assert_eq!(names.len(), LoadTestGauge::ALL.len());
    assert!(names.contains("outbox_loadtest_start_timestamp_seconds"));
    assert!(names.contains("outbox_loadtest_throughput_messages_per_second"));
    for gauge in LoadTestGauge::ALL {
        assert!(gauge.name().starts_with("outbox_loadtest_"));
        assert!(!gauge.name().ends_with("_total"), "{gauge:?} is a gauge");
        assert!(!gauge.help().is_empty());
    }
}
