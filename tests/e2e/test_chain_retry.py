"""A transient failure in the middle of a chain: retried with backoff, then the chain goes on.

The failure is real and transient: the worker's connection to Redis drops while the preprocess
step reads the job's dataset (a network blip, or a Redis failover).  The worker talks to the real
Redis through a small TCP relay run by this test; the relay closes a connection (both ways, before
forwarding) when the worker asks for ``pynomaly:dataset:<job>`` while the job is on its first
attempt, so redis-py's own reconnects fail too and the step sees a ``redis.ConnectionError``, which
the task policy classifies as transient (a missing blob would be ``NotFound``, permanent).  The second
attempt's reads pass: preprocess completes and the chain continues through detect.

Like ``test_worker_priorities``, the worker is a real ``pynomaly worker`` process on a Redis
database of its own, with the session's short backoff (``TEST_OVERRIDES``).
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path

import pytest

from pynomaly.config import Settings
from pynomaly.domain.datasets import DatasetLimits, from_rows
from pynomaly.localstack.procs import log_tail, spawn, stop_process
from pynomaly.localstack.system import child_env, pynomaly_argv
from pynomaly.messaging.events import EventEnvelope
from pynomaly.storage.dead_letters import DeadLetterStore
from pynomaly.storage.redis_client import redis_from_settings
from pynomaly.topology import Q_DETECTION, Q_PROCESSING, T_JOB
from pynomaly.usecases.jobs import JobService, SubmitRequest
from pynomaly.wiring import Container
from tests.e2e.support import own_redis_db, read_topic, small_rows, wait_for

pytestmark = pytest.mark.services

CHAIN_RETRY_DB = 5
DATASET_READ = re.compile(rb"pynomaly:dataset:([0-9a-f]{32})")


class FlakyRelay:
    """TCP relay 127.0.0.1:<port> -> Redis that drops a connection when ``drop(request_bytes)`` says so."""

    def __init__(self, upstream: tuple[str, int], drop: Callable[[bytes], bool]) -> None:
        self._upstream = upstream
        self._drop = drop
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self.dropped = 0
        self.port = self._server.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name="flaky-relay", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, requests: bool) -> None:
        tail = b""  # the end of the previous chunk, in case a key is split between two reads
        try:
            while chunk := source.recv(65536):
                if requests and self._drop(tail + chunk):
                    self.dropped += 1
                    break
                tail = chunk[-64:]
                target.sendall(chunk)
        except OSError:
            pass
        for sock in (source, target):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        self._thread.join(timeout=2)
        for sock in self._sockets:
            sock.close()


@contextmanager
def flaky_relay(upstream: tuple[str, int], drop: Callable[[bytes], bool]) -> Iterator[FlakyRelay]:
    relay = FlakyRelay(upstream, drop)
    try:
        yield relay
    finally:
        relay.close()


@pytest.fixture
def isolated(settings: Settings, redis_server) -> Iterator[Settings]:  # type: ignore[no-untyped-def]
    with own_redis_db(settings, redis_server, CHAIN_RETRY_DB) as value:
        yield value


def _event_time(event: EventEnvelope) -> float:
    return datetime.fromisoformat(event.time.replace("Z", "+00:00")).timestamp()


def test_preprocess_fails_transiently_is_retried_with_backoff_and_the_chain_completes(
    isolated: Settings, redis_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    direct = redis_from_settings(isolated)

    def first_attempt_dataset_read(request: bytes) -> bool:
        match = DATASET_READ.search(request)
        if not match:
            return False
        raw = direct.get(f"pynomaly:job:{match.group(1).decode()}")
        return raw is not None and json.loads(raw)["attempts"] == 1

    container = Container(isolated, "test")
    container.start_relay()  # as the API does: publishes this database's outbox to Kafka
    service = JobService(container.jobs, container.messaging, container.dead_letters)
    worker_log = tmp_path / "worker.log"
    try:
        with flaky_relay(("127.0.0.1", redis_server.port), first_attempt_dataset_read) as relay:
            worker_url = isolated.redis_url.replace(f"@127.0.0.1:{redis_server.port}/", f"@127.0.0.1:{relay.port}/")
            assert worker_url != isolated.redis_url
            env = child_env(isolated.model_copy(update={"redis_url": worker_url}))
            argv = pynomaly_argv("worker", f"--queue={Q_PROCESSING}", f"--queue={Q_DETECTION}", "--concurrency=1")
            proc, record = spawn("chain-retry-worker", argv, worker_log, env=env)
            try:
                dataset = from_rows(small_rows(40), ["a", "b"], DatasetLimits(10**6, 1000, 10))
                job, _ = service.submit(SubmitRequest(dataset, "ecod"))
                assert job.steps == ["preprocess", "detect"]

                def finished() -> bool:
                    assert proc.poll() is None, f"the worker exited:\n{log_tail(worker_log)}"
                    return container.jobs.get(job.id).status in ("completed", "failed")

                wait_for(finished, 90, interval=0.05, what="the job to finish")
            finally:
                stop_process(record, grace=20, proc=proc)
            # redis-py reconnects and re-sends a few times before it gives up: every try was dropped.
            assert relay.dropped >= 1
    finally:
        container.close()

    try:
        final = json.loads(direct.get(f"pynomaly:job:{job.id}"))
        letters = DeadLetterStore(direct).size()
    finally:
        direct.close()
    assert final["status"] == "completed", (final["error"], log_tail(worker_log))
    assert final["anomaly_count"] >= 1 and final["progress"] == 1.0
    assert letters == 0, "a transient failure that healed leaves no dead letter"

    records = read_topic(
        isolated,
        T_JOB,
        until=lambda rs: any(EventEnvelope.decode(r.value).type == "job_completed" for r in rs),
        key=job.id.encode(),
    )
    assert len({r.partition for r in records}) == 1
    events = [EventEnvelope.decode(r.value) for r in records]
    labels = [e.type if e.type != "job_step_completed" else f"step:{e.data['step']}" for e in events]
    assert [x for x in labels if x != "job_progress"] == [
        "job_submitted",
        "job_started",  # preprocess, attempt 1: its dataset read fails
        "job_retrying",
        "job_started",  # preprocess, attempt 2
        "step:preprocess",
        "step:detect",
        "job_completed",
    ], labels

    first, retrying, second = (e for e in events if e.type in ("job_started", "job_retrying"))
    assert first.data["step"] == "preprocess" and first.data["attempt"] == 1
    assert second.data["step"] == "preprocess" and second.data["attempt"] == 2
    assert retrying.data["attempt"] == 1 and retrying.data["status"] == "retrying"
    assert "ConnectionError" in retrying.data["error"]
    # Backoff: the first delay is uniform in [base/2, base] (equal jitter), and the retry waited it.
    delay = retrying.data["delay_seconds"]
    base = isolated.retry_backoff_base
    assert base / 2 <= delay <= base
    assert _event_time(second) - _event_time(retrying) >= delay - 0.01
    completed = events[labels.index("job_completed")]
    assert completed.data["anomaly_count"] == final["anomaly_count"]
    assert "Retry in" in worker_log.read_text()  # Celery's own record of the scheduled retry
