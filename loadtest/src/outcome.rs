//! The end of a run: the verdict into the status, then the JSON and HTML reports and
//! the summary table.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use outbox_contract::crd::{LoadTestStatus, ThresholdCheck};

use super::progress::Display;
use super::report::{self, Report, ReportSettings};
use super::status::{StatusBook, COMPLETE, THRESHOLDS_MET, VERIFIED};
use super::{judge, report::html, report::store, thresholds, verdict, LoadTestArgs, Plan, Result};

/// Sets the verdict and the groups' figures in the status; [`publish_report`] writes it,
/// once the HTML report is stored, so that a run is never seen finished without it.
pub(super) fn record(
    book: &mut StatusBook,
    judgement: &judge::Judgement,
    verification: &verdict::Verification,
) {
    let said = |s: &judge::Said| (s.ok, s.reason, s.message.clone());
    let (ok, reason, message) = said(&judgement.verified);
    book.set_condition(VERIFIED, ok, reason, message);
    let (ok, reason, message) = said(&judgement.thresholds);
    book.set_condition(THRESHOLDS_MET, ok, reason, message);
    let (ok, reason, message) = said(&judgement.complete);
    book.set_condition(COMPLETE, ok, reason, message);
    book.advance(judgement.phase);
    let status = book.status_mut();
    status.groups = verification
        .reports
        .iter()
        .map(verdict::group_status)
        .collect();
    status.end_to_end_latency = verdict::overall_latency(&verification.reports);
    status.completion_time = Some(Time(Timestamp::now()));
    status.message = Some(judgement.message.clone());
}

/// Writes the HTML report (in a Job into the ConfigMap `<loadtest>-report`, named in the
/// status), then the status [`record`] set, then the JSON report and the HTML file where
/// asked, and shows the summary table.
pub(super) async fn publish_report(
    args: &LoadTestArgs,
    plan: &Plan,
    book: &mut StatusBook,
    display: &Display,
    json: Report,
) -> Result<()> {
    if let Some(target) = &plan.report_target {
        let mut failed = None;
        let (html, every) = store::fitting(&json.series, |series| {
            let thinned = Report {
                series: series.clone(),
                ..json.clone()
            };
            html::render(&thinned).unwrap_or_else(|e| {
                failed = Some(e.to_string());
                String::new()
            })
        });
        match failed {
            Some(e) => tracing::warn!(error = %e, "could not render the HTML report"),
            None => match store::store(target, html).await {
                Ok(name) => {
                    tracing::info!(config_map = %name, every_nth_sample = every, "wrote the HTML report into a ConfigMap");
                    book.status_mut().report_config_map = Some(name);
                }
                Err(e) => {
                    tracing::warn!(error = %outbox_core::error_chain(&e), "could not write the HTML report ConfigMap; the status holds the results")
                }
            },
        }
    }
    // The run's end in the status, with the HTML report's ConfigMap named: written once
    // the report is there.
    book.write_now().await?;
    // The reports carry the status as it stands now, the ConfigMap's name included.
    let json = Report {
        status: book.status().clone(),
        ..json
    };
    if let Some(path) = &args.report {
        json.write(path)?;
        tracing::info!(path = %path.display(), "wrote the JSON report");
    }
    if let Some(path) = &args.html_report {
        html::write(path, &html::render(&json)?)?;
        tracing::info!(path = %path.display(), "wrote the HTML report");
    }
    let mut table = report::summary_table(&plan.run_id, book.status());
    table.push_str(&report::memory_table(&json.series));
    if display.is_terminal() {
        println!("{table}");
    } else {
        for line in table.lines() {
            tracing::info!(target: "loadtest", "{line}");
        }
    }
    Ok(())
}

/// The verdict on a finished run (pure): every threshold checked against the status,
/// then the judgement of verification, success threshold and thresholds together.
pub(super) fn judge_run(
    plan: &Plan,
    status: &LoadTestStatus,
    verification: &verdict::Verification,
) -> (judge::Judgement, Vec<ThresholdCheck>) {
    let groups: Vec<_> = verification
        .reports
        .iter()
        .map(verdict::group_status)
        .collect();
    let checks = thresholds::check(
        plan.thresholds.as_ref(),
        &plan.scenarios,
        &status.scenarios,
        &groups,
    );
    let (ok, reason, message) = verification.condition();
    let judgement = judge::judge(
        &status.scenarios,
        plan.success_threshold,
        judge::Said {
            ok,
            reason,
            message,
        },
        thresholds::condition(&checks),
    );
    (judgement, checks)
}

/// The settings a report names.
pub(super) fn settings(args: &LoadTestArgs, plan: &Plan) -> ReportSettings {
    ReportSettings {
        topic: plan.topic.clone(),
        producers: plan.producers.iter().map(|p| p.name.clone()).collect(),
        groups: plan.groups.clone(),
        message_size: plan.message_size,
        keys: plan.keys,
        success_threshold: plan.success_threshold,
        verification_timeout_seconds: plan.verification_timeout.as_secs(),
        messages_per_request: args.messages_per_request,
    }
}

/// A duration in seconds, to the millisecond.
pub(super) fn seconds(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}
