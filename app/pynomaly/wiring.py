"""Builds each process's collaborators once, from settings: the composition root.

Components (API, worker, consumer) ask for a ``Container``; nothing else constructs clients.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

import redis
from celery import Celery

from pynomaly.config import Settings
from pynomaly.messaging.service import MessageQueueService
from pynomaly.messaging.streams import RedisStreams
from pynomaly.storage.dead_letters import DeadLetterStore
from pynomaly.storage.jobs import JobStore
from pynomaly.storage.redis_client import redis_from_settings

if TYPE_CHECKING:
    from pynomaly.messaging.outbox import OutboxRelay


class Container:
    def __init__(self, settings: Settings, component: str) -> None:
        self.settings = settings
        self.component = component
        self.relay: OutboxRelay | None = None  # the API's outbox relay, made with ``messaging``

    @cached_property
    def redis(self) -> redis.Redis:
        return redis_from_settings(self.settings)

    @cached_property
    def redis_bytes(self) -> redis.Redis:
        return redis_from_settings(self.settings, decode=False)

    @cached_property
    def jobs(self) -> JobStore:
        return JobStore(self.redis, self.redis_bytes, self.settings.result_ttl_seconds)

    @cached_property
    def dead_letters(self) -> DeadLetterStore:
        return DeadLetterStore(self.redis)

    @cached_property
    def streams(self) -> RedisStreams:
        return RedisStreams(self.redis, self.settings.stream_maxlen)

    @cached_property
    def celery(self) -> Celery:
        from pynomaly.messaging.celery_app import create_celery

        return create_celery(self.settings)

    @cached_property
    def messaging(self) -> MessageQueueService:
        if self.component == "api":
            # The API never waits for Kafka: its events go to the Redis outbox, published by the relay.
            from pynomaly.messaging.outbox import Outbox, OutboxPublisher, OutboxRelay

            outbox = Outbox(self.redis, self.settings.outbox_max_events)
            self.relay = OutboxRelay(outbox, self.settings)
            publisher = OutboxPublisher(outbox, self.relay)
            return MessageQueueService(self.celery, publisher, self.streams, self.component, outbox=outbox)
        # Workers, beat and consumers publish directly (and wait for acks off any event loop).
        from pynomaly.messaging.kafka_events import LazyPublisher

        return MessageQueueService(self.celery, LazyPublisher(self.settings), self.streams, self.component)

    def close(self) -> None:
        if "messaging" in self.__dict__:
            self.messaging.close()
        for name in ("redis", "redis_bytes"):
            if name in self.__dict__:
                self.__dict__[name].close()
