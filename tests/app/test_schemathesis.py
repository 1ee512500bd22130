"""Schemathesis over every operation of the OpenAPI schema: no input makes the API answer 5xx, and
every answer matches the schema (status, content type, body; errors are problem+json).

The API is the real application under uvicorn on loopback, on the session's real Redis (its own
database, flushed before and after) and Kafka; no worker runs there, so accepted jobs stay queued.
Two runs: one with generated path ids (unknown, hostile: traversal, control characters, huge), one
with the ids of a completed job, a stored dataset, a paused schedule and a dead letter, so the
operations on existing things are fuzzed too.  Deterministic (derandomized Hypothesis, no example
database) and bounded: MAX_EXAMPLES per operation and generation mode.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup

from pynomaly.api import API_KEY_HEADER
from pynomaly.api.app import create_app
from pynomaly.config import Settings
from pynomaly.domain.jobs import Step
from pynomaly.storage.dead_letters import DeadLetter
from pynomaly.topology import TASK_REPORT
from pynomaly.usecases.pipeline import Pipeline
from pynomaly.wiring import Container
from tests.e2e.support import own_redis_db, small_rows, wait_for

pytestmark = pytest.mark.services

SCHEMATHESIS_DB = 14  # 13 is the task policy test's
API_KEY = "schemathesis-key"
MODEL_NAME = "fuzz-model"
AUTH = {API_KEY_HEADER: API_KEY}
# Per operation and generation mode (positive, negative).  Hypothesis stops early where it runs out of
# distinct inputs: the two runs make about 1,900 requests, under a minute on a loaded 2-core machine.
MAX_EXAMPLES = 60
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Every request made and every status answered, per run: the summary test prints and checks them.
CALLS: dict[str, Counter[str]] = {"generated ids": Counter(), "known ids": Counter()}
STATUSES: dict[str, Counter[int]] = {"generated ids": Counter(), "known ids": Counter()}

HYPOTHESIS = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


class Api:
    """The application under uvicorn on 127.0.0.1 (a free port) in a thread, as in production."""

    def __init__(self, settings: Settings) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(settings), log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Api:
        self.thread.start()
        wait_for(lambda: self.server.started, 60, what="uvicorn to start")
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@pytest.fixture(scope="module")
def api_settings(settings: Settings, redis_server: Any) -> Iterator[Settings]:
    with own_redis_db(settings, redis_server, SCHEMATHESIS_DB, api_keys=API_KEY) as isolated:
        yield isolated


@pytest.fixture(scope="module")
def api_url(api_settings: Settings) -> Iterator[str]:
    with Api(api_settings) as api:
        yield api.url


def _completed_job(settings: Settings, url: str) -> str:
    """A job submitted through the API and run in-process by the worker's pipeline (no worker here)."""
    answer = httpx.post(
        f"{url}/v1/jobs",
        json={
            "rows": small_rows(30),
            "detector": "ecod",
            "steps": ["preprocess", "detect", "report"],
            "save_model": MODEL_NAME,  # the model the known-id run fuzzes
        },
        headers=AUTH,
        timeout=60,
    )
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["id"]
    container = Container(settings, "tests")
    try:
        pipeline = Pipeline(container.jobs, container.messaging, models=container.models)
        for step in (Step.PREPROCESS, Step.DETECT, Step.REPORT):
            job = pipeline.begin(job_id, step, attempt=1)
            assert job is not None, step
            getattr(pipeline, step.value)(job)
            pipeline.step_done(container.jobs.get(job_id), step)
        assert container.jobs.get(job_id).status == "completed"
        container.dead_letters.add(
            DeadLetter(task=TASK_REPORT, args=[job_id], kwargs={}, error="planted", traceback="", attempts=3)
        )
    finally:
        container.close()
    return job_id


@pytest.fixture(scope="module")
def known_ids(api_settings: Settings, api_url: str) -> dict[str, str]:
    job_id = _completed_job(api_settings, api_url)
    dataset = httpx.post(
        f"{api_url}/v1/datasets",
        json={"name": "fuzz", "rows": small_rows(30)},
        headers=AUTH,
        timeout=60,
    )
    assert dataset.status_code == 201, dataset.text
    schedule = httpx.post(
        f"{api_url}/v1/schedules",
        json={"interval_seconds": 3600, "dataset_id": dataset.json()["id"], "detector": "ecod", "paused": True},
        headers=AUTH,
        timeout=60,
    )
    assert schedule.status_code == 201, schedule.text
    letters = httpx.get(f"{api_url}/v1/dlq", headers=AUTH, timeout=60).json()["items"]
    return {
        "job_id": job_id,
        "dataset_id": dataset.json()["id"],
        "schedule_id": schedule.json()["id"],
        "letter_id": letters[0]["id"],
        "name": MODEL_NAME,
        "version": "1",
    }


def _schema(url: str) -> Any:
    config = schemathesis.Config.from_dict({"headers": AUTH, "generation": {"deterministic": True}})
    return schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)


def _label(operation: Any) -> str:
    return f"{operation.method.upper()} {operation.path}"


def _exercise(run: str, label: str, strategy: Any) -> Any:
    """A Hypothesis test: send each generated request, count it, and run the checks on the answer."""

    @HYPOTHESIS
    @given(case=strategy)
    def exercise(case: Any) -> None:
        response = case.call(headers=AUTH, timeout=60)
        CALLS[run][label] += 1
        STATUSES[run][response.status_code] += 1
        case.validate_response(response, checks=CHECKS, headers=AUTH)

    return exercise


def _run(run: str, schema: Any, ids: dict[str, str] | None = None) -> dict[str, str]:
    """Every operation of ``schema`` in both generation modes; the failures by operation (none expected).
    With ``ids``, only the operations on one thing, with its path parameter set to the known id.

    Hypothesis shrinks each failure to a minimal request; the loop goes on, so one run shows them all.
    """
    failures: dict[str, str] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        label = _label(operation)
        if ids is not None and _not_on_known_ids(label):
            continue
        path_parameters = {k: v for k, v in (ids or {}).items() if f"{{{k}}}" in operation.path}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters or None)
            try:
                _exercise(run, label, strategy)()
            except Unsatisfiable:
                # Negative mode on an operation with no parameter left to break (GET /healthz, or a GET
                # by a known id): there is no invalid request to make.
                assert mode is GenerationMode.NEGATIVE, label
            except (FailureGroup, Exception) as exc:  # failed checks (a group), or a request that broke
                failures[f"{label} ({mode.value})"] = f"{type(exc).__name__}: {exc}"[:2000]
    return failures


def test_generated_inputs_get_no_server_error(api_url: str) -> None:
    failures = _run("generated ids", _schema(api_url))
    assert not failures, "\n\n".join(f"{op}: {error}" for op, error in failures.items())


def test_generated_inputs_on_existing_resources_get_no_server_error(api_url: str, known_ids: dict[str, str]) -> None:
    # Deleting the known schedule, dataset or model would leave the other operations on them nothing to find:
    # those deletes run with generated ids only (above).
    failures = _run("known ids", _schema(api_url), known_ids)
    assert not failures, "\n\n".join(f"{op}: {error}" for op, error in failures.items())


def _not_on_known_ids(label: str) -> bool:
    return "{" not in label or label.startswith(("DELETE /v1/schedules/", "DELETE /v1/datasets/", "DELETE /v1/models/"))


def test_every_operation_was_exercised(api_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The two runs above reached every operation; prints the figures of the run."""
    schema = _schema(api_url)
    operations = {_label(op.ok()) for op in schema.get_all_operations()}
    assert len(operations) >= 29, operations
    missed = {op for op in operations if CALLS["generated ids"][op] == 0}
    assert not missed, f"operations schemathesis never called: {sorted(missed)}"
    missed = {op for op in operations if not _not_on_known_ids(op) and CALLS["known ids"][op] == 0}
    assert not missed, f"operations never called with known ids: {sorted(missed)}"
    # The known ids got past the lookup: 2xx answers on existing things, not only 404s.
    assert sum(n for status, n in STATUSES["known ids"].items() if 200 <= status < 300) > 0, STATUSES["known ids"]
    with capsys.disabled():
        for run in CALLS:
            statuses = ", ".join(f"{s}: {n}" for s, n in sorted(STATUSES[run].items()))
            errors = sum(n for status, n in STATUSES[run].items() if status >= 500)
            print(
                f"\nschemathesis, {run}: {sum(CALLS[run].values())} requests over {len(CALLS[run])} operations, "
                f"statuses {{{statuses}}}, {errors} server errors"
            )
    assert not any(status >= 500 for run in STATUSES.values() for status in run), STATUSES
