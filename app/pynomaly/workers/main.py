"""Starts a Celery worker for one worker pool of the topology (the chart runs one Deployment each)."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from typing import TYPE_CHECKING, Any

from celery import bootsteps

from pynomaly.config import Settings
from pynomaly.observability.logs import celery_notices_as_log_lines
from pynomaly.topology import TOPOLOGY

if TYPE_CHECKING:
    from pynomaly.workers.reaper import WorkerDeliveries

log = logging.getLogger(__name__)
# Dead workers' deliveries are looked for every this many heartbeats: a dead worker's task waits at
# most the stale threshold plus this long before it is back on its queue.
RECOVER_EVERY_BEATS = 2


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
    # A missing or malformed encryption key stops the start here, not each job later.
    codec = settings.blob_codec()
    log.info("encryption at rest: %s; key ids %s", "on" if codec.enabled else "off", codec.key_ids() or "none")

    app = create_celery(settings)
    app.set_default()
    app.set_current()
    _own_logging_and_tracing(f"worker:{node}")
    import pynomaly.workers.notify_tasks  # (the notification delivery task)
    import pynomaly.workers.tasks  # noqa: F401  (registers the task bodies on this app)
    from pynomaly.workers.reaper import WorkerDeliveries, install

    deliveries = WorkerDeliveries(settings)
    install(deliveries)  # before the pool forks: children forget their own receipts
    app.steps["worker"].add(_heartbeat_step(settings, f"worker:{node}", deliveries))
    if settings.metrics_port:
        _serve_metrics(settings.metrics_port)
    # Celery's banner and shutdown notices are no log lines: in JSON lines they would break the
    # one-object-per-line promise.
    argv = []
    if settings.log_format == "json":
        argv.append("--quiet")
        celery_notices_as_log_lines(settings, f"worker:{node}")
    argv += [
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


def _own_logging_and_tracing(component: str) -> None:
    """Celery leaves logging to ours (the root handler set up by the CLI; pool children inherit it)
    and each pool child starts its own tracing after the fork, flushing it when it exits."""
    from celery.signals import celeryd_after_setup, worker_process_init, worker_process_shutdown

    from pynomaly.observability.logs import keep_celery_off_logging
    from pynomaly.observability.tracing import configure_tracing, shutdown_tracing

    keep_celery_off_logging()
    # Celery redirects print()s to its logger only when it configured logging itself; keep that (a
    # task's stray output becomes a log line, one JSON object with json).
    celeryd_after_setup.connect(_redirect_stdouts, weak=False, dispatch_uid="pynomaly-redirect-stdouts")
    worker_process_init.connect(
        lambda **_: configure_tracing(component), weak=False, dispatch_uid="pynomaly-tracing-init"
    )
    worker_process_shutdown.connect(lambda **_: shutdown_tracing(), weak=False, dispatch_uid="pynomaly-tracing-stop")


def _redirect_stdouts(instance: Any, **_: Any) -> None:
    instance.app.log.redirect_stdouts(instance.app.conf.worker_redirect_stdouts_level)


def _heartbeat_step(
    settings: Settings, component: str, deliveries: WorkerDeliveries | None = None
) -> type[bootsteps.StartStopStep]:
    """A bootstep that beats from the worker's own timer: if the event loop hangs, beats stop.

    With ``deliveries`` each beat also refreshes this worker's alive key, and every few beats (and
    once at start) the worker puts the messages of workers whose alive key expired back on their queue.
    """

    class HeartbeatStep(bootsteps.StartStopStep):
        requires = {"celery.worker.components:Timer"}

        def __init__(self, worker, **kwargs):  # type: ignore[no-untyped-def]
            super().__init__(worker, **kwargs)
            self.trefs: list[object] = []
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
            heartbeat = self.heartbeat
            if deliveries is not None:
                # Alive before the consumer starts: nothing is received (and recorded) before this.
                deliveries.start(worker.app, worker.hostname)

            def beat() -> None:
                heartbeat.beat()
                if deliveries is not None:
                    deliveries.beat()

            beat()
            self.trefs.append(worker.timer.call_repeatedly(settings.heartbeat_interval, beat))
            if deliveries is not None:
                deliveries.recover()
                interval = RECOVER_EVERY_BEATS * settings.heartbeat_interval
                self.trefs.append(worker.timer.call_repeatedly(interval, deliveries.recover))

        def stop(self, worker):  # type: ignore[no-untyped-def]
            for tref in self.trefs:
                tref.cancel()  # type: ignore[attr-defined]
            if deliveries is not None:
                deliveries.stop()
                # The timer stops here, but a warm shutdown still runs the pool's tasks: keep vouching for
                # them until the process exits (a SIGKILL ends the thread, and the key then expires).
                threading.Thread(target=deliveries.keep_alive, args=(settings.heartbeat_interval,),
                                 name="alive-until-exit", daemon=True).start()

    return HeartbeatStep


def _serve_metrics(port: int) -> None:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    start_http_server(port, registry=registry)
