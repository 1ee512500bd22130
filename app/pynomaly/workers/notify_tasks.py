"""The delivery task: one notification target of one job, with its own retries and DLQ entry.

A failing target never blocks the other targets or the job: each target is its own task on the
``notifications`` queue.  Transient failures (network, 5xx/429, SMTP 4xx) retry with the same
full-jitter backoff as job steps, at most ``max_retries`` times, then the delivery goes to the
dead-letter queue (replayable with ``POST /v1/dlq/{id}/replay``).  A failure retrying cannot fix
(a webhook's 4xx, an SMTP 5xx, SMTP not configured) goes to the DLQ at once.  The job's own
status is never changed here.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

from celery import Task, shared_task
from celery.exceptions import Retry

from pynomaly.domain.errors import NotFound
from pynomaly.observability import metrics
from pynomaly.storage.dead_letters import DeadLetter
from pynomaly.topology import TASK_DELIVER, TOPOLOGY
from pynomaly.usecases.jobs import webhook_policy
from pynomaly.usecases.notifications import Deliverer, SmtpConfig, record
from pynomaly.usecases.pipeline import PermanentFailure
from pynomaly.workers.tasks import backoff_delay, container

log = logging.getLogger(__name__)


def deliverer() -> Deliverer:
    c = container()
    s = c.settings
    webhooks = webhook_policy(s.webhook_url_allowlist)
    return Deliverer(c.jobs, c.messaging, s.webhook_secret, s.public_url, SmtpConfig.from_settings(s), webhooks)


@shared_task(bind=True, name=TASK_DELIVER, max_retries=None)
def deliver_notification(self: Task, job_id: str, index: int, outcome: str) -> dict[str, Any]:
    c = container()
    settings = c.settings
    flow = deliverer()
    attempt = self.request.retries + 1
    started = time.perf_counter()
    target: dict[str, Any] = {}
    try:
        job = c.jobs.get(job_id)
        target = flow.target(job, index)
        output = flow.deliver(job_id, index, outcome, attempt)
    except NotFound:
        log.warning("notification %s/%s: the job expired; nothing to deliver", job_id, index)
        metrics.TASKS.labels(task=self.name, outcome="failed").inc()
        return {"job_id": job_id, "index": index, "status": "expired"}
    except Retry:
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        permanent = isinstance(exc, PermanentFailure)
        if not permanent and self.request.retries < settings.max_retries:
            delay = backoff_delay(self.request.retries, settings.retry_backoff_base, settings.retry_backoff_max)
            record(c.messaging, job_id, index, target, outcome, "retrying", attempt, error)
            metrics.TASK_RETRIES.labels(task=self.name).inc()
            raise self.retry(exc=exc, countdown=delay, max_retries=settings.max_retries) from exc
        letter = c.dead_letters.add(
            DeadLetter(
                task=self.name,
                args=[job_id, index, outcome],
                kwargs={},
                error=error,
                traceback=traceback.format_exc(),
                attempts=attempt,
                job_id=job_id,
                queue=TOPOLOGY.task(self.name).queue,
            )
        )
        record(c.messaging, job_id, index, target, outcome, "dead_lettered", attempt, f"{error} (dlq {letter.id})")
        metrics.DEAD_LETTERED.labels(task=self.name).inc()
        metrics.TASKS.labels(task=self.name, outcome="dead_lettered").inc()
        log.warning("notification %s/%s dead-lettered after %d attempt(s): %s", job_id, index, attempt, error)
        return {"job_id": job_id, "index": index, "status": "dead_lettered", "dead_letter_id": letter.id}
    finally:
        metrics.TASK_SECONDS.labels(task=self.name).observe(time.perf_counter() - started)
    metrics.TASKS.labels(task=self.name, outcome="succeeded").inc()
    return {**output, "status": "delivered"}
