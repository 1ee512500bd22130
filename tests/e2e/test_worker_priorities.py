"""Priorities and signed webhooks through a real Celery worker process on real Redis and Kafka.

The worker is started by the test *after* the jobs are queued, on a Redis database of its own, so
nothing consumes while 100 low-priority jobs and then one critical job are enqueued: the order in
which the worker starts them is the order the broker hands them out.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pynomaly.config import Settings
from pynomaly.domain.datasets import DatasetLimits, from_rows
from pynomaly.domain.jobs import utcnow
from pynomaly.localstack.procs import log_tail, spawn, stop_process
from pynomaly.localstack.system import child_env, pynomaly_argv
from pynomaly.topology import Q_DETECTION, Q_NOTIFICATIONS, Q_REPORTS
from pynomaly.usecases.jobs import SubmitRequest
from pynomaly.usecases.pipeline import SIGNATURE_HEADER
from pynomaly.wiring import Container
from tests.e2e.support import own_redis_db, queue_lengths, small_rows, wait_for, webhook_server

pytestmark = pytest.mark.services

PRIORITY_DB = 3
SECRET = "test-webhook-secret"
WEBHOOK_STEPS = ["detect", "report", "notify"]


@pytest.fixture
def isolated(settings: Settings, redis_server) -> Iterator[Settings]:  # type: ignore[no-untyped-def]
    with own_redis_db(settings, redis_server, PRIORITY_DB, webhook_secret=SECRET, worker_concurrency=1) as value:
        yield value


def test_critical_job_starts_before_100_queued_low_ones_and_webhooks_are_signed(
    isolated: Settings, tmp_path: Path
) -> None:
    container = Container(isolated, "test")
    service = container.job_service  # with the settings' webhook allowlist (the receiver is on loopback)
    dataset = from_rows(small_rows(20), None, DatasetLimits(10**6, 1000, 10))
    try:
        lows = [
            service.submit(SubmitRequest(dataset, "knn", priority="low", steps=["detect"]))[0].id for _ in range(100)
        ]
        critical = service.submit(SubmitRequest(dataset, "knn", priority="critical", steps=["detect"]))[0].id
        depths = queue_lengths(container.redis)
        assert depths[f"{Q_DETECTION}:9"] == 100 and depths[Q_DETECTION] == 1, depths

        env = child_env(isolated)
        queues = [f"--queue={q}" for q in (Q_DETECTION, Q_REPORTS, Q_NOTIFICATIONS)]
        argv = pynomaly_argv("worker", *queues, "--concurrency=1")
        proc, record = spawn("priority-worker", argv, tmp_path / "worker.log", env=env)
        try:

            def critical_done() -> bool:
                assert proc.poll() is None, f"the worker exited:\n{log_tail(tmp_path / 'worker.log')}"
                return container.jobs.get(critical).status == "completed"

            wait_for(critical_done, 90, what="the critical job to complete")
            wait_for(
                lambda: sum(container.jobs.get(j).started_at is not None for j in lows) >= 2,
                60,
                what="two low jobs to start",
            )
            # While low jobs keep running, a critical webhook job still goes first, and is signed.
            with webhook_server() as receiver:
                hooked, _ = service.submit(
                    SubmitRequest(dataset, "ecod", priority="critical", webhook_url=receiver.url, steps=WEBHOOK_STEPS)
                )
                # Which lows were still waiting is decided by their start times afterwards, counted from
                # when the job was surely enqueued (submit returned): on a busy machine, reading 100 records
                # or the submit itself takes long enough for lows to start meanwhile.
                enqueued_at = utcnow()
                done = wait_for(
                    lambda: (job := container.jobs.get(hooked.id)).status in ("completed", "failed") and job,
                    60,
                    what="the webhook job",
                )
                assert done.status == "completed", done.error
                assert done.steps == WEBHOOK_STEPS
                # Each notification target is its own task on the notifications queue, delivered
                # after the job completed (the job never waits for its notifications).
                (headers, body), *_ = wait_for(lambda: list(receiver.requests), 60, what="the webhook delivery")
                expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                assert headers[SIGNATURE_HEADER.lower()] == expected
                assert json.loads(body)["job_id"] == hooked.id
        finally:
            stop_process(record, grace=20, proc=proc)

        started = {j: container.jobs.get(j).started_at for j in lows}
        first_low = min(s for s in started.values() if s)
        critical_job = container.jobs.get(critical)
        assert critical_job.started_at is not None and critical_job.started_at < first_low
        # The webhook job, submitted while lows were waiting, overtook them.
        hooked_started = container.jobs.get(hooked.id).started_at
        assert hooked_started is not None
        waiting = [j for j in lows if started[j] is None or started[j] > enqueued_at]
        overtook_it = [j for j in waiting if started[j] is not None and started[j] < hooked_started]
        # One worker process: only the low it was taking from the queue at that moment (and, at a step
        # boundary, the next one) may start first.
        assert len(waiting) > 50 and len(overtook_it) <= 2, (len(waiting), overtook_it)
    finally:
        container.close()
