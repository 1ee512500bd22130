"""Beat through a Redis outage, on a real redis-server of the test's own (stopped and started again):
the process stays up and schedules again, and a beat never sends while another holds the lock."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pynomaly.config import Settings
from pynomaly.localstack.ports import free_port
from pynomaly.localstack.procs import log_tail, spawn, stop_process
from pynomaly.localstack.redis_server import RedisServer
from pynomaly.localstack.system import child_env, pynomaly_argv
from pynomaly.messaging.beat import BEAT_LOCK_KEY
from pynomaly.messaging.beat_scheduler import OutageTolerantScheduler
from pynomaly.messaging.celery_app import create_celery
from pynomaly.topology import Q_DEFAULT, TOPOLOGY
from tests.e2e.support import wait_for

pytestmark = pytest.mark.services


class OwnRedis:
    """A redis-server that can be stopped and started again on the same port, password and data."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir, self.port, self.password = data_dir, free_port(), secrets.token_urlsafe(24)
        self.server: RedisServer | None = None

    def start(self) -> RedisServer:
        self.server = RedisServer(self.data_dir, port=self.port, password=self.password).start()
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    own = OwnRedis(tmp_path / "redis")
    own.start()
    try:
        yield own
    finally:
        own.stop()


def _settings(own: OwnRedis, tmp_path: Path) -> Settings:
    assert own.server is not None
    return Settings(
        redis_url=own.server.url,
        environment="test",
        health_summary_interval_seconds=1,
        beat_max_loop_interval=0.5,
        beat_lock_timeout=3.0,
        heartbeat_dir=str(tmp_path / "beat"),
    )


def _sent(client: redis.Redis) -> int:
    """Tasks beat sent and nobody consumed: every priority list of the default queue."""
    return sum(int(client.llen(name)) for name in TOPOLOGY.queue(Q_DEFAULT).redis_lists())


def test_beat_process_waits_out_a_redis_outage_and_schedules_again(own_redis: OwnRedis, tmp_path: Path) -> None:
    settings = _settings(own_redis, tmp_path)
    log = tmp_path / "beat.log"
    proc, record = spawn("beat", pynomaly_argv("beat"), log, env=child_env(settings))
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    try:
        wait_for(lambda: _sent(client) >= 2, 60, what=f"beat's first health checks\n{log_tail(log)}")
        own_redis.stop()
        time.sleep(5)  # longer than the lock timeout: the lock is gone when Redis comes back
        assert proc.poll() is None, f"beat exited during the outage:\n{log_tail(log)}"
        own_redis.start()
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
        before = _sent(client)
        wait_for(lambda: _sent(client) >= before + 2, 60, what=f"health checks after the outage\n{log_tail(log)}")
        assert proc.poll() is None
        assert client.exists(BEAT_LOCK_KEY)  # it took the lock again before sending
        text = log.read_text()
        assert text.count("Redis unavailable") == 1, text[-3000:]  # one line per outage, not one per retry
        assert "Redis is back" in text
    finally:
        stop_process(record, grace=10, proc=proc)
        client.close()


def test_a_beat_without_the_lock_sends_nothing_until_it_takes_it(own_redis: OwnRedis, tmp_path: Path) -> None:
    settings = _settings(own_redis, tmp_path)
    client = redis.Redis.from_url(settings.redis_url)
    other = client.lock(BEAT_LOCK_KEY, timeout=30)
    assert other.acquire(blocking=False)  # another beat holds it
    scheduler = OutageTolerantScheduler(app=create_celery(settings), lazy=False)
    try:
        # Celery's start-up handler would block on the lock; this scheduler starts without it.
        scheduler.lock = None
        time.sleep(1.1)  # the health check (every second) is due
        assert scheduler.tick() <= 1.0 and _sent(client) == 0
        other.release()
        scheduler.tick()
        assert scheduler.lock is not None and scheduler.lock.owned()
        assert _sent(client) >= 1

        # The lock lost while this beat held it (expired in an outage, taken by another beat): no extend,
        # no send; standby until it is free again.
        sent = _sent(client)
        client.delete(BEAT_LOCK_KEY)
        assert other.acquire(blocking=False)
        time.sleep(1.1)  # the next health check is due
        scheduler.tick()
        assert scheduler.lock is None and _sent(client) == sent
    finally:
        if other.owned():
            other.release()
        client.close()
