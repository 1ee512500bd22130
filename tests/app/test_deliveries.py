"""Dead workers' deliveries: records, alive keys and recovery on the session's real Redis, with
messages published by the application's own Celery app and received through kombu's own channel
(into ``unacked``, as a worker receives them)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from pynomaly.config import Settings
from pynomaly.messaging.celery_app import create_celery
from pynomaly.messaging.deliveries import (
    DELIVERIES,
    WORKER_ALIVE,
    Delivery,
    DeliveryRegistry,
    KombuLayout,
    Reaper,
)
from pynomaly.storage.redis_client import redis_from_settings
from pynomaly.topology import PRIORITY_SEPARATOR, Q_DETECTION, TASK_DETECT, TOPOLOGY, Priority
from tests.e2e.support import own_redis_db, queue_lengths

pytestmark = pytest.mark.services

DELIVERIES_DB = 7


class Broker:
    """The app's Celery app for publishing and one kombu channel for receiving, like a worker's."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_celery(settings)
        self.connection = self.app.connection_for_write()
        self.channel = self.connection.channel()
        self.layout = KombuLayout(self.channel)

    def publish(self, job_id: str, priority: Priority) -> None:
        self.app.send_task(TASK_DETECT, args=[job_id], queue=Q_DETECTION, priority=priority.step)

    def receive(self) -> Any:
        message = self.channel.basic_get(Q_DETECTION, no_ack=False)
        assert message is not None, "nothing to receive"
        return message

    def close(self) -> None:
        self.connection.release()


@pytest.fixture
def isolated(settings: Settings, redis_server) -> Iterator[Settings]:  # type: ignore[no-untyped-def]
    with own_redis_db(settings, redis_server, DELIVERIES_DB) as value:
        yield value


@pytest.fixture
def client(isolated: Settings) -> Iterator[redis.Redis]:
    c = redis_from_settings(isolated)
    yield c
    c.close()


@pytest.fixture
def broker(isolated: Settings) -> Iterator[Broker]:
    b = Broker(isolated)
    yield b
    b.close()


def _dead_worker(client: redis.Redis, name: str = "detection@gone") -> DeliveryRegistry:
    # Never beats: its alive key does not exist, as after its TTL ran out.
    return DeliveryRegistry(client, name, f"dead-{name}", alive_ttl=15)


def _reaper(client: redis.Redis, broker: Broker) -> Reaper:
    return Reaper(client, lambda: broker.layout)


@pytest.mark.parametrize("priority", list(Priority))
def test_a_dead_worker_s_message_goes_back_to_the_list_kombu_published_it_to(
    client: redis.Redis, broker: Broker, priority: Priority
) -> None:
    broker.publish("job-a", priority)
    published_to = [name for name, n in queue_lengths(client).items() if n]
    step = priority.step
    expected = Q_DETECTION if step == 0 else f"{Q_DETECTION}{PRIORITY_SEPARATOR}{step}"
    assert published_to == [expected] and expected in TOPOLOGY.queue(Q_DETECTION).redis_lists()

    message = broker.receive()
    assert client.hexists(broker.layout.unacked_key, message.delivery_tag)
    _dead_worker(client).record(message.delivery_tag, TASK_DETECT, "job-a")

    recovered = _reaper(client, broker).recover()
    assert [r.queues for r in recovered] == [published_to]
    assert recovered[0].delivery.job_id == "job-a" and recovered[0].delivery.owner == "detection@gone"
    assert not client.hexists(broker.layout.unacked_key, message.delivery_tag)
    assert client.zscore(broker.layout.unacked_index_key, message.delivery_tag) is None
    assert not client.hexists(DELIVERIES, message.delivery_tag)
    # Received again: the same message, marked redelivered as kombu's own restore marks it (Celery
    # hands delivery_info.redelivered to the task).
    again = broker.receive()
    assert again.delivery_tag == message.delivery_tag
    assert again.delivery_info["redelivered"] is True and again.headers["redelivered"] is True
    assert again.headers["id"] == message.headers["id"]


def test_a_recovered_message_is_next_out_of_its_queue(client: redis.Redis, broker: Broker) -> None:
    broker.publish("first", Priority.NORMAL)
    broker.publish("second", Priority.NORMAL)
    first = broker.receive()
    _dead_worker(client).record(first.delivery_tag, TASK_DETECT, "first")
    assert len(_reaper(client, broker).recover()) == 1
    assert broker.receive().delivery_tag == first.delivery_tag  # ahead of "second", which waited longer


def test_a_live_worker_s_deliveries_are_left_alone(client: redis.Redis, broker: Broker, isolated: Settings) -> None:
    broker.publish("job-b", Priority.HIGH)
    message = broker.receive()
    live = DeliveryRegistry(client, "detection@alive", "live-1", isolated.heartbeat_stale_after)
    live.alive()
    ttl = client.pttl(WORKER_ALIVE + "live-1") / 1000
    assert isolated.heartbeat_stale_after - 2 < ttl <= isolated.heartbeat_stale_after
    live.record(message.delivery_tag, TASK_DETECT, "job-b")
    assert _reaper(client, broker).recover() == []
    assert client.hexists(broker.layout.unacked_key, message.delivery_tag)
    assert not any(queue_lengths(client).values())
    # Once its alive key is gone (the TTL ran out), the same delivery is recovered.
    client.delete(WORKER_ALIVE + "live-1")
    assert len(_reaper(client, broker).recover()) == 1


def test_an_ack_between_reading_and_restoring_pushes_nothing(client: redis.Redis, broker: Broker) -> None:
    broker.publish("job-c", Priority.LOW)
    message = broker.receive()
    _dead_worker(client).record(message.delivery_tag, TASK_DETECT, "job-c")
    reaper = _reaper(client, broker)
    [(delivery, raw)] = reaper.orphans()
    message.ack()  # the worker was only slow: its ack lands after the reaper read the record
    assert reaper.restore(broker.layout, delivery, raw) == []
    assert not any(queue_lengths(client).values())
    assert not client.hexists(DELIVERIES, message.delivery_tag)  # the leaked record is dropped


def test_two_reapers_restore_a_message_once(client: redis.Redis, broker: Broker) -> None:
    broker.publish("job-d", Priority.CRITICAL)
    message = broker.receive()
    _dead_worker(client).record(message.delivery_tag, TASK_DETECT, "job-d")
    one, two = _reaper(client, broker), _reaper(client, broker)
    [(delivery, raw)] = one.orphans()
    assert two.orphans() == [(delivery, raw)]
    assert one.restore(broker.layout, delivery, raw) == [Q_DETECTION]
    assert two.restore(broker.layout, delivery, raw) == []
    assert queue_lengths(client)[Q_DETECTION] == 1


def test_a_later_receipt_of_the_message_is_not_taken_away(client: redis.Redis, broker: Broker) -> None:
    # The record is of an earlier receipt (its worker died long ago); the message came back by
    # another way and was received again just now, before the new receiver wrote its record.
    broker.publish("job-e", Priority.NORMAL)
    message = broker.receive()
    old = Delivery(message.delivery_tag, "detection@gone", "dead-old", TASK_DETECT, "job-e", time.time() - 60)
    client.hset(DELIVERIES, old.tag, old.to_json())
    assert _reaper(client, broker).recover() == []
    assert client.hexists(broker.layout.unacked_key, message.delivery_tag)
    assert not any(queue_lengths(client).values())
    # A new receiver's record replaces it while the reaper works: the reaper does not act on its
    # stale read either.
    reaper = _reaper(client, broker)
    [(delivery, raw)] = reaper.orphans()
    DeliveryRegistry(client, "detection@new", "new-1", 15).alive()
    DeliveryRegistry(client, "detection@new", "new-1", 15).record(message.delivery_tag, TASK_DETECT, "job-e")
    assert reaper.restore(broker.layout, delivery, raw) == []
    assert Delivery.from_json(message.delivery_tag, client.hget(DELIVERIES, message.delivery_tag)).owner == (
        "detection@new"
    )


def test_a_worker_forgets_only_its_own_receipt(client: redis.Redis) -> None:
    first = DeliveryRegistry(client, "detection@a", "inst-a", 15)
    second = DeliveryRegistry(client, "detection@b", "inst-b", 15)
    first.record("tag-1", TASK_DETECT, "job-f")
    second.record("tag-1", TASK_DETECT, "job-f")  # received again elsewhere after a restore
    assert first.forget("tag-1") is False
    assert client.hexists(DELIVERIES, "tag-1")
    assert second.forget("tag-1") is True
    assert not client.hexists(DELIVERIES, "tag-1")


def test_a_leaked_record_of_a_dead_worker_is_dropped_without_pushing(client: redis.Redis, broker: Broker) -> None:
    _dead_worker(client).record("no-such-tag", TASK_DETECT, "job-g")
    client.hset(DELIVERIES, "garbage", "{not json")
    assert _reaper(client, broker).recover() == []
    assert client.hlen(DELIVERIES) == 0
    assert not any(queue_lengths(client).values())


def test_a_redelivered_step_is_counted_and_past_max_retries_refused(isolated: Settings) -> None:
    import numpy as np

    from pynomaly.domain.datasets import Dataset
    from pynomaly.domain.jobs import Job, JobStatus, Step, new_job_id, new_run_token
    from pynomaly.usecases.jobs import JobService
    from pynomaly.usecases.pipeline import Pipeline, RedeliveredTooOften
    from pynomaly.wiring import Container

    c = Container(isolated, "tests")
    try:
        job = Job(new_job_id(), "iforest", {}, 0.1, None, "normal", ["detect"], {}, {"rows": 3},
                  run_token=new_run_token())  # fmt: skip
        c.jobs.create(job, Dataset(("a",), np.array([[1.0], [2.0], [3.0]])))
        flow = Pipeline(c.jobs, c.messaging)
        limit = isolated.max_retries
        assert flow.begin(job.id, Step.DETECT, 1, job.run_token, max_redeliveries=limit) is not None
        for n in range(1, limit + 1):  # each worker lost; the step runs again
            running = flow.begin(job.id, Step.DETECT, 1, job.run_token, redelivered=True, max_redeliveries=limit)
            assert running is not None and running.redeliveries == n
        with pytest.raises(RedeliveredTooOften, match=f"redelivered {limit + 1} times"):
            flow.begin(job.id, Step.DETECT, 1, job.run_token, redelivered=True, max_redeliveries=limit)
        assert c.jobs.get(job.id).redeliveries == limit + 1
        # A message of a finished job is skipped, not counted.
        c.jobs.transition(job.id, JobStatus.FAILED)
        assert flow.begin(job.id, Step.DETECT, 1, job.run_token, redelivered=True, max_redeliveries=limit) is None
        assert c.jobs.get(job.id).redeliveries == limit + 1
        # Run again by hand: its steps start over (the total stays as history).
        service = JobService(c.jobs, c.messaging, c.dead_letters)
        again = service.retry(job.id)
        assert again.step_redeliveries == {} and again.redeliveries == limit + 1
    finally:
        c.close()
