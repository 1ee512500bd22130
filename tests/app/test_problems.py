"""Errors a route lets escape become problem+json answers: Redis full is a 507 with Retry-After, Redis
away a 503 with Retry-After, and neither is a 500 with a traceback."""

from __future__ import annotations

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pynomaly.api import problems


def _app(exc: Exception) -> FastAPI:
    app = FastAPI()
    problems.install(app)

    @app.get("/boom")
    def boom() -> None:
        raise exc

    return app


@pytest.mark.parametrize(
    ("exc", "status", "detail"),
    [
        (redis.exceptions.OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'."), 507, "memory"),
        (redis.ConnectionError("Connection refused"), 503, "Redis is unavailable"),
        (redis.exceptions.ReadOnlyError("You can't write against a read only replica."), 503, "Redis is unavailable"),
    ],
)
def test_redis_refusals_are_problems_with_retry_after(
    exc: Exception, status: int, detail: str, caplog: pytest.LogCaptureFixture
) -> None:
    with TestClient(_app(exc), raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")
    assert int(response.headers["retry-after"]) > 0
    assert detail in response.json()["detail"]
    assert not any(record.exc_info for record in caplog.records)  # one warning line, no traceback
