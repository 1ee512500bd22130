"""The dev stack with real pods: `pulumi up` through the real engine, then the README's deploy story run.

The tests in this module run in order on one deployment: up, the demo job through the API Service,
the pods' users and read-only root filesystems, a no-op second up, a one-key config change, destroy.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest
import websockets

from pynomaly.client import PynomalyClient
from pynomaly.demo import demo_dataset
from tests.cluster.deploying import (
    DeployedStack,
    a_pod,
    api_forward,
    deploy_env,
    get_json,
    missing_objects,
    state_objects,
    wait_for,
    workload_problems,
)
from tools.cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def dev(
    local_cluster: LocalCluster,
    built_images: dict,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[DeployedStack]:
    deployed = deploy_env(local_cluster, "dev", built_images, tmp_path_factory.mktemp("deploy-dev"))
    try:
        yield deployed
    finally:
        if get_json_or_none(local_cluster, "namespace", deployed.namespace) is not None:
            deployed.destroy()
        local_cluster.recycle_volumes()


def get_json_or_none(cluster: LocalCluster, *args: str) -> dict | None:
    result = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def test_up_creates_every_object_and_every_pod_becomes_ready(local_cluster: LocalCluster, dev: DeployedStack) -> None:
    objects = state_objects(dev.stack)
    print(f"\n[deploy dev] {len(objects)} objects, up took {dev.seconds:.0f} s")
    assert dev.counts.get("create", 0) >= len(objects) > 20
    assert missing_objects(local_cluster, objects) == []
    # Every workload ready by its real readiness probe (or complete, for Jobs); nothing refused by
    # the namespace's `restricted` PodSecurity admission.
    problems = wait_for(lambda: workload_problems(local_cluster, dev.namespace), timeout=300)
    assert problems == []
    ns = get_json(local_cluster, "namespace", dev.namespace)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = get_json(local_cluster, "-n", dev.namespace, "pods")["items"]
    running = [p for p in pods if p["status"]["phase"] == "Running"]
    assert running and all(p["spec"]["nodeName"] == "127.0.0.1" for p in running)
    for pod in running:
        assert all(c["ready"] for c in pod["status"]["containerStatuses"]), pod["metadata"]["name"]


def test_demo_job_runs_through_the_api_service(local_cluster: LocalCluster, dev: DeployedStack) -> None:
    forward, api_key = api_forward(local_cluster, dev)
    try:
        dataset, planted = demo_dataset()
        with PynomalyClient(forward.url, api_key, timeout=60) as client:
            accepted = client.submit_csv(
                dataset, "iforest", contamination=0.03, steps=["preprocess", "detect", "report"]
            )
            job_id = accepted["id"]
            deadline = time.monotonic() + 300
            job = client.job(job_id)
            while job["status"] not in ("completed", "failed", "cancelled") and time.monotonic() < deadline:
                time.sleep(1)
                job = client.job(job_id)
            assert job["status"] == "completed", job
            result = client.result(job_id)
        found = {i for i, label in enumerate(result["labels"]) if label}
        assert len(found & planted) == len(planted), f"found {sorted(found & planted)} of {sorted(planted)}"

        # The job_completed event is on job_events in the in-cluster Kafka: read it from a worker pod,
        # with the worker's own settings (bootstrap servers and SASL credentials from its Secret).
        script = (
            "import sys; from pynomaly.config import load_settings; from pynomaly.demo import find_kafka_event\n"
            f"found = find_kafka_event(load_settings(), {job_id!r}, 'job_completed', timeout=60)\n"
            "print(found[0].topic if found else 'missing')\n"
        )
        worker = a_pod(local_cluster, dev.namespace, "worker")
        out = local_cluster.kubectl(
            "-n", dev.namespace, "exec", worker, "--", "python3", "-c", script, timeout=120
        ).stdout
        assert out.strip().splitlines()[-1] == "job_events"

        # The WebSocket replays it from dashboard:stream (the bridge consumer copied it there).
        assert asyncio.run(_websocket_sees(forward.port, api_key, job_id)) == "job_completed"

        # /metrics answers in Prometheus' text format and counts the request above.
        metrics = httpx.get(f"{forward.url}/metrics", timeout=30)
        assert metrics.status_code == 200
        assert "http_requests" in metrics.text or "pynomaly_" in metrics.text
    finally:
        forward.close()


async def _websocket_sees(port: int, api_key: str, job_id: str) -> str:
    async with websockets.connect(f"ws://127.0.0.1:{port}/v1/stream") as ws:
        await ws.send(json.dumps({"api_key": api_key, "last_id": "0"}))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            message = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
            if message.get("subject") == job_id and message.get("type") == "job_completed":
                return str(message["type"])
    return "not seen"


def test_every_container_runs_as_its_declared_user_on_a_read_only_root(
    local_cluster: LocalCluster, dev: DeployedStack
) -> None:
    checked = 0
    for pod in get_json(local_cluster, "-n", dev.namespace, "pods")["items"]:
        if pod["status"]["phase"] != "Running":
            continue
        pod_uid = pod["spec"].get("securityContext", {}).get("runAsUser")
        for container in pod["spec"]["containers"]:
            ctx = container.get("securityContext", {})
            want = ctx.get("runAsUser", pod_uid)
            probe = "id -u; touch /.probe 2>&1 || true"
            result = local_cluster.kubectl(
                "-n",
                dev.namespace,
                "exec",
                pod["metadata"]["name"],
                "-c",
                container["name"],
                "--",
                "sh",
                "-c",
                probe,
                timeout=60,
            )
            uid, _, touch = result.stdout.partition("\n")
            assert want is not None and int(uid) == int(want) != 0, (pod["metadata"]["name"], container["name"])
            if ctx.get("readOnlyRootFilesystem"):
                assert "Read-only file system" in touch, (pod["metadata"]["name"], container["name"], touch)
            checked += 1
    assert checked >= 8


# Connect only (no protocol): "ok", "timeout" (the SYN was dropped), "refused", or the error.
CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("ok")
except socket.timeout:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
except OSError as exc:
    print(f"error:{exc}")
"""


def test_the_charts_network_policies_are_enforced(
    local_cluster: LocalCluster, dev: DeployedStack, built_images: dict
) -> None:
    """The release's egress policy (DNS, Redis, Kafka only): a worker reaches Redis and CoreDNS' port 53,
    not CoreDNS' readiness port, which a pod without the release's labels in the same namespace does
    reach (so the denial is the policy's); that pod in turn cannot reach Redis or Kafka (their
    ingress policies).  Pod to pod: traffic to the host itself (the API forwarder) is not judged by
    kube-network-policies, which hooks only packets the host forwards."""
    from tests.cluster.conftest import run_pod

    def running_ip(namespace: str, label: str, value: str) -> str:
        pods = get_json(local_cluster, "-n", namespace, "pods", "-l", f"{label}={value}")["items"]
        return next(str(p["status"]["podIP"]) for p in pods if p["status"]["phase"] == "Running")

    redis_ip = running_ip(dev.namespace, "app.kubernetes.io/name", "pynomaly-redis")
    dns_ip = running_ip("kube-system", "k8s-app", "kube-dns")
    worker = a_pod(local_cluster, dev.namespace, "worker")

    def from_worker(host: str, port: int) -> str:
        return local_cluster.kubectl(
            "-n", dev.namespace, "exec", worker, "--", "python3", "-c", CONNECT, host, str(port), timeout=60
        ).stdout.strip()

    assert from_worker(redis_ip, 6379) == "ok"
    assert from_worker(dns_ip, 53) == "ok"
    assert from_worker(dns_ip, 8181) == "timeout"
    app = next(b.ref for b in built_images.values() if b.role == "app")
    phase, logs = run_pod(
        local_cluster, dev.namespace, "netpol-unlabelled", app, ["python3", "-c", CONNECT, dns_ip, "8181"]
    )
    assert (phase, logs.strip()) == ("Succeeded", "ok")
    # Redis' and Kafka's own ingress policies (infra/): the worker gets through, a pod that is not the
    # application's does not, password or not.
    kafka_ip = running_ip(dev.namespace, "app.kubernetes.io/name", "pynomaly-kafka")
    assert from_worker(kafka_ip, 9092) == "ok"
    for target, ip, port in (("redis", redis_ip, "6379"), ("kafka", kafka_ip, "9092")):
        phase, logs = run_pod(
            local_cluster, dev.namespace, f"netpol-unlabelled-{target}", app, ["python3", "-c", CONNECT, ip, port]
        )
        assert (phase, logs.strip()) == ("Succeeded", "timeout"), target


def test_a_second_up_changes_nothing(dev: DeployedStack) -> None:
    preview = dev.preview()
    assert set(preview) == {"same"}, preview
    assert dev.up().keys() <= {"same"}


def test_a_config_change_previews_and_applies_only_that_change(local_cluster: LocalCluster, dev: DeployedStack) -> None:
    dev.reopen(local_cluster, {"pynomaly:autoscaling.workers.detection.max": "3"})
    preview = dev.preview()
    assert preview.get("update") == 1 and set(preview) == {"same", "update"}, preview
    counts = dev.up()
    assert counts.get("update") == 1, counts
    hpas = get_json(local_cluster, "-n", dev.namespace, "hpa")["items"]
    worker_max = {h["metadata"]["name"]: h["spec"]["maxReplicas"] for h in hpas}
    assert 3 in worker_max.values(), worker_max


def test_destroy_leaves_nothing_in_the_namespace(local_cluster: LocalCluster, dev: DeployedStack) -> None:
    namespace = dev.namespace
    counts = dev.destroy()
    assert counts.get("delete", 0) > 20
    gone = wait_for(lambda: get_json_or_none(local_cluster, "namespace", namespace), timeout=180)
    assert gone is None, f"namespace {namespace} still there"
    leftovers = local_cluster.kubectl(
        "get", "all", "-A", "-l", "app.kubernetes.io/part-of=pynomaly", "-o", "name", check=False
    ).stdout.split()
    assert leftovers == []
