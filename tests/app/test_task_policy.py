"""The task policy: which errors retry, which fail at once, which go to the DLQ; the backoff; and the
detector boundary that turns a library's deterministic error into a permanent ``DetectorFailed``."""

from __future__ import annotations

import re
import smtplib
import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kombu.exceptions
import numpy as np
import pytest
import redis
from celery.exceptions import Retry, SoftTimeLimitExceeded
from kafka.errors import KafkaConnectionError, KafkaTimeoutError, UnsupportedVersionError

from pynomaly.config import Settings
from pynomaly.domain.detectors import run_detection
from pynomaly.domain.errors import DetectorFailed, InvalidInput, JobCancelled, NotFound
from pynomaly.domain.preprocessing import PreprocessOptions, preprocess
from pynomaly.storage.dead_letters import DeadLetter
from pynomaly.topology import Q_DEFAULT, TASK_SCHEDULED_RUN
from pynomaly.usecases.pipeline import PermanentFailure, RedeliveredTooOften
from pynomaly.usecases.remote_datasets import FetchFailed
from pynomaly.wiring import Container
from pynomaly.workers import policy
from pynomaly.workers.policy import FAILURE_OUTCOMES, TaskRun, Verdict, backoff_delay, classify, describe
from tests.e2e.support import own_redis_db

POLICY_DB = 13
EXTREME = [[1e308, -1e308], [-1e308, 1e308]] + [[float(i), float(i % 7)] for i in range(50)]


# Every error class the policy must tell apart, and its verdict.
CLASSIFIED: dict[Verdict, list[BaseException]] = {
    # Transport errors and timeouts: worth retrying.
    Verdict.TRANSIENT: [
        redis.ConnectionError("Connection reset by peer"),
        redis.TimeoutError("Timeout reading from socket"),
        redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
        kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:6379"),
        KafkaConnectionError("broker down"),
        KafkaTimeoutError("flush timed out"),
        ConnectionError("webhook https://hooks.example/x answered 503"),  # how deliveries report 5xx/429
        TimeoutError("timed out"),
        socket.gaierror(-3, "Temporary failure in name resolution"),
        smtplib.SMTPServerDisconnected("Connection unexpectedly closed"),
        FetchFailed("https://data.example/x.csv: HTTP 502"),
        SoftTimeLimitExceeded(),
    ],
    # Invalid data and refusals: the same again on every run.
    Verdict.PERMANENT: [
        InvalidInput("contamination must be > 0"),
        NotFound("job x not found"),
        DetectorFailed("detector 'hbos' failed fitting the data"),
        PermanentFailure("webhook https://hooks.example/x rejected the notification: 404"),
    ],
    # Outside the detector boundary a library-style error is a bug in our code: not retried, not
    # passed off as bad data either, but dead-lettered with its traceback.
    Verdict.UNEXPECTED: [
        ValueError("bad"),
        KeyError("anomaly_count"),
        ZeroDivisionError("division by zero"),
        UnsupportedVersionError("not retriable"),
        redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        RedeliveredTooOften("the detect step was redelivered 3 times"),
    ],
}


@pytest.mark.parametrize(
    ("exc", "verdict"),
    [(exc, verdict) for verdict, errors in CLASSIFIED.items() for exc in errors],
    ids=lambda value: value.value if isinstance(value, Verdict) else type(value).__name__,
)
def test_errors_are_classified(exc: BaseException, verdict: Verdict) -> None:
    assert classify(exc) is verdict


def test_a_domain_error_is_described_by_its_own_message_others_by_type() -> None:
    assert describe(InvalidInput("column 'x' is empty")) == "column 'x' is empty"
    assert describe(redis.ConnectionError("reset")) == "ConnectionError: reset"


def test_backoff_is_exponential_with_equal_jitter_and_capped() -> None:
    for attempt in range(6):
        exp = min(10.0, 0.5 * 2**attempt)
        samples = [backoff_delay(attempt, 0.5, 10.0) for _ in range(300)]
        assert all(exp / 2 <= s <= exp for s in samples), "equal jitter: never below half the nominal delay"
        assert min(samples) < exp * 0.6 and max(samples) > exp * 0.9, "spread over the whole [exp/2, exp]"
    assert backoff_delay(20, 60.0, 3600.0) <= 3600.0


# -- the detector boundary ------------------------------------------------------------------------
def test_a_library_error_on_the_data_is_a_detector_failed_naming_the_detector() -> None:
    with pytest.raises(DetectorFailed) as failed:
        run_detection(np.array(EXTREME), ["a", "b"], "hbos")
    message = str(failed.value)
    assert message.startswith("detector 'hbos' failed fitting the data (52 rows x 2 columns, largest |value| 1e+308)")
    assert "ValueError: Too many bins for data range" in message
    assert isinstance(failed.value.__cause__, ValueError)
    assert classify(failed.value) is Verdict.PERMANENT


def test_a_transport_error_in_a_checkpoint_is_not_taken_for_a_detector_failure() -> None:
    def checkpoint(fraction: float, _message: str) -> None:
        if fraction >= 0.5:  # after the fit: the job store is gone
            raise redis.ConnectionError("Connection reset by peer")

    with pytest.raises(redis.ConnectionError):
        run_detection(np.random.default_rng(0).normal(size=(40, 2)), ["a", "b"], "ecod", checkpoint=checkpoint)

    def cancelled(_fraction: float, _message: str) -> None:
        raise JobCancelled("job x was cancelled")

    with pytest.raises(JobCancelled):
        run_detection(np.random.default_rng(0).normal(size=(40, 2)), ["a", "b"], "ecod", checkpoint=cancelled)


def test_scaling_that_overflows_is_refused_by_name() -> None:
    options = PreprocessOptions.parse({"scaling": "minmax"})
    with pytest.raises(InvalidInput, match="row 0, column 'a'; scaling 'minmax' overflowed"):
        preprocess(np.array(EXTREME), ["a", "b"], options)


# -- a run under the policy, its dead letters in the session's real Redis -------------------------
class FakeTask:
    """The parts of a bound Celery task the policy reads: its name, request and ``retry``."""

    name = TASK_SCHEDULED_RUN

    def __init__(self, retries: int) -> None:
        self.request = SimpleNamespace(retries=retries, args=["schedule-1"], kwargs={"trigger": "beat"})
        self.retried: dict[str, Any] = {}

    def retry(self, exc: BaseException, countdown: float, max_retries: int) -> Retry:
        self.retried = {"exc": exc, "countdown": countdown, "max_retries": max_retries}
        return Retry(exc=exc, when=countdown)


class Failing(TaskRun):
    ignore = (NotFound,)

    def __init__(self, task: Any, exc: Exception) -> None:
        super().__init__(task)
        self.exc = exc
        self.calls: list[str] = []

    def body(self) -> dict[str, Any]:
        raise self.exc

    def ignored(self, exc: Exception) -> dict[str, Any]:
        self.calls.append("ignored")
        return {"status": "expired"}

    def retrying(self, error: str, delay: float) -> None:
        self.calls.append(f"retrying {error}")

    def failed(self, error: str) -> dict[str, Any]:
        self.calls.append(f"failed {error}")
        return super().failed(error)

    def dead_lettered(self, error: str, letter: DeadLetter) -> dict[str, Any]:
        self.calls.append(f"dead_lettered {error}")
        return super().dead_lettered(error, letter)


@pytest.fixture
def worker_container(settings: Settings, redis_server) -> Iterator[Container]:  # type: ignore[no-untyped-def]
    with own_redis_db(settings, redis_server, POLICY_DB) as isolated:
        c = Container(isolated, "tests")
        previous, policy._container = policy._container, c
        try:
            yield c
        finally:
            policy._container = previous
            c.close()


@pytest.mark.services
def test_a_run_retries_transient_fails_permanent_and_dead_letters_the_rest(worker_container: Container) -> None:
    c = worker_container
    limit = c.settings.max_retries
    assert limit >= 1

    task = FakeTask(retries=0)
    run = Failing(task, redis.ConnectionError("Connection reset by peer"))
    with pytest.raises(Retry):
        run()
    base = c.settings.retry_backoff_base
    assert base / 2 <= task.retried["countdown"] <= base and task.retried["max_retries"] == limit
    assert run.calls == ["retrying ConnectionError: Connection reset by peer"] and c.dead_letters.size() == 0

    # The last allowed attempt failing transiently goes to the DLQ with its traceback.
    task = FakeTask(retries=limit)
    run = Failing(task, redis.ConnectionError("Connection reset by peer"))
    result = run()
    assert result["status"] == "dead_lettered" and not task.retried
    letter = c.dead_letters.get(result["dead_letter_id"])
    assert (letter.task, letter.queue, letter.attempts) == (TASK_SCHEDULED_RUN, Q_DEFAULT, limit + 1)
    assert letter.args == ["schedule-1"] and letter.kwargs == {"trigger": "beat"}
    assert "Traceback" in letter.traceback and "redis.exceptions.ConnectionError" in letter.traceback

    # Permanent: failed on the first attempt, no retry, no letter.
    task = FakeTask(retries=0)
    run = Failing(task, DetectorFailed("detector 'hbos' failed fitting the data"))
    assert run() == {"status": "failed", "error": "detector 'hbos' failed fitting the data"}
    assert run.calls == ["failed detector 'hbos' failed fitting the data"] and not task.retried
    assert c.dead_letters.size() == 1

    # Unexpected: no retry either, straight to the DLQ on the first attempt.
    task = FakeTask(retries=0)
    run = Failing(task, KeyError("anomaly_count"))
    result = run()
    assert result["status"] == "dead_lettered" and not task.retried
    assert c.dead_letters.get(result["dead_letter_id"]).attempts == 1
    assert run.calls == ["dead_lettered KeyError: 'anomaly_count'"]

    # Declared as an expected end: neither a failure nor a letter.
    run = Failing(FakeTask(retries=0), NotFound("job x not found"))
    assert run() == {"status": "expired"} and run.calls == ["ignored"]
    assert c.dead_letters.size() == 2


@pytest.mark.services
def test_a_task_that_keeps_permanent_failures_dead_letters_them_at_once(worker_container: Container) -> None:
    class Kept(Failing):
        dead_letter_permanent = True

    task = FakeTask(retries=0)
    run = Kept(task, PermanentFailure("webhook https://hooks.example/x rejected the notification: 404"))
    result = run()
    assert result["status"] == "dead_lettered" and not task.retried
    letter = worker_container.dead_letters.get(result["dead_letter_id"])
    assert letter.attempts == 1 and letter.error.startswith("PermanentFailure: webhook")


def test_the_chart_s_failure_alert_counts_the_outcomes_the_policy_records() -> None:
    rule = (Path(__file__).resolve().parents[2] / "charts/pynomaly/templates/prometheusrule.yaml").read_text()
    selector = re.search(r'pynomaly_tasks_total\{.*?outcome=~"([^"]+)"', rule)
    assert selector, "the PynomalyTaskFailureRate alert selects task outcomes"
    assert set(selector.group(1).split("|")) == {o.value for o in FAILURE_OUTCOMES}
