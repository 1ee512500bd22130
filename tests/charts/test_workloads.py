"""What the rendered workloads promise operators: probes, grace periods, rollouts on config
changes, least privilege, default-deny networking and one autoscaler per Deployment."""

from __future__ import annotations

from typing import Any

import pytest

from tests.charts.chartlib import ENVIRONMENTS, MINIMAL_VALUES, by_kind, component, container, deep_merge, pod_spec

pytestmark = pytest.mark.helm


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_worker_grace_covers_the_task_hard_limit(rendered_envs: Any, effective_values: Any, env: str) -> None:
    values = effective_values(env)
    hard_limit = values["settings"]["taskTimeLimit"]
    for deployment in by_kind(rendered_envs[env], "Deployment").values():
        if component(deployment) == "worker":
            grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
            assert grace == hard_limit + values["workers"]["shutdownGraceMarginSeconds"]
            assert grace > hard_limit


def test_grace_follows_the_task_limit(render: Any) -> None:
    values = deep_merge(MINIMAL_VALUES, {"settings": {"taskTimeLimit": 600, "taskSoftTimeLimit": 540}})
    workers = [d for d in by_kind(render(values=values), "Deployment").values() if component(d) == "worker"]
    assert {pod_spec(d)["terminationGracePeriodSeconds"] for d in workers} == {720}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_probes(rendered_envs: Any, effective_values: Any, env: str) -> None:
    values = effective_values(env)
    for deployment in by_kind(rendered_envs[env], "Deployment").values():
        c = container(deployment)
        if component(deployment) == "api":
            assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
            assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
            continue
        # Workers and consumers: the heartbeat file's age, never a broker ping.
        section = {"worker": "workers", "consumer": "consumers", "beat": "beat"}[component(deployment) or ""]
        max_age = str(values[section]["heartbeatMaxAgeSeconds"])
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c[probe]["exec"]["command"] == ["pynomaly", "healthcheck", "--max-age", max_age]
        env_vars = {e["name"]: e.get("value") for e in c["env"]}
        heartbeat_dir = env_vars["PYNOMALY_HEARTBEAT_DIR"]
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
        assert "emptyDir" in volumes[mounts[heartbeat_dir]]
        assert "emptyDir" in volumes[mounts["/tmp"]]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_pods_are_least_privilege(rendered_envs: Any, env: str) -> None:
    objects = rendered_envs[env]
    accounts = set(by_kind(objects, "ServiceAccount"))
    for deployment in by_kind(objects, "Deployment").values():
        spec = pod_spec(deployment)
        assert spec["automountServiceAccountToken"] is False
        # Service links would inject e.g. PYNOMALY_API_PORT=tcp://... for the "pynomaly-api" Service,
        # which the app's settings would then try to parse.
        assert spec["enableServiceLinks"] is False
        assert spec["serviceAccountName"] in accounts
        assert spec["securityContext"]["runAsUser"] != 0
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert {"checksum/config", "checksum/secret"} <= set(annotations)


def test_config_changes_roll_the_pods(render: Any) -> None:
    def checksums(values: dict[str, Any]) -> set[str]:
        deployments = by_kind(render(values=values), "Deployment").values()
        return {d["spec"]["template"]["metadata"]["annotations"]["checksum/config"] for d in deployments}

    before = checksums(MINIMAL_VALUES)
    after = checksums(deep_merge(MINIMAL_VALUES, {"settings": {"logLevel": "DEBUG"}}))
    assert len(before) == len(after) == 1
    assert before != after


def test_redis_url_is_composed_from_the_secret(rendered_envs: Any) -> None:
    for deployment in by_kind(rendered_envs["dev"], "Deployment").values():
        names = [e["name"] for e in container(deployment)["env"]]
        env = {e["name"]: e for e in container(deployment)["env"]}
        assert names.index("REDIS_PASSWORD") < names.index("PYNOMALY_REDIS_URL"), "$(VAR) needs the earlier definition"
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "pynomaly-secrets",
            "key": "redis-password",
        }
        assert env["PYNOMALY_REDIS_URL"]["value"] == "redis://$(REDIS_USERNAME):$(REDIS_PASSWORD)@pynomaly-redis:6379/0"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_one_autoscaler_per_deployment(rendered_envs: Any, env: str) -> None:
    objects = rendered_envs[env]
    hpa_targets = [h["spec"]["scaleTargetRef"]["name"] for h in by_kind(objects, "HorizontalPodAutoscaler").values()]
    keda_targets = [s["spec"]["scaleTargetRef"]["name"] for s in by_kind(objects, "ScaledObject").values()]
    assert len(set(hpa_targets)) == len(hpa_targets)
    assert set(hpa_targets).isdisjoint(keda_targets)
    deployments = by_kind(objects, "Deployment")
    assert set(hpa_targets) | set(keda_targets) <= set(deployments)
    for name in set(hpa_targets) | set(keda_targets):
        assert "replicas" not in deployments[name]["spec"], f"{name}: helm upgrades would fight the autoscaler"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_deployment_has_a_pdb(rendered_envs: Any, env: str) -> None:
    objects = rendered_envs[env]
    pdb_selectors = [p["spec"]["selector"]["matchLabels"] for p in by_kind(objects, "PodDisruptionBudget").values()]
    for name, deployment in by_kind(objects, "Deployment").items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [s for s in pdb_selectors if s.items() <= labels.items()]
        assert len(matching) == 1, name


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_network_policies_deny_by_default_and_allow_only_what_is_needed(
    rendered_envs: Any, effective_values: Any, env: str
) -> None:
    values = effective_values(env)
    policies = by_kind(rendered_envs[env], "NetworkPolicy")
    deny = policies["pynomaly-default-deny"]["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny and "egress" not in deny
    assert deny["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "pynomaly",
        "app.kubernetes.io/instance": "pynomaly",
    }

    ingress_ports = {
        (name, port["port"])
        for name, policy in policies.items()
        for rule in policy["spec"].get("ingress", [])
        for port in rule["ports"]
    }
    assert ingress_ports == {
        ("pynomaly-api-ingress", values["api"]["port"]),
        ("pynomaly-metrics-ingress", values["metrics"]["port"]),
    }

    egress_ports = {
        port["port"]
        for policy in policies.values()
        for rule in policy["spec"].get("egress", [])
        for port in rule["ports"]
    }
    kafka_ports = {int(hp.rsplit(":", 1)[1]) for hp in values["kafka"]["bootstrapServers"].split(",")}
    assert egress_ports == {53, values["redis"]["port"], *kafka_ports}
    for policy in policies.values():
        for rule in policy["spec"].get("egress", []):
            assert rule.get("to"), f"{policy['metadata']['name']}: an egress rule open to every destination"


def test_api_keys_are_a_mounted_file_not_an_env_value(rendered_envs: Any) -> None:
    (api,) = [d for d in by_kind(rendered_envs["dev"], "Deployment").values() if component(d) == "api"]
    env = {e["name"]: e for e in container(api)["env"]}
    assert "PYNOMALY_API_KEYS" not in env
    keys_file = env["PYNOMALY_API_KEYS_FILE"]["value"]
    mounts = {m["mountPath"]: m for m in container(api)["volumeMounts"]}
    assert any(keys_file.startswith(path + "/") and m.get("readOnly") for path, m in mounts.items())
