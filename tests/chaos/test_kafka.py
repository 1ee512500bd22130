"""Kafka killed (kill -9) while jobs are submitted without pause, and the bridge consumer killed while
events flow.  Nothing waits for Kafka: every submit is answered 202 at once and jobs complete during
the outage; afterwards every event of every job is on Kafka, and each event id is in
``dashboard:stream`` exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from datetime import datetime
from typing import Any

import pytest

from pynomaly.messaging.outbox import OUTBOX_STREAM
from pynomaly.storage.audit import AUDIT_RECORDS
from pynomaly.topology import T_ANOMALY, T_AUDIT, T_JOB
from tests.chaos.conftest import kafka_outage_seconds
from tests.chaos.support import JOB_EVENT_TYPES, Chaos, latency_figures, per_subject, read_all
from tests.e2e.support import wait_for

OUTAGE = kafka_outage_seconds()
SUBMIT_INTERVAL = 0.5  # one job every half second, all through the outage
STEPS = ["detect"]
# What a completed one-step job leaves on each topic, exactly once per job.
EXPECTED = {T_JOB: JOB_EVENT_TYPES, T_ANOMALY: ("anomalies_detected",), T_AUDIT: ("audit_record",)}
BRIDGED = (T_JOB, T_ANOMALY)  # the topics the bridge copies into dashboard:stream

pytestmark = [pytest.mark.services, pytest.mark.kafka_solo, pytest.mark.timeout(OUTAGE + 480)]


def _complete(ids: list[str], types: tuple[str, ...]) -> Any:
    return lambda events: all(len(per_subject(events, t)) == len(ids) for t in types)


def _kafka_events(chaos: Chaos, ids: list[str]) -> dict[str, list[Any]]:
    """Every record about ``ids`` on each topic, once all expected events are there."""
    return {topic: read_all(chaos, topic, ids, _complete(ids, types)) for topic, types in EXPECTED.items()}


def _check_each_once(events: dict[str, list[Any]], ids: list[str]) -> int:
    """Each job has each expected event under one id; returns how many records were duplicates
    (the same id re-sent: at least once, which every consumer drops)."""
    duplicates = 0
    for topic, types in EXPECTED.items():
        for event_type in types:
            seen = per_subject(events[topic], event_type)
            assert sorted(seen) == sorted(ids), f"{event_type}: {len(seen)} of {len(ids)} jobs"
            distinct = {job: set(found) for job, found in seen.items()}
            assert all(len(v) == 1 for v in distinct.values()), {j: v for j, v in distinct.items() if len(v) > 1}
            duplicates += sum(len(found) - 1 for found in seen.values())
    return duplicates


def _stream_once(chaos: Chaos, client: Any, ids: list[str], expected: set[str]) -> Counter[str]:
    """Wait until every bridged event is in dashboard:stream; then each id's count there."""
    wait_for(lambda: {f["id"] for f in chaos.stream_events(client, ids)} >= expected, 180, interval=0.5,
             what=f"{len(expected)} events in dashboard:stream")  # fmt: skip
    time.sleep(2)  # a duplicate, if any, would be there by now
    counts = Counter(f["id"] for f in chaos.stream_events(client, ids) if f["id"] in expected)
    return counts


def test_kafka_killed_during_continuous_submits_loses_and_doubles_no_event(
    healthy: Chaos, chaos_figures: dict[str, Any]
) -> None:
    chaos = healthy
    client = chaos.redis()
    warm, _ = chaos.submit(5000, steps=STEPS)
    chaos.wait_completed(client, [warm], 120)
    wait_for(lambda: chaos.outbox_drained(client), 60, what="the outbox to drain before the outage")

    chaos.kill_kafka()
    killed = time.monotonic()
    ids: list[str] = []
    latencies: list[float] = []
    seed = 5001
    while time.monotonic() - killed < OUTAGE:
        job_id, seconds = chaos.submit(seed, steps=STEPS)
        ids.append(job_id)
        latencies.append(seconds)
        seed += 1
        time.sleep(SUBMIT_INTERVAL)
    completed_in_outage = chaos.statuses(client, ids)["completed"]
    # What waits in the outbox now must all reach Kafka, once.
    outbox = [json.loads(f["event"]) for _, f in client.xrange(OUTBOX_STREAM)]
    waiting = {e["id"] for e in outbox if e["subject"] in set(ids)}  # (beat's health events wait there too)
    down = time.monotonic() - killed
    chaos.start_kafka()
    back = time.monotonic()
    restart = back - killed - down
    wait_for(lambda: chaos.outbox_drained(client), 300, interval=0.5, what="the outbox to drain after the outage")
    drained = time.monotonic() - back
    chaos.wait_completed(client, ids, 180)

    events = _kafka_events(chaos, ids)
    on_kafka = {e.id for found in events.values() for e in found}
    duplicates = _check_each_once(events, ids)
    bridged = {e.id for topic in BRIDGED for e in events[topic]}
    in_stream = _stream_once(chaos, client, ids, bridged)
    # The audit sink rejoins its group on its own time after the outage: poll, do not expect it at once.
    audit_ids = [e.id for e in events[T_AUDIT]]
    wait_for(lambda: all(client.hmget(AUDIT_RECORDS, audit_ids)), 180, interval=0.5,
             what="every audit event stored by the audit sink")  # fmt: skip
    audited = time.monotonic() - back
    figures = latency_figures(latencies)
    print(
        f"\nKafka down {down:.0f}s: {len(ids)} submits, all 202: p50 {figures['p50_ms']:.0f} ms, "
        f"p99 {figures['p99_ms']:.0f} ms, max {figures['max_ms']:.0f} ms; {completed_in_outage} jobs completed "
        f"during the outage; {len(outbox)} events waited in the outbox ({len(waiting)} of these jobs), "
        f"Kafka up again in {restart:.0f}s, outbox empty {drained:.1f}s later; "
        f"{sum(len(v) for v in events.values())} records, {len(on_kafka)} distinct events, "
        f"{duplicates} duplicates (same id); dashboard:stream {len(in_stream)} events, each once; every audit "
        f"record stored {audited:.0f}s after Kafka was back"
    )
    chaos_figures[f"kafka_kill_during_submits_{OUTAGE:.0f}s"] = {
        "outage_seconds": round(down), "submits": len(ids), "submit_202": len(ids), **figures,
        "completed_during_outage": completed_in_outage, "outbox_events_at_restart": len(outbox),
        "kafka_restart_s": round(restart, 1),
        "drained_after_restart_s": round(drained, 1), "events_on_kafka": len(on_kafka),
        "duplicate_records_same_id": duplicates, "lost": len(waiting - on_kafka),
        "stream_events": len(in_stream), "stream_duplicates": sum(n - 1 for n in in_stream.values()),
        "audit_stored_after_restart_s": round(audited),
    }  # fmt: skip
    assert max(latencies) < 1.0, figures
    assert completed_in_outage >= len(ids) // 2  # workers never wait for Kafka
    assert len(waiting) > 0 and waiting <= on_kafka  # the outage's events, none lost
    assert set(in_stream) == bridged and all(n == 1 for n in in_stream.values())


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _submit_paced(chaos: Chaos, ids: list[str], count: int, seed: int) -> None:
    for i in range(count):
        ids.append(chaos.submit(seed + i, steps=STEPS)[0])
        time.sleep(0.2)


def test_bridge_sigkilled_while_events_flow_puts_each_event_in_the_stream_once(
    healthy: Chaos, chaos_figures: dict[str, Any]
) -> None:
    chaos = healthy
    client = chaos.redis()
    ids: list[str] = []
    submitter = threading.Thread(target=_submit_paced, args=(chaos, ids, 40, 9000), daemon=True)
    submitter.start()
    # Mid-flow: some of these jobs' events already bridged, more on their way.
    wait_for(lambda: len(ids) >= 15 and chaos.stream_events(client, ids[:5]), 120, interval=0.1,
             what="the first jobs' events in dashboard:stream")  # fmt: skip
    bridge = chaos.component("consumer-bridge")
    os.kill(bridge.record.pid, signal.SIGKILL)
    killed = time.monotonic()
    before = len({f["id"] for f in chaos.stream_events(client, ids)})
    chaos.ensure_running("consumer-bridge", bridge.record.pid)
    back = time.monotonic() - killed
    submitter.join(120)
    assert len(ids) == 40
    chaos.wait_completed(client, ids, 180)
    wait_for(lambda: chaos.outbox_drained(client), 120, interval=0.5, what="the outbox to drain")

    events = _kafka_events(chaos, ids)
    duplicates = _check_each_once(events, ids)
    bridged = {e.id for topic in BRIDGED for e in events[topic]}
    in_stream = _stream_once(chaos, client, ids, bridged)
    # The longest an event took from its creation to dashboard:stream (stream ids are Redis' clock in
    # ms, event times the worker's or API's: one host here).
    delay = max(int(f["_entry"].split("-")[0]) / 1000 - _epoch(f["time"]) for f in chaos.stream_events(client, ids))
    print(
        f"\nbridge SIGKILL mid-flow ({before} of the jobs' events bridged before): running again in {back:.1f}s; "
        f"{len(bridged)} events on Kafka ({duplicates} duplicate records), each exactly once in dashboard:stream; "
        f"longest event -> stream delay {delay:.1f}s"
    )
    chaos_figures["bridge_sigkill"] = {
        "jobs": len(ids), "events": len(bridged), "bridged_before_kill": before, "restarted_after_s": round(back, 1),
        "longest_event_to_stream_s": round(delay, 1),
        "stream_missing": len(bridged - set(in_stream)), "stream_duplicates": sum(n - 1 for n in in_stream.values()),
        "kafka_duplicate_records_same_id": duplicates,
    }  # fmt: skip
    assert 0 < before < len(bridged)  # the kill fell mid-flow
    assert set(in_stream) == bridged and all(n == 1 for n in in_stream.values())
