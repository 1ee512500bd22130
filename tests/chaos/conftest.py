"""The chaos suite's own local system: the API, a worker per pool, both consumers and beat on a
redis-server and a Kafka JVM of its own, so killing them never touches the session's shared servers.

Every test here is marked ``kafka_solo`` (tests/conftest.py runs those first, before the session
broker starts: never two JVMs at once); the system lives for the whole package and is stopped at
its end.  Figures go to benchmarks/results/local-chaos.json.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pynomaly.localstack.system import LocalSystem
from tests.chaos.support import Chaos, record_figures
from tests.conftest import KAFKA_LIBS, TEST_OVERRIDES, _progress, _track

# The Kafka outage of test_kafka: 60 s by default (CI); the 5 minutes with 300.
OUTAGE_ENV = "PYNOMALY_CHAOS_KAFKA_OUTAGE_SECONDS"


def kafka_outage_seconds() -> float:
    raw = os.environ.get(OUTAGE_ENV, "60")
    try:
        value = float(raw)
    except ValueError:
        raise pytest.UsageError(f"{OUTAGE_ENV} must be a number of seconds, not {raw!r}") from None
    if not 10 <= value <= 3600:
        raise pytest.UsageError(f"{OUTAGE_ENV} must be between 10 and 3600 seconds, not {raw!r}")
    return value


CHAOS_OVERRIDES: dict[str, Any] = {
    **TEST_OVERRIDES,
    # Every event of the suite stays in dashboard:stream, so each can be counted there by id.
    "stream_maxlen": 200_000,
    # The relay gives up on a batch quickly while Kafka is down (and a killed holder's lease lapses
    # after 2 x (5 + 5) s), so recovery is seen within the tests' time.
    "kafka_delivery_timeout_seconds": 5.0,
    # Beat's health check every 2 s: proof that beat schedules again after the Redis kill.
    "health_summary_interval_seconds": 2,
}


@pytest.fixture(scope="package")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chaos]:
    system = LocalSystem(tmp_path_factory.mktemp("chaos"), libs_dir=KAFKA_LIBS, settings_overrides=CHAOS_OVERRIDES)
    try:
        system.start(progress=_progress())
        _track(system.redis.record, system.kafka.record, *(r.record for r in system.supervisor.running))
        headers = {"X-API-Key": system.api_key}
        with httpx.Client(base_url=system.api_url, headers=headers, timeout=60, trust_env=False) as http:
            yield Chaos(system, http, KAFKA_LIBS)
    finally:
        system.stop()


@pytest.fixture(scope="package")
def chaos_figures() -> Iterator[dict[str, Any]]:
    """Figures of this run, merged into benchmarks/results/local-chaos.json at the end."""
    figures: dict[str, Any] = {}
    yield figures
    for section, values in figures.items():
        record_figures(section, values)


@pytest.fixture
def healthy(chaos: Chaos) -> Chaos:
    """The system as every test starts it: every component running and healthy."""
    chaos.wait_all_healthy()
    return chaos
