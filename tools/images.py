#!/usr/bin/env python3
"""The container images the stacks run, built without Docker and without a registry.

    python tools/images.py build [NAME ...]                  # build what changed (the defaults when no NAME)
    python tools/images.py list                              # every image, its ref and whether it is built
    python tools/images.py load --address /run/containerd/containerd.sock [NAME ...]

Each image is a docker-archive tarball (``ctr -n k8s.io images import`` loads it): a shared Debian
bookworm base layer made by ``debootstrap --variant=minbase`` (debootstrap's default archive), plus
one layer per image holding what its recipe changed (Debian packages installed in a chroot, the
application's venv from wheels downloaded on the host, Kafka's jars from the project's pom, Go
binaries from ``tools/toolchain.py``).  ``pause`` and ``coredns`` are single-layer images, and so is
``keda`` (KEDA's operator and metrics server), which is opt-in: built only when named, never by a plain
``build()``.

Layers are deterministic: entries sorted, every mtime :data:`EPOCH`, numeric owners, no host
names; Python bytecode is hash-based so the fixed mtimes do not invalidate it.  Builds are cached
per machine (``$PYNOMALY_CACHE_DIR`` or ``${XDG_CACHE_HOME:-~/.cache}/pynomaly``, then ``images/``),
keyed by a fingerprint of every input, so a fresh clone in another folder reuses them.

Importable: :func:`build`, :func:`load`, :func:`image_refs`, :func:`stack_config`, :func:`archives`,
:func:`unpack`, :func:`run_in_rootfs`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import inspect
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from tools import toolchain  # noqa: E402

SUITE = "bookworm"
# Every mtime in every layer, and SOURCE_DATE_EPOCH inside the build chroots: bookworm's release day.
EPOCH = 1686355200
# Bump when the layer/archive writer changes in a way that must rebuild every image.
FORMAT = "3"
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

KUBERNETES_VERSION = toolchain.KUBERNETES_VERSION  # pause.c comes from this release's module source
PAUSE_TAG = "3.10"  # the sandbox image name the cluster's containerd config uses

# The users the manifests run as (infra/redis_ha.py, infra/kafka_cluster.py, the chart's podIdentity).
APP_UID = 10001
REDIS_UID = 999
HAPROXY_UID = 99
KAFKA_UID = 1000
NONROOT_UID = 65532  # CoreDNS's own images use distroless "nonroot"
PAUSE_UID = 65535  # as in Kubernetes' pause image

# Never part of a layer: pseudo filesystems, package caches, logs, backup files and build leftovers.
_EXCLUDE = re.compile(
    r"^(dev|proc|sys|tmp|var/tmp|var/cache/apt|var/lib/apt/lists|var/log)/."
    r"|^etc/[^/]+-$"
    r"|^var/lib/dpkg/[^/]+-old$|^var/cache/debconf/[^/]+-old$"
    r"|^var/cache/ldconfig/aux-cache$|^usr/sbin/policy-rc\.d$"
)
# Documentation and translations never enter the images (what the -slim images do).
_DPKG_NODOC = """# Managed by tools/images.py: no manuals, info pages, translations or docs except copyrights.
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
"""


class ImageError(RuntimeError):
    """An image cannot be built or loaded; the message says why and what to do."""


class Skipped(ImageError):
    """An optional input is not available yet (e.g. a toolchain binary); the image is left out."""


# -- cache ------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    return toolchain.cache_dir() / "images"


def _fingerprint(*parts: str | bytes) -> str:
    return toolchain.fingerprint(*parts)


def _locked(name: str) -> contextlib.AbstractContextManager[None]:
    return toolchain.locked(name, cache_dir() / "locks")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- running things inside a rootfs -----------------------------------------------------------------

_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def run_in_rootfs(
    root: Path,
    argv: Sequence[str],
    *,
    user: str | None = None,
    env: dict[str, str] | None = None,
    read_only: bool = False,
    writable: Sequence[str] = ("tmp",),
    network: bool = True,
    check: bool = True,
    timeout: float | None = None,
    capture: bool = True,
    popen: bool = False,
    log: Path | None = None,
) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    """Run ``argv`` chrooted in ``root`` in private mount and PID namespaces (nothing outlives it).

    A tmpfs ``/dev`` with a few host devices, a fresh ``/proc``, tmpfs on ``writable`` dirs; with
    ``read_only`` the rootfs itself is mounted read-only, as a pod's ``readOnlyRootFilesystem``.
    ``popen`` starts it in the background with its output in ``log`` (a pipe nobody reads would
    stall a chatty server); end it with :func:`stop`.
    """
    r = str(root)
    setup = [f"mount --bind {r} {r}", f"mount -t tmpfs -o mode=755 tmpfs {r}/dev"]
    setup += [f"touch {r}/dev/{d} && mount --bind /dev/{d} {r}/dev/{d}" for d in _DEVICES]
    setup += [f"mkdir -p {r}/dev/shm {r}/dev/pts && ln -s /proc/self/fd {r}/dev/fd", f"mount -t proc proc {r}/proc"]
    if network and os.path.exists("/etc/resolv.conf"):  # apt-get in a build chroot resolves like the host
        setup.append(f"[ -e {r}/etc/resolv.conf ] && mount --bind /etc/resolv.conf {r}/etc/resolv.conf || true")
    setup += [f"mount -t tmpfs -o mode=1777 tmpfs {r}/{w}" for w in writable]
    if read_only:
        setup.append(f"mount -o remount,bind,ro {r}")
    spec = f"--userspec={user} " if user else ""
    script = " && ".join(setup) + f' && exec chroot {spec}{r} /usr/bin/env -i "$@"'
    full_env = {"PATH": PATH_ENV, **(env or {})}
    cmd = [
        "unshare",
        "--mount",
        "--pid",
        "--fork",
        "--kill-child",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        *[f"{k}={v}" for k, v in full_env.items()],
        *argv,
    ]
    if popen:
        with open(log or os.devnull, "w") as out:
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
    result = subprocess.run(cmd, capture_output=capture, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise ImageError(
            f"in {root}: {' '.join(argv)} exited {result.returncode}:\n"
            f"{(result.stdout or '')[-2000:]}{(result.stderr or '')[-3000:]}"
        )
    return result


def stop(proc: subprocess.Popen[str], timeout: float = 30) -> None:
    """Stop what ``run_in_rootfs(popen=True)`` started: SIGTERM to the PID namespace's init (the
    program; unshare's --kill-child does not survive chroot's uid change), SIGKILL if it lingers."""
    import signal

    try:
        children = [int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    except OSError:
        children = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in children:
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.kill()
    proc.wait()


def _chroot_sh(root: Path, script: str, env: dict[str, str] | None = None) -> str:
    env = {
        "DEBIAN_FRONTEND": "noninteractive",
        "LC_ALL": "C",
        "SOURCE_DATE_EPOCH": str(EPOCH),
        "HOME": "/root",
        **(env or {}),
    }
    # The rootfs's own /tmp (excluded from layers) carries the build's inputs: no tmpfs over it.
    result = run_in_rootfs(root, ["sh", "-euc", script], env=env, writable=())
    assert isinstance(result, subprocess.CompletedProcess)
    return result.stdout


def _apt_install(root: Path, packages: Sequence[str]) -> None:
    # invoke-rc.d must not start services in the chroot; the file is excluded from every layer.
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    # update-alternatives links manual pages: their (empty) folders must exist although docs are excluded.
    install = f"mkdir -p /usr/share/man/man1 && apt-get install -y -q --no-install-recommends {' '.join(packages)}"
    try:
        # The base's package lists first; a newer point release may have removed those .debs.
        _chroot_sh(root, f"{install} >/dev/null 2>&1 || (apt-get update -q >/dev/null && {install} >/dev/null)")
    finally:
        policy.unlink()
    _chroot_sh(root, "apt-get clean")


def _dpkg_version(root: Path, package: str) -> str:
    full = _chroot_sh(root, f"dpkg-query -W -f '${{Version}}' {package}").strip()
    # "5:7.0.15-1~deb12u4" -> "7.0.15": a tag may not hold '+', '~' or ':'.
    return full.split(":", 1)[-1].rsplit("-", 1)[0]


def _add_user(root: Path, name: str, uid: int, home: str = "/nonexistent") -> None:
    _chroot_sh(
        root,
        f"groupadd --system --gid {uid} {name} && useradd --system --uid {uid} --gid {uid} "
        f"--home-dir {home} --no-create-home --shell /usr/sbin/nologin {name}",
    )


# -- layers -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    path: str  # relative, no leading slash
    st: os.stat_result
    link: str = ""

    def signature(self) -> tuple[object, ...]:
        st = self.st
        if stat.S_ISLNK(st.st_mode):
            return ("l", st.st_uid, st.st_gid, self.link)
        if stat.S_ISDIR(st.st_mode):
            return ("d", st.st_mode, st.st_uid, st.st_gid)
        return ("f", st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_rdev)


def _index(root: Path) -> dict[str, _Entry]:
    """Every path of a rootfs that belongs in a layer, by relative path."""
    out: dict[str, _Entry] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(root / rel if rel else root) as it:
            for de in it:
                path = f"{rel}/{de.name}" if rel else de.name
                if _EXCLUDE.search(path):
                    continue
                st = de.stat(follow_symlinks=False)
                if stat.S_ISSOCK(st.st_mode):
                    continue
                out[path] = _Entry(path, st, os.readlink(de.path) if stat.S_ISLNK(st.st_mode) else "")
                if stat.S_ISDIR(st.st_mode):
                    stack.append(path)
    return out


@dataclass(frozen=True)
class Layer:
    path: Path
    diff_id: str  # sha256:<hex> of the uncompressed tar
    size: int


def _write_layer(
    root: Path,
    entries: dict[str, _Entry],
    out: Path,
    whiteouts: Iterable[str] = (),
    xattrs: dict[str, dict[str, bytes]] | None = None,
) -> Layer:
    """A deterministic layer tar: sorted names, fixed mtimes, numeric owners, OCI whiteouts."""
    tmp = out.with_suffix(".partial")
    first_link: dict[tuple[int, int], str] = {}
    items = [(p, entries[p]) for p in entries] + [(w, None) for w in whiteouts]
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for path, entry in sorted(items, key=lambda item: item[0]):
            info = tarfile.TarInfo(path)
            info.mtime = EPOCH
            info.uname = info.gname = ""
            if entry is None:  # whiteout: the base's file is gone
                info.mode = 0o644
                tar.addfile(info)
                continue
            st = entry.st
            info.mode, info.uid, info.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
            if xattrs and path in xattrs:
                # Binary-safe: tarfile writes surrogate-escaped values back as the original bytes.
                info.pax_headers = {
                    f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in xattrs[path].items()
                }
            fmt = stat.S_IFMT(st.st_mode)
            if fmt == stat.S_IFDIR:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif fmt == stat.S_IFLNK:
                info.type, info.linkname = tarfile.SYMTYPE, entry.link
                tar.addfile(info)
            elif fmt == stat.S_IFREG:
                inode = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and inode in first_link:
                    info.type, info.linkname = tarfile.LNKTYPE, first_link[inode]
                    tar.addfile(info)
                    continue
                first_link[inode] = path
                info.size = st.st_size
                with open(root / path, "rb") as fh:
                    tar.addfile(info, fh)
            elif fmt in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO):
                info.type = {
                    stat.S_IFCHR: tarfile.CHRTYPE,
                    stat.S_IFBLK: tarfile.BLKTYPE,
                    stat.S_IFIFO: tarfile.FIFOTYPE,
                }[fmt]
                info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                tar.addfile(info)
    with open(tmp, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    tmp.replace(out)
    return Layer(out, f"sha256:{digest}", out.stat().st_size)


def _diff(base: dict[str, _Entry], new: dict[str, _Entry]) -> tuple[dict[str, _Entry], list[str]]:
    """What a layer on top of ``base`` must hold to give ``new``: changed entries (with their parent
    directories) and whiteouts for removed paths."""
    changed = {p: e for p, e in new.items() if p not in base or base[p].signature() != e.signature()}
    for path in list(changed):
        parent = path.rpartition("/")[0]
        while parent and parent not in changed:
            changed[parent] = new[parent]
            parent = parent.rpartition("/")[0]
    removed = [p for p in base if p not in new and (p.rpartition("/")[0] in new or "/" not in p)]
    whiteouts = []
    for path in removed:
        parent, _, name = path.rpartition("/")
        whiteouts.append(f"{parent}/.wh.{name}" if parent else f".wh.{name}")
        if parent and parent not in changed:
            changed[parent] = new[parent]
    return changed, whiteouts


def _write_archive(out: Path, ref: str, layers: Sequence[Layer], config: dict[str, object]) -> str:
    """A docker-archive (``docker save`` layout) with one tag; returns the image id (config digest)."""
    image = {
        "architecture": "amd64",
        "os": "linux",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(EPOCH)),
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(EPOCH)),
                "created_by": f"tools/images.py layer {i}",
            }
            for i in range(len(layers))
        ],
    }
    config_bytes = json.dumps(image, sort_keys=True, separators=(",", ":")).encode()
    config_hex = hashlib.sha256(config_bytes).hexdigest()
    layer_names = [f"{layer.diff_id.split(':')[1]}/layer.tar" for layer in layers]
    manifest = [{"Config": f"{config_hex}.json", "RepoTags": [ref], "Layers": layer_names}]
    repo, _, tag = ref.rpartition(":")
    meta_files = {
        f"{config_hex}.json": config_bytes,
        "manifest.json": json.dumps(manifest, separators=(",", ":")).encode(),
        "repositories": json.dumps({repo: {tag: layers[-1].diff_id.split(":")[1]}}).encode(),
    }
    tmp = out.with_suffix(".partial")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, data: bytes | None = None, source: Path | None = None, directory: bool = False) -> None:
            info = tarfile.TarInfo(name)
            info.mtime, info.uname, info.gname = EPOCH, "", ""
            if directory:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif source is not None:
                info.size, info.mode = source.stat().st_size, 0o644
                with source.open("rb") as fh:
                    tar.addfile(info, fh)
            else:
                assert data is not None
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))

        for layer, name in zip(layers, layer_names, strict=True):
            add(name.split("/")[0], directory=True)
            add(name, source=layer.path)
        for name, data in meta_files.items():
            add(name, data)
    tmp.replace(out)
    return f"sha256:{config_hex}"


# -- the Debian base --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Base:
    rootfs: Path
    layer: Layer
    key: str


def _debootstrap_version() -> str:
    out = subprocess.run(["debootstrap", "--version"], capture_output=True, text=True, check=False).stdout
    return out.strip()


def ensure_base() -> Base:
    """The debootstrap'ed bookworm rootfs and its layer, built once per machine."""
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is missing: install it (apt-get install debootstrap)")
    key = _base_key()
    home = cache_dir() / "base" / key
    with _locked("base"):
        meta = home / "meta.json"
        if meta.is_file():
            m = json.loads(meta.read_text())
            return Base(home / "rootfs", Layer(home / "layer.tar", m["diff_id"], m["size"]), key)
        started = time.monotonic()
        _say(f"building the Debian {SUITE} base with debootstrap --variant=minbase (first time: minutes)")
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        _build_base(home / "rootfs")
        layer = _write_layer(home / "rootfs", _index(home / "rootfs"), home / "layer.tar")
        meta.write_text(json.dumps({"diff_id": layer.diff_id, "size": layer.size}))
        _prune(home.parent, keep=home)
        _say(f"built the {SUITE} base in {time.monotonic() - started:.0f} s ({layer.size / 1e6:.0f} MB)")
        return Base(home / "rootfs", layer, key)


def _build_base(rootfs: Path) -> None:
    partial = rootfs.with_name("rootfs.partial")
    shutil.rmtree(partial, ignore_errors=True)
    log = rootfs.parent / "debootstrap.log"
    with log.open("w") as fh:
        # No mirror argument: debootstrap's default archive (the project names no registry host).
        code = subprocess.run(
            ["debootstrap", "--variant=minbase", SUITE, str(partial)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            check=False,
            env={**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)},
        ).returncode
    if code != 0:
        raise ImageError(f"debootstrap failed (exit {code}); see {log}")
    # debootstrap copies the host's name-service files: an image must not carry them.
    (partial / "etc/hostname").write_text("localhost\n")
    (partial / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    (partial / "etc/resolv.conf").write_text("")
    (partial / "etc/dpkg/dpkg.cfg.d/01-nodoc").write_text(_DPKG_NODOC)
    for rel in ("usr/share/man", "usr/share/info", "usr/share/locale"):
        for child in (partial / rel).glob("*"):
            if child.name != "locale.alias":
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    for doc in (partial / "usr/share/doc").glob("*/*"):
        if doc.name != "copyright" and not doc.is_dir():
            doc.unlink()
    _chroot_sh(partial, "apt-get clean")
    partial.rename(rootfs)


def _prune(parent: Path, keep: Path, count: int = 3) -> None:
    """Keep the ``count`` newest builds of one image (other clones may be on other branches)."""
    siblings = sorted(
        (p for p in parent.iterdir() if p.is_dir() and p != keep), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for old in siblings[count - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


# -- recipes ----------------------------------------------------------------------------------------


@dataclass
class Recipe:
    """What one image is made of.  ``populate`` fills a copy of the base (or an empty dir) and
    returns the tag; ``inputs`` are fingerprinted (with the recipe's source) into the cache key."""

    name: str
    repository: str
    role: str
    populate: Callable[[Path], str]
    config: dict[str, object]
    inputs: Callable[[], list[str | bytes]] = list
    on_base: bool = True
    xattrs: dict[str, dict[str, bytes]] = field(default_factory=dict)
    by_default: bool = True  # False: built only when asked for by name (KEDA: the on-prem live tier)


def _config(
    cmd: list[str] | None,
    user: str,
    *,
    entrypoint: list[str] | None = None,
    env: Sequence[str] = (),
    path: str = PATH_ENV,
    workdir: str = "/",
    ports: Sequence[str] = (),
    stop_signal: str | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, object]:
    cfg: dict[str, object] = {
        "Env": [f"PATH={path}", *env],
        "Entrypoint": entrypoint,
        "Cmd": cmd,
        "User": user,
        "WorkingDir": workdir,
        "Labels": {"org.opencontainers.image.source": "tools/images.py", **(labels or {})},
    }
    if ports:
        cfg["ExposedPorts"] = {p: {} for p in ports}
    if stop_signal:
        cfg["StopSignal"] = stop_signal
    return cfg


def _files_under(directory: Path) -> list[str | bytes]:
    """Relative path and bytes of every source file (no caches, no build output)."""
    parts: list[str | bytes] = []
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if path.is_file() and not re.search(r"(^|/)(__pycache__|build|dist|[^/]*\.egg-info)(/|$)|\.pyc$", rel):
            parts += [rel, path.read_bytes()]
    return parts


# The application --------------------------------------------------------------------------------

APP_ENV = (
    "PYTHONDONTWRITEBYTECODE=1",
    "PYTHONUNBUFFERED=1",
    "PYNOMALY_API_HOST=0.0.0.0",
    "PYNOMALY_HEARTBEAT_DIR=/var/run/pynomaly",
    "NUMBA_CACHE_DIR=/tmp/numba",
    "MPLCONFIGDIR=/tmp/matplotlib",
)
APP_PACKAGES = ("python3", "python3-venv", "ca-certificates")
VENV = "/opt/pynomaly"


def app_version() -> str:
    text = (ROOT / "app/pyproject.toml").read_text()
    match = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
    if not match:
        raise ImageError("app/pyproject.toml has no version")
    return match.group(1)


def pip_env(root: Path) -> dict[str, str]:
    """The host's pip settings for a pip run inside ``root`` (build time only, nothing enters a layer):
    ``PIP_*`` and proxy variables, and the CA bundle pip trusts on the host, copied into ``/tmp``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith("PIP_") or k.lower() in ("http_proxy", "https_proxy", "no_proxy")
    }
    # The host's pip (with truststore) trusts the system store even when no variable names it; the
    # chroot's older pip only reads a bundle file, so hand it the same store.
    candidates = [os.environ.get(var) for var in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")]
    for bundle in [*candidates, "/etc/ssl/certs/ca-certificates.crt"]:
        if bundle and Path(bundle).is_file():
            (root / "tmp").mkdir(exist_ok=True)
            shutil.copyfile(bundle, root / "tmp/pip-ca.pem")
            env["PIP_CERT"] = "/tmp/pip-ca.pem"
            break
    return env


def _wheelhouse(root: Path) -> Path:
    """Wheels of the app and its pinned dependencies, resolved by the image's own pip and Python
    (Debian's 3.11.2: markers such as ``python_full_version < "3.11.3"`` must see that version, not
    the host's), cached by the constraints, the app's sources and that Python."""
    python = _dpkg_version(root, "python3.11")
    key = _fingerprint(python, (ROOT / "constraints.txt").read_bytes(), *_files_under(ROOT / "app"))
    home = cache_dir() / "wheels" / key
    with _locked("wheels"):
        if (home / ".complete").is_file():
            return home
        stage = root / "tmp/pynomaly-wheels"
        # A copy, so the build never writes build/ or *.egg-info into the checkout.
        shutil.copytree(
            ROOT / "app", stage / "app", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")
        )
        shutil.copy2(ROOT / "constraints.txt", stage / "constraints.txt")
        _chroot_sh(
            root,
            f"PIP_CACHE_DIR=/tmp/pynomaly-wheels/cache {VENV}/bin/pip wheel -q "
            "--disable-pip-version-check -c /tmp/pynomaly-wheels/constraints.txt "
            "-w /tmp/pynomaly-wheels/out /tmp/pynomaly-wheels/app",
            env=pip_env(root),
        )
        partial = home.with_name(home.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(stage / "out", partial)
        shutil.rmtree(stage)
        (partial / ".complete").write_text("")
        shutil.rmtree(home, ignore_errors=True)
        partial.rename(home)
        _prune(home.parent, keep=home)
    return home


def _populate_app(root: Path) -> str:
    _apt_install(root, APP_PACKAGES)
    _add_user(root, "pynomaly", APP_UID)
    _chroot_sh(root, f"python3 -m venv {VENV}")
    wheels = _wheelhouse(root)
    stage = root / "tmp/pynomaly-build"
    shutil.copytree(wheels, stage / "wheels")
    shutil.copy2(ROOT / "constraints.txt", stage / "constraints.txt")
    version = app_version()
    # `pip install -c constraints.txt ./app`, offline from the wheels above; bytecode is compiled
    # afterwards, hash-based, so the layers' fixed mtimes leave it valid on a read-only root.
    _chroot_sh(
        root,
        f"""
{VENV}/bin/pip install -q --disable-pip-version-check --no-cache-dir --no-index --no-compile \\
  --find-links /tmp/pynomaly-build/wheels -c /tmp/pynomaly-build/constraints.txt 'pynomaly=={version}'
install -d -o {APP_UID} -g {APP_UID} /var/run/pynomaly
find / -xdev -name __pycache__ -type d -prune -exec rm -rf {{}} +
PYTHONDONTWRITEBYTECODE=1 python3 -m compileall -q -f -j 0 --invalidation-mode unchecked-hash \\
  /usr/lib/python3 /usr/lib/python3.11 {VENV} \\
  >/dev/null || true
""",
    )
    shutil.rmtree(stage)
    return version


def _app_recipe() -> Recipe:
    return Recipe(
        name="pynomaly",
        repository="pynomaly/pynomaly",
        role="app",
        populate=_populate_app,
        config=_config(
            ["api"],
            f"{APP_UID}:{APP_UID}",
            entrypoint=["pynomaly"],
            path=f"{VENV}/bin:{PATH_ENV}",
            env=APP_ENV,
            ports=["8000/tcp"],
            labels={"org.opencontainers.image.version": app_version()},
        ),
        inputs=lambda: [str(APP_PACKAGES), (ROOT / "constraints.txt").read_bytes(), *_files_under(ROOT / "app")],
    )


# Redis and HAProxy -------------------------------------------------------------------------------


def _populate_redis(root: Path) -> str:
    # The user first, with the manifests' uid: the packages' postinst then keep it.
    _add_user(root, "redis", REDIS_UID, home="/var/lib/redis")
    # redis-tools brings redis-cli; sentinel mode runs redis-sentinel; `timeout`, `head`, `grep` are in the base.
    _apt_install(root, ["redis-server", "redis-sentinel", "redis-tools"])
    _chroot_sh(root, f"install -d -o {REDIS_UID} -g {REDIS_UID} /data /run/redis /run/sentinel")
    return _dpkg_version(root, "redis-server")


def _populate_haproxy(root: Path) -> str:
    _apt_install(root, ["haproxy"])
    # Debian's postinst insists on a uid in the system range (100-999): renumber its user afterwards.
    _chroot_sh(
        root,
        f"groupmod -g {HAPROXY_UID} haproxy && usermod -u {HAPROXY_UID} -g {HAPROXY_UID} haproxy "
        f"&& install -d /usr/local/etc/haproxy && install -d -o {HAPROXY_UID} -g {HAPROXY_UID} "
        "/var/lib/haproxy",
    )
    return _dpkg_version(root, "haproxy")


# Kafka ---------------------------------------------------------------------------------------------

KAFKA_HOME = "/opt/kafka"
# Kafka's own bin/*.sh scripts, reduced to the main class each runs (what the manifests call).
KAFKA_SCRIPTS = {
    "kafka-server-start.sh": "kafka.Kafka",
    "kafka-storage.sh": "kafka.tools.StorageTool",
    "kafka-topics.sh": "org.apache.kafka.tools.TopicCommand",
    "kafka-configs.sh": "org.apache.kafka.tools.ConfigCommand",
    "kafka-metadata-quorum.sh": "org.apache.kafka.tools.MetadataQuorumCommand",
    "kafka-consumer-groups.sh": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "kafka-console-producer.sh": "org.apache.kafka.tools.ConsoleProducer",
    "kafka-console-consumer.sh": "org.apache.kafka.tools.consumer.ConsoleConsumer",
}
_KAFKA_RUN_CLASS = f"""#!/bin/sh
# Managed by tools/images.py: Kafka's kafka-run-class.sh, reduced to what this image needs.
# The broker logs to stdout (the pod log); the tools log warnings to stderr.
set -e
case "$1" in
  kafka.Kafka) LOG4J="{KAFKA_HOME}/config/log4j2.properties"; DEFAULT_HEAP="-Xmx1G -Xms1G";;
  *) LOG4J="{KAFKA_HOME}/config/tools-log4j2.properties"; DEFAULT_HEAP="-Xmx256M";;
esac
exec java ${{KAFKA_HEAP_OPTS:-$DEFAULT_HEAP}} \\
  ${{KAFKA_JVM_PERFORMANCE_OPTS:--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
-XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true}} \\
  ${{KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=$LOG4J}} -Dkafka.logs.dir="${{LOG_DIR:-/tmp}}" \\
  ${{KAFKA_OPTS:-}} -cp "{KAFKA_HOME}/libs/*" "$@"
"""
_KAFKA_LOG4J = """# Managed by tools/images.py: the broker logs to stdout.
status = warn
shutdownHook = disable
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.target = SYSTEM_OUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""
_KAFKA_TOOLS_LOG4J = """# Managed by tools/images.py: the command-line tools log warnings to stderr.
status = warn
appender.stderr.type = Console
appender.stderr.name = STDERR
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stderr.ref = STDERR
"""


def _app_module(name: str) -> object:
    """A module of the app package, importable from this checkout without installing it."""
    if str(ROOT / "app") not in sys.path:
        sys.path.insert(0, str(ROOT / "app"))
    return importlib.import_module(name)


def kafka_version() -> str:
    pom = ET.fromstring((ROOT / "app/pynomaly/localstack/pom.xml").read_bytes())
    found = pom.find("{http://maven.apache.org/POM/4.0.0}properties/{http://maven.apache.org/POM/4.0.0}kafka.version")
    if found is None or not found.text:
        raise ImageError("app/pynomaly/localstack/pom.xml has no kafka.version property")
    return found.text.strip()


def _kafka_jars() -> list[Path]:
    """The local system's jars: the project's pom fetched by its own KafkaJars (same cache code)."""
    kafka_jars = _app_module("pynomaly.localstack.kafka_jars")
    pom = (ROOT / "app/pynomaly/localstack/pom.xml").read_bytes()
    jars = kafka_jars.KafkaJars(
        cache_dir() / "kafka-libs" / hashlib.sha256(pom).hexdigest()[:16],
        pom=pom,  # type: ignore[attr-defined]
        log_path=cache_dir() / "kafka-libs" / "fetch.log",
    )
    jars.ensure()
    return list(jars.jars())


def _populate_kafka(root: Path) -> str:
    _add_user(root, "appuser", KAFKA_UID)
    # ca-certificates-java runs java in its postinst: /proc is mounted by run_in_rootfs.
    _apt_install(root, ["openjdk-17-jre-headless"])
    home = root / KAFKA_HOME.lstrip("/")
    for sub in ("libs", "bin", "config"):
        (home / sub).mkdir(parents=True)
    for jar in _kafka_jars():
        shutil.copyfile(jar, home / "libs" / jar.name)
    scripts = {"kafka-run-class.sh": _KAFKA_RUN_CLASS}
    for script, main in KAFKA_SCRIPTS.items():
        scripts[script] = f'#!/bin/sh\nexec "$(dirname "$0")/kafka-run-class.sh" {main} "$@"\n'
    for script, text in scripts.items():
        (home / "bin" / script).write_text(text)
        (home / "bin" / script).chmod(0o755)
    (home / "config/log4j2.properties").write_text(_KAFKA_LOG4J)
    (home / "config/tools-log4j2.properties").write_text(_KAFKA_TOOLS_LOG4J)
    for path in [home, *home.rglob("*")]:
        if path.is_file():
            path.chmod(0o755 if path.parent.name == "bin" else 0o644)
    # Where the manifests mount their volumes; present so a plain `ctr run` works too.
    _chroot_sh(root, f"install -d -o {KAFKA_UID} -g {KAFKA_UID} /var/lib/kafka/data /etc/kafka-runtime")
    version = kafka_version()
    if not (home / "libs" / f"kafka_2.13-{version}.jar").is_file():
        raise ImageError(f"the pom's jars do not include kafka_2.13-{version}.jar")
    return version


# Go binaries from tools/toolchain.py ----------------------------------------------------------------


# Set while only asking what is built (list, archives): never start a Go build then.
_QUERY_ONLY = False


def _toolchain_binary(name: str) -> Path:
    if _QUERY_ONLY:
        built = toolchain.bin_dir() / name
        if built.is_file():
            return built
        raise Skipped(f"no {name} binary yet: tools/toolchain.py has not built it")
    try:
        return toolchain.ensure(name)
    except toolchain.ToolchainError as exc:
        raise ImageError(f"cannot build {name} for its image: {exc}") from exc


def _binary_inputs(name: str) -> Callable[[], list[str | bytes]]:
    def inputs() -> list[str | bytes]:
        path = _toolchain_binary(name)
        with path.open("rb") as fh:
            return [name, hashlib.file_digest(fh, "sha256").hexdigest()]

    return inputs


def _populate_kubectl(root: Path) -> str:
    binary = _toolchain_binary("kubectl")
    target = root / "usr/local/bin/kubectl"
    shutil.copyfile(binary, target)
    target.chmod(0o755)
    _add_user(root, "kubectl", KAFKA_UID)  # the rack init container runs in the Kafka pod (uid 1000)
    out = run_in_rootfs(root, ["kubectl", "version", "--client", "-o", "json"], network=False)
    assert isinstance(out, subprocess.CompletedProcess)
    version = json.loads(out.stdout)["clientVersion"]["gitVersion"]
    return version if re.fullmatch(r"v\d+\.\d+\.\d+", version) else KUBERNETES_VERSION


# cap_net_bind_service=+ep (VFS_CAP_REVISION_2): CoreDNS binds :53 as a non-root user, as upstream's image.


def _nonroot_skeleton(root: Path) -> None:
    """The /etc and /tmp a single static binary needs to run as distroless' "nonroot" user."""
    for d in ("etc", "tmp"):
        (root / d).mkdir(mode=0o755)
    (root / "tmp").chmod(0o1777)
    (root / "etc/passwd").write_text(
        f"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{NONROOT_UID}:{NONROOT_UID}::/home/nonroot:/sbin/nologin\n"
    )
    (root / "etc/group").write_text(f"root:x:0:\nnonroot:x:{NONROOT_UID}:\n")


def _populate_coredns(root: Path) -> str:
    binary = _toolchain_binary("coredns")
    shutil.copyfile(binary, root / "coredns")
    (root / "coredns").chmod(0o755)
    _nonroot_skeleton(root)
    out = subprocess.run([str(root / "coredns"), "-version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"CoreDNS-(\d+\.\d+\.\d+)", out)
    if not match:
        raise ImageError(f"coredns -version printed no version: {out!r}")
    return match.group(1)


def _populate_keda(root: Path) -> str:
    # Both KEDA binaries in one image (the Deployments pick one by `command`), as distroless "nonroot".
    for name, target in (("keda-operator", "keda"), ("keda-adapter", "keda-adapter")):
        shutil.copyfile(_toolchain_binary(name), root / target)
        (root / target).chmod(0o755)
    _nonroot_skeleton(root)
    return toolchain.KEDA_VERSION.removeprefix("v")


def _pause_source() -> Path:
    go = shutil.which("go")
    if go is None:
        raise ImageError("Go is needed to download the Kubernetes module (pause.c)")
    out = subprocess.run(
        [go, "mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tempfile.gettempdir(),
        env={**os.environ, "GOFLAGS": "-mod=mod", "GO111MODULE": "on"},
    )
    info = json.loads(out.stdout or "{}")
    if out.returncode != 0 or info.get("Error") or "Dir" not in info:
        raise ImageError(
            f"go mod download k8s.io/kubernetes@{KUBERNETES_VERSION} failed: {info.get('Error') or out.stderr[-2000:]}"
        )
    return Path(info["Dir"]) / "build/pause"


def _pause_inputs() -> list[str | bytes]:
    src = _pause_source()
    gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=False).stdout.splitlines()[:1]
    return [(src / "linux/pause.c").read_bytes(), (src / "Makefile").read_bytes(), *gcc]


def _populate_pause(root: Path) -> str:
    src = _pause_source()
    tag = re.search(r"^TAG \?= (\S+)", (src / "Makefile").read_text(), re.M)
    version = f"v{tag.group(1) if tag else PAUSE_TAG}-{KUBERNETES_VERSION}"
    # Kubernetes' build/pause/Makefile: $(CC) -Os -Wall -Werror -static -DVERSION=... then strip.
    subprocess.run(
        [
            "gcc",
            "-Os",
            "-Wall",
            "-Werror",
            "-static",
            f"-DVERSION={version}",
            "-o",
            str(root / "pause"),
            str(src / "linux/pause.c"),
        ],
        check=True,
    )
    subprocess.run(["strip", str(root / "pause")], check=True)
    return PAUSE_TAG


def recipes() -> dict[str, Recipe]:
    return {
        r.name: r
        for r in [
            _app_recipe(),
            Recipe(
                "redis",
                "pynomaly/redis",
                "redis",
                _populate_redis,
                _config(["redis-server"], f"{REDIS_UID}:{REDIS_UID}", workdir="/data", ports=["6379/tcp", "26379/tcp"]),
            ),
            Recipe(
                "haproxy",
                "pynomaly/haproxy",
                "redis-proxy",
                _populate_haproxy,
                # The manifest passes only args (-f ...): the entrypoint is haproxy itself.  SIGUSR1 is
                # HAProxy's soft stop (finish open sessions), as upstream's image.
                _config(
                    ["-f", "/usr/local/etc/haproxy/haproxy.cfg"],
                    f"{HAPROXY_UID}:{HAPROXY_UID}",
                    entrypoint=["haproxy"],
                    workdir="/var/lib/haproxy",
                    ports=["6379/tcp", "8404/tcp"],
                    stop_signal="SIGUSR1",
                ),
            ),
            Recipe(
                "kafka",
                "pynomaly/kafka",
                "kafka",
                _populate_kafka,
                # infra/kafka_cluster.py's init container renders /etc/kafka-runtime/server.properties.
                _config(
                    [f"{KAFKA_HOME}/bin/kafka-server-start.sh", "/etc/kafka-runtime/server.properties"],
                    f"{KAFKA_UID}:{KAFKA_UID}",
                    workdir=KAFKA_HOME,
                    path=f"{KAFKA_HOME}/bin:{PATH_ENV}",
                    ports=["9092/tcp", "9093/tcp"],
                ),
                inputs=lambda: [
                    (ROOT / "app/pynomaly/localstack/pom.xml").read_bytes(),
                    inspect.getsource(_app_module("pynomaly.localstack.kafka_jars")),  # type: ignore[arg-type]
                    str(KAFKA_SCRIPTS),
                    _KAFKA_RUN_CLASS,
                    _KAFKA_LOG4J,
                    _KAFKA_TOOLS_LOG4J,
                ],
            ),
            Recipe(
                "kubectl",
                "pynomaly/kubectl",
                "kafka-rack-init",
                _populate_kubectl,
                _config(["version", "--client"], f"{KAFKA_UID}:{KAFKA_UID}", entrypoint=["kubectl"]),
                inputs=_binary_inputs("kubectl"),
            ),
            Recipe(
                "coredns",
                "pynomaly/coredns",
                "coredns",
                _populate_coredns,
                _config(None, f"{NONROOT_UID}:{NONROOT_UID}", entrypoint=["/coredns"], ports=["1053/tcp", "1053/udp"]),
                # No file capability: the cluster's pod binds 53 through its own unprivileged-port sysctl
                # (tools/cluster/manifests.py), and a binary with a capability cannot even start under
                # `capabilities: drop: [ALL]` (the kernel refuses the exec).
                inputs=_binary_inputs("coredns"),
                on_base=False,
            ),
            Recipe(
                "pause",
                "pynomaly/pause",
                "pause",
                _populate_pause,
                _config(None, f"{PAUSE_UID}:{PAUSE_UID}", entrypoint=["/pause"]),
                inputs=_pause_inputs,
                on_base=False,
            ),
            # Only the on-prem live tier runs KEDA (tools/cluster/keda.py): its Go build is long, so a plain
            # `build()` (what CI runs) skips it.
            Recipe(
                "keda",
                "pynomaly/keda",
                "keda",
                _populate_keda,
                _config(None, f"{NONROOT_UID}:{NONROOT_UID}", entrypoint=["/keda"]),
                inputs=lambda: [*_binary_inputs("keda-operator")(), *_binary_inputs("keda-adapter")()],
                on_base=False,
                by_default=False,
            ),
        ]
    }


def default_names() -> list[str]:
    """The images ``build()`` and ``archives()`` cover when given no names (not the opt-in ones)."""
    return [name for name, recipe in recipes().items() if recipe.by_default]


# -- building ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    name: str
    ref: str  # repository:tag, as a pod spec writes it
    archive: Path
    image_id: str
    size: int
    key: str
    role: str


def _shared_code() -> str:
    """The build helpers every recipe uses: a change there rebuilds every image."""
    helpers = (
        run_in_rootfs,
        _chroot_sh,
        _apt_install,
        _add_user,
        _dpkg_version,
        _index,
        _Entry,
        _diff,
        _write_layer,
        _write_archive,
        _config,
    )
    return "".join(inspect.getsource(h) for h in helpers)


def _key(recipe: Recipe, base_key: str) -> str:
    return _fingerprint(
        FORMAT,
        _shared_code(),
        recipe.name,
        base_key if recipe.on_base else "",
        json.dumps(recipe.config, sort_keys=True),
        inspect.getsource(recipe.populate),
        str(sorted(recipe.xattrs)),
        *recipe.inputs(),
    )


def _base_key() -> str:
    return _fingerprint(FORMAT, SUITE, "minbase", _debootstrap_version(), _DPKG_NODOC, inspect.getsource(_build_base))


def _cached(recipe: Recipe, key: str) -> Built | None:
    meta = cache_dir() / recipe.name / key / "meta.json"
    if not meta.is_file():
        return None
    m = json.loads(meta.read_text())
    archive = meta.parent / "image.tar"
    if not archive.is_file():
        return None
    return Built(recipe.name, m["ref"], archive, m["image_id"], archive.stat().st_size, key, recipe.role)


def build_one(recipe: Recipe) -> Built:
    key = _key(recipe, _base_key() if recipe.on_base else "")
    if (hit := _cached(recipe, key)) is not None:
        _say(f"{hit.ref}: up to date ({hit.size / 1e6:.0f} MB, {hit.archive})")
        return hit
    with _locked(recipe.name):
        if (hit := _cached(recipe, key)) is not None:
            return hit
        started = time.monotonic()
        _say(f"building {recipe.repository} ...")
        home = cache_dir() / recipe.name / key
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        work = home / "rootfs"
        try:
            layers: list[Layer] = []
            base_index: dict[str, _Entry] = {}
            if recipe.on_base:
                base = ensure_base()
                subprocess.run(["cp", "-a", "--reflink=auto", str(base.rootfs), str(work)], check=True)
                base_index = _index(base.rootfs)
                layers.append(base.layer)
            else:
                work.mkdir(mode=0o755)
            tag = recipe.populate(work)
            changed, whiteouts = _diff(base_index, _index(work))
            layers.append(_write_layer(work, changed, home / "layer.tar", whiteouts, recipe.xattrs))
            ref = f"{recipe.repository}:{tag}"
            image_id = _write_archive(home / "image.tar", ref, layers, recipe.config)
        except BaseException:
            shutil.rmtree(home, ignore_errors=True)
            raise
        shutil.rmtree(work)
        (home / "layer.tar").unlink()  # it lives on inside image.tar
        (home / "meta.json").write_text(json.dumps({"ref": ref, "image_id": image_id}))
        _prune(home.parent, keep=home)
        built = Built(
            recipe.name, ref, home / "image.tar", image_id, (home / "image.tar").stat().st_size, key, recipe.role
        )
        _say(f"built {ref} in {time.monotonic() - started:.0f} s ({built.size / 1e6:.0f} MB, {built.archive})")
        return built


def build(names: Iterable[str] = (), *, skip_missing: bool = True) -> dict[str, Built]:
    """Build (or reuse) the named images, every default one when none; images whose toolchain binary
    is not available yet are left out with a message when ``skip_missing``."""
    table = recipes()
    wanted = list(names) or default_names()
    unknown = [n for n in wanted if n not in table]
    if unknown:
        raise ImageError(f"unknown image(s) {unknown}; known: {', '.join(table)}")
    out: dict[str, Built] = {}
    for name in wanted:
        try:
            out[name] = build_one(table[name])
        except Skipped as exc:
            if not skip_missing:
                raise
            _say(f"skipping {table[name].repository}: {exc}")
    return out


def archives(names: Iterable[str] = ()) -> dict[str, Built]:
    """The images already built for this checkout's inputs (nothing is built); the default ones when no names."""
    global _QUERY_ONLY
    table = recipes()
    base_key = _base_key()
    out = {}
    _QUERY_ONLY = True
    try:
        for name in list(names) or default_names():
            try:
                hit = _cached(table[name], _key(table[name], base_key if table[name].on_base else ""))
            except Skipped:
                continue
            if hit is not None:
                out[name] = hit
    finally:
        _QUERY_ONLY = False
    return out


def image_refs(built: dict[str, Built] | None = None) -> dict[str, str]:
    """Role -> image ref (``app``, ``redis``, ``redis-proxy``, ``kafka``, ``kafka-rack-init``,
    ``coredns``, ``pause``) of the built images (see :func:`archives`)."""
    return {b.role: b.ref for b in (built if built is not None else archives()).values()}


def stack_config(built: dict[str, Built] | None = None) -> dict[str, str]:
    """The ``pynomaly:`` stack config values (path keys, as infra/config.py reads them) that make a
    stack run these images; set them with ``path=True``."""
    refs = image_refs(built)
    out: dict[str, str] = {}
    if "app" in refs:
        out["image.repository"], out["image.tag"] = refs["app"].rsplit(":", 1)
    for role, key in (
        ("redis", "redis.image"),
        ("redis-proxy", "redis.proxyImage"),
        ("kafka", "kafka.image"),
        ("kafka-rack-init", "kafka.rackInitImage"),
    ):
        if role in refs:
            out[key] = refs[role]
    return out


# -- loading and unpacking --------------------------------------------------------------------------

_IMPORTED = re.compile(r"^unpacking (\S+) \(sha256:[0-9a-f]+\)", re.M)


def load(
    archive_paths: Iterable[Path | str], address: str, *, namespace: str = "k8s.io", snapshotter: str | None = None
) -> list[str]:
    """``ctr images import`` each archive into containerd at ``address``; returns the names the
    images got.  ctr normalizes a tag without a registry the way the CRI resolves ``image:`` in a
    pod spec, so ``pynomaly/redis:7.0.15`` in a manifest finds the imported image."""
    ctr = shutil.which("ctr")
    if ctr is None:
        raise ImageError("ctr is missing: it comes with containerd (apt-get install containerd)")
    names: list[str] = []
    for path in archive_paths:
        argv = [ctr, "--address", address, "--namespace", namespace, "images", "import", "--all-platforms"]
        if snapshotter:
            argv += ["--snapshotter", snapshotter]
        started = time.monotonic()
        result = subprocess.run([*argv, str(path)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ImageError(f"ctr import of {path} into {address} failed: {result.stderr.strip()[-2000:]}")
        got = _IMPORTED.findall(result.stdout + result.stderr)
        names += got
        _say(f"loaded {', '.join(got) or path} in {time.monotonic() - started:.0f} s")
    return names


def unpack(archive: Path, dest: Path) -> dict[str, object]:
    """Extract a docker-archive's layers in order into ``dest`` (applying whiteouts, as a container
    runtime does); returns the image config."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as outer, tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        manifest = json.loads(outer.extractfile("manifest.json").read())[0]  # type: ignore[union-attr]
        config = json.loads(outer.extractfile(manifest["Config"]).read())  # type: ignore[union-attr]
        for name in manifest["Layers"]:
            layer = Path(tmp) / "layer.tar"
            with outer.extractfile(name) as src, layer.open("wb") as dst:  # type: ignore[union-attr]
                shutil.copyfileobj(src, dst, 1 << 20)
            listing = subprocess.run(["tar", "-t", "-f", str(layer)], capture_output=True, text=True, check=True)
            for entry in listing.stdout.splitlines():
                parent, _, base = entry.rstrip("/").rpartition("/")
                if base.startswith(".wh."):
                    target = dest / parent / base[4:]
                    if target.is_dir() and not target.is_symlink():
                        shutil.rmtree(target)
                    elif target.exists() or target.is_symlink():
                        target.unlink()
            subprocess.run(
                [
                    "tar",
                    "-x",
                    "-p",
                    "--numeric-owner",
                    "--xattrs",
                    "--xattrs-include=*",
                    "--exclude=.wh.*",
                    "-C",
                    str(dest),
                    "-f",
                    str(layer),
                ],
                check=True,
            )
            layer.unlink()
    return config


# -- CLI ----------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tools/images.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build what changed and print each image's ref and archive")
    b.add_argument("names", nargs="*", metavar="NAME")
    sub.add_parser("list", help="every image: its ref, archive and whether it is built for this checkout")
    ld = sub.add_parser("load", help="build what changed, then import into containerd (namespace k8s.io)")
    ld.add_argument("--address", required=True, help="containerd socket, e.g. /run/containerd/containerd.sock")
    ld.add_argument("--snapshotter", default=None)
    ld.add_argument("names", nargs="*", metavar="NAME")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            started = time.monotonic()
            for b_ in build(args.names).values():
                print(f"{b_.name}\t{b_.ref}\t{b_.archive}")
            _say(f"images ready in {time.monotonic() - started:.0f} s")
        elif args.command == "list":
            done = archives(recipes())
            for name, recipe in recipes().items():
                hit = done.get(name)
                print(
                    f"{name}\t{hit.ref if hit else recipe.repository + ':?'}\t{recipe.role}\t"
                    f"{'built ' + str(hit.archive) if hit else 'not built'}"
                )
        else:
            built = build(args.names)
            for name in load([b_.archive for b_ in built.values()], args.address, snapshotter=args.snapshotter):
                print(name)
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
