"""Session fixtures: a real ``redis-server`` and a real Kafka broker, started by the local system's own code.

- ``redis_server`` / ``kafka_broker``: the running servers (``.url``, ``.bootstrap_servers``, ``.pid``).
- ``settings``: :class:`~pynomaly.config.Settings` pointing at both, topics created, with short retry
  delays and limits (``TEST_OVERRIDES``).  Mark tests that use it ``@pytest.mark.services``.
- ``local_system``: the whole application (API, a worker per pool, the consumers) as real processes on
  the same Redis (its own database) and Kafka.  Mark tests that use it ``@pytest.mark.e2e``; they run
  after every other test, so no in-process consumer or worker of another test competes with them.

Everything started here is stopped at the end of the session, on failures too; children also get
SIGTERM from the kernel if pytest itself dies (PR_SET_PDEATHSIG), and an atexit hook kills leftovers.
"""

from __future__ import annotations

import atexit
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pynomaly.config import Settings
from pynomaly.localstack.kafka_broker import KafkaBroker
from pynomaly.localstack.procs import ProcessRecord, stop_process
from pynomaly.localstack.progress import StreamProgress
from pynomaly.localstack.redis_server import RedisServer
from pynomaly.localstack.system import LocalSystem
from pynomaly.messaging.kafka_admin import ensure_topics

REPO = Path(__file__).resolve().parents[1]
# Shared with `pynomaly local up` (default state dir ./.pynomaly, git-ignored): one download for both.
KAFKA_LIBS = REPO / ".pynomaly" / "kafka-libs"
E2E_REDIS_DB = 1
E2E_WEBHOOK_SECRET = "e2e-webhook-secret"

TEST_OVERRIDES: dict[str, Any] = {
    "environment": "test",
    "retry_backoff_base": 0.2,
    "retry_backoff_max": 2.0,
    "max_retries": 2,
    "task_time_limit": 120,
    "task_soft_time_limit": 100,
    "heartbeat_interval": 1.0,
    "result_ttl_seconds": 600,
    "max_upload_bytes": 1024 * 1024,
    "max_rows": 20_000,
    "max_columns": 50,
    "log_level": "INFO",
    # Schedules: second-level intervals, a quick beat loop and lock, loopback dataset URLs allowed.
    "schedule_min_interval_seconds": 1,
    "beat_max_loop_interval": 0.5,
    "beat_lock_timeout": 3.0,
    "dataset_url_allowlist": "127.0.0.0/8",
    "webhook_url_allowlist": "127.0.0.0/8",  # the tests' webhook receivers listen on loopback
}

_started: list[ProcessRecord] = []


def _kill_leftovers() -> None:
    # Last resort when a session ends without its fixture teardown (an interrupted run).
    for record in reversed(_started):
        if record.alive():
            stop_process(record, grace=5.0)


atexit.register(_kill_leftovers)


def _track(*records: ProcessRecord | None) -> None:
    _started.extend(r for r in records if r is not None)


def _progress() -> StreamProgress:
    # pytest captures sys.stderr; the first Kafka jar fetch takes a while and should be visible.
    return StreamProgress(sys.__stderr__)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "kafka_solo: starts its own Kafka broker; runs first, before the session broker exists"
    )
    # kafka-python loads its protocol schemas with importlib.resources' legacy API on every import;
    # the warning is attributed to importlib, so pyproject's "kafka.*" filter does not catch it.
    config.addinivalue_line("filterwarnings", r"ignore:(open_text|read_text) is deprecated:DeprecationWarning")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cluster-chaos",
        action="store_true",
        help="also collect the on-prem live tier (tests marked chaos; `./dev test --cluster-chaos`)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The on-prem live tier takes most of an hour on 2 cores: it runs only when asked for, before a
    # submission, and its figures are committed under benchmarks/results/.
    if not config.getoption("--cluster-chaos"):
        chaos = [item for item in items if item.get_closest_marker("chaos")]
        if chaos:
            config.hook.pytest_deselected(items=chaos)
            items[:] = [item for item in items if not item.get_closest_marker("chaos")]

    # A test with its own broker goes first (never two JVMs at once on a small machine); e2e goes
    # last, so the application's workers and consumers never compete with other tests' ones.
    def order(item: pytest.Item) -> int:
        if item.get_closest_marker("kafka_solo"):
            return 0
        if item.get_closest_marker("cluster"):
            return 3  # the deploy tier last: its cluster starts only when the rest is done
        return 2 if item.get_closest_marker("e2e") else 1

    items.sort(key=order)


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def redis_server(services_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(services_dir / "redis", log_path=services_dir / "logs" / "redis.log")
    try:
        server.start(progress=_progress())
        _track(server.record)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kafka_broker(services_dir: Path) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(services_dir / "kafka", libs_dir=KAFKA_LIBS, log_dir=services_dir / "logs" / "kafka")
    try:
        broker.start(progress=_progress())
        _track(broker.record)
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def settings(redis_server: RedisServer, kafka_broker: KafkaBroker) -> Settings:
    """Settings on the session's Redis (db 0) and Kafka, with every topology topic created."""
    value = Settings(
        redis_url=redis_server.url,
        kafka_bootstrap_servers=kafka_broker.bootstrap_servers,
        **TEST_OVERRIDES,
    )
    ensure_topics(value)
    return value


@pytest.fixture(scope="session")
def smtp_sink() -> Iterator[Any]:
    """A real SMTP server (aiosmtpd on 127.0.0.1, no TLS) that ``local_system`` sends e-mail to."""
    from tests.support.notify import smtp_server

    with smtp_server() as sink:
        yield sink


@pytest.fixture(scope="session")
def local_system(
    redis_server: RedisServer,
    kafka_broker: KafkaBroker,
    smtp_sink: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LocalSystem]:
    """The application's real processes (``local_components``) on the session's services.

    ``local_system.api_url``, ``.api_key`` (the ``X-API-Key`` header), ``.settings`` (Redis db 1)
    and ``.state_dir`` (component logs in ``state_dir / "logs"``).  E-mail goes to ``smtp_sink``;
    webhooks are signed with ``E2E_WEBHOOK_SECRET``.
    """
    smtp = {
        "smtp_host": smtp_sink.host,
        "smtp_port": smtp_sink.port,
        "smtp_security": "none",
        "smtp_from": "pynomaly@e2e.test",
        "smtp_timeout": 5.0,
        "webhook_secret": E2E_WEBHOOK_SECRET,
    }
    system = LocalSystem(
        tmp_path_factory.mktemp("local-system"),
        redis=redis_server,
        kafka=kafka_broker,
        libs_dir=KAFKA_LIBS,
        settings_overrides={**TEST_OVERRIDES, **smtp, "redis_url": redis_server.url_for_db(E2E_REDIS_DB)},
    )
    try:
        system.start(progress=_progress())
        _track(*(r.record for r in system.supervisor.running))
        yield system
    finally:
        system.stop()
