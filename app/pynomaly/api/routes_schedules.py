"""Schedule endpoints: create, list, get (with last runs and next run), pause, resume, run now, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from pynomaly.api.deps import Caller, ScheduleServiceDep, ScheduleStoreDep
from pynomaly.api.schemas import Offset
from pynomaly.api.schemas_schedules import RunAccepted, ScheduleCreate, SchedulePage, ScheduleRun, ScheduleView
from pynomaly.domain.errors import NotFound
from pynomaly.domain.schedules import Schedule
from pynomaly.usecases.schedules import ScheduleService

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])


def view(service: ScheduleService, item: Schedule, runs: int = 10) -> ScheduleView:
    return ScheduleView(
        **item.as_dict(),
        next_run_at=service.next_run(item),
        last_runs=[ScheduleRun.model_validate(run) for run in service.recent_runs(item.id, runs)] if runs else [],
        jobs=f"/v1/jobs?schedule_id={item.id}",
    )


def _json_body(request: Request, _: Caller) -> None:
    # Without it a CSV or form body gets "Input should be a valid dictionary": say what to send.
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise HTTPException(415, "send the schedule as application/json")


@router.post(
    "",
    status_code=201,
    response_model=ScheduleView,
    summary="Create a recurring detection schedule",
    dependencies=[Depends(_json_body)],
)
def create_schedule(
    body: ScheduleCreate, service: ScheduleServiceDep, response: Response, caller: Caller
) -> ScheduleView:
    item = service.create(body.model_dump(), actor=caller)
    response.headers["Location"] = f"/v1/schedules/{item.id}"
    return view(service, item, runs=0)


@router.get("", response_model=SchedulePage, summary="List schedules, newest first")
def list_schedules(
    service: ScheduleServiceDep,
    store: ScheduleStoreDep,
    _: Caller,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> SchedulePage:
    items, total = store.list(offset, limit)
    return SchedulePage(items=[view(service, s, runs=0) for s in items], total=total, offset=offset, limit=limit)


@router.get("/{schedule_id}", response_model=ScheduleView, summary="A schedule with its last runs and next run")
def get_schedule(
    schedule_id: str, service: ScheduleServiceDep, _: Caller, runs: Annotated[int, Query(ge=0, le=100)] = 10
) -> ScheduleView:
    return view(service, service.get(schedule_id), runs)


@router.post("/{schedule_id}/pause", response_model=ScheduleView, summary="Stop sending runs until resumed")
def pause_schedule(schedule_id: str, service: ScheduleServiceDep, caller: Caller) -> ScheduleView:
    return view(service, service.pause(schedule_id, actor=caller))


@router.post("/{schedule_id}/resume", response_model=ScheduleView, summary="Send runs again")
def resume_schedule(schedule_id: str, service: ScheduleServiceDep, caller: Caller) -> ScheduleView:
    return view(service, service.resume(schedule_id, actor=caller))


@router.post("/{schedule_id}/run", status_code=202, response_model=RunAccepted, summary="Start one run now")
def run_schedule(schedule_id: str, service: ScheduleServiceDep, response: Response, caller: Caller) -> RunAccepted:
    job = service.run(schedule_id, trigger="manual", actor=caller)
    if job is None:  # deleted since it was looked up: a manual run skips only a missing schedule
        raise NotFound(f"no schedule {schedule_id!r}")
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return RunAccepted(schedule_id=schedule_id, job_id=job.id, status=job.status, job=f"/v1/jobs/{job.id}")


@router.delete("/{schedule_id}", status_code=204, summary="Delete a schedule (its past jobs stay)")
def delete_schedule(schedule_id: str, service: ScheduleServiceDep, caller: Caller) -> Response:
    service.delete(schedule_id, actor=caller)
    return Response(status_code=204)
