"""The session's real Kafka broker and topic creation from the topology."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource

from pynomaly.config import Settings
from pynomaly.localstack.errors import LocalStackError
from pynomaly.localstack.kafka_broker import KafkaBroker
from pynomaly.messaging.kafka_admin import connection_config, ensure_topics
from pynomaly.topology import TOPOLOGY, Topic, Topology

pytestmark = pytest.mark.services


@pytest.fixture
def admin(settings: Settings):
    client = KafkaAdminClient(**connection_config(settings))
    yield client
    client.close()


def test_every_topology_topic_exists_with_its_partitions(settings: Settings, admin: KafkaAdminClient) -> None:
    described = {t["name"]: t for t in admin.describe_topics()}
    for topic in TOPOLOGY.topics:
        assert len(described[topic.name]["partitions"]) == topic.partitions, topic.name
        assert len(described[topic.dead_letter]["partitions"]) == 1, topic.dead_letter
        replicas = {len(p["replica_nodes"]) for p in described[topic.name]["partitions"]}
        assert replicas == {settings.kafka_replication_factor}


def test_topic_configs_come_from_the_topology(admin: KafkaAdminClient) -> None:
    resources = [ConfigResource("TOPIC", t.name) for t in TOPOLOGY.topics]
    configs = admin.describe_configs(resources)["topic"]
    for topic in TOPOLOGY.topics:
        assert configs[topic.name]["retention.ms"]["value"] == str(topic.retention_ms)
        assert configs[topic.name]["min.insync.replicas"]["value"] == "1"


def test_ensure_topics_is_idempotent(settings: Settings) -> None:
    assert ensure_topics(settings) == []
    assert ensure_topics(settings) == []


def _partitions(admin: KafkaAdminClient, name: str, want: int, timeout: float = 60.0) -> int:
    """The topic's partition count, polled until it is ``want`` (metadata spreads to the client lazily)."""
    deadline = time.monotonic() + timeout
    while True:
        (described,) = admin.describe_topics([name])
        have = len(described["partitions"])
        if have == want or time.monotonic() > deadline:
            return have
        time.sleep(0.5)


def test_fewer_partitions_than_declared_are_added_and_more_are_left(
    settings: Settings, admin: KafkaAdminClient, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"test-mismatch-{uuid.uuid4().hex[:8]}"
    small = Topology((), (Topic(name, 1, "test"),), (), (), (), (), ())
    bigger = Topology((), (Topic(name, 3, "test"),), (), (), (), (), ())
    try:
        assert ensure_topics(settings, small) == sorted([name, f"{name}.dlq"])
        assert _partitions(admin, name, 1) == 1
        with caplog.at_level("WARNING", logger="pynomaly.messaging.kafka_admin"):
            assert ensure_topics(settings, bigger) == []  # nothing created: grown in place
        assert _partitions(admin, name, 3) == 3
        assert f"topic {name} has 1 partition(s), the topology declares 3: adding 2" in caplog.text
        caplog.clear()
        with caplog.at_level("WARNING", logger="pynomaly.messaging.kafka_admin"):
            assert ensure_topics(settings, small) == []  # Kafka cannot remove partitions: left as they are
        assert _partitions(admin, name, 3) == 3
        assert f"topic {name} has 3 partitions, more than the 1 declared; leaving it" in caplog.text
    finally:
        admin.delete_topics([name, f"{name}.dlq"])


def test_a_client_round_trip_through_the_broker(settings: Settings) -> None:
    topic = TOPOLOGY.topic(TOPOLOGY.topics[0].name)
    key = uuid.uuid4().hex.encode()
    producer = KafkaProducer(acks="all", **connection_config(settings))
    try:
        metadata = producer.send(topic.name, key=key, value=b"ping").get(timeout=30)
    finally:
        producer.close()
    consumer = KafkaConsumer(consumer_timeout_ms=10_000, **connection_config(settings))
    try:
        from kafka import TopicPartition

        partition = TopicPartition(topic.name, metadata.partition)
        consumer.assign([partition])
        consumer.seek(partition, metadata.offset)
        record = next(iter(consumer))
        assert (record.key, record.value) == (key, b"ping")
    finally:
        consumer.close()


def test_data_folder_held_by_a_running_broker_is_refused(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    # A second broker pointed at the session broker's folder: the check fires before any JVM starts.
    intruder = KafkaBroker(kafka_broker.state_dir, libs_dir=kafka_broker.jars.cache_dir, log_dir=tmp_path)
    with pytest.raises(LocalStackError, match="is in use by another Kafka process") as info:
        intruder.start()
    assert "\n" not in str(info.value)
    assert intruder.pid is None
    assert kafka_broker.running()


def test_busy_configured_port_fails_before_anything_starts(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        broker = KafkaBroker(tmp_path / "kafka", libs_dir=kafka_broker.jars.cache_dir, port=port)
        with pytest.raises(LocalStackError, match=rf"port {port} .*Kafka clients.* already in use.*--kafka-port"):
            broker.start()
    assert broker.pid is None
    assert not (tmp_path / "kafka" / "data").exists()
