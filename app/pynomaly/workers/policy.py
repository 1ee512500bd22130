"""The task policy: one place for timing, outcome metrics, error classification, backoff and the DLQ.

Every task with a failure policy runs as a :class:`TaskRun` subclass that implements ``body`` and
overrides only the hooks whose behaviour differs (what a retry or a failure records, which errors
end the run quietly).  :func:`classify` sorts what the body raised:

- **transient** (:data:`TRANSIENT_ERRORS`): transport errors and timeouts — Redis connection,
  timeout, read-only replica or out-of-memory during a failover; retriable Kafka errors; the broker
  (kombu); ``OSError`` (sockets, DNS, SMTP; deliveries raise ``ConnectionError`` for a webhook's
  5xx/429, a timeout or an SMTP 4xx); a dataset URL that could not be fetched; the soft time limit.
  Retried with exponential backoff and *equal jitter* (:func:`backoff_delay`) at most
  ``max_retries`` times, then dead-lettered.
- **permanent** (:data:`PERMANENT_ERRORS`): invalid data and refusals — ``DomainError`` (e.g.
  ``InvalidInput``, a missing blob's ``NotFound``), ``PermanentFailure`` (a webhook's 4xx, SMTP 5xx),
  and ``DetectorFailed``.  The run fails at once with the error's own message; no retry, and no
  dead letter unless the task keeps them (``dead_letter_permanent``: deliveries, to replay them).
- **unexpected**: anything else — a bug, or the worker lost every time (``RedeliveredTooOften``).
  Retrying cannot be expected to help, so the run fails at once and goes to the dead-letter queue
  with its traceback, to be replayed once fixed.

Where the boundary is: a ``ValueError`` is *not* permanent by itself (in our own code it is a bug).
Deterministic library errors become permanent where the library is called on the job's data:
:func:`pynomaly.domain.detectors.run_detection` wraps the model's fit and scoring and raises
``DetectorFailed`` naming the detector and the error (``hbos`` on values near ±1e308: "Too many
bins for data range").  Only transport errors and timeouts are retried.

Every task's run time (``pynomaly_task_duration_seconds``) is recorded once, by the Celery signals below.
"""

from __future__ import annotations

import enum
import logging
import random
import time
import traceback
from contextvars import Token
from typing import Any, ClassVar

import kombu.exceptions
import redis.exceptions
from celery import Task
from celery.exceptions import Retry, SoftTimeLimitExceeded
from celery.signals import task_postrun, task_prerun
from kafka.errors import KafkaError

from pynomaly.config import load_settings
from pynomaly.domain.errors import DomainError
from pynomaly.observability import logs, metrics
from pynomaly.storage.dead_letters import DeadLetter
from pynomaly.topology import TOPOLOGY
from pynomaly.usecases.pipeline import PermanentFailure
from pynomaly.usecases.remote_datasets import FetchFailed
from pynomaly.wiring import Container

log = logging.getLogger(__name__)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,  # also BusyLoadingError (a restarted Redis loading its AOF)
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a write reached a replica during a failover
    redis.exceptions.OutOfMemoryError,  # noeviction: writes are refused until memory is freed
    redis.exceptions.WatchError,  # an optimistic transaction lost to concurrent writers
    kombu.exceptions.OperationalError,  # the broker could not take a task
    OSError,  # sockets, DNS, builtin ConnectionError/TimeoutError, smtplib.SMTPException
    FetchFailed,
    SoftTimeLimitExceeded,
)
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (DomainError, PermanentFailure)


class Verdict(enum.Enum):
    TRANSIENT = "transient"  # retry with backoff, then the DLQ
    PERMANENT = "permanent"  # fail now, no retry
    UNEXPECTED = "unexpected"  # fail now into the DLQ


def classify(exc: BaseException) -> Verdict:
    if isinstance(exc, PERMANENT_ERRORS):
        return Verdict.PERMANENT
    if isinstance(exc, TRANSIENT_ERRORS):
        return Verdict.TRANSIENT
    if isinstance(exc, KafkaError) and exc.retriable:  # kafka-python marks the ones worth retrying
        return Verdict.TRANSIENT
    return Verdict.UNEXPECTED


def describe(exc: BaseException) -> str:
    """The error as the job, the delivery log and the DLQ show it: a domain error's own message
    (written for the user), otherwise the exception's type and message."""
    return str(exc) if isinstance(exc, DomainError) else f"{type(exc).__name__}: {exc}"


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with *equal jitter*: uniform in [exp/2, exp], exp = min(cap, base * 2**attempt).

    Chosen over full jitter (uniform in [0, exp]) on purpose: a retry never comes sooner than half
    the nominal delay, so a service that is down is not hit again at once, while the spread still
    keeps many failed tasks from retrying in step.
    """
    exp = min(cap, base * (2**attempt))
    return random.uniform(exp / 2, exp)


class Outcome(enum.StrEnum):
    """The ``outcome`` label of ``pynomaly_tasks_total`` (the chart's failure alert counts the failures)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    CANCELLED = "cancelled"
    NOT_RUN = "not_run"


FAILURE_OUTCOMES = (Outcome.FAILED, Outcome.DEAD_LETTERED)

_container: Container | None = None


def container() -> Container:
    """One per worker child process, built on first use (after the fork, so sockets are not shared)."""
    global _container
    if _container is None:
        _container = Container(load_settings(), "worker")
    return _container


class TaskRun:
    """One run of a task under the policy.  Subclasses implement :meth:`body` and the hooks that differ."""

    #: Errors that end the run as an expected outcome (see :meth:`ignored`), not as a failure.
    ignore: ClassVar[tuple[type[Exception], ...]] = ()
    #: Whether permanent failures go to the dead-letter queue too (to be replayed once the cause is fixed).
    dead_letter_permanent: ClassVar[bool] = False

    def __init__(self, task: Task) -> None:
        self.task = task
        self.container = container()
        self.settings = self.container.settings
        self.attempt = task.request.retries + 1
        self.job_id: str | None = None  # the dead letter's job, when the task works for one
        self.outcome = Outcome.SUCCEEDED  # the body may say otherwise (e.g. not run)

    def body(self) -> dict[str, Any]:
        raise NotImplementedError

    # -- hooks -------------------------------------------------------------------------------------
    def ignored(self, exc: Exception) -> dict[str, Any]:
        """One of :attr:`ignore` was raised; set :attr:`outcome` and say what happened."""
        raise exc

    def retrying(self, error: str, delay: float) -> None:
        """A transient failure will be retried in ``delay`` seconds."""

    def failed(self, error: str) -> dict[str, Any]:
        """A permanent failure (not dead-lettered)."""
        return {"status": "failed", "error": error}

    def dead_lettered(self, error: str, letter: DeadLetter) -> dict[str, Any]:
        """The run is in the DLQ: retries ran out, or it failed in a way retrying cannot be expected to fix."""
        return {"status": "dead_lettered", "dead_letter_id": letter.id}

    # -- the policy --------------------------------------------------------------------------------
    def __call__(self) -> dict[str, Any]:
        logs.bind(job_id=self.job_id)  # into the task's scope (task_prerun): Celery's own lines show it too
        try:
            result = self.body()
        except Retry:
            raise
        except self.ignore as exc:
            self.outcome = Outcome.FAILED
            result = self.ignored(exc)
        except Exception as exc:  # classified: every other error is retried, failed or dead-lettered
            result = self._fail(exc)
        metrics.TASKS.labels(task=self.task.name, outcome=self.outcome.value).inc()
        return result

    def _fail(self, exc: Exception) -> dict[str, Any]:
        verdict = classify(exc)
        error = describe(exc)
        retries = self.task.request.retries
        if verdict is Verdict.TRANSIENT and retries < self.settings.max_retries:
            delay = backoff_delay(retries, self.settings.retry_backoff_base, self.settings.retry_backoff_max)
            self.retrying(error, delay)
            metrics.TASK_RETRIES.labels(task=self.task.name).inc()
            raise self.task.retry(exc=exc, countdown=delay, max_retries=self.settings.max_retries) from exc
        if verdict is Verdict.PERMANENT and not self.dead_letter_permanent:
            self.outcome = Outcome.FAILED
            return self.failed(error)
        letter = self.container.dead_letters.add(
            DeadLetter(
                task=self.task.name,
                args=list(self.task.request.args or []),
                kwargs=dict(self.task.request.kwargs or {}),
                error=error,
                traceback="".join(traceback.format_exception(exc)),
                attempts=self.attempt,
                job_id=self.job_id,
                queue=TOPOLOGY.task(self.task.name).queue,
            )
        )
        metrics.DEAD_LETTERED.labels(task=self.task.name).inc()
        self.outcome = Outcome.DEAD_LETTERED
        log.warning("%s dead-lettered (%s) after %d attempt(s): %s", self.task.name, verdict.value, self.attempt, error)
        return self.dead_lettered(error, letter)


_task_started: dict[str, float] = {}
_task_scopes: dict[str, Token[dict[str, str] | None]] = {}


@task_prerun.connect
def _time_task(task_id: str, **_: Any) -> None:
    _task_started[task_id] = time.perf_counter()
    _task_scopes[task_id] = logs.push(task_id=task_id)  # every line of the run names its task


@task_postrun.connect
def _record_task(task_id: str, task: Task, **_: Any) -> None:
    """Every task's run time, whatever it is (pipeline step, delivery, maintenance), recorded once."""
    scope = _task_scopes.pop(task_id, None)
    if scope is not None:
        logs.pop(scope)
    started = _task_started.pop(task_id, None)
    if started is not None:
        metrics.TASK_SECONDS.labels(task=task.name).observe(time.perf_counter() - started)
