"""A lost worker's task comes back: the whole worker SIGKILLed (an OOM kill, a lost node, a forced pod
delete), or only its pool child (reject-on-worker-lost requeue), on the real local system.

The local system runs one detection worker with one pool process, so a detection job can only be on
it.  The test kills it by pid (the worker's process group: main process and pool child), starts it
again through the supervisor, and watches the job through the API and its Kafka events.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np
import pytest

from pynomaly.client import PynomalyClient
from pynomaly.localstack.supervisor import Running
from pynomaly.messaging.deliveries import DELIVERIES, Delivery
from pynomaly.messaging.events import EventEnvelope
from pynomaly.topology import T_JOB
from tests.chaos.support import pool_children, record_figures
from tests.e2e.support import read_topic, wait_for

pytestmark = pytest.mark.e2e

WORKER = "worker-detection"


def _slow_rows() -> list[list[float]]:
    # One-class SVM with a high nu: several seconds per fit on a laptop, long enough to kill mid-job.
    return np.random.default_rng(11).normal(size=(15_000, 8)).round(2).tolist()


def _submit_slow(api: PynomalyClient) -> str:
    return str(api.submit_rows(_slow_rows(), "ocsvm", params={"nu": 0.9}, steps=["detect"], priority="critical")["id"])


def _worker(local_system) -> Running:  # type: ignore[no-untyped-def]
    return next(r for r in local_system.supervisor.running if r.component.name == WORKER)


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _record_of(client, job_id: str) -> Delivery | None:  # type: ignore[no-untyped-def]
    for tag, raw in client.hgetall(DELIVERIES).items():
        delivery = Delivery.from_json(tag, raw)
        if delivery.job_id == job_id:
            return delivery
    return None


def _job_events(local_system, job_id: str, until_type: str) -> list[EventEnvelope]:  # type: ignore[no-untyped-def]
    records = read_topic(
        local_system.settings,
        T_JOB,
        until=lambda rs: any(EventEnvelope.decode(r.value).type == until_type for r in rs),
        key=job_id.encode(),
    )
    return [EventEnvelope.decode(r.value) for r in records]


def _running_with(api: PynomalyClient, job_id: str, redeliveries: int) -> dict[str, Any] | None:
    job = api.job(job_id)
    assert job["status"] not in ("completed", "failed", "cancelled"), job
    return job if job["status"] == "running" and job["redeliveries"] == redeliveries else None


def test_a_sigkilled_worker_s_job_completes_once_after_the_stale_threshold(
    api: PynomalyClient, local_system, system_redis
) -> None:  # type: ignore[no-untyped-def]
    settings = local_system.settings
    old = _worker(local_system)
    job_id = _submit_slow(api)
    wait_for(lambda: _running_with(api, job_id, 0), 90, interval=0.1, what="the slow job to run")
    record = wait_for(lambda: _record_of(system_redis, job_id), 30, interval=0.1, what="the delivery record")
    assert record.owner.startswith("detection@") and record.task == "pynomaly.detect_anomalies"

    os.killpg(old.record.pid, signal.SIGKILL)  # main process and pool child at once: nobody acks or rejects
    killed = time.monotonic()
    wait_for(lambda: old.proc is not None and old.proc.poll() is not None and _group_gone(old.record.pid), 30,
             what="the killed worker to be gone")  # fmt: skip
    assert api.job(job_id)["status"] == "running"  # stranded: nobody works on it now
    local_system.supervisor.restart(WORKER)
    local_system.supervisor.wait_healthy(timeout=180)

    # Any worker's reaper puts it back once the dead worker's alive key expired; the new worker runs it.
    limit = settings.heartbeat_stale_after + 60  # stale threshold + reaper period + a loaded machine's slack
    wait_for(lambda: _running_with(api, job_id, 1), limit, interval=0.2, what="the job to be redelivered")
    redelivered_after = time.monotonic() - killed
    done = api.wait(job_id, timeout=180)
    completed_after = time.monotonic() - killed
    assert done["status"] == "completed", done["error"]
    assert done["redeliveries"] == 1 and done["anomaly_count"] > 0
    assert redelivered_after < limit
    print(
        f"\nkill -> running again {redelivered_after:.1f}s, kill -> completed {completed_after:.1f}s "
        f"(stale threshold {settings.heartbeat_stale_after:.0f}s)"
    )
    events = _job_events(local_system, job_id, "job_completed")
    types = [e.type for e in events]
    assert types.count("job_completed") == 1, types
    # The lost run's unflushed events died with it; the redelivered run announces itself.
    assert [e.data.get("redeliveries") for e in events if e.type == "job_started"][-1] == 1, types
    assert not system_redis.hexists(DELIVERIES, record.tag)  # forgotten once it ran
    # The chaos suite's figures file (benchmarks/results/local-chaos.json) quotes this one too.
    record_figures("whole_worker_sigkill", {
        "stale_threshold_s": settings.heartbeat_stale_after, "bound_s": limit,
        "running_again_after_s": round(redelivered_after, 1), "completed_after_s": round(completed_after, 1),
        "redeliveries": done["redeliveries"],
    })  # fmt: skip


def test_a_job_whose_pool_process_dies_every_time_goes_to_the_dead_letter_queue(
    api: PynomalyClient, local_system, system_redis
) -> None:  # type: ignore[no-untyped-def]
    """Like a job that runs out of memory every time: Celery requeues it (reject on worker lost),
    the job counts each redelivery, and past max_retries of them it is dead-lettered, not run again."""
    max_retries = local_system.settings.max_retries
    job_id = _submit_slow(api)
    for redeliveries in range(max_retries + 1):
        wait_for(lambda n=redeliveries: _running_with(api, job_id, n), 90, interval=0.1,
                 what=f"run {redeliveries + 1} of the job")  # fmt: skip
        main = _worker(local_system).record.pid
        children = wait_for(lambda m=main: pool_children(m), 30, what="the worker's pool process")
        for child in children:
            os.kill(child, signal.SIGKILL)  # the main process lives on and requeues the task
    failed = api.wait(job_id, timeout=120)
    assert failed["status"] == "failed", failed
    assert failed["redeliveries"] == max_retries + 1
    assert "RedeliveredTooOften" in (failed["error"] or "")
    letters = [letter for letter in api.dead_letters(limit=500)["items"] if letter["job_id"] == job_id]
    assert len(letters) == 1 and letters[0]["task"] == "pynomaly.detect_anomalies"
    assert "job_dead_lettered" in [e.type for e in _job_events(local_system, job_id, "job_dead_lettered")]
    # The worker itself survived all of it and still works.
    assert _worker(local_system).record.alive()
