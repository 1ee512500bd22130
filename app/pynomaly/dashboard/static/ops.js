/* Pynomaly dashboard: the operations view.  Vanilla JS, no dependencies, nothing fetched from elsewhere.
 *
 * Samples GET /v1/ops/metrics (the figures /metrics and /readyz report) every few seconds (3 s, or
 * ?ops_every=N on /dashboard, 1-60), keeps a rolling five-minute window in the page and draws every
 * series as a small hand-written SVG chart.  The endpoint returns totals: task rates come from counter
 * differences and p50/p95 run times from histogram bucket differences between samples, as Prometheus'
 * rate() and histogram_quantile() compute them (a total that went down, a restarted process, counts
 * as no runs).  app.js calls start({api}) after sign-in and stop() at sign-out; api() is its
 * authenticated fetch (a 401 signs out).  Server text goes in with textContent only.
 */
"use strict";

window.PynomalyOps = (() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const WINDOW_S = 300;          // the rolling window the charts show
  const RATE_WINDOW_S = 30;      // a task rate is the runs of the last 30 s (workers report every few s)
  const QUANTILE_WINDOW_S = 60;  // p50/p95 of the runs of the last minute
  const PRIORITIES = ["critical", "high", "normal", "low"];
  const COLOURS = ["#2563eb", "#f59e0b", "#10b981", "#8b5cf6", "#ef4444", "#0ea5e9", "#64748b", "#d946ef"];
  const EVERY_S = samplePeriod();

  let api = null;
  let timer = null;
  let busy = false;
  let samples = [];   // [{t: server seconds, data, tasks: Map(pool\0task -> figures)}], oldest first

  const $ = (id) => document.getElementById(id);

  function samplePeriod() {
    const wanted = Number(new URLSearchParams(window.location.search).get("ops_every"));
    return Number.isFinite(wanted) && wanted >= 1 && wanted <= 60 ? wanted : 3;
  }

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (v === undefined || v === null) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else node.setAttribute(k, String(v));
    }
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  }

  function svg(tag, attrs = {}) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    return node;
  }

  // -- formatting ------------------------------------------------------------------------------
  function fmtCount(v) {
    if (v === null || !Number.isFinite(v)) return "—";
    if (Math.abs(v) >= 1e6) return v.toExponential(2);
    return Number.isInteger(v) ? String(v) : Number(v.toPrecision(3)).toString();
  }

  function fmtSeconds(v) {
    if (v === null || !Number.isFinite(v)) return "—";
    if (v < 1) return `${Math.round(v * 1000)} ms`;
    if (v < 120) return `${Number(v.toPrecision(3))} s`;
    return `${Math.round(v / 60)} min`;
  }

  const fmtRate = (v) => (v === null || !Number.isFinite(v) ? "—" : `${Number(v.toPrecision(2))}/s`);
  const taskName = (task) => String(task).replace(/^pynomaly\./, "");

  // -- sampling --------------------------------------------------------------------------------
  function start(options) {
    api = options.api;
    stop();
    setStatus(`sampling every ${EVERY_S} s…`, "waiting");
    sample();
    timer = setInterval(sample, EVERY_S * 1000);
  }

  function stop() {
    clearInterval(timer);
    timer = null;
    samples = [];
    for (const id of ["ops-queues", "ops-tasks", "ops-lag", "ops-backlog"]) $(id)?.replaceChildren();
  }

  async function sample() {
    if (busy || !api) return;
    busy = true;
    try {
      const data = await api("v1/ops/metrics");
      if (timer === null) return;  // signed out meanwhile
      const tasks = new Map(data.tasks.map((t) => [`${t.pool}\u0000${t.task}`, t]));
      samples.push({ t: data.at, data, tasks });
      while (samples.length && samples[0].t < data.at - WINDOW_S) samples.shift();
      render();
    } catch (err) {
      if (err && err.status === 401) return;  // app.js signs out
      setStatus(`Could not read GET /v1/ops/metrics: ${err && err.message ? err.message : err}; retrying`, "error");
    } finally {
      busy = false;
    }
  }

  function setStatus(text, state) {
    const node = $("ops-status");
    if (!node) return;
    node.textContent = text;
    node.dataset.state = state;
  }

  // -- series from the samples -----------------------------------------------------------------
  const times = () => samples.map((s) => s.t);

  /** The first sample within `seconds` before sample i (an earlier one than i, when there is one). */
  function windowStart(i, seconds) {
    let j = i;
    while (j > 0 && samples[i].t - samples[j - 1].t <= seconds) j -= 1;
    return j === i ? i - 1 : j;
  }

  function taskRuns(figures) {
    if (!figures) return null;
    const runs = Object.values(figures.runs).reduce((a, b) => a + b, 0);
    const failed = (figures.runs.failed || 0) + (figures.runs.dead_lettered || 0);
    return { runs, failed };
  }

  /** Runs per second (and failures per second) of one task over the last RATE_WINDOW_S, per sample. */
  function taskRates(key) {
    const totals = samples.map((s) => taskRuns(s.tasks.get(key)));
    const increments = totals.map((cur, i) => {
      if (i === 0 || !cur) return { runs: 0, failed: 0 };
      const prev = totals[i - 1] || { runs: 0, failed: 0 };  // a series appears with its first run
      return { runs: Math.max(0, cur.runs - prev.runs), failed: Math.max(0, cur.failed - prev.failed) };
    });
    const rates = [];
    const failures = [];
    samples.forEach((s, i) => {
      const j = windowStart(i, RATE_WINDOW_S);
      if (j < 0 || s.t <= samples[j].t) {
        rates.push(null);
        failures.push(null);
        return;
      }
      let runs = 0;
      let failed = 0;
      for (let k = j + 1; k <= i; k += 1) {
        runs += increments[k].runs;
        failed += increments[k].failed;
      }
      rates.push(runs / (s.t - samples[j].t));
      failures.push(failed / (s.t - samples[j].t));
    });
    return { rates, failures, totals };
  }

  /** The q-quantile of the runs between two readings of a histogram, interpolated in its bucket. */
  function quantile(q, now, then) {
    const total = now.count - (then ? then.count : 0);
    if (!(total > 0)) return null;
    const rank = q * total;
    let lowerBound = 0;
    let lowerCount = 0;
    for (let b = 0; b < now.bounds.length; b += 1) {
      const before = then ? then.cumulative[then.bounds.indexOf(now.bounds[b])] || 0 : 0;
      const count = Math.max(0, now.cumulative[b] - before);
      if (count >= rank) {
        const share = count > lowerCount ? (rank - lowerCount) / (count - lowerCount) : 1;
        return lowerBound + (now.bounds[b] - lowerBound) * share;
      }
      lowerBound = now.bounds[b];
      lowerCount = count;
    }
    return now.bounds.length ? now.bounds[now.bounds.length - 1] : null;  // in +Inf: the largest bound
  }

  function taskQuantiles(key) {
    const p50 = [];
    const p95 = [];
    samples.forEach((s, i) => {
      const now = s.tasks.get(key);
      const j = windowStart(i, QUANTILE_WINDOW_S);
      if (!now || j < 0) {
        p50.push(null);
        p95.push(null);
        return;
      }
      const then = samples[j].tasks.get(key);
      const older = then && then.duration.count <= now.duration.count ? then.duration : null;
      p50.push(quantile(0.5, now.duration, older));
      p95.push(quantile(0.95, now.duration, older));
    });
    return { p50, p95 };
  }

  const lastValue = (values) => {
    for (let i = values.length - 1; i >= 0; i -= 1) if (values[i] !== null) return values[i];
    return null;
  };
  const peak = (values) => values.reduce((m, v) => (v !== null && v > m ? v : m), 0);

  // -- drawing ---------------------------------------------------------------------------------
  /** A small line chart: one polyline per series over the window, gaps where a value is missing. */
  function chart(label, series, format) {
    const W = 240;
    const H = 56;
    const ts = times();
    const end = ts.length ? ts[ts.length - 1] : 0;
    // The x axis spans what was sampled, up to the window: a page opened a minute ago uses its width.
    const begin = ts.length ? Math.max(end - WINDOW_S, ts[0]) : end - WINDOW_S;
    const spanS = Math.max(1, end - begin);
    const top = niceCeiling(Math.max(0, ...series.flatMap((s) => s.values.filter((v) => v !== null))));
    const box = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", class: "ops-svg",
      role: "img", "data-testid": "ops-chart", "data-max": top, "data-label": label });
    box.append(svg("line", { x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5, class: "ops-axis" }));
    box.append(svg("line", { x1: 0, y1: 0.5, x2: W, y2: 0.5, class: "ops-gridline" }));
    const x = (t) => ((t - begin) / spanS) * W;
    const y = (v) => H - 1 - (top > 0 ? (v / top) * (H - 3) : 0);
    let points = 0;
    series.forEach((s) => {
      let run = [];
      const flush = () => {
        if (run.length === 1) run.push([run[0][0] + 0.01, run[0][1]]);  // a lone point shows as a dot
        if (run.length) {
          box.append(svg("polyline", { points: run.map(([a, b]) => `${a.toFixed(1)},${b.toFixed(1)}`).join(" "),
            stroke: s.colour, class: "ops-line", "vector-effect": "non-scaling-stroke", "data-series": s.name }));
        }
        run = [];
      };
      s.values.forEach((v, i) => {
        if (v === null) { flush(); return; }
        run.push([x(ts[i]), y(v)]);
        points += 1;
      });
      flush();
    });
    box.dataset.points = String(points);
    const latest = series.map((s) => `${s.name} ${format(lastValue(s.values))}`).join(", ");
    box.setAttribute("aria-label", `${label} over the last ${Math.round(spanS)} s: ${latest || "no data"}`);
    return el("div", { class: "ops-chart" }, el("span", { class: "ops-max", text: format(top), "aria-hidden": "true" }), box);
  }

  function niceCeiling(v) {
    if (!(v > 0)) return 1;
    const power = 10 ** Math.floor(Math.log10(v));
    const unit = v / power;
    return (unit <= 1 ? 1 : unit <= 2 ? 2 : unit <= 5 ? 5 : 10) * power;
  }

  function legend(series, format) {
    return el("p", { class: "ops-legend" }, ...series.map((s) =>
      el("span", { class: "ops-key" }, el("i", { style: `background:${s.colour}` }), `${s.name} ${format(lastValue(s.values))}`)));
  }

  function tile(kind, key, title, value, body, data = {}) {
    return el("figure", { class: "ops-tile", "data-testid": "ops-tile", dataset: { kind, key, ...data } },
      el("figcaption", {}, el("span", { class: "ops-name", text: title, title }),
        el("strong", { class: "ops-value", "data-testid": "ops-value", text: value })),
      ...body);
  }

  // -- the panels ------------------------------------------------------------------------------
  function render() {
    const latest = samples[samples.length - 1].data;
    const span = samples.length > 1 ? Math.round(samples[samples.length - 1].t - samples[0].t) : 0;
    setStatus(`sampled every ${EVERY_S} s · ${samples.length} samples over ${span} s · workers and consumers report `
      + `every ${fmtCount(latest.report_interval_seconds)} s`, "live");
    $("ops-status").dataset.samples = String(samples.length);
    renderQueues(latest);
    renderTasks(latest);
    renderLag(latest);
    renderBacklog();
  }

  function renderQueues(latest) {
    const names = [...new Set(latest.queues.map((q) => q.queue))];
    $("ops-queues").replaceChildren(...names.map((name) => {
      const series = PRIORITIES.map((priority, n) => ({ name: priority, colour: COLOURS[n],
        values: samples.map((s) => s.data.queues.find((q) => q.queue === name && q.priority === priority)?.depth ?? null) }));
      const totals = samples.map((_, i) => series.reduce((sum, s) => sum + (s.values[i] || 0), 0));
      const total = totals[totals.length - 1];
      return tile("queue", name, name, fmtCount(total), [chart(`${name} depth per list`, series, fmtCount), legend(series, fmtCount)],
        { value: total, peak: peak(totals) });
    }));
  }

  function renderTasks(latest) {
    const tiles = latest.tasks.map((figures) => {
      const key = `${figures.pool}\u0000${figures.task}`;
      const { rates, failures, totals } = taskRates(key);
      const { p50, p95 } = taskQuantiles(key);
      const rateSeries = [{ name: "runs", colour: COLOURS[0], values: rates },
        { name: "failed", colour: COLOURS[4], values: failures }];
      const timeSeries = [{ name: "p50", colour: COLOURS[2], values: p50 }, { name: "p95", colour: COLOURS[3], values: p95 }];
      const runs = totals[totals.length - 1]?.runs ?? 0;
      const title = `${figures.pool} · ${taskName(figures.task)}`;
      return tile("task", `${figures.pool}/${figures.task}`, title, fmtRate(lastValue(rates)),
        [chart(`${title} runs per second`, rateSeries, fmtRate), legend(rateSeries, fmtRate),
          chart(`${title} run time`, timeSeries, fmtSeconds), legend(timeSeries, fmtSeconds),
          el("p", { class: "ops-note", text: `${fmtCount(runs)} runs, ${fmtCount(figures.retries)} retries, `
            + `${fmtCount(figures.dead_lettered)} dead-lettered since the workers started` })],
        { pool: figures.pool, task: figures.task, runs, rate: lastValue(rates) ?? "", peakRate: peak(rates),
          p50: lastValue(p50) ?? "", p95: lastValue(p95) ?? "" });
    });
    $("ops-tasks").replaceChildren(...tiles);
    $("ops-tasks-empty").hidden = tiles.length > 0;
  }

  function renderLag(latest) {
    const groups = [...new Set(latest.consumer_lag.map((l) => l.group))];
    const tiles = groups.map((group) => {
      const parts = latest.consumer_lag.filter((l) => l.group === group);
      const series = parts.map((p, n) => ({ name: `${p.topic}/${p.partition}`, colour: COLOURS[n % COLOURS.length],
        values: samples.map((s) => s.data.consumer_lag.find((l) => l.group === group && l.topic === p.topic
          && l.partition === p.partition)?.lag ?? null) }));
      const total = parts.reduce((sum, p) => sum + p.lag, 0);
      const stale = parts.filter((p) => p.stale);
      const body = [chart(`${group} lag per partition`, series, fmtCount), legend(series, fmtCount)];
      if (stale.length) {
        body.push(el("p", { class: "ops-note bad", text: `${stale.length} partition(s) last reported `
          + `${fmtSeconds(Math.max(...stale.map((p) => p.age_seconds)))} ago: is the consumer running?` }));
      }
      return tile("lag", group, group, fmtCount(total), body, { value: total, partitions: parts.length, stale: stale.length });
    });
    $("ops-lag").replaceChildren(...tiles);
    $("ops-lag-empty").hidden = tiles.length > 0;
  }

  function renderBacklog() {
    const dlq = samples.map((s) => s.data.dlq.size);
    const pending = samples.map((s) => s.data.outbox.pending);
    const oldest = samples.map((s) => s.data.outbox.oldest_seconds);
    const size = dlq[dlq.length - 1];
    const growth = size - dlq[0];
    const dlqSeries = [{ name: "letters", colour: COLOURS[4], values: dlq }];
    $("ops-backlog").replaceChildren(
      tile("dlq", "dlq", "Dead letters", fmtCount(size), [chart("Dead-letter queue size", dlqSeries, fmtCount),
        el("p", { class: `ops-note${growth > 0 ? " bad" : ""}`, text: `${growth >= 0 ? "+" : ""}${growth} in the window` })],
      { value: size, peak: peak(dlq), growth }),
      tile("outbox", "outbox", "Outbox pending", fmtCount(pending[pending.length - 1]),
        [chart("Outbox events not yet in Kafka", [{ name: "events", colour: COLOURS[0], values: pending }], fmtCount)],
        { value: pending[pending.length - 1], peak: peak(pending) }),
      tile("outbox-age", "outbox-age", "Oldest outbox event", fmtSeconds(oldest[oldest.length - 1]),
        [chart("Age of the oldest outbox event", [{ name: "age", colour: COLOURS[1], values: oldest }], fmtSeconds)],
        { value: oldest[oldest.length - 1], peak: peak(oldest) }),
    );
  }

  return { start, stop, quantile };
})();
