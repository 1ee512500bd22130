"""The HTTP API of the running system: health and metrics, detectors, submit (JSON rows, multipart CSV,
Idempotency-Key), listing, authentication everywhere, problem+json errors, and rejected requests that
leave no trace in Redis.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
import redis

from pynomaly.api import API_KEY_HEADER
from pynomaly.client import PynomalyClient
from pynomaly.storage.jobs import JOB_INDEX
from pynomaly.topology import TOPOLOGY
from tests.e2e.support import SENSORS_CSV, queue_lengths, small_rows, wait_for

pytestmark = pytest.mark.e2e

PUBLIC = {"/healthz", "/readyz", "/metrics"}
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def http(local_system) -> httpx.Client:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=local_system.api_url, timeout=60) as client:
        yield client


def _auth(local_system) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {API_KEY_HEADER: local_system.api_key}


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"], body
    return body


def test_health_readiness_and_metrics_need_no_key(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}

    # Kafka's check is the relay's report: it appears once a relay's producer has bootstrapped.
    def relay_reported() -> httpx.Response | None:
        response = http.get("/readyz")
        return (
            response if response.json()["checks"]["kafka"] != "unavailable: no relay is publishing the outbox" else None
        )

    ready = wait_for(relay_reported, timeout=60, what="a relay to report on Kafka in /readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"redis": "ok", "kafka": "ok"}
    text = http.get("/metrics").text
    for queue in TOPOLOGY.queues:
        for priority in ("critical", "high", "normal", "low"):
            assert f'pynomaly_queue_depth{{priority="{priority}",queue="{queue.name}"}}' in text
    for stream in TOPOLOGY.streams:
        assert f'pynomaly_stream_length{{stream="{stream.name}"}}' in text
    for name in (
        "pynomaly_dlq_size",
        "pynomaly_kafka_publish_seconds",
        "pynomaly_websocket_clients",
        "pynomaly_jobs_submitted_total",
        "pynomaly_tasks_total",
        "pynomaly_task_retries_total",
        "pynomaly_task_duration_seconds",
        "pynomaly_kafka_consumer_lag",
    ):
        assert re.search(rf"^# TYPE {name} ", text, re.MULTILINE), f"{name} missing from /metrics"


def test_detectors_list_parameter_schemas(api: PynomalyClient) -> None:
    detectors = {d["name"]: d for d in api.detectors()}
    assert set(detectors) >= {"iforest", "lof", "knn", "ecod", "copod", "hbos", "pca", "ocsvm"}
    trees = detectors["iforest"]["parameters"]["properties"]["n_estimators"]
    assert trees["type"] == "integer" and trees["default"] == 100 and trees["minimum"] == 1
    assert detectors["knn"]["parameters"]["properties"]["method"]["enum"] == ["largest", "mean", "median"]
    assert detectors["ecod"]["per_feature_contributions"] == "per_dimension_tail_probability"


def test_json_rows_with_idempotency_key_return_the_same_job(http: httpx.Client, local_system) -> None:  # type: ignore[no-untyped-def]
    headers = {**_auth(local_system), "Idempotency-Key": "e2e-idem-1"}
    body = {"rows": [{"a": r[0], "b": r[1]} for r in small_rows(30)], "detector": "copod", "priority": "low"}
    first = http.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == 202 and first.json()["created"] is True
    job_id = first.json()["id"]
    assert first.headers["location"] == f"/v1/jobs/{job_id}"
    again = http.post("/v1/jobs", json=body, headers=headers)
    assert again.status_code == 200 and again.json()["id"] == job_id and again.json()["created"] is False
    job = http.get(f"/v1/jobs/{job_id}", headers=_auth(local_system)).json()
    assert job["dataset"]["columns"] == ["a", "b"] and job["priority"] == "low" and job["detector"] == "copod"


def test_concurrent_submits_with_one_idempotency_key_make_one_job(
    http: httpx.Client, local_system, system_redis: redis.Redis
) -> None:  # type: ignore[no-untyped-def]
    from concurrent.futures import ThreadPoolExecutor

    headers = {**_auth(local_system), "Idempotency-Key": "e2e-idem-race"}
    body = {"rows": small_rows(30, seed=7), "detector": "hbos", "steps": ["detect"]}
    before = system_redis.zcard(JOB_INDEX)

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=local_system.api_url, timeout=60) as own:  # one connection each
            return own.post("/v1/jobs", json=body, headers=headers)

    with ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(pool.map(post, range(12)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(202) == 1 and set(codes) <= {200, 202, 409}, codes
    assert len({r.json()["id"] for r in responses if r.status_code != 409}) == 1
    assert system_redis.zcard(JOB_INDEX) == before + 1
    other = http.post("/v1/jobs", json={**body, "detector": "copod"}, headers=headers)
    assert "different request" in assert_problem(other, 422)["detail"]
    assert system_redis.zcard(JOB_INDEX) == before + 1


def test_listing_filters_by_status_and_detector_and_pages(api: PynomalyClient) -> None:
    ids = [api.submit_rows(small_rows(20, seed=i), "pca", steps=["detect"])["id"] for i in range(3)]
    for job_id in ids:
        assert api.wait(job_id, timeout=60)["status"] == "completed"
    page1 = api.jobs(detector="pca", status="completed", limit=2)
    page2 = api.jobs(detector="pca", status="completed", limit=2, offset=2)
    assert page1["total"] == page2["total"] >= 3 and len(page1["items"]) == 2
    assert [j["id"] for j in page1["items"]] == ids[::-1][:2], "newest first"
    assert ids[0] in {j["id"] for j in page2["items"]}
    for job in page1["items"] + page2["items"]:
        assert job["detector"] == "pca" and job["status"] == "completed"
    assert all(j["detector"] == "lof" for j in api.jobs(detector="lof", limit=500)["items"])


def _authenticated_routes(http: httpx.Client) -> list[tuple[str, str]]:
    schema = http.get("/openapi.json").json()
    routes = []
    for path, methods in schema["paths"].items():
        if path in PUBLIC:
            continue
        concrete = re.sub(r"\{[^}]+\}", "does-not-exist", path)
        routes.extend((method.upper(), concrete) for method in methods)
    return routes


def test_every_non_health_endpoint_requires_a_valid_key(http: httpx.Client) -> None:
    routes = _authenticated_routes(http)
    assert ("POST", "/v1/jobs") in routes and ("DELETE", "/v1/dlq") in routes and ("GET", "/v1/audit") in routes
    assert len(routes) >= 14
    for method, path in routes:
        for headers in ({}, {API_KEY_HEADER: "wrong"}, {"Authorization": "Bearer wrong"}):
            response = http.request(method, path, headers=headers)
            body = assert_problem(response, 401)
            assert "API key" in body["detail"], (method, path)
            assert response.headers["www-authenticate"].startswith("ApiKey")
    for public in PUBLIC:
        assert http.get(public).status_code == 200


def test_errors_are_problem_json(http: httpx.Client, local_system) -> None:  # type: ignore[no-untyped-def]
    auth = _auth(local_system)
    missing = assert_problem(http.get("/v1/jobs/no-such-job", headers=auth), 404)
    assert "no-such-job" in missing["detail"]
    assert_problem(http.get("/v1/dlq/no-such-letter", headers=auth), 404)
    assert_problem(http.post("/v1/jobs", content=b"a,b\n1,2\n", headers={**auth, "Content-Type": "text/csv"}), 415)
    invalid = assert_problem(http.post("/v1/jobs", json={"rows": [[1]], "detector": "nope"}, headers=auth), 422)
    assert "choose one of" in invalid["detail"]
    assert_problem(http.get("/v1/jobs", params={"limit": 0}, headers=auth), 422)
    assert_problem(http.get("/v1/jobs/x/report", params={"format": "pdf"}, headers=auth), 422)
    # 409: a job that has not finished has no result; a finished one cannot be cancelled.
    job_id = http.post("/v1/jobs", json={"rows": small_rows(20), "detector": "ecod"}, headers=auth).json()["id"]
    early = http.get(f"/v1/jobs/{job_id}/result", headers=auth)
    if early.status_code != 200:  # it may already be done on a fast machine
        assert_problem(early, 409)
    wait_for(lambda: http.get(f"/v1/jobs/{job_id}", headers=auth).json()["status"] == "completed", 60)
    assert "already completed" in assert_problem(http.delete(f"/v1/jobs/{job_id}", headers=auth), 409)["detail"]
    assert_problem(http.post(f"/v1/jobs/{job_id}/retry", headers=auth), 409)


JOB_QUEUES = {t.queue for t in TOPOLOGY.tasks if t.queue != "default"}


def _snapshot(client: redis.Redis) -> dict[str, object]:
    """Jobs, datasets and every job queue (the default queue also carries periodic maintenance)."""
    return {
        "jobs": int(client.zcard(JOB_INDEX)),
        "job records": sum(1 for _ in client.scan_iter(match="pynomaly:job:*", count=1000)),
        "datasets": sum(1 for _ in client.scan_iter(match="pynomaly:dataset:*", count=1000)),
        "queues": {k: v for k, v in queue_lengths(client).items() if k.split(":")[0] in JOB_QUEUES},
    }


def test_rejected_requests_store_and_enqueue_nothing(
    http: httpx.Client, local_system, system_redis: redis.Redis
) -> None:  # type: ignore[no-untyped-def]
    auth = _auth(local_system)
    wait_for(lambda: not any(_snapshot(system_redis)["queues"].values()), 60, what="idle job queues")
    before = _snapshot(system_redis)
    limits = local_system.settings

    def csv(data: bytes, **form: str) -> httpx.Response:
        return http.post("/v1/jobs", files={"file": ("d.csv", data, "text/csv")}, data=form, headers=auth)

    def json_text(fields: str) -> httpx.Response:
        body = ('{"detector": "ecod", ' + fields + "}").encode()
        return http.post("/v1/jobs", content=body, headers={**auth, "Content-Type": "application/json"})

    def rows(**body: Any) -> httpx.Response:
        return http.post("/v1/jobs", json={"rows": small_rows(20), "detector": "ecod", **body}, headers=auth)

    too_many = b"a\n" + b"1\n" * (limits.max_rows + 1)
    too_wide = (",".join(f"c{i}" for i in range(limits.max_columns + 1)) + "\n").encode() * 2
    rejected = {
        "bad csv": csv(b"a,b\n1,2,3\n", detector="ecod"),
        "not a number": csv(b"a,b\n1,x\n", detector="ecod"),
        "too many rows": csv(too_many, detector="ecod"),
        "too many columns": csv(too_wide, detector="ecod"),
        "too large": csv(b"a\n" + b"1.0\n" * (limits.max_upload_bytes // 4 + 10), detector="ecod"),
        "csv unknown detector": csv(SENSORS_CSV.read_bytes(), detector="autoencoder"),
        "unknown detector": rows(detector="autoencoder"),
        "contamination 0.7": rows(contamination=0.7),
        "unknown parameter": rows(params={"depth": 3}),
        "bad parameter": rows(detector="iforest", params={"n_estimators": 0}),
        "bad priority": rows(priority="urgent"),
        "bad preprocessing": rows(preprocessing={"missing": "zero"}),
        "notify without webhook": rows(steps=["notify"]),
        "bad webhook": rows(webhook_url="ftp://example"),
        "webhook to cloud metadata": rows(webhook_url="http://169.254.169.254/latest/meta-data/"),
        "webhook to a private address": rows(notify=[{"channel": "webhook", "target": "https://10.1.2.3/hook"}]),
        "webhook to IPv6 loopback": rows(notify=[{"channel": "webhook", "target": "http://[::1]:8000/v1/dlq"}]),
        "webhook to IPv4-mapped loopback": rows(webhook_url="http://[::ffff:127.0.0.1]:8000/"),
        "webhook to unspecified": csv(b"a\n1\n2\n", detector="ecod", webhook_url="http://0.0.0.0:6379/"),
        "unknown field": rows(colour="red"),
        "not json": http.post("/v1/jobs", content=b"{", headers={**auth, "Content-Type": "application/json"}),
    }
    # Data the job would only fail on: NaN/Infinity tokens (not JSON, whatever the missing policy), and
    # missing cells (null, an empty CSV cell) when nothing imputes them.  Each 422 names the first cell.
    missing = small_rows(20)
    missing[3][1] = None
    named = {
        "NaN token": (json_text('"rows": [[1, 2], [3, NaN], [5, 6]]'), "row 1, column 'x1': nan is not a JSON number"),
        "Infinity token": (
            json_text('"rows": [{"a": 1}, {"a": -Infinity}], "preprocessing": {"missing": "drop_rows"}'),
            "row 1, column 'a': -inf is not a JSON number",
        ),
        "null with reject": (rows(rows=missing, preprocessing={"missing": "reject"}), "first at row 3, column 'x1'"),
        "null without preprocess": (rows(rows=missing, steps=["detect"]), "first at row 3, column 'x1'"),
        "empty csv cell with reject": (
            csv(b"a,b\n1,2\n3,\n4,5\n", detector="ecod", preprocessing='{"missing": "reject"}'),
            "first at row 1, column 'b'",
        ),
    }
    for name, (response, detail) in named.items():
        assert detail in assert_problem(response, 422)["detail"], name
    for name, response in rejected.items():
        assert response.status_code == 422, (name, response.status_code, response.text)
        assert_problem(response, 422)
    assert _snapshot(system_redis) == before, "a rejected request stored or enqueued something"

    # A missing cell is imputed by the default policy, as an empty CSV cell is.
    accepted = rows(rows=missing)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    job = wait_for(
        lambda: (j := http.get(f"/v1/jobs/{job_id}", headers=auth).json())["status"] in ("completed", "failed") and j,
        60,
    )
    assert job["status"] == "completed", job
