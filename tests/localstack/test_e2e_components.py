"""The application's real components under the supervisor (the ``local_system`` fixture the e2e tests use)."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from pynomaly.client import PynomalyClient
from pynomaly.localstack.procs import pid_alive
from pynomaly.localstack.supervisor import Running
from pynomaly.localstack.system import LocalSystem, status_from_state
from pynomaly.topology import TOPOLOGY
from tests.e2e.support import small_rows

pytestmark = pytest.mark.e2e


def test_every_component_runs_and_is_healthy(local_system: LocalSystem) -> None:
    names = [r.component.name for r in local_system.supervisor.running]
    assert names == ["api", *(f"worker-{p.name}" for p in TOPOLOGY.worker_pools)] + [
        f"consumer-{g.pool}" for g in TOPOLOGY.consumer_groups
    ] + ["beat"]
    assert all(pid_alive(r.record.pid) for r in local_system.supervisor.running)
    local_system.check()
    status = status_from_state(local_system.state_dir)
    assert status is not None and status["ready"]
    assert [p["problem"] for p in status["processes"]] == [None] * len(names)
    with httpx.Client(base_url=local_system.api_url, timeout=10, trust_env=False) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200


def test_a_killed_worker_is_restarted_by_the_foreground_loop_and_runs_the_next_job(local_system: LocalSystem) -> None:
    """`local up` in the foreground runs this loop (LocalSystem.watch) until Ctrl-C."""

    def worker() -> Running:
        return next(r for r in local_system.supervisor.running if r.component.name == "worker-detection")

    old = worker().record
    os.killpg(old.pid, signal.SIGKILL)  # the worker and its pool child, like an OOM kill
    killed = time.monotonic()
    local_system.watch(interval=0.2, until=lambda: worker().record.pid != old.pid or time.monotonic() - killed > 90)
    delay = time.monotonic() - killed
    new = worker()
    assert new.record.pid != old.pid, "not restarted within 90 s"
    print(f"\nforeground, real worker: kill -9 -> restarted after {delay:.2f}s (backoff 1s)")
    assert 1.0 <= delay < 30.0
    assert new.restart.restarts == 1 and new.restart.last_exit and "on signal 9" in new.restart.last_exit
    local_system.supervisor.wait_healthy(timeout=180)
    status = status_from_state(local_system.state_dir)
    assert status is not None
    row = next(p for p in status["processes"] if p["name"] == "worker-detection")
    assert row["pid"] == new.record.pid and row["alive"] and row["restarts"] == 1

    with PynomalyClient(local_system.api_url, local_system.api_key, timeout=60) as client:
        job = client.submit_rows(small_rows(), "iforest", steps=["detect"])
        done = client.wait(job["id"], timeout=180)
    assert done["status"] == "completed", done.get("error")
    assert done["anomaly_count"] >= 1
