// The HTML load-test report's charts, drawn with uPlot from the run's series (the JSON in
// the script element #report-data; see loadtest/src/report/html.rs and series.rs).
//
// Every div.plot with a data-chart attribute becomes one chart: the page holds a "no data
// sampled" note instead where the run sampled nothing, so each plot here has data. Once
// every chart is built and laid out, the body gets data-rendered="ok"; when one fails,
// its data-error holds the first error. Each plot records its plotting area on the page
// (data-plot-rect: x,y,width,height in CSS pixels) and the stroke colours of its series
// that hold data (data-colors), which a test looks for in a screenshot.
(function () {
  "use strict";

  const body = document.body;
  const fail = (message) => {
    if (!body.dataset.error) body.dataset.error = String(message);
    delete body.dataset.rendered;
  };
  window.addEventListener("error", (e) => fail(e.message || e));

  // Distinct, saturated colours: readable on white, and far apart for the screenshot test.
  const PALETTE = ["#2ca02c", "#9467bd", "#e377c2", "#17becf", "#bcbd22", "#8c564b", "#1f77b4", "#ff7f0e"];
  const COLOR = {
    accepted: "#1f77b4",
    relayed: "#7f7f7f",
    offered: "#8c564b",
    failed: "#d62728",
    missed: "#ff7f0e",
    p50: "#2ca02c",
    p95: "#1f77b4",
    p99: "#ff7f0e",
    max: "#d62728",
    backlog: "#1f77b4",
    histogram: "#1f77b4",
  };
  const HEIGHT = 280;
  const MIB = 1024 * 1024;

  let series;
  try {
    series = JSON.parse(document.getElementById("report-data").textContent);
  } catch (e) {
    fail("reading the report data: " + e.message);
    return;
  }
  const points = series.points || [];
  const times = points.map((p) => p.t);

  // The keys of a per-group or per-worker map over all points, sorted.
  const keysOf = (field) => {
    const keys = new Set();
    for (const p of points) for (const k of Object.keys(p[field] || {})) keys.add(k);
    return [...keys].sort();
  };
  const value = (v) => (v === undefined || v === null ? null : v);
  const colorAt = (i) => PALETTE[i % PALETTE.length];

  // A chart's series: uPlot series options and their values, side by side.
  const lines = () => {
    const set = { series: [], columns: [] };
    set.add = (label, stroke, values, extra) => {
      set.series.push(Object.assign({ label, stroke, width: 2 }, extra || {}));
      set.columns.push(values);
    };
    return set;
  };

  // The y scale from zero to a little above the largest value.
  const fromZero = { range: (u, min, max) => [0, max > 0 ? max * 1.05 : 1] };

  const timeSeries = (yLabel, set, yScale) => ({
    x: times,
    xScale: { time: false },
    xAxis: { label: "seconds since the run started" },
    xLegend: "t (s)",
    yLabel,
    yScale: yScale || fromZero,
    set,
  });

  const BUILDERS = {
    throughput() {
      const set = lines();
      set.add("accepted/s", COLOR.accepted, points.map((p) => value(p.acceptedPerSecond)));
      if (points.some((p) => value(p.relayedPerSecond) !== null)) {
        set.add("relayed/s", COLOR.relayed, points.map((p) => value(p.relayedPerSecond)));
      }
      if (points.some((p) => value(p.offeredPerSecond) !== null)) {
        set.add("offered/s", COLOR.offered, points.map((p) => value(p.offeredPerSecond)), { dash: [8, 4] });
      }
      set.add("failed/s", COLOR.failed, points.map((p) => value(p.failedPerSecond)));
      set.add("missed/s", COLOR.missed, points.map((p) => value(p.missedPerSecond)));
      keysOf("acknowledgedPerSecond").forEach((group, i) => {
        const values = points.map((p) => value((p.acknowledgedPerSecond || {})[group]));
        set.add("acknowledged/s " + group, colorAt(i), values);
      });
      return timeSeries("messages per second", set);
    },

    latency() {
      const set = lines();
      for (const k of ["p50", "p95", "p99", "max"]) {
        set.add(k, COLOR[k], points.map((p) => (p.requestLatencyMs ? value(p.requestLatencyMs[k]) : null)));
      }
      // Percentiles spread over orders of magnitude: a log scale, unless a value is not
      // positive (a log scale cannot show it).
      const all = set.columns.flat().filter((v) => v !== null);
      const log = all.length > 0 && all.every((v) => v > 0);
      return timeSeries("ms", set, log ? { distr: 3, log: 10 } : fromZero);
    },

    histogram(el) {
      const buckets = (series.requestLatencyHistograms || {})[el.dataset.scenario] || [];
      // Buckets side by side, one per slot, labelled by their upper bound.
      const labels = buckets.map((b) => (b.leMs === null || b.leMs === undefined ? "+∞" : "≤" + ms(b.leMs)));
      const set = lines();
      set.add("requests", COLOR.histogram, buckets.map((b) => b.count), {
        fill: COLOR.histogram,
        paths: uPlot.paths.bars({ size: [0.8, 80] }),
        points: { show: false },
      });
      const label = (i) => (Number.isInteger(i) && i >= 0 && i < labels.length ? labels[i] : "");
      return {
        x: buckets.map((b, i) => i),
        xScale: { time: false, range: () => [-0.5, buckets.length - 0.5] },
        xAxis: {
          label: "request latency, ms (bucket upper bound)",
          incrs: [1, 2, 3, 4, 5, 10, 20, 50, 100],
          space: 44,
          values: (u, splits) => splits.map(label),
        },
        xLegend: "bucket",
        xValue: (u, i) => (i === null ? "--" : label(i)),
        yLabel: "requests",
        yScale: fromZero,
        set,
      };
    },

    backlog() {
      const set = lines();
      if (points.some((p) => value(p.backlog) !== null)) {
        set.add("backlog (outbox rows not relayed)", COLOR.backlog, points.map((p) => value(p.backlog)));
      }
      keysOf("consumerLag").forEach((group, i) => {
        set.add("lag " + group, colorAt(i), points.map((p) => value((p.consumerLag || {})[group])));
      });
      return timeSeries("messages", set);
    },

    memory() {
      return perWorker("MiB", (w) => (value(w.residentBytes) === null ? null : w.residentBytes / MIB));
    },

    cpu() {
      return perWorker("cores", (w) => value(w.cpuCores));
    },
  };

  // One line per worker, named with its component.
  function perWorker(yLabel, pick) {
    const set = lines();
    keysOf("workers").forEach((name, i) => {
      const values = points.map((p) => (p.workers && p.workers[name] ? pick(p.workers[name]) : null));
      if (values.every((v) => v === null)) return;
      const seen = points.find((p) => p.workers && p.workers[name] && p.workers[name].component);
      const component = seen ? " (" + seen.workers[name].component + ")" : "";
      set.add(name + component, colorAt(i), values);
    });
    return timeSeries(yLabel, set);
  }

  // 0.5, 2.5, 10, 1,000: at most three significant digits.
  function ms(v) {
    return Number(v.toPrecision(3)).toLocaleString("en-US");
  }

  const built = [];
  for (const el of document.querySelectorAll(".plot[data-chart]")) {
    const kind = el.dataset.chart;
    try {
      const builder = BUILDERS[kind];
      if (!builder) throw new Error("no such chart");
      const spec = builder(el);
      const drawn = spec.set.series.filter((s, i) => spec.set.columns[i].some((v) => v !== null && v > 0));
      if (drawn.length === 0) throw new Error("nothing to draw");
      const colors = drawn.map((s) => s.stroke);
      const x = { label: spec.xLegend };
      if (spec.xValue) x.value = spec.xValue;
      const opts = {
        width: el.clientWidth,
        height: HEIGHT,
        scales: { x: spec.xScale, y: spec.yScale },
        axes: [spec.xAxis, { label: spec.yLabel, size: 64 }],
        series: [x].concat(spec.set.series),
      };
      const u = new uPlot(opts, [spec.x].concat(spec.set.columns), el);
      el.dataset.colors = colors.join(",");
      built.push({ el, u });
    } catch (e) {
      fail(kind + ": " + e.message);
    }
  }

  window.addEventListener("resize", () => {
    for (const { el, u } of built) u.setSize({ width: el.clientWidth, height: HEIGHT });
  });

  // uPlot sizes its elements after the current task: record the plotting areas after it.
  setTimeout(() => {
    for (const { el, u } of built) {
      const r = u.over.getBoundingClientRect();
      el.dataset.plotRect = [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height]
        .map(Math.round)
        .join(",");
    }
    if (!body.dataset.error) body.dataset.rendered = "ok";
  }, 0);
})();
