"""Workers and consumers expose their own Prometheus metrics (PYNOMALY_METRICS_PORT).

A worker runs tasks in forked child processes, so its counters must reach the parent's endpoint
through the multiprocess directory; a consumer counts what it consumed.  Real processes, real
Redis and Kafka.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pynomaly.config import Settings
from pynomaly.localstack.ports import free_port
from pynomaly.localstack.procs import log_tail, spawn, stop_process
from pynomaly.localstack.system import child_env, pynomaly_argv
from pynomaly.messaging.celery_app import create_celery
from pynomaly.messaging.events import make_event
from pynomaly.messaging.kafka_events import KafkaEventPublisher
from pynomaly.topology import GROUP_AUDIT, T_AUDIT, TASK_MAINTENANCE, TOPOLOGY, Priority
from tests.e2e.support import wait_for

pytestmark = pytest.mark.services


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def component(settings: Settings, tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    started = []

    def start(name: str, *args: str) -> str:
        port = free_port()
        env = child_env(settings, PYNOMALY_METRICS_PORT=str(port), PYNOMALY_HEARTBEAT_DIR=str(tmp_path / name))
        proc, record = spawn(name, pynomaly_argv(*args), tmp_path / f"{name}.log", env=env)
        started.append((proc, record, tmp_path / f"{name}.log"))
        url = f"http://127.0.0.1:{port}/metrics"

        def up() -> bool:
            assert proc.poll() is None, log_tail(tmp_path / f"{name}.log")
            try:
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 90, what=f"{name}'s metrics endpoint")
        return url

    yield start
    for proc, record, _log in started:
        stop_process(record, grace=15, proc=proc)


def test_worker_counts_tasks_run_in_its_child_processes(settings: Settings, component) -> None:  # type: ignore[no-untyped-def]
    url = component("metrics-worker", "worker", "--queue", TOPOLOGY.task(TASK_MAINTENANCE).queue)
    celery = create_celery(settings)
    result = celery.send_task(
        TASK_MAINTENANCE, queue=TOPOLOGY.task(TASK_MAINTENANCE).queue, priority=Priority.HIGH.step
    )
    assert isinstance(result.get(timeout=60), dict)

    def counted() -> float:
        text = httpx.get(url, timeout=5).text
        return _metric(text, "pynomaly_task_duration_seconds_count", task=TASK_MAINTENANCE)

    assert wait_for(counted, 30, what="the maintenance task in the worker's metrics") >= 1


def test_consumer_counts_consumed_events_and_reports_lag(settings: Settings, component) -> None:  # type: ignore[no-untyped-def]
    audit = next(g for g in TOPOLOGY.consumer_groups if g.name == GROUP_AUDIT)
    url = component("metrics-consumer", "consumer", "--group", audit.pool)
    publisher = KafkaEventPublisher(settings)
    try:
        publisher.publish(make_event("audit_record", "metrics-test", "tests", action="metrics.check", actor="tests"))
    finally:
        publisher.close()

    def consumed() -> float:
        return _metric(
            httpx.get(url, timeout=5).text, "pynomaly_kafka_consumed_total", group=GROUP_AUDIT, topic=T_AUDIT
        )

    assert wait_for(consumed, 60, what="the audit event in the consumer's metrics") >= 1
    lag = re.compile(rf'pynomaly_kafka_consumer_lag\{{group="{GROUP_AUDIT}",partition="\d",topic="{T_AUDIT}"\}}')
    wait_for(lambda: lag.search(httpx.get(url, timeout=5).text), 30, what="the consumer's lag gauge")
