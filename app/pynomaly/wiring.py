"""Builds each process's collaborators once, from settings: the composition root.

Components (API, worker, consumer) ask for a ``Container``; nothing else constructs clients, stores
or services.  Every collaborator is built on first use and shared for the process's lifetime (the
stores and services hold no per-request state).
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from celery import Celery
from redis import Redis

from pynomaly.config import Settings
from pynomaly.messaging.events import PayloadCaps
from pynomaly.messaging.service import MessageQueueService
from pynomaly.messaging.streams import RedisStreams
from pynomaly.storage.audit import AuditLog
from pynomaly.storage.datasets import DatasetStore
from pynomaly.storage.dead_letters import DeadLetterStore
from pynomaly.storage.encryption import BlobCodec
from pynomaly.storage.jobs import JobStore
from pynomaly.storage.memory import MemoryAdmission
from pynomaly.storage.models import ModelStore, artifacts_from_setting
from pynomaly.storage.redis_client import redis_from_settings
from pynomaly.storage.schedules import ScheduleStore
from pynomaly.usecases.jobs import JobService, webhook_policy
from pynomaly.usecases.schedules import DatasetService, ScheduleService

if TYPE_CHECKING:
    from pynomaly.messaging.outbox import Outbox, OutboxRelay


class Container:
    def __init__(self, settings: Settings, component: str) -> None:
        self.settings = settings
        self.component = component
        self.relay: OutboxRelay | None = None  # set by ``start_relay``

    @cached_property
    def redis(self) -> Redis:
        return redis_from_settings(self.settings)

    @cached_property
    def redis_bytes(self) -> Redis:
        return redis_from_settings(self.settings, decode=False)

    @cached_property
    def codec(self) -> BlobCodec:
        """Encryption at rest of payload blobs (a bad or missing key raises SettingsError here)."""
        return self.settings.blob_codec()

    @cached_property
    def jobs(self) -> JobStore:
        settings = self.settings
        return JobStore(self.redis, self.redis_bytes, settings.result_ttl_seconds, self.codec, settings.job_data_ttl)

    @cached_property
    def admission(self) -> MemoryAdmission:
        """One per process: it caches Redis' memory reading for a second across requests."""
        return MemoryAdmission(self.redis, self.settings.redis_memory_high_watermark, self.jobs.reserved_bytes)

    @cached_property
    def models(self) -> ModelStore:
        """Trained models: metadata in Redis, artifacts where ``model_store`` says (cached per process)."""
        settings = self.settings
        artifacts = artifacts_from_setting(settings.model_store, self.redis_bytes, self.codec, self.admission)
        return ModelStore(
            self.redis,
            artifacts,
            max_models=settings.max_models,
            max_versions=settings.model_max_versions,
            max_artifact_bytes=settings.model_max_artifact_bytes,
        )

    @cached_property
    def dead_letters(self) -> DeadLetterStore:
        return DeadLetterStore(self.redis)

    @cached_property
    def schedules(self) -> ScheduleStore:
        return ScheduleStore(self.redis)

    @cached_property
    def datasets(self) -> DatasetStore:
        return DatasetStore(self.redis, self.redis_bytes, self.codec)

    @cached_property
    def audit_log(self) -> AuditLog:
        return AuditLog(self.redis)

    @cached_property
    def streams(self) -> RedisStreams:
        return RedisStreams(self.redis, self.settings.stream_maxlen)

    @cached_property
    def celery(self) -> Celery:
        from pynomaly.messaging.celery_app import create_celery

        return create_celery(self.settings)

    @cached_property
    def outbox(self) -> Outbox:
        from pynomaly.messaging.outbox import Outbox

        return Outbox(self.redis, self.settings.outbox_max_events)

    @cached_property
    def messaging(self) -> MessageQueueService:
        # Every process writes its events to the Redis outbox: nothing waits for Kafka, and one
        # relay publishes them in the order they were written (messaging/outbox.py).
        from pynomaly.messaging.outbox import OutboxPublisher

        return MessageQueueService(
            self.celery,
            OutboxPublisher(self.outbox),
            self.streams,
            self.component,
            outbox=self.outbox,
            caps=PayloadCaps.from_settings(self.settings),
        )

    @cached_property
    def job_service(self) -> JobService:
        return JobService(
            self.jobs,
            self.messaging,
            self.dead_letters,
            webhook_policy(self.settings.webhook_url_allowlist),
            admission=self.admission,
            models=self.models,
        )

    @cached_property
    def dataset_service(self) -> DatasetService:
        return DatasetService(self.datasets, self.settings, self.messaging)

    @cached_property
    def schedule_service(self) -> ScheduleService:
        # RedBeat (and so Celery's configuration) is loaded only by a process that uses schedules.
        from pynomaly.messaging.beat import RedBeatTimer

        return ScheduleService(
            self.schedules,
            self.datasets,
            self.jobs,
            self.job_service,
            RedBeatTimer(self.celery),
            self.settings,
            self.messaging,
        )

    def start_relay(self) -> OutboxRelay:
        """Run an outbox relay in this process (the API's; it stands by while another holds the lease)."""
        from pynomaly.messaging.outbox import OutboxRelay

        if self.relay is None:
            self.relay = OutboxRelay(self.outbox, self.settings)
            self.relay.start()
        return self.relay

    def close(self) -> None:
        if self.relay is not None:
            self.relay.stop()
        if "messaging" in self.__dict__:
            self.messaging.close()
        for name in ("redis", "redis_bytes"):
            if name in self.__dict__:
                self.__dict__[name].close()
