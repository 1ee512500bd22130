"""tools/render.py: what an environment would create, without a cluster."""

from __future__ import annotations

import sys

import pytest
import yaml

from infra.program import ROOT
from tests.support.k8s import load_yaml_documents

sys.path.insert(0, str(ROOT / "tools"))
import render


def test_render_prints_every_object_with_secrets_masked(capsys: pytest.CaptureFixture[str]) -> None:
    assert render.main(["onprem"]) == 0
    docs = load_yaml_documents(capsys.readouterr().out)
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "Secret", "Job"} <= kinds
    for secret in (d for d in docs if d["kind"] == "Secret"):
        assert set(secret["stringData"].values()) == {"<secret>"}


def test_render_summary_and_values(capsys: pytest.CaptureFixture[str]) -> None:
    assert render.main(["--summary"]) == 0
    summary = capsys.readouterr().out
    assert summary.splitlines()[0].split() == ["kind", "dev", "onprem", "cloud"]
    assert render.main(["dev", "--values"]) == 0
    values = yaml.safe_load(capsys.readouterr().out)
    # dev has no KEDA: the chart's CPU HPAs, at the stack's target.
    assert values["autoscaling"]["keda"]["enabled"] is False
    assert values["autoscaling"]["hpa"] == {
        "enabled": True,
        "targetCPUUtilizationPercentage": 80,
        "targetMemoryUtilizationPercentage": 0,
    }
