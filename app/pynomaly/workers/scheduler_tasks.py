"""Tasks that beat sends, all on the ``default`` queue.

- ``scheduled_run``: one run of a schedule, submitted as an ordinary job (same queues, events, DLQ).
  Under the task policy (:mod:`pynomaly.workers.policy`): a dataset URL that cannot be fetched, or
  Redis or the broker failing, is retried with backoff, then dead-lettered; bad data or a schedule
  that no longer validates fails the run at once (``last_error`` on the schedule).
- ``maintenance``: retention (stored datasets no schedule uses; index entries of expired jobs and
  runs; the audit log by age and count; memory reservations of finished jobs), and stream trimming.
- ``health_check``: a ``system_alert`` event (which the bridge also puts on the dashboard stream)
  when the DLQ grew or a component's heartbeat stopped, and the periodic ``health_summary``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task, shared_task

from pynomaly.messaging.events import make_event
from pynomaly.storage.components import component_health, forget_components
from pynomaly.storage.dead_letters import DeadLetter
from pynomaly.storage.redis_client import KEY_PREFIX
from pynomaly.topology import (
    S_DASHBOARD,
    TASK_HEALTH_CHECK,
    TASK_MAINTENANCE,
    TASK_SCHEDULED_RUN,
    TOPOLOGY,
)
from pynomaly.usecases.jobs import UNQUEUED_GRACE_SECONDS
from pynomaly.workers.policy import TaskRun, container

log = logging.getLogger(__name__)

ALERT_STALE = f"{KEY_PREFIX}alerts:stale-components"
ALERT_DLQ_SIZE = f"{KEY_PREFIX}alerts:dlq-size"
# Heartbeats of components gone this long (replaced pods, stopped hosts) are forgotten.
FORGET_COMPONENT_AFTER = 24 * 3600


class ScheduledRun(TaskRun):
    def __init__(self, task: Task, schedule_id: str, trigger: str) -> None:
        super().__init__(task)
        self.schedule_id = schedule_id
        self.trigger = trigger

    def body(self) -> dict[str, Any]:
        job = self.container.schedule_service.run(self.schedule_id, self.trigger)
        if job is None:
            return {"schedule_id": self.schedule_id, "status": "skipped"}
        return {"schedule_id": self.schedule_id, "status": "submitted", "job_id": job.id}

    def retrying(self, error: str, delay: float) -> None:
        log.warning("schedule %s: %s; retrying in %.1fs", self.schedule_id, error, delay)

    def failed(self, error: str) -> dict[str, Any]:
        log.warning("schedule %s: run failed: %s", self.schedule_id, error)
        return {"schedule_id": self.schedule_id, "status": "failed", "error": error}

    def dead_lettered(self, error: str, letter: DeadLetter) -> dict[str, Any]:
        return {"schedule_id": self.schedule_id, "status": "dead_lettered", "dead_letter_id": letter.id}


@shared_task(bind=True, name=TASK_SCHEDULED_RUN, max_retries=None)
def scheduled_run(self: Task, schedule_id: str, trigger: str = "beat") -> dict[str, Any]:
    return ScheduledRun(self, schedule_id, trigger)()


@shared_task(name=TASK_MAINTENANCE)
def maintenance() -> dict[str, Any]:
    """Retention (stored datasets, job index, audit log, reservations), stream trimming, and jobs whose
    queue message was never sent."""
    c = container()
    settings = c.settings
    trimmed = {s.name: c.redis.xtrim(s.name, maxlen=settings.stream_maxlen, approximate=True) for s in TOPOLOGY.streams}
    # Job records, results and reports expire by TTL (result_ttl_seconds); drop their index entries.
    _, jobs_left = c.jobs.list(limit=0)
    schedules = c.schedules
    runs_forgotten = 0
    used: set[str] = set()
    for item in schedules.all():
        if item.dataset_id:
            used.add(item.dataset_id)
        ids = schedules.run_ids(item.id, 0, 10**6)
        gone = [job_id for job_id in ids if not c.jobs.exists(job_id)]
        schedules.forget_runs(item.id, gone)
        runs_forgotten += len(gone)
    datasets_expired: list[str] = []
    if settings.dataset_retention_seconds:
        store = c.datasets
        for dataset_id in store.older_than(settings.dataset_retention_seconds):
            if dataset_id not in used:
                store.delete(dataset_id)
                datasets_expired.append(dataset_id)
    audit_trimmed = c.audit_log.trim(settings.audit_retention_seconds, settings.audit_max_records)
    # A job marked failed without a terminal transition (not queued) or expired keeps no reservation.
    reservations_dropped = c.jobs.forget_stale_reservations()
    requeued = c.job_service.requeue_unqueued(UNQUEUED_GRACE_SECONDS)
    return {
        "requeued": requeued,
        "streams_trimmed": trimmed,
        "jobs": jobs_left,
        "runs_forgotten": runs_forgotten,
        "datasets_expired": datasets_expired,
        "audit_trimmed": audit_trimmed,
        "reservations_dropped": reservations_dropped,
    }


def _alert(kind: str, subject: str, message: str, **data: Any) -> None:
    c = container()
    try:
        c.messaging.publish_event("system_alert", subject, kind=kind, severity="warning", message=message, **data)
    except Exception:
        # Kafka is down: the dashboard still shows the alert (the bridge would have put it there).
        log.exception("could not publish the %s alert; writing it to %s directly", kind, S_DASHBOARD)
        event = make_event("system_alert", subject, c.messaging.source, kind=kind, severity="warning", message=message)
        c.messaging.stream_update(S_DASHBOARD, event.flat())
    log.warning("alert %s: %s", kind, message)


@shared_task(name=TASK_HEALTH_CHECK)
def health_check() -> dict[str, Any]:
    c = container()
    settings = c.settings
    r = c.redis
    stale_after = settings.heartbeat_stale_after
    components = component_health(r, stale_after=stale_after)
    forgotten = [row["id"] for row in components if row["age_seconds"] > FORGET_COMPONENT_AFTER]
    if forgotten:
        forget_components(r, forgotten)
        r.srem(ALERT_STALE, *forgotten)
    components = [row for row in components if row["id"] not in forgotten]
    stale = sorted(row["id"] for row in components if row["stale"])
    fresh = [row["id"] for row in components if not row["stale"]]
    alerts: list[str] = []
    for component_id in stale:
        if r.sadd(ALERT_STALE, component_id):  # alert once per stop, not every check
            age = next(row["age_seconds"] for row in components if row["id"] == component_id)
            _alert(
                "heartbeat_stopped",
                component_id,
                f"component {component_id} has not sent a heartbeat for {age:.0f}s",
                component=component_id,
                age_seconds=age,
            )
            alerts.append(f"heartbeat_stopped:{component_id}")
    if fresh:
        r.srem(ALERT_STALE, *fresh)

    dlq_size = c.dead_letters.size()
    previous = int(r.get(ALERT_DLQ_SIZE) or 0)
    r.set(ALERT_DLQ_SIZE, dlq_size)
    if dlq_size > previous and dlq_size >= settings.dlq_alert_threshold:
        _alert(
            "dlq_growing",
            "dlq",
            f"the dead-letter queue grew from {previous} to {dlq_size}",
            size=dlq_size,
            previous=previous,
        )
        alerts.append("dlq_growing")

    pipe = r.pipeline(transaction=False)
    lists = [name for queue in TOPOLOGY.queues for name in queue.redis_lists()]
    for name in lists:
        pipe.llen(name)
    depths = dict(zip(lists, pipe.execute(), strict=True))
    schedules = c.schedules.all()
    summary: dict[str, Any] = {
        "jobs": c.jobs.counts_by_status(),
        "dlq_size": dlq_size,
        "queues": {q.name: sum(depths[n] for n in q.redis_lists()) for q in TOPOLOGY.queues},
        "components": len(components),
        "stale_components": stale,
        "schedules": len(schedules),
        "schedules_paused": sum(1 for s in schedules if s.paused),
        "alerts": alerts,
        "checked_at": time.time(),
    }
    try:
        c.messaging.publish_event("health_summary", "health", **summary)
    except Exception:
        log.exception("could not publish the health summary")
    return summary
