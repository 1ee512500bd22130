#!/usr/bin/env python3
"""The real helm v3 binary for this project, built from the Go module proxy and cached.

    python tools/helm.py ensure      # builds helm into the machine cache when missing, prints its path
    python tools/helm.py version     # the version this project pins
    python tools/helm.py template ENV [helm args]   # charts/pynomaly rendered with
                                     # environments/helm/ENV.values.yaml (helm-alone install)

Importable: ``ensure_helm() -> Path``, ``run_helm(*args)`` and ``template_chart(...) -> str``
(used by the chart tests; the infra program's tests can render the chart with their values too).
``template_chart`` renders with ``--kube-version`` :data:`KUBE_VERSION`, the Kubernetes this project
builds (``tools/toolchain.py``), so ``.Capabilities`` and the chart's ``kubeVersion`` constraint see the
cluster the chart is tested on, not whatever helm was compiled against.

The binary is built with ``go install helm.sh/helm/v3/cmd/helm@<HELM_VERSION>`` with GOBIN set to
the per-machine tool cache (``tools/toolchain.py``: ``$PYNOMALY_CACHE_DIR`` or
``~/.cache/pynomaly/bin``), so another checkout (CI's fresh clone) reuses it; Go's own module and
build caches serve a version bump.  An existing binary is reused when
``helm version`` reports the pinned version.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HELM_VERSION = "v3.22.0"
HELM_MODULE = "helm.sh/helm/v3"
HELM_COMMAND = f"{HELM_MODULE}/cmd/helm"
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from tools import toolchain  # noqa: E402

KUBE_VERSION = toolchain.KUBERNETES_VERSION
BIN_DIR = toolchain.bin_dir()
HELM = BIN_DIR / "helm"
CHART = ROOT / "charts" / "pynomaly"
HELM_ENV_DIR = ROOT / "environments" / "helm"


class HelmError(RuntimeError):
    """helm is not available and cannot be built; the message says what to do."""


def installed_version(binary: Path) -> str | None:
    """The version ``binary`` reports (``v3.22.0``), or None when it is missing or broken."""
    if not binary.is_file() or not os.access(binary, os.X_OK):
        return None
    try:
        result = subprocess.run(
            [str(binary), "version", "--template", "{{ .Version }}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def ensure_helm(version: str = HELM_VERSION, bin_dir: Path = BIN_DIR) -> Path:
    """Return the path of a helm binary of ``version``, building it with Go when needed."""
    binary = bin_dir / "helm"
    if installed_version(binary) == version:
        return binary
    go = shutil.which("go")
    if go is None:
        raise HelmError(
            f"helm {version} is not built yet and Go is missing: install Go 1.22 or newer "
            "(https://go.dev/dl/, Debian: apt-get install golang-go), then run `python tools/helm.py ensure`"
        )
    bin_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GOBIN=str(bin_dir), CGO_ENABLED="0")
    print(f"building helm {version}: go install {HELM_COMMAND}@{version} (first run: a few minutes)", file=sys.stderr)
    result = subprocess.run(
        [go, "install", "-trimpath", "-ldflags", _ldflags(go, version, env), f"{HELM_COMMAND}@{version}"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise HelmError(f"`go install {HELM_COMMAND}@{version}` failed:\n{result.stderr.strip()[-3000:]}")
    got = installed_version(binary)
    if got != version:
        raise HelmError(f"built {binary}, but it reports version {got!r} instead of {version}")
    return binary


def _ldflags(go: str, version: str, env: dict[str, str]) -> str:
    """The -X flags helm's Makefile sets: its own version and the Kubernetes version it targets.

    Without them `helm version` says "v3.22" and `helm lint`/`.Capabilities.KubeVersion` assume
    Kubernetes 1.20; the Makefile derives the Kubernetes version from the k8s.io/client-go module
    (v0.N.x -> 1.N), and so does this.
    """
    result = subprocess.run(
        [go, "mod", "download", "-json", f"{HELM_MODULE}@{version}"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise HelmError(
            f"`go mod download {HELM_MODULE}@{version}` failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    go_mod = Path(json.loads(result.stdout)["GoMod"]).read_text()
    match = re.search(r"^\s*k8s\.io/client-go v0\.(\d+)\.\d+", go_mod, re.MULTILINE)
    if match is None:
        raise HelmError(f"cannot find k8s.io/client-go in the go.mod of {HELM_MODULE}@{version}")
    minor = match.group(1)
    flags = ["-s", "-w", f"-X {HELM_MODULE}/internal/version.version={version}"]
    for package in ("pkg/lint/rules", "pkg/chartutil"):
        flags += [
            f"-X {HELM_MODULE}/{package}.k8sVersionMajor=1",
            f"-X {HELM_MODULE}/{package}.k8sVersionMinor={minor}",
        ]
    return " ".join(flags)


def run_helm(*args: str, check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the project's helm with ``args`` (text output captured)."""
    return subprocess.run([str(ensure_helm()), *args], capture_output=True, text=True, timeout=timeout, check=check)


def env_values_file(env: str) -> Path:
    """environments/helm/<env>.values.yaml, the helm-alone values of one environment."""
    path = HELM_ENV_DIR / f"{env}.values.yaml"
    if not path.is_file():
        known = sorted(p.name.removesuffix(".values.yaml") for p in HELM_ENV_DIR.glob("*.values.yaml"))
        raise HelmError(f"no helm values for environment {env!r}; known: {known}")
    return path


def template_chart(
    values_files: list[Path] | tuple[Path, ...] = (),
    *extra_args: str,
    release: str = "pynomaly",
    namespace: str = "pynomaly",
    chart: Path = CHART,
) -> str:
    """`helm template` of the chart with these values files for Kubernetes :data:`KUBE_VERSION`;
    raises HelmError with helm's message."""
    args = ["template", release, str(chart), "--namespace", namespace, "--kube-version", KUBE_VERSION]
    for path in values_files:
        args += ["--values", str(path)]
    result = run_helm(*args, *extra_args)
    if result.returncode != 0:
        raise HelmError(result.stderr.strip())
    return result.stdout


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "ensure"
    if command == "ensure":
        try:
            print(ensure_helm())
        except HelmError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    if command == "version":
        print(HELM_VERSION)
        return 0
    if command == "template" and len(argv) >= 2:
        try:
            sys.stdout.write(template_chart([env_values_file(argv[1])], *argv[2:]))
        except HelmError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    print("usage: tools/helm.py ensure | version | template ENV [helm args]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
