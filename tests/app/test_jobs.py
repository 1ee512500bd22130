"""Job rules: status transitions, pipeline steps, priorities."""

from __future__ import annotations

import pytest

from pynomaly.domain.errors import Conflict, InvalidInput
from pynomaly.domain.jobs import Job, JobStatus, Step, check_transition, parse_priority, parse_steps
from pynomaly.topology import PRIORITY_STEPS, TOPOLOGY, Priority

S = JobStatus


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.QUEUED, S.RUNNING),
        (S.QUEUED, S.CANCELLED),
        (S.RUNNING, S.RUNNING),
        (S.RUNNING, S.RETRYING),
        (S.RUNNING, S.COMPLETED),
        (S.RETRYING, S.RUNNING),
        (S.RETRYING, S.FAILED),
        (S.FAILED, S.QUEUED),
        (S.CANCELLED, S.QUEUED),
    ],
)
def test_allowed_transitions(current: JobStatus, target: JobStatus) -> None:
    check_transition(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.QUEUED, S.COMPLETED),
        (S.COMPLETED, S.QUEUED),
        (S.COMPLETED, S.RUNNING),
        (S.CANCELLED, S.RUNNING),
        (S.FAILED, S.COMPLETED),
        (S.RETRYING, S.COMPLETED),
    ],
)
def test_refused_transitions(current: JobStatus, target: JobStatus) -> None:
    with pytest.raises(Conflict, match=f"job is {current.value}"):
        check_transition(current, target)


def test_terminal_statuses() -> None:
    assert {s for s in S if s.terminal} == {S.COMPLETED, S.FAILED, S.CANCELLED}


def test_steps_default_order_and_validation() -> None:
    assert parse_steps(None, has_webhook=False) == [Step.PREPROCESS, Step.DETECT]
    assert parse_steps(None, has_webhook=True) == list(Step)
    assert parse_steps(["report", "preprocess"], has_webhook=False) == [Step.PREPROCESS, Step.DETECT, Step.REPORT]
    assert parse_steps([], has_webhook=False) == [Step.DETECT]
    with pytest.raises(InvalidInput, match="webhook"):
        parse_steps(["notify"], has_webhook=False)
    with pytest.raises(InvalidInput, match="steps must be among"):
        parse_steps(["train"], has_webhook=False)


def test_priorities_map_to_celery_steps_critical_first() -> None:
    assert parse_priority(None) is Priority.NORMAL
    assert parse_priority("CRITICAL") is Priority.CRITICAL
    with pytest.raises(InvalidInput):
        parse_priority("urgent")
    order = sorted(Priority, key=lambda p: p.step)
    assert order == [Priority.CRITICAL, Priority.HIGH, Priority.NORMAL, Priority.LOW]
    lists = TOPOLOGY.queue("anomaly_detection").redis_lists()
    assert lists[0] == "anomaly_detection" and len(lists) == len(PRIORITY_STEPS)


def test_job_round_trip_ignores_unknown_fields() -> None:
    job = Job("j1", "ecod", {}, 0.1, None, "normal", ["detect"], {}, {"rows": 3})
    data = job.as_dict() | {"added_later": 1}
    assert Job.from_dict(data) == job


def test_redeliveries_are_counted_per_step_and_in_total() -> None:
    job = Job("j", "iforest", {}, 0.1, None, "normal", ["preprocess", "detect"], {}, {})
    assert job.record_redelivery("preprocess") == 1
    assert job.record_redelivery("detect") == 1
    assert job.record_redelivery("detect") == 2
    assert job.redeliveries == 3 and job.step_redeliveries == {"preprocess": 1, "detect": 2}
    assert Job.from_dict(job.as_dict()).step_redeliveries == {"preprocess": 1, "detect": 2}
