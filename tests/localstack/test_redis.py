"""The real redis-server as the local system and the tests run it."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pynomaly.localstack.errors import LocalStackError
from pynomaly.localstack.procs import pid_alive
from pynomaly.localstack.redis_server import RedisServer

pytestmark = pytest.mark.services


def test_configured_as_a_celery_broker_must_be(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        config = client.config_get("*")
    finally:
        client.close()
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"
    assert config["maxmemory-policy"] == "noeviction"
    assert config["bind"] == "127.0.0.1"
    assert config["daemonize"] == "no"
    assert config["requirepass"] == redis_server.password
    assert len(redis_server.password) >= 32


def test_password_is_required(redis_server: RedisServer) -> None:
    # No retries: redis-py counts an authentication error as a connection error and would back off.
    no_retry = Retry(NoBackoff(), 0)
    anonymous = redis.Redis(host="127.0.0.1", port=redis_server.port, retry=no_retry)
    wrong = redis.Redis(host="127.0.0.1", port=redis_server.port, password="default", retry=no_retry)
    try:
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.ping()
        with pytest.raises(redis.exceptions.AuthenticationError):
            wrong.ping()
    finally:
        anonymous.close()
        wrong.close()


def test_urls_and_private_config(redis_server: RedisServer) -> None:
    assert redis_server.password in redis_server.url
    assert redis_server.password not in redis_server.safe_url
    assert redis_server.safe_url == f"redis://:***@127.0.0.1:{redis_server.port}/0"
    assert redis_server.url_for_db(1).endswith(f":{redis_server.port}/1")
    assert stat.S_IMODE(redis_server.config_path.stat().st_mode) == 0o600
    assert (redis_server.data_dir / "appendonlydir").is_dir()


def test_stop_leaves_no_process_and_data_survives_a_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    try:
        server.start()
        pid = server.pid
        assert pid is not None and pid_alive(pid)
        client = redis.Redis.from_url(server.url)
        client.set("kept", "yes")
        client.close()
    finally:
        server.stop()
    assert not pid_alive(pid)
    # A new password at every start, the same AOF data (appendfsync everysec is flushed on shutdown).
    again = RedisServer(tmp_path / "redis")
    try:
        again.start()
        client = redis.Redis.from_url(again.url)
        assert client.get("kept") == b"yes"
        client.close()
    finally:
        again.stop()
    assert not pid_alive(again.pid or 0)


def test_port_in_use_is_one_clear_line_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = RedisServer(tmp_path / "redis", port=port)
        with pytest.raises(LocalStackError, match=rf"^port {port} on 127.0.0.1 \(Redis\) is already in use") as info:
            server.start()
        assert "\n" not in str(info.value)
        assert server.pid is None
