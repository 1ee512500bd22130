"""The FastAPI application: thin routes over the job use cases."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

import redis.asyncio
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import REGISTRY, CollectorRegistry

import pynomaly
from pynomaly.api import problems
from pynomaly.api.auth import ApiKeys
from pynomaly.api.observe import RequestScope, bind_path_ids
from pynomaly.api.openapi import install as complete_openapi
from pynomaly.api.routes_datasets import router as datasets_router
from pynomaly.api.routes_jobs import router as jobs_router
from pynomaly.api.routes_models import router as models_router
from pynomaly.api.routes_ops import router as ops_router
from pynomaly.api.routes_schedules import router as schedules_router
from pynomaly.api.routes_streams import router as streams_router
from pynomaly.api.websocket import router as ws_router
from pynomaly.config import Settings, SettingsError
from pynomaly.domain.errors import InsufficientStorage
from pynomaly.observability.metrics import RedisStateCollector, RegistryCollector
from pynomaly.wiring import Container

log = logging.getLogger(__name__)


def metrics_registry(container: Container) -> CollectorRegistry:
    """The process's own metrics plus the Redis state (queue depths, DLQ size) read at scrape time."""
    registry = CollectorRegistry()
    registry.register(RedisStateCollector(container.redis))
    registry.register(RegistryCollector(REGISTRY))  # the process's own counters too
    return registry


def create_app(settings: Settings, container: Container | None = None) -> FastAPI:
    settings.require("redis_url", "kafka_bootstrap_servers")
    keys = ApiKeys(settings.api_key_hashes())
    if not keys:
        # Secure by default: there is no anonymous mode.
        raise SettingsError("no API keys configured: set PYNOMALY_API_KEYS or PYNOMALY_API_KEYS_FILE")
    container = container or Container(settings, "api")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.async_redis = redis.asyncio.Redis.from_url(
            settings.redis_url, decode_responses=True, **settings.redis_ssl_options()
        )
        container.start_relay()  # publishes the outbox to Kafka, in its own thread
        yield
        await app.state.async_redis.aclose()
        await asyncio.to_thread(container.close)  # stops the relay; must not block the loop either

    app = FastAPI(
        title="Pynomaly",
        version=pynomaly.__version__,
        description="Asynchronous anomaly detection: submit a dataset, follow the job, fetch results and reports. "
        "Every endpoint except /healthz, /readyz and /metrics needs an API key in the X-API-Key header.",
        lifespan=lifespan,
        dependencies=[Depends(bind_path_ids)],  # the job a request is about, in its log lines
        # Request spans only when tracing is on (observability/tracing.py installs the provider from
        # OTEL_*); metrics stay Prometheus' and logs stay ours, on stderr.
        telemetry={"metrics": False, "logs": False, "auto_configure": False},
    )
    app.add_middleware(RequestScope)  # outermost middleware: its log scope encloses the access log line
    # What api/deps.py hands to the routes; nothing else reads app.state.
    app.state.container = container
    app.state.api_keys = keys
    app.state.metrics_registry = metrics_registry(container)

    problems.install(app)

    @app.exception_handler(InsufficientStorage)
    async def _insufficient_storage(_: Request, exc: InsufficientStorage) -> JSONResponse:
        # Redis is near its maxmemory: the client should come back later, not retry at once.
        response = problems.problem(exc.status, exc.title, str(exc))
        response.headers["Retry-After"] = str(exc.retry_after)
        return response

    app.include_router(ops_router)
    app.include_router(jobs_router)
    app.include_router(schedules_router)
    app.include_router(datasets_router)
    app.include_router(models_router)
    app.include_router(streams_router)
    app.include_router(ws_router)
    complete_openapi(app, [ops_router, jobs_router, schedules_router, datasets_router, models_router, streams_router])

    @app.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> str:
        # The page holds no data: it asks for an API key and then calls the authenticated API.
        return resources.files("pynomaly.dashboard").joinpath("static/index.html").read_text()

    # The page's script and stylesheet (no CDN, no build step): public files, like the page itself.
    app.mount("/dashboard/static", StaticFiles(packages=[("pynomaly.dashboard", "static")]), name="dashboard-static")

    return app
