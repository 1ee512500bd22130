"""What each consumer group does with an event.

The bridge copies job, anomaly and system events into ``dashboard:stream`` for the dashboard.
Dedup marker and XADD happen in one Lua script, so a redelivered event is never appended twice,
even after a crash between the two.
"""

from __future__ import annotations

import redis

from pynomaly.messaging.events import EventEnvelope
from pynomaly.observability import tracing
from pynomaly.storage.audit import AuditLog
from pynomaly.storage.redis_client import KEY_PREFIX
from pynomaly.topology import S_DASHBOARD

SEEN_TTL_SECONDS = 7 * 24 * 3600

_APPEND_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
end
return false
"""


class StreamBridge:
    def __init__(self, client: redis.Redis, maxlen: int, group: str) -> None:
        self._append_once = client.register_script(_APPEND_ONCE)
        self._maxlen = maxlen
        self._group = group

    def __call__(self, event: EventEnvelope) -> None:
        fields = [part for pair in event.flat().items() for part in pair]
        marker = f"{KEY_PREFIX}seen:{self._group}:{S_DASHBOARD}:{event.id}"
        span_attributes = {"pynomaly.stream": S_DASHBOARD}
        with tracing.tracer().start_as_current_span(f"append {S_DASHBOARD}", attributes=span_attributes):
            self._append_once(keys=[marker, S_DASHBOARD], args=[SEEN_TTL_SECONDS, self._maxlen, *fields])


class AuditSink:
    def __init__(self, client: redis.Redis) -> None:
        self._log = AuditLog(client)

    def __call__(self, event: EventEnvelope) -> None:
        self._log.record(event.model_dump())
