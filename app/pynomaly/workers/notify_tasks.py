"""The delivery task: one notification target of one job, with its own retries and DLQ entry.

A failing target never blocks the other targets or the job: each target is its own task on the
``notifications`` queue.  Transient failures (network, 5xx/429, SMTP 4xx) retry under the task
policy (:mod:`pynomaly.workers.policy`: equal-jitter backoff, at most ``max_retries`` times), then
the delivery goes to the dead-letter queue (replayable with ``POST /v1/dlq/{id}/replay``).  A failure
retrying cannot fix (a webhook's 4xx, an SMTP 5xx, SMTP not configured) goes to the DLQ at once.
Every outcome is recorded on ``notifications:stream``.  The job's own status is never changed here.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task

from pynomaly.domain.errors import NotFound
from pynomaly.storage.dead_letters import DeadLetter
from pynomaly.topology import TASK_DELIVER, TASK_DELIVER_ANOMALY
from pynomaly.usecases.jobs import webhook_policy
from pynomaly.usecases.notifications import Deliverer, SmtpConfig, record, record_anomaly
from pynomaly.workers.policy import TaskRun, container

log = logging.getLogger(__name__)


def deliverer() -> Deliverer:
    c = container()
    s = c.settings
    webhooks = webhook_policy(s.webhook_url_allowlist)
    return Deliverer(c.jobs, c.messaging, s.webhook_secret, s.public_url, SmtpConfig.from_settings(s), webhooks)


class DeliveryRun(TaskRun):
    """One notification target of one job."""

    job_id: str
    ignore = (NotFound,)  # the job expired: nothing left to deliver
    dead_letter_permanent = True  # replayable once the target is fixed

    def __init__(self, task: Task, job_id: str, index: int, outcome: str) -> None:
        super().__init__(task)
        self.job_id = job_id
        self.index = index
        self.notify_on = outcome
        self.target: dict[str, Any] = {}  # known once the job is read; the records name it

    def body(self) -> dict[str, Any]:
        flow = deliverer()
        self.target = flow.target(self.container.jobs.get(self.job_id), self.index)
        output = flow.deliver(self.job_id, self.index, self.notify_on, self.attempt)
        return {**output, "status": "delivered"}

    def ignored(self, exc: Exception) -> dict[str, Any]:
        log.warning("notification %s/%s: the job expired; nothing to deliver", self.job_id, self.index)
        return {"job_id": self.job_id, "index": self.index, "status": "expired"}

    def retrying(self, error: str, delay: float) -> None:
        self._record("retrying", error)

    def dead_lettered(self, error: str, letter: DeadLetter) -> dict[str, Any]:
        self._record("dead_lettered", f"{error} (dlq {letter.id})")
        return {"job_id": self.job_id, "index": self.index, "status": "dead_lettered", "dead_letter_id": letter.id}

    def _record(self, status: str, detail: str) -> None:
        record(
            self.container.messaging, self.job_id, self.index, self.target, self.notify_on, status, self.attempt, detail
        )


@shared_task(bind=True, name=TASK_DELIVER, max_retries=None)
def deliver_notification(self: Task, job_id: str, index: int, outcome: str) -> dict[str, Any]:
    return DeliveryRun(self, job_id, index, outcome)()


class AnomalyDeliveryRun(TaskRun):
    """One live anomaly of a stream binding to one target: the same retries, DLQ and signed webhooks
    as a job's deliveries; its outcomes are entries on notifications:stream."""

    dead_letter_permanent = True

    def __init__(self, task: Task, anomaly: dict[str, Any], target: dict[str, Any], index: int) -> None:
        super().__init__(task)
        self.anomaly = anomaly
        self.target = target
        self.index = index

    def body(self) -> dict[str, Any]:
        output = deliverer().deliver_anomaly(self.anomaly, self.target, self.attempt, self.index)
        return {**output, "status": "delivered"}

    def retrying(self, error: str, delay: float) -> None:
        record_anomaly(self.container.messaging, self.anomaly, self.index, self.target, "retrying", self.attempt, error)

    def dead_lettered(self, error: str, letter: DeadLetter) -> dict[str, Any]:
        detail = f"{error} (dlq {letter.id})"
        record_anomaly(
            self.container.messaging, self.anomaly, self.index, self.target, "dead_lettered", self.attempt, detail
        )
        return {"event_id": self.anomaly.get("event_id"), "status": "dead_lettered", "dead_letter_id": letter.id}


@shared_task(bind=True, name=TASK_DELIVER_ANOMALY, max_retries=None)
def deliver_anomaly_notification(
    self: Task, anomaly: dict[str, Any], target: dict[str, Any], index: int = 0
) -> dict[str, Any]:
    return AnomalyDeliveryRun(self, anomaly, target, index)()
