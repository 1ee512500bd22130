"""Errors as RFC 9457 problem details (application/problem+json) with a clear message."""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from pynomaly.config import SettingsError
from pynomaly.domain.errors import DomainError
from pynomaly.messaging.outbox import OutboxFull

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
# Seconds a client should wait before retrying a 503: about one Redis restart or failover.
RETRY_AFTER = 5
# Redis unreachable (refused, timed out, still loading, a replica after a failover) and Celery's
# broker errors: the request is refused whole, not a bug, so no traceback.
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError, OperationalError)


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    headers = {"WWW-Authenticate": 'ApiKey header="X-API-Key"'} if status == 401 else None
    if status == 503:
        headers = {"Retry-After": str(RETRY_AFTER)}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "request"


def _field_error(error: dict[str, Any]) -> dict[str, str]:
    if error["type"] == "json_invalid":  # FastAPI's loc is ("body", <character offset>): say so
        reason = error.get("ctx", {}).get("error", error["msg"])
        return {"field": "body", "message": f"invalid JSON at character {error['loc'][-1]}: {reason}"}
    return {"field": _location(tuple(error["loc"])), "message": error["msg"]}


def install(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        return problem(exc.status, exc.title, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [_field_error(e) for e in exc.errors()]
        first = errors[0] if errors else {"field": "request", "message": "invalid"}
        return problem(422, "Invalid input", f"{first['field']}: {first['message']}", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {
            401: "Unauthorized",
            404: "Not found",
            405: "Method not allowed",
            413: "Payload too large",
            415: "Unsupported media type",
        }
        response = problem(exc.status_code, titles.get(exc.status_code, "Error"), str(exc.detail))
        response.headers.update(exc.headers or {})  # e.g. a 405's Allow: the methods the path takes
        return response

    async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
        # Registered per class below, so Starlette's ExceptionMiddleware answers it: the connection
        # stays open (the catch-all Exception handler runs in ServerErrorMiddleware, which re-raises).
        log.warning("%s %s: 503, Redis unavailable: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return problem(503, "Service unavailable", "Redis is unavailable; nothing was changed, retry later")

    for kind in UNAVAILABLE:
        app.add_exception_handler(kind, _unavailable)

    @app.exception_handler(redis.exceptions.OutOfMemoryError)
    async def _redis_full(request: Request, exc: Exception) -> JSONResponse:
        # Redis refused a write at its maxmemory (noeviction), past the admission check's watermark
        # (which covers new jobs and uploads): one warning, and the client comes back later.
        log.warning("%s %s: 507, Redis is full: %s", request.method, request.url.path, exc)
        response = problem(507, "Insufficient storage", "Redis refused a write at its memory limit; retry later")
        response.headers["Retry-After"] = "30"
        return response

    @app.exception_handler(OutboxFull)
    async def _outbox_full(request: Request, exc: OutboxFull) -> JSONResponse:
        log.warning("%s %s: 503, %s", request.method, request.url.path, exc)
        return problem(503, "Service unavailable", "the event outbox is full (Kafka is unavailable); retry later")

    @app.exception_handler(SettingsError)
    async def _settings(_: Request, exc: SettingsError) -> JSONResponse:
        return problem(500, "Server misconfigured", str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return problem(500, "Internal error", f"{type(exc).__name__}: the server could not complete the request")
