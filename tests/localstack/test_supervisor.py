"""The supervisor with real (trivial) child processes: health, crash reports, clean stops."""

from __future__ import annotations

import os
import signal
import stat
import sys
import time
from pathlib import Path

import pytest

from pynomaly.localstack.ports import free_port
from pynomaly.localstack.procs import pid_alive
from pynomaly.localstack.supervisor import Component, ComponentFailed, HeartbeatCheck, RestartPolicy, Supervisor
from tests.localstack.children import (
    STUBBORN,
    crashing_component,
    flaky_component,
    heartbeat_component,
    http_component,
    poll,
)


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


# -- restart policy ----------------------------------------------------------------------------------


def test_restart_policy_backoff_and_validation() -> None:
    policy = RestartPolicy()
    assert [policy.delay(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert RestartPolicy.from_dict(policy.to_dict()) == policy
    with pytest.raises(ValueError, match="initial_delay must be a number > 0"):
        RestartPolicy(initial_delay=0)
    with pytest.raises(ValueError, match=r"max_delay 0\.5 is below initial_delay 1\.0"):
        RestartPolicy(max_delay=0.5)
    with pytest.raises(ValueError, match="max_restarts must be an integer >= 1"):
        RestartPolicy(max_restarts=0)
    with pytest.raises(ValueError, match="window must be a number > 0"):
        RestartPolicy(window=True)  # type: ignore[arg-type]


def supervise_until(supervisor: Supervisor, check, timeout: float):  # type: ignore[no-untyped-def]
    def round_then_check():  # type: ignore[no-untyped-def]
        supervisor.supervise()
        return check()

    return poll(round_then_check, timeout, what="the supervisor")


def test_killed_component_is_restarted_after_the_backoff(tmp_path: Path) -> None:
    events: list[str] = []
    supervisor = Supervisor(tmp_path / "logs", policy=RestartPolicy(initial_delay=1.0), on_event=events.append)
    try:
        supervisor.start_all([heartbeat_component("beater", tmp_path / "run")], timeout=60)
        old = supervisor.running[0].record
        supervise_until(supervisor, lambda: supervisor.running[0].restart.healthy_since, 30)
        os.kill(old.pid, signal.SIGKILL)
        killed = time.monotonic()
        new = supervise_until(
            supervisor, lambda: supervisor.running[0].record.pid != old.pid and supervisor.running[0], 30
        )
        delay = time.monotonic() - killed
        print(f"\nkill -9 -> restarted after {delay:.2f}s (backoff 1s)")
        assert delay >= 1.0, "restarted before the backoff"
        assert delay < 15.0
        assert new.restart.restarts == 1 and new.restart.last_exit.startswith("exited on signal 9")
        supervisor.wait_healthy(timeout=60)
        assert pid_alive(new.record.pid) and not pid_alive(old.pid)
        assert any("beater (pid" in e and "exited on signal 9; restart 1 in 1s" in e for e in events), events
        assert any(e.startswith(f"beater restarted (pid {new.record.pid}, restart 1)") for e in events), events
        log = log_of(supervisor, "beater")
        assert log.count("heartbeat child up") == 2 and "supervisor: beater restarted" in log
    finally:
        supervisor.stop_all()
    assert not pid_alive(new.record.pid)


def test_crash_loop_ends_failed_and_is_not_restarted_again(tmp_path: Path) -> None:
    crash = tmp_path / "crash-now"
    events: list[str] = []
    policy = RestartPolicy(initial_delay=0.2, max_delay=0.8, max_restarts=3, window=120)
    supervisor = Supervisor(tmp_path / "logs", policy=policy, on_event=events.append)
    try:
        supervisor.start_all([flaky_component("consumer", tmp_path / "run", crash)], timeout=60)
        crash.touch()  # from now on it exits 3 at once, every time
        running = supervise_until(
            supervisor, lambda: supervisor.running[0].restart.failed and supervisor.running[0], 90
        )
        state = running.restart
        assert state.restarts == 3
        assert state.failed == "3 restarts within 120s, then exited with code 3; not restarted"
        # Each restart waited at least its backoff (0.2, 0.4, 0.8 s after the exit that caused it).
        gaps = [b - a for a, b in zip(state.recent, state.recent[1:], strict=False)]
        assert all(gap >= policy.delay(n + 1) for n, gap in enumerate(gaps)), gaps
        pid = running.record.pid
        for _ in range(20):  # given up: no more restarts, however long it is supervised
            supervisor.supervise()
            time.sleep(0.1)
        assert supervisor.running[0].record.pid == pid and state.restarts == 3
        assert supervisor.failed() == [supervisor.running[0]]
        failed_event = next(e for e in events if e.startswith("consumer FAILED"))
        assert "fatal: lost the connection on purpose" in failed_event  # the log tail comes with it
        with pytest.raises(ComponentFailed, match="consumer exited with code 3"):
            supervisor.check()
    finally:
        supervisor.stop_all()


def test_the_backoff_starts_over_once_the_component_stayed_healthy(tmp_path: Path) -> None:
    policy = RestartPolicy(initial_delay=0.5, max_delay=8.0, reset_after=1.0)
    supervisor = Supervisor(tmp_path / "logs", policy=policy)
    try:
        supervisor.start_all([heartbeat_component("beater", tmp_path / "run")], timeout=60)

        def kill_and_get_delay() -> float:
            running = supervisor.running[0]
            os.kill(running.record.pid, signal.SIGKILL)
            poll(lambda: not pid_alive(running.record.pid), 30, what="the kill")
            before = time.time()
            supervise_until(supervisor, lambda: running.restart.due is not None, 30)
            delay = running.restart.due - before  # type: ignore[operator]
            supervise_until(supervisor, lambda: supervisor.running[0] is not running, 60)
            return delay

        first = kill_and_get_delay()
        second = kill_and_get_delay()  # at once after the restart: not healthy long enough, doubles
        supervisor.wait_healthy(timeout=60)
        supervise_until(supervisor, lambda: supervisor.running[0].restart.healthy_since, 30)
        time.sleep(policy.reset_after + 0.2)
        third = kill_and_get_delay()  # healthy for reset_after first: back to the initial delay
        assert first == pytest.approx(0.5, abs=0.3)
        assert second == pytest.approx(1.0, abs=0.3)
        assert third == pytest.approx(0.5, abs=0.3)
        assert supervisor.running[0].restart.restarts == 3
    finally:
        supervisor.stop_all()


def test_component_logs_and_files_are_private(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o755)
    os.chmod(logs, 0o755)
    (logs / "writer.log").write_text("from an older version\n")
    os.chmod(logs / "writer.log", 0o644)
    made = tmp_path / "made"
    writer = Component(
        "writer",
        (
            sys.executable,
            "-c",
            f"import os, pathlib; p = pathlib.Path({str(made)!r}); p.mkdir(); (p / 'data').write_text('x')",
        ),
    )
    supervisor = Supervisor(logs)
    running = supervisor.start(writer)
    assert running.proc is not None and running.proc.wait(timeout=60) == 0
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700
    assert stat.S_IMODE((logs / "writer.log").stat().st_mode) == 0o600
    assert stat.S_IMODE(made.stat().st_mode) == 0o700  # the child's umask is 077
    assert stat.S_IMODE((made / "data").stat().st_mode) == 0o600
