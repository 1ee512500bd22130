"""The operations view's figures: what ``/metrics`` reports, as JSON for ``GET /v1/ops/metrics``.

Queue depths, the DLQ size and stream lengths come from :class:`RedisStateCollector`, exactly as the
API's ``/metrics`` reads them at scrape time; the outbox depth and age as ``/readyz`` reports them.
Task counters and run-time histograms live in the worker processes, consumer lag and consumed counts
in the consumer processes (each serves them on its own ``/metrics`` port when one is set), so every
worker and consumer also writes the samples of those families, read from that same registry, to one
Redis hash at every heartbeat (:class:`SnapshotPublisher`), and the API sums them per pool and task.

The page, not the server, keeps the time series: it samples the endpoint every few seconds and turns
counter differences into rates and bucket differences into p50/p95, as Prometheus' ``rate()`` and
``histogram_quantile()`` do.  So Redis holds one small snapshot per process and no history to trim,
every replica writes the same few hundred bytes whether anyone looks or not, and the history lives
only while a page is open (long-term history is Prometheus' job).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import redis
from prometheus_client.registry import Collector, CollectorRegistry

from pynomaly.observability.metrics import RedisStateCollector
from pynomaly.storage.redis_client import KEY_PREFIX

log = logging.getLogger(__name__)

#: One field per process (``component@host:pid``), the JSON of its latest snapshot.
SNAPSHOTS = f"{KEY_PREFIX}ops:snapshots"
#: A snapshot this old is dropped: its process is gone (a restart writes under a new pid).  Until then
#: its counters still count in the sums (they no longer change, so rates are right) and its lag is shown
#: with its age: a stopped consumer's last figures are exactly what an operator wants to see.
RETAIN_SECONDS = 900.0
#: The samples a snapshot carries (``_created`` timestamps and everything else are left out).
SNAPSHOT_SAMPLES = frozenset(
    {
        "pynomaly_tasks_total",
        "pynomaly_task_duration_seconds_bucket",
        "pynomaly_task_duration_seconds_count",
        "pynomaly_task_duration_seconds_sum",
        "pynomaly_task_retries_total",
        "pynomaly_dead_lettered_total",
        "pynomaly_kafka_consumer_lag",
        "pynomaly_kafka_consumed_total",
    }
)

Sample = tuple[str, dict[str, str], float]


def registry_samples(registry: CollectorRegistry | Collector) -> list[Sample]:
    """The snapshot's samples, from the registry the process serves on ``/metrics``."""
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in registry.collect()
        for s in family.samples
        if s.name in SNAPSHOT_SAMPLES
    ]


class SnapshotPublisher:
    """Writes this process's snapshot to :data:`SNAPSHOTS`: call :meth:`publish` from a heartbeat, or
    :meth:`start` a thread that does it every ``interval`` seconds."""

    def __init__(
        self,
        component: str,
        registry: CollectorRegistry | Collector,
        client: Callable[[], redis.Redis],
        interval: float = 5.0,
    ) -> None:
        self.component = component
        self.instance = f"{component}@{socket.gethostname()}:{os.getpid()}"
        self._registry = registry
        self._client_factory = client
        self._client: redis.Redis | None = None
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def publish(self) -> None:
        try:
            if self._client is None:
                self._client = self._client_factory()
            snapshot = {
                "component": self.component,
                "instance": self.instance,
                "at": time.time(),
                "samples": registry_samples(self._registry),
            }
            self._client.hset(SNAPSHOTS, self.instance, json.dumps(snapshot, separators=(",", ":")))
            if self._failing:
                log.info("ops snapshot: writing again")
            self._failing = False
        except Exception as exc:  # informative only: never break the heartbeat that calls this
            if not self._failing:
                log.warning("ops snapshot: cannot write %s: %s: %s", SNAPSHOTS, type(exc).__name__, exc)
            self._failing = True

    def start(self) -> SnapshotPublisher:
        self._thread = threading.Thread(target=self._run, name="ops-snapshot", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval + 1)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.publish()
            self._stop.wait(self._interval)


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def read_snapshots(client: redis.Redis, stale_after: float, now: float | None = None) -> dict[str, Any]:
    """Task figures per pool and task, consumer lag per group and partition, consumed counts per group,
    summed over every process's snapshot; snapshots older than :data:`RETAIN_SECONDS` are deleted."""
    now = time.time() if now is None else now
    runs: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    scalars: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    buckets: dict[tuple[str, str], dict[float, float]] = defaultdict(lambda: defaultdict(float))
    lag: dict[tuple[str, str, int], dict[str, Any]] = {}
    consumed: dict[tuple[str, str, str], float] = defaultdict(float)
    reporters = []
    expired = []
    for field, raw in sorted(client.hgetall(SNAPSHOTS).items()):
        try:
            snapshot = json.loads(raw)
            at, component, samples = float(snapshot["at"]), str(snapshot["component"]), snapshot["samples"]
        except (ValueError, KeyError, TypeError):
            log.warning("ops snapshot %s is unreadable; dropped", field)
            expired.append(field)
            continue
        age = max(0.0, now - at)
        if age > RETAIN_SECONDS:
            expired.append(field)
            continue
        stale = age > stale_after
        reporters.append({"component": component, "instance": field, "age_seconds": round(age, 1), "stale": stale})
        pool = component.split(":", 1)[1] if component.startswith("worker:") else component
        for name, labels, value in samples:
            if name == "pynomaly_tasks_total":
                runs[(pool, labels["task"])][labels["outcome"]] += value
            elif name == "pynomaly_task_duration_seconds_bucket":
                buckets[(pool, labels["task"])][float(labels["le"])] += value
            elif name in ("pynomaly_task_duration_seconds_count", "pynomaly_task_duration_seconds_sum"):
                scalars[(pool, labels["task"])][name.rsplit("_", 1)[1]] += value
            elif name == "pynomaly_task_retries_total":
                scalars[(pool, labels["task"])]["retries"] += value
            elif name == "pynomaly_dead_lettered_total":
                scalars[(pool, labels["task"])]["dead_lettered"] += value
            elif name == "pynomaly_kafka_consumer_lag":
                key = (labels["group"], labels["topic"], int(labels["partition"]))
                # One member owns a partition at a time: the freshest report is the current one.
                if key not in lag or lag[key]["age_seconds"] > age:
                    lag[key] = {
                        "lag": _number(value),
                        "reported_by": field,
                        "age_seconds": round(age, 1),
                        "stale": stale,
                    }
            elif name == "pynomaly_kafka_consumed_total":
                consumed[(labels["group"], labels["topic"], labels["outcome"])] += value
    if expired:
        client.hdel(SNAPSHOTS, *expired)
    tasks = []
    for pool, task in sorted(set(runs) | set(scalars) | set(buckets)):
        figures = scalars[(pool, task)]
        bounds = sorted(b for b in buckets[(pool, task)] if math.isfinite(b))
        tasks.append(
            {
                "pool": pool,
                "task": task,
                "runs": {outcome: _number(n) for outcome, n in sorted(runs[(pool, task)].items())},
                "retries": _number(figures["retries"]),
                "dead_lettered": _number(figures["dead_lettered"]),
                "duration": {
                    "count": _number(figures["count"]),
                    "sum": round(figures["sum"], 6),
                    "bounds": bounds,
                    "cumulative": [_number(buckets[(pool, task)][b]) for b in bounds],
                },
            }
        )
    return {
        "tasks": tasks,
        "consumer_lag": [
            {"group": g, "topic": t, "partition": p, **figures} for (g, t, p), figures in sorted(lag.items())
        ],
        "consumed": [
            {"group": g, "topic": t, "outcome": o, "count": _number(n)} for (g, t, o), n in sorted(consumed.items())
        ],
        "reporters": reporters,
    }


def redis_state(client: redis.Redis) -> dict[str, Any]:
    """Queue depth per queue and priority, DLQ size and stream lengths: the collector ``/metrics`` uses."""
    queues, streams, dlq = [], [], None
    for family in RedisStateCollector(client).collect():
        for s in family.samples:
            if s.name == "pynomaly_queue_depth":
                queues.append({"queue": s.labels["queue"], "priority": s.labels["priority"], "depth": int(s.value)})
            elif s.name == "pynomaly_dlq_size":
                dlq = int(s.value)
            elif s.name == "pynomaly_stream_length":
                streams.append({"stream": s.labels["stream"], "length": int(s.value)})
    if dlq is None:  # the collector logs and yields nothing when Redis does not answer
        raise redis.ConnectionError("Redis did not answer the queue, DLQ and stream reads")
    return {"queues": queues, "dlq": {"size": dlq}, "streams": streams}
