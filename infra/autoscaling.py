"""Worker and consumer autoscaling: KEDA ScaledObjects, or plain CPU/memory HPAs without KEDA.

- One ScaledObject per Celery worker pool.  Celery's Redis transport keeps each priority step of a
  queue in its own list, and KEDA combines several triggers by *max*, so there is one ``redis``
  trigger per priority list of every queue the pool consumes (``Queue.redis_lists()``) and
  ``advanced.scalingModifiers.formula`` sums them.  List length misses reserved/unacked tasks; with
  prefetch 1 that is at most one task per worker process.
- One ScaledObject per Kafka consumer pool on the consumer group's lag, ``version`` set explicitly
  (KEDA's client defaults to 1.0.0, which Kafka 4 rejects), ``maxReplicaCount`` capped at the
  partition count (more consumers of a group would idle).
- TriggerAuthentications read the Redis password and the Kafka SASL settings from the Secrets the
  Redis and Kafka components wrote.
- ``batch`` pools scale to zero when the environment allows it; every other pool keeps ``min``.
- Without KEDA: an autoscaling/v2 HPA per target on CPU (and memory when configured).  Never both
  on one target; the chart's own autoscaling is switched off by the Application component.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

from infra import k8s as kx
from infra.config import AutoscalingConfig, PoolScaling
from pynomaly.topology import Topology

KEDA_API = "keda.sh/v1alpha1"


@dataclass(frozen=True)
class Target:
    """One Deployment the chart creates and this component scales."""

    kind: str  # "worker" | "consumer"
    pool: str
    deployment: str
    scaling: PoolScaling
    scale_to_zero: bool = False


@dataclass(frozen=True)
class AutoscalingArgs:
    config: AutoscalingConfig
    namespace: pulumi.Input[str]
    topology: Topology
    deployment_name: Callable[[str, str], str]  # (kind, pool) -> Deployment name in the chart
    redis_address: pulumi.Input[str]
    redis_secret_name: pulumi.Input[str]
    redis_password_key: str
    redis_tls: bool
    kafka_bootstrap_servers: pulumi.Input[str]
    kafka_secret_name: pulumi.Input[str]
    kafka_keys: dict[str, str]  # KEDA parameter -> key in the Kafka client Secret
    kafka_version: str
    kafka_ca_secret: str | None = None  # Secret with ca.crt when the Kafka listener uses TLS
    name: str = "pynomaly"
    labels: dict[str, str] = field(default_factory=dict)


def trigger_name(list_name: str) -> str:
    """A Redis list name as an identifier KEDA's formula language accepts."""
    return re.sub(r"[^A-Za-z0-9_]", "_", list_name)


class Autoscaling(pulumi.ComponentResource):
    """Outputs: ``mode`` (keda | hpa), ``targets`` (Target per scaled Deployment), ``object_names``."""

    mode: str
    targets: list[Target]
    object_names: dict[str, str]

    def __init__(self, name: str, args: AutoscalingArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("pynomaly:infra:Autoscaling", name, None, opts)
        self._args = args
        cfg = args.config
        self.mode = "keda" if cfg.keda else "hpa"
        self.objects: list[pulumi.Resource] = []
        self.object_names = {}
        self.targets = targets(args)

        if cfg.keda:
            redis_auth, kafka_auth = self._trigger_authentications(name)
            for target in self.targets:
                if target.kind == "worker":
                    self._worker_scaled_object(name, target, redis_auth)
                else:
                    self._consumer_scaled_object(name, target, kafka_auth)
        else:
            for target in self.targets:
                self._hpa(name, target)
        self.register_outputs({"mode": self.mode, "object_names": self.object_names})

    # -- KEDA ---------------------------------------------------------------------------------------

    def _trigger_authentications(self, name: str) -> tuple[str, str]:
        args = self._args
        lbls = kx.labels(args.name, "autoscaling", args.labels)
        redis_name = f"{args.name}-redis"
        kafka_name = f"{args.name}-kafka"
        redis = k8s.apiextensions.CustomResource(
            f"{name}-redis-auth",
            api_version=KEDA_API, kind="TriggerAuthentication",
            metadata=kx.meta(redis_name, args.namespace, lbls),
            spec={"secretTargetRef": [
                {"parameter": "password", "name": args.redis_secret_name, "key": args.redis_password_key}]},
            opts=kx.child(self),
        )
        kafka_refs = [{"parameter": p, "name": args.kafka_secret_name, "key": k} for p, k in args.kafka_keys.items()]
        if args.kafka_ca_secret:
            kafka_refs.append({"parameter": "ca", "name": args.kafka_ca_secret, "key": "ca.crt"})
        kafka = k8s.apiextensions.CustomResource(
            f"{name}-kafka-auth",
            api_version=KEDA_API, kind="TriggerAuthentication",
            metadata=kx.meta(kafka_name, args.namespace, lbls),
            spec={"secretTargetRef": kafka_refs},
            opts=kx.child(self),
        )
        self.objects += [redis, kafka]
        return redis_name, kafka_name

    def _common_spec(self, target: Target) -> dict:
        cfg = self._args.config
        return {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target.deployment},
            "pollingInterval": cfg.polling_interval,
            "cooldownPeriod": cfg.cooldown_period,
            "minReplicaCount": 0 if target.scale_to_zero else max(1, target.scaling.min_replicas),
            "maxReplicaCount": target.scaling.max_replicas,
            # cooldownPeriod only governs the last replica (to zero); below max the HPA's scale-down
            # window does: the same wait for both, so "cooldown" means one thing.
            "advanced": {"horizontalPodAutoscalerConfig": {
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": cfg.cooldown_period}}}},
        }

    def _worker_scaled_object(self, name: str, target: Target, auth: str) -> None:
        args = self._args
        pool = args.topology.worker_pool(target.pool)
        lists = [lst for q in pool.queues for lst in args.topology.queue(q).redis_lists()]
        triggers = [
            {
                "type": "redis",
                "name": trigger_name(lst),
                "metadata": {
                    "address": args.redis_address,
                    "listName": lst,
                    "listLength": str(target.scaling.target),
                    "databaseIndex": "0",
                    "enableTLS": "true" if args.redis_tls else "false",
                },
                "authenticationRef": {"name": auth},
            }
            for lst in lists
        ]
        spec = self._common_spec(target)
        spec["advanced"]["scalingModifiers"] = {
            # KEDA takes the max over triggers; the backlog of a pool is the sum of its lists.
            "formula": " + ".join(str(t["name"]) for t in triggers),
            "target": str(target.scaling.target),
            "activationTarget": "0",
            "metricType": "AverageValue",
        }
        spec["triggers"] = triggers
        self._scaled_object(name, target, spec)

    def _consumer_scaled_object(self, name: str, target: Target, auth: str) -> None:
        args = self._args
        group = next(g for g in args.topology.consumer_groups if g.pool == target.pool)
        spec = self._common_spec(target)
        spec["triggers"] = [{
            "type": "kafka",
            "name": "lag",
            "metadata": {
                "bootstrapServers": args.kafka_bootstrap_servers,
                "consumerGroup": group.name,
                # No topic: the lag of every topic the group consumes (it consumes several).
                "lagThreshold": str(target.scaling.target),
                "activationLagThreshold": "0",
                "offsetResetPolicy": "earliest",
                "allowIdleConsumers": "false",
                "version": args.kafka_version,
            },
            "authenticationRef": {"name": auth},
        }]
        self._scaled_object(name, target, spec)

    def _scaled_object(self, name: str, target: Target, spec: dict) -> None:
        args = self._args
        obj = k8s.apiextensions.CustomResource(
            f"{name}-{target.kind}-{target.pool}",
            api_version=KEDA_API, kind="ScaledObject",
            metadata=kx.meta(target.deployment, args.namespace,
                             kx.labels(args.name, f"{target.kind}-autoscaling", args.labels)),
            spec=spec,
            opts=kx.child(self),
        )
        self.objects.append(obj)
        self.object_names[target.deployment] = f"ScaledObject/{target.deployment}"

    # -- HPA fallback -------------------------------------------------------------------------------

    def _hpa(self, name: str, target: Target) -> None:
        args, cfg = self._args, self._args.config
        metrics = [k8s.autoscaling.v2.MetricSpecArgs(
            type="Resource",
            resource=k8s.autoscaling.v2.ResourceMetricSourceArgs(
                name="cpu", target=k8s.autoscaling.v2.MetricTargetArgs(
                    type="Utilization", average_utilization=cfg.cpu_utilization)))]
        if cfg.memory_utilization:
            metrics.append(k8s.autoscaling.v2.MetricSpecArgs(
                type="Resource",
                resource=k8s.autoscaling.v2.ResourceMetricSourceArgs(
                    name="memory", target=k8s.autoscaling.v2.MetricTargetArgs(
                        type="Utilization", average_utilization=cfg.memory_utilization))))
        hpa = k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{name}-{target.kind}-{target.pool}",
            metadata=kx.meta(target.deployment, args.namespace,
                             kx.labels(args.name, f"{target.kind}-autoscaling", args.labels)),
            spec=k8s.autoscaling.v2.HorizontalPodAutoscalerSpecArgs(
                scale_target_ref=k8s.autoscaling.v2.CrossVersionObjectReferenceArgs(
                    api_version="apps/v1", kind="Deployment", name=target.deployment),
                min_replicas=max(1, target.scaling.min_replicas),
                max_replicas=target.scaling.max_replicas,
                metrics=metrics,
                behavior=k8s.autoscaling.v2.HorizontalPodAutoscalerBehaviorArgs(
                    scale_down=k8s.autoscaling.v2.HPAScalingRulesArgs(stabilization_window_seconds=300)),
            ),
            opts=kx.child(self),
        )
        self.objects.append(hpa)
        self.object_names[target.deployment] = f"HorizontalPodAutoscaler/{target.deployment}"


def targets(args: AutoscalingArgs) -> list[Target]:
    """Every Deployment this component scales, with its per-environment scaling."""
    cfg, topo = args.config, args.topology
    result = []
    for pool in topo.worker_pools:
        scaling = cfg.workers[pool.name]
        result.append(Target(
            "worker", pool.name, args.deployment_name("worker", pool.name), scaling,
            scale_to_zero=cfg.keda and pool.batch and cfg.scale_to_zero_batch))
    for group in topo.consumer_groups:
        scaling = cfg.consumers[group.pool]
        capped = PoolScaling(scaling.min_replicas, min(scaling.max_replicas, topo.max_partitions(group)),
                             scaling.target)
        result.append(Target("consumer", group.pool, args.deployment_name("consumer", group.pool), capped))
    return result
