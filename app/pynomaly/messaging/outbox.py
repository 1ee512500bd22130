"""A transactional outbox: every process writes its events to Redis; a relay publishes them to Kafka.

Why: nothing waits for Kafka.  ``submit`` puts a job's record and its events (``job_submitted``,
the audit record) in one MULTI/EXEC, so a job exists iff its events will be published; workers
append their job's events to the same outbox.  :class:`OutboxRelay` (a thread in every API and
consumer process; one publishes at a time) sends the entries in order with acks=all and deletes
each only after the broker acknowledged it.  A Kafka outage of any length delays events, never a
request or a job, and loses none.

- Order: one Redis stream, read from its head; entries are sent in stream order, each batch waits
  for its acks, and only the acknowledged prefix is removed.  A job's events are written in the
  order they happen (job_submitted in the submit's transaction, before the job is enqueued; each
  step's events before the next step is enqueued), so they reach Kafka in that order.  One relay
  holds a lease in Redis, so relays in several processes never interleave.
- At least once: a crash between ack and XDEL, or a lease handover, re-sends entries with the
  same event id; every consumer deduplicates by event id (consumers/handlers.py).
- Bounded: at ``outbox_max_events`` new jobs are refused (the request gets 503) instead of
  dropping anything already accepted; events of accepted jobs are always written.
- Reported: the relay holding the lease writes its state (``ok`` or why it cannot publish) to
  Redis, so any API replica's /readyz tells the truth about Kafka, whichever process relays.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import redis
from kafka import KafkaProducer
from opentelemetry.trace import Span, SpanKind

from pynomaly.config import Settings
from pynomaly.messaging.events import EventEnvelope, InvalidEvent
from pynomaly.messaging.kafka_events import producer_config
from pynomaly.observability import logs, metrics, tracing
from pynomaly.storage.redis_client import KEY_PREFIX

log = logging.getLogger(__name__)

OUTBOX_STREAM = f"{KEY_PREFIX}outbox"
RELAY_LEASE = f"{KEY_PREFIX}outbox:relay"
RELAY_STATE = f"{KEY_PREFIX}outbox:relay:state"
FIELD = "event"

# Take the lease, or extend it when we already hold it.
_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# Give the lease up only if we still hold it (a graceful stop hands over at once).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class OutboxFull(Exception):
    """The outbox holds ``outbox_max_events``: Kafka has been away long; refuse, do not drop."""


class Outbox:
    def __init__(self, client: redis.Redis, max_events: int) -> None:
        self._r = client
        self._max = max_events
        self._lease = client.register_script(_LEASE)
        self._release = client.register_script(_RELEASE)

    # -- writers ------------------------------------------------------------------------------------
    def check_room(self, count: int = 1) -> None:
        depth = self.depth()
        if depth + count > self._max:
            raise OutboxFull(f"the event outbox holds {depth} events (limit {self._max}); Kafka is not draining it")

    def stage(self, pipe: Any, events: Sequence[EventEnvelope]) -> None:
        """Queue the XADDs on ``pipe`` (the caller's MULTI/EXEC): they commit with the caller's writes.

        Each entry carries the trace context it was written in next to the event (the envelope stays
        as it is): the relay's Kafka produce continues that trace."""
        trace_fields = tracing.inject()
        for event in events:
            pipe.xadd(OUTBOX_STREAM, {FIELD: event.model_dump_json(), **trace_fields})

    def add(self, events: Sequence[EventEnvelope]) -> None:
        """Append ``events`` (no bound: they belong to work already accepted)."""
        pipe = self._r.pipeline(transaction=True)
        self.stage(pipe, events)
        pipe.execute()

    # -- relay side ---------------------------------------------------------------------------------
    def depth(self) -> int:
        return int(self._r.xlen(OUTBOX_STREAM))

    def head(self, count: int, block_ms: int) -> list[tuple[str, str, dict[str, str]]]:
        """The oldest ``count`` entries (id, event, all fields); waits up to ``block_ms`` while empty."""
        batches = self._r.xread({OUTBOX_STREAM: "0-0"}, count=count, block=block_ms or None)
        return [
            (entry_id, fields.get(FIELD, ""), fields) for _, entries in batches or [] for entry_id, fields in entries
        ]

    def remove(self, entry_ids: Sequence[str]) -> None:
        if entry_ids:
            self._r.xdel(OUTBOX_STREAM, *entry_ids)

    def hold_lease(self, owner: str, ttl_ms: int) -> bool:
        return bool(self._lease(keys=[RELAY_LEASE], args=[owner, ttl_ms]))

    def release_lease(self, owner: str) -> None:
        self._release(keys=[RELAY_LEASE], args=[owner])

    def report(self, state: str, ttl_ms: int) -> None:
        """The active relay's state; it expires with the lease, so a dead relay reports nothing."""
        self._r.set(RELAY_STATE, state, px=ttl_ms)

    def relay_state(self) -> str:
        """``ok``, ``unavailable: <why>``, or ``unavailable: no relay`` when none holds the lease."""
        return str(self._r.get(RELAY_STATE) or "unavailable: no relay is publishing the outbox")

    def oldest_age(self) -> float:
        """Seconds the oldest unpublished event has waited (0 when the outbox is empty)."""
        head = self._r.xrange(OUTBOX_STREAM, count=1)
        if not head:
            return 0.0
        millis = int(str(head[0][0]).split("-")[0])
        return max(0.0, time.time() - millis / 1000)


def _span_attributes(event: EventEnvelope) -> dict[str, str]:
    return {
        "messaging.system": "kafka",
        "messaging.destination.name": event.topic,
        "messaging.message.id": event.id,
        "pynomaly.event_type": event.type,
        "pynomaly.subject": event.subject,
    }


class OutboxPublisher:
    """An ``EventPublisher`` that writes to the outbox: ``publish`` never waits for Kafka."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def publish(self, event: EventEnvelope, wait: bool = True) -> None:
        # ``wait`` would mean "acknowledged by Kafka"; here the promise is "durably queued for it".
        self.outbox.add([event])

    def flush(self) -> None:
        return None  # each publish is already in Redis, in order

    def connected(self) -> bool:
        return self.outbox.relay_state() == "ok"

    def close(self) -> None:
        return None


ProducerFactory = Callable[[], KafkaProducer]


def relay_producer(settings: Settings) -> KafkaProducer:
    delivery_ms = int(settings.kafka_delivery_timeout_seconds * 1000)
    config = producer_config(settings)
    linger = int(config["linger_ms"])
    config.update(
        delivery_timeout_ms=delivery_ms,
        # kafka-python wants delivery >= request + linger; a send that cannot get metadata blocks
        # at most this long too.
        request_timeout_ms=max(500, min(int(config["request_timeout_ms"]), delivery_ms - linger)),
        max_block_ms=delivery_ms,
        client_id=f"pynomaly-outbox-{settings.environment}",
    )
    return KafkaProducer(**config)


class OutboxRelay:
    """Publishes outbox entries to Kafka in order, removing each after its ack (see module doc)."""

    def __init__(
        self,
        outbox: Outbox,
        settings: Settings,
        producer_factory: ProducerFactory | None = None,
        batch: int = 1000,
        block_ms: int = 1000,
    ) -> None:
        self._outbox = outbox
        self._settings = settings
        self._factory = producer_factory or (lambda: relay_producer(settings))
        self._producer: KafkaProducer | None = None
        self._batch = batch
        self._block_ms = block_ms
        self._ack_timeout = settings.kafka_delivery_timeout_seconds + 5.0
        # The lease outlives a batch that waits the whole delivery timeout.
        self._lease_ms = int(max(10.0, 2 * self._ack_timeout) * 1000)
        self._owner = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._healthy = False
        self._failing_since: float | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox-relay", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._close_producer()
        try:
            self._outbox.release_lease(self._owner)  # another process's relay takes over at once
        except Exception as exc:  # Redis away: the lease expires by itself
            log.debug("outbox relay: could not release its lease: %s", exc)

    def connected(self) -> bool:
        """The last publish attempt reached Kafka (non-blocking: /readyz reads it)."""
        return self._healthy

    # -- one batch ----------------------------------------------------------------------------------
    def run_once(self) -> int:
        """Publish the outbox's head batch; returns how many entries were acknowledged and removed.

        Raises when Kafka fails an event; the acknowledged prefix is removed first, the rest stays.
        """
        if self._producer is None:  # connects first, so an idle relay still notices a missing broker
            self._producer = self._factory()
        entries = self._outbox.head(self._batch, self._block_ms)
        if not entries:  # idle: "ok" stands for the last batch (and the producer's bootstrap)
            return 0
        sent: list[tuple[str, Any, EventEnvelope | None, Span | None]] = []
        spans: list[Span] = []
        try:
            for entry_id, raw, fields in entries:
                try:
                    event = EventEnvelope.decode(raw)
                except InvalidEvent as exc:  # validated when written; only a foreign writer gets here
                    log.error("outbox entry %s is not an event and is dropped: %s", entry_id, exc)
                    sent.append((entry_id, None, None, None))
                    continue
                # The produce continues the trace the event was written in; Kafka headers carry it on.
                span = tracing.tracer().start_span(
                    f"publish {event.topic}",
                    context=tracing.extract(fields),
                    kind=SpanKind.PRODUCER,
                    attributes=_span_attributes(event),
                )
                spans.append(span)
                with logs.log_context(event_id=event.id):
                    future = self._producer.send(
                        event.topic,
                        key=event.subject.encode(),
                        value=raw.encode(),  # validated above, and written by event.encode(): sent as it is
                        headers=tracing.to_headers(tracing.inject(span)),
                    )
                sent.append((entry_id, future, event, span))
            self._producer.flush(timeout=self._ack_timeout)
            done: list[str] = []
            published_by_kind: Counter[tuple[str, str]] = Counter()
            try:
                for entry_id, future, published, produce_span in sent:
                    if future is not None and published is not None and produce_span is not None:
                        try:
                            future.get(timeout=self._ack_timeout)
                        except Exception as exc:
                            tracing.fail(produce_span, exc)
                            raise
                        published_by_kind[published.topic, published.type] += 1
                    done.append(entry_id)
            finally:
                self._outbox.remove(done)
                for (topic, event_type), count in published_by_kind.items():  # one metric update per kind
                    metrics.KAFKA_PUBLISHED.labels(topic=topic, type=event_type).inc(count)
        finally:
            for span in spans:
                span.end()  # a batch that failed part-way is sent again from its first unacked entry, in new spans
        return len(done)

    # -- the loop ----------------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                if not self._outbox.hold_lease(self._owner, self._lease_ms):
                    self._healthy = False
                    self._stop.wait(1.0)  # another process relays; stand by
                    continue
            except Exception as exc:  # Redis away: nothing to relay from; the lease lapses by itself
                self._note_failure(exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            try:
                if self._producer is None:
                    # Report as soon as the producer has bootstrapped: an idle outbox must not leave
                    # /readyz saying "no relay" until the first event arrives.
                    self._producer = self._factory()
                    self._report("ok")
                count = self.run_once()
            except Exception as exc:
                self._note_failure(exc)
                self._report(f"unavailable: {type(exc).__name__}: {exc}"[:200])
                self._close_producer()  # a fresh producer after a failed batch: no stale sequence state
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self._healthy = True
            backoff = 0.5
            self._report("ok")
            if self._failing_since is not None:
                log.warning(
                    "outbox relay: publishing again after %.0f s (%d events published in this batch)",
                    time.monotonic() - self._failing_since,
                    count,
                )
                self._failing_since = None

    def _note_failure(self, exc: Exception) -> None:
        self._healthy = False
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            # One line per outage, no traceback: the outbox keeps every event meanwhile.
            log.warning("outbox relay: cannot publish (%s: %s); retrying", type(exc).__name__, exc)

    def _report(self, state: str) -> None:
        try:
            self._outbox.report(state, self._lease_ms)
        except Exception as exc:  # Redis blipped after the batch; the next round reports again
            log.debug("outbox relay: could not report its state: %s", exc)

    def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=0)
            except Exception as exc:  # closing a producer to a dead broker may complain; it is gone anyway
                log.debug("closing the relay's producer: %s", exc)
