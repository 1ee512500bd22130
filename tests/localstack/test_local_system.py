"""LocalSystem and the `local` CLI with trivial components on the session's real Redis and Kafka.

The application's own components (``local_components``) run in the e2e tests; here the supervisor
contract is checked with small stand-ins: state file, status, a second up, down, crashes, restarts
(foreground and by the detached watcher), busy ports.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pynomaly.config import Settings
from pynomaly.localstack.cli import local
from pynomaly.localstack.kafka_broker import KafkaBroker
from pynomaly.localstack.procs import pid_alive, stop_process
from pynomaly.localstack.redis_server import RedisServer
from pynomaly.localstack.supervisor import Component, ComponentFailed, RestartPolicy
from pynomaly.localstack.system import AlreadyRunning, LocalSystem, status_from_state, stop_from_state
from tests.conftest import KAFKA_LIBS
from tests.localstack.children import crashing_component, flaky_component, heartbeat_component, http_component, poll

pytestmark = pytest.mark.services


def stand_ins(settings: Settings, state_dir: Path) -> list[Component]:
    return [
        http_component("api", settings.api_port, state_dir / "www"),
        heartbeat_component("worker-test", state_dir / "run"),
    ]


def with_crash(settings: Settings, state_dir: Path) -> list[Component]:
    return [*stand_ins(settings, state_dir), crashing_component("consumer-test", state_dir / "run")]


def make(state_dir: Path, redis_server: RedisServer | None, kafka_broker: KafkaBroker, factory=stand_ins, **kw):
    return LocalSystem(state_dir, redis=redis_server, kafka=kafka_broker, libs_dir=KAFKA_LIBS, components=factory, **kw)


def test_start_status_second_up_and_down(redis_server: RedisServer, kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    system = make(tmp_path, redis_server, kafka_broker)
    try:
        system.start()
        assert system.settings is not None
        assert system.settings.redis_url == redis_server.url
        assert system.settings.kafka_bootstrap_servers == kafka_broker.bootstrap_servers
        assert system.settings.api_keys_file == str(tmp_path / "api-key")
        assert stat.S_IMODE((tmp_path / "api-key").stat().st_mode) == 0o600
        assert system.api_key and system.api_key in (tmp_path / "api-key").read_text()
        assert system.dashboard_url == f"http://127.0.0.1:{system.settings.api_port}/dashboard"

        state_text = (tmp_path / "local.json").read_text()
        assert redis_server.password not in state_text and system.api_key not in state_text
        state = json.loads(state_text)
        assert [c["name"] for c in state["components"]] == ["api", "worker-test"]
        pids = [c["pid"] for c in state["components"]]
        assert all(pid_alive(p) for p in pids)

        status = status_from_state(tmp_path)
        assert status is not None
        assert [(p["name"], p["alive"], p["problem"]) for p in status["processes"]] == [
            ("api", True, None),
            ("worker-test", True, None),
        ]

        # Another start on the same state dir, in this process (the lock) and from a CLI (the lock).
        with pytest.raises(AlreadyRunning):
            make(tmp_path, redis_server, kafka_broker).start()
        result = CliRunner().invoke(local, ["up", "--state-dir", str(tmp_path)])
        assert result.exit_code == 1
        assert "error: the local system in" in result.output and "local down" in result.output

        result = CliRunner().invoke(local, ["status", "--state-dir", str(tmp_path)])
        assert result.exit_code == 0, result.output
        assert "api" in result.output and "worker-test" in result.output and "ok" in result.output

        # Detached (the lock is released, like `up --detach` exiting): the state file still refuses.
        system.detach()
        with pytest.raises(AlreadyRunning, match="already running"):
            make(tmp_path, redis_server, kafka_broker).start()

        result = CliRunner().invoke(local, ["down", "--state-dir", str(tmp_path)])
        assert result.exit_code == 0, result.output
        assert "stopped: supervisor, worker-test, api" in result.output
        assert not any(pid_alive(p) for p in pids)
        assert not (tmp_path / "local.json").exists()
        assert redis_server.running() and kafka_broker.running()  # not ours to stop

        result = CliRunner().invoke(local, ["status", "--state-dir", str(tmp_path)])
        assert result.exit_code == 3 and "not running" in result.output
    finally:
        stop_from_state(tmp_path)
        system.stop()


def test_crash_at_start_is_reported_and_nothing_is_left(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    # This one starts its own Redis: a failed start must stop it too.
    system = make(tmp_path, None, kafka_broker, factory=with_crash)
    with pytest.raises(ComponentFailed) as info:
        system.start()
    assert info.value.component == "consumer-test"
    assert "the detector exploded on purpose" in info.value.detail
    assert system.redis is not None and system.redis.pid is not None
    assert not pid_alive(system.redis.pid)
    assert not any(pid_alive(r.record.pid) for r in system.supervisor.running)
    assert not (tmp_path / "local.json").exists()
    assert kafka_broker.running()


def test_foreground_watch_restarts_a_killed_component(
    redis_server: RedisServer, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    with make(tmp_path, redis_server, kafka_broker) as system:
        old = system.supervisor.running[1].record
        os.kill(old.pid, signal.SIGKILL)
        killed = time.monotonic()
        during: list[str] = []

        def restarted() -> bool:
            during.append(CliRunner().invoke(local, ["status", "--state-dir", str(tmp_path)]).output)
            return system.supervisor.running[1].record.pid != old.pid

        system.watch(interval=0.1, until=restarted)
        delay = time.monotonic() - killed
        print(f"\nforeground: kill -9 -> restarted after {delay:.2f}s (backoff 1s)")
        assert 1.0 <= delay < 15.0
        assert f"supervised by pid {os.getpid()} above" in during[0]
        assert re.search(r"worker-test\s+pid \d+\s+EXITED \(restart pending\)", "".join(during)), during
        new = system.supervisor.running[1]
        assert new.component.name == "worker-test" and pid_alive(new.record.pid)
        system.supervisor.wait_healthy(timeout=60)
        # local.json has the new pid (so `down` from another shell finds it) and the count.
        entry = json.loads((tmp_path / "local.json").read_text())["components"][1]
        assert entry["pid"] == new.record.pid and entry["restart"]["restarts"] == 1
        result = CliRunner().invoke(local, ["status", "--state-dir", str(tmp_path)])
        assert result.exit_code == 0, result.output
        assert re.search(rf"worker-test\s+pid {new.record.pid}\s+ok  restarts 1", result.output), result.output
        assert "worker-test (pid" in (tmp_path / "logs" / "supervisor.log").read_text()
    assert not pid_alive(old.pid) and not pid_alive(new.record.pid)


def test_an_exit_of_redis_is_not_restarted_but_reported(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    system = make(tmp_path, None, kafka_broker)  # its own Redis, to kill it
    with system:
        assert system.redis is not None and system.redis.record is not None
        os.kill(system.redis.record.pid, signal.SIGKILL)
        with pytest.raises(ComponentFailed, match="redis exited"):
            system.watch(interval=0.1)
    assert not any(pid_alive(r.record.pid) for r in system.supervisor.running)


def test_detached_watcher_restarts_gives_up_and_down_stops_all_after_it_was_killed(
    redis_server: RedisServer, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    crash = tmp_path / "crash-now"

    def factory(settings: Settings, state_dir: Path) -> list[Component]:
        return [*stand_ins(settings, state_dir), flaky_component("consumer-test", state_dir / "run", crash)]

    policy = RestartPolicy(initial_delay=1.0, max_delay=2.0, max_restarts=2, window=300)
    system = make(tmp_path, redis_server, kafka_broker, factory=factory, restart_policy=policy, die_with_parent=False)
    seen: set[int] = set()

    def components() -> dict[str, dict]:
        state = json.loads((tmp_path / "local.json").read_text())
        found = {c["name"]: c for c in state["components"]}
        seen.update(c["pid"] for c in found.values())
        return found

    try:
        system.start()
        system.detach()
        assert system.watcher is not None and system.watcher.alive()
        state = json.loads((tmp_path / "local.json").read_text())
        assert state["watcher"]["pid"] == system.watcher.pid
        old = components()["worker-test"]["pid"]

        os.kill(old, signal.SIGKILL)
        killed = time.monotonic()
        new = poll(lambda: (c := components()["worker-test"])["pid"] != old and c, 60, what="the watcher's restart")
        delay = time.monotonic() - killed
        print(f"\ndetached: kill -9 -> restarted by the watcher after {delay:.2f}s (backoff 1s)")
        assert 1.0 <= delay < 20.0 and pid_alive(new["pid"]) and new["restart"]["restarts"] == 1

        crash.touch()  # consumer-test now crashes at once, every time
        failed = poll(lambda: components()["consumer-test"]["restart"]["failed"], 90, interval=0.2, what="failed")
        # Its first run was adopted from `up` (exit status unknown); the watcher's own children report theirs.
        assert failed == "2 restarts within 300s, then exited with code 3; not restarted", failed
        result = CliRunner().invoke(local, ["status", "--state-dir", str(tmp_path)])
        assert result.exit_code == 1, result.output
        assert f"supervised by pid {system.watcher.pid}" in result.output
        assert re.search(r"consumer-test\s+pid \d+\s+FAILED: 2 restarts within 300s.*restarts 2", result.output)
        assert "| fatal: lost the connection on purpose" in result.output  # the log tail
        assert re.search(r"worker-test\s+pid \d+\s+ok  restarts 1", result.output), result.output

        # A watcher killed by -9 stops restarting, and must not keep `down` from stopping everything.
        os.kill(system.watcher.pid, signal.SIGKILL)
        poll(lambda: not system.watcher.alive(), 30, what="the watcher to die")  # type: ignore[union-attr]
        components()
        result = CliRunner().invoke(local, ["status", "--state-dir", str(tmp_path)])
        assert "is NOT running: nothing restarts exited components" in result.output
        result = CliRunner().invoke(local, ["down", "--state-dir", str(tmp_path)])
        assert result.exit_code == 0, result.output
        assert len(seen) >= 5  # api, the worker twice, consumer-test three times (some may be one pid)
        alive = [p for p in seen if pid_alive(p)]
        assert alive == [], f"left running after down: {alive}"
        assert not (tmp_path / "local.json").exists()
        assert redis_server.running() and kafka_broker.running()
    finally:
        if system.watcher is not None:
            stop_process(system.watcher, grace=5.0)
        stop_from_state(tmp_path)
        system.stop()


def test_busy_configured_port_via_cli_is_one_line_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(local, ["up", "--state-dir", str(tmp_path), "--api-port", str(port)])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: port {port} on 127.0.0.1 (API) is already in use: stop what uses it or choose another with --api-port"
    ]
    assert not (tmp_path / "redis").exists() and not (tmp_path / "kafka").exists()
    assert not (tmp_path / "local.json").exists()


def test_down_and_status_when_nothing_runs(tmp_path: Path) -> None:
    result = CliRunner().invoke(local, ["down", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0 and "nothing is running" in result.output
    result = CliRunner().invoke(local, ["status", "--state-dir", str(tmp_path)])
    assert result.exit_code == 3
