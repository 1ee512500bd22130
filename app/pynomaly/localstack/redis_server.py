"""A real ``redis-server`` (Debian's package) for the local system and the tests.

Configured as a Celery broker must be: a password, AOF with ``appendfsync everysec`` and
``maxmemory-policy noeviction`` (an evicted queue entry is a lost job), bound to loopback only, and a
``maxmemory`` (``local_redis_maxmemory``) so it never takes the laptop's memory: the API reads it and
refuses new work before Redis refuses writes.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

from pynomaly.localstack.errors import LocalStackError
from pynomaly.localstack.ports import LOOPBACK, pick_port
from pynomaly.localstack.procs import ManagedServer, ProcessRecord, log_tail, private_dir, spawn
from pynomaly.localstack.progress import Progress, as_progress

REDIS_PACKAGE = "redis-server"


def find_redis_server(install: bool = True, progress: Progress | None = None) -> str:
    """Path of ``redis-server``; installs the Debian package when missing and allowed (root + apt-get)."""
    found = _which_redis()
    if found:
        return found
    apt = shutil.which("apt-get")
    if install and apt and os.geteuid() == 0:
        as_progress(progress).step(f"installing {REDIS_PACKAGE} with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", REDIS_PACKAGE]):
            done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                raise LocalStackError(f"apt-get could not install {REDIS_PACKAGE}: {last[0]}")
        found = _which_redis()
        if found:
            return found
    raise LocalStackError(
        f"redis-server is missing: install the {REDIS_PACKAGE} package "
        f"(Debian/Ubuntu: sudo apt-get install {REDIS_PACKAGE})"
    )


def _which_redis() -> str | None:
    # Debian puts it in /usr/bin, but a user's PATH may be minimal (cron, IDE runners).
    found = shutil.which("redis-server")
    if found:
        return found
    for candidate in ("/usr/bin/redis-server", "/usr/local/bin/redis-server", "/usr/sbin/redis-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


class RedisServer(ManagedServer):
    """One ``redis-server`` process with its data in ``data_dir``.

    ``start()`` returns once an authenticated PING answers; ``stop()`` stops it by pid.
    """

    def __init__(
        self,
        data_dir: Path | str,
        port: int | None = None,
        password: str | None = None,
        log_path: Path | str | None = None,
        die_with_parent: bool = True,
        maxmemory: str | None = None,
    ) -> None:
        from pynomaly.config import Settings, redis_size_bytes

        # The setting's default unless given: a local Redis always has a limit.
        self.maxmemory = (maxmemory or Settings.model_fields["local_redis_maxmemory"].default).strip().lower()
        if redis_size_bytes(self.maxmemory) <= 0:
            raise LocalStackError(f"Redis maxmemory {maxmemory!r} is not a size above 0 (like 512mb)")
        self.data_dir = Path(data_dir).resolve()
        self.configured_port = port
        self.port = port or 0
        # A fresh strong password per start unless one is given: nothing ever runs with a default.
        self.password = password or secrets.token_urlsafe(32)
        self.log_path = Path(log_path).resolve() if log_path else self.data_dir / "redis.log"
        self.die_with_parent = die_with_parent
        self.record: ProcessRecord | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"redis://:{quote(self.password, safe='')}@{LOOPBACK}:{self.port}/0"

    def url_for_db(self, db: int) -> str:
        """The URL of another logical database (the e2e system uses its own, apart from the unit tests')."""
        return self.url.rsplit("/", 1)[0] + f"/{db}"

    @property
    def safe_url(self) -> str:
        return f"redis://:***@{LOOPBACK}:{self.port}/0"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "redis.conf"

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, timeout: float = 20.0, progress: Progress | None = None) -> RedisServer:
        binary = find_redis_server(progress=progress)
        self.port = pick_port(self.configured_port, "Redis", "--redis-port")
        private_dir(self.data_dir)  # the AOF holds every queued job: 0700, files 0600 (umask 077)
        private_dir(self.log_path.parent)
        if self.log_path.exists():  # Redis appends to it; one from an older run may be world-readable
            os.chmod(self.log_path, 0o600)
        self._write_config()
        as_progress(progress).step(f"starting Redis on {LOOPBACK}:{self.port}")
        self._proc, self.record = spawn(
            "redis",
            [binary, str(self.config_path)],
            self.log_path.with_suffix(".out"),
            die_with_parent=self.die_with_parent,
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _write_config(self) -> None:
        lines = [
            f"bind {LOOPBACK}",
            "protected-mode yes",
            f"port {self.port}",
            "daemonize no",
            f'dir "{self.data_dir}"',
            f'logfile "{self.log_path}"',
            f'requirepass "{self.password}"',
            "appendonly yes",
            "appendfsync everysec",
            f"maxmemory {self.maxmemory}",
            "maxmemory-policy noeviction",
            # The broker's durability comes from the AOF; RDB snapshots would only add fork pauses.
            'save ""',
        ]
        # The file holds the password: create it private before writing.
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        os.chmod(self.config_path, 0o600)

    def _wait_ready(self, timeout: float) -> None:
        import redis  # the client library is only needed here
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        def probe() -> str | None:
            client = redis.Redis(
                host=LOOPBACK, port=self.port, password=self.password, socket_timeout=1, retry=Retry(NoBackoff(), 0)
            )
            try:
                return None if client.ping() else "no PONG"
            except redis.exceptions.BusyLoadingError:
                return "still loading its append-only file"
            except redis.exceptions.RedisError as exc:
                return str(exc)
            finally:
                client.close()

        self._wait_until_ready(
            probe, timeout, 0.1, "redis-server", "Redis did not answer PING", self.log_path,
            lambda: log_tail(self.log_path) or log_tail(self.log_path.with_suffix(".out")),
        )  # fmt: skip
