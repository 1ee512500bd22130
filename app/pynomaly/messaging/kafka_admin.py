"""Kafka connection settings and topic creation from the messaging topology.

``ensure_topics`` is idempotent: the local system and the tests call it at every start, and a
deployment may call it from an init step; topics that already exist are left as they are.
"""

from __future__ import annotations

import logging
from typing import Any

from pynomaly.config import Settings
from pynomaly.topology import TOPOLOGY, Topic, Topology

log = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36  # Kafka protocol error code


class TopicMismatchError(RuntimeError):
    """An existing topic differs from the topology in a way Kafka cannot fix in place (fewer partitions)."""


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
    """Every topic and its dead-letter topic with partitions, replication and configs, as create_topics takes them.

    Replication and min.insync.replicas come from the settings (the deployment knows its broker
    count); the topology's production values apply where the settings allow them.
    """
    replication = settings.kafka_replication_factor
    specs: dict[str, dict[str, Any]] = {}
    for topic in topology.topics:
        configs = _topic_configs(topic, settings)
        specs[topic.name] = {"num_partitions": topic.partitions, "replication_factor": replication, "configs": configs}
        # Dead letters are rare and read by people: one partition, same retention.
        specs[topic.dead_letter] = {"num_partitions": 1, "replication_factor": replication, "configs": dict(configs)}
    return specs


def _topic_configs(topic: Topic, settings: Settings) -> dict[str, str]:
    replication = settings.kafka_replication_factor
    # min.insync.replicas above the replication would make every acks=all write fail.
    min_isr = max(1, min(settings.kafka_min_insync_replicas, topic.min_insync_replicas, replication))
    return {"retention.ms": str(topic.retention_ms), "min.insync.replicas": str(min_isr)}


def ensure_topics(settings: Settings, topology: Topology = TOPOLOGY, timeout_ms: int = 30_000) -> list[str]:
    """Create the topology's topics (and each ``<topic>.dlq``) that do not exist; return the names created.

    Raises :class:`TopicMismatchError` when an existing topic has fewer partitions than declared
    (consumers would be capped below what autoscaling expects).  More partitions are only logged.
    """
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
        _check_partitions(admin, specs, skip=set(created))
        return sorted(created)
    finally:
        admin.close()


def _check_partitions(admin: Any, specs: dict[str, dict[str, Any]], skip: set[str]) -> None:
    names = [n for n in specs if n not in skip]
    if not names:
        return
    problems = []
    for described in admin.describe_topics(names):
        name = described["name"]
        have, want = len(described.get("partitions") or []), specs[name]["num_partitions"]
        if have < want:
            problems.append(f"{name} has {have} partition(s), the topology declares {want}")
        elif have > want:
            log.warning("topic %s has %d partitions, more than the %d declared; leaving it", name, have, want)
    if problems:
        raise TopicMismatchError(
            "; ".join(problems) + " (add partitions with kafka-topics --alter --partitions, or recreate the topic)"
        )
