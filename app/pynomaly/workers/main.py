"""Starts a Celery worker for one worker pool of the topology (the chart runs one Deployment each)."""

from __future__ import annotations

import logging
import os
import tempfile

from celery import bootsteps

from pynomaly.config import Settings
from pynomaly.topology import TOPOLOGY

log = logging.getLogger(__name__)


def run_worker(settings: Settings, pool: str | None, queues: list[str] | None, concurrency: int | None) -> None:
    if settings.metrics_port:
        # Tasks run in child processes: their counters meet in a shared directory (must be set
        # before prometheus_client is imported anywhere in this process).
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="pynomaly-metrics-"))

    from pynomaly.messaging.celery_app import create_celery

    if pool:
        spec = TOPOLOGY.worker_pool(pool)
        names = list(spec.queues)
        default_concurrency = spec.concurrency
        node = pool
    else:
        names = [TOPOLOGY.queue(q).name for q in (queues or [])]
        if not names:
            raise ValueError("give a pool (--pool) or at least one queue (--queue)")
        default_concurrency = 1
        node = "-".join(names)
    procs = concurrency or settings.worker_concurrency or default_concurrency

    app = create_celery(settings)
    app.set_default()
    app.set_current()
    import pynomaly.workers.notify_tasks  # (the notification delivery task)
    import pynomaly.workers.tasks  # noqa: F401  (registers the task bodies on this app)

    app.steps["worker"].add(_heartbeat_step(settings, f"worker:{node}"))
    if settings.metrics_port:
        _serve_metrics(settings.metrics_port)
    argv = [
        "worker",
        f"--queues={','.join(names)}",
        f"--concurrency={procs}",
        f"--hostname={node}@%h",
        f"--loglevel={settings.log_level}",
        "--without-gossip",
        "--without-mingle",
    ]
    log.info("starting worker %s on queues %s with %d processes", node, names, procs)
    app.worker_main(argv)


def _heartbeat_step(settings: Settings, component: str) -> type[bootsteps.StartStopStep]:
    """A bootstep that beats from the worker's own timer: if the event loop hangs, beats stop."""

    class HeartbeatStep(bootsteps.StartStopStep):
        requires = {"celery.worker.components:Timer"}

        def __init__(self, worker, **kwargs):  # type: ignore[no-untyped-def]
            super().__init__(worker, **kwargs)
            self.tref = None
            self.heartbeat = None

        def start(self, worker):  # type: ignore[no-untyped-def]
            from pynomaly.observability.heartbeat import Heartbeat
            from pynomaly.storage.redis_client import redis_from_settings

            client = redis_from_settings(settings)
            self.heartbeat = Heartbeat(
                settings,
                component,
                stream_add=lambda s, f: client.xadd(s, f, maxlen=settings.stream_maxlen, approximate=True),
            )
            self.heartbeat.beat()
            self.tref = worker.timer.call_repeatedly(settings.heartbeat_interval, self.heartbeat.beat)

        def stop(self, worker):  # type: ignore[no-untyped-def]
            if self.tref is not None:
                self.tref.cancel()

    return HeartbeatStep


def _serve_metrics(port: int) -> None:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    start_http_server(port, registry=registry)
