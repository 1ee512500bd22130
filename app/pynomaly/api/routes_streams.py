"""Stream bindings: which model scores a scorer input topic live, and who hears of its anomalies.

Only topics the topology declares as inputs of the scorer pool may be bound (404 otherwise).  A
binding to an unknown model or version, or to a model without a promoted version, is refused and
stores nothing.  Each change is audited (``stream.bind``, ``stream.unbind``), announced on
``system_events`` (``stream_bound``, ``stream_unbound``, keyed by the topic) and bumps the scoring
generation in the same Redis transaction, so running scorers use it from their next batch.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from pynomaly.api.deps import Caller, ContainerDep, ModelStoreDep
from pynomaly.domain.errors import DomainError, NotFound
from pynomaly.domain.live import (
    DEFAULT_NOTIFY_INTERVAL,
    MAX_NOTIFY_INTERVAL,
    MAX_STREAM_TARGETS,
    StreamBinding,
    parse_stream_targets,
    stream_target_dicts,
    validate_notify_interval,
)
from pynomaly.domain.models import ModelRef
from pynomaly.storage.bindings import BindingStore
from pynomaly.topology import GROUP_SCORER, TOPOLOGY
from pynomaly.usecases.audit import record_audit
from pynomaly.wiring import Container

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/streams", tags=["streams"])

TopicName = Annotated[str, Path(min_length=1, max_length=249, description="A scorer input topic, e.g. measurements.")]


def scorer_inputs() -> tuple[str, ...]:
    """The topics the scorer pool reads: the only ones a model may be bound to."""
    return TOPOLOGY.consumer_group(GROUP_SCORER).topics


class StreamTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Literal["webhook", "email"]
    target: str = Field(min_length=1, max_length=2048, description="An http(s) URL (webhook) or an e-mail address.")


class StreamBindingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        min_length=1,
        max_length=80,
        description="'name' (scores with the promoted version, following promotions) or 'name:version' (pinned).",
    )
    notify: list[StreamTarget] = Field(
        default_factory=list,
        max_length=MAX_STREAM_TARGETS,
        description="Targets told of each anomaly (webhook URLs are checked as a job's are).",
    )
    notify_interval_seconds: int = Field(
        DEFAULT_NOTIFY_INTERVAL,
        ge=1,
        le=MAX_NOTIFY_INTERVAL,
        description="At most one notification per entity in this many seconds (a flapping sensor sends one).",
    )


class StreamBindingView(BaseModel):
    topic: str
    model: str
    notify: list[dict[str, Any]]
    notify_interval_seconds: int
    created_at: str
    updated_at: str
    updated_by: str | None
    version: int | None = Field(description="The model version the binding means now (None: cannot be resolved).")


class StreamBindingList(BaseModel):
    items: list[StreamBindingView]
    inputs: list[str] = Field(description="The topics that may be bound (the scorer pool's inputs).")


def _input_topic(topic: str) -> str:
    inputs = scorer_inputs()
    if topic not in inputs:
        raise NotFound(f"topic {topic!r} is not read by the scorer pool; bindable topics: {list(inputs)}")
    return topic


def _view(container: Container, binding: StreamBinding) -> StreamBindingView:
    try:
        version: int | None = container.models.resolve(binding.ref).version
    except DomainError:  # the model was deleted since: the binding stays, its records are dead-lettered
        version = None
    return StreamBindingView(**binding.as_dict(), version=version)


def _json_body(request: Request, _: Caller) -> None:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise HTTPException(415, 'send the binding as application/json, e.g. {"model": "sensors"}')


def _announce(container: Container, event_type: str, action: str, topic: str, actor: str, **data: Any) -> None:
    try:
        container.messaging.publish_event(event_type, topic, **data)
    except Exception as exc:  # the binding is stored (and scorers see it by the generation); the event is best effort
        log.warning("could not publish %s for %s: %s: %s", event_type, topic, type(exc).__name__, exc)
    record_audit(container.messaging, action, topic, actor, **data)


@router.get("", response_model=StreamBindingList, summary="Stream bindings, and the topics that may be bound")
def list_bindings(container: ContainerDep, _: Caller) -> StreamBindingList:
    bindings = BindingStore(container.redis).all()
    return StreamBindingList(
        items=[_view(container, bindings[t]) for t in sorted(bindings)], inputs=list(scorer_inputs())
    )


@router.get("/{topic}", response_model=StreamBindingView, summary="The model bound to a topic")
def get_binding(topic: TopicName, container: ContainerDep, _: Caller) -> StreamBindingView:
    return _view(container, BindingStore(container.redis).get(_input_topic(topic)))


@router.put(
    "/{topic}",
    response_model=StreamBindingView,
    summary="Bind a model (and notification targets) to a scorer input topic",
    responses={201: {"model": StreamBindingView, "description": "Bound (the topic had no binding before)"}},
    dependencies=[Depends(_json_body)],
)
def put_binding(
    topic: TopicName,
    body: StreamBindingIn,
    store: ModelStoreDep,
    container: ContainerDep,
    caller: Caller,
    response: Response,
) -> StreamBindingView:
    _input_topic(topic)
    ref = ModelRef.parse(body.model)
    meta = store.resolve(ref)  # 404 unknown model or version, 409 nothing promoted: nothing stored
    targets = parse_stream_targets([t.model_dump() for t in body.notify])
    container.job_service.check_targets(targets, has_webhook_url=False)  # the jobs' SSRF policy
    binding = StreamBinding(
        topic=topic,
        model=str(ref),
        notify=stream_target_dicts(targets),
        notify_interval_seconds=validate_notify_interval(body.notify_interval_seconds),
        updated_by=caller,
    )
    binding, created = BindingStore(container.redis).put(binding)
    response.status_code = 201 if created else 200
    _announce(
        container, "stream_bound", "stream.bind", topic, caller,
        model=binding.model, version=meta.version, targets=len(targets),
    )  # fmt: skip
    return StreamBindingView(**binding.as_dict(), version=meta.version)


@router.delete("/{topic}", status_code=204, summary="Unbind a topic (its records without a model go to the DLQ)")
def delete_binding(topic: TopicName, container: ContainerDep, caller: Caller) -> Response:
    binding = BindingStore(container.redis).delete(_input_topic(topic))
    _announce(container, "stream_unbound", "stream.unbind", topic, caller, model=binding.model)
    return Response(status_code=204)
