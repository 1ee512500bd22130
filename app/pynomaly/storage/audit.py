"""The audit log: every audit event the sink consumed, idempotent by event id, queryable."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import redis

from pynomaly.storage.redis_client import KEY_PREFIX

AUDIT_INDEX = f"{KEY_PREFIX}audit:index"
AUDIT_RECORDS = f"{KEY_PREFIX}audit:records"
# Records deleted per round trip while trimming: a large backlog never becomes one huge command.
TRIM_BATCH = 1000


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class AuditLog:
    def __init__(self, client: redis.Redis) -> None:
        self._r = client

    def record(self, event: dict[str, Any]) -> bool:
        """Store an audit envelope once; a redelivered event changes nothing. True when new."""
        pipe = self._r.pipeline(transaction=True)
        pipe.hsetnx(AUDIT_RECORDS, event["id"], json.dumps(event, separators=(",", ":")))
        pipe.zadd(AUDIT_INDEX, {event["id"]: _epoch(event["time"])})
        added, _ = pipe.execute()
        return bool(added)

    def size(self) -> int:
        return int(self._r.zcard(AUDIT_INDEX))

    def trim(self, max_age_seconds: int = 0, max_records: int = 0, now: float | None = None) -> int:
        """Delete records older than ``max_age_seconds`` (by event time), then the oldest beyond
        ``max_records``; 0 turns either limit off.  Returns how many were deleted."""
        removed = 0
        if max_age_seconds > 0:
            cutoff = (time.time() if now is None else now) - max_age_seconds
            while ids := self._r.zrangebyscore(AUDIT_INDEX, "-inf", cutoff, start=0, num=TRIM_BATCH):
                removed += self._drop(ids)
        if max_records > 0:
            while (excess := self.size() - max_records) > 0:
                removed += self._drop(self._r.zrange(AUDIT_INDEX, 0, min(excess, TRIM_BATCH) - 1))
        return removed

    def _drop(self, ids: list[str]) -> int:
        pipe = self._r.pipeline(transaction=True)
        pipe.hdel(AUDIT_RECORDS, *ids)
        pipe.zrem(AUDIT_INDEX, *ids)
        pipe.execute()
        return len(ids)

    def query(
        self,
        action: str | None = None,
        actor: str | None = None,
        subject: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[dict[str, Any]], int]:
        """Newest first; filters match exactly."""
        ids = self._r.zrevrange(AUDIT_INDEX, 0, -1)
        page: list[dict[str, Any]] = []
        total = 0
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for raw in self._r.hmget(AUDIT_RECORDS, chunk):
                if raw is None:
                    continue
                event = json.loads(raw)
                data = event.get("data", {})
                if (action and data.get("action") != action) or (actor and data.get("actor") != actor):
                    continue
                if subject and event.get("subject") != subject:
                    continue
                if offset <= total < offset + limit:
                    page.append(event)
                total += 1
        return page, total
