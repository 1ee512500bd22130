"""Kafka connection settings and topic creation from the messaging topology.

One plan and one behaviour for every place topics are made: :func:`topic_plan` says what each topic
(and its ``<topic>.dlq``) should be, and both :func:`ensure_topics` (the local system, the tests) and
the in-cluster topics Job of the Pulumi program (``infra/scripts/kafka-topics.sh``, fed the same
plan) apply it the same way:

- a missing topic is created with the planned partitions, replication and configs;
- an existing topic with fewer partitions than planned gets partitions added (Kafka can only grow
  them; consumer autoscaling is sized on the declared count; records with a key may land on another
  partition than before, which this system's consumers do not depend on);
- an existing topic with more partitions is left as it is (they cannot be removed), with a warning;
- anything else about an existing topic (replication, configs) is left as it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pynomaly.config import Settings
from pynomaly.topology import TOPOLOGY, Topology

log = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36  # Kafka protocol error code


@dataclass(frozen=True)
class TopicPlan:
    name: str
    partitions: int
    replication: int
    min_insync_replicas: int
    retention_ms: int


def topic_plan(topology: Topology, replication: int, min_insync_replicas: int) -> list[TopicPlan]:
    """Every topic and its dead-letter topic as the deployment should have them.

    ``replication`` and ``min_insync_replicas`` are what the deployment allows (its broker count);
    each topic gets its own declared values capped by them.
    """
    if replication < 1 or min_insync_replicas < 1:
        raise ValueError(f"replication ({replication}) and min.insync.replicas ({min_insync_replicas}) must be >= 1")
    plan = []
    for topic in topology.topics:
        rf = max(1, min(topic.replication_factor, replication))
        # min.insync.replicas above the replication would make every acks=all write fail.
        min_isr = max(1, min(topic.min_insync_replicas, min_insync_replicas, rf))
        plan.append(TopicPlan(topic.name, topic.partitions, rf, min_isr, topic.retention_ms))
        # Dead letters are rare and read by people: one partition, same retention.
        plan.append(TopicPlan(topic.dead_letter, 1, rf, min_isr, topic.retention_ms))
    return plan


def connection_config(settings: Settings) -> dict[str, Any]:
    """kafka-python keyword arguments for producers, consumers and admin clients."""
    settings.require("kafka_bootstrap_servers")
    config: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in settings.kafka_bootstrap_servers.split(",") if s.strip()],
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol.startswith("SASL_"):
        settings.require("kafka_sasl_username", "kafka_sasl_password")
        config.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_password,
        )
    return config


def topic_specs(settings: Settings, topology: Topology = TOPOLOGY) -> dict[str, dict[str, Any]]:
    """:func:`topic_plan` for these settings, as kafka-python's create_topics takes it."""
    return {
        p.name: {
            "num_partitions": p.partitions,
            "replication_factor": p.replication,
            "configs": {"retention.ms": str(p.retention_ms), "min.insync.replicas": str(p.min_insync_replicas)},
        }
        for p in topic_plan(topology, settings.kafka_replication_factor, settings.kafka_min_insync_replicas)
    }


def ensure_topics(settings: Settings, topology: Topology = TOPOLOGY, timeout_ms: int = 30_000) -> list[str]:
    """Apply :func:`topic_plan` as the module docstring says; return the names of the topics created."""
    from kafka import KafkaAdminClient
    from kafka.errors import for_code

    specs = topic_specs(settings, topology)
    admin = KafkaAdminClient(client_id="pynomaly-topics", **connection_config(settings))
    try:
        existing = set(admin.list_topics())
        wanted = {name: spec for name, spec in specs.items() if name not in existing}
        created: list[str] = []
        if wanted:
            result = admin.create_topics(wanted, timeout_ms=timeout_ms, raise_errors=False)
            for entry in result["topics"]:
                code = entry.get("error_code", 0)
                if code == 0:
                    created.append(entry["name"])
                elif code != _TOPIC_ALREADY_EXISTS:  # another process won the race: fine
                    raise for_code(code)(f"creating topic {entry['name']}: {entry.get('error_message') or ''}")
            admin.wait_for_topics(created, timeout_ms=timeout_ms)
        _grow_partitions(admin, specs, skip=set(created), timeout_ms=timeout_ms)
        return sorted(created)
    finally:
        admin.close()


def _grow_partitions(admin: Any, specs: dict[str, dict[str, Any]], skip: set[str], timeout_ms: int) -> None:
    from kafka.admin import NewPartitions

    names = [n for n in specs if n not in skip]
    if not names:
        return
    grow = {}
    for described in admin.describe_topics(names):
        name = described["name"]
        have, want = len(described.get("partitions") or []), specs[name]["num_partitions"]
        if have < want:
            log.warning(
                "topic %s has %d partition(s), the topology declares %d: adding %d", name, have, want, want - have
            )
            grow[name] = NewPartitions(total_count=want)
        elif have > want:
            log.warning("topic %s has %d partitions, more than the %d declared; leaving it", name, have, want)
    if grow:
        admin.create_partitions(grow, timeout_ms=timeout_ms)
