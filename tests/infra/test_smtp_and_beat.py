"""SMTP configuration and its Pulumi secret reach the chart; beat stays a singleton outside the autoscaler."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import mocked
from infra.config import ENVIRONMENTS, ConfigError, SmtpConfig, parse_config
from pynomaly.topology import Q_NOTIFICATIONS, TOPOLOGY
from tests.infra.conftest import chart_objects, named, run_env
from tests.support.k8s import baseline_violations, load_yaml_documents, validate_object

ROOT = Path(__file__).resolve().parents[2]
SMTP = {
    "host": "smtp.example.com",
    "port": 465,
    "security": "tls",
    "username": "alerts",
    "from": "alerts@example.com",
    "cidrs": ["203.0.113.25/32"],
}


def _raw(env: str, **extra: Any) -> dict[str, Any]:
    return {**{k.split(":", 1)[1]: v for k, v in mocked.stack_file(env).items()}, **extra}


def _chart_values(run: mocked.MockedRun) -> dict[str, Any]:
    (chart,) = run.by_type("kubernetes:helm.sh/v4:Chart")
    return mocked.manifest(chart)["values"]


def test_smtp_config_is_typed() -> None:
    cfg = parse_config(_raw("onprem", smtp=SMTP), "onprem", default_tag="0.1.0")
    assert cfg.smtp == SmtpConfig(
        host="smtp.example.com",
        port=465,
        security="tls",
        username="alerts",
        sender="alerts@example.com",
        timeout=10.0,
        cidrs=("203.0.113.25/32",),
    )
    assert parse_config(_raw("dev"), "dev", default_tag="0.1.0").smtp == SmtpConfig()


@pytest.mark.parametrize(
    ("smtp", "message"),
    [
        ({"security": "ssl"}, "pynomaly.smtp.security: must be one of none, starttls, tls"),
        ({"host": "smtp.example.com"}, "pynomaly.smtp.cidrs: required with smtp.host"),
        ({"host": "smtp.example.com", "cidrs": ["smtp.example.com"]}, "pynomaly.smtp.cidrs: must be a list of CIDRs"),
        ({"port": 0}, "pynomaly.smtp.port: must be between 1 and 65535"),
        ({"from": "nobody"}, "pynomaly.smtp.from: must be an e-mail address"),
        ({"password": "x"}, "pynomaly.smtp.password: unknown key"),
    ],
)
def test_bad_smtp_config_is_named(smtp: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(_raw("onprem", smtp=smtp), "onprem", default_tag="0.1.0")
    assert message in str(exc.value)


def test_smtp_password_is_a_secret_and_required_with_a_user() -> None:
    config = {**mocked.stack_file("dev"), "pynomaly:smtp": SMTP}
    with pytest.raises(ConfigError, match="smtpPassword: required"):
        mocked.run("dev", config=config)
    with pytest.raises(ConfigError, match="smtpPassword: is a secret"):
        mocked.run("dev", config={**config, "pynomaly:smtpPassword": "plain"})


def test_smtp_reaches_the_chart_with_its_password_in_the_app_secret() -> None:
    run = mocked.run(
        "dev", config={**mocked.stack_file("dev"), "pynomaly:smtp": SMTP}, secrets={"smtpPassword": "mail-pw"}
    )
    values = _chart_values(run)
    assert values["smtp"] == {
        "host": "smtp.example.com",
        "port": 465,
        "security": "tls",
        "username": "alerts",
        "from": "alerts@example.com",
        "timeout": 10.0,
        "allowTo": {"cidrs": ["203.0.113.25/32"], "podSelector": {}, "namespaceSelector": {}},
    }
    assert values["notifications"] == {"queue": Q_NOTIFICATIONS}
    (secret,) = [r for r in run.by_type("kubernetes:core/v1:Secret") if r.name == "app-secret"]
    assert mocked.is_secret_input(secret.inputs["stringData"])
    assert named(run, "Secret", "pynomaly-app")["stringData"]["smtp-password"] == "mail-pw"
    assert "mail-pw" not in yaml.safe_dump(values)


def test_without_smtp_the_secret_key_exists_but_is_empty(env_run: mocked.MockedRun) -> None:
    app_secret = named(env_run, "Secret", "pynomaly-app")["stringData"]
    assert app_secret["smtp-password"] == ""
    assert _chart_values(env_run)["smtp"]["host"] == ""


@pytest.mark.helm
@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_beat_is_never_an_autoscaling_target(env: str) -> None:
    assert _chart_values(run_env(env))["beat"] == {"enabled": True}
    targets = {
        o["spec"]["scaleTargetRef"]["name"]
        for o in chart_objects(env)
        if o["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")
    }
    assert targets and "pynomaly-beat" not in targets
    assert targets <= {f"pynomaly-worker-{p.name}" for p in TOPOLOGY.worker_pools} | {
        f"pynomaly-consumer-{g.pool}" for g in TOPOLOGY.consumer_groups
    } | {"pynomaly-api"}


@pytest.mark.helm
def test_chart_renders_beat_and_smtp_egress_with_the_program_values(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    import helm as helm_tool  # tools/helm.py

    run = mocked.run(
        "onprem", config={**mocked.stack_file("onprem"), "pynomaly:smtp": SMTP}, secrets={"smtpPassword": "mail-pw"}
    )
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(_chart_values(run)))
    objects = load_yaml_documents(helm_tool.template_chart([values_file], namespace="pynomaly"))
    assert [f for o in objects for f in validate_object(o) + baseline_violations(o)] == []
    (beat,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "pynomaly-beat"]
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"] == {"type": "Recreate"}
    smtp_policies = [o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"].endswith("-smtp")]
    pools = {p.name for p in TOPOLOGY.worker_pools if Q_NOTIFICATIONS in p.queues}
    assert {p["metadata"]["name"] for p in smtp_policies} == {f"pynomaly-worker-{p}-smtp" for p in pools}
    for policy in smtp_policies:
        assert policy["spec"]["egress"] == [
            {"ports": [{"port": 465, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "203.0.113.25/32"}}]}
        ]
