"""tools/helm.py: the pinned helm binary, reused when present, one clear error without Go."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tools import helm as helm_tool
from tools import toolchain

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
    rendered = helm_tool.run_helm("template", "probe", str(chart), check=True).stdout  # no --kube-version
    minor = int(rendered.split('kube: "v1.', 1)[1].split(".", 1)[0])
    assert minor >= 30, rendered


def test_the_chart_renders_for_the_kubernetes_the_project_builds(helm: Path, tmp_path: Path) -> None:
    """helm v3.22 targets Kubernetes 1.37 by default; the project builds and tests on KUBERNETES_VERSION."""
    assert helm_tool.KUBE_VERSION == toolchain.KUBERNETES_VERSION
    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        f"apiVersion: v2\nname: probe\nversion: 0.1.0\nkubeVersion: '{toolchain.KUBERNETES_VERSION}'\n"
    )
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: probe}\n"
        "data: {kube: {{ .Capabilities.KubeVersion.Version | quote }}}\n"
    )
    assert f'kube: "{toolchain.KUBERNETES_VERSION}"' in helm_tool.template_chart((), chart=chart)
    # without the pin, the same chart is refused: helm's own default is another version
    unpinned = helm_tool.run_helm("template", "probe", str(chart))
    assert unpinned.returncode != 0 and "is incompatible with Kubernetes" in unpinned.stderr
