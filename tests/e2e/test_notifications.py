"""Notifications through the real system: the session's ``local_system`` (API, a worker per pool,
consumers on real Redis and Kafka) sends e-mail to a real SMTP server (aiosmtpd, ``smtp_sink``) and
webhooks to a real HTTP server; the tests read what arrived.

Acceptance (issue 5): a job with an e-mail rule delivers one message with the top anomalies, and a
webhook target that fails three times lands in the DLQ while the e-mail still arrives.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from pynomaly.client import ApiError, PynomalyClient
from pynomaly.storage.notification_log import NOTIFICATION_LOG
from pynomaly.topology import S_NOTIFICATIONS, TASK_DELIVER, TOPOLOGY
from pynomaly.usecases.pipeline import SIGNATURE_HEADER
from tests.conftest import E2E_WEBHOOK_SECRET
from tests.e2e.support import wait_for
from tests.support.notify import HttpReceiver, SmtpSink, http_receiver

pytestmark = pytest.mark.e2e


def rows(n: int = 40) -> list[list[float]]:
    """Mostly near the origin, with two far-away last rows: the known top anomalies."""
    import numpy as np

    data = np.random.default_rng(5).normal(0, 1, size=(n, 3)).round(4).tolist()
    data[-2] = [9.0, 9.0, 0.0]
    data[-1] = [30.0, -30.0, 0.5]
    return data


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with http_receiver(fail_paths=("/broken",)) as server:
        yield server


def stream_entries(store: redis.Redis, job_id: str) -> list[dict[str, str]]:
    return [f for _, f in store.xrange(S_NOTIFICATIONS) if f.get("job_id") == job_id]


def signed(headers: dict[str, str], body: bytes) -> bool:
    expected = "sha256=" + hmac.new(E2E_WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers.get(SIGNATURE_HEADER.lower(), ""), expected)


def test_email_arrives_with_top_anomalies_while_a_failing_webhook_is_dead_lettered(
    api: PynomalyClient, smtp_sink: SmtpSink, receiver: HttpReceiver, system_redis: redis.Redis, local_system
) -> None:  # type: ignore[no-untyped-def]
    settings = local_system.settings
    broken = receiver.url("/broken")
    job_id = api.submit_rows(
        rows(),
        "ecod",
        columns=["temp", "vibration", "load"],
        notify=[
            {"channel": "webhook", "target": broken, "on": "completed"},
            {"channel": "email", "target": "ops@example.com", "on": "completed"},
        ],
    )["id"]

    # The job completes on its own; the e-mail arrives although the webhook keeps failing.
    job = api.wait(job_id, timeout=90)
    assert job["status"] == "completed" and job["steps"] == ["preprocess", "detect", "report", "notify"]
    (message,) = wait_for(lambda: smtp_sink.to("ops@example.com"), 60, what="the e-mail")
    result = api.result(job_id)
    top = result["top_anomalies"][:5]
    assert {a["row"] for a in top[:2]} == {38, 39}

    assert message["From"] == "pynomaly@e2e.test"
    assert message["Subject"] == (
        f"[pynomaly] job {job_id[:8]} completed: {result['anomaly_count']} anomalies ({result['anomaly_rate']:.1%})"
    )
    plain = message.get_body(("plain",)).get_content()
    page = message.get_body(("html",)).get_content()
    for anomaly in top:
        assert f"row {anomaly['row']:>6}  score {anomaly['score']:.4f}" in plain
        assert f"<td>{anomaly['row']}</td><td>{anomaly['score']:.4f}</td>" in page
    report_url = f"{settings.public_url}/v1/jobs/{job_id}/report?format=html"
    assert f"Report: {report_url}" in plain and f'href="{report_url}"' in page
    assert api._http.get(report_url.removeprefix(settings.public_url)).text.startswith("<!doctype html>")

    # The webhook: every attempt signed, then one dead letter of its own delivery task.
    def letter() -> dict[str, Any] | None:
        items = api.dead_letters(limit=500)["items"]
        return next((i for i in items if i["job_id"] == job_id and i["task"] == TASK_DELIVER), None)

    dead = wait_for(letter, 60, what="the webhook's dead letter")
    attempts = settings.max_retries + 1
    assert attempts == 3
    hits = receiver.hits("/broken")
    assert len(hits) == attempts == dead["attempts"]
    assert all(signed(h, b) for h, b in hits)
    assert {json.loads(b)["job_id"] for _, b in hits} == {job_id}
    assert dead["args"] == [job_id, 0, "completed"] and dead["queue"] == TOPOLOGY.task(TASK_DELIVER).queue
    assert "503" in dead["error"] and "ConnectionError" in dead["traceback"]
    assert len(smtp_sink.to("ops@example.com")) == 1, "the e-mail was sent once, not once per webhook retry"
    assert api.job(job_id)["status"] == "completed", "a dead notification leaves the job as it is"

    # Every outcome is on notifications:stream, and the notifiers group keeps it per job.
    def outcomes() -> list[tuple[str, str, str]]:
        return [(e["channel"], e["status"], e["attempt"]) for e in stream_entries(system_redis, job_id)]

    wait_for(lambda: ("webhook", "dead_lettered", "3") in outcomes(), 30, what="the dead_lettered entry")
    assert sorted(outcomes()) == sorted(
        [
            ("webhook", "queued", "0"),
            ("email", "queued", "0"),
            ("email", "delivered", "1"),
            ("webhook", "retrying", "1"),
            ("webhook", "retrying", "2"),
            ("webhook", "dead_lettered", "3"),
        ]
    )
    log_key = f"{NOTIFICATION_LOG}{job_id}"
    kept = wait_for(
        lambda: system_redis.hlen(log_key) >= 6 and system_redis.hvals(log_key), 30, what="the notifiers group"
    )
    assert {json.loads(v).get("status") for v in kept} >= {"delivered", "dead_lettered"}

    # Replaying the dead letter delivers it once the receiver works, and leaves the job completed.
    receiver.failing.clear()
    api.replay(dead["id"])
    wait_for(lambda: ("webhook", "delivered", "1") in outcomes(), 60, what="the replayed delivery")
    assert api.job(job_id)["status"] == "completed"


def test_rules_on_failure_and_anomaly_rate(
    api: PynomalyClient, smtp_sink: SmtpSink, receiver: HttpReceiver, system_redis: redis.Redis
) -> None:
    # A job that fails for good (a column with nothing to impute from; missing values with
    # missing=reject are refused at submit now) tells only its 'failed' targets.
    bad = rows(30)
    for row in bad:
        row[1] = None  # type: ignore[call-overload]
    failing = api.submit_rows(
        bad,
        "hbos",
        notify=[
            {"channel": "email", "target": "failed@example.com", "on": "failed"},
            {"channel": "email", "target": "done@example.com", "on": "completed"},
        ],
    )["id"]
    # A completed job with about 10% anomalies: 0.01 fires, 0.9 does not; a plain webhook on completion.
    rated = api.submit_rows(
        rows(),
        "ecod",
        notify=[
            {"channel": "email", "target": "low@example.com", "on": "anomaly_rate", "threshold": 0.01},
            {"channel": "email", "target": "high@example.com", "on": "anomaly_rate", "threshold": 0.9},
            {"channel": "webhook", "target": receiver.url("/ok")},
        ],
    )["id"]

    (failure,) = wait_for(lambda: smtp_sink.to("failed@example.com"), 90, what="the failure e-mail")
    assert api.job(failing)["status"] == "failed"
    assert failure["Subject"] == f"[pynomaly] job {failing[:8]} failed"
    assert "no finite value to impute from" in failure.get_body(("plain",)).get_content().lower()

    wait_for(lambda: smtp_sink.to("low@example.com"), 90, what="the anomaly-rate e-mail")
    ((headers, body),) = wait_for(lambda: receiver.hits("/ok"), 60, what="the webhook")
    assert signed(headers, body)
    payload = json.loads(body)
    assert payload["job_id"] == rated and payload["status"] == "completed" and payload["top_anomalies"]

    # What was queued is decided in one step per outcome: the others were never enqueued.
    def queued(job_id: str) -> set[str]:
        return {e["target"] for e in stream_entries(system_redis, job_id) if e["status"] == "queued"}

    assert queued(failing) == {"failed@example.com"}
    assert queued(rated) == {"low@example.com", receiver.url("/ok")}
    assert not smtp_sink.to("done@example.com") and not smtp_sink.to("high@example.com")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({"channel": "webhook", "target": "ftp://example.com/x"}, "absolute http(s) URL"),
        ({"channel": "email", "target": "not-an-address"}, "e-mail address"),
        ({"channel": "pager", "target": "x"}, "notify.0.channel"),
        ({"channel": "email", "target": "a@example.com", "on": "sometimes"}, "notify.0.on"),
        ({"channel": "email", "target": "a@example.com", "on": "anomaly_rate"}, "threshold"),
    ],
)
def test_bad_targets_are_422_and_nothing_is_queued(
    api: PynomalyClient, local_system, target: dict[str, Any], message: str
) -> None:  # type: ignore[no-untyped-def]
    before = api.jobs(limit=1)["total"]
    with pytest.raises(ApiError) as info:
        api.submit_rows(rows(10), "ecod", notify=[target])
    assert info.value.status == 422 and message in str(info.value)
    assert api.jobs(limit=1)["total"] == before


def test_multipart_takes_notify_as_json(api: PynomalyClient, smtp_sink: SmtpSink, local_system) -> None:  # type: ignore[no-untyped-def]
    body = "a,b\n" + "\n".join(f"{r[0]},{r[1]}" for r in rows(30)) + "\n"
    notify = json.dumps([{"channel": "email", "target": "multipart@example.com"}])
    response = api._http.post(
        "/v1/jobs",
        files={"file": ("data.csv", body, "text/csv")},
        data={"detector": "ecod", "notify": notify},
    )
    assert response.status_code == 202, response.text
    wait_for(lambda: smtp_sink.to("multipart@example.com"), 90, what="the multipart job's e-mail")
    bad = api._http.post(
        "/v1/jobs", files={"file": ("data.csv", body, "text/csv")}, data={"detector": "ecod", "notify": '{"x": 1}'}
    )
    assert bad.status_code == 422 and "notify must be a JSON array" in bad.text
