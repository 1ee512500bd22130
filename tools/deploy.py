#!/usr/bin/env python3
"""Deploy an environment with the real Pulumi engine, through the Automation API (no language host).

    python tools/deploy.py dev                         # preview, ask, then update the stack
    python tools/deploy.py dev --yes                   # update without asking
    python tools/deploy.py onprem --preview            # what would change
    python tools/deploy.py dev --refresh | --destroy
    python tools/deploy.py dev --kubeconfig ~/.kube/lab --context lab \\
        --set 'pynomaly:image.repository=registry.lab/pynomaly' --set 'kafka.heap=768m'
    python tools/deploy.py dev --set 'kubernetes.renderYamlToDirectory=out/dev' --yes   # render, no cluster
    python tools/deploy.py dev --local-cluster --yes   # onto `./dev cluster up`, with the images it loaded

The program is exactly the one ``pulumi up`` runs (``infra.program.main``), run inline by this
process.  Its config is ``environments/Pulumi.<ENV>.yaml`` plus ``--set KEY=VALUE`` overrides
(``[namespace:]path``, namespace ``pynomaly`` by default; a key of ``infra.config.SECRET_KEYS`` is set
as a secret), set on the stack with ``--path``.  Nothing under ``environments/`` is written: the
workspace, a ``file://`` backend, ``PULUMI_HOME`` and the passphrase (generated once, mode 0600, or
``PULUMI_CONFIG_PASSPHRASE``) live in the state directory (``--state-dir``, default
``.pynomaly/deploy``, git-ignored).  The engine binaries come from ``tools/toolchain.py``.

Importable: :func:`open_stack`, :func:`up`, :func:`preview`, :func:`refresh`, :func:`destroy`,
:func:`outputs`, :func:`stack_config`.  Exit status: 0 done, 1 the engine failed, 2 bad input
(unknown environment, bad ``--set``, invalid config, no kubeconfig, unreachable cluster).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import yaml
from pulumi import automation as auto
from pulumi.automation import events

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from infra import config as stack_config_mod  # noqa: E402
from infra import program as infra_program  # noqa: E402
from infra.config import ENVIRONMENTS, PROJECT, SECRET_KEYS, ConfigError  # noqa: E402

ENV_DIR = ROOT / "environments"
DEFAULT_STATE_DIR = ROOT / ".pynomaly" / "deploy"
ENGINE_TOOLS = ("pulumi", "pulumi-resource-kubernetes", "pulumi-resource-pulumi-python")
_PLAIN_SEGMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
OpCounts = dict[str, int]
EventCallback = Callable[[events.EngineEvent], None]


class DeployError(RuntimeError):
    """Bad input or an unusable environment: one line saying what to do (exit status 2)."""


# -- configuration ----------------------------------------------------------------------------------


def stack_file(env: str) -> dict[str, Any]:
    """The ``config:`` block of ``environments/Pulumi.<env>.yaml``."""
    if env not in ENVIRONMENTS:
        raise DeployError(f"no such environment {env!r} (known: {', '.join(ENVIRONMENTS)})")
    path = ENV_DIR / f"Pulumi.{env}.yaml"
    if not path.is_file():
        raise DeployError(f"{path.relative_to(ROOT)} is missing")
    return (yaml.safe_load(path.read_text()) or {}).get("config") or {}


def _segment(name: str) -> str:
    return f".{name}" if _PLAIN_SEGMENT.match(name) else f'["{name}"]'


def _flatten(key: str, value: Any) -> Iterator[tuple[str, str]]:
    """``pynomaly:kafka`` {``brokers``: 3} -> (``pynomaly:kafka.brokers``, ``3``): paths for ``--path``."""
    if isinstance(value, Mapping):
        for sub, item in value.items():
            yield from _flatten(key + _segment(str(sub)), item)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _flatten(f"{key}[{i}]", item)
    elif isinstance(value, bool):
        yield key, "true" if value else "false"
    elif value is not None:
        yield key, str(value)


def parse_set(items: Sequence[str]) -> dict[str, str]:
    """``--set`` arguments as ``{namespace:path: value}``; a key without a namespace is ``pynomaly:``."""
    overrides: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise DeployError(f"--set {item!r}: expected KEY=VALUE, e.g. --set 'pynomaly:kafka.heap=768m'")
        if ":" not in key.split(".", 1)[0].split("[", 1)[0]:
            key = f"{PROJECT}:{key}"
        namespace, _, path = key.partition(":")
        if not namespace or not path or path[0] in ".[":
            raise DeployError(f"--set {item!r}: the key must be NAMESPACE:PATH like pynomaly:kafka.heap")
        overrides[key] = value
    return overrides


def stack_config(
    env: str,
    *,
    kubeconfig: str | os.PathLike[str] | None = None,
    context: str | None = None,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, auto.ConfigValue]:
    """The stack's config as ``--path`` keys: the stack file, then kubeconfig/context, then overrides.

    Keys of :data:`infra.config.SECRET_KEYS` become secret config.  Raises :class:`DeployError` with
    the program's own validation message when the result is not a valid configuration.
    """
    flat: dict[str, str] = {}
    for key, value in stack_file(env).items():
        flat.update(_flatten(key, value))
    if kubeconfig is not None:
        path = Path(kubeconfig).expanduser().resolve()
        if not path.is_file():
            raise DeployError(f"--kubeconfig {kubeconfig}: no such file")
        flat[f"{PROJECT}:kubernetes.kubeconfig"] = str(path)
    if context:
        flat[f"{PROJECT}:kubernetes.context"] = context
    for key, value in (overrides or {}).items():
        # An override replaces the whole subtree it names.
        for old in [k for k in flat if k == key or k.startswith((key + ".", key + "["))]:
            del flat[old]
        flat[key] = value
    result = {}
    for key, value in flat.items():
        top = key.split(":", 1)[1].split(".", 1)[0].split("[", 1)[0] if key.startswith(PROJECT + ":") else ""
        result[key] = auto.ConfigValue(value, secret=top in SECRET_KEYS)
    _validate(env, result)
    return result


def _validate(env: str, config: Mapping[str, auto.ConfigValue]) -> None:
    """Run the program's own parser over the plain keys, so a bad value fails before the engine starts."""
    nested: dict[str, Any] = {}
    for key, value in config.items():
        if not key.startswith(PROJECT + ":") or value.secret:
            continue
        _assign(nested, key.split(":", 1)[1], _coerce(value.value))
    try:
        stack_config_mod.parse_config(nested, env, default_tag=infra_program.app_version())
    except ConfigError as exc:
        raise DeployError(f"invalid configuration for {env}: " + "; ".join(exc.problems)) from None


def _coerce(value: str) -> Any:
    """What ``pulumi config set --path`` stores: true/false as booleans, plain integers as numbers."""
    if value in ("true", "false"):
        return value == "true"
    if re.fullmatch(r"-?[1-9][0-9]*|0", value):
        return int(value)
    return value


_PATH_TOKEN = re.compile(r'\.?([A-Za-z_][A-Za-z0-9_-]*)|\["([^"]+)"\]|\[([0-9]+)\]')


def _assign(tree: dict[str, Any], path: str, value: Any) -> None:
    tokens: list[str | int] = []
    pos = 0
    while pos < len(path):
        m = _PATH_TOKEN.match(path, pos)
        if not m:
            raise DeployError(f"bad config path {path!r}")
        tokens.append(int(m.group(3)) if m.group(3) is not None else (m.group(1) or m.group(2)))
        pos = m.end()
    node: Any = tree
    for token, nxt in zip(tokens, [*tokens[1:], None], strict=True):
        empty: Any = [] if isinstance(nxt, int) else {}
        if isinstance(token, int):
            if not isinstance(node, list):
                raise DeployError(f"bad config path {path!r}: an index into a non-list")
            while len(node) <= token:
                node.append(None)
            if nxt is None:
                node[token] = value
            else:
                node[token] = node[token] if node[token] is not None else empty
                node = node[token]
        else:
            if not isinstance(node, dict):
                raise DeployError(f"bad config path {path!r}: a key under a non-object")
            if nxt is None:
                node[token] = value
            else:
                node = node.setdefault(token, empty)


# -- the engine's environment -----------------------------------------------------------------------


def engine_tools() -> dict[str, Path]:
    """The Pulumi CLI, the Kubernetes provider and the dynamic-provider shim (built when missing)."""
    from tools import toolchain  # builds with Go on first use: imported only when needed

    try:
        return {name: toolchain.ensure(name) for name in ENGINE_TOOLS}
    except toolchain.ToolchainError as exc:
        raise DeployError(f"the Pulumi engine is not available: {exc}") from None


def passphrase(state_dir: Path) -> str:
    """``PULUMI_CONFIG_PASSPHRASE``, or one generated once into ``<state_dir>/passphrase`` (0600)."""
    given = os.environ.get("PULUMI_CONFIG_PASSPHRASE")
    if given:
        return given
    path = state_dir / "passphrase"
    if not path.is_file():
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def _tool_root(state_dir: Path, tools: Mapping[str, Path]) -> Path:
    """``<state_dir>/engine/bin`` with links to the engine binaries: PulumiCommand's root, first on PATH."""
    root = state_dir / "engine"
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, target in tools.items():
        link = bin_dir / name
        if link.is_symlink() or link.exists():
            if link.is_symlink() and Path(os.readlink(link)) == Path(target):
                continue
            link.unlink()
        link.symlink_to(Path(target).resolve())
    return root


def engine_env(state_dir: Path, tool_bin: Path) -> dict[str, str]:
    env = {
        "PATH": os.pathsep.join([str(tool_bin), os.environ.get("PATH", "")]),
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "PULUMI_CONFIG_PASSPHRASE": passphrase(state_dir),
        # The dynamic provider (infra.generated, pickled by value) runs on this interpreter's Pulumi SDK.
        "PULUMI_PYTHON_CMD": sys.executable,
    }
    if sys.prefix != sys.base_prefix:
        env["PULUMI_RUNTIME_VIRTUALENV"] = sys.prefix
    return env


# -- the stack --------------------------------------------------------------------------------------


def _program() -> None:
    infra_program.main()


def open_stack(
    env: str,
    *,
    kubeconfig: str | os.PathLike[str] | None = None,
    context: str | None = None,
    overrides: Mapping[str, str] | None = None,
    state_dir: Path = DEFAULT_STATE_DIR,
    tools: Mapping[str, Path] | None = None,
) -> auto.Stack:
    """Select (or create) stack ``env`` in ``state_dir`` with its whole config set afresh."""
    config = stack_config(env, kubeconfig=kubeconfig, context=context, overrides=overrides)
    state_dir = Path(state_dir).resolve()
    tool_root = _tool_root(state_dir, tools if tools is not None else engine_tools())
    workspace = state_dir / "workspace"
    backend = state_dir / "backend"
    for folder in (workspace, backend, state_dir / "home"):
        folder.mkdir(parents=True, exist_ok=True)
    opts = auto.LocalWorkspaceOptions(
        work_dir=str(workspace),
        pulumi_home=str(state_dir / "home"),
        pulumi_command=auto.PulumiCommand(root=str(tool_root)),
        project_settings=auto.ProjectSettings(
            name=PROJECT,
            runtime="python",
            backend=auto.ProjectBackend(url=f"file://{backend}"),
            description="Pynomaly (tools/deploy.py: the infra program run inline)",
        ),
        secrets_provider="passphrase",
        env_vars=engine_env(state_dir, tool_root / "bin"),
    )
    stack = auto.create_or_select_stack(stack_name=env, project_name=PROJECT, program=_program, opts=opts)
    # Start from an empty config each time (keep the encryption salt), so an earlier --set never lingers.
    ws = stack.workspace
    try:
        settings = ws.stack_settings(env)
    except FileNotFoundError:
        settings = None
    if settings is not None and settings.config:
        settings.config = {}
        ws.save_stack_settings(env, settings)
    stack.set_all_config(config, path=True)
    return stack


# -- operations -------------------------------------------------------------------------------------


@dataclass
class Progress:
    """A compact display built from engine events.

    A preview prints one line per planned step (``+ create  kubernetes:core/v1:Secret app-secret``).
    An update, refresh or destroy prints one line per finished step with its duration, and a line
    when a slow step (workloads, Jobs, the chart) starts, so a wait for pods is visible.  Unchanged
    resources are counted, not shown.  Engine warnings and errors are printed on one line each.
    """

    planning: bool = False
    write: Callable[[str], None] = field(default=lambda line: print(line, flush=True))
    started: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    SYMBOLS: ClassVar[dict[str, str]] = {
        "create": "+",
        "update": "~",
        "delete": "-",
        "replace": "+-",
        "create-replacement": "+-",
        "delete-replaced": "--",
        "refresh": "~",
        "read": ">",
        "import": "=",
    }
    DONE: ClassVar[dict[str, str]] = {
        "create": "created",
        "update": "updated",
        "delete": "deleted",
        "replace": "replaced",
        "create-replacement": "created replacement",
        "delete-replaced": "deleted original",
        "refresh": "refreshed",
        "read": "read",
        "import": "imported",
    }
    SLOW: ClassVar[tuple[str, ...]] = ("kubernetes:apps/v1:", "kubernetes:batch/v1:Job", "kubernetes:helm.sh/")

    def __call__(self, event: events.EngineEvent) -> None:
        if event.resource_pre_event is not None:
            meta = event.resource_pre_event.metadata
            op = meta.op.value
            self.started[meta.urn] = time.monotonic()
            if meta.type == "pulumi:pulumi:Stack" or op == "same":
                return
            if self.planning:
                self.write(f"  {self.SYMBOLS.get(op, '*'):>2} {op:<8} {meta.type} {_name(meta.urn)}")
            elif meta.type.startswith(self.SLOW):
                self.write(f"  .. {op}: {meta.type} {_name(meta.urn)} (waiting until it is ready)")
        elif event.res_outputs_event is not None:
            meta = event.res_outputs_event.metadata
            op = meta.op.value
            if meta.type != "pulumi:pulumi:Stack" and op != "same" and not self.planning:
                took = time.monotonic() - self.started.get(meta.urn, time.monotonic())
                self.write(
                    f"  {self.SYMBOLS.get(op, '*'):>2} {self.DONE.get(op, op)} {meta.type} "
                    f"{_name(meta.urn)} ({took:.1f}s)"
                )
        elif event.res_op_failed_event is not None:
            meta = event.res_op_failed_event.metadata
            self.write(f"  !! {meta.op.value} failed: {meta.type} {_name(meta.urn)}")
        elif event.diagnostic_event is not None:
            diag = event.diagnostic_event
            if diag.severity in ("error", "warning") and not _EXPECTED_WARNING.search(diag.message):
                text = " ".join(diag.message.split())
                where = f" {_name(diag.urn)}" if diag.urn else ""
                self.write(f"  {diag.severity}{where}: {text}")
                if diag.severity == "error":
                    self.errors.append(f"{_name(diag.urn)}: {text}" if diag.urn else text)


# The engine's plugins come from PATH on purpose (tools/toolchain.py): not worth a warning per run.
_EXPECTED_WARNING = re.compile(r"using pulumi-resource-[a-z-]+ from \$PATH")


def _name(urn: str | None) -> str:
    return (urn or "").rsplit("::", 1)[-1]


# Resource operations at once.  The engine's default (8 here: 4 per core) can deadlock a first
# deploy: every Deployment waits for its pods to be Ready while holding a slot, and the pods need the
# chart's egress NetworkPolicy (DNS, Redis, Kafka), which then never gets one; the dev chart alone
# has 9 Deployments.  Seen in a CI rehearsal: pynomaly-egress never created, every pod's DNS lookup
# refused by the default-deny policy, the update failing after 10 minutes.
PARALLEL = 64


def up(stack: auto.Stack, *, on_event: EventCallback | None = None) -> OpCounts:
    """Update the stack; returns the resource changes per op (``{"create": 60}``)."""
    result = stack.up(on_event=on_event, color="never", parallel=PARALLEL)
    return dict(result.summary.resource_changes or {})


def preview(stack: auto.Stack, *, on_event: EventCallback | None = None) -> OpCounts:
    """What an update would do, per op (``{"same": 60}`` when nothing would change)."""
    result = stack.preview(on_event=on_event, color="never", parallel=PARALLEL)
    return {getattr(op, "value", str(op)): count for op, count in (result.change_summary or {}).items()}


def refresh(stack: auto.Stack, *, on_event: EventCallback | None = None) -> OpCounts:
    result = stack.refresh(on_event=on_event, color="never")
    return dict(result.summary.resource_changes or {})


def destroy(stack: auto.Stack, *, on_event: EventCallback | None = None) -> OpCounts:
    result = stack.destroy(on_event=on_event, color="never", parallel=PARALLEL)
    return dict(result.summary.resource_changes or {})


def outputs(stack: auto.Stack, *, show_secrets: bool = False) -> dict[str, Any]:
    """The stack outputs; secret ones as ``[secret]`` unless ``show_secrets``."""
    return {k: (v.value if show_secrets or not v.secret else "[secret]") for k, v in stack.outputs().items()}


# -- preflight --------------------------------------------------------------------------------------


def check_cluster(config: Mapping[str, auto.ConfigValue], timeout: float = 5.0) -> str:
    """Fail fast, in one line, when the kubeconfig is missing or its API server does not answer."""

    def value(key: str) -> str | None:
        item = config.get(f"{PROJECT}:kubernetes.{key}")
        return item.value if item else None

    path_text = value("kubeconfig") or (os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None)
    path = Path(path_text).expanduser() if path_text else Path.home() / ".kube" / "config"
    if not path.is_file():
        raise DeployError(f"no kubeconfig at {path}: pass --kubeconfig PATH (or set KUBECONFIG)")
    try:
        kubeconfig = yaml.safe_load(path.read_text()) or {}
        context_name = value("context") or kubeconfig.get("current-context")
        context = next(c["context"] for c in kubeconfig.get("contexts") or [] if c.get("name") == context_name)
        cluster = next(c["cluster"] for c in kubeconfig.get("clusters") or [] if c.get("name") == context["cluster"])
        server = cluster["server"]
    except (yaml.YAMLError, StopIteration, KeyError, TypeError):
        raise DeployError(
            f"{path}: no usable context {value('context') or '(current-context)'} "
            "with a cluster server in this kubeconfig"
        ) from None
    parts = urlsplit(server)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            pass
    except OSError as exc:
        raise DeployError(f"cluster unreachable: {server} (context {context_name} in {path}): {exc}") from None
    return server


# -- command line -----------------------------------------------------------------------------------


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {op}" for op, n in sorted(counts.items())) or "nothing"


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise DeployError("not a terminal: pass --yes to apply without asking")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def local_cluster_kubeconfig() -> Path:
    from tools.cluster.local import DEFAULT_STATE_DIR as CLUSTER_DIR

    path = CLUSTER_DIR / "kubeconfig"
    if not path.is_file():
        raise DeployError(f"no local cluster ({path} is missing): start it with `./dev cluster up`")
    return path


def local_cluster_overrides() -> dict[str, str]:
    """The images the local cluster loaded and its StorageClass, as stack config."""
    from tools import images
    from tools.cluster.manifests import STORAGE_CLASS

    refs = images.stack_config()
    if "image.repository" not in refs:
        raise DeployError("the images are not built: run `./dev images` (or `./dev cluster up`, which builds them)")
    return {f"{PROJECT}:{key}": value for key, value in {**refs, "storageClass": STORAGE_CLASS}.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("env", help=f"environment / stack: {', '.join(ENVIRONMENTS)}")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: the stack's, $KUBECONFIG, ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context (default: the stack's, else the current one)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. 'pynomaly:kafka.image=apache/kafka:4.4.0' (repeatable)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--preview", action="store_true", help="show what would change, change nothing")
    mode.add_argument("--destroy", action="store_true", help="delete everything the stack created")
    mode.add_argument("--refresh", action="store_true", help="read the cluster's state into the stack")
    parser.add_argument("--yes", action="store_true", help="do not ask before changing anything")
    parser.add_argument("--show-secrets", action="store_true", help="print secret outputs in clear")
    parser.add_argument(
        "--local-cluster",
        action="store_true",
        help="the project's own cluster (./dev cluster up): its kubeconfig, its StorageClass and "
        "the images ./dev images built and it loaded (--set still wins)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"backend, passphrase and workspace (default: {DEFAULT_STATE_DIR.relative_to(ROOT)})",
    )
    args = parser.parse_args(argv)

    progress = Progress(planning=args.preview)
    verb = "preview" if args.preview else "destroy" if args.destroy else "refresh" if args.refresh else "update"
    try:
        overrides = parse_set(args.overrides)
        if args.local_cluster:
            args.kubeconfig = args.kubeconfig or str(local_cluster_kubeconfig())
            overrides = {**local_cluster_overrides(), **overrides}
        config = stack_config(args.env, kubeconfig=args.kubeconfig, context=args.context, overrides=overrides)
        render_dir = config.get(f"{PROJECT}:kubernetes.renderYamlToDirectory")
        if render_dir is not None and args.refresh:
            raise DeployError("--refresh reads a cluster; a render-mode stack has none")
        if render_dir is None:
            server = check_cluster(config)
            print(f"==> {args.env}: cluster {server}", flush=True)
        else:
            print(f"==> {args.env}: render mode, manifests into {render_dir.value}", flush=True)
        started = time.monotonic()
        stack = open_stack(
            args.env, kubeconfig=args.kubeconfig, context=args.context, overrides=overrides, state_dir=args.state_dir
        )
        if args.preview:
            counts = preview(stack, on_event=progress)
        elif args.refresh:
            counts = refresh(stack, on_event=progress)
        else:
            if not args.yes:
                print(f"==> preview of the {verb}", flush=True)
                planned = preview(stack, on_event=Progress(planning=True))
                print(f"==> would {verb}: {_counts(planned)}", flush=True)
                if set(planned) - {"same"} and not _confirm(f"{verb.capitalize()} stack {args.env}?"):
                    print("cancelled", file=sys.stderr)
                    return 1
            print(f"==> {verb} of stack {args.env}", flush=True)
            counts = destroy(stack, on_event=progress) if args.destroy else up(stack, on_event=progress)
        print(f"==> {verb} done in {time.monotonic() - started:.0f} s: {_counts(counts)}", flush=True)
        if not args.destroy and not args.preview:
            for key, value in outputs(stack, show_secrets=args.show_secrets).items():
                print(f"    {key}: {value if isinstance(value, str) else json.dumps(value)}")
        return 0
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except auto.errors.ConcurrentUpdateError:
        print(f"error: another {verb} of stack {args.env} is running (state in {args.state_dir})", file=sys.stderr)
        return 1
    except auto.errors.CommandError as exc:
        first = progress.errors[0] if progress.errors else _last_error_line(str(exc))
        print(f"error: {verb} of stack {args.env} failed: {first}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["(no message)"])[-1][:500]


if __name__ == "__main__":
    raise SystemExit(main())
