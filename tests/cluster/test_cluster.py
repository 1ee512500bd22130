"""The local cluster itself: versions, a Ready node, DNS and Services from a pod, PodSecurity, CRDs."""

from __future__ import annotations

import json

import pytest

from tests.cluster.conftest import restricted_namespace, run_pod
from tests.cluster.deploying import get_json
from tools import toolchain
from tools.cluster import LocalCluster
from tools.cluster.local import API_SERVICE_IP, NODE_NAME

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]


def test_control_plane_and_node_run_the_pinned_release(local_cluster: LocalCluster) -> None:
    version = json.loads(local_cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == toolchain.KUBERNETES_VERSION
    node = get_json(local_cluster, "node", NODE_NAME)
    assert node["status"]["nodeInfo"]["kubeletVersion"] == toolchain.KUBERNETES_VERSION
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert ready["Ready"] == "True"
    # Loopback only: the node's address is 127.0.0.1, and so is every port the kubelet serves.
    assert {a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"} == {"127.0.0.1"}


def test_a_pod_resolves_service_names_and_reaches_the_api_through_its_service(
    local_cluster: LocalCluster, built_images: dict
) -> None:
    ns = restricted_namespace(local_cluster, "cluster-dns-check")
    app = next(b.ref for b in built_images.values() if b.role == "app")
    script = (
        "import socket, ssl\n"
        "ip = socket.gethostbyname('kubernetes.default.svc.cluster.local')\n"
        "dns = socket.gethostbyname('kube-dns.kube-system.svc.cluster.local')\n"
        "s = socket.create_connection((ip, 443), timeout=10); s.close()\n"
        "print(ip, dns, 'connected')\n"
    )
    try:
        phase, logs = run_pod(local_cluster, ns, "dns-check", app, ["python3", "-c", script])
        assert phase == "Succeeded", logs
        assert logs.split() == [API_SERVICE_IP, "10.96.0.10", "connected"]
    finally:
        local_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_restricted_pod_security_refuses_a_root_pod(local_cluster: LocalCluster, built_images: dict) -> None:
    ns = restricted_namespace(local_cluster, "cluster-psa-check")
    app = next(b.ref for b in built_images.values() if b.role == "app")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "root", "namespace": ns},
        "spec": {"containers": [{"name": "c", "image": app, "securityContext": {"runAsUser": 0}}]},
    }
    try:
        result = local_cluster.kubectl("apply", "-f", "-", input=json.dumps(pod), check=False)
        assert result.returncode != 0
        assert 'violates PodSecurity "restricted:latest"' in result.stderr
    finally:
        local_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_the_stacks_crds_come_from_their_projects_modules(local_cluster: LocalCluster) -> None:
    crds = {c["metadata"]["name"]: c for c in get_json(local_cluster, "crd")["items"]}
    for name in (
        "scaledobjects.keda.sh",
        "triggerauthentications.keda.sh",
        "clustertriggerauthentications.keda.sh",
        "servicemonitors.monitoring.coreos.com",
        "prometheusrules.monitoring.coreos.com",
    ):
        assert name in crds, f"{name} missing; have {sorted(crds)}"
        established = {c["type"]: c["status"] for c in crds[name]["status"]["conditions"]}
        assert established["Established"] == "True"
    # Upstream's schema, not a hand-written subset: the scalingModifiers formula field is there.
    spec = crds["scaledobjects.keda.sh"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "formula" in spec["properties"]["advanced"]["properties"]["scalingModifiers"]["properties"]
