"""A small process supervisor: start components, wait until each is healthy, restart crashes, stop all.

Health is what Kubernetes checks too: the API answers ``GET /healthz`` with 200; workers and
consumers touch a heartbeat file whose age tells whether they still make progress.

Restarts (:class:`RestartPolicy`) happen while something runs :meth:`Supervisor.supervise` in a loop:
the foreground ``local up`` / ``local demo --keep-running``, or the detached watcher of
``local up --detach`` (``watcher.py``).  A component that exits is started again after a backoff
(1 s doubling up to 30 s; back to 1 s once it stayed healthy for 60 s); more than 5 restarts within
300 s mark it failed and it stays down, with the tail of its log in ``local status``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pynomaly.localstack.errors import LocalStackError
from pynomaly.localstack.procs import ProcessRecord, kill_group_leftovers, log_tail, private_log, spawn, stop_process
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


@dataclass(frozen=True)
class RestartPolicy:
    """When an exited component is started again, and when the supervisor gives up on it."""

    initial_delay: float = 1.0  # seconds before the first restart after a crash
    max_delay: float = 30.0  # the delay doubles per consecutive crash up to this
    reset_after: float = 60.0  # healthy this long before an exit: the delay starts at initial_delay again
    max_restarts: int = 5  # this many restarts within `window` seconds, and the next exit marks it failed
    window: float = 300.0

    def __post_init__(self) -> None:
        for name in ("initial_delay", "max_delay", "reset_after", "window"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"restart policy: {name} must be a number > 0, got {value!r}")
        if self.max_delay < self.initial_delay:
            raise ValueError(f"restart policy: max_delay {self.max_delay} is below initial_delay {self.initial_delay}")
        if not isinstance(self.max_restarts, int) or isinstance(self.max_restarts, bool) or self.max_restarts < 1:
            raise ValueError(f"restart policy: max_restarts must be an integer >= 1, got {self.max_restarts!r}")

    def delay(self, streak: int) -> float:
        """The wait before restart number ``streak + 1`` of an uninterrupted run of crashes."""
        return min(self.initial_delay * 2 ** min(streak, 30), self.max_delay)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RestartPolicy:
        return cls(**{k: data[k] for k in ("initial_delay", "max_delay", "reset_after", "max_restarts", "window")})


@dataclass
class RestartState:
    """A component's restart history; it carries over from one process of the component to the next."""

    restarts: int = 0  # restarts so far (shown by `local status`)
    streak: int = 0  # crashes since it last stayed healthy for reset_after
    recent: list[float] = field(default_factory=list)  # wall-clock times of restarts within the window
    due: float | None = None  # wall-clock time of the pending restart
    failed: str | None = None  # why the supervisor gave up; it is not restarted any more
    last_exit: str | None = None
    healthy_since: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RestartState:
        data = data or {}
        return cls(
            restarts=int(data.get("restarts", 0)),
            streak=int(data.get("streak", 0)),
            recent=[float(t) for t in data.get("recent", [])],
            due=None if data.get("due") is None else float(data["due"]),
            failed=data.get("failed"),
            last_exit=data.get("last_exit"),
            healthy_since=None if data.get("healthy_since") is None else float(data["healthy_since"]),
        )


def describe_exit(code: int | None) -> str:
    if code is None:
        return "(exit status unknown)"
    return f"with code {code}" if code >= 0 else f"on signal {-code}"


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
    restart: RestartState = field(default_factory=RestartState)

    def exit_code(self) -> tuple[bool, int | None]:
        """(exited, exit code when known): our own child is reaped; an adopted process only has its pid."""
        code = self.proc.poll() if self.proc is not None else None
        if code is not None:
            return True, code
        if self.record.alive():
            return False, None
        if self.proc is not None:
            # Seen as a zombie before poll() could reap it: reap now to learn how it ended.
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.proc.wait(timeout=2)
        return True, code

    def to_dict(self) -> dict[str, Any]:
        data = self.record.to_dict()
        data["health"] = self.component.health.to_dict() if self.component.health else None
        data["stop_grace"] = self.component.stop_grace
        data["restart"] = self.restart.to_dict()
        return data


class Supervisor:
    """Starts components in order and stops them in reverse; ``on_change`` persists the pid list.

    :meth:`supervise` applies ``policy`` to components that exited; ``on_event`` receives one line
    per crash, restart and give-up (the caller logs or prints it).
    """

    def __init__(
        self,
        log_dir: Path,
        die_with_parent: bool = True,
        on_change: Callable[[list[Running]], None] | None = None,
        policy: RestartPolicy | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.die_with_parent = die_with_parent
        self.on_change = on_change
        self.policy = policy or RestartPolicy()
        self.on_event = on_event
        self.running: list[Running] = []

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(self, component: Component, restart: RestartState | None = None) -> Running:
        running = self._spawn(component, restart)
        self.running.append(running)
        if self.on_change:
            self.on_change(self.running)
        return running

    def _spawn(self, component: Component, restart: RestartState | None) -> Running:
        if isinstance(component.health, HeartbeatCheck):
            # A heartbeat left by an earlier run must not make the new process look healthy.
            component.health.path.unlink(missing_ok=True)
        env = {**os.environ, **component.env}
        proc, record = spawn(
            component.name, component.argv, self.log_path(component.name), env=env, die_with_parent=self.die_with_parent
        )
        return Running(component, record, proc, time.time(), restart or RestartState())

    def adopt(self, component: Component, record: ProcessRecord, restart: RestartState | None = None) -> Running:
        """Watch a process another supervisor started (the detached watcher takes over from `up`)."""
        running = Running(component, record, None, time.time(), restart or RestartState())
        self.running.append(running)
        return running

    def restart(self, name: str) -> Running:
        """Start component ``name`` again in place of its exited process (after a crash or a kill)."""
        index, old = next((i, r) for i, r in enumerate(self.running) if r.component.name == name)
        if old.record.alive():
            raise LocalStackError(f"{name} (pid {old.record.pid}) is still running")
        if old.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                old.proc.wait(timeout=2)
        # A pool child of a worker killed alone would otherwise run on beside the new worker, unrecorded.
        kill_group_leftovers(old.record)
        new = self._spawn(old.component, old.restart)
        self.running[index] = new  # in place: the stop order stays
        if self.on_change:
            self.on_change(self.running)
        return new

    def supervise(self, now: float | None = None) -> None:
        """One round of the restart policy: note exits, start due restarts, give up on crash loops.

        Call it every second or so.  Never raises for a component's crash: that is what it handles.
        """
        now = time.time() if now is None else now
        changed = False
        for running in list(self.running):
            state, name = running.restart, running.component.name
            if state.failed:
                continue
            if state.due is not None:
                if now >= state.due:
                    state.due = None
                    state.streak += 1
                    state.restarts += 1
                    state.recent.append(now)
                    changed = True
                    try:
                        new = self.restart(name)
                    except LocalStackError as exc:
                        state.failed = f"cannot be started again: {exc}"
                        self._event(running, f"{name} FAILED: {state.failed}")
                        continue
                    self._event(new, f"{name} restarted (pid {new.record.pid}, restart {state.restarts})")
                continue
            exited, code = running.exit_code()
            if not exited:
                if state.healthy_since is None:
                    # Checked until healthy once; the reset only needs to know since when.
                    health = running.component.health
                    if health is None or health.problem(since=running.started_at) is None:
                        state.healthy_since = now
                continue
            changed = True
            how = describe_exit(code)
            state.last_exit = f"exited {how} at {time.strftime('%H:%M:%S', time.localtime(now))}"
            if state.healthy_since is not None and now - state.healthy_since >= self.policy.reset_after:
                state.streak = 0  # it ran well for a while: this crash starts a new series
            state.healthy_since = None
            state.recent = [t for t in state.recent if now - t < self.policy.window]
            if len(state.recent) >= self.policy.max_restarts:
                state.failed = (
                    f"{len(state.recent)} restarts within {self.policy.window:.0f}s, then exited {how}; not restarted"
                )
                self._event(running, f"{name} FAILED: {state.failed}; last lines of {running.record.log}:", tail=True)
                continue
            delay = self.policy.delay(state.streak)
            state.due = now + delay
            self._event(
                running, f"{name} (pid {running.record.pid}) exited {how}; restart {state.restarts + 1} in {delay:g}s"
            )
        if changed and self.on_change:
            self.on_change(self.running)

    def failed(self) -> list[Running]:
        return [r for r in self.running if r.restart.failed]

    def _event(self, running: Running, message: str, tail: bool = False) -> None:
        log = running.record.log
        detail = log_tail(log, 10) if tail else ""  # read before the marker line below is added
        with contextlib.suppress(OSError), os.fdopen(private_log(Path(log)), "a") as handle:
            # The component's own log says why it was restarted, between its two runs' lines.
            handle.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} supervisor: {message}\n")
        if self.on_event:
            self.on_event(message + ("\n" + detail if detail else ""))

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
            exited, code = running.exit_code()
            if exited:
                gone.append((running, code))
        return gone

    def check(self) -> None:
        """Raise :class:`ComponentFailed` (with the log tail) if a component has exited."""
        for running, code in self.exited():
            name = running.component.name
            how = describe_exit(code)
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
