"""Celery tasks: thin glue that runs a pipeline step and decides retry or dead letter.

Transient failures retry with exponential backoff and full jitter, at most ``max_retries`` times;
then the task, its arguments, the error, the traceback and the attempt count go to the DLQ.
Permanent failures (bad data, 4xx webhooks) fail the job at once: retrying cannot fix them.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections.abc import Callable
from typing import Any

from celery import Task, shared_task
from celery.exceptions import Retry, SoftTimeLimitExceeded
from celery.signals import task_postrun, task_prerun

from pynomaly.config import load_settings
from pynomaly.domain.errors import DomainError, JobCancelled
from pynomaly.domain.jobs import Step
from pynomaly.observability import metrics
from pynomaly.storage.dead_letters import DeadLetter
from pynomaly.topology import TASK_DETECT, TASK_NOTIFY, TASK_PREPROCESS, TASK_REPORT, TOPOLOGY
from pynomaly.usecases.pipeline import PermanentFailure, Pipeline, RedeliveredTooOften
from pynomaly.wiring import Container

log = logging.getLogger(__name__)
_container: Container | None = None


def container() -> Container:
    """One per worker child process, built on first use (after the fork, so sockets are not shared)."""
    global _container
    if _container is None:
        _container = Container(load_settings(), "worker")
    return _container


def pipeline() -> Pipeline:
    c = container()
    return Pipeline(c.jobs, c.messaging, c.settings.webhook_secret, c.settings.public_url)


_task_started: dict[str, float] = {}


@task_prerun.connect
def _time_task(task_id: str, **_: Any) -> None:
    _task_started[task_id] = time.perf_counter()


@task_postrun.connect
def _record_task(task_id: str, task: Task, **_: Any) -> None:
    """Every task's run time, whatever it is (pipeline step, delivery, maintenance)."""
    started = _task_started.pop(task_id, None)
    if started is not None:
        metrics.TASK_SECONDS.labels(task=task.name).observe(time.perf_counter() - started)


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Full-jitter exponential backoff: uniform in [exp/2, exp], exp = base * 2**attempt, capped."""
    exp = min(cap, base * (2**attempt))
    return random.uniform(exp / 2, exp)


def run_step(
    task: Task,
    job_id: str,
    step: Step,
    work: Callable[[Pipeline, Any], dict[str, Any]],
    run_token: str | None = None,
) -> dict[str, Any]:
    flow = pipeline()
    try:
        return _run_step(task, flow, job_id, step, work, run_token)
    finally:
        # The step's events were sent without waiting; they must be on Kafka before the chain's
        # next step (another process, another producer) publishes its own.
        flow.flush()


def _run_step(
    task: Task,
    flow: Pipeline,
    job_id: str,
    step: Step,
    work: Callable[[Pipeline, Any], dict[str, Any]],
    run_token: str | None,
) -> dict[str, Any]:
    settings = container().settings
    attempt = task.request.retries + 1
    # kombu marks a message it put back (reject-requeue after a pool child died, the visibility
    # timeout, or our reaper after the whole worker died); Celery passes the mark on.
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
    if redelivered:
        metrics.TASK_REDELIVERIES.labels(task=task.name).inc()
    try:
        # Inside the try: a Redis blip while marking the step running is retried like any other.
        job = flow.begin(job_id, step, attempt, run_token, redelivered, max_redeliveries=settings.max_retries)
        if job is None:
            metrics.TASKS.labels(task=task.name, outcome="not_run").inc()
            task.request.chain = None
            return {"job_id": job_id, "status": "not_run"}
        output = work(flow, job)
        flow.step_done(job, step, **output)
    except JobCancelled:
        flow.cancelled(job_id)
        metrics.TASKS.labels(task=task.name, outcome="cancelled").inc()
        return {"job_id": job_id, "status": "cancelled"}
    except (DomainError, PermanentFailure) as exc:
        if not flow.job_exists(job_id):  # expired or deleted meanwhile: nothing left to fail
            log.warning("job %s no longer exists; dropping its %s message", job_id, step.value)
            return {"job_id": job_id, "status": "missing"}
        flow.failed(job_id, str(exc))
        metrics.TASKS.labels(task=task.name, outcome="failed").inc()
        # Stop the chain: later steps must not run on a failed job.
        task.request.chain = None
        return {"job_id": job_id, "status": "failed", "error": str(exc)}
    except Retry:
        raise
    except RedeliveredTooOften as exc:
        # Like an exhausted retry: running it again would only lose another worker.
        return _dead_letter(task, flow, job_id, f"{type(exc).__name__}: {exc}", attempt)
    except (Exception, SoftTimeLimitExceeded) as exc:
        error = f"{type(exc).__name__}: {exc}"
        if task.request.retries < settings.max_retries:
            delay = backoff_delay(task.request.retries, settings.retry_backoff_base, settings.retry_backoff_max)
            flow.retrying(job_id, error, attempt, delay)
            metrics.TASK_RETRIES.labels(task=task.name).inc()
            raise task.retry(exc=exc, countdown=delay, max_retries=settings.max_retries) from exc
        return _dead_letter(task, flow, job_id, error, attempt)
    metrics.TASKS.labels(task=task.name, outcome="succeeded").inc()
    return {"job_id": job_id, "status": "ok", **output}


def _dead_letter(task: Task, flow: Pipeline, job_id: str, error: str, attempt: int) -> dict[str, Any]:
    """The task, its arguments, the error and traceback go to the DLQ; the job fails, the chain stops."""
    letter = container().dead_letters.add(
        DeadLetter(
            task=task.name,
            args=list(task.request.args or [job_id]),
            kwargs=dict(task.request.kwargs or {}),
            error=error,
            traceback=traceback.format_exc(),
            attempts=attempt,
            job_id=job_id,
            queue=TOPOLOGY.task(task.name).queue,
        )
    )
    flow.failed(job_id, error, dead_letter_id=letter.id)
    metrics.DEAD_LETTERED.labels(task=task.name).inc()
    metrics.TASKS.labels(task=task.name, outcome="dead_lettered").inc()
    task.request.chain = None
    return {"job_id": job_id, "status": "dead_lettered", "dead_letter_id": letter.id}


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
