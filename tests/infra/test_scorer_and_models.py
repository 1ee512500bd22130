"""The Pulumi program's side of live scoring and the model store (issue 12), under mocks.

The scorer pool comes from the topology like every consumer pool (its scaling from
``pynomaly:autoscaling.consumers.scorer``, its size from ``pynomaly:app.resources.scorer``); the topics Job
creates ``measurements`` with its partitions and its dead-letter topic; ``pynomaly:modelStore`` becomes the
chart's ``models`` values (default: artifacts in Redis).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from infra import mocked
from infra.config import ConfigError, parse_config
from pynomaly.topology import GROUP_SCORER, T_MEASUREMENTS, TOPOLOGY
from tests.infra.conftest import chart_objects, chart_values, named, run_env
from tests.support.k8s import load_yaml_documents
from tools.helm import template_chart

(SCORER,) = [g for g in TOPOLOGY.consumer_groups if g.name == GROUP_SCORER]
PARTITIONS = TOPOLOGY.topic(T_MEASUREMENTS).partitions
DEPLOYMENT = f"pynomaly-consumer-{SCORER.pool}"


def _with(env: str, **keys: Any) -> dict[str, Any]:
    return {**mocked.stack_file(env), **{f"pynomaly:{k}": v for k, v in keys.items()}}


def _raw(env: str, **keys: Any) -> dict[str, Any]:
    return {k.split(":", 1)[1]: v for k, v in _with(env, **keys).items()}


@pytest.mark.parametrize("env", ["onprem", "cloud"])
def test_keda_stacks_scale_the_scorer_up_to_the_partitions(env: str) -> None:
    pool = chart_values(run_env(env))["consumers"]["pools"][SCORER.pool]
    assert pool["group"] == GROUP_SCORER
    assert pool["topics"] == [{"name": T_MEASUREMENTS, "partitions": PARTITIONS}]
    assert (pool["minReplicas"], pool["maxReplicas"], pool["lagThreshold"]) == (1, PARTITIONS, 500)
    scaled = {o["metadata"]["name"]: o for o in chart_objects(env) if o["kind"] == "ScaledObject"}[DEPLOYMENT]
    assert scaled["spec"]["maxReplicaCount"] == PARTITIONS
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["metadata"]["consumerGroup"] == GROUP_SCORER and trigger["metadata"]["lagThreshold"] == "500"


def test_dev_scales_the_scorer_with_an_hpa() -> None:
    objects = chart_objects("dev")
    (hpa,) = [o for o in objects if o["kind"] == "HorizontalPodAutoscaler" and o["metadata"]["name"] == DEPLOYMENT]
    assert hpa["spec"]["maxReplicas"] <= PARTITIONS
    assert not [o for o in objects if o["kind"] == "ScaledObject"]


@pytest.mark.parametrize("env", ["dev", "onprem", "cloud"])
def test_the_scorer_is_sized_apart_from_the_forwarding_consumers(env: str) -> None:
    run = run_env(env)
    pools = chart_values(run)["consumers"]["pools"]
    assert pools[SCORER.pool]["resources"] == run.deployment.config.app.scorer_resources.to_k8s()
    assert all(p["resources"] == {} for name, p in pools.items() if name != SCORER.pool)
    deployment = {o["metadata"]["name"]: o for o in chart_objects(env) if o["kind"] == "Deployment"}[DEPLOYMENT]
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["memory"] == "1Gi"


def test_scorer_resources_are_configurable() -> None:
    cfg = parse_config(_raw("dev", app={"resources": {"scorer": {"memoryLimit": "2Gi"}}}), "dev", default_tag="0.1.0")
    assert cfg.app.scorer_resources.to_k8s() == {
        "requests": {"cpu": "250m", "memory": "384Mi"},
        "limits": {"memory": "2Gi"},
    }


@pytest.mark.parametrize("env", ["dev", "onprem", "cloud"])
def test_the_topics_job_creates_measurements_and_its_dead_letters(env: str) -> None:
    plan = named(run_env(env), "ConfigMap", "pynomaly-kafka-scripts")["data"]["topics.plan"].splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in plan}
    assert rows[T_MEASUREMENTS][0] == str(PARTITIONS)
    assert rows[T_MEASUREMENTS][3] == str(TOPOLOGY.topic(T_MEASUREMENTS).retention_ms)
    assert rows[f"{T_MEASUREMENTS}.dlq"][0] == "1"


@pytest.mark.parametrize("env", ["dev", "onprem", "cloud"])
def test_models_stay_in_redis_by_default(env: str) -> None:
    run = run_env(env)
    assert run.deployment.config.model_store.mode == "redis"
    assert chart_values(run)["models"] == {"store": "redis"}
    assert not [o for o in chart_objects(env) if o["kind"] == "PersistentVolumeClaim"]


def test_a_persistent_volume_store_reaches_the_chart(tmp_path: Path) -> None:
    store = {"mode": "persistentVolume", "storageClass": "cephfs", "size": "40Gi"}
    run = mocked.run("onprem", config=_with("onprem", modelStore=store))
    values = chart_values(run)
    assert values["models"] == {
        "store": "persistentVolume",
        "persistentVolume": {
            "existingClaim": "",
            "size": "40Gi",
            "storageClassName": "cephfs",
            "accessModes": ["ReadWriteMany"],
        },
    }
    (tmp_path / "values.json").write_text(json.dumps(values))
    objects = load_yaml_documents(template_chart([tmp_path / "values.json"], namespace="pynomaly"))
    (claim,) = [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["storageClassName"] == "cephfs"
    assert claim["spec"]["resources"]["requests"]["storage"] == "40Gi"
    (config,) = [o for o in objects if o["kind"] == "ConfigMap" and "PYNOMALY_MODEL_STORE" in o.get("data", {})]
    assert config["data"]["PYNOMALY_MODEL_STORE"] == "dir:/var/lib/pynomaly/models"
    mounted = {
        o["metadata"]["name"]
        for o in objects
        if o["kind"] == "Deployment"
        and any(v["name"] == "models" for v in o["spec"]["template"]["spec"].get("volumes", []))
    }
    assert mounted == {"pynomaly-api", "pynomaly-worker-detection", "pynomaly-worker-processing", DEPLOYMENT}


def test_an_existing_claim_is_passed_through() -> None:
    store = {"mode": "persistentVolume", "existingClaim": "team-models"}
    values = chart_values(mocked.run("dev", config=_with("dev", modelStore=store)))
    assert values["models"]["persistentVolume"]["existingClaim"] == "team-models"


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ({"mode": "s3"}, "pynomaly.modelStore.mode: must be one of redis, persistentVolume, got 's3'"),
        ({"mode": "persistentVolume", "size": "big"}, "pynomaly.modelStore.size: must be a quantity like 10Gi"),
        ({"mode": "persistentVolume", "existingClaim": "Bad_Name"}, "pynomaly.modelStore.existingClaim: must be a"),
        ({"storageClass": "nfs"}, "pynomaly.modelStore.mode: persistentVolume is needed for storageClass"),
        ({"bucket": "s3://models"}, "pynomaly.modelStore.bucket: unknown key"),
    ],
)
def test_bad_model_store_config_is_refused_with_the_key_named(store: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(_raw("onprem", modelStore=store), "onprem", default_tag="0.1.0")
    assert message in str(exc.value)
