"""Schedules end to end: real Redis, Kafka, workers and beat processes (the session's ``local_system``).

An interval schedule of a couple of seconds on a stored dataset produces runs that complete as
ordinary jobs; pause stops them, resume restarts them, delete removes them; with a second
``pynomaly beat`` started next to the system's own, there is still one job per tick.  Bad input is
refused with problem+json and schedules nothing.  A URL source is fetched from a loopback server
(allowed in tests by ``PYNOMALY_DATASET_URL_ALLOWLIST``).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from pynomaly.localstack.procs import log_tail, spawn, stop_process
from pynomaly.localstack.system import child_env, pynomaly_argv
from pynomaly.messaging.beat import BEAT_KEY_PREFIX, BEAT_LOCK_KEY, entry_name
from tests.e2e.support import wait_for
from tests.support.http import QuietHandler, serving

pytestmark = pytest.mark.e2e

INTERVAL = 2
CSV = "a,b\n" + "\n".join(f"{i % 7 * 0.1:.2f},{(i * 3) % 5 * 0.2:.2f}" for i in range(40)) + "\n25,-25\n"


@pytest.fixture(scope="module")
def http(local_system) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=local_system.api_url, headers={"X-API-Key": local_system.api_key}, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def dataset(http: httpx.Client) -> dict[str, Any]:
    response = http.post(
        "/v1/datasets", content=CSV.encode(), headers={"Content-Type": "text/csv"}, params={"name": "e2e"}
    )
    assert response.status_code == 201, response.text
    return response.json()


def runs(http: httpx.Client, schedule_id: str) -> list[dict[str, Any]]:
    page = http.get("/v1/jobs", params={"schedule_id": schedule_id, "limit": 500}).json()
    return sorted(page["items"], key=lambda j: j["created_at"])


def completed(http: httpx.Client, schedule_id: str) -> list[dict[str, Any]]:
    return [j for j in runs(http, schedule_id) if j["status"] == "completed"]


def _ts(job: dict[str, Any]) -> float:
    return datetime.fromisoformat(job["created_at"].replace("Z", "+00:00")).timestamp()


def test_stored_datasets_keep_a_checksum_and_limits(http: httpx.Client, dataset: dict[str, Any]) -> None:
    assert dataset["sha256"] == hashlib.sha256(CSV.encode()).hexdigest()
    assert dataset["rows"] == 41 and dataset["columns"] == ["a", "b"] and dataset["bytes"] == len(CSV)
    assert http.get(f"/v1/datasets/{dataset['id']}").json() == dataset
    assert dataset["id"] in {d["id"] for d in http.get("/v1/datasets").json()["items"]}
    too_big = http.post("/v1/datasets", content=b"a\n" + b"1\n" * 600_000, headers={"Content-Type": "text/csv"})
    assert too_big.status_code == 422 and too_big.headers["content-type"] == "application/problem+json"
    other = http.post("/v1/datasets", json={"name": "rows", "rows": [[1, 2], [3, 4]], "columns": ["x", "y"]})
    assert other.status_code == 201, other.text
    assert http.delete(f"/v1/datasets/{other.json()['id']}").status_code == 204
    assert http.get(f"/v1/datasets/{other.json()['id']}").status_code == 404


def test_bad_input_is_a_problem_and_schedules_nothing(
    http: httpx.Client, dataset: dict[str, Any], system_redis
) -> None:  # type: ignore[no-untyped-def]
    base = {"interval_seconds": 60, "dataset_id": dataset["id"], "detector": "knn"}
    before = http.get("/v1/schedules").json()["total"]
    entries_before = system_redis.zcard(BEAT_KEY_PREFIX + ":schedule")
    cases = [
        ({"cron": "61 * * * *", "interval_seconds": None}, "out of range"),
        ({"cron": "* * *", "interval_seconds": None}, "five"),
        ({"interval_seconds": 0}, "under the minimum"),
        ({"cron": "* * * * *"}, "exactly one of cron or interval_seconds"),
        ({"dataset_id": "ds_nope"}, "does not exist"),
        ({"detector": "nope"}, "unknown detector"),
        ({"dataset_id": None, "dataset_url": "ftp://example.com/x.csv"}, "scheme 'ftp'"),
        ({"dataset_id": None, "dataset_url": "http://169.254.169.254/latest/meta-data/"}, "169.254.169.254"),
        ({"dataset_id": None, "dataset_url": "http://10.0.0.1/x.csv"}, "10.0.0.1"),
        ({"dataset_id": None, "dataset_url": "http://[::1]:6379/"}, "::1"),
        ({"notify": [{"channel": "sms", "target": "x"}]}, "channel"),
        # Webhook targets: the dataset URLs' policy (the e2e allowlist opens 127.0.0.0/8 only).
        ({"webhook_url": "http://169.254.169.254/latest/meta-data/"}, "webhook_url host '169.254.169.254'"),
        (
            {
                "notify": [
                    {"channel": "email", "target": "a@example.com"},
                    {"channel": "webhook", "target": "http://[::ffff:10.0.0.1]/"},
                ]
            },
            "notify[1].target host '::ffff:10.0.0.1' resolves to",
        ),
        ({"notify": [{"channel": "webhook", "target": "http://[fd00::1]:8080/x"}]}, "PYNOMALY_WEBHOOK_URL_ALLOWLIST"),
        ({"priority": "urgent"}, "priority"),
    ]
    for change, why in cases:
        body = {k: v for k, v in {**base, **change}.items() if v is not None}
        response = http.post("/v1/schedules", json=body)
        assert response.status_code == 422, (change, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert why in response.json()["detail"], (change, response.json())
    assert http.get("/v1/schedules").json()["total"] == before
    assert system_redis.zcard(BEAT_KEY_PREFIX + ":schedule") == entries_before
    assert http.get("/v1/schedules/sch_missing").status_code == 404
    assert http.post("/v1/schedules/sch_missing/pause").status_code == 404


def test_interval_schedule_runs_pauses_resumes_and_is_deleted(
    http: httpx.Client,
    dataset: dict[str, Any],
    local_system,
    system_redis,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    notify = [{"channel": "email", "target": "ops@example.com", "on": "failed"}]
    created = http.post(
        "/v1/schedules",
        json={
            "name": "every-2s",
            "interval_seconds": INTERVAL,
            "dataset_id": dataset["id"],
            "detector": "knn",
            "steps": ["detect"],
            "priority": "high",
            "notify": notify,
        },
    )
    assert created.status_code == 201, created.text
    schedule = created.json()
    sid = schedule["id"]
    assert schedule["next_run_at"] and not schedule["paused"] and schedule["notify"] == notify
    # The dataset is in use: it cannot be deleted under the schedule.
    assert http.delete(f"/v1/datasets/{dataset['id']}").status_code == 409

    # At least two runs, each an ordinary job linked to the schedule, complete.
    done = wait_for(lambda: len(c := completed(http, sid)) >= 2 and c, 90, what="two completed runs")
    for job in done:
        assert job["schedule_id"] == sid and job["priority"] == "high" and job["steps"] == schedule["steps"]
        assert job["notify"] == notify  # the schedule's notification targets go into every run
        assert job["dataset"]["rows"] == 41 and job["anomaly_count"] >= 1
    shown = http.get(f"/v1/schedules/{sid}").json()
    assert shown["run_count"] >= 2 and shown["last_job_id"] and shown["next_run_at"]
    assert {r["job_id"] for r in shown["last_runs"]} >= {j["id"] for j in done}

    # Pause: no new runs (one already in flight may still land, so count after it settles).
    paused = http.post(f"/v1/schedules/{sid}/pause").json()
    assert paused["paused"] and paused["next_run_at"] is None
    time.sleep(1.5)
    count = len(runs(http, sid))
    time.sleep(3 * INTERVAL)
    assert len(runs(http, sid)) == count, "a paused schedule kept running"

    # Resume: runs again.
    resumed = http.post(f"/v1/schedules/{sid}/resume").json()
    assert not resumed["paused"] and resumed["next_run_at"]
    wait_for(lambda: len(completed(http, sid)) >= count + 2, 60, what="two runs after resume")

    # Two beats: a second `pynomaly beat` next to the system's own waits on the lock; still one job per tick.
    settings = local_system.settings
    env = child_env(settings, PYNOMALY_HEARTBEAT_DIR=str(tmp_path / "beat2"))
    log = tmp_path / "beat2.log"
    proc, record = spawn("second-beat", pynomaly_argv("beat"), log, env=env)
    try:
        wait_for(lambda: (tmp_path / "beat2" / "heartbeat").exists(), 30, what="the second beat's heartbeat")
        start = time.time()
        window = 5 * INTERVAL
        time.sleep(window)
        assert proc.poll() is None, f"the second beat exited:\n{log_tail(log)}"
        assert system_redis.exists(BEAT_LOCK_KEY), "no beat holds the lock"
        in_window = [j for j in runs(http, sid) if _ts(j) >= start]
        assert 2 <= len(in_window) <= window / INTERVAL + 1, [j["created_at"] for j in in_window]
        gaps = [b - a for a, b in zip(map(_ts, in_window), map(_ts, in_window[1:]), strict=False)]
        assert min(gaps) >= INTERVAL * 0.6, f"two runs of one tick: gaps {gaps}"
        assert "Acquired lock" not in log.read_text(), "the second beat took the lock while the first held it"
    finally:
        stop_process(record, grace=10, proc=proc)

    # Run now: an ordinary job, at once.
    now = http.post(f"/v1/schedules/{sid}/run")
    assert now.status_code == 202, now.text
    job_id = now.json()["job_id"]
    wait_for(lambda: http.get(f"/v1/jobs/{job_id}").json()["status"] == "completed", 60, what="the run-now job")

    # Delete: gone, its beat entry too, and no more runs; its past jobs stay.
    assert http.delete(f"/v1/schedules/{sid}").status_code == 204
    assert http.get(f"/v1/schedules/{sid}").status_code == 404
    assert not system_redis.exists(BEAT_KEY_PREFIX + entry_name(sid))
    time.sleep(1.5)
    count = len(runs(http, sid))
    time.sleep(2 * INTERVAL)
    assert len(runs(http, sid)) == count and count > 0


@contextlib.contextmanager
def csv_server() -> Iterator[str]:
    class Handler(QuietHandler):
        def do_GET(self) -> None:
            body = CSV.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/csv")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serving(Handler) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}/data.csv"


def test_url_source_is_fetched_at_run_time(http: httpx.Client) -> None:
    with csv_server() as url:
        created = http.post(
            "/v1/schedules",
            json={"cron": "0 0 1 1 *", "dataset_url": url, "detector": "ecod", "steps": ["detect"], "name": "yearly"},
        )
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        try:
            assert created.json()["next_run_at"].startswith(str(datetime.now().year + 1))
            job_id = http.post(f"/v1/schedules/{sid}/run").json()["job_id"]
            job = wait_for(
                lambda: (j := http.get(f"/v1/jobs/{job_id}").json())["status"] in ("completed", "failed") and j,
                60,
                what="the URL run",
            )
            assert job["status"] == "completed", job["error"]
            assert job["dataset"]["rows"] == 41 and job["schedule_id"] == sid
        finally:
            assert http.delete(f"/v1/schedules/{sid}").status_code == 204


def test_maintenance_and_health_check_run_on_the_default_worker(local_system, system_redis) -> None:  # type: ignore[no-untyped-def]
    from pynomaly.messaging.celery_app import create_celery
    from pynomaly.storage.dead_letters import DeadLetter, DeadLetterStore
    from pynomaly.topology import Q_DEFAULT, S_DASHBOARD, TASK_HEALTH_CHECK, TASK_MAINTENANCE

    app = create_celery(local_system.settings)
    try:
        # The DLQ grew since the last check: one more dead letter than the remembered size.
        letters = DeadLetterStore(system_redis)
        letter = letters.add(
            DeadLetter(task=TASK_MAINTENANCE, args=[], kwargs={}, error="e2e", traceback="", attempts=1)
        )
        system_redis.set("pynomaly:alerts:dlq-size", letters.size() - 1)
        try:
            summary = app.send_task(TASK_HEALTH_CHECK, queue=Q_DEFAULT).get(timeout=60)
        finally:
            letters.remove(letter.id)
        assert {"jobs", "dlq_size", "queues", "components", "stale_components", "schedules"} <= set(summary)
        assert summary["components"] >= 1 and "dlq_growing" in summary["alerts"]
        kept = app.send_task(TASK_MAINTENANCE, queue=Q_DEFAULT).get(timeout=60)
        assert set(kept["streams_trimmed"]) == {"dashboard:stream", "notifications:stream", "health:stream"}
    finally:
        app.close()

    def bridged(kind: str) -> bool:
        return any(f.get("type") == kind for _, f in system_redis.xrevrange(S_DASHBOARD, count=300))

    wait_for(
        lambda: bridged("health_summary") and bridged("system_alert"), 60, what="summary and alert on the dashboard"
    )


def test_creating_a_schedule_is_audited(http: httpx.Client, dataset: dict[str, Any]) -> None:
    # The record's dataset field was once named source=, which collided with the event envelope's own
    # source argument: the audit record was lost with a logged TypeError.
    body = {"interval_seconds": 3600, "dataset_id": dataset["id"], "detector": "ecod", "paused": True}
    sid = http.post("/v1/schedules", json=body).json()["id"]
    try:
        records = wait_for(
            lambda: http.get("/v1/audit", params={"subject": sid, "action": "schedule.create"}).json()["items"],
            60,
            what="the schedule.create audit record",
        )
        assert records[0]["data"]["dataset"] == f"dataset {dataset['id']}", records
    finally:
        assert http.delete(f"/v1/schedules/{sid}").status_code == 204
