"""KEDA v2.21.0 (operator + metrics API server) on the local cluster, so ScaledObjects really scale.

    install(cluster, "pynomaly/keda:2.21.0")   # after the image is loaded (tools/images.py, image "keda")
    uninstall(cluster)

Namespace ``keda`` under PodSecurity "restricted".  RBAC and the CRDs come from KEDA's own module at
the pinned version (as ``toolchain.crd_files()``); the Deployments, Services and the APIService are
written here.  Certificates are made once per install with ``tools/cluster/pki.py`` (a CA of KEDA's
own) and handed over in the Secret KEDA's cert rotation would otherwise write: the operator's gRPC
metrics service (9666) and the metrics server share one certificate for mutual TLS, and the
APIService trusts that CA.  KEDA's cert rotation and leader election are off: one replica each.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from tools import toolchain
from tools.cluster import pki
from tools.cluster.local import CLUSTER_DOMAIN, ClusterError, LocalCluster

NAMESPACE = "keda"
APISERVICE = "v1beta1.external.metrics.k8s.io"
CERT_SECRET = "kedaorg-certs"  # KEDA's default name for it
OPERATOR = "keda-operator"  # the ServiceAccount both run as (KEDA's RBAC binds this name), and a Service
METRICS_SERVER = "keda-metrics-apiserver"
NONROOT_UID = 65532  # the image's user (tools/images.py)
# KEDA's RBAC files: ServiceAccount, the operator's roles, the metrics server's delegated auth.
RBAC_FILES = (
    "service_account/service_account.yaml",
    "rbac/role.yaml",
    "rbac/role_binding.yaml",
    "metrics-server/role.yaml",
    "metrics-server/role_binding.yaml",
)


def module() -> Path:
    return toolchain.module_dir(f"github.com/kedacore/keda/v2@{toolchain.KEDA_VERSION}")


def crd_files() -> list[Path]:
    """Every KEDA CRD: the operator starts a controller per kind and fails if one is missing; the
    cluster itself installs only the ones the stacks use (``toolchain.crd_files()``)."""
    return sorted((module() / "config" / "crd" / "bases").glob("*.yaml"))


def rbac_objects() -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for rel in RBAC_FILES:
        objects += [doc for doc in yaml.safe_load_all((module() / "config" / rel).read_text()) if doc]
    return objects


def _certificates(cluster: LocalCluster) -> dict[str, str]:
    """ca.crt, tls.crt, tls.key (the names KEDA reads from its cert dir), fresh for this install."""
    work = cluster.pki_dir / "keda"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700, parents=True)
    pki.make_signing_ca(work, "ca", "pynomaly-keda-ca")
    dns = [
        f"{svc}.{NAMESPACE}.svc{suffix}" for svc in (OPERATOR, METRICS_SERVER) for suffix in ("", f".{CLUSTER_DOMAIN}")
    ]
    pki.make_server_cert(work, "tls", OPERATOR, dns=dns, ips=[], client_auth=True)
    return {name: (work / name).read_text() for name in ("ca.crt", "tls.crt", "tls.key")}


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
    }


def _deployment(
    name: str, image: str, command: list[str], ports: dict[str, int], probe: dict[str, Any]
) -> dict[str, Any]:
    pod_namespace = {"fieldRef": {"fieldPath": "metadata.namespace"}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "serviceAccountName": OPERATOR,
                    "nodeSelector": {"pynomaly.io/local-node": "real"},
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": NONROOT_UID,
                        "runAsGroup": NONROOT_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "terminationGracePeriodSeconds": 10,
                    "containers": [
                        {
                            "name": name,
                            "image": image,
                            "imagePullPolicy": "Never",
                            "command": command,
                            # Every namespace is watched; KEDA's own objects live in the pod's namespace.
                            "env": [
                                {"name": "POD_NAMESPACE", "valueFrom": pod_namespace},
                                {"name": "WATCH_NAMESPACE", "value": ""},
                            ],
                            "ports": [{"name": port_name, "containerPort": port} for port_name, port in ports.items()],
                            "readinessProbe": {**probe, "periodSeconds": 5},
                            "livenessProbe": {**probe, "initialDelaySeconds": 30, "periodSeconds": 20},
                            # Small: the machine has 2 shared cores; Go's heap stays well under the limit.
                            "resources": {"requests": {"cpu": "20m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
                            "securityContext": _container_security(),
                            "volumeMounts": [
                                {"name": "certificates", "mountPath": "/certs", "readOnly": True},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "certificates", "secret": {"secretName": CERT_SECRET}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }


def _service(name: str, ports: dict[str, tuple[int, int]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": n, "port": p, "targetPort": t} for n, (p, t) in ports.items()],
        },
    }


def manifests(image: str, certs: dict[str, str]) -> list[dict[str, Any]]:
    """Everything but the CRDs and RBAC, in apply order."""
    operator = _deployment(
        OPERATOR,
        image,
        [
            "/keda",
            "--leader-elect=false",
            "--enable-cert-rotation=false",
            "--cert-dir=/certs",
            "--zap-log-level=info",
            "--zap-encoder=console",
            "--zap-time-encoding=rfc3339",
            f"--k8s-cluster-domain={CLUSTER_DOMAIN}",
        ],
        {"metricsservice": 9666, "http": 8080, "probes": 8081},
        {"httpGet": {"path": "/readyz", "port": 8081}},
    )
    metrics_server = _deployment(
        METRICS_SERVER,
        image,
        [
            "/keda-adapter",
            "--secure-port=6443",
            "--cert-dir=/certs",
            "--tls-cert-file=/certs/tls.crt",
            "--tls-private-key-file=/certs/tls.key",
            "--zap-log-level=info",
            "--zap-encoder=console",
            f"--metrics-service-address={OPERATOR}.{NAMESPACE}.svc.{CLUSTER_DOMAIN}:9666",
        ],
        {"https": 6443, "http": 8080},
        {"httpGet": {"path": "/readyz", "port": 6443, "scheme": "HTTPS"}},
    )
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": CERT_SECRET, "namespace": NAMESPACE},
        "stringData": certs,
    }
    apiservice = {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": APISERVICE},
        "spec": {
            "group": "external.metrics.k8s.io",
            "version": "v1beta1",
            "service": {"name": METRICS_SERVER, "namespace": NAMESPACE, "port": 443},
            "caBundle": base64.b64encode(certs["ca.crt"].encode()).decode(),
            "groupPriorityMinimum": 100,
            "versionPriority": 100,
        },
    }
    return [
        secret,
        _service(OPERATOR, {"metricsservice": (9666, 9666), "http": (8080, 8080)}),
        _service(METRICS_SERVER, {"https": (443, 6443), "http": (8080, 8080)}),
        operator,
        metrics_server,
        apiservice,
    ]


def install(cluster: LocalCluster, image_ref: str, *, timeout: float = 300) -> float:
    """Install KEDA with ``image_ref`` (already loaded into the cluster); return once the external
    metrics API is Available.  Returns the seconds it took."""
    started = time.monotonic()
    cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": NAMESPACE,
                    "labels": {
                        "pod-security.kubernetes.io/enforce": "restricted",
                        "pod-security.kubernetes.io/enforce-version": "latest",
                    },
                },
            }
        ]
    )
    for crd in crd_files():
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    names = [f"{kind}.{group}" for group, kind in (p.stem.split("_", 1) for p in crd_files())]
    cluster.kubectl("wait", "--for=condition=Established", *(f"crd/{n}" for n in names), "--timeout=60s")
    cluster.apply(rbac_objects())
    cluster.apply(manifests(image_ref, _certificates(cluster)))
    for name in (OPERATOR, METRICS_SERVER):
        result = cluster.kubectl(
            "-n",
            NAMESPACE,
            "rollout",
            "status",
            f"deployment/{name}",
            f"--timeout={int(timeout)}s",
            check=False,
            timeout=timeout + 10,
        )
        if result.returncode != 0:
            raise ClusterError(
                f"KEDA's {name} did not become ready: {result.stderr.strip()[-300:]}\n{_logs(cluster, name)}"
            )
    remaining = max(30.0, timeout - (time.monotonic() - started))
    result = cluster.kubectl(
        "wait",
        "--for=condition=Available",
        f"apiservice/{APISERVICE}",
        f"--timeout={int(remaining)}s",
        check=False,
        timeout=remaining + 10,
    )
    if result.returncode != 0:
        status = cluster.kubectl("get", "apiservice", APISERVICE, "-o", "jsonpath={.status}", check=False).stdout
        raise ClusterError(f"{APISERVICE} not Available: {status}\n{_logs(cluster, METRICS_SERVER)}")
    return time.monotonic() - started


def _logs(cluster: LocalCluster, name: str) -> str:
    return cluster.kubectl("-n", NAMESPACE, "logs", f"deployment/{name}", "--tail=20", check=False).stdout[-2000:]


def uninstall(cluster: LocalCluster, *, timeout: float = 120) -> None:
    """Remove what ``install`` made; the cluster's own CRDs (``toolchain.crd_files()``) stay."""
    # While the operator still runs, it removes its finalizers (and the HPAs) from what is left;
    # afterwards a leftover ScaledObject would keep its namespace Terminating.
    for kind in ("scaledobjects.keda.sh", "scaledjobs.keda.sh"):
        cluster.kubectl(
            "delete", kind, "--all-namespaces", "--all", f"--timeout={int(timeout)}s", check=False, timeout=timeout + 10
        )
    # The APIService first: an unavailable aggregated API stalls namespace deletion (discovery fails).
    cluster.kubectl("delete", "apiservice", APISERVICE, "--ignore-not-found", check=False)
    cluster.kubectl(
        "delete",
        "namespace",
        NAMESPACE,
        "--ignore-not-found",
        f"--timeout={int(timeout)}s",
        check=False,
        timeout=timeout + 10,
    )
    for obj in rbac_objects():
        ns = obj["metadata"].get("namespace")
        if ns != NAMESPACE:  # cluster-wide, or the binding in kube-system; the rest goes with the namespace
            cluster.kubectl(
                *(["-n", ns] if ns else []),
                "delete",
                obj["kind"],
                obj["metadata"]["name"],
                "--ignore-not-found",
                check=False,
            )
    kept = {p.name for p in toolchain.crd_files()}
    for crd in crd_files():
        if crd.name not in kept:
            cluster.kubectl("delete", "-f", str(crd), "--ignore-not-found", check=False)
    shutil.rmtree(cluster.pki_dir / "keda", ignore_errors=True)
    left = [
        what
        for what in (f"namespace/{NAMESPACE}", f"apiservice/{APISERVICE}")
        if cluster.kubectl("get", what, "-o", "name", check=False).returncode == 0
    ]
    if left:
        raise ClusterError(f"KEDA's uninstall left {', '.join(left)} behind")


def external_metric(cluster: LocalCluster, namespace: str, metric: str, scaled_object: str) -> list[dict[str, Any]]:
    """The external metrics API's answer for ``metric`` of ``scaled_object`` (what the HPA reads)."""
    selector = f"scaledobject.keda.sh%2Fname%3D{scaled_object}"
    out = cluster.kubectl(
        "get",
        "--raw",
        f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}?labelSelector={selector}",
    ).stdout
    return json.loads(out)["items"]
