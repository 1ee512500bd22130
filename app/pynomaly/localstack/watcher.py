"""The detached supervisor of ``local up --detach``: restarts components after the CLI has exited.

``up --detach`` starts it as ``python -m pynomaly.localstack.watcher`` in its own session (no parent
death signal: it outlives the CLI) and records its pid in ``local.json`` under ``watcher``.  The
components it is to watch, with their environment, arrive as JSON on stdin, never on disk: that
environment holds the Redis password.  It adopts the running processes, applies the restart policy
(:meth:`Supervisor.supervise`) and writes every new pid and restart count to ``local.json`` before
anything else happens, so ``local down`` (which stops the watcher first) finds them all.

It never stops a component itself.  On SIGTERM/SIGINT/SIGHUP it finishes the round it is in (a
restart and its state write included) and exits; it also exits when ``local.json`` is gone or names
another watcher.  Events go to ``logs/supervisor.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from pynomaly.localstack.procs import CHILD_UMASK, ProcessRecord, private_log
from pynomaly.localstack.state import read_state, write_state
from pynomaly.localstack.supervisor import (
    Component,
    RestartPolicy,
    RestartState,
    Running,
    Supervisor,
    health_from_dict,
)

SUPERVISOR_LOG = "supervisor.log"


def component_spec(running: Running) -> dict[str, Any]:
    """What the watcher needs to start ``running``'s component again (sent over a pipe: holds secrets)."""
    component = running.component
    return {
        "name": component.name,
        "argv": list(component.argv),
        "env": dict(component.env),
        "health": component.health.to_dict() if component.health else None,
        "stop_grace": component.stop_grace,
        "record": running.record.to_dict(),
        "restart": running.restart.to_dict(),
    }


def log_event(log_dir: Path, message: str) -> None:
    """One timestamped line (plus any indented detail) in ``logs/supervisor.log`` (0600)."""
    first, _, rest = message.partition("\n")
    text = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {first}\n"
    text += "".join(f"    {line}\n" for line in rest.splitlines())
    log_dir.mkdir(parents=True, exist_ok=True)
    with os.fdopen(private_log(log_dir / SUPERVISOR_LOG), "a") as handle:
        handle.write(text)


class Watcher:
    def __init__(self, state_dir: Path, spec: dict[str, Any]) -> None:
        self.state_dir = state_dir
        self.log_dir = Path(spec["log_dir"])
        self.interval = float(spec.get("interval", 1.0))
        self.stopping = False
        self.supervisor = Supervisor(
            self.log_dir,
            die_with_parent=False,  # what it restarts outlives it; `local down` stops them by pid
            on_change=self._save,
            policy=RestartPolicy.from_dict(spec["policy"]),
            on_event=lambda message: log_event(self.log_dir, message),
        )
        for item in spec["components"]:
            component = Component(
                str(item["name"]),
                tuple(str(a) for a in item["argv"]),
                {str(k): str(v) for k, v in item["env"].items()},
                health_from_dict(item.get("health")),
                float(item.get("stop_grace", 15.0)),
            )
            record = ProcessRecord.from_dict(item["record"])
            self.supervisor.adopt(component, record, RestartState.from_dict(item.get("restart")))
        # Redis and Kafka are not restarted (see README): an exit is recorded and shown by `status`.
        self.services = [ProcessRecord.from_dict(r) for r in spec.get("services", [])]
        self.services_exited: dict[str, str] = {}

    def _ours(self, data: dict[str, Any] | None) -> bool:
        return bool(data) and int((data or {}).get("watcher", {}).get("pid", 0)) == os.getpid()

    def _save(self, running: list[Running] | None = None) -> None:
        data = read_state(self.state_dir)
        if not self._ours(data):
            self.stopping = True  # `down` removed it, or another run replaced it: nothing left to watch
            return
        assert data is not None
        data["components"] = [r.to_dict() for r in self.supervisor.running]
        data["services_exited"] = dict(self.services_exited)
        data["updated_at"] = time.time()
        write_state(self.state_dir, data)

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._stop)
        names = ", ".join(r.component.name for r in self.supervisor.running)
        log_event(self.log_dir, f"watcher (pid {os.getpid()}) supervises {names}")
        while not self.stopping:
            if not self._ours(read_state(self.state_dir)):
                break
            self.supervisor.supervise()
            for record in self.services:
                if record.name not in self.services_exited and not record.alive():
                    self.services_exited[record.name] = f"exited at {time.strftime('%H:%M:%S')}; not restarted"
                    log_event(self.log_dir, f"{record.name} (pid {record.pid}) exited; it is not restarted")
                    self._save()
            deadline = time.monotonic() + self.interval
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(0.1)
        log_event(self.log_dir, f"watcher (pid {os.getpid()}) stops; the components keep running")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pynomaly-local-watcher", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    os.umask(CHILD_UMASK)
    try:
        spec = json.load(sys.stdin)
    except ValueError as exc:
        sys.exit(f"watcher: no valid component list on stdin ({exc})")
    if not isinstance(spec, dict) or not isinstance(spec.get("components"), list) or "log_dir" not in spec:
        sys.exit("watcher: stdin must be a JSON object with log_dir, policy and components")
    Watcher(args.state_dir.resolve(), spec).run()


if __name__ == "__main__":
    main()
