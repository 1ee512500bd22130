"""The API's typed dependencies: the one place routes get settings, stores, services and the caller.

``create_app`` puts the process's :class:`~pynomaly.wiring.Container`, the API keys and the metrics
registry on ``app.state`` once (the lifespan adds the asyncio Redis client); routes declare what they
need with the ``Annotated`` aliases below and never read ``app.state`` themselves.  The providers only
read attributes, so they are ``async``: no thread-pool hop per request.
"""

from __future__ import annotations

from typing import Annotated

import redis.asyncio
from fastapi import Depends, HTTPException, Request
from prometheus_client import CollectorRegistry
from redis import Redis
from starlette.requests import HTTPConnection

from pynomaly.api import API_KEY_HEADER
from pynomaly.api.auth import ApiKeys, key_from_request
from pynomaly.config import Settings
from pynomaly.storage.audit import AuditLog
from pynomaly.storage.datasets import DatasetStore
from pynomaly.storage.dead_letters import DeadLetterStore
from pynomaly.storage.jobs import JobStore
from pynomaly.storage.memory import MemoryAdmission
from pynomaly.storage.models import ModelStore
from pynomaly.storage.schedules import ScheduleStore
from pynomaly.usecases.jobs import JobService
from pynomaly.usecases.schedules import DatasetService, ScheduleService
from pynomaly.wiring import Container


async def get_container(connection: HTTPConnection) -> Container:
    container: Container = connection.app.state.container
    return container


ContainerDep = Annotated[Container, Depends(get_container)]


async def get_api_keys(connection: HTTPConnection) -> ApiKeys:
    keys: ApiKeys = connection.app.state.api_keys
    return keys


ApiKeysDep = Annotated[ApiKeys, Depends(get_api_keys)]


def require_api_key(request: Request, keys: ApiKeysDep) -> str:
    """The caller's identity (a key fingerprint); 401 without an accepted key."""
    identity = keys.identify(key_from_request(request))
    if identity is None:
        raise HTTPException(401, f"a valid API key is required in the {API_KEY_HEADER} header")
    return identity


# The authenticated caller, recorded as the actor of what it changes (openapi.py marks every route
# that depends on it as needing the key).
Caller = Annotated[str, Depends(require_api_key)]


async def get_settings(container: ContainerDep) -> Settings:
    return container.settings


async def get_redis(container: ContainerDep) -> Redis:
    return container.redis


async def get_async_redis(connection: HTTPConnection) -> redis.asyncio.Redis:
    client: redis.asyncio.Redis = connection.app.state.async_redis
    return client


async def get_jobs(container: ContainerDep) -> JobStore:
    return container.jobs


async def get_admission(container: ContainerDep) -> MemoryAdmission:
    return container.admission


async def get_models(container: ContainerDep) -> ModelStore:
    return container.models


async def get_dead_letters(container: ContainerDep) -> DeadLetterStore:
    return container.dead_letters


async def get_audit_log(container: ContainerDep) -> AuditLog:
    return container.audit_log


async def get_schedules(container: ContainerDep) -> ScheduleStore:
    return container.schedules


async def get_datasets(container: ContainerDep) -> DatasetStore:
    return container.datasets


async def get_job_service(container: ContainerDep) -> JobService:
    return container.job_service


async def get_dataset_service(container: ContainerDep) -> DatasetService:
    return container.dataset_service


async def get_schedule_service(container: ContainerDep) -> ScheduleService:
    return container.schedule_service


async def get_metrics_registry(connection: HTTPConnection) -> CollectorRegistry:
    registry: CollectorRegistry = connection.app.state.metrics_registry
    return registry


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[Redis, Depends(get_redis)]
AsyncRedisDep = Annotated[redis.asyncio.Redis, Depends(get_async_redis)]
JobStoreDep = Annotated[JobStore, Depends(get_jobs)]
AdmissionDep = Annotated[MemoryAdmission, Depends(get_admission)]
ModelStoreDep = Annotated[ModelStore, Depends(get_models)]
DeadLetterStoreDep = Annotated[DeadLetterStore, Depends(get_dead_letters)]
AuditLogDep = Annotated[AuditLog, Depends(get_audit_log)]
ScheduleStoreDep = Annotated[ScheduleStore, Depends(get_schedules)]
DatasetStoreDep = Annotated[DatasetStore, Depends(get_datasets)]
JobServiceDep = Annotated[JobService, Depends(get_job_service)]
DatasetServiceDep = Annotated[DatasetService, Depends(get_dataset_service)]
ScheduleServiceDep = Annotated[ScheduleService, Depends(get_schedule_service)]
MetricsRegistryDep = Annotated[CollectorRegistry, Depends(get_metrics_registry)]
