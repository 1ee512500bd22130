"""Redis Streams consumer groups: read with XREADGROUP, acknowledge after handling, and reclaim
entries that a dead consumer read but never acknowledged (XAUTOCLAIM after ``min_idle_ms``).

The ``health-monitor`` group keeps the latest heartbeat of every component (``storage/components.py``,
read by ``GET /v1/components`` and the dashboard); the ``notifiers`` group records each notification
outcome per job (``storage/notification_log.py``).  Both run as threads next to the bridge consumer.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

import redis

from pynomaly.storage import components, notification_log
from pynomaly.topology import S_HEALTH, S_NOTIFICATIONS, TOPOLOGY

log = logging.getLogger(__name__)

STALE_CLAIM_MS = 60_000
BLOCK_MS = 1000

EntryHandler = Callable[[str, dict[str, str]], None]


class StreamGroupConsumer:
    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        group: str,
        handler: EntryHandler,
        consumer: str | None = None,
        min_idle_ms: int = STALE_CLAIM_MS,
    ) -> None:
        self._r = client
        self.stream = stream
        self.group = group
        self._handler = handler
        self.consumer = consumer or f"{socket.gethostname()}-{threading.get_ident()}"
        self._min_idle_ms = min_idle_ms
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ensure_group(self) -> None:
        try:
            self._r.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def reclaim(self) -> int:
        """Handle entries idle in another consumer's pending list for too long; returns how many."""
        _next, claimed, _deleted = self._r.xautoclaim(
            self.stream, self.group, self.consumer, self._min_idle_ms, "0-0", count=100
        )
        for entry_id, fields in claimed:
            self._handle(entry_id, fields)
        return len(claimed)

    def poll_once(self, block_ms: int = BLOCK_MS) -> int:
        batches = self._r.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=100, block=block_ms)
        handled = 0
        for _stream, entries in batches or []:
            for entry_id, fields in entries:
                self._handle(entry_id, fields)
                handled += 1
        return handled

    def _handle(self, entry_id: str, fields: dict[str, str]) -> None:
        try:
            self._handler(entry_id, fields)
        except Exception:
            # Left pending: another consumer (or this one, later) reclaims it with XAUTOCLAIM.
            log.exception("%s/%s: entry %s failed; left pending for reclaim", self.stream, self.group, entry_id)
            return
        self._r.xack(self.stream, self.group, entry_id)

    def run(self) -> None:
        self.ensure_group()
        next_reclaim = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_reclaim:
                    self.reclaim()
                    next_reclaim = time.monotonic() + self._min_idle_ms / 1000
                self.poll_once()
            except redis.RedisError as exc:
                log.warning("%s/%s: %s; retrying", self.stream, self.group, exc)
                self._stop.wait(1.0)

    def start(self) -> StreamGroupConsumer:
        self._thread = threading.Thread(target=self.run, name=f"stream-{self.group}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=BLOCK_MS / 1000 + 2)


def record_heartbeat(client: redis.Redis) -> EntryHandler:
    """health-monitor: the latest beat of each component (``storage/components.py``)."""
    return lambda entry_id, fields: components.record_heartbeat(client, entry_id, fields)


def record_notification(client: redis.Redis, ttl_seconds: int) -> EntryHandler:
    """notifiers: every notification outcome kept per job (``storage/notification_log.py``)."""
    return lambda entry_id, fields: notification_log.record_notification(client, entry_id, fields, ttl_seconds)


def stream_group_consumers(client: redis.Redis, result_ttl: int) -> list[StreamGroupConsumer]:
    """The topology's stream groups with their handlers."""
    handlers = {S_HEALTH: record_heartbeat(client), S_NOTIFICATIONS: record_notification(client, result_ttl)}
    return [StreamGroupConsumer(client, g.stream, g.name, handlers[g.stream]) for g in TOPOLOGY.stream_groups]
