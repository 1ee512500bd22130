"""`helm lint --strict` and `helm template` with the real helm, for every environment; every
rendered object passes the strict Kubernetes/KEDA/Prometheus schemas and the security baseline."""

from __future__ import annotations

from typing import Any

import pytest

from tests.charts.chartlib import ENVIRONMENTS, MINIMAL_VALUES, env_values_path
from tests.support.k8s import baseline_violations, count_kinds, format_kind_counts, validate_object
from tools.helm import CHART, KUBE_VERSION, run_helm

pytestmark = pytest.mark.helm


def test_the_three_environments_have_helm_values() -> None:
    assert ENVIRONMENTS == ["cloud", "dev", "onprem"]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_helm_lint_strict(helm: Any, env: str) -> None:
    values = env_values_path(env)
    result = run_helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, "--values", str(values))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_helm_lint_strict_of_a_bare_install(helm: Any, tmp_path: Any) -> None:
    """Chart defaults plus only what the chart cannot know (endpoints, the Secret's name)."""
    import json

    extra = tmp_path / "minimal.json"
    extra.write_text(json.dumps(MINIMAL_VALUES))
    result = run_helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, "--values", str(extra))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_object_passes_the_strict_schemas(rendered_envs: dict[str, list[dict[str, Any]]], env: str) -> None:
    objects = rendered_envs[env]
    assert objects, f"{env} renders nothing"
    findings = [f for obj in objects for f in validate_object(obj)]
    assert findings == []


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_object_meets_the_security_baseline(rendered_envs: dict[str, list[dict[str, Any]]], env: str) -> None:
    findings = [f for obj in rendered_envs[env] for f in baseline_violations(obj)]
    assert findings == []


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_names_are_unique_per_kind(rendered_envs: dict[str, list[dict[str, Any]]], env: str) -> None:
    keys = [(o["kind"], o["metadata"]["name"]) for o in rendered_envs[env]]
    assert len(keys) == len(set(keys))


def test_everything_optional_on_still_validates(render: Any) -> None:
    """Ingress, API HPA, KEDA with SASL and Redis ACL user, monitoring and extra egress, all at once."""
    values = {
        **MINIMAL_VALUES,
        "redis": {
            "host": "redis.example",
            "username": "app",
            "tls": True,
            "allowTo": {
                "cidrs": ["10.1.0.0/16"],
                "podSelector": {"app": "redis"},
                "namespaceSelector": {"team": "data"},
            },
        },
        "kafka": {"bootstrapServers": "k0:9093,k1:9093", "securityProtocol": "SASL_SSL", "saslUsername": "app"},
        "api": {
            "ingress": {"enabled": True, "host": "p.example.com", "tls": {"enabled": True}},
            "autoscaling": {"enabled": True},
            "service": {"type": "NodePort", "nodePort": 30080},
        },
        "autoscaling": {"keda": {"enabled": True, "fallbackReplicas": 2}},
        "metrics": {
            "serviceMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
            "grafanaDashboard": {"enabled": True},
        },
        "smtp": {
            "host": "smtp.example.com",
            "port": 465,
            "security": "tls",
            "username": "alerts",
            "allowTo": {"cidrs": ["203.0.113.25/32"], "podSelector": {"app": "relay"}, "namespaceSelector": {"n": "m"}},
        },
        "workers": {
            "pools": {
                "reporting": {
                    "extraEgress": [
                        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}], "ports": [{"port": 443}]}
                    ]
                }
            }
        },
    }
    objects = render(values=values)
    findings = [f for obj in objects for f in validate_object(obj) + baseline_violations(obj)]
    assert findings == []
    kinds = count_kinds(objects)
    for kind in ("Ingress", "ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"):
        assert kinds.get(kind), f"no {kind} rendered"


def test_print_objects_per_kind_per_environment(rendered_envs: dict[str, list[dict[str, Any]]], capsys: Any) -> None:
    counts = {env: count_kinds(objects) for env, objects in rendered_envs.items()}
    table = format_kind_counts(counts)
    with capsys.disabled():
        print("\n\nObjects per kind rendered by charts/pynomaly (helm-alone, environments/helm/<env>.values.yaml):")
        print(table)
    for env, kinds in counts.items():
        assert kinds["Deployment"] == 9, env  # api + 4 worker pools + 3 consumer pools + beat
        assert kinds["PodDisruptionBudget"] == kinds["Deployment"], env
