"""Redis for Celery (broker + result backend), the job store and Redis Streams.

Modes (``pynomaly:redis.mode``):

- ``standalone`` (dev): one StatefulSet pod with a PVC; Service ``<name>`` points at it.
- ``sentinel`` (onprem, cloud): a StatefulSet of N pods, each running redis-server and
  redis-sentinel; pod 0 starts as the master, the others as its replicas, and a restarting pod asks
  the sentinels who the master is now.  The application only speaks ``redis://`` (no sentinel
  client), so Service ``<name>`` fronts an HAProxy Deployment whose health check sends
  ``INFO replication`` and routes to whichever pod reports ``role:master``: failover is invisible
  to Celery apart from reconnecting.
- ``external``: a managed Redis; nothing is deployed and its URL (a Pulumi secret) goes to the Secret.

Always: AOF with ``appendfsync everysec`` and ``maxmemory-policy noeviction`` (a broker must never
evict queued tasks), the password from a Secret (generated once by ``infra.generated``
when not configured, so it is stable across updates), PVCs of the environment's storage class, probes, pod security.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import pulumi
import pulumi_kubernetes as k8s

from infra import generated
from infra import k8s as kx
from infra.config import RedisConfig

PORT = 6379
SENTINEL_PORT = 26379
MASTER_SET = "pynomaly"
UID = 999  # the redis user of the official image
HAPROXY_UID = 99  # the haproxy user of the official image

# Keys of the Secret this component writes (the chart and KEDA read them by these names).
KEY_PASSWORD = "password"
KEY_URL = "url"
KEY_ADDRESS = "address"


@dataclass(frozen=True)
class RedisArgs:
    config: RedisConfig
    namespace: pulumi.Input[str]
    name: str = "pynomaly-redis"
    password: pulumi.Input[str] | None = None  # a configured secret; generated when None
    external_url: pulumi.Input[str] | None = None  # required when config.mode is external
    labels: dict[str, str] = field(default_factory=dict)
    # KEDA's operator reads the queues' list lengths from there; None: only this namespace's pods.
    scaler_namespace: str | None = None


class Redis(pulumi.ComponentResource):
    """Outputs: ``host``, ``port``, ``address`` (host:port), ``url`` (secret), ``tls``, ``secret_name``,
    ``pod_labels`` (selects every pod of the component)."""

    host: pulumi.Output[str]
    port: pulumi.Output[int]
    address: pulumi.Output[str]
    url: pulumi.Output[str]
    tls: bool
    secret_name: pulumi.Output[str]
    password: pulumi.Output[str]

    def __init__(self, name: str, args: RedisArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("pynomaly:infra:Redis", name, None, opts)
        self._args = args
        cfg = args.config
        ns = args.namespace
        self.tls = cfg.mode == "external" and cfg.external_tls
        # Every pod of this component (server, sentinel, proxy): what the app's egress policy selects.
        self.pod_labels = {"app.kubernetes.io/name": args.name, "app.kubernetes.io/instance": kx.PART_OF}

        if cfg.mode == "external":
            if args.external_url is None:
                raise ValueError("Redis: external mode needs the redisUrl secret")
            url = pulumi.Output.secret(args.external_url)
            parts = url.apply(urlsplit)
            self.host = parts.apply(lambda p: p.hostname or "")
            self.port = parts.apply(lambda p: p.port or PORT)
            self.password = pulumi.Output.secret(parts.apply(lambda p: p.password or ""))
            self.url = url
        else:
            if args.password is not None:
                self.password = pulumi.Output.secret(args.password)
            else:
                self.password = generated.password(f"{name}-password", 32, parent=self)
            self.host = pulumi.Output.from_input(ns).apply(lambda n: f"{args.name}.{n}.svc.cluster.local")
            self.port = pulumi.Output.from_input(PORT)
            self.url = pulumi.Output.secret(
                pulumi.Output.all(self.password, self.host).apply(
                    lambda a: f"redis://:{quote(a[0], safe='')}@{a[1]}:{PORT}/0"
                )
            )
        self.address = pulumi.Output.all(self.host, self.port).apply(lambda a: f"{a[0]}:{a[1]}")

        secret = k8s.core.v1.Secret(
            f"{name}-auth",
            metadata=kx.meta(f"{args.name}-auth", ns, kx.labels(args.name, "redis", args.labels)),
            type="Opaque",
            string_data={KEY_PASSWORD: self.password, KEY_URL: self.url, KEY_ADDRESS: self.address},
            opts=kx.child(self),
        )
        self.secret_name = secret.metadata.name
        self._secret = secret
        self.objects: list[pulumi.Resource] = [secret]

        if cfg.mode == "standalone":
            self._server(name, replicas=1, sentinel=False)
        elif cfg.mode == "sentinel":
            self._server(name, replicas=cfg.replicas, sentinel=True)
            self._proxy(name)
        if cfg.mode != "external":
            self._ingress_policy(name)

        self.register_outputs(
            {
                "host": self.host,
                "port": self.port,
                "address": self.address,
                "url": self.url,
                "secret_name": self.secret_name,
            }
        )

    # -- redis-server (+ sentinel) StatefulSet ------------------------------------------------------

    def _server(self, name: str, replicas: int, sentinel: bool) -> None:
        args, cfg, ns = self._args, self._args.config, self._args.namespace
        server = f"{args.name}-server" if sentinel else args.name
        headless = f"{server}-headless"
        sel = kx.selector_labels(args.name, "redis-server")
        lbls = kx.labels(args.name, "redis-server", args.labels)
        secret_ref = k8s.core.v1.EnvVarSourceArgs(
            secret_key_ref=k8s.core.v1.SecretKeySelectorArgs(name=self.secret_name, key=KEY_PASSWORD)
        )
        common_env = [
            k8s.core.v1.EnvVarArgs(name="REDIS_PASSWORD", value_from=secret_ref),
            k8s.core.v1.EnvVarArgs(name="REDISCLI_AUTH", value_from=secret_ref),
            k8s.core.v1.EnvVarArgs(
                name="POD_NAMESPACE",
                value_from=k8s.core.v1.EnvVarSourceArgs(
                    field_ref=k8s.core.v1.ObjectFieldSelectorArgs(field_path="metadata.namespace")
                ),
            ),
            k8s.core.v1.EnvVarArgs(name="HEADLESS", value=headless),
            k8s.core.v1.EnvVarArgs(name="SERVER", value=server),
            k8s.core.v1.EnvVarArgs(name="REPLICAS", value=str(replicas)),
            k8s.core.v1.EnvVarArgs(name="SENTINEL", value="yes" if sentinel else "no"),
            k8s.core.v1.EnvVarArgs(name="MASTER_SET", value=MASTER_SET),
            k8s.core.v1.EnvVarArgs(name="DOWN_AFTER_MS", value=str(DOWN_AFTER_MS)),
            k8s.core.v1.EnvVarArgs(name="REDIS_PORT", value=str(PORT)),
            k8s.core.v1.EnvVarArgs(name="SENTINEL_PORT", value=str(SENTINEL_PORT)),
        ]

        config_map = k8s.core.v1.ConfigMap(
            f"{name}-config",
            metadata=kx.meta(f"{server}-config", ns, lbls),
            data={"redis.conf": _redis_conf(cfg), **{s: kx.script(s) for s in SCRIPTS}},
            opts=kx.child(self),
        )
        ports = [k8s.core.v1.ServicePortArgs(name="redis", port=PORT, target_port="redis")]
        if sentinel:
            ports.append(k8s.core.v1.ServicePortArgs(name="sentinel", port=SENTINEL_PORT, target_port="sentinel"))
        headless_svc = k8s.core.v1.Service(
            f"{name}-headless",
            metadata=kx.meta(headless, ns, lbls),
            spec=k8s.core.v1.ServiceSpecArgs(
                cluster_ip="None", publish_not_ready_addresses=True, selector=sel, ports=ports
            ),
            opts=kx.child(self),
        )
        service = k8s.core.v1.Service(
            f"{name}-{'sentinel' if sentinel else 'service'}",
            metadata=kx.meta(f"{args.name}-sentinel" if sentinel else args.name, ns, lbls),
            spec=k8s.core.v1.ServiceSpecArgs(type="ClusterIP", selector=sel, ports=[ports[1]] if sentinel else ports),
            opts=kx.child(self),
        )

        probe_cmd = ["sh", "-c", "redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG"]
        live_cmd = ["sh", "-c", "redis-cli -h 127.0.0.1 -p 6379 ping | grep -qE 'PONG|LOADING'"]
        volume_mounts = [
            k8s.core.v1.VolumeMountArgs(name="data", mount_path="/data"),
            k8s.core.v1.VolumeMountArgs(name="config", mount_path="/config", read_only=True),
            k8s.core.v1.VolumeMountArgs(name="run", mount_path="/run/redis"),
            k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp"),
        ]
        containers = [
            k8s.core.v1.ContainerArgs(
                name="redis",
                image=cfg.image,
                command=["sh", "/config/redis-start.sh"],
                env=common_env,
                ports=[k8s.core.v1.ContainerPortArgs(name="redis", container_port=PORT)],
                resources=kx.resources(cfg.resources.to_k8s()),
                security_context=kx.container_security(),
                startup_probe=k8s.core.v1.ProbeArgs(
                    exec_=k8s.core.v1.ExecActionArgs(command=live_cmd), period_seconds=5, failure_threshold=60
                ),
                liveness_probe=k8s.core.v1.ProbeArgs(
                    exec_=k8s.core.v1.ExecActionArgs(command=live_cmd),
                    period_seconds=10,
                    timeout_seconds=5,
                    failure_threshold=6,
                ),
                readiness_probe=k8s.core.v1.ProbeArgs(
                    exec_=k8s.core.v1.ExecActionArgs(command=probe_cmd), period_seconds=5, timeout_seconds=3
                ),
                # A stopping master hands over to a replica first: no second master, no lost write.
                lifecycle=k8s.core.v1.LifecycleArgs(
                    pre_stop=k8s.core.v1.LifecycleHandlerArgs(
                        exec_=k8s.core.v1.ExecActionArgs(command=["sh", "/config/redis-handover.sh"])
                    )
                )
                if sentinel
                else None,
                volume_mounts=volume_mounts,
            )
        ]
        if sentinel:
            sentinel_check = ["sh", "-c", "redis-cli -h 127.0.0.1 -p 26379 ping | grep -q PONG"]
            containers.append(
                k8s.core.v1.ContainerArgs(
                    name="sentinel",
                    image=cfg.image,
                    command=["sh", "/config/redis-sentinel-start.sh"],
                    env=common_env,
                    ports=[k8s.core.v1.ContainerPortArgs(name="sentinel", container_port=SENTINEL_PORT)],
                    resources=k8s.core.v1.ResourceRequirementsArgs(
                        requests={"cpu": "20m", "memory": "32Mi"}, limits={"memory": "64Mi"}
                    ),
                    security_context=kx.container_security(),
                    liveness_probe=k8s.core.v1.ProbeArgs(
                        exec_=k8s.core.v1.ExecActionArgs(command=sentinel_check),
                        period_seconds=10,
                        timeout_seconds=5,
                        failure_threshold=6,
                        initial_delay_seconds=10,
                    ),
                    readiness_probe=k8s.core.v1.ProbeArgs(
                        exec_=k8s.core.v1.ExecActionArgs(command=sentinel_check), period_seconds=5, timeout_seconds=3
                    ),
                    volume_mounts=[
                        k8s.core.v1.VolumeMountArgs(name="config", mount_path="/config", read_only=True),
                        k8s.core.v1.VolumeMountArgs(name="sentinel", mount_path="/run/sentinel"),
                        k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp"),
                    ],
                )
            )
        volumes = [
            k8s.core.v1.VolumeArgs(
                name="config",
                config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=config_map.metadata.name, default_mode=0o444),
            ),
            kx.empty_dir("run", "1Mi", memory=True),
            kx.empty_dir("tmp", "16Mi"),
        ]
        if sentinel:
            volumes.append(kx.empty_dir("sentinel", "1Mi", memory=True))
        statefulset = k8s.apps.v1.StatefulSet(
            f"{name}-server",
            metadata=kx.meta(server, ns, lbls),
            spec=k8s.apps.v1.StatefulSetSpecArgs(
                service_name=headless_svc.metadata.name,
                replicas=replicas,
                pod_management_policy="OrderedReady",
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=sel),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=lbls),
                    spec=k8s.core.v1.PodSpecArgs(
                        automount_service_account_token=False,
                        security_context=kx.pod_security(UID),
                        termination_grace_period_seconds=30,
                        affinity=kx.anti_affinity(sel),
                        topology_spread_constraints=kx.spread(sel, zones_required=False),
                        containers=containers,
                        volumes=volumes,
                    ),
                ),
                volume_claim_templates=[kx.pvc_template("data", cfg.storage_size, cfg.storage_class, lbls)],
                persistent_volume_claim_retention_policy=k8s.apps.v1.StatefulSetPersistentVolumeClaimRetentionPolicyArgs(
                    when_deleted="Retain", when_scaled="Retain"
                ),
            ),
            opts=kx.child(self, depends_on=[self._secret, config_map, headless_svc]),
        )
        self.objects += [config_map, headless_svc, service, statefulset]
        if sentinel:
            self.objects.append(
                k8s.policy.v1.PodDisruptionBudget(
                    f"{name}-server",
                    metadata=kx.meta(server, ns, lbls),
                    spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                        max_unavailable=1, selector=k8s.meta.v1.LabelSelectorArgs(match_labels=sel)
                    ),
                    opts=kx.child(self),
                )
            )

    # -- who may connect -------------------------------------------------------------------------------

    def _ingress_policy(self, name: str) -> None:
        """Redis, its Sentinels and HAProxy answer only the application's pods and each other in this
        namespace (and KEDA's operator, for list lengths): any other pod's connection is dropped, the
        password notwithstanding."""
        args = self._args
        peers = kx.app_or_own_pods(args.name)
        ports = [k8s.networking.v1.NetworkPolicyPortArgs(port=p, protocol="TCP") for p in (PORT, SENTINEL_PORT)]
        rules = [k8s.networking.v1.NetworkPolicyIngressRuleArgs(from_=[peers], ports=ports)]
        if args.scaler_namespace:
            rules.append(
                k8s.networking.v1.NetworkPolicyIngressRuleArgs(
                    from_=[kx.namespace_peer(args.scaler_namespace)],
                    ports=[k8s.networking.v1.NetworkPolicyPortArgs(port=PORT, protocol="TCP")],
                )
            )
        self.objects.append(
            k8s.networking.v1.NetworkPolicy(
                f"{name}-ingress",
                metadata=kx.meta(args.name, args.namespace, kx.labels(args.name, "redis", args.labels)),
                spec=k8s.networking.v1.NetworkPolicySpecArgs(
                    pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={"app.kubernetes.io/name": args.name}),
                    policy_types=["Ingress"],
                    ingress=rules,
                ),
                opts=kx.child(self),
            )
        )

    # -- HAProxy in front of the current master (sentinel mode) -------------------------------------

    def _proxy(self, name: str) -> None:
        args, cfg, ns = self._args, self._args.config, self._args.namespace
        sel = kx.selector_labels(args.name, "redis-proxy")
        lbls = kx.labels(args.name, "redis-proxy", args.labels)
        server = f"{args.name}-server"
        cfg_text = pulumi.Output.from_input(ns).apply(
            lambda n: _haproxy_cfg(
                [f"{server}-{i}.{server}-headless.{n}.svc.cluster.local" for i in range(cfg.replicas)]
            )
        )
        config_map = k8s.core.v1.ConfigMap(
            f"{name}-proxy",
            metadata=kx.meta(f"{args.name}-proxy", ns, lbls),
            data={"haproxy.cfg": cfg_text},
            opts=kx.child(self),
        )
        deployment = k8s.apps.v1.Deployment(
            f"{name}-proxy",
            metadata=kx.meta(f"{args.name}-proxy", ns, lbls),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=2,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=sel),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(
                        labels=lbls,
                        # Roll the proxies when the backend list changes.
                        annotations={"pynomaly.io/config-hash": cfg_text.apply(_short_hash)},
                    ),
                    spec=k8s.core.v1.PodSpecArgs(
                        automount_service_account_token=False,
                        security_context=kx.pod_security(HAPROXY_UID),
                        affinity=kx.anti_affinity(sel),
                        topology_spread_constraints=kx.spread(sel, zones_required=False),
                        containers=[
                            k8s.core.v1.ContainerArgs(
                                name="haproxy",
                                image=cfg.proxy_image,
                                args=["-f", "/usr/local/etc/haproxy/haproxy.cfg"],
                                env=[
                                    k8s.core.v1.EnvVarArgs(
                                        name="REDIS_PASSWORD",
                                        value_from=k8s.core.v1.EnvVarSourceArgs(
                                            secret_key_ref=k8s.core.v1.SecretKeySelectorArgs(
                                                name=self.secret_name, key=KEY_PASSWORD
                                            )
                                        ),
                                    )
                                ],
                                ports=[
                                    k8s.core.v1.ContainerPortArgs(name="redis", container_port=PORT),
                                    k8s.core.v1.ContainerPortArgs(name="health", container_port=8404),
                                ],
                                resources=k8s.core.v1.ResourceRequirementsArgs(
                                    requests={"cpu": "20m", "memory": "32Mi"}, limits={"memory": "128Mi"}
                                ),
                                security_context=kx.container_security(),
                                liveness_probe=k8s.core.v1.ProbeArgs(
                                    http_get=k8s.core.v1.HTTPGetActionArgs(path="/healthz", port="health"),
                                    period_seconds=10,
                                ),
                                readiness_probe=k8s.core.v1.ProbeArgs(
                                    http_get=k8s.core.v1.HTTPGetActionArgs(path="/healthz", port="health"),
                                    period_seconds=5,
                                ),
                                volume_mounts=[
                                    k8s.core.v1.VolumeMountArgs(
                                        name="config", mount_path="/usr/local/etc/haproxy", read_only=True
                                    ),
                                    k8s.core.v1.VolumeMountArgs(name="run", mount_path="/var/lib/haproxy"),
                                ],
                            )
                        ],
                        volumes=[
                            k8s.core.v1.VolumeArgs(
                                name="config",
                                config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=config_map.metadata.name),
                            ),
                            kx.empty_dir("run", "1Mi", memory=True),
                        ],
                    ),
                ),
            ),
            opts=kx.child(self, depends_on=[self._secret, config_map]),
        )
        service = k8s.core.v1.Service(
            f"{name}-service",
            metadata=kx.meta(args.name, ns, lbls),
            spec=k8s.core.v1.ServiceSpecArgs(
                type="ClusterIP",
                selector=sel,
                ports=[k8s.core.v1.ServicePortArgs(name="redis", port=PORT, target_port="redis")],
            ),
            opts=kx.child(self),
        )
        pdb = k8s.policy.v1.PodDisruptionBudget(
            f"{name}-proxy",
            metadata=kx.meta(f"{args.name}-proxy", ns, lbls),
            spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                max_unavailable=1, selector=k8s.meta.v1.LabelSelectorArgs(match_labels=sel)
            ),
            opts=kx.child(self),
        )
        self.objects += [config_map, deployment, service, pdb]


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _redis_conf(cfg: RedisConfig) -> str:
    return "\n".join(
        [
            "# Managed by the Pynomaly Pulumi program (infra/redis_ha.py).",
            f"port {PORT}",
            "bind * -::*",
            "protected-mode no",
            "dir /data",
            "appendonly yes",
            "appendfsync everysec",
            "aof-use-rdb-preamble yes",
            "save 900 1 300 100",
            f"maxmemory {cfg.effective_maxmemory}",
            "maxmemory-policy noeviction",
            "tcp-keepalive 60",
            "timeout 0",
            "replica-read-only yes",
            "min-replicas-to-write 0",
            "include /run/redis/runtime.conf",
            "",
        ]
    )


DOWN_AFTER_MS = 5000  # Sentinel's down-after-milliseconds: how long a master may be silent before failover
# The start scripts, the shared master lookup they source and the redis container's preStop hook
# (infra/scripts/redis-*.sh), shipped in the server ConfigMap under their file names.
SCRIPTS = ("redis-find-master.sh", "redis-start.sh", "redis-sentinel-start.sh", "redis-handover.sh")


def _haproxy_cfg(servers: list[str]) -> str:
    """infra/scripts/haproxy.cfg with one checked ``server`` line per Redis pod."""
    lines = [kx.script("haproxy.cfg").rstrip("\n")]
    for i, host in enumerate(servers):
        lines.append(
            f"  server redis{i} {host}:{PORT} check inter 1s fall 2 rise 1 "
            "resolvers k8s init-addr none on-marked-down shutdown-sessions"
        )
    return "\n".join(lines) + "\n"
