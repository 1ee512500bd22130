"""onprem and cloud on kwok fake nodes: the real engine, API server, controllers and admission, no real pods.

Their Kafka (3 brokers), Redis Sentinel (3 pods) and worker pools do not fit in 2 cores next to the
dev stack, so the real node is cordoned and three fake nodes in three zones take the pods: the
scheduler places them (zone spread, volumes bound per node), PodSecurity `restricted` admits them
or not, kwok marks them Running and Ready and completes Jobs.  Nothing in these pods executes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml

from infra import mocked
from tests.cluster.conftest import restricted_namespace
from tests.cluster.deploying import deploy_env, get_json, missing_objects, state_objects, wait_for, workload_problems
from tools import deploy
from tools.cluster import LocalCluster
from tools.cluster.manifests import STORAGE_CLASS

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def fake_nodes(local_cluster: LocalCluster) -> Iterator[list[str]]:
    local_cluster.set_real_node_schedulable(False)
    try:
        yield local_cluster.add_fake_nodes(zones=("zone-a", "zone-b", "zone-c"), per_zone=1)
    finally:
        local_cluster.remove_fake_nodes()
        local_cluster.set_real_node_schedulable(True)


def operator_secrets(env: str) -> dict[str, str]:
    """The secrets the stack file wants from its operator (cloud: the encryption key), as stand-ins."""
    return {f"pynomaly:{key}": value for key, value in mocked.operator_secrets(env).items()}


@pytest.mark.parametrize("env", ["onprem", "cloud"])
def test_stack_on_fake_nodes_deploys_admits_every_pod_and_destroys_clean(
    env: str,
    local_cluster: LocalCluster,
    fake_nodes: list[str],
    built_images: dict,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    namespace = deploy.stack_file(env)["pynomaly:kubernetes"]["namespace"]
    with local_cluster.announced_load_balancers(namespace):
        deployed = deploy_env(
            local_cluster,
            env,
            built_images,
            tmp_path_factory.mktemp(f"deploy-{env}"),
            extra={"pynomaly:storageClass": STORAGE_CLASS, **operator_secrets(env)},
        )
        try:
            objects = state_objects(deployed.stack)
            print(f"\n[deploy {env}] {len(objects)} objects on fake nodes, up took {deployed.seconds:.0f} s")
            assert missing_objects(local_cluster, objects) == []
            problems = wait_for(lambda: workload_problems(local_cluster, namespace), timeout=180)
            assert problems == [], problems
            pods = get_json(local_cluster, "-n", namespace, "pods")["items"]
            assert pods and {p["spec"].get("nodeName") for p in pods} <= set(fake_nodes)
            # Three Kafka pods per role over the three zones (spread constraint + broker.rack); three Redis pods.
            zones = {n: n.split("-")[2] for n in fake_nodes}  # fake-zone-a-0 -> a
            by_set: dict[str, list[str]] = {}
            for pod in pods:
                owner = (pod["metadata"].get("ownerReferences") or [{}])[0]
                if owner.get("kind") == "StatefulSet":
                    by_set.setdefault(owner["name"], []).append(zones[pod["spec"]["nodeName"]])
            assert any("kafka" in name for name in by_set) and any("redis" in name for name in by_set), by_set
            for name, placed in by_set.items():  # brokers, dedicated controllers (cloud), Redis
                assert len(placed) == 3, by_set
                if "kafka" in name:
                    assert set(placed) == {"a", "b", "c"}, by_set

            assert set(deployed.preview()) == {"same"}
            deployed.reopen(local_cluster, {"pynomaly:autoscaling.workers.detection.max": "7"})
            change = deployed.preview()
            assert change.get("update") == 1 and set(change) == {"same", "update"}, change
            assert deployed.up().get("update") == 1
            scaled = {
                o["metadata"]["name"]: o["spec"]["maxReplicaCount"]
                for o in get_json(local_cluster, "-n", namespace, "scaledobjects.keda.sh")["items"]
            }
            assert 7 in scaled.values(), scaled
        finally:
            counts = deployed.destroy()
    assert counts.get("delete", 0) > 20
    gone = wait_for(
        lambda: local_cluster.kubectl("get", "namespace", namespace, check=False).returncode == 0, timeout=180
    )
    assert not gone, f"namespace {namespace} still there"
    local_cluster.recycle_volumes()


CLUSTER_KINDS = {"ClusterRole", "ClusterRoleBinding", "PriorityClass", "StorageClass"}


def _release_objects(cluster: LocalCluster, namespace: str, release: str) -> dict[str, tuple[str, int]]:
    """kind/name -> (resourceVersion, generation) of every namespaced object the release labels."""
    kinds = (
        "deployments,statefulsets,services,configmaps,serviceaccounts,networkpolicies,poddisruptionbudgets,"
        "horizontalpodautoscalers,scaledobjects.keda.sh,servicemonitors.monitoring.coreos.com,"
        "prometheusrules.monitoring.coreos.com,ingresses,roles,rolebindings"
    )
    items = get_json(cluster, "-n", namespace, kinds, "-l", f"app.kubernetes.io/instance={release}")["items"]
    return {
        f"{i['kind']}/{i['metadata']['name']}": (i["metadata"]["resourceVersion"], i["metadata"].get("generation", 0))
        for i in items
    }


@pytest.mark.helm
@pytest.mark.parametrize("env", ["dev", "onprem", "cloud"])
def test_helm_alone_install_noop_upgrade_and_clean_uninstall_on_fake_nodes(
    env: str, local_cluster: LocalCluster, fake_nodes: list[str]
) -> None:
    from tools.helm import CHART, env_values_file, run_helm

    namespace, release = f"helm-{env}", "pynomaly"
    restricted_namespace(local_cluster, namespace)
    # The README's helm-alone steps: a Secret made by hand, then `helm install` with the environment's values.
    local_cluster.kubectl(
        "-n",
        namespace,
        "create",
        "secret",
        "generic",
        "pynomaly-secrets",
        "--from-literal=redis-password=r3dis-pass",
        "--from-literal=api-keys=an-api-key",
        "--from-literal=webhook-secret=a-webhook-secret",
        "--from-literal=kafka-sasl-password=kafka-pass",
        f"--from-literal=encryption-keys={mocked.RENDER_ENCRYPTION_KEY}",
    )  # cloud's values use it
    kube = ["--kubeconfig", str(local_cluster.kubeconfig), "-n", namespace]
    values = ["-f", str(env_values_file(env))]
    try:
        with local_cluster.announced_load_balancers(namespace):
            installed = run_helm(
                "install", release, str(CHART), *kube, *values, "--wait", "--timeout", "4m", timeout=300
            )
            assert installed.returncode == 0, installed.stderr
            problems = wait_for(lambda: workload_problems(local_cluster, namespace), timeout=120)
            assert problems == [], problems
            declared = [
                {
                    "apiVersion": o["apiVersion"],
                    "kind": o["kind"],
                    "name": o["metadata"]["name"],
                    "namespace": namespace if o["kind"] not in CLUSTER_KINDS else "",
                }
                for o in yaml.safe_load_all(run_helm("get", "manifest", release, *kube).stdout)
                if o
            ]
            assert len(declared) > 10 and missing_objects(local_cluster, declared) == []
            before = _release_objects(local_cluster, namespace, release)

            upgraded = run_helm(
                "upgrade", release, str(CHART), *kube, *values, "--wait", "--timeout", "4m", timeout=300
            )
            assert upgraded.returncode == 0, upgraded.stderr
            assert _release_objects(local_cluster, namespace, release) == before  # nothing was touched

        removed = run_helm("uninstall", release, *kube, "--wait", "--timeout", "3m", timeout=240)
        assert removed.returncode == 0, removed.stderr
        assert _release_objects(local_cluster, namespace, release) == {}
        left = local_cluster.kubectl("-n", namespace, "get", "all", "-o", "name").stdout.split()
        assert [name for name in left if "pynomaly-secrets" not in name] == []
    finally:
        local_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
