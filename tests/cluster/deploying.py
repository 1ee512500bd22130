"""Deploying a stack onto the local cluster with the real Pulumi engine (tools/deploy.py), and checks
on what it created.  Shared by the dev (real pods) and onprem/cloud (fake nodes) tests."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pulumi import automation as auto

from tools import deploy, images
from tools.cluster import LocalCluster

# Kinds Pulumi records that are not objects in the cluster (the provider, components, the chart wrapper).
_NOT_OBJECTS = ("pulumi:", "pynomaly:", "kubernetes:helm.sh/")


def _progress_writer(env: str) -> deploy.Progress:
    # pytest captures stdout; a deploy takes minutes and should show what it is doing.
    return deploy.Progress(write=lambda line: print(f"[deploy {env}] {line}", file=sys.__stderr__, flush=True))


@dataclass
class DeployedStack:
    env: str
    stack: auto.Stack
    state_dir: Path
    overrides: dict[str, str]
    counts: dict[str, int]
    seconds: float
    namespace: str  # from the outputs of the first up (a destroyed stack has none)

    def outputs(self, show_secrets: bool = False) -> dict[str, Any]:
        return deploy.outputs(self.stack, show_secrets=show_secrets)

    def reopen(self, cluster: LocalCluster, extra: Mapping[str, str]) -> auto.Stack:
        """The same stack with its whole config set again plus ``extra`` overrides."""
        self.overrides = {**self.overrides, **extra}
        self.stack = deploy.open_stack(
            self.env, kubeconfig=cluster.kubeconfig, overrides=self.overrides, state_dir=self.state_dir
        )
        return self.stack

    def preview(self) -> dict[str, int]:
        return deploy.preview(self.stack, on_event=_progress_writer(self.env))

    def up(self) -> dict[str, int]:
        return deploy.up(self.stack, on_event=_progress_writer(self.env))

    def destroy(self) -> dict[str, int]:
        return deploy.destroy(self.stack, on_event=_progress_writer(self.env))


def image_overrides(built: Mapping[str, images.Built]) -> dict[str, str]:
    """Stack config that makes a stack run the images tools/images.py built and the cluster loaded."""
    return {f"pynomaly:{key}": value for key, value in images.stack_config(dict(built)).items()}


def deploy_env(
    cluster: LocalCluster,
    env: str,
    built: Mapping[str, images.Built],
    state_dir: Path,
    extra: Mapping[str, str] | None = None,
) -> DeployedStack:
    overrides = {**image_overrides(built), **(extra or {})}
    stack = deploy.open_stack(env, kubeconfig=cluster.kubeconfig, overrides=overrides, state_dir=state_dir)
    started = time.monotonic()
    counts = deploy.up(stack, on_event=_progress_writer(env))
    seconds = time.monotonic() - started
    print(f"\n[deploy {env}] up in {seconds:.0f} s: {counts}", file=sys.__stderr__, flush=True)
    namespace = str(deploy.outputs(stack)["namespace"])
    return DeployedStack(env, stack, state_dir, overrides, counts, seconds, namespace)


def state_objects(stack: auto.Stack) -> list[dict[str, str]]:
    """Every Kubernetes object the stack's state says it manages: kind, apiVersion, namespace, name."""
    found = []
    for resource in stack.export_stack().deployment["resources"]:
        if not resource.get("custom") or not resource["type"].startswith("kubernetes:"):
            continue
        if resource["type"].startswith(_NOT_OBJECTS) or resource["type"] == "pulumi:providers:kubernetes":
            continue
        outputs = resource.get("outputs") or {}
        meta = outputs.get("metadata") or {}
        found.append(
            {
                "apiVersion": str(outputs.get("apiVersion")),
                "kind": str(outputs.get("kind")),
                "namespace": str(meta.get("namespace") or ""),
                "name": str(meta.get("name")),
            }
        )
    return found


def missing_objects(cluster: LocalCluster, objects: list[dict[str, str]]) -> list[str]:
    missing = []
    for obj in objects:
        kind = f"{obj['kind']}.{obj['apiVersion'].split('/')[0]}" if "/" in obj["apiVersion"] else obj["kind"]
        args = ["get", kind, obj["name"], "-o", "name"]
        if obj["namespace"]:
            args += ["-n", obj["namespace"]]
        if cluster.kubectl(*args, check=False, timeout=30).returncode != 0:
            missing.append(f"{obj['kind']}/{obj['namespace']}/{obj['name']}")
    return missing


def get_json(cluster: LocalCluster, *args: str) -> dict[str, Any]:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def workload_problems(cluster: LocalCluster, namespace: str) -> list[str]:
    """Deployments/StatefulSets short of ready replicas, Jobs not complete, pods refused by admission."""
    problems = []
    for kind in ("deployment", "statefulset"):
        for item in get_json(cluster, "-n", namespace, kind)["items"]:
            want = item["spec"].get("replicas", 1)
            ready = item.get("status", {}).get("readyReplicas", 0)
            if ready < want:
                problems.append(f"{kind}/{item['metadata']['name']}: {ready}/{want} ready")
    for job in get_json(cluster, "-n", namespace, "job")["items"]:
        if not job.get("status", {}).get("succeeded"):
            problems.append(f"job/{job['metadata']['name']}: not complete")
    for event in get_json(cluster, "-n", namespace, "events")["items"]:
        if event.get("reason") == "FailedCreate":
            problems.append(
                f"{event['involvedObject']['kind']}/{event['involvedObject']['name']}: {event.get('message', '')[:300]}"
            )
    return problems


def wait_for(check: Any, timeout: float, interval: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if not last:
            return last
        time.sleep(interval)
    return last


class PortForward:
    """`kubectl port-forward` to a Service, on a free loopback port, stopped by pid."""

    def __init__(self, cluster: LocalCluster, namespace: str, target: str, remote_port: int) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        kubectl = cluster.bins.get("kubectl")
        self.proc = subprocess.Popen(
            [
                str(kubectl),
                "--kubeconfig",
                str(cluster.kubeconfig),
                "-n",
                namespace,
                "port-forward",
                "--address",
                "127.0.0.1",
                target,
                f"{self.port}:{remote_port}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.3)
        self.close()
        raise AssertionError(f"port-forward to {target} did not open")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def a_pod(cluster: LocalCluster, namespace: str, component: str) -> str:
    for pod in get_json(cluster, "-n", namespace, "pods")["items"]:
        labels = pod["metadata"].get("labels", {})
        if component in labels.get("app.kubernetes.io/component", "") and pod["status"]["phase"] == "Running":
            return str(pod["metadata"]["name"])
    raise AssertionError(f"no running {component} pod in {namespace}")


def api_forward(cluster: LocalCluster, deployed: DeployedStack) -> tuple[PortForward, str]:
    """A port-forward to the API Service and the first API key: what `pulumi stack output apiAccess`
    tells a user to run (on a free port), or, when the stack exposes the API through an Ingress no
    controller serves here, the same forward to the API Service the Ingress routes to."""
    outputs = deployed.outputs(show_secrets=True)
    access = str(outputs["apiAccess"]).split()
    if access[:1] == ["kubectl"]:
        assert access[:4] == ["kubectl", "-n", deployed.namespace, "port-forward"], access
        target, remote_port = access[4], int(access[5].split(":")[1])
    else:
        service = get_json(cluster, "-n", deployed.namespace, "service", "-l", "app.kubernetes.io/component=api")
        (api,) = service["items"]
        target, remote_port = f"svc/{api['metadata']['name']}", int(api["spec"]["ports"][0]["port"])
    api_key = str(outputs["apiKey"]).split(",")[0].strip()
    return PortForward(cluster, deployed.namespace, target, remote_port), api_key


POD_SCRIPTS = Path(__file__).parent / "pod_scripts"


def pod_python(cluster: LocalCluster, namespace: str, pod: str, script: str, *args: str, timeout: float = 300) -> Any:
    """Run ``pod_scripts/<script>`` with the pod's python3 (its settings come from the pod's environment);
    the script's last stdout line is JSON, returned parsed."""
    result = cluster.kubectl(
        "-n",
        namespace,
        "exec",
        "-i",
        pod,
        "--",
        "python3",
        "-",
        *args,
        input=(POD_SCRIPTS / script).read_text(),
        timeout=timeout,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise AssertionError(f"{script} in {pod} failed ({result.returncode}): {result.stderr.strip()[-1500:]}")
    return json.loads(lines[-1])


class ForwardedApi:
    """The API client through a port-forward that is opened again when the API cannot be reached (a
    forward ends with its pod: a rollout, a drain).  Any PynomalyClient method; a call is tried on a
    fresh forward up to twice more, and a POST repeated that way may make a second job (the caller
    counts the ids it got back)."""

    def __init__(self, cluster: LocalCluster, deployed: DeployedStack) -> None:
        self._cluster, self._deployed = cluster, deployed
        self._open()

    def _open(self) -> None:
        from pynomaly.client import PynomalyClient

        self.forward, api_key = api_forward(self._cluster, self._deployed)
        self.client = PynomalyClient(self.forward.url, api_key, timeout=60)

    def close(self) -> None:
        self.client.close()
        self.forward.close()

    def __getattr__(self, name: str) -> Any:
        from pynomaly.client import ApiError

        def call(*args: Any, **kwargs: Any) -> Any:
            for attempt in range(3):
                try:
                    return getattr(self.client, name)(*args, **kwargs)
                except ApiError as exc:
                    if exc.status != 0 or attempt == 2:  # an answer from the API, or out of tries
                        raise
                    self.close()
                    time.sleep(2)
                    self._open()
            raise AssertionError("unreachable")

        return call
