"""Pulumi-mock runs of the infra program, one per environment, shared by the infra tests."""

from __future__ import annotations

from typing import Any

import pytest

from infra import mocked
from infra.config import ENVIRONMENTS

_RUNS: dict[str, mocked.MockedRun] = {}


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
