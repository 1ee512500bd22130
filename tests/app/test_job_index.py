"""Job listing reads one page of an index (per status, or all jobs) and stays right as jobs move.

On a redis-server of its own (started by the local system's code), so the test owns every key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from pynomaly.domain.datasets import DatasetLimits, from_rows
from pynomaly.domain.jobs import Job, JobStatus, new_job_id
from pynomaly.localstack.redis_server import RedisServer
from pynomaly.storage.jobs import JOB_INDEX, STATUS_INDEXED, JobStore, status_index
from tests.e2e.support import small_rows

TTL = 3600


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(Path(tmp_path_factory.mktemp("job-index-redis")))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def store(own_redis: RedisServer) -> Iterator[JobStore]:
    text = redis.Redis.from_url(own_redis.url, decode_responses=True)
    blobs = redis.Redis.from_url(own_redis.url)
    text.flushall()
    try:
        yield JobStore(text, blobs, TTL)
    finally:
        text.flushall()
        text.close()
        blobs.close()


def _create(store: JobStore, n: int, detector: str = "hbos") -> list[str]:
    dataset = from_rows(small_rows(10), None, DatasetLimits(1 << 20, 1000, 10))
    ids = []
    for _ in range(n):
        job = Job(
            id=new_job_id(),
            detector=detector,
            params={},
            contamination=0.1,
            threshold=None,
            priority="normal",
            steps=["detect"],
            preprocessing={},
            dataset=dataset.summary(),
        )
        store.create(job, dataset)
        ids.append(job.id)
    return ids


@pytest.mark.services
def test_pages_follow_status_changes_newest_first(store: JobStore) -> None:
    ids = _create(store, 12)
    for job_id in ids[:5]:
        store.transition(job_id, JobStatus.RUNNING)
    for job_id in ids[:3]:
        store.transition(job_id, JobStatus.COMPLETED)
    store.request_cancel(ids[11])

    page, total = store.list(status="running", limit=10)
    assert total == 2 and [j.id for j in page] == [ids[4], ids[3]]
    page, total = store.list(status="completed", offset=1, limit=1)
    assert total == 3 and [j.id for j in page] == [ids[1]]
    page, total = store.list(status="queued", limit=100)
    assert total == 6 and [j.id for j in page] == list(reversed(ids[5:11]))
    page, total = store.list(limit=4)
    assert total == 12 and [j.id for j in page] == list(reversed(ids[8:]))
    assert store.list(limit=0) == ([], 12)
    assert store.counts_by_status() == {
        **{s.value: 0 for s in JobStatus},
        "queued": 6,
        "running": 2,
        "completed": 3,
        "cancelled": 1,
    }
    # The detector filter still scans and agrees with the index.
    assert store.list(detector="hbos", limit=100)[1] == 12

    store.purge(ids[0])
    assert store.list(status="completed")[1] == 2 and store.list()[1] == 11


@pytest.mark.services
def test_expired_and_misfiled_entries_are_dropped_when_a_page_meets_them(store: JobStore) -> None:
    ids = _create(store, 6)
    r = store._r
    r.delete(f"pynomaly:job:{ids[5]}")  # expired by TTL before its entry left the index
    # A job left in the wrong status index (as a crash before the indexes were atomic could leave it).
    r.zadd(status_index("running"), {ids[4]: 1e12})
    page, total = store.list(limit=3)
    assert [j.id for j in page] == [ids[4], ids[3], ids[2]] and total == 5
    page, total = store.list(status="running")
    assert page == [] and total == 0 and r.zcard(status_index("running")) == 0
    # Entries older than the TTL go without reading their documents.
    r.zadd(JOB_INDEX, {"ancient": 1.0})
    assert store.list()[1] == 5 and r.zscore(JOB_INDEX, "ancient") is None


@pytest.mark.services
def test_jobs_stored_before_the_indexes_are_indexed_once(store: JobStore) -> None:
    ids = _create(store, 4)
    store.transition(ids[0], JobStatus.RUNNING)
    r = store._r
    for status in JobStatus:  # as a store written by the previous version left it
        r.delete(status_index(status.value))
    r.delete(STATUS_INDEXED)
    page, total = store.list(status="queued")
    assert total == 3 and [j.id for j in page] == [ids[3], ids[2], ids[1]]
    assert r.get(STATUS_INDEXED) == "1"
    assert json.loads(r.get(f"pynomaly:job:{ids[0]}"))["status"] == "running"
    assert store.list(status="running")[1] == 1


@pytest.mark.services
def test_the_index_move_and_the_callers_writes_share_one_transaction(store: JobStore) -> None:
    ids = _create(store, 2)
    r = store._r

    def broken(_job: Job, pipe: Any) -> None:
        pipe.set("outbox-stand-in", "staged")
        raise RuntimeError("killed between the write and its event")

    with pytest.raises(RuntimeError):
        store.transition(ids[0], JobStatus.RUNNING, also=broken)
    # Neither the document, nor the index move, nor the caller's write happened.
    assert store.get(ids[0]).state is JobStatus.QUEUED and r.get("outbox-stand-in") is None
    assert r.zscore(status_index("queued"), ids[0]) is not None and r.zcard(status_index("running")) == 0

    store.transition(ids[0], JobStatus.RUNNING, also=lambda job, pipe: pipe.set("outbox-stand-in", job.status))
    assert r.get("outbox-stand-in") == "running"
    assert [j.id for j in store.list(status="running")[0]] == [ids[0]] and store.list(status="queued")[1] == 1
