"""OpenTelemetry spans along one job's path, exported over OTLP only when the ``OTEL_*`` variables ask.

The path and where each span starts::

    POST /v1/jobs (api, SERVER)            ObservabilityMiddleware
      store job (api)                      JobService.submit: the job and its outbox entries
        publish job_events (relay, PRODUCER)   OutboxRelay: parent read from the outbox entry
          consume job_events (bridge, CONSUMER) EventConsumer: parent read from the Kafka headers
            append dashboard:stream (bridge)   StreamBridge
      send <task> (api, PRODUCER)          before_task_publish: context into the Celery headers
        run <task> (worker, CONSUMER)      task_prerun: parent read from the task's headers
          send <next task> ...             the chain's next step, published from the task
          (its events: outbox entries carry the task span's context, then as above)

Context travels as W3C ``traceparent`` / ``tracestate``: in Celery message headers, in the outbox
entry's fields (next to the event, which stays as it was) and, set by the relay, in Kafka record
headers.  Processes without an exporter still pass the context on (the API's no-op spans keep
their parent's ids), so one traced process does not break the chain.

Export: off unless ``OTEL_TRACES_EXPORTER`` is ``otlp`` or ``console``, or an OTLP endpoint
(``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set; then the SDK
reads the other standard variables itself (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*`` ...).  Without it no SDK is
installed and every span is the API's no-op: near-zero cost.  OTLP goes over gRPC (the exporter the
image ships); ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn it off.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from contextvars import Token
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from pynomaly.config import SettingsError

log = logging.getLogger(__name__)

TRACER_NAME = "pynomaly"
EXPORTERS = ("otlp", "console")
PROPAGATION_KEYS = ("traceparent", "tracestate")


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def recording() -> bool:
    """An SDK provider is installed: spans are kept.  Hot batch paths skip per-item spans without one
    (they would only be the API's no-ops, and nothing downstream of them reads their context)."""
    return not isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


# -- setup ------------------------------------------------------------------------------------------
def exporters_from_env(environ: Mapping[str, str]) -> list[str]:
    """The exporters the ``OTEL_*`` variables ask for ([] = tracing off); raises on a bad value."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names:
        # The spec's default is otlp; we want no exporter (and no connection attempts) unless an
        # endpoint was given on purpose.
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if not endpoint:
            return []
        names = ["otlp"]
    if names == ["none"]:
        return []
    for name in names:
        if name not in EXPORTERS:
            raise SettingsError(f"OTEL_TRACES_EXPORTER: {name!r} is not supported; use otlp, console or none")
    if "otlp" in names:
        protocol = (
            environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
        )
        if protocol.strip().lower() != "grpc":
            raise SettingsError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported; this build exports OTLP over grpc "
                "(the collector's port 4317)"
            )
    return names


def configure_tracing(component: str, environ: Mapping[str, str] | None = None) -> bool:
    """Install a TracerProvider with the exporters the environment asks for; False when tracing is off.

    Call once per process, after any fork (a worker's pool children each call it: a gRPC channel
    must not be shared across a fork)."""
    environ = os.environ if environ is None else environ
    names = exporters_from_env(environ)
    if not names:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    attributes: dict[str, Any] = {"pynomaly.component": component}
    if not environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = "pynomaly"
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in names:
        exporter: SpanExporter
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # endpoint, headers, TLS, timeout: from OTEL_EXPORTER_OTLP_*
        else:
            exporter = ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info("tracing on: %s exporter(s)", ",".join(names))
    return True


def shutdown_tracing() -> None:
    """Flush and stop the exporters (a pool child exits without running atexit hooks)."""
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)  # the SDK's provider; the API's default has none
    if shutdown is not None:
        shutdown()


# -- carrying context -------------------------------------------------------------------------------
def inject(span: Span | None = None) -> dict[str, str]:
    """The W3C fields of ``span`` (default: the current one); {} when there is no valid context."""
    carrier: dict[str, str] = {}
    ctx = trace.set_span_in_context(span) if span is not None else None
    propagate.inject(carrier, context=ctx)
    return {k: v for k, v in carrier.items() if k in PROPAGATION_KEYS}


def extract(carrier: Mapping[str, Any]) -> otel_context.Context:
    fields = {k: _text(carrier[k]) for k in PROPAGATION_KEYS if carrier.get(k)}
    return propagate.extract(fields)


def extract_headers(headers: Iterable[tuple[str, bytes | None]] | None) -> otel_context.Context:
    """The context in Kafka record headers (a list of (key, bytes))."""
    return extract({k: v for k, v in headers or [] if k in PROPAGATION_KEYS and v is not None})


def to_headers(carrier: Mapping[str, str]) -> list[tuple[str, bytes]]:
    return [(k, v.encode()) for k, v in carrier.items()]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def fail(span: Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:200]))


# -- Celery -----------------------------------------------------------------------------------------
_task_spans: dict[str, tuple[Span, Token[otel_context.Context]]] = {}


def _on_publish(sender: str | None = None, headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    if headers is None:
        return
    attributes = {
        "messaging.system": "celery",
        "messaging.destination.name": str(kwargs.get("routing_key") or ""),
        "messaging.message.id": str(headers.get("id") or ""),
    }
    span = tracer().start_span(f"send {sender}", kind=SpanKind.PRODUCER, attributes=attributes)
    headers.update(inject(span))  # the next hop's parent, whatever the task was sent from before
    span.end()


def _on_prerun(task_id: str, task: Any, **_: Any) -> None:
    request = task.request
    parent = extract({k: getattr(request, k, None) for k in PROPAGATION_KEYS})
    span = tracer().start_span(
        f"run {task.name}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={"messaging.system": "celery", "celery.task_id": task_id, "celery.retries": request.retries or 0},
    )
    token = otel_context.attach(trace.set_span_in_context(span))
    _task_spans[task_id] = (span, token)


def _on_postrun(task_id: str, state: str | None = None, **_: Any) -> None:
    held = _task_spans.pop(task_id, None)
    if held is None:
        return
    span, token = held
    span.set_attribute("celery.state", str(state))
    if state == "FAILURE":
        span.set_status(Status(StatusCode.ERROR, "task failed"))
    otel_context.detach(token)
    span.end()


def install_celery_tracing() -> None:
    """Connect the publish and run signals (idempotent: by dispatch uid)."""
    from celery.signals import before_task_publish, task_postrun, task_prerun

    before_task_publish.connect(_on_publish, weak=False, dispatch_uid="pynomaly-trace-publish")
    task_prerun.connect(_on_prerun, weak=False, dispatch_uid="pynomaly-trace-prerun")
    task_postrun.connect(_on_postrun, weak=False, dispatch_uid="pynomaly-trace-postrun")
