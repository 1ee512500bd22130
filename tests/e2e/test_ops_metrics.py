"""GET /v1/ops/metrics on the real local system: the operations view's figures come from the same
sources as /metrics (queue depths, DLQ size), /readyz (the outbox) and the workers' and consumers' own
registries (task runs and run times, consumer lag), and they move when jobs run."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from pynomaly.client import PynomalyClient
from pynomaly.topology import GROUP_AUDIT, GROUP_BRIDGE, GROUP_SCORER, PRIORITY_STEPS, TASK_DETECT, TOPOLOGY
from tests.e2e.support import small_rows, wait_for

pytestmark = pytest.mark.e2e


def _metric(text: str, name: str) -> dict[str, float]:
    """``{label text: value}`` of one metric in the Prometheus text format."""
    values = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, value = line.rsplit(" ", 1)
            values[labels[len(name) :]] = float(value)
    return values


def _ops(local_system: Any) -> dict[str, Any]:
    response = httpx.get(
        f"{local_system.api_url}/v1/ops/metrics", headers={"X-API-Key": local_system.api_key}, timeout=30
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def _detect(ops: dict[str, Any]) -> dict[str, Any] | None:
    return next((t for t in ops["tasks"] if t["pool"] == "detection" and t["task"] == TASK_DETECT), None)


def test_needs_the_api_key(local_system) -> None:  # type: ignore[no-untyped-def]
    response = httpx.get(f"{local_system.api_url}/v1/ops/metrics", timeout=30)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")


def test_figures_match_metrics_and_move_with_a_job(local_system, api: PynomalyClient) -> None:  # type: ignore[no-untyped-def]
    ops = _ops(local_system)
    assert set(ops) == {
        "at",
        "report_interval_seconds",
        "stale_after_seconds",
        "queues",
        "dlq",
        "streams",
        "outbox",
        "tasks",
        "consumer_lag",
        "consumed",
        "reporters",
    }
    assert ops["report_interval_seconds"] == local_system.settings.heartbeat_interval
    # Every queue's every priority list, as /metrics labels them.
    priorities = {p.value for p in PRIORITY_STEPS}
    assert {(q["queue"], q["priority"]) for q in ops["queues"]} == {
        (q.name, p) for q in TOPOLOGY.queues for p in priorities
    }
    assert all(isinstance(q["depth"], int) and q["depth"] >= 0 for q in ops["queues"])
    scraped = httpx.get(f"{local_system.api_url}/metrics", timeout=30).text
    assert len(_metric(scraped, "pynomaly_queue_depth")) == len(ops["queues"])
    assert {s["stream"] for s in ops["streams"]} == {s.name for s in TOPOLOGY.streams}
    # The DLQ size is the one /metrics and GET /v1/dlq report (nothing dead-letters in between here).
    assert _metric(scraped, "pynomaly_dlq_size") == {"": float(ops["dlq"]["size"])}
    assert api.dead_letters(limit=1)["total"] == ops["dlq"]["size"]
    assert set(ops["outbox"]) == {"pending", "oldest_seconds"} and ops["outbox"]["pending"] >= 0

    # Every worker pool and consumer pool of the local system reports its figures.
    def reporters() -> set[str]:
        return {r["component"] for r in _ops(local_system)["reporters"] if not r["stale"]}

    expected = {f"worker:{p.name}" for p in TOPOLOGY.worker_pools} | {
        f"consumer:{g.pool}" for g in TOPOLOGY.consumer_groups
    }
    wait_for(lambda: expected <= reporters(), 90, interval=1, what=f"reports from {sorted(expected)}")

    # Consumer lag for every partition of every group's topics.
    def lag_partitions() -> set[tuple[str, str, int]]:
        return {(x["group"], x["topic"], x["partition"]) for x in _ops(local_system)["consumer_lag"]}

    topics = {t.name: t.partitions for t in TOPOLOGY.topics}
    partitions = {
        (g.name, topic, p) for g in TOPOLOGY.consumer_groups for topic in g.topics for p in range(topics[topic])
    }
    assert {GROUP_BRIDGE, GROUP_AUDIT, GROUP_SCORER} == {g for g, _, _ in partitions}
    wait_for(lambda: partitions <= lag_partitions(), 90, interval=1, what="lag of every partition")
    assert all(x["lag"] >= 0 and x["reported_by"].startswith("consumer:") for x in _ops(local_system)["consumer_lag"])

    # A job: the detection pool's detect task counts one more success, timed in its histogram.
    before = _detect(_ops(local_system))
    done_before = before["runs"].get("succeeded", 0) if before else 0
    job = api.submit_rows(small_rows(), "ecod")
    assert api.wait(job["id"], timeout=120)["status"] == "completed"

    def counted() -> dict[str, Any] | None:
        task = _detect(_ops(local_system))
        return task if task and task["runs"].get("succeeded", 0) >= done_before + 1 else None

    task = wait_for(counted, 60, interval=0.5, what="the detect run in the detection pool's figures")
    duration = task["duration"]
    assert duration["count"] >= done_before + 1 and duration["sum"] > 0
    assert duration["bounds"] == sorted(duration["bounds"]) and len(duration["bounds"]) == len(duration["cumulative"])
    assert duration["cumulative"] == sorted(duration["cumulative"]) and duration["cumulative"][-1] <= duration["count"]
    assert task["retries"] >= 0 and task["dead_lettered"] >= 0
    # The bridge consumed the job's events.
    consumed = {(c["group"], c["outcome"]): c["count"] for c in _ops(local_system)["consumed"]}
    assert consumed.get((GROUP_BRIDGE, "ok"), 0) >= 1
