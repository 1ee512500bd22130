"""The real Pulumi engine, no cluster: ``tools/deploy.py`` in render mode against the mock render.

For each environment the stack is updated through the same Automation API path ``tools/deploy.py``
uses, with the Kubernetes provider's ``renderYamlToDirectory`` (``pynomaly:kubernetes.
renderYamlToDirectory``): every manifest lands in a folder instead of a cluster, the Helm v4 Chart
included.  The rendered set must equal, kind by kind and name by name, what the Pulumi-mock run
(``infra/mocked.py``) declares plus ``helm template`` of the chart with the values the program
passes.  A second update must change nothing (generated secrets stay, the chart is stable).

Needs the engine binaries (``tools/toolchain.py`` builds them when missing: minutes the first time).
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import mocked
from infra.config import ENVIRONMENTS
from infra.program import ROOT
from tests.support.k8s import load_yaml_documents

sys.path.insert(0, str(ROOT / "tools"))
import deploy
import helm as helm_tool

pytestmark = [pytest.mark.helm, pytest.mark.timeout(3600)]  # the first run may build the engine

HELM_CHART = "kubernetes:helm.sh/v4:Chart"


@pytest.fixture(scope="module")
def engine() -> dict[str, Path]:
    return deploy.engine_tools()  # builds pulumi, the provider and the shim when missing; never skips


def _by_kind(objects: list[dict[str, Any]]) -> dict[str, list[str]]:
    kinds: dict[str, list[str]] = defaultdict(list)
    for obj in objects:
        kinds[obj["kind"]].append(obj["metadata"]["name"])
    return {kind: sorted(names) for kind, names in sorted(kinds.items())}


def _mock_render(env: str, tmp_path: Path) -> list[dict[str, Any]]:
    run = mocked.run(env, secrets=mocked.operator_secrets(env))
    (chart,) = run.by_type(HELM_CHART)
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(mocked.manifest(chart)["values"]))
    namespace = run.deployment.config.kubernetes.namespace
    chart_objects = load_yaml_documents(helm_tool.template_chart([values], namespace=namespace))
    return run.objects() + chart_objects


def _engine_render(folder: Path) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for path in sorted(folder.rglob("*.yaml")):
        objects += load_yaml_documents(path.read_text())
    return objects


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_engine_render_equals_the_mock_render(env: str, tmp_path: Path, engine: dict[str, Path]) -> None:
    out = tmp_path / "rendered"
    operator = {f"pynomaly:{key}": value for key, value in mocked.operator_secrets(env).items()}
    stack = deploy.open_stack(
        env,
        overrides={"pynomaly:kubernetes.renderYamlToDirectory": str(out), **operator},
        state_dir=tmp_path / "state",
        tools=engine,
    )
    started = time.monotonic()
    first = deploy.up(stack)
    took = time.monotonic() - started
    rendered = _engine_render(out)
    expected = _mock_render(env, tmp_path)
    print(f"{env}: {len(rendered)} manifests, {sum(first.values())} resources {first} in {took:.0f} s")

    assert set(first) == {"create"}
    got, want = _by_kind(rendered), _by_kind(expected)
    for kind in sorted(set(got) | set(want)):
        assert got.get(kind) == want.get(kind), f"{env} {kind}: engine {got.get(kind)} != mocks {want.get(kind)}"
    assert len(rendered) == len(expected)

    outputs = deploy.outputs(stack)
    assert outputs["apiKey"] == "[secret]" and outputs["environment"] == env

    second = deploy.up(stack)
    assert set(second) == {"same"} and second["same"] == first["create"], f"second update changed: {second}"
    assert len(deploy.outputs(stack, show_secrets=True)["apiKey"]) == 40  # generated once, kept
