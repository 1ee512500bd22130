"""Trained models through the real system: a job saves its fitted detector, a scoring job scores new
rows with it through the same chain (no refit), versions are promoted and rolled back, deleted, and a
tampered artifact is refused.  Refused requests store and enqueue nothing.

The scoring job's labels are checked against the stored model itself: the test loads the artifact from
the system's Redis in its own process and calls the PyOD estimator's ``predict`` on the same rows.
"""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from pynomaly.api import API_KEY_HEADER
from pynomaly.client import ApiError, PynomalyClient
from pynomaly.domain.datasets import DatasetLimits, parse_csv
from pynomaly.storage.jobs import JOB_INDEX
from pynomaly.storage.models import MODEL_INDEX, artifact_key
from pynomaly.wiring import Container
from tests.e2e.support import SENSORS_CSV, queue_lengths, small_rows, wait_for
from tests.e2e.test_cli import error_line, ok, run

pytestmark = pytest.mark.e2e

SENSOR_COLUMNS = ["temperature", "pressure", "vibration", "current"]
JOB_QUEUES = ("anomaly_detection", "data_processing", "reports", "notifications")


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _train(api: PynomalyClient, name: str, detector: str = "iforest", **options: Any) -> dict[str, Any]:
    accepted = api.submit_csv(SENSORS_CSV, detector, save_model=name, **options)
    job = api.wait(accepted["id"], timeout=180)
    assert job["status"] == "completed", job["error"]
    return job


def _score(api: PynomalyClient, path: Path, model: str, **options: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    accepted = api.submit_csv(path, None, mode="score", model=model, **options)
    job = api.wait(accepted["id"], timeout=180)
    assert job["status"] == "completed", job["error"]
    return job, api.result(job["id"])


@pytest.fixture(scope="module")
def container(local_system) -> Any:  # type: ignore[no-untyped-def]
    """The system's own stores, opened in the test process (same Redis, same settings)."""
    value = Container(local_system.settings, "tests")
    yield value
    value.close()


@pytest.fixture(scope="module")
def cli_env(local_system) -> dict[str, str | None]:  # type: ignore[no-untyped-def]
    return {"PYNOMALY_API_URL": local_system.api_url, "PYNOMALY_API_KEY": local_system.api_key}


@pytest.fixture(scope="module")
def trained(api: PynomalyClient) -> dict[str, Any]:
    """sensors.csv fitted with iforest (robust scaling) and saved: version 1 of a new model."""
    name = _name("sensors")
    job = _train(api, name, preprocessing={"missing": "impute_median", "scaling": "robust"})
    return {"name": name, "job": job}


@pytest.fixture(scope="module")
def new_rows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """New readings: sensors.csv's first 300 rows, columns in another order, an extra column, missing
    cells (imputed with the training medians) and three planted anomalies."""
    data = parse_csv(SENSORS_CSV.read_bytes(), DatasetLimits(10**7, 10**6, 100))
    rng = np.random.default_rng(12)
    values = data.values[:300].copy()
    values[[40, 150, 270]] = values[[40, 150, 270]] * np.array([1.0, 1.0, 9.0, 1.0]) + np.array([45, 30, 0, 12])
    path = tmp_path_factory.mktemp("models") / "new.csv"
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["current", "site", "vibration", "temperature", "pressure"])
    for i, row in enumerate(values):
        t, p, v, c = (f"{x:.6g}" for x in row)
        if i in (7, 99):
            p = ""  # a missing cell
        writer.writerow([c, f"{rng.integers(1, 9)}", v, t, p])
    path.write_text(out.getvalue())
    return path


def test_train_then_score_new_rows_labels_equal_the_stored_models_predict(
    api: PynomalyClient, trained: dict[str, Any], new_rows: Path, container: Container
) -> None:
    name, training = trained["name"], trained["job"]
    assert training["save_model"] == name and training["model_version"] == 1 and training["mode"] == "detect"
    assert api.result(training["id"])["model"] == {"name": name, "version": 1, "saved": True}
    model = api.model(name)
    assert (model["promoted"], model["latest"]) == (1, 1), "the first version is promoted at once"
    (version,) = model["versions"]
    assert version["training_job"] == training["id"] and version["detector"] == "iforest"
    assert version["rows"] == 600 and version["columns"] == SENSOR_COLUMNS and version["store"] == "redis"
    assert version["threshold"] == api.result(training["id"])["threshold"] and len(version["checksum"]) == 64
    assert set(version["libraries"]) == {"pyod", "scikit-learn", "numpy"}
    assert version["preprocessing"]["scaling"] == "robust" and len(version["preprocessing"]["fill"]) == 4
    assert api.model_version(name, 1) == version

    job, result = _score(api, new_rows, name, steps=["preprocess", "detect", "report"])
    assert (job["mode"], job["model"], job["model_version"], job["detector"]) == ("score", name, 1, "iforest")
    assert job["steps"] == ["preprocess", "detect", "report"] and job["dataset"]["rows"] == 300
    assert result["model"] == {"name": name, "version": 1, "saved": False}
    assert result["columns"] == SENSOR_COLUMNS and result["threshold"] == version["threshold"]

    # The same rows through the stored artifact, loaded here: the estimator's own predict.
    _, stored = container.models.load(f"{name}:1")
    data = parse_csv(new_rows.read_bytes(), DatasetLimits(10**7, 10**6, 100))
    prepared, _ = stored.prepare(stored.select(data.columns, data.values))
    expected = stored.estimator.predict(prepared)
    assert result["labels"] == expected.tolist()
    np.testing.assert_allclose(result["scores"], stored.estimator.decision_function(prepared), rtol=1e-9)
    assert {40, 150, 270} <= {i for i, label in enumerate(result["labels"]) if label}
    assert "<html" in api.report(job["id"], "html").lower()  # the report step ran on the scored rows
    assert name in json.dumps(api.job(job["id"]))


def test_versions_promote_rollback_and_delete_through_the_api_and_the_cli(
    api: PynomalyClient, trained: dict[str, Any], new_rows: Path, cli_env: dict[str, str | None], local_system: Any
) -> None:
    name = _name("rollback")
    out = ok(run("submit", str(SENSORS_CSV), "--detector", "iforest", "--save-model", name, "--wait", env=cli_env))
    assert f"saved as model {name}:1" in out
    second = _train(api, name, "ecod")
    assert second["model_version"] == 2
    assert api.model(name)["promoted"] == 1, "a new version is not promoted by itself"

    listed = ok(run("models", "list", env=cli_env))
    assert f"{name}" in listed and "versions 1,2" in listed
    shown = ok(run("models", "show", name, env=cli_env))
    assert "* v1" in shown and "  v2" in shown and "ecod" in shown
    assert json.loads(ok(run("models", "show", f"{name}:2", env=cli_env)))["detector"] == "ecod"

    assert "version 2 promoted" in ok(run("models", "promote", name, "2", env=cli_env))
    job, result = _score(api, new_rows, name)
    assert (job["model_version"], job["detector"], result["model"]["version"]) == (2, "ecod", 2)
    out = ok(run("score", str(new_rows), "--model", f"{name}:1", "--wait", env=cli_env))
    assert f"scored with model {name}:1" in out

    api.promote(name, 1)  # rollback
    job, _ = _score(api, new_rows, name)
    assert job["model_version"] == 1 and job["detector"] == "iforest"

    with pytest.raises(ApiError, match="409: version 1 is the promoted version"):
        api.delete_model(name, 1)
    assert "deleted" in ok(run("models", "delete", f"{name}:2", env=cli_env))
    assert [v["version"] for v in api.model(name)["versions"]] == [1]
    with pytest.raises(ApiError, match=r"404: model .* has no version 2"):
        api.model_version(name, 2)

    # Every change is audited under the caller (the audit sink consumer writes it, so poll): the CLI and
    # this client use one key, so one actor, the training jobs' submitter included.
    def audited() -> dict[str, set[str]]:
        page = httpx.get(
            f"{local_system.api_url}/v1/audit",
            params={"subject": name, "limit": 50},
            headers={API_KEY_HEADER: local_system.api_key},
            timeout=30,
        ).json()
        actors: dict[str, set[str]] = {}
        for item in page["items"]:
            actors.setdefault(item["data"]["action"], set()).add(item["data"]["actor"])
        return actors

    def all_audited() -> dict[str, set[str]] | None:
        found = audited()
        return found if {"model.save", "model.promote", "model.version.delete"} <= set(found) else None

    actions = wait_for(all_audited, 90, what="the audit records")
    (actor,) = set().union(*actions.values())
    assert actor != "anonymous" and actions["model.save"] == {actor}

    ok(run("models", "delete", name, "--yes", env=cli_env))
    with pytest.raises(ApiError, match="404: no model"):
        api.model(name)


def test_a_tampered_artifact_is_refused_and_the_scoring_job_fails_at_once(
    api: PynomalyClient, local_system: Any, new_rows: Path
) -> None:
    name = _name("tampered")
    _train(api, name, "hbos")
    client = redis.Redis.from_url(local_system.settings.redis_url)
    try:
        key = artifact_key(name, 1)
        raw = bytearray(client.get(key) or b"")
        assert raw, "the artifact is in Redis"
        raw[len(raw) // 3] ^= 0x20
        client.set(key, bytes(raw))
    finally:
        client.close()
    accepted = api.submit_csv(new_rows, None, mode="score", model=name)
    job = api.wait(accepted["id"], timeout=120)
    assert job["status"] == "failed" and job["attempts"] == 1, job
    assert f"model {name}:1: the artifact's sha256 is" in job["error"]
    assert "altered or corrupted, so it is not loaded" in job["error"]
    letters = api.dead_letters(limit=500)["items"]
    assert accepted["id"] not in {letter["job_id"] for letter in letters}, "permanent: no dead letter"


def _state(client: redis.Redis) -> dict[str, object]:
    return {
        "jobs": set(client.zrange(JOB_INDEX, 0, -1)),
        "job records": sum(1 for _ in client.scan_iter(match="pynomaly:job:*", count=1000)),
        "models": {m: client.get(f"pynomaly:model:{m}") for m in client.zrange(MODEL_INDEX, 0, -1)},
        "queues": {k: v for k, v in queue_lengths(client).items() if k.split(":")[0] in JOB_QUEUES},
    }


def _idle_state(client: redis.Redis) -> dict[str, object] | None:
    """The state once no job message waits (earlier tests' chains may still be moving)."""
    state = _state(client)
    queues: dict[str, int] = state["queues"]  # type: ignore[assignment]
    return None if any(queues.values()) else state


def test_invalid_model_requests_are_refused_and_store_nothing(
    api: PynomalyClient,
    trained: dict[str, Any],
    new_rows: Path,
    local_system: Any,
    system_redis: redis.Redis,
    cli_env: dict[str, str | None],
) -> None:
    name = trained["name"]
    rows = {"rows": small_rows(30), "columns": ["a", "b"]}
    sensor_rows = {"rows": [[1.0, 2.0, 3.0, 4.0]] * 5, "columns": SENSOR_COLUMNS}
    jobs: list[tuple[dict[str, Any], int, str]] = [
        ({**sensor_rows, "mode": "score", "model": "no-such-model"}, 422, "model 'no-such-model': no model"),
        ({**sensor_rows, "mode": "score", "model": f"{name}:99"}, 422, f"model '{name}' has no version 99"),
        ({**sensor_rows, "mode": "score", "model": f"{name}:0"}, 422, "version must be an integer from 1"),
        ({**sensor_rows, "mode": "score", "model": "bad name!"}, 422, "model name must be 1-64 characters"),
        ({**sensor_rows, "mode": "score"}, 422, "mode score needs model"),
        ({**sensor_rows, "mode": "score", "model": name, "save_model": "x"}, 422, "save_model needs mode detect"),
        ({**sensor_rows, "mode": "score", "model": name, "params": {"n_bins": 3}}, 422, "params: a scoring job uses"),
        ({**sensor_rows, "mode": "score", "model": name, "threshold": 1.0}, 422, "threshold: a scoring job uses"),
        ({**sensor_rows, "mode": "score", "model": name, "detector": "ecod"}, 422, "does not match model"),
        ({**rows, "mode": "score", "model": name}, 422, r"no column\(s\) \['temperature'"),
        ({**rows, "detector": "ecod", "model": name}, 422, "model is for mode score"),
        ({**rows, "detector": "ecod", "save_model": "../etc"}, 422, "save_model must be 1-64 characters"),
        ({**rows, "detector": "ecod", "mode": "train"}, 422, "mode"),
        ({**rows}, 422, "detector is required"),
        ({**rows, "detector": "ecod", "save_model": "x" * 65}, 422, "save_model"),
    ]
    headers = {API_KEY_HEADER: local_system.api_key}
    with httpx.Client(base_url=local_system.api_url, headers=headers, timeout=60) as http:
        before = wait_for(lambda: _idle_state(system_redis), 180, what="idle job queues")
        for body, status, detail in jobs:
            answer = http.post("/v1/jobs", json=body)
            assert answer.status_code == status, (body, answer.text)
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert re.search(detail, answer.json()["detail"]), (detail, answer.json())
        form = http.post(
            "/v1/jobs",
            data={"mode": "score", "model": "no-such-model"},
            files={"file": ("new.csv", new_rows.read_bytes(), "text/csv")},
        )
        assert form.status_code == 422 and "no model" in form.json()["detail"], form.text
        models: list[tuple[str, str, Any, int, str]] = [
            ("GET", "/v1/models/no-such-model", None, 404, "no model 'no-such-model'"),
            ("GET", f"/v1/models/{name}/versions/99", None, 404, "has no version 99"),
            ("GET", f"/v1/models/{name}/versions/0", None, 422, "version"),
            ("GET", f"/v1/models/{name}/versions/x", None, 422, "version"),
            ("GET", "/v1/models/bad%20name", None, 422, "name"),
            ("POST", f"/v1/models/{name}/promote", {"version": 99}, 404, "has no version 99"),
            ("POST", f"/v1/models/{name}/promote", {"version": 0}, 422, "version"),
            ("POST", f"/v1/models/{name}/promote", {"version": 1, "x": 1}, 422, "x"),
            ("POST", "/v1/models/no-such-model/promote", {"version": 1}, 404, "no model"),
            ("DELETE", "/v1/models/no-such-model", None, 404, "no model"),
            ("DELETE", f"/v1/models/{name}/versions/1", None, 409, "promoted version"),
            ("DELETE", f"/v1/models/{name}/versions/77", None, 404, "has no version 77"),
        ]
        for method, path, body, status, detail in models:
            answer = http.request(method, path, json=body)
            assert answer.status_code == status, (method, path, answer.text)
            assert detail in answer.json()["detail"], (path, answer.json())
        promote_text = http.post(
            f"/v1/models/{name}/promote", content=b"version=1", headers={"content-type": "text/plain"}
        )
        assert promote_text.status_code == 415, promote_text.text
        assert http.get("/v1/models", headers={API_KEY_HEADER: "wrong"}).status_code == 401

    assert "no model 'no-such-model'" in error_line(
        run("score", str(new_rows), "--model", "no-such-model", env=cli_env)
    )
    assert "model name must be" in error_line(run("models", "show", "bad name", env=cli_env))
    assert run("models", "promote", name, "0", env=cli_env).exit_code == 2
    assert "promoted version" in error_line(run("models", "delete", f"{name}:1", env=cli_env))
    assert _state(system_redis) == before, "a refused request stored or enqueued something"
