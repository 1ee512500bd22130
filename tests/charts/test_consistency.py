"""The chart's names agree with pynomaly.topology.TOPOLOGY and pynomaly.config.Settings.

Values carry every queue, topic, group and pool name; these tests are what keeps them equal to the
topology, in the chart defaults, in each environment, and in what the templates render from them.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from pynomaly.config import ENV_PREFIX, Settings, settings_from_env
from pynomaly.topology import PRIORITY_SEPARATOR, PRIORITY_STEPS, TOPOLOGY
from tests.charts.chartlib import ENVIRONMENTS, MINIMAL_VALUES, by_kind, component, container, deep_merge, pool
from tests.support.settings import is_numeric, setting_bounds, snake
from tools.helm import CHART, HelmError

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


# Chart defaults that differ from the app's on purpose (a cluster is not the local system), and why.
CLUSTER_DEFAULTS = {
    "environment": "names the deployment in logs and events; the app's 'local' is the local system's",
    "logFormat": "json for a cluster's log pipeline; the app's console is for a terminal",
}


def test_defaults_agree_with_the_settings_defaults(chart_values: dict[str, Any]) -> None:
    defaults = Settings()
    settings = chart_values["settings"]
    unknown = [key for key in settings if snake(key) not in Settings.model_fields]
    assert unknown == [], "chart settings that are no app setting"
    differ = {key for key, value in settings.items() if value != getattr(defaults, snake(key))}
    assert differ == set(CLUSTER_DEFAULTS)
    assert settings["streamMaxlen"] == TOPOLOGY.streams[0].maxlen
    assert chart_values["api"]["port"] == defaults.api_port


def numeric_settings(chart_values: dict[str, Any]) -> list[str]:
    return [key for key in chart_values["settings"] if is_numeric(snake(key))]


def test_schema_mirrors_the_settings_bounds(chart_values: dict[str, Any]) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["settings"]
    keywords = ("type", "minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")
    for key in numeric_settings(chart_values):
        node = schema["properties"][key]
        assert {k: node[k] for k in keywords if k in node} == setting_bounds(snake(key)).json_schema(), key
        # Required: `--set settings.<key>=null` would otherwise render 0, which the pods refuse at start.
        assert key in schema["required"], key


def test_every_setting_renders_into_the_variable_the_app_reads(chart_values: dict[str, Any], render: Any) -> None:
    defaults = chart_values["settings"]
    chosen: dict[str, Any] = {
        key: setting_bounds(snake(key)).other_than(defaults[key]) for key in numeric_settings(chart_values)
    }
    chosen |= {
        "environment": "staging",
        "logLevel": "WARNING",
        "logFormat": "console",
        "publicUrl": "https://pynomaly.example",
    }
    assert set(chosen) == set(defaults), "a chart setting this test does not set"
    objects = render(values=deep_merge(MINIMAL_VALUES, {"settings": chosen}))
    configmaps = by_kind(objects, "ConfigMap")
    deployments = by_kind(objects, "Deployment")
    assert deployments
    for name, deployment in deployments.items():
        # What the container sees: the ConfigMaps it takes whole (envFrom), then its own literal env on top.
        environ: dict[str, str] = {}
        for source in container(deployment)["envFrom"]:
            environ |= configmaps[source["configMapRef"]["name"]]["data"]
        environ |= {e["name"]: e["value"] for e in container(deployment).get("env", []) if "value" in e}
        settings = settings_from_env(environ)
        got = {key: getattr(settings, snake(key)) for key in chosen}
        assert got == {key: value.upper() if key == "logLevel" else value for key, value in chosen.items()}, name


def test_out_of_range_settings_are_refused_at_render(chart_values: dict[str, Any], render: Any) -> None:
    # Every numeric setting just below its lower bound in one render, then just above its upper bound:
    # helm names every offending path at once.
    outside = {key: setting_bounds(snake(key)).outside() for key in numeric_settings(chart_values)}
    for edge in (0, 1):
        bad = {key: values[edge] for key, values in outside.items() if len(values) > edge}
        assert bad
        with pytest.raises(HelmError) as info:
            render(values=deep_merge(MINIMAL_VALUES, {"settings": bad}))
        message = str(info.value)
        assert "values don't meet the specifications of the schema" in message
        assert [key for key in bad if f"at '/settings/{key}'" not in message] == []


def test_image_tag_defaults_to_the_app_version(rendered_envs: dict[str, Any]) -> None:
    import tomllib

    app_version = tomllib.loads((CHART.parents[1] / "app" / "pyproject.toml").read_text())["project"]["version"]
    chart = (CHART / "Chart.yaml").read_text()
    assert f'appVersion: "{app_version}"' in chart
    for objects in rendered_envs.values():
        for deployment in by_kind(objects, "Deployment").values():
            assert container(deployment)["image"].endswith(f":{app_version}")
