"""Starts one Kafka consumer pool of the topology (the chart runs one Deployment each)."""

from __future__ import annotations

from prometheus_client import REGISTRY

from pynomaly.config import Settings
from pynomaly.consumers.base import EventConsumer, Handler
from pynomaly.consumers.handlers import AuditSink, StreamBridge
from pynomaly.consumers.stream_groups import stream_group_consumers
from pynomaly.messaging.outbox import Outbox, OutboxRelay
from pynomaly.observability.ops import SnapshotPublisher
from pynomaly.storage.redis_client import redis_from_settings
from pynomaly.topology import GROUP_AUDIT, GROUP_BRIDGE, GROUP_SCORER, TOPOLOGY
from pynomaly.wiring import Container


def build_handler(settings: Settings, group_name: str) -> Handler:
    client = redis_from_settings(settings)
    if group_name == GROUP_BRIDGE:
        return StreamBridge(client, settings.stream_maxlen, group_name, settings.bridge_dedup_ttl_seconds)
    if group_name == GROUP_AUDIT:
        return AuditSink(client)
    raise ValueError(f"no handler for consumer group {group_name!r}")


def run_consumer(settings: Settings, pool: str) -> None:
    matches = [g for g in TOPOLOGY.consumer_groups if g.pool == pool or g.name == pool]
    if not matches:
        raise ValueError(f"unknown consumer pool {pool!r}; known: {[g.pool for g in TOPOLOGY.consumer_groups]}")
    group = matches[0]
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port)
    client = redis_from_settings(settings)
    # The Redis Streams groups (health-monitor, notifiers) ride along with the bridge pool.
    stream_groups = stream_group_consumers(client, settings.result_ttl_seconds) if group.name == GROUP_BRIDGE else []
    for stream_group in stream_groups:
        stream_group.start()
    # A relay here too: the outbox keeps reaching Kafka while every API replica is away (the
    # relays share one lease, so only one publishes).
    relay = OutboxRelay(Outbox(client, settings.outbox_max_events), settings)
    relay.start()
    # Lag and consumed counts for the dashboard's operations view, from the registry /metrics serves.
    snapshots = SnapshotPublisher(f"consumer:{group.pool}", REGISTRY, lambda: client, settings.heartbeat_interval)
    snapshots.start()
    container = Container(settings, f"consumer-{group.pool}") if group.name == GROUP_SCORER else None
    try:
        if container is not None:
            # The scorer takes whole poll batches of raw records (consumers/scorer.py).
            import threading

            from pynomaly.consumers.scorer import LiveScorer, preload_detector_libraries

            threading.Thread(target=preload_detector_libraries, name="preload-detectors", daemon=True).start()
            EventConsumer(settings, group, heartbeat_client=client, batch_handler=LiveScorer(container)).run()
        else:
            EventConsumer(settings, group, build_handler(settings, group.name), heartbeat_client=client).run()
    finally:
        if container is not None:
            container.close()
        snapshots.stop()
        relay.stop()
        for stream_group in stream_groups:
            stream_group.stop()
