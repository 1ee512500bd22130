"""The onprem stack on real pods, with faults injected (the on-prem live tier: `./dev test --cluster-chaos`).

One deployment of the onprem stack, its topology as declared (3 KRaft brokers with RF 3 / min ISR 2,
3 Redis + Sentinel pods behind HAProxy, every worker and consumer pool), its resources trimmed
through stack config (tests/cluster/onprem_live.py).  The tests run in order on it: the quorum and
the master form, a job completes, then a broker, the Redis master and a worker are deleted under
load and every event and job is counted.  Figures go to benchmarks/results/cluster-chaos.json.
"""

from __future__ import annotations

import base64
import json
import random
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pynomaly.client import PynomalyClient
from pynomaly.demo import demo_dataset
from tests.cluster.deploying import (
    POD_SCRIPTS,
    DeployedStack,
    a_pod,
    api_forward,
    deploy_env,
    get_json,
    pod_python,
    wait_for,
    workload_problems,
)
from tests.cluster.onprem_live import LIVE_OVERRIDES
from tools import deploy
from tools.cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.chaos, pytest.mark.timeout(1800)]

TERMINAL = ("completed", "failed", "cancelled")


@pytest.fixture(scope="module")
def onprem(local_cluster: LocalCluster, built_images: dict, tmp_path_factory: pytest.TempPathFactory,
           chaos_figures: dict[str, Any]) -> Iterator[DeployedStack]:
    namespace = deploy.stack_file("onprem")["pynomaly:kubernetes"]["namespace"]
    # No ingress controller here: stand in for it, so the deploy's wait for the Ingress ends.
    with local_cluster.announced_load_balancers(namespace):
        deployed = deploy_env(local_cluster, "onprem", built_images, tmp_path_factory.mktemp("deploy-onprem"),
                              extra=LIVE_OVERRIDES)
    chaos_figures["onprem_up_seconds"] = round(deployed.seconds)
    try:
        yield deployed
    finally:
        deployed.destroy()
        wait_for(lambda: local_cluster.kubectl("get", "namespace", namespace, check=False).returncode == 0,
                 timeout=180)
        local_cluster.recycle_volumes()


@pytest.fixture(scope="module")
def api(local_cluster: LocalCluster, onprem: DeployedStack) -> Iterator[PynomalyClient]:
    forward, api_key = api_forward(local_cluster, onprem)
    try:
        with PynomalyClient(forward.url, api_key, timeout=60) as client:
            yield client
    finally:
        forward.close()


# -- helpers ------------------------------------------------------------------------------------------

def _pods(cluster: LocalCluster, namespace: str, component: str) -> list[dict[str, Any]]:
    return get_json(cluster, "-n", namespace, "pods", "-l", f"app.kubernetes.io/component={component}")["items"]


def _redis_cli(cluster: LocalCluster, namespace: str, pod: str, container: str, *args: str) -> str:
    port = "26379" if container == "sentinel" else "6379"
    result = cluster.kubectl("-n", namespace, "exec", pod, "-c", container, "--", "redis-cli", "-p", port, *args,
                             check=False, timeout=30)
    return result.stdout.strip() if result.returncode == 0 else ""


def _sentinel_masters(cluster: LocalCluster, namespace: str) -> dict[str, str]:
    """Each Redis pod's sentinel: the master it names (pod name), '' when it does not answer."""
    named = {}
    for pod in _pods(cluster, namespace, "redis-server"):
        name = pod["metadata"]["name"]
        answer = _redis_cli(cluster, namespace, name, "sentinel", "sentinel", "get-master-addr-by-name", "pynomaly")
        named[name] = answer.split(".")[0] if answer else ""
    return named


def _roles(cluster: LocalCluster, namespace: str) -> dict[str, str]:
    roles = {}
    for pod in _pods(cluster, namespace, "redis-server"):
        info = _redis_cli(cluster, namespace, pod["metadata"]["name"], "redis", "info", "replication")
        roles[pod["metadata"]["name"]] = next((line.split(":")[1].strip() for line in info.splitlines()
                                               if line.startswith("role:")), "")
    return roles


def _app_restarts(cluster: LocalCluster, namespace: str) -> dict[str, int]:
    """Container restarts of every application pod (API, workers, consumers, beat)."""
    restarts = {}
    for pod in get_json(cluster, "-n", namespace, "pods", "-l", "app.kubernetes.io/name=pynomaly")["items"]:
        if pod["status"].get("phase") == "Running":
            restarts[pod["metadata"]["name"]] = sum(c.get("restartCount", 0)
                                                    for c in pod["status"].get("containerStatuses", []))
    return restarts


def _submit_small_jobs(client: PynomalyClient, count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    rows = [[rng.gauss(0, 1) for _ in range(4)] for _ in range(60)]
    return [client.submit_rows(rows, "hbos")["id"] for _ in range(count)]


def _wait_terminal(client: PynomalyClient, job_ids: list[str], timeout: float) -> tuple[dict[str, str], float]:
    """Poll every job until all are terminal (or the timeout); (id -> status, seconds waited).
    A failed poll (the API answering 5xx during a fault) is retried, not counted."""
    started = time.monotonic()
    status: dict[str, str] = {}
    while time.monotonic() - started < timeout:
        for job_id in job_ids:
            if status.get(job_id) not in TERMINAL:
                try:
                    status[job_id] = client.job(job_id)["status"]
                except Exception:  # an outage answer is what the loop waits out
                    time.sleep(1)
        if all(status.get(j) in TERMINAL for j in job_ids):
            break
        time.sleep(2)
    return status, time.monotonic() - started


# -- the stack forms ------------------------------------------------------------------------------

def test_three_brokers_form_a_quorum_and_three_redis_pods_elect_one_master(
        local_cluster: LocalCluster, onprem: DeployedStack, chaos_figures: dict[str, Any]) -> None:
    ns = onprem.namespace
    problems = wait_for(lambda: workload_problems(local_cluster, ns), timeout=420)
    assert problems == [], problems
    pods = get_json(local_cluster, "-n", ns, "pods")["items"]
    assert all(p["spec"].get("nodeName") == "127.0.0.1" for p in pods)  # real pods, not fake nodes

    worker = a_pod(local_cluster, ns, "worker")
    kafka = pod_python(local_cluster, ns, worker, "kafka_topology.py")
    assert kafka["brokers"] == [0, 1, 2], kafka
    secret = get_json(local_cluster, "-n", ns, "secret", str(onprem.outputs()["kafkaClusterSecretName"]))
    assert base64.b64decode(secret["data"]["cluster-id"]).decode() == kafka["cluster_id"]
    app_topics = {name: t for name, t in kafka["topics"].items() if not name.startswith("chaos")}
    assert len(app_topics) >= 6, sorted(app_topics)
    for name, topic in app_topics.items():
        assert topic["min_insync"] == 2, (name, topic)
        assert all(p["replicas"] == 3 and p["isr"] == 3 for p in topic["partitions"]), (name, topic)

    roles = _roles(local_cluster, ns)
    assert sorted(roles.values()) == ["master", "slave", "slave"], roles
    (master,) = [pod for pod, role in roles.items() if role == "master"]
    assert set(_sentinel_masters(local_cluster, ns).values()) == {master}
    # HAProxy (the app's redis URL) reaches exactly that server.
    through_proxy = pod_python(local_cluster, ns, worker, "redis_role.py")
    direct = _redis_cli(local_cluster, ns, master, "redis", "info", "server")
    assert through_proxy["role"] == "master" and through_proxy["replicas"] == 2, through_proxy
    assert f"run_id:{through_proxy['run_id']}" in direct
    chaos_figures["onprem_pods"] = len(pods)


def test_a_detection_job_completes_end_to_end(local_cluster: LocalCluster, onprem: DeployedStack,
                                              api: PynomalyClient) -> None:
    dataset, planted = demo_dataset()
    job_id = api.submit_csv(dataset, "iforest", contamination=0.03, steps=["preprocess", "detect", "report"])["id"]
    job = api.wait(job_id, timeout=300, interval=1)
    assert job["status"] == "completed", job
    found = {i for i, label in enumerate(api.result(job_id)["labels"]) if label}
    assert planted <= found, f"found {sorted(found & planted)} of {sorted(planted)}"


# -- faults -------------------------------------------------------------------------------------

def test_deleting_a_kafka_broker_mid_stream_loses_no_event_and_keeps_key_order(
        local_cluster: LocalCluster, onprem: DeployedStack, chaos_figures: dict[str, Any]) -> None:
    ns = onprem.namespace
    worker = a_pod(local_cluster, ns, "worker")
    controller = pod_python(local_cluster, ns, worker, "kafka_topology.py")["controller"]
    # Combined broker+controller nodes: broker id = pod ordinal.  The active controller is the hardest hit.
    (victim,) = [p["metadata"]["name"] for p in _pods(local_cluster, ns, "kafka-broker")
                 if p["metadata"]["name"].endswith(f"-{controller}")]
    assert get_json(local_cluster, "-n", ns, "pod", victim)["status"]["phase"] == "Running", victim

    count, seconds = 10_000, 30
    stream = subprocess.Popen(
        [str(local_cluster.bins["kubectl"]), "--kubeconfig", str(local_cluster.kubeconfig), "-n", ns, "exec", "-i",
         worker, "--", "python3", "-", "chaos_orders", str(count), str(seconds)],
        stdin=(POD_SCRIPTS / "kafka_chaos.py").open(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(8)  # mid-stream: about a quarter produced
    local_cluster.kubectl("-n", ns, "delete", "pod", victim, "--wait=false")
    deleted = time.monotonic()
    out, err = stream.communicate(timeout=600)
    assert stream.returncode == 0, err[-2000:]
    counts = json.loads(out.strip().splitlines()[-1])
    print(f"\n[kafka fault] broker {controller} (the active controller) deleted mid-stream: {counts}")
    assert counts["acked"] == count and counts["error_count"] == 0, counts
    assert counts["received_unique"] == count, counts  # the consumer saw every event
    assert counts["order_violations"] == 0, counts

    def rejoined() -> bool:
        topics = pod_python(local_cluster, ns, worker, "kafka_topology.py")
        return not (topics["brokers"] == [0, 1, 2] and all(
            p["isr"] == 3 for p in topics["topics"]["chaos_orders"]["partitions"]))

    assert not wait_for(rejoined, timeout=300, interval=3), "the deleted broker did not rejoin every ISR"
    chaos_figures["kafka_broker_delete"] = {
        "events": count, "acked": counts["acked"], "received_unique": counts["received_unique"],
        "duplicates": counts["duplicates"], "order_violations": counts["order_violations"],
        "longest_ack_gap_s": counts["max_ack_gap_s"], "longest_consume_gap_s": counts["max_consume_gap_s"],
        "rejoined_all_isr_after_s": round(time.monotonic() - deleted),
    }


def test_deleting_the_redis_master_fails_over_and_loses_no_job(
        local_cluster: LocalCluster, onprem: DeployedStack, api: PynomalyClient,
        chaos_figures: dict[str, Any]) -> None:
    ns = onprem.namespace
    roles = _roles(local_cluster, ns)
    (master,) = [pod for pod, role in roles.items() if role == "master"]
    restarts_before = _app_restarts(local_cluster, ns)

    job_ids = _submit_small_jobs(api, 200, seed=7)
    queued = sum(1 for j in job_ids if api.job(j)["status"] not in TERMINAL)
    local_cluster.kubectl("-n", ns, "delete", "pod", master, "--wait=false")
    deleted = time.monotonic()

    def promoted() -> bool:
        named = {m for pod, m in _sentinel_masters(local_cluster, ns).items() if pod != master and m}
        return not (len(named) == 1 and master not in named)

    assert not wait_for(promoted, timeout=120, interval=0.5), "no replica was promoted"
    failover_s = time.monotonic() - deleted
    status, waited = _wait_terminal(api, job_ids, timeout=600)
    counted = {s: list(status.values()).count(s) for s in set(status.values())}
    print(f"\n[redis fault] master {master} deleted with {queued} of 200 jobs not finished: "
          f"promoted in {failover_s:.1f} s, all terminal after {waited:.0f} s: {counted}")
    assert counted == {"completed": 200}, counted

    # The deleted pod came back as a replica of the new master; HAProxy routes to the new master.
    assert not wait_for(lambda: sorted(_roles(local_cluster, ns).values()) != ["master", "slave", "slave"],
                        timeout=180, interval=2), _roles(local_cluster, ns)
    assert _roles(local_cluster, ns)[master] == "slave"
    assert pod_python(local_cluster, ns, a_pod(local_cluster, ns, "worker"), "redis_role.py")["role"] == "master"
    # Every component reconnected by itself: no application container restarted.
    restarts_after = _app_restarts(local_cluster, ns)
    restarted = {pod: n for pod, n in restarts_after.items() if n > restarts_before.get(pod, 0)}
    assert restarted == {}, restarted
    chaos_figures["redis_master_delete"] = {
        "jobs": 200, "unfinished_at_delete": queued, "completed": counted.get("completed", 0),
        "promoted_after_s": round(failover_s, 1), "all_done_after_s": round(waited),
        "app_restarts": len(restarted),
    }
