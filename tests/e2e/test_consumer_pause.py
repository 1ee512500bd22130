"""A Kafka consumer through a Redis outage: it pauses instead of dead-lettering, and resumes by itself.

The bridge (Kafka -> ``dashboard:stream``) runs on its own redis-server, which is killed with SIGKILL
while events keep arriving on Kafka and started again seconds later (longer than the handler's
three quick attempts used to take before a record went to the DLQ).  Every event reaches the stream
exactly once and none reaches ``<topic>.dlq``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

from pynomaly.config import Settings
from pynomaly.consumers.base import EventConsumer
from pynomaly.consumers.handlers import StreamBridge
from pynomaly.localstack.procs import pid_alive
from pynomaly.localstack.redis_server import RedisServer
from pynomaly.messaging.events import make_event
from pynomaly.messaging.kafka_events import KafkaEventPublisher
from pynomaly.topology import S_DASHBOARD, T_JOB, ConsumerGroup
from tests.e2e.support import read_topic, wait_for

pytestmark = pytest.mark.services

BEFORE, DURING = 20, 30
OUTAGE_SECONDS = 6.0


def _client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=5)


def test_a_redis_outage_pauses_the_bridge_and_loses_or_doubles_nothing(
    settings: Settings, own_redis: RedisServer, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    group = ConsumerGroup(f"pause-test-{run}", f"pause-test-{run}", (T_JOB,), "a bridge on its own Redis")
    bridge_settings = settings.model_copy(update={"redis_url": own_redis.url})
    consumer = EventConsumer(
        bridge_settings, group, StreamBridge(redis.Redis.from_url(own_redis.url, decode_responses=True), 10_000, run)
    )
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    publisher = KafkaEventPublisher(settings)
    sent: list[str] = []

    def publish(count: int) -> None:
        for i in range(count):
            event = make_event("job_progress", f"pause-{run}-{i % 5}", "tests", status="running", progress=i)
            publisher.publish(event)
            sent.append(event.id)

    def bridged() -> list[str]:
        return [
            f["id"]
            for _, f in _client(own_redis).xrange(S_DASHBOARD)
            if f.get("subject", "").startswith(f"pause-{run}")
        ]

    try:
        publish(BEFORE)
        wait_for(lambda: len(bridged()) == BEFORE, 90, what="the first events in the stream")
        time.sleep(1.5)  # appendfsync everysec: what was bridged is on disk before the kill

        pid = own_redis.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), 30, what="redis-server to die")
        killed = time.monotonic()
        publish(DURING)
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - killed)))
        own_redis.configured_port = own_redis.port  # same port, password and append-only file
        own_redis.start()
        back = time.monotonic()
        wait_for(lambda: len(bridged()) >= BEFORE + DURING, 90, what="the events sent during the outage")
        resumed = time.monotonic() - back
        time.sleep(2)  # a duplicate, if any, would be there by now
        ids = bridged()
    finally:
        consumer.stop()
        thread.join(30)
        publisher.close()
    print(f"\nRedis down {back - killed:.1f}s; bridge caught up {resumed:.1f}s after it was back; {len(ids)} events")
    assert sorted(ids) == sorted(sent)  # every event exactly once

    def ours_in_dlq(records: list) -> bool:  # type: ignore[type-arg]
        return any(r.key and r.key.decode().startswith(f"pause-{run}") for r in records)

    # Nothing went to the dead-letter topic: read it to its end (a short wait for a match that must not come).
    with pytest.raises(AssertionError, match="timed out"):
        read_topic(settings, f"{T_JOB}.dlq", ours_in_dlq, timeout=5)
