"""The supervisor with real (trivial) child processes: health, crash reports, clean stops."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from pynomaly.localstack.ports import free_port
from pynomaly.localstack.procs import pid_alive
from pynomaly.localstack.supervisor import Component, ComponentFailed, HeartbeatCheck, Supervisor
from tests.localstack.children import STUBBORN, crashing_component, heartbeat_component, http_component


@pytest.fixture
def supervisor(tmp_path: Path):
    sup = Supervisor(tmp_path / "logs")
    yield sup
    sup.stop_all()  # also on failure: no child outlives its test


def test_components_become_healthy_and_stop_without_leftovers(supervisor: Supervisor, tmp_path: Path) -> None:
    components = [
        http_component("web", free_port(), tmp_path / "www"),
        heartbeat_component("beater", tmp_path / "run"),
    ]
    supervisor.start_all(components, timeout=30)
    pids = [r.record.pid for r in supervisor.running]
    assert all(pid_alive(pid) for pid in pids)
    supervisor.check()  # nothing exited
    supervisor.stop_all()
    assert not any(pid_alive(pid) for pid in pids)
    assert supervisor.running == []


def test_crashing_component_is_reported_with_its_log_tail(supervisor: Supervisor, tmp_path: Path) -> None:
    supervisor.start(heartbeat_component("fine", tmp_path / "run"))
    supervisor.start(crashing_component("detector", tmp_path / "run"))
    with pytest.raises(ComponentFailed) as info:
        supervisor.wait_healthy(timeout=30)
    assert info.value.component == "detector"
    assert "exited with code 3" in str(info.value)
    assert "the detector exploded on purpose" in info.value.detail
    assert "loading configuration" in info.value.detail
    assert str(tmp_path / "logs" / "detector.log") in str(info.value)


def test_component_that_never_gets_healthy_times_out_with_its_log(supervisor: Supervisor, tmp_path: Path) -> None:
    silent = Component(
        "silent",
        (sys.executable, "-c", "import time; print('waiting forever', flush=True); time.sleep(60)"),
        health=HeartbeatCheck(tmp_path / "run" / "silent" / "heartbeat", 5.0),
    )
    supervisor.start(silent)
    started = time.monotonic()
    with pytest.raises(ComponentFailed, match=r"silent did not become healthy within 2s \(no heartbeat yet"):
        supervisor.wait_healthy(timeout=2)
    assert time.monotonic() - started < 10
    assert "waiting forever" in log_of(supervisor, "silent")


def test_stale_heartbeat_from_an_earlier_run_does_not_count(supervisor: Supervisor, tmp_path: Path) -> None:
    beat = tmp_path / "run" / "old" / "heartbeat"
    beat.parent.mkdir(parents=True)
    beat.touch()
    component = Component(
        "old", (sys.executable, "-c", "import time; time.sleep(60)"), health=HeartbeatCheck(beat, 30.0)
    )
    supervisor.start(component)
    with pytest.raises(ComponentFailed, match="no heartbeat yet"):
        supervisor.wait_healthy(timeout=1.5)


def test_sigterm_ignoring_group_is_killed_after_the_grace(supervisor: Supervisor, tmp_path: Path) -> None:
    grandchild_file = tmp_path / "grandchild.pid"
    stubborn = Component(
        "stubborn",
        (sys.executable, "-c", STUBBORN, str(grandchild_file)),
        {"PYNOMALY_HEARTBEAT_DIR": str(tmp_path / "run" / "stubborn")},
        HeartbeatCheck(tmp_path / "run" / "stubborn" / "heartbeat", 5.0),
        stop_grace=1.0,
    )
    supervisor.start_all([stubborn], timeout=30)
    leader = supervisor.running[0].record.pid
    grandchild = int(grandchild_file.read_text())
    assert pid_alive(grandchild)
    started = time.monotonic()
    supervisor.stop_all()
    assert time.monotonic() - started < 8
    assert not pid_alive(leader)
    deadline = time.monotonic() + 5
    while pid_alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(grandchild), "a process of the component's group outlived the stop"


def log_of(supervisor: Supervisor, name: str) -> str:
    return supervisor.log_path(name).read_text()
