"""Publishing event envelopes to Kafka: acks=all, idempotent, gzip, keyed by subject (job id)."""

from __future__ import annotations

import logging
import time
from typing import Any

from kafka import KafkaProducer

from pynomaly.config import Settings
from pynomaly.messaging.events import EventEnvelope
from pynomaly.messaging.kafka_admin import connection_config
from pynomaly.observability import metrics
from pynomaly.topology import T_SYSTEM

log = logging.getLogger(__name__)


def producer_config(settings: Settings) -> dict[str, Any]:
    return {
        **connection_config(settings),
        "acks": "all",
        "enable_idempotence": True,
        "retries": 10,
        # Idempotence keeps order with up to 5 requests in flight per connection.
        "max_in_flight_requests_per_connection": 5,
        "linger_ms": 10,
        "compression_type": "gzip",
        "request_timeout_ms": 30_000,
        # Fail a send after 10 s without broker metadata instead of blocking a request for 60 s.
        "max_block_ms": 10_000,
        "client_id": f"pynomaly-{settings.environment}",
    }


def _publish_failed(event: EventEnvelope, exc: BaseException) -> None:
    metrics.KAFKA_PUBLISH_FAILURES.labels(topic=event.topic, type=event.type).inc()
    log.error("event %s (%s for %s) was not published: %s", event.id, event.type, event.subject, exc)


class KafkaEventPublisher:
    """Publishes envelopes, never silently losing one.

    ``publish(wait=True)`` returns once the broker acknowledged the event.  ``wait=False`` lets a
    worker send a job's events back to back (linger batches them) and ``flush`` before its task
    ends, so the next step's events, sent by another process, still come after them; a failed
    send is logged and counted by its callback.
    """

    def __init__(self, settings: Settings, timeout: float = 30.0) -> None:
        settings.require("kafka_bootstrap_servers")
        self._producer = KafkaProducer(**producer_config(settings))
        self._timeout = timeout

    def publish(self, event: EventEnvelope, wait: bool = True) -> None:
        # Re-validate on the way out: a malformed event must fail here, not in a consumer.
        EventEnvelope.decode(event.encode())
        started = time.perf_counter()
        future = self._producer.send(event.topic, key=event.subject.encode(), value=event.encode())

        def acknowledged(_: object) -> None:
            metrics.KAFKA_PUBLISH_SECONDS.labels(topic=event.topic).observe(time.perf_counter() - started)
            metrics.KAFKA_PUBLISHED.labels(topic=event.topic, type=event.type).inc()

        if wait:
            acknowledged(future.get(timeout=self._timeout))
            return
        future.add_callback(acknowledged)
        future.add_errback(lambda exc: _publish_failed(event, exc))

    def flush(self) -> None:
        self._producer.flush(timeout=self._timeout)

    def connected(self) -> bool:
        """True when the cluster answers a metadata request (used by /readyz)."""
        return bool(self._producer.partitions_for(T_SYSTEM))

    def close(self) -> None:
        try:
            self._producer.flush(timeout=self._timeout)
        finally:
            self._producer.close(timeout=self._timeout)
