"""Celery's own tools against the running system: ``celery -A pynomaly inspect …``, ``events``, Flower.

The ``celery`` processes get only the ``PYNOMALY_*`` variables of the local system, as an operator's
shell (or ``kubectl exec`` into a pod) would: every worker pool of the topology must answer.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pynomaly.localstack.system import LocalSystem, child_env
from pynomaly.topology import TOPOLOGY
from tests.conftest import KAFKA_LIBS, TEST_OVERRIDES
from tests.e2e.support import wait_for

pytestmark = pytest.mark.e2e

POOLS = {pool.name for pool in TOPOLOGY.worker_pools}
# Generous: two busy cores, and a worker in a long task answers between tasks' polls.
INSPECT_TIMEOUT = "10"


def celery_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "pynomaly", *args]


def run_celery(local_system: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        celery_argv(*args), env=child_env(local_system.settings), capture_output=True, text=True, timeout=180
    )


def replies_by_pool(local_system: Any, command: str) -> dict[str, Any]:
    """``celery -A pynomaly inspect <command> --json`` as {pool: reply}; node names are ``<pool>@<host>``."""
    done = run_celery(local_system, "inspect", command, "--json", "--timeout", INSPECT_TIMEOUT)
    if done.returncode != 0:  # "No nodes replied" exits 69; poll again rather than fail on one slow round
        return {}
    replies = json.loads(done.stdout)
    return {node.partition("@")[0]: reply for node, reply in replies.items()}


def every_pool(local_system: Any, command: str) -> dict[str, Any]:
    """Poll until every pool of the topology answered ``command`` in one round (a restarted worker may lag)."""
    return wait_for(
        lambda: (r := replies_by_pool(local_system, command)) and set(r) >= POOLS and r,
        timeout=240,
        interval=1.0,
        what=f"every worker pool ({sorted(POOLS)}) to answer `celery inspect {command}`",
    )


def test_inspect_ping_gets_a_reply_from_every_pool(local_system: Any) -> None:
    replies = every_pool(local_system, "ping")
    assert {pool: replies[pool] for pool in POOLS} == {pool: {"ok": "pong"} for pool in POOLS}


def test_inspect_active_queues_are_the_topology_pools_queues(local_system: Any) -> None:
    replies = every_pool(local_system, "active_queues")
    assert {pool: sorted(q["name"] for q in replies[pool]) for pool in POOLS} == {
        pool.name: sorted(pool.queues) for pool in TOPOLOGY.worker_pools
    }


def test_inspect_stats_and_active_answer_without_the_broker_password(local_system: Any) -> None:
    stats = every_pool(local_system, "stats")
    for pool in POOLS:
        # The broker transport options the workers run with: the ones this app must share to get replies.
        assert stats[pool]["broker"]["transport_options"]["sep"] == ":"
    password = local_system.redis.password
    assert password and password not in json.dumps(stats)
    active = every_pool(local_system, "active")
    assert all(isinstance(active[pool], list) for pool in POOLS)


@pytest.fixture
def events_dump(local_system: Any) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    proc = subprocess.Popen(
        celery_argv("events", "--dump"),
        env=child_env(local_system.settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        yield proc, lines
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, 9)
            proc.wait(timeout=10)


def test_events_dump_shows_every_pools_worker_heartbeats(events_dump: tuple[subprocess.Popen[str], list[str]]) -> None:
    proc, lines = events_dump

    def pools_heard() -> set[str]:
        assert proc.poll() is None, "celery events exited:\n" + "".join(lines[-20:])
        return {line.partition("@")[0] for line in list(lines) if " heartbeat: " in line} & POOLS

    wait_for(lambda: pools_heard() == POOLS, timeout=120, interval=0.5, what="a heartbeat event from every pool")


def test_flower_in_the_local_system_needs_credentials_and_sees_every_pool(local_system: Any, tmp_path: Path) -> None:
    """``LocalSystem(flower=True)`` (= ``local up --flower``) on the e2e system's Redis: 401 without or
    with wrong credentials, 200 with the generated ones, and Flower's worker list has every pool."""
    system = LocalSystem(
        tmp_path,
        redis=local_system.redis,
        kafka=local_system.kafka,
        libs_dir=KAFKA_LIBS,
        components=lambda settings, state_dir: [],  # only Flower: the session's workers are already running
        settings_overrides={**TEST_OVERRIDES, "redis_url": local_system.settings.redis_url},
        flower=True,
    )
    started = []
    try:
        system.start()  # waits until Flower's /healthcheck answers 200
        started = [running.record for running in system.supervisor.running]
        assert [record.name for record in started] == ["flower"]
        url = system.flower_url
        assert url.startswith("http://127.0.0.1:") and system.summary()["flower_url"] == url
        assert stat.S_IMODE(system.flower_auth_file.stat().st_mode) == 0o600
        user, _, password = system.flower_auth_file.read_text().strip().partition(":")
        assert user == "pynomaly" and len(password) >= 12
        with httpx.Client(base_url=url, timeout=30, trust_env=False) as client:
            for path in ("/", "/workers", "/api/workers", "/api/tasks"):
                anonymous = client.get(path)
                assert anonymous.status_code == 401, path
                if not path.startswith("/api/"):  # pages ask the browser for credentials; the API only refuses
                    assert anonymous.headers["www-authenticate"] == 'Basic realm="flower"'
                assert client.get(path, auth=(user, password + "x")).status_code == 401, path
            assert client.get("/", auth=(user, password)).status_code == 200

            def workers() -> set[str]:
                answer = client.get("/api/workers", params={"refresh": "1"}, auth=(user, password))
                assert answer.status_code == 200
                return {node.partition("@")[0] for node in answer.json()} & POOLS

            wait_for(lambda: workers() == POOLS, timeout=120, interval=1.0, what="Flower to list every pool")
        # The password stays out of the component's log and the state file.
        assert password not in (system.log_dir / "flower.log").read_text()
        assert password not in (tmp_path / "local.json").read_text()
    finally:
        system.stop()
    assert started and not any(record.alive() for record in started)
