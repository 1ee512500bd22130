"""Redis Streams: the capped append behind ``MessageQueueService.stream_update``.

Reading is done by the WebSocket (XREAD from a last-seen id, ``api/websocket.py``) and by the
consumer groups with their stale-entry reclaim (``consumers/stream_groups.py``).
"""

from __future__ import annotations

import redis

from pynomaly.topology import TOPOLOGY


class RedisStreams:
    def __init__(self, client: redis.Redis, maxlen: int) -> None:
        self._r = client
        self._maxlen = maxlen

    def add(self, stream: str, fields: dict[str, str]) -> str:
        TOPOLOGY.stream(stream)  # unknown names fail loudly instead of creating stray streams
        return str(self._r.xadd(stream, fields, maxlen=self._maxlen, approximate=True))
