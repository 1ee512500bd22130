"""Request and response models: they are the OpenAPI schema users read."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field

PriorityName = Literal["low", "normal", "high", "critical"]
StepName = Literal["preprocess", "detect", "report", "notify"]
JobStatusName = Literal["queued", "running", "retrying", "completed", "failed", "cancelled"]

# A page offset of every list endpoint.  Bounded: Redis takes range indexes as signed 64-bit integers
# and answered a larger one with an error (a 500); no store here holds a billion entries.
MAX_OFFSET = 1_000_000_000
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Entries to skip (0 to 1,000,000,000).")]


class NotifyTarget(BaseModel):
    """One notification target and its rule (pynomaly.domain.notifications)."""

    model_config = ConfigDict(extra="forbid")

    channel: Literal["webhook", "email"] = Field(description="webhook (HMAC-signed JSON POST) or email (SMTP).")
    target: str = Field(description="An absolute http(s) URL for webhook, an e-mail address for email.")
    on: Literal["completed", "failed", "anomaly_rate"] = Field(
        "completed", description="When: the job completed, failed, or completed with anomaly_rate >= threshold."
    )
    threshold: float | None = Field(None, description="Anomaly rate in (0, 1]; only with on=anomaly_rate.")


class JobCreate(BaseModel):
    """A job with its dataset as JSON rows (a list of lists with ``columns``, or a list of objects)."""

    model_config = ConfigDict(extra="forbid")

    detector: str | None = Field(
        None, description="One of GET /v1/detectors, e.g. iforest or ecod; required in mode detect."
    )
    rows: list[list[Any]] | list[dict[str, Any]] = Field(description="Dataset rows; null or 'nan' for missing cells.")
    columns: list[str] | None = Field(None, description="Column names for list rows (default x0, x1, ...).")
    params: dict[str, Any] | None = Field(None, description="Detector parameters, see the detector's schema.")
    contamination: float | None = Field(None, description="Expected anomaly share, 0 < c <= 0.5 (default 0.1).")
    threshold: float | None = Field(None, description="Explicit score threshold instead of the contamination cut.")
    priority: PriorityName | None = Field(None, description="Queue priority (default normal).")
    steps: list[StepName] | None = Field(
        None, description="Pipeline steps, run in order preprocess -> detect -> report -> notify (detect always runs)."
    )
    preprocessing: dict[str, str] | None = Field(
        None, description="missing: reject|impute_median|impute_mean|drop_rows; scaling: none|standard|robust|minmax."
    )
    webhook_url: str | None = Field(None, description="Receives an HMAC-signed JSON summary when the job completes.")
    notify: list[NotifyTarget] | None = Field(
        None, description="Notification targets, each delivered by its own task with its own retries."
    )
    mode: Literal["detect", "score"] | None = Field(
        None, description="detect (default): fit the detector on the rows; score: score them with a stored model."
    )
    model: str | None = Field(
        None, description="Mode score: '<name>' (its promoted version) or '<name>:<version>'.", max_length=80
    )
    save_model: str | None = Field(
        None,
        description="Mode detect: store the fitted detector, threshold and preprocessing as the next version "
        "of this model.",
        max_length=64,
    )


class Links(BaseModel):
    self: str
    result: str
    report: str
    cancel: str
    notifications: str | None = Field(None, description="The job's notification outcomes.")


class JobAccepted(BaseModel):
    id: str
    status: str
    created: bool = Field(description="False when an earlier request with the same Idempotency-Key made this job.")
    links: Links


class JobView(BaseModel):
    id: str
    status: str
    detector: str
    params: dict[str, Any]
    contamination: float
    threshold: float | None
    priority: str
    steps: list[str]
    preprocessing: dict[str, str]
    dataset: dict[str, Any]
    progress: float
    message: str
    current_step: str | None
    attempts: int
    redeliveries: int = Field(
        0, description="Runs started from a redelivered message: the worker holding it was lost (killed, OOM)."
    )
    error: str | None
    webhook_url: str | None
    notify: list[dict[str, Any]] = []
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str
    anomaly_count: int | None
    result_location: str | None
    report_location: str | None
    schedule_id: str | None = Field(None, description="The schedule this job is a run of, if any.")
    mode: str = Field("detect", description="detect (fit and score) or score (with a stored model).")
    model: str | None = Field(None, description="Mode score: the model scored with.")
    model_version: int | None = Field(
        None, description="Mode score: the version scored with (pinned at submit); save_model: the version saved."
    )
    save_model: str | None = Field(None, description="The model this job stores its fitted detector in.")
    links: Links


class JobPage(BaseModel):
    items: list[JobView]
    total: int
    offset: int
    limit: int


class NotificationEntry(BaseModel):
    """One outcome on notifications:stream, as the ``notifiers`` stream group kept it."""

    id: str = Field(description="The notifications:stream entry id (entries are sorted by it).")
    time: str | None = Field(description="When the entry was added (from its stream id), ISO 8601 UTC.")
    index: int = Field(description="The target's position in the job's notify list.")
    channel: str
    target: str
    on: str
    outcome: str = Field(description="What the rule saw: completed or failed.")
    status: str = Field(description="queued, delivered, retrying or dead_lettered.")
    attempt: int
    detail: str


class NotificationTargetState(BaseModel):
    """Where one target stands: its latest outcome."""

    index: int
    channel: str
    target: str
    on: str
    status: str = Field(description="The latest outcome of this target.")
    attempts: int = Field(description="The highest attempt number seen for this target.")
    detail: str
    updated: str | None


class NotificationLog(BaseModel):
    job_id: str
    items: list[NotificationEntry] = Field(description="Every outcome, oldest first.")
    targets: list[NotificationTargetState] = Field(description="Per target (by index), the latest outcome.")
    total: int


class DeadLetterView(BaseModel):
    id: str
    task: str
    job_id: str | None
    queue: str | None
    args: list[Any]
    kwargs: dict[str, Any]
    error: str
    traceback: str
    attempts: int
    failed_at: str
    replays: int


class DeadLetterPage(BaseModel):
    items: list[DeadLetterView]
    total: int
    offset: int
    limit: int


class AuditPage(BaseModel):
    items: list[dict[str, Any]]
    total: int
    offset: int
    limit: int


class DetectorView(BaseModel):
    name: str
    description: str
    parameters: dict[str, Any]
    per_feature_contributions: str
