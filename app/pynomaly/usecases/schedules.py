"""Schedule and stored-dataset use cases: create, list, pause/resume, delete, run (now or from beat).

Everything is validated before anything is stored or scheduled, so a rejected request leaves no
trace.  A run builds the dataset (stored, or fetched from the URL) and submits an ordinary job
through :class:`~pynomaly.usecases.jobs.JobService` with the schedule's id on it: same queues,
events, retries and dead letters as any job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Any, Protocol

from pynomaly.config import Settings
from pynomaly.domain.datasets import Dataset, DatasetLimits, control_character, from_rows, parse_csv
from pynomaly.domain.detectors import get_detector, validate_contamination
from pynomaly.domain.errors import Conflict, InvalidInput, NotFound
from pynomaly.domain.jobs import Job, parse_priority, parse_steps, utcnow
from pynomaly.domain.notifications import parse_targets
from pynomaly.domain.preprocessing import PreprocessOptions
from pynomaly.domain.schedules import Schedule, new_schedule_id, validate_notify, validate_timing
from pynomaly.messaging.service import MessageQueueService
from pynomaly.storage.datasets import DatasetStore, StoredDataset, new_dataset_id
from pynomaly.storage.jobs import JobStore
from pynomaly.storage.schedules import ScheduleStore
from pynomaly.usecases.audit import record_audit
from pynomaly.usecases.jobs import JobService, ServiceUnavailable, SubmitRequest, validate_webhook_url
from pynomaly.usecases.remote_datasets import UrlPolicy, check_url, fetch_dataset

log = logging.getLogger(__name__)

MAX_NAME = 100


class Timer(Protocol):
    """Where schedule timings live (RedBeat entries in production)."""

    def validate(self, item: Schedule) -> None: ...

    def set(self, item: Schedule) -> None: ...

    def remove(self, schedule_id: str) -> None: ...

    def next_run(self, schedule_id: str) -> str | None: ...


def _name(raw: Any, default: str) -> str:
    if raw is None or raw == "":
        return default
    if not isinstance(raw, str) or len(raw) > MAX_NAME:
        raise InvalidInput(f"name must be a string of at most {MAX_NAME} characters")
    if bad := control_character(raw):
        raise InvalidInput(f"name must be printable text: it contains the control character {bad}")
    return raw.strip()


class DatasetService:
    def __init__(self, store: DatasetStore, settings: Settings, messaging: MessageQueueService | None = None) -> None:
        self._store = store
        self._settings = settings
        self._mq = messaging

    @property
    def limits(self) -> DatasetLimits:
        s = self._settings
        return DatasetLimits(s.max_upload_bytes, s.max_rows, s.max_columns)

    def add_csv(self, data: bytes, name: str | None, actor: str | None) -> StoredDataset:
        dataset = parse_csv(data, self.limits)
        return self._add(dataset, data, "csv", name, actor)

    def add_rows(self, rows: Any, columns: list[str] | None, name: str | None, actor: str | None) -> StoredDataset:
        dataset = from_rows(rows, columns, self.limits)
        import json

        canonical = json.dumps(dataset.to_payload(), separators=(",", ":"), sort_keys=True).encode()
        if len(canonical) > self.limits.max_bytes:
            raise InvalidInput(f"dataset is {len(canonical)} bytes as JSON; the limit is {self.limits.max_bytes}")
        return self._add(dataset, canonical, "json", name, actor)

    def _add(self, dataset: Dataset, raw: bytes, fmt: str, name: str | None, actor: str | None) -> StoredDataset:
        dataset_id = new_dataset_id()
        summary = dataset.summary()
        meta = StoredDataset(
            id=dataset_id,
            name=_name(name, dataset_id),
            rows=summary["rows"],
            columns=summary["columns"],
            bytes=len(raw),
            sha256=hashlib.sha256(raw).hexdigest(),
            format=fmt,
            missing=summary["missing"],
            infinite=summary["infinite"],
            created_by=actor,
        )
        self._store.add(meta, dataset, self._settings.max_datasets)
        self._audit("dataset.create", dataset_id, actor, sha256=meta.sha256, rows=meta.rows)
        return meta

    def delete(self, dataset_id: str, schedules: ScheduleStore, actor: str | None) -> None:
        users = [s.id for s in schedules.all() if s.dataset_id == dataset_id]
        if users:
            raise Conflict(f"dataset {dataset_id} is used by schedule(s) {users}: delete them first")
        self._store.delete(dataset_id)
        self._audit("dataset.delete", dataset_id, actor)

    def _audit(self, action: str, subject: str, actor: str | None, **data: Any) -> None:
        record_audit(self._mq, action, subject, actor, **data)


class ScheduleService:
    def __init__(
        self,
        schedules: ScheduleStore,
        datasets: DatasetStore,
        jobs: JobStore,
        job_service: JobService,
        timer: Timer,
        settings: Settings,
        messaging: MessageQueueService | None = None,
    ) -> None:
        self._schedules = schedules
        self._datasets = datasets
        self._jobs = jobs
        self._job_service = job_service
        self._timer = timer
        self._settings = settings
        self._mq = messaging
        self.policy = UrlPolicy.parse(settings.dataset_url_allowlist)

    # -- API side ----------------------------------------------------------------------------------
    def create(self, spec: dict[str, Any], actor: str | None) -> Schedule:
        cron, interval = validate_timing(
            spec.get("cron"), spec.get("interval_seconds"), self._settings.schedule_min_interval_seconds
        )
        detector = get_detector(spec.get("detector") or "")
        params = detector.validate(spec.get("params"))
        contamination = spec.get("contamination")
        validate_contamination(contamination, spec.get("threshold"))
        threshold = spec.get("threshold")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)):
            raise InvalidInput("threshold must be a number")
        webhook = validate_webhook_url(spec.get("webhook_url"))
        notify = _validate_notify(spec.get("notify"), webhook)
        # Webhook hosts against the outbound-URL policy now (each run's submit checks them again).
        self._job_service.check_targets(parse_targets(notify or None, webhook), webhook is not None)
        steps = spec.get("steps")
        if steps is not None:
            steps = [s.value for s in parse_steps(steps, has_webhook=webhook is not None or bool(notify))]
        priority = spec.get("priority")
        if priority is not None:
            priority = parse_priority(priority).value
        preprocessing = spec.get("preprocessing")
        if preprocessing is not None:
            preprocessing = PreprocessOptions.parse(preprocessing).as_dict()
        dataset_id, dataset_url = spec.get("dataset_id"), spec.get("dataset_url")
        if (dataset_id is None) == (dataset_url is None):
            raise InvalidInput("give exactly one dataset source: dataset_id (a stored dataset) or dataset_url")
        if dataset_id is not None and not self._datasets.exists(str(dataset_id)):
            raise InvalidInput(f"dataset {dataset_id!r} does not exist (upload it with POST /v1/datasets)")
        if dataset_url is not None:
            check_url(dataset_url, self.policy)
        schedule_id = new_schedule_id()
        item = Schedule(
            id=schedule_id,
            name=_name(spec.get("name"), schedule_id),
            detector=detector.name,
            params=params,
            cron=cron,
            interval_seconds=interval,
            dataset_id=dataset_id,
            dataset_url=dataset_url,
            contamination=contamination,
            threshold=threshold,
            priority=priority,
            steps=steps,
            preprocessing=preprocessing,
            notify=notify,
            webhook_url=webhook,
            paused=bool(spec.get("paused", False)),
            created_by=actor,
        )
        self._timer.validate(item)
        self._schedules.create(item, self._settings.max_schedules)
        if not item.paused:
            try:
                self._timer.set(item)
            except Exception as exc:
                self._schedules.delete(item.id)
                raise ServiceUnavailable(f"the schedule could not be registered with beat: {exc}") from exc
        self._audit("schedule.create", item.id, actor, timing=item.timing, dataset=item.source)
        return item

    def get(self, schedule_id: str) -> Schedule:
        return self._schedules.get(schedule_id)

    def next_run(self, item: Schedule) -> str | None:
        return None if item.paused else self._timer.next_run(item.id)

    def recent_runs(self, schedule_id: str, limit: int = 10) -> list[dict[str, Any]]:
        runs = []
        gone = []
        for job_id in self._schedules.run_ids(schedule_id, 0, limit):
            try:
                job = self._jobs.get(job_id)
            except NotFound:
                gone.append(job_id)
                continue
            runs.append(_run_view(job))
        self._schedules.forget_runs(schedule_id, gone)
        return runs

    def pause(self, schedule_id: str, actor: str | None) -> Schedule:
        item = self._schedules.update(schedule_id, lambda s: setattr(s, "paused", True))
        self._timer.remove(schedule_id)
        self._audit("schedule.pause", schedule_id, actor)
        return item

    def resume(self, schedule_id: str, actor: str | None) -> Schedule:
        item = self._schedules.update(schedule_id, lambda s: setattr(s, "paused", False))
        self._timer.set(item)
        self._audit("schedule.resume", schedule_id, actor)
        return item

    def delete(self, schedule_id: str, actor: str | None) -> None:
        self._schedules.get(schedule_id)
        self._timer.remove(schedule_id)
        self._schedules.delete(schedule_id)
        self._audit("schedule.delete", schedule_id, actor)

    # -- a run (beat's task, or "run now") ---------------------------------------------------------
    def run(self, schedule_id: str, trigger: str, actor: str | None = None) -> Job | None:
        """Submit one run as a job.  Returns None when the schedule is gone, or paused (beat runs only)."""
        item = self._schedules.find(schedule_id)
        if item is None:
            log.info("schedule %s is gone; run skipped", schedule_id)
            self._timer.remove(schedule_id)
            return None
        if item.paused and trigger == "beat":
            log.info("schedule %s is paused; run skipped", schedule_id)
            return None
        try:
            dataset = self._load(item)
            job = self._submit(item, dataset, actor)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
            self._schedules.update(schedule_id, lambda s: setattr(s, "last_error", error))
            raise
        self._schedules.add_run(schedule_id, job.id, self._settings.result_ttl_seconds)

        def record(s: Schedule) -> None:
            s.last_run_at = utcnow()
            s.last_job_id = job.id
            s.last_error = None
            s.run_count += 1

        self._schedules.update(schedule_id, record)
        return job

    def _load(self, item: Schedule) -> Dataset:
        limits = DatasetLimits(self._settings.max_upload_bytes, self._settings.max_rows, self._settings.max_columns)
        if item.dataset_id:
            return self._datasets.load(item.dataset_id)
        body = fetch_dataset(
            str(item.dataset_url),
            self.policy,
            timeout=self._settings.dataset_fetch_timeout,
            max_bytes=self._settings.dataset_fetch_max_bytes,
        )
        return parse_csv(body, dataclasses.replace(limits, max_bytes=self._settings.dataset_fetch_max_bytes))

    def _submit(self, item: Schedule, dataset: Dataset, actor: str | None) -> Job:
        fields = {f.name for f in dataclasses.fields(SubmitRequest)}
        extra: dict[str, Any] = {"schedule_id": item.id}
        if "notify" in fields:  # notification rules, when the job model carries them
            extra["notify"] = item.notify or None
        request = SubmitRequest(
            dataset=dataset,
            detector=item.detector,
            params=item.params,
            contamination=item.contamination,
            threshold=item.threshold,
            priority=item.priority,
            steps=item.steps,
            preprocessing=item.preprocessing,
            webhook_url=item.webhook_url,
            submitted_by=actor or f"schedule:{item.id}",
            **{k: v for k, v in extra.items() if k in fields},
        )
        job, _ = self._job_service.submit(request)
        return job

    def _audit(self, action: str, subject: str, actor: str | None, **data: Any) -> None:
        record_audit(self._mq, action, subject, actor, **data)


def _validate_notify(rules: Any, webhook: str | None) -> list[dict[str, Any]]:
    """The rules' shape here; the job model's own check too when it has one, so a run never rejects them."""
    clean = validate_notify(rules)
    try:
        from pynomaly.domain.notifications import parse_targets
    except ImportError:  # pragma: no cover - the notifications module ships with the job model
        return clean
    parse_targets(clean or None, webhook)
    return clean


def _run_view(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "status": job.status,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "anomaly_count": job.anomaly_count,
        "error": job.error,
    }
