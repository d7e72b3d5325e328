//! The HTML report: one self-contained page of a run, to open in a browser with no
//! network (uPlot, the page's stylesheet and script, and the data are inlined).
//!
//! The page shows the verdict (phase, run id, the LoadTest, the thresholds checked),
//! the scenarios, each consumer group's verification, and charts of what the run
//! sampled (`series`): throughput, request latency over time, a request latency
//! histogram per scenario sent one message per request, backlog and consumer lag, and
//! each worker's memory and CPU. Where the run sampled nothing for a chart, the page
//! says "no data sampled" instead.
//!
//! The tables are rendered here, every name escaped (scenario, group and worker names
//! come from users). The charts are drawn in the browser by the vendored uPlot
//! (`loadtest/assets/uplot/`) and the page's script (`loadtest/assets/html-report/`) from
//! one JSON blob, the run's [`Series`], in `<script type="application/json"
//! id="report-data">`. The script marks the result on `<body>`: `data-rendered="ok"`
//! once every chart is built, or the first error in `data-error`. Each drawn plot
//! records where its plotting area lies on the page (`data-plot-rect`, CSS pixels
//! `x,y,width,height`) and the stroke colours of its series that hold data
//! (`data-colors`), so a test can look for those colours in a screenshot.

use std::fmt::Write as _;
use std::path::Path;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use outbox_contract::crd::{LatencyPercentiles, LoadTestPhase, ThresholdCheck};

use crate::error::{LoadTestError, Result};
use crate::report::Report;
use crate::series::Series;

/// uPlot's script, as published (see `loadtest/assets/uplot/README.md`).
const UPLOT_JS: &str = include_str!("../../assets/uplot/uPlot.iife.min.js");
/// uPlot's stylesheet, as published.
const UPLOT_CSS: &str = include_str!("../../assets/uplot/uPlot.min.css");
/// The page's script: builds the charts from the data blob.
const CHARTS_JS: &str = include_str!("../../assets/html-report/charts.js");
/// The page's stylesheet.
const PAGE_CSS: &str = include_str!("../../assets/html-report/report.css");

/// The note shown in place of a chart the run sampled nothing for.
pub const NO_DATA: &str = "no data sampled";

/// The `id` of the `<script type="application/json">` holding the run's series.
pub const DATA_ID: &str = "report-data";

/// What a chart draws: the `data-chart` the page's script builds it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChartKind {
    /// Accepted, offered, failed, missed and acknowledged (per group) messages per
    /// second.
    Throughput,
    /// Request latency percentiles per interval.
    Latency,
    /// One scenario's request latency histogram.
    Histogram,
    /// Outbox backlog and consumer lag per group.
    Backlog,
    /// Resident memory per worker.
    Memory,
    /// CPU cores per worker.
    Cpu,
}

impl ChartKind {
    fn id(self) -> &'static str {
        match self {
            ChartKind::Throughput => "throughput",
            ChartKind::Latency => "latency",
            ChartKind::Histogram => "histogram",
            ChartKind::Backlog => "backlog",
            ChartKind::Memory => "memory",
            ChartKind::Cpu => "cpu",
        }
    }
}

/// One chart of the page.
#[derive(Debug, Clone, PartialEq)]
struct Chart {
    kind: ChartKind,
    title: String,
    /// The scenario of a histogram.
    scenario: Option<String>,
    /// Whether the run sampled anything to draw.
    has_data: bool,
    /// Across the whole page width (time series) or half of it.
    wide: bool,
}

impl Chart {
    fn new(kind: ChartKind, title: &str, has_data: bool, wide: bool) -> Chart {
        Chart {
            kind,
            title: title.to_string(),
            scenario: None,
            has_data,
            wide,
        }
    }
}

/// The charts of a run, in page order, each with whether there is anything to draw.
fn charts(series: &Series) -> Vec<Chart> {
    let points = &series.points;
    let workers = || points.iter().flat_map(|p| p.workers.values());
    let mut charts = vec![
        Chart::new(
            ChartKind::Throughput,
            "Throughput (messages per second)",
            !points.is_empty(),
            true,
        ),
        Chart::new(
            ChartKind::Latency,
            "Request latency over time (ms)",
            points.iter().any(|p| p.request_latency_ms.is_some()),
            true,
        ),
        Chart::new(
            ChartKind::Backlog,
            "Outbox backlog and consumer lag (messages)",
            points
                .iter()
                .any(|p| p.backlog.is_some() || !p.consumer_lag.is_empty()),
            true,
        ),
    ];
    if series.request_latency_histograms.is_empty() {
        charts.push(Chart::new(
            ChartKind::Histogram,
            "Request latency histogram",
            false,
            false,
        ));
    }
    for (scenario, buckets) in &series.request_latency_histograms {
        charts.push(Chart {
            scenario: Some(scenario.clone()),
            ..Chart::new(
                ChartKind::Histogram,
                &format!("Request latency histogram: {scenario}"),
                buckets.iter().any(|b| b.count > 0),
                false,
            )
        });
    }
    charts.push(Chart::new(
        ChartKind::Memory,
        "Resident memory per worker (MiB)",
        workers().any(|w| w.resident_bytes.is_some()),
        false,
    ));
    charts.push(Chart::new(
        ChartKind::Cpu,
        "CPU per worker (cores)",
        workers().any(|w| w.cpu_cores.is_some()),
        false,
    ));
    charts
}

/// The page of `report` (its thresholds table from `status.thresholds`; none: no
/// table).
pub fn render(report: &Report) -> Result<String> {
    let data = serde_json::to_string(&report.series).map_err(|source| LoadTestError::Json {
        context: "the HTML report's data",
        source,
    })?;
    let status = &report.status;
    let phase = status.phase.unwrap_or_default();
    let name = report.load_test.as_deref().unwrap_or("local run");
    let mut page = String::with_capacity(UPLOT_JS.len() + data.len() + 32 * 1024);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>Load test {} {}: {:?}</title>\n<style>\n{UPLOT_CSS}\n</style>\n\
         <style>\n{PAGE_CSS}</style>\n</head>\n<body>\n",
        escape(name),
        escape(&report.run_id),
        phase
    );
    verdict(&mut page, report, phase, name);
    thresholds_table(&mut page, &report.status.thresholds);
    scenarios_table(&mut page, report);
    stages_table(&mut page, report);
    groups_table(&mut page, report);
    runners_table(&mut page, report);
    cpu_table(&mut page, report);
    conditions_table(&mut page, report);
    page.push_str("<h2>Over time</h2>\n<div class=\"charts\">\n");
    for chart in charts(&report.series) {
        chart_figure(&mut page, &chart);
    }
    page.push_str("</div>\n");
    let _ = write!(
        page,
        "<script type=\"application/json\" id=\"{DATA_ID}\">{}</script>\n\
         <script>\n{UPLOT_JS}\n</script>\n<script>\n{CHARTS_JS}</script>\n</body>\n</html>\n",
        script_json(&data)
    );
    Ok(page)
}

/// Writes `page` to `path` (through a temporary file, so a reader never sees half a
/// page).
pub fn write(path: &Path, page: &str) -> Result<()> {
    let tmp = path.with_extension("html.tmp");
    let io = |source| LoadTestError::Report {
        path: path.display().to_string(),
        source,
    };
    std::fs::write(&tmp, page).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The heading: phase, LoadTest, run id, and the run's main figures.
fn verdict(page: &mut String, report: &Report, phase: LoadTestPhase, name: &str) {
    let status = &report.status;
    let class = match phase {
        LoadTestPhase::Succeeded => "succeeded",
        LoadTestPhase::Failed => "failed",
        _ => "unfinished",
    };
    let _ = write!(
        page,
        "<header class=\"verdict\">\n<h1>Load test {}</h1>\n\
         <span class=\"phase {class}\" id=\"phase\">{phase:?}</span>\n</header>\n",
        escape(name)
    );
    if let Some(message) = &status.message {
        let _ = writeln!(page, "<p class=\"message\">{}</p>", escape(message));
    }
    let time = |t: &Option<Time>| t.as_ref().map(|t| t.0.to_string());
    let settings = &report.settings;
    let facts: Vec<(&str, Option<String>)> = vec![
        ("run id", Some(report.run_id.clone())),
        ("LoadTest", report.load_test.clone()),
        ("topic", Some(settings.topic.clone())),
        ("producers", Some(settings.producers.join(", "))),
        ("consumer groups", Some(settings.groups.join(", "))),
        ("started", time(&status.start_time)),
        ("finished", time(&status.completion_time)),
        (
            "wall time",
            Some(format!("{:.1} s", report.wall_time_seconds)),
        ),
        (
            "verification",
            Some(format!("{:.1} s", report.verification_seconds)),
        ),
        (
            "accepted messages",
            status.accepted_messages.map(group_digits),
        ),
        (
            "throughput while sending",
            status.throughput.map(|t| format!("{t:.1} msg/s")),
        ),
        (
            "message size",
            Some(format!("{} bytes", settings.message_size)),
        ),
        ("keys", Some(settings.keys.to_string())),
        (
            "accepted at least",
            Some(format!("{} %", settings.success_threshold)),
        ),
        (
            "messages per request (batches)",
            Some(settings.messages_per_request.to_string()),
        ),
        (
            "resumed an earlier attempt",
            report.resumed.then(|| "yes".to_string()),
        ),
        (
            "requests of unknown outcome, looked up",
            (report.uncertain_messages > 0).then(|| report.uncertain_messages.to_string()),
        ),
    ];
    page.push_str("<dl class=\"facts\">\n");
    for (label, value) in facts {
        if let Some(value) = value {
            let _ = writeln!(page, "<dt>{label}</dt><dd>{}</dd>", escape(&value));
        }
    }
    page.push_str("</dl>\n");
}

/// The thresholds the LoadTest set, each with what was measured and whether it passed.
fn thresholds_table(page: &mut String, thresholds: &[ThresholdCheck]) {
    if thresholds.is_empty() {
        return;
    }
    page.push_str(
        "<h2>Thresholds</h2>\n<table class=\"thresholds\">\n<thead><tr>\
         <th class=\"text\">metric</th><th class=\"text\">scenario</th>\
         <th class=\"text\">subject</th><th>limit</th><th>measured</th>\
         <th class=\"text\">result</th></tr></thead>\n<tbody>\n",
    );
    for t in thresholds {
        let (class, result) = if t.passed {
            ("pass", "passed")
        } else {
            ("fail", "FAILED")
        };
        let _ = writeln!(
            page,
            "<tr><td class=\"text\">{}</td><td class=\"text\">{}</td>\
             <td class=\"text\">{}</td><td>{}</td><td>{}</td>\
             <td class=\"text {class}\">{result}</td></tr>",
            escape(&t.metric),
            escape(t.scenario.as_deref().unwrap_or("every scenario")),
            escape(t.subject.as_deref().unwrap_or("-")),
            number(t.limit),
            number(t.measured),
        );
    }
    page.push_str("</tbody>\n</table>\n");
}

/// Per scenario: what was sent, accepted and failed, how fast, and request latency.
fn scenarios_table(page: &mut String, report: &Report) {
    page.push_str(
        "<h2>Scenarios</h2>\n<table class=\"scenarios\">\n<thead><tr>\
         <th class=\"text\">scenario</th><th>messages</th><th>accepted</th><th>failed</th>\
         <th>seconds</th><th>msg/s</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th>\
         <th>CPU-µs per message sending</th>\
         <th class=\"text\">failures</th></tr></thead>\n<tbody>\n",
    );
    for s in &report.status.scenarios {
        let [p50, p95, p99] = percentiles(&s.latency);
        // Measured only for a scenario sent alone (status.scenarios[].sendingCpu).
        let sending_cpu = s
            .sending_cpu
            .as_ref()
            .and_then(|c| c.micros_per_message)
            .map_or_else(|| "–".to_string(), |us| format!("{us:.1}"));
        let failures: Vec<String> = s
            .failure_reasons
            .iter()
            .map(|(reason, n)| format!("{reason}: {n}"))
            .collect();
        let class = if s.failed > 0 { " class=\"fail\"" } else { "" };
        let _ = writeln!(
            page,
            "<tr><td class=\"text\">{}</td><td>{}</td><td>{}</td><td{class}>{}</td>\
             <td>{:.2}</td><td>{:.1}</td><td>{p50}</td><td>{p95}</td><td>{p99}</td>\
             <td>{sending_cpu}</td><td class=\"text\">{}</td></tr>",
            escape(&s.name),
            group_digits(s.messages),
            group_digits(s.accepted),
            group_digits(s.failed),
            s.duration_seconds,
            s.throughput,
            escape(&failures.join(", ")),
        );
    }
    if report.status.scenarios.is_empty() {
        page.push_str("<tr><td class=\"text\" colspan=\"11\">no scenario recorded</td></tr>\n");
    }
    page.push_str("</tbody>\n</table>\n");
}

/// Each arrival-rate stage: the rate offered, the rate achieved and their ratio (a
/// ramp's linearity), missed arrivals and request latency.
fn stages_table(page: &mut String, report: &Report) {
    let stages: Vec<_> = report
        .status
        .scenarios
        .iter()
        .flat_map(|s| s.stages.iter().enumerate().map(move |(i, st)| (s, i, st)))
        .collect();
    if stages.is_empty() {
        return;
    }
    page.push_str(
        "<h2>Arrival-rate stages</h2>\n<table class=\"stages\">\n<thead><tr>\
         <th class=\"text\">scenario</th><th>stage</th><th>offered msg/s</th>\
         <th>seconds</th><th>accepted</th><th>missed</th><th>achieved msg/s</th>\
         <th>achieved / offered</th><th>p95 ms</th></tr></thead>\n<tbody>\n",
    );
    for (s, i, st) in stages {
        let [_, p95, _] = percentiles(&st.latency);
        let class = if st.missed_arrivals > 0 {
            " class=\"fail\""
        } else {
            ""
        };
        let _ = writeln!(
            page,
            "<tr><td class=\"text\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td{class}>{}</td><td>{:.1}</td><td>{:.3}</td><td>{p95}</td></tr>",
            escape(&s.name),
            i + 1,
            group_digits(st.rate_per_second),
            st.duration_seconds,
            group_digits(st.accepted),
            group_digits(st.missed_arrivals),
            st.achieved_rate,
            st.achieved_ratio,
        );
    }
    page.push_str("</tbody>\n</table>\n");
}

/// Where the CPU went over the run (`status.cpu`), largest first.
fn cpu_table(page: &mut String, report: &Report) {
    let Some(cpu) = &report.status.cpu else {
        return;
    };
    if cpu.components.is_empty() {
        return;
    }
    let _ = writeln!(
        page,
        "<h2>CPU</h2>\n<p>{}</p>\n<table class=\"cpu\">\n\
         <thead><tr><th class=\"text\">component</th><th>CPU seconds</th><th>share</th>\
         </tr></thead>\n<tbody>",
        crate::report::cpu_heading(cpu)
    );
    let mut shares = crate::report::cpu_shares(cpu);
    shares.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (component, seconds, share) in shares {
        let _ = writeln!(
            page,
            "<tr><td class=\"text\">{}</td><td>{seconds:.1}</td><td>{share:.1} %</td></tr>",
            escape(component),
        );
    }
    page.push_str("</tbody>\n</table>\n");
    if !cpu.unreadable.is_empty() {
        let _ = writeln!(
            page,
            "<p>not readable: {}</p>",
            escape(&cpu.unreadable.join(", "))
        );
    }
}

/// Per consumer group: the exact verification against the ledger.
fn groups_table(page: &mut String, report: &Report) {
    page.push_str(
        "<h2>Verification per consumer group</h2>\n<table class=\"groups\">\n<thead><tr>\
         <th class=\"text\">consumer group</th><th>expected</th><th>acknowledged</th>\
         <th>missing</th><th>duplicates</th><th>out of order</th><th>dead-lettered</th>\
         <th>end to end p50 ms</th><th>p99 ms</th><th>max ms</th>\
         <th class=\"text\">verdict</th></tr></thead>\n<tbody>\n",
    );
    for g in &report.status.groups {
        let (p50, p99, max) = match &g.latency {
            Some(l) => (number(l.p50), number(l.p99), number(l.max)),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let complete = g.missing == 0 && g.out_of_order == 0;
        let (class, verdict) = if complete {
            ("pass", "complete")
        } else {
            ("fail", "INCOMPLETE")
        };
        let _ = writeln!(
            page,
            "<tr><td class=\"text\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{p50}</td><td>{p99}</td><td>{max}</td>\
             <td class=\"text {class}\">{verdict}</td></tr>",
            escape(&g.group),
            group_digits(g.expected),
            group_digits(g.acknowledged),
            group_digits(g.missing),
            group_digits(g.duplicates),
            group_digits(g.out_of_order),
            group_digits(g.dead_lettered),
        );
    }
    if report.status.groups.is_empty() {
        page.push_str("<tr><td class=\"text\" colspan=\"11\">no group verified</td></tr>\n");
    }
    page.push_str("</tbody>\n</table>\n");
}

/// A shared run's runner pods, one row each (nothing for a run of one runner).
fn runners_table(page: &mut String, report: &Report) {
    if report.status.runners.is_empty() {
        return;
    }
    page.push_str(
        "<h2>Runner pods</h2>\n<table class=\"runners\">\n<thead><tr>\
         <th>runner</th><th class=\"text\">pod</th><th>messages</th><th>accepted</th>\
         <th>groups sent</th><th class=\"text\">state</th></tr></thead>\n<tbody>\n",
    );
    for line in &report.status.runners {
        let state = format!("{:?}", line.state);
        let class = if line.state == outbox_contract::crd::RunnerState::Failed {
            "fail"
        } else {
            "pass"
        };
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td class=\"text\">{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"text {class}\">{}</td></tr>",
            line.index,
            escape(line.pod.as_deref().unwrap_or("-")),
            group_digits(line.messages),
            group_digits(line.accepted),
            line.groups_sent,
            escape(
                [state, line.message.clone().unwrap_or_default()]
                    .join(" ")
                    .trim()
            ),
        );
    }
    page.push_str("</tbody>\n</table>\n");
}

/// The status's conditions and the outages the runner waited out.
fn conditions_table(page: &mut String, report: &Report) {
    let status = &report.status;
    if status.conditions.is_empty() && status.outages.is_empty() {
        return;
    }
    page.push_str(
        "<h2>Conditions</h2>\n<table class=\"conditions\">\n<thead><tr>\
         <th class=\"text\">type</th><th class=\"text\">status</th>\
         <th class=\"text\">reason</th><th class=\"text\">message</th></tr></thead>\n<tbody>\n",
    );
    for c in &status.conditions {
        let _ = writeln!(
            page,
            "<tr><td class=\"text\">{}</td><td class=\"text\">{}</td>\
             <td class=\"text\">{}</td><td class=\"text wrap\">{}</td></tr>",
            escape(&c.type_),
            escape(&c.status),
            escape(&c.reason),
            escape(&c.message),
        );
    }
    for o in &status.outages {
        let ongoing = if o.ongoing { ", still going on" } else { "" };
        let _ = writeln!(
            page,
            "<tr><td class=\"text\">outage</td><td class=\"text\">{}</td>\
             <td class=\"text\">{}</td><td class=\"text wrap\">{} time(s), the longest \
             {:.1} s{ongoing}</td></tr>",
            escape(&o.dependency),
            if o.ongoing { "ongoing" } else { "over" },
            o.count,
            o.longest_seconds,
        );
    }
    page.push_str("</tbody>\n</table>\n");
}

/// A chart's figure: a plot for the page's script to fill, or the no-data note.
fn chart_figure(page: &mut String, chart: &Chart) {
    let wide = if chart.wide { " wide" } else { "" };
    let _ = write!(
        page,
        "<figure class=\"chart{wide}\">\n<figcaption>{}</figcaption>\n",
        escape(&chart.title)
    );
    if chart.has_data {
        let scenario = chart
            .scenario
            .as_deref()
            .map(|s| format!(" data-scenario=\"{}\"", escape(s)))
            .unwrap_or_default();
        let _ = writeln!(
            page,
            "<div class=\"plot\" data-chart=\"{}\"{scenario}></div>",
            chart.kind.id()
        );
    } else {
        let _ = writeln!(page, "<p class=\"no-data\">{NO_DATA}</p>");
    }
    page.push_str("</figure>\n");
}

/// `text` with `& < > " '` written as entities: safe as element content and as a
/// quoted attribute value.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// JSON made safe inside a `<script>` element: every `<` (it can only occur inside a
/// JSON string) written as `\u003c`, so no string in the data can close the element
/// (`</script>`) or open a comment (`<!--`) that changes how the page is parsed. The
/// value parses the same.
fn script_json(json: &str) -> String {
    json.replace('<', "\\u003c")
}

/// p50, p95 and p99 of a latency, or dashes.
fn percentiles(latency: &Option<LatencyPercentiles>) -> [String; 3] {
    match latency {
        Some(l) => [l.p50, l.p95, l.p99].map(number),
        None => std::array::from_fn(|_| "-".to_string()),
    }
}

/// A measurement with one decimal, or none for whole numbers.
fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        group_digits(value as i64)
    } else {
        format!("{value:.1}")
    }
}

/// An integer with thousands separated by commas: `30,000`.
fn group_digits(n: impl Into<i128>) -> String {
    let n: i128 = n.into();
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

#[cfg(test)]
#[path = "html_tests.rs"]
mod tests;
