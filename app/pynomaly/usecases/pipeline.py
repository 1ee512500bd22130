"""Job steps as the worker runs them: preprocess -> detect -> report -> notify.

Each step reads the job, does its work, stores its output and announces progress through the
MessageQueueService.  Retry and dead-letter decisions belong to the Celery glue
(:mod:`pynomaly.workers.tasks`); this module only says what happened.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

from pynomaly.domain.datasets import Dataset
from pynomaly.domain.detectors import DetectionResult, run_detection
from pynomaly.domain.errors import InvalidInput, JobCancelled, NotFound
from pynomaly.domain.jobs import Job, JobStatus, Mode, Step
from pynomaly.domain.models import ModelRef, ModelVersion, TrainedModel, run_scoring
from pynomaly.domain.preprocessing import FittedPreprocessing, PreprocessOptions, fit_preprocess
from pynomaly.domain.reports import REPORT_FORMATS, render
from pynomaly.messaging.service import MessageQueueService
from pynomaly.storage.jobs import DATASET, PREPARED, PREPROCESSING_FIT, JobStore
from pynomaly.storage.models import ModelStore
from pynomaly.usecases.audit import record_audit

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Pynomaly-Signature"
WEBHOOK_TIMEOUT = 10.0
# Progress events (and the progress writes they go with) are throttled so a chunked scoring loop
# cannot flood Kafka or Redis.
PROGRESS_EVENT_INTERVAL = 0.25
# A job-store write's extra writes in the same MULTI/EXEC (JobStore.update's ``also``).
Also = Callable[[Job, Any], object]


class PermanentFailure(Exception):
    """A failure retrying cannot fix (bad data, a 4xx from a webhook)."""


class RedeliveredTooOften(Exception):
    """The step's message came back more often than retries allow: its worker was lost every time
    (a job that runs out of memory each time would otherwise loop forever)."""


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Pipeline:
    def __init__(
        self,
        jobs: JobStore,
        messaging: MessageQueueService,
        webhook_secret: str = "",
        public_url: str = "",
        models: ModelStore | None = None,
    ) -> None:
        self._jobs = jobs
        self._mq = messaging
        self._models = models
        self._secret = webhook_secret
        self._public_url = public_url.rstrip("/")
        self._last_progress_event = 0.0

    # -- lifecycle -------------------------------------------------------------------------------
    def begin(
        self,
        job_id: str,
        step: Step,
        attempt: int,
        run_token: str | None = None,
        redelivered: bool = False,
        max_redeliveries: int | None = None,
    ) -> Job | None:
        """Mark the step running; None when the step must not run (cancelled, stale or finished).

        ``redelivered``: the step's message came back after its worker was lost; counted on the job,
        and past ``max_redeliveries`` of this step :class:`RedeliveredTooOften` is raised.
        """
        job = self._jobs.get(job_id)
        if run_token and job.run_token and run_token != job.run_token:
            log.info("job %s: skipping a %s message of an earlier run", job_id, step.value)
            return None
        if job.state in (JobStatus.COMPLETED, JobStatus.FAILED):
            log.info("job %s is already %s: skipping a duplicate %s message", job_id, job.status, step.value)
            return None
        if job.cancel_requested or job.state is JobStatus.CANCELLED:
            self.cancelled(job)
            return None
        if redelivered:
            job = self._jobs.update(job_id, lambda j: j.record_redelivery(step.value))
            count = job.step_redeliveries[step.value]
            log.warning("job %s: %s redelivered (%d time(s)): its worker was lost", job_id, step.value, count)
            if max_redeliveries is not None and count > max_redeliveries:
                raise RedeliveredTooOften(
                    f"the {step.value} step was redelivered {count} times: its worker was lost every time "
                    "(killed, out of memory?)"
                )
        # A redelivered run announces itself again: the lost run's events may never have left its worker.
        first = job.state is not JobStatus.RUNNING or redelivered
        again: dict[str, Any] = {"redelivered": True, "redeliveries": job.redeliveries} if redelivered else {}
        # job_started goes in the transition's MULTI/EXEC: one round trip, and never one without the other.
        started = self._mq.event_with("job_started", step=step.value, attempt=attempt, **again) if first else None
        return self._jobs.transition(
            job_id,
            JobStatus.RUNNING,
            also=started,
            current_step=step.value,
            attempts=attempt,
            message=f"{step.value} running",
            progress=self._overall(job, step, 0.0),
        )

    def step_done(self, job: Job, step: Step, **data: Any) -> Job:
        # job_step_completed (about the job as the step began, as before) goes in the same MULTI/EXEC
        # as the step's write, ahead of job_completed: one round trip, in order.
        step_completed = self._events_about(job, ("job_step_completed", {"step": step.value, **data}))
        if job.steps[-1] != step.value:
            return self._jobs.update(
                job.id,
                lambda j: _set(j, progress=self._overall(j, step, 1.0), message=f"{step.value} done"),
                also=step_completed,
            )
        # The completion and its event in one transaction: a worker killed in between loses neither.
        completed = self._mq.event_with(
            "job_completed",
            anomaly_count=lambda j: j.anomaly_count,
            result=lambda j: j.result_location,
            steps=lambda j: j.steps,
        )
        return self._jobs.transition(
            job.id,
            JobStatus.COMPLETED,
            also=_in_order(step_completed, completed),
            progress=1.0,
            message="completed",
            current_step=None,
        )

    def cancelled(self, job: Job | str) -> None:
        """Record a cancel that took effect (``job`` as read, or its id to read it now)."""
        if isinstance(job, str):
            job = self._jobs.get(job)
        if job.state is not JobStatus.CANCELLED:
            self._jobs.transition(
                job.id,
                JobStatus.CANCELLED,
                also=self._mq.event_with("job_cancelled", reason="cancel requested"),
                message="cancelled while running",
                current_step=None,
            )

    def retrying(self, job_id: str, error: str, attempt: int, delay: float) -> None:
        retrying = self._mq.event_with("job_retrying", error=error, attempt=attempt, delay_seconds=round(delay, 3))
        self._jobs.transition(
            job_id, JobStatus.RETRYING, also=retrying, error=error, message=f"retry {attempt} in {delay:.1f}s"
        )

    def failed(self, job_id: str, error: str, dead_letter_id: str | None = None) -> None:
        job = self._jobs.get(job_id)
        if job.state.terminal:
            return
        failed = self._mq.event_with("job_failed", error=error, dead_letter_id=dead_letter_id)
        job = self._jobs.transition(
            job_id, JobStatus.FAILED, also=failed, error=error, message="failed", current_step=None
        )
        if dead_letter_id:
            self._event("job_dead_lettered", job, dead_letter_id=dead_letter_id, error=error)
        self._notify_failure(job)

    def _notify_failure(self, job: Job) -> None:
        from pynomaly.domain.notifications import Outcome
        from pynomaly.usecases.notifications import dispatch

        try:
            dispatch(self._jobs, self._mq, job, Outcome.FAILED)
        except Exception:  # the job's failure is recorded; its notifications are best effort here
            log.exception("could not queue the failure notifications of job %s", job.id)

    def checkpoint(self, job: Job, step: Step):
        """A callback for long work: records progress and stops a cancelled job.

        Every call checks for a cancel (one read).  Progress is written at the pace of its events (the
        first call, then at most every PROGRESS_EVENT_INTERVAL, and at the end), each write with its
        job_progress event in one MULTI/EXEC: a small job's checkpoints cost a few round trips, not
        a read-modify-write and an event each."""

        def cancelled() -> JobCancelled:
            return JobCancelled(f"job {job.id} was cancelled")

        def _checkpoint(fraction: float, message: str) -> None:
            now = time.monotonic()
            if fraction < 1.0 and now - self._last_progress_event < PROGRESS_EVENT_INTERVAL:
                if self._jobs.get(job.id).cancel_requested:
                    raise cancelled()
                return
            progress = self._overall(job, step, fraction)

            def change(current: Job) -> None:
                if current.cancel_requested:
                    raise cancelled()
                _set(current, progress=progress, message=message)

            event = self._mq.event_with("job_progress", step=step.value, progress=round(progress, 4), message=message)
            self._jobs.update(job.id, change, also=event)
            self._last_progress_event = now

        return _checkpoint

    # -- steps -----------------------------------------------------------------------------------
    def preprocess(self, job: Job) -> dict[str, Any]:
        dataset = self._jobs.get_dataset(DATASET, job.id)
        if job.mode == Mode.SCORE.value:
            # The stored model's imputation values and scaling, on its columns in its order.
            _, model = self._load_model(job)
            values, report = model.prepare(model.select(dataset.columns, dataset.values))
            self._jobs.put_dataset(PREPARED, job.id, Dataset(tuple(model.columns), values))
            return report.as_dict()
        options = PreprocessOptions.parse(job.preprocessing)
        values, report, fitted = fit_preprocess(dataset.values, dataset.columns, options, learn=bool(job.save_model))
        self._jobs.put_dataset(PREPARED, job.id, Dataset(dataset.columns, values))
        if job.save_model:  # the detect step stores it with the model (another process, maybe another host)
            self._jobs.put_blob(PREPROCESSING_FIT, job.id, fitted.as_dict())
        return report.as_dict()

    def detect(self, job: Job) -> dict[str, Any]:
        try:  # the preprocessed copy when there is one (one read, not an EXISTS first)
            kind, dataset = PREPARED, self._jobs.get_dataset(PREPARED, job.id)
        except NotFound:
            kind, dataset = DATASET, self._jobs.get_dataset(DATASET, job.id)
        checkpoint = self.checkpoint(job, Step.DETECT)
        saved: ModelVersion | None = None
        if job.mode == Mode.SCORE.value:
            meta, model = self._load_model(job)
            if kind == DATASET:  # mode score always has the preprocess step; this is only a fallback
                dataset = Dataset(tuple(model.columns), model.prepare(model.select(dataset.columns, dataset.values))[0])
            result = run_scoring(dataset.values, model, checkpoint=checkpoint)
            result.params = dict(meta.params)
        else:
            result = run_detection(
                dataset.values,
                list(dataset.columns),
                job.detector,
                job.params,
                job.contamination,
                job.threshold,
                checkpoint=checkpoint,
            )
            if job.save_model:
                saved = self._save_model(job, result, dataset.values.shape[0])
        data = result.as_dict()
        model_ref = self._model_ref(job, saved)
        if model_ref is not None:
            data["model"] = model_ref
        location = self._jobs.put_blob("result", job.id, data)
        version = saved.version if saved is not None else job.model_version
        detected = {
            "detector": result.detector,
            "anomaly_count": result.anomaly_count,
            "rows": len(result.labels),
            "threshold": result.threshold,
            "top_anomalies": [{k: a[k] for k in ("row", "score", "contributions")} for a in result.top_anomalies],
            # A sample of scores lets the dashboard draw the job's score chart without another call.
            "scores": [round(s, 5) for s in result.scores[:2000]],
            **({"model": model_ref} if model_ref is not None else {}),
        }
        # The result's location and anomalies_detected in one MULTI/EXEC.
        self._jobs.update(
            job.id,
            lambda j: _set(j, result_location=location, anomaly_count=result.anomaly_count, model_version=version),
            also=self._events_about(job, ("anomalies_detected", detected)),
        )
        output: dict[str, Any] = {"anomaly_count": result.anomaly_count, "rows": len(result.labels)}
        if model_ref is not None:
            output["model"] = model_ref
        return output

    # -- models ----------------------------------------------------------------------------------
    def _load_model(self, job: Job) -> tuple[ModelVersion, TrainedModel]:
        """The version pinned at submit; a refused artifact (checksum, library versions) fails the job."""
        if self._models is None or job.model is None or job.model_version is None:
            raise InvalidInput(f"job {job.id} is a scoring job without a model")
        return self._models.load(ModelRef(job.model, job.model_version))

    def _save_model(self, job: Job, result: DetectionResult, rows: int) -> ModelVersion:
        if self._models is None or job.save_model is None:
            raise InvalidInput(f"job {job.id} asks to save a model but this worker has no model store")
        if Step.PREPROCESS.value in job.steps:
            fitted = FittedPreprocessing.from_dict(self._jobs.get_blob(PREPROCESSING_FIT, job.id))
        else:
            fitted = FittedPreprocessing()  # no preprocess step: new rows must be finite as they are
        model = TrainedModel(job.detector, result.model, result.threshold, result.columns, fitted)
        saved = self._models.save(
            job.save_model,
            model,
            params=result.params,
            contamination=job.contamination,
            rows=rows,
            training_job=job.id,
            created_by=job.submitted_by,
        )
        try:  # keyed by the model's name on system_events, as promotions and deletions are
            self._mq.publish_event(
                "model_saved", saved.name, wait=False, version=saved.version, job_id=job.id, checksum=saved.checksum
            )
        except Exception:
            log.exception("could not publish model_saved for %s", saved.ref)
        record_audit(self._mq, "model.save", saved.name, job.submitted_by, version=saved.version, job_id=job.id)
        return saved

    @staticmethod
    def _model_ref(job: Job, saved: ModelVersion | None) -> dict[str, Any] | None:
        if saved is not None:
            return {"name": saved.name, "version": saved.version, "saved": True}
        if job.mode == Mode.SCORE.value:
            return {"name": job.model, "version": job.model_version, "saved": False}
        return None

    def report(self, job: Job) -> dict[str, Any]:
        result = self._jobs.get_blob("result", job.id)
        for fmt in REPORT_FORMATS:
            self._jobs.put_blob(f"report-{fmt}", job.id, render(fmt, job.as_dict(), result))
        location = f"/v1/jobs/{job.id}/report"
        self._jobs.update(job.id, lambda j: _set(j, report_location=location))
        return {"formats": list(REPORT_FORMATS)}

    def notify(self, job: Job) -> dict[str, Any]:
        """Fan out: one delivery task per notification target whose rule matches a completed job.

        Deliveries run (and retry, and dead-letter) on their own: the job completes right after.
        """
        from pynomaly.domain.notifications import Outcome
        from pynomaly.usecases.notifications import dispatch

        return dispatch(self._jobs, self._mq, self._jobs.get(job.id), Outcome.COMPLETED)

    # -- internals -------------------------------------------------------------------------------
    @staticmethod
    def _overall(job: Job, step: Step, fraction: float) -> float:
        index = job.steps.index(step.value) if step.value in job.steps else 0
        return round(min(1.0, (index + max(0.0, min(1.0, fraction))) / len(job.steps)), 4)

    def _event(self, event_type: str, job: Job, **data: Any) -> None:
        try:
            # ``data`` may carry a fresher progress (checkpoints) than the job record read before it.
            self._mq.publish_event(
                event_type, job.id, wait=False, **{"status": job.status, "progress": job.progress, **data}
            )
        except Exception:
            log.exception("could not publish %s for job %s", event_type, job.id)

    def _events_about(self, job: Job, *events: tuple[str, dict[str, Any]]) -> Also | None:
        """``also`` staging events about ``job`` as given (its status and progress, as ``_event``
        reports them) in a job-store write; None, logged, when one cannot be built (as ``_event``:
        an event never stops the job)."""
        try:
            built = [
                self._mq.new_event(kind, job.id, **{"status": job.status, "progress": job.progress, **data})
                for kind, data in events
            ]
        except Exception:
            log.exception("could not build %s for job %s", [kind for kind, _ in events], job.id)
            return None
        return self._mq.events_with(built)

    def job_exists(self, job_id: str) -> bool:
        return self._jobs.exists(job_id)

    def flush(self) -> None:
        """Hand this step's events over before the next step runs (a no-op with the outbox, where
        each event is in Redis, in order, once ``publish_event`` returns)."""
        try:
            self._mq.flush_events()
        except Exception:
            log.exception("could not flush the job events")


def _in_order(*stages: Also | None) -> Also:
    """One ``also`` running the given ones (None skipped) in order on the same pipeline."""

    def staged(job: Job, pipe: Any) -> None:
        for stage in stages:
            if stage is not None:
                stage(job, pipe)

    return staged


def _set(job: Job, **fields: Any) -> None:
    for name, value in fields.items():
        setattr(job, name, value)
