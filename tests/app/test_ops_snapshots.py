"""Workers' and consumers' figures for the operations view: snapshots of their own Prometheus
registries in Redis, summed per pool and task by the API (observability/ops.py).  Real Redis."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pynomaly.config import Settings
from pynomaly.localstack.ports import free_port
from pynomaly.observability.ops import RETAIN_SECONDS, SNAPSHOTS, SnapshotPublisher, read_snapshots, redis_state
from pynomaly.storage.redis_client import redis_from_settings
from pynomaly.topology import TOPOLOGY
from tests.e2e.support import own_redis_db

pytestmark = pytest.mark.services

OPS_DB = 4
STALE_AFTER = 15.0


@pytest.fixture
def client(settings: Settings, redis_server) -> Iterator[redis.Redis]:  # type: ignore[no-untyped-def]
    with own_redis_db(settings, redis_server, OPS_DB) as isolated:
        connection = redis_from_settings(isolated)
        try:
            yield connection
        finally:
            connection.close()


def worker_registry(detect_seconds: list[float], outcomes: dict[str, int]) -> CollectorRegistry:
    """A registry with the worker's metric families (the names and labels of observability/metrics.py)."""
    registry = CollectorRegistry()
    tasks = Counter("pynomaly_tasks_total", "", ["task", "outcome"], registry=registry)
    seconds = Histogram("pynomaly_task_duration_seconds", "", ["task"], buckets=(0.1, 1, 10), registry=registry)
    Counter("pynomaly_task_retries_total", "", ["task"], registry=registry).labels(task="t.detect").inc(2)
    Counter("pynomaly_unrelated_total", "", registry=registry).inc()  # not part of a snapshot
    for outcome, n in outcomes.items():
        tasks.labels(task="t.detect", outcome=outcome).inc(n)
    for value in detect_seconds:
        seconds.labels(task="t.detect").observe(value)
    return registry


def test_snapshots_are_summed_per_pool_and_task(client: redis.Redis) -> None:
    first = SnapshotPublisher("worker:detection", worker_registry([0.05, 0.5], {"succeeded": 2}), lambda: client)
    second = SnapshotPublisher(
        "worker:detection", worker_registry([5.0, 50.0], {"succeeded": 1, "failed": 1}), lambda: client
    )
    second.instance += "-other"  # two processes of one pool (pids differ in real life)
    other_pool = SnapshotPublisher("worker:processing", worker_registry([0.2], {"succeeded": 1}), lambda: client)
    for publisher in (first, second, other_pool):
        publisher.publish()

    figures = read_snapshots(client, STALE_AFTER)

    assert {(t["pool"], t["task"]) for t in figures["tasks"]} == {("detection", "t.detect"), ("processing", "t.detect")}
    detect = next(t for t in figures["tasks"] if t["pool"] == "detection")
    assert detect["runs"] == {"failed": 1, "succeeded": 3}
    assert detect["retries"] == 4 and detect["dead_lettered"] == 0
    duration = detect["duration"]
    assert duration["count"] == 4 and duration["sum"] == pytest.approx(55.55)
    assert duration["bounds"] == [0.1, 1.0, 10.0]
    assert duration["cumulative"] == [1, 2, 3]  # 50 s is only in +Inf, i.e. count
    assert sorted(r["instance"] for r in figures["reporters"]) == sorted(
        [first.instance, second.instance, other_pool.instance]
    )
    assert not any(r["stale"] for r in figures["reporters"])
    # A publish replaces the process's snapshot: counters are totals, not added twice.
    first.publish()
    again = next(t for t in read_snapshots(client, STALE_AFTER)["tasks"] if t["pool"] == "detection")
    assert again["runs"] == {"failed": 1, "succeeded": 3}


def test_lag_comes_from_the_freshest_report_and_old_snapshots_are_dropped(client: redis.Redis) -> None:
    registry = CollectorRegistry()
    lag = Gauge("pynomaly_kafka_consumer_lag", "", ["group", "topic", "partition"], registry=registry)
    consumed = Counter("pynomaly_kafka_consumed_total", "", ["group", "topic", "outcome"], registry=registry)
    lag.labels(group="g", topic="events", partition="0").set(7)
    consumed.labels(group="g", topic="events", outcome="ok").inc(40)
    live = SnapshotPublisher("consumer:bridge", registry, lambda: client)
    live.publish()
    now = time.time()

    def planted(instance: str, age: float, partition: str, value: float) -> None:
        sample = ["pynomaly_kafka_consumer_lag", {"group": "g", "topic": "events", "partition": partition}, value]
        snapshot = {"component": "consumer:bridge", "instance": instance, "at": now - age, "samples": [sample]}
        client.hset(SNAPSHOTS, instance, json.dumps(snapshot))

    planted("consumer:bridge@gone:1", 60, "0", 999)  # partition 0 moved to `live` since
    planted("consumer:bridge@gone:1", 60, "1", 3)  # (overwrites: one snapshot per process)
    planted("consumer:bridge@stopped:2", 60, "0", 999)
    planted("consumer:bridge@long-gone:3", RETAIN_SECONDS + 5, "2", 5)
    client.hset(SNAPSHOTS, "garbage", "{not json")

    figures = read_snapshots(client, STALE_AFTER, now=now)

    by_partition = {(x["topic"], x["partition"]): x for x in figures["consumer_lag"]}
    assert set(by_partition) == {("events", 0), ("events", 1)}
    assert by_partition[("events", 0)]["lag"] == 7 and by_partition[("events", 0)]["reported_by"] == live.instance
    assert not by_partition[("events", 0)]["stale"]
    assert by_partition[("events", 1)]["lag"] == 3 and by_partition[("events", 1)]["stale"]
    assert figures["consumed"] == [{"group": "g", "topic": "events", "outcome": "ok", "count": 40}]
    # The long-gone and unreadable snapshots are deleted, the stale ones kept and marked.
    assert set(client.hkeys(SNAPSHOTS)) == {live.instance, "consumer:bridge@gone:1", "consumer:bridge@stopped:2"}
    assert {r["instance"]: r["stale"] for r in figures["reporters"]} == {
        live.instance: False,
        "consumer:bridge@gone:1": True,
        "consumer:bridge@stopped:2": True,
    }


def test_a_snapshot_never_breaks_the_heartbeat_that_writes_it() -> None:
    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    publisher = SnapshotPublisher("worker:detection", worker_registry([0.1], {"succeeded": 1}), lambda: dead)
    publisher.publish()  # logged, not raised
    publisher.publish()


def test_redis_state_covers_every_queue_and_priority(client: redis.Redis) -> None:
    queue = TOPOLOGY.queues[0]
    client.rpush(queue.redis_lists()[-1], "a", "b")  # the low-priority list
    state = redis_state(client)
    assert len(state["queues"]) == 4 * len(TOPOLOGY.queues)
    assert {"queue": queue.name, "priority": "low", "depth": 2} in state["queues"]
    assert sum(q["depth"] for q in state["queues"]) == 2
    assert state["dlq"] == {"size": 0}
    assert {s["stream"] for s in state["streams"]} == {s.name for s in TOPOLOGY.streams}


def test_redis_state_refuses_to_report_zeros_when_redis_is_away() -> None:
    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    with pytest.raises(redis.ConnectionError):
        redis_state(dead)


def test_a_worker_removes_the_metrics_folders_of_dead_workers(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys
    import tempfile

    from pynomaly.workers import main as worker_main

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / f"{worker_main.METRICS_DIR_PREFIX}{gone.pid}-abc"
    living = tmp_path / f"{worker_main.METRICS_DIR_PREFIX}{os.getppid()}-def"
    foreign = tmp_path / f"{worker_main.METRICS_DIR_PREFIX}older"  # not of this naming: left alone
    for folder in (dead, living, foreign):
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"x")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "placeholder")  # restored after the test
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")

    worker_main._multiprocess_metrics_dir()

    own = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    assert own.parent == tmp_path and own.name.startswith(f"{worker_main.METRICS_DIR_PREFIX}{os.getpid()}-")
    assert own.is_dir() and living.is_dir() and foreign.is_dir()
    assert not dead.exists()
