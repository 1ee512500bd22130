"""The application image against app/Dockerfile: config, Debian packages, the venv's distributions,
and that it runs as the chart runs it (uid 10001, read-only root, /tmp an emptyDir)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.images import dockerfile
from tests.images.conftest import image_config
from tools import images

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.images, pytest.mark.timeout(3600)]
# The environment debian:bookworm-slim itself sets.
BASE_ENV = {"debian:bookworm-slim": {"PATH": images.PATH_ENV}}
# What `python3 -m venv` puts in every venv before the Dockerfile's pip command runs.
VENV_BOOTSTRAP = {"pip", "setuptools"}
# Distributions the image installs without a pin in constraints.txt: none (async-timeout, which redis
# needs only on Debian's Python 3.11.2, is pinned by hand there).  The test fails when this goes stale.
UNPINNED: set[str] = set()
MARKER_ENV = {
    "python_version": "3.11",
    "python_full_version": "3.11.2",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


def stages() -> list[dockerfile.Stage]:
    return dockerfile.parse((ROOT / "app/Dockerfile").read_text(), BASE_ENV)


def installed(root: Path) -> dict[str, tuple[str, str, list[str]]]:
    """canonical name -> (version, name, Requires-Dist) of every distribution in the image's venv."""
    out = {}
    for meta in (root / "opt/pynomaly/lib").glob("python3*/site-packages/*.dist-info/METADATA"):
        msg = Parser().parsestr(meta.read_text(errors="replace"), headersonly=True)
        out[canonicalize_name(msg["Name"])] = (msg["Version"], msg["Name"], msg.get_all("Requires-Dist") or [])
    return out


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[canonicalize_name(name)] = version.strip()
    return out


def closure(dists: dict[str, tuple[str, str, list[str]]], roots: list[Requirement]) -> set[str]:
    """Every distribution the roots need, following Requires-Dist with extras and markers."""
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    todo = list(roots)
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        names.add(name)
        assert name in dists, f"{req} is required but not installed in the image"
        for text in dists[name][2]:
            dep = Requirement(text)
            if dep.marker is None or any(dep.marker.evaluate({**MARKER_ENV, "extra": e}) for e in (req.extras or {""})):
                todo.append(dep)
    return names


def test_config_matches_the_dockerfile(built: dict[str, images.Built]) -> None:
    runtime = stages()[-1]
    config = image_config(built["pynomaly"])
    assert config["Entrypoint"] == runtime.entrypoint == ["pynomaly"]
    assert config["Cmd"] == runtime.cmd == ["api"]
    assert config["User"] == runtime.user == "10001:10001"
    assert config["WorkingDir"] == runtime.workdir
    assert dict(e.split("=", 1) for e in config["Env"]) == runtime.env  # type: ignore[union-attr]
    assert sorted(config["ExposedPorts"]) == sorted(runtime.expose)  # type: ignore[arg-type]
    assert built["pynomaly"].ref == f"pynomaly/pynomaly:{images.app_version()}"


def test_same_debian_packages_venv_and_user(rootfs: Callable[[str], Path]) -> None:
    build, runtime = stages()
    assert build.base == runtime.base == "debian:bookworm-slim"
    assert dockerfile.apt_packages(build) == dockerfile.apt_packages(runtime) == set(images.APP_PACKAGES)
    assert (None, ["/opt/pynomaly"], "/opt/pynomaly") in [(None, c[1], c[2]) for c in runtime.copies if c[0] == "build"]
    root = rootfs("pynomaly")
    status = (root / "var/lib/dpkg/status").read_text()
    for package in images.APP_PACKAGES:
        assert f"Package: {package}\nStatus: install ok installed" in status
    assert "pynomaly:x:10001:10001:" in (root / "etc/passwd").read_text()
    heartbeat = root / "run/pynomaly"
    assert (heartbeat.stat().st_uid, heartbeat.stat().st_gid) == (10001, 10001)
    assert (root / "opt/pynomaly/bin/python").resolve(strict=False).name.startswith("python3")


def test_venv_holds_exactly_the_pinned_closure(rootfs: Callable[[str], Path]) -> None:
    dists = installed(rootfs("pynomaly"))
    project = tomllib.loads((ROOT / "app/pyproject.toml").read_text())["project"]
    assert dists["pynomaly"][0] == project["version"]
    wanted = closure(dists, [Requirement(d) for d in project["dependencies"]]) | {"pynomaly"}
    assert set(dists) == wanted | VENV_BOOTSTRAP, "the venv holds more or less than pyproject's dependencies"
    pinned = pins()
    unpinned = {n for n in wanted - {"pynomaly"} if n not in pinned}
    assert unpinned == UNPINNED, (
        f"distributions without a pin in constraints.txt: {sorted(unpinned)} (expected {sorted(UNPINNED)}); "
        "pin them there, then update UNPINNED"
    )
    wrong = {n: (dists[n][0], pinned[n]) for n in wanted - {"pynomaly"} - unpinned if pinned[n] != dists[n][0]}
    assert not wrong, f"installed version differs from constraints.txt: {wrong}"


def test_venv_matches_what_the_dockerfile_pip_command_resolves(rootfs: Callable[[str], Path]) -> None:
    """Run the Dockerfile's own pip command, by the image's pip and Python (markers depend on
    Debian's 3.11.2), as a dry run against PyPI; its install list must be the image's venv."""
    build = stages()[0]
    root = rootfs("pynomaly")
    src = root / "tmp/dockerfile-src"
    sources = {}
    for _, paths, dest in build.copies:  # COPY constraints.txt /src/constraints.txt, COPY app/ /src/app/
        target = src / dest.strip("/")
        if (ROOT / paths[0]).is_dir():
            shutil.copytree(
                ROOT / paths[0], target, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
            )
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / paths[0], target)
        sources[dest.rstrip("/")] = f"/tmp/dockerfile-src{dest.rstrip('/')}"
    args = [sources.get(a.rstrip("/"), a) for a in dockerfile.pip_install_args(build)]
    try:
        images.run_in_rootfs(
            root,
            [
                "/opt/pynomaly/bin/pip",
                "install",
                "--dry-run",
                "--ignore-installed",
                "-q",
                "--disable-pip-version-check",
                "--no-cache-dir",
                "--report",
                "/tmp/dockerfile-src/report.json",
                *args,
            ],
            env={"HOME": "/tmp", **images.pip_env(root)},
            writable=(),
            timeout=1500,
        )
        report = json.loads((src / "report.json").read_text())
    finally:
        shutil.rmtree(src)
    resolved = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in report["install"]}
    dists = installed(root)
    assert resolved == {n: v[0] for n, v in dists.items() if n not in VENV_BOOTSTRAP}


def test_runs_as_the_chart_runs_it(built: dict[str, images.Built], rootfs: Callable[[str], Path]) -> None:
    root = rootfs("pynomaly")
    env = dict(e.split("=", 1) for e in image_config(built["pynomaly"])["Env"])  # type: ignore[union-attr]

    def run(*argv: str) -> str:
        result = images.run_in_rootfs(
            root,
            argv,
            user="10001:10001",
            env=env,
            read_only=True,
            writable=("tmp",),
            network=False,
            check=False,
            timeout=600,
        )
        assert isinstance(result, subprocess.CompletedProcess)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    assert "api" in run("pynomaly", "--help")
    topology = json.loads(run("pynomaly", "topology", "--json"))
    assert topology
    # The detection stack (numpy, scipy, scikit-learn, PyOD) imports and fits on a read-only root.
    script = (
        "import numpy as np; from pyod.models.iforest import IForest; "
        "d = IForest(random_state=0).fit(np.random.default_rng(0).normal(size=(200, 3))); "
        "print('labels', int(d.labels_.sum()))"
    )
    assert "labels" in run("python", "-c", script)


def test_bytecode_is_hash_based(rootfs: Callable[[str], Path]) -> None:
    """The layers' fixed mtimes would invalidate timestamp pycs: every pyc must be hash-based."""
    root = rootfs("pynomaly")
    checked = 0
    for pyc in [*(root / "opt/pynomaly/lib").rglob("*.pyc"), *(root / "usr/lib/python3.11").rglob("*.pyc")]:
        flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
        assert flags & 1, f"{pyc} is timestamp-based"
        checked += 1
    assert checked > 1000
