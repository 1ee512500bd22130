"""Pulumi-mock runs of the infra program, one per environment, shared by the infra tests."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from infra import mocked
from infra.config import ENVIRONMENTS
from tests.support.k8s import load_yaml_documents
from tools.helm import template_chart

HELM_CHART = "kubernetes:helm.sh/v4:Chart"
_RUNS: dict[str, mocked.MockedRun] = {}
_CHART_OBJECTS: dict[str, list[dict[str, Any]]] = {}


def run_env(env: str) -> mocked.MockedRun:
    """The mocked run of ``environments/Pulumi.<env>.yaml`` (computed once per session)."""
    if env not in _RUNS:
        _RUNS[env] = mocked.run(env, secrets=mocked.operator_secrets(env))
    return _RUNS[env]


@pytest.fixture(params=ENVIRONMENTS)
def env_run(request: pytest.FixtureRequest) -> mocked.MockedRun:
    return run_env(request.param)


def kinds(run: mocked.MockedRun, kind: str) -> list[dict[str, Any]]:
    return [o for o in run.objects() if o["kind"] == kind]


def named(run: mocked.MockedRun, kind: str, name: str) -> dict[str, Any]:
    for obj in kinds(run, kind):
        if obj["metadata"]["name"] == name:
            return obj
    raise KeyError(f"{kind}/{name} not declared in {run.environment}")


def chart_values(run: mocked.MockedRun) -> dict[str, Any]:
    """The values the program derives for charts/pynomaly, autoscaling included."""
    return run.chart_values()


def chart_objects(env: str) -> list[dict[str, Any]]:
    """``helm template`` of the chart with the program's values: the application objects ``pulumi up``
    applies (mocks do not expand a Helm v4 Chart; test_engine_render proves the engine renders the same)."""
    if env not in _CHART_OBJECTS:
        run = run_env(env)
        with tempfile.TemporaryDirectory() as tmp:
            values = Path(tmp) / "values.json"
            values.write_text(json.dumps(chart_values(run)))
            text = template_chart([values], namespace=run.deployment.config.kubernetes.namespace)
        _CHART_OBJECTS[env] = load_yaml_documents(text)
    return _CHART_OBJECTS[env]
