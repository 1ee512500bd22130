"""The Redis, HAProxy, Kafka and pause images: the files and users the manifests rely on, and the
programs run from the unpacked archives (chrooted, as the manifests' uids, read-only root)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from infra import kafka_cluster as infra_kafka
from infra import redis_ha as infra_redis
from infra.k8s import script as infra_script
from tests.images.conftest import image_config
from tools import images

pytestmark = [pytest.mark.images, pytest.mark.timeout(3600)]

# Programs each image's manifests execute (command, args, probes and the scripts they mount).
COMMANDS = {
    "redis": ["sh", "redis-server", "redis-sentinel", "redis-cli", "timeout", "head", "grep", "printf", "cat", "tr"],
    "haproxy": ["haproxy"],
    "kafka": [
        "sh",
        "cat",
        "java",
        "grep",
        "sleep",
        "tr",
        "/opt/kafka/bin/kafka-storage.sh",
        "/opt/kafka/bin/kafka-server-start.sh",
        "/opt/kafka/bin/kafka-topics.sh",
    ],
}
UIDS = {"redis": infra_redis.UID, "haproxy": infra_redis.HAPROXY_UID, "kafka": infra_kafka.UID}


def run(root: Path, *argv: str, uid: int, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    result = images.run_in_rootfs(
        root, argv, user=f"{uid}:{uid}", env=env, read_only=True, network=False, check=False, timeout=timeout
    )
    assert isinstance(result, subprocess.CompletedProcess)
    assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[str], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited early: {log.read_text()[-3000:]}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"nothing listens on {port} after {timeout} s: {log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[str]) -> None:
    images.stop(proc)
    assert proc.poll() is not None


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_manifest_commands_and_users_exist(
    name: str, built: dict[str, images.Built], rootfs: Callable[[str], Path]
) -> None:
    root = rootfs(name)
    config = image_config(built[name])
    assert config["User"] == f"{UIDS[name]}:{UIDS[name]}"
    assert f":x:{UIDS[name]}:{UIDS[name]}:" in (root / "etc/passwd").read_text()
    env = dict(e.split("=", 1) for e in config["Env"])  # type: ignore[union-attr]
    found = run(
        root,
        "sh",
        "-c",
        'for c in "$@"; do command -v "$c" || { echo "missing $c"; exit 1; }; done',
        "sh",
        *COMMANDS[name],
        uid=UIDS[name],
        env=env,
    )
    assert "missing" not in found


def test_infra_scripts_call_only_what_the_images_have() -> None:
    # Guard for COMMANDS above: the programs named in infra's scripts are in the list.
    redis_scripts = "".join(infra_script(s) for s in infra_redis.SCRIPTS)
    for word in ("redis-server", "redis-sentinel", "redis-cli", "timeout", "head", "tr"):
        assert word in redis_scripts and word in COMMANDS["redis"], word
    kafka_format = infra_script("kafka-format.sh")
    assert "/opt/kafka/bin/kafka-storage.sh" in kafka_format and " tr " in kafka_format
    for script in ("kafka-storage.sh", "kafka-topics.sh", "kafka-server-start.sh"):
        assert any(c.endswith(script) for c in COMMANDS["kafka"])


def test_redis_runs_and_answers(built: dict[str, images.Built], rootfs: Callable[[str], Path], tmp_path: Path) -> None:
    root = rootfs("redis")
    assert "v=7." in run(root, "redis-server", "--version", uid=infra_redis.UID)
    assert "v=7." in run(root, "redis-sentinel", "--version", uid=infra_redis.UID)
    port = free_port()
    proc = images.run_in_rootfs(
        root,
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            "/tmp",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        user=f"{infra_redis.UID}:{infra_redis.UID}",
        read_only=True,
        network=False,
        popen=True,
        log=tmp_path / "redis.log",
    )
    assert isinstance(proc, subprocess.Popen)
    try:
        wait_port(port, proc, 60, tmp_path / "redis.log")
        assert "PONG" in run(root, "redis-cli", "-p", str(port), "ping", uid=infra_redis.UID)
    finally:
        stop(proc)


def test_haproxy_accepts_the_generated_config(built: dict[str, images.Built], rootfs: Callable[[str], Path]) -> None:
    root = rootfs("haproxy")
    assert image_config(built["haproxy"])["Entrypoint"] == ["haproxy"]
    assert "HAProxy version" in run(root, "haproxy", "-v", uid=infra_redis.HAPROXY_UID)
    # What infra/redis_ha.py mounts at /usr/local/etc/haproxy/haproxy.cfg, checked by this haproxy.
    cfg = infra_redis._haproxy_cfg(
        [f"pynomaly-redis-server-{i}.pynomaly-redis-server-headless.ns.svc" for i in range(3)]
    )
    (root / "usr/local/etc/haproxy/haproxy.cfg").write_text(cfg)
    out = run(
        root,
        "haproxy",
        "-c",
        "-f",
        "/usr/local/etc/haproxy/haproxy.cfg",
        uid=infra_redis.HAPROXY_UID,
        env={"REDIS_PASSWORD": "secret"},
    )
    assert "Configuration file is valid" in out


def test_kafka_tools_run(built: dict[str, images.Built], rootfs: Callable[[str], Path]) -> None:
    root = rootfs("kafka")
    env = {"KAFKA_HEAP_OPTS": "-Xmx128m"}
    assert images.kafka_version() in run(
        root, "java", "-cp", "/opt/kafka/libs/*", "kafka.Kafka", "--version", uid=infra_kafka.UID, env=env
    )
    assert images.kafka_version() in run(
        root, "/opt/kafka/bin/kafka-topics.sh", "--version", uid=infra_kafka.UID, env=env
    )
    jars = sorted(p.name for p in (root / "opt/kafka/libs").glob("*.jar"))
    assert jars == sorted(p.name for p in images._kafka_jars()), "the image must hold exactly the pom's jars"


@pytest.mark.timeout(900)
def test_kafka_broker_formats_starts_and_creates_a_topic(rootfs: Callable[[str], Path], tmp_path: Path) -> None:
    """The manifests' sequence: kafka-storage.sh format, kafka-server-start.sh, kafka-topics.sh."""
    root = rootfs("kafka")
    port, controller = free_port(), free_port()
    props = (
        f"process.roles=broker,controller\nnode.id=1\ncontroller.quorum.voters=1@127.0.0.1:{controller}\n"
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n"
        "controller.listener.names=CONTROLLER\nlog.dirs=/tmp/data\noffsets.topic.replication.factor=1\n"
        "transaction.state.log.replication.factor=1\ntransaction.state.log.min.isr=1\n"
        "share.coordinator.state.topic.replication.factor=1\nshare.coordinator.state.topic.min.isr=1\n"
    )
    (root / "etc/kafka-runtime/server.properties").write_text(props)
    env = {"KAFKA_HEAP_OPTS": "-Xmx256m", "LOG_DIR": "/tmp/kafka-logs"}
    script = (
        "set -e; cp /etc/kafka-runtime/server.properties /tmp/server.properties; "
        '/opt/kafka/bin/kafka-storage.sh format -t "$(/opt/kafka/bin/kafka-storage.sh random-uuid)" '
        "-c /tmp/server.properties >/dev/null; "
        "exec /opt/kafka/bin/kafka-server-start.sh /tmp/server.properties"
    )
    proc = images.run_in_rootfs(
        root,
        ["sh", "-c", script],
        user=f"{infra_kafka.UID}:{infra_kafka.UID}",
        env=env,
        read_only=True,
        network=False,
        popen=True,
        log=tmp_path / "kafka.log",
    )
    assert isinstance(proc, subprocess.Popen)
    try:
        wait_port(port, proc, 300, tmp_path / "kafka.log")
        # A second chroot of the same image talks to the broker through the host's loopback.
        topics = f"/opt/kafka/bin/kafka-topics.sh --bootstrap-server 127.0.0.1:{port}"
        run(
            root,
            "sh",
            "-c",
            f"{topics} --create --topic smoke --partitions 2 --replication-factor 1 && "
            f"{topics} --describe --topic smoke",
            uid=infra_kafka.UID,
            env=env,
            timeout=300,
        )
        assert "smoke" in run(root, "sh", "-c", f"{topics} --list", uid=infra_kafka.UID, env=env)
    finally:
        stop(proc)
    assert "Kafka Server started" in (tmp_path / "kafka.log").read_text(), "the broker logs to stdout"


def test_pause_is_static_and_reports_its_version(built: dict[str, images.Built], rootfs: Callable[[str], Path]) -> None:
    root = rootfs("pause")
    assert sorted(p.name for p in root.iterdir()) == ["pause"]
    assert built["pause"].ref == f"pynomaly/pause:{images.PAUSE_TAG}"
    binary = (root / "pause").read_bytes()
    assert binary[:4] == b"\x7fELF" and b"/lib64/ld-linux" not in binary, "pause must be a static ELF"
    out = subprocess.run([str(root / "pause"), "-v"], capture_output=True, text=True, check=True)
    assert "pause.c" in out.stdout + out.stderr
    assert image_config(built["pause"])["Entrypoint"] == ["/pause"]
