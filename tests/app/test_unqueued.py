"""A job stored but never sent to its queue (the process died, or Redis failed, between the job's write
and its Celery message) is found by the maintenance sweep and sent again, once; on the session's real
Redis (its own database) and Kafka."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pynomaly.config import Settings
from pynomaly.domain.datasets import DatasetLimits, from_rows
from pynomaly.domain.jobs import Job, JobStatus, new_job_id, new_run_token
from pynomaly.storage.jobs import UNQUEUED
from pynomaly.usecases.jobs import JobService, SubmitRequest
from pynomaly.wiring import Container
from tests.e2e.support import own_redis_db, queue_lengths, small_rows

pytestmark = pytest.mark.services

UNQUEUED_DB = 10
LIMITS = DatasetLimits(1024 * 1024, 1000, 10)


@pytest.fixture
def container(settings: Settings, redis_server: Any) -> Iterator[Container]:
    with own_redis_db(settings, redis_server, UNQUEUED_DB) as isolated:
        c = Container(isolated, "tests")
        try:
            yield c
        finally:
            c.close()


def _enqueued(c: Container) -> int:
    return sum(queue_lengths(c.redis).values())


def _stored_but_not_sent(c: Container) -> Job:
    """What a submit leaves when it dies right after the job's MULTI/EXEC."""
    dataset = from_rows(small_rows(20), None, LIMITS)
    job = Job(
        id=new_job_id(),
        detector="ecod",
        params={},
        contamination=0.1,
        threshold=None,
        priority="normal",
        steps=["detect"],
        preprocessing={},
        dataset=dataset.summary(),
        run_token=new_run_token(),
    )
    c.jobs.create(job, dataset)
    return job


def test_a_submit_confirms_its_message_and_leaves_nothing_to_sweep(container: Container) -> None:
    service = JobService(container.jobs, container.messaging, container.dead_letters)
    job, _ = service.submit(SubmitRequest(dataset=from_rows(small_rows(20), None, LIMITS), detector="ecod"))
    assert container.redis.zscore(UNQUEUED, job.id) is None
    assert service.requeue_unqueued(0) == []
    assert _enqueued(container) == 1


def test_a_job_stored_without_its_message_is_sent_again_once(container: Container) -> None:
    service = JobService(container.jobs, container.messaging, container.dead_letters)
    lost = _stored_but_not_sent(container)
    assert _enqueued(container) == 0

    assert service.requeue_unqueued(60) == []  # within the grace period: its submit may still be sending
    assert service.requeue_unqueued(0) == [lost.id]
    assert _enqueued(container) == 1
    again = container.jobs.get(lost.id)
    assert again.state is JobStatus.QUEUED
    # A new run token: had the first message existed after all, a worker would skip it as stale.
    assert again.run_token and again.run_token != lost.run_token
    assert service.requeue_unqueued(0) == []  # confirmed: not sent a third time
    assert _enqueued(container) == 1


def test_a_job_that_started_meanwhile_is_only_unmarked(container: Container) -> None:
    service = JobService(container.jobs, container.messaging, container.dead_letters)
    started = _stored_but_not_sent(container)
    container.jobs.transition(started.id, JobStatus.RUNNING)  # its message did reach a worker
    cancelled = _stored_but_not_sent(container)
    service.cancel(cancelled.id)
    assert service.requeue_unqueued(0) == []
    assert _enqueued(container) == 0
    assert container.redis.zcard(UNQUEUED) == 0
    assert container.jobs.get(started.id).run_token == started.run_token
