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
    """Outputs: ``host``, ``port``, ``address`` (host:port), ``url`` (secret), ``tls``, ``secret_name``."""

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
            self.url = pulumi.Output.secret(pulumi.Output.all(self.password, self.host).apply(
                lambda a: f"redis://:{quote(a[0], safe='')}@{a[1]}:{PORT}/0"))
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

        self.register_outputs({
            "host": self.host, "port": self.port, "address": self.address, "url": self.url,
            "secret_name": self.secret_name,
        })

    # -- redis-server (+ sentinel) StatefulSet ------------------------------------------------------

    def _server(self, name: str, replicas: int, sentinel: bool) -> None:
        args, cfg, ns = self._args, self._args.config, self._args.namespace
        server = f"{args.name}-server" if sentinel else args.name
        headless = f"{server}-headless"
        sel = kx.selector_labels(args.name, "redis-server")
        lbls = kx.labels(args.name, "redis-server", args.labels)
        secret_ref = k8s.core.v1.EnvVarSourceArgs(
            secret_key_ref=k8s.core.v1.SecretKeySelectorArgs(name=f"{args.name}-auth", key=KEY_PASSWORD))
        common_env = [
            k8s.core.v1.EnvVarArgs(name="REDIS_PASSWORD", value_from=secret_ref),
            k8s.core.v1.EnvVarArgs(name="REDISCLI_AUTH", value_from=secret_ref),
            k8s.core.v1.EnvVarArgs(name="POD_NAMESPACE", value_from=k8s.core.v1.EnvVarSourceArgs(
                field_ref=k8s.core.v1.ObjectFieldSelectorArgs(field_path="metadata.namespace"))),
            k8s.core.v1.EnvVarArgs(name="HEADLESS", value=headless),
            k8s.core.v1.EnvVarArgs(name="SERVER", value=server),
            k8s.core.v1.EnvVarArgs(name="REPLICAS", value=str(replicas)),
            k8s.core.v1.EnvVarArgs(name="SENTINEL", value="yes" if sentinel else "no"),
        ]

        config_map = k8s.core.v1.ConfigMap(
            f"{name}-config",
            metadata=kx.meta(f"{server}-config", ns, lbls),
            data={
                "redis.conf": _redis_conf(cfg),
                "start-redis.sh": START_REDIS,
                "start-sentinel.sh": START_SENTINEL,
                "handover.sh": HANDOVER,
            },
            opts=kx.child(self),
        )
        ports = [k8s.core.v1.ServicePortArgs(name="redis", port=PORT, target_port="redis")]
        if sentinel:
            ports.append(k8s.core.v1.ServicePortArgs(name="sentinel", port=SENTINEL_PORT, target_port="sentinel"))
        headless_svc = k8s.core.v1.Service(
            f"{name}-headless",
            metadata=kx.meta(headless, ns, lbls),
            spec=k8s.core.v1.ServiceSpecArgs(
                cluster_ip="None", publish_not_ready_addresses=True, selector=sel, ports=ports),
            opts=kx.child(self),
        )
        service = k8s.core.v1.Service(
            f"{name}-{'sentinel' if sentinel else 'service'}",
            metadata=kx.meta(f"{args.name}-sentinel" if sentinel else args.name, ns, lbls),
            spec=k8s.core.v1.ServiceSpecArgs(
                type="ClusterIP", selector=sel,
                ports=[ports[1]] if sentinel else ports),
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
                command=["sh", "/config/start-redis.sh"],
                env=common_env,
                ports=[k8s.core.v1.ContainerPortArgs(name="redis", container_port=PORT)],
                resources=kx.resources(cfg.resources.to_k8s()),
                security_context=kx.container_security(),
                startup_probe=k8s.core.v1.ProbeArgs(
                    exec_=k8s.core.v1.ExecActionArgs(command=live_cmd), period_seconds=5, failure_threshold=60),
                liveness_probe=k8s.core.v1.ProbeArgs(
                    exec_=k8s.core.v1.ExecActionArgs(command=live_cmd), period_seconds=10, timeout_seconds=5,
                    failure_threshold=6),
                readiness_probe=k8s.core.v1.ProbeArgs(
                    exec_=k8s.core.v1.ExecActionArgs(command=probe_cmd), period_seconds=5, timeout_seconds=3),
                # A stopping master hands over to a replica first (HANDOVER): no second master, no lost write.
                lifecycle=k8s.core.v1.LifecycleArgs(pre_stop=k8s.core.v1.LifecycleHandlerArgs(
                    exec_=k8s.core.v1.ExecActionArgs(command=["sh", "/config/handover.sh"]))) if sentinel else None,
                volume_mounts=volume_mounts,
            )
        ]
        if sentinel:
            sentinel_check = ["sh", "-c", "redis-cli -h 127.0.0.1 -p 26379 ping | grep -q PONG"]
            containers.append(k8s.core.v1.ContainerArgs(
                name="sentinel",
                image=cfg.image,
                command=["sh", "/config/start-sentinel.sh"],
                env=common_env,
                ports=[k8s.core.v1.ContainerPortArgs(name="sentinel", container_port=SENTINEL_PORT)],
                resources=k8s.core.v1.ResourceRequirementsArgs(
                    requests={"cpu": "20m", "memory": "32Mi"}, limits={"memory": "64Mi"}),
                security_context=kx.container_security(),
                liveness_probe=k8s.core.v1.ProbeArgs(
                    exec_=k8s.core.v1.ExecActionArgs(command=sentinel_check), period_seconds=10, timeout_seconds=5,
                    failure_threshold=6, initial_delay_seconds=10),
                readiness_probe=k8s.core.v1.ProbeArgs(
                    exec_=k8s.core.v1.ExecActionArgs(command=sentinel_check), period_seconds=5, timeout_seconds=3),
                volume_mounts=[
                    k8s.core.v1.VolumeMountArgs(name="config", mount_path="/config", read_only=True),
                    k8s.core.v1.VolumeMountArgs(name="sentinel", mount_path="/run/sentinel"),
                    k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp"),
                ],
            ))
        volumes = [
            k8s.core.v1.VolumeArgs(name="config", config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(
                name=f"{server}-config", default_mode=0o444)),
            kx.empty_dir("run", "1Mi", memory=True),
            kx.empty_dir("tmp", "16Mi"),
        ]
        if sentinel:
            volumes.append(kx.empty_dir("sentinel", "1Mi", memory=True))
        statefulset = k8s.apps.v1.StatefulSet(
            f"{name}-server",
            metadata=kx.meta(server, ns, lbls),
            spec=k8s.apps.v1.StatefulSetSpecArgs(
                service_name=headless,
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
                    when_deleted="Retain", when_scaled="Retain"),
            ),
            opts=kx.child(self, depends_on=[self._secret, config_map, headless_svc]),
        )
        self.objects += [config_map, headless_svc, service, statefulset]
        if sentinel:
            self.objects.append(k8s.policy.v1.PodDisruptionBudget(
                f"{name}-server",
                metadata=kx.meta(server, ns, lbls),
                spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                    max_unavailable=1, selector=k8s.meta.v1.LabelSelectorArgs(match_labels=sel)),
                opts=kx.child(self),
            ))

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
            rules.append(k8s.networking.v1.NetworkPolicyIngressRuleArgs(
                from_=[kx.namespace_peer(args.scaler_namespace)],
                ports=[k8s.networking.v1.NetworkPolicyPortArgs(port=PORT, protocol="TCP")]))
        self.objects.append(k8s.networking.v1.NetworkPolicy(
            f"{name}-ingress",
            metadata=kx.meta(args.name, args.namespace, kx.labels(args.name, "redis", args.labels)),
            spec=k8s.networking.v1.NetworkPolicySpecArgs(
                pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={"app.kubernetes.io/name": args.name}),
                policy_types=["Ingress"], ingress=rules),
            opts=kx.child(self),
        ))

    # -- HAProxy in front of the current master (sentinel mode) -------------------------------------

    def _proxy(self, name: str) -> None:
        args, cfg, ns = self._args, self._args.config, self._args.namespace
        sel = kx.selector_labels(args.name, "redis-proxy")
        lbls = kx.labels(args.name, "redis-proxy", args.labels)
        server = f"{args.name}-server"
        cfg_text = pulumi.Output.from_input(ns).apply(
            lambda n: _haproxy_cfg([f"{server}-{i}.{server}-headless.{n}.svc.cluster.local"
                                    for i in range(cfg.replicas)]))
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
                        annotations={"pynomaly.io/config-hash": cfg_text.apply(_short_hash)}),
                    spec=k8s.core.v1.PodSpecArgs(
                        automount_service_account_token=False,
                        security_context=kx.pod_security(HAPROXY_UID),
                        affinity=kx.anti_affinity(sel),
                        topology_spread_constraints=kx.spread(sel, zones_required=False),
                        containers=[k8s.core.v1.ContainerArgs(
                            name="haproxy",
                            image=cfg.proxy_image,
                            args=["-f", "/usr/local/etc/haproxy/haproxy.cfg"],
                            env=[k8s.core.v1.EnvVarArgs(name="REDIS_PASSWORD", value_from=k8s.core.v1.EnvVarSourceArgs(
                                secret_key_ref=k8s.core.v1.SecretKeySelectorArgs(
                                    name=f"{args.name}-auth", key=KEY_PASSWORD)))],
                            ports=[
                                k8s.core.v1.ContainerPortArgs(name="redis", container_port=PORT),
                                k8s.core.v1.ContainerPortArgs(name="health", container_port=8404),
                            ],
                            resources=k8s.core.v1.ResourceRequirementsArgs(
                                requests={"cpu": "20m", "memory": "32Mi"}, limits={"memory": "128Mi"}),
                            security_context=kx.container_security(),
                            liveness_probe=k8s.core.v1.ProbeArgs(
                                http_get=k8s.core.v1.HTTPGetActionArgs(path="/healthz", port="health"),
                                period_seconds=10),
                            readiness_probe=k8s.core.v1.ProbeArgs(
                                http_get=k8s.core.v1.HTTPGetActionArgs(path="/healthz", port="health"),
                                period_seconds=5),
                            volume_mounts=[
                                k8s.core.v1.VolumeMountArgs(
                                    name="config", mount_path="/usr/local/etc/haproxy", read_only=True),
                                k8s.core.v1.VolumeMountArgs(name="run", mount_path="/var/lib/haproxy"),
                            ],
                        )],
                        volumes=[
                            k8s.core.v1.VolumeArgs(name="config", config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(
                                name=f"{args.name}-proxy")),
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
                type="ClusterIP", selector=sel,
                ports=[k8s.core.v1.ServicePortArgs(name="redis", port=PORT, target_port="redis")]),
            opts=kx.child(self),
        )
        pdb = k8s.policy.v1.PodDisruptionBudget(
            f"{name}-proxy",
            metadata=kx.meta(f"{args.name}-proxy", ns, lbls),
            spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                max_unavailable=1, selector=k8s.meta.v1.LabelSelectorArgs(match_labels=sel)),
            opts=kx.child(self),
        )
        self.objects += [config_map, deployment, service, pdb]


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _redis_conf(cfg: RedisConfig) -> str:
    return "\n".join([
        "# Managed by the Pynomaly Pulumi program (infra/redis.py).",
        f"port {PORT}",
        "bind * -::*",
        "protected-mode no",
        "dir /data",
        "appendonly yes",
        "appendfsync everysec",
        "aof-use-rdb-preamble yes",
        "save 900 1 300 100",
        f"maxmemory {cfg.maxmemory}",
        "maxmemory-policy noeviction",
        "tcp-keepalive 60",
        "timeout 0",
        "replica-read-only yes",
        "min-replicas-to-write 0",
        "include /run/redis/runtime.conf",
        "",
    ])


# Both scripts ask the other pods' sentinels for the current master (the first pod when none
# answers yet), so a restarted pod rejoins as a replica instead of becoming a second master.
DOWN_AFTER_MS = 5000  # Sentinel's down-after-milliseconds: how long a master may be silent before failover

FIND_MASTER = r"""find_master() {
  MASTER=""
  ANSWERED=no
  i=0
  while [ "$i" -lt "$REPLICAS" ]; do
    PEER="$SERVER-$i.$FQDN_SUFFIX"
    if [ "$PEER" != "$ME" ]; then
      MASTER="$(REDISCLI_AUTH="$REDIS_PASSWORD" timeout 3 redis-cli -h "$PEER" -p 26379 \
        sentinel get-master-addr-by-name pynomaly 2>/dev/null | head -n 1 || true)"
      [ -n "$MASTER" ] && { ANSWERED=yes; break; }
    fi
    i=$((i + 1))
  done
  [ -n "$MASTER" ] || MASTER="$SERVER-0.$FQDN_SUFFIX"
}
"""


# Writes the password and replication settings to an in-memory file redis.conf includes, so the
# password never appears on a command line; asks the sentinels for the current master first.
START_REDIS = r"""#!/bin/sh
set -eu
FQDN_SUFFIX="$HEADLESS.$POD_NAMESPACE.svc.cluster.local"
ME="$HOSTNAME.$FQDN_SUFFIX"
""" + FIND_MASTER + r"""
{
  printf 'requirepass "%s"\n' "$REDIS_PASSWORD"
  printf 'masterauth "%s"\n' "$REDIS_PASSWORD"
} > /run/redis/runtime.conf
if [ "$SENTINEL" = "yes" ]; then
  printf 'replica-announce-ip %s\n' "$ME" >> /run/redis/runtime.conf
  find_master
  # Sentinels still naming this restarting pod may not have noticed it went away: starting as master
  # now could make a second one if they fail over a moment later.  Stay down past their down-after
  # time and ask again: then they have either failed over (follow the new master) or, with no
  # replica to promote, still name this pod (start as master, from its own data).
  if [ "$ANSWERED" = yes ] && [ "$MASTER" = "$ME" ]; then
    sleep """ + str(DOWN_AFTER_MS // 1000 + 5) + r"""
    find_master
  fi
  if [ "$MASTER" != "$ME" ]; then
    printf 'replicaof %s 6379\n' "$MASTER" >> /run/redis/runtime.conf
  fi
fi
exec redis-server /config/redis.conf
"""

START_SENTINEL = r"""#!/bin/sh
set -eu
FQDN_SUFFIX="$HEADLESS.$POD_NAMESPACE.svc.cluster.local"
ME="$HOSTNAME.$FQDN_SUFFIX"
""" + FIND_MASTER + r"""
find_master
QUORUM=$((REPLICAS / 2 + 1))
cat > /run/sentinel/sentinel.conf <<EOF
port 26379
dir /tmp
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $ME
requirepass "$REDIS_PASSWORD"
sentinel sentinel-pass "$REDIS_PASSWORD"
sentinel monitor pynomaly $MASTER 6379 $QUORUM
sentinel auth-pass pynomaly "$REDIS_PASSWORD"
sentinel down-after-milliseconds pynomaly """ + str(DOWN_AFTER_MS) + r"""
sentinel failover-timeout pynomaly 60000
sentinel parallel-syncs pynomaly 1
EOF
exec redis-sentinel /run/sentinel/sentinel.conf
"""


# The redis container's preStop hook (sentinel mode).  Without it, a deleted master's pod comes back
# within Sentinel's down-after time, is still named master, starts as one while the sentinels fail
# over anyway: two masters for a moment, and the writes the old one took are dropped when it is made
# a replica.  So a stopping master holds writes (replication goes on, the replicas catch up), has a
# peer's sentinel fail over (its own is stopping with it), and waits until the sentinels name
# another master and HAProxy has cut its sessions; the held writers then see a closed connection
# and reconnect, through HAProxy, to the new master.  A replica or a lone master stops at once.
HANDOVER = r"""#!/bin/sh
set -u
FQDN_SUFFIX="$HEADLESS.$POD_NAMESPACE.svc.cluster.local"
ME="$HOSTNAME.$FQDN_SUFFIX"
info="$(redis-cli -p 6379 info replication | tr -d '\r')"
echo "$info" | grep -q '^role:master' || exit 0
echo "$info" | grep -q '^connected_slaves:0' && exit 0
redis-cli -p 6379 client pause 25000 write >/dev/null
i=0
while [ "$i" -lt "$REPLICAS" ]; do
  PEER="$SERVER-$i.$FQDN_SUFFIX"
  if [ "$PEER" != "$ME" ] && timeout 3 redis-cli -h "$PEER" -p 26379 sentinel failover pynomaly 2>/dev/null |
      grep -q OK; then
    break
  fi
  i=$((i + 1))
done
tries=0
while [ "$tries" -lt 40 ]; do
  i=0
  while [ "$i" -lt "$REPLICAS" ]; do
    PEER="$SERVER-$i.$FQDN_SUFFIX"
    if [ "$PEER" != "$ME" ]; then
      MASTER="$(timeout 2 redis-cli -h "$PEER" -p 26379 sentinel get-master-addr-by-name pynomaly 2>/dev/null |
        head -n 1 || true)"
      if [ -n "$MASTER" ] && [ "$MASTER" != "$ME" ]; then
        sleep 3  # HAProxy's check (1 s, fall 2) marks this server down and shuts its sessions
        exit 0
      fi
    fi
    i=$((i + 1))
  done
  sleep 0.5
  tries=$((tries + 1))
done
exit 0
"""


def _haproxy_cfg(servers: list[str]) -> str:
    lines = [
        "# Managed by the Pynomaly Pulumi program (infra/redis.py): route to the Redis master only.",
        "global",
        "  maxconn 4096",
        "defaults",
        "  mode tcp",
        "  timeout connect 5s",
        # Celery workers block in BRPOP for long stretches: idle client/server timeouts must be long.
        "  timeout client 1h",
        "  timeout server 1h",
        "  timeout check 3s",
        "resolvers k8s",
        "  parse-resolv-conf",
        "  hold valid 5s",
        "frontend health",
        "  mode http",
        "  bind :8404",
        "  monitor-uri /healthz",
        "frontend redis",
        f"  bind :{PORT}",
        "  default_backend master",
        "backend master",
        "  option tcp-check",
        "  tcp-check connect",
        '  tcp-check send "AUTH ${REDIS_PASSWORD}\\r\\n"',
        "  tcp-check expect string +OK",
        "  tcp-check send PING\\r\\n",
        "  tcp-check expect string +PONG",
        "  tcp-check send info\\ replication\\r\\n",
        "  tcp-check expect string role:master",
        "  tcp-check send QUIT\\r\\n",
        "  tcp-check expect string +OK",
    ]
    for i, host in enumerate(servers):
        lines.append(f"  server redis{i} {host}:{PORT} check inter 1s fall 2 rise 1 "
                     "resolvers k8s init-addr none on-marked-down shutdown-sessions")
    return "\n".join(lines) + "\n"
