"""Jobs through the real system: every detector, the ordered chain and its Kafka events, reports,
retry -> dead-letter queue -> replay, cancel, and every Celery queue in use.

One ``local_system`` (API, a worker per pool, bridge and audit consumers) serves the whole session.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import numpy as np
import pytest

from pynomaly.client import ApiError, PynomalyClient
from pynomaly.messaging.celery_app import create_celery
from pynomaly.messaging.events import EventEnvelope
from pynomaly.topology import ANOMALY_EVENTS, T_ANOMALY, T_JOB, TASK_MAINTENANCE, TOPOLOGY
from pynomaly.usecases.pipeline import SIGNATURE_HEADER
from tests.e2e.support import SENSORS_CSV, SENSORS_PLANTED, WebhookReceiver, read_topic, small_rows, wait_for

pytestmark = pytest.mark.e2e

DETECTORS = ("iforest", "lof", "knn", "ecod", "copod", "hbos", "pca", "ocsvm")


def _events(local_system, job_id: str, until_type: str, topic: str = T_JOB) -> list[Any]:  # type: ignore[no-untyped-def]
    """The job's records on ``topic`` (key = job id), read until one of type ``until_type`` arrived."""
    return read_topic(
        local_system.settings,
        topic,
        until=lambda records: any(EventEnvelope.decode(r.value).type == until_type for r in records),
        key=job_id.encode(),
    )


def test_each_detector_finds_the_planted_anomalies_of_an_uploaded_csv(api: PynomalyClient) -> None:
    submitted = {name: api.submit_csv(SENSORS_CSV, name) for name in DETECTORS}
    for accepted in submitted.values():
        assert accepted["status"] == "queued" and accepted["created"] is True
        assert accepted["links"]["result"] == f"/v1/jobs/{accepted['id']}/result"
    recalls = {}
    for name, accepted in submitted.items():
        job = api.wait(accepted["id"], timeout=180)
        assert job["status"] == "completed", (name, job["error"])
        assert job["steps"] == ["preprocess", "detect"] and job["progress"] == 1.0
        assert job["started_at"] <= job["finished_at"] and job["dataset"]["rows"] == 600
        result = api.result(accepted["id"])
        assert len(result["scores"]) == len(result["labels"]) == 600
        assert result["anomaly_count"] == sum(result["labels"]) == job["anomaly_count"]
        flagged = {i for i, label in enumerate(result["labels"]) if label}
        recalls[name] = len(flagged & SENSORS_PLANTED) / len(SENSORS_PLANTED)
        top = result["top_anomalies"][0]
        assert set(top["contributions"]) == {"temperature", "pressure", "vibration", "current"}
        assert top["score"] >= result["threshold"]
    assert recalls["iforest"] >= 0.9 and recalls["ecod"] >= 0.9, recalls
    assert all(r >= 0.9 for r in recalls.values()), recalls


def test_chain_events_arrive_in_order_in_one_partition_and_reports_render(api: PynomalyClient, local_system) -> None:  # type: ignore[no-untyped-def]
    rows = small_rows(60)
    accepted = api.submit_rows(
        rows,
        "iforest",
        columns=["a", "b"],
        priority="high",
        steps=["preprocess", "detect", "report"],
        preprocessing={"missing": "impute_mean", "scaling": "robust"},
        contamination=0.05,
    )
    job = api.wait(accepted["id"], timeout=90)
    assert job["status"] == "completed", job["error"]
    assert job["steps"] == ["preprocess", "detect", "report"] and job["priority"] == "high"
    assert job["report_location"] == f"/v1/jobs/{job['id']}/report"
    assert 59 in {a["row"] for a in api.result(job["id"])["top_anomalies"]}

    records = _events(local_system, job["id"], "job_completed")
    assert len({r.partition for r in records}) == 1, "one job's events share one partition"
    events = [EventEnvelope.decode(r.value) for r in records]
    for event in events:
        assert event.subject == job["id"] and event.schema_version == 1 and event.id and event.source and event.time
    labels = [e.type if e.type != "job_step_completed" else f"step:{e.data['step']}" for e in events]
    milestones = [x for x in labels if x != "job_progress"]
    assert milestones == [
        "job_submitted",
        "job_started",
        "step:preprocess",
        "step:detect",
        "step:report",
        "job_completed",
    ], labels
    progress = [e.data["progress"] for e in events if e.type == "job_progress"]
    assert progress and progress == sorted(progress), "progress never goes back"
    assert [r.offset for r in records] == sorted(r.offset for r in records)

    anomaly = _events(local_system, job["id"], ANOMALY_EVENTS[0], topic=T_ANOMALY)
    detected = EventEnvelope.decode(anomaly[0].value)
    assert detected.data["anomaly_count"] == job["anomaly_count"] and detected.data["scores"]

    as_json = api._call("GET", f"/v1/jobs/{job['id']}/report", params={"format": "json"})
    assert as_json["job"]["id"] == job["id"] and as_json["result"]["anomaly_count"] == job["anomaly_count"]
    as_csv = api.report(job["id"], "csv").splitlines()
    assert as_csv[0] == "row,score,is_anomaly" and len(as_csv) == 61
    page = api.report(job["id"], "html")
    assert page.startswith("<!doctype html>") and '<svg id="histogram"' in page and "<rect" in page


def _signature_ok(local_system, headers: dict[str, str], body: bytes) -> bool:  # type: ignore[no-untyped-def]
    secret = local_system.settings.webhook_secret
    if not secret:  # the session's system signs nothing without a secret (signing: test_worker_priorities)
        return SIGNATURE_HEADER.lower() not in headers
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return headers.get(SIGNATURE_HEADER.lower()) == expected


def test_webhook_failures_retry_with_backoff_then_dead_letter_then_replay_completes(
    api: PynomalyClient, webhook_receiver: WebhookReceiver, local_system
) -> None:  # type: ignore[no-untyped-def]
    settings = local_system.settings
    attempts = settings.max_retries + 1
    webhook_receiver.status = 500
    job_id = api.submit_rows(small_rows(30), "ecod", webhook_url=webhook_receiver.url)["id"]

    def letter_of(job: str) -> dict[str, Any] | None:
        return next((item for item in api.dead_letters()["items"] if item["job_id"] == job), None)

    letter = wait_for(lambda: letter_of(job_id), 90, what="the webhook's dead letter")
    job = api.job(job_id)
    assert job["steps"][-1] == "notify"
    assert len(webhook_receiver.requests) == attempts
    assert all(_signature_ok(local_system, h, b) for h, b in webhook_receiver.requests)
    assert {b["job_id"] for b in webhook_receiver.bodies()} == {job_id}
    gaps = np.diff(webhook_receiver.times)
    for n, gap in enumerate(gaps):  # exponential backoff with jitter: at least half of base * 2**n
        assert gap >= min(settings.retry_backoff_max, settings.retry_backoff_base * 2**n) / 2, gaps

    assert letter == api.dead_letter(letter["id"])
    assert letter["queue"] == TOPOLOGY.task(letter["task"]).queue == "notifications"
    assert job_id in letter["args"]
    assert letter["attempts"] == attempts and "500" in letter["error"]
    assert "Traceback" in letter["traceback"] and "ConnectionError" in letter["traceback"]

    webhook_receiver.status = 200
    replayed = api.replay(letter["id"])
    assert replayed["job_id"] == job_id and replayed["task"] == letter["task"]
    wait_for(lambda: len(webhook_receiver.requests) == attempts + 1, 60, what="the replayed delivery")
    done = api.wait(job_id, timeout=60)
    assert done["status"] == "completed" and done["error"] is None
    with pytest.raises(ApiError) as missing:
        api.dead_letter(letter["id"])
    assert missing.value.status == 404

    # Purge: fail another delivery into the DLQ, then empty it.
    webhook_receiver.status = 503
    second = api.submit_rows(small_rows(30), "hbos", webhook_url=webhook_receiver.url)["id"]
    wait_for(lambda: letter_of(second), 90, what="the second dead letter")
    assert api.purge()["purged"] >= 1
    assert api.dead_letters() == {"items": [], "total": 0, "offset": 0, "limit": 50}

    def audited(action: str) -> list[dict[str, Any]]:
        return api._call("GET", "/v1/audit", params={"action": action})["items"]

    replays = wait_for(lambda: audited("dlq.replay"), 30, what="the dlq.replay audit record")
    assert any(r["subject"] == job_id and r["data"]["actor"].startswith("key:") for r in replays)
    wait_for(lambda: audited("dlq.purge"), 30, what="the dlq.purge audit record")
    submitted = api._call("GET", "/v1/audit", params={"subject": job_id})["items"]
    assert "job.submitted" in {r["data"]["action"] for r in submitted}


def _slow_rows(n: int = 10_000, width: int = 8) -> list[list[float]]:
    return np.random.default_rng(7).normal(size=(n, width)).round(3).tolist()


def test_cancel_a_queued_and_a_running_job_then_retry(api: PynomalyClient, local_system) -> None:  # type: ignore[no-untyped-def]
    # One detection process: the OCSVM fit keeps it busy, so a second detection job stays queued.
    slow = api.submit_rows(_slow_rows(), "ocsvm", steps=["detect"], priority="critical")["id"]
    wait_for(lambda: api.job(slow)["status"] == "running", 60, interval=0.1, what="the slow job to run")
    queued = api.submit_rows(small_rows(30), "knn", steps=["detect"])["id"]
    assert api.job(queued)["status"] == "queued"
    running = api.jobs(status="running", detector="ocsvm")
    assert slow in {j["id"] for j in running["items"]}

    cancelled = api.cancel(queued)
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
    asked = api.cancel(slow)
    assert asked["status"] == "running", "a running job stops at its next checkpoint, not at once"

    stopped = api.wait(slow, timeout=120)
    assert stopped["status"] == "cancelled" and stopped["result_location"] is None
    assert "cancelled" in stopped["message"]
    with pytest.raises(ApiError) as conflict:
        api.result(slow)
    assert conflict.value.status == 409
    with pytest.raises(ApiError) as twice:
        api.cancel(slow)
    assert twice.value.status == 409

    # The queued job's message reaches the worker, which must not run it.
    wait_for(lambda: _queues_empty(local_system), 30, what="the detection queue to drain")
    time.sleep(1.0)
    after = api.job(queued)
    assert after["status"] == "cancelled" and after["started_at"] is None
    types = [EventEnvelope.decode(r.value).type for r in _events(local_system, slow, "job_cancelled")]
    assert "job_completed" not in types

    again = api.retry(queued)
    assert again["status"] == "queued" and again["error"] is None
    done = api.wait(queued, timeout=60)
    assert done["status"] == "completed"
    with pytest.raises(ApiError) as not_failed:
        api.retry(queued)
    assert not_failed.value.status == 409


def _queues_empty(local_system) -> bool:  # type: ignore[no-untyped-def]
    import redis

    from tests.e2e.support import queue_lengths

    client = redis.Redis.from_url(local_system.settings.redis_url, decode_responses=True)
    try:
        return not any(queue_lengths(client).values())
    finally:
        client.close()


def test_every_queue_is_consumed_by_its_pool(local_system) -> None:  # type: ignore[no-untyped-def]
    # The maintenance task goes to the default queue through the application's own Celery app.
    celery = create_celery(local_system.settings)
    try:
        outcome = celery.send_task(TASK_MAINTENANCE).get(timeout=60)
    finally:
        celery.close()
    assert set(outcome["streams_trimmed"]) == {s.name for s in TOPOLOGY.streams} and outcome["jobs"] > 0

    # Every queue had a task run by the pool that consumes it (Celery logs each task it receives).
    logs = local_system.state_dir / "logs"
    ran = {
        queue: (logs / f"worker-{pool.name}.log").read_text(errors="replace")
        for pool in TOPOLOGY.worker_pools
        for queue in pool.queues
    }
    for queue in TOPOLOGY.queues:
        names = [t.name for t in TOPOLOGY.tasks if t.queue == queue.name]
        assert any(f"Task {name}[" in ran[queue.name] for name in names), f"nothing ran from {queue.name}"
