"""Redis Streams consumer groups (``StreamGroupConsumer``) on the real Redis.

Entries a consumer read but never acknowledged (it "died") are reclaimed by another consumer with
XAUTOCLAIM once idle for ``min_idle_ms`` and handled exactly once; a handler that raises leaves its
entry pending; ``component_health`` marks a component whose heartbeats stopped as stale.

Every test works on a Redis database of its own (``STREAM_GROUPS_DB``, flushed before and after),
so the ``health-monitor`` and ``notifiers`` groups of the other tests are never touched.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from pynomaly.config import Settings
from pynomaly.consumers.stream_groups import StreamGroupConsumer, record_heartbeat
from pynomaly.observability.heartbeat import Heartbeat
from pynomaly.storage.components import COMPONENTS, component_health
from pynomaly.storage.redis_client import redis_from_settings
from pynomaly.topology import S_HEALTH
from tests.e2e.support import own_redis_db, wait_for

pytestmark = pytest.mark.services

STREAM_GROUPS_DB = 6
MIN_IDLE_MS = 300


@pytest.fixture
def client(settings: Settings, redis_server) -> Iterator[redis.Redis]:  # type: ignore[no-untyped-def]
    with own_redis_db(settings, redis_server, STREAM_GROUPS_DB) as isolated:
        value = redis_from_settings(isolated)
        try:
            yield value
        finally:
            value.close()


def _names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"test:groups:{tag}", f"test-group-{tag}"


def _pending(client: redis.Redis, stream: str, group: str) -> dict[str, str]:
    """Pending entry id -> the consumer holding it."""
    return {p["message_id"]: p["consumer"] for p in client.xpending_range(stream, group, "-", "+", 100)}


def test_entries_of_a_consumer_that_died_before_acking_are_reclaimed_once(client: redis.Redis) -> None:
    stream, group = _names()
    handled: list[tuple[str, str]] = []
    consumer_b = StreamGroupConsumer(
        client, stream, group, lambda eid, f: handled.append((eid, f["n"])), consumer="B", min_idle_ms=MIN_IDLE_MS
    )
    consumer_b.ensure_group()
    consumer_b.ensure_group()  # idempotent (BUSYGROUP is not an error)
    ids = [client.xadd(stream, {"n": str(n)}) for n in range(3)]

    # Consumer A reads everything, then "dies": it never acknowledges.
    read = client.xreadgroup(group, "A", {stream: ">"}, count=10)
    assert [eid for eid, _ in read[0][1]] == ids
    assert _pending(client, stream, group) == dict.fromkeys(ids, "A")

    # B sees nothing new, and cannot take A's entries before they were idle for min_idle_ms.
    assert consumer_b.poll_once(block_ms=10) == 0
    assert consumer_b.reclaim() == 0 and handled == []

    time.sleep(MIN_IDLE_MS / 1000 * 1.5)
    assert consumer_b.reclaim() == 3
    assert handled == [(eid, str(n)) for n, eid in enumerate(ids)]
    assert _pending(client, stream, group) == {}
    assert consumer_b.reclaim() == 0 and consumer_b.poll_once(block_ms=10) == 0
    assert len(handled) == 3, "each entry handled exactly once"

    # The running loop (a thread) reclaims a later casualty of A by itself and handles new entries.
    dying = client.xadd(stream, {"n": "3"})
    assert client.xreadgroup(group, "A", {stream: ">"}, count=10)[0][1][0][0] == dying
    fresh = client.xadd(stream, {"n": "4"})
    consumer_b.start()
    try:
        wait_for(lambda: {dying, fresh} <= {eid for eid, _ in handled}, 10, what="the loop to handle both")
        wait_for(lambda: _pending(client, stream, group) == {}, 5, what="no pending entries")
    finally:
        consumer_b.stop()
    counted = [eid for eid, _ in handled]
    assert sorted(counted) == sorted(set(counted)) and len(counted) == 5, handled


def test_a_handler_that_raises_leaves_its_entry_pending_until_reclaimed(client: redis.Redis) -> None:
    stream, group = _names()
    handled: list[str] = []

    def fragile(entry_id: str, fields: dict[str, str]) -> None:
        if fields.get("poison"):
            raise RuntimeError("downstream unavailable")
        handled.append(entry_id)

    first = StreamGroupConsumer(client, stream, group, fragile, consumer="first", min_idle_ms=MIN_IDLE_MS)
    first.ensure_group()
    good = client.xadd(stream, {"n": "1"})
    bad = client.xadd(stream, {"poison": "1"})
    after = client.xadd(stream, {"n": "2"})

    assert first.poll_once(block_ms=10) == 3  # read all three, handled two
    assert handled == [good, after]
    assert _pending(client, stream, group) == {bad: "first"}
    assert first.poll_once(block_ms=10) == 0  # '>' never delivers it again to a new read

    # Still failing: a reclaim keeps it pending (now held by the reclaiming consumer).
    time.sleep(MIN_IDLE_MS / 1000 * 1.5)
    assert first.reclaim() == 1
    assert _pending(client, stream, group) == {bad: "first"} and handled == [good, after]

    # Once the handler can succeed, another consumer takes it over and acknowledges it.
    second = StreamGroupConsumer(
        client, stream, group, lambda eid, _f: handled.append(eid), consumer="second", min_idle_ms=MIN_IDLE_MS
    )
    time.sleep(MIN_IDLE_MS / 1000 * 1.5)
    assert second.reclaim() == 1
    assert handled == [good, after, bad]
    assert _pending(client, stream, group) == {}


def test_component_health_marks_a_component_whose_heartbeats_stopped_as_stale(
    client: redis.Redis, settings: Settings
) -> None:
    group = _names()[1]  # the real health:stream (in this test's database), a group of our own
    monitor = StreamGroupConsumer(client, S_HEALTH, group, record_heartbeat(client), consumer="m")
    monitor.ensure_group()
    no_file = settings.model_copy(update={"heartbeat_dir": None})

    stopped = Heartbeat(no_file, "worker:stopped", client)
    alive = Heartbeat(no_file, "worker:alive", client)
    stopped.beat()
    alive.beat()
    assert monitor.poll_once(block_ms=10) == 2
    rows = {r["component"]: r for r in component_health(client, stale_after=0.5)}
    assert set(rows) == {"worker:stopped", "worker:alive"}
    assert not rows["worker:stopped"]["stale"] and not rows["worker:alive"]["stale"]

    # Only one keeps beating.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        alive.beat()
        time.sleep(0.2)
    assert monitor.poll_once(block_ms=10) >= 4
    rows = {r["component"]: r for r in component_health(client, stale_after=0.5)}
    assert rows["worker:stopped"]["stale"] and rows["worker:stopped"]["age_seconds"] >= 0.5
    assert not rows["worker:alive"]["stale"] and rows["worker:alive"]["age_seconds"] < 0.5
    assert rows["worker:alive"]["entry_id"] > rows["worker:stopped"]["entry_id"]
    assert len(client.hgetall(COMPONENTS)) == 2
    assert _pending(client, S_HEALTH, group) == {}
