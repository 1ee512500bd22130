"""Heartbeats: a file whose age the Kubernetes probe checks, and an entry on health:stream.

Probes read the file instead of pinging the broker: broker pings fail under load (a busy worker
cannot answer) and say nothing about whether this process still makes progress.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

from pynomaly.config import Settings
from pynomaly.domain.jobs import utcnow
from pynomaly.messaging.streams import RedisStreams
from pynomaly.topology import S_HEALTH

log = logging.getLogger(__name__)
HEARTBEAT_FILE = "heartbeat"


def heartbeat_path(settings: Settings) -> Path | None:
    return Path(settings.heartbeat_dir) / HEARTBEAT_FILE if settings.heartbeat_dir else None


def heartbeat_age(path: Path) -> float | None:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


class Heartbeat:
    """Beats from a daemon thread while ``alive()`` says the component is still healthy: touches the
    heartbeat file and, given a Redis client, appends to health:stream (capped at ``stream_maxlen``)."""

    def __init__(
        self,
        settings: Settings,
        component: str,
        client: redis.Redis | None = None,
        alive: Callable[[], bool] = lambda: True,
    ) -> None:
        self._path = heartbeat_path(settings)
        self._interval = settings.heartbeat_interval
        self._component = component
        self._streams = RedisStreams(client, settings.stream_maxlen) if client is not None else None
        self._alive = alive
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{component}", daemon=True)

    def start(self) -> Heartbeat:
        if self._path:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval + 1)

    def beat(self) -> None:
        if not self._alive():
            return
        if self._path:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._path.touch()
        if self._streams:
            try:
                self._streams.add(
                    S_HEALTH,
                    {
                        "component": self._component,
                        "host": socket.gethostname(),
                        "pid": str(os.getpid()),
                        "time": utcnow(),
                        "status": "ok",
                    },
                )
            except Exception as exc:  # the file still proves liveness; the stream is best effort
                log.warning("heartbeat: cannot write %s: %s", S_HEALTH, exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.beat()
            self._stop.wait(self._interval)
