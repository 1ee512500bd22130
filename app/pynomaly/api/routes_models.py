"""Model endpoints: list, show (versions, promoted), one version, promote (and roll back), delete.

Models are made by jobs with ``save_model`` and used by jobs with ``mode: score``; these routes only
read and manage them.  Every change is audited and announced on ``system_events`` (``model_promoted``,
``model_deleted``), where a scorer learns to drop its cached copy.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from pynomaly.api.deps import Caller, ContainerDep, ModelStoreDep
from pynomaly.api.schemas import Offset
from pynomaly.domain.models import MAX_VERSION, MODEL_NAME_PATTERN, Model, ModelVersion
from pynomaly.storage.models import ModelStore
from pynomaly.usecases.audit import record_audit
from pynomaly.wiring import Container

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/models", tags=["models"])

ModelName = Annotated[
    str,
    Path(min_length=1, max_length=64, pattern=MODEL_NAME_PATTERN, description="The model's name."),
]
VersionNumber = Annotated[int, Path(ge=1, le=MAX_VERSION, description="A version number (from 1).")]


class ModelVersionView(BaseModel):
    name: str
    version: int
    promoted: bool = Field(description="Whether the model's name alone means this version.")
    detector: str
    params: dict[str, Any]
    contamination: float
    threshold: float = Field(description="Scores above it are anomalies.")
    columns: list[str] = Field(description="Feature columns, in the order the detector reads them.")
    preprocessing: dict[str, Any] = Field(
        description="missing and scaling policies with the values learned from the training rows "
        "(fill: imputation values; centre, spread: scaling), per column."
    )
    rows: int = Field(description="Rows the detector was fitted on.")
    training_job: str | None
    created_by: str | None
    created_at: str
    checksum: str = Field(description="sha256 of the artifact; loading refuses an artifact that differs.")
    size_bytes: int
    libraries: dict[str, str] = Field(description="pyod, scikit-learn and numpy versions that wrote the artifact.")
    store: str = Field(description="Artifact backend: redis or dir.")


class ModelView(BaseModel):
    name: str
    promoted: int | None = Field(description="The version the name alone means.")
    latest: int | None
    created_at: str
    updated_at: str
    versions: list[ModelVersionView] = Field(description="Every kept version, oldest first.")


class ModelSummary(BaseModel):
    name: str
    promoted: int | None
    latest: int | None
    versions: list[int]
    created_at: str
    updated_at: str


class ModelPage(BaseModel):
    items: list[ModelSummary]
    total: int
    offset: int
    limit: int


class ModelPromote(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=MAX_VERSION, description="The version to promote (an older one rolls back).")


def _version_view(meta: ModelVersion, promoted: int | None) -> ModelVersionView:
    return ModelVersionView(**meta.as_dict(), promoted=meta.version == promoted)


def _view(store: ModelStore, model: Model) -> ModelView:
    versions = [_version_view(v, model.promoted) for v in store.versions(model.name)]
    return ModelView(
        name=model.name,
        promoted=model.promoted,
        latest=model.latest,
        created_at=model.created_at,
        updated_at=model.updated_at,
        versions=versions,
    )


def _json_body(request: Request, _: Caller) -> None:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise HTTPException(415, 'send the version to promote as application/json, e.g. {"version": 2}')


def _announce(container: Container, event_type: str, action: str, name: str, actor: str, **data: Any) -> None:
    """The change on system_events (keyed by the model's name) and its audit record; best effort."""
    try:
        container.messaging.publish_event(event_type, name, **data)
    except Exception as exc:  # the change is stored; its event is best effort, as audit records are
        log.warning("could not publish %s for model %s: %s: %s", event_type, name, type(exc).__name__, exc)
    record_audit(container.messaging, action, name, actor, **data)


@router.get("", response_model=ModelPage, summary="List trained models, newest first")
def list_models(
    store: ModelStoreDep,
    _: Caller,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> ModelPage:
    items, total = store.list(offset, limit)
    return ModelPage(
        items=[ModelSummary(**{k: v for k, v in m.as_dict().items() if k in ModelSummary.model_fields}) for m in items],
        total=total,
        offset=offset,
        limit=limit,
    )


@router.get("/{name}", response_model=ModelView, summary="A model with its versions and the promoted one")
def get_model(name: ModelName, store: ModelStoreDep, _: Caller) -> ModelView:
    return _view(store, store.get(name))


@router.get(
    "/{name}/versions/{version}",
    response_model=ModelVersionView,
    summary="One version: detector, params, training job, rows, columns, threshold, checksum, libraries",
)
def get_model_version(name: ModelName, version: VersionNumber, store: ModelStoreDep, _: Caller) -> ModelVersionView:
    meta = store.version(name, version)
    return _version_view(meta, store.get(name).promoted)


@router.post(
    "/{name}/promote",
    response_model=ModelView,
    summary="Make a version the one the name means (promote an older one to roll back)",
    dependencies=[Depends(_json_body)],
)
def promote_model(
    name: ModelName, body: ModelPromote, store: ModelStoreDep, container: ContainerDep, caller: Caller
) -> ModelView:
    before = store.get(name).promoted
    model = store.promote(name, body.version)
    _announce(container, "model_promoted", "model.promote", name, caller, version=body.version, previous=before)
    return _view(store, model)


@router.delete(
    "/{name}/versions/{version}",
    status_code=204,
    summary="Delete one version (not the promoted one)",
    responses={409: {"description": "the version is promoted: promote another first, or delete the model"}},
)
def delete_model_version(
    name: ModelName, version: VersionNumber, store: ModelStoreDep, container: ContainerDep, caller: Caller
) -> Response:
    store.delete_version(name, version)
    _announce(container, "model_deleted", "model.version.delete", name, caller, version=version)
    return Response(status_code=204)


@router.delete("/{name}", status_code=204, summary="Delete a model with every version and artifact")
def delete_model(name: ModelName, store: ModelStoreDep, container: ContainerDep, caller: Caller) -> Response:
    model = store.delete(name)
    _announce(container, "model_deleted", "model.delete", name, caller, versions=model.versions)
    return Response(status_code=204)
