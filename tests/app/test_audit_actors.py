"""Lifecycle audit records name the caller who acted, once: a cancel is recorded under the
canceller (not also under the submitter), a retry under the caller who retried.

On the session's real Redis (a database of its own): the events are read back from the outbox,
where every process writes them before the relay publishes them to Kafka.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pynomaly.config import Settings
from pynomaly.domain.datasets import DatasetLimits, from_rows
from pynomaly.domain.jobs import JobStatus
from pynomaly.messaging.events import EventEnvelope
from pynomaly.usecases.jobs import SubmitRequest
from pynomaly.wiring import Container
from tests.e2e.support import own_redis_db, small_rows

pytestmark = pytest.mark.services

AUDIT_ACTORS_DB = 2
LIMITS = DatasetLimits(1024 * 1024, 1000, 10)
SUBMITTER = "key:submitter0"
OTHER = "key:other00000"


@pytest.fixture
def container(settings: Settings, redis_server: Any) -> Iterator[Container]:
    with own_redis_db(settings, redis_server, AUDIT_ACTORS_DB) as isolated:
        c = Container(isolated, "tests")
        try:
            yield c
        finally:
            c.close()


def _events(c: Container, job_id: str) -> list[EventEnvelope]:
    """Every event of ``job_id`` in the outbox, in the order written (nothing relays it here)."""
    entries = c.outbox.head(10_000, block_ms=0)
    events = [EventEnvelope.model_validate_json(raw) for _, raw, _fields in entries]
    return [e for e in events if e.subject == job_id]


def _audit(events: list[EventEnvelope]) -> list[tuple[str, str]]:
    return [(e.data["action"], e.data["actor"]) for e in events if e.type == "audit_record"]


def _submit(c: Container) -> str:
    dataset = from_rows(small_rows(20), None, LIMITS)
    job, created = c.job_service.submit(SubmitRequest(dataset=dataset, detector="ecod", submitted_by=SUBMITTER))
    assert created
    return job.id


def test_a_queued_job_cancelled_by_another_caller_is_audited_once_under_the_canceller(container: Container) -> None:
    c = container
    job_id = _submit(c)
    assert _audit(_events(c, job_id)) == [("job.submitted", SUBMITTER)]

    assert c.job_service.cancel(job_id, actor=OTHER).state is JobStatus.CANCELLED
    events = _events(c, job_id)
    assert _audit(events) == [("job.submitted", SUBMITTER), ("job.cancel", OTHER)]
    assert [e.type for e in events if e.type != "audit_record"] == ["job_submitted", "job_cancelled"]


def test_a_retry_is_audited_under_the_caller_who_retried_not_as_a_new_submit(container: Container) -> None:
    c = container
    job_id = _submit(c)
    c.job_service.cancel(job_id, actor=SUBMITTER)
    c.job_service.retry(job_id, actor=OTHER)
    events = _events(c, job_id)
    assert _audit(events) == [("job.submitted", SUBMITTER), ("job.cancel", SUBMITTER), ("job.retry", OTHER)]
    # The lifecycle event still says the job is queued again; it is no one's audit record.
    assert [e.type for e in events if e.type != "audit_record"] == ["job_submitted", "job_cancelled", "job_submitted"]
