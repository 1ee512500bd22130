"""Fixtures of the end-to-end tests.

The session's ``local_system`` (tests/conftest.py) is shared by every e2e test: tests never assume an
empty system, they look at their own jobs, events and stream entries.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pynomaly.client import PynomalyClient
from pynomaly.localstack.redis_server import RedisServer
from tests.e2e.support import WebhookReceiver, webhook_server


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    with webhook_server() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def api(local_system) -> Iterator[PynomalyClient]:  # type: ignore[no-untyped-def]
    with PynomalyClient(local_system.api_url, local_system.api_key, timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def system_redis(local_system) -> Iterator[redis.Redis]:  # type: ignore[no-untyped-def]
    client = redis.Redis.from_url(local_system.settings.redis_url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, to kill and restart without touching the session's."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()
