"""What each consumer group does with an event.

The bridge copies job, anomaly and system events into ``dashboard:stream`` for the dashboard.
Dedup marker and XADD happen in one Lua script, so a redelivered event is never appended twice,
even after a crash between the two.  A poll's events go in one script call (one round trip per
batch, not per event); markers live ``bridge_dedup_ttl_seconds``, the redelivery window.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis
from opentelemetry.context import Context

from pynomaly.config import Settings
from pynomaly.messaging.events import EventEnvelope
from pynomaly.observability import tracing
from pynomaly.storage.audit import AuditLog
from pynomaly.storage.redis_client import KEY_PREFIX
from pynomaly.topology import S_DASHBOARD

# KEYS: the stream, then one dedup marker per event.  ARGV: marker TTL, MAXLEN, then per event its
# field count followed by its fields.  Each event: marker SET NX, and XADD only when it was new.
_APPEND_ONCE = """
local ttl, maxlen, at, appended = ARGV[1], ARGV[2], 3, 0
for i = 2, #KEYS do
  local n = tonumber(ARGV[at])
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ttl) then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', unpack(ARGV, at + 1, at + n))
    appended = appended + 1
  end
  at = at + n + 1
end
return appended
"""


DEFAULT_DEDUP_TTL = int(Settings.model_fields["bridge_dedup_ttl_seconds"].default)


class StreamBridge:
    def __init__(
        self, client: redis.Redis, maxlen: int, group: str, dedup_ttl_seconds: int = DEFAULT_DEDUP_TTL
    ) -> None:
        if dedup_ttl_seconds < 1:
            raise ValueError("dedup_ttl_seconds must be at least 1")
        self._append_once = client.register_script(_APPEND_ONCE)
        self._maxlen = maxlen
        self._group = group
        self._ttl = dedup_ttl_seconds

    def __call__(self, event: EventEnvelope) -> None:
        self.handle_batch([event])

    def handle_batch(self, events: Sequence[EventEnvelope], parents: Sequence[Context] | None = None) -> int:
        """Append every event not seen before, in order, in one atomic script; returns how many.

        ``parents`` (one per event, when traced): each event gets its own append span under its
        consume span, all covering the one script call; without them the batch is one span."""
        if not events:
            return 0
        if parents is not None and len(parents) != len(events):
            raise ValueError(f"{len(parents)} parent contexts for {len(events)} events")
        keys = [S_DASHBOARD]
        args: list[object] = [self._ttl, self._maxlen]
        for event in events:
            fields = [part for pair in event.flat().items() for part in pair]
            keys.append(f"{KEY_PREFIX}seen:{self._group}:{S_DASHBOARD}:{event.id}")
            args += [len(fields), *fields]
        name, attributes = f"append {S_DASHBOARD}", {"pynomaly.stream": S_DASHBOARD}
        if parents is None:
            with tracing.tracer().start_as_current_span(
                name, attributes={**attributes, "pynomaly.events": len(events)}
            ):
                return int(self._append_once(keys=keys, args=args))
        spans = [tracing.tracer().start_span(name, context=parent, attributes=attributes) for parent in parents]
        try:
            return int(self._append_once(keys=keys, args=args))
        except Exception as exc:
            for span in spans:
                tracing.fail(span, exc)
            raise
        finally:
            for span in spans:
                span.end()


class AuditSink:
    def __init__(self, client: redis.Redis) -> None:
        self._log = AuditLog(client)

    def __call__(self, event: EventEnvelope) -> None:
        self._log.record(event.model_dump())
