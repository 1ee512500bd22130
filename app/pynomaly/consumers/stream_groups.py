"""Redis Streams consumer groups: read with XREADGROUP, acknowledge after handling, and reclaim
entries that a dead consumer read but never acknowledged (XAUTOCLAIM after ``min_idle_ms``).

The ``health-monitor`` group keeps the latest heartbeat of every component in one hash, which
``GET /v1/components`` and the dashboard read; the ``notifiers`` group records each notification
outcome per job.  Both run as threads next to the bridge consumer.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis

from pynomaly.storage.redis_client import KEY_PREFIX
from pynomaly.topology import S_HEALTH, S_NOTIFICATIONS, TOPOLOGY

log = logging.getLogger(__name__)

COMPONENTS = f"{KEY_PREFIX}components"
NOTIFICATION_LOG = f"{KEY_PREFIX}notifications:"
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
    """health-monitor: the latest beat of each component (by component and host)."""

    def handle(entry_id: str, fields: dict[str, str]) -> None:
        key = f"{fields.get('component', '?')}@{fields.get('host', '?')}"
        client.hset(COMPONENTS, key, json.dumps({**fields, "entry_id": entry_id}))

    return handle


def record_notification(client: redis.Redis, ttl_seconds: int) -> EntryHandler:
    """notifiers: every notification entry (delivered or announced) kept per job."""

    def handle(entry_id: str, fields: dict[str, str]) -> None:
        job_id = fields.get("job_id") or fields.get("subject")
        if not job_id:
            return
        key = f"{NOTIFICATION_LOG}{job_id}"
        pipe = client.pipeline(transaction=True)
        pipe.hsetnx(key, entry_id, json.dumps(fields))
        pipe.expire(key, ttl_seconds)
        pipe.execute()

    return handle


def component_health(client: redis.Redis, stale_after: float) -> list[dict[str, Any]]:
    """Every component seen on health:stream, with its age and whether it is stale."""
    now = time.time()
    rows = []
    for key, raw in sorted(client.hgetall(COMPONENTS).items()):
        data = json.loads(raw)
        try:
            seen = datetime.fromisoformat(data["time"].replace("Z", "+00:00")).timestamp()
        except (KeyError, ValueError):
            seen = 0.0
        age = max(0.0, now - seen)
        rows.append({"id": key, **data, "age_seconds": round(age, 1), "stale": age > stale_after})
    return rows


NOTIFICATION_STATUSES = ("queued", "delivered", "retrying", "dead_lettered")


def _stream_id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return 0, 0


def _as_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def notification_log(client: redis.Redis, job_id: str) -> list[dict[str, Any]]:
    """A job's delivery outcomes as the ``notifiers`` group kept them, sorted by stream id.

    The hash also holds the bridge's copies of finished-job events (``job_completed`` ...); only the
    delivery outcomes (an entry with a channel and one of :data:`NOTIFICATION_STATUSES`) are returned.
    """
    entries = []
    for entry_id, raw in client.hgetall(f"{NOTIFICATION_LOG}{job_id}").items():
        try:
            fields = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if (
            not isinstance(fields, dict)
            or not fields.get("channel")
            or fields.get("status") not in NOTIFICATION_STATUSES
        ):
            continue
        ms, _seq = _stream_id_key(entry_id)
        entries.append(
            {
                "id": entry_id,
                "time": datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z") if ms else None,
                "index": _as_int(fields.get("index")),
                "channel": str(fields["channel"]),
                "target": str(fields.get("target", "")),
                "on": str(fields.get("on", "")),
                "outcome": str(fields.get("outcome", "")),
                "status": str(fields["status"]),
                "attempt": _as_int(fields.get("attempt")),
                "detail": str(fields.get("detail", "")),
            }
        )
    entries.sort(key=lambda e: _stream_id_key(e["id"]))
    return entries


def stream_group_consumers(client: redis.Redis, result_ttl: int) -> list[StreamGroupConsumer]:
    """The topology's stream groups with their handlers."""
    handlers = {S_HEALTH: record_heartbeat(client), S_NOTIFICATIONS: record_notification(client, result_ttl)}
    return [StreamGroupConsumer(client, g.stream, g.name, handlers[g.stream]) for g in TOPOLOGY.stream_groups]
