"""A small process supervisor: start components, wait until each is healthy, notice crashes, stop all.

Health is what Kubernetes checks too: the API answers ``GET /healthz`` with 200; workers and
consumers touch a heartbeat file whose age tells whether they still make progress.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pynomaly.localstack.errors import LocalStackError
from pynomaly.localstack.procs import ProcessRecord, log_tail, spawn, stop_process
from pynomaly.localstack.progress import Progress, as_progress

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class HttpCheck:
    """Healthy when ``url`` answers 200."""

    url: str
    timeout: float = 2.0

    def problem(self, since: float = 0.0) -> str | None:
        try:
            # No proxies: an http_proxy in the environment must not intercept a loopback health check.
            with _NO_PROXY.open(self.url, timeout=self.timeout) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, OSError) as exc:
            return f"GET {self.url}: {getattr(exc, 'reason', exc)}"
        return None if status == 200 else f"GET {self.url} answered {status}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "http", "url": self.url}


@dataclass(frozen=True)
class HeartbeatCheck:
    """Healthy when ``path`` was touched within ``max_age`` seconds (and after ``since``, the start)."""

    path: Path
    max_age: float = 30.0

    def problem(self, since: float = 0.0) -> str | None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return f"no heartbeat yet ({self.path})"
        age = time.time() - mtime
        if mtime < since - 1:  # a file from an earlier run proves nothing about this one
            return f"heartbeat {self.path} is older than this start"
        if age > self.max_age:
            return f"heartbeat {self.path} is {age:.0f}s old (limit {self.max_age:.0f}s)"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "heartbeat", "path": str(self.path), "max_age": self.max_age}


HealthCheck = HttpCheck | HeartbeatCheck


def health_from_dict(data: Mapping[str, Any] | None) -> HealthCheck | None:
    if not data:
        return None
    if data.get("kind") == "http":
        return HttpCheck(str(data["url"]))
    return HeartbeatCheck(Path(str(data["path"])), float(data.get("max_age", 30.0)))


@dataclass(frozen=True)
class Component:
    """One child process of the local system."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    health: HealthCheck | None = None
    # Seconds to wait for a warm shutdown (a Celery worker finishing its task) before SIGKILL.
    stop_grace: float = 15.0


class ComponentFailed(LocalStackError):
    """A component exited or never became healthy; ``detail`` holds the tail of its log."""

    def __init__(self, name: str, message: str, detail: str = "") -> None:
        super().__init__(message, detail)
        self.component = name


@dataclass
class Running:
    component: Component
    record: ProcessRecord
    proc: subprocess.Popen[bytes] | None
    started_at: float

    def to_dict(self) -> dict[str, Any]:
        data = self.record.to_dict()
        data["health"] = self.component.health.to_dict() if self.component.health else None
        data["stop_grace"] = self.component.stop_grace
        return data


class Supervisor:
    """Starts components in order and stops them in reverse; ``on_change`` persists the pid list."""

    def __init__(
        self,
        log_dir: Path,
        die_with_parent: bool = True,
        on_change: Callable[[list[Running]], None] | None = None,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.die_with_parent = die_with_parent
        self.on_change = on_change
        self.running: list[Running] = []

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(self, component: Component) -> Running:
        if isinstance(component.health, HeartbeatCheck):
            # A heartbeat left by an earlier run must not make the new process look healthy.
            component.health.path.unlink(missing_ok=True)
        env = {**os.environ, **component.env}
        proc, record = spawn(
            component.name, component.argv, self.log_path(component.name), env=env, die_with_parent=self.die_with_parent
        )
        running = Running(component, record, proc, time.time())
        self.running.append(running)
        if self.on_change:
            self.on_change(self.running)
        return running

    def restart(self, name: str) -> Running:
        """Start component ``name`` again in place of its exited process (after a crash or a kill)."""
        index, old = next((i, r) for i, r in enumerate(self.running) if r.component.name == name)
        if old.record.alive():
            raise LocalStackError(f"{name} (pid {old.record.pid}) is still running")
        if old.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                old.proc.wait(timeout=2)
        del self.running[index]
        new = self.start(old.component)
        self.running.insert(index, self.running.pop())  # keep the stop order
        return new

    def start_all(
        self, components: Sequence[Component], timeout: float = 180.0, progress: Progress | None = None
    ) -> None:
        """Start every component, then wait until all are healthy (they warm up in parallel)."""
        out = as_progress(progress)
        for component in components:
            out.step(f"starting {component.name}")
            self.start(component)
        self.wait_healthy(timeout=timeout, progress=out)

    def wait_healthy(self, timeout: float = 180.0, progress: Progress | None = None) -> None:
        out = as_progress(progress)
        deadline = time.monotonic() + timeout
        pending = {r.component.name: r for r in self.running}
        problems: dict[str, str] = {}
        while pending:
            self.check()
            for name, running in list(pending.items()):
                health = running.component.health
                problem = health.problem(since=running.started_at) if health else None
                if problem is None:
                    del pending[name]
                    out.step(f"{name} is healthy")
                else:
                    problems[name] = problem
            if not pending:
                break
            if time.monotonic() > deadline:
                name, running = next(iter(pending.items()))
                raise ComponentFailed(
                    name,
                    f"{name} did not become healthy within {timeout:.0f}s ({problems[name]}); "
                    f"log: {running.record.log}",
                    detail=log_tail(running.record.log),
                )
            out.update("waiting for " + ", ".join(sorted(pending)))
            time.sleep(0.5)

    def exited(self) -> list[tuple[Running, int | None]]:
        """Components whose process is gone, with their exit code when known."""
        gone = []
        for running in self.running:
            code = running.proc.poll() if running.proc is not None else None
            if code is None and not running.record.alive():
                # Seen as a zombie before poll() could reap it: reap now to learn how it ended.
                if running.proc is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        code = running.proc.wait(timeout=2)
                gone.append((running, code))
            elif code is not None:
                gone.append((running, code))
        return gone

    def check(self) -> None:
        """Raise :class:`ComponentFailed` (with the log tail) if a component has exited."""
        for running, code in self.exited():
            name = running.component.name
            if code is None:
                how = "(exit status unknown)"
            else:
                how = f"with code {code}" if code >= 0 else f"on signal {-code}"
            raise ComponentFailed(
                name,
                f"{name} exited {how}; last lines of {running.record.log}:",
                detail=log_tail(running.record.log),
            )

    def stop_all(self, progress: Progress | None = None) -> None:
        out = as_progress(progress)
        for running in reversed(self.running):
            if running.record.alive():
                out.step(f"stopping {running.component.name}")
            stop_process(running.record, grace=running.component.stop_grace, proc=running.proc)
        self.running.clear()
        if self.on_change:
            self.on_change(self.running)
