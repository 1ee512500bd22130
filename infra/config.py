"""The stack configuration, read once into typed objects.

Everything a component needs arrives through :class:`StackConfig`; component code never reads
``pulumi.Config``.  :func:`parse_config` is a pure function over the raw ``pynomaly:*`` values, so
tests can feed it bad configurations; it collects every problem and raises one :class:`ConfigError`
naming each offending key, before a single resource is declared.

Secrets (passwords, API keys, SASL credentials, an external Redis URL) are never plain config:
:func:`load` accepts them only when Pulumi marks them secret (``pulumi config set --secret``) and
the components generate any that are absent with :class:`infra.generated.GeneratedSecret`, a
``pulumi.dynamic`` resource that makes the value once with :mod:`secrets` and keeps it in the stack
state as a secret, so it is stable across updates.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pulumi

from pynomaly.topology import TOPOLOGY

PROJECT = "pynomaly"
ENVIRONMENTS = ("dev", "onprem", "cloud")

# Config keys that hold secrets: accepted only as Pulumi secrets, generated when absent.
SECRET_KEYS: dict[str, str] = {
    "redisPassword": "password of the in-cluster Redis (default: generated)",
    "redisUrl": "URL of an external managed Redis, rediss://:<password>@host:port/0 (redis.mode=external)",
    "kafkaPassword": "SASL/SCRAM password of the application's Kafka user (default: generated in-cluster)",
    "kafkaAdminPassword": "SASL/SCRAM password of the in-cluster Kafka admin user (default: generated)",
    "apiKeys": "comma-separated API keys accepted by the API (default: one generated key)",
    "webhookSecret": "HMAC key signing webhook bodies (default: generated)",
    "smtpPassword": "password of the SMTP user smtp.username (required with it; never generated)",
    "encryptionKey": "base64 key of 32 random bytes sealing dataset and result blobs in Redis (required with "
                     "encryption.enabled; never generated: losing it loses the data)",
    "encryptionPreviousKeys": "comma-separated base64 keys that only decrypt, kept after a rotation of encryptionKey",
}
# The one command that makes an encryption key (told in every error that asks for one).
ENCRYPTION_KEY_COMMAND = 'pulumi config set --secret pynomaly:encryptionKey "$(openssl rand -base64 32)"'

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")
_IMAGE_REPO = re.compile(r"^[a-z0-9]+([._/:-][a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_CIDR = re.compile(r"^[0-9a-fA-F.:]+/[0-9]{1,3}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_HOST = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$")
# Never 0 (no limit): with noeviction the API refuses new jobs below it, so Redis must have one.
_MAXMEMORY = re.compile(r"^[1-9][0-9]*(kb|mb|gb|k|m|g)?$", re.IGNORECASE)
_MAXMEMORY_WHAT = "a Redis size above 0 like 256mb"


class ConfigError(ValueError):
    """One or more stack configuration problems; the message lists each ``pynomaly:<key>``."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid stack configuration:\n  - " + "\n  - ".join(problems))


# -- typed configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class Resources:
    cpu_request: str
    memory_request: str
    cpu_limit: str | None
    memory_limit: str

    def to_k8s(self) -> dict[str, dict[str, str]]:
        limits = {"memory": self.memory_limit}
        if self.cpu_limit:
            limits["cpu"] = self.cpu_limit
        return {"requests": {"cpu": self.cpu_request, "memory": self.memory_request}, "limits": limits}


@dataclass(frozen=True)
class KubernetesConfig:
    namespace: str
    context: str | None = None
    kubeconfig: str | None = None  # a path (``~`` expanded) or the kubeconfig text itself
    # Render mode: the provider writes the manifests into this folder instead of applying them.
    render_yaml_to_directory: str | None = None


@dataclass(frozen=True)
class ImageConfig:
    repository: str
    tag: str  # the app package version unless overridden; never ``latest``
    pull_policy: str = "IfNotPresent"


@dataclass(frozen=True)
class ExposeConfig:
    """How users reach the API: ``portForward`` (ClusterIP), ``nodePort``, ``loadBalancer`` or ``ingress``."""

    mode: str
    host: str | None = None
    ingress_class: str | None = None
    tls_secret: str | None = None
    node_port: int | None = None


@dataclass(frozen=True)
class RedisConfig:
    mode: str  # standalone | sentinel | external
    replicas: int = 1
    storage_size: str = "1Gi"
    storage_class: str | None = None
    maxmemory: str = "256mb"
    image: str = "redis:7.4.2"
    proxy_image: str = "haproxy:3.0.5-alpine"
    resources: Resources = field(default_factory=lambda: Resources("100m", "128Mi", None, "256Mi"))
    external_tls: bool = True

    @property
    def in_cluster(self) -> bool:
        return self.mode != "external"


@dataclass(frozen=True)
class KafkaConfig:
    mode: str  # inCluster | external
    brokers: int = 1
    controllers: int = 0  # 0 = combined broker+controller nodes
    storage_size: str = "5Gi"
    storage_class: str | None = None
    # The same Kafka release the local system and the tests run (app/pynomaly/localstack/pom.xml).
    image: str = "apache/kafka:4.4.0"
    # Protocol version KEDA's kafka scaler speaks (the chart's default too); Kafka 4.x brokers
    # refuse clients older than 2.1, so it must be set explicitly.
    version: str = "4.0.0"
    resources: Resources = field(default_factory=lambda: Resources("250m", "1Gi", None, "1Gi"))
    heap: str = "512m"
    sasl: bool = True
    tls_secret: str | None = None  # cert-manager style Secret (tls.crt, tls.key, ca.crt)
    zone_spread: bool = False
    rack_awareness: bool = False
    rack_init_image: str = "alpine/kubectl:1.34.1"
    external_bootstrap: str | None = None
    external_security_protocol: str = "SASL_SSL"
    external_sasl_mechanism: str = "SCRAM-SHA-512"
    external_username: str | None = None

    @property
    def in_cluster(self) -> bool:
        return self.mode == "inCluster"

    @property
    def replication_factor(self) -> int:
        return min(3, self.brokers)

    @property
    def min_insync_replicas(self) -> int:
        return 2 if self.brokers >= 3 else 1


@dataclass(frozen=True)
class PoolScaling:
    min_replicas: int
    max_replicas: int
    target: int  # messages per replica (workers) or lag per replica (consumers)


@dataclass(frozen=True)
class AutoscalingConfig:
    keda: bool
    polling_interval: int = 15
    cooldown_period: int = 300
    scale_to_zero_batch: bool = False
    cpu_utilization: int = 70
    memory_utilization: int | None = None
    workers: Mapping[str, PoolScaling] = field(default_factory=dict)
    consumers: Mapping[str, PoolScaling] = field(default_factory=dict)
    keda_namespace: str = "keda"  # where KEDA's operator runs: its pods may read Redis list lengths


@dataclass(frozen=True)
class AppConfig:
    api_replicas: int = 1
    log_level: str = "INFO"
    task_time_limit: int = 3600
    task_soft_time_limit: int = 3300
    api_resources: Resources = field(default_factory=lambda: Resources("100m", "256Mi", None, "512Mi"))
    worker_resources: Resources = field(default_factory=lambda: Resources("250m", "512Mi", None, "1Gi"))
    consumer_resources: Resources = field(default_factory=lambda: Resources("50m", "128Mi", None, "256Mi"))
    network_policies: bool = True
    service_monitor: bool = False


@dataclass(frozen=True)
class SmtpConfig:
    """E-mail notifications: the chart's ``smtp`` values; the password is the ``smtpPassword`` secret."""

    host: str = ""
    port: int = 587
    security: str = "starttls"  # none | starttls | tls
    username: str = ""
    sender: str = "pynomaly@localhost"
    timeout: float = 10.0
    cidrs: tuple[str, ...] = ()  # where the notification pools may reach the server (NetworkPolicy)


@dataclass(frozen=True)
class EncryptionConfig:
    """Encryption at rest of payload blobs in Redis (the chart's ``encryption`` values); the keys are
    the ``encryptionKey`` and ``encryptionPreviousKeys`` secrets, given by the operator."""

    enabled: bool = False


@dataclass(frozen=True)
class Secrets:
    """Secret config values as Pulumi secret outputs; ``None`` means 'generate one'."""

    redis_password: pulumi.Output[str] | None = None
    redis_url: pulumi.Output[str] | None = None
    kafka_password: pulumi.Output[str] | None = None
    kafka_admin_password: pulumi.Output[str] | None = None
    api_keys: pulumi.Output[str] | None = None
    webhook_secret: pulumi.Output[str] | None = None
    smtp_password: pulumi.Output[str] | None = None
    encryption_key: pulumi.Output[str] | None = None
    encryption_previous_keys: pulumi.Output[str] | None = None


@dataclass(frozen=True)
class StackConfig:
    environment: str
    kubernetes: KubernetesConfig
    image: ImageConfig
    expose: ExposeConfig
    redis: RedisConfig
    kafka: KafkaConfig
    autoscaling: AutoscalingConfig
    app: AppConfig
    secrets: Secrets = field(default_factory=Secrets)
    labels: Mapping[str, str] = field(default_factory=dict)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)


# -- validation (pure) ---------------------------------------------------------------------------

T = TypeVar("T")


class _Reader:
    """Walks one config object, records problems with their full key path, never raises mid-way."""

    def __init__(self, problems: list[str], path: str, raw: Any, allowed: set[str]):
        self.problems = problems
        self.path = path
        self.raw: Mapping[str, Any] = {}
        if raw is None:
            return
        if not isinstance(raw, Mapping):
            problems.append(f"{path}: must be an object, got {type(raw).__name__}")
            return
        self.raw = raw
        for key in sorted(set(raw) - allowed):
            problems.append(f"{path}.{key}: unknown key (allowed: {', '.join(sorted(allowed))})")

    def _bad(self, key: str, message: str) -> None:
        self.problems.append(f"{self.path}.{key}: {message}")

    def get(self, key: str, kind: type[T], default: T, check: Callable[[T], str | None] | None = None) -> T:
        if key not in self.raw or self.raw[key] is None:
            return default
        value = self.raw[key]
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if kind is bool and isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if kind is int and isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if kind is str and isinstance(value, int) and not isinstance(value, bool):
            # `pulumi config set --path ... 1` stores a number: a CPU quantity or a tag of digits is still text.
            value = str(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self._bad(key, f"must be {kind.__name__}, got {value!r}")
            return default
        if check is not None:
            message = check(value)
            if message:
                self._bad(key, message)
                return default
        return value

    def child(self, key: str, allowed: set[str]) -> _Reader:
        return _Reader(self.problems, f"{self.path}.{key}", self.raw.get(key), allowed)


def _one_of(*choices: str) -> Callable[[str], str | None]:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}, got {v!r}"


def _int_range(lo: int, hi: int) -> Callable[[int], str | None]:
    return lambda v: None if lo <= v <= hi else f"must be between {lo} and {hi}, got {v}"


def _match(pattern: re.Pattern[str], what: str) -> Callable[[str], str | None]:
    return lambda v: None if pattern.match(v) else f"must be {what}, got {v!r}"


def _image(v: str) -> str | None:
    repo, sep, tag = v.rpartition(":")
    if not sep or "/" in tag or not repo:
        return f"must be repository:tag with a pinned tag, got {v!r}"
    if tag == "latest":
        return "must not use the 'latest' tag"
    return None


def _resources(reader: _Reader, key: str, default: Resources) -> Resources:
    r = reader.child(key, {"cpu", "memory", "cpuLimit", "memoryLimit"})
    q = _match(_QUANTITY, "a Kubernetes quantity like 250m or 512Mi")
    return Resources(
        cpu_request=r.get("cpu", str, default.cpu_request, q),
        memory_request=r.get("memory", str, default.memory_request, q),
        cpu_limit=r.get("cpuLimit", str, default.cpu_limit or "", q) or None,
        memory_limit=r.get("memoryLimit", str, default.memory_limit, q),
    )


def _pools(reader: _Reader, key: str, names: list[str], defaults: PoolScaling) -> dict[str, PoolScaling]:
    """``{default: {...}, <pool>: {...}}``: per-pool overrides on top of the default."""
    pools = reader.child(key, {"default", *names})
    base_reader = pools.child("default", {"min", "max", "target"})
    base = PoolScaling(
        base_reader.get("min", int, defaults.min_replicas, _int_range(0, 100)),
        base_reader.get("max", int, defaults.max_replicas, _int_range(1, 500)),
        base_reader.get("target", int, defaults.target, _int_range(1, 100_000)),
    )
    result = {}
    for name in names:
        p = pools.child(name, {"min", "max", "target"})
        scaling = PoolScaling(
            p.get("min", int, base.min_replicas, _int_range(0, 100)),
            p.get("max", int, base.max_replicas, _int_range(1, 500)),
            p.get("target", int, base.target, _int_range(1, 100_000)),
        )
        if scaling.min_replicas > scaling.max_replicas:
            reader.problems.append(
                f"{pools.path}.{name}: min ({scaling.min_replicas}) is above max ({scaling.max_replicas})"
            )
        result[name] = scaling
    return result


def parse_config(raw: Mapping[str, Any], environment: str, *, default_tag: str) -> StackConfig:
    """Validate the raw ``pynomaly:*`` config (keys without the prefix) into a :class:`StackConfig`.

    ``raw`` holds the non-secret keys with their JSON values decoded; secret keys are read by
    :func:`load` and must not appear here.  Raises :class:`ConfigError` listing every problem.
    """
    problems: list[str] = []
    allowed = {"environment", "kubernetes", "image", "expose", "storageClass", "redis", "kafka", "autoscaling",
               "app", "labels", "smtp", "encryption"}
    top = _Reader(problems, PROJECT, raw, allowed | set(SECRET_KEYS))
    for key in sorted(set(SECRET_KEYS) & set(raw)):
        problems.append(f"{PROJECT}:{key}: is a secret; set it with `pulumi config set --secret {key}`")

    env = top.get("environment", str, environment, _one_of(*ENVIRONMENTS))
    storage_class = top.get("storageClass", str, "", _match(_NAME, "a StorageClass name")) or None

    k = top.child("kubernetes", {"namespace", "context", "kubeconfig", "renderYamlToDirectory"})
    kubernetes = KubernetesConfig(
        namespace=k.get("namespace", str, "pynomaly", _match(_NAME, "a DNS-1123 label")),
        context=k.get("context", str, "") or None,
        kubeconfig=k.get("kubeconfig", str, "") or None,
        render_yaml_to_directory=k.get("renderYamlToDirectory", str, "") or None,
    )

    i = top.child("image", {"repository", "tag", "pullPolicy"})
    image = ImageConfig(
        repository=i.get("repository", str, "pynomaly/pynomaly", _match(_IMAGE_REPO, "an image repository")),
        tag=i.get("tag", str, default_tag, lambda v: "must not be 'latest'" if v == "latest" else
                  (None if _TAG.match(v) else f"is not a valid image tag: {v!r}")),
        pull_policy=i.get("pullPolicy", str, "IfNotPresent", _one_of("IfNotPresent", "Always", "Never")),
    )

    e = top.child("expose", {"mode", "host", "ingressClass", "tlsSecret", "nodePort"})
    expose = ExposeConfig(
        mode=e.get("mode", str, "portForward", _one_of("portForward", "nodePort", "loadBalancer", "ingress")),
        host=e.get("host", str, "") or None,
        ingress_class=e.get("ingressClass", str, "", _match(_NAME, "an IngressClass name")) or None,
        tls_secret=e.get("tlsSecret", str, "", _match(_NAME, "a Secret name")) or None,
        node_port=e.get("nodePort", int, 0, _int_range(30000, 32767)) or None,
    )
    if expose.mode == "ingress" and not expose.host:
        problems.append(f"{PROJECT}.expose.host: required when expose.mode is ingress")

    r = top.child("redis", {"mode", "replicas", "storage", "storageClass", "maxmemory", "image", "proxyImage",
                            "resources", "tls"})
    redis_defaults = RedisConfig(mode="standalone")
    redis_mode = r.get("mode", str, "standalone", _one_of("standalone", "sentinel", "external"))
    redis = RedisConfig(
        mode=redis_mode,
        replicas=r.get("replicas", int, 3 if redis_mode == "sentinel" else 1, _int_range(1, 9)),
        storage_size=r.get("storage", str, redis_defaults.storage_size, _match(_QUANTITY, "a quantity like 1Gi")),
        storage_class=r.get("storageClass", str, "", _match(_NAME, "a StorageClass name")) or storage_class,
        maxmemory=r.get("maxmemory", str, redis_defaults.maxmemory, _match(_MAXMEMORY, _MAXMEMORY_WHAT)),
        image=r.get("image", str, redis_defaults.image, _image),
        proxy_image=r.get("proxyImage", str, redis_defaults.proxy_image, _image),
        resources=_resources(r, "resources", redis_defaults.resources),
        external_tls=r.get("tls", bool, True),
    )
    if redis.mode == "sentinel" and redis.replicas < 3:
        problems.append(f"{PROJECT}.redis.replicas: sentinel mode needs at least 3 replicas for a quorum")
    if redis.mode == "standalone" and redis.replicas != 1:
        problems.append(f"{PROJECT}.redis.replicas: standalone mode runs exactly 1 replica")

    kf = top.child("kafka", {"mode", "brokers", "controllers", "storage", "storageClass", "image", "version",
                             "resources", "heap", "sasl", "tlsSecret", "zoneSpread", "rackAwareness",
                             "rackInitImage", "external"})
    kd = KafkaConfig(mode="inCluster")
    kx = kf.child("external", {"bootstrapServers", "securityProtocol", "saslMechanism", "username"})
    kafka = KafkaConfig(
        mode=kf.get("mode", str, "inCluster", _one_of("inCluster", "external")),
        brokers=kf.get("brokers", int, kd.brokers, _int_range(1, 15)),
        controllers=kf.get("controllers", int, 0, lambda v: None if v in (0, 1, 3, 5) else "must be 0, 1, 3 or 5"),
        storage_size=kf.get("storage", str, kd.storage_size, _match(_QUANTITY, "a quantity like 10Gi")),
        storage_class=kf.get("storageClass", str, "", _match(_NAME, "a StorageClass name")) or storage_class,
        image=kf.get("image", str, kd.image, _image),
        version=kf.get("version", str, kd.version, _match(re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+$"), "x.y.z")),
        resources=_resources(kf, "resources", kd.resources),
        heap=kf.get("heap", str, kd.heap, _match(re.compile(r"^[0-9]+[mg]$"), "a JVM size like 512m")),
        sasl=kf.get("sasl", bool, True),
        tls_secret=kf.get("tlsSecret", str, "", _match(_NAME, "a Secret name")) or None,
        zone_spread=kf.get("zoneSpread", bool, False),
        rack_awareness=kf.get("rackAwareness", bool, False),
        rack_init_image=kf.get("rackInitImage", str, kd.rack_init_image, _image),
        external_bootstrap=kx.get("bootstrapServers", str, "") or None,
        external_security_protocol=kx.get("securityProtocol", str, "SASL_SSL",
                                          _one_of("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL")),
        external_sasl_mechanism=kx.get("saslMechanism", str, "SCRAM-SHA-512",
                                       _one_of("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")),
        external_username=kx.get("username", str, "") or None,
    )
    if kafka.mode == "external" and not kafka.external_bootstrap:
        problems.append(f"{PROJECT}.kafka.external.bootstrapServers: required when kafka.mode is external")
    if kafka.tls_secret and not kafka.sasl:
        problems.append(f"{PROJECT}.kafka.tlsSecret: TLS is only offered together with SASL (sasl: true)")

    a = top.child("autoscaling", {"keda", "kedaNamespace", "pollingInterval", "cooldownPeriod", "scaleToZeroBatch",
                                  "cpuUtilization", "memoryUtilization", "workers", "consumers"})
    autoscaling = AutoscalingConfig(
        keda=a.get("keda", bool, False),
        polling_interval=a.get("pollingInterval", int, 15, _int_range(1, 3600)),
        cooldown_period=a.get("cooldownPeriod", int, 300, _int_range(0, 86400)),
        scale_to_zero_batch=a.get("scaleToZeroBatch", bool, False),
        cpu_utilization=a.get("cpuUtilization", int, 70, _int_range(10, 100)),
        memory_utilization=a.get("memoryUtilization", int, 0, _int_range(10, 100)) or None,
        workers=_pools(a, "workers", [p.name for p in TOPOLOGY.worker_pools], PoolScaling(1, 4, 10)),
        consumers=_pools(a, "consumers", [g.pool for g in TOPOLOGY.consumer_groups], PoolScaling(1, 3, 100)),
        keda_namespace=a.get("kedaNamespace", str, "keda", _match(_NAME, "a DNS-1123 label")),
    )
    for group in TOPOLOGY.consumer_groups:
        limit = TOPOLOGY.max_partitions(group)
        scaling = autoscaling.consumers[group.pool]
        if scaling.max_replicas > limit:
            problems.append(
                f"{PROJECT}.autoscaling.consumers.{group.pool}.max: {scaling.max_replicas} is above the "
                f"{limit} partition(s) of the group's largest topic; extra consumers would sit idle"
            )

    ap = top.child("app", {"apiReplicas", "logLevel", "taskTimeLimit", "taskSoftTimeLimit", "resources",
                           "networkPolicies", "serviceMonitor"})
    ad = AppConfig()
    res = ap.child("resources", {"api", "worker", "consumer"})
    app = AppConfig(
        api_replicas=ap.get("apiReplicas", int, ad.api_replicas, _int_range(1, 50)),
        log_level=ap.get("logLevel", str, ad.log_level, _one_of("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")),
        task_time_limit=ap.get("taskTimeLimit", int, ad.task_time_limit, _int_range(10, 86400)),
        task_soft_time_limit=ap.get("taskSoftTimeLimit", int, ad.task_soft_time_limit, _int_range(5, 86400)),
        api_resources=_resources(res, "api", ad.api_resources),
        worker_resources=_resources(res, "worker", ad.worker_resources),
        consumer_resources=_resources(res, "consumer", ad.consumer_resources),
        network_policies=ap.get("networkPolicies", bool, True),
        service_monitor=ap.get("serviceMonitor", bool, False),
    )
    if app.task_soft_time_limit >= app.task_time_limit:
        problems.append(f"{PROJECT}.app.taskSoftTimeLimit: must be below taskTimeLimit ({app.task_time_limit})")

    sm = top.child("smtp", {"host", "port", "security", "username", "from", "timeout", "cidrs"})
    cidrs_raw = sm.raw.get("cidrs") or []
    if not isinstance(cidrs_raw, list) or not all(isinstance(c, str) and _CIDR.match(c) for c in cidrs_raw):
        problems.append(f"{PROJECT}.smtp.cidrs: must be a list of CIDRs like 203.0.113.25/32")
        cidrs_raw = []
    smtp = SmtpConfig(
        host=sm.get("host", str, "", _match(_HOST, "a host name or address")),
        port=sm.get("port", int, 587, _int_range(1, 65535)),
        security=sm.get("security", str, "starttls", _one_of("none", "starttls", "tls")),
        username=sm.get("username", str, ""),
        sender=sm.get("from", str, "pynomaly@localhost", _match(_EMAIL, "an e-mail address")),
        timeout=float(sm.get("timeout", int, 10, _int_range(1, 300))),
        cidrs=tuple(cidrs_raw),
    )
    if smtp.host and app.network_policies and not smtp.cidrs:
        problems.append(f"{PROJECT}.smtp.cidrs: required with smtp.host while app.networkPolicies is on "
                        "(the SMTP server's address as CIDRs; egress is never opened to everything)")

    en = top.child("encryption", {"enabled"})
    encryption = EncryptionConfig(enabled=en.get("enabled", bool, False))

    labels_raw = raw.get("labels") or {}
    labels: dict[str, str] = {}
    if not isinstance(labels_raw, Mapping) or not all(isinstance(v, str) for v in labels_raw.values()):
        problems.append(f"{PROJECT}.labels: must map label names to strings")
    else:
        labels = dict(labels_raw)

    if problems:
        raise ConfigError(problems)
    return StackConfig(env, kubernetes, image, expose, redis, kafka, autoscaling, app, Secrets(), labels, smtp,
                       encryption)


# -- reading from Pulumi -------------------------------------------------------------------------


def _raw_config(project: str) -> dict[str, str]:
    """Every ``<project>:*`` key Pulumi hands this program (engine config, or PULUMI_CONFIG in tests)."""
    from pulumi.runtime import config as runtime_config

    keys: dict[str, str] = {}
    env_config = os.environ.get("PULUMI_CONFIG")
    sources: list[Mapping[str, Any]] = [json.loads(env_config) if env_config else {}, runtime_config.CONFIG.get()]
    for source in sources:
        for full_key, value in source.items():
            if full_key.startswith(project + ":"):
                keys[full_key.split(":", 1)[1]] = value
    return keys


def _decode(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def load(default_tag: str) -> StackConfig:
    """Read and validate this stack's configuration (call once, in ``__main__``)."""
    raw = _raw_config(PROJECT)
    from pulumi.runtime import config as runtime_config

    problems = []
    plain: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SECRET_KEYS:
            if not runtime_config.is_config_secret(f"{PROJECT}:{key}") and not _secret_in_env(f"{PROJECT}:{key}"):
                problems.append(f"{PROJECT}:{key}: is a secret; set it with `pulumi config set --secret {key}`")
            continue
        plain[key] = _decode(value)
    if problems:
        raise ConfigError(problems)
    stack = parse_config(plain, pulumi.get_stack(), default_tag=default_tag)
    cfg = pulumi.Config(PROJECT)
    secrets = Secrets(
        redis_password=cfg.get_secret("redisPassword"),
        redis_url=cfg.get_secret("redisUrl"),
        kafka_password=cfg.get_secret("kafkaPassword"),
        kafka_admin_password=cfg.get_secret("kafkaAdminPassword"),
        api_keys=cfg.get_secret("apiKeys"),
        webhook_secret=cfg.get_secret("webhookSecret"),
        smtp_password=cfg.get_secret("smtpPassword"),
        encryption_key=cfg.get_secret("encryptionKey"),
        encryption_previous_keys=cfg.get_secret("encryptionPreviousKeys"),
    )
    extra = []
    if stack.redis.mode == "external" and secrets.redis_url is None:
        extra.append(f"{PROJECT}:redisUrl: required (as a secret) when redis.mode is external")
    if stack.kafka.mode == "external" and stack.kafka.external_security_protocol.startswith("SASL") and (
        secrets.kafka_password is None or not stack.kafka.external_username
    ):
        extra.append(f"{PROJECT}:kafkaPassword and kafka.external.username: required for an external SASL Kafka")
    if stack.smtp.username and secrets.smtp_password is None:
        extra.append(f"{PROJECT}:smtpPassword: required (as a secret) when smtp.username is set")
    if stack.encryption.enabled and secrets.encryption_key is None:
        extra.append(f"{PROJECT}:encryptionKey: required (as a secret) when encryption.enabled is true; make one "
                     f"with `{ENCRYPTION_KEY_COMMAND}` and keep a copy (without it the sealed data is lost)")
    extra += encryption_key_problems(raw)
    if extra:
        raise ConfigError(extra)
    return StackConfig(stack.environment, stack.kubernetes, stack.image, stack.expose, stack.redis, stack.kafka,
                       stack.autoscaling, stack.app, secrets, stack.labels, stack.smtp, stack.encryption)


def encryption_key_problems(raw: Mapping[str, Any]) -> list[str]:
    """What is wrong with the configured encryption keys (their values never appear in a message)."""
    from pynomaly.storage.encryption import EncryptionKeyError, parse_keys

    problems = []
    for key, split in (("encryptionKey", False), ("encryptionPreviousKeys", True)):
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            problems.append(f"{PROJECT}:{key}: must be text (base64)")
            continue
        try:
            found = parse_keys(value.split(",") if split else [value], f"{PROJECT}:{key}")
        except EncryptionKeyError as exc:
            problems.append(str(exc))
            continue
        if not found:
            problems.append(f"{PROJECT}:{key}: is empty; make a key with `{ENCRYPTION_KEY_COMMAND}`")
        elif not split and len(found) != 1:
            problems.append(f"{PROJECT}:{key}: one key only (older ones go to encryptionPreviousKeys)")
    return problems


def _secret_in_env(full_key: str) -> bool:
    keys = os.environ.get("PULUMI_CONFIG_SECRET_KEYS")
    if not keys:
        return False
    return full_key in json.loads(keys)
