"""Builds each process's collaborators once, from settings: the composition root.

Components (API, worker, consumer) ask for a ``Container``; nothing else constructs clients.
"""

from __future__ import annotations

from functools import cached_property

import redis
from celery import Celery

from pynomaly.config import Settings
from pynomaly.messaging.events import PayloadCaps
from pynomaly.messaging.service import MessageQueueService
from pynomaly.messaging.streams import RedisStreams
from pynomaly.storage.dead_letters import DeadLetterStore
from pynomaly.storage.jobs import JobStore
from pynomaly.storage.memory import MemoryAdmission
from pynomaly.storage.redis_client import redis_from_settings


class Container:
    def __init__(self, settings: Settings, component: str) -> None:
        self.settings = settings
        self.component = component

    @cached_property
    def redis(self) -> redis.Redis:
        return redis_from_settings(self.settings)

    @cached_property
    def redis_bytes(self) -> redis.Redis:
        return redis_from_settings(self.settings, decode=False)

    @cached_property
    def jobs(self) -> JobStore:
        return JobStore(self.redis, self.redis_bytes, self.settings.result_ttl_seconds, self.settings.job_data_ttl)

    @cached_property
    def admission(self) -> MemoryAdmission:
        """One per process: it caches Redis' memory reading for a second across requests."""
        return MemoryAdmission(self.redis, self.settings.redis_memory_high_watermark, self.jobs.reserved_bytes)

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
        from pynomaly.messaging.kafka_events import LazyPublisher

        caps = PayloadCaps.from_settings(self.settings)
        return MessageQueueService(self.celery, LazyPublisher(self.settings), self.streams, self.component, caps)

    def close(self) -> None:
        if "messaging" in self.__dict__:
            self.messaging.close()
        for name in ("redis", "redis_bytes"):
            if name in self.__dict__:
                self.__dict__[name].close()
