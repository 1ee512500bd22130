"""The outbox relay on the session's real Redis (its own database) and Kafka: order per job, nothing
removed before the broker acknowledged it, and a re-sent event (a crash between ack and removal)
deduplicated by the consumers' event-id check."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis

from pynomaly.config import Settings
from pynomaly.consumers.handlers import StreamBridge
from pynomaly.localstack.ports import free_port
from pynomaly.messaging.events import EventEnvelope, make_event
from pynomaly.messaging.outbox import OUTBOX_STREAM, Outbox, OutboxFull, OutboxRelay, relay_producer
from pynomaly.topology import S_DASHBOARD, TOPOLOGY
from tests.e2e.support import own_redis_db, read_topic

pytestmark = pytest.mark.services
OUTBOX_DB = 9


def _events(job_ids: list[str]) -> list[EventEnvelope]:
    # Interleaved across jobs, as concurrent requests write them.
    return [
        make_event(kind, job_id, "test", status="queued")
        for kind in ("job_submitted", "job_started", "job_completed")
        for job_id in job_ids
    ]


def _of(records: list[Any], job_ids: list[str]) -> list[EventEnvelope]:
    wanted = {j.encode() for j in job_ids}
    return [EventEnvelope.decode(r.value) for r in records if r.key in wanted]


def test_relay_publishes_in_order_and_removes_only_acknowledged_events(settings: Settings, redis_server) -> None:  # type: ignore[no-untyped-def]
    with own_redis_db(settings, redis_server, OUTBOX_DB, kafka_delivery_timeout_seconds=2) as value:
        client = redis.Redis.from_url(value.redis_url, decode_responses=True)
        outbox = Outbox(client, max_events=100)
        jobs = [f"outbox-{uuid.uuid4().hex[:8]}" for _ in range(3)]
        events = _events(jobs)
        outbox.add(events)

        # A broker that is not there: the batch fails and every entry stays, in its order.
        dead = value.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}"})
        failing = OutboxRelay(outbox, dead, producer_factory=lambda: relay_producer(dead), block_ms=100)
        with pytest.raises(Exception):  # noqa: B017 - kafka-python's own error for "no broker"
            failing.run_once()
        assert [json.loads(f["event"])["id"] for _, f in client.xrange(OUTBOX_STREAM)] == [e.id for e in events]

        relay = OutboxRelay(outbox, value, batch=4, block_ms=100)  # several batches
        try:
            published = 0
            while outbox.depth():
                published += relay.run_once()
        finally:
            relay.stop()
        assert published == len(events)

        topic = TOPOLOGY.topic_for_event("job_submitted")
        records = read_topic(value, topic, lambda rs: len(_of(rs, jobs)) == len(events))
        got = _of(records, jobs)
        for job_id in jobs:  # each job's events in the order they were written
            assert [e.id for e in got if e.subject == job_id] == [e.id for e in events if e.subject == job_id]

        # At least once: the same events again (as after a crash between the ack and XDEL)...
        outbox.add(events[:2])
        relay = OutboxRelay(outbox, value, block_ms=100)
        try:
            assert relay.run_once() == 2
        finally:
            relay.stop()
        records = read_topic(value, topic, lambda rs: len(_of(rs, jobs)) == len(events) + 2)
        # ...reach the consumers twice, and the bridge keeps one of each.
        bridge = StreamBridge(client, 1000, "outbox-test")
        for event in _of(records, jobs):
            bridge(event)
        bridged = [f["id"] for _, f in client.xrange(S_DASHBOARD) if f.get("subject") in jobs]
        assert sorted(bridged) == sorted(e.id for e in events)
        client.close()


def test_a_full_outbox_refuses_new_work_but_keeps_accepted_events(settings: Settings, redis_server) -> None:  # type: ignore[no-untyped-def]
    with own_redis_db(settings, redis_server, OUTBOX_DB) as value:
        client = redis.Redis.from_url(value.redis_url, decode_responses=True)
        outbox = Outbox(client, max_events=4)
        outbox.add(_events(["a"]))
        with pytest.raises(OutboxFull):  # a new job's events: refused before anything is written
            outbox.check_room(len(_events(["b"])))
        outbox.add(_events(["c"]))  # an accepted job's events: always written, never dropped
        assert outbox.depth() == 6
        client.close()
