"""A transactional outbox: the API writes its events to Redis and a relay publishes them to Kafka.

Why: a request must never wait for Kafka.  ``submit`` puts a job's record and its events
(``job_submitted``, the audit record) in one MULTI/EXEC, so a job exists iff its events will be
published, and answers; :class:`OutboxRelay` (a thread in every API process) publishes the
entries in order with acks=all and deletes each only after the broker acknowledged it.

- Order: one Redis stream is read from its head; entries are sent in stream order, each batch
  waits for its acks, and only the acknowledged prefix is removed.  One relay at a time holds a
  lease in Redis, so several API replicas never interleave.
- At least once: a crash between ack and XDEL, or a lease handover, re-sends entries with the
  same event id; every consumer deduplicates by event id (consumers/handlers.py).
- Bounded: at ``outbox_max_events`` new writes are refused (the request gets 503) instead of
  dropping anything already accepted; the bound is checked before the transaction, so it is soft
  by at most the requests in flight.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import redis
from kafka import KafkaProducer

from pynomaly.config import Settings
from pynomaly.messaging.events import EventEnvelope, InvalidEvent
from pynomaly.messaging.kafka_events import producer_config
from pynomaly.observability import metrics
from pynomaly.storage.redis_client import KEY_PREFIX

log = logging.getLogger(__name__)

OUTBOX_STREAM = f"{KEY_PREFIX}outbox"
RELAY_LEASE = f"{KEY_PREFIX}outbox:relay"
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


class OutboxFull(Exception):
    """The outbox holds ``outbox_max_events``: Kafka has been away long; refuse, do not drop."""


class Outbox:
    def __init__(self, client: redis.Redis, max_events: int) -> None:
        self._r = client
        self._max = max_events
        self._lease = client.register_script(_LEASE)

    # -- writers ------------------------------------------------------------------------------------
    def check_room(self, count: int = 1) -> None:
        depth = self.depth()
        if depth + count > self._max:
            raise OutboxFull(f"the event outbox holds {depth} events (limit {self._max}); Kafka is not draining it")

    def stage(self, pipe: Any, events: Sequence[EventEnvelope]) -> None:
        """Queue the XADDs on ``pipe`` (the caller's MULTI/EXEC): they commit with the caller's writes."""
        for event in events:
            pipe.xadd(OUTBOX_STREAM, {FIELD: event.model_dump_json()})

    def add(self, events: Sequence[EventEnvelope]) -> None:
        self.check_room(len(events))
        pipe = self._r.pipeline(transaction=True)
        self.stage(pipe, events)
        pipe.execute()

    # -- relay side ---------------------------------------------------------------------------------
    def depth(self) -> int:
        return int(self._r.xlen(OUTBOX_STREAM))

    def head(self, count: int, block_ms: int) -> list[tuple[str, str]]:
        """The oldest ``count`` entries; waits up to ``block_ms`` while the outbox is empty."""
        batches = self._r.xread({OUTBOX_STREAM: "0-0"}, count=count, block=block_ms or None)
        return [(entry_id, fields.get(FIELD, "")) for _, entries in batches or [] for entry_id, fields in entries]

    def remove(self, entry_ids: Sequence[str]) -> None:
        if entry_ids:
            self._r.xdel(OUTBOX_STREAM, *entry_ids)

    def hold_lease(self, owner: str, ttl_ms: int) -> bool:
        return bool(self._lease(keys=[RELAY_LEASE], args=[owner, ttl_ms]))


class OutboxPublisher:
    """An ``EventPublisher`` that writes to the outbox: ``publish`` never waits for Kafka."""

    def __init__(self, outbox: Outbox, relay: OutboxRelay | None = None) -> None:
        self.outbox = outbox
        self._relay = relay

    def publish(self, event: EventEnvelope, wait: bool = True) -> None:
        # ``wait`` would mean "acknowledged by Kafka"; here the promise is "durably queued for it".
        self.outbox.add([event])

    def flush(self) -> None:
        return None

    def connected(self) -> bool:
        return self._relay.connected() if self._relay is not None else False

    def close(self) -> None:
        if self._relay is not None:
            self._relay.stop()


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
        batch: int = 200,
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
        if not entries:
            return 0
        sent: list[tuple[str, Any, EventEnvelope | None]] = []
        for entry_id, raw in entries:
            try:
                event = EventEnvelope.decode(raw)
            except InvalidEvent as exc:  # validated when written; only a foreign writer gets here
                log.error("outbox entry %s is not an event and is dropped: %s", entry_id, exc)
                sent.append((entry_id, None, None))
                continue
            future = self._producer.send(event.topic, key=event.subject.encode(), value=event.encode())
            sent.append((entry_id, future, event))
        self._producer.flush(timeout=self._ack_timeout)
        done: list[str] = []
        try:
            for entry_id, future, event in sent:
                if future is not None and event is not None:
                    future.get(timeout=self._ack_timeout)
                    metrics.KAFKA_PUBLISHED.labels(topic=event.topic, type=event.type).inc()
                done.append(entry_id)
        finally:
            self._outbox.remove(done)
        return len(done)

    # -- the loop ----------------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                if not self._outbox.hold_lease(self._owner, self._lease_ms):
                    self._stop.wait(1.0)  # another API replica relays; stand by
                    continue
                count = self.run_once()
                self._healthy = True
                backoff = 0.5
                if self._failing_since is not None:
                    log.warning(
                        "outbox relay: publishing again after %.0f s (%d events published in this batch)",
                        time.monotonic() - self._failing_since,
                        count,
                    )
                    self._failing_since = None
            except Exception as exc:
                self._healthy = False
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    # One line per outage, no traceback: the outbox keeps every event meanwhile.
                    log.warning("outbox relay: cannot publish (%s: %s); retrying", type(exc).__name__, exc)
                self._close_producer()  # a fresh producer after a failed batch: no stale sequence state
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=0)
            except Exception as exc:  # closing a producer to a dead broker may complain; it is gone anyway
                log.debug("closing the relay's producer: %s", exc)
