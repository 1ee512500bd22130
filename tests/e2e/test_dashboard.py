"""The dashboard as a person uses it: real headless Chromium against the real running system.

Open /dashboard, enter the API key, submit the bundled sensors dataset through the page's form,
watch the job's progress bar reach 100 % from WebSocket updates (the page never navigates), see the
anomaly count, the score chart and component health, and save a screenshot to artifacts/.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from kafka import KafkaProducer

from pynomaly.client import PynomalyClient
from pynomaly.messaging.kafka_admin import connection_config
from pynomaly.topology import T_MEASUREMENTS
from pynomaly.wiring import Container

playwright_sync = pytest.importorskip("playwright.sync_api")

REPO = Path(__file__).resolve().parents[2]
SENSORS_CSV = REPO / "app" / "pynomaly" / "data" / "sensors.csv"
SCREENSHOT = REPO / "artifacts" / "dashboard.png"
PAGING_SCREENSHOT = REPO / "artifacts" / "dashboard-paging.png"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 60_000

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.browser,
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # `./dev test` installs Debian's chromium; without it this is a failure, never a skip.
    assert CHROMIUM.exists(), "needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
    playwright_sync.expect.set_options(timeout=TIMEOUT_MS)
    with playwright_sync.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
        assert not errors, f"JavaScript errors on the page: {errors}"
    finally:
        context.close()


def sign_in(page: Any, api_url: str, key: str, query: str = "") -> None:
    page.goto(f"{api_url}/dashboard{query}")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Open dashboard").click()


def test_static_assets_are_served_without_a_key(local_system) -> None:  # type: ignore[no-untyped-def]
    html = httpx.get(f"{local_system.api_url}/dashboard", timeout=10)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    for asset, kind in (
        ("app.js", "javascript"),
        ("app.css", "text/css"),
        ("ops.js", "javascript"),
        ("ops.css", "text/css"),
    ):
        assert f"dashboard/static/{asset}" in html.text
        response = httpx.get(f"{local_system.api_url}/dashboard/static/{asset}", timeout=10)
        assert response.status_code == 200, asset
        assert kind in response.headers["content-type"], response.headers["content-type"]
    # The page pulls nothing from elsewhere: it works offline.
    assert not re.search(r"""(src|href)=["']https?://""", html.text)


def test_wrong_key_shows_a_clear_error(local_system, page: Any) -> None:  # type: ignore[no-untyped-def]
    sign_in(page, local_system.api_url, "not-the-key")
    error = page.get_by_test_id("login-error")
    playwright_sync.expect(error).to_be_visible()
    playwright_sync.expect(error).to_contain_text("API key was rejected")
    playwright_sync.expect(error).to_contain_text("401")
    playwright_sync.expect(page.locator("#app")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('pynomaly.apiKey')") is None


def test_submit_watch_progress_and_see_the_anomalies(local_system, page: Any) -> None:  # type: ignore[no-untyped-def]
    expect = playwright_sync.expect
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)
    sockets: list[Any] = []
    page.on("websocket", lambda ws: sockets.append(ws))

    sign_in(page, local_system.api_url, local_system.api_key)
    expect(page.locator("#app")).to_be_visible()
    expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
    assert len(sockets) == 1 and sockets[0].url.endswith("/v1/stream")
    # The detector list comes from GET /v1/detectors.
    options = page.locator("#detector option").all_inner_texts()
    assert {"iforest", "ecod", "lof"} <= set(options)
    navigations.clear()

    # Record the progress values the row shows while the job runs (mutations, not polling).
    page.evaluate(
        """() => {
            window.__progress = [];
            new MutationObserver(() => {
                for (const bar of document.querySelectorAll('[data-testid="job-progress"]')) {
                    const row = bar.closest('tr');
                    window.__progress.push([row.dataset.jobId, row.dataset.status, Number(bar.dataset.value)]);
                }
            }).observe(document.getElementById('jobs-body'), {subtree: true, attributes: true, childList: true});
        }"""
    )

    page.get_by_label("Dataset (CSV with a header row)").set_input_files(str(SENSORS_CSV))
    page.get_by_label("Detector").select_option("iforest")
    page.get_by_label("Priority").select_option("high")
    page.get_by_test_id("contamination").fill("0.03")
    page.locator("#step-report").check()
    page.get_by_role("button", name="Submit job").click()

    status = page.get_by_test_id("submit-status")
    expect(status).to_have_attribute("data-job-id", re.compile(r"^[0-9a-f]{32}$"))
    job_id = status.get_attribute("data-job-id")
    row = page.locator(f'tr[data-job-id="{job_id}"]')
    expect(row).to_be_visible()
    expect(row.get_by_test_id("job-detector")).to_have_text("iforest")
    expect(row.get_by_test_id("job-priority")).to_have_text("high")

    # Live: the bar reaches 100 % and the status turns completed without any reload.
    expect(row).to_have_attribute("data-status", "completed")
    progress = row.get_by_test_id("job-progress")
    expect(progress).to_have_attribute("aria-valuenow", "100")
    expect(progress).to_contain_text("100%")
    assert navigations == [], f"the page navigated: {navigations}"
    seen = [(s, v) for jid, s, v in page.evaluate("window.__progress") if jid == job_id]
    assert seen[0][1] < 100, f"the row appeared already finished: {seen[:3]}"
    assert [v for _, v in seen] == sorted(v for _, v in seen), "progress went backwards"
    statuses = [s for s, _ in seen]
    assert "completed" in statuses and statuses[0] in ("queued", "running"), statuses

    # The updates came through the WebSocket: its events are in the live log.
    events = page.locator(f'[data-testid="event"][data-job-id="{job_id}"]')
    expect(events.filter(has_text="job_completed")).to_have_count(1)
    expect(events.filter(has_text="anomalies_detected")).to_have_count(1)

    # Anomaly count in the table and in the chart of the selected job.
    anomalies = int(row.get_by_test_id("job-anomalies").inner_text())
    assert 12 <= anomalies <= 30, anomalies  # 12 planted anomalies at contamination 0.03 of 600 rows
    chart = page.get_by_test_id("score-chart")
    expect(chart).to_have_attribute("data-job-id", job_id)
    expect(chart).to_have_attribute("data-drawn", "true")
    assert chart.get_attribute("data-score-count") == "600"
    assert int(chart.get_attribute("data-above-threshold")) == anomalies
    expect(page.get_by_test_id("chart-anomalies")).to_have_text(f"{anomalies} anomalies")
    expect(page.get_by_test_id("top-anomaly")).to_have_count(10)
    # The canvas really has coloured bars: count non-blank pixels.
    painted = page.evaluate(
        """() => {
            const c = document.getElementById('score-chart');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let red = 0, blue = 0;
            for (let i = 0; i < d.length; i += 4) {
                if (d[i] > 200 && d[i + 1] < 100 && d[i + 2] < 100) red++;
                if (d[i] < 120 && d[i + 2] > 200) blue++;
            }
            return {red, blue};
        }"""
    )
    assert painted["red"] > 50 and painted["blue"] > 500, painted

    # Selecting the job by its id (the way a person opens a chart) keeps the chart on it.
    row.get_by_test_id("job-open").click()
    expect(chart).to_have_attribute("data-job-id", job_id)

    # Component health from health:stream heartbeats (workers and consumers) plus the API's readiness.
    expect(page.locator('[data-testid="health-row"][data-component="consumer:bridge"]')).to_be_visible()
    expect(page.locator('[data-testid="health-row"][data-component^="worker:"]').first).to_be_visible()
    expect(page.locator('[data-testid="health-row"][data-component="api-readiness"]')).to_have_attribute(
        "data-state", "ok"
    )
    for state in page.locator('[data-testid="health-row"]').evaluate_all("rows => rows.map(r => r.dataset.state)"):
        assert state == "ok", state

    # The dead-letter view loaded (the shared system may or may not hold letters from other tests).
    expect(page.get_by_test_id("dlq-count")).to_have_text(re.compile(r"^\(\d+\)$"))

    # The job as the API sees it agrees with the page.
    job = httpx.get(
        f"{local_system.api_url}/v1/jobs/{job_id}", headers={"X-API-Key": local_system.api_key}, timeout=10
    ).json()
    assert job["status"] == "completed" and job["anomaly_count"] == anomalies
    assert job["steps"] == ["preprocess", "detect", "report"] and job["priority"] == "high"

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True, animations="disabled")
    assert SCREENSHOT.stat().st_size > 20_000


def _drop_socket_while_a_job_runs(local_system: Any, page: Any) -> str:
    """Sign in, see one job live, drop the socket and keep it down while a second job runs; reconnect."""
    expect = playwright_sync.expect
    page.add_init_script(TRACK_SOCKETS)
    sign_in(page, local_system.api_url, local_system.api_key)
    expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
    # A first job gives the page a dashboard:stream position to resume from.
    first = _submit_small_job(local_system)
    expect(
        page.locator(f'[data-testid="event"][data-job-id="{first}"]').filter(has_text="job_completed")
    ).to_have_count(1)

    page.evaluate("() => { window.__blockSockets = true; window.__sockets.at(-1).close(); }")
    expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "reconnecting")
    second = _submit_small_job(local_system)
    _wait_finished(local_system, second)
    assert page.locator(f'tr[data-job-id="{second}"]').count() == 0  # nothing reached the page meanwhile

    page.evaluate("() => { window.__blockSockets = false; window.dispatchEvent(new Event('online')); }")
    expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
    return second


def test_reconnect_catches_up_without_reload(local_system, page: Any) -> None:  # type: ignore[no-untyped-def]
    """Backoff reconnect after a dropped socket; the job finished meanwhile shows as completed."""
    second = _drop_socket_while_a_job_runs(local_system, page)
    row = page.locator(f'tr[data-job-id="{second}"]')
    playwright_sync.expect(row).to_have_attribute("data-status", "completed")
    playwright_sync.expect(row.get_by_test_id("job-progress")).to_have_attribute("aria-valuenow", "100")
    assert len(page.evaluate("window.__sockets")) == 2
    assert page.url.endswith("/dashboard")


def test_reconnect_replays_the_missed_events(local_system, page: Any) -> None:  # type: ignore[no-untyped-def]
    """The reconnect sends the last dashboard:stream id it saw; the events it missed are replayed."""
    second = _drop_socket_while_a_job_runs(local_system, page)
    hellos = page.evaluate("window.__sent.filter(m => 'api_key' in m).map(m => m.last_id)")
    assert len(hellos) == 2 and hellos[0] == "$" and re.match(r"^\d+-\d+$", hellos[1]), hellos
    missed = page.locator(f'[data-testid="event"][data-job-id="{second}"]')
    playwright_sync.expect(missed.filter(has_text="job_submitted")).to_have_count(1)
    playwright_sync.expect(missed.filter(has_text="job_completed")).to_have_count(1)


# Wraps the page's WebSocket: records the sockets and sent messages, and can refuse new connections.
TRACK_SOCKETS = """
(() => {
  const Real = window.WebSocket;
  window.__sockets = [];
  window.__sent = [];
  window.__blockSockets = false;
  class Tracked extends Real {
    constructor(...args) {
      if (window.__blockSockets) throw new Error("connections blocked by the test");
      super(...args);
      window.__sockets.push(this);
    }
    send(data) {
      window.__sent.push(JSON.parse(data));
      return super.send(data);
    }
  }
  window.WebSocket = Tracked;
})();
"""


def _submit_small_job(local_system: Any) -> str:
    rows = [[round((i * 37 % 101) / 10, 2), round((i * 53 % 97) / 10, 2)] for i in range(80)] + [[90.0, -90.0]]
    response = httpx.post(
        f"{local_system.api_url}/v1/jobs",
        headers={"X-API-Key": local_system.api_key},
        json={"detector": "ecod", "rows": rows, "contamination": 0.05},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _wait_finished(local_system: Any, job_id: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=local_system.api_url, headers={"X-API-Key": local_system.api_key}, timeout=10) as c:
        while time.monotonic() < deadline:
            job = c.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in ("completed", "failed", "cancelled"):
                assert job["status"] == "completed", json.dumps(job)
                return
            time.sleep(0.2)  # polling interval, not a wait for a condition
    raise AssertionError(f"job {job_id} did not finish within {timeout:.0f}s")


def test_dead_letter_view_replays_a_letter(local_system, page: Any) -> None:  # type: ignore[no-untyped-def]
    """A dead letter in the real DLQ shows in the page; its Replay button re-enqueues it through the API."""
    import redis

    from pynomaly.storage.dead_letters import DeadLetter, DeadLetterStore
    from pynomaly.topology import Q_REPORTS, TASK_REPORT

    job_id = _submit_small_job(local_system)
    _wait_finished(local_system, job_id)
    client = redis.Redis.from_url(local_system.settings.redis_url, decode_responses=True)
    try:
        letter = DeadLetterStore(client).add(
            DeadLetter(
                task=TASK_REPORT,
                args=[job_id],
                kwargs={},
                error="ConnectionError: planted by the dashboard test",
                traceback="Traceback (most recent call last):\n  ...\nConnectionError: planted",
                attempts=3,
                job_id=job_id,
                queue=Q_REPORTS,
            )
        )
    finally:
        client.close()

    expect = playwright_sync.expect
    sign_in(page, local_system.api_url, local_system.api_key)
    row = page.locator(f'[data-testid="dlq-row"][data-letter-id="{letter.id}"]')
    expect(row).to_contain_text("generate_report")
    expect(row).to_contain_text("planted by the dashboard test")
    expect(row).to_contain_text(job_id[:8])
    row.get_by_test_id("dlq-replay").click()
    expect(page.get_by_test_id("dlq-status")).to_contain_text(f"Replayed generate_report for job {job_id[:8]}")
    expect(row).to_have_count(0)
    gone = httpx.get(
        f"{local_system.api_url}/v1/dlq/{letter.id}", headers={"X-API-Key": local_system.api_key}, timeout=10
    )
    assert gone.status_code == 404


def test_component_health_is_filled_on_load_without_the_socket(local_system, page: Any) -> None:  # type: ignore[no-untyped-def]
    """GET /v1/components fills the panel at sign-in: rows show although no WebSocket (no beat) ever connects."""
    expect = playwright_sync.expect
    page.add_init_script(TRACK_SOCKETS)
    page.add_init_script("window.__blockSockets = true;")
    sign_in(page, local_system.api_url, local_system.api_key)
    expect(page.locator("#app")).to_be_visible()
    for selector in ('[data-component="consumer:bridge"]', '[data-component^="worker:"]'):
        row = page.locator(f'[data-testid="health-row"]{selector}').first
        expect(row).to_be_visible()
        expect(row).to_have_attribute("data-source", "components")
        expect(row).to_have_attribute("data-state", "ok")
    expect(page.get_by_test_id("health-empty")).to_be_hidden()
    assert page.evaluate("window.__sockets.length") == 0, "a socket connected: rows may have come from a beat"
    assert page.get_by_test_id("connection").get_attribute("data-state") != "live"


def test_jobs_table_pages_with_prev_and_next(local_system, page: Any) -> None:  # type: ignore[no-untyped-def]
    """With ?page_size=3 and more jobs than that, Next and Prev walk GET /v1/jobs by offset and limit."""
    expect = playwright_sync.expect
    for job_id in [_submit_small_job(local_system) for _ in range(4)]:
        _wait_finished(local_system, job_id)
    sign_in(page, local_system.api_url, local_system.api_key, query="?page_size=3")
    with httpx.Client(base_url=local_system.api_url, headers={"X-API-Key": local_system.api_key}, timeout=10) as c:
        first = c.get("/v1/jobs", params={"limit": 3, "offset": 0}).json()
        second = c.get("/v1/jobs", params={"limit": 3, "offset": 3}).json()
    total = first["total"]
    assert total >= 4
    rows = page.get_by_test_id("job-row")
    prev, nxt, info = (
        page.get_by_test_id("jobs-prev"),
        page.get_by_test_id("jobs-next"),
        page.get_by_test_id("jobs-page"),
    )

    def shown() -> list[str]:
        return rows.evaluate_all("rows => rows.map(r => r.dataset.jobId)")

    expect(info).to_have_text(f"1\u20133 of {total}")
    expect(rows).to_have_count(3)
    assert shown() == [j["id"] for j in first["items"]]
    expect(prev).to_be_disabled()
    expect(nxt).to_be_enabled()

    nxt.click()
    expect(info).to_have_text(f"4\u2013{3 + len(second['items'])} of {total}")
    expect(rows).to_have_count(len(second["items"]))
    assert shown() == [j["id"] for j in second["items"]]
    expect(prev).to_be_enabled()
    expect(page.get_by_test_id("jobs-pager")).to_have_attribute("data-offset", "3")
    PAGING_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(PAGING_SCREENSHOT), full_page=True, animations="disabled")

    prev.click()
    expect(info).to_have_text(f"1\u20133 of {total}")
    expect(prev).to_be_disabled()
    assert shown() == [j["id"] for j in first["items"]]


OPS_SCREENSHOT = REPO / "artifacts" / "dashboard-ops.png"


def _ops_tile(page: Any, kind: str, key: str) -> Any:
    return page.locator(f'[data-testid="ops-tile"][data-kind="{kind}"][data-key="{key}"]')


def _number(locator: Any, attribute: str) -> float:
    value = locator.get_attribute(attribute, timeout=TIMEOUT_MS)
    return float(value) if value not in (None, "") else float("nan")


def test_operations_view_charts_queue_depth_task_rates_lag_and_dlq_growth(local_system, page: Any) -> None:  # type: ignore[no-untyped-def]
    """The operations view samples GET /v1/ops/metrics: a burst of slow jobs shows in the detection
    queue's depth and the detect task's rate and run time, a real dead letter in the DLQ's growth."""
    import numpy as np

    from pynomaly.topology import GROUP_AUDIT, GROUP_BRIDGE, GROUP_SCORER, Q_DETECTION, TASK_DETECT, TOPOLOGY
    from tests.e2e.support import wait_for, webhook_server

    expect = playwright_sync.expect
    sign_in(page, local_system.api_url, local_system.api_key, query="?ops_every=1")
    status = page.get_by_test_id("ops-status")
    expect(status).to_have_attribute("data-state", "live")
    wait_for(lambda: int(status.get_attribute("data-samples") or 0) >= 2, 60, what="two samples")
    # Every queue has a tile, each with a drawn chart; the lag of every consumer group, every partition.
    for queue in TOPOLOGY.queues:
        expect(_ops_tile(page, "queue", queue.name).get_by_test_id("ops-chart")).to_have_count(1)
    partitions = {t.name: t.partitions for t in TOPOLOGY.topics}
    for group in TOPOLOGY.consumer_groups:
        expected = sum(partitions[topic] for topic in group.topics)
        expect(_ops_tile(page, "lag", group.name)).to_have_attribute("data-partitions", str(expected))
    assert {GROUP_BRIDGE, GROUP_AUDIT, GROUP_SCORER} == {g.name for g in TOPOLOGY.consumer_groups}
    expect(_ops_tile(page, "outbox", "outbox")).to_be_visible()
    expect(_ops_tile(page, "outbox-age", "outbox-age")).to_be_visible()
    # The page's quantile is Prometheus' histogram_quantile: linear within the bucket, +Inf -> largest bound.
    histogram = {"count": 4, "bounds": [0.1, 1, 10], "cumulative": [1, 2, 3]}
    assert page.evaluate("h => window.PynomalyOps.quantile(0.5, h, null)", histogram) == pytest.approx(1.0)
    assert page.evaluate("h => window.PynomalyOps.quantile(0.95, h, null)", histogram) == pytest.approx(10.0)

    detect = _ops_tile(page, "task", f"detection/{TASK_DETECT}")
    runs_before = _number(detect, "data-runs") if detect.count() else 0.0
    dlq = _ops_tile(page, "dlq", "dlq")
    dlq_before = _number(dlq, "data-value")
    queue = _ops_tile(page, "queue", Q_DETECTION)
    assert _number(queue, "data-value") >= 0

    # A burst of slow detections (ocsvm, about a second each on 2,000 rows) backs up the queue.
    rng = np.random.default_rng(7)
    ids = []
    with httpx.Client(base_url=local_system.api_url, headers={"X-API-Key": local_system.api_key}, timeout=60) as c:
        for _ in range(12):
            rows = rng.normal(0, 1, size=(2000, 3)).round(4).tolist()
            answer = c.post("/v1/jobs", json={"detector": "ocsvm", "rows": rows, "priority": "low"})
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["id"])
    expect(queue).to_have_attribute("data-peak", re.compile(r"^[1-9]\d*$"), timeout=180_000)
    for job_id in ids:
        _wait_finished(local_system, job_id, timeout=300)
    # The runs reach the chart: rate above zero in the window, p50 <= p95, the queue drained again.
    wait_for(lambda: _number(detect, "data-runs") >= runs_before + len(ids), 120, what="the burst's detect runs")
    assert _number(detect, "data-peak-rate") > 0
    wait_for(lambda: _number(detect, "data-p95") > 0, 60, what="the detect task's p95")
    assert 0 < _number(detect, "data-p50") <= _number(detect, "data-p95")
    rate_chart = detect.get_by_test_id("ops-chart").first
    assert int(rate_chart.get_attribute("data-points") or 0) >= 2
    expect(queue).to_have_attribute("data-value", "0", timeout=120_000)

    # A webhook that answers 400 cannot be fixed by retrying: its delivery is dead-lettered at once.
    with webhook_server(status=400) as receiver:
        with httpx.Client(base_url=local_system.api_url, headers={"X-API-Key": local_system.api_key}, timeout=60) as c:
            rows = [[round((i * 37 % 101) / 10, 2), round((i * 53 % 97) / 10, 2)] for i in range(80)]
            answer = c.post(
                "/v1/jobs",
                json={"detector": "ecod", "rows": rows, "notify": [{"channel": "webhook", "target": receiver.url}]},
            )
            assert answer.status_code == 202, answer.text
        wait_for(lambda: receiver.requests, 120, what="the webhook's delivery attempt")
    wait_for(lambda: _number(dlq, "data-value") >= dlq_before + 1, 120, what="the DLQ tile to count the letter")
    assert _number(dlq, "data-growth") >= 1 and _number(dlq, "data-peak") >= dlq_before + 1
    expect(dlq.get_by_test_id("ops-value")).to_have_text(re.compile(r"^\d+$"))

    print(
        f"\nops view: {Q_DETECTION} peak depth {_number(queue, 'data-peak'):.0f}, "
        f"detect runs {runs_before:.0f} -> {_number(detect, 'data-runs'):.0f}, "
        f"peak rate {_number(detect, 'data-peak-rate'):.2f}/s, p50 {_number(detect, 'data-p50'):.2f} s, "
        f"p95 {_number(detect, 'data-p95'):.2f} s, DLQ {dlq_before:.0f} -> {_number(dlq, 'data-value'):.0f}, "
        f"samples {status.get_attribute('data-samples')}"
    )
    OPS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.locator("#ops-panel").screenshot(path=str(OPS_SCREENSHOT), animations="disabled")
    assert OPS_SCREENSHOT.stat().st_size > 10_000


def test_live_anomalies_show_with_their_latency(local_system, page: Any) -> None:  # type: ignore[no-untyped-def]
    """A bound model scores records produced to Kafka; each anomaly appears in the live view once,
    with its entity, model version, score, threshold and record -> browser latency."""
    expect = playwright_sync.expect
    prefix = f"dash-{uuid.uuid4().hex[:8]}"
    with PynomalyClient(local_system.api_url, local_system.api_key, timeout=60) as api:
        name = f"dash-live-{uuid.uuid4().hex[:6]}"
        job = api.wait(api.submit_csv(SENSORS_CSV, "iforest", save_model=name)["id"], timeout=180)
        assert job["status"] == "completed", job["error"]
        api.bind(T_MEASUREMENTS, name)
        try:
            container = Container(local_system.settings, "tests")
            try:
                _, model = container.models.load(name)
            finally:
                container.close()
            readings = [[60.0, 100.0, 0.8, 12.0], [150.0, 180.0, 9.0, 40.0], [61.0, 100.5, 0.9, 12.5],
                        [20.0, 40.0, 12.0, 2.0], [59.5, 100.2, 0.7, 12.2], [130.0, 20.0, 7.0, 35.0]]  # fmt: skip
            _, labels = model.score(np.array(readings))
            flagged = {f"{prefix}-{i}" for i, label in enumerate(labels) if label}
            assert len(flagged) >= 3, labels  # the extreme readings at least

            sign_in(page, local_system.api_url, local_system.api_key)
            expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
            expect(page.get_by_test_id("live-empty")).to_be_visible()
            producer = KafkaProducer(acks="all", **connection_config(local_system.settings))
            try:
                columns = ["temperature", "pressure", "vibration", "current"]
                for i, values in enumerate(readings):
                    entity = f"{prefix}-{i}"
                    value = json.dumps({"entity": entity, "values": dict(zip(columns, values, strict=True))})
                    producer.send(T_MEASUREMENTS, key=entity.encode(), value=value.encode())
                producer.flush(timeout=30)
            finally:
                producer.close(timeout=10)
            rows = page.locator(f'[data-testid="live-anomaly"][data-entity^="{prefix}-"]')
            expect(rows).to_have_count(len(flagged))
            time.sleep(2.0)
            expect(rows).to_have_count(len(flagged))  # once each
            assert {rows.nth(i).get_attribute("data-entity") for i in range(len(flagged))} == flagged
            first = rows.first.locator("td")
            assert first.nth(1).inner_text() == f"{name}:1"
            assert float(first.nth(2).inner_text()) > float(first.nth(3).inner_text())
            latencies = [float(rows.nth(i).get_attribute("data-latency-ms") or "nan") for i in range(len(flagged))]
            assert all(0 <= ms < 60_000 for ms in latencies), latencies
            print(f"\nrecord -> browser latency of {len(flagged)} live anomalies: max {max(latencies):.0f} ms")
            expect(page.get_by_test_id("live-empty")).to_be_hidden()
        finally:
            api.unbind(T_MEASUREMENTS)
