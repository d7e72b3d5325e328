//! The HTML report in a real browser: renders a synthetic run with realistic series
//! (60 samples, throughput ramping from 100 to 1,000 msg/s, latencies, two groups, three
//! workers), opens it in Debian's chromium, headless, and checks
//!
//! - in the DOM (`--dump-dom`): the page's script built a uPlot chart for every plot and
//!   reported no error (`<body data-rendered="ok">`, no `data-error`);
//! - in a screenshot (`--screenshot`): inside each plot's plotting area, every series
//!   that holds data drew pixels of its stroke colour across a good part of the plot.
//!
//! Needs `/usr/bin/chromium` (`apt-get install -y chromium`; `CHROMIUM=PATH` names
//! another) and nothing else. `HTML_REPORT_SCREENSHOT=PATH` keeps a copy of the
//! screenshot to look at.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outbox_contract::crd::{
    GroupVerification, LatencyPercentiles, LoadTestPhase, LoadTestStatus, ScenarioResult,
    ThresholdCheck,
};
use outbox_loadtest::report::html;
use outbox_loadtest::report::{Report, ReportSettings};
use outbox_loadtest::series::{Bucket, IntervalLatency, Point, Series, WorkerPoint};

/// The browser window: wide like a laptop, tall enough for the whole page.
const WINDOW: (u32, u32) = (1280, 2800);
/// How long one chromium run may take before the test gives up on it.
const CHROMIUM_PATIENCE: Duration = Duration::from_secs(60);
const GROUPS: [&str; 2] = ["group-a", "group-b"];
const WORKERS: [(&str, &str); 3] = [
    ("outbox-producer-7c8b8d744f-8zsd8", "producer"),
    (
        "outbox-consumer-group-a-56d65c759f-7tjxv",
        "consumer group-a",
    ),
    (
        "outbox-consumer-group-b-69d8b4669-nlz58",
        "consumer group-b",
    ),
];

/// The series of a run of two scenarios: `ramp`, an arrival rate rising from 100 to
/// 1,000 msg/s over 40 s, then `immediate`, one message per request for 20 s.
fn series() -> Series {
    let points = (0..60)
        .map(|i| {
            let t = f64::from(i + 1);
            let wave = (t / 4.0).sin();
            let ramp = i < 40;
            let offered = 100.0 + 900.0 * f64::from(i.min(39)) / 39.0;
            let accepted = if ramp {
                offered * 0.97
            } else {
                300.0 + 40.0 * wave
            };
            let backlog = if ramp {
                f64::from(i) * 120.0
            } else {
                4680.0 - f64::from(i - 39) * 230.0
            };
            let p50 = 3.0 + 0.1 * t + wave;
            Point {
                t,
                scenario: Some(if ramp { "ramp" } else { "immediate" }.into()),
                offered_per_second: ramp.then_some(offered),
                accepted_per_second: accepted,
                failed_per_second: if i % 7 == 3 { 25.0 } else { 2.0 },
                missed_per_second: if ramp && i > 10 { offered * 0.03 } else { 0.0 },
                relayed_per_second: Some(accepted * 0.98),
                request_latency_ms: Some(IntervalLatency {
                    count: accepted as u64,
                    p50,
                    p95: p50 * 3.0,
                    p99: p50 * 6.0,
                    max: p50 * 15.0 + 40.0 * wave.abs(),
                }),
                acknowledged_per_second: GROUPS
                    .iter()
                    .enumerate()
                    .map(|(g, name)| (name.to_string(), accepted * (0.95 - 0.2 * g as f64)))
                    .collect(),
                backlog: Some(backlog.max(0.0) as i64),
                consumer_lag: GROUPS
                    .iter()
                    .enumerate()
                    .map(|(g, name)| {
                        let lag = backlog * (0.4 + 0.5 * g as f64) + 300.0 * wave.abs();
                        (name.to_string(), lag.max(0.0) as i64)
                    })
                    .collect(),
                workers: WORKERS
                    .iter()
                    .enumerate()
                    .map(|(w, (name, component))| {
                        let w = w as f64;
                        let point = WorkerPoint {
                            component: component.to_string(),
                            resident_bytes: Some((40.0 + 25.0 * w + t * (0.5 + w)) * 1048576.0),
                            cpu_cores: Some(0.1 + accepted / 1000.0 * (0.8 - 0.2 * w)),
                        };
                        (name.to_string(), point)
                    })
                    .collect(),
            }
        })
        .collect();
    let histogram = |shift: usize| {
        let counts = [5, 40, 300, 1200, 2500, 1800, 900, 400, 150, 60, 20, 8, 2];
        let bounds = [
            0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
        ];
        bounds
            .iter()
            .enumerate()
            .map(|(i, &le_ms)| Bucket {
                le_ms,
                count: counts[(i + counts.len() - shift) % counts.len()],
            })
            .collect::<Vec<_>>()
    };
    Series {
        interval_seconds: 1.0,
        points,
        request_latency_histograms: BTreeMap::from([
            ("immediate".to_string(), histogram(0)),
            ("immediate-after-ramp".to_string(), histogram(2)),
        ]),
    }
}

fn report() -> Report {
    let latency = |p50: f64| {
        Some(LatencyPercentiles {
            p50,
            p90: p50 * 2.5,
            p95: p50 * 3.0,
            p99: p50 * 6.0,
            p999: p50 * 12.0,
            max: p50 * 20.0,
        })
    };
    Report {
        run_id: "0b5e0c6e-4f1d-4d0b-9a63-2f4a8e1d7c11".into(),
        load_test: Some("default/reference-run".into()),
        settings: ReportSettings {
            topic: "orders".into(),
            producers: vec![WORKERS[0].0.into()],
            groups: GROUPS.iter().map(|g| g.to_string()).collect(),
            message_size: 256,
            keys: 1000,
            success_threshold: 95.0,
            verification_timeout_seconds: 600,
            messages_per_request: 2000,
        },
        resumed: false,
        uncertain_messages: 0,
        wall_time_seconds: 64.2,
        verification_seconds: 4.1,
        verification: Vec::new(),
        status: LoadTestStatus {
            phase: Some(LoadTestPhase::Succeeded),
            accepted_messages: Some(28_450),
            throughput: Some(474.2),
            scenarios: vec![
                ScenarioResult {
                    name: "ramp".into(),
                    messages: 22_000,
                    accepted: 21_340,
                    failed: 260,
                    failure_reasons: BTreeMap::from([("http503".to_string(), 260)]),
                    duration_seconds: 40.0,
                    throughput: 533.5,
                    latency: latency(4.2),
                    ..Default::default()
                },
                ScenarioResult {
                    name: "immediate".into(),
                    messages: 6_000,
                    accepted: 6_000,
                    duration_seconds: 20.0,
                    throughput: 300.0,
                    latency: latency(6.8),
                    ..Default::default()
                },
            ],
            groups: GROUPS
                .iter()
                .map(|g| GroupVerification {
                    group: g.to_string(),
                    expected: 27_340,
                    acknowledged: 27_340,
                    latency: latency(35.0),
                    ..Default::default()
                })
                .collect(),
            thresholds: thresholds(),
            ..Default::default()
        },
        memory_growth: series().memory_growth(),
        series: series(),
    }
}

fn thresholds() -> Vec<ThresholdCheck> {
    vec![
        ThresholdCheck {
            metric: "requestLatency.p99".into(),
            scenario: Some("immediate".into()),
            subject: None,
            limit: 100.0,
            measured: 40.8,
            passed: true,
        },
        ThresholdCheck {
            metric: "endToEndLatency.p99".into(),
            scenario: Some("immediate".into()),
            subject: Some("group-b".into()),
            limit: 250.0,
            measured: 210.0,
            passed: true,
        },
    ]
}

/// A chart as the page's script left it in the DOM.
#[derive(Debug)]
struct Plot {
    chart: String,
    /// Plotting area: x, y, width, height in CSS pixels (= screenshot pixels).
    rect: [u32; 4],
    colors: Vec<[u8; 3]>,
}

#[test]
fn the_html_report_draws_every_chart_in_chromium() {
    let started = Instant::now();
    let chromium = chromium();
    let dir = scratch_dir();
    let html = dir.join("report.html");
    let page = html::render(&report()).expect("render the report");
    html::write(&html, &page).expect("write the report");
    let url = format!("file://{}", html.display());

    let dom = run_chromium(
        &chromium,
        &dir,
        "dom",
        &["--dump-dom".to_string(), url.clone()],
    );
    let body = element(&dom, "<body").expect("the DOM has a body");
    assert!(
        attribute(body, "data-error").is_none(),
        "the page's script failed: {}",
        attribute(body, "data-error").unwrap_or_default()
    );
    assert_eq!(
        attribute(body, "data-rendered").as_deref(),
        Some("ok"),
        "the page's script did not finish: {body}"
    );
    // throughput, latency, backlog, two histograms, memory, CPU
    let expected: BTreeMap<&str, (usize, usize)> = BTreeMap::from([
        ("throughput", (1, 7)),
        ("latency", (1, 4)),
        ("backlog", (1, 3)),
        ("histogram", (2, 1)),
        ("memory", (1, 3)),
        ("cpu", (1, 3)),
    ]);
    let charts: usize = expected.values().map(|(n, _)| n).sum();
    // uPlot's root element: class "uplot" and its orientation ("uplot u-hz").
    let uplots = dom.matches("class=\"uplot\"").count() + dom.matches("class=\"uplot ").count();
    assert_eq!(uplots, charts, "one uPlot chart per plot");
    assert!(!dom.contains(html::NO_DATA));
    let plots = plots(&dom);
    assert_eq!(plots.len(), charts, "{plots:?}");
    for plot in &plots {
        let (_, series) = expected[plot.chart.as_str()];
        assert_eq!(
            plot.colors.len(),
            series,
            "{}: series holding data",
            plot.chart
        );
    }

    let shot = dir.join("report.png");
    run_chromium(
        &chromium,
        &dir,
        "screenshot",
        &[format!("--screenshot={}", shot.display()), url],
    );
    if let Ok(keep) = std::env::var("HTML_REPORT_SCREENSHOT") {
        std::fs::copy(&shot, &keep).expect("copy the screenshot");
    }
    let image = Image::read(&shot);
    assert_eq!((image.width, image.height), WINDOW, "screenshot size");
    for plot in &plots {
        let [x, y, w, h] = plot.rect;
        assert!(
            x + w <= image.width && y + h <= image.height,
            "{} lies outside the screenshot ({:?} in {}x{}): make WINDOW taller",
            plot.chart,
            plot.rect,
            image.width,
            image.height
        );
        for color in &plot.colors {
            let (pixels, columns) = image.count(plot.rect, *color);
            assert!(
                columns >= w / 4 && pixels >= w / 4,
                "{}: the series in #{:02x}{:02x}{:02x} drew {pixels} pixels in {columns} \
                 columns of a {w}x{h} plot (want at least {} of each)",
                plot.chart,
                color[0],
                color[1],
                color[2],
                w / 4
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let took = started.elapsed();
    eprintln!("rendered, loaded and checked in chromium in {took:.1?}");
    assert!(
        took < Duration::from_secs(30),
        "the chromium test took {took:.1?}"
    );
}

/// Debian's chromium, or the test fails saying how to install it.
fn chromium() -> PathBuf {
    let path =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    assert!(
        path.is_file(),
        "{} is missing: this test draws the HTML report in a headless chromium; install it \
         with `apt-get install -y chromium` (or set CHROMIUM to a chromium binary)",
        path.display()
    );
    path
}

/// A fresh directory under the system's temporary one.
fn scratch_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("html-report-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

/// Runs chromium headless with `args` and a fresh profile; returns what it printed.
fn run_chromium(chromium: &Path, dir: &Path, name: &str, args: &[String]) -> String {
    let out = dir.join(format!("{name}.stdout"));
    let err = dir.join(format!("{name}.stderr"));
    let (width, height) = WINDOW;
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            "--virtual-time-budget=5000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.join(format!("{name}-profile")).display()
        ))
        .arg(format!("--window-size={width},{height}"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out).expect("stdout file"))
        .stderr(File::create(&err).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", chromium.display()));
    let deadline = Instant::now() + CHROMIUM_PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium ({name}) did not finish in {CHROMIUM_PATIENCE:?}; it said:\n{}",
                tail(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "chromium ({name}) failed with {status}; it said:\n{}",
        tail(&err)
    );
    std::fs::read_to_string(&out).expect("read chromium's output")
}

/// The last lines of a file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The first start tag beginning with `open` (e.g. `<body`), up to its `>`.
fn element<'a>(html: &'a str, open: &str) -> Option<&'a str> {
    let start = html.find(open)?;
    let end = html[start..].find('>')?;
    Some(&html[start..start + end + 1])
}

/// The value of `name` in a start tag (serialised DOM: double quotes, entities).
fn attribute(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let end = tag[start..].find('"')?;
    Some(
        tag[start..start + end]
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

/// Every plot the page's script drew, with where and in which colours.
fn plots(dom: &str) -> Vec<Plot> {
    let mut plots = Vec::new();
    let mut rest = dom;
    while let Some(tag) = element(rest, "<div class=\"plot\"") {
        let chart = attribute(tag, "data-chart").expect("a plot names its chart");
        let rect = attribute(tag, "data-plot-rect")
            .unwrap_or_else(|| panic!("{chart}: no data-plot-rect, so not drawn: {tag}"));
        let rect: Vec<u32> = rect
            .split(',')
            .map(|v| v.parse().expect("a pixel coordinate"))
            .collect();
        let colors = attribute(tag, "data-colors")
            .unwrap_or_default()
            .split(',')
            .filter(|c| !c.is_empty())
            .map(|c| {
                let hex = c.trim_start_matches('#');
                let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).expect("#rrggbb");
                [byte(0), byte(2), byte(4)]
            })
            .collect();
        plots.push(Plot {
            chart,
            rect: rect.try_into().expect("x,y,width,height"),
            colors,
        });
        let at = rest.find(tag).expect("the tag is in the DOM") + tag.len();
        rest = &rest[at..];
    }
    plots
}

/// A decoded screenshot, RGB.
struct Image {
    width: u32,
    height: u32,
    rgb: Vec<[u8; 3]>,
}

impl Image {
    fn read(path: &Path) -> Image {
        let file = std::io::BufReader::new(File::open(path).expect("open the screenshot"));
        let mut decoder = png::Decoder::new(file);
        decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = decoder.read_info().expect("a PNG");
        let mut buf = vec![0; reader.output_buffer_size().expect("a size")];
        let frame = reader.next_frame(&mut buf).expect("decode the screenshot");
        let channels = match frame.color_type {
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            other => panic!("screenshot in {other:?}, expected RGB(A)"),
        };
        let rgb = buf[..frame.buffer_size()]
            .chunks_exact(channels)
            .map(|p| [p[0], p[1], p[2]])
            .collect();
        Image {
            width: frame.width,
            height: frame.height,
            rgb,
        }
    }

    /// Pixels within `rect` close to `color`, and the columns holding any.
    fn count(&self, rect: [u32; 4], color: [u8; 3]) -> (u32, u32) {
        let [x0, y0, w, h] = rect;
        let (mut pixels, mut columns) = (0, 0);
        for x in x0..x0 + w {
            let mut hit = false;
            for y in y0..y0 + h {
                let p = self.rgb[(y * self.width + x) as usize];
                let distance: u32 = (0..3).map(|i| u32::from(p[i].abs_diff(color[i]))).sum();
                if distance <= 24 {
                    pixels += 1;
                    hit = true;
                }
            }
            columns += u32::from(hit);
        }
        (pixels, columns)
    }
}
