"""Job endpoints: submit, list, get, result, report, cancel, retry."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.types import Message

from pynomaly.api.deps import Caller, JobServiceDep, JobStoreDep, RedisDep, SettingsDep
from pynomaly.api.schemas import (
    JobAccepted,
    JobCreate,
    JobPage,
    JobStatusName,
    JobView,
    Links,
    NotificationEntry,
    NotificationLog,
    NotificationTargetState,
    Offset,
)
from pynomaly.domain.datasets import DatasetLimits, from_rows, parse_csv
from pynomaly.domain.errors import Conflict, InvalidInput
from pynomaly.domain.jobs import Job
from pynomaly.domain.reports import MEDIA_TYPES
from pynomaly.storage.jobs import JobStore
from pynomaly.storage.notification_log import notification_log
from pynomaly.usecases.jobs import SubmitRequest

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/JobCreate"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "CSV with a header row"},
                        "detector": {"type": "string"},
                        "params": {"type": "string", "description": "JSON object"},
                        "contamination": {"type": "number"},
                        "threshold": {"type": "number"},
                        "priority": {"type": "string", "enum": ["low", "normal", "high", "critical"]},
                        "steps": {"type": "string", "description": "comma-separated, e.g. preprocess,detect,report"},
                        "preprocessing": {"type": "string", "description": "JSON object"},
                        "webhook_url": {"type": "string"},
                        "notify": {"type": "string", "description": "JSON array of {channel, target, on, threshold?}"},
                        "mode": {"type": "string", "enum": ["detect", "score"]},
                        "model": {"type": "string", "description": "mode score: <name>[:version]"},
                        "save_model": {"type": "string", "description": "mode detect: model name to save to"},
                    },
                }
            },
        },
    }
}


def links(job_id: str) -> Links:
    base = f"/v1/jobs/{job_id}"
    return Links(
        self=base, result=f"{base}/result", report=f"{base}/report", cancel=base, notifications=f"{base}/notifications"
    )


def view(job: Job) -> JobView:
    data = job.as_dict()
    return JobView(**{k: v for k, v in data.items() if k in JobView.model_fields}, links=links(job.id))


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise InvalidInput(f"request body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise InvalidInput(f"request body exceeds the limit of {limit} bytes")
    return bytes(body)


async def _read_form(request: Request, limit: int) -> FormData:
    """The multipart form of a body read within ``limit`` bytes (then parsed from memory)."""
    body = await _read_limited(request, limit)
    replayed = False

    async def receive() -> Message:
        nonlocal replayed
        if replayed:
            return {"type": "http.disconnect"}
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    # The stream is consumed: a request over the same scope that replays the bytes read parses the form.
    return await Request(request.scope, receive).form()


def _form_text(form: FormData, name: str) -> str | None:
    """A text field of a multipart form (None when absent); a file sent under a text field's name is refused."""
    value = form.get(name)
    if value is None or isinstance(value, str):
        return value
    raise InvalidInput(f"{name} must be a text field, not a file")


def _json_field(raw: str | None, name: str) -> Any:
    if raw is None or raw == "":
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise InvalidInput(f"{name} must be a JSON object") from None


def _json_list_field(raw: str | None, name: str) -> Any:
    value = _json_field(raw, name) if raw else None
    if value is not None and not isinstance(value, list):
        raise InvalidInput(f"{name} must be a JSON array")
    return value


def _number_field(raw: str | None, name: str) -> float | None:
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be a number") from None


@router.post(
    "", status_code=202, response_model=JobAccepted, openapi_extra=_SUBMIT_BODY, summary="Submit a detection job"
)
async def submit_job(
    request: Request,
    response: Response,
    caller: Caller,
    settings: SettingsDep,
    job_service: JobServiceDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JobAccepted:
    limits = DatasetLimits(settings.max_upload_bytes, settings.max_rows, settings.max_columns)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    # JSON rows are wordier than CSV: allow them four times the dataset byte limit.
    if content_type == "application/json":
        body = await _read_limited(request, settings.max_upload_bytes * 4)
        try:
            payload = JobCreate.model_validate_json(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise InvalidInput(f"{where}: {first['msg']}") from None
        dataset = await run_in_threadpool(from_rows, payload.rows, payload.columns, limits)
        fields: dict[str, Any] = payload.model_dump(exclude={"rows", "columns"})
    elif content_type == "multipart/form-data":
        form = await _read_form(request, settings.max_upload_bytes + 64 * 1024)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InvalidInput("multipart body needs a 'file' part with the CSV")
        dataset = await run_in_threadpool(parse_csv, await upload.read(), limits)
        unknown = sorted(
            set(form.keys())
            - {
                "file",
                "detector",
                "params",
                "contamination",
                "threshold",
                "priority",
                "steps",
                "preprocessing",
                "webhook_url",
                "notify",
                "mode",
                "model",
                "save_model",
            }
        )
        if unknown:
            raise InvalidInput(f"unknown form field(s) {unknown}")
        steps_raw = _form_text(form, "steps")
        fields = {
            "detector": _form_text(form, "detector") or None,
            "params": _json_field(_form_text(form, "params"), "params"),
            "contamination": _number_field(_form_text(form, "contamination"), "contamination"),
            "threshold": _number_field(_form_text(form, "threshold"), "threshold"),
            "priority": _form_text(form, "priority") or None,
            "steps": [s.strip() for s in steps_raw.split(",") if s.strip()] if steps_raw else None,
            "preprocessing": _json_field(_form_text(form, "preprocessing"), "preprocessing"),
            "webhook_url": _form_text(form, "webhook_url") or None,
            "notify": _json_list_field(_form_text(form, "notify"), "notify"),
            "mode": _form_text(form, "mode") or None,
            "model": _form_text(form, "model") or None,
            "save_model": _form_text(form, "save_model") or None,
        }
    else:
        raise HTTPException(415, "send application/json (rows) or multipart/form-data (a CSV file)")
    for name in ("params", "preprocessing"):
        if fields.get(name) is not None and not isinstance(fields[name], dict):
            raise InvalidInput(f"{name} must be a JSON object")
    # Redis and Celery calls block: they run in the thread pool, never on the event loop.
    job, created = await run_in_threadpool(
        job_service.submit,
        SubmitRequest(dataset=dataset, idempotency_key=idempotency_key, submitted_by=caller, **fields),
    )
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if not created:
        response.status_code = 200
    return JobAccepted(id=job.id, status=job.status, created=created, links=links(job.id))


@router.get("", response_model=JobPage, summary="List jobs, newest first")
def list_jobs(
    store: JobStoreDep,
    _: Caller,
    status: Annotated[JobStatusName | None, Query()] = None,
    detector: Annotated[str | None, Query(max_length=32)] = None,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    schedule_id: Annotated[str | None, Query(max_length=64, description="Only runs of this schedule.")] = None,
) -> JobPage:
    jobs, total = store.list(status=status, detector=detector, offset=offset, limit=limit, schedule_id=schedule_id)
    return JobPage(items=[view(j) for j in jobs], total=total, offset=offset, limit=limit)


@router.get("/{job_id}", response_model=JobView, summary="A job's status, progress and timings")
def get_job(job_id: str, store: JobStoreDep, _: Caller) -> JobView:
    return view(store.get(job_id))


def _finished_result(store: JobStore, job_id: str) -> tuple[Job, dict[str, Any]]:
    job = store.get(job_id)
    if job.result_location is None:
        raise Conflict(f"job {job_id} has no result yet (status {job.status})")
    return job, store.get_blob("result", job_id)


@router.get("/{job_id}/result", summary="Scores, labels, threshold and top anomalies")
def get_result(job_id: str, store: JobStoreDep, _: Caller) -> dict[str, Any]:
    job, result = _finished_result(store, job_id)
    return {"job_id": job.id, "status": job.status, **result}


@router.get(
    "/{job_id}/report",
    summary="The job's report as JSON, CSV or standalone HTML",
    responses={200: {"content": {media.split(";")[0]: {"schema": {}} for media in MEDIA_TYPES.values()}}},
)
def get_report(
    job_id: str,
    store: JobStoreDep,
    _: Caller,
    format: Annotated[str, Query(pattern="^(json|csv|html)$")] = "json",
) -> Response:
    from pynomaly.domain.reports import render

    job, result = _finished_result(store, job_id)
    # Reports made by the report step are served as stored; otherwise render on demand.
    body = (
        store.get_blob(f"report-{format}", job_id)
        if store.has_blob(f"report-{format}", job_id)
        else render(format, job.as_dict(), result)
    )
    headers = {"Content-Disposition": f'inline; filename="pynomaly-{job_id}.{format}"'}
    return Response(body, media_type=MEDIA_TYPES[format], headers=headers)


@router.get(
    "/{job_id}/notifications",
    response_model=NotificationLog,
    summary="The job's notification outcomes (queued, delivered, retrying, dead_lettered) per target",
)
def get_notifications(job_id: str, store: JobStoreDep, client: RedisDep, _: Caller) -> NotificationLog:
    job = store.get(job_id)  # 404 for an unknown (or expired) job
    entries = notification_log(client, job.id)
    latest: dict[int, NotificationTargetState] = {}
    for entry in entries:
        previous = latest.get(entry["index"])
        latest[entry["index"]] = NotificationTargetState(
            index=entry["index"],
            channel=entry["channel"],
            target=entry["target"],
            on=entry["on"],
            status=entry["status"],
            attempts=max(entry["attempt"], previous.attempts if previous else 0),
            detail=entry["detail"],
            updated=entry["time"],
        )
    return NotificationLog(
        job_id=job.id,
        items=[NotificationEntry(**e) for e in entries],
        targets=[latest[i] for i in sorted(latest)],
        total=len(entries),
    )


@router.delete(
    "/{job_id}",
    response_model=JobView,
    summary="Cancel a queued or running job; with purge=true, delete a finished job and its data",
    responses={
        204: {"description": "purge=true: the job, its datasets, result and reports are deleted"},
        409: {"description": "cancel: the job already finished; purge: the job is still queued or running"},
    },
)
def cancel_job(
    job_id: str,
    job_service: JobServiceDep,
    caller: Caller,
    purge: Annotated[
        bool,
        Query(description="Delete the finished (completed, failed or cancelled) job with everything kept for it."),
    ] = False,
) -> Any:
    if purge:
        job_service.purge(job_id, actor=caller)
        return Response(status_code=204)
    return view(job_service.cancel(job_id, actor=caller))


@router.post("/{job_id}/retry", response_model=JobView, status_code=202, summary="Run a failed or cancelled job again")
def retry_job(job_id: str, job_service: JobServiceDep, caller: Caller) -> JobView:
    return view(job_service.retry(job_id, actor=caller))
