"""Request and response models of schedules and stored datasets (their part of the OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pynomaly.api.schemas import PriorityName, StepName


class ScheduleCreate(BaseModel):
    """A recurring detection: one timing (cron or interval_seconds) and one source (dataset_id or dataset_url)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=100, description="A label (default: the schedule id).")
    cron: str | None = Field(None, description="Five-field cron expression in UTC, e.g. '*/15 * * * *'.")
    interval_seconds: int | None = Field(
        None, description="Run every this many seconds (at least PYNOMALY_SCHEDULE_MIN_INTERVAL_SECONDS)."
    )
    dataset_id: str | None = Field(None, description="A stored dataset (POST /v1/datasets).")
    dataset_url: str | None = Field(
        None, description="An http(s) URL of a CSV, fetched at every run (public addresses only, size-capped)."
    )
    detector: str = Field(description="One of GET /v1/detectors.")
    params: dict[str, Any] | None = Field(None, description="Detector parameters.")
    contamination: float | None = Field(None, description="Expected anomaly share, 0 < c <= 0.5.")
    threshold: float | None = Field(None, description="Explicit score threshold.")
    priority: PriorityName | None = Field(None, description="Queue priority of every run (default normal).")
    steps: list[StepName] | None = Field(None, description="Pipeline steps of every run.")
    preprocessing: dict[str, str] | None = Field(None, description="As for jobs: missing and scaling.")
    webhook_url: str | None = Field(None, description="Webhook notified when a run completes.")
    notify: list[dict[str, Any]] | None = Field(
        None,
        description='Notification targets passed into every run: {"channel": "webhook"|"email", "target": ..., '
        '"on": "completed"|"failed"|"anomaly_rate", "threshold": 0.05}.',
    )
    paused: bool = Field(False, description="Create it paused (resume starts it).")


class ScheduleRun(BaseModel):
    job_id: str
    status: str
    created_at: str
    finished_at: str | None
    anomaly_count: int | None
    error: str | None


class ScheduleView(BaseModel):
    id: str
    name: str
    cron: str | None
    interval_seconds: int | None
    dataset_id: str | None
    dataset_url: str | None
    detector: str
    params: dict[str, Any]
    contamination: float | None
    threshold: float | None
    priority: str | None
    steps: list[str] | None
    preprocessing: dict[str, Any] | None
    webhook_url: str | None
    notify: list[dict[str, Any]]
    paused: bool
    created_by: str | None
    created_at: str
    updated_at: str
    last_run_at: str | None
    last_job_id: str | None
    last_error: str | None
    run_count: int
    next_run_at: str | None = Field(None, description="When beat sends the next run (UTC); null when paused.")
    last_runs: list[ScheduleRun] = Field(default_factory=list, description="Most recent runs, newest first.")
    jobs: str = Field(description="The schedule's runs as jobs: GET this URL.")


class SchedulePage(BaseModel):
    items: list[ScheduleView]
    total: int
    offset: int
    limit: int


class RunAccepted(BaseModel):
    schedule_id: str
    job_id: str
    status: str
    job: str


class DatasetCreate(BaseModel):
    """A dataset as JSON rows; CSV goes as text/csv (``?name=``) or multipart/form-data (``file``, ``name``)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=100)
    rows: list[list[Any]] | list[dict[str, Any]]
    columns: list[str] | None = None


class DatasetView(BaseModel):
    id: str
    name: str
    rows: int
    columns: list[str]
    bytes: int = Field(description="Size as uploaded (CSV) or as canonical JSON.")
    sha256: str = Field(description="Checksum of those bytes.")
    format: str
    missing: int
    infinite: int
    created_by: str | None
    created_at: str


class DatasetPage(BaseModel):
    items: list[DatasetView]
    total: int
    offset: int
    limit: int
