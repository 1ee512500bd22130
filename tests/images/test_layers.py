"""The layer and archive writer, on small trees: deterministic bytes, whiteouts, round trip."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

from tools import images


def tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "bin").mkdir()
    (root / "bin/tool").write_text("#!/bin/sh\necho hi\n")
    (root / "bin/tool").chmod(0o755)
    os.link(root / "bin/tool", root / "bin/tool2")
    (root / "bin/link").symlink_to("tool")
    (root / "var/log").mkdir(parents=True)
    (root / "var/log/dpkg.log").write_text("excluded\n")
    return root


def test_same_tree_gives_the_same_digest_whatever_the_mtimes(tmp_path: Path) -> None:
    root = tree(tmp_path / "root")
    first = images._write_layer(root, images._index(root), tmp_path / "a.tar")
    os.utime(root / "etc/passwd", (1, 1))
    os.utime(root / "bin", (2, 2))
    second = images._write_layer(root, images._index(root), tmp_path / "b.tar")
    assert first.diff_id == second.diff_id
    with tarfile.open(first.path) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert "var/log/dpkg.log" not in names and "var/log" in names
    assert {m.mtime for m in members} == {images.EPOCH}
    assert {(m.uname, m.gname) for m in members} == {("", "")}
    assert next(m for m in members if m.name == "bin/tool2").islnk()


def test_diff_layer_holds_changes_and_whiteouts_and_unpacks_like_a_runtime(tmp_path: Path) -> None:
    base = tree(tmp_path / "base")
    new = tmp_path / "new"
    os.system(f"cp -a {base} {new}")
    (new / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nredis:x:999:999::/data:/sbin/nologin\n")
    (new / "bin/link").unlink()
    (new / "opt/app").mkdir(parents=True)
    (new / "opt/app/run").write_text("x")
    changed, whiteouts = images._diff(images._index(base), images._index(new))
    assert set(changed) == {"etc", "etc/passwd", "opt", "opt/app", "opt/app/run", "bin"}
    assert whiteouts == ["bin/.wh.link"]
    lower = images._write_layer(base, images._index(base), tmp_path / "lower.tar")
    upper = images._write_layer(new, changed, tmp_path / "upper.tar", whiteouts)
    archive = tmp_path / "image.tar"
    image_id = images._write_archive(archive, "pynomaly/test:1", [lower, upper], {"User": "1:1"})
    again = images._write_archive(tmp_path / "again.tar", "pynomaly/test:1", [lower, upper], {"User": "1:1"})
    assert image_id == again and archive.read_bytes() == (tmp_path / "again.tar").read_bytes()
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert manifest[0]["RepoTags"] == ["pynomaly/test:1"] and len(manifest[0]["Layers"]) == 2
    out = tmp_path / "out"
    config = images.unpack(archive, out)
    assert config["config"] == {"User": "1:1"}
    assert (out / "etc/passwd").read_text().endswith("/sbin/nologin\n")
    assert not (out / "bin/link").exists() and not (out / "bin/link").is_symlink()
    assert (out / "bin/tool").read_text() == "#!/bin/sh\necho hi\n" and (out / "opt/app/run").is_file()


def test_stack_config_maps_roles_to_the_infra_keys(tmp_path: Path) -> None:
    def b(name: str, ref: str, role: str) -> images.Built:
        return images.Built(name, ref, tmp_path, "sha256:0", 0, "k", role)

    built = {
        "pynomaly": b("pynomaly", "pynomaly/pynomaly:0.1.0", "app"),
        "redis": b("redis", "pynomaly/redis:7.0.15", "redis"),
        "haproxy": b("haproxy", "pynomaly/haproxy:2.6.12", "redis-proxy"),
        "kafka": b("kafka", "pynomaly/kafka:4.4.0", "kafka"),
        "kubectl": b("kubectl", "pynomaly/kubectl:v1.35.4", "kafka-rack-init"),
    }
    assert images.stack_config(built) == {
        "image.repository": "pynomaly/pynomaly",
        "image.tag": "0.1.0",
        "redis.image": "pynomaly/redis:7.0.15",
        "redis.proxyImage": "pynomaly/haproxy:2.6.12",
        "kafka.image": "pynomaly/kafka:4.4.0",
        "kafka.rackInitImage": "pynomaly/kubectl:v1.35.4",
    }
    # Every value passes the stack's own validation of image references.
    from infra.config import _IMAGE_REPO, _image

    assert all(
        _image(v) is None for k, v in images.stack_config(built).items() if k != "image.repository" and k != "image.tag"
    )
    assert _IMAGE_REPO.match("pynomaly/pynomaly")
