"""The chart's names agree with pynomaly.topology.TOPOLOGY and pynomaly.config.Settings.

Values carry every queue, topic, group and pool name; these tests are what keeps them equal to the
topology, in the chart defaults, in each environment, and in what the templates render from them.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from pynomaly.config import ENV_PREFIX, Settings
from pynomaly.topology import PRIORITY_SEPARATOR, PRIORITY_STEPS, TOPOLOGY
from tests.charts.chartlib import ENVIRONMENTS, by_kind, component, container, pool
from tools.helm import CHART

pytestmark = pytest.mark.helm

VALUES_SOURCES = ["defaults", *ENVIRONMENTS]


def values_for(source: str, chart_values: dict[str, Any], effective_values: Any) -> dict[str, Any]:
    return chart_values if source == "defaults" else effective_values(source)


@pytest.mark.parametrize("source", VALUES_SOURCES)
def test_worker_pools_match_the_topology(source: str, chart_values: Any, effective_values: Any) -> None:
    pools = values_for(source, chart_values, effective_values)["workers"]["pools"]
    assert {
        name: {"queues": p["queues"], "concurrency": p["concurrency"], "batch": p["batch"]} for name, p in pools.items()
    } == {
        p.name: {"queues": list(p.queues), "concurrency": p.concurrency, "batch": p.batch}
        for p in TOPOLOGY.worker_pools
    }


@pytest.mark.parametrize("source", VALUES_SOURCES)
def test_consumer_pools_match_the_topology(source: str, chart_values: Any, effective_values: Any) -> None:
    pools = values_for(source, chart_values, effective_values)["consumers"]["pools"]
    expected = {
        g.pool: {"group": g.name, "topics": [{"name": t, "partitions": TOPOLOGY.topic(t).partitions} for t in g.topics]}
        for g in TOPOLOGY.consumer_groups
    }
    assert {name: {"group": p["group"], "topics": p["topics"]} for name, p in pools.items()} == expected


@pytest.mark.parametrize("source", VALUES_SOURCES)
def test_consumer_replicas_never_exceed_partitions(source: str, chart_values: Any, effective_values: Any) -> None:
    pools = values_for(source, chart_values, effective_values)["consumers"]["pools"]
    for group in TOPOLOGY.consumer_groups:
        cap = TOPOLOGY.max_partitions(group)
        assert pools[group.pool]["maxReplicas"] <= cap, group.pool
        assert pools[group.pool]["replicas"] <= cap, group.pool


@pytest.mark.parametrize("source", VALUES_SOURCES)
def test_only_batch_pools_scale_to_zero(source: str, chart_values: Any, effective_values: Any) -> None:
    pools = values_for(source, chart_values, effective_values)["workers"]["pools"]
    for spec in TOPOLOGY.worker_pools:
        if not spec.batch:
            assert pools[spec.name]["minReplicas"] >= 1, spec.name


def test_priority_layout_matches_the_topology(chart_values: dict[str, Any]) -> None:
    priority = chart_values["workers"]["priority"]
    assert priority["separator"] == PRIORITY_SEPARATOR
    assert priority["steps"] == sorted(PRIORITY_STEPS.values())


def test_scaledobjects_watch_every_priority_list_of_their_queues(rendered_envs: dict[str, Any]) -> None:
    objects = rendered_envs["cloud"]  # KEDA on
    scaled = [o for o in by_kind(objects, "ScaledObject").values() if component(o) == "worker"]
    assert {pool(o) for o in scaled} == {p.name for p in TOPOLOGY.worker_pools}
    for obj in scaled:
        spec = TOPOLOGY.worker_pool(pool(obj))
        triggers = obj["spec"]["triggers"]
        assert {t["type"] for t in triggers} == {"redis"}
        assert [t["metadata"]["listName"] for t in triggers] == [
            lst for q in spec.queues for lst in TOPOLOGY.queue(q).redis_lists()
        ]
        # KEDA takes the max of triggers; the formula must add every list up.
        formula = obj["spec"]["advanced"]["scalingModifiers"]["formula"]
        assert sorted(re.split(r"\s*\+\s*", formula)) == sorted(t["name"] for t in triggers)
        assert obj["spec"]["scaleTargetRef"]["name"] == obj["metadata"]["name"]


def test_consumer_scaledobjects_follow_groups_topics_and_partitions(rendered_envs: dict[str, Any]) -> None:
    objects = rendered_envs["cloud"]
    scaled = [o for o in by_kind(objects, "ScaledObject").values() if component(o) == "consumer"]
    assert {pool(o) for o in scaled} == {g.pool for g in TOPOLOGY.consumer_groups}
    for obj in scaled:
        (group,) = [g for g in TOPOLOGY.consumer_groups if g.pool == pool(obj)]
        # One trigger on the group's whole lag: no topic, so every topic the group reads counts (summed).
        (trigger,) = obj["spec"]["triggers"]
        assert "topic" not in trigger["metadata"] and trigger["metadata"]["consumerGroup"] == group.name
        assert re.fullmatch(r"\d+\.\d+\.\d+", trigger["metadata"]["version"])
        assert obj["spec"]["maxReplicaCount"] <= TOPOLOGY.max_partitions(group)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_commands_name_topology_pools(rendered_envs: dict[str, Any], env: str) -> None:
    deployments = by_kind(rendered_envs[env], "Deployment").values()
    commands = {(component(d), pool(d)): container(d)["command"] for d in deployments}
    assert commands.pop(("api", None)) == ["pynomaly", "api"]
    assert commands.pop(("beat", None)) == ["pynomaly", "beat"]
    expected = {("worker", p.name): ["pynomaly", "worker", "--pool", p.name] for p in TOPOLOGY.worker_pools}
    expected |= {("consumer", g.pool): ["pynomaly", "consumer", "--group", g.pool] for g in TOPOLOGY.consumer_groups}
    assert commands == expected


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_pynomaly_variable_is_a_setting(rendered_envs: dict[str, Any], env: str) -> None:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    objects = rendered_envs[env]
    (config,) = [
        c
        for c in by_kind(objects, "ConfigMap").values()
        if component(c) is None and "data" in c and any(k.startswith(ENV_PREFIX) for k in c["data"])
    ]
    names = set(config["data"])
    for deployment in by_kind(objects, "Deployment").values():
        names |= {e["name"] for e in container(deployment).get("env", []) if e["name"].startswith(ENV_PREFIX)}
    assert names - known == set(), "variables the app does not read"
    assert {ENV_PREFIX + "REDIS_URL", ENV_PREFIX + "KAFKA_BOOTSTRAP_SERVERS", ENV_PREFIX + "HEARTBEAT_DIR"} <= names


def test_defaults_agree_with_the_settings_defaults(chart_values: dict[str, Any]) -> None:
    defaults = Settings()
    settings = chart_values["settings"]
    assert settings["taskTimeLimit"] == defaults.task_time_limit
    assert settings["taskSoftTimeLimit"] == defaults.task_soft_time_limit
    assert settings["maxRetries"] == defaults.max_retries
    assert settings["streamMaxlen"] == defaults.stream_maxlen == TOPOLOGY.streams[0].maxlen
    assert chart_values["api"]["port"] == defaults.api_port


def test_image_tag_defaults_to_the_app_version(rendered_envs: dict[str, Any]) -> None:
    import tomllib

    app_version = tomllib.loads((CHART.parents[1] / "app" / "pyproject.toml").read_text())["project"]["version"]
    chart = (CHART / "Chart.yaml").read_text()
    assert f'appVersion: "{app_version}"' in chart
    for objects in rendered_envs.values():
        for deployment in by_kind(objects, "Deployment").values():
            assert container(deployment)["image"].endswith(f":{app_version}")
