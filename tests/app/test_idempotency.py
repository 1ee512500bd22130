"""Idempotency-Key under concurrency: N submits with one key at once create exactly one job and
enqueue it once, on the real Redis (its own database) and Kafka of the session."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pynomaly.config import Settings
from pynomaly.domain.datasets import DatasetLimits, from_rows
from pynomaly.domain.errors import Conflict, InvalidInput
from pynomaly.storage.jobs import JOB_INDEX
from pynomaly.usecases.jobs import JobService, SubmitRequest
from pynomaly.wiring import Container
from tests.e2e.support import own_redis_db, queue_lengths, small_rows

pytestmark = pytest.mark.services

IDEMPOTENCY_DB = 8
THREADS = 16
LIMITS = DatasetLimits(1024 * 1024, 1000, 10)


@pytest.fixture
def container(settings: Settings, redis_server: Any) -> Iterator[Container]:
    with own_redis_db(settings, redis_server, IDEMPOTENCY_DB) as isolated:
        c = Container(isolated, "tests")
        try:
            yield c
        finally:
            c.close()


def _request(key: str, detector: str = "ecod") -> SubmitRequest:
    return SubmitRequest(dataset=from_rows(small_rows(30), None, LIMITS), detector=detector, idempotency_key=key)


def _enqueued(c: Container) -> int:
    return sum(queue_lengths(c.redis).values())


def test_concurrent_submits_with_one_key_create_one_job(container: Container) -> None:
    service = JobService(container.jobs, container.messaging, container.dead_letters)
    start = threading.Barrier(THREADS)
    outcomes: list[tuple[str, bool] | Exception] = []
    lock = threading.Lock()

    def submit() -> None:
        request = _request("race-1")  # each caller builds its own request, as separate HTTP requests do
        start.wait()
        try:
            job, created = service.submit(request)
            outcome: tuple[str, bool] | Exception = (job.id, created)
        except Conflict as exc:  # the winner was still storing its job: the client retries
            outcome = exc
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=submit) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    answered = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(outcomes) == THREADS
    assert [created for _, created in answered].count(True) == 1, outcomes
    assert len({job_id for job_id, _ in answered}) == 1, outcomes
    assert container.redis.zcard(JOB_INDEX) == 1
    assert _enqueued(container) == 1

    # A retry after the race returns the job; the same key with another body is refused, enqueuing nothing.
    (job_id,) = {job_id for job_id, _ in answered}
    job, created = service.submit(_request("race-1"))
    assert (job.id, created) == (job_id, False)
    with pytest.raises(InvalidInput, match="Idempotency-Key was already used with a different request"):
        service.submit(_request("race-1", detector="copod"))
    assert container.redis.zcard(JOB_INDEX) == 1 and _enqueued(container) == 1


def test_a_claim_whose_job_never_appears_is_a_conflict_then_expires(container: Container) -> None:
    """A submit that died between claim and create: others get a 409, and the key frees itself."""
    service = JobService(container.jobs, container.messaging, container.dead_letters)
    request = _request("orphan-1")
    # A claim as an earlier version stored it (job id only, no fingerprint), about to expire.
    container.redis.set("pynomaly:idempotency:orphan-1", "job-that-died", ex=4)
    with pytest.raises(Conflict, match="still being processed"):
        service.submit(request)
    assert container.redis.zcard(JOB_INDEX) == 0 and _enqueued(container) == 0
    time.sleep(2.5)  # after the 2 s wait of the refused submit: past the claim's 4 s
    _job, created = service.submit(request)
    assert created and container.redis.zcard(JOB_INDEX) == 1
    assert container.redis.ttl("pynomaly:idempotency:orphan-1") > 60, "confirmed for the job's lifetime"
