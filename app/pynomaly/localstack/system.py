"""The whole local system: Redis, Kafka, topics, then the API, one worker per pool and the consumers.

:class:`LocalSystem` is the one implementation behind ``pynomaly local up``, ``local demo`` and the
test fixtures.  Layout of the state directory (git-ignored ``./.pynomaly`` by default)::

    local.json   pids, ports, URLs (see state.py)      api-key     the generated API key (0600)
    redis/       Redis config (0600), AOF             kafka/      server.properties, KRaft data
    kafka-libs/  the Kafka jar cache                   logs/       <component>.log, redis.log, kafka/, supervisor.log
    run/<component>/heartbeat                          heartbeat files of workers and consumers

The state directory and the folders with data (redis/, kafka/, logs/) are 0700, their files 0600.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from pynomaly.config import Settings, env_for
from pynomaly.localstack.errors import LocalStackError
from pynomaly.localstack.ports import LOOPBACK, free_port, require_free
from pynomaly.localstack.procs import (
    CHILD_UMASK,
    ProcessRecord,
    log_tail,
    private_dir,
    private_log,
    proc_start_time,
    stop_process,
)
from pynomaly.localstack.progress import Progress, as_progress
from pynomaly.localstack.state import alive_records, owner_alive, read_state, records, remove_state, write_state
from pynomaly.localstack.supervisor import (
    Component,
    ComponentFailed,
    HeartbeatCheck,
    HttpCheck,
    RestartPolicy,
    Running,
    Supervisor,
    health_from_dict,
)
from pynomaly.localstack.watcher import SUPERVISOR_LOG, component_spec, log_event
from pynomaly.topology import TOPOLOGY

API_KEY_FILE = "api-key"


def default_state_dir() -> Path:
    return Path(os.environ.get("PYNOMALY_STATE_DIR") or ".pynomaly").resolve()


def pynomaly_argv(*args: str) -> tuple[str, ...]:
    """The application's CLI in this interpreter's environment (the console script when installed)."""
    script = Path(sys.executable).parent / "pynomaly"
    if script.is_file() and os.access(script, os.X_OK):
        return (str(script), *args)
    return (sys.executable, "-c", "import sys; from pynomaly.cli import main; sys.argv[0] = 'pynomaly'; main()", *args)


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of an application process: ``settings`` as PYNOMALY_* variables, nothing else
    inherited but PYTHONPATH (a source checkout run with it: its children import the same code)."""
    env = {**env_for(settings), "PYTHONUNBUFFERED": "1", **extra}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def local_components(settings: Settings, state_dir: Path | str) -> list[Component]:
    """The application's processes: the API, a worker per topology pool, a consumer per consumer group, beat."""
    from pynomaly.observability.heartbeat import HEARTBEAT_FILE

    state_dir = Path(state_dir)
    base = child_env(settings)

    def heartbeat_dir(name: str) -> Path:
        return state_dir / "run" / name

    def with_heartbeat(name: str) -> dict[str, str]:
        return {**base, "PYNOMALY_HEARTBEAT_DIR": str(heartbeat_dir(name))}

    components = [
        Component(
            "api",
            pynomaly_argv("api"),
            with_heartbeat("api"),
            HttpCheck(f"http://{LOOPBACK}:{settings.api_port}/healthz"),
            stop_grace=10.0,
        )
    ]
    max_age = settings.heartbeat_stale_after
    for pool in TOPOLOGY.worker_pools:
        name = f"worker-{pool.name}"
        components.append(
            Component(
                name,
                pynomaly_argv("worker", "--pool", pool.name),
                with_heartbeat(name),
                HeartbeatCheck(heartbeat_dir(name) / HEARTBEAT_FILE, max_age),
                # Warm shutdown lets a running task finish; locally a short wait is enough.
                stop_grace=20.0,
            )
        )
    for group in TOPOLOGY.consumer_groups:
        name = f"consumer-{group.pool}"
        components.append(
            Component(
                name,
                pynomaly_argv("consumer", "--group", group.pool),
                with_heartbeat(name),
                HeartbeatCheck(heartbeat_dir(name) / HEARTBEAT_FILE, max_age),
                stop_grace=15.0,
            )
        )
    # Beat: the one scheduler (RedBeat holds a lock in Redis, so a second beat would only wait).
    components.append(
        Component(
            "beat",
            pynomaly_argv("beat"),
            with_heartbeat("beat"),
            HeartbeatCheck(heartbeat_dir("beat") / HEARTBEAT_FILE, max_age),
            stop_grace=10.0,
        )
    )
    return components


def ensure_api_key(path: Path) -> str:
    """The local API key: kept across runs (scripts and the open dashboard keep working), created 0600."""
    if path.is_file():
        key = path.read_text().strip()
        if key:
            os.chmod(path, 0o600)
            return key
    key = "pyn_" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


def mask(secret: str) -> str:
    return secret[:6] + "…" if len(secret) > 10 else "…"


class AlreadyRunning(LocalStackError):
    pass


class LocalSystem:
    """Real Redis + real Kafka + the application's processes under ``state_dir``.

    ``redis``/``kafka`` may be given already running (the test session shares one broker); they are
    then used but not stopped.  ``components`` replaces :func:`local_components` (a callable taking
    ``(settings, state_dir)``); ``with_components=False`` starts the services only.
    ``restart_policy`` is applied by :meth:`watch` and, after :meth:`detach`, by the watcher process.
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        api_port: int | None = None,
        redis_port: int | None = None,
        kafka_port: int | None = None,
        kafka_controller_port: int | None = None,
        libs_dir: Path | str | None = None,
        settings_overrides: Mapping[str, Any] | None = None,
        with_components: bool = True,
        components: Callable[[Settings, Path], list[Component]] | None = None,
        redis: Any = None,
        kafka: Any = None,
        die_with_parent: bool = True,
        health_timeout: float = 180.0,
        restart_policy: RestartPolicy | None = None,
    ) -> None:
        self.state_dir = Path(state_dir).resolve() if state_dir else default_state_dir()
        self.api_port_configured = api_port
        self.redis_port = redis_port
        self.kafka_port = kafka_port
        self.kafka_controller_port = kafka_controller_port
        self.libs_dir = Path(libs_dir).resolve() if libs_dir else self.state_dir / "kafka-libs"
        self.settings_overrides = dict(settings_overrides or {})
        self.with_components = with_components
        self.components_factory = components or local_components
        self.die_with_parent = die_with_parent
        self.health_timeout = health_timeout
        self.redis = redis
        self.kafka = kafka
        self._own_redis = redis is None
        self._own_kafka = kafka is None
        self.api_port = 0
        self.api_key = ""
        self.settings: Settings | None = None
        self.topics_created: list[str] = []
        self.restart_policy = restart_policy or RestartPolicy()
        self.supervisor = Supervisor(
            self.log_dir,
            die_with_parent=die_with_parent,
            on_change=self._components_changed,
            policy=self.restart_policy,
            on_event=self._supervisor_event,
        )
        self.watcher: ProcessRecord | None = None
        self.supervising = False  # a foreground watch() loop runs
        self._event_out: Progress | None = None
        self.started = False
        self.began = False  # True once this object started (or tried to start) something of its own
        self.detached = False
        self._lock_handle: IO[str] | None = None
        self._watcher_proc: subprocess.Popen[bytes] | None = None

    # -- locations --------------------------------------------------------------------------------
    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def api_key_file(self) -> Path:
        return self.state_dir / API_KEY_FILE

    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.api_port}"

    @property
    def dashboard_url(self) -> str:
        return f"{self.api_url}/dashboard"

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, progress: Progress | Callable[[str], None] | None = None) -> LocalSystem:
        """Start everything and wait until healthy; on any failure stop what was started and raise."""
        out = as_progress(progress)
        if self.started:
            return self
        make_state_dir(self.state_dir)
        self._acquire_lock()
        try:
            self._refuse_if_running()
        except BaseException:
            self._release_lock()
            raise
        self.began = True
        try:
            self._start(out)
        except BaseException:
            self.stop(progress=out)
            raise
        self.started = True
        self._save()  # now marked ready: `status` from another shell reports healthy only from here
        return self

    def _start(self, out: Progress) -> None:
        from pynomaly.localstack.kafka_broker import KafkaBroker
        from pynomaly.localstack.redis_server import RedisServer
        from pynomaly.messaging.kafka_admin import ensure_topics

        # Every configured port is checked before anything starts: nothing half-started on a clash.
        for port, what, option in (
            (self.api_port_configured, "API", "--api-port"),
            (self.redis_port if self._own_redis else None, "Redis", "--redis-port"),
            (self.kafka_port if self._own_kafka else None, "Kafka clients", "--kafka-port"),
            (self.kafka_controller_port if self._own_kafka else None, "Kafka controller", "--kafka-controller-port"),
        ):
            if port:
                require_free(port, what, option)
        self.api_port = self.api_port_configured or free_port()
        self.api_key = ensure_api_key(self.api_key_file)
        self._save()
        if self.redis is None:
            self.redis = RedisServer(
                self.state_dir / "redis", port=self.redis_port, log_path=self.log_dir / "redis.log",
                die_with_parent=self.die_with_parent,
                maxmemory=self._redis_maxmemory(),
            )  # fmt: skip
            self.redis.start(progress=out)
            self._save()
        if self.kafka is None:
            self.kafka = KafkaBroker(
                self.state_dir / "kafka", libs_dir=self.libs_dir, port=self.kafka_port,
                controller_port=self.kafka_controller_port, die_with_parent=self.die_with_parent,
                log_dir=self.log_dir / "kafka",
            )  # fmt: skip
            self.kafka.start(progress=out)
            self._save()
        if self.api_port in (self.redis.port, self.kafka.port, getattr(self.kafka, "controller_port", 0)):
            self.api_port = free_port()  # the kernel handed the same free port out twice
        self.settings = self._make_settings()
        created = ensure_topics(self.settings)
        self.topics_created = created
        out.step(f"Kafka topics ready ({len(created)} created)" if created else "Kafka topics already exist")
        if self.with_components:
            components = self.components_factory(self.settings, self.state_dir)
            self.supervisor.start_all(components, timeout=self.health_timeout, progress=out)
        self._save()

    def _redis_maxmemory(self) -> str:
        """``local_redis_maxmemory`` from the overrides, else PYNOMALY_LOCAL_REDIS_MAXMEMORY or its default."""
        from pynomaly.config import settings_from_env

        return str(self.settings_overrides.get("local_redis_maxmemory") or settings_from_env().local_redis_maxmemory)

    def _make_settings(self) -> Settings:
        values: dict[str, Any] = {
            "environment": "local",
            "redis_url": self.redis.url,
            "kafka_bootstrap_servers": self.kafka.bootstrap_servers,
            "kafka_replication_factor": 1,
            "kafka_min_insync_replicas": 1,
            "api_host": LOOPBACK,
            "api_port": self.api_port,
            "public_url": self.api_url,
            "api_keys_file": str(self.api_key_file),
            # Laptop-sized: one process per worker pool, and quick heartbeats so health shows fast.
            "worker_concurrency": 1,
            "heartbeat_interval": 2.0,
        }
        if self._own_redis:
            values["local_redis_maxmemory"] = self.redis.maxmemory
        values.update(self.settings_overrides)
        return Settings(**values)

    def check(self) -> None:
        """Raise :class:`~pynomaly.localstack.supervisor.ComponentFailed` if a component exited."""
        self.supervisor.check()
        self.check_services()

    def check_services(self) -> None:
        """Raise :class:`ComponentFailed` if Redis or Kafka (not restarted: see README) exited."""
        for name, service in (("redis", self.redis), ("kafka", self.kafka)):
            if service is not None and service.record is not None and not service.running():
                log = service.log_path if name == "redis" else service.server_log
                raise ComponentFailed(name, f"{name} exited; last lines of {log}:", detail=log_tail(log))

    def watch(
        self,
        interval: float = 1.0,
        until: Callable[[], bool] | None = None,
        progress: Progress | Callable[[str], None] | None = None,
    ) -> None:
        """The foreground supervisor loop: restart exited components by the restart policy.

        Runs until ``until()`` is true (forever without it; Ctrl-C ends it with KeyboardInterrupt).
        Restarts, crashes and give-ups go to ``progress`` and ``logs/supervisor.log``; an exit of
        Redis or Kafka raises :class:`ComponentFailed` with its log tail.
        """
        self._event_out = as_progress(progress) if progress is not None else None
        self.supervising = True
        self._save()  # `status` says who restarts components
        try:
            while True:
                self.supervisor.supervise()
                self.check_services()
                if until is not None and until():
                    return
                time.sleep(interval)
        finally:
            self._event_out = None
            self.supervising = False

    def _supervisor_event(self, message: str) -> None:
        with contextlib.suppress(OSError):
            log_event(self.log_dir, message)
        if self._event_out is not None:
            self._event_out.step(message)

    def stop(self, progress: Progress | Callable[[str], None] | None = None) -> None:
        """Stop components (reverse order), then Kafka, then Redis; only what this object started."""
        out = as_progress(progress)
        try:
            self.supervisor.stop_all(progress=out)
            if self._own_kafka and self.kafka is not None and self.kafka.record is not None:
                if self.kafka.running():
                    out.step("stopping Kafka")
                self.kafka.stop()
            if self._own_redis and self.redis is not None and self.redis.record is not None:
                if self.redis.running():
                    out.step("stopping Redis")
                self.redis.stop()
        finally:
            if self._lock_handle is not None:  # only the owner of the state removes it
                remove_state(self.state_dir)
            self.started = False
            self._release_lock()

    def detach(self, interval: float = 1.0) -> None:
        """Leave everything running after this process exits (``up --detach``); ``down`` stops it later.

        A watcher process (``watcher.py``) takes over the restart policy; its pid is in ``local.json``.
        """
        self.watcher = self._start_watcher(interval)
        self.detached = True
        self._save()  # the watcher waits for its spec, sent next, so it sees its own pid in the state
        assert self._watcher_proc is not None and self._watcher_proc.stdin is not None
        spec = {
            "log_dir": str(self.log_dir),
            "interval": interval,
            "policy": self.restart_policy.to_dict(),
            "components": [component_spec(r) for r in self.supervisor.running],
            "services": [
                service.record.to_dict()
                for service, own in ((self.redis, self._own_redis), (self.kafka, self._own_kafka))
                if own and service is not None and service.record is not None
            ],
        }
        try:
            with self._watcher_proc.stdin as pipe:
                pipe.write(json.dumps(spec).encode())
        except BaseException:
            stop_process(self.watcher, grace=5.0, proc=self._watcher_proc)
            self.detached = False
            raise
        self._release_lock()

    def _start_watcher(self, interval: float) -> ProcessRecord:
        log = self.log_dir / SUPERVISOR_LOG
        private_dir(self.log_dir)
        argv = [sys.executable, "-m", "pynomaly.localstack.watcher", "--state-dir", str(self.state_dir)]
        with os.fdopen(private_log(log), "ab") as out:
            try:
                self._watcher_proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C in the terminal and the CLI's exit do not reach it
                    umask=CHILD_UMASK,
                )
            except OSError as exc:
                raise LocalStackError(f"cannot start the supervisor process: {exc.strerror or exc}") from exc
        pid = self._watcher_proc.pid
        return ProcessRecord("watcher", pid, proc_start_time(pid), str(log))

    def __enter__(self) -> LocalSystem:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if not self.detached:
            self.stop()

    # -- state ------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """What a person (or `status`) needs: URLs and locations, no secrets."""
        return {
            "state_dir": str(self.state_dir),
            "api_url": self.api_url,
            "dashboard_url": self.dashboard_url,
            "api_key_file": str(self.api_key_file),
            "redis_url": self.redis.safe_url if self.redis is not None else "",
            "kafka_bootstrap_servers": self.kafka.bootstrap_servers if self.kafka is not None else "",
            "logs": str(self.log_dir),
        }

    def _save(self, running: list[Running] | None = None) -> None:
        if self._lock_handle is None and not self.detached:
            return
        data = self.summary()
        data["owner"] = {"pid": os.getpid(), "start_time": proc_start_time(os.getpid())}
        data["detached"] = self.detached
        data["ready"] = self.started
        data["supervising"] = self.supervising
        data["updated_at"] = time.time()
        for key, service, own in (("redis", self.redis, self._own_redis), ("kafka", self.kafka, self._own_kafka)):
            if own and service is not None and service.record is not None:
                data[key] = {"process": service.record.to_dict(), "port": service.port}
        data["components"] = [r.to_dict() for r in (running if running is not None else self.supervisor.running)]
        if self.watcher is not None:
            data["watcher"] = self.watcher.to_dict()
        write_state(self.state_dir, data)

    def _components_changed(self, running: list[Running]) -> None:
        self._save(running)

    def _acquire_lock(self) -> None:
        fd = os.open(self.state_dir / "local.lock", os.O_WRONLY | os.O_CREAT, 0o600)
        handle = os.fdopen(fd, "w")  # held for the system's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise AlreadyRunning(
                f"the local system in {self.state_dir} is being started or run by another process: "
                "see `pynomaly local status`, or stop it with `pynomaly local down`"
            ) from None
        self._lock_handle = handle

    def _release_lock(self) -> None:
        if self._lock_handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None

    def _refuse_if_running(self) -> None:
        data = read_state(self.state_dir)
        if not data:
            return
        if alive_records(data) or owner_alive(data) or watcher_alive(data):
            raise AlreadyRunning(
                f"the local system is already running (API {data.get('api_url', '?')}, state {self.state_dir}): "
                "use `pynomaly local status`, or `pynomaly local down` first"
            )
        remove_state(self.state_dir)  # left by a crash or a reboot: nothing of it runs any more


def make_state_dir(state_dir: Path) -> None:
    """Create the state directory 0700 (and tighten one left 0755 by an older version).

    A shared sticky directory (``--state-dir /tmp``) is left as it is: its data folders are 0700 anyway.
    """
    if state_dir.is_dir() and state_dir.stat().st_mode & stat.S_ISVTX:
        return
    private_dir(state_dir)


# -- from another shell ---------------------------------------------------------------------------


def watcher_record(data: dict[str, Any]) -> ProcessRecord | None:
    entry = data.get("watcher")
    return ProcessRecord.from_dict(entry) if entry else None


def watcher_alive(data: dict[str, Any]) -> bool:
    record = watcher_record(data)
    return bool(record and record.alive())


def stop_from_state(state_dir: Path, progress: Progress | None = None, owner_grace: float = 90.0) -> list[str]:
    """``local down``: stop what ``local.json`` lists; returns the names of processes that were stopped."""
    out = as_progress(progress)
    data = read_state(state_dir)
    if not data:
        return []
    stopped: list[str] = []
    watcher = watcher_record(data)
    if watcher is not None and watcher.alive():
        # First, so it restarts nothing that is being stopped; it writes its last pids before exiting.
        out.step(f"stopping the supervisor (pid {watcher.pid})")
        stop_process(watcher, grace=15.0)
        stopped.append("supervisor")
    data = read_state(state_dir) or data  # the pids of what it restarted
    owner = data.get("owner") or {}
    if owner_alive(data) and int(owner.get("pid", 0)) != os.getpid():
        # A foreground `up` stops its children in order when told to; give it the chance first.
        out.step(f"asking the running `local up` (pid {owner['pid']}) to stop")
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(owner["pid"]), signal.SIGTERM)
        deadline = time.monotonic() + owner_grace
        while time.monotonic() < deadline and owner_alive(data):
            time.sleep(0.2)
        if not owner_alive(data):
            stopped.append("local up")
    graces = {str(c.get("name")): float(c.get("stop_grace", 15.0)) for c in data.get("components", [])}
    graces.update(kafka=30.0, redis=10.0)
    for record in reversed(records(data)):
        if record.alive():
            out.step(f"stopping {record.name} (pid {record.pid})")
            stop_process(record, grace=graces.get(record.name, 15.0))
            stopped.append(record.name)
    # Everything it lists is stopped now; a foreground owner that is still exiting removes it too (harmless).
    remove_state(state_dir)
    return stopped


def status_from_state(state_dir: Path) -> dict[str, Any] | None:
    """``local status``: the saved summary plus, per process, whether it runs and is healthy."""
    data = read_state(state_dir)
    if not data:
        return None
    rows = []
    by_name = {str(c.get("name")): c for c in data.get("components", [])}
    exited_services = data.get("services_exited") or {}
    for record in records(data):
        alive = record.alive()
        problem = None
        entry = by_name.get(record.name, {})
        if alive and entry:
            health = health_from_dict(entry.get("health"))
            problem = health.problem() if health else None
        restart = entry.get("restart") or {}
        failed = restart.get("failed") or exited_services.get(record.name)
        rows.append(
            {
                "name": record.name,
                "pid": record.pid,
                "alive": alive,
                "problem": problem,
                "log": record.log,
                "restarts": int(restart.get("restarts", 0)),
                "restart_due": restart.get("due"),
                "last_exit": restart.get("last_exit"),
                "failed": failed,
                "log_tail": log_tail(record.log, 10) if failed else "",
            }
        )
    data["processes"] = rows
    data["owner_alive"] = owner_alive(data)
    data["watcher_alive"] = watcher_alive(data)
    return data


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (from `local down` in another shell) like Ctrl-C, so the same clean stop runs."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = [
    "AlreadyRunning",
    "LocalSystem",
    "default_state_dir",
    "local_components",
    "sigterm_as_interrupt",
    "status_from_state",
    "stop_from_state",
]
