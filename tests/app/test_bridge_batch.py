"""The bridge appends a poll's events in one script call, each exactly once, markers living the
configured TTL; the TTL must cover the redelivery window."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pynomaly.config import Settings
from pynomaly.consumers.handlers import StreamBridge
from pynomaly.localstack.redis_server import RedisServer
from pynomaly.messaging.events import make_event
from pynomaly.topology import S_DASHBOARD


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(Path(tmp_path_factory.mktemp("bridge-redis")))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def client(own_redis: RedisServer) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(own_redis.url, decode_responses=True)
    c.flushall()
    try:
        yield c
    finally:
        c.flushall()
        c.close()


@pytest.mark.services
def test_a_batch_is_appended_once_in_order_with_short_lived_markers(client: redis.Redis) -> None:
    bridge = StreamBridge(client, 1000, "batch-test", dedup_ttl_seconds=120)
    events = [make_event("job_progress", f"job-{i}", "test", progress=i / 10, note="x" * i) for i in range(5)]
    assert bridge.handle_batch(events[:3]) == 3
    # A redelivered poll overlapping the first: only the new events are appended, in order.
    assert bridge.handle_batch([events[1], events[2], events[3], events[3], events[4]]) == 2
    bridge(events[4])  # the single-event path is the same script
    entries = client.xrange(S_DASHBOARD)
    assert [fields["id"] for _, fields in entries] == [e.id for e in events]
    assert entries[4][1] == events[4].flat()
    markers = list(client.scan_iter(match="pynomaly:seen:batch-test:*"))
    assert len(markers) == 5 and all(0 < client.ttl(m) <= 120 for m in markers)
    assert bridge.handle_batch([]) == 0


def test_the_dedup_ttl_must_cover_the_redelivery_window() -> None:
    assert Settings().bridge_dedup_ttl_seconds == 900
    with pytest.raises(ValueError, match="twice the redelivery window"):
        Settings(bridge_dedup_ttl_seconds=60, kafka_session_timeout_seconds=30)
    with pytest.raises(ValueError, match="dedup_ttl_seconds must be at least 1"):
        StreamBridge(redis.Redis(), 1000, "g", dedup_ttl_seconds=0)
