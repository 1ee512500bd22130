"""The ``pynomaly`` client CLI against the running ``local_system`` (``click.testing.CliRunner``).

Client commands reach the API through ``PYNOMALY_API_URL`` / ``PYNOMALY_API_KEY`` (or ``--api-url`` /
``--api-key``, or the local system's state directory).  Bad input exits non-zero with one clear
``Error:`` line.  ``topology``, ``settings`` and ``healthcheck`` need no running system.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result

from pynomaly.cli import main
from pynomaly.client import PynomalyClient
from pynomaly.config import Settings
from pynomaly.messaging.celery_app import create_celery
from pynomaly.observability.heartbeat import HEARTBEAT_FILE
from pynomaly.storage.dead_letters import DeadLetter, DeadLetterStore
from pynomaly.topology import Q_DETECTION, TASK_DELIVER, TASK_REPORT, TOPOLOGY
from tests.e2e.support import SENSORS_CSV, SENSORS_PLANTED, WebhookReceiver, queue_lengths, wait_for

JOB_ID = re.compile(r"\b[0-9a-f]{32}\b")
WIDE = {"COLUMNS": "250"}  # rich tables: no truncated ids or wrapped cells


def run(*args: str, env: dict[str, str | None] | None = None, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env={**WIDE, **(env or {})}, input=input)


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result.stdout


def error_line(result: Result) -> str:
    """A failure: non-zero exit and exactly one ``Error:`` line, which is returned."""
    assert result.exit_code != 0, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return errors[0]


@pytest.fixture(scope="module")
def cli_env(local_system) -> dict[str, str | None]:  # type: ignore[no-untyped-def]
    return {"PYNOMALY_API_URL": local_system.api_url, "PYNOMALY_API_KEY": local_system.api_key}


@pytest.fixture(scope="module")
def completed_job(cli_env: dict[str, str | None]) -> dict[str, Any]:
    """``submit sensors.csv --detector ecod --wait``: the job and the rows of its results table."""
    out = ok(run("submit", str(SENSORS_CSV), "--detector", "ecod", "--wait", env=cli_env))
    summary = re.search(r"job ([0-9a-f]{32}) completed: (\d+) anomalies in 600 rows \(ecod, threshold", out)
    assert summary, out
    rows = [int(m) for m in re.findall(r"^│\s*(\d+)\s*│", out, flags=re.MULTILINE)]
    return {"id": summary.group(1), "anomalies": int(summary.group(2)), "rows": rows, "output": out}


# -- jobs ------------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_submit_wait_prints_the_results_table(completed_job: dict[str, Any], api: PynomalyClient) -> None:
    result = api.result(completed_job["id"])
    assert completed_job["anomalies"] == result["anomaly_count"] > 0
    assert completed_job["rows"] == [a["row"] for a in result["top_anomalies"]]
    assert len(completed_job["rows"]) >= 5 and set(completed_job["rows"]) <= SENSORS_PLANTED
    for header in ("row", "score", "values", "top features"):
        assert header in completed_job["output"]
    assert "temperature=" in completed_job["output"] and "100%" in completed_job["output"]  # the progress bar


@pytest.mark.e2e
def test_submit_json_job_jobs_and_report(
    completed_job: dict[str, Any], cli_env: dict[str, str | None], api: PynomalyClient, tmp_path: Path
) -> None:
    accepted = json.loads(
        ok(run("submit", str(SENSORS_CSV), "-d", "knn", "--param", "n_neighbors=7", "--json", env=cli_env))
    )
    assert accepted["status"] == "queued" and accepted["links"]["result"] == f"/v1/jobs/{accepted['id']}/result"
    shown = json.loads(ok(run("job", accepted["id"], env=cli_env)))
    assert shown["id"] == accepted["id"] and shown["detector"] == "knn" and shown["params"]["n_neighbors"] == 7
    assert api.wait(accepted["id"], timeout=60)["status"] == "completed"

    done = json.loads(ok(run("job", completed_job["id"], env=cli_env)))
    assert done["status"] == "completed" and done["anomaly_count"] == completed_job["anomalies"]

    listed = json.loads(ok(run("jobs", "--status", "completed", "--limit", "500", "--json", env=cli_env)))
    assert {completed_job["id"], accepted["id"]} <= {j["id"] for j in listed["items"]}
    assert {j["status"] for j in listed["items"]} == {"completed"}
    table = ok(run("jobs", "--status", "completed", "--detector", "ecod", "--limit", "500", env=cli_env))
    assert completed_job["id"] in table and accepted["id"] not in table and "job(s)" in table

    target = tmp_path / "report.html"
    out = ok(run("report", completed_job["id"], "--format", "html", "-o", str(target), env=cli_env))
    assert out.strip() == f"wrote {target}"
    page = target.read_text()
    assert page.startswith("<!doctype html>") and completed_job["id"] in page and '<svg id="histogram"' in page
    csv_lines = ok(run("report", completed_job["id"], "--format", "csv", env=cli_env)).strip().splitlines()
    assert csv_lines[0] == "row,score,is_anomaly" and len(csv_lines) == 601


@pytest.mark.e2e
def test_detectors_with_flags_env_or_the_local_state_dir(local_system, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    no_env: dict[str, str | None] = {
        "PYNOMALY_API_URL": None,
        "PYNOMALY_API_KEY": None,
        "PYNOMALY_STATE_DIR": str(tmp_path),
    }
    flags = ("--api-url", local_system.api_url, "--api-key", local_system.api_key)
    out = ok(run("detectors", *flags, env=no_env))
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert names == {"iforest", "lof", "knn", "ecod", "copod", "hbos", "pca", "ocsvm"}
    assert "n_neighbors=" in out
    # Without URL and key, the CLI finds the local system through its state directory.
    from_state = {**no_env, "PYNOMALY_STATE_DIR": str(local_system.state_dir)}
    assert ok(run("detectors", env=from_state)) == out


@pytest.mark.e2e
def test_bad_input_exits_non_zero_with_one_clear_line(
    cli_env: dict[str, str | None], local_system, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    csv = str(SENSORS_CSV)
    line = error_line(run("submit", csv, "--detector", "autoencoder", env=cli_env))
    assert "422" in line and "autoencoder" in line
    line = error_line(run("submit", csv, "--param", "oops", env=cli_env))
    assert "--param" in line and "'oops' is not NAME=VALUE" in line
    line = error_line(run("submit", csv, "-d", "iforest", "--param", "n_estimators=0", env=cli_env))
    assert "422" in line and "n_estimators" in line
    line = error_line(run("job", "no-such-job", env=cli_env))
    assert "404" in line and "no-such-job" in line
    assert "401" in error_line(run("jobs", env={**cli_env, "PYNOMALY_API_KEY": "wrong-key"}))

    nothing = {"PYNOMALY_API_URL": None, "PYNOMALY_API_KEY": None, "PYNOMALY_STATE_DIR": str(tmp_path)}
    line = error_line(run("jobs", env=nothing))
    assert "no API to talk to" in line and "pynomaly local up" in line and "PYNOMALY_API_URL" in line
    line = error_line(run("detectors", "--api-url", "http://127.0.0.1:9", "--api-key", "k", env=nothing))
    assert "cannot reach the API at http://127.0.0.1:9" in line
    line = error_line(run("submit", str(tmp_path / "missing.csv"), env=cli_env))
    assert "does not exist" in line


# -- cancel / retry ---------------------------------------------------------------------------------
def _detection_workers(settings: Settings) -> tuple[Any, list[str]]:
    celery = create_celery(settings)
    queues = celery.control.inspect(timeout=5).active_queues() or {}
    names = [name for name, qs in queues.items() if any(q["name"] == Q_DETECTION for q in qs)]
    assert names, queues
    return celery, names


@pytest.mark.e2e
def test_cancel_a_queued_job_then_retry_it(cli_env: dict[str, str | None], local_system, api: PynomalyClient) -> None:  # type: ignore[no-untyped-def]
    # The detection pool stops consuming its queue for a moment (Celery remote control), so the
    # job is certainly still queued when it is cancelled.
    celery, workers = _detection_workers(local_system.settings)
    try:
        celery.control.cancel_consumer(Q_DETECTION, destination=workers, reply=True, timeout=5)
        try:
            out = ok(run("submit", str(SENSORS_CSV), "-d", "hbos", "--steps", "detect", env=cli_env))
            job_id = JOB_ID.search(out).group(0)  # type: ignore[union-attr]
            assert out.strip() == f"job {job_id} queued"
            assert ok(run("cancel", job_id, env=cli_env)).strip() == f"job {job_id} cancelled"
            assert "409" in error_line(run("cancel", job_id, env=cli_env))
        finally:
            celery.control.add_consumer(Q_DETECTION, destination=workers, reply=True, timeout=5)
    finally:
        celery.close()
    # The cancelled job's message reaches the worker, which skips it.
    client = redis.Redis.from_url(local_system.settings.redis_url, decode_responses=True)
    try:
        wait_for(lambda: not any(queue_lengths(client)[q] for q in TOPOLOGY.queue(Q_DETECTION).redis_lists()), 30)
    finally:
        client.close()
    time.sleep(0.5)
    skipped = json.loads(ok(run("job", job_id, env=cli_env)))
    assert skipped["status"] == "cancelled" and skipped["started_at"] is None

    assert ok(run("retry", job_id, env=cli_env)).strip() == f"job {job_id} queued"
    done = wait_for(
        lambda: (j := json.loads(ok(run("job", job_id, env=cli_env))))["status"] == "completed" and j,
        60,
        what="the retried job",
    )
    assert done["anomaly_count"] > 0
    line = error_line(run("retry", job_id, env=cli_env))
    assert "409" in line and "only failed or cancelled jobs can be retried" in line


# -- dead-letter queue ------------------------------------------------------------------------------
@pytest.mark.e2e
def test_dlq_list_show_replay_and_purge(
    cli_env: dict[str, str | None], local_system, webhook_receiver: WebhookReceiver
) -> None:  # type: ignore[no-untyped-def]
    # A real dead letter: a webhook that keeps answering 500 until its retries run out.
    webhook_receiver.status = 500
    out = ok(run("submit", str(SENSORS_CSV), "-d", "copod", "--webhook", webhook_receiver.url, env=cli_env))
    job_id = JOB_ID.search(out).group(0)  # type: ignore[union-attr]

    def letter_line() -> str | None:
        listing = ok(run("dlq", "list", "--limit", "500", env=cli_env))
        return next((line for line in listing.splitlines() if f"job {job_id}" in line), None)

    line = wait_for(letter_line, 60, what="the webhook's dead letter")
    letter_id = line.split()[0]
    assert TASK_DELIVER in line and f"attempts {local_system.settings.max_retries + 1}" in line
    letter = json.loads(ok(run("dlq", "show", letter_id, env=cli_env)))
    assert letter["id"] == letter_id and letter["job_id"] == job_id and letter["task"] == TASK_DELIVER
    assert "500" in letter["error"] and "Traceback" in letter["traceback"]
    assert len(webhook_receiver.requests) == local_system.settings.max_retries + 1

    webhook_receiver.status = 200
    out = ok(run("dlq", "replay", letter_id, env=cli_env))
    assert out.strip() == f"replayed {letter_id} ({TASK_DELIVER}, job {job_id})"
    wait_for(lambda: len(webhook_receiver.requests) == local_system.settings.max_retries + 2, 30, what="the replay")
    assert {b["job_id"] for b in webhook_receiver.bodies()} == {job_id}
    assert "404" in error_line(run("dlq", "show", letter_id, env=cli_env))
    assert "404" in error_line(run("dlq", "replay", letter_id, env=cli_env))

    # Purge: a planted letter (of the same real job) goes with everything else.
    client = redis.Redis.from_url(local_system.settings.redis_url, decode_responses=True)
    try:
        planted = DeadLetterStore(client).add(
            DeadLetter(
                task=TASK_REPORT, args=[job_id], kwargs={}, error="planted", traceback="", attempts=3, job_id=job_id
            )
        )
    finally:
        client.close()
    assert planted.id in ok(run("dlq", "list", env=cli_env))
    refused = run("dlq", "purge", env=cli_env, input="n\n")
    assert refused.exit_code == 1 and "Aborted" in refused.output
    assert planted.id in ok(run("dlq", "list", env=cli_env))
    purged = re.fullmatch(r"purged (\d+) dead letter\(s\)\n", ok(run("dlq", "purge", "--yes", env=cli_env)))
    assert purged and int(purged.group(1)) >= 1
    assert ok(run("dlq", "list", env=cli_env)).startswith("0 dead letter(s)")


# -- schedules and datasets -------------------------------------------------------------------------
@pytest.mark.e2e
def test_datasets_and_schedules_commands(cli_env: dict[str, str | None], api: PynomalyClient, tmp_path: Path) -> None:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    data = tmp_path / "readings.csv"
    data.write_text("a,b\n" + "".join(f"{i % 7 * 0.1:.2f},{i % 5 * 0.2:.2f}\n" for i in range(40)) + "25,-25\n")

    uploaded = ok(run("datasets", "upload", str(data), "--name", name, env=cli_env))
    dataset_id = uploaded.split()[0]
    assert f"{name}" in uploaded and "41 rows x 2 cols" in uploaded and "sha256" in uploaded
    assert any(line.startswith(dataset_id) for line in ok(run("datasets", "list", env=cli_env)).splitlines())
    shown = json.loads(ok(run("datasets", "show", dataset_id, env=cli_env)))
    assert shown["id"] == dataset_id and shown["rows"] == 41 and shown["columns"] == ["a", "b"]

    created = json.loads(
        ok(
            run(
                "schedules", "create", "--every", "3600", "--dataset", dataset_id, "-d", "ecod",
                "--contamination", "0.05", "--name", name, "--priority", "high",
                "--notify", json.dumps({"channel": "email", "target": "ops@example.com", "on": "failed"}),
                "--json", env=cli_env,
            )
        )
    )  # fmt: skip
    schedule_id = created["id"]
    assert created["interval_seconds"] == 3600 and created["dataset_id"] == dataset_id and not created["paused"]
    assert created["next_run_at"] and created["notify"][0]["target"] == "ops@example.com"
    listed = ok(run("schedules", "list", env=cli_env))
    line = next(x for x in listed.splitlines() if x.startswith(schedule_id))
    assert "every 3600s" in line and "ecod" in line and dataset_id in line and "runs 0" in line

    assert ok(run("schedules", "pause", schedule_id, env=cli_env)).strip() == f"schedule {schedule_id} paused"
    assert json.loads(ok(run("schedules", "show", schedule_id, env=cli_env)))["next_run_at"] is None
    resumed = ok(run("schedules", "resume", schedule_id, env=cli_env))
    assert resumed.startswith(f"schedule {schedule_id} active, next ") and "None" not in resumed

    ran = re.fullmatch(
        rf"job ([0-9a-f]{{32}}) (\w+) \(schedule {schedule_id}\)\n",
        ok(run("schedules", "run", schedule_id, env=cli_env)),
    )
    assert ran, "schedules run prints the new job"
    job = api.wait(ran.group(1), timeout=60)
    assert job["status"] == "completed" and job["schedule_id"] == schedule_id and job["priority"] == "high"
    shown = wait_for(
        lambda: (s := json.loads(ok(run("schedules", "show", schedule_id, env=cli_env))))["run_count"] >= 1 and s,
        30,
        what="the run in the schedule",
    )
    assert shown["last_job_id"] == ran.group(1)

    # A dataset in use cannot go; bad schedules are refused with one line.
    assert "409" in error_line(run("datasets", "delete", dataset_id, env=cli_env))
    both = run("schedules", "create", "--every", "60", "--cron", "* * * * *", "--dataset", dataset_id, env=cli_env)
    assert "422" in error_line(both)
    line = error_line(run("schedules", "create", "--cron", "61 * * * *", "--dataset", dataset_id, env=cli_env))
    assert "422" in line and "cron" in line.lower()
    line = error_line(run("schedules", "create", "--every", "60", "--url", "http://169.254.169.254/x.csv", env=cli_env))
    assert "422" in line
    line = error_line(
        run("schedules", "create", "--every", "60", "--dataset", dataset_id, "--notify", "{", env=cli_env)
    )
    assert "--notify" in line and "is not JSON" in line

    assert ok(run("schedules", "delete", schedule_id, env=cli_env)).strip() == f"schedule {schedule_id} deleted"
    assert "404" in error_line(run("schedules", "show", schedule_id, env=cli_env))
    assert schedule_id not in ok(run("schedules", "list", "--limit", "500", env=cli_env))
    assert ok(run("datasets", "delete", dataset_id, env=cli_env)).strip() == f"dataset {dataset_id} deleted"
    assert "404" in error_line(run("datasets", "show", dataset_id, env=cli_env))


# -- component commands (no running system needed) --------------------------------------------------
def test_topology_json_matches_the_declared_topology() -> None:
    assert json.loads(ok(run("topology", "--json"))) == json.loads(json.dumps(TOPOLOGY.as_dict()))
    text = ok(run("topology"))
    for queue in TOPOLOGY.queues:
        assert f"queue  {queue.name}" in text
    assert "topic  job_events" in text and "group  pynomaly-bridge" in text


def test_settings_lists_every_setting() -> None:
    out = ok(run("settings"))
    for field in Settings.model_fields:
        assert f"PYNOMALY_{field.upper()} " in out
    assert len(out.splitlines()) == len(Settings.model_fields)


def test_healthcheck_fresh_stale_and_missing_heartbeat(tmp_path: Path) -> None:
    env: dict[str, str | None] = {"PYNOMALY_HEARTBEAT_DIR": str(tmp_path)}
    assert error_line(run("healthcheck", env=env)) == "Error: no heartbeat yet"
    beat = tmp_path / HEARTBEAT_FILE
    beat.touch()
    assert re.fullmatch(r"ok: heartbeat \d+\.\d+s old\n", ok(run("healthcheck", env=env)))
    old = time.time() - 120
    os.utime(beat, (old, old))
    line = error_line(run("healthcheck", "--max-age", "60", env=env))
    assert re.fullmatch(r"Error: heartbeat is 1[12]\ds old \(limit 60s\)", line), line
    ok(run("healthcheck", "--max-age", "300", env=env))
    assert error_line(run("healthcheck", env={"PYNOMALY_HEARTBEAT_DIR": None})) == (
        "Error: PYNOMALY_HEARTBEAT_DIR is not set"
    )
