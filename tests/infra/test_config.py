"""Stack configuration: typed, validated once, clear errors before any resource is declared."""

from __future__ import annotations

from typing import Any

import pytest

from infra import generated, mocked
from infra.config import ENVIRONMENTS, ConfigError, parse_config
from tests.infra.conftest import kinds, named


def _raw(env: str) -> dict[str, Any]:
    return {k.split(":", 1)[1]: v for k, v in mocked.stack_file(env).items()}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_stack_files_parse_and_hold_no_plain_secrets(env: str) -> None:
    raw = mocked.stack_file(env)
    assert all(k.startswith("pynomaly:") for k in raw)
    cfg = parse_config(_raw(env), env, default_tag="1.2.3")
    assert cfg.environment == env and cfg.image.tag == "1.2.3"
    text = (mocked.ENV_DIR / f"Pulumi.{env}.yaml").read_text()
    assert "secure:" not in text  # nothing to decrypt: absent secrets are generated
    for key in ("redisPassword", "kafkaPassword", "apiKeys", "webhookSecret", "redisUrl"):
        assert f"pynomaly:{key}:" not in text.replace("# ", "")


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"redis": {"mode": "cluster"}}, "pynomaly.redis.mode: must be one of standalone, sentinel, external"),
        ({"redis": {"mode": "sentinel", "replicas": 2}}, "sentinel mode needs at least 3 replicas"),
        ({"redis": {"maxmemroy": "1gb"}}, "pynomaly.redis.maxmemroy: unknown key"),
        ({"redis": {"maxmemory": "0"}}, "pynomaly.redis.maxmemory: must be a Redis size above 0 like 256mb, got '0'"),
        ({"kafka": {"brokers": 0}}, "pynomaly.kafka.brokers: must be between 1 and 15"),
        ({"kafka": {"controllers": 2}}, "pynomaly.kafka.controllers: must be 0, 1, 3 or 5"),
        ({"kafka": {"image": "apache/kafka:latest"}}, "must not use the 'latest' tag"),
        ({"kafka": {"image": "apache/kafka"}}, "must be repository:tag with a pinned tag"),
        ({"kafka": {"mode": "external"}}, "kafka.external.bootstrapServers: required"),
        ({"image": {"tag": "latest"}}, "pynomaly.image.tag: must not be 'latest'"),
        ({"expose": {"mode": "ingress", "host": None}}, "pynomaly.expose.host: required when expose.mode is ingress"),
        ({"autoscaling": {"workers": {"detection": {"min": 5, "max": 2}}}}, "detection: min (5) is above max (2)"),
        ({"autoscaling": {"consumers": {"bridge": {"max": 9}}}}, "above the 3 partition(s)"),
        ({"autoscaling": {"cooldownPeriod": "soon"}}, "pynomaly.autoscaling.cooldownPeriod: must be int"),
        ({"app": {"taskSoftTimeLimit": 4000}}, "taskSoftTimeLimit: must be below taskTimeLimit"),
        ({"kubernetes": {"namespace": "Pynomaly_Prod"}}, "pynomaly.kubernetes.namespace: must be a DNS-1123 label"),
        ({"surprise": True}, "pynomaly.surprise: unknown key"),
        ({"redisPassword": "hunter2"}, "pynomaly:redisPassword: is a secret"),
    ],
)
def test_bad_values_fail_with_the_key_named(patch: dict[str, Any], message: str) -> None:
    raw = _raw("onprem")
    for key, value in patch.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    with pytest.raises(ConfigError) as exc:
        parse_config(raw, "onprem", default_tag="0.1.0")
    assert message in str(exc.value)


def test_all_problems_are_reported_at_once() -> None:
    raw = {**_raw("dev"), "redis": {"mode": "nope"}, "kafka": {"brokers": -1}, "extra": 1}
    with pytest.raises(ConfigError) as exc:
        parse_config(raw, "dev", default_tag="0.1.0")
    assert len(exc.value.problems) == 3


def test_a_plain_secret_in_the_stack_fails_before_any_resource() -> None:
    config = {**mocked.stack_file("dev"), "pynomaly:apiKeys": "plain-text-key"}
    with pytest.raises(ConfigError, match="apiKeys: is a secret; set it with `pulumi config set --secret"):
        mocked.run("dev", config=config)


def test_configured_secrets_replace_the_generated_ones() -> None:
    run = mocked.run("dev", secrets={"redisPassword": "s3cretRedis", "apiKeys": "k1,k2"})
    made = {r.name for r in run.by_type(generated.TYPE)}
    assert "redis-password" not in made and "app-api-key" not in made
    app = named(run, "Secret", "pynomaly-app")["stringData"]
    assert app["redis-password"] == "s3cretRedis" and app["api-keys"] == "k1\nk2\n"
    assert "apiKey" in run.secret_outputs


def test_external_redis_and_kafka_deploy_nothing_of_their_own() -> None:
    config = mocked.stack_file("cloud")
    config["pynomaly:redis"] = {"mode": "external", "tls": True}
    config["pynomaly:kafka"] = {
        "mode": "external",
        "version": "3.9.0",
        "external": {"bootstrapServers": "b-1.kafka.example:9096,b-2.kafka.example:9096", "username": "pynomaly"},
    }
    with pytest.raises(ConfigError, match="redisUrl: required"):
        mocked.run("cloud", config=config, secrets={"kafkaPassword": "k"})
    run = mocked.run(
        "cloud",
        config=config,
        secrets={
            "redisUrl": "rediss://:pw@redis.example:6380/0",
            "kafkaPassword": "kafka-pw",
            **mocked.operator_secrets("cloud"),
        },
    )
    assert kinds(run, "StatefulSet") == [] and kinds(run, "Job") == []
    assert named(run, "Secret", "pynomaly-redis-auth")["stringData"]["address"] == "redis.example:6380"
    client = named(run, "Secret", "pynomaly-kafka-client")["stringData"]
    assert client["security-protocol"] == "SASL_SSL" and client["password"] == "kafka-pw"
    (chart,) = run.by_type("kubernetes:helm.sh/v4:Chart")
    values = mocked.manifest(chart)["values"]
    # What the chart's KEDA scalers connect with (tests/infra/test_autoscaling_paths.py renders them).
    assert values["kafka"]["version"] == "3.9.0" and values["kafka"]["bootstrapServers"].startswith("b-1.kafka")
    assert values["kafka"]["securityProtocol"] == "SASL_SSL" and values["autoscaling"]["keda"]["kafkaCaSecret"] == ""
    assert values["redis"] | {"allowTo": None} == {
        "host": "redis.example",
        "port": 6380,
        "db": 0,
        "tls": True,
        "allowTo": None,
    }
    assert run.outputs["redisEndpoint"] == "redis.example:6380"
