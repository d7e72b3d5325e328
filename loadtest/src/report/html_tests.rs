//! The HTML report rendered from small reports: the data blob, escaping, which charts
//! get a plot, the tables, and nothing loaded from elsewhere.

use super::*;
use crate::report::ReportSettings;
use crate::series::{Bucket, IntervalLatency, Point, WorkerPoint};
use outbox_contract::crd::{GroupVerification, LoadTestStatus, ScenarioResult};

fn report(series: Series) -> Report {
    Report {
        run_id: "run-1".into(),
        load_test: Some("default/reference-run".into()),
        settings: ReportSettings {
            topic: "orders".into(),
            producers: vec!["producer-0".into()],
            groups: vec!["group-a".into()],
            message_size: 256,
            keys: 1000,
            success_threshold: 95.0,
            verification_timeout_seconds: 600,
            messages_per_request: 2000,
        },
        resumed: false,
        uncertain_messages: 0,
        wall_time_seconds: 61.5,
        verification_seconds: 3.25,
        verification: Vec::new(),
        status: LoadTestStatus {
            phase: Some(LoadTestPhase::Succeeded),
            accepted_messages: Some(30_000),
            scenarios: vec![ScenarioResult {
                name: "immediate".into(),
                messages: 30_000,
                accepted: 30_000,
                duration_seconds: 60.0,
                throughput: 500.0,
                latency: Some(LatencyPercentiles {
                    p50: 4.5,
                    p90: 9.0,
                    p95: 12.4,
                    p99: 30.0,
                    p999: 80.0,
                    max: 120.0,
                }),
                ..Default::default()
            }],
            groups: vec![GroupVerification {
                group: "group-a".into(),
                expected: 30_000,
                acknowledged: 30_000,
                ..Default::default()
            }],
            ..Default::default()
        },
        memory_growth: series.memory_growth(),
        series,
    }
}

/// Two samples with every field set.
fn sampled() -> Series {
    let point = |t: f64| Point {
        t,
        scenario: Some("immediate".into()),
        offered_per_second: Some(500.0),
        accepted_per_second: 480.5,
        failed_per_second: 2.0,
        missed_per_second: 17.5,
        relayed_per_second: Some(478.0),
        request_latency_ms: Some(IntervalLatency {
            count: 480,
            p50: 4.5,
            p95: 12.4,
            p99: 30.0,
            max: 120.0,
        }),
        acknowledged_per_second: [("group-a".to_string(), 470.0)].into(),
        backlog: Some(1200),
        consumer_lag: [("group-a".to_string(), 800)].into(),
        workers: [(
            "producer-0".to_string(),
            WorkerPoint {
                component: "producer".into(),
                resident_bytes: Some(52_428_800.0),
                cpu_cores: Some(0.75),
            },
        )]
        .into(),
    };
    Series {
        interval_seconds: 5.0,
        points: vec![point(5.0), point(10.0)],
        request_latency_histograms: [(
            "immediate".to_string(),
            vec![
                Bucket {
                    le_ms: 1.0,
                    count: 10,
                },
                Bucket {
                    le_ms: 2.5,
                    count: 400,
                },
            ],
        )]
        .into(),
    }
}

/// The text of the data blob.
fn blob(page: &str) -> &str {
    let open = format!("<script type=\"application/json\" id=\"{DATA_ID}\">");
    let start = page.find(&open).expect("the page has the data blob") + open.len();
    let end = page[start..].find("</script>").expect("the blob ends");
    &page[start..start + end]
}

#[test]
fn the_data_blob_round_trips() {
    let mut series = sampled();
    // A name that would end the script element if written raw.
    series.points[1].scenario = Some("</script><!-- x".into());
    let report = report(series);
    let page = render(&report).expect("renders");
    let blob = blob(&page);
    assert!(!blob.contains('<'), "{blob}");
    let parsed: Series = serde_json::from_str(blob).expect("the blob is the series");
    assert_eq!(parsed, report.series);
}

#[test]
fn user_text_is_escaped() {
    let evil = "</script><b>x";
    let mut series = sampled();
    series.request_latency_histograms.insert(
        evil.into(),
        vec![Bucket {
            le_ms: 1.0,
            count: 3,
        }],
    );
    let mut report = report(series);
    report.load_test = Some("default/a&b".into());
    report.status.scenarios[0].name = evil.into();
    report.status.groups[0].group = "<img src=x onerror=alert(1)>".into();
    report.status.message = Some("\"quoted\" <i>".into());
    report.status.thresholds = vec![ThresholdCheck {
        metric: "<u>p99".into(),
        scenario: Some(evil.into()),
        subject: Some("'single'".into()),
        limit: 50.0,
        measured: 30.0,
        passed: true,
    }];
    let page = render(&report).expect("renders");
    for raw in ["<b>x", "<img src=x", "<i>", "<u>", "\"quoted\"", "'single'"] {
        assert!(!page.contains(raw), "{raw} appears unescaped");
    }
    assert!(page.contains("&lt;/script&gt;&lt;b&gt;x"));
    assert!(page.contains("data-scenario=\"&lt;/script&gt;&lt;b&gt;x\""));
    assert!(page.contains("default/a&amp;b"));
    // Only the page's own three script elements end.
    assert_eq!(page.matches("</script>").count(), 3);
}

#[test]
fn a_report_without_samples_says_so_for_every_chart() {
    let page = render(&report(Series::default())).expect("renders");
    assert_eq!(page.matches(NO_DATA).count(), 6, "{page}");
    assert!(!page.contains("data-chart="));
}

#[test]
fn only_charts_with_data_get_a_plot() {
    let mut series = Series {
        interval_seconds: 5.0,
        points: vec![Point {
            t: 5.0,
            accepted_per_second: 100.0,
            ..Default::default()
        }],
        request_latency_histograms: [("quiet".to_string(), Vec::new())].into(),
    };
    let page = render(&report(series.clone())).expect("renders");
    assert!(page.contains("data-chart=\"throughput\""));
    assert_eq!(page.matches("data-chart=").count(), 1);
    assert_eq!(page.matches(NO_DATA).count(), 5);

    series.points[0].workers.insert(
        "consumer-0".into(),
        WorkerPoint {
            component: "consumer group-a".into(),
            resident_bytes: None,
            cpu_cores: Some(0.5),
        },
    );
    let page = render(&report(series)).expect("renders");
    assert!(page.contains("data-chart=\"cpu\""));
    assert!(!page.contains("data-chart=\"memory\""));

    let page = render(&report(sampled())).expect("renders");
    for kind in [
        "throughput",
        "latency",
        "histogram",
        "backlog",
        "memory",
        "cpu",
    ] {
        assert!(page.contains(&format!("data-chart=\"{kind}\"")), "{kind}");
    }
    assert!(!page.contains(NO_DATA));
}

#[test]
fn the_thresholds_table_shows_each_limit_and_its_result() {
    let page = render(&report(sampled())).expect("renders");
    assert!(!page.contains("<h2>Thresholds</h2>"));
    let mut with_checks = report(sampled());
    with_checks.status.thresholds = vec![
        ThresholdCheck {
            metric: "requestLatencyP99Ms".into(),
            scenario: Some("immediate".into()),
            subject: None,
            limit: 50.0,
            measured: 30.0,
            passed: true,
        },
        ThresholdCheck {
            metric: "endToEndLatencyP99Ms".into(),
            scenario: None,
            subject: Some("group-a".into()),
            limit: 1000.0,
            measured: 2500.5,
            passed: false,
        },
    ];
    let page = render(&with_checks).expect("renders");
    assert!(page.contains("<h2>Thresholds</h2>"));
    assert!(page.contains(
        "<td class=\"text\">requestLatencyP99Ms</td><td class=\"text\">immediate</td>\
             <td class=\"text\">-</td><td>50</td><td>30</td>\
             <td class=\"text pass\">passed</td>"
    ));
    assert!(page.contains(
        "<td class=\"text\">endToEndLatencyP99Ms</td><td class=\"text\">every scenario</td>\
             <td class=\"text\">group-a</td><td>1,000</td><td>2500.5</td>\
             <td class=\"text fail\">FAILED</td>"
    ));
}

#[test]
fn arrival_rate_stages_and_the_cpu_accounting_get_their_tables() {
    use outbox_contract::crd::{ComponentCpu, CpuAccounting, StageResult};
    let page = render(&report(sampled())).expect("renders");
    assert!(!page.contains("<h2>Arrival-rate stages</h2>") && !page.contains("<h2>CPU</h2>"));
    let mut with = report(sampled());
    with.status.scenarios[0].stages = vec![StageResult {
        rate_per_second: 1000,
        duration_seconds: 20,
        offered: 20_000,
        sent: 19_000,
        accepted: 19_000,
        missed_arrivals: 1000,
        achieved_rate: 912.5,
        achieved_ratio: 0.9125,
        latency: None,
    }];
    with.status.cpu = Some(CpuAccounting {
        window_seconds: 240.5,
        node_seconds: Some(471.7),
        components: vec![
            ComponentCpu {
                component: "relay".into(),
                seconds: 54.3,
            },
            ComponentCpu {
                component: "postgresql".into(),
                seconds: 178.2,
            },
        ],
        micros_per_message: Some(47.1),
        unreadable: vec!["kafka".into()],
    });
    let page = render(&with).expect("renders");
    assert!(page.contains(
        "<tr><td class=\"text\">immediate</td><td>1</td><td>1,000</td><td>20</td>\
             <td>19,000</td><td class=\"fail\">1,000</td><td>912.5</td><td>0.912</td><td>-</td></tr>"
    ), "{page}");
    assert!(
        page.contains("<p>over 240.5 s; node busy 471.7 s, 47.1 CPU-µs per message end to end</p>")
    );
    let postgresql = page.find("<td class=\"text\">postgresql</td><td>178.2</td><td>76.6 %</td>");
    let relay = page.find("<td class=\"text\">relay</td><td>54.3</td><td>23.4 %</td>");
    assert!(
        postgresql.is_some() && relay.is_some() && postgresql < relay,
        "largest first"
    );
    assert!(page.contains("<p>not readable: kafka</p>"));
}

#[test]
fn the_verdict_and_tables_show_the_status() {
    let mut report = report(sampled());
    report.status.phase = Some(LoadTestPhase::Failed);
    report.status.groups[0].missing = 12;
    let page = render(&report).expect("renders");
    assert!(page.contains("<span class=\"phase failed\" id=\"phase\">Failed</span>"));
    assert!(page.contains("<dt>run id</dt><dd>run-1</dd>"));
    assert!(page.contains("<h1>Load test default/reference-run</h1>"));
    assert!(page.contains(
        "<tr><td class=\"text\">immediate</td><td>30,000</td><td>30,000</td><td>0</td>\
             <td>60.00</td><td>500.0</td><td>4.5</td><td>12.4</td><td>30</td>"
    ));
    assert!(page.contains("<td class=\"text fail\">INCOMPLETE</td>"));
}

#[test]
fn the_page_loads_nothing_from_elsewhere() {
    let page = render(&report(sampled())).expect("renders");
    assert!(!page.contains("<script src"));
    assert!(!page.contains("<link"));
    // The inlined files cannot end their element early.
    for (file, end) in [
        (UPLOT_JS, "</script"),
        (CHARTS_JS, "</script"),
        (UPLOT_CSS, "</style"),
        (PAGE_CSS, "</style"),
    ] {
        assert!(!file.to_ascii_lowercase().contains(end));
    }
}

#[test]
fn digits_are_grouped_by_thousands() {
    assert_eq!(group_digits(0), "0");
    assert_eq!(group_digits(999), "999");
    assert_eq!(group_digits(30_000), "30,000");
    assert_eq!(group_digits(-1_234_567), "-1,234,567");
    assert_eq!(number(12.4), "12.4");
    assert_eq!(number(1000.0), "1,000");
}

#[test]
fn a_scenario_sent_alone_shows_its_cpu_per_message_and_others_a_dash() {
    let mut report = report(sampled());
    let mut together = report.status.scenarios[0].clone();
    together.name = "together".into();
    report.status.scenarios[0].sending_cpu = Some(outbox_contract::crd::CpuAccounting {
        micros_per_message: Some(93.84),
        ..Default::default()
    });
    report.status.scenarios.push(together);
    let page = render(&report).expect("renders");
    assert!(
        page.contains("<th>CPU-µs per message sending</th>"),
        "{page}"
    );
    assert!(
        page.contains("<td>30</td><td>93.8</td><td class=\"text\"></td></tr>"),
        "the alone scenario's cell"
    );
    assert!(
        page.contains("<td>30</td><td>–</td><td class=\"text\"></td></tr>"),
        "a dash where nothing was measured"
    );
}

#[test]
fn a_shared_run_lists_its_runner_pods_and_a_run_alone_has_no_such_table() {
    use outbox_contract::crd::{RunnerLine, RunnerState};
    let alone = render(&report(sampled())).expect("renders");
    assert!(!alone.contains("Runner pods"));
    let mut shared = report(sampled());
    shared.status.runners = (0..3)
        .map(|i| RunnerLine {
            index: i,
            pod: Some(format!("small-run-{i}-x<y")),
            messages: 10_000 + i64::from(i),
            accepted: 10_000 + i64::from(i),
            groups_sent: 2,
            state: RunnerState::Sent,
            message: None,
        })
        .collect();
    let page = render(&shared).expect("renders");
    assert!(page.contains("<h2>Runner pods</h2>"));
    for i in 0..3 {
        assert!(
            page.contains(&format!("small-run-{i}-x&lt;y")),
            "runner {i}"
        );
    }
    assert!(page.contains("10,002"), "digits grouped");
    assert_eq!(page.matches("<td class=\"text pass\">Sent</td>").count(), 3);
}
