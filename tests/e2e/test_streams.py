"""Kafka -> Redis Streams bridge (idempotent, poison events to <topic>.dlq), heartbeats on health:stream,
and the WebSocket /v1/stream: authentication, live entries, resume with last_id.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import redis
from kafka import KafkaProducer
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from pynomaly.api import API_KEY_HEADER
from pynomaly.client import PynomalyClient
from pynomaly.messaging.events import EventEnvelope, make_event
from pynomaly.messaging.kafka_admin import connection_config
from pynomaly.topology import GROUP_BRIDGE, S_DASHBOARD, S_HEALTH, S_NOTIFICATIONS, T_JOB, TOPOLOGY
from tests.e2e.support import read_topic, small_rows, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def producer(local_system) -> Iterator[KafkaProducer]:  # type: ignore[no-untyped-def]
    value = KafkaProducer(acks="all", **connection_config(local_system.settings))
    try:
        yield value
    finally:
        value.close(timeout=2)


def _send(producer: KafkaProducer, value: bytes, key: str) -> None:
    producer.send(T_JOB, key=key.encode(), value=value).get(timeout=30)


def _entries(client: redis.Redis, stream: str, subject: str, count: int = 1000) -> list[tuple[str, dict[str, str]]]:
    return [(i, f) for i, f in client.xrevrange(stream, count=count)[::-1] if f.get("subject") == subject]


def _event(subject: str, n: int = 0) -> EventEnvelope:
    return make_event("job_progress", subject, "e2e-test", progress=n / 10, step="detect", message=f"event {n}")


def test_a_jobs_events_reach_the_dashboard_stream_and_only_it(api: PynomalyClient, system_redis: redis.Redis) -> None:
    job_id = api.submit_rows(small_rows(30), "ecod")["id"]
    assert api.wait(job_id, timeout=60)["status"] == "completed"

    def bridged() -> list[str]:
        types = [f["type"] for _, f in _entries(system_redis, S_DASHBOARD, job_id)]
        return types if "job_completed" in types and "anomalies_detected" in types else []

    types = wait_for(bridged, 30, what="the job's events on dashboard:stream")
    # Kafka orders a job's events within a topic, not across topics: anomalies_detected (anomaly_events)
    # may be bridged before or after any job_events record, so the order is checked per topic.
    job_events = [t for t in types if t != "anomalies_detected"]
    assert job_events[0] == "job_submitted" and job_events[-1] == "job_completed"
    assert job_events.index("job_started") < job_events.index("job_completed")
    entry = dict(_entries(system_redis, S_DASHBOARD, job_id))
    fields = next(f for f in entry.values() if f["type"] == "job_completed")
    assert set(fields) == {"id", "type", "source", "time", "subject", "data", "schema_version"}
    assert json.loads(fields["data"])["status"] == "completed"
    # notifications:stream holds delivery outcomes only: the bridge copies no job events there
    # (this job has no notification targets, so nothing of it may be on that stream).
    assert _entries(system_redis, S_NOTIFICATIONS, job_id) == []
    assert not [f for _, f in system_redis.xrevrange(S_NOTIFICATIONS, count=1000) if f.get("job_id") == job_id]


def test_bridge_is_idempotent_and_moves_past_a_poison_event(
    producer: KafkaProducer, system_redis: redis.Redis, local_system
) -> None:  # type: ignore[no-untyped-def]
    subject = f"e2e-bridge-{uuid.uuid4().hex[:8]}"
    duplicate = _event(subject, 1)
    poison = f"not an envelope {subject}".encode()
    after = _event(subject, 2)
    _send(producer, duplicate.encode(), subject)
    _send(producer, duplicate.encode(), subject)  # a redelivery: same event id
    _send(producer, poison, subject)
    _send(producer, after.encode(), subject)

    def both() -> list[tuple[str, dict[str, str]]]:
        entries = _entries(system_redis, S_DASHBOARD, subject)
        return entries if any(f["id"] == after.id for _, f in entries) else []

    entries = wait_for(both, 30, what="the event after the poison one on dashboard:stream")
    assert [f["id"] for _, f in entries] == [duplicate.id, after.id], "each event id appears once, in order"

    dead = read_topic(
        local_system.settings,
        f"{T_JOB}.dlq",
        until=lambda records: any(r.value == poison for r in records),
        key=subject.encode(),
    )
    record = next(r for r in dead if r.value == poison)
    headers = {k: v.decode() for k, v in record.headers}
    assert headers["original_topic"] == T_JOB and headers["consumer_group"] == GROUP_BRIDGE
    assert headers["error"].startswith("invalid envelope") and headers["original_offset"].isdigit()
    assert [r.value for r in dead] == [poison], "only the poison event is dead-lettered"


class _Picky:
    """A batch handler (as the bridge is) that refuses one event: every batch holding it fails."""

    def __init__(self, refused: str) -> None:
        self.refused = refused
        self.handled: list[str] = []
        self.failed_batches: list[int] = []

    def __call__(self, event: EventEnvelope) -> None:
        self.handle_batch([event])

    def handle_batch(self, events: Sequence[EventEnvelope], parents: Sequence[Any] | None = None) -> int:
        if any(e.id == self.refused for e in events):
            self.failed_batches.append(len(events))
            raise ValueError(f"refusing {self.refused}")
        self.handled.extend(e.id for e in events)
        return len(events)


def test_a_batch_that_keeps_failing_is_handled_one_by_one_and_only_the_bad_event_is_dead_lettered(
    producer: KafkaProducer, local_system
) -> None:  # type: ignore[no-untyped-def]
    from pynomaly.consumers.base import EventConsumer
    from pynomaly.topology import ConsumerGroup

    subject = f"e2e-batch-{uuid.uuid4().hex[:8]}"
    good = [_event(subject, n) for n in range(6)]
    bad = _event(subject, 99)
    for event in [*good[:2], bad, *good[2:]]:  # all written first: the group's polls are full batches
        _send(producer, event.encode(), subject)
    group = ConsumerGroup(name=f"batch-fallback-{uuid.uuid4().hex[:8]}", pool="tests", topics=(T_JOB,), description="")
    handler = _Picky(bad.id)
    consumer = EventConsumer(local_system.settings, group, handler)
    thread = threading.Thread(target=consumer.run, name="batch-fallback", daemon=True)
    thread.start()
    try:
        wait_for(lambda: set(handler.handled) >= {e.id for e in good}, 120, what="every good event handled")
    finally:
        consumer.stop()
        thread.join(timeout=30)
    assert bad.id not in handler.handled
    assert handler.failed_batches[0] > 1, "the bad event first failed a whole batch"
    mine = [i for i in handler.handled if i in {e.id for e in good}]
    assert mine == [e.id for e in good], "each good event once, in order"
    dead = read_topic(
        local_system.settings,
        f"{T_JOB}.dlq",
        until=lambda rs: any(bad.id.encode() in r.value for r in rs),
        key=subject.encode(),
    )
    assert [EventEnvelope.decode(r.value).id for r in dead] == [bad.id]
    headers = {k: v.decode() for k, v in dead[0].headers}
    assert headers["consumer_group"] == group.name and headers["error"].startswith("handler failed 3 times")


def test_every_component_heartbeats_on_the_health_stream(system_redis: redis.Redis) -> None:
    expected = {f"worker:{p.name}" for p in TOPOLOGY.worker_pools} | {
        f"consumer:{g.pool}" for g in TOPOLOGY.consumer_groups
    }

    def seen() -> set[str]:
        components = {f.get("component", "") for _, f in system_redis.xrevrange(S_HEALTH, count=300)}
        return components if expected <= components else set()

    assert wait_for(seen, 30, what=f"heartbeats of {sorted(expected)}")


# -- WebSocket ----------------------------------------------------------------------------------------


def _ws_url(local_system, **query: str) -> str:  # type: ignore[no-untyped-def]
    base = local_system.api_url.replace("http://", "ws://") + "/v1/stream"
    return base + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


def _receive(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=timeout))


def _until(ws: ClientConnection, match, timeout: float = 30.0) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Dashboard entries received until one matches (health beats are skipped)."""
    received = []
    # One deadline for the whole wait: heartbeats keep arriving, so a per-message timeout never fires.
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no matching dashboard entry within {timeout:.0f}s; got {received[-5:]}")
        message = _receive(ws, left)
        if message.get("stream") != S_DASHBOARD:
            continue
        received.append(message)
        if match(message):
            return received


@pytest.mark.parametrize("how", ["header", "first message"])
def test_websocket_refuses_a_wrong_key(local_system, how: str) -> None:  # type: ignore[no-untyped-def]
    headers = {API_KEY_HEADER: "wrong"} if how == "header" else {}
    with connect(_ws_url(local_system), additional_headers=headers, open_timeout=10) as ws:
        if how == "first message":
            ws.send(json.dumps({"api_key": "wrong"}))
        error = _receive(ws)
        assert error["type"] == "error" and error["status"] == 401
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_websocket_live_entries_and_resume_delivers_exactly_the_missed_ones(
    local_system, producer: KafkaProducer, system_redis: redis.Redis
) -> None:  # type: ignore[no-untyped-def]
    subject = f"e2e-ws-{uuid.uuid4().hex[:8]}"
    headers = {API_KEY_HEADER: local_system.api_key}
    with connect(_ws_url(local_system), additional_headers=headers, open_timeout=10) as ws:
        hello = _receive(ws)
        assert hello["type"] == "hello" and S_DASHBOARD in hello["streams"]
        live = _event(subject, 0)
        _send(producer, live.encode(), subject)
        received = _until(ws, lambda m: m.get("subject") == subject)
        seen = received[-1]
        assert seen["type"] == "job_progress" and seen["data"]["message"] == "event 0"
        assert seen["event_id"] == live.id and re.fullmatch(r"\d+-\d+", seen["id"]), "id is the stream entry id"
        last_id = seen["id"]

    missed = [_event(subject, n) for n in (1, 2, 3)]
    for event in missed:
        _send(producer, event.encode(), subject)
    wait_for(lambda: len(_entries(system_redis, S_DASHBOARD, subject)) == 4, 30, what="the missed events")

    # A browser authenticates with its first message (it cannot set headers on a WebSocket).
    with connect(_ws_url(local_system), open_timeout=10) as ws:
        ws.send(json.dumps({"api_key": local_system.api_key, "last_id": last_id}))
        hello = _receive(ws)
        assert hello["type"] == "hello" and hello["resume_from"] == last_id
        resumed = _until(ws, lambda m: m.get("event_id") == missed[-1].id)
    end = resumed[-1]["id"]
    expected = [entry_id for entry_id, _ in system_redis.xrange(S_DASHBOARD, min=f"({last_id}", max=end)]
    assert [m["id"] for m in resumed] == expected, "exactly the entries after last_id, none twice"
    mine = [m["data"]["message"] for m in resumed if m.get("subject") == subject]
    assert mine == ["event 1", "event 2", "event 3"]


def test_websocket_tells_a_client_behind_the_maxlen_of_the_gap_and_resumes_at_the_oldest(
    local_system, system_redis: redis.Redis
) -> None:  # type: ignore[no-untyped-def]
    maxlen = local_system.settings.stream_maxlen
    subject = f"e2e-gap-{uuid.uuid4().hex[:8]}"
    seen_last = system_redis.xadd(S_DASHBOARD, {"type": "e2e_filler", "subject": subject, "n": "-1"})
    # Three MAXLENs after it, trimmed as the bridge trims: the entry the client saw last is gone.
    pipe = system_redis.pipeline(transaction=False)
    for n in range(3 * maxlen):
        pipe.xadd(S_DASHBOARD, {"type": "e2e_filler", "subject": subject, "n": str(n)}, maxlen=maxlen, approximate=True)
    pipe.execute()
    oldest = str(system_redis.xrange(S_DASHBOARD, count=1)[0][0])
    assert oldest != seen_last, "the flood must have trimmed the client's last entry"

    headers = {API_KEY_HEADER: local_system.api_key}
    with connect(_ws_url(local_system, last_id=seen_last), additional_headers=headers, open_timeout=10) as ws:
        assert _receive(ws)["type"] == "hello"
        gap = next(m for m in iter(lambda: _receive(ws), None) if m.get("stream") != S_HEALTH)
        assert gap == {"type": "gap", "stream": S_DASHBOARD, "after": seen_last, "before": oldest}
        first = next(m for m in iter(lambda: _receive(ws), None) if m.get("stream") == S_DASHBOARD)
        assert first["id"] == oldest, "after the gap, the stream goes on from the oldest retained entry"

    # Resuming from an entry still retained (a full batch after it, so the check runs): no gap.
    retained = [entry_id for entry_id, _ in system_redis.xrange(S_DASHBOARD, count=50)]
    with connect(_ws_url(local_system, last_id=retained[0]), additional_headers=headers, open_timeout=10) as ws:
        assert _receive(ws)["type"] == "hello"
        received = _until(ws, lambda m: m.get("id") == retained[-1])
    assert [m.get("type") for m in received if m.get("type") == "gap"] == [], "no gap"
    assert [m["id"] for m in received] == retained[1:], "exactly the entries after last_id"
