"""tools/helm.py: the pinned helm binary, reused when present, one clear error without Go."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tools import helm as helm_tool

pytestmark = pytest.mark.helm


def test_ensure_returns_the_pinned_version(helm: Path) -> None:
    assert helm == helm_tool.HELM
    assert helm_tool.installed_version(helm) == helm_tool.HELM_VERSION


def test_an_existing_binary_is_reused_without_go(helm: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(helm_tool.shutil, "which", lambda name: None)
    assert helm_tool.ensure_helm() == helm


def test_missing_go_is_one_clear_error(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(helm_tool.shutil, "which", lambda name: None)
    with pytest.raises(helm_tool.HelmError, match=r"Go is missing: install Go"):
        helm_tool.ensure_helm(bin_dir=tmp_path)
    assert helm_tool.main(["ensure"]) == 0  # the cached binary still serves the CLI


def test_helm_targets_the_kubernetes_version_of_its_modules(helm: Path, tmp_path: Path) -> None:
    """The Makefile's ldflags: without them helm assumes Kubernetes 1.20 for lint and Capabilities."""
    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.1.0\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: probe}\n"
        "data: {kube: {{ .Capabilities.KubeVersion.Version | quote }}}\n"
    )
    rendered = helm_tool.template_chart((), chart=chart)
    minor = int(rendered.split('kube: "v1.', 1)[1].split(".", 1)[0])
    assert minor >= 30, rendered
