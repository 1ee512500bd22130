"""Redis Streams: capped append, reading from a last-seen id, consumer groups, stale-entry reclaim."""

from __future__ import annotations

from collections.abc import Iterable

import redis

from pynomaly.topology import TOPOLOGY


class RedisStreams:
    def __init__(self, client: redis.Redis, maxlen: int) -> None:
        self._r = client
        self._maxlen = maxlen

    def add(self, stream: str, fields: dict[str, str]) -> str:
        TOPOLOGY.stream(stream)  # unknown names fail loudly instead of creating stray streams
        return self._r.xadd(stream, fields, maxlen=self._maxlen, approximate=True)

    def read_after(self, streams: Iterable[str], last_ids: dict[str, str], block_ms: int, count: int = 100):
        """Entries after each stream's last-seen id ('$' = only new ones)."""
        wanted = {s: last_ids.get(s, "$") for s in streams}
        return self._r.xread(wanted, count=count, block=block_ms)

    def ensure_group(self, stream: str, group: str, start: str = "0") -> None:
        try:
            self._r.xgroup_create(stream, group, id=start, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def reclaim_stale(self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int = 100):
        """Take over entries another consumer read but never acknowledged (it died)."""
        _next, claimed, _deleted = self._r.xautoclaim(stream, group, consumer, min_idle_ms, "0-0", count=count)
        return claimed

    def length(self, stream: str) -> int:
        return int(self._r.xlen(stream))
