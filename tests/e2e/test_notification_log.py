"""A job's notification outcomes through the real system: `pynomaly submit --notify` (the CLI against
the session's ``local_system`` API), deliveries to a real HTTP receiver, then
``GET /v1/jobs/{id}/notifications`` and ``pynomaly notifications ID`` read what the ``notifiers``
stream group kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from pynomaly.cli import main
from tests.e2e.support import wait_for
from tests.support.notify import HttpReceiver, http_receiver

pytestmark = pytest.mark.e2e


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with http_receiver(fail_paths=("/broken",)) as server:
        yield server


@pytest.fixture(scope="module")
def http(local_system) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=local_system.api_url, headers={"X-API-Key": local_system.api_key}, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 rows near the origin and two far-away ones: about 10 % anomalies with ecod."""
    import numpy as np

    rows = np.random.default_rng(7).normal(0, 1, size=(40, 2)).round(4).tolist()
    rows[-2], rows[-1] = [9.0, 9.0], [30.0, -30.0]
    path = tmp_path_factory.mktemp("notify-cli") / "data.csv"
    path.write_text("a,b\n" + "".join(f"{a},{b}\n" for a, b in rows))
    return path


def cli(local_system: Any, *args: str) -> Result:  # type: ignore[no-untyped-def]
    return CliRunner().invoke(
        main, [*args, "--api-url", local_system.api_url, "--api-key", local_system.api_key], catch_exceptions=False
    )


def test_submit_notify_then_read_the_outcomes_per_target(
    local_system, http: httpx.Client, receiver: HttpReceiver, csv_file: Path
) -> None:  # type: ignore[no-untyped-def]
    ok, broken = receiver.url("/ok"), receiver.url("/broken")
    submitted = cli(
        local_system,
        "submit", str(csv_file), "--detector", "ecod", "--json",
        "--notify", f"webhook:{ok}",
        "--notify", f"webhook:{broken}:completed",
        "--notify", f"webhook:{receiver.url('/rate')}:anomaly_rate:0.9",
        "--notify", "email:cli-notify@example.com:failed",
    )  # fmt: skip
    assert submitted.exit_code == 0, submitted.output
    job_id = json.loads(submitted.output)["id"]
    job = http.get(f"/v1/jobs/{job_id}").json()
    assert job["notify"] == [
        {"channel": "webhook", "target": ok, "on": "completed"},
        {"channel": "webhook", "target": broken, "on": "completed"},
        {"channel": "webhook", "target": receiver.url("/rate"), "on": "anomaly_rate", "threshold": 0.9},
        {"channel": "email", "target": "cli-notify@example.com", "on": "failed"},
    ]
    assert job["links"]["notifications"] == f"/v1/jobs/{job_id}/notifications"

    # The good webhook is delivered once; the broken one retries, then is dead-lettered (3 attempts).
    def log() -> dict[str, Any]:
        response = http.get(f"/v1/jobs/{job_id}/notifications")
        assert response.status_code == 200, response.text
        return response.json()

    def settled() -> dict[str, Any] | None:
        page = log()
        return page if {t["status"] for t in page["targets"]} == {"delivered", "dead_lettered"} else None

    done = wait_for(settled, 90, what="delivered and dead_lettered outcomes")
    assert len(receiver.hits("/ok")) == 1 and len(receiver.hits("/broken")) == 3
    assert receiver.hits("/rate") == [], "anomaly_rate 0.9 does not fire at ~10 % anomalies"

    ids = [e["id"] for e in done["items"]]
    assert ids == sorted(ids, key=lambda i: tuple(int(p) for p in i.split("-"))), "sorted by stream id"
    assert done["total"] == len(done["items"])
    outcomes = [(e["index"], e["status"], e["attempt"]) for e in done["items"]]
    assert sorted(outcomes) == [
        (0, "delivered", 1),
        (0, "queued", 0),
        (1, "dead_lettered", 3),
        (1, "queued", 0),
        (1, "retrying", 1),
        (1, "retrying", 2),
    ]
    # Per target, each entry comes after the one before it.
    broken_statuses = [e["status"] for e in done["items"] if e["index"] == 1]
    assert broken_statuses == ["queued", "retrying", "retrying", "dead_lettered"]
    assert all(e["time"] and e["time"].endswith("Z") and e["outcome"] == "completed" for e in done["items"])
    by_index = {t["index"]: t for t in done["targets"]}
    assert by_index[0] == {**by_index[0], "channel": "webhook", "target": ok, "status": "delivered", "attempts": 1}
    assert by_index[1]["target"] == broken and by_index[1]["attempts"] == 3
    assert "503" in by_index[1]["detail"] and "dlq" in by_index[1]["detail"]
    assert set(by_index) == {0, 1}, "targets whose rule did not fire have no outcomes"

    # The CLI shows the same.
    shown = cli(local_system, "notifications", job_id, "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["items"] == done["items"]
    table = cli(local_system, "notifications", job_id)
    assert table.exit_code == 0, table.output
    for word in ("delivered", "dead_lettered", "retrying", "queued", "6 outcome(s)"):
        assert word in table.output, table.output


def test_unknown_job_is_404_and_the_route_needs_a_key(local_system, http: httpx.Client) -> None:  # type: ignore[no-untyped-def]
    missing = http.get("/v1/jobs/" + "0" * 32 + "/notifications")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("application/problem+json")
    anonymous = httpx.get(f"{local_system.api_url}/v1/jobs/{'0' * 32}/notifications", timeout=10)
    assert anonymous.status_code == 401
    shown = cli(local_system, "notifications", "0" * 32)
    assert shown.exit_code == 1 and "404" in shown.output


def test_a_job_without_targets_has_an_empty_log(local_system, http: httpx.Client, csv_file: Path) -> None:  # type: ignore[no-untyped-def]
    submitted = cli(local_system, "submit", str(csv_file), "--detector", "hbos", "--json")
    assert submitted.exit_code == 0, submitted.output
    job_id = json.loads(submitted.output)["id"]
    wait_for(lambda: http.get(f"/v1/jobs/{job_id}").json()["status"] == "completed", 90, what="the job")
    assert http.get(f"/v1/jobs/{job_id}/notifications").json() == {
        "job_id": job_id,
        "items": [],
        "targets": [],
        "total": 0,
    }
    assert f"job {job_id}: no notifications" in cli(local_system, "notifications", job_id).output


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("email", "has no target"),
        ("pager:ops@example.com", "channel must be one of"),
        ("email:not-an-address", "e-mail address"),
        ("email:ops@example.com:sometimes", "on must be one of"),
        ("email:ops@example.com:anomaly_rate", "threshold must be an anomaly rate"),
        ("email:ops@example.com:anomaly_rate:lots", "is not a number"),
        ("email:ops@example.com:completed:0.5", "only allowed with on=anomaly_rate"),
        ("webhook:ftp://hooks.example/x", "absolute http(s) URL"),
        ("webhook:https://hooks.example/x:sometimes", "unknown rule 'sometimes'"),
    ],
)
def test_a_malformed_notify_is_a_usage_error_and_nothing_is_submitted(
    local_system, http: httpx.Client, csv_file: Path, spec: str, message: str
) -> None:  # type: ignore[no-untyped-def]
    before = http.get("/v1/jobs", params={"limit": 1}).json()["total"]
    result = cli(local_system, "submit", str(csv_file), "--notify", spec)
    assert result.exit_code == 2, result.output
    assert "--notify" in result.output and message in result.output, result.output
    assert "CHANNEL:TARGET" in result.output or message in result.output
    assert http.get("/v1/jobs", params={"limit": 1}).json()["total"] == before


def test_schedules_create_takes_the_short_form_and_json(local_system, http: httpx.Client) -> None:  # type: ignore[no-untyped-def]
    dataset = http.post(
        "/v1/datasets", content=b"a,b\n1,2\n3,4\n5,6\n", headers={"Content-Type": "text/csv"}, params={"name": "notify"}
    ).json()
    created = cli(
        local_system,
        "schedules", "create", "--every", "3600", "--dataset", dataset["id"],
        "--detector", "ecod", "--paused", "--json",
        "--notify", "email:ops@example.com:anomaly_rate:0.05",
        "--notify", '{"channel": "webhook", "target": "http://127.0.0.1:9/x", "on": "failed"}',
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    schedule = json.loads(created.output)
    try:
        assert schedule["notify"] == [
            {"channel": "email", "target": "ops@example.com", "on": "anomaly_rate", "threshold": 0.05},
            {"channel": "webhook", "target": "http://127.0.0.1:9/x", "on": "failed"},
        ]
        bad = cli(local_system, "schedules", "create", "--every", "3600", "--dataset", dataset["id"], "--notify", "x")
        assert bad.exit_code == 2 and "--notify" in bad.output, bad.output
    finally:
        assert http.delete(f"/v1/schedules/{schedule['id']}").status_code == 204
        http.delete(f"/v1/datasets/{dataset['id']}")
