"""Job use cases on the API side: submit, cancel, retry, dead-letter replay and purge.

Everything is validated before anything is stored or enqueued, so a rejected request leaves no
trace; once stored, a job is either enqueued or marked failed with the reason (never dropped).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from opentelemetry import trace

from pynomaly.domain.datasets import Dataset
from pynomaly.domain.detectors import get_detector, validate_contamination
from pynomaly.domain.errors import Conflict, DomainError, InvalidInput, NotFound
from pynomaly.domain.jobs import (
    STEP_ORDER,
    Job,
    JobStatus,
    Mode,
    Step,
    new_job_id,
    new_run_token,
    parse_mode,
    parse_priority,
    parse_steps,
)
from pynomaly.domain.models import ModelRef, ModelVersion, validate_model_name
from pynomaly.domain.notifications import Channel, NotificationTarget, parse_targets
from pynomaly.domain.preprocessing import REJECT_HINT, MissingPolicy, PreprocessOptions, refuse_non_finite
from pynomaly.messaging.events import EventEnvelope
from pynomaly.messaging.service import MessageQueueService
from pynomaly.observability import logs, metrics, tracing
from pynomaly.storage.dead_letters import DeadLetter, DeadLetterStore
from pynomaly.storage.jobs import DATASET, JobStore, expected_growth
from pynomaly.storage.memory import MemoryAdmission
from pynomaly.storage.models import ModelStore
from pynomaly.topology import TASK_DELIVER, Priority
from pynomaly.usecases.audit import record_audit
from pynomaly.usecases.remote_datasets import WEBHOOK_ALLOWLIST, Resolver, UrlPolicy, check_url, system_resolver

log = logging.getLogger(__name__)

# An Idempotency-Key claim lives this long until its job is stored (then as long as the job): a
# submit that dies in between frees the key.  Another request with the key waits this long for it.
CLAIM_PENDING_SECONDS = 60
CLAIM_WAIT_SECONDS = 2.0
# A stored job whose queue message is unconfirmed this long was never sent (sending takes ms).
UNQUEUED_GRACE_SECONDS = 60.0


class ServiceUnavailable(DomainError):
    status = 503
    title = "Service unavailable"


@dataclass(frozen=True)
class SubmitRequest:
    dataset: Dataset
    detector: str | None = None  # required in mode detect; in mode score it comes from the model
    params: dict[str, Any] | None = None
    contamination: float | None = None
    threshold: float | None = None
    priority: str | None = None
    steps: list[str] | None = None
    preprocessing: dict[str, Any] | None = None
    webhook_url: str | None = None
    idempotency_key: str | None = None
    submitted_by: str | None = None
    # Notification targets [{channel, target, on, threshold?}] (pynomaly.domain.notifications);
    # a schedule passes its own into every run.
    notify: list[dict[str, Any]] | None = None
    schedule_id: str | None = None  # runs of a recurring schedule
    mode: str | None = None  # detect (default) or score
    model: str | None = None  # mode score: "<name>[:version]"
    save_model: str | None = None  # mode detect: store the fitted detector as the next version of this model


@dataclass(frozen=True)
class _Scoring:
    """What a scoring job takes from its model, resolved at submit (the version is pinned then)."""

    meta: ModelVersion

    @property
    def preprocessing(self) -> dict[str, str]:
        # A model trained without the preprocess step still gets it (identity, finite cells only).
        return self.meta.fitted_preprocessing.options() or {"missing": "reject", "scaling": "none"}

    def features(self, dataset: Dataset) -> Dataset:
        """The dataset's columns the model reads (other columns are ignored, whatever they hold)."""
        index = [dataset.columns.index(c) for c in self.meta.columns]
        return Dataset(tuple(self.meta.columns), dataset.values[:, index])


def webhook_policy(allowlist: str) -> UrlPolicy:
    """The outbound-URL policy of webhook targets (``webhook_url_allowlist``), the dataset URLs' own."""
    return UrlPolicy.parse(allowlist, WEBHOOK_ALLOWLIST)


def validate_webhook_url(url: str | None) -> str | None:
    if url is None:
        return None
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InvalidInput("webhook_url must be an absolute http(s) URL")
    return url


class JobService:
    def __init__(
        self,
        jobs: JobStore,
        messaging: MessageQueueService,
        dead_letters: DeadLetterStore,
        webhooks: UrlPolicy | None = None,
        resolve: Resolver = system_resolver,
        admission: MemoryAdmission | None = None,
        models: ModelStore | None = None,
    ) -> None:
        self._jobs = jobs
        self._models = models  # None: no model store (mode score and save_model are refused)
        self._admission = admission  # None: no memory check (tools, tests of other concerns)
        self._mq = messaging
        self._dlq = dead_letters
        # Default: public addresses only; the process wiring passes PYNOMALY_WEBHOOK_URL_ALLOWLIST.
        self._webhooks = webhooks or webhook_policy("")
        self._resolve = resolve

    def check_targets(self, targets: list[NotificationTarget], has_webhook_url: bool) -> None:
        """Refuse webhook targets whose host resolves (now) to an address the policy does not allow.

        ``parse_targets`` puts ``webhook_url`` first: the refusal names the field the caller sent.
        """
        for i, target in enumerate(targets):
            if target.channel == Channel.WEBHOOK.value:
                field = "webhook_url" if has_webhook_url and i == 0 else f"notify[{i - has_webhook_url}].target"
                check_url(target.target, self._webhooks, self._resolve, field)

    def submit(self, request: SubmitRequest) -> tuple[Job, bool]:
        """Returns the job and whether it was created (False: the idempotency key matched)."""
        mode = parse_mode(request.mode)
        scoring = self._scoring(request) if mode is Mode.SCORE else None
        save_model = self._save_model(request) if mode is Mode.DETECT else None
        if scoring is None:
            if not request.detector:
                raise InvalidInput("detector is required (mode detect)")
            spec = get_detector(request.detector)
            params = spec.validate(request.params)
            contamination = validate_contamination(request.contamination, request.threshold)
            if request.threshold is not None and isinstance(request.threshold, bool):
                raise InvalidInput("threshold must be a number")
            detector, threshold = spec.name, request.threshold
        else:
            meta = scoring.meta
            detector, params, contamination, threshold = meta.detector, meta.params, meta.contamination, meta.threshold
        webhook = validate_webhook_url(request.webhook_url)
        targets = parse_targets(request.notify, webhook)
        self.check_targets(targets, webhook is not None)
        steps = parse_steps(request.steps, has_webhook=bool(targets))
        if scoring is not None:  # the model's imputation and scaling always apply to the new rows
            steps = [s for s in STEP_ORDER if s in {*steps, Step.PREPROCESS}]
        priority = parse_priority(request.priority)
        preprocessing = PreprocessOptions.parse(scoring.preprocessing if scoring is not None else request.preprocessing)
        checked = request.dataset if scoring is None else scoring.features(request.dataset)
        _refuse_data_the_job_would_fail_on(checked, preprocessing, steps)
        if request.idempotency_key is not None and not 1 <= len(request.idempotency_key) <= 128:
            raise InvalidInput("Idempotency-Key must be 1 to 128 characters")
        if self._admission is not None:  # 507 before anything is stored, while Redis still has room
            size = request.dataset.values.nbytes
            self._admission.check(size + expected_growth(size))

        job = Job(
            id=new_job_id(),
            detector=detector,
            params=params,
            contamination=contamination,
            threshold=threshold,
            priority=priority.value,
            steps=[s.value for s in steps],
            preprocessing=preprocessing.as_dict(),
            dataset=request.dataset.summary(),
            webhook_url=webhook,
            notify=[t.as_dict() for t in targets],
            idempotency_key=request.idempotency_key,
            submitted_by=request.submitted_by,
            schedule_id=request.schedule_id,
            run_token=new_run_token(),
            mode=mode.value,
            model=scoring.meta.name if scoring is not None else None,
            model_version=scoring.meta.version if scoring is not None else None,
            save_model=save_model,
        )
        if request.idempotency_key:
            existing = self._claim(request.idempotency_key, job, request.dataset, request.model)
            if existing is not None:
                logs.bind(job_id=existing.id)
                return existing, False
        logs.bind(job_id=job.id)  # the request's log lines, its access line too
        trace.get_current_span().set_attribute("pynomaly.job_id", job.id)
        # The job and its events are written in one MULTI/EXEC with the outbox, before the job is
        # enqueued: a worker may start it at once, and its own events (written to the same outbox
        # later) then come after job_submitted on Kafka.
        events = [
            self._mq.new_event(
                "job_submitted",
                job.id,
                status=job.status,
                detector=job.detector,
                priority=job.priority,
                steps=job.steps,
                rows=job.dataset["rows"],
            ),
            self._audit_event("job.submitted", job.id, job.submitted_by),
        ]
        # The outbox entries carry this span's context: the events' trace starts here.
        with tracing.tracer().start_as_current_span("store job", attributes={"pynomaly.job_id": job.id}):
            self._jobs.create(job, request.dataset, also=self._mq.stage_events(events))
        if request.idempotency_key:
            self._jobs.confirm_idempotency_key(request.idempotency_key, job.id)
        self._enqueue(job)
        metrics.JOBS_SUBMITTED.labels(detector=job.detector, priority=job.priority).inc()
        return job, True

    def _scoring(self, request: SubmitRequest) -> _Scoring:
        """Validate a mode score request: the model exists, and its settings are not given again."""
        if request.save_model is not None:
            raise InvalidInput("save_model needs mode detect: a scoring job fits no model")
        if not request.model:
            raise InvalidInput("mode score needs model: '<name>' (its promoted version) or '<name>:<version>'")
        given = [
            name
            for name in ("params", "contamination", "threshold", "preprocessing")
            if getattr(request, name) is not None
        ]
        if given:
            raise InvalidInput(f"{', '.join(given)}: a scoring job uses the model's own; leave them out")
        ref = ModelRef.parse(request.model)
        if self._models is None:
            raise InvalidInput("this service has no model store")
        try:
            meta = self._models.resolve(ref)
        except NotFound as exc:
            raise InvalidInput(f"model {str(ref)!r}: {exc} (see GET /v1/models)") from None
        except Conflict as exc:
            raise InvalidInput(str(exc)) from None
        if request.detector and get_detector(request.detector).name != meta.detector:
            raise InvalidInput(
                f"detector {request.detector!r} does not match model {meta.ref}'s {meta.detector!r}; leave it out"
            )
        missing = [c for c in meta.columns if c not in request.dataset.columns]
        if missing:
            raise InvalidInput(f"the dataset has no column(s) {missing}; model {meta.ref} needs {meta.columns}")
        return _Scoring(meta)

    def _save_model(self, request: SubmitRequest) -> str | None:
        if request.model is not None:
            raise InvalidInput("model is for mode score; to store this job's fitted detector use save_model")
        if request.save_model is None:
            return None
        name = validate_model_name(request.save_model, "save_model")
        if self._models is None:
            raise InvalidInput("this service has no model store")
        self._models.check_room(name)
        return name

    def cancel(self, job_id: str, actor: str | None = None) -> Job:
        job = self._jobs.request_cancel(job_id)
        # One audit record, under the caller who cancelled (a running job is cancelled by its
        # worker at the next checkpoint; that worker's job_cancelled event is no one's action).
        events = [self._audit_event("job.cancel", job.id, actor)]
        if job.state is JobStatus.CANCELLED:
            reason = "cancelled before it started"
            events.insert(0, self._mq.new_event("job_cancelled", job.id, status=job.status, reason=reason))
        self._publish(events)
        return job

    def retry(self, job_id: str, actor: str | None = None) -> Job:
        """Run a failed or cancelled job again from its first step."""
        job = self._jobs.get(job_id)
        if job.state not in (JobStatus.FAILED, JobStatus.CANCELLED):
            raise Conflict(f"only failed or cancelled jobs can be retried; this one is {job.status}")
        if not self._jobs.has_blob(DATASET, job_id):
            raise Conflict(f"job {job_id}'s dataset is no longer kept (job_data_ttl_seconds): submit it again")
        self._jobs.mark_unqueued(job_id)  # before the change: a crash after it still gets the job sent
        job = self._jobs.transition(
            job_id,
            JobStatus.QUEUED,
            progress=0.0,
            message="queued again",
            error=None,
            cancel_requested=False,
            run_token=new_run_token(),
            finished_at=None,
            step_redeliveries={},  # a new run: its steps start with a clean slate
        )
        self._announce("job_submitted", job, detector=job.detector, priority=job.priority, steps=job.steps, retry=True)
        self._enqueue(job)
        self._audit("job.retry", job.id, actor)
        return job

    def purge(self, job_id: str, actor: str | None = None) -> Job:
        """Delete a finished job with its datasets, result and reports (409 while queued or running)."""
        job = self._jobs.purge(job_id)
        self._audit("job.purge", job.id, actor)
        return job

    def replay_dead_letter(self, letter_id: str, actor: str | None = None) -> DeadLetter:
        letter = self._dlq.get(letter_id)
        if letter.job_id:
            job = self._jobs.get(letter.job_id)
            # A dead notification delivery is replayed alone: the job itself stays as it is.
            if letter.task != TASK_DELIVER and job.state in (JobStatus.FAILED, JobStatus.CANCELLED):
                self._jobs.transition(
                    job.id,
                    JobStatus.QUEUED,
                    message="replayed from the dead-letter queue",
                    error=None,
                    finished_at=None,
                    step_redeliveries={},
                )
            priority = Priority(job.priority)
        else:
            priority = Priority.NORMAL
        try:
            self._mq.enqueue_task(letter.task, letter.args, letter.kwargs, priority)
        except Exception as exc:
            raise ServiceUnavailable(f"could not enqueue the replay: {exc}") from exc
        self._dlq.remove(letter.id)
        self._audit("dlq.replay", letter.job_id or letter.id, actor, task=letter.task)
        return letter

    def purge_dead_letters(self, actor: str | None = None) -> int:
        count = self._dlq.purge()
        self._audit("dlq.purge", "dlq", actor, count=count)
        return count

    # -- internals -------------------------------------------------------------------------------
    def _claim(self, key: str, job: Job, dataset: Dataset, model_ref: str | None = None) -> Job | None:
        """Claim ``key`` for ``job`` atomically: None when this request won it (and creates the job),
        else the job an earlier request with the same key and body made.

        A different body under the key is a 422; a claim whose job is not stored yet (the winner is
        between claim and create) is waited for briefly, then a 409 to retry.
        """
        fingerprint = _fingerprint(job, dataset, model_ref)
        deadline = time.monotonic() + CLAIM_WAIT_SECONDS
        while True:
            held = self._jobs.claim_idempotency_key(key, job.id, fingerprint, CLAIM_PENDING_SECONDS)
            if held is None:
                return None
            holder, held_fingerprint = held
            if held_fingerprint is not None and held_fingerprint != fingerprint:
                raise InvalidInput("Idempotency-Key was already used with a different request; use a new key")
            try:
                return self._jobs.get(holder)
            except NotFound:
                if time.monotonic() >= deadline:
                    raise Conflict(
                        "a request with this Idempotency-Key is still being processed; retry in a moment"
                    ) from None
                time.sleep(0.02)

    def requeue_unqueued(self, grace_seconds: float) -> list[str]:
        """Send again the jobs stored as queued whose Celery message was never confirmed sent (the
        process died, or Redis failed, between the job's write and its message).

        A new run token first: should the original message exist after all, it is skipped as stale,
        so the job runs once.  Jobs that started meanwhile (their message did exist) are only unmarked.
        """
        requeued: list[str] = []
        for job_id in self._jobs.unqueued_since(grace_seconds):
            try:  # checked and changed in one optimistic transaction: a worker may start it meanwhile
                job = self._jobs.update(job_id, _new_run_if_never_started)
            except (NotFound, Conflict):
                self._jobs.mark_enqueued(job_id)
                continue
            log.warning("job %s was stored but its queue message was never confirmed; sending it again", job_id)
            self._enqueue(job)
            requeued.append(job_id)
        return requeued

    def _enqueue(self, job: Job) -> None:
        try:
            self._mq.enqueue_job(job)
            self._jobs.mark_enqueued(job.id)
        except Exception as exc:
            # Redis went away between the job's write and its queue message: the job is marked
            # failed (not left queued forever) when Redis still answers; the caller gets 503.
            log.warning("enqueue failed for job %s: %s: %s", job.id, type(exc).__name__, exc)
            error = str(exc)
            try:
                failed = self._jobs.update(job.id, lambda j: _mark_unqueued(j, error))
                self._announce("job_failed", failed, error=failed.error)
                if job.idempotency_key:
                    self._jobs.release_idempotency_key(job.idempotency_key, job.id)
            except Exception as again:
                log.warning("could not mark job %s as not queued: %s: %s", job.id, type(again).__name__, again)
            raise ServiceUnavailable(f"the job could not be queued (broker unavailable): {exc}") from exc

    def _announce(self, event_type: str, job: Job, **data: Any) -> None:
        """A lifecycle event.  Its audit record, if any, is the caller's: written where the caller
        acted (``job.submitted``, ``job.cancel``, ``job.retry``), under that caller."""
        self._publish([self._mq.new_event(event_type, job.id, status=job.status, **data)])

    def _publish(self, events: list[EventEnvelope]) -> None:
        try:
            self._mq.publish_events(events)
        except Exception as exc:  # the change is recorded; the event stream is best effort here
            log.warning("could not publish %s: %s: %s", [e.type for e in events], type(exc).__name__, exc)

    def _audit_event(self, action: str, subject: str, actor: str | None, **data: Any) -> EventEnvelope:
        return self._mq.new_event("audit_record", subject, action=action, actor=actor or "anonymous", **data)

    def _audit(self, action: str, subject: str, actor: str | None, **data: Any) -> None:
        record_audit(self._mq, action, subject, actor, **data)


def _fingerprint(job: Job, dataset: Dataset, model_ref: str | None = None) -> str:
    """What makes two submits the same request: the validated fields and the dataset's bytes.

    A scoring job's detector, params, threshold and preprocessing are its model's, resolved at submit:
    it is fingerprinted by the model it named (``model_ref`` as sent), so the same request after a
    promotion is still the same request."""
    names = ["priority", "steps", "webhook_url", "notify", "schedule_id", "submitted_by"]
    if job.mode == Mode.DETECT.value:
        names += ["detector", "params", "contamination", "threshold", "preprocessing"]
    fields: dict[str, Any] = {name: getattr(job, name) for name in names}
    # Added only when used, so a plain detect job's fingerprint is what it was before models existed
    # (claims stored by the previous version still match after an upgrade).
    extra = {"mode": job.mode if job.mode != Mode.DETECT.value else None, "save_model": job.save_model}
    fields |= {name: value for name, value in {**extra, "model_ref": model_ref}.items() if value is not None}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode())
    digest.update(dataset.to_bytes())
    return digest.hexdigest()


def _refuse_data_the_job_would_fail_on(dataset: Dataset, options: PreprocessOptions, steps: list[Step]) -> None:
    """Missing (null, empty, NA) and infinite cells are refused here, not by a failing job, when
    nothing would impute them: ``missing: reject``, or no preprocess step (detection needs finite data)."""
    if options.missing is MissingPolicy.REJECT and Step.PREPROCESS in steps:
        refuse_non_finite(dataset.values, dataset.columns, f"preprocessing.missing is reject; {REJECT_HINT}")
    elif Step.PREPROCESS not in steps:
        refuse_non_finite(dataset.values, dataset.columns, "add the preprocess step to impute or drop them")


def _new_run_if_never_started(job: Job) -> None:
    if job.state is not JobStatus.QUEUED or job.started_at is not None:
        raise Conflict(f"job {job.id} is {job.status}: its message was sent after all")
    job.run_token = new_run_token()
    job.message = "queued again: its first queue message was never confirmed"


def _mark_unqueued(job: Job, error: str) -> None:
    job.status = JobStatus.FAILED.value
    job.error = f"not queued: {error}"
    job.message = "the broker did not accept the job"
