"""Helpers of the end-to-end tests: polling, small datasets, queue lengths, reading Kafka topics from
the beginning, and a webhook receiver (a real HTTP server).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import redis
from kafka import KafkaConsumer, TopicPartition

from pynomaly.config import Settings
from pynomaly.messaging.kafka_admin import connection_config
from pynomaly.topology import TOPOLOGY
from tests.support.http import QuietHandler, serving

DATA = Path(__file__).resolve().parents[2] / "app" / "pynomaly" / "data"
SENSORS_CSV = DATA / "sensors.csv"
SENSORS_PLANTED = frozenset(int(x) for x in (DATA / "sensors.planted.txt").read_text().split())

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float = 60.0, interval: float = 0.2, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {value!r})")
        time.sleep(interval)


@contextlib.contextmanager
def own_redis_db(settings: Settings, redis_server: Any, db: int, **updates: Any) -> Iterator[Settings]:
    """``settings`` moved to Redis database ``db`` of the session server, empty before and after,
    for a test that runs its own worker and must not see (or leave) anyone else's queues."""
    from pynomaly.storage.redis_client import redis_from_settings

    value = settings.model_copy(update={"redis_url": redis_server.url_for_db(db), **updates})
    client = redis_from_settings(value)
    client.flushdb()
    try:
        yield value
    finally:
        client.flushdb()
        client.close()


def small_rows(n: int = 40, seed: int = 0) -> list[list[float]]:
    """A tiny 2-column dataset with one obvious outlier in the last row."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = rng.normal(0, 1, size=(n, 2)).round(4).tolist()
    rows[-1] = [25.0, -25.0]
    return rows


def queue_lengths(client: redis.Redis) -> dict[str, int]:
    """Length of every Redis list that holds Celery messages (each queue, each priority step)."""
    pipe = client.pipeline(transaction=False)
    names = [name for queue in TOPOLOGY.queues for name in queue.redis_lists()]
    for name in names:
        pipe.llen(name)
    return dict(zip(names, pipe.execute(), strict=True))


def read_topic(
    settings: Settings,
    topic: str,
    until: Callable[[list[Any]], bool],
    key: bytes | None = None,
    timeout: float = 60.0,
) -> list[Any]:
    """Records of ``topic`` from the start of every partition (only ``key`` if given) until ``until(records)``."""
    consumer = KafkaConsumer(enable_auto_commit=False, group_id=None, **connection_config(settings))
    try:
        partitions = wait_for(lambda: consumer.partitions_for_topic(topic), 30, what=f"partitions of {topic}")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(r for r in batch if key is None or r.key == key)
            if until(records):
                return records
        raise AssertionError(f"timed out reading {topic}: {len(records)} matching records")
    finally:
        consumer.close()


@dataclass
class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 whose answer status the test chooses."""

    server: ThreadingHTTPServer
    status: int = 200
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # time.monotonic() of each request

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hook"

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.requests]


@contextlib.contextmanager
def webhook_server(status: int = 200) -> Iterator[WebhookReceiver]:
    """Serve on 127.0.0.1 (a free port) until the block ends; every POST is recorded."""
    receiver: WebhookReceiver

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            receiver.times.append(time.monotonic())
            self.send_response(receiver.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with serving(Handler) as server:
        receiver = WebhookReceiver(server, status)
        yield receiver
