"""Stored datasets for schedules: upload (CSV or JSON rows, size-limited, sha256), list, get, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from pynomaly.api.deps import (
    AdmissionDep,
    Caller,
    DatasetServiceDep,
    DatasetStoreDep,
    ScheduleStoreDep,
    SettingsDep,
)
from pynomaly.api.routes_jobs import _read_form, _read_limited
from pynomaly.api.schemas import Offset
from pynomaly.api.schemas_schedules import DatasetCreate, DatasetPage, DatasetView
from pynomaly.domain.errors import InvalidInput

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/DatasetCreate"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}, "name": {"type": "string"}},
                }
            },
        },
    }
}


@router.post(
    "", status_code=201, response_model=DatasetView, openapi_extra=_UPLOAD_BODY, summary="Store a dataset for schedules"
)
async def upload_dataset(
    request: Request,
    response: Response,
    caller: Caller,
    settings: SettingsDep,
    service: DatasetServiceDep,
    admission: AdmissionDep,
    name: Annotated[str | None, Query(max_length=100, description="Label for text/csv uploads.")] = None,
) -> DatasetView:
    limit = settings.max_upload_bytes
    # 507 before reading the body: a stored dataset stays until deleted, so Redis must have room for it.
    declared = request.headers.get("content-length", "")
    incoming = min(int(declared), limit * 4) if declared.isdigit() else limit
    await run_in_threadpool(admission.check, incoming, "dataset")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("text/csv", "application/csv", "text/plain"):
        body = await _read_limited(request, limit)
        meta = await run_in_threadpool(service.add_csv, body, name, caller)  # Redis: off the loop
    elif content_type == "multipart/form-data":
        form = await _read_form(request, limit + 64 * 1024)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InvalidInput("multipart body needs a 'file' part with the CSV")
        label = form.get("name")
        meta = await run_in_threadpool(
            service.add_csv, await upload.read(), label if isinstance(label, str) else name, caller
        )
    elif content_type == "application/json":
        body = await _read_limited(request, limit * 4)
        try:
            payload = DatasetCreate.model_validate_json(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise InvalidInput(f"{where}: {first['msg']}") from None
        meta = await run_in_threadpool(service.add_rows, payload.rows, payload.columns, payload.name or name, caller)
    else:
        raise HTTPException(415, "send text/csv, multipart/form-data (a CSV file) or application/json (rows)")
    response.headers["Location"] = f"/v1/datasets/{meta.id}"
    return DatasetView(**meta.as_dict())


@router.get("", response_model=DatasetPage, summary="List stored datasets, newest first")
def list_datasets(
    store: DatasetStoreDep,
    _: Caller,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> DatasetPage:
    items, total = store.list(offset, limit)
    return DatasetPage(items=[DatasetView(**d.as_dict()) for d in items], total=total, offset=offset, limit=limit)


@router.get("/{dataset_id}", response_model=DatasetView, summary="A stored dataset's size, columns and checksum")
def get_dataset(dataset_id: str, store: DatasetStoreDep, _: Caller) -> DatasetView:
    return DatasetView(**store.get(dataset_id).as_dict())


@router.delete("/{dataset_id}", status_code=204, summary="Delete a stored dataset no schedule uses")
def delete_dataset(
    dataset_id: str, service: DatasetServiceDep, schedules: ScheduleStoreDep, caller: Caller
) -> Response:
    service.delete(dataset_id, schedules, actor=caller)
    return Response(status_code=204)
