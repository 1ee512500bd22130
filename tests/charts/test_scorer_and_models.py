"""Live scoring and the model store in the chart (issue 12).

The scorer is a consumer pool like bridge and audit: a Deployment per environment, KEDA on its group's
lag capped at the partitions of its input topic (cloud; onprem with KEDA on), a CPU HPA otherwise (dev,
helm-alone onprem), a PDB, the shared NetworkPolicies and metrics scraping.  ``models.store`` puts model
artifacts in Redis (default) or on a ReadWriteMany claim, mounted read-write where models are saved or
deleted and read-only where they are only loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pynomaly.config import Settings, parse_model_store
from pynomaly.topology import GROUP_SCORER, Q_DETECTION, Q_PROCESSING, T_MEASUREMENTS, TOPOLOGY
from tests.charts.chartlib import (
    ENVIRONMENTS,
    MINIMAL_VALUES,
    by_kind,
    component,
    container,
    deep_merge,
    pod_spec,
    pool,
)
from tools.helm import HelmError

pytestmark = pytest.mark.helm

(SCORER,) = [g for g in TOPOLOGY.consumer_groups if g.name == GROUP_SCORER]
PARTITIONS = TOPOLOGY.topic(T_MEASUREMENTS).partitions
DEPLOYMENT = f"pynomaly-consumer-{SCORER.pool}"
MODELS_PATH = "/var/lib/pynomaly/models"
PV = {"models": {"store": "persistentVolume"}}


def config_data(objects: list[dict[str, Any]]) -> dict[str, str]:
    (config,) = [c for c in by_kind(objects, "ConfigMap").values() if "PYNOMALY_ENVIRONMENT" in c.get("data", {})]
    return config["data"]


def models_mount(deployment: dict[str, Any]) -> dict[str, Any] | None:
    mounts = [m for m in container(deployment).get("volumeMounts", []) if m["name"] == "models"]
    return mounts[0] if mounts else None


def models_volume(deployment: dict[str, Any]) -> dict[str, Any] | None:
    volumes = [v for v in pod_spec(deployment).get("volumes", []) if v["name"] == "models"]
    return volumes[0] if volumes else None


def refused(render: Any, values: dict[str, Any]) -> str:
    with pytest.raises(HelmError) as info:
        render(values=values)
    return str(info.value)


# -- the scorer pool -----------------------------------------------------------------------------------


def test_the_topology_declares_what_the_chart_scales_on() -> None:
    assert SCORER.topics == (T_MEASUREMENTS,) and PARTITIONS == 6


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_environment_runs_the_scorer_with_its_own_resources(
    rendered_envs: dict[str, Any], effective_values: Any, env: str
) -> None:
    objects = rendered_envs[env]
    deployment = by_kind(objects, "Deployment")[DEPLOYMENT]
    assert (component(deployment), pool(deployment)) == ("consumer", SCORER.pool)
    assert container(deployment)["command"] == ["pynomaly", "consumer", "--group", SCORER.pool]
    # It loads PyOD models: sized on its own, not like the forwarding consumers.
    values = effective_values(env)
    assert container(deployment)["resources"] == values["consumers"]["pools"][SCORER.pool]["resources"]
    assert container(deployment)["resources"] != values["consumers"]["resources"]
    # Covered like the other consumers: a PDB, the release's egress policy, metrics scraping.
    (pdb,) = [p for p in by_kind(objects, "PodDisruptionBudget").values() if pool(p) == SCORER.pool]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    egress = by_kind(objects, "NetworkPolicy")["pynomaly-egress"]
    assert egress["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    metrics = by_kind(objects, "Service")["pynomaly-metrics"]
    assert metrics["spec"]["selector"].items() <= labels.items()
    assert [p["name"] for p in container(deployment)["ports"]] == ["metrics"]


def test_cloud_scales_the_scorer_with_keda_on_its_lag_up_to_the_partitions(rendered_envs: dict[str, Any]) -> None:
    objects = rendered_envs["cloud"]
    scaled = by_kind(objects, "ScaledObject")[DEPLOYMENT]
    assert scaled["spec"]["scaleTargetRef"]["name"] == DEPLOYMENT
    assert scaled["spec"]["maxReplicaCount"] == PARTITIONS
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == GROUP_SCORER
    assert trigger["metadata"]["allowIdleConsumers"] == "false"  # KEDA's own cap at the partition count
    assert DEPLOYMENT not in by_kind(objects, "HorizontalPodAutoscaler")
    assert "replicas" not in by_kind(objects, "Deployment")[DEPLOYMENT]["spec"]


def test_onprem_with_keda_scales_the_scorer_up_to_the_partitions(render: Any) -> None:
    # helm-alone onprem ships with HPAs (KEDA optional); the Pulumi onprem stack turns KEDA on.
    objects = render("onprem", {"autoscaling": {"keda": {"enabled": True}, "hpa": {"enabled": False}}})
    scaled = by_kind(objects, "ScaledObject")[DEPLOYMENT]
    assert scaled["spec"]["maxReplicaCount"] == PARTITIONS
    assert scaled["spec"]["triggers"][0]["metadata"]["consumerGroup"] == GROUP_SCORER
    assert not by_kind(objects, "HorizontalPodAutoscaler")


@pytest.mark.parametrize("env", ["dev", "onprem"])
def test_hpa_environments_scale_the_scorer_on_cpu(rendered_envs: dict[str, Any], env: str) -> None:
    objects = rendered_envs[env]
    hpa = by_kind(objects, "HorizontalPodAutoscaler")[DEPLOYMENT]
    assert hpa["spec"]["scaleTargetRef"]["name"] == DEPLOYMENT
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] <= PARTITIONS
    assert DEPLOYMENT not in by_kind(objects, "ScaledObject")


def test_a_scorer_above_the_partitions_is_refused(render: Any) -> None:
    values = deep_merge(MINIMAL_VALUES, {"consumers": {"pools": {SCORER.pool: {"maxReplicas": PARTITIONS + 1}}}})
    message = refused(render, values)
    assert f"consumers.pools.{SCORER.pool}: maxReplicas ({PARTITIONS + 1}) exceeds" in message


# -- the model store -----------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_models_stay_in_redis_by_default(rendered_envs: dict[str, Any], env: str) -> None:
    objects = rendered_envs[env]
    assert config_data(objects)["PYNOMALY_MODEL_STORE"] == "redis" == Settings().model_store
    assert not by_kind(objects, "PersistentVolumeClaim")
    assert all(models_volume(d) is None for d in by_kind(objects, "Deployment").values())


def test_consistency_of_the_models_values_with_the_topology(chart_values: dict[str, Any]) -> None:
    models = chart_values["models"]
    queues = {q.name for q in TOPOLOGY.queues}
    assert models["writerQueues"] == [Q_DETECTION] and models["readerQueues"] == [Q_PROCESSING]
    assert set(models["writerQueues"] + models["readerQueues"]) <= queues
    assert models["consumerPools"] == [SCORER.pool]
    assert models["persistentVolume"]["accessModes"] == ["ReadWriteMany"]


def test_a_persistent_volume_is_claimed_and_mounted_where_models_are_used(render: Any) -> None:
    values = deep_merge(
        MINIMAL_VALUES,
        {**PV, "models": {**PV["models"], "persistentVolume": {"size": "25Gi", "storageClassName": "nfs-rwx"}}},
    )
    objects = render(values=values)
    setting = config_data(objects)["PYNOMALY_MODEL_STORE"]
    assert setting == f"dir:{MODELS_PATH}"
    assert parse_model_store(setting) == ("dir", Path(MODELS_PATH))  # the app accepts it
    (claim,) = by_kind(objects, "PersistentVolumeClaim").values()
    assert claim["metadata"]["name"] == "pynomaly-models"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claim["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "storageClassName": "nfs-rwx",
        "resources": {"requests": {"storage": "25Gi"}},
    }
    # Who writes (saves, prunes, deletes), who only reads, who never touches models.
    expected = {
        "pynomaly-api": False,
        "pynomaly-worker-detection": False,
        "pynomaly-worker-processing": True,
        DEPLOYMENT: True,
    }
    for name, deployment in by_kind(objects, "Deployment").items():
        mount, volume = models_mount(deployment), models_volume(deployment)
        if name not in expected:
            assert mount is None and volume is None, name
            continue
        assert mount == {"name": "models", "mountPath": MODELS_PATH, "readOnly": expected[name]}, name
        assert volume == {"name": "models", "persistentVolumeClaim": {"claimName": "pynomaly-models"}}, name
        # The non-root user writes through the pod's group: fsGroup is the image user's group.
        security = pod_spec(deployment)["securityContext"]
        assert security["fsGroup"] == security["runAsGroup"] == values.get("podIdentity", {}).get("gid", 10001)
        assert container(deployment)["securityContext"]["readOnlyRootFilesystem"] is True


def test_an_existing_claim_is_mounted_and_none_is_created(render: Any) -> None:
    # The claim is the operator's (its access modes unknown to the chart): no guard, no claim rendered.
    claim = {"existingClaim": "shared-models", "accessModes": ["ReadWriteOnce"]}
    values = deep_merge(MINIMAL_VALUES, {"models": {"store": "persistentVolume", "persistentVolume": claim}})
    objects = render(values=values)
    assert not by_kind(objects, "PersistentVolumeClaim")
    scorer = by_kind(objects, "Deployment")[DEPLOYMENT]
    assert models_volume(scorer) == {"name": "models", "persistentVolumeClaim": {"claimName": "shared-models"}}


def test_the_scorer_gets_the_encryption_keys_to_open_sealed_artifacts(render: Any) -> None:
    objects = render(values=deep_merge(MINIMAL_VALUES, {"encryption": {"enabled": True, "existingSecret": "keys"}}))
    deployments = by_kind(objects, "Deployment")
    env = {e["name"] for e in container(deployments[DEPLOYMENT])["env"]}
    assert "PYNOMALY_ENCRYPTION_KEYS_FILE" in env
    others = [d for d in deployments.values() if component(d) == "consumer" and pool(d) != SCORER.pool]
    assert others and all(
        "PYNOMALY_ENCRYPTION_KEYS_FILE" not in {e["name"] for e in container(d)["env"]} for d in others
    )


@pytest.mark.parametrize("modes", [["ReadWriteOnce"], ["ReadWriteOncePod"], ["ReadOnlyMany"]])
def test_a_claim_that_is_not_read_write_many_is_refused(render: Any, modes: list[str]) -> None:
    values = deep_merge(
        MINIMAL_VALUES, {"models": {"store": "persistentVolume", "persistentVolume": {"accessModes": modes}}}
    )
    message = refused(render, values)
    assert "its claim must be ReadWriteMany" in message and "or keep models.store=redis" in message


def test_read_write_once_is_fine_while_models_stay_in_redis(render: Any) -> None:
    values = deep_merge(MINIMAL_VALUES, {"models": {"persistentVolume": {"accessModes": ["ReadWriteOnce"]}}})
    assert not by_kind(render(values=values), "PersistentVolumeClaim")


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ({"store": "s3"}, "/models/store': value must be one of 'redis', 'persistentVolume'"),
        ({"consumerPools": ["nobody"]}, 'models.consumerPools: "nobody" is not a consumer pool'),
        ({"persistentVolume": {"size": "lots"}}, "/models/persistentVolume/size': 'lots' does not match"),
    ],
)
def test_bad_model_values_are_refused(render: Any, models: dict[str, Any], message: str) -> None:
    assert message in refused(render, deep_merge(MINIMAL_VALUES, {"models": models}))
