"""The stack configuration, read once into typed objects.

Everything a component needs arrives through :class:`StackConfig`; component code never reads
``pulumi.Config``.  :func:`parse_config` is a pure function over the raw ``pynomaly:*`` values, so
tests can feed it bad configurations.  The raw values are validated by pydantic models that mirror
the config keys (``extra="forbid"``: an unknown or misspelt key is an error); every problem is
collected and raised as one :class:`ConfigError` naming each offending key, before a single resource
is declared.

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, cast

import annotated_types
import pulumi
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from pynomaly.config import ENV_PREFIX, Settings, redis_size_bytes
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
# An unset redis.maxmemory is this share of the redis container's memory limit: the rest is headroom for
# what maxmemory does not count (the copy-on-write of the AOF-rewrite fork, client and replication
# buffers, fragmentation), so Redis refuses writes (noeviction) before the kernel OOM-kills it.
MAXMEMORY_SHARE = 0.75
# An explicit maxmemory above this share of the limit is refused: too little headroom for the same reasons.
MAXMEMORY_MAX_SHARE = 0.9
_MIB = 1024**2
_VERSION = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+$")
_JVM_SIZE = re.compile(r"^[0-9]+[mg]$")


class ConfigError(ValueError):
    """One or more stack configuration problems; the message lists each ``pynomaly:<key>``."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid stack configuration:\n  - " + "\n  - ".join(problems))


# -- value types: pydantic's lax coercion where Pulumi needs it, the same messages as always ----------------


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _keyed(problems: list[str]) -> None:
    """A check across keys of one object: each problem starts with the key (path) it names inside it."""
    if problems:
        raise PydanticCustomError("keyed", "{lines}", {"lines": "\n".join(problems)})


_QUANTITY_UNITS = {"": 1, "m": 0.001, "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}
_QUANTITY_UNITS |= {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}


def quantity_bytes(quantity: str) -> int:
    """A memory quantity (``512Mi``, ``1G``, ``2Gi``, as ``_QUANTITY`` accepts them) in whole bytes."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)", quantity)
    if not match or match.group(2) not in _QUANTITY_UNITS:
        raise ValueError(f"not a Kubernetes quantity: {quantity!r}")
    return int(float(match.group(1)) * _QUANTITY_UNITS[match.group(2)])


def _strict_int(v: Any) -> Any:
    # `pulumi config set --path … 3` stores a number, a YAML file an int or a float like 3.0; never a bool.
    if isinstance(v, bool):
        raise ValueError(f"must be int, got {v!r}")
    if isinstance(v, str) and v.strip().isdigit():
        return int(v)
    return v


def _strict_float(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError(f"must be float, got {v!r}")
    return v


def _strict_bool(v: Any) -> Any:
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    if not isinstance(v, bool):
        raise ValueError(f"must be bool, got {v!r}")
    return v


def between(lo: int, hi: int) -> AfterValidator:
    def check(v: int) -> int:
        _check(lo <= v <= hi, f"must be between {lo} and {hi}, got {v}")
        return v

    return AfterValidator(check)


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def app_bounds(name: str) -> AfterValidator:
    """The bounds of the app setting ``name`` (``Settings``' own ge/gt/le/lt): a value the pods would refuse
    at start is refused here, before any resource."""
    lo: float | None = None
    hi: float | None = None
    lo_open = hi_open = False
    for bound in Settings.model_fields[name].metadata:  # Settings' bounds are numbers
        match bound:
            case annotated_types.Ge(ge=x):
                lo, lo_open = cast(float, x), False
            case annotated_types.Gt(gt=x):
                lo, lo_open = cast(float, x), True
            case annotated_types.Le(le=x):
                hi, hi_open = cast(float, x), False
            case annotated_types.Lt(lt=x):
                hi, hi_open = cast(float, x), True
            case _:  # a constraint this mirror does not know would be silently dropped
                raise TypeError(f"Settings.{name}: unsupported constraint {bound!r}")
    parts = [f"{'above' if lo_open else 'at least'} {_number(lo)}"] if lo is not None else []
    parts += [f"{'below' if hi_open else 'at most'} {_number(hi)}"] if hi is not None else []
    what = f"must be {' and '.join(parts)} ({ENV_PREFIX}{name.upper()} in the app)"

    def check(v: float) -> float:
        low_ok = lo is None or (v > lo if lo_open else v >= lo)
        high_ok = hi is None or (v < hi if hi_open else v <= hi)
        _check(low_ok and high_ok, f"{what}, got {_number(v)}")
        return v

    return AfterValidator(check)


def app_setting(name: str) -> Any:
    """A stack key for the app setting ``name``: the camelCase alias the chart's ``settings`` use, the app's default."""
    head, *rest = name.split("_")
    return Field(Settings.model_fields[name].default, alias=head + "".join(w.title() for w in rest))


def one_of(*choices: str) -> AfterValidator:
    def check(v: str) -> str:
        _check(v in choices, f"must be one of {', '.join(choices)}, got {v!r}")
        return v

    return AfterValidator(check)


def matching(pattern: re.Pattern[str], what: str, *, empty_ok: bool = False) -> AfterValidator:
    def check(v: str) -> str:
        _check((empty_ok and v == "") or bool(pattern.match(v)), f"must be {what}, got {v!r}")
        return v

    return AfterValidator(check)


def _image(v: str) -> str | None:
    """What is wrong with a ``repository:tag`` image reference, or None."""
    repo, sep, tag = v.rpartition(":")
    if not sep or "/" in tag or not repo:
        return f"must be repository:tag with a pinned tag, got {v!r}"
    if tag == "latest":
        return "must not use the 'latest' tag"
    return None


def _valid_image(v: str) -> str:
    message = _image(v)
    _check(message is None, message or "")
    return v


def _image_tag(v: str) -> str:
    _check(v != "latest", "must not be 'latest'")
    _check(bool(_TAG.match(v)), f"is not a valid image tag: {v!r}")
    return v


Int = Annotated[int, BeforeValidator(_strict_int)]
Float = Annotated[float, BeforeValidator(_strict_float)]
Bool = Annotated[bool, BeforeValidator(_strict_bool)]
Name = Annotated[str, matching(_NAME, "a DNS-1123 label")]
OptionalName = Annotated[str, matching(_NAME, "a StorageClass name", empty_ok=True)]
Quantity = Annotated[str, matching(_QUANTITY, "a Kubernetes quantity like 250m or 512Mi")]
Image = Annotated[str, AfterValidator(_valid_image)]


class _Model(BaseModel):
    """Raw config keys (camelCase aliases) into snake_case attributes; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, coerce_numbers_to_str=True)

    @model_validator(mode="before")
    @classmethod
    def _absent_means_default(cls, data: Any) -> Any:
        # A key set to null (YAML `key:` or `~`) means "the default", and so does "" for a key whose
        # default is "not set" (None): `pulumi config set --path kubernetes.context ""` unsets it.
        if not isinstance(data, Mapping):
            return data
        unset_by_empty = {f.alias or n for n, f in cls.model_fields.items() if f.default is None}
        return {k: v for k, v in data.items() if v is not None and not (v == "" and k in unset_by_empty)}


# -- typed configuration -------------------------------------------------------------------------


class Resources(_Model):
    cpu_request: Quantity = Field(alias="cpu")
    memory_request: Quantity = Field(alias="memory")
    cpu_limit: Quantity | None = Field(None, alias="cpuLimit")
    memory_limit: Quantity = Field(alias="memoryLimit")

    def to_k8s(self) -> dict[str, dict[str, str]]:
        limits = {"memory": self.memory_limit}
        if self.cpu_limit:
            limits["cpu"] = self.cpu_limit
        return {"requests": {"cpu": self.cpu_request, "memory": self.memory_request}, "limits": limits}

    @classmethod
    def of(cls, cpu: str, memory: str, memory_limit: str) -> Resources:
        return cls(cpu_request=cpu, memory_request=memory, memory_limit=memory_limit)


def _over(cpu: str, memory: str, memory_limit: str) -> BeforeValidator:
    """A resources field's defaults (``Annotated[Resources, _over(...)]``): given keys override them one by one."""
    raw = {"cpu": cpu, "memory": memory, "memoryLimit": memory_limit}
    return BeforeValidator(lambda v: {**raw, **v} if isinstance(v, Mapping) else v)


class KubernetesConfig(_Model):
    namespace: Name = "pynomaly"
    context: str | None = None
    kubeconfig: str | None = None  # a path (``~`` expanded) or the kubeconfig text itself
    # Render mode: the provider writes the manifests into this folder instead of applying them.
    render_yaml_to_directory: str | None = Field(None, alias="renderYamlToDirectory")


class ImageConfig(_Model):
    repository: Annotated[str, matching(_IMAGE_REPO, "an image repository")] = "pynomaly/pynomaly"
    tag: Annotated[str, AfterValidator(_image_tag)]  # the app package version unless overridden; never ``latest``
    pull_policy: Annotated[str, one_of("IfNotPresent", "Always", "Never")] = Field("IfNotPresent", alias="pullPolicy")


class ExposeConfig(_Model):
    """How users reach the API: ``portForward`` (ClusterIP), ``nodePort``, ``loadBalancer`` or ``ingress``."""

    mode: Annotated[str, one_of("portForward", "nodePort", "loadBalancer", "ingress")] = "portForward"
    host: str | None = None
    ingress_class: Annotated[str, matching(_NAME, "an IngressClass name")] | None = Field(None, alias="ingressClass")
    tls_secret: Annotated[str, matching(_NAME, "a Secret name")] | None = Field(None, alias="tlsSecret")
    node_port: Annotated[Int, between(30000, 32767)] | None = Field(None, alias="nodePort")

    @model_validator(mode="after")
    def _host_for_ingress(self) -> ExposeConfig:
        _keyed([] if self.mode != "ingress" or self.host else ["host: required when expose.mode is ingress"])
        return self


_REDIS_RESOURCES = ("100m", "128Mi", "256Mi")


class RedisConfig(_Model):
    mode: Annotated[str, one_of("standalone", "sentinel", "external")] = "standalone"
    replicas: Annotated[Int, between(1, 9)] = 1  # 3 by default in sentinel mode
    storage_size: Annotated[str, matching(_QUANTITY, "a quantity like 1Gi")] = Field("1Gi", alias="storage")
    storage_class: OptionalName | None = Field(None, alias="storageClass")
    # Unset: MAXMEMORY_SHARE of resources.memoryLimit (see effective_maxmemory).
    maxmemory: Annotated[str, matching(_MAXMEMORY, _MAXMEMORY_WHAT)] | None = None
    image: Image = "redis:7.4.2"
    proxy_image: Image = Field("haproxy:3.0.5-alpine", alias="proxyImage")
    resources: Annotated[Resources, _over(*_REDIS_RESOURCES)] = Resources.of(*_REDIS_RESOURCES)
    external_tls: Bool = Field(True, alias="tls")

    @model_validator(mode="before")
    @classmethod
    def _sentinel_replicas(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("mode") == "sentinel" and data.get("replicas") is None:
            return {**data, "replicas": 3}
        return data

    @model_validator(mode="after")
    def _replicas_fit_the_mode(self) -> RedisConfig:
        if self.mode == "sentinel" and self.replicas < 3:
            _keyed(["replicas: sentinel mode needs at least 3 replicas for a quorum"])
        if self.mode == "standalone" and self.replicas != 1:
            _keyed(["replicas: standalone mode runs exactly 1 replica"])
        return self

    @model_validator(mode="after")
    def _maxmemory_fits_the_limit(self) -> RedisConfig:
        if not self.in_cluster:  # a managed Redis: its maxmemory is the provider's
            return self
        limit = quantity_bytes(self.resources.memory_limit)
        if self.maxmemory is None:
            if self.maxmemory_bytes < _MIB:
                _keyed(
                    [
                        f"resources.memoryLimit: {self.resources.memory_limit} is too small for Redis "
                        "(maxmemory below 1mb)"
                    ]
                )
        elif self.maxmemory_bytes > MAXMEMORY_MAX_SHARE * limit:
            _keyed(
                [
                    f"maxmemory: {self.maxmemory} is above {MAXMEMORY_MAX_SHARE:.0%} of resources.memoryLimit "
                    f"({self.resources.memory_limit}): Redis would be OOM-killed before it refuses writes; leave it "
                    f"unset for {MAXMEMORY_SHARE:.0%} of the limit, or raise the limit"
                ]
            )
        return self

    @property
    def maxmemory_bytes(self) -> int:
        if self.maxmemory is not None:
            return redis_size_bytes(self.maxmemory)
        return int(MAXMEMORY_SHARE * quantity_bytes(self.resources.memory_limit)) // _MIB * _MIB

    @property
    def effective_maxmemory(self) -> str:
        """redis.conf's maxmemory: the configured one, or MAXMEMORY_SHARE of the container's memory limit."""
        return self.maxmemory if self.maxmemory is not None else f"{self.maxmemory_bytes // _MIB}mb"

    @property
    def in_cluster(self) -> bool:
        return self.mode != "external"


class KafkaExternal(_Model):
    bootstrap_servers: str | None = Field(None, alias="bootstrapServers")
    security_protocol: Annotated[str, one_of("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL")] = Field(
        "SASL_SSL", alias="securityProtocol"
    )
    sasl_mechanism: Annotated[str, one_of("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")] = Field(
        "SCRAM-SHA-512", alias="saslMechanism"
    )
    username: str | None = None


_KAFKA_RESOURCES = ("250m", "1Gi", "1Gi")


def _controllers(v: int) -> int:
    _check(v in (0, 1, 3, 5), "must be 0, 1, 3 or 5")
    return v


class KafkaConfig(_Model):
    mode: Annotated[str, one_of("inCluster", "external")] = "inCluster"
    brokers: Annotated[Int, between(1, 15)] = 1
    controllers: Annotated[Int, AfterValidator(_controllers)] = 0  # 0 = combined broker+controller nodes
    storage_size: Annotated[str, matching(_QUANTITY, "a quantity like 10Gi")] = Field("5Gi", alias="storage")
    storage_class: OptionalName | None = Field(None, alias="storageClass")
    # The same Kafka release the local system and the tests run (app/pynomaly/localstack/pom.xml).
    image: Image = "apache/kafka:4.4.0"
    # Protocol version KEDA's kafka scaler speaks (the chart's default too); Kafka 4.x brokers
    # refuse clients older than 2.1, so it must be set explicitly.
    version: Annotated[str, matching(_VERSION, "x.y.z")] = "4.0.0"
    resources: Annotated[Resources, _over(*_KAFKA_RESOURCES)] = Resources.of(*_KAFKA_RESOURCES)
    heap: Annotated[str, matching(_JVM_SIZE, "a JVM size like 512m")] = "512m"
    sasl: Bool = True
    tls_secret: Annotated[str, matching(_NAME, "a Secret name")] | None = Field(None, alias="tlsSecret")
    zone_spread: Bool = Field(False, alias="zoneSpread")
    rack_awareness: Bool = Field(False, alias="rackAwareness")
    rack_init_image: Image = Field("alpine/kubectl:1.34.1", alias="rackInitImage")
    external: KafkaExternal = KafkaExternal()

    @model_validator(mode="after")
    def _consistent(self) -> KafkaConfig:
        problems = []
        if self.mode == "external" and not self.external.bootstrap_servers:
            problems.append("external.bootstrapServers: required when kafka.mode is external")
        if self.tls_secret and not self.sasl:
            problems.append("tlsSecret: TLS is only offered together with SASL (sasl: true)")
        _keyed(problems)
        return self

    @property
    def in_cluster(self) -> bool:
        return self.mode == "inCluster"

    @property
    def external_bootstrap(self) -> str | None:
        return self.external.bootstrap_servers

    @property
    def external_security_protocol(self) -> str:
        return self.external.security_protocol

    @property
    def external_sasl_mechanism(self) -> str:
        return self.external.sasl_mechanism

    @property
    def external_username(self) -> str | None:
        return self.external.username

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


class PoolOverride(_Model):
    min: Annotated[Int, between(0, 100)] | None = None
    max: Annotated[Int, between(1, 500)] | None = None
    target: Annotated[Int, between(1, 100_000)] | None = None

    def over(self, base: PoolScaling) -> PoolScaling:
        return PoolScaling(
            base.min_replicas if self.min is None else self.min,
            base.max_replicas if self.max is None else self.max,
            base.target if self.target is None else self.target,
        )


class _Pools(_Model):
    """``{default: {...}, <pool>: {...}}``: per-pool overrides on top of ``default``, checked min <= max.

    The fields (``default`` and one per pool of the topology) are made by :func:`_pools_model`."""

    POOLS: ClassVar[tuple[str, ...]] = ()
    DEFAULTS: ClassVar[PoolScaling] = PoolScaling(1, 1, 1)

    def resolved(self) -> dict[str, PoolScaling]:
        base = (getattr(self, "default") or PoolOverride()).over(self.DEFAULTS)  # noqa: B009 # a dynamic field
        return {p: (getattr(self, p) or PoolOverride()).over(base) for p in self.POOLS}

    @model_validator(mode="after")
    def _min_below_max(self) -> _Pools:
        bad = [
            f"{p}: min ({s.min_replicas}) is above max ({s.max_replicas})"
            for p, s in self.resolved().items()
            if s.min_replicas > s.max_replicas
        ]
        _keyed(bad)
        return self


def _pools_model(name: str, pools: list[str], defaults: PoolScaling) -> type[_Pools]:
    fields: dict[str, Any] = {p: (PoolOverride | None, None) for p in ["default", *pools]}
    model = create_model(name, __base__=_Pools, **fields)
    model.POOLS, model.DEFAULTS = tuple(pools), defaults
    return model


if TYPE_CHECKING:  # made at import from the topology; to the type checker, what they all are
    WorkerPools = _Pools
    ConsumerPools = _Pools
else:
    WorkerPools = _pools_model("WorkerPools", [p.name for p in TOPOLOGY.worker_pools], PoolScaling(1, 4, 10))
    ConsumerPools = _pools_model("ConsumerPools", [g.pool for g in TOPOLOGY.consumer_groups], PoolScaling(1, 3, 100))


class AutoscalingConfig(_Model):
    keda: Bool = False
    polling_interval: Annotated[Int, between(1, 3600)] = Field(15, alias="pollingInterval")
    cooldown_period: Annotated[Int, between(0, 86400)] = Field(300, alias="cooldownPeriod")
    scale_to_zero_batch: Bool = Field(False, alias="scaleToZeroBatch")
    cpu_utilization: Annotated[Int, between(10, 100)] = Field(70, alias="cpuUtilization")
    memory_utilization: Annotated[Int, between(10, 100)] | None = Field(None, alias="memoryUtilization")
    worker_pools: WorkerPools = Field(WorkerPools(), alias="workers")
    consumer_pools: ConsumerPools = Field(ConsumerPools(), alias="consumers")
    # Where KEDA's operator runs: its pods may read Redis list lengths and Kafka lag.
    keda_namespace: Name = Field("keda", alias="kedaNamespace")
    fallback_replicas: Annotated[Int, between(0, 500)] = Field(0, alias="fallbackReplicas")  # 0: no fallback

    @model_validator(mode="after")
    def _consumers_fit_their_partitions(self) -> AutoscalingConfig:
        problems = []
        for group in TOPOLOGY.consumer_groups:
            limit = TOPOLOGY.max_partitions(group)
            scaling = self.consumers[group.pool]
            if scaling.max_replicas > limit:
                problems.append(
                    f"consumers.{group.pool}.max: {scaling.max_replicas} is above the {limit} "
                    "partition(s) of the group's largest topic; extra consumers would sit idle"
                )
        _keyed(problems)
        return self

    @property
    def workers(self) -> dict[str, PoolScaling]:
        return self.worker_pools.resolved()

    @property
    def consumers(self) -> dict[str, PoolScaling]:
        return self.consumer_pools.resolved()


_API_RESOURCES = ("100m", "256Mi", "512Mi")
_WORKER_RESOURCES = ("250m", "512Mi", "1Gi")
_CONSUMER_RESOURCES = ("50m", "128Mi", "256Mi")
# The live scorer loads PyOD, scikit-learn and numpy and keeps models cached: sized like a small worker.
_SCORER_RESOURCES = ("250m", "384Mi", "1Gi")


class AppResources(_Model):
    api: Annotated[Resources, _over(*_API_RESOURCES)] = Resources.of(*_API_RESOURCES)
    worker: Annotated[Resources, _over(*_WORKER_RESOURCES)] = Resources.of(*_WORKER_RESOURCES)
    consumer: Annotated[Resources, _over(*_CONSUMER_RESOURCES)] = Resources.of(*_CONSUMER_RESOURCES)
    scorer: Annotated[Resources, _over(*_SCORER_RESOURCES)] = Resources.of(*_SCORER_RESOURCES)


class AppConfig(_Model):
    api_replicas: Annotated[Int, between(1, 50)] = Field(1, alias="apiReplicas")
    log_level: Annotated[str, one_of("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")] = Field("INFO", alias="logLevel")
    task_time_limit: Annotated[Int, between(10, 86400)] = Field(3600, alias="taskTimeLimit")
    task_soft_time_limit: Annotated[Int, between(5, 86400)] = Field(3300, alias="taskSoftTimeLimit")
    resources: AppResources = AppResources()
    network_policies: Bool = Field(True, alias="networkPolicies")
    service_monitor: Bool = Field(False, alias="serviceMonitor")

    # What the app keeps and how much (PYNOMALY_*; the chart's `settings` of the same names): the app's
    # types, bounds and defaults, so a stack value the pods would refuse at start fails here first.
    BOUNDED_SETTINGS: ClassVar[tuple[str, ...]] = (
        "result_ttl_seconds",
        "job_data_ttl_seconds",
        "dataset_retention_seconds",
        "audit_retention_seconds",
        "audit_max_records",
        "maintenance_interval_seconds",
        "redis_memory_high_watermark",
        "outbox_max_events",
        "stream_maxlen",
        "event_max_list_items",
        "event_max_mapping_items",
        "event_max_string_chars",
        "max_upload_bytes",
        "max_rows",
        "max_columns",
        "max_schedules",
        "max_datasets",
        "dataset_fetch_max_bytes",
        "max_models",
        "model_max_versions",
        "model_max_artifact_bytes",
    )
    result_ttl_seconds: Annotated[Int, app_bounds("result_ttl_seconds")] = app_setting("result_ttl_seconds")
    job_data_ttl_seconds: Annotated[Int, app_bounds("job_data_ttl_seconds")] = app_setting("job_data_ttl_seconds")
    dataset_retention_seconds: Annotated[Int, app_bounds("dataset_retention_seconds")] = app_setting(
        "dataset_retention_seconds"
    )
    audit_retention_seconds: Annotated[Int, app_bounds("audit_retention_seconds")] = app_setting(
        "audit_retention_seconds"
    )
    audit_max_records: Annotated[Int, app_bounds("audit_max_records")] = app_setting("audit_max_records")
    maintenance_interval_seconds: Annotated[Int, app_bounds("maintenance_interval_seconds")] = app_setting(
        "maintenance_interval_seconds"
    )
    redis_memory_high_watermark: Annotated[Float, app_bounds("redis_memory_high_watermark")] = app_setting(
        "redis_memory_high_watermark"
    )
    outbox_max_events: Annotated[Int, app_bounds("outbox_max_events")] = app_setting("outbox_max_events")
    stream_maxlen: Annotated[Int, app_bounds("stream_maxlen")] = app_setting("stream_maxlen")
    event_max_list_items: Annotated[Int, app_bounds("event_max_list_items")] = app_setting("event_max_list_items")
    event_max_mapping_items: Annotated[Int, app_bounds("event_max_mapping_items")] = app_setting(
        "event_max_mapping_items"
    )
    event_max_string_chars: Annotated[Int, app_bounds("event_max_string_chars")] = app_setting("event_max_string_chars")
    max_upload_bytes: Annotated[Int, app_bounds("max_upload_bytes")] = app_setting("max_upload_bytes")
    max_rows: Annotated[Int, app_bounds("max_rows")] = app_setting("max_rows")
    max_columns: Annotated[Int, app_bounds("max_columns")] = app_setting("max_columns")
    max_schedules: Annotated[Int, app_bounds("max_schedules")] = app_setting("max_schedules")
    max_datasets: Annotated[Int, app_bounds("max_datasets")] = app_setting("max_datasets")
    dataset_fetch_max_bytes: Annotated[Int, app_bounds("dataset_fetch_max_bytes")] = app_setting(
        "dataset_fetch_max_bytes"
    )
    max_models: Annotated[Int, app_bounds("max_models")] = app_setting("max_models")
    model_max_versions: Annotated[Int, app_bounds("model_max_versions")] = app_setting("model_max_versions")
    model_max_artifact_bytes: Annotated[Int, app_bounds("model_max_artifact_bytes")] = app_setting(
        "model_max_artifact_bytes"
    )

    @model_validator(mode="after")
    def _soft_below_hard(self) -> AppConfig:
        if self.task_soft_time_limit >= self.task_time_limit:
            _keyed([f"taskSoftTimeLimit: must be below taskTimeLimit ({self.task_time_limit})"])
        return self

    @model_validator(mode="after")
    def _data_within_the_job(self) -> AppConfig:
        # As the app's own check: a job's data never outlives the job (0 = as long as the job).
        if self.job_data_ttl_seconds > self.result_ttl_seconds:
            _keyed(
                [
                    f"jobDataTtlSeconds: must not exceed resultTtlSeconds ({self.result_ttl_seconds}); "
                    "0 keeps a job's data as long as the job"
                ]
            )
        return self

    def bounded_settings(self) -> dict[str, int | float]:
        """The chart's ``settings`` for BOUNDED_SETTINGS, by their camelCase keys."""
        return {AppConfig.model_fields[n].alias or n: getattr(self, n) for n in self.BOUNDED_SETTINGS}

    @property
    def api_resources(self) -> Resources:
        return self.resources.api

    @property
    def worker_resources(self) -> Resources:
        return self.resources.worker

    @property
    def consumer_resources(self) -> Resources:
        return self.resources.consumer

    @property
    def scorer_resources(self) -> Resources:
        return self.resources.scorer


def _cidrs(v: Any) -> Any:
    ok = isinstance(v, list | tuple) and all(isinstance(c, str) and _CIDR.match(c) for c in v)
    _check(ok, "must be a list of CIDRs like 203.0.113.25/32")
    return tuple(v)


class SmtpConfig(_Model):
    """E-mail notifications: the chart's ``smtp`` values; the password is the ``smtpPassword`` secret."""

    host: Annotated[str, matching(_HOST, "a host name or address", empty_ok=True)] = ""
    port: Annotated[Int, between(1, 65535)] = 587
    security: Annotated[str, one_of("none", "starttls", "tls")] = "starttls"  # none | starttls | tls
    username: str = ""
    sender: Annotated[str, matching(_EMAIL, "an e-mail address")] = Field("pynomaly@localhost", alias="from")
    timeout: Annotated[Int, between(1, 300)] = 10  # seconds, whole (the app reads PYNOMALY_SMTP_TIMEOUT as a float)
    # Where the notification pools may reach the server (NetworkPolicy).
    cidrs: Annotated[tuple[str, ...], BeforeValidator(_cidrs)] = ()


class EncryptionConfig(_Model):
    """Encryption at rest of payload blobs in Redis (the chart's ``encryption`` values); the keys are
    the ``encryptionKey`` and ``encryptionPreviousKeys`` secrets, given by the operator."""

    enabled: Bool = False


class ModelStoreConfig(_Model):
    """Where trained models' artifacts live (the chart's ``models`` values, PYNOMALY_MODEL_STORE): ``redis``
    (the default) or ``persistentVolume``, a ReadWriteMany claim mounted by the API and the workers
    (read-write) and the scorers (read-only).  The top-level ``storageClass`` is not inherited: Redis'
    and Kafka's class is usually ReadWriteOnce.  An S3-compatible bucket is not implemented."""

    mode: Annotated[str, one_of("redis", "persistentVolume")] = "redis"
    size: Annotated[str, matching(_QUANTITY, "a quantity like 10Gi")] = "10Gi"
    # A class offering ReadWriteMany (NFS, CephFS, EFS, Filestore, Azure Files); unset: the cluster's default.
    storage_class: OptionalName | None = Field(None, alias="storageClass")
    # An existing ReadWriteMany claim instead of one the chart creates.
    existing_claim: Annotated[str, matching(_NAME, "a PersistentVolumeClaim name")] | None = Field(
        None, alias="existingClaim"
    )

    @model_validator(mode="after")
    def _claim_needs_the_volume(self) -> ModelStoreConfig:
        if self.mode == "redis" and (self.existing_claim or self.storage_class):
            _keyed(["mode: persistentVolume is needed for storageClass or existingClaim (mode is redis)"])
        return self


def _labels(v: Any) -> Any:
    _check(isinstance(v, Mapping) and all(isinstance(x, str) for x in v.values()), "must map label names to strings")
    return dict(v)


class _Document(_Model):
    """The whole non-secret ``pynomaly:*`` config, as the stack file holds it."""

    SECTIONS: ClassVar[tuple[str, ...]] = ("redis", "kafka")

    environment: Annotated[str, one_of(*ENVIRONMENTS)] | None = None
    storage_class: OptionalName | None = Field(None, alias="storageClass")
    kubernetes: KubernetesConfig = KubernetesConfig()
    image: ImageConfig
    expose: ExposeConfig = ExposeConfig()
    redis: RedisConfig = RedisConfig()
    kafka: KafkaConfig = KafkaConfig()
    autoscaling: AutoscalingConfig = AutoscalingConfig()
    app: AppConfig = AppConfig()
    labels: Annotated[dict[str, str], BeforeValidator(_labels)] = {}
    smtp: SmtpConfig = SmtpConfig()
    encryption: EncryptionConfig = EncryptionConfig()
    model_store: ModelStoreConfig = Field(ModelStoreConfig(), alias="modelStore")

    @model_validator(mode="before")
    @classmethod
    def _shared_storage_class(cls, data: Any) -> Any:
        # storageClass at the top applies to Redis and Kafka unless they name their own.
        if not isinstance(data, Mapping) or not data.get("storageClass"):
            return data
        data = dict(data)
        for section in cls.SECTIONS:
            own = data.get(section)
            if own is None or (isinstance(own, Mapping) and not own.get("storageClass")):
                data[section] = {**(own or {}), "storageClass": data["storageClass"]}
        return data

    @model_validator(mode="after")
    def _smtp_egress(self) -> _Document:
        if self.smtp.host and self.app.network_policies and not self.smtp.cidrs:
            _keyed(
                [
                    "smtp.cidrs: required with smtp.host while app.networkPolicies is on (the SMTP server's "
                    "address as CIDRs; egress is never opened to everything)"
                ]
            )
        return self


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
    model_store: ModelStoreConfig = field(default_factory=ModelStoreConfig)


# -- validation (pure) ---------------------------------------------------------------------------

_TYPE_NAMES = {"int": "int", "bool": "bool", "string": "str", "float": "float"}


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the model at ``loc`` (a path of aliases) accepts."""
    model: Any = _Document
    for part in loc:
        fld = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if fld is None:
            return []
        inner = [a for a in getattr(fld.annotation, "__args__", ()) if isinstance(a, type)] or [fld.annotation]
        model = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return sorted(f.alias or n for n, f in model.model_fields.items())


def _problem(error: Mapping[str, Any]) -> list[str]:
    loc = tuple(str(p) for p in error["loc"])
    key = ".".join((PROJECT, *loc))
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        return [f"{key}: unknown key (allowed: {', '.join(allowed)})"]
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return [f"{key}: must be an object, got {type(value).__name__}"]
    if kind == "missing":
        return [f"{key}: required"]
    if kind == "keyed":
        return [f"{key}.{line}" for line in error["ctx"]["lines"].split("\n")]
    if kind == "value_error":
        return [f"{key}: {error['ctx']['error']}"]
    base = kind.split("_", 1)[0]
    if base in _TYPE_NAMES:
        return [f"{key}: must be {_TYPE_NAMES[base]}, got {value!r}"]
    return [f"{key}: {error['msg']}"]


def parse_config(raw: Mapping[str, Any], environment: str, *, default_tag: str) -> StackConfig:
    """Validate the raw ``pynomaly:*`` config (keys without the prefix) into a :class:`StackConfig`.

    ``raw`` holds the non-secret keys with their JSON values decoded; secret keys are read by
    :func:`load` and must not appear here.  Raises :class:`ConfigError` listing every problem.
    """
    problems = [
        f"{PROJECT}:{key}: is a secret; set it with `pulumi config set --secret {key}`"
        for key in sorted(set(SECRET_KEYS) & set(raw))
    ]
    data = {k: v for k, v in raw.items() if k not in SECRET_KEYS}
    image = data.get("image")
    data["image"] = (
        {"tag": default_tag, **image}
        if isinstance(image, Mapping)
        else (image if image is not None else {"tag": default_tag})
    )
    try:
        doc = _Document.model_validate(data)
    except ValidationError as exc:
        problems += [p for error in exc.errors() for p in _problem(error)]
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return StackConfig(
        doc.environment or environment,
        doc.kubernetes,
        doc.image,
        doc.expose,
        doc.redis,
        doc.kafka,
        doc.autoscaling,
        doc.app,
        Secrets(),
        doc.labels,
        doc.smtp,
        doc.encryption,
        doc.model_store,
    )


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
    if (
        stack.kafka.mode == "external"
        and stack.kafka.external_security_protocol.startswith("SASL")
        and (secrets.kafka_password is None or not stack.kafka.external_username)
    ):
        extra.append(f"{PROJECT}:kafkaPassword and kafka.external.username: required for an external SASL Kafka")
    if stack.smtp.username and secrets.smtp_password is None:
        extra.append(f"{PROJECT}:smtpPassword: required (as a secret) when smtp.username is set")
    if stack.encryption.enabled and secrets.encryption_key is None:
        extra.append(
            f"{PROJECT}:encryptionKey: required (as a secret) when encryption.enabled is true; make one "
            f"with `{ENCRYPTION_KEY_COMMAND}` and keep a copy (without it the sealed data is lost)"
        )
    extra += encryption_key_problems(raw)
    if extra:
        raise ConfigError(extra)
    return StackConfig(
        stack.environment,
        stack.kubernetes,
        stack.image,
        stack.expose,
        stack.redis,
        stack.kafka,
        stack.autoscaling,
        stack.app,
        secrets,
        stack.labels,
        stack.smtp,
        stack.encryption,
        stack.model_store,
    )


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
