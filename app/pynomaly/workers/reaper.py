"""Worker glue of :mod:`pynomaly.messaging.deliveries`: record what this worker receives, forget it when
the task ran, and (from the main process's timer) hand dead workers' messages to the living.

The main process records on ``task_received`` (also ETA/countdown retries, which sit reserved in
``unacked`` too); the pool child forgets on ``task_postrun``.  The instance id is set before the pool
forks, so children know which receipts are their worker's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

import redis
from celery import Celery, Task
from celery.signals import task_postrun, task_received

from pynomaly.config import Settings
from pynomaly.messaging.deliveries import DeliveryRegistry, KombuLayout, QueueLayout, Reaper, new_instance_id
from pynomaly.messaging.service import STEP_TASKS
from pynomaly.observability import metrics

log = logging.getLogger(__name__)

_STEP_TASKS = frozenset(STEP_TASKS.values())


class WorkerDeliveries:
    """This worker start's registry (main process) and reaper; one per worker process tree."""

    def __init__(self, settings: Settings, instance: str | None = None) -> None:
        self.settings = settings
        self.instance = instance or new_instance_id()
        self.owner = ""
        self._registry: DeliveryRegistry | None = None
        self._registry_pid = 0
        self._reaper: Reaper | None = None
        self._connection: Any = None
        self._layout: KombuLayout | None = None

    # -- main process and children ----------------------------------------------------------------
    def registry(self) -> DeliveryRegistry:
        # A pool child must not share the parent's sockets: one client per process.
        if self._registry is None or self._registry_pid != os.getpid():
            from pynomaly.storage.redis_client import redis_from_settings

            client = redis_from_settings(self.settings)
            self._registry = DeliveryRegistry(client, self.owner, self.instance, self.settings.heartbeat_stale_after)
            self._registry_pid = os.getpid()
        return self._registry

    # -- main process -----------------------------------------------------------------------------
    def start(self, app: Celery, owner: str) -> None:
        self.owner = owner
        self._registry = None
        registry = self.registry()
        registry.alive()
        self._reaper = Reaper(registry.client, lambda: self._kombu_layout(app))
        log.info("worker %s is instance %s; recovering dead workers' deliveries", owner, self.instance)

    def beat(self) -> None:
        try:
            self.registry().alive()
        except redis.RedisError as exc:  # the next beat tries again; only a stale key hands work away
            log.warning("cannot refresh the alive key of %s: %s", self.owner, exc)

    def recover(self) -> int:
        if self._reaper is None:
            return 0
        try:
            recovered = self._reaper.recover()
        except Exception as exc:  # a Redis blip: the next pass tries again
            log.warning("recovering dead workers' deliveries failed: %s", exc)
            self._close_connection()
            return 0
        for item in recovered:
            d = item.delivery
            log.warning(
                "recovered task %s (job %s, delivery %s) of dead worker %s (instance %s), received %.0fs ago: "
                "back on %s",
                d.task, d.job_id or "-", d.tag, d.owner, d.instance, max(0.0, time.time() - d.received),
                ", ".join(item.queues),
            )  # fmt: skip
            metrics.DELIVERIES_RECOVERED.labels(task=d.task).inc()
        return len(recovered)

    def stop(self) -> None:
        self._close_connection()

    def keep_alive(self, interval: float) -> None:
        """Refresh the alive key until this process exits (run from a daemon thread once the worker
        begins a warm shutdown): its pool still finishes the running tasks, up to the grace period, and
        a key left to expire meanwhile would let another worker run them a second time."""
        while True:
            self.beat()
            time.sleep(interval)

    def _kombu_layout(self, app: Celery) -> QueueLayout:
        if self._layout is None:
            self._connection = app.connection_for_write()
            self._layout = KombuLayout(self._connection.channel())
        return self._layout

    def _close_connection(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.release()
        self._connection = None
        self._layout = None


_current: WorkerDeliveries | None = None


def install(deliveries: WorkerDeliveries) -> None:
    """Called in the worker's main process before the pool forks."""
    global _current
    _current = deliveries


@task_received.connect
def _on_received(request: Any, **_: Any) -> None:
    deliveries = _current
    if deliveries is None or not deliveries.owner:
        return
    tag = getattr(request.message, "delivery_tag", None)
    if not tag:
        return
    args = request.args or ()
    job_id = str(args[0]) if request.name in _STEP_TASKS and args else None
    try:
        deliveries.registry().record(str(tag), request.name, job_id)
    except redis.RedisError as exc:  # unrecorded: the broker's visibility timeout still covers it
        log.warning("cannot record delivery %s of %s: %s", tag, request.name, exc)


@task_postrun.connect
def _on_postrun(task: Task, **_: Any) -> None:
    deliveries = _current
    if deliveries is None:
        return
    tag = (getattr(task.request, "properties", None) or {}).get("delivery_tag")
    if not tag:
        return
    try:
        deliveries.registry().forget(str(tag))
    except redis.RedisError as exc:  # a leaked record is harmless: the reaper checks unacked first
        log.warning("cannot forget delivery %s: %s", tag, exc)
