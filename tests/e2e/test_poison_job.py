"""A poison job fails at once, on the real local system: no retries, no dead letter.

``hbos`` on rows holding ±1e308 raises inside PyOD/numpy ("Too many bins for data range") on every
run.  Before the task policy classified errors it was retried as transient (5.5 minutes with the
default 60 s backoff) and then dead-lettered; now the detector boundary turns it into a permanent
``DetectorFailed`` and the job fails on its first attempt with a message naming the detector.
A normal job submitted alongside completes.
"""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from pynomaly.client import PynomalyClient
from pynomaly.messaging.events import EventEnvelope
from pynomaly.topology import T_JOB
from tests.e2e.support import read_topic, small_rows

pytestmark = pytest.mark.e2e

POISON = [[1e308, -1e308], [-1e308, 1e308]] + [[float(i), float(i % 7)] for i in range(50)]


def _seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def test_a_poison_job_fails_at_once_without_retries_or_dead_letter_while_a_normal_job_completes(
    api: PynomalyClient, local_system
) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    poison = api.submit_rows(POISON, "hbos")["id"]
    normal = api.submit_rows(small_rows(40), "hbos")["id"]

    failed = api.wait(poison, timeout=120)
    seconds = time.monotonic() - started
    assert failed["status"] == "failed", failed
    assert failed["attempts"] == 1, failed
    error = failed["error"] or ""
    assert error.startswith("detector 'hbos' failed fitting the data (52 rows x 2 columns"), error
    assert "ValueError: Too many bins for data range" in error, error
    assert "Traceback" not in error and len(error) < 500, error

    done = api.wait(normal, timeout=120)
    assert done["status"] == "completed" and done["attempts"] == 1, done
    assert done["anomaly_count"] >= 1

    # No retry was ever scheduled, and nothing reached the dead-letter queue for it.
    records = read_topic(
        local_system.settings,
        T_JOB,
        until=lambda rs: any(EventEnvelope.decode(r.value).type == "job_failed" for r in rs),
        key=poison.encode(),
    )
    events = [EventEnvelope.decode(r.value) for r in records]
    types = [e.type for e in events]
    assert "job_retrying" not in types and "job_dead_lettered" not in types, types
    assert [e.data["attempt"] for e in events if e.type == "job_started"] == [1], types
    final = next(e for e in events if e.type == "job_failed")
    assert final.data["error"] == error and final.data.get("dead_letter_id") is None
    letters = api.dead_letters(limit=500)
    assert all(letter["job_id"] != poison for letter in letters["items"]), letters

    run_seconds = _seconds(failed["started_at"], failed["finished_at"])
    print(
        f"\npoison job (hbos on ±1e308): failed {seconds:.2f}s after submit "
        f"({run_seconds:.2f}s from its first step starting), attempts {failed['attempts']}, no dead letter; "
        f"the normal job beside it completed with {done['anomaly_count']} anomalies"
    )
    assert seconds < 60, f"the poison job took {seconds:.1f}s to fail"
