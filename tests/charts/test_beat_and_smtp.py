"""Beat as a singleton, SMTP settings and secrets, and SMTP egress only for the notification pools."""

from __future__ import annotations

from typing import Any

import pytest

from pynomaly.topology import Q_NOTIFICATIONS, TOPOLOGY
from tests.charts.chartlib import (
    ENVIRONMENTS,
    MINIMAL_VALUES,
    by_kind,
    component,
    container,
    deep_merge,
    pod_spec,
    pool,
)
from tests.support.k8s import baseline_violations, validate_object
from tools.helm import HelmError

pytestmark = pytest.mark.helm

NOTIFICATION_POOLS = {p.name for p in TOPOLOGY.worker_pools if Q_NOTIFICATIONS in p.queues}
SMTP = {
    "host": "smtp.example.com",
    "port": 587,
    "security": "starttls",
    "username": "alerts",
    "from": "pynomaly@example.com",
    "allowTo": {"cidrs": ["203.0.113.25/32"]},
}


def beat_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (beat,) = [d for d in by_kind(objects, "Deployment").values() if component(d) == "beat"]
    return beat


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_beat_is_a_singleton_with_a_heartbeat_probe(rendered_envs: Any, effective_values: Any, env: str) -> None:
    objects = rendered_envs[env]
    beat = beat_of(objects)
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    c = container(beat)
    assert c["command"] == ["pynomaly", "beat"]
    max_age = str(effective_values(env)["beat"]["heartbeatMaxAgeSeconds"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["exec"]["command"] == ["pynomaly", "healthcheck", "--max-age", max_age]
    # No autoscaler ever targets it, whatever the environment's autoscaling mode.
    name = beat["metadata"]["name"]
    targets = [
        o["spec"]["scaleTargetRef"]["name"] for o in objects if o["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")
    ]
    assert name not in targets
    (pdb,) = [p for p in by_kind(objects, "PodDisruptionBudget").values() if component(p) == "beat"]
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
        "selector": {"matchLabels": beat["spec"]["selector"]["matchLabels"]},
    }
    # Beat holds no webhook or SMTP credentials: it only schedules.
    names = {e["name"] for e in c["env"]}
    assert not {"PYNOMALY_WEBHOOK_SECRET", "PYNOMALY_SMTP_PASSWORD"} & names


@pytest.mark.parametrize("autoscaling", [{"keda": {"enabled": True}}, {"external": True}])
def test_beat_keeps_one_replica_under_any_autoscaling(render: Any, autoscaling: dict[str, Any]) -> None:
    objects = render(values=deep_merge(MINIMAL_VALUES, {"autoscaling": autoscaling}))
    assert beat_of(objects)["spec"]["replicas"] == 1


def test_beat_can_be_turned_off(render: Any) -> None:
    objects = render(values=deep_merge(MINIMAL_VALUES, {"beat": {"enabled": False}}))
    assert not [o for o in objects if component(o) == "beat"]


def test_smtp_settings_password_and_egress(render: Any) -> None:
    objects = render(values=deep_merge(MINIMAL_VALUES, {"smtp": SMTP}))
    assert [f for o in objects for f in validate_object(o) + baseline_violations(o)] == []
    (config,) = [c for c in by_kind(objects, "ConfigMap").values() if "PYNOMALY_SMTP_HOST" in c.get("data", {})]
    assert {k: v for k, v in config["data"].items() if k.startswith("PYNOMALY_SMTP_")} == {
        "PYNOMALY_SMTP_HOST": "smtp.example.com",
        "PYNOMALY_SMTP_PORT": "587",
        "PYNOMALY_SMTP_SECURITY": "starttls",
        "PYNOMALY_SMTP_USERNAME": "alerts",
        "PYNOMALY_SMTP_FROM": "pynomaly@example.com",
        "PYNOMALY_SMTP_TIMEOUT": "10",
    }
    # The password: from the Secret, only in the pools that deliver notifications.
    with_password = set()
    for deployment in by_kind(objects, "Deployment").values():
        env = {e["name"]: e for e in container(deployment)["env"]}
        if "PYNOMALY_SMTP_PASSWORD" in env:
            assert env["PYNOMALY_SMTP_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
                "name": "pynomaly-secrets",
                "key": "smtp-password",
            }
            with_password.add(pool(deployment))
    assert with_password == NOTIFICATION_POOLS
    # Egress to the SMTP server only: its CIDR, its port, only for those pools.
    smtp_policies = {n: p for n, p in by_kind(objects, "NetworkPolicy").items() if n.endswith("-smtp")}
    assert {pool(p) for p in smtp_policies.values()} == NOTIFICATION_POOLS
    for policy in smtp_policies.values():
        assert policy["spec"]["policyTypes"] == ["Egress"]
        assert policy["spec"]["egress"] == [
            {"ports": [{"port": 587, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "203.0.113.25/32"}}]}
        ]
        assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"
    ports = {
        port["port"]
        for name, policy in by_kind(objects, "NetworkPolicy").items()
        if not name.endswith("-smtp")
        for rule in policy["spec"].get("egress", [])
        for port in rule["ports"]
    }
    assert 587 not in ports, "no other policy opens the SMTP port"


def test_no_smtp_host_no_smtp_egress(rendered_envs: Any) -> None:
    for objects in rendered_envs.values():
        assert not [n for n in by_kind(objects, "NetworkPolicy") if n.endswith("-smtp")]
        for deployment in by_kind(objects, "Deployment").values():
            assert "PYNOMALY_SMTP_PASSWORD" not in {e["name"] for e in container(deployment)["env"]}


def test_chart_created_secret_holds_the_smtp_password(render: Any) -> None:
    values = {
        **{k: v for k, v in MINIMAL_VALUES.items() if k != "secrets"},
        "secrets": {
            "redisPassword": "r" * 24,
            "apiKeys": "k" * 32,
            "webhookSecret": "w" * 32,
            "smtpPassword": "p" * 20,
        },
        "smtp": SMTP,
    }
    objects = render(values=values)
    (secret,) = by_kind(objects, "Secret").values()
    assert "smtp-password" in secret["data"]
    assert "p" * 20 not in str([o for o in objects if o["kind"] != "Secret"]), "the SMTP password leaked"


def refused(render: Any, values: dict[str, Any]) -> str:
    with pytest.raises(HelmError) as info:
        render(values=values)
    return str(info.value)


def test_smtp_host_needs_an_egress_destination(render: Any) -> None:
    values = deep_merge(MINIMAL_VALUES, {"smtp": {"host": "smtp.example.com"}})
    assert "smtp.allowTo is required with smtp.host=smtp.example.com" in refused(render, values)
    # Without NetworkPolicies there is nothing to open.
    render(values=deep_merge(values, {"networkPolicy": {"enabled": False}}))


def test_smtp_user_needs_a_password(render: Any) -> None:
    values = {
        **{k: v for k, v in MINIMAL_VALUES.items() if k != "secrets"},
        "secrets": {"redisPassword": "r" * 24, "apiKeys": "k" * 32, "webhookSecret": "w" * 32},
        "smtp": SMTP,
    }
    message = refused(render, values)
    assert "smtp.username is set but there is no SMTP password" in message and "smtp-password" in message


def test_notification_queue_must_be_consumed(render: Any) -> None:
    values = deep_merge(MINIMAL_VALUES, {"workers": {"pools": {"reporting": {"queues": ["reports"]}}}})
    assert 'notifications.queue "notifications" is consumed by no worker pool' in refused(render, values)


def test_notification_queue_matches_the_topology(chart_values: dict[str, Any]) -> None:
    assert chart_values["notifications"]["queue"] == Q_NOTIFICATIONS


@pytest.mark.parametrize(
    ("override", "where"),
    [
        ({"smtp": {"security": "ssl"}}, "/smtp/security"),
        ({"smtp": {"passwd": "x"}}, "/smtp"),
        ({"beat": {"replicas": 2}}, "/beat"),
        ({"smtp": {"allowTo": {"cidrs": ["smtp.example.com"]}}}, "/smtp/allowTo/cidrs/0"),
    ],
)
def test_schema_rejects_bad_smtp_and_beat_values(render: Any, override: dict[str, Any], where: str) -> None:
    message = refused(render, deep_merge(MINIMAL_VALUES, override))
    assert "values don't meet the specifications of the schema" in message and where in message


def test_beat_pod_is_least_privilege(rendered_envs: Any) -> None:
    spec = pod_spec(beat_of(rendered_envs["onprem"]))
    assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
    assert spec["terminationGracePeriodSeconds"] == 30
