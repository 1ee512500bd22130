"""Redis killed (kill -9) with 500 jobs queued, then started again on the same port, password and
append-only file: every accepted job completes, and beat (the same process) schedules again.

The detection worker stops consuming first (Celery's ``cancel_consumer``: the process stays up and
rides the outage like the others), so all 500 are still queued when Redis dies.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kombu.exceptions
import pytest
import redis

from pynomaly.messaging.celery_app import create_celery
from pynomaly.topology import Q_DETECTION, S_DASHBOARD, TOPOLOGY
from tests.chaos.support import Chaos
from tests.e2e.support import wait_for

pytestmark = [pytest.mark.services, pytest.mark.kafka_solo, pytest.mark.timeout(600)]

QUEUED = 500
DETECTION_LISTS = TOPOLOGY.queue(Q_DETECTION).redis_lists()


def _queued(client: Any) -> int:
    return sum(int(client.llen(name)) for name in DETECTION_LISTS)


def _detection_replied(replies: list[dict[str, Any]] | None) -> bool:
    return any(node.startswith("detection@") for reply in replies or [] for node in reply)


def _control(settings: Any, command: str) -> bool:
    """Broadcast ``add_consumer``/``cancel_consumer`` of the detection queue on a fresh connection
    (one opened before the kill is dead); True when the detection worker answered."""
    app = create_celery(settings)
    try:
        return _detection_replied(getattr(app.control, command)(Q_DETECTION, reply=True, timeout=5))
    except (OSError, redis.RedisError, kombu.exceptions.OperationalError):
        return False  # Redis or the worker not back yet
    finally:
        app.close()


def test_redis_kill_9_with_500_queued_loses_no_accepted_job_and_beat_lives_on(
    healthy: Chaos, chaos_figures: dict[str, Any]
) -> None:
    chaos = healthy
    client = chaos.redis()
    wait_for(lambda: _control(chaos.settings, "cancel_consumer"), 60, what="the detection worker to stop consuming")
    try:
        _redis_kill_with_a_backlog(chaos, client, chaos_figures)
    finally:  # the next tests need the detection worker consuming, whatever happened here
        wait_for(lambda: _control(chaos.settings, "add_consumer"), 120, interval=1,
                 what="the detection worker to consume again")  # fmt: skip


def _redis_kill_with_a_backlog(chaos: Chaos, client: Any, chaos_figures: dict[str, Any]) -> None:
    before = _queued(client)
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:  # fast: four submits at a time
        ids = [job_id for job_id, _ in pool.map(lambda s: chaos.submit(20_000 + s, steps=["detect"]), range(QUEUED))]
    submitted = time.monotonic() - started
    assert _queued(client) == before + QUEUED
    time.sleep(1.5)  # appendfsync everysec: every accepted job is on disk before the kill

    beat = chaos.component("beat")
    chaos.kill_redis()
    killed = time.monotonic()
    chaos.start_redis()
    restarted = time.monotonic() - killed
    client = chaos.redis()
    seconds, micros = client.time()
    after_restart = f"{seconds * 1000 + micros // 1000}-0"  # stream ids from here on are newer
    statuses = chaos.statuses(client, ids)
    assert statuses["queued"] == QUEUED, statuses  # every accepted job and its task survived
    assert _queued(client) == before + QUEUED

    # The worker reconnects by itself and still does not consume; told to, it runs the backlog.
    wait_for(lambda: _control(chaos.settings, "add_consumer"), 120, interval=1,
             what="the detection worker to answer after the restart")  # fmt: skip
    resumed = time.monotonic()
    chaos.wait_completed(client, ids, 420)
    drained = time.monotonic() - resumed

    # Beat: the same process, and a health check it scheduled after the restart went all the way
    # through a worker, the outbox, Kafka and the bridge into dashboard:stream.
    assert beat.record.alive() and chaos.component("beat").record.pid == beat.record.pid
    summary = wait_for(
        lambda: [f for _, f in client.xrange(S_DASHBOARD, min=after_restart) if f.get("type") == "health_summary"],
        120, interval=0.5, what="a health_summary scheduled by beat after the restart",
    )  # fmt: skip
    assert beat.component.health is not None and beat.component.health.problem() is None
    chaos.submit(29_999)  # and the API accepts jobs again
    print(
        f"\nRedis kill -9 with {QUEUED} queued (submitted in {submitted:.1f}s): back in {restarted:.1f}s; "
        f"{QUEUED}/{QUEUED} queued after the restart, all completed {drained:.0f}s after consuming resumed, 0 lost; "
        f"beat same pid, {len(summary)} health summaries after the restart"
    )
    chaos_figures["redis_kill_500_queued"] = {
        "queued": QUEUED, "submit_seconds": round(submitted, 1), "redis_back_after_s": round(restarted, 1),
        "queued_after_restart": QUEUED, "completed": QUEUED, "lost": 0, "completed_after_resume_s": round(drained),
        "beat_same_pid": True, "health_summaries_after_restart": len(summary),
    }  # fmt: skip
