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
