"""Names, ports and Secret keys agree between TOPOLOGY, the chart, the infra program and Settings.

The last test renders the chart with the exact values the program passes (real helm) and validates
every object, so the Pulumi deployment of the application is checked object by object too.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from infra import kafka_cluster as kafka_mod
from infra import mocked
from infra import redis_ha as redis_mod
from infra.application import API_SERVICE_PORT, chart_defaults
from infra.config import ENVIRONMENTS
from infra.kafka_cluster import topic_plan
from infra.program import CHART, ROOT, app_version
from pynomaly.config import Settings
from pynomaly.messaging.kafka_admin import topic_specs
from pynomaly.topology import PRIORITY_SEPARATOR, PRIORITY_STEPS, TOPOLOGY
from tests.infra.conftest import kinds, named, run_env
from tests.support.k8s import baseline_violations, load_yaml_documents, validate_object

DEFAULTS = chart_defaults(str(CHART))


def _values(env: str) -> dict[str, Any]:
    (chart,) = run_env(env).by_type("kubernetes:helm.sh/v4:Chart")
    return mocked.manifest(chart)["values"]


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_chart_defaults_match_the_topology() -> None:
    pools = DEFAULTS["workers"]["pools"]
    assert {name: tuple(p["queues"]) for name, p in pools.items()} == {p.name: p.queues for p in TOPOLOGY.worker_pools}
    assert {name: p["batch"] for name, p in pools.items()} == {p.name: p.batch for p in TOPOLOGY.worker_pools}
    consumers = DEFAULTS["consumers"]["pools"]
    assert {
        name: (c["group"], [(t["name"], t["partitions"]) for t in c["topics"]]) for name, c in consumers.items()
    } == {g.pool: (g.name, [(t, TOPOLOGY.topic(t).partitions) for t in g.topics]) for g in TOPOLOGY.consumer_groups}
    assert DEFAULTS["workers"]["priority"] == {
        "separator": PRIORITY_SEPARATOR,
        "steps": sorted(PRIORITY_STEPS.values()),
    }


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_infra_values_carry_the_topology(env: str) -> None:
    values = _values(env)
    workers = values["workers"]["pools"]
    assert set(workers) == {p.name for p in TOPOLOGY.worker_pools}
    for pool in TOPOLOGY.worker_pools:
        assert (tuple(workers[pool.name]["queues"]), workers[pool.name]["concurrency"]) == (
            pool.queues,
            pool.concurrency,
        )
    consumers = values["consumers"]["pools"]
    for group in TOPOLOGY.consumer_groups:
        assert consumers[group.pool]["group"] == group.name
        assert [t["name"] for t in consumers[group.pool]["topics"]] == list(group.topics)
        assert consumers[group.pool]["maxReplicas"] <= TOPOLOGY.max_partitions(group)
    assert values["workers"]["priority"] == DEFAULTS["workers"]["priority"]
    # The Kafka topic Job applies the app's own plan: the topics ensure_topics makes, with the same settings.
    kafka = run_env(env).deployment.config.kafka
    plan = topic_plan(TOPOLOGY, kafka)
    assert [p.name for p in plan] == [n for t in TOPOLOGY.topics for n in (t.name, t.dead_letter)]
    app = topic_specs(
        Settings(kafka_replication_factor=kafka.replication_factor, kafka_min_insync_replicas=kafka.min_insync_replicas)
    )
    assert {p.name: (p.partitions, p.replication, str(p.min_insync_replicas)) for p in plan} == {
        name: (s["num_partitions"], s["replication_factor"], s["configs"]["min.insync.replicas"])
        for name, s in app.items()
    }
    shipped = named(run_env(env), "ConfigMap", "pynomaly-kafka-scripts")["data"]["topics.plan"].splitlines()
    assert shipped == [
        f"{p.name} {p.partitions} {p.replication} {p.min_insync_replicas} {p.retention_ms}" for p in plan
    ]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_infra_values_pass_the_chart_schema(env: str) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(_merge(DEFAULTS, _values(env)))]
    assert errors == []


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_secret_keys_and_endpoints_agree(env: str) -> None:
    run = run_env(env)
    values = _values(env)
    app_secret = named(run, "Secret", values["secrets"]["existingSecret"])
    # The encryption keys file is in the same Secret when the stack gives a key (cloud).
    encryption = values["encryption"]
    keys_file = {encryption["secretKey"]} if encryption["existingSecret"] else set()
    assert encryption["existingSecret"] in ("", values["secrets"]["existingSecret"])
    assert set(app_secret["stringData"]) == set(DEFAULTS["secrets"]["keys"].values()) | keys_file
    redis_secret = named(run, "Secret", run.outputs["redisSecretName"])["stringData"]
    assert set(redis_secret) == {redis_mod.KEY_PASSWORD, redis_mod.KEY_URL, redis_mod.KEY_ADDRESS}
    assert app_secret["stringData"][DEFAULTS["secrets"]["keys"]["redisPassword"]] == redis_secret["password"]
    kafka_secret = named(run, "Secret", run.outputs["kafkaSecretName"])["stringData"]
    assert app_secret["stringData"][DEFAULTS["secrets"]["keys"]["kafkaSaslPassword"]] == kafka_secret["password"]
    assert values["kafka"]["bootstrapServers"] == kafka_secret[kafka_mod.KEY_BOOTSTRAP]
    assert values["kafka"]["saslUsername"] == kafka_secret[kafka_mod.KEY_USERNAME]
    assert f"{values['redis']['host']}:{values['redis']['port']}" == redis_secret["address"]


def test_ports_agree_with_settings_and_chart() -> None:
    assert DEFAULTS["redis"]["port"] == redis_mod.PORT
    assert DEFAULTS["api"]["port"] == Settings.model_fields["api_port"].default
    assert DEFAULTS["api"]["service"]["port"] == API_SERVICE_PORT
    for env in ENVIRONMENTS:
        servers = _values(env)["kafka"]["bootstrapServers"].split(",")
        assert all(s.endswith(f":{kafka_mod.CLIENT_PORT}") for s in servers)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_settings_the_program_sets_are_app_settings(env: str) -> None:
    fields = set(Settings.model_fields)
    unknown = [k for k in _values(env)["settings"] if _snake(k) not in fields]
    assert unknown == []
    assert _values(env)["settings"]["taskTimeLimit"] >= Settings.model_fields["task_time_limit"].metadata[0].ge


def test_app_version_is_the_package_version() -> None:
    import pynomaly

    # "0.0.0" is the fallback of a package run without its metadata installed: not a version to accept.
    assert pynomaly.__version__ != "0.0.0", "pynomaly is not installed (./dev installs it into .venv)"
    assert app_version() == pynomaly.__version__
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"] == app_version()


@pytest.mark.helm
@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_chart_renders_valid_objects_with_the_program_values(env: str, tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    import helm as helm_tool  # tools/helm.py

    helm_tool.ensure_helm()  # a missing helm fails here, loudly: it is part of the proof
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(_values(env)))
    namespace = run_env(env).deployment.config.kubernetes.namespace
    objects = load_yaml_documents(helm_tool.template_chart([values_file], namespace=namespace))
    findings = [f for obj in objects for f in validate_object(obj) + baseline_violations(obj)]
    assert findings == []
    deployments = {o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"}
    scaled = {f"pynomaly-worker-{p.name}" for p in TOPOLOGY.worker_pools} | {
        f"pynomaly-consumer-{g.pool}" for g in TOPOLOGY.consumer_groups
    }
    assert scaled <= deployments
    # The Helm v4 Chart renders no pool autoscaler (`external`); the program declares them from the same
    # templates through a helm v3 Chart (tests/infra/test_autoscaling_paths.py): KEDA or HPA, each pool once...
    assert not [
        o
        for o in objects
        if o["kind"] in ("ScaledObject", "HorizontalPodAutoscaler") and o["spec"]["scaleTargetRef"]["name"] in scaled
    ]
    kind = "ScaledObject" if run_env(env).deployment.config.autoscaling.keda else "HorizontalPodAutoscaler"
    assert sorted(o["spec"]["scaleTargetRef"]["name"] for o in kinds(run_env(env), kind)) == sorted(scaled)
    # ...and the pools' replica count is left to them, so `pulumi up` never resets what the autoscaler chose.
    assert [
        o["metadata"]["name"]
        for o in objects
        if o["kind"] == "Deployment" and o["metadata"]["name"] in scaled and "replicas" in o["spec"]
    ] == []
    grace = {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        for o in objects
        if o["kind"] == "Deployment" and o["metadata"]["name"].startswith("pynomaly-worker-")
    }
    assert grace and min(grace.values()) >= _values(env)["settings"]["taskTimeLimit"]
    secret_refs = {
        ref["secretKeyRef"]["name"]
        for o in objects
        if o["kind"] == "Deployment"
        for c in o["spec"]["template"]["spec"]["containers"]
        for e in c.get("env", [])
        for ref in [e.get("valueFrom") or {}]
        if "secretKeyRef" in ref
    }
    assert secret_refs == {_values(env)["secrets"]["existingSecret"]}


def test_cluster_kafka_is_the_release_the_tests_run() -> None:
    """The in-cluster image and the local system's jars (what every test runs on) are one release."""
    import re

    from infra.config import KafkaConfig

    pom = (ROOT / "app" / "pynomaly" / "localstack" / "pom.xml").read_text()
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    assert match is not None
    assert KafkaConfig.model_fields["image"].default.rsplit(":", 1)[1] == match.group(1)
