"""Prometheus metrics.  Counters live in the process that does the work (API, worker, consumer);
gauges that describe shared state (queue depths, DLQ size, stream lengths) are read from Redis at
scrape time by :class:`RedisStateCollector`, so every replica reports the same truth.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from pynomaly.topology import PRIORITY_STEPS, TOPOLOGY

log = logging.getLogger(__name__)

TASKS = Counter("pynomaly_tasks_total", "Task executions by outcome", ["task", "outcome"])
TASK_SECONDS = Histogram(
    "pynomaly_task_duration_seconds",
    "Task run time",
    ["task"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
TASK_RETRIES = Counter("pynomaly_task_retries_total", "Task retries scheduled", ["task"])
DELIVERIES_RECOVERED = Counter(
    "pynomaly_deliveries_recovered_total", "Task messages of a dead worker put back on their queue", ["task"]
)
TASK_REDELIVERIES = Counter(
    "pynomaly_task_redeliveries_total", "Task runs from a redelivered message (its worker was lost)", ["task"]
)
DEAD_LETTERED = Counter("pynomaly_dead_lettered_total", "Tasks moved to the dead-letter queue", ["task"])
JOBS_SUBMITTED = Counter("pynomaly_jobs_submitted_total", "Jobs accepted by the API", ["detector", "priority"])
KAFKA_PUBLISH_FAILURES = Counter(
    "pynomaly_kafka_publish_failures_total", "Events the broker never acknowledged", ["topic", "type"]
)
KAFKA_PUBLISHED = Counter("pynomaly_kafka_published_total", "Events published", ["topic", "type"])
KAFKA_PUBLISH_SECONDS = Histogram(
    "pynomaly_kafka_publish_seconds",
    "Time until the broker acknowledged an event",
    ["topic"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
KAFKA_CONSUMED = Counter("pynomaly_kafka_consumed_total", "Events consumed", ["group", "topic", "outcome"])
KAFKA_CONSUMER_LAG = Gauge(
    "pynomaly_kafka_consumer_lag", "Messages behind the log end", ["group", "topic", "partition"]
)
WEBSOCKET_CLIENTS = Gauge("pynomaly_websocket_clients", "Connected WebSocket clients")
WEBSOCKET_GAPS = Counter(
    "pynomaly_websocket_gaps_total", "Dashboard clients told they fell behind the stream's MAXLEN (a resync)"
)


class RedisStateCollector(Collector):
    """Queue depth per queue and priority, DLQ size and stream lengths, read at scrape time."""

    def __init__(self, client: redis.Redis) -> None:
        self._r = client

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from pynomaly.storage.dead_letters import DLQ_INDEX

        depth = GaugeMetricFamily(
            "pynomaly_queue_depth", "Messages waiting per queue and priority", labels=["queue", "priority"]
        )
        dlq = GaugeMetricFamily("pynomaly_dlq_size", "Entries in the dead-letter queue")
        streams = GaugeMetricFamily("pynomaly_stream_length", "Entries in each Redis stream", labels=["stream"])
        names = {step: prio.value for prio, step in PRIORITY_STEPS.items()}
        try:
            pipe = self._r.pipeline(transaction=False)
            layout = []
            for queue in TOPOLOGY.queues:
                for step, lst in zip(sorted(PRIORITY_STEPS.values()), queue.redis_lists(), strict=True):
                    pipe.llen(lst)
                    layout.append((queue.name, names[step]))
            pipe.zcard(DLQ_INDEX)
            for stream in TOPOLOGY.streams:
                pipe.xlen(stream.name)
            values = pipe.execute()
        except redis.RedisError as exc:  # a scrape must not fail because Redis blinked
            log.warning("metrics: cannot read Redis state: %s", exc)
            return
        for (queue_name, prio), value in zip(layout, values, strict=False):
            depth.add_metric([queue_name, prio], value)
        dlq.add_metric([], values[len(layout)])
        for stream, value in zip(TOPOLOGY.streams, values[len(layout) + 1 :], strict=True):
            streams.add_metric([stream.name], value)
        yield depth
        yield dlq
        yield streams


class RegistryCollector(Collector):
    """Everything another registry holds, collected at scrape time (the API serves the process's
    default registry next to :class:`RedisStateCollector` this way, through public API only)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()
