"""Logs and traces of real components on the session's Redis and Kafka.

- Logs: the API, a worker, beat and the audit consumer run as real processes at DEBUG with JSON lines and a known Redis
  password, API key, Kafka SASL password, SMTP password, webhook secret and encryption key; one job
  goes through them.  Every line of their output parses as one JSON object with the common fields, the
  job's id is on the API's lines (uvicorn's access lines too) and the worker's (Celery's own too, with
  the task id), and none of the secrets appears anywhere.
- Traces: one job from ``POST /v1/jobs`` to its ``dashboard:stream`` entry is one trace.  The API
  (with its outbox relay) and a bridge consumer run in this process and record into an in-memory
  exporter; the worker is a real ``pynomaly worker`` process that exports over OTLP/gRPC, configured by
  the standard ``OTEL_*`` variables, to a small collector run by this test.  The spans' parent links
  cross the processes: API → Celery headers → worker → outbox entry → Kafka headers → bridge.

Both use Redis database 15 of the session server (own_redis_db) so no other worker or relay sees them.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import httpx
import pytest

from pynomaly.config import Settings
from pynomaly.localstack.ports import free_port
from pynomaly.localstack.procs import log_tail, spawn, stop_process
from pynomaly.localstack.system import child_env, pynomaly_argv
from pynomaly.storage.redis_client import redis_from_settings
from pynomaly.topology import Q_DETECTION, Q_PROCESSING, S_DASHBOARD, T_JOB, TASK_DETECT, TASK_PREPROCESS
from tests.e2e.support import own_redis_db, small_rows, wait_for

pytestmark = pytest.mark.services

OBSERVABILITY_DB = 15
API_KEY = "obs-test-api-key-" + uuid.uuid4().hex[:12]
SECRETS = {
    "kafka_sasl_password": "kafka-sasl-" + uuid.uuid4().hex[:12],
    "smtp_password": "smtp-pw-" + uuid.uuid4().hex[:12],
    "webhook_secret": "webhook-" + uuid.uuid4().hex[:12],
    "encryption_keys": base64.b64encode(os.urandom(32)).decode(),
}
COMMON_FIELDS = {"time", "level", "component", "logger", "message"}


@pytest.fixture
def isolated(settings: Settings, redis_server: Any) -> Iterator[Settings]:
    with own_redis_db(settings, redis_server, OBSERVABILITY_DB, api_keys=API_KEY) as value:
        yield value


def _json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line the process wrote, each parsed (spawn's own '--- starting' header excepted)."""
    parsed = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("--- "):
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"{path.name}: not a JSON line: {line[:300]!r}") from None
        assert isinstance(value, dict) and set(value) >= COMMON_FIELDS, line
        parsed.append(value)
    return parsed


def _wait_healthy(url: str, proc: Any, log: Path) -> None:
    def up() -> bool:
        assert proc.poll() is None, f"the API exited:\n{log_tail(log)}"
        try:
            return httpx.get(url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 90, what="the API to answer /healthz")


def test_components_write_json_lines_with_the_job_in_scope_and_no_secret(isolated: Settings, tmp_path: Path) -> None:
    port = free_port()
    settings = isolated.model_copy(
        update={
            "log_level": "DEBUG",
            "log_format": "json",
            "api_host": "127.0.0.1",
            "api_port": port,
            "encryption_enabled": True,
            **SECRETS,
        }
    )
    env = child_env(settings)
    redis_password = unquote(urlparse(settings.redis_url).password or "")
    secrets = {**SECRETS, "redis_password": redis_password, "api_key": API_KEY}
    assert all(len(v) >= 8 for v in secrets.values())
    argvs = {
        "api": pynomaly_argv("api"),
        "worker": pynomaly_argv("worker", f"--queue={Q_PROCESSING}", f"--queue={Q_DETECTION}", "--concurrency=1"),
        "beat": pynomaly_argv("beat"),
        # The audit pool (its group is the session's, idle outside the e2e tests, which run last).
        "consumer": pynomaly_argv("consumer", "--group", "audit"),
    }
    logs = {name: tmp_path / f"{name}.log" for name in argvs}
    started = {name: spawn(f"obs-{name}", argv, logs[name], env=env) for name, argv in argvs.items()}
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, started["api"][0], logs["api"])
        headers = {"X-API-Key": API_KEY}
        submitted = httpx.post(
            url + "/v1/jobs", json={"detector": "ecod", "rows": small_rows(40)}, headers=headers, timeout=30
        )
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]

        def finished() -> str | None:
            for name, (proc, _) in started.items():
                assert proc.poll() is None, f"{name} exited:\n{log_tail(logs[name])}"
            status = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers, timeout=10).json()["status"]
            return status if status in ("completed", "failed") else None

        assert wait_for(finished, 120, interval=0.3, what="the job to finish") == "completed"
        assert httpx.get(f"{url}/v1/jobs/{job_id}", headers={"X-API-Key": "wrong-key"}, timeout=10).status_code == 401
        # A client that puts its key in the query string: uvicorn's access line holds the whole path.
        assert httpx.get(f"{url}/v1/jobs", params={"api_key": API_KEY}, headers=headers, timeout=10).status_code == 200

        def audited() -> bool:  # the audit consumer handled the job's audit record
            answer = httpx.get(f"{url}/v1/audit", params={"subject": job_id}, headers=headers, timeout=10)
            return bool(answer.json()["items"])

        wait_for(audited, 90, interval=0.5, what="the audit consumer to record the job")
    finally:
        for proc, record in started.values():
            stop_process(record, grace=20, proc=proc)

    raw = {name: path.read_text() for name, path in logs.items()}
    for name, text in raw.items():
        for secret_name, secret in secrets.items():
            assert secret not in text, f"{secret_name} appears in the {name} log"
    lines = {name: _json_lines(path) for name, path in logs.items()}
    components = {
        "api": "api",
        "worker": f"worker:{Q_PROCESSING}-{Q_DETECTION}",
        "beat": "beat",
        "consumer": "consumer:audit",
    }
    for name, expected in components.items():
        assert {line["component"] for line in lines[name]} == {expected}
        assert any(line["level"] == "DEBUG" for line in lines[name]), f"{name} did not log at DEBUG"

    access = [line for line in lines["api"] if line["logger"] == "uvicorn.access"]
    submit_line = [line for line in access if '"POST /v1/jobs HTTP' in line["message"]]
    status_lines = [line for line in access if f"GET /v1/jobs/{job_id} HTTP" in line["message"]]
    assert submit_line and submit_line[0]["job_id"] == job_id, submit_line
    assert status_lines and all(line["job_id"] == job_id for line in status_lines)
    assert [line for line in access if "GET /v1/jobs?api_key=*** HTTP" in line["message"]], "the key is not masked"

    # The relay (in the API or the consumer: whichever holds the lease) names the event it sends; the
    # consumer the event it handles.
    relaying = lines["api"] + lines["consumer"]
    assert any(line["logger"].startswith("kafka.producer") and "event_id" in line for line in relaying)
    handled = [line for line in lines["consumer"] if line["message"].startswith("handled audit")]
    assert handled and all(len(line["event_id"]) == 32 for line in handled), handled[:3]

    task_lines = [line for line in lines["worker"] if line.get("job_id") == job_id]
    assert {line["task_id"] for line in task_lines if "task_id" in line}, "no worker line names its task"
    celery_own = [line for line in task_lines if line["logger"].startswith("celery") and "succeeded" in line["message"]]
    assert len(celery_own) == 2, [line["message"] for line in task_lines]  # preprocess and detect
    assert all(line["task_id"] in line["message"] for line in celery_own)


# -- traces -----------------------------------------------------------------------------------------
class Collector:
    """An OTLP/gRPC trace receiver: what a collector would get from the worker process."""

    def __init__(self) -> None:
        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        collector = self
        self.spans: list[dict[str, Any]] = []
        self._lock = threading.Lock()

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                with collector._lock:
                    for resource_spans in request.resource_spans:
                        attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                        for scope_spans in resource_spans.scope_spans:
                            for span in scope_spans.spans:
                                collector.spans.append(
                                    {
                                        "name": span.name,
                                        "trace_id": span.trace_id.hex(),
                                        "span_id": span.span_id.hex(),
                                        "parent_id": span.parent_span_id.hex() or None,
                                        "component": attrs.get("pynomaly.component"),
                                        "service": attrs.get("service.name"),
                                    }
                                )
                return trace_service_pb2.ExportTraceServiceResponse()

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.spans)

    def stop(self) -> None:
        self._server.stop(grace=1)


@pytest.fixture
def memory_spans() -> Iterator[Any]:
    """Spans of this process, in memory, while the test runs (the process's provider is set once)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()

    class WhileActive(SimpleSpanProcessor):
        active = True

        def on_end(self, span: ReadableSpan) -> None:
            if self.active:
                super().on_end(span)

    processor = WhileActive(exporter)
    provider.add_span_processor(processor)
    try:
        yield exporter
    finally:
        processor.active = False  # later tests record nothing here
        exporter.clear()


def _as_dict(span: Any) -> dict[str, Any]:
    return {
        "name": span.name,
        "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "attributes": dict(span.attributes or {}),
        "kind": span.kind.name,
        "component": "test-process",
    }


def _one(spans: Sequence[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [s for s in spans if all(s.get(k) == v or s.get("attributes", {}).get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, [(s["name"], s.get("attributes")) for s in found])
    return found[0]


def test_one_trace_from_submit_to_the_dashboard_stream(isolated: Settings, memory_spans: Any, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from pynomaly.api.app import create_app
    from pynomaly.consumers.base import EventConsumer
    from pynomaly.consumers.handlers import StreamBridge
    from pynomaly.topology import ConsumerGroup
    from pynomaly.wiring import Container

    collector = Collector()
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_SERVICE_NAME": "pynomaly-trace-test",
    }
    worker_log = tmp_path / "worker.log"
    argv = pynomaly_argv("worker", f"--queue={Q_PROCESSING}", f"--queue={Q_DETECTION}", "--concurrency=1")
    proc, record = spawn("trace-worker", argv, worker_log, env=child_env(isolated, **otel))
    # A bridge of its own (a fresh group): the session's bridge group keeps its partitions.
    group = ConsumerGroup(name=f"trace-test-{uuid.uuid4().hex[:8]}", pool="trace-test", topics=(T_JOB,), description="")
    client = redis_from_settings(isolated)
    bridge = EventConsumer(isolated, group, StreamBridge(client, isolated.stream_maxlen, group.name))
    bridge_thread = threading.Thread(target=bridge.run, name="trace-bridge", daemon=True)
    bridge_thread.start()
    container = Container(isolated, "api")
    try:
        with TestClient(create_app(isolated, container)) as api:  # its lifespan runs the outbox relay here
            submitted = api.post(
                "/v1/jobs", json={"detector": "ecod", "rows": small_rows(40)}, headers={"X-API-Key": API_KEY}
            )
            assert submitted.status_code == 202, submitted.text
            job_id = submitted.json()["id"]

            def completed_on_the_stream() -> dict[str, str] | None:
                assert proc.poll() is None, f"the worker exited:\n{log_tail(worker_log)}"
                assert bridge_thread.is_alive(), "the bridge stopped"
                for _, fields in client.xrange(S_DASHBOARD):
                    if fields.get("subject") == job_id and fields.get("type") == "job_completed":
                        return fields
                return None

            entry = wait_for(completed_on_the_stream, 120, interval=0.3, what="job_completed on dashboard:stream")

            def worker_spans() -> list[dict[str, Any]]:
                spans = collector.snapshot()
                names = {s["name"] for s in spans}
                return spans if {f"run {TASK_PREPROCESS}", f"run {TASK_DETECT}"} <= names else []

            remote = wait_for(worker_spans, 30, what="the worker's spans at the collector")
    finally:
        bridge.stop()
        bridge_thread.join(timeout=30)
        stop_process(record, grace=20, proc=proc)
        container.close()
        client.close()
        collector.stop()

    local = [_as_dict(s) for s in memory_spans.get_finished_spans()]
    request = _one(local, name="POST /v1/jobs")  # FastAPI's server span
    assert request["kind"] == "SERVER" and request["parent_id"] is None
    trace_id = request["trace_id"]
    in_trace = [s for s in local + remote if s["trace_id"] == trace_id]
    by_id = {s["span_id"]: s for s in in_trace}

    def parent_of(span: dict[str, Any]) -> dict[str, Any]:
        assert span["parent_id"] in by_id, (span["name"], "its parent is not in the trace")
        return by_id[span["parent_id"]]

    def descends(span: dict[str, Any], ancestor: dict[str, Any]) -> bool:
        while span is not ancestor and span["parent_id"] in by_id:
            span = by_id[span["parent_id"]]
        return span is ancestor

    # FastAPI's own spans (dependencies, the endpoint) may stand between the request and ours.
    store = _one(in_trace, name="store job")
    assert descends(store, request)
    # Celery: the API sends preprocess; the worker runs it, sends detect from inside it, runs detect.
    send_pre = _one(in_trace, name=f"send {TASK_PREPROCESS}")
    run_pre = _one(in_trace, name=f"run {TASK_PREPROCESS}")
    send_detect = _one(in_trace, name=f"send {TASK_DETECT}")
    run_detect = _one(in_trace, name=f"run {TASK_DETECT}")
    assert descends(send_pre, request) and not descends(send_pre, store)
    assert parent_of(run_pre) is send_pre and run_pre["component"] == "worker:data_processing-anomaly_detection"
    assert run_pre["service"] == "pynomaly-trace-test"  # OTEL_SERVICE_NAME, read by the SDK
    assert parent_of(send_detect) is run_pre
    assert parent_of(run_detect) is send_detect
    # Events: job_submitted from the submit's transaction, job_completed from the detect task; each
    # through the relay's produce, the bridge's consume and the append to dashboard:stream.
    for event_type, writer in (("job_submitted", store), ("job_completed", run_detect)):
        publish = _one(in_trace, **{"name": f"publish {T_JOB}", "pynomaly.event_type": event_type})
        assert parent_of(publish) is writer, event_type
        consume = [s for s in in_trace if s["name"] == f"consume {T_JOB}" and s["parent_id"] == publish["span_id"]]
        assert len(consume) == 1, event_type
        appends = [
            s for s in in_trace if s["name"] == f"append {S_DASHBOARD}" and s["parent_id"] == consume[0]["span_id"]
        ]
        assert len(appends) == 1, event_type
    assert (
        _one(in_trace, **{"name": f"publish {T_JOB}", "pynomaly.event_type": "job_completed"})["attributes"][
            "messaging.message.id"
        ]
        == entry["id"]
    )
    # Every span of the job's path hangs off the request: one tree, one trace id, across 2 processes.
    for span in in_trace:
        if span is not request:
            parent_of(span)
    assert {s["component"] for s in in_trace} == {"test-process", "worker:data_processing-anomaly_detection"}
