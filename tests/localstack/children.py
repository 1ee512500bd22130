"""Trivial child processes that stand in for the application's components in supervisor tests.

They are real processes (the supervisor's contract is about processes, pids, logs and health), just
small and fast to start.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pynomaly.localstack.supervisor import Component, HeartbeatCheck, HttpCheck

HEARTBEAT = """
import os, pathlib, sys, time
path = pathlib.Path(os.environ["PYNOMALY_HEARTBEAT_DIR"]) / "heartbeat"
path.parent.mkdir(parents=True, exist_ok=True)
print("heartbeat child up", flush=True)
while True:
    path.touch()
    time.sleep(0.3)
"""

CRASH = """
import sys
print("loading configuration", flush=True)
print("fatal: the detector exploded on purpose", file=sys.stderr, flush=True)
sys.exit(3)
"""

# Healthy (heartbeat) until the file named by PYNOMALY_CRASH_FILE exists, then exits 3 at once, also
# right after every restart: a component that crashes again and again once something broke.
FLAKY = """
import os, pathlib, sys, time
crash = pathlib.Path(os.environ["PYNOMALY_CRASH_FILE"])
path = pathlib.Path(os.environ["PYNOMALY_HEARTBEAT_DIR"]) / "heartbeat"
path.parent.mkdir(parents=True, exist_ok=True)
print("flaky child up", flush=True)
while True:
    if crash.exists():
        print("fatal: lost the connection on purpose", file=sys.stderr, flush=True)
        sys.exit(3)
    path.touch()
    time.sleep(0.2)
"""

# Ignores SIGTERM and has a grandchild in its process group: only the SIGKILL of the group ends both.
STUBBORN = """
import os, pathlib, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
ignore_term = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
child = subprocess.Popen([sys.executable, "-c", ignore_term])
pathlib.Path(sys.argv[1]).write_text(str(child.pid))
path = pathlib.Path(os.environ["PYNOMALY_HEARTBEAT_DIR"]) / "heartbeat"
path.parent.mkdir(parents=True, exist_ok=True)
while True:
    path.touch()
    time.sleep(0.3)
"""


def heartbeat_component(name: str, run_dir: Path, max_age: float = 5.0) -> Component:
    beat_dir = run_dir / name
    return Component(
        name,
        (sys.executable, "-c", HEARTBEAT),
        {"PYNOMALY_HEARTBEAT_DIR": str(beat_dir)},
        HeartbeatCheck(beat_dir / "heartbeat", max_age),
        stop_grace=5.0,
    )


def http_component(name: str, port: int, docroot: Path) -> Component:
    # http.server answers 200 for an existing file: a file called "healthz" makes GET /healthz healthy.
    docroot.mkdir(parents=True, exist_ok=True)
    (docroot / "healthz").write_text("ok\n")
    argv = (sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(docroot), str(port))
    return Component(name, argv, {}, HttpCheck(f"http://127.0.0.1:{port}/healthz"), stop_grace=5.0)


def crashing_component(name: str, run_dir: Path) -> Component:
    beat_dir = run_dir / name
    return Component(
        name,
        (sys.executable, "-c", CRASH),
        {"PYNOMALY_HEARTBEAT_DIR": str(beat_dir)},
        HeartbeatCheck(beat_dir / "heartbeat", 5.0),
    )


def flaky_component(name: str, run_dir: Path, crash_file: Path) -> Component:
    beat_dir = run_dir / name
    return Component(
        name,
        (sys.executable, "-c", FLAKY),
        {"PYNOMALY_HEARTBEAT_DIR": str(beat_dir), "PYNOMALY_CRASH_FILE": str(crash_file)},
        HeartbeatCheck(beat_dir / "heartbeat", 5.0),
        stop_grace=5.0,
    )


def poll(check, timeout: float, interval: float = 0.05, what: str = "condition"):  # type: ignore[no-untyped-def]
    """``check()``'s first truthy value within ``timeout`` seconds (generous: the machine is shared)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
