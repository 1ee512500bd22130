"""Fixtures for the chart tests: the real helm binary and renders of charts/pynomaly."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.charts.chartlib import ENVIRONMENTS, deep_merge, env_values, env_values_path
from tests.support.k8s import load_yaml_documents
from tools.helm import CHART, HelmError, ensure_helm, template_chart


@pytest.fixture(scope="session")
def helm() -> Path:
    try:
        return ensure_helm()
    except HelmError as exc:  # a broken toolchain is a failure, never a skip
        pytest.fail(f"helm is not available: {exc}")


@pytest.fixture(scope="session")
def chart_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


@pytest.fixture(scope="session")
def effective_values(chart_values: dict[str, Any]) -> Callable[[str], dict[str, Any]]:
    """The values helm renders an environment with: chart defaults coalesced with the env file."""
    return lambda env: deep_merge(chart_values, env_values(env))


@pytest.fixture
def render(helm: Path, tmp_path: Path) -> Callable[..., list[dict[str, Any]]]:
    """render(env=None, values=None) -> objects; raises tools.helm.HelmError when helm refuses."""
    counter = iter(range(10_000))

    def _render(env: str | None = None, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        files = [env_values_path(env)] if env else []
        if values is not None:
            extra = tmp_path / f"values-{next(counter)}.json"
            extra.write_text(json.dumps(values))
            files.append(extra)
        return load_yaml_documents(template_chart(files))

    return _render


@pytest.fixture(scope="session")
def rendered_envs(helm: Path) -> dict[str, list[dict[str, Any]]]:
    """Every environment rendered once per session: the objects a helm-alone install creates."""
    return {env: load_yaml_documents(template_chart([env_values_path(env)])) for env in ENVIRONMENTS}
