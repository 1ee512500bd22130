"""Child processes started by the local system, and stopping them again by pid from any shell.

Every child gets its own session (process group): Ctrl-C in the terminal then reaches only the
parent, which stops the children in order, and a stop can signal a child's whole group (Celery's
pool processes, uvicorn's workers) at once.  A pid is only signalled when its start time still
matches the recorded one, so a recycled pid is never killed by mistake.

Children run with umask 077 and their logs are created 0600: Redis' AOF, Kafka's log segments and the
logs (which may show job data) are readable by the user who started them only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pynomaly.localstack.errors import LocalStackError
from pynomaly.localstack.progress import Progress

_PR_SET_PDEATHSIG = 1
# What a child may create (AOF, Kafka segments, heartbeats): private to the user who started it.
CHILD_UMASK = 0o077
HOST_DAEMON_UMASK = 0o022  # what systemd gives containerd and the kubelet


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) and make it 0700, also when it existed with wider modes."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def private_log(path: Path) -> int:
    """Open ``path`` for appending, created 0600 (an existing file is tightened too); returns the fd."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return fd


@dataclass(frozen=True)
class ProcessRecord:
    """What is needed to find a started process again, also from another shell (kept in local.json)."""

    name: str
    pid: int
    start_time: int  # /proc/<pid>/stat field 22; 0 when unknown (non-Linux)
    log: str

    def alive(self) -> bool:
        return pid_alive(self.pid, self.start_time)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProcessRecord:  # parsed JSON
        return cls(str(data["name"]), int(data["pid"]), int(data.get("start_time", 0)), str(data.get("log", "")))


def proc_start_time(pid: int) -> int:
    """Start time of ``pid`` in clock ticks since boot, 0 if unknown or gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    # The command name (field 2) may contain spaces and parentheses: split after its closing one.
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return 0


def pid_alive(pid: int, start_time: int = 0) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if _is_zombie(pid):
        return False
    return not (start_time and proc_start_time(pid) not in (0, start_time))


def _is_zombie(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw[raw.rfind(")") + 2 :].startswith("Z")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # Linux: the child gets SIGTERM when the process that started it dies, even by SIGKILL, so a
    # killed test run or foreground `up` leaves nothing behind.  Best effort elsewhere.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    die_with_parent: bool = True,
    umask: int = CHILD_UMASK,
) -> tuple[subprocess.Popen[bytes], ProcessRecord]:
    """Start ``argv`` in its own session with stdout+stderr appended to ``log_path`` (0600).

    ``umask``: 077 for the local system's data; host daemons that build files for others (containerd
    unpacking image layers for non-root containers, the kubelet's volumes) need ``HOST_DAEMON_UMASK``.
    """
    private_dir(log_path.parent)
    with os.fdopen(private_log(log_path), "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}: {argv[0]}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                umask=umask,
                preexec_fn=_die_with_parent if die_with_parent else None,
            )
        except OSError as exc:
            raise LocalStackError(f"cannot start {name} ({argv[0]}): {exc.strerror or exc}") from exc
    return proc, ProcessRecord(name, proc.pid, proc_start_time(proc.pid), str(log_path))


def stop_process(record: ProcessRecord, grace: float = 10.0, proc: subprocess.Popen[bytes] | None = None) -> bool:
    """SIGTERM the process group of ``record``, wait up to ``grace`` seconds, then SIGKILL it.

    Returns True when something had to be stopped.  Reaps ``proc`` when given (our own child).
    """
    if not record.alive():
        _reap(proc)
        return False
    _signal_group(record, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(proc)
        if not record.alive():
            break
        time.sleep(0.1)
    else:
        _signal_group(record, signal.SIGKILL)
        for _ in range(50):
            _reap(proc)
            if not record.alive():
                break
            time.sleep(0.1)
    # Leftovers of the group (a pool child that ignored SIGTERM) must not outlive the leader.
    _signal_group(record, signal.SIGKILL, leader_checked=False)
    _reap(proc)
    return True


def kill_group_leftovers(record: ProcessRecord) -> None:
    """SIGKILL what is left of an exited leader's process group (its pgid is its pid)."""
    if not record.alive():
        _signal_group(record, signal.SIGKILL, leader_checked=False)


def _signal_group(record: ProcessRecord, sig: int, leader_checked: bool = True) -> None:
    # The child was started with start_new_session, so its pgid equals its pid.
    if leader_checked and not record.alive():
        return
    try:
        os.killpg(record.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(record.pid, sig)


def _reap(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None:
        with contextlib.suppress(Exception):
            proc.poll()


def log_tail(path: str | Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file (what a person needs to see when a component crashes)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


class ManagedServer:
    """Lifecycle shared by the servers the local system runs (Redis, Kafka): pid, liveness, stop
    by pid (SIGTERM, then SIGKILL after ``stop_grace``), and use as a context manager.

    Subclasses set ``record``/``_proc`` in their ``start`` (from :func:`spawn`) and return self.
    """

    stop_grace = 10.0
    record: ProcessRecord | None
    _proc: subprocess.Popen[bytes] | None

    def start(self, timeout: float = 60.0, progress: Progress | None = None) -> ManagedServer:
        """Start the server and wait until it answers (within ``timeout`` seconds)."""
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self.record.pid if self.record else None

    def running(self) -> bool:
        return bool(self.record and self.record.alive())

    def stop(self, grace: float | None = None) -> None:
        if self.record is not None:
            stop_process(self.record, grace=self.stop_grace if grace is None else grace, proc=self._proc)

    def _wait_until_ready(
        self,
        probe: Callable[[], str | None],
        timeout: float,
        interval: float,
        process_name: str,
        not_ready: str,
        log: Path,
        crash_detail: Callable[[], str],
    ) -> None:
        """Poll ``probe`` (None = ready, else why not yet) until ``timeout``; a child that exits meanwhile
        is reported at once with ``crash_detail()``, a timeout with the last reason."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise LocalStackError(
                    f"{process_name} exited with code {self._proc.returncode} at start; see {log}",
                    detail=crash_detail(),
                )
            reason = probe()
            if reason is None:
                return
            last = reason
            time.sleep(interval)
        raise LocalStackError(f"{not_ready} within {timeout:.0f}s ({last}); see {log}")

    def __enter__(self) -> ManagedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
