"""Jobs: what a user asked for, where it stands, and which status changes are allowed."""

from __future__ import annotations

import enum
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from pynomaly.domain.errors import Conflict, InvalidInput
from pynomaly.topology import DEFAULT_PRIORITY, Priority


class JobStatus(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"  # failed for good (bad data, or retries exhausted -> also dead-lettered)
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

_ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.RUNNING, JobStatus.RETRYING, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.RETRYING: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    # Retry and DLQ replay start a finished job again from the queue.
    JobStatus.FAILED: frozenset({JobStatus.QUEUED}),
    JobStatus.CANCELLED: frozenset({JobStatus.QUEUED}),
    JobStatus.COMPLETED: frozenset(),
}


class Mode(enum.Enum):
    """What a job does with its rows: fit a detector on them, or score them with a stored model."""

    DETECT = "detect"
    SCORE = "score"


def parse_mode(raw: str | None) -> Mode:
    if raw is None:
        return Mode.DETECT
    try:
        return Mode(raw)
    except ValueError:
        raise InvalidInput(f"mode must be one of {[m.value for m in Mode]}") from None


class Step(enum.Enum):
    """Pipeline steps, always run in this order."""

    PREPROCESS = "preprocess"
    DETECT = "detect"
    REPORT = "report"
    NOTIFY = "notify"


STEP_ORDER = (Step.PREPROCESS, Step.DETECT, Step.REPORT, Step.NOTIFY)


def parse_steps(raw: list[str] | None, has_webhook: bool) -> list[Step]:
    """Steps asked for, validated and put in pipeline order; detect is always included.

    ``has_webhook``: the job has notification targets (a webhook_url or notify rules).
    """
    if raw is None:
        steps = {Step.PREPROCESS, Step.DETECT}
    else:
        try:
            steps = {Step(s) for s in raw}
        except ValueError:
            raise InvalidInput(f"pipeline steps must be among {[s.value for s in STEP_ORDER]}") from None
        steps.add(Step.DETECT)
    if has_webhook:
        # Notification targets (a webhook_url or notify rules): the report gives them a link, and the
        # notify step fans out one delivery task per target once the job is done.
        steps |= {Step.REPORT, Step.NOTIFY}
    if Step.NOTIFY in steps and not has_webhook:
        raise InvalidInput("the notify step needs a notification target (notify or webhook_url)")
    return [s for s in STEP_ORDER if s in steps]


def parse_priority(raw: str | None) -> Priority:
    if raw is None:
        return DEFAULT_PRIORITY
    try:
        return Priority(raw.lower())
    except ValueError:
        raise InvalidInput(f"priority must be one of {[p.value for p in Priority]}") from None


def new_job_id() -> str:
    return uuid.uuid4().hex


def new_run_token() -> str:
    return uuid.uuid4().hex[:16]


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Job:
    id: str
    detector: str
    params: dict[str, Any]
    contamination: float
    threshold: float | None
    priority: str
    steps: list[str]
    preprocessing: dict[str, str]
    dataset: dict[str, Any]  # summary: rows, columns, missing, infinite
    status: str = JobStatus.QUEUED.value
    progress: float = 0.0
    message: str = "queued"
    current_step: str | None = None
    attempts: int = 0
    error: str | None = None
    webhook_url: str | None = None
    # Notification targets (pynomaly.domain.notifications), webhook_url included as one of them.
    notify: list[dict[str, Any]] = field(default_factory=list)
    idempotency_key: str | None = None
    submitted_by: str | None = None
    created_at: str = field(default_factory=utcnow)
    started_at: str | None = None
    finished_at: str | None = None
    updated_at: str = field(default_factory=utcnow)
    result_location: str | None = None
    report_location: str | None = None
    cancel_requested: bool = False
    anomaly_count: int | None = None
    schedule_id: str | None = None  # set on runs of a recurring schedule
    # Each enqueue (submit, retry) gets a new token and its messages carry it: a message left
    # over from an earlier run (a cancelled job retried before its old message was skipped) is
    # recognised as stale and skipped instead of running the job twice.
    run_token: str | None = None
    # Runs that started from a redelivered message: the worker holding it was lost (killed, out of
    # memory, its node gone).  Per step too, for the dead-letter decision; a retry or replay resets those.
    redeliveries: int = 0
    step_redeliveries: dict[str, int] = field(default_factory=dict)
    # Models (pynomaly.domain.models): mode score scores with ``model`` at ``model_version`` (pinned at
    # submit); a detect job with ``save_model`` stores its fitted detector as a version of that model
    # and records the new version in ``model_version``.
    mode: str = Mode.DETECT.value
    model: str | None = None
    model_version: int | None = None
    save_model: str | None = None

    @property
    def state(self) -> JobStatus:
        return JobStatus(self.status)

    def record_redelivery(self, step: str) -> int:
        """Count one redelivery of ``step``; returns how often that step has been redelivered."""
        self.redeliveries += 1
        self.step_redeliveries[step] = self.step_redeliveries.get(step, 0) + 1
        return self.step_redeliveries[step]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def check_transition(current: JobStatus, target: JobStatus) -> None:
    if target not in _ALLOWED[current]:
        raise Conflict(f"job is {current.value}; it cannot become {target.value}")
