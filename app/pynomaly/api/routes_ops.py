"""Operations endpoints: health, readiness, metrics, detectors, dead-letter queue, audit log."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pynomaly.api.deps import (
    AuditLogDep,
    Caller,
    ContainerDep,
    DeadLetterStoreDep,
    JobServiceDep,
    MetricsRegistryDep,
    RedisDep,
    SettingsDep,
)
from pynomaly.api.schemas import AuditPage, DeadLetterPage, DeadLetterView, DetectorView, Offset
from pynomaly.api.schemas_ops import OpsMetrics
from pynomaly.domain.detectors import DETECTORS
from pynomaly.storage.components import component_health

router = APIRouter()


@router.get("/healthz", tags=["health"], summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    # On the event loop, not in the thread pool: requests stuck on a dead Redis may fill the pool,
    # and liveness must still answer at once (a restart would not bring Redis back).
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], summary="Readiness: Redis reachable (Kafka and the outbox reported)")
async def readyz(container: ContainerDep) -> JSONResponse:
    outbox = container.outbox
    report: dict[str, Any] = {}

    def look() -> None:
        report["pending"] = outbox.depth()  # also the Redis check: it answers or raises
        report["oldest_seconds"] = round(outbox.oldest_age(), 1)
        report["kafka"] = outbox.relay_state()  # what the relay publishing the outbox last saw

    try:
        await asyncio.wait_for(asyncio.to_thread(look), timeout=5)
        checks = {"redis": "ok", "kafka": report.pop("kafka")}
    except Exception as exc:
        checks = {"redis": f"unavailable: {type(exc).__name__}: {exc}"[:200], "kafka": "unknown (Redis unavailable)"}
        report = {}
    # Only Redis gates readiness: requests are served without Kafka (their events wait in the outbox),
    # and taking every replica out of the Service for a Kafka outage would turn it into an API outage.
    ready = checks["redis"] == "ok"
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks, "outbox": report},
        status_code=200 if ready else 503,
    )


@router.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=Response)
def metrics_endpoint(registry: MetricsRegistryDep) -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/v1/ops/metrics",
    tags=["health"],
    response_model=OpsMetrics,
    summary="The operations view's figures: queue depths, task runs and run times, consumer lag, DLQ, outbox",
)
def ops_metrics(container: ContainerDep, _: Caller) -> OpsMetrics:
    # The sources /metrics and /readyz use, as JSON; the dashboard samples it and draws the series.
    from pynomaly.observability import ops

    settings = container.settings
    at = time.time()
    state = ops.redis_state(container.redis)
    outbox = {"pending": container.outbox.depth(), "oldest_seconds": round(container.outbox.oldest_age(), 1)}
    return OpsMetrics(
        at=at,
        report_interval_seconds=settings.heartbeat_interval,
        stale_after_seconds=settings.heartbeat_stale_after,
        outbox=outbox,
        **state,
        **ops.read_snapshots(container.redis, settings.heartbeat_stale_after, now=at),
    )


@router.get(
    "/v1/detectors", tags=["detectors"], response_model=list[DetectorView], summary="Detectors and their parameters"
)
def detectors(_: Caller) -> list[DetectorView]:
    return [
        DetectorView(
            name=spec.name,
            description=spec.description,
            parameters=spec.schema(),
            per_feature_contributions="per_dimension_tail_probability" if spec.per_feature_scores else "robust_zscore",
        )
        for spec in DETECTORS.values()
    ]


@router.get("/v1/components", tags=["health"], summary="Every component's last heartbeat and whether it is stale")
def components(client: RedisDep, settings: SettingsDep, _: Caller) -> list[dict[str, Any]]:
    return component_health(client, stale_after=settings.heartbeat_stale_after)


@router.get("/v1/dlq", tags=["dead letters"], response_model=DeadLetterPage, summary="Dead letters, newest first")
def list_dead_letters(
    dead_letters: DeadLetterStoreDep,
    _: Caller,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> DeadLetterPage:
    letters, total = dead_letters.list(offset, limit)
    return DeadLetterPage(
        items=[DeadLetterView(**d.as_dict()) for d in letters], total=total, offset=offset, limit=limit
    )


@router.get("/v1/dlq/{letter_id}", tags=["dead letters"], response_model=DeadLetterView)
def get_dead_letter(letter_id: str, dead_letters: DeadLetterStoreDep, _: Caller) -> DeadLetterView:
    return DeadLetterView(**dead_letters.get(letter_id).as_dict())


@router.post(
    "/v1/dlq/{letter_id}/replay", tags=["dead letters"], status_code=202, summary="Enqueue a dead letter again"
)
def replay_dead_letter(letter_id: str, job_service: JobServiceDep, caller: Caller) -> dict[str, Any]:
    letter = job_service.replay_dead_letter(letter_id, actor=caller)
    return {"replayed": letter.id, "task": letter.task, "job_id": letter.job_id}


@router.delete("/v1/dlq", tags=["dead letters"], summary="Delete every dead letter")
def purge_dead_letters(job_service: JobServiceDep, caller: Caller) -> dict[str, int]:
    return {"purged": job_service.purge_dead_letters(actor=caller)}


@router.get("/v1/audit", tags=["audit"], response_model=AuditPage, summary="Audit events, newest first")
def audit(
    audit_log: AuditLogDep,
    _: Caller,
    action: Annotated[str | None, Query(max_length=64)] = None,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    subject: Annotated[str | None, Query(max_length=128)] = None,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> AuditPage:
    items, total = audit_log.query(action, actor, subject, offset, limit)
    return AuditPage(items=items, total=total, offset=offset, limit=limit)
