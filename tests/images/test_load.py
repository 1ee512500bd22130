"""load() into a real containerd (one this test starts on its own socket and stops by pid): the
imported names are what the CRI resolves a pod's ``image: pynomaly/...`` to, and a container runs."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tools import images

pytestmark = [pytest.mark.images, pytest.mark.timeout(1800)]


@pytest.fixture
def containerd(tmp_path: Path):  # type: ignore[no-untyped-def]
    binary = shutil.which("containerd")
    assert binary, "containerd is not installed (apt-get install containerd)"
    sock = tmp_path / "containerd.sock"
    config = tmp_path / "config.toml"
    config.write_text(
        f'version = 2\nroot = "{tmp_path}/root"\nstate = "{tmp_path}/state"\n[grpc]\n  address = "{sock}"\n'
    )
    with (tmp_path / "containerd.log").open("w") as log:
        proc = subprocess.Popen([binary, "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "containerd.log").read_text()
            time.sleep(0.2)
        yield str(sock)
    finally:
        proc.terminate()
        proc.wait(60)


def test_loaded_images_resolve_like_a_pod_spec_and_run(built: dict[str, images.Built], containerd: str) -> None:
    refs = [built[name].ref for name in ("redis", "pause")]
    names = images.load([built[name].archive for name in ("redis", "pause")], containerd)
    # A name without a registry gets the default registry domain prepended, exactly as the CRI
    # normalizes `image: pynomaly/redis:7.0.15` (so no pull is attempted for an IfNotPresent pod).
    assert len(names) == 2
    for ref, name in zip(refs, names, strict=True):
        domain, _, rest = name.partition("/")
        assert rest == ref and "." in domain
    listed = subprocess.run(
        ["ctr", "-a", containerd, "-n", "k8s.io", "images", "ls", "-q"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert set(names) <= set(listed)
    out = subprocess.run(
        [
            "ctr",
            "-a",
            containerd,
            "-n",
            "k8s.io",
            "run",
            "--rm",
            names[0],
            "images-test-redis",
            "redis-server",
            "--version",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Redis server v=" in out.stdout, out.stderr
