"""The deploy tier: the project's own Kubernetes cluster (tools/cluster), started once per session.

``local_cluster`` builds what is missing (the Go tools, the images), starts the cluster in a
temporary folder with every image loaded, and stops it at the end (restoring the host).  ``keda``
(the on-prem live tier only) adds KEDA to it.  Tests in
this folder are marked ``cluster`` and run after every other test (tests/conftest.py orders them),
one at a time: each leaves the cluster as it found it (namespaces deleted, real node schedulable).
"""

from __future__ import annotations

import atexit
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.deploying import get_json
from tools import images
from tools.cluster import LocalCluster


@pytest.fixture(scope="session")
def built_images() -> dict[str, images.Built]:
    return images.build()


@pytest.fixture(scope="session")
def local_cluster(
    tmp_path_factory: pytest.TempPathFactory, built_images: dict[str, images.Built]
) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), die_with_parent=True)
    atexit.register(cluster.down, quiet=True)  # an interrupted session still restores the host
    refs = images.image_refs(built_images)
    started = time.monotonic()
    cluster.up([b.archive for b in built_images.values()], pause_image=refs["pause"], dns_image=refs["coredns"])
    print(f"\n[cluster] up with {len(built_images)} images in {time.monotonic() - started:.1f} s")
    try:
        yield cluster
    finally:
        cluster.down(quiet=True)


@pytest.fixture(scope="session")
def keda(local_cluster: LocalCluster) -> Iterator[str]:
    """KEDA running on the cluster (tools/cluster/keda.py); yields its image ref.  Its image is built
    here only (the first time a long Go build: the default image set leaves it out), then loaded."""
    from tools.cluster import keda as keda_addon

    started = time.monotonic()
    built = images.build(["keda"], skip_missing=False)["keda"]
    local_cluster.load_images([built.archive])
    print(f"\n[keda] image {built.ref} built and loaded in {time.monotonic() - started:.1f} s")
    print(f"[keda] installed, external metrics API Available in {keda_addon.install(local_cluster, built.ref):.1f} s")
    try:
        yield built.ref
    finally:
        keda_addon.uninstall(local_cluster)


def restricted_pod(
    namespace: str, name: str, image: str, command: list[str], labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """A pod manifest that satisfies the 'restricted' Pod Security standard, on the real node."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "spec": {
            "nodeSelector": {"pynomaly.io/local-node": "real"},
            "terminationGracePeriodSeconds": 1,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "runAsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": command,
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}},
                }
            ],
        },
    }


def run_pod(
    cluster: LocalCluster, namespace: str, name: str, image: str, command: list[str], timeout: float = 120
) -> tuple[str, str]:
    """Run a one-shot pod that satisfies the 'restricted' standard; return (phase, logs)."""
    pod = restricted_pod(namespace, name, image, command)
    pod["spec"]["restartPolicy"] = "Never"
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(pod))
    deadline = time.monotonic() + timeout
    phase = ""
    while time.monotonic() < deadline:
        phase = get_json(cluster, "-n", namespace, "pod", name)["status"].get("phase", "")
        if phase in ("Succeeded", "Failed"):
            break
        time.sleep(1)
    logs = cluster.kubectl("-n", namespace, "logs", name, check=False).stdout
    cluster.kubectl("-n", namespace, "delete", "pod", name, "--wait=false", check=False)
    return phase, logs


def restricted_namespace(cluster: LocalCluster, name: str) -> str:
    cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": name,
                    "labels": {
                        "pod-security.kubernetes.io/enforce": "restricted",
                        "pod-security.kubernetes.io/enforce-version": "latest",
                    },
                },
            }
        ]
    )
    return name


CHAOS_RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "cluster-chaos.json"


@pytest.fixture(scope="session")
def chaos_figures() -> Iterator[dict[str, Any]]:
    """Figures the on-prem live tier measures, merged into benchmarks/results/cluster-chaos.json at
    the end (committed, and quoted by the README's reliability section)."""
    figures: dict[str, Any] = {}
    yield figures
    if figures:
        recorded = json.loads(CHAOS_RESULTS.read_text()) if CHAOS_RESULTS.is_file() else {}
        recorded.setdefault("figures", {}).update(figures)
        recorded["recorded"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        recorded["machine"] = f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end"
        CHAOS_RESULTS.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
