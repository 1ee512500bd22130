"""The application: ``charts/pynomaly`` through pulumi-kubernetes' Helm v4 Chart, with values derived
from the stack config, the Redis and Kafka components and the messaging topology.

- Image: the configured repository, tag = the app package version unless the stack pins another;
  never ``latest``.
- One Secret (``<release>-app``) with the chart's key names (read from the chart's ``values.yaml``,
  ``secrets.keys``): the Redis password, the Kafka SASL password, API keys and the webhook key,
  the last two generated once (``infra.generated``, kept in the stack state) when the stack does not
  set them; with an ``encryptionKey``, the keys file of encryption at rest (that key first, then
  ``encryptionPreviousKeys``), mounted by the chart into the API and worker pods.
- Worker and consumer pools come from ``TOPOLOGY`` (queues, concurrency, batch, consumer groups,
  topics with their partitions); nothing is re-typed.
- Autoscaling is the chart's (``autoscaling.keda`` or ``autoscaling.hpa``, from the stack's
  ``autoscaling`` config): one implementation for ``pulumi up`` and ``helm install`` alike.  The
  autoscalers come from a helm v3 Chart of the same chart and values (kept to those objects), the rest
  from the Helm v4 Chart with ``autoscaling.external`` (see ``__init__`` for why two).  The pool
  Deployments' ``spec.replicas`` is left to the autoscaler (``ignore_changes`` through a transform),
  so ``pulumi up`` never resets a scaled Deployment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, cast

import pulumi
import pulumi_kubernetes as k8s
import yaml

from infra import generated
from infra import k8s as kx
from infra.config import PoolScaling, StackConfig
from infra.kafka_cluster import Kafka
from infra.redis_ha import Redis
from pynomaly.topology import GROUP_SCORER, PRIORITY_SEPARATOR, PRIORITY_STEPS, Q_NOTIFICATIONS, Topology

API_SERVICE_PORT = 80  # the chart's api.service.port default


# What the chart renders for the pools' autoscaling (templates scaledobject, triggerauthentication, hpa).
AUTOSCALER_KINDS = ("ScaledObject", "TriggerAuthentication", "HorizontalPodAutoscaler")


def _autoscalers_elsewhere(values: dict[str, Any]) -> dict[str, Any]:
    return {
        **values,
        "autoscaling": {
            "keda": {**values["autoscaling"]["keda"], "enabled": False},
            "hpa": {**values["autoscaling"]["hpa"], "enabled": False},
            "external": True,
        },
    }


def _only_autoscalers(obj: dict[str, Any], opts: pulumi.ResourceOptions) -> None:
    """helm v3 Chart transformation: an object that is not a pool autoscaler becomes an empty List."""
    if obj.get("kind") in AUTOSCALER_KINDS:
        return
    obj.clear()
    obj.update({"apiVersion": "v1", "kind": "List", "items": []})


@cache
def chart_defaults(chart_path: str) -> dict[str, Any]:
    """The chart's values.yaml: the source of its Secret key names and defaults."""
    return yaml.safe_load((Path(chart_path) / "values.yaml").read_text()) or {}


@dataclass(frozen=True)
class ApplicationArgs:
    stack: StackConfig
    namespace: pulumi.Input[str]
    chart_path: str
    topology: Topology
    redis: Redis
    kafka: Kafka
    release: str = "pynomaly"
    labels: dict[str, str] = field(default_factory=dict)


class Application(pulumi.ComponentResource):
    """Outputs: ``release``, ``values`` (the chart values), ``secret_name``, ``api_key`` (secret),
    ``api_service``, ``api_url``, ``api_access`` (how to reach the API)."""

    release: str
    values: pulumi.Output[dict[str, Any]]
    secret_name: pulumi.Output[str]
    api_key: pulumi.Output[str]
    api_service: str
    api_url: pulumi.Output[str]
    api_access: pulumi.Output[str]

    def __init__(self, name: str, args: ApplicationArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("pynomaly:infra:Application", name, None, opts)
        self._args = args
        stack = args.stack
        self.release = args.release
        self.fullname = args.release
        self.api_service = f"{self.fullname}-api"
        defaults = chart_defaults(args.chart_path)
        keys: dict[str, str] = defaults["secrets"]["keys"]

        secrets = stack.secrets
        if secrets.api_keys is not None:
            self.api_key = pulumi.Output.secret(secrets.api_keys)
        else:
            self.api_key = generated.password(f"{name}-api-key", 40, parent=self)
        webhook: pulumi.Output[str] = (
            pulumi.Output.secret(secrets.webhook_secret)
            if secrets.webhook_secret is not None
            else generated.password(f"{name}-webhook-secret", 48, parent=self)
        )
        api_keys_file = self.api_key.apply(lambda v: "\n".join(k.strip() for k in v.split(",") if k.strip()) + "\n")
        # Encryption keys are never generated: the operator keeps a copy, or the sealed data is lost with the state.
        encryption: dict[str, Any] = {}
        if secrets.encryption_key is not None:
            previous = secrets.encryption_previous_keys or ""
            encryption[defaults["encryption"]["secretKey"]] = pulumi.Output.secret(
                pulumi.Output.all(secrets.encryption_key, previous).apply(
                    lambda v: "".join(k.strip() + "\n" for k in [v[0], *v[1].split(",")] if k.strip())
                )
            )
        secret = k8s.core.v1.Secret(
            f"{name}-secret",
            metadata=kx.meta(f"{self.fullname}-app", args.namespace, kx.labels(self.fullname, "app", args.labels)),
            type="Opaque",
            string_data={
                keys["redisPassword"]: args.redis.password,
                keys["kafkaSaslPassword"]: args.kafka.password,
                keys["apiKeys"]: api_keys_file,
                keys["webhookSecret"]: webhook,
                # Read by the notification pools only when smtp.username is set; empty otherwise.
                keys["smtpPassword"]: pulumi.Output.secret(
                    secrets.smtp_password if secrets.smtp_password is not None else ""
                ),
                **encryption,
            },
            opts=kx.child(self),
        )
        self.secret_name = secret.metadata.name
        # The pods' ServiceAccount is made here, before the chart, not by the chart: the chart's objects are
        # applied in parallel, and a pool whose ReplicaSet came first got "serviceaccount not found" from
        # admission (FailedCreate events, seen on the real cluster) until the account existed.
        account = k8s.core.v1.ServiceAccount(
            f"{name}-service-account",
            metadata=kx.meta(self.fullname, args.namespace, kx.labels(self.fullname, "app", args.labels)),
            automount_service_account_token=False,
            opts=kx.child(self),
        )
        self.service_account = account.metadata.apply(lambda m: m.name)

        self.values = pulumi.Output.all(
            redis_host=args.redis.host,
            redis_port=args.redis.port,
            kafka_bootstrap=args.kafka.bootstrap_servers,
            secret_name=self.secret_name,
            account=self.service_account,
        ).apply(
            lambda o: self._values(
                o["redis_host"], o["redis_port"], o["kafka_bootstrap"], o["secret_name"], o["account"]
            )
        )

        # The application: everything but the pools' autoscalers (`external`: replicas left unset too).
        self.chart = k8s.helm.v4.Chart(
            f"{name}-chart",
            chart=args.chart_path,
            name=args.release,
            namespace=args.namespace,
            values=self.values.apply(_autoscalers_elsewhere),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[secret, account], transforms=[self._leave_replicas]),
        )
        # The autoscalers, from the same chart templates and values (one implementation for pulumi and helm).
        # A separate client-side render: the Helm v4 Chart needs the cluster to say whether KEDA's kinds are
        # namespaced, which fails without one (render mode; upstream pulumi-kubernetes#4394), while helm v3
        # Chart objects carry their namespace.  The transformation keeps only the autoscaling objects.
        self.autoscalers_chart = k8s.helm.v3.Chart(
            args.release,
            # The values hint says a mapping of inputs, but the v3 Chart resolves its whole
            # options with Output.from_input (ChartOpts.to_json), so an Output of the values is fine.
            k8s.helm.v3.LocalChartOpts(
                path=args.chart_path,
                namespace=args.namespace,
                values=self.values,  # type: ignore[arg-type]
                transformations=[_only_autoscalers],
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.chart]),
        )
        self.api_url, self.api_access = self._access()
        self.register_outputs(
            {
                "values": self.values,
                "secret_name": self.secret_name,
                "api_url": self.api_url,
                "api_access": self.api_access,
            }
        )

    # -- names in the chart -------------------------------------------------------------------------

    def deployment_name(self, kind: str, pool: str) -> str:
        """The chart's Deployment for a worker pool (kind worker) or a consumer pool (kind consumer)."""
        return f"{self.fullname}-{kind}-{pool}"

    def _scaled_deployments(self) -> set[str]:
        topo = self._args.topology
        names = {self.deployment_name("worker", p.name) for p in topo.worker_pools}
        names |= {self.deployment_name("consumer", g.pool) for g in topo.consumer_groups}
        return names

    def autoscalers(self) -> dict[str, str]:
        """``{pool Deployment: "<kind>/<name>"}``: the chart's autoscaler of each pool (named as its target)."""
        kind = "ScaledObject" if self._args.stack.autoscaling.keda else "HorizontalPodAutoscaler"
        return {name: f"{kind}/{name}" for name in sorted(self._scaled_deployments())}

    def _leave_replicas(self, args: pulumi.ResourceTransformArgs) -> pulumi.ResourceTransformResult | None:
        """Let the autoscaler own ``spec.replicas`` of the pool Deployments (SSA: not re-applied)."""
        if args.type_ != "kubernetes:apps/v1:Deployment":
            return None
        metadata = cast(dict[str, Any], args.props.get("metadata") or {})  # a chart object's: a plain dict
        if metadata.get("name") not in self._scaled_deployments():
            return None
        ignore = [*(args.opts.ignore_changes or []), "spec.replicas"]
        return pulumi.ResourceTransformResult(
            args.props, pulumi.ResourceOptions.merge(args.opts, pulumi.ResourceOptions(ignore_changes=ignore))
        )

    # -- values -------------------------------------------------------------------------------------

    def _values(
        self, redis_host: str, redis_port: int, kafka_bootstrap: str, secret_name: str, service_account: str
    ) -> dict[str, Any]:
        args, stack = self._args, self._args.stack
        topo, app, scaling, smtp = args.topology, stack.app, stack.autoscaling, stack.smtp
        defaults = chart_defaults(args.chart_path)

        def pool_bounds(s: PoolScaling, batch: bool) -> dict[str, int]:
            lo = 0 if (batch and scaling.keda and scaling.scale_to_zero_batch) else max(1, s.min_replicas)
            return {"replicas": max(1, s.min_replicas), "minReplicas": lo, "maxReplicas": s.max_replicas}

        workers = {
            pool.name: {
                "queues": list(pool.queues),
                "concurrency": pool.concurrency,
                "batch": pool.batch,
                **pool_bounds(scaling.workers[pool.name], pool.batch),
                "listLength": scaling.workers[pool.name].target,
                "resources": {},
                "extraEgress": [],
            }
            for pool in topo.worker_pools
        }
        consumers = {}
        for group in topo.consumer_groups:
            s = scaling.consumers[group.pool]
            consumers[group.pool] = {
                "group": group.name,
                "topics": [{"name": t, "partitions": topo.topic(t).partitions} for t in group.topics],
                **pool_bounds(
                    PoolScaling(s.min_replicas, min(s.max_replicas, topo.max_partitions(group)), s.target), False
                ),
                "lagThreshold": s.target,
                # The live scorer loads models: its own size; the forwarding pools share consumers.resources.
                "resources": app.scorer_resources.to_k8s() if group.name == GROUP_SCORER else {},
            }

        expose = stack.expose
        service: dict[str, Any] = {
            "type": {
                "portForward": "ClusterIP",
                "ingress": "ClusterIP",
                "nodePort": "NodePort",
                "loadBalancer": "LoadBalancer",
            }[expose.mode]
        }
        if expose.mode == "nodePort" and expose.node_port:
            service["nodePort"] = expose.node_port
        ingress: dict[str, Any] = {"enabled": expose.mode == "ingress"}
        if expose.mode == "ingress":
            ingress.update(
                {
                    "className": expose.ingress_class or "",
                    "host": expose.host or "",
                    "tls": {"enabled": bool(expose.tls_secret), "secretName": expose.tls_secret or ""},
                }
            )

        redis_cfg, kafka = stack.redis, args.kafka
        redis_allow: dict[str, Any] = {"cidrs": [], "podSelector": {}, "namespaceSelector": {}}
        if redis_cfg.in_cluster:
            redis_allow["podSelector"] = dict(args.redis.pod_labels)
        kafka_allow: dict[str, Any] = {"cidrs": [], "podSelector": {}, "namespaceSelector": {}}
        if stack.kafka.in_cluster:
            kafka_allow["podSelector"] = dict(kafka.pod_labels)

        return {
            "fullnameOverride": self.fullname,
            "serviceAccount": {"create": False, "name": service_account},
            "commonLabels": {**args.labels, "pynomaly.io/environment": stack.environment},
            "image": {
                "repository": stack.image.repository,
                "tag": stack.image.tag,
                "pullPolicy": stack.image.pull_policy,
            },
            "settings": {
                "environment": stack.environment,
                "logLevel": app.log_level,
                "publicUrl": f"https://{expose.host}"
                if expose.mode == "ingress" and expose.tls_secret
                else (f"http://{expose.host}" if expose.host else ""),
                "taskTimeLimit": app.task_time_limit,
                "taskSoftTimeLimit": app.task_soft_time_limit,
                **app.bounded_settings(),
            },
            "redis": {
                "host": redis_host,
                "port": int(redis_port),
                "db": 0,
                "tls": args.redis.tls,
                "allowTo": redis_allow,
            },
            "kafka": {
                "bootstrapServers": kafka_bootstrap,
                "securityProtocol": kafka.security_protocol,
                "saslMechanism": kafka.sasl_mechanism or defaults["kafka"]["saslMechanism"],
                "saslUsername": kafka.username,
                "replicationFactor": kafka.replication_factor,
                "minInsyncReplicas": kafka.min_insync_replicas,
                "version": kafka.version,
                "allowTo": kafka_allow,
            },
            "secrets": {"existingSecret": secret_name},
            # The keys file sits in the same Secret; mounted whenever a key is set, so turning `enabled` off
            # still reads what was sealed.
            "encryption": {
                "enabled": stack.encryption.enabled,
                "existingSecret": secret_name if stack.secrets.encryption_key is not None else "",
                "secretKey": defaults["encryption"]["secretKey"],
            },
            "models": self._models_values(),
            "api": {
                "replicas": app.api_replicas,
                "resources": app.api_resources.to_k8s(),
                "service": service,
                "ingress": ingress,
                "pdb": {"maxUnavailable": 1},
            },
            "workers": {
                "resources": app.worker_resources.to_k8s(),
                "priority": {"separator": PRIORITY_SEPARATOR, "steps": sorted(PRIORITY_STEPS.values())},
                "pools": workers,
            },
            "consumers": {"resources": app.consumer_resources.to_k8s(), "pools": consumers},
            # One autoscaler per pool, never both (the chart refuses both); the pools' replicas stay unset.
            "autoscaling": {
                "keda": {
                    "enabled": scaling.keda,
                    "pollingInterval": scaling.polling_interval,
                    "cooldownPeriod": scaling.cooldown_period,
                    "fallbackReplicas": scaling.fallback_replicas,
                    # KEDA must trust the in-cluster listener's CA like the clients do.
                    "kafkaCaSecret": (stack.kafka.tls_secret or "") if stack.kafka.in_cluster else "",
                },
                "hpa": {
                    "enabled": not scaling.keda,
                    "targetCPUUtilizationPercentage": scaling.cpu_utilization,
                    "targetMemoryUtilizationPercentage": scaling.memory_utilization or 0,
                },
            },
            "smtp": {
                "host": smtp.host,
                "port": smtp.port,
                "security": smtp.security,
                "username": smtp.username,
                "from": smtp.sender,
                "timeout": smtp.timeout,
                "allowTo": {"cidrs": list(smtp.cidrs), "podSelector": {}, "namespaceSelector": {}},
            },
            "notifications": {"queue": Q_NOTIFICATIONS},
            # Beat runs as the chart's singleton (replicas 1, Recreate); the Autoscaling component never targets it.
            "beat": {"enabled": True},
            "metrics": {
                "serviceMonitor": {"enabled": app.service_monitor},
                "prometheusRule": {"enabled": app.service_monitor},
            },
            "networkPolicy": {"enabled": app.network_policies},
        }

    def _models_values(self) -> dict[str, Any]:
        """The chart's ``models``: where artifacts live; which pools mount them stays the chart's default."""
        store = self._args.stack.model_store
        if store.mode == "redis":
            return {"store": "redis"}
        return {
            "store": "persistentVolume",
            "persistentVolume": {
                "existingClaim": store.existing_claim or "",
                "size": store.size,
                "storageClassName": store.storage_class or "",
                "accessModes": ["ReadWriteMany"],
            },
        }

    # -- how to reach the API -----------------------------------------------------------------------

    def _access(self) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
        expose, ns = self._args.stack.expose, pulumi.Output.from_input(self._args.namespace)
        svc = self.api_service
        if expose.mode == "ingress":
            scheme = "https" if expose.tls_secret else "http"
            url = pulumi.Output.from_input(f"{scheme}://{expose.host}")
            return url, url.apply(lambda u: f"open {u} (Ingress class {expose.ingress_class or 'default'})")
        if expose.mode == "loadBalancer":
            access = ns.apply(
                lambda n: (
                    f"kubectl -n {n} get svc {svc} "
                    "-o jsonpath='{.status.loadBalancer.ingress[0].*}'  # then http://<that>/"
                )
            )
            return pulumi.Output.from_input("http://<load-balancer address>/"), access
        if expose.mode == "nodePort":
            port = expose.node_port
            access = ns.apply(
                lambda n: (
                    f"kubectl -n {n} get svc {svc} -o jsonpath='{{.spec.ports[0].nodePort}}'"
                    "  # then http://<any node address>:<that port>/"
                )
            )
            return pulumi.Output.from_input(f"http://<node address>:{port or '<nodePort>'}/"), access
        access = ns.apply(lambda n: f"kubectl -n {n} port-forward svc/{svc} 8000:{API_SERVICE_PORT}")
        return pulumi.Output.from_input("http://127.0.0.1:8000/"), access
