"""The pipeline step tasks: each runs one step of a job under the task policy.

Retry, backoff, dead letter and error classification are the policy's
(:mod:`pynomaly.workers.policy`); a step only says what each outcome means for its job: a retry
marks the job retrying, a permanent failure (bad data, a detector that fails on the data) fails the
job at once with its message and stops the chain, a dead letter fails the job with the letter's id.
A cancelled job stops at its next checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Task, shared_task

from pynomaly.domain.errors import JobCancelled
from pynomaly.domain.jobs import Step
from pynomaly.observability import metrics
from pynomaly.storage.dead_letters import DeadLetter
from pynomaly.topology import TASK_DETECT, TASK_NOTIFY, TASK_PREPROCESS, TASK_REPORT
from pynomaly.usecases.pipeline import Pipeline
from pynomaly.workers.policy import Outcome, TaskRun, container

log = logging.getLogger(__name__)

Work = Callable[[Pipeline, Any], dict[str, Any]]


def pipeline() -> Pipeline:
    c = container()
    return Pipeline(c.jobs, c.messaging, c.settings.webhook_secret, c.settings.public_url, c.models)


class StepRun(TaskRun):
    """One step of one job."""

    job_id: str
    ignore = (JobCancelled,)

    def __init__(self, task: Task, job_id: str, step: Step, work: Work, run_token: str | None) -> None:
        super().__init__(task)
        self.job_id = job_id
        self.step = step
        self.work = work
        self.run_token = run_token
        self.flow = pipeline()

    def __call__(self) -> dict[str, Any]:
        try:
            return super().__call__()
        finally:
            # The step's events were sent without waiting; they must be on Kafka before the chain's
            # next step (another process, another producer) publishes its own.
            self.flow.flush()

    def body(self) -> dict[str, Any]:
        # kombu marks a message it put back (reject-requeue after a pool child died, the visibility
        # timeout, or our reaper after the whole worker died); Celery passes the mark on.
        redelivered = bool((self.task.request.delivery_info or {}).get("redelivered"))
        if redelivered:
            metrics.TASK_REDELIVERIES.labels(task=self.task.name).inc()
        # Inside the policy: a Redis blip while marking the step running is retried like any other;
        # past max_retries redeliveries, begin raises RedeliveredTooOften (unexpected: the DLQ).
        job = self.flow.begin(
            self.job_id, self.step, self.attempt, self.run_token, redelivered, self.settings.max_retries
        )
        if job is None:
            self.outcome = Outcome.NOT_RUN
            self._stop_chain()
            return {"job_id": self.job_id, "status": "not_run"}
        output = self.work(self.flow, job)
        self.flow.step_done(job, self.step, **output)
        return {"job_id": self.job_id, "status": "ok", **output}

    def ignored(self, exc: Exception) -> dict[str, Any]:
        self.flow.cancelled(self.job_id)
        self.outcome = Outcome.CANCELLED
        return {"job_id": self.job_id, "status": "cancelled"}

    def retrying(self, error: str, delay: float) -> None:
        self.flow.retrying(self.job_id, error, self.attempt, delay)

    def failed(self, error: str) -> dict[str, Any]:
        if not self.flow.job_exists(self.job_id):  # expired or deleted meanwhile: nothing left to fail
            log.warning("job %s no longer exists; dropping its %s message", self.job_id, self.step.value)
            return {"job_id": self.job_id, "status": "missing"}
        self.flow.failed(self.job_id, error)
        self._stop_chain()
        return {"job_id": self.job_id, "status": "failed", "error": error}

    def dead_lettered(self, error: str, letter: DeadLetter) -> dict[str, Any]:
        self.flow.failed(self.job_id, error, dead_letter_id=letter.id)
        self._stop_chain()
        return {"job_id": self.job_id, "status": "dead_lettered", "dead_letter_id": letter.id}

    def _stop_chain(self) -> None:
        """Later steps must not run on a job that failed or must not run."""
        self.task.request.chain = None


def run_step(task: Task, job_id: str, step: Step, work: Work, run_token: str | None = None) -> dict[str, Any]:
    return StepRun(task, job_id, step, work, run_token)()


@shared_task(bind=True, name=TASK_PREPROCESS, max_retries=None)
def preprocess_data(self: Task, job_id: str, run_token: str | None = None) -> dict[str, Any]:
    return run_step(self, job_id, Step.PREPROCESS, lambda flow, job: flow.preprocess(job), run_token)


@shared_task(bind=True, name=TASK_DETECT, max_retries=None)
def detect_anomalies(self: Task, job_id: str, run_token: str | None = None) -> dict[str, Any]:
    return run_step(self, job_id, Step.DETECT, lambda flow, job: flow.detect(job), run_token)


@shared_task(bind=True, name=TASK_REPORT, max_retries=None)
def generate_report(self: Task, job_id: str, run_token: str | None = None) -> dict[str, Any]:
    return run_step(self, job_id, Step.REPORT, lambda flow, job: flow.report(job), run_token)


@shared_task(bind=True, name=TASK_NOTIFY, max_retries=None)
def send_notification(self: Task, job_id: str, run_token: str | None = None) -> dict[str, Any]:
    return run_step(self, job_id, Step.NOTIFY, lambda flow, job: flow.notify(job), run_token)


# Beat's tasks (scheduled runs, maintenance, health checks) live in their own module.
import pynomaly.workers.scheduler_tasks  # noqa: E402,F401
