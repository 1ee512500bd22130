"""Run the program for one environment under Pulumi mocks: no cluster, no Pulumi CLI.

Used by ``tools/render.py`` (show what an environment would create) and by ``tests/infra``.
Every resource registration is recorded with its inputs and parent; :func:`manifest` turns the
mocked inputs of a Kubernetes resource back into the object that would be applied (mocked inputs
arrive with camelCase keys and numbers as floats).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime.sync_await import _sync_await

from infra import config as stack_config
from infra import generated, program

ROOT = Path(__file__).resolve().parent.parent
ENV_DIR = ROOT / "environments"
NOT_OBJECTS = ("pulumi:", "pulumi-python:", "pynomaly:", "kubernetes:helm.sh/")


# The secrets a stack file needs from its operator (never generated), as stand-ins for rendering and the
# tests: the cloud stack turns encryption at rest on, which needs an encryptionKey.
RENDER_ENCRYPTION_KEY = base64.b64encode(hashlib.sha256(b"pynomaly render stand-in, not a key").digest()).decode()


def operator_secrets(env: str) -> dict[str, str]:
    """Stand-ins for the secrets ``environments/Pulumi.<env>.yaml`` requires an operator to set."""
    encryption = stack_file(env).get(f"{stack_config.PROJECT}:encryption") or {}
    return {"encryptionKey": RENDER_ENCRYPTION_KEY} if encryption.get("enabled") else {}


def stack_file(env: str) -> dict[str, Any]:
    """The ``config:`` block of ``environments/Pulumi.<env>.yaml``."""
    path = ENV_DIR / f"Pulumi.{env}.yaml"
    return (yaml.safe_load(path.read_text()) or {}).get("config") or {}


@dataclass
class Registration:
    urn: str
    type: str
    name: str
    parent: str
    custom: bool
    inputs: dict[str, Any]
    secret_outputs: tuple[str, ...] = ()  # the registration's additional_secret_outputs

    @property
    def is_kubernetes_object(self) -> bool:
        return self.custom and self.type.startswith("kubernetes:") and not self.type.startswith(NOT_OBJECTS)


@dataclass
class MockedRun:
    environment: str
    deployment: program.Deployment
    registrations: list[Registration]
    outputs: dict[str, Any]
    secret_outputs: set[str] = field(default_factory=set)

    def objects(self) -> list[dict[str, Any]]:
        return [manifest(r) for r in self.registrations if r.is_kubernetes_object]

    def chart_values(self) -> dict[str, Any]:
        """Every value the program derives for charts/pynomaly (autoscaling included): ``helm template`` with
        them renders what ``pulumi up`` applies (the autoscalers through a helm v3 Chart, the rest v4)."""
        values = _sync_await(self.deployment.application.values.future())
        if values is None:  # an unknown value: only a preview leaves one, never the mocks
            raise RuntimeError("the chart values are unknown")
        return dict(values)

    def by_type(self, type_: str) -> list[Registration]:
        return [r for r in self.registrations if r.type == type_]

    def get(self, type_: str, name: str) -> Registration:
        for r in self.registrations:
            if r.type == type_ and r.name == name:
                return r
        raise KeyError(f"no {type_} named {name!r}; have {[r.name for r in self.by_type(type_)]}")


_SIG_KEY = "4dabf18193072939515e22adb298388d"  # pulumi.runtime.rpc: marks a special value in a map
_SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"  # ...a secret one, its plain value under "value"


def is_secret_input(value: Any) -> bool:
    """Whether a mocked input arrived as a Pulumi secret."""
    return isinstance(value, Mapping) and value.get(_SIG_KEY) == _SECRET_SIG


def _plain(value: Any) -> Any:
    """Mocked inputs as manifest values: secrets unwrapped, whole floats back to ints."""
    if is_secret_input(value):
        return _plain(value.get("value"))
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def manifest(reg: Registration) -> dict[str, Any]:
    """The Kubernetes object a mocked registration stands for."""
    obj = _plain(reg.inputs)
    _, api, kind = reg.type.split(":", 2)
    group_version = api.removeprefix("core/")
    ordered = {"apiVersion": obj.pop("apiVersion", group_version), "kind": obj.pop("kind", kind)}
    ordered.update(obj)
    return ordered


class _Mocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.inputs: dict[tuple[str, str], dict[str, Any]] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        self.inputs[(args.typ, args.name)] = dict(args.inputs)
        outputs = dict(args.inputs)
        digest = hashlib.sha256(f"{args.typ}/{args.name}".encode()).digest()
        if args.typ == generated.TYPE:
            # Deterministic stand-ins for the values the dynamic provider makes once on a real `up`.
            outputs.pop("__provider", None)
            if args.inputs.get("kind") == "kafka-uuid":
                outputs["value"] = generated.kafka_uuid(digest[:16])
            else:
                outputs["value"] = digest.hex()[: int(args.inputs.get("length", 32))]
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        if args.token == "kubernetes:helm:template":
            return {"result": _helm_template(args.args["jsonOpts"])}, []
        return {}, []


def _helm_template(json_opts: str | dict[str, Any]) -> list[dict[str, Any]]:
    """What the provider's ``kubernetes:helm:template`` returns (a helm v3 Chart), from the real helm binary."""
    import tempfile

    from tools.helm import template_chart

    opts = json.loads(json_opts) if isinstance(json_opts, str) else json_opts
    with tempfile.TemporaryDirectory() as tmp:
        values = Path(tmp) / "values.json"
        values.write_text(json.dumps(opts.get("values") or {}))
        text = template_chart(
            [values],
            release=opts["release_name"],
            namespace=opts.get("namespace") or "default",
            chart=Path(opts["path"]),
        )
    return [doc for doc in yaml.safe_load_all(text) if doc]


class _Monitor(pulumi_mocks.MockMonitor):
    def __init__(self, mocks: _Mocks):
        super().__init__(mocks)
        self.registered: list[tuple[str, str, str, str, bool, tuple[str, ...]]] = []

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        self.registered.append(
            (
                response.urn,
                request.type,
                request.name,
                request.parent,
                bool(request.custom),
                tuple(request.additionalSecretOutputs),
            )
        )
        return response


def run(env: str, config: Mapping[str, Any] | None = None, secrets: Mapping[str, str] | None = None) -> MockedRun:
    """Run the program for ``env`` (its stack file, or ``config`` instead) under mocks.

    ``secrets`` are extra ``pynomaly:`` keys passed as Pulumi secrets (as ``--secret`` would).
    """
    raw = dict(stack_file(env) if config is None else config)
    all_config = {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}
    secret_keys = []
    for key, value in (secrets or {}).items():
        all_config[f"{stack_config.PROJECT}:{key}"] = value
        secret_keys.append(f"{stack_config.PROJECT}:{key}")
    pulumi.runtime.set_all_config(all_config, secret_keys)

    mocks = _Mocks()
    monitor = _Monitor(mocks)
    pulumi.runtime.set_mocks(mocks, project=stack_config.PROJECT, stack=env, preview=False, monitor=monitor)

    holder: dict[str, Any] = {}

    @pulumi.runtime.test
    def _program() -> pulumi.Output[Any]:
        cfg = stack_config.load(default_tag=program.app_version())
        deployment = program.build(cfg)
        holder["deployment"] = deployment
        holder["secret"] = {k: pulumi.Output.from_input(v).is_secret() for k, v in deployment.outputs.items()}
        return pulumi.Output.all(**deployment.outputs).apply(lambda values: holder.__setitem__("outputs", values))

    _program()
    secret_outputs = {k for k, fut in holder["secret"].items() if _sync_await(fut)}
    registrations = [
        Registration(urn, type_, name, parent, custom, mocks.inputs.get((type_, name), {}), secret_outputs)
        for urn, type_, name, parent, custom, secret_outputs in monitor.registered
    ]
    return MockedRun(env, holder["deployment"], registrations, holder["outputs"], secret_outputs)
