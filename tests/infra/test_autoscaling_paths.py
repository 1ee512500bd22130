"""One autoscaling implementation: ``pulumi up`` and ``helm install`` make the same autoscalers.

The chart's templates (``scaledobject.yaml``, ``triggerauthentication.yaml``, ``hpa.yaml``) are the
only source of ScaledObjects, TriggerAuthentications and HPAs.  The Pulumi program passes the stack's
``autoscaling`` config to the chart as values and declares the autoscalers the chart renders (through a
helm v3 Chart, which these mocks expand with the real helm binary; the rest of the chart goes through a
Helm v4 Chart with ``autoscaling.external``).  For every environment this compares:

- Pulumi: the autoscaling objects the program declares;
- helm alone: ``environments/helm/<env>.values.yaml`` with the same environment facts set the way a
  helm user sets them (the chart's documented keys, written here from the stack config, not taken from
  the program's values),

and requires the same objects, spec by spec; and the program's Helm v4 Chart renders none of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from infra import mocked
from infra.config import ENVIRONMENTS
from pynomaly.topology import TOPOLOGY
from tests.charts.chartlib import env_values_path
from tests.infra.conftest import chart_objects, run_env
from tests.support.k8s import load_yaml_documents
from tools.helm import template_chart

pytestmark = pytest.mark.helm

AUTOSCALERS = ("ScaledObject", "TriggerAuthentication", "HorizontalPodAutoscaler")


def _autoscalers(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Pool autoscalers and their authentications by (kind, name); the API's own HPA is not a pool's."""
    return {
        (o["kind"], o["metadata"]["name"]): o["spec"]
        for o in objects
        if o["kind"] in AUTOSCALERS and o["spec"].get("scaleTargetRef", {}).get("name") != "pynomaly-api"
    }


def _helm_user_values(env: str) -> dict[str, Any]:
    """The stack's autoscaling and connection facts as a helm-alone user would set them."""
    run = run_env(env)
    cfg, kafka = run.deployment.config, run.deployment.kafka
    scaling = cfg.autoscaling
    redis_host, redis_port = run.outputs["redisEndpoint"].rsplit(":", 1)

    def low(minimum: int, batch: bool) -> int:
        return 0 if (batch and scaling.keda and scaling.scale_to_zero_batch) else max(1, minimum)

    workers = {
        p.name: {
            "minReplicas": low(scaling.workers[p.name].min_replicas, p.batch),
            "maxReplicas": scaling.workers[p.name].max_replicas,
            "listLength": scaling.workers[p.name].target,
        }
        for p in TOPOLOGY.worker_pools
    }
    consumers = {
        g.pool: {
            "minReplicas": low(scaling.consumers[g.pool].min_replicas, False),
            "maxReplicas": min(scaling.consumers[g.pool].max_replicas, TOPOLOGY.max_partitions(g)),
            "lagThreshold": scaling.consumers[g.pool].target,
        }
        for g in TOPOLOGY.consumer_groups
    }
    return {
        "redis": {"host": redis_host, "port": int(redis_port), "tls": run.deployment.redis.tls},
        "kafka": {
            "bootstrapServers": run.outputs["kafkaBootstrapServers"],
            "securityProtocol": kafka.security_protocol,
            "saslMechanism": kafka.sasl_mechanism or "SCRAM-SHA-512",
            "saslUsername": kafka.username,
            "version": cfg.kafka.version,
        },
        "secrets": {"existingSecret": run.outputs["appSecretName"]},
        "autoscaling": {
            "keda": {
                "enabled": scaling.keda,
                "pollingInterval": scaling.polling_interval,
                "cooldownPeriod": scaling.cooldown_period,
                "fallbackReplicas": scaling.fallback_replicas,
                "kafkaCaSecret": cfg.kafka.tls_secret or "",
            },
            "hpa": {
                "enabled": not scaling.keda,
                "targetCPUUtilizationPercentage": scaling.cpu_utilization,
                "targetMemoryUtilizationPercentage": scaling.memory_utilization or 0,
            },
        },
        "workers": {"pools": workers},
        "consumers": {"pools": consumers},
    }


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_pulumi_and_helm_alone_make_the_same_autoscalers(env: str, tmp_path: Path) -> None:
    run = run_env(env)
    (app_chart,) = run.by_type("kubernetes:helm.sh/v4:Chart")
    assert mocked.manifest(app_chart)["values"]["autoscaling"]["external"] is True  # no second set of autoscalers

    overrides = tmp_path / "stack.json"
    overrides.write_text(json.dumps(_helm_user_values(env)))
    helm_alone = _autoscalers(
        load_yaml_documents(
            template_chart([env_values_path(env), overrides], namespace=run.deployment.config.kubernetes.namespace)
        )
    )
    pulumi_path = _autoscalers(run.objects())
    assert pulumi_path == _autoscalers(chart_objects(env))  # exactly the chart's, with the program's values

    kind = "ScaledObject" if run.deployment.config.autoscaling.keda else "HorizontalPodAutoscaler"
    pools = {f"pynomaly-worker-{p.name}" for p in TOPOLOGY.worker_pools} | {
        f"pynomaly-consumer-{g.pool}" for g in TOPOLOGY.consumer_groups
    }
    assert {name for k, name in pulumi_path if k == kind} == pools  # every pool, one autoscaler each
    assert sorted(helm_alone) == sorted(pulumi_path)
    for key, spec in pulumi_path.items():
        assert helm_alone[key] == spec, f"{env} {key[0]}/{key[1]} differs between helm alone and pulumi"
