#!/usr/bin/env python3
"""The Go binaries the deploy tier needs, built from the Go module proxy at pinned versions and cached.

    python tools/toolchain.py ensure [NAME ...]   # build what is missing (all when no NAME), print paths
    python tools/toolchain.py list                # every tool, its version and whether it is built

Importable: ``ensure(name) -> Path``, ``ensure_all(names) -> dict[str, Path]``, ``bin_dir() -> Path``.

What is built, and from which pinned module (each wrapper module's go.sum is committed):

- Kubernetes v1.35.4 (``tools/kubernetes``): kube-apiserver, kube-controller-manager, kube-scheduler,
  kubelet, kube-proxy, kubectl, with the version stamps Kubernetes' own build sets.
- etcd v3.6.16 (``tools/etcd``), CoreDNS v1.15.0 with the few plugins the cluster uses (``tools/coredns``),
  kwok v0.8.0 (fake nodes) and helm-docs v1.14.2 (the chart README from ``values.yaml`` comments,
  ``tools/chart_docs.py``): plain ``go install``s, their go.mod files have no replace directives.
- The Pulumi CLI v3.274.1 (``tools/pulumi``) and the Kubernetes provider 4.25.0
  (``tools/pulumi-kubernetes``: the provider module's zip lacks two generated files, so it is copied
  to a work folder and its own ``generate.go`` runs first), plus the dynamic-provider shim
  ``pulumi-resource-pulumi-python`` from the Pulumi SDK module.
- KEDA v2.21.0's operator and metrics API server (``tools/keda``, tier "chaos": ``keda-operator``,
  ``keda-adapter``; its own replace directive carried over).
- kube-network-policies v0.8.0 (``tools/kube-network-policies``: Kubernetes SIG Network's NetworkPolicy
  agent, nfqueue + nftables) for the local cluster, with a main of our own (kubeconfig, SIGTERM) and one
  build-time patch: its ``queue`` rules use xtables' NFQUEUE target through nft_compat, since this
  machine's kernel lacks nft_queue (``_prepare_kube_network_policies``).
- The CRD files the stacks use, straight from their projects' modules: KEDA v2.21.0 and the
  Prometheus operator v0.85.0 (``crd_files()``).

The cache is per machine, not per checkout, so a fresh clone (CI) reuses it:
``$PYNOMALY_CACHE_DIR`` or ``${XDG_CACHE_HOME:-~/.cache}/pynomaly``.  A binary is rebuilt only when its
inputs (wrapper go.mod/go.sum/sources, flags, Go version) change; a file lock keeps two builds of the
same tool from racing.  Each build prints how long it took.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"

KUBERNETES_VERSION = "v1.35.4"
KUBERNETES_COMMIT = "7b8c6cf0edd376b3d7c2f255142977c7f93db258"  # the v1.35.4 tag: what `kubectl version` shows
ETCD_VERSION = "v3.6.16"
COREDNS_VERSION = "v1.15.0"
KWOK_VERSION = "v0.8.0"
HELM_DOCS_VERSION = "v1.14.2"
PULUMI_VERSION = "v3.274.1"
PULUMI_KUBERNETES_VERSION = "4.25.0"
# The only version of the provider module the proxy serves; it is the v4.25.0 tag's commit.
PULUMI_KUBERNETES_MODULE_VERSION = "v4.0.0-20260115033456-f47bc2d6f199"
KUBE_NETWORK_POLICIES_VERSION = "v0.8.0"
KEDA_VERSION = "v2.21.0"
PROMETHEUS_OPERATOR_VERSION = "v0.85.0"


class ToolchainError(RuntimeError):
    """A tool cannot be built; the message says why and what to do."""


def cache_dir() -> Path:
    explicit = os.environ.get("PYNOMALY_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pynomaly"


def bin_dir() -> Path:
    return cache_dir() / "bin"


def _k8s_ldflags() -> list[str]:
    minor = KUBERNETES_VERSION.split(".")[1]
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={KUBERNETES_VERSION}",
            f"-X {pkg}.gitMajor=1",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitCommit={KUBERNETES_COMMIT}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=2026-01-01T00:00:00Z",
        ]
    return flags


@dataclass(frozen=True)
class GoTool:
    """One binary: ``go build`` of ``package`` inside the wrapper module ``module_dir``."""

    name: str
    version: str
    package: str
    module_dir: str  # under tools/
    ldflags: tuple[str, ...] = ()
    # "pulumi-kubernetes": build in a prepared copy (_prepare_pulumi_kubernetes);
    # "kube-network-policies": build against a patched copy (_prepare_kube_network_policies)
    prepare: str | None = None
    tier: str = "ci"  # "chaos": only the on-prem live tier (`./dev test --cluster-chaos`) needs it
    nice: int = 0  # > 0: the build yields the (shared, 2-core) CPU to other work


K8S_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl")

GO_TOOLS: dict[str, GoTool] = {
    **{
        cmd: GoTool(cmd, KUBERNETES_VERSION, f"k8s.io/kubernetes/cmd/{cmd}", "kubernetes", tuple(_k8s_ldflags()))
        for cmd in K8S_COMMANDS
    },
    "etcd": GoTool("etcd", ETCD_VERSION, "go.etcd.io/etcd/server/v3", "etcd"),
    "coredns": GoTool(
        "coredns",
        COREDNS_VERSION,
        ".",
        "coredns",
        (f"-X github.com/coredns/coredns/coremain.GitCommit={COREDNS_VERSION}",),
    ),
    "pulumi": GoTool(
        "pulumi",
        PULUMI_VERSION,
        "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi",
        "pulumi",
        (f"-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version={PULUMI_VERSION}",),
    ),
    "pulumi-resource-kubernetes": GoTool(
        "pulumi-resource-kubernetes",
        PULUMI_KUBERNETES_VERSION,
        "github.com/pulumi/pulumi-kubernetes/provider/v4/cmd/pulumi-resource-kubernetes",
        "pulumi-kubernetes",
        (
            f"-X github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version.Version={PULUMI_KUBERNETES_VERSION}",
            # Helm's fallback Kubernetes version when no cluster is asked (render mode); 1.20 otherwise,
            # which charts with a kubeVersion constraint refuse.
            "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1",
            f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={KUBERNETES_VERSION.split('.')[1]}",
        ),
        prepare="pulumi-kubernetes",
    ),
    # KEDA's operator and metrics API server: only the on-prem live tier runs them (tools/cluster/keda.py).
    **{
        name: GoTool(
            name,
            KEDA_VERSION,
            f"github.com/kedacore/keda/v2/cmd/{cmd}",
            "keda",
            (f"-X github.com/kedacore/keda/v2/version.Version={KEDA_VERSION.removeprefix('v')}",),
            tier="chaos",
            nice=10,
        )
        for name, cmd in (("keda-operator", "operator"), ("keda-adapter", "adapter"))
    },
    "kube-network-policies": GoTool(
        "kube-network-policies",
        KUBE_NETWORK_POLICIES_VERSION,
        ".",
        "kube-network-policies",
        prepare="kube-network-policies",
    ),
}

# Tools that are not a `go build` in a wrapper module.
OTHER_TOOLS = {"kwok": KWOK_VERSION, "helm-docs": HELM_DOCS_VERSION, "pulumi-resource-pulumi-python": PULUMI_VERSION}
ALL_TOOLS = (*GO_TOOLS, *OTHER_TOOLS)
TIERS = ("ci", "chaos")


def tier_tools(tier: str = "ci") -> tuple[str, ...]:
    """The tools a test tier needs: "ci" (the default suite), "chaos" (that and the on-prem live tier's)."""
    if tier not in TIERS:
        raise ToolchainError(f"unknown tier {tier!r}; known: {', '.join(TIERS)}")
    return tuple(name for name in ALL_TOOLS if tier == "chaos" or name not in GO_TOOLS or GO_TOOLS[name].tier == "ci")


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise ToolchainError("Go is missing: install Go 1.25 or newer (Debian: apt-get install golang-go)")
    return go


def _go_env() -> dict[str, str]:
    # Static binaries (they also run inside images); never fetch another Go toolchain.
    return dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="-mod=readonly -buildvcs=false")


def _run_go(args: list[str], cwd: Path, what: str, nice: int = 0) -> str:
    prefix = ["nice", "-n", str(nice)] if nice > 0 else []
    result = subprocess.run(
        [*prefix, _go(), *args], cwd=cwd, env=_go_env(), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ToolchainError(f"{what} failed (go {' '.join(args[:2])} in {cwd}):\n{result.stderr.strip()[-3000:]}")
    return result.stdout


def module_dir(module_at_version: str) -> Path:
    """Download ``module@version`` into Go's module cache (once) and return its read-only folder."""
    out = _run_go(["mod", "download", "-json", module_at_version], ROOT, f"downloading {module_at_version}")
    info = json.loads(out)
    if info.get("Error"):
        raise ToolchainError(f"the Go module proxy refused {module_at_version}: {info['Error']}")
    return Path(info["Dir"])


def _go_version() -> str:
    return subprocess.run([_go(), "env", "GOVERSION"], capture_output=True, text=True, check=False).stdout.strip()


def fingerprint(*parts: str | bytes) -> str:
    """A short hash of build inputs: the cache key of a binary or an image."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:20]


def _module_inputs(directory: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file() and p.suffix in {".mod", ".sum", ".go"}]


@contextmanager
def locked(name: str, locks: Path | None = None) -> Iterator[None]:
    """Hold a per-machine file lock: two processes never build the same thing at once."""
    locks = locks or cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with (locks / f"{name}.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _stamp(name: str) -> Path:
    return bin_dir() / f".{name}.stamp"


def _cached(name: str, key: str) -> Path | None:
    binary = bin_dir() / name
    stamp = _stamp(name)
    if binary.is_file() and os.access(binary, os.X_OK) and stamp.is_file() and stamp.read_text().strip() == key:
        return binary
    return None


def _record(name: str, key: str, seconds: float) -> Path:
    _stamp(name).write_text(key + "\n")
    binary = bin_dir() / name
    size = binary.stat().st_size / 1e6
    print(f"built {name} in {seconds:.0f} s ({size:.0f} MB)", file=sys.stderr)
    return binary


def _prepare_pulumi_kubernetes(wrapper: Path) -> Path:
    """A writable build folder: the wrapper module plus the provider module with its generated files."""
    work = cache_dir() / "src" / "pulumi-kubernetes"
    provider_src = module_dir(f"github.com/pulumi/pulumi-kubernetes/provider/v4@{PULUMI_KUBERNETES_MODULE_VERSION}")
    provider = work / "provider"
    cmd_dir = provider / "cmd" / "pulumi-resource-kubernetes"
    if not (cmd_dir / "schema-embed.json").is_file():
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(provider_src, provider)
        for path in [provider, *provider.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
        # The module's generator (a `//go:build ignore` main) writes schema-embed.json and
        # terraform-mapping-embed.json with the version stamped in; build and run it as a program.
        gen = work / "gen"
        gen.mkdir()
        source = (cmd_dir / "generate.go").read_text()
        lines = [ln for ln in source.splitlines() if not ln.startswith(("//go:build ignore", "// +build ignore"))]
        (gen / "main.go").write_text("\n".join(lines) + "\n")
    for name in ("go.mod", "go.sum", "tools.go"):
        shutil.copy2(wrapper / name, work / name)
    if not (cmd_dir / "schema-embed.json").is_file():
        _run_go(["build", "-o", str(work / "gen" / "generate"), "./gen"], work, "building the provider's generator")
        subprocess.run(
            [str(work / "gen" / "generate")],
            cwd=cmd_dir,
            check=True,
            env=dict(os.environ, VERSION=PULUMI_KUBERNETES_VERSION),
        )
    return work


# kube-network-policies' controller.go queues packets with nftables' `queue` expression (twice, in its
# postrouting and prerouting chains): the kernel module nft_queue, which this machine's kernel was built
# without (`nft add rule ... queue num 100` fails with "No such file or directory").  Each stanza becomes
# a call to xtQueue (tools/kube-network-policies/patch/xt_queue.go): xtables' NFQUEUE target run by
# nft_compat, which the kernel has.
KNP_QUEUE_STANZA = (
    "\tqueue := &expr.Queue{Num: uint16(c.config.QueueID)}\n"
    "\tif c.config.FailOpen {\n\t\tqueue.Flag = expr.QueueFlagBypass\n\t}\n"
)
KNP_QUEUE_PATCHED = "\tqueue := xtQueue(uint16(c.config.QueueID), c.config.FailOpen)\n"


def _knp_patch_inputs(wrapper: Path) -> list[str | bytes]:
    return [KNP_QUEUE_STANZA, KNP_QUEUE_PATCHED, (wrapper / "patch" / "xt_queue.go").read_bytes()]


def _prepare_kube_network_policies(wrapper: Path) -> Path:
    """A build folder: the wrapper module plus a patched copy of the agent's module, used through a
    `replace` (Go refuses to overlay files in its module cache).  The copy is taken from the module the
    proxy served (checked against the checksum database by ``go mod download``)."""
    upstream = module_dir(f"sigs.k8s.io/kube-network-policies@{KUBE_NETWORK_POLICIES_VERSION}")
    source = (upstream / "pkg" / "networkpolicy" / "controller.go").read_text()
    if source.count(KNP_QUEUE_STANZA) != 2:
        raise ToolchainError(
            "kube-network-policies: controller.go no longer has the two `expr.Queue` stanzas "
            "the NFQUEUE patch replaces; review tools/toolchain.py KNP_QUEUE_STANZA"
        )
    work = cache_dir() / "src" / "kube-network-policies"
    shutil.rmtree(work, ignore_errors=True)
    copy = work / "upstream"
    shutil.copytree(upstream, copy)
    for path in [copy, *copy.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    package = copy / "pkg" / "networkpolicy"
    (package / "controller.go").write_text(source.replace(KNP_QUEUE_STANZA, KNP_QUEUE_PATCHED))
    shutil.copy2(wrapper / "patch" / "xt_queue.go", package / "xt_queue.go")
    for name in ("go.mod", "go.sum", "main.go"):
        shutil.copy2(wrapper / name, work / name)
    _run_go(
        ["mod", "edit", "-replace", "sigs.k8s.io/kube-network-policies=./upstream"],
        work,
        "pointing the build at the patched copy",
    )
    return work


def _build_go_tool(tool: GoTool) -> Path:
    wrapper = TOOLS / tool.module_dir
    extra = _knp_patch_inputs(wrapper) if tool.prepare == "kube-network-policies" else []
    key = fingerprint(
        tool.version, tool.package, " ".join(tool.ldflags), _go_version(), *_module_inputs(wrapper), *extra
    )
    with locked(tool.name):
        if (hit := _cached(tool.name, key)) is not None:
            return hit
        build_dir = wrapper
        if tool.prepare == "pulumi-kubernetes":
            build_dir = _prepare_pulumi_kubernetes(wrapper)
        elif tool.prepare == "kube-network-policies":
            build_dir = _prepare_kube_network_policies(wrapper)
        bin_dir().mkdir(parents=True, exist_ok=True)
        print(f"building {tool.name} {tool.version} from the Go module proxy (first time: minutes)", file=sys.stderr)
        started = time.monotonic()
        tmp = bin_dir() / f".{tool.name}.tmp"
        _run_go(
            ["build", "-trimpath", "-ldflags", " ".join(("-s", "-w", *tool.ldflags)), "-o", str(tmp), tool.package],
            build_dir,
            f"building {tool.name}",
            nice=tool.nice,
        )
        tmp.replace(bin_dir() / tool.name)
        return _record(tool.name, key, time.monotonic() - started)


def _go_install(name: str, version: str, package: str, ldflags: str) -> Path:
    """``go install package@version`` into the cache (for modules without replace directives)."""
    key = fingerprint(version, _go_version())  # package and ldflags follow from name and version
    with locked(name):
        if (hit := _cached(name, key)) is not None:
            return hit
        print(f"building {name} {version}: go install {package}", file=sys.stderr)
        started = time.monotonic()
        staging = cache_dir() / "src" / f"{name}-bin"
        staging.mkdir(parents=True, exist_ok=True)
        env = dict(_go_env(), GOBIN=str(staging), GOFLAGS="-buildvcs=false")
        result = subprocess.run(
            [_go(), "install", "-trimpath", "-ldflags", f"-s -w {ldflags}", f"{package}@{version}"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ToolchainError(f"go install of {name} failed:\n{result.stderr.strip()[-3000:]}")
        bin_dir().mkdir(parents=True, exist_ok=True)
        (staging / name).replace(bin_dir() / name)
        return _record(name, key, time.monotonic() - started)


def _install_python_shim() -> Path:
    """The dynamic-provider launcher shipped in the Pulumi SDK module (a shell script)."""
    name = "pulumi-resource-pulumi-python"
    key = fingerprint(PULUMI_VERSION, name)
    with locked(name):
        if (hit := _cached(name, key)) is not None:
            return hit
        source = module_dir(f"github.com/pulumi/pulumi/sdk/v3@{PULUMI_VERSION}") / "python" / "dist" / name
        bin_dir().mkdir(parents=True, exist_ok=True)
        target = bin_dir() / name
        shutil.copyfile(source, target)
        target.chmod(0o755)
        return _record(name, key, 0.0)


def ensure(name: str) -> Path:
    """The path of tool ``name``, built first when missing or stale."""
    if name in GO_TOOLS:
        return _build_go_tool(GO_TOOLS[name])
    if name == "kwok":
        return _go_install(
            "kwok", KWOK_VERSION, "sigs.k8s.io/kwok/cmd/kwok", f"-X sigs.k8s.io/kwok/pkg/consts.Version={KWOK_VERSION}"
        )
    if name == "helm-docs":
        return _go_install(
            "helm-docs",
            HELM_DOCS_VERSION,
            "github.com/norwoodj/helm-docs/cmd/helm-docs",
            f"-X main.version={HELM_DOCS_VERSION.removeprefix('v')}",
        )
    if name == "pulumi-resource-pulumi-python":
        return _install_python_shim()
    raise ToolchainError(f"unknown tool {name!r}; known: {', '.join(ALL_TOOLS)}")


def ensure_all(names: Iterable[str] = ALL_TOOLS) -> dict[str, Path]:
    return {name: ensure(name) for name in names}


def crd_files() -> list[Path]:
    """The CRD manifests the stacks' custom resources need, from the projects' own Go modules."""
    keda = module_dir(f"github.com/kedacore/keda/v2@{KEDA_VERSION}") / "config" / "crd" / "bases"
    prom = module_dir(f"github.com/prometheus-operator/prometheus-operator@{PROMETHEUS_OPERATOR_VERSION}")
    prom_crds = prom / "example" / "prometheus-operator-crd"
    files = [
        keda / "keda.sh_scaledobjects.yaml",
        keda / "keda.sh_triggerauthentications.yaml",
        keda / "keda.sh_clustertriggerauthentications.yaml",
        prom_crds / "monitoring.coreos.com_servicemonitors.yaml",
        prom_crds / "monitoring.coreos.com_prometheusrules.yaml",
    ]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ToolchainError(f"CRD files missing from the downloaded modules: {missing}")
    return files


def kwok_stage_files() -> list[Path]:
    """kwok's own "fast" stages (nodes Ready with a lease heartbeat; pods Ready at once, Jobs' pods
    completed, deleted pods removed), from its module: kwok runs nothing without stages."""
    stages = module_dir(f"sigs.k8s.io/kwok@{KWOK_VERSION}") / "kustomize" / "stage"
    files = [
        stages / "node" / "fast" / "node-initialize.yaml",
        stages / "node" / "heartbeat-with-lease" / "node-heartbeat-with-lease.yaml",
        *(stages / "pod" / "fast" / f"pod-{name}.yaml" for name in ("ready", "complete", "delete")),
    ]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ToolchainError(f"kwok stage files missing from its module: {missing}")
    return files


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tools/toolchain.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ens = sub.add_parser("ensure", help="build what is missing and print the paths")
    ens.add_argument("names", nargs="*", metavar="NAME", help=f"one of: {', '.join(ALL_TOOLS)}")
    ens.add_argument("--tier", choices=TIERS, default="ci", help="without names: the tools this test tier needs")
    sub.add_parser("list", help="every tool, its version, and whether it is built")
    args = parser.parse_args(argv)
    try:
        if args.command == "ensure":
            for name, path in ensure_all(args.names or tier_tools(args.tier)).items():
                print(f"{name}\t{path}")
        else:
            for name in ALL_TOOLS:
                version = GO_TOOLS[name].version if name in GO_TOOLS else OTHER_TOOLS[name]
                state = "built" if (bin_dir() / name).is_file() else "missing"
                print(f"{name}\t{version}\t{state}")
    except ToolchainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
