"""Render-time guards: invalid combinations fail `helm template` with a message that says what to fix."""

from __future__ import annotations

from typing import Any

import pytest

from tests.charts.chartlib import MINIMAL_VALUES, by_kind, deep_merge
from tools.helm import HelmError

pytestmark = pytest.mark.helm


def refused(render: Any, values: dict[str, Any]) -> str:
    with pytest.raises(HelmError) as info:
        render(values=values)
    return str(info.value)


def with_minimal(**override: Any) -> dict[str, Any]:
    return deep_merge(MINIMAL_VALUES, override)


def test_minimal_values_render(render: Any) -> None:
    assert by_kind(render(values=MINIMAL_VALUES), "Deployment")


def test_keda_and_hpa_together_are_refused(render: Any) -> None:
    message = refused(render, with_minimal(autoscaling={"keda": {"enabled": True}, "hpa": {"enabled": True}}))
    assert "autoscaling.keda.enabled and autoscaling.hpa.enabled are both true: choose one" in message


@pytest.mark.parametrize("mode", ["keda", "hpa"])
def test_external_autoscaling_excludes_the_chart_autoscalers(render: Any, mode: str) -> None:
    message = refused(render, with_minimal(autoscaling={"external": True, mode: {"enabled": True}}))
    assert "autoscaling.external is true" in message


def test_external_autoscaling_leaves_pool_replicas_unset(render: Any) -> None:
    objects = render(values=with_minimal(autoscaling={"external": True}))
    assert not by_kind(objects, "ScaledObject") and not by_kind(objects, "HorizontalPodAutoscaler")
    for name, deployment in by_kind(objects, "Deployment").items():
        # The API has its own switch; beat is a singleton no autoscaler ever drives.
        assert ("replicas" in deployment["spec"]) == name.endswith(("-api", "-beat")), name


@pytest.mark.parametrize("mode", ["keda", "hpa"])
def test_worker_min_above_max_is_refused(render: Any, mode: str) -> None:
    values = with_minimal(
        autoscaling={mode: {"enabled": True}},
        workers={"pools": {"detection": {"minReplicas": 5, "maxReplicas": 2}}},
    )
    assert "workers.pools.detection: minReplicas (5) > maxReplicas (2)" in refused(render, values)


def test_consumer_min_above_max_is_refused(render: Any) -> None:
    values = with_minimal(
        autoscaling={"keda": {"enabled": True}}, consumers={"pools": {"audit": {"minReplicas": 3, "maxReplicas": 2}}}
    )
    assert "consumers.pools.audit: minReplicas (3) > maxReplicas (2)" in refused(render, values)


def test_api_min_above_max_is_refused(render: Any) -> None:
    values = with_minimal(api={"autoscaling": {"enabled": True, "minReplicas": 4, "maxReplicas": 3}})
    assert "api.autoscaling: minReplicas (4) > maxReplicas (3)" in refused(render, values)


def test_consumer_max_above_partitions_is_refused(render: Any) -> None:
    # bridge reads topics with 2, 3 and 1 partitions: at most 3 consumers do useful work.
    values = with_minimal(consumers={"pools": {"bridge": {"maxReplicas": 4}}})
    message = refused(render, values)
    assert "consumers.pools.bridge: maxReplicas (4) exceeds the largest partition count of its topics (3)" in message


def test_fixed_consumer_replicas_above_partitions_are_refused(render: Any) -> None:
    values = with_minimal(consumers={"pools": {"bridge": {"replicas": 4}}})
    assert "consumers.pools.bridge: replicas (4) exceeds the largest partition count" in refused(render, values)


def test_hpa_cannot_scale_to_zero(render: Any) -> None:
    # The chart defaults let batch pools scale to zero (KEDA); an HPA cannot.
    message = refused(render, with_minimal(autoscaling={"hpa": {"enabled": True}}))
    assert "minReplicas 0 needs KEDA" in message


def test_no_secret_is_refused(render: Any) -> None:
    values = {k: v for k, v in MINIMAL_VALUES.items() if k != "secrets"}
    message = refused(render, values)
    assert "no credentials: set secrets.existingSecret" in message
    assert "secrets.redisPassword, secrets.apiKeys, secrets.webhookSecret" in message
    assert "there are no default passwords" in message


def test_partial_secret_values_name_what_is_missing(render: Any) -> None:
    values = {**{k: v for k, v in MINIMAL_VALUES.items() if k != "secrets"}, "secrets": {"redisPassword": "x" * 24}}
    message = refused(render, values)
    assert "set secrets.apiKeys, secrets.webhookSecret" in message
    assert "secrets.redisPassword" not in message.split("or set", 1)[1]


def test_sasl_needs_a_kafka_password_without_existing_secret(render: Any) -> None:
    values = {
        **{k: v for k, v in MINIMAL_VALUES.items() if k != "secrets"},
        "secrets": {"redisPassword": "r" * 24, "apiKeys": "k" * 32, "webhookSecret": "w" * 32},
        "kafka": {"bootstrapServers": "k:9092", "securityProtocol": "SASL_SSL", "saslUsername": "app"},
    }
    assert "or set secrets.kafkaSaslPassword" in refused(render, values)


def test_sasl_needs_a_user_name(render: Any) -> None:
    values = with_minimal(kafka={"securityProtocol": "SASL_PLAINTEXT"})
    assert "kafka.saslUsername is required with kafka.securityProtocol=SASL_PLAINTEXT" in refused(render, values)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"redis": {"host": ""}}, "redis.host is required"),
        ({"kafka": {"bootstrapServers": ""}}, "kafka.bootstrapServers is required"),
        ({"kafka": {"bootstrapServers": "kafka"}}, 'kafka.bootstrapServers: "kafka" is not host:port'),
        ({"settings": {"taskSoftTimeLimit": 3600}}, "settings.taskSoftTimeLimit (3600) must be below"),
        (
            {"settings": {"jobDataTtlSeconds": 604801}},
            "settings.jobDataTtlSeconds (604801) must not exceed settings.resultTtlSeconds (604800)",
        ),
        ({"api": {"ingress": {"enabled": True}}}, "api.ingress.host is required"),
    ],
)
def test_other_guards(render: Any, override: dict[str, Any], message: str) -> None:
    assert message in refused(render, deep_merge(MINIMAL_VALUES, override))


def test_chart_created_secret_holds_the_values(render: Any) -> None:
    values = {
        **{k: v for k, v in MINIMAL_VALUES.items() if k != "secrets"},
        "secrets": {"redisPassword": "r" * 24, "apiKeys": "k" * 32, "webhookSecret": "w" * 32},
    }
    objects = render(values=values)
    (secret,) = by_kind(objects, "Secret").values()
    assert sorted(secret["data"]) == ["api-keys", "redis-password", "webhook-secret"]
    plain = [o for o in objects if o["kind"] != "Secret"]
    assert "r" * 24 not in str(plain), "the Redis password leaked outside the Secret"
