"""KEDA on the local cluster scales a Deployment on a real Redis list (the on-prem live tier).

A Redis pod (the project's redis image, password from a Secret through a TriggerAuthentication) and a
Deployment of the pause image in a restricted namespace; a ScaledObject with a ``redis`` trigger,
min 1 max 3, one replica per 2 items.  Pushing 6 items must bring it to 3 replicas; emptying the list
back to 1.  Each figure is printed (``pytest -s``).

``cooldownPeriod`` only governs scaling to zero; between 1 and N the HPA's scale-down stabilization
window (300 s by default) decides, so the ScaledObject shortens that window, as a stack would.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.cluster.conftest import restricted_namespace
from tests.cluster.deploying import get_json
from tools import images
from tools.cluster import LocalCluster
from tools.cluster.keda import external_metric

pytestmark = [pytest.mark.cluster, pytest.mark.chaos, pytest.mark.timeout(1800)]

NS = "keda-scaling-check"
LIST = "jobs"
PER_REPLICA = 2
ITEMS = 6  # -> 3 replicas, the maximum
REAL_NODE = {"pynomaly.io/local-node": "real"}
RESTRICTED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


def _pod_spec(uid: int, container: dict[str, Any], volumes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "nodeSelector": REAL_NODE,
        "terminationGracePeriodSeconds": 1,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "imagePullPolicy": "Never",
                "securityContext": RESTRICTED,
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "128Mi"}},
                **container,
            }
        ],
        "volumes": volumes or [],
    }


def _objects(redis_image: str, pause_image: str) -> list[dict[str, Any]]:
    redis = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "redis", "namespace": NS, "labels": {"app": "redis"}},
        "spec": _pod_spec(
            999,
            {
                "name": "redis",
                "image": redis_image,
                "command": [
                    "sh",
                    "-c",
                    'exec redis-server --port 6379 --save "" --appendonly no --requirepass "$REDIS_PASSWORD"',
                ],
                "env": [
                    {"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "redis", "key": "password"}}}
                ],
                "ports": [{"containerPort": 6379}],
                "readinessProbe": {"tcpSocket": {"port": 6379}, "periodSeconds": 2},
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            },
            [{"name": "data", "emptyDir": {}}],
        ),
    }
    worker = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "worker", "namespace": NS},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "worker"}},
            "template": {
                "metadata": {"labels": {"app": "worker"}},
                "spec": _pod_spec(65535, {"name": "worker", "image": pause_image}),
            },
        },
    }
    auth = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": {"name": "redis", "namespace": NS},
        "spec": {"secretTargetRef": [{"parameter": "password", "name": "redis", "key": "password"}]},
    }
    scaled = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "worker", "namespace": NS},
        "spec": {
            "scaleTargetRef": {"name": "worker"},
            "minReplicaCount": 1,
            "maxReplicaCount": 3,
            "pollingInterval": 5,
            "cooldownPeriod": 10,
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {
                        "scaleDown": {
                            "stabilizationWindowSeconds": 10,
                            "policies": [{"type": "Percent", "value": 100, "periodSeconds": 5}],
                        }
                    }
                }
            },
            "triggers": [
                {
                    "type": "redis",
                    "authenticationRef": {"name": "redis"},
                    "metadata": {
                        "address": f"redis.{NS}.svc.cluster.local:6379",
                        "listName": LIST,
                        "listLength": str(PER_REPLICA),
                    },
                }
            ],
        },
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "redis", "namespace": NS},
            "stringData": {"password": "keda-check-password"},
        },
        redis,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "redis", "namespace": NS},
            "spec": {"selector": {"app": "redis"}, "ports": [{"port": 6379, "targetPort": 6379}]},
        },
        worker,
        auth,
        scaled,
    ]


def _redis(cluster: LocalCluster, *command: str) -> str:
    script = 'redis-cli --no-auth-warning -a "$REDIS_PASSWORD" "$@"'
    return cluster.kubectl("-n", NS, "exec", "redis", "--", "sh", "-c", script, "redis-cli", *command).stdout.strip()


def _replicas(cluster: LocalCluster) -> tuple[int, int]:
    """(wanted, ready) replicas of the worker Deployment."""
    d = get_json(cluster, "-n", NS, "deployment", "worker")
    return d["spec"].get("replicas", 0), d.get("status", {}).get("readyReplicas", 0)


def _until(what: str, check: Any, timeout: float, since: float | None = None) -> float:
    """Seconds from ``since`` (default: now) until ``check()`` is true; fails the test after ``timeout``."""
    started = time.monotonic() if since is None else since
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.5)
    pytest.fail(f"{what} not within {timeout:.0f} s")


def test_a_redis_backlog_scales_a_deployment_up_and_back_down(
    local_cluster: LocalCluster, built_images: dict[str, images.Built], keda: str
) -> None:
    refs = images.image_refs(built_images)
    restricted_namespace(local_cluster, NS)
    try:
        local_cluster.apply(_objects(refs["redis"], refs["pause"]))
        for target in ("pod/redis", "deployment/worker"):
            local_cluster.kubectl(
                "-n",
                NS,
                "wait",
                "--for=condition=Ready" if "pod" in target else "--for=condition=Available",
                target,
                "--timeout=120s",
                timeout=130,
            )

        def scaled_object_ready() -> bool:
            conditions = get_json(local_cluster, "-n", NS, "scaledobject", "worker").get("status", {}).get("conditions")
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions or [])

        _until("ScaledObject Ready", scaled_object_ready, 90)
        so = get_json(local_cluster, "-n", NS, "scaledobject", "worker")
        metric = so["status"]["externalMetricNames"][0]
        hpa = get_json(local_cluster, "-n", NS, "hpa", so["status"]["hpaName"])
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
        assert hpa["spec"]["scaleTargetRef"]["name"] == "worker"
        target = hpa["spec"]["metrics"][0]["external"]
        assert target["metric"]["name"] == metric and target["target"]["averageValue"] == str(PER_REPLICA)

        # The metrics API reads the list through the operator: empty now, and nothing scaled yet.
        assert [item["value"] for item in external_metric(local_cluster, NS, metric, "worker")] == ["0"]
        assert _replicas(local_cluster) == (1, 1)

        assert _redis(local_cluster, "RPUSH", LIST, *map(str, range(ITEMS))) == str(ITEMS)
        pushed = time.monotonic()
        scaled = _until("a second replica wanted", lambda: _replicas(local_cluster)[0] > 1, 120, pushed)
        ready = _until("a second replica ready", lambda: _replicas(local_cluster)[1] > 1, 180, pushed)
        assert [item["value"] for item in external_metric(local_cluster, NS, metric, "worker")] == [str(ITEMS)]
        at_max = _until("3 of 3 replicas ready", lambda: _replicas(local_cluster) == (3, 3), 240, pushed)
        print(
            f"\n[keda] {ITEMS} items pushed: more replicas wanted after {scaled:.1f} s, a 2nd ready after "
            f"{ready:.1f} s, 3/3 ready after {at_max:.1f} s"
        )

        assert _redis(local_cluster, "DEL", LIST) == "1"
        emptied = time.monotonic()
        wanted_down = _until("1 replica wanted", lambda: _replicas(local_cluster)[0] == 1, 240, emptied)
        down = _until("back to 1 replica", lambda: _replicas(local_cluster) == (1, 1), 240, emptied)
        assert [item["value"] for item in external_metric(local_cluster, NS, metric, "worker")] == ["0"]
        print(
            f"[keda] list emptied: 1 replica wanted after {wanted_down:.1f} s, the others gone after {down:.1f} s "
            "(scale-down stabilization window 10 s)"
        )
    finally:
        # While KEDA still runs, so it removes the ScaledObject's finalizer and its HPA.
        local_cluster.kubectl("delete", "namespace", NS, "--timeout=120s", check=False, timeout=130)
