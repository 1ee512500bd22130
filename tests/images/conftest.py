"""Fixtures for the image tests: the built archives (built first when the cache lacks them) and
their root filesystems unpacked from the archives, layer by layer, as a container runtime would."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tools import images


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "images: builds (or reuses) the container images and runs their contents")


class _Lazy(dict[str, images.Built]):
    """Builds (or finds in the cache) an image the first time a test asks for it."""

    def __missing__(self, name: str) -> images.Built:
        self[name] = images.build([name], skip_missing=False)[name]
        return self[name]


@pytest.fixture(scope="session")
def built() -> dict[str, images.Built]:
    assert os.geteuid() == 0, "the image tests chroot into the images: run them as root"
    return _Lazy()


@pytest.fixture(scope="session")
def rootfs(built: dict[str, images.Built], tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """rootfs(name) -> the image's filesystem, unpacked once per session from its archive."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            dest = tmp_path_factory.mktemp(f"rootfs-{name}") / "root"
            images.unpack(built[name].archive, dest)
            cache[name] = dest
        return cache[name]

    return get


def image_config(built: images.Built) -> dict[str, object]:
    import json
    import tarfile

    with tarfile.open(built.archive) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())[0]  # type: ignore[union-attr]
        return json.loads(tar.extractfile(manifest["Config"]).read())["config"]  # type: ignore[union-attr]
