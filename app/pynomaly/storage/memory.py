"""Admission control on Redis memory: refuse new work before Redis refuses writes.

Redis runs with ``maxmemory-policy noeviction`` (an evicted queue entry is a lost job), so past its
``maxmemory`` every write fails, a worker's result write included.  The API therefore refuses new
jobs and dataset uploads with 507 once what Redis holds, plus what accepted jobs will still write
(their reservations, see :mod:`pynomaly.storage.jobs`), plus the new request would pass
``redis_memory_high_watermark`` of ``maxmemory``.

Cheap on purpose: ``INFO memory`` and the reservations' sum are read at most once per
``refresh_seconds``; in between, what this process admitted is added to the last reading.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from pynomaly.domain.errors import InsufficientStorage

log = logging.getLogger(__name__)

# Seconds a refused client is told to wait: memory comes back as jobs finish and records expire.
RETRY_AFTER_SECONDS = 30


@dataclass(frozen=True)
class MemoryReading:
    used: int  # INFO memory used_memory, bytes
    maxmemory: int  # 0: Redis has no limit (nothing to protect against)
    reserved: int  # what accepted, unfinished jobs will still write, bytes


def _mb(value: float) -> str:
    return f"{value / 1024 / 1024:.1f} MB"


class MemoryAdmission:
    """Thread-safe: the API runs submits in a thread pool."""

    def __init__(
        self,
        client: redis.Redis,
        watermark: float,
        reserved: Callable[[], int],
        refresh_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < watermark <= 1:
            raise ValueError("watermark must be in (0, 1]")
        self._r = client
        self._watermark = watermark
        self._reserved = reserved
        self._refresh = refresh_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._reading: MemoryReading | None = None
        self._read_at = 0.0
        self._admitted = 0  # bytes admitted by this process since the last reading
        self._info_refused = False

    def reading(self) -> MemoryReading:
        with self._lock:
            return self._current()

    def check(self, incoming_bytes: int, what: str = "job") -> None:
        """Admit ``incoming_bytes`` (counted until the next reading) or raise :class:`InsufficientStorage`."""
        if incoming_bytes < 0:
            raise ValueError("incoming_bytes must not be negative")
        with self._lock:
            reading = self._current()
            if reading.maxmemory <= 0:
                return
            limit = self._watermark * reading.maxmemory
            projected = reading.used + reading.reserved + self._admitted + incoming_bytes
            if projected > limit:
                raise InsufficientStorage(
                    f"Redis holds {_mb(reading.used)} of its {_mb(reading.maxmemory)} maxmemory and accepted jobs "
                    f"will still write {_mb(reading.reserved + self._admitted)}; this {what} needs about "
                    f"{_mb(incoming_bytes)} and would pass the {self._watermark:.0%} watermark. Retry later, when "
                    "running jobs have finished, or delete finished jobs (DELETE /v1/jobs/{id}?purge=true).",
                    retry_after=RETRY_AFTER_SECONDS,
                )
            self._admitted += incoming_bytes

    def _current(self) -> MemoryReading:
        now = self._clock()
        if self._reading is None or now - self._read_at >= self._refresh:
            self._reading = self._read()
            self._read_at = now
            self._admitted = 0
        return self._reading

    def _read(self) -> MemoryReading:
        try:
            info = self._r.info("memory")
        except redis.exceptions.ResponseError as exc:
            # INFO refused (an ACL without it): the limit is unknown, so nothing can be protected.
            if not self._info_refused:
                log.warning("INFO memory refused (%s): admission control is off", exc)
                self._info_refused = True
            return MemoryReading(used=0, maxmemory=0, reserved=0)
        maxmemory = int(info.get("maxmemory", 0))
        reserved = self._reserved() if maxmemory > 0 else 0
        return MemoryReading(used=int(info["used_memory"]), maxmemory=maxmemory, reserved=reserved)
