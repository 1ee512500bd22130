"""The application's real components under the supervisor (the ``local_system`` fixture the e2e tests use)."""

from __future__ import annotations

import httpx
import pytest

from pynomaly.localstack.procs import pid_alive
from pynomaly.localstack.system import LocalSystem, status_from_state
from pynomaly.topology import TOPOLOGY

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
