"""An at-least-once Kafka consumer loop shared by the bridge and the audit sink.

- offsets are committed only after every record of a poll was handled;
- handlers are idempotent by event id, so a redelivery after a crash changes nothing;
- a handler with ``handle_batch`` (the bridge) gets a poll's events in one call, one round trip per
  batch; if the batch keeps failing for another reason than Redis, its records are handled one by
  one, so only the bad one goes to the DLQ (the ones already applied are deduplicated);
- a record that cannot be decoded, or whose handler keeps failing, goes to ``<topic>.dlq`` with
  the error in its headers, and the partition keeps moving;
- but when Redis (where every handler writes) is unreachable, nothing is dead-lettered: the
  consumer rewinds to the first unhandled record, commits what was handled, and polls again with
  a growing pause (at most ``PAUSE_MAX`` seconds) until Redis answers, however long that takes.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import redis
from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from pynomaly.config import Settings
from pynomaly.messaging.events import EventEnvelope, InvalidEvent
from pynomaly.messaging.kafka_admin import connection_config
from pynomaly.observability import logs, metrics, tracing
from pynomaly.observability.heartbeat import Heartbeat
from pynomaly.topology import T_ANOMALY, T_JOB, ConsumerGroup

log = logging.getLogger(__name__)

# Topics whose events' subject is a job id (logged as job_id).
JOB_TOPICS = frozenset({T_JOB, T_ANOMALY})
HANDLER_ATTEMPTS = 3
HANDLER_BACKOFF = 0.2
LAG_INTERVAL = 5.0
PAUSE_FIRST, PAUSE_MAX = 0.5, 5.0
# Redis unreachable, timing out, loading, or a replica after a failover: the handler's store is
# away, the record is fine.  (redis' TimeoutError and BusyLoadingError are ConnectionErrors.)
STORE_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError)


class StoreUnavailable(Exception):
    """The handler's Redis is away: retry the record later, do not dead-letter it."""


Handler = Callable[[EventEnvelope], None]
DeadLetter = Callable[[ConsumerRecord, str], None]
# A handler of a whole poll's raw records (the scorer scores a batch at once, and its records are
# not envelopes); it dead-letters the records it cannot use itself through the callback.
BatchHandler = Callable[[list[ConsumerRecord], DeadLetter], None]


@runtime_checkable
class EventBatchHandler(Protocol):
    """An event handler that also takes a poll's decoded events in one call (the bridge)."""

    def __call__(self, event: EventEnvelope) -> None: ...

    def handle_batch(
        self, events: Sequence[EventEnvelope], parents: Sequence[otel_context.Context] | None = None
    ) -> int: ...


class EventConsumer:
    def __init__(
        self,
        settings: Settings,
        group: ConsumerGroup,
        handler: Handler | None = None,
        heartbeat_client: redis.Redis | None = None,
        batch_handler: BatchHandler | None = None,
    ) -> None:
        settings.require("kafka_bootstrap_servers")
        if (handler is None) == (batch_handler is None):
            raise ValueError("give a consumer either an event handler or a batch handler")
        self._settings = settings
        self._group = group
        self._handler = handler
        self._batch_handler = batch_handler
        self._stop = threading.Event()
        self._lag_labels: set[tuple[str, str]] = set()  # (topic, partition) this member reported
        self._last_poll = time.monotonic()
        self._heartbeat = Heartbeat(
            settings,
            f"consumer:{group.pool}",
            heartbeat_client,
            # Beat only while the poll loop turns: a stuck consumer must fail its probe.
            alive=lambda: time.monotonic() - self._last_poll < max(30.0, 3 * settings.heartbeat_interval),
        )

    def stop(self, *_: object) -> None:
        self._stop.set()

    def _await_partitions(self, consumer: KafkaConsumer, timeout: float = 60.0) -> None:
        """Join the group only once every topic's partitions are in the client's metadata.

        A member whose first assignment found no metadata for its topic (topics just created, a
        loaded broker) got nothing, rejoined at once, and under load once never completed that
        second join: healthy by its heartbeat, consuming nothing, until it was dropped from the
        group a minute later (kafka-python 3.0.12, the scorer of a loaded CI run)."""
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():
            missing = [topic for topic in self._group.topics if not consumer.partitions_for_topic(topic)]
            if not missing:
                return
            if time.monotonic() > deadline:
                log.warning("no partition metadata for %s after %.0f s; joining anyway", ",".join(missing), timeout)
                return
            self._stop.wait(0.5)

    def run(self) -> None:
        conn = connection_config(self._settings)
        consumer = KafkaConsumer(
            group_id=self._group.name,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._group.max_poll_records,
            # A killed member's partitions move after this, not after kafka-python's 45 s default.
            session_timeout_ms=int(self._settings.kafka_session_timeout_seconds * 1000),
            heartbeat_interval_ms=int(self._settings.kafka_session_timeout_seconds * 1000 / 3),
            client_id=f"{self._group.name}-{self._settings.environment}",
            **conn,
        )
        dead_letters = KafkaProducer(acks="all", enable_idempotence=True, linger_ms=10, **conn)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        self._heartbeat.start()
        self._await_partitions(consumer)
        consumer.subscribe(list(self._group.topics))
        next_lag = 0.0
        pause = 0.0
        paused_since: float | None = None
        log.info("consumer group %s on %s started", self._group.name, ",".join(self._group.topics))
        try:
            while not self._stop.is_set():
                batch = consumer.poll(timeout_ms=500)
                self._last_poll = time.monotonic()
                try:
                    self._handle_batch(consumer, batch, dead_letters)
                except StoreUnavailable as exc:
                    if paused_since is None:
                        paused_since = time.monotonic()
                        log.warning("consumer group %s: pausing, Redis unavailable (%s)", self._group.name, exc)
                    pause = min(PAUSE_MAX, max(PAUSE_FIRST, 2 * pause))
                    self._stop.wait(pause)
                    continue
                if paused_since is not None:
                    log.warning(
                        "consumer group %s: Redis is back after %.0f s; consuming again",
                        self._group.name,
                        time.monotonic() - paused_since,
                    )
                    paused_since, pause = None, 0.0
                if time.monotonic() >= next_lag:
                    self._report_lag(consumer)
                    next_lag = time.monotonic() + LAG_INTERVAL
        finally:
            self._heartbeat.stop()
            dead_letters.flush(timeout=10)
            dead_letters.close(timeout=10)
            consumer.close()
            log.info("consumer group %s stopped", self._group.name)

    def _handle_batch(
        self,
        consumer: KafkaConsumer,
        batch: dict[TopicPartition, list[ConsumerRecord]],
        dead_letters: KafkaProducer,
    ) -> None:
        """Handle a poll's records in order and commit them; on ``StoreUnavailable`` rewind every
        partition to its first unhandled record and commit only what was handled, then re-raise."""
        partitions = list(batch.items())
        if self._batch_handler is not None:
            # Idle polls too (an empty batch): the handler keeps its caches warm between records.
            self._handle_raw_batch(consumer, partitions, dead_letters)
            if partitions:
                consumer.commit()
            return
        if not partitions:
            return
        if isinstance(self._handler, EventBatchHandler):
            self._handle_as_batch(consumer, partitions, dead_letters, self._handler)
        else:
            self._handle_each(consumer, partitions, dead_letters)

    def _handle_as_batch(
        self,
        consumer: KafkaConsumer,
        partitions: list[tuple[TopicPartition, list[ConsumerRecord]]],
        dead_letters: KafkaProducer,
        handler: EventBatchHandler,
    ) -> None:
        """The whole poll in one handler call (one script: all or nothing), then one commit."""
        valid: list[tuple[ConsumerRecord, EventEnvelope]] = []
        invalid: list[tuple[ConsumerRecord, str]] = []
        for _, records in partitions:
            for record in records:
                try:
                    valid.append((record, EventEnvelope.decode(record.value)))
                except InvalidEvent as exc:
                    invalid.append((record, f"invalid envelope: {exc}"))
        # Traced: each record's consume span (continuing its relay's trace) is the parent of its append.
        spans = [self._consume_span(record) for record, _ in valid] if tracing.recording() else []
        parents = [trace.set_span_in_context(span) for span in spans] or None
        try:
            applied = self._apply_batch(consumer, partitions, handler, valid, parents)
        finally:
            for span in spans:
                span.end()
        if not applied:
            # One by one: the good records are applied (or deduplicated), the bad one dead-lettered.
            self._handle_each(consumer, partitions, dead_letters)
            return
        for record, error in invalid:
            self._dead_letter(record, dead_letters, error)
        topics: dict[str, int] = {}
        for record, _ in valid:
            topics[record.topic] = topics.get(record.topic, 0) + 1
        for topic, count in topics.items():
            metrics.KAFKA_CONSUMED.labels(group=self._group.name, topic=topic, outcome="ok").inc(count)
        consumer.commit()

    def _apply_batch(
        self,
        consumer: KafkaConsumer,
        partitions: list[tuple[TopicPartition, list[ConsumerRecord]]],
        handler: EventBatchHandler,
        valid: list[tuple[ConsumerRecord, EventEnvelope]],
        parents: list[otel_context.Context] | None,
    ) -> bool:
        """True once the handler applied the batch; False when it kept failing (not for Redis)."""
        for attempt in range(1, HANDLER_ATTEMPTS + 1):
            try:
                handler.handle_batch([event for _, event in valid], parents)
                return True
            except STORE_UNAVAILABLE as exc:
                # Nothing of this poll is committed: every partition goes back to its first record.
                for tp, records in partitions:
                    consumer.seek(tp, records[0].offset)
                raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
            except Exception as exc:
                log.warning("batch handler failed on %d records (attempt %d): %s", len(valid), attempt, exc)
                if attempt == HANDLER_ATTEMPTS:
                    break
                time.sleep(HANDLER_BACKOFF * 2 ** (attempt - 1))
        return False

    def _handle_each(
        self,
        consumer: KafkaConsumer,
        partitions: list[tuple[TopicPartition, list[ConsumerRecord]]],
        dead_letters: KafkaProducer,
    ) -> None:
        for index, (tp, records) in enumerate(partitions):
            for record in records:
                try:
                    self._process(record, dead_letters)
                except StoreUnavailable:
                    consumer.seek(tp, record.offset)
                    for later, rest in partitions[index + 1 :]:
                        consumer.seek(later, rest[0].offset)
                    consumer.commit()
                    raise
        consumer.commit()

    def _handle_raw_batch(
        self,
        consumer: KafkaConsumer,
        partitions: list[tuple[TopicPartition, list[ConsumerRecord]]],
        dead_letters: KafkaProducer,
    ) -> None:
        """The whole poll to the batch handler.  Redis away: rewind every partition to the batch's
        first record (the handler's writes are idempotent by record, so a re-run adds nothing twice)."""
        assert self._batch_handler is not None
        records = [record for _, rs in partitions for record in rs]
        topic = records[0].topic if records else ",".join(self._group.topics)

        lettered: set[tuple[int, int]] = set()

        def dead_letter(record: ConsumerRecord, error: str) -> None:
            self._dead_letter(record, dead_letters, error)
            lettered.add((record.partition, record.offset))

        for attempt in range(1, HANDLER_ATTEMPTS + 1):
            lettered.clear()
            try:
                with tracing.tracer().start_as_current_span(
                    f"consume {topic}",
                    kind=SpanKind.CONSUMER,
                    attributes={
                        "messaging.system": "kafka",
                        "messaging.destination.name": topic,
                        "messaging.consumer.group.name": self._group.name,
                        "messaging.batch.message_count": len(records),
                    },
                ):
                    self._batch_handler(records, dead_letter)
                if len(records) > len(lettered):
                    handled = len(records) - len(lettered)
                    metrics.KAFKA_CONSUMED.labels(group=self._group.name, topic=topic, outcome="ok").inc(handled)
                return
            except STORE_UNAVAILABLE as exc:
                for tp, rs in partitions:
                    consumer.seek(tp, rs[0].offset)
                raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
            except Exception as exc:
                log.warning(
                    "batch handler failed on %d records of %s (attempt %d): %s", len(records), topic, attempt, exc
                )
                if attempt == HANDLER_ATTEMPTS:
                    for record in records:
                        dead_letter(record, f"handler failed {attempt} times: {type(exc).__name__}: {exc}")
                    return
                time.sleep(HANDLER_BACKOFF * 2 ** (attempt - 1))

    def _consume_span(self, record: ConsumerRecord) -> Span:
        """The record's span; it continues the trace the relay put in its headers."""
        return tracing.tracer().start_span(
            f"consume {record.topic}",
            context=tracing.extract_headers(record.headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": record.topic,
                "messaging.consumer.group.name": self._group.name,
                "messaging.kafka.offset": record.offset,
                "messaging.destination.partition.id": str(record.partition),
            },
        )

    def _process(self, record: ConsumerRecord, dead_letters: KafkaProducer) -> None:
        with trace.use_span(self._consume_span(record), end_on_exit=True):
            try:
                event = EventEnvelope.decode(record.value)
            except InvalidEvent as exc:
                self._dead_letter(record, dead_letters, f"invalid envelope: {exc}")
                return
            job_id = event.subject if record.topic in JOB_TOPICS else None
            with logs.log_context(event_id=event.id, job_id=job_id):
                self._handle(record, event, dead_letters)

    def _handle(self, record: ConsumerRecord, event: EventEnvelope, dead_letters: KafkaProducer) -> None:
        for attempt in range(1, HANDLER_ATTEMPTS + 1):
            try:
                assert self._handler is not None
                self._handler(event)
                metrics.KAFKA_CONSUMED.labels(group=self._group.name, topic=record.topic, outcome="ok").inc()
                log.debug("handled %s from %s@%s/%s", event.type, record.topic, record.partition, record.offset)
                return
            except STORE_UNAVAILABLE as exc:
                raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
            except Exception as exc:
                log.warning(
                    "handler failed on %s@%s/%s (attempt %d): %s",
                    record.topic,
                    record.partition,
                    record.offset,
                    attempt,
                    exc,
                )
                if attempt == HANDLER_ATTEMPTS:
                    self._dead_letter(record, dead_letters, f"handler failed {attempt} times: {exc}")
                    return
                time.sleep(HANDLER_BACKOFF * 2 ** (attempt - 1))

    def _dead_letter(self, record: ConsumerRecord, dead_letters: KafkaProducer, error: str) -> None:
        headers = [
            ("error", error[:1000].encode()),
            ("original_topic", record.topic.encode()),
            ("original_partition", str(record.partition).encode()),
            ("original_offset", str(record.offset).encode()),
            ("consumer_group", self._group.name.encode()),
        ]
        dead_letters.send(f"{record.topic}.dlq", key=record.key, value=record.value, headers=headers).get(timeout=30)
        metrics.KAFKA_CONSUMED.labels(group=self._group.name, topic=record.topic, outcome="dead_lettered").inc()
        log.error("sent %s@%s/%s to %s.dlq: %s", record.topic, record.partition, record.offset, record.topic, error)

    def _report_lag(self, consumer: KafkaConsumer) -> None:
        try:
            assigned = list(consumer.assignment())
            # A partition moved to another member is that member's to report: drop its last value
            # here, or /metrics (and the operations view) would show it forever.
            current = {(tp.topic, str(tp.partition)) for tp in assigned}
            for topic, partition in self._lag_labels - current:
                metrics.KAFKA_CONSUMER_LAG.remove(self._group.name, topic, partition)
            self._lag_labels = current
            if not assigned:
                return
            ends = consumer.end_offsets(assigned)
            for tp in assigned:
                lag = max(0, ends[tp] - consumer.position(tp))
                metrics.KAFKA_CONSUMER_LAG.labels(
                    group=self._group.name, topic=tp.topic, partition=str(tp.partition)
                ).set(lag)
        except Exception as exc:  # lag is informative; never stop consuming for it
            log.debug("lag unavailable: %s", exc)
