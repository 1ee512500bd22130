"""Builds the schedule and dataset services from a process's :class:`~pynomaly.wiring.Container`.

Shared by the API (routes) and the workers (the scheduled-run task), so both see the same stores
and the same RedBeat entries.
"""

from __future__ import annotations

from pynomaly.storage.datasets import DatasetStore
from pynomaly.storage.schedules import ScheduleStore
from pynomaly.usecases.jobs import JobService, webhook_policy
from pynomaly.usecases.schedules import DatasetService, ScheduleService
from pynomaly.wiring import Container


def schedule_store(container: Container) -> ScheduleStore:
    return ScheduleStore(container.redis)


def dataset_store(container: Container) -> DatasetStore:
    return DatasetStore(container.redis, container.redis_bytes, container.codec)


def dataset_service(container: Container) -> DatasetService:
    return DatasetService(dataset_store(container), container.settings, container.messaging)


def job_service_for(container: Container) -> JobService:
    settings = container.settings
    return JobService(
        container.jobs,
        container.messaging,
        container.dead_letters,
        webhook_policy(settings.webhook_url_allowlist),
        admission=container.admission,
    )


def schedule_service(container: Container, job_service: JobService | None = None) -> ScheduleService:
    from pynomaly.messaging.beat import RedBeatTimer

    return ScheduleService(
        schedule_store(container),
        dataset_store(container),
        container.jobs,
        job_service or job_service_for(container),
        RedBeatTimer(container.celery),
        container.settings,
        container.messaging,
    )
