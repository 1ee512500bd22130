"""Bounded resources in the cluster: the stack's ``app.*`` bounds of what the app keeps reach the pods as the
app's own settings (types, ranges and defaults mirrored from ``pynomaly.config.Settings``), and Redis'
``maxmemory`` is sized from its container's memory limit (noeviction: the API answers 507 before it)."""

from __future__ import annotations

from typing import Any

import pytest

from infra import mocked
from infra.application import chart_defaults
from infra.config import (
    ENVIRONMENTS,
    MAXMEMORY_MAX_SHARE,
    MAXMEMORY_SHARE,
    AppConfig,
    ConfigError,
    StackConfig,
    parse_config,
    quantity_bytes,
)
from infra.program import CHART
from pynomaly.config import ENV_PREFIX, Settings, redis_size_bytes, settings_from_env
from tests.infra.conftest import chart_objects, named, run_env
from tests.support.settings import setting_bounds

BOUNDED = AppConfig.BOUNDED_SETTINGS
ALIAS = {name: AppConfig.model_fields[name].alias or name for name in BOUNDED}
CHART_SETTINGS = chart_defaults(str(CHART))["settings"]
MIB = 1024**2

# Where an environment departs from the app's defaults, each with its reason in environments/Pulumi.<env>.yaml.
ENVIRONMENT_CHOICES: dict[str, dict[str, int]] = {
    "dev": {"modelMaxArtifactBytes": 64 * MIB},  # artifacts live in its 192mb Redis
    "onprem": {},
    "cloud": {"auditRetentionSeconds": 365 * 24 * 3600},  # a year of audit trail
}


def _raw(env: str) -> dict[str, Any]:
    return {k.split(":", 1)[1]: v for k, v in mocked.stack_file(env).items()}


def _parse(env: str = "onprem", **sections: dict[str, Any]) -> StackConfig:
    raw = _raw(env)
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return parse_config(raw, env, default_tag="0.1.0")


def _refused(env: str = "onprem", **sections: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        _parse(env, **sections)
    return str(info.value)


# -- app.* bounds ---------------------------------------------------------------------------------


def test_bounds_are_app_settings_with_the_keys_and_defaults_of_the_chart() -> None:
    defaults = AppConfig()
    for name in BOUNDED:
        assert name in Settings.model_fields, name
        assert getattr(defaults, name) == Settings.model_fields[name].default == CHART_SETTINGS[ALIAS[name]], name
    assert AppConfig().bounded_settings() == {ALIAS[n]: Settings.model_fields[n].default for n in BOUNDED}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_program_passes_every_bound_to_the_chart_and_the_pods(env: str) -> None:
    run = run_env(env)
    values = run.chart_values()["settings"]
    assert {ALIAS[n]: values[ALIAS[n]] for n in BOUNDED} == run.deployment.config.app.bounded_settings()
    differ = {ALIAS[n]: values[ALIAS[n]] for n in BOUNDED if values[ALIAS[n]] != Settings.model_fields[n].default}
    assert differ == ENVIRONMENT_CHOICES[env]
    # The chart rendered with those values: the pods' ConfigMap holds them, as the app reads them.
    (config,) = [
        c for c in chart_objects(env) if c["kind"] == "ConfigMap" and f"{ENV_PREFIX}AUDIT_MAX_RECORDS" in c["data"]
    ]
    settings = settings_from_env(config["data"])
    assert {ALIAS[n]: getattr(settings, n) for n in BOUNDED} == {ALIAS[n]: values[ALIAS[n]] for n in BOUNDED}


@pytest.mark.parametrize(
    ("name", "value"), [(name, value) for name in BOUNDED for value in setting_bounds(name).outside()]
)
def test_out_of_range_bounds_are_refused_with_the_key_named(name: str, value: float) -> None:
    message = _refused(app={ALIAS[name]: value})
    assert f"pynomaly.app.{ALIAS[name]}: must be " in message
    shown = int(value) if float(value).is_integer() else value
    assert f"({ENV_PREFIX}{name.upper()} in the app), got {shown}" in message


def test_every_bound_accepts_its_edges_and_reaches_the_chart_values() -> None:
    edges: dict[str, float] = {}
    for name in BOUNDED:
        bounds = setting_bounds(name)
        edge = bounds.maximum if bounds.maximum is not None else bounds.minimum
        edges[ALIAS[name]] = edge if edge is not None else bounds.other_than(Settings.model_fields[name].default)
    edges["jobDataTtlSeconds"] = 0  # never above resultTtlSeconds (tested below)
    assert _parse(app=edges).app.bounded_settings() == edges


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ({"auditMaxRecords": True}, "pynomaly.app.auditMaxRecords: must be int, got True"),
        ({"auditMaxRecords": "lots"}, "pynomaly.app.auditMaxRecords: must be int, got 'lots'"),
        ({"redisMemoryHighWatermark": True}, "pynomaly.app.redisMemoryHighWatermark: must be float, got True"),
        ({"redisMemoryHighWatermark": "high"}, "pynomaly.app.redisMemoryHighWatermark: must be float, got 'high'"),
        ({"auditRetentionDays": 90}, "pynomaly.app.auditRetentionDays: unknown key"),
        (
            {"jobDataTtlSeconds": 604801},
            "pynomaly.app.jobDataTtlSeconds: must not exceed resultTtlSeconds (604800)",
        ),
        (
            {"resultTtlSeconds": 3600, "jobDataTtlSeconds": 7200},
            "pynomaly.app.jobDataTtlSeconds: must not exceed resultTtlSeconds (3600)",
        ),
    ],
)
def test_bad_bounds_are_named(app: dict[str, Any], message: str) -> None:
    assert message in _refused(app=app)


def test_numbers_as_pulumi_hands_them_over_are_accepted() -> None:
    # `pulumi config set --path` stores strings, mocks and YAML give floats like 3.0.
    app = _parse(app={"auditMaxRecords": "5000", "maxModels": 20.0, "redisMemoryHighWatermark": "0.8"}).app
    assert (app.audit_max_records, app.max_models, app.redis_memory_high_watermark) == (5000, 20, 0.8)


# -- Redis maxmemory -------------------------------------------------------------------------------


def _redis_conf(run: mocked.MockedRun) -> tuple[str, str]:
    """(maxmemory line value, the redis container's memory limit) of the run's in-cluster Redis."""
    mode = run.deployment.config.redis.mode
    server = "pynomaly-redis" if mode == "standalone" else "pynomaly-redis-server"
    conf = named(run, "ConfigMap", f"{server}-config")["data"]["redis.conf"].splitlines()
    (maxmemory,) = [line.split()[1] for line in conf if line.startswith("maxmemory ")]
    assert "maxmemory-policy noeviction" in conf
    (redis,) = [
        c for c in named(run, "StatefulSet", server)["spec"]["template"]["spec"]["containers"] if c["name"] == "redis"
    ]
    return maxmemory, redis["resources"]["limits"]["memory"]


@pytest.mark.parametrize(
    ("env", "expected"), [("dev", ("192mb", "256Mi")), ("onprem", ("768mb", "1Gi")), ("cloud", ("1536mb", "2Gi"))]
)
def test_redis_maxmemory_is_three_quarters_of_its_memory_limit(env: str, expected: tuple[str, str]) -> None:
    maxmemory, limit = _redis_conf(run_env(env))
    assert (maxmemory, limit) == expected
    assert redis_size_bytes(maxmemory) == MAXMEMORY_SHARE * quantity_bytes(limit)


def test_maxmemory_follows_the_limit_and_keeps_headroom_by_default() -> None:
    # No redis section at all: the default limit (256Mi) gets 192mb, not the whole limit.
    raw = {k: v for k, v in _raw("dev").items() if k != "redis"}
    assert parse_config(raw, "dev", default_tag="0.1.0").redis.effective_maxmemory == "192mb"
    bigger = _parse(redis={"resources": {"cpu": "1", "memory": "4Gi", "memoryLimit": "4Gi"}}).redis
    assert bigger.effective_maxmemory == "3072mb"
    odd = _parse(redis={"resources": {"cpu": "1", "memory": "1G", "memoryLimit": "1G"}}).redis
    assert odd.effective_maxmemory == "715mb"  # 0.75 x 10^9 bytes, whole MiB down


def test_an_explicit_maxmemory_is_used_while_it_leaves_headroom() -> None:
    config = {**mocked.stack_file("dev"), "pynomaly:redis": {**_raw("dev")["redis"], "maxmemory": "128mb"}}
    maxmemory, limit = _redis_conf(mocked.run("dev", config=config, secrets=mocked.operator_secrets("dev")))
    assert (maxmemory, limit) == ("128mb", "256Mi")
    message = _refused("dev", redis={"maxmemory": "240mb"})  # 94% of 256Mi
    assert (
        f"pynomaly.redis.maxmemory: 240mb is above {MAXMEMORY_MAX_SHARE:.0%} of resources.memoryLimit (256Mi)"
        in message
    )
    assert _parse("dev", redis={"maxmemory": "230mb"}).redis.effective_maxmemory == "230mb"  # 89.8%


def test_a_limit_too_small_for_any_maxmemory_is_refused() -> None:
    message = _refused("dev", redis={"resources": {"cpu": "50m", "memory": "1Mi", "memoryLimit": "1Mi"}})
    assert "pynomaly.redis.resources.memoryLimit: 1Mi is too small for Redis" in message


def test_an_external_redis_is_not_sized_here() -> None:
    # A managed Redis' maxmemory is its provider's: neither the limit nor a maxmemory of ours applies.
    tiny = {"cpu": "50m", "memory": "1Mi", "memoryLimit": "1Mi"}
    cfg = _parse("cloud", redis={"mode": "external", "maxmemory": "4gb", "resources": tiny})
    assert not cfg.redis.in_cluster


@pytest.mark.parametrize(
    ("quantity", "size"),
    [("512Mi", 512 * MIB), ("2Gi", 2048 * MIB), ("1G", 10**9), ("1.5Gi", 1536 * MIB), ("128974848", 128974848)],
)
def test_quantities_in_bytes(quantity: str, size: int) -> None:
    assert quantity_bytes(quantity) == size
