"""`pynomaly local up --detach` as a person runs it: its own Redis, Kafka and the application's components.

After the CLI has exited its watcher restarts a worker killed with -9, the restarted worker runs a job,
and `local down` leaves no process of the run alive (every pid ever recorded, restarted ones
included).  The state files with data are private (0700 folders, 0600 files).  Runs before the
session's broker (kafka_solo): never two Kafka JVMs at once on a small machine.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pynomaly.client import PynomalyClient
from pynomaly.localstack.procs import pid_alive
from pynomaly.localstack.state import read_state
from pynomaly.localstack.system import stop_from_state
from tests.conftest import KAFKA_LIBS
from tests.e2e.support import small_rows
from tests.localstack.children import poll

pytestmark = [pytest.mark.services, pytest.mark.kafka_solo, pytest.mark.timeout(1200)]

CLI = (sys.executable, "-c", "import sys; from pynomaly.cli import main; sys.argv[0] = 'pynomaly'; main()")


def local(state: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "local", *args, "--state-dir", str(state)], capture_output=True, text=True, timeout=timeout, check=False
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def assert_private(state: Path) -> None:
    """The state dir, Redis' AOF dir, Kafka's folders and the logs are 0700; their files 0600 (or 0400)."""
    assert mode(state) == 0o700
    for name in ("api-key", "local.json", "local.lock", "redis/redis.conf"):
        assert mode(state / name) == 0o600, name
    aof = state / "redis" / "appendonlydir"
    assert aof.is_dir()  # Redis 7: the AOF is a folder of files
    checked = 0
    for top in (state / "redis", state / "kafka", state / "logs"):
        assert mode(top) == 0o700, top
        for path in [top, *top.rglob("*")]:
            if path.parent == state / "kafka" and path.is_file():
                continue  # server.properties, log4j2 and cluster-id: no data, and inside the 0700 folder
            if path.is_dir():
                assert mode(path) == 0o700, f"{path} is {oct(mode(path))}"
            else:  # 0600, or stricter (Kafka keeps its metadata snapshots 0400)
                assert mode(path) & 0o077 == 0 and mode(path) & 0o400, f"{path} is {oct(mode(path))}"
            checked += 1
    assert any((state / "kafka" / "data").rglob("*.log")), "no Kafka log segment to check"
    assert any(aof.iterdir())
    for log in ("worker-detection.log", "api.log", "redis.log", "kafka/server.log", "supervisor.log"):
        assert mode(state / "logs" / log) == 0o600, log
    print(f"\n{checked} paths under redis/, kafka/ and logs/ checked private")


def recorded_pids(state: Path) -> dict[str, int]:
    data = read_state(state) or {}
    pids = {c["name"]: c["pid"] for c in data.get("components", [])}
    for key in ("redis", "kafka"):
        if data.get(key):
            pids[key] = data[key]["process"]["pid"]
    if data.get("watcher"):
        pids["watcher"] = data["watcher"]["pid"]
    return pids


def running_in_groups(pgids: set[int]) -> list[int]:
    """Processes (not zombies, which only wait for init to reap them) in any of the process groups ``pgids``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) in pgids:
            found.append(int(entry.name))
    return found


def test_up_detach_restarts_a_killed_worker_and_down_leaves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)  # as an older version left it: up tightens it
    (state / "kafka-libs").symlink_to(KAFKA_LIBS)  # the session's jar cache: no download
    seen: set[int] = set()
    try:
        started = time.monotonic()
        up = local(state, "up", "--detach")
        assert up.returncode == 0, up.stdout + up.stderr
        print(f"\nup --detach: {time.monotonic() - started:.1f}s")
        assert re.search(r"supervised by pid \d+", up.stdout), up.stdout
        pids = recorded_pids(state)
        seen.update(pids.values())
        assert {"redis", "kafka", "watcher", "api", "worker-detection", "beat"} <= set(pids)
        assert all(pid_alive(pid) for pid in pids.values()), pids
        assert_private(state)

        old = pids["worker-detection"]
        os.killpg(old, signal.SIGKILL)  # the worker and its pool child
        killed = time.monotonic()
        new = poll(
            lambda: (p := recorded_pids(state).get("worker-detection")) != old and p and pid_alive(p) and p,
            90,
            what="the watcher to restart worker-detection",
        )
        delay = time.monotonic() - killed
        seen.add(new)
        print(f"detached, real worker: kill -9 -> restarted by the watcher after {delay:.2f}s (backoff 1s)")
        assert 1.0 <= delay < 30.0

        # Healthy again, and `status` says it was restarted once.
        status = poll(lambda: (s := local(state, "status", timeout=120)).returncode == 0 and s, 180, interval=1.0,
                      what="local status to report everything healthy")  # fmt: skip
        assert re.search(rf"worker-detection\s+pid {new}\s+ok  restarts 1", status.stdout), status.stdout

        data = read_state(state)
        assert data is not None
        api_key = (state / "api-key").read_text().strip()
        with PynomalyClient(data["api_url"], api_key, timeout=60) as client:
            job = client.submit_rows(small_rows(), "iforest", steps=["detect"])
            done = client.wait(job["id"], timeout=180)
        assert done["status"] == "completed", done.get("error")
        seen.update(recorded_pids(state).values())

        down = local(state, "down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert "stopped: supervisor," in down.stdout, down.stdout
        # Every recorded process was a group leader (its own session): its whole group must be gone.
        alive = sorted(p for p in seen if pid_alive(p)) + running_in_groups(seen)
        assert alive == [], f"left running after down: {alive} of {sorted(seen)}"
        assert old in seen and new in seen and not (state / "local.json").exists()
        assert local(state, "status").returncode == 3
    finally:
        stop_from_state(state)
