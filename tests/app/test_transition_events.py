"""A job's state change and its event are one Redis transaction: a worker killed between them can lose
neither (a completed job without its job_completed, or an event about a change that never happened).
On the session's real Redis (its own database)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from pynomaly.config import Settings
from pynomaly.domain.datasets import DatasetLimits, from_rows
from pynomaly.domain.errors import JobCancelled
from pynomaly.domain.jobs import JobStatus, Step
from pynomaly.messaging.outbox import OUTBOX_STREAM
from pynomaly.usecases.jobs import SubmitRequest
from pynomaly.usecases.pipeline import Pipeline
from pynomaly.wiring import Container
from tests.e2e.support import own_redis_db, small_rows

pytestmark = pytest.mark.services

TRANSITION_DB = 2


@pytest.fixture
def container(settings: Settings, redis_server: Any) -> Iterator[Container]:
    with own_redis_db(settings, redis_server, TRANSITION_DB) as isolated:
        c = Container(isolated, "tests")
        try:
            yield c
        finally:
            c.close()


def _outbox(c: Container) -> list[dict[str, Any]]:
    return [json.loads(fields["event"]) for _, fields in c.redis.xrange(OUTBOX_STREAM)]


def _job_events(c: Container, job_id: str) -> list[str]:
    return [e["type"] for e in _outbox(c) if e["subject"] == job_id and e["type"] != "audit_record"]


def test_a_write_whose_event_cannot_be_staged_changes_nothing(container: Container) -> None:
    job, _ = container.job_service.submit(
        SubmitRequest(from_rows(small_rows(20), None, DatasetLimits(10**6, 100, 10)), "ecod")
    )
    before = _outbox(container)

    def broken(_job: Any, _pipe: Any) -> None:
        raise RuntimeError("killed between the write and its event")

    with pytest.raises(RuntimeError):
        container.jobs.transition(job.id, JobStatus.RUNNING, also=broken)
    assert container.jobs.get(job.id).state is JobStatus.QUEUED  # neither the change...
    assert _outbox(container) == before  # ...nor an event


def test_completion_retry_and_failure_write_their_event_with_the_state(container: Container) -> None:
    flow = Pipeline(container.jobs, container.messaging)
    limits = DatasetLimits(10**6, 100, 10)
    done, _ = container.job_service.submit(SubmitRequest(from_rows(small_rows(20), None, limits), "ecod", steps=[]))
    started = flow.begin(done.id, Step.DETECT, 1, done.run_token)
    assert started is not None
    flow.step_done(started, Step.DETECT)
    failing, _ = container.job_service.submit(SubmitRequest(from_rows(small_rows(20), None, limits), "ecod", steps=[]))
    assert flow.begin(failing.id, Step.DETECT, 1, failing.run_token) is not None
    flow.retrying(failing.id, "ConnectionError: blip", 1, 0.5)
    flow.failed(failing.id, "gave up")

    events = {(e["subject"], e["type"]): e for e in _outbox(container)}
    completed = events[(done.id, "job_completed")]
    assert completed["data"]["status"] == "completed" and completed["data"]["progress"] == 1.0
    assert container.jobs.get(done.id).state is JobStatus.COMPLETED
    assert events[(failing.id, "job_retrying")]["data"]["attempt"] == 1
    assert events[(failing.id, "job_failed")]["data"]["error"] == "gave up"


def test_each_step_write_carries_its_events_in_the_same_transaction(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """begin with job_started, the result with anomalies_detected, step_done with job_step_completed
    (ahead of job_completed): a step's write and its events commit together, or neither does."""
    flow = Pipeline(container.jobs, container.messaging)
    rows = from_rows(small_rows(40), None, DatasetLimits(10**6, 100, 10))
    job, _ = container.job_service.submit(SubmitRequest(rows, "ecod", steps=["preprocess", "detect"]))
    outbox = container.messaging.outbox
    stage = outbox.stage

    def broken(_pipe: Any, _events: Any) -> None:
        raise RuntimeError("killed between the write and its event")

    monkeypatch.setattr(outbox, "stage", broken)
    with pytest.raises(RuntimeError):
        flow.begin(job.id, Step.PREPROCESS, 1, job.run_token)
    assert container.jobs.get(job.id).state is JobStatus.QUEUED
    assert _job_events(container, job.id) == ["job_submitted"]

    monkeypatch.setattr(outbox, "stage", stage)
    running = flow.begin(job.id, Step.PREPROCESS, 1, job.run_token)
    assert running is not None and running.state is JobStatus.RUNNING
    flow.step_done(running, Step.PREPROCESS, **flow.preprocess(running))
    detecting = Pipeline(container.jobs, container.messaging).begin(job.id, Step.DETECT, 1, job.run_token)
    assert detecting is not None
    monkeypatch.setattr(outbox, "stage", broken)
    with pytest.raises(RuntimeError):
        flow.detect(detecting)  # its checkpoints write progress with their job_progress event too
    assert container.jobs.get(job.id).result_location is None
    monkeypatch.setattr(outbox, "stage", stage)
    output = Pipeline(container.jobs, container.messaging).detect(detecting)
    assert container.jobs.get(job.id).result_location is not None
    monkeypatch.setattr(outbox, "stage", broken)
    with pytest.raises(RuntimeError):
        flow.step_done(detecting, Step.DETECT, **output)
    assert container.jobs.get(job.id).state is JobStatus.RUNNING
    monkeypatch.setattr(outbox, "stage", stage)
    flow.step_done(detecting, Step.DETECT, **output)
    assert container.jobs.get(job.id).state is JobStatus.COMPLETED

    types = _job_events(container, job.id)
    milestones = [t if t != "job_step_completed" else "step" for t in types if t != "job_progress"]
    assert milestones == ["job_submitted", "job_started", "step", "anomalies_detected", "step", "job_completed"]
    assert "job_progress" in types


def test_a_cancel_is_seen_at_every_checkpoint_though_progress_is_written_at_the_events_pace(
    container: Container,
) -> None:
    flow = Pipeline(container.jobs, container.messaging)
    rows = from_rows(small_rows(40), None, DatasetLimits(10**6, 100, 10))
    job, _ = container.job_service.submit(SubmitRequest(rows, "ecod", steps=[]))
    running = flow.begin(job.id, Step.DETECT, 1, job.run_token)
    assert running is not None
    checkpoint = flow.checkpoint(running, Step.DETECT)
    checkpoint(0.1, "first")  # written, with its event
    checkpoint(0.2, "soon after")  # within the event interval: only the cancel check
    stored = container.jobs.get(job.id)
    assert stored.message == "first" and stored.progress == 0.1
    progress = [e["data"] for e in _outbox(container) if e["subject"] == job.id and e["type"] == "job_progress"]
    assert [p["message"] for p in progress] == ["first"]
    container.jobs.request_cancel(job.id)
    with pytest.raises(JobCancelled):
        checkpoint(0.3, "still within the interval")
    with pytest.raises(JobCancelled):
        checkpoint(1.0, "the last one writes, but not for a cancelled job")
    assert container.jobs.get(job.id).message == "first"
