"""The API through a Kafka and a Redis outage, on its own redis-server, Kafka broker and API process
(killed with SIGKILL and started again; the session's shared servers are not touched).

Kafka away longer than the relay's delivery timeout: every submit answers 202 at once, /healthz stays
fast, and once Kafka is back every job's job_submitted and audit record arrive exactly once.
Redis away: 503 problem+json with Retry-After on a kept-alive connection, one warning and no traceback
in the log, and submits work again when Redis returns, without restarting the API.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from pynomaly.config import Settings
from pynomaly.localstack.kafka_broker import KafkaBroker
from pynomaly.localstack.ports import LOOPBACK, free_port
from pynomaly.localstack.procs import log_tail, pid_alive, spawn, stop_process
from pynomaly.localstack.redis_server import RedisServer
from pynomaly.localstack.system import child_env, pynomaly_argv
from pynomaly.messaging.kafka_admin import ensure_topics
from pynomaly.messaging.outbox import OUTBOX_STREAM
from pynomaly.topology import TOPOLOGY
from tests.conftest import KAFKA_LIBS
from tests.e2e.support import queue_lengths, read_topic, small_rows, wait_for

# Its own JVM: ordered first, before the session broker starts (never two JVMs at once).
pytestmark = [pytest.mark.services, pytest.mark.kafka_solo]

API_KEY = "outage-" + secrets.token_urlsafe(8)
DELIVERY_TIMEOUT = 3.0  # the relay's producer gives up on a batch after this; the outage lasts longer
JOBS_DURING_OUTAGE = 20
BODY = json.dumps({"detector": "copod", "rows": small_rows(30)}).encode()


@dataclass
class Stack:
    tmp: Path
    redis: RedisServer
    kafka: KafkaBroker
    settings: Settings
    api_log: Path
    api_record: Any = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.redis_url, decode_responses=True, socket_timeout=10)

    def kill(self, pid: int | None) -> None:
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), 30, what=f"pid {pid} to die")


def _submit(conn: http.client.HTTPConnection) -> tuple[int, dict[str, str], dict[str, Any], float]:
    started = time.perf_counter()
    conn.request("POST", "/v1/jobs", BODY, {"Content-Type": "application/json", "X-API-Key": API_KEY})
    response = conn.getresponse()
    body = json.loads(response.read() or b"{}")
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body, time.perf_counter() - started


class HealthProbe:
    """Polls /healthz every 0.1 s on its own connection and keeps the latencies."""

    def __init__(self, port: int) -> None:
        self.port, self.latencies, self.failures = port, [], []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=30)
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                conn.request("GET", "/healthz")
                response = conn.getresponse()
                response.read()
                self.latencies.append(time.perf_counter() - started)
                if response.status != 200:
                    self.failures.append(response.status)
            except OSError as exc:
                self.failures.append(repr(exc))
                conn.close()
            self._stop.wait(0.1)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("outage")
    server = RedisServer(tmp / "redis", port=free_port()).start()
    kafka = KafkaBroker(tmp / "kafka", libs_dir=KAFKA_LIBS, port=free_port(), controller_port=free_port())
    own = Stack(tmp, server, kafka, Settings(), tmp / "api.log")
    try:
        kafka.start()
        own.settings = Settings(
            environment="test",
            redis_url=server.url,
            kafka_bootstrap_servers=kafka.bootstrap_servers,
            api_keys=API_KEY,
            api_port=free_port(),
            kafka_delivery_timeout_seconds=DELIVERY_TIMEOUT,
            max_upload_bytes=1024 * 1024,
        )
        ensure_topics(own.settings)
        env = child_env(own.settings)
        _, own.api_record = spawn("api", pynomaly_argv("api"), own.api_log, env=env)
        wait_for(lambda: _healthy(own.settings.api_port), 60, what=f"the API\n{log_tail(own.api_log)}")
        yield own
    finally:
        if own.api_record is not None:
            stop_process(own.api_record, grace=10)
        own.kafka.stop()
        own.redis.stop()


def _healthy(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=2)
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def test_kafka_outage_longer_than_the_delivery_timeout_loses_no_event(stack: Stack) -> None:
    client = stack.client()
    conn = http.client.HTTPConnection(LOOPBACK, stack.settings.api_port, timeout=60)
    status, _, first, _ = _submit(conn)
    assert status == 202, first
    wait_for(lambda: client.xlen(OUTBOX_STREAM) == 0, 60, what="the relay to drain the first job's events")

    stack.kill(stack.kafka.pid)
    killed = time.monotonic()
    latencies: list[float] = []
    job_ids = [first["id"]]
    with HealthProbe(stack.settings.api_port) as health:
        for _ in range(JOBS_DURING_OUTAGE):
            status, _, body, seconds = _submit(conn)
            assert status == 202, body
            latencies.append(seconds)
            job_ids.append(body["id"])
            time.sleep(0.3)  # pacing: the submits spread over the outage
        # The relay gave up on at least one batch (the outage outlasted its delivery timeout) and kept it.
        wait_for(lambda: "outbox relay: cannot publish" in stack.api_log.read_text(), 60, what="a failed delivery")
        wait_for(lambda: time.monotonic() - killed > 2 * DELIVERY_TIMEOUT + 2, 30, interval=0.5, what="outage")
        pending = client.xlen(OUTBOX_STREAM)
        assert pending == 2 * JOBS_DURING_OUTAGE
        down = time.monotonic() - killed
        stack.kafka = KafkaBroker(
            stack.tmp / "kafka", libs_dir=KAFKA_LIBS, port=stack.kafka.port, controller_port=stack.kafka.controller_port
        ).start()
        back = time.monotonic()
        wait_for(lambda: client.xlen(OUTBOX_STREAM) == 0, 120, what=f"the outbox to drain\n{log_tail(stack.api_log)}")
        drained = time.monotonic() - back
    print(
        f"\nKafka down {down:.1f}s (delivery timeout {DELIVERY_TIMEOUT}s): {len(latencies)} submits, "
        f"p99 {_p99(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms; /healthz {len(health.latencies)} "
        f"probes, max {max(health.latencies) * 1000:.0f} ms; outbox {pending} events drained {drained:.1f}s after "
        "Kafka was back"
    )
    assert _p99(latencies) < 1.0
    assert health.failures == [] and max(health.latencies) < 1.0

    wanted = {job_id.encode() for job_id in job_ids}

    def events_of(event_type: str, records: list[Any]) -> dict[str, list[str]]:
        seen: dict[str, list[str]] = {}
        for record in records:
            event = json.loads(record.value)
            if record.key in wanted and event["type"] == event_type:
                seen.setdefault(event["subject"], []).append(event["id"])
        return seen

    def complete(event_type: str) -> Any:
        return lambda records: len(events_of(event_type, records)) == len(job_ids)

    for event_type in ("job_submitted", "audit_record"):
        topic = TOPOLOGY.topic_for_event(event_type)
        records = read_topic(stack.settings, topic, complete(event_type), timeout=90)
        time.sleep(1)  # then read again: duplicates, if any, would be there by now
        records = read_topic(stack.settings, topic, complete(event_type), timeout=90)
        per_job = events_of(event_type, records)
        assert sorted(per_job) == sorted(job_ids)
        assert all(len(ids) == 1 for ids in per_job.values()), {k: v for k, v in per_job.items() if len(v) > 1}
    # One line of ours per outage (kafka-python logs its own connection errors, with traces, meanwhile).
    assert stack.api_log.read_text().count("outbox relay: cannot publish") == 1


def test_redis_outage_answers_503_and_recovers_without_a_restart(stack: Stack) -> None:
    client = stack.client()
    conn = http.client.HTTPConnection(LOOPBACK, stack.settings.api_port, timeout=60)
    status, _, body, _ = _submit(conn)
    assert status == 202, body
    accepted = int(client.zcard("pynomaly:jobs"))
    time.sleep(1.5)  # appendfsync everysec: what was accepted is on disk before the kill
    log_before = len(stack.api_log.read_text())

    port, password = stack.redis.port, stack.redis.password
    stack.kill(stack.redis.pid)
    latencies = []
    with HealthProbe(stack.settings.api_port) as health:
        for _ in range(5):
            status, headers, problem, seconds = _submit(conn)
            latencies.append(seconds)
            assert status == 503, problem
            assert headers["content-type"].startswith("application/problem+json")
            assert int(headers["retry-after"]) > 0
            assert problem["status"] == 503 and "Redis" in problem["detail"]
            assert headers.get("connection") != "close" and conn.sock is not None  # kept alive
        stack.redis = RedisServer(stack.tmp / "redis", port=port, password=password).start()
        client = stack.client()
        # The API's pool reconnects by itself: the next submits succeed.
        ok = wait_for(lambda: _submit(conn)[0] == 202, 60, interval=0.5, what="a submit after Redis came back")
    assert ok
    print(
        f"\nRedis down: 503 in {min(latencies) * 1000:.0f}-{max(latencies) * 1000:.0f} ms; "
        f"/healthz max {max(health.latencies) * 1000:.0f} ms"
    )
    assert health.failures == [] and max(health.latencies) < 1.0
    log = stack.api_log.read_text()[log_before:]
    assert "Traceback" not in log
    assert log.count("503, Redis unavailable") >= 5
    # Nothing half-written: every stored job has its queue message, and nothing else was enqueued.
    jobs = int(client.zcard("pynomaly:jobs"))
    assert jobs == accepted + 1
    assert sum(queue_lengths(client).values()) == jobs
