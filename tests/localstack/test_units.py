"""Pure logic of the local system: version parsing, ports, keys, Kafka client configuration."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from pynomaly.config import Settings, SettingsError
from pynomaly.localstack.errors import LocalStackError
from pynomaly.localstack.java import check_java, find_java, parse_java_version
from pynomaly.localstack.kafka_broker import new_cluster_id, read_meta_properties
from pynomaly.localstack.ports import free_port, pick_port, port_is_free
from pynomaly.localstack.procs import log_tail
from pynomaly.localstack.system import ensure_api_key, local_components
from pynomaly.messaging.kafka_admin import connection_config, topic_plan, topic_specs
from pynomaly.topology import TOPOLOGY, Topic, Topology


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ('openjdk version "17.0.15" 2025-04-15\nOpenJDK Runtime Environment (build 17.0.15+6-Debian-1deb12u1)', 17),
        ('java version "1.8.0_392"\nJava(TM) SE Runtime Environment (build 1.8.0_392-b08)', 8),
        ('openjdk version "11.0.22" 2024-01-16', 11),
        ('openjdk version "21" 2023-09-19', 21),
        ('openjdk version "25-ea" 2025-09-16', 25),
        ('Picked up JAVA_TOOL_OPTIONS: -Xmx1g\nopenjdk version "22.0.1" 2024-04-16', 22),
        ("bash: java: command not found", None),
    ],
)
def test_parse_java_version(output: str, expected: int | None) -> None:
    assert parse_java_version(output) == expected


def _fake_java(tmp_path: Path, version_line: str) -> str:
    script = tmp_path / "java"
    script.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    script.chmod(0o755)
    return str(script)


def test_java_too_old_is_one_clear_line(tmp_path: Path) -> None:
    java = _fake_java(tmp_path, 'java version "1.8.0_392"')
    with pytest.raises(LocalStackError) as info:
        check_java(java)
    message = str(info.value)
    assert "\n" not in message
    assert "Java 17 or newer" in message and "Java 8" in message and "apt-get install" in message


def test_java_new_enough_passes(tmp_path: Path) -> None:
    java = _fake_java(tmp_path, 'openjdk version "21.0.2" 2024-01-16')
    assert check_java(java) == java


def test_java_missing_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nowhere"))
    with pytest.raises(LocalStackError, match=r"Java 17 or newer is needed .* none was found"):
        find_java()


def test_real_java_on_this_machine_is_accepted() -> None:
    assert os.access(check_java(), os.X_OK)


def test_configured_busy_port_is_refused_and_free_one_is_picked() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert not port_is_free(port)
        with pytest.raises(LocalStackError, match=rf"port {port} .* already in use") as info:
            pick_port(port, "Redis", "--redis-port")
        assert "--redis-port" in str(info.value)
    picked = pick_port(None, "Redis")
    assert picked > 0 and port_is_free(picked)
    assert port_is_free(free_port())


def test_api_key_is_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "api-key"
    key = ensure_api_key(path)
    assert len(key) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_api_key(path) == key


def test_cluster_id_format() -> None:
    ids = {new_cluster_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_meta_properties_reader(tmp_path: Path) -> None:
    (tmp_path / "meta.properties").write_text("#\n#Thu\nnode.id=1\nversion=1\ncluster.id=abc\n")
    assert read_meta_properties(tmp_path) == {"node.id": "1", "version": "1", "cluster.id": "abc"}
    assert read_meta_properties(tmp_path / "missing") == {}


def test_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert log_tail(log, 3).splitlines() == ["line 97", "line 98", "line 99"]
    assert log_tail(tmp_path / "missing.log") == ""


def test_connection_config_plain_and_sasl() -> None:
    plain = connection_config(Settings(kafka_bootstrap_servers="a:9092, b:9092"))
    assert plain == {"bootstrap_servers": ["a:9092", "b:9092"], "security_protocol": "PLAINTEXT"}
    sasl = connection_config(
        Settings(
            kafka_bootstrap_servers="k:9093",
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_username="u",
            kafka_sasl_password="p",
        )
    )
    assert sasl["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (sasl["sasl_plain_username"], sasl["sasl_plain_password"]) == ("u", "p")
    with pytest.raises(SettingsError, match="KAFKA_SASL_USERNAME"):
        connection_config(Settings(kafka_bootstrap_servers="k:9093", kafka_security_protocol="SASL_PLAINTEXT"))
    with pytest.raises(SettingsError, match="KAFKA_BOOTSTRAP_SERVERS"):
        connection_config(Settings())


def test_topic_specs_follow_topology_and_settings() -> None:
    specs = topic_specs(Settings(kafka_replication_factor=3, kafka_min_insync_replicas=2))
    assert set(specs) == {t.name for t in TOPOLOGY.topics} | {t.dead_letter for t in TOPOLOGY.topics}
    for topic in TOPOLOGY.topics:
        spec = specs[topic.name]
        assert spec["num_partitions"] == topic.partitions
        assert spec["replication_factor"] == 3
        assert spec["configs"] == {"retention.ms": str(topic.retention_ms), "min.insync.replicas": "2"}
        assert specs[topic.dead_letter]["num_partitions"] == 1
    # One broker: min.insync.replicas can never exceed the replication (every acks=all write would fail).
    single = topic_specs(Settings(kafka_replication_factor=1, kafka_min_insync_replicas=2))
    assert {s["configs"]["min.insync.replicas"] for s in single.values()} == {"1"}
    # A topic's own replication applies, capped by the deployment's (and its min.insync.replicas with it).
    two = Topology((), (Topic("t", 2, "test", replication_factor=2, min_insync_replicas=2),), (), (), (), (), ())
    plans = topic_plan(two, replication=3, min_insync_replicas=3)
    assert [(p.name, p.partitions, p.replication, p.min_insync_replicas) for p in plans] == [
        ("t", 2, 2, 2),
        ("t.dlq", 1, 2, 2),
    ]
    with pytest.raises(ValueError, match="must be >= 1"):
        topic_plan(TOPOLOGY, replication=0, min_insync_replicas=1)


def test_local_components_cover_the_topology(tmp_path: Path) -> None:
    settings = Settings(redis_url="redis://:x@127.0.0.1:1/0", kafka_bootstrap_servers="127.0.0.1:2", api_port=8123)
    components = local_components(settings, tmp_path)
    names = [c.name for c in components]
    assert names[0] == "api"
    assert names.count("api") == 1
    assert {f"worker-{p.name}" for p in TOPOLOGY.worker_pools} <= set(names)
    assert {f"consumer-{g.pool}" for g in TOPOLOGY.consumer_groups} <= set(names)
    assert names.count("beat") == 1  # the scheduler is a singleton
    assert len(names) == 1 + len(TOPOLOGY.worker_pools) + len(TOPOLOGY.consumer_groups) + 1
    api = components[0]
    assert api.health is not None and api.health.to_dict() == {"kind": "http", "url": "http://127.0.0.1:8123/healthz"}
    for component in components:
        assert component.env["PYNOMALY_REDIS_URL"] == settings.redis_url
        assert component.env["PYNOMALY_HEARTBEAT_DIR"] == str(tmp_path / "run" / component.name)
        if component.name != "api":
            assert component.health is not None
            assert component.health.to_dict()["path"] == str(tmp_path / "run" / component.name / "heartbeat")
