"""Bounded resources on real Redis: audit trimming, job purge, memory reservations, admission control
(on a redis-server of its own with a small maxmemory) and capped event payloads."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import redis

from pynomaly.config import Settings, SettingsError, redis_size_bytes, settings_from_env
from pynomaly.domain.datasets import Dataset, DatasetLimits, from_rows
from pynomaly.domain.errors import Conflict, InsufficientStorage, NotFound
from pynomaly.domain.jobs import JobStatus
from pynomaly.localstack.redis_server import RedisServer
from pynomaly.messaging.events import PayloadCaps, cap_payload
from pynomaly.storage.audit import AUDIT_INDEX, AUDIT_RECORDS, AuditLog
from pynomaly.storage.jobs import PREPARED, RESERVATIONS, RESULT, JobStore, expected_growth
from pynomaly.storage.memory import MemoryAdmission
from pynomaly.usecases.jobs import JobService, SubmitRequest
from pynomaly.wiring import Container
from tests.e2e.support import own_redis_db, small_rows

BOUNDED_DB = 12
LIMITS = DatasetLimits(1024 * 1024, 5000, 10)


@pytest.fixture
def container(settings: Settings, redis_server: Any) -> Iterator[Container]:
    with own_redis_db(settings, redis_server, BOUNDED_DB) as isolated:
        c = Container(isolated, "tests")
        try:
            yield c
        finally:
            c.close()


@pytest.fixture(scope="module")
def small_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of its own with an 8 MB maxmemory, started by the local system's code."""
    server = RedisServer(tmp_path_factory.mktemp("small-redis"), maxmemory="8mb")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def small_client(small_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(small_redis.url)
    client.flushall()
    try:
        yield client
    finally:
        client.flushall()
        client.close()


def _audit_event(age: timedelta, n: int) -> dict[str, Any]:
    when = (datetime.now(UTC) - age).isoformat().replace("+00:00", "Z")
    return {"id": uuid.uuid4().hex, "type": "audit_record", "time": when, "subject": f"s{n}", "data": {"n": n}}


# -- audit log ----------------------------------------------------------------------------------
@pytest.mark.services
def test_audit_log_is_trimmed_by_age_then_by_count(container: Container) -> None:
    log = AuditLog(container.redis)
    old = [_audit_event(timedelta(days=100, minutes=n), n) for n in range(5)]
    recent = [_audit_event(timedelta(minutes=30 - n), 100 + n) for n in range(30)]
    for event in old + recent:
        assert log.record(event)
    assert log.size() == 35

    assert log.trim(max_age_seconds=90 * 24 * 3600, max_records=0) == 5
    assert log.size() == 30 and container.redis.hlen(AUDIT_RECORDS) == 30
    assert log.trim(max_age_seconds=90 * 24 * 3600, max_records=12) == 18
    page, total = log.query(limit=100)
    # The newest twelve stay, the hash and its index in step.
    assert total == 12 and [e["data"]["n"] for e in page] == list(range(129, 117, -1))
    assert container.redis.hlen(AUDIT_RECORDS) == container.redis.zcard(AUDIT_INDEX) == 12
    assert log.trim(0, 0) == 0 and log.size() == 12  # 0 turns both limits off


@pytest.mark.services
def test_maintenance_trims_the_audit_log_and_drops_stale_reservations(container: Container) -> None:
    from pynomaly.workers import policy, scheduler_tasks

    log = AuditLog(container.redis)
    for n in range(8):
        log.record(_audit_event(timedelta(minutes=n), n))
    container.redis.hset(RESERVATIONS, "job-that-expired", 1234)
    trimmed = container.settings.model_copy(update={"audit_max_records": 3})
    previous, policy._container = policy._container, Container(trimmed, "tests")
    try:
        outcome = scheduler_tasks.maintenance()
    finally:
        policy._container.close()
        policy._container = previous
    assert outcome["audit_trimmed"] == 5 and log.size() == 3
    assert outcome["reservations_dropped"] == 1 and not container.redis.exists(RESERVATIONS)


# -- jobs: reservations, prepared data, purge -----------------------------------------------------
def _request(rows: int = 40, **fields: Any) -> SubmitRequest:
    return SubmitRequest(dataset=from_rows(small_rows(rows), None, LIMITS), detector="ecod", **fields)


def _job_keys(client: redis.Redis, job_id: str) -> list[str]:
    return sorted(k for k in client.scan_iter(match=f"*{job_id}*") if k != RESERVATIONS)


@pytest.mark.services
def test_a_job_reserves_its_growth_until_it_finishes_and_then_drops_its_prepared_copy(container: Container) -> None:
    service = JobService(container.jobs, container.messaging, container.dead_letters)
    store = container.jobs
    job, _ = service.submit(_request())
    raw = len(store._b.get(f"pynomaly:dataset:{job.id}"))  # type: ignore[arg-type]
    assert store.reserved_bytes() == expected_growth(raw) > raw

    dataset = store.get_dataset("dataset", job.id)
    store.put_dataset(PREPARED, job.id, dataset)
    store.put_blob(RESULT, job.id, {"scores": [1.0]})
    store.transition(job.id, JobStatus.RUNNING)
    assert store.has_blob(PREPARED, job.id) and store.reserved_bytes() > 0
    store.transition(job.id, JobStatus.COMPLETED)
    # Done: nothing more to write, and the preprocessed copy is not needed by anyone.
    assert store.reserved_bytes() == 0
    assert not store.has_blob(PREPARED, job.id) and store.has_blob("dataset", job.id) and store.has_blob(RESULT, job.id)

    cancelled, _ = service.submit(_request())
    assert store.reserved_bytes() > 0
    service.cancel(cancelled.id)  # queued: cancelled at once, releases its reservation
    assert store.reserved_bytes() == 0
    service.retry(cancelled.id)  # runs again: reserved again
    assert store.reserved_bytes() == expected_growth(raw)


@pytest.mark.services
def test_purge_deletes_a_finished_job_with_everything_kept_for_it(container: Container) -> None:
    service = JobService(container.jobs, container.messaging, container.dead_letters)
    store = container.jobs
    job, _ = service.submit(_request(idempotency_key=f"purge-{uuid.uuid4().hex}"))
    with pytest.raises(Conflict, match="cancel it"):
        service.purge(job.id)  # queued: a worker may be about to run it

    store.put_dataset(PREPARED, job.id, store.get_dataset("dataset", job.id))
    store.put_blob(RESULT, job.id, {"scores": [1.0]})
    for kind in ("report-json", "report-csv", "report-html"):
        store.put_blob(kind, job.id, "report")
    store.transition(job.id, JobStatus.RUNNING)
    store.transition(job.id, JobStatus.COMPLETED)
    assert len(_job_keys(container.redis, job.id)) >= 6  # record, dataset, result, 3 reports (+ key)

    service.purge(job.id, actor="tests")
    assert _job_keys(container.redis, job.id) == []
    assert container.redis.hget(RESERVATIONS, job.id) is None
    assert job.id not in {j.id for j in store.list(limit=100)[0]}
    with pytest.raises(NotFound):
        service.purge(job.id)
    # The Idempotency-Key is free again: the same request makes a new job.
    again, created = service.submit(_request(idempotency_key=job.idempotency_key))
    assert created and again.id != job.id


@pytest.mark.services
def test_a_failed_job_whose_dataset_expired_cannot_be_retried(container: Container) -> None:
    service = JobService(container.jobs, container.messaging, container.dead_letters)
    job, _ = service.submit(_request())
    container.jobs.transition(job.id, JobStatus.FAILED, error="boom")
    container.redis.delete(f"pynomaly:dataset:{job.id}")  # what job_data_ttl_seconds does
    with pytest.raises(Conflict, match="no longer kept"):
        service.retry(job.id)


@pytest.mark.services
def test_job_data_ttl_is_the_blobs_ttl_and_never_outlives_the_job(container: Container) -> None:
    store = JobStore(container.redis, container.redis_bytes, ttl_seconds=600, data_ttl_seconds=120)
    dataset = Dataset(("a", "b"), np.zeros((3, 2)))
    store.put_dataset("dataset", "ttl-job", dataset)
    assert 100 < container.redis.ttl("pynomaly:dataset:ttl-job") <= 120
    with pytest.raises(SettingsError, match="JOB_DATA_TTL_SECONDS"):
        settings_from_env({"PYNOMALY_RESULT_TTL_SECONDS": "600", "PYNOMALY_JOB_DATA_TTL_SECONDS": "601"})
    assert Settings(result_ttl_seconds=600).job_data_ttl == 600


# -- admission control on a small maxmemory --------------------------------------------------------
@pytest.mark.services
def test_local_redis_runs_with_the_maxmemory_it_was_given(small_client: redis.Redis) -> None:
    config = small_client.config_get("maxmemory") | small_client.config_get("maxmemory-policy")
    assert config == {"maxmemory": "8388608", "maxmemory-policy": "noeviction"}


def _fill(client: redis.Redis, target: int, chunk: int = 256 * 1024) -> None:
    """Write ``chunk``-byte values until used_memory passes ``target`` bytes (or Redis refuses: full)."""
    n = 0
    while int(client.info("memory")["used_memory"]) < target:
        try:
            client.set(f"fill:{chunk}:{n}", b"x" * chunk)
        except redis.exceptions.OutOfMemoryError:
            return
        n += 1


@pytest.mark.services
def test_admission_refuses_before_redis_refuses_writes(small_client: redis.Redis) -> None:
    reserved = {"bytes": 0}
    admission = MemoryAdmission(small_client, 0.9, lambda: reserved["bytes"], refresh_seconds=0)
    limit = 8 * 1024 * 1024
    admission.check(1024 * 1024)  # an almost empty Redis admits a megabyte

    reserved["bytes"] = int(0.9 * limit)  # accepted jobs will still write this much
    with pytest.raises(InsufficientStorage, match="90% watermark") as refused:
        admission.check(64 * 1024)
    assert refused.value.status == 507 and refused.value.retry_after > 0
    reserved["bytes"] = 0

    _fill(small_client, int(0.85 * limit))
    with pytest.raises(InsufficientStorage):
        admission.check(1024 * 1024)
    small_client.set("still-room", b"y" * 1024)  # Redis itself still accepts writes: the API stopped first

    small_client.config_set("maxmemory", 0)  # no limit: nothing to protect against
    try:
        admission.check(64 * 1024 * 1024)
    finally:
        small_client.config_set("maxmemory", limit)


@pytest.mark.services
def test_admission_counts_what_it_admitted_between_readings(small_client: redis.Redis) -> None:
    # One INFO per hour: only the running sum of admitted bytes can stop the fifth request.
    admission = MemoryAdmission(small_client, 0.9, lambda: 0, refresh_seconds=3600)
    used = admission.reading().used
    step = int((0.9 * 8 * 1024 * 1024 - used) / 4.5)
    for _ in range(4):
        admission.check(step)
    with pytest.raises(InsufficientStorage):
        admission.check(step)


@pytest.mark.services
def test_a_redis_at_maxmemory_is_a_507_and_leaves_no_half_stored_job(
    small_redis: RedisServer, small_client: redis.Redis
) -> None:
    small_client.config_set("maxmemory", 4 * 1024 * 1024)
    try:
        _fill(small_client, 4 * 1024 * 1024)
        _fill(small_client, 8 * 1024 * 1024, chunk=1024)  # small writes until Redis refuses one: full
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            small_client.set("one-more", b"z" * 1024)
        c = Container(Settings(redis_url=small_redis.url, kafka_bootstrap_servers="127.0.0.1:9"), "tests")
        store = c.jobs
        service = JobService(store, c.messaging, c.dead_letters)  # no admission: Redis itself must refuse
        big = SubmitRequest(dataset=Dataset(("a", "b"), np.ones((4000, 2))), detector="ecod")
        with pytest.raises(InsufficientStorage, match="maxmemory"):
            service.submit(big)
        assert store.list(limit=10)[1] == 0
        assert not list(small_client.scan_iter(match="pynomaly:dataset:*"))
        c.close()
    finally:
        small_client.config_set("maxmemory", 8 * 1024 * 1024)


def test_redis_sizes_and_the_local_maxmemory_setting() -> None:
    assert redis_size_bytes("512mb") == 512 * 1024 * 1024
    assert redis_size_bytes("1g") == 10**9 and redis_size_bytes("4096") == 4096
    assert redis_size_bytes("lots") == -1
    for bad in ("0", "0mb", "lots", "-5mb"):
        with pytest.raises(SettingsError, match="LOCAL_REDIS_MAXMEMORY"):
            settings_from_env({"PYNOMALY_LOCAL_REDIS_MAXMEMORY": bad})
    with pytest.raises(SettingsError, match="REDIS_MEMORY_HIGH_WATERMARK"):
        settings_from_env({"PYNOMALY_REDIS_MEMORY_HIGH_WATERMARK": "1.5"})


# -- event payload caps ---------------------------------------------------------------------------
def test_event_payloads_are_capped_and_say_what_was_cut() -> None:
    columns = [f"c{i:03d}" for i in range(200)]
    contributions = {c: i / 1000 for i, c in enumerate(columns)}  # c199 is the strongest
    data = {
        "status": "running",
        "columns": columns,
        "scores": list(range(2000)),
        "top_anomalies": [{"row": 1, "score": 9.0, "contributions": contributions}],
        "error": "x" * 5000,
        "steps": ["preprocess", "detect"],
    }
    capped = cap_payload(data, PayloadCaps(max_list_items=20, max_mapping_items=5, max_string_chars=100))
    assert capped["columns"] == columns[:20] and capped["columns_total"] == 200
    assert capped["scores"] == list(range(20)) and capped["scores_total"] == 2000
    top = capped["top_anomalies"][0]
    assert list(top["contributions"]) == ["c199", "c198", "c197", "c196", "c195"]
    assert top["contributions_total"] == 200 and top["row"] == 1
    assert capped["error"].startswith("x" * 100) and capped["error"].endswith("(5000 chars)")
    assert capped["steps"] == ["preprocess", "detect"] and "steps_total" not in capped
    assert capped["status"] == "running"
    assert data["scores"] == list(range(2000))  # the caller's data is not changed


def test_a_field_the_event_has_is_never_overwritten_by_a_total() -> None:
    capped = cap_payload({"rows": list(range(10)), "rows_total": 7}, PayloadCaps(max_list_items=3))
    assert capped == {"rows": [0, 1, 2], "rows_total": 7}


def test_the_message_queue_service_caps_what_it_publishes() -> None:
    from pynomaly.messaging.service import MessageQueueService

    sent: list[Any] = []

    class Recorder:  # the transport is not what is tested here: what reaches it is
        def publish(self, event: Any, wait: bool = True) -> None:
            sent.append(event)

    service = MessageQueueService(None, Recorder(), None, "tests", outbox=None, caps=PayloadCaps(max_list_items=10))  # type: ignore[arg-type]
    event = service.publish_event("job_completed", "job-1", steps=list(range(50)))
    assert sent == [event] and event.data["steps"] == list(range(10)) and event.data["steps_total"] == 50
    staged = service.new_event("job_submitted", "job-1", steps=list(range(50)))  # what the outbox gets
    assert staged.data["steps"] == list(range(10)) and staged.data["steps_total"] == 50
    # The default caps apply without settings too: event data is always bounded.
    default = MessageQueueService(None, Recorder(), None, "tests", outbox=None)  # type: ignore[arg-type]
    assert len(default.publish_event("job_completed", "job-2", scores=[0.5] * 5000).data["scores"]) == 2000
