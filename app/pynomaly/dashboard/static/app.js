/* Pynomaly dashboard: vanilla JS, no dependencies, no build step.
 *
 * REST (X-API-Key header) for snapshots and actions; the WebSocket /v1/stream for live updates.
 * The socket authenticates with its first message {"api_key", "last_id"} and, after a reconnect,
 * resumes from the last dashboard:stream id this page saw.  Everything from the server is put in
 * the page with textContent, never as HTML.
 */
"use strict";

(() => {
  const KEY_STORE = "pynomaly.apiKey";
  const STALE_AFTER_S = 15;          // a component without a heartbeat for this long is stale
  const JOB_PAGE = pageSize();       // jobs per page of the table (?page_size=N on /dashboard, 1-500)
  const EVENT_LOG_SIZE = 40;
  const LIVE_ROWS = 50;  // live anomalies kept in their table
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const BINS = 40;
  const TERMINAL = new Set(["completed", "failed", "cancelled"]);
  const ACTIVE = new Set(["queued", "running", "retrying"]);
  const BASE = new URL(".", window.location.href);  // "/" or an ingress prefix
  const STREAM_ID = /^\d+-\d+$/;

  const state = {
    key: null,
    jobs: new Map(),     // id -> job (REST JobView fields, kept current by events)
    rows: new Map(),     // id -> <tr>
    scores: new Map(),   // id -> {scores, threshold, anomaly_count, rows, top_anomalies, complete}
    selected: null,
    health: new Map(),   // component -> {instances: Map(instance -> {seen, host, pid, status, time})}
    lastId: null,        // last dashboard:stream id seen: the resume point
    ws: null,
    wsAttempt: 0,
    wsTimer: null,
    ticker: null,
    readyTimer: null,
    readiness: null,
    detectors: [],
    jobsTotal: 0,      // jobs matching the filter on the server (snapshot + new ones seen live)
    offset: 0,         // first job of the table's page (GET /v1/jobs offset)
    liveCount: 0,      // live anomalies seen by this page
  };

  const $ = (id) => document.getElementById(id);

  function pageSize() {
    const wanted = Number(new URLSearchParams(window.location.search).get("page_size"));
    return Number.isInteger(wanted) && wanted >= 1 && wanted <= 500 ? wanted : 100;
  }

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  // -- formatting ------------------------------------------------------------------------------
  const shortId = (id) => (id ? String(id).slice(0, 8) : "");
  const parseTime = (t) => (t ? Date.parse(t) : NaN);

  function fmtNumber(v) {
    if (v === null || v === undefined || !Number.isFinite(v)) return "—";
    if (Math.abs(v) < 1e-9) return "0";
    const a = Math.abs(v);
    if (a >= 1e4 || a < 1e-3) return v.toExponential(2);
    return Number(v.toPrecision(4)).toString();
  }

  function fmtClock(t) {
    const ms = parseTime(t);
    if (!Number.isFinite(ms)) return "—";
    const d = new Date(ms);
    const sameDay = d.toDateString() === new Date().toDateString();
    const clock = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
    return sameDay ? clock : `${d.toLocaleDateString()} ${clock}`;
  }

  function fmtDuration(ms) {
    if (!Number.isFinite(ms) || ms < 0) return "—";
    if (ms < 1000) return `${Math.round(ms)} ms`;
    const s = ms / 1000;
    if (s < 60) return `${s.toFixed(1)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }

  function fmtAge(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    return `${Math.floor(s / 3600)} h ago`;
  }

  // -- REST ------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, title, detail) {
      super(detail || title);
      this.status = status;
      this.title = title;
      this.detail = detail;
    }
    describe() {
      if (this.status === 0) return this.detail;
      return `${this.title} (${this.status}): ${this.detail}`;
    }
  }

  async function api(path, options = {}, key = state.key) {
    const headers = new Headers(options.headers || {});
    headers.set("X-API-Key", key || "");
    headers.set("Accept", "application/json, application/problem+json");
    let response;
    try {
      response = await fetch(new URL(path, BASE), { ...options, headers, cache: "no-store" });
    } catch (err) {
      throw new ApiError(0, "Network error", `The API did not answer (${err.message}). Is it running?`);
    }
    if (!response.ok) {
      let title = response.statusText || "Error";
      let detail = `the request failed with HTTP ${response.status}`;
      try {
        const body = await response.json();  // application/problem+json
        title = body.title || title;
        detail = body.detail || detail;
      } catch (_) { /* not JSON */ }
      const error = new ApiError(response.status, title, detail);
      if (response.status === 401 && key === state.key && state.key) signOut(keyRejected(error.detail));
      throw error;
    }
    const type = response.headers.get("content-type") || "";
    return type.includes("json") ? response.json() : response;
  }

  const keyRejected = (detail) =>
    `The API key was rejected (401 Unauthorized): ${detail || "a valid API key is required"}. Check the key and try again.`;

  // -- sign in / out ---------------------------------------------------------------------------
  async function signIn(key) {
    const detectors = await api("v1/detectors", {}, key);  // also proves the key
    state.key = key;
    state.detectors = detectors;
    sessionStorage.setItem(KEY_STORE, key);
    startApp();
  }

  function signOut(message) {
    const wasIn = state.key !== null;
    state.key = null;
    sessionStorage.removeItem(KEY_STORE);
    stopSocket();
    clearInterval(state.ticker);
    clearInterval(state.readyTimer);
    window.PynomalyOps?.stop();
    $("app").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    setConnection("offline", "offline");
    showLoginError(message || "");
    if (wasIn) $("api-key").focus();
  }

  function showLoginError(message) {
    const box = $("login-error");
    box.textContent = message;
    box.hidden = !message;
    $("api-key").setAttribute("aria-invalid", message ? "true" : "false");
  }

  async function onLoginSubmit(event) {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) {
      showLoginError("Enter the API key (the value of the X-API-Key header).");
      return;
    }
    const button = $("login-submit");
    button.disabled = true;
    showLoginError("");
    try {
      await signIn(key);
      $("api-key").value = "";
    } catch (err) {
      showLoginError(err instanceof ApiError && err.status === 401 ? keyRejected(err.detail) : describe(err));
    } finally {
      button.disabled = false;
    }
  }

  const describe = (err) => (err instanceof ApiError ? err.describe() : String(err && err.message ? err.message : err));

  function startApp() {
    $("login").hidden = true;
    $("app").hidden = false;
    $("logout").hidden = false;
    showLoginError("");
    fillDetectors();
    state.jobs.clear();
    state.rows.clear();
    $("jobs-body").replaceChildren();
    state.lastId = null;
    state.wsAttempt = 0;
    state.offset = 0;
    loadJobs();
    loadDeadLetters();
    loadComponents();
    pollReadiness();
    clearInterval(state.readyTimer);
    state.readyTimer = setInterval(pollReadiness, 10000);
    clearInterval(state.ticker);
    state.ticker = setInterval(tick, 1000);
    connect();
    window.PynomalyOps?.start({ api });  // the operations view (ops.js) samples with this page's key
  }

  // -- banner ----------------------------------------------------------------------------------
  function banner(message) {
    const node = $("banner");
    node.textContent = message || "";
    node.hidden = !message;
  }

  // -- detectors and the submit form -----------------------------------------------------------
  function fillDetectors() {
    const select = $("detector");
    const previous = select.value;
    select.replaceChildren(...state.detectors.map((d) => el("option", { value: d.name, text: d.name })));
    const preferred = state.detectors.some((d) => d.name === previous) ? previous : "iforest";
    if (state.detectors.some((d) => d.name === preferred)) select.value = preferred;
    describeDetector();
  }

  function describeDetector() {
    const spec = state.detectors.find((d) => d.name === $("detector").value);
    $("detector-help").textContent = spec ? spec.description : "";
  }

  function setSubmitStatus(message, kind = "") {
    const node = $("submit-status");
    node.textContent = message;
    node.className = `status ${kind}`.trim();
  }

  async function onSubmitJob(event) {
    event.preventDefault();
    const file = $("file").files[0];
    if (!file) {
      setSubmitStatus("Choose a CSV file first.", "error");
      $("file").focus();
      return;
    }
    const contamination = $("contamination").value.trim();
    if (contamination !== "") {
      const c = Number(contamination);
      if (!(c > 0 && c <= 0.5)) {
        setSubmitStatus("Contamination must be greater than 0 and at most 0.5.", "error");
        $("contamination").focus();
        return;
      }
    }
    const steps = ["detect"];
    if ($("step-preprocess").checked) steps.unshift("preprocess");
    if ($("step-report").checked) steps.push("report");
    const form = new FormData();
    form.append("file", file, file.name);
    form.append("detector", $("detector").value);
    form.append("priority", $("priority").value);
    form.append("steps", steps.join(","));
    if (contamination !== "") form.append("contamination", contamination);

    const button = $("submit-button");
    button.disabled = true;
    setSubmitStatus(`Uploading ${file.name}…`);
    try {
      const accepted = await api("v1/jobs", { method: "POST", body: form });
      const node = $("submit-status");
      setSubmitStatus(
        `Job ${shortId(accepted.id)} ${accepted.created ? "queued" : "already existed"}: follow it in the table.`,
        "ok",
      );
      node.dataset.jobId = accepted.id;
      if (state.offset > 0) {
        state.offset = 0;  // the new job is on the first page
        loadJobs();
      }
      // The job's first events may have come over the WebSocket before this answer: keep their
      // status and progress instead of resetting them to the submit's "queued, 0 %".
      const seen = state.jobs.get(accepted.id);
      upsertJob({ id: accepted.id, detector: $("detector").value, priority: $("priority").value, steps,
        created_at: seen?.created_at ?? new Date().toISOString(),
        ...(seen ? {} : { status: accepted.status, progress: 0 }) });
      selectJob(accepted.id);
      refreshJob(accepted.id);
    } catch (err) {
      setSubmitStatus(`Not submitted: ${describe(err)}`, "error");
    } finally {
      button.disabled = false;
    }
  }

  // -- jobs ------------------------------------------------------------------------------------
  async function loadJobs() {
    const filter = $("status-filter").value;
    const query = new URLSearchParams({ limit: String(JOB_PAGE), offset: String(state.offset) });
    if (filter) query.set("status", filter);
    try {
      const page = await api(`v1/jobs?${query}`);
      if (!page.items.length && state.offset > 0 && page.total > 0) {
        // The page emptied (jobs expired, or another filter): show the last page that has jobs.
        state.offset = Math.floor((page.total - 1) / JOB_PAGE) * JOB_PAGE;
        return loadJobs();
      }
      const fresh = new Set(page.items.map((j) => j.id));
      for (const id of [...state.jobs.keys()]) {
        if (!fresh.has(id)) dropJob(id);  // outside the filter or the page
      }
      for (const job of page.items.slice().reverse()) mergeSnapshot(job, true);
      state.jobsTotal = page.total;
      renderCount();
      sortRows();
    } catch (err) {
      if (err.status !== 401) banner(`Could not load jobs: ${describe(err)}`);
    }
  }

  async function refreshJob(id) {
    try {
      mergeSnapshot(await api(`v1/jobs/${encodeURIComponent(id)}`));
    } catch (err) {
      if (err.status && err.status !== 404 && err.status !== 401) banner(`Could not load job ${shortId(id)}: ${describe(err)}`);
    }
  }

  /** A REST snapshot: newer than what events told us, unless an event is more recent. */
  function mergeSnapshot(job, onPage = false) {
    const local = state.jobs.get(job.id);
    if (local && parseTime(local.updated_at) > parseTime(job.updated_at)) {
      const keep = { status: local.status, progress: local.progress, message: local.message,
        anomaly_count: local.anomaly_count ?? job.anomaly_count, finished_at: local.finished_at,
        started_at: local.started_at ?? job.started_at, updated_at: local.updated_at };
      upsertJob({ ...job, ...keep }, onPage);
    } else if (local && sameRun(local, job)) {
      // A snapshot read while events were in flight may lag them: within one run, never go back.
      upsertJob({ ...job, progress: Math.max(Number(local.progress) || 0, Number(job.progress) || 0) }, onPage);
    } else {
      upsertJob(job, onPage);
    }
  }

  /** Only a retry starts a new run: a failed or cancelled job that is active again. */
  function sameRun(local, snapshot) {
    const ended = local.status === "failed" || local.status === "cancelled";
    return !(ended && (snapshot.status === "queued" || snapshot.status === "running"));
  }

  function renderPager(shown = state.rows.size) {
    const total = Math.max(state.jobsTotal, state.offset + shown);
    const prev = $("jobs-prev");
    const next = $("jobs-next");
    prev.disabled = state.offset === 0;
    next.disabled = state.offset + JOB_PAGE >= total;
    $("jobs-pager").hidden = prev.disabled && next.disabled;
    $("jobs-pager").dataset.offset = String(state.offset);
    $("jobs-pager").dataset.limit = String(JOB_PAGE);
    $("jobs-page").textContent = shown ? `${state.offset + 1}–${state.offset + shown} of ${total}` : `0 of ${total}`;
  }

  function goToPage(direction) {
    const offset = Math.max(0, state.offset + direction * JOB_PAGE);
    if (offset === state.offset) return;
    state.offset = offset;
    loadJobs();
  }

  function renderCount() {
    const shown = state.rows.size;
    const total = Math.max(state.jobsTotal, shown);
    $("jobs-count").textContent = total > shown ? `(${shown} of ${total})` : `(${total})`;
    renderPager();
  }

  function passesFilter(job) {
    const filter = $("status-filter").value;
    return !filter || job.status === filter;
  }

  /** ``onPage``: the job is on the table's current page (a GET /v1/jobs snapshot of it). */
  function upsertJob(fields, onPage = false) {
    const job = { ...(state.jobs.get(fields.id) || { anomaly_count: null, progress: 0 }), ...fields };
    state.jobs.set(job.id, job);
    if (!passesFilter(job) && state.rows.has(job.id)) {
      dropJob(job.id);
      state.jobs.set(job.id, job);
      return job;
    }
    // New jobs belong to the first page: a later page only updates the rows it shows.
    if (passesFilter(job) && (onPage || state.offset === 0 || state.rows.has(job.id))) renderJob(job);
    return job;
  }

  function dropJob(id) {
    state.jobs.delete(id);
    const row = state.rows.get(id);
    if (row) {
      row.remove();
      state.jobsTotal = Math.max(0, state.jobsTotal - 1);
    }
    state.rows.delete(id);
    $("jobs-empty").hidden = state.rows.size > 0;
    renderCount();
  }

  function sortRows() {
    const body = $("jobs-body");
    const ordered = [...state.rows.entries()].sort(
      ([a], [b]) => (parseTime(state.jobs.get(b).created_at) || 0) - (parseTime(state.jobs.get(a).created_at) || 0),
    );
    for (const [, row] of ordered) body.append(row);
  }

  function buildRow(job) {
    const row = el("tr", { id: `job-${job.id}`, "data-testid": "job-row", dataset: { jobId: job.id } });
    const open = el("button", { type: "button", class: "link mono", "data-testid": "job-open", title: job.id,
      "aria-label": `Show the scores of job ${job.id}`, onclick: () => selectJob(job.id) });
    const track = el("div", { class: "track" }, el("div", { class: "bar" }));
    const progress = el("div", { class: "progress", role: "progressbar", "aria-valuemin": "0",
      "aria-valuemax": "100", "data-testid": "job-progress" }, track, el("span", { class: "pct" }));
    row.append(
      el("td", {}, open),
      el("td", { "data-testid": "job-detector" }),
      el("td", {}, el("span", { class: "badge", "data-testid": "job-status" })),
      el("td", { "data-testid": "job-priority" }),
      el("td", {}, progress),
      el("td", { class: "num", "data-testid": "job-anomalies" }),
      el("td", { class: "when", "data-testid": "job-created" }),
      el("td", { class: "num when", "data-testid": "job-duration" }),
      el("td", { class: "actions" }),
    );
    return row;
  }

  function renderJob(job) {
    let row = state.rows.get(job.id);
    if (!row) {
      row = buildRow(job);
      state.rows.set(job.id, row);
      $("jobs-body").prepend(row);
      $("jobs-empty").hidden = true;
      state.jobsTotal += 1;  // a new job (loadJobs resets the total from its snapshot)
      renderCount();
    }
    const cells = row.children;
    const pct = Math.round(Math.max(0, Math.min(1, Number(job.progress) || 0)) * 100);
    row.dataset.status = job.status || "";
    row.setAttribute("aria-selected", String(state.selected === job.id));
    cells[0].firstChild.textContent = shortId(job.id);
    cells[1].textContent = job.detector || "…";
    const badge = cells[2].firstChild;
    badge.textContent = job.status || "…";
    badge.className = `badge ${job.status || ""}`;
    badge.title = job.error || job.message || "";
    cells[3].textContent = job.priority || "";
    cells[3].className = `prio-${job.priority || "normal"}`;
    const progress = cells[4].firstChild;
    progress.dataset.status = job.status || "";
    progress.dataset.value = String(pct);
    progress.setAttribute("aria-valuenow", String(pct));
    progress.setAttribute("aria-label", `Job ${shortId(job.id)} progress`);
    progress.setAttribute("aria-valuetext", `${pct}%${job.message ? `, ${job.message}` : ""}`);
    progress.title = job.message || "";
    progress.querySelector(".bar").style.width = `${pct}%`;
    progress.querySelector(".pct").textContent = `${pct}%`;
    cells[5].textContent = job.anomaly_count === null || job.anomaly_count === undefined ? "—" : String(job.anomaly_count);
    cells[6].textContent = fmtClock(job.created_at);
    cells[6].title = job.created_at || "";
    cells[7].textContent = durationOf(job);
    renderActions(cells[8], job);
  }

  function durationOf(job) {
    const start = parseTime(job.started_at);
    if (!Number.isFinite(start)) return "—";
    const end = TERMINAL.has(job.status) ? parseTime(job.finished_at) : Date.now();
    return fmtDuration((Number.isFinite(end) ? end : Date.now()) - start);
  }

  function renderActions(cell, job) {
    const want = ACTIVE.has(job.status) ? "cancel" : (job.status === "failed" || job.status === "cancelled") ? "retry" : "";
    if (cell.dataset.action === want) return;
    cell.dataset.action = want;
    cell.replaceChildren();
    if (want === "cancel") {
      cell.append(el("button", { type: "button", class: "ghost small danger", "data-testid": "job-cancel",
        "aria-label": `Cancel job ${job.id}`, text: "Cancel", onclick: () => jobAction(job.id, "cancel") }));
    } else if (want === "retry") {
      cell.append(el("button", { type: "button", class: "ghost small", "data-testid": "job-retry",
        "aria-label": `Retry job ${job.id}`, text: "Retry", onclick: () => jobAction(job.id, "retry") }));
    }
  }

  async function jobAction(id, action) {
    try {
      const path = `v1/jobs/${encodeURIComponent(id)}${action === "retry" ? "/retry" : ""}`;
      const job = await api(path, { method: action === "retry" ? "POST" : "DELETE" });
      mergeSnapshot(job);
      banner("");
    } catch (err) {
      banner(`Could not ${action} job ${shortId(id)}: ${describe(err)}`);
    }
  }

  function flash(id) {
    const row = state.rows.get(id);
    if (!row) return;
    row.classList.remove("flash");
    void row.offsetWidth;  // restart the animation
    row.classList.add("flash");
  }

  // -- live events -----------------------------------------------------------------------------
  function stepProgress(job, step) {
    const steps = Array.isArray(job.steps) && job.steps.length ? job.steps : null;
    if (!steps || !steps.includes(step)) return null;
    return (steps.indexOf(step) + 1) / steps.length;
  }

  function onDashboardEntry(entry) {
    if (STREAM_ID.test(entry.id || "")) state.lastId = entry.id;  // only a real stream id can be resumed from
    const id = entry.subject;
    const data = entry.data && typeof entry.data === "object" ? entry.data : {};
    logEvent(entry, data);
    if (entry.type === "anomaly_detected") { showLiveAnomaly(entry, data); return; }
    if (!id || !entry.type) return;
    // Only job and anomaly events describe a job; system events (health summaries, alerts, model
    // changes) are keyed by a component or model name and stay in the event log.
    if (!entry.type.startsWith("job_") && entry.type !== "anomalies_detected") return;
    const known = state.jobs.has(id);
    const job = state.jobs.get(id) || { id, progress: 0, anomaly_count: null };
    const patch = { id };
    const at = entry.time || new Date().toISOString();
    if (typeof data.status === "string" && entry.type !== "anomalies_detected") patch.status = data.status;
    switch (entry.type) {
      case "job_submitted":
        Object.assign(patch, { detector: data.detector ?? job.detector, priority: data.priority ?? job.priority,
          steps: data.steps ?? job.steps, status: data.status || "queued" });
        if (!known) patch.created_at = at;
        if (data.retry) Object.assign(patch, { progress: 0, anomaly_count: null, error: null, started_at: null,
          finished_at: null, message: "queued again" });
        break;
      case "job_started":
        Object.assign(patch, { started_at: job.started_at || at, current_step: data.step,
          message: `${data.step || "job"} running`,
          // A step's start never lowers the bar of its run (a retry resets it at job_submitted).
          progress: Math.max(Number(job.progress) || 0, Number(data.progress) || 0) });
        break;
      case "job_progress":
        Object.assign(patch, { progress: Math.max(Number(job.progress) || 0, Number(data.progress) || 0),
          message: data.message || job.message, current_step: data.step || job.current_step });
        break;
      case "job_step_completed": {
        const done = stepProgress(job, data.step);
        patch.progress = Math.max(Number(job.progress) || 0, done ?? (Number(data.progress) || 0));
        patch.message = `${data.step} done`;
        break;
      }
      case "job_completed":
        Object.assign(patch, { status: "completed", progress: 1, finished_at: at, message: "completed",
          anomaly_count: data.anomaly_count ?? job.anomaly_count });
        break;
      case "job_failed":
        Object.assign(patch, { finished_at: at, error: data.error || job.error, message: "failed" });
        break;
      case "job_retrying":
        Object.assign(patch, { error: data.error, message: `retry ${data.attempt ?? ""} in ${fmtNumber(data.delay_seconds)} s` });
        break;
      case "job_cancelled":
        Object.assign(patch, { finished_at: at, message: data.reason || "cancelled" });
        break;
      case "job_dead_lettered":
        loadDeadLetters();
        break;
      case "anomalies_detected":
        patch.anomaly_count = data.anomaly_count ?? job.anomaly_count;
        if (Array.isArray(data.scores)) {
          const previous = state.scores.get(id);
          if (!previous || !previous.complete) {
            state.scores.set(id, {
              scores: data.scores, threshold: data.threshold, anomaly_count: data.anomaly_count,
              rows: data.rows ?? data.scores.length, top_anomalies: data.top_anomalies || [],
              complete: (data.rows ?? data.scores.length) <= data.scores.length, detector: data.detector,
            });
          }
          if (state.selected === id) showScores(id);
        }
        break;
      default:
        break;
    }
    // Events of one job arrive in order; anomalies_detected comes through another topic and may
    // overtake job_completed, so it never changes the status.
    if (!(job.updated_at && parseTime(job.updated_at) > parseTime(at))) patch.updated_at = at;
    const updated = upsertJob({ ...job, ...patch });
    flash(id);
    if (!known || !updated.detector) refreshJob(id);
    if (state.selected === id && entry.type === "job_completed" && !state.scores.has(id)) showScores(id);
    if (state.selected === id) renderChartHeader(updated);
  }

  function logEvent(entry, data) {
    const log = $("event-log");
    const extra = [];
    if (entry.type === "job_progress" && data.progress !== undefined) extra.push(`${Math.round(data.progress * 100)}%`);
    if (data.step && entry.type !== "job_progress") extra.push(data.step);
    if (data.anomaly_count !== undefined && data.anomaly_count !== null) extra.push(`${data.anomaly_count} anomalies`);
    if (data.error) extra.push(String(data.error).slice(0, 80));
    const type = entry.type || "event";
    const tone = /failed|dead_lettered|retrying|cancelled/.test(type) ? "bad" : /completed|anomalies/.test(type) ? "good" : "";
    const item = el("li", { "data-testid": "event", dataset: { type, jobId: entry.subject || "" } },
      el("time", { datetime: entry.time || "", text: fmtClock(entry.time) }),
      el("span", {}, el("span", { class: `etype ${tone}`.trim(), text: type }),
        ` ${shortId(entry.subject)}${extra.length ? ` · ${extra.join(" · ")}` : ""}`));
    log.prepend(item);
    while (log.children.length > EVENT_LOG_SIZE) log.lastChild.remove();
  }

  // -- live anomalies (stream bindings) ----------------------------------------------------------
  function fmtNumber(value) {
    return typeof value === "number" && Number.isFinite(value) ? value.toFixed(4) : "—";
  }

  function showLiveAnomaly(entry, data) {
    const body = $("live-body");
    const produced = typeof data.produced_at_ms === "number" ? data.produced_at_ms : null;
    const latency = produced === null ? null : Math.max(0, Date.now() - produced);
    const model = `${data.model ?? "?"}:${data.version ?? "?"}`;
    const row = el("tr", { "data-testid": "live-anomaly",
        dataset: { entity: String(entry.subject || ""), latencyMs: latency === null ? "" : String(latency) } },
      el("td", { class: "mono", text: String(entry.subject || "") }),
      el("td", { class: "mono", text: model }),
      el("td", { class: "num", text: fmtNumber(data.score) }),
      el("td", { class: "num", text: fmtNumber(data.threshold) }),
      el("td", { class: "num", title: `scored ${data.latency_ms ?? "?"} ms after the record entered Kafka`,
        text: latency === null ? "—" : `${latency} ms` }));
    body.prepend(row);
    while (body.children.length > LIVE_ROWS) body.lastChild.remove();
    state.liveCount += 1;
    $("live-count").textContent = String(state.liveCount);
    $("live-empty").hidden = true;
  }

  // -- health ----------------------------------------------------------------------------------
  function onHealthEntry(entry) {
    const name = entry.component || "unknown";
    const component = state.health.get(name) || { instances: new Map() };
    const instance = `${entry.host || "?"}:${entry.pid || "?"}`;
    component.instances.set(instance, { seen: Date.now(), host: entry.host, pid: entry.pid,
      status: entry.status || "ok", time: entry.time });
    state.health.set(name, component);
    renderHealth();
  }

  /** Prefill from GET /v1/components (the health-monitor group's last beat of each component):
   * the panel is filled on load instead of waiting for the next heartbeat on the socket. */
  async function loadComponents() {
    try {
      const rows = await api("v1/components");
      const now = Date.now();
      for (const row of Array.isArray(rows) ? rows : []) {
        const name = row.component || String(row.id || "unknown").split("@")[0];
        const component = state.health.get(name) || { instances: new Map() };
        const instance = `${row.host || "?"}:${row.pid || "?"}`;
        const seen = now - Math.max(0, Number(row.age_seconds) || 0) * 1000;  // the server's age: no clock skew
        const known = component.instances.get(instance);
        if (!known || known.seen < seen) {
          component.instances.set(instance, { seen, host: row.host, pid: row.pid, status: row.status || "ok",
            time: row.time, source: "components" });
        }
        state.health.set(name, component);
      }
      renderHealth();
    } catch (err) {
      if (err.status !== 401) banner(`Could not load component health: ${describe(err)}`);
    }
  }

  async function pollReadiness() {
    let status = "down";
    let detail = "";
    try {
      const response = await fetch(new URL("readyz", BASE), { cache: "no-store" });
      const body = await response.json();
      status = response.ok ? "ok" : "down";
      detail = Object.entries(body.checks || {}).map(([k, v]) => `${k} ${v}`).join(" · ");
    } catch (err) {
      detail = `no answer (${err.message})`;
    }
    state.readiness = { status, detail, seen: status === "ok" ? Date.now() : (state.readiness?.seen ?? null) };
    renderHealth();
  }

  function renderHealth() {
    const body = $("health-body");
    const now = Date.now();
    const rows = [];
    if (state.readiness) {
      const r = state.readiness;
      rows.push(el("tr", { "data-testid": "health-row", dataset: { component: "api-readiness", state: r.status, source: "readyz" } },
        el("th", { scope: "row", text: "api readiness" }),
        el("td", { class: "muted", text: r.detail || "GET /readyz", title: "GET /readyz, polled every 10 s" }),
        el("td", { class: "num when", text: r.seen ? fmtAge(now - r.seen) : "never" }),
        el("td", {}, el("span", { class: `badge ${r.status === "ok" ? "ok" : "down"}`, text: r.status === "ok" ? "ready" : "not ready" }))));
    }
    for (const [name, component] of [...state.health.entries()].sort(([a], [b]) => a.localeCompare(b))) {
      let latest = null;
      let live = 0;
      for (const [key, inst] of component.instances) {
        if (now - inst.seen > STALE_AFTER_S * 1000 * 4) component.instances.delete(key);  // long gone
        else {
          if (now - inst.seen <= STALE_AFTER_S * 1000) live += 1;
          if (!latest || inst.seen > latest.seen) latest = inst;
        }
      }
      if (!latest) continue;
      const stale = now - latest.seen > STALE_AFTER_S * 1000;
      const healthState = stale ? "stale" : latest.status === "ok" ? "ok" : latest.status;
      const where = `pid ${latest.pid || "?"}${live > 1 ? ` +${live - 1}` : ""}`;
      rows.push(el("tr", { "data-testid": "health-row",
        dataset: { component: name, state: healthState, source: latest.source || "stream" } },
        el("th", { scope: "row", text: name }),
        el("td", { class: "muted", text: where, title: `host ${latest.host || "?"}, ${live} live instance(s)` }),
        el("td", { class: "num when", text: fmtAge(now - latest.seen), title: latest.time || "" }),
        el("td", {}, el("span", { class: `badge ${healthState === "ok" ? "ok" : "stale"}`, text: healthState }))));
    }
    body.replaceChildren(...rows);
    $("health-empty").hidden = state.health.size > 0;
  }

  function tick() {
    renderHealth();
    for (const job of state.jobs.values()) {
      if (job.status === "running" || job.status === "retrying") {
        const row = state.rows.get(job.id);
        if (row) row.children[7].textContent = durationOf(job);
      }
    }
  }

  // -- score chart -----------------------------------------------------------------------------
  function selectJob(id) {
    state.selected = id;
    for (const [rowId, row] of state.rows) row.setAttribute("aria-selected", String(rowId === id));
    const job = state.jobs.get(id) || { id };
    renderChartHeader(job);
    showScores(id);
  }

  function renderChartHeader(job) {
    $("chart-job").textContent = shortId(job.id);
    $("chart-job").title = job.id;
    $("chart-panel").dataset.jobId = job.id;
    $("report-button").hidden = !(job.status === "completed");
  }

  async function showScores(id) {
    const cached = state.scores.get(id);
    if (cached) drawScores(id, cached);
    const job = state.jobs.get(id);
    const hasResult = job && (job.status === "completed" || job.result_location);
    if (cached && cached.complete) return;
    if (!hasResult) {
      if (!cached) {
        clearChart(job ? `Job ${shortId(id)} is ${job.status || "queued"}: its scores appear here when detection finishes.`
          : "Loading…");
      }
      return;
    }
    try {
      const result = await api(`v1/jobs/${encodeURIComponent(id)}/result`);
      const data = { scores: result.scores || [], threshold: result.threshold, anomaly_count: result.anomaly_count,
        rows: result.rows, top_anomalies: result.top_anomalies || [], complete: true, detector: result.detector };
      state.scores.set(id, data);
      if (state.selected === id) drawScores(id, data);
    } catch (err) {
      if (state.selected === id && !cached) clearChart(`No scores for job ${shortId(id)}: ${describe(err)}`);
    }
  }

  function clearChart(message) {
    $("chart-summary").textContent = message;
    const canvas = $("score-chart");
    const ctx = sizeCanvas(canvas);
    ctx.clearRect(0, 0, canvas.clientWidth, canvas.clientHeight);
    canvas.setAttribute("aria-label", message);
    delete canvas.dataset.jobId;
    canvas.dataset.drawn = "false";
    $("top-body").replaceChildren();
  }

  function sizeCanvas(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(200, canvas.clientWidth);
    const height = Math.max(160, canvas.clientHeight);
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    return ctx;
  }

  function niceStep(span, ticks) {
    const raw = span / Math.max(1, ticks);
    const power = 10 ** Math.floor(Math.log10(raw));
    const unit = raw / power;
    return (unit <= 1 ? 1 : unit <= 2 ? 2 : unit <= 5 ? 5 : 10) * power;
  }

  function drawScores(id, data) {
    const scores = data.scores.filter((s) => Number.isFinite(s));
    const threshold = Number.isFinite(data.threshold) ? data.threshold : null;
    const above = threshold === null ? 0 : scores.filter((s) => s > threshold).length;
    const rows = data.rows ?? scores.length;
    const sample = scores.length < rows ? ` (chart of the first ${scores.length} scores)` : "";
    const summary = $("chart-summary");
    summary.replaceChildren(
      el("strong", { "data-testid": "chart-anomalies", text: `${data.anomaly_count ?? above} anomalies` }),
      ` in ${rows} rows · threshold ${fmtNumber(threshold)}${data.detector ? ` · ${data.detector}` : ""}${sample}`,
    );
    renderTop(data.top_anomalies || []);

    const canvas = $("score-chart");
    const ctx = sizeCanvas(canvas);
    const W = canvas.clientWidth;
    const H = canvas.clientHeight;
    ctx.clearRect(0, 0, W, H);
    if (!scores.length) {
      ctx.fillStyle = "#5b6675";
      ctx.font = "14px system-ui, sans-serif";
      ctx.fillText("No scores in this result.", 16, 30);
      canvas.dataset.drawn = "false";
      return;
    }
    let lo = Math.min(...scores);
    let hi = Math.max(...scores);
    if (threshold !== null) { lo = Math.min(lo, threshold); hi = Math.max(hi, threshold); }
    if (hi === lo) { hi += 0.5; lo -= 0.5; }
    const pad = (hi - lo) * 0.02;
    lo -= pad; hi += pad;
    const width = (hi - lo) / BINS;
    const normal = new Array(BINS).fill(0);
    const anomalous = new Array(BINS).fill(0);
    for (const s of scores) {
      const i = Math.min(BINS - 1, Math.max(0, Math.floor((s - lo) / width)));
      if (threshold !== null && s > threshold) anomalous[i] += 1; else normal[i] += 1;
    }
    const peak = Math.max(1, ...normal.map((n, i) => n + anomalous[i]));

    const m = { left: 48, right: 14, top: 14, bottom: 38 };
    const pw = W - m.left - m.right;
    const ph = H - m.top - m.bottom;
    const x = (v) => m.left + ((v - lo) / (hi - lo)) * pw;
    const y = (c) => m.top + ph - (c / peak) * ph;
    const css = getComputedStyle(document.documentElement);
    const colour = (name, fallback) => css.getPropertyValue(name).trim() || fallback;

    // grid and y axis
    ctx.font = "12px system-ui, sans-serif";
    ctx.strokeStyle = "#e5e9f0";
    ctx.fillStyle = "#5b6675";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const yStep = Math.max(1, niceStep(peak, 4));
    for (let c = 0; c <= peak; c += yStep) {
      const yy = Math.round(y(c)) + 0.5;
      ctx.beginPath(); ctx.moveTo(m.left, yy); ctx.lineTo(W - m.right, yy); ctx.stroke();
      ctx.fillText(String(c), m.left - 8, yy);
    }
    // bars (normal below, anomalous stacked on top)
    const bw = pw / BINS;
    for (let i = 0; i < BINS; i += 1) {
      const x0 = m.left + i * bw + 1;
      const w = Math.max(1, bw - 2);
      const total = normal[i] + anomalous[i];
      if (!total) continue;
      const hNormal = normal[i] ? Math.max(2, (normal[i] / peak) * ph) : 0;
      const hAnom = anomalous[i] ? Math.max(3, (anomalous[i] / peak) * ph) : 0;
      ctx.fillStyle = colour("--normal", "#60a5fa");
      if (hNormal) ctx.fillRect(x0, m.top + ph - hNormal, w, hNormal);
      ctx.fillStyle = colour("--anomalous", "#ef4444");
      if (hAnom) ctx.fillRect(x0, m.top + ph - hNormal - hAnom, w, hAnom);
    }
    // x axis
    ctx.strokeStyle = "#94a3b8";
    ctx.beginPath(); ctx.moveTo(m.left, m.top + ph + 0.5); ctx.lineTo(W - m.right, m.top + ph + 0.5); ctx.stroke();
    ctx.fillStyle = "#5b6675";
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const xStep = niceStep(hi - lo, Math.max(3, Math.floor(pw / 90)));
    for (let v = Math.ceil(lo / xStep) * xStep; v <= hi; v += xStep) {
      const xx = x(v);
      ctx.beginPath(); ctx.moveTo(xx, m.top + ph); ctx.lineTo(xx, m.top + ph + 4); ctx.stroke();
      ctx.fillText(fmtNumber(Math.abs(v) < xStep / 1e6 ? 0 : v), xx, m.top + ph + 7);
    }
    ctx.fillText("anomaly score", m.left + pw / 2, m.top + ph + 22);
    ctx.save();
    ctx.translate(12, m.top + ph / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText("rows", 0, -6);
    ctx.restore();
    // threshold
    if (threshold !== null) {
      const tx = Math.round(x(threshold)) + 0.5;
      ctx.strokeStyle = "#0f172a";
      ctx.setLineDash([5, 4]);
      ctx.lineWidth = 1.5;
      ctx.beginPath(); ctx.moveTo(tx, m.top); ctx.lineTo(tx, m.top + ph); ctx.stroke();
      ctx.setLineDash([]);
      const label = `threshold ${fmtNumber(threshold)}`;
      ctx.font = "600 12px system-ui, sans-serif";
      const tw = ctx.measureText(label).width;
      const left = tx + 6 + tw > W - m.right;
      ctx.textAlign = left ? "right" : "left";
      ctx.textBaseline = "top";
      ctx.fillStyle = "rgba(255,255,255,0.85)";
      ctx.fillRect(left ? tx - 8 - tw : tx + 4, m.top + 2, tw + 4, 16);
      ctx.fillStyle = "#0f172a";
      ctx.fillText(label, left ? tx - 6 : tx + 6, m.top + 4);
    }

    canvas.dataset.jobId = id;
    canvas.dataset.drawn = "true";
    canvas.dataset.scoreCount = String(scores.length);
    canvas.dataset.bins = String(BINS);
    canvas.dataset.threshold = threshold === null ? "" : String(threshold);
    canvas.dataset.aboveThreshold = String(above);
    canvas.setAttribute("aria-label",
      `Histogram of ${scores.length} anomaly scores for job ${id}: ${above} above the threshold ${fmtNumber(threshold)}`);
  }

  function renderTop(top) {
    const rows = top.slice(0, 10).map((a) => {
      const contributions = Object.entries(a.contributions || {}).sort(([, p], [, q]) => q - p).slice(0, 3)
        .map(([name, share]) => `${name} ${Math.round(share * 100)}%`).join(" · ");
      return el("tr", { "data-testid": "top-anomaly" },
        el("td", { class: "num", text: String(a.row) }),
        el("td", { class: "num", text: fmtNumber(a.score) }),
        el("td", { text: contributions || "—" }));
    });
    $("top-body").replaceChildren(...rows);
  }

  async function openReport() {
    const id = state.selected;
    if (!id) return;
    // A link cannot carry the X-API-Key header: fetch the report and open it as a blob.
    const tab = window.open("", "_blank");
    try {
      const response = await api(`v1/jobs/${encodeURIComponent(id)}/report?format=html`);
      const url = URL.createObjectURL(new Blob([await response.text()], { type: "text/html" }));
      if (tab) tab.location.href = url; else window.location.assign(url);
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (err) {
      if (tab) tab.close();
      banner(`Could not open the report: ${describe(err)}`);
    }
  }

  // -- dead letters ----------------------------------------------------------------------------
  function setDlqStatus(message, kind = "") {
    const node = $("dlq-status");
    node.textContent = message;
    node.className = `status ${kind}`.trim();
  }

  async function loadDeadLetters() {
    try {
      const page = await api("v1/dlq?limit=50");
      $("dlq-count").textContent = `(${page.total})`;
      $("dlq-empty").hidden = page.items.length > 0;
      $("dlq-body").replaceChildren(...page.items.map((letter) => el("tr", {
        "data-testid": "dlq-row", dataset: { letterId: letter.id, jobId: letter.job_id || "" } },
        el("td", { class: "mono", text: String(letter.task).replace(/^pynomaly\./, ""), title: `${letter.task} on ${letter.queue || "?"}, failed ${letter.failed_at}` }),
        el("td", {}, letter.job_id
          ? el("button", { type: "button", class: "link mono", text: shortId(letter.job_id), title: letter.job_id,
            onclick: () => selectJob(letter.job_id) })
          : "—"),
        el("td", { class: "err", text: letter.error, title: letter.traceback || letter.error }),
        el("td", { class: "num", text: `${letter.attempts}${letter.replays ? ` (${letter.replays} replays)` : ""}` }),
        el("td", { class: "actions" }, el("button", { type: "button", class: "ghost small", text: "Replay",
          "data-testid": "dlq-replay", "aria-label": `Replay dead letter ${letter.id}`,
          onclick: (ev) => replay(letter.id, ev.currentTarget) })),
      )));
    } catch (err) {
      if (err.status !== 401) setDlqStatus(`Could not load dead letters: ${describe(err)}`, "error");
    }
  }

  async function replay(letterId, button) {
    button.disabled = true;
    try {
      const answer = await api(`v1/dlq/${encodeURIComponent(letterId)}/replay`, { method: "POST" });
      setDlqStatus(`Replayed ${String(answer.task).replace(/^pynomaly\./, "")}${answer.job_id ? ` for job ${shortId(answer.job_id)}` : ""}.`, "ok");
      if (answer.job_id) refreshJob(answer.job_id);
    } catch (err) {
      setDlqStatus(`Replay failed: ${describe(err)}`, "error");
    } finally {
      loadDeadLetters();
    }
  }

  async function purge() {
    if (!window.confirm("Delete every dead letter? They cannot be replayed afterwards.")) return;
    try {
      const answer = await api("v1/dlq", { method: "DELETE" });
      setDlqStatus(`Purged ${answer.purged} dead letter(s).`, "ok");
    } catch (err) {
      setDlqStatus(`Purge failed: ${describe(err)}`, "error");
    } finally {
      loadDeadLetters();
    }
  }

  // -- WebSocket -------------------------------------------------------------------------------
  function setConnection(kind, text) {
    const node = $("connection");
    node.dataset.state = kind;
    node.textContent = text;
  }

  function stopSocket() {
    clearTimeout(state.wsTimer);
    state.wsTimer = null;
    const ws = state.ws;
    state.ws = null;
    if (ws) ws.close(1000, "bye");
  }

  function connect() {
    clearTimeout(state.wsTimer);
    state.wsTimer = null;
    if (!state.key || state.ws) return;
    const url = new URL("v1/stream", BASE);
    url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
    setConnection("connecting", state.wsAttempt ? "reconnecting…" : "connecting…");
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (err) {
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    let fatal = false;
    ws.addEventListener("open", () => {
      // Browsers cannot set headers on a WebSocket: the key goes in the first message.
      ws.send(JSON.stringify({ api_key: state.key, last_id: state.lastId || "$" }));
    });
    ws.addEventListener("message", (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch (_) { return; }
      if (message.type === "hello") {
        const resumed = state.wsAttempt > 0;
        state.wsAttempt = 0;
        setConnection("live", "live");
        banner("");
        if (resumed) {
          // Missed entries are replayed from last_id; a snapshot also covers a trimmed stream.
          loadJobs();
          loadDeadLetters();
          loadComponents();
        }
        return;
      }
      if (message.type === "error") {
        if (message.status === 401) {
          fatal = true;
          signOut(keyRejected(message.detail));
        } else if (message.status === 422) {
          state.lastId = null;  // an unusable resume point: start from now, the snapshot fills in
          banner(`Live updates: ${message.detail}`);
        } else {
          banner(`Live updates: ${message.detail || "server error"}`);
        }
        return;
      }
      if (message.type === "gap") {
        // Entries after our last id were trimmed before we read them: the snapshot is the truth.
        banner(`Live updates fell behind (entries after ${message.after} were trimmed); reloaded.`);
        loadJobs();
        loadDeadLetters();
        return;
      }
      if (message.stream === "health:stream") onHealthEntry(message);
      else if (message.stream === "dashboard:stream") onDashboardEntry(message);
    });
    ws.addEventListener("close", (event) => {
      if (state.ws !== ws) return;  // replaced or stopped on purpose
      state.ws = null;
      if (fatal || !state.key) return;
      scheduleReconnect(event.code);
    });
  }

  function scheduleReconnect(code) {
    const attempt = state.wsAttempt;
    state.wsAttempt += 1;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempt);
    const delay = Math.round(base * (0.75 + Math.random() * 0.5));
    const why = code === 1011 ? "server stream error" : "connection lost";
    setConnection("reconnecting", `${why}: retry in ${Math.max(1, Math.round(delay / 1000))} s`);
    state.wsTimer = setTimeout(connect, delay);
  }

  function reconnectNow() {
    if (state.key && !state.ws) {
      clearTimeout(state.wsTimer);
      connect();
    }
  }

  // -- start -----------------------------------------------------------------------------------
  function init() {
    $("stale-after").textContent = String(STALE_AFTER_S);
    $("login-form").addEventListener("submit", onLoginSubmit);
    $("logout").addEventListener("click", () => signOut(""));
    $("submit-form").addEventListener("submit", onSubmitJob);
    $("detector").addEventListener("change", describeDetector);
    $("status-filter").addEventListener("change", () => { state.offset = 0; loadJobs(); });
    $("jobs-refresh").addEventListener("click", loadJobs);
    $("jobs-prev").addEventListener("click", () => goToPage(-1));
    $("jobs-next").addEventListener("click", () => goToPage(1));
    $("dlq-refresh").addEventListener("click", loadDeadLetters);
    $("dlq-purge").addEventListener("click", purge);
    $("report-button").addEventListener("click", openReport);
    window.addEventListener("online", reconnectNow);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) reconnectNow(); });
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        const cached = state.selected && state.scores.get(state.selected);
        if (cached) drawScores(state.selected, cached);
      }, 150);
    });

    const saved = sessionStorage.getItem(KEY_STORE);
    if (saved) {
      $("login").hidden = true;
      signIn(saved).catch((err) => {
        signOut(err.status === 401 ? keyRejected(err.detail) : `Could not open the dashboard: ${describe(err)}`);
      });
    } else {
      $("api-key").focus();
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
