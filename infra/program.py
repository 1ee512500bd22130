"""The Pulumi program: provider, namespace, then one component per concern.

``__main__.py`` calls :func:`main`; tests and ``tools/render.py`` call :func:`build` with a config
they loaded themselves, under Pulumi mocks.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra import config as stack_config
from infra import k8s as kx
from infra.application import Application, ApplicationArgs
from infra.config import StackConfig
from infra.kafka_cluster import Kafka, KafkaArgs
from infra.redis_ha import Redis, RedisArgs
from pynomaly.topology import TOPOLOGY

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "pynomaly"


def app_version() -> str:
    """The application package version: the image tag the stacks deploy by default."""
    with (ROOT / "app" / "pyproject.toml").open("rb") as fh:
        return str(tomllib.load(fh)["project"]["version"])


@dataclass
class Deployment:
    config: StackConfig
    provider: k8s.Provider
    namespace: k8s.core.v1.Namespace
    redis: Redis
    kafka: Kafka
    application: Application
    outputs: dict[str, Any]


def provider_args(cfg: StackConfig) -> dict[str, Any]:
    kubeconfig = cfg.kubernetes.kubeconfig
    if kubeconfig and "\n" not in kubeconfig:
        # A path: the provider takes the file's contents (or a path), expand ~ for the user.
        kubeconfig = os.path.expanduser(kubeconfig)
    args: dict[str, Any] = {
        "kubeconfig": kubeconfig,
        "context": cfg.kubernetes.context,
        "namespace": cfg.kubernetes.namespace,
        "enable_server_side_apply": True,
    }
    if cfg.kubernetes.render_yaml_to_directory:
        # Render mode (no cluster): the provider writes every manifest under this folder.
        args["render_yaml_to_directory"] = os.path.expanduser(cfg.kubernetes.render_yaml_to_directory)
    return args


def build(cfg: StackConfig) -> Deployment:
    provider = k8s.Provider(f"{cfg.environment}-cluster", **provider_args(cfg))
    on_cluster = pulumi.ResourceOptions(provider=provider)
    ns_name = cfg.kubernetes.namespace
    namespace = k8s.core.v1.Namespace(
        "namespace",
        metadata=k8s.meta.v1.ObjectMetaArgs(
            name=ns_name,
            labels={
                **cfg.labels,
                "app.kubernetes.io/part-of": kx.PART_OF,
                "app.kubernetes.io/managed-by": kx.MANAGED_BY,
                "pynomaly.io/environment": cfg.environment,
                # Everything here satisfies the 'restricted' Pod Security Standard: enforce it.
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            },
        ),
        opts=on_cluster,
    )
    ns = namespace.metadata.name
    in_ns = pulumi.ResourceOptions(provider=provider, depends_on=[namespace])

    # KEDA's operator reads Redis list lengths and Kafka consumer lag: its namespace may connect to both.
    scaler_namespace = cfg.autoscaling.keda_namespace if cfg.autoscaling.keda else None
    redis = Redis(
        "redis",
        RedisArgs(
            config=cfg.redis,
            namespace=ns,
            password=cfg.secrets.redis_password,
            external_url=cfg.secrets.redis_url,
            labels=dict(cfg.labels),
            scaler_namespace=scaler_namespace,
        ),
        opts=in_ns,
    )
    kafka = Kafka(
        "kafka",
        KafkaArgs(
            config=cfg.kafka,
            namespace=ns,
            topology=TOPOLOGY,
            password=cfg.secrets.kafka_password,
            admin_password=cfg.secrets.kafka_admin_password,
            labels=dict(cfg.labels),
            scaler_namespace=scaler_namespace,
        ),
        opts=in_ns,
    )
    application = Application(
        "app",
        ApplicationArgs(
            stack=cfg,
            namespace=ns,
            chart_path=str(CHART),
            topology=TOPOLOGY,
            redis=redis,
            kafka=kafka,
            labels=dict(cfg.labels),
        ),
        opts=pulumi.ResourceOptions(provider=provider, depends_on=[namespace, redis, kafka]),
    )

    outputs: dict[str, Any] = {
        "environment": cfg.environment,
        "namespace": ns,
        "imageRef": f"{cfg.image.repository}:{cfg.image.tag}",
        "apiUrl": application.api_url,
        "apiAccess": application.api_access,
        "apiKey": application.api_key,
        "appSecretName": application.secret_name,
        "redisEndpoint": redis.address,
        "redisSecretName": redis.secret_name,
        "kafkaBootstrapServers": kafka.bootstrap_servers,
        "kafkaSecretName": kafka.secret_name,
        "kafkaClusterSecretName": kafka.cluster_secret_name,
        "autoscaling": "keda" if cfg.autoscaling.keda else "hpa",
        "scaledTargets": application.autoscalers(),
    }
    return Deployment(cfg, provider, namespace, redis, kafka, application, outputs)


def main() -> Deployment:
    cfg = stack_config.load(default_tag=app_version())
    deployment = build(cfg)
    for key, value in deployment.outputs.items():
        pulumi.export(key, value)
    return deployment
