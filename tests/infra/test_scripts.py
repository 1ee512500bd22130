"""Every shell script the program ships: real files under ``infra/scripts/``, checked and run.

No cluster runs them here, so: `sh -n` (dash, like the images' /bin/sh) and `shellcheck` on the exact
text each environment deploys (ConfigMap *.sh entries, `sh -c` commands); the ConfigMaps carry the
files unchanged; and the Kafka format and topics scripts run here against stand-ins of Kafka's tools.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from infra import kafka_cluster, mocked
from infra.config import ENVIRONMENTS
from infra.k8s import SCRIPTS
from pynomaly.topology import TOPOLOGY
from tests.infra.conftest import kinds, named, run_env


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {})
    pod = (
        spec.get("template", {}).get("spec")
        or spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
        or {}
    )
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def _scripts(env: str) -> dict[str, str]:
    run = run_env(env)
    found: dict[str, str] = {}
    for config_map in kinds(run, "ConfigMap"):
        for key, text in (config_map.get("data") or {}).items():
            if key.endswith(".sh"):
                found[f"ConfigMap/{config_map['metadata']['name']}:{key}"] = text
    for obj in run.objects():
        for container in _containers(obj):
            command = [*container.get("command", []), *container.get("args", [])]
            if len(command) >= 3 and command[0].endswith("sh") and command[1] in ("-c", "-ec"):
                found[f"{obj['kind']}/{obj['metadata']['name']}:{container['name']}"] = command[2]
    return found


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_shipped_shell_script_parses(env: str) -> None:
    scripts = _scripts(env)
    assert scripts, "the program ships start-up scripts; finding none means this test looks in the wrong place"
    broken = {}
    for where, text in scripts.items():
        result = subprocess.run(["sh", "-n"], input=text, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            broken[where] = result.stderr.strip()
    assert broken == {}


def _shellcheck() -> str:
    path = shutil.which("shellcheck")
    if path is None:  # part of the proof: a missing tool fails, never skips
        pytest.fail("shellcheck is not installed: apt-get install shellcheck (./dev test installs it)")
    return path


def test_shellcheck_passes_on_every_script_file() -> None:
    files = sorted(p.name for p in SCRIPTS.glob("*.sh"))
    assert {*kafka_cluster.SCRIPTS} <= set(files)
    result = subprocess.run(
        [_shellcheck(), "--external-sources", "--format=gcc", *files],
        cwd=SCRIPTS,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_configmaps_ship_the_script_files_and_one_liners_pass_shellcheck(env: str) -> None:
    files = {p.name: p.read_text() for p in SCRIPTS.glob("*.sh")}
    one_liners = {}
    for where, text in _scripts(env).items():
        if where.startswith("ConfigMap/"):
            name = where.split(":", 1)[1]
            assert text == files.get(name), f"{where} is not infra/scripts/{name}"
        else:
            one_liners[where] = text
    for where, text in one_liners.items():
        result = subprocess.run(
            [_shellcheck(), "--shell=sh", "--format=gcc", "-"], input=text, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"{where}: {result.stdout}"


# -- the Kafka scripts, run against stand-ins of Kafka's tools ---------------------------------------


def _sandboxed(text: str, root: Path) -> str:
    """The script with its absolute paths moved under ``root`` (``/etc/x`` becomes ``<root>/_etc/x``)."""
    (root / "_tmp").mkdir(exist_ok=True)
    for path in (
        "/etc/kafka-runtime",
        "/opt/kafka/bin",
        "/var/lib/kafka/data",
        "/etc/kafka-rack",
        "/etc/kafka-tls",
        "/scripts/",
        "/tmp/client.properties",
    ):
        text = text.replace(path, f"{root}/_{path[1:]}")
    return text


def _container_env(container: dict[str, Any], **extra: str) -> dict[str, str]:
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    return {**env, "PATH": os.environ["PATH"], **extra}


def _run_format(tmp_path: Path, tls: bool) -> tuple[str, list[str]]:
    config = mocked.stack_file("onprem")
    if tls:
        config["pynomaly:kafka"] = {**config["pynomaly:kafka"], "tlsSecret": "pynomaly-kafka-tls"}
    run = mocked.run("onprem", config=config) if tls else run_env("onprem")
    broker = named(run, "StatefulSet", "pynomaly-kafka")
    (fmt,) = [c for c in broker["spec"]["template"]["spec"]["initContainers"] if c["name"] == "format"]
    for folder in ("_etc/kafka-runtime", "_opt/kafka/bin", "_var/lib/kafka/data/logs", "_etc/kafka-rack"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "_etc/kafka-rack/rack").write_text("zone-b")
    stub = tmp_path / "_opt/kafka/bin/kafka-storage.sh"
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$(dirname "$0")/args"\n')
    stub.chmod(0o755)
    if tls:
        (tmp_path / "_etc/kafka-tls").mkdir(parents=True)
        (tmp_path / "_etc/kafka-tls/tls.key").write_text("KEY\n")
        (tmp_path / "_etc/kafka-tls/tls.crt").write_text("CRT\n")
    script = _sandboxed(_script_file("kafka-format.sh"), tmp_path)
    env = _container_env(
        fmt,
        HOSTNAME="pynomaly-kafka-2",
        POD_NAMESPACE="ns",
        CLUSTER_ID="cluster-1",
        ADMIN_PASSWORD="admin-pw",
        APP_PASSWORD="app-pw",
    )
    result = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    props = (tmp_path / "_etc/kafka-runtime/server.properties").read_text().replace(str(tmp_path), "")
    return props, (tmp_path / "_opt/kafka/bin/args").read_text().replace(str(tmp_path), "").splitlines()


def _script_file(name: str) -> str:
    return (SCRIPTS / name).read_text()


@pytest.mark.parametrize("tls", [False, True])
def test_kafka_format_writes_the_broker_properties_and_scram_users(tmp_path: Path, tls: bool) -> None:
    props, args = _run_format(tmp_path, tls)
    lines = set(props.splitlines())
    protocol = "SASL_SSL" if tls else "SASL_PLAINTEXT"
    fqdn = "pynomaly-kafka-2.pynomaly-kafka-headless.ns.svc.cluster.local"
    assert {
        "node.id=2",
        "process.roles=broker,controller",
        f"listener.security.protocol.map=CONTROLLER:PLAINTEXT,INTERNAL:{protocol}",
        f"advertised.listeners=INTERNAL://{fqdn}:9092,CONTROLLER://{fqdn}:9093",
        "sasl.enabled.mechanisms=SCRAM-SHA-512",
        "super.users=User:admin",
        "broker.rack=zone-b",
        "default.replication.factor=3",
        "min.insync.replicas=2",
        "auto.create.topics.enable=false",
        "listener.name.internal.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram."
        'ScramLoginModule required username="admin" password="admin-pw";',
    } <= lines
    assert ("listener.name.internal.ssl.keystore.type=PEM" in lines) is tls
    assert args[:4] == ["format", "--config", "/_etc/kafka-runtime/server.properties", "--cluster-id=cluster-1"]
    assert args[4].startswith("--initial-controllers=0@pynomaly-kafka-0.")
    assert args[5:] == [
        "--add-scram",
        "SCRAM-SHA-512=[name=admin,password=admin-pw]",
        "--add-scram",
        "SCRAM-SHA-512=[name=pynomaly,password=app-pw]",
    ]


# A stand-in kafka-topics.sh: topics live as files holding their partition count; every call is logged.
FAKE_TOPICS = r"""#!/bin/sh
state="$(dirname "$0")/state"
mkdir -p "$state"
echo "$*" >> "$(dirname "$0")/calls"
topic=""; partitions=""; action=""
while [ $# -gt 0 ]; do
  case "$1" in
    --topic) topic="$2"; shift;;
    --partitions) partitions="$2"; shift;;
    --create|--alter|--describe|--list) action="$1";;
  esac
  shift
done
case "$action" in
  --list) ls "$state";;
  --create) [ -f "$state/$topic" ] || echo "$partitions" > "$state/$topic";;
  --alter) echo "$partitions" > "$state/$topic";;
  --describe)
    echo "Topic: $topic	PartitionCount: $(cat "$state/$topic")"
    i=0; while [ "$i" -lt "$(cat "$state/$topic")" ]; do echo "	Topic: $topic	Partition: $i"; i=$((i + 1)); done;;
esac
"""


def test_topics_job_applies_the_plan_as_ensure_topics_does(tmp_path: Path) -> None:
    run = run_env("onprem")
    scripts = named(run, "ConfigMap", "pynomaly-kafka-scripts")["data"]
    (job,) = kinds(run, "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    bin_dir, script_dir = tmp_path / "_opt/kafka/bin", tmp_path / "_scripts"
    bin_dir.mkdir(parents=True)
    script_dir.mkdir()
    (bin_dir / "kafka-topics.sh").write_text(FAKE_TOPICS)
    (bin_dir / "kafka-topics.sh").chmod(0o755)
    (script_dir / "topics.plan").write_text(scripts["topics.plan"])
    (bin_dir / "state").mkdir()
    first, second = TOPOLOGY.topics[0], TOPOLOGY.topics[1]
    (bin_dir / "state" / first.name).write_text("1\n")  # fewer partitions than declared: grown
    (bin_dir / "state" / second.name).write_text(f"{second.partitions + 4}\n")  # more: left as they are
    env = _container_env(container, BOOTSTRAP="kafka:9092", ADMIN_PASSWORD="admin-pw")
    result = subprocess.run(
        ["sh", "-c", _sandboxed(scripts["kafka-topics.sh"], tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    state = {p.name: int(p.read_text()) for p in (bin_dir / "state").iterdir()}
    planned = {t.name: t.partitions for t in TOPOLOGY.topics} | {t.dead_letter: 1 for t in TOPOLOGY.topics}
    assert state == planned | {second.name: second.partitions + 4}
    out = result.stdout
    assert f"topic {first.name} has 1 partition(s), the topology declares {first.partitions}: adding" in out
    assert f"topic {second.name} has {second.partitions + 4} partitions, more than the {second.partitions} " in out
    calls = (bin_dir / "calls").read_text()
    assert "--replication-factor 3 --config min.insync.replicas=2" in calls
    client = (tmp_path / "_tmp/client.properties").read_text()
    assert "sasl.mechanism=SCRAM-SHA-512" in client and 'password="admin-pw"' in client
