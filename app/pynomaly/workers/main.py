"""Starts a Celery worker for one worker pool of the topology (the chart runs one Deployment each)."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import bootsteps

from pynomaly.config import Settings
from pynomaly.observability.logs import celery_notices_as_log_lines
from pynomaly.topology import TOPOLOGY

if TYPE_CHECKING:
    from celery.worker import WorkController
    from kombu.asynchronous.timer import Entry
    from prometheus_client import CollectorRegistry

    from pynomaly.observability.heartbeat import Heartbeat
    from pynomaly.observability.ops import SnapshotPublisher
    from pynomaly.workers.reaper import WorkerDeliveries

log = logging.getLogger(__name__)
# Dead workers' deliveries are looked for every this many heartbeats: a dead worker's task waits at
# most the stale threshold plus this long before it is back on its queue.
RECOVER_EVERY_BEATS = 2


def run_worker(settings: Settings, pool: str | None, queues: list[str] | None, concurrency: int | None) -> None:
    # Tasks run in child processes: their counters meet in a shared directory (must be set before
    # prometheus_client is imported anywhere in this process).  Always, not only with a metrics port:
    # the dashboard's operations view reads the same counters (observability/ops.py).
    _multiprocess_metrics_dir()

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
    from pynomaly.observability.ops import SnapshotPublisher
    from pynomaly.storage.redis_client import redis_from_settings
    from pynomaly.workers.reaper import WorkerDeliveries, install

    deliveries = WorkerDeliveries(settings)
    install(deliveries)  # before the pool forks: children forget their own receipts
    registry = _metrics_registry()
    snapshots = SnapshotPublisher(f"worker:{node}", registry, lambda: redis_from_settings(settings))
    app.steps["worker"].add(_heartbeat_step(settings, f"worker:{node}", deliveries, snapshots))
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, registry=registry)
    # Celery's banner and shutdown notices are no log lines: in JSON lines they would break the
    # one-object-per-line promise.
    argv: list[str] = []
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
    settings: Settings,
    component: str,
    deliveries: WorkerDeliveries | None = None,
    snapshots: SnapshotPublisher | None = None,
) -> type[bootsteps.StartStopStep]:
    """A bootstep that beats from the worker's own timer: if the event loop hangs, beats stop.

    With ``deliveries`` each beat also refreshes this worker's alive key, and every few beats (and
    once at start) the worker puts the messages of workers whose alive key expired back on their queue.
    With ``snapshots`` each beat also writes the worker's task figures for the operations view.
    """

    class HeartbeatStep(bootsteps.StartStopStep):
        requires = {"celery.worker.components:Timer"}

        def __init__(self, worker: WorkController, **kwargs: Any) -> None:
            super().__init__(worker, **kwargs)
            self.trefs: list[Entry] = []
            self.heartbeat: Heartbeat | None = None

        def start(self, worker: WorkController) -> None:
            from pynomaly.observability.heartbeat import Heartbeat
            from pynomaly.storage.redis_client import redis_from_settings

            client = redis_from_settings(settings)
            self.heartbeat = Heartbeat(settings, component, client)
            heartbeat = self.heartbeat
            if deliveries is not None:
                # Alive before the consumer starts: nothing is received (and recorded) before this.
                deliveries.start(worker.app, worker.hostname)

            def beat() -> None:
                heartbeat.beat()
                if deliveries is not None:
                    deliveries.beat()
                if snapshots is not None:
                    snapshots.publish()

            beat()
            self.trefs.append(worker.timer.call_repeatedly(settings.heartbeat_interval, beat))
            if deliveries is not None:
                deliveries.recover()
                interval = RECOVER_EVERY_BEATS * settings.heartbeat_interval
                self.trefs.append(worker.timer.call_repeatedly(interval, deliveries.recover))

        def stop(self, worker: WorkController) -> None:
            for tref in self.trefs:
                tref.cancel()
            if deliveries is not None:
                deliveries.stop()
                # The timer stops here, but a warm shutdown still runs the pool's tasks: keep vouching for
                # them until the process exits (a SIGKILL ends the thread, and the key then expires).
                threading.Thread(
                    target=deliveries.keep_alive,
                    args=(settings.heartbeat_interval,),
                    name="alive-until-exit",
                    daemon=True,
                ).start()

    return HeartbeatStep


METRICS_DIR_PREFIX = "pynomaly-metrics-"


def _multiprocess_metrics_dir() -> None:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        return  # given by whoever started the worker: theirs to clean
    # A worker killed with SIGKILL never runs its exit hook: remove the folders of dead workers first.
    for old in Path(tempfile.gettempdir()).glob(f"{METRICS_DIR_PREFIX}*-*"):
        pid = old.name[len(METRICS_DIR_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    path = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:  # not from a pool child that happens to run atexit hooks
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: not ours to judge (nor its folder to delete)
    return True


def _metrics_registry() -> CollectorRegistry:
    """The worker's metrics, its pool children's included: what its /metrics serves."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return registry
