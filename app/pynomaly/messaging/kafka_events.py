"""Publishing event envelopes to Kafka: acks=all, idempotent, gzip, keyed by subject (job id)."""

from __future__ import annotations

import logging
import threading
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


class LazyPublisher:
    """Connects on first use, so a component starts (and reports not-ready) while Kafka is down.

    A failed connection is retried at the next publish instead of failing the process at start.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._publisher: KafkaEventPublisher | None = None
        self._lock = threading.Lock()

    def _get(self) -> KafkaEventPublisher:
        with self._lock:
            if self._publisher is None:
                self._publisher = KafkaEventPublisher(self._settings)
            return self._publisher

    def publish(self, event: EventEnvelope) -> None:
        self._get().publish(event)

    def connected(self) -> bool:
        return self._get().connected()

    def close(self) -> None:
        with self._lock:
            if self._publisher is not None:
                self._publisher.close()
                self._publisher = None


class KafkaEventPublisher:
    """Publishes envelopes; ``publish`` waits for the broker's ack so an event is never lost silently."""

    def __init__(self, settings: Settings, timeout: float = 30.0) -> None:
        settings.require("kafka_bootstrap_servers")
        self._producer = KafkaProducer(**producer_config(settings))
        self._timeout = timeout

    def publish(self, event: EventEnvelope) -> None:
        # Re-validate on the way out: a malformed event must fail here, not in a consumer.
        EventEnvelope.decode(event.encode())
        started = time.perf_counter()
        future = self._producer.send(event.topic, key=event.subject.encode(), value=event.encode())
        future.get(timeout=self._timeout)
        metrics.KAFKA_PUBLISH_SECONDS.labels(topic=event.topic).observe(time.perf_counter() - started)
        metrics.KAFKA_PUBLISHED.labels(topic=event.topic, type=event.type).inc()

    def connected(self) -> bool:
        """True when the cluster answers a metadata request (used by /readyz)."""
        return bool(self._producer.partitions_for(T_SYSTEM))

    def close(self) -> None:
        try:
            self._producer.flush(timeout=self._timeout)
        finally:
            self._producer.close(timeout=self._timeout)
