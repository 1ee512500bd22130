"""NetworkPolicies are enforced on the local cluster (kube-network-policies, tools/cluster/local.py).

A Redis pod (the project's image) as the server, two clients (the app image) that differ only in
their labels; each check is a real TCP connection from a client pod to the server pod's address on
the bridge, sent with `kubectl exec`: Redis answers PING, or the SYN is dropped and the connect times
out.  Policies take effect once the agent has seen them, so a change is awaited (bounded), and a
denial is only judged after a connection that the same policies allow went through.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml

from tests.cluster.conftest import restricted_namespace, restricted_pod
from tests.cluster.deploying import get_json
from tools.cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

REDIS_PORT = 6379
CONNECT_TIMEOUT = 3.0  # a dropped SYN is retried after 1 s and 3 s: 3 s is a denial, not a slow pod
SETTLE = 45.0  # how long the agent may take to act on a new policy on a loaded machine

# Connect, PING, print what happened: "ok" (Redis answered), "timeout" (dropped), "refused", or the error.
PROBE = """
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    s.settimeout(float(sys.argv[3]))
    s.sendall(b"PING\\r\\n")
    print("ok" if s.recv(64).startswith(b"+PONG") else "bad-reply")
except socket.timeout:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
except OSError as exc:
    print(f"error:{exc}")
"""


def _policy(namespace: str, name: str, ingress: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"podSelector": {"matchLabels": {"role": "server"}}, "policyTypes": ["Ingress"], "ingress": ingress},
    }


class Probe:
    def __init__(self, cluster: LocalCluster, namespace: str, server_ip: str) -> None:
        self.cluster, self.namespace, self.server_ip = cluster, namespace, server_ip

    def connect(self, client: str) -> str:
        result = self.cluster.kubectl(
            "-n",
            self.namespace,
            "exec",
            client,
            "--",
            "python3",
            "-c",
            PROBE,
            self.server_ip,
            str(REDIS_PORT),
            str(CONNECT_TIMEOUT),
            check=False,
            timeout=60,
        )
        return result.stdout.strip() or f"exec failed: {result.stderr.strip()[-300:]}"

    def until(self, client: str, want: str, timeout: float = SETTLE) -> tuple[str, float]:
        """Probe until the outcome is ``want`` (or time runs out); the last outcome and the seconds taken."""
        started = time.monotonic()
        outcome = self.connect(client)
        while outcome != want and time.monotonic() - started < timeout:
            time.sleep(1)
            outcome = self.connect(client)
        return outcome, time.monotonic() - started


def test_ingress_policies_deny_and_allow_connections_between_pods(
    local_cluster: LocalCluster, built_images: dict
) -> None:
    ns = restricted_namespace(local_cluster, "netpol-check")
    app = next(b.ref for b in built_images.values() if b.role == "app")
    redis = next(b.ref for b in built_images.values() if b.role == "redis")
    sleeper = ["python3", "-c", "import time; time.sleep(3600)"]
    try:
        local_cluster.kubectl(
            "apply",
            "-f",
            "-",
            input=yaml.safe_dump_all(
                [
                    restricted_pod(
                        ns,
                        "server",
                        redis,
                        [
                            "redis-server",
                            "--port",
                            str(REDIS_PORT),
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                            "--protected-mode",
                            "no",
                        ],
                        {"role": "server"},
                    ),
                    restricted_pod(ns, "client", app, sleeper, {"role": "client"}),
                    restricted_pod(ns, "other", app, sleeper, {"role": "other"}),
                ]
            ),
        )
        local_cluster.kubectl(
            "-n",
            ns,
            "wait",
            "--for=condition=Ready",
            "pod/server",
            "pod/client",
            "pod/other",
            "--timeout=180s",
            timeout=200,
        )
        server_ip = get_json(local_cluster, "-n", ns, "pod", "server")["status"]["podIP"]
        probe = Probe(local_cluster, ns, server_ip)

        # No policy: both clients reach Redis.
        assert probe.connect("client") == "ok"
        assert probe.connect("other") == "ok"

        # Default deny ingress for the server: the SYN is dropped (a timeout, not a refusal).
        local_cluster.apply([_policy(ns, "server-deny-all", [])])
        outcome, seconds = probe.until("client", "timeout")
        assert outcome == "timeout", f"still {outcome!r} {seconds:.0f} s after the default-deny policy"
        print(f"\n[netpol] denied {seconds:.1f} s after the default-deny policy")

        # Allow role=client on the Redis port: that client gets through again, the other stays denied.
        local_cluster.apply(
            [
                _policy(
                    ns,
                    "server-allow-client",
                    [
                        {
                            "from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                            "ports": [{"port": REDIS_PORT, "protocol": "TCP"}],
                        }
                    ],
                )
            ]
        )
        outcome, seconds = probe.until("client", "ok")
        assert outcome == "ok", f"still {outcome!r} {seconds:.0f} s after the allow policy"
        print(f"[netpol] allowed {seconds:.1f} s after the allow policy")
        for _ in range(2):  # the policies are in effect (the allow went through): judged, not awaited
            assert probe.connect("other") == "timeout"
        assert probe.connect("client") == "ok"

        # Policies deleted: the other client is let through again (the denial came from them).
        local_cluster.kubectl("-n", ns, "delete", "networkpolicy", "--all")
        outcome, seconds = probe.until("other", "ok")
        assert outcome == "ok", f"still {outcome!r} {seconds:.0f} s after deleting the policies"
    finally:
        local_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
