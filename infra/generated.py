"""Secrets the program generates itself, kept in the stack state: a ``pulumi.dynamic`` resource.

This replaces pulumi-random (its provider plugin cannot be built here, and a dynamic resource needs
no plugin beyond the Python SDK's own ``pulumi-resource-pulumi-python`` shim):

- :class:`GeneratedSecret` makes one value with :mod:`secrets` on create: an alphanumeric password
  (``kind="password"``, ``length`` characters) or a Kafka UUID (``kind="kafka-uuid"``: 16 random
  bytes, URL-safe base64 without padding, never one Kafka reserves or one starting with ``-``).
- The value lives in the state as a secret output (``additional_secret_outputs``); ``update`` never
  touches it; a change of a parameter (``kind``, ``length``) replaces the resource, i.e. makes a new
  value.  ``pulumi refresh`` keeps the stored value (``read`` returns the state unchanged).

The provider class is pickled by reference (dill, ``recurse=True``): the dynamic-provider process
imports ``infra.generated``, so the repository root must be on its import path (it is the working
directory of ``pulumi up``; ``tools/deploy.py`` sets ``PYTHONPATH``).  Keep the class name and
module stable, or existing stacks cannot load it for a delete or replace.
"""

from __future__ import annotations

import base64
import secrets
import string
from typing import Any, Literal

import pulumi
import pulumi.dynamic as dynamic

Kind = Literal["password", "kafka-uuid"]
KINDS: tuple[str, ...] = ("password", "kafka-uuid")
PARAMETERS = ("kind", "length")  # any change replaces the resource (a new value)
TYPE = "pulumi-python:dynamic/pynomaly:GeneratedSecret"  # the resource type the engine and mocks see
PASSWORD_ALPHABET = string.ascii_letters + string.digits
# Kafka refuses these as cluster or directory ids (Uuid.ZERO_UUID, Uuid.ONE_UUID = METADATA_TOPIC_ID).
_RESERVED_UUIDS = (bytes(16), bytes(15) + b"\x01")


def kafka_uuid(raw: bytes) -> str:
    """A Kafka UUID's text form: 16 bytes, URL-safe base64, no padding (22 characters)."""
    if len(raw) != 16:
        raise ValueError(f"a Kafka UUID is 16 bytes, not {len(raw)}")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def new_kafka_uuid() -> str:
    """A random Kafka UUID, as ``Uuid.randomUuid()`` makes one (no reserved id, no leading ``-``)."""
    while True:
        raw = secrets.token_bytes(16)
        text = kafka_uuid(raw)
        if raw not in _RESERVED_UUIDS and not text.startswith("-"):
            return text


def new_password(length: int) -> str:
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))


def generate(kind: str, length: int) -> str:
    if kind == "password":
        if not 8 <= length <= 256:
            raise ValueError(f"password length must be 8..256, not {length}")
        return new_password(length)
    if kind == "kafka-uuid":
        return new_kafka_uuid()
    raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")


def _params(props: dict[str, Any]) -> dict[str, Any]:
    return {"kind": str(props["kind"]), "length": int(props.get("length") or 0)}


class GeneratedSecretProvider(dynamic.ResourceProvider):
    """CRUD of :class:`GeneratedSecret`; runs in the engine's dynamic-provider process."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> dynamic.CheckResult:
        failures = []
        if news.get("kind") not in KINDS:
            failures.append(dynamic.CheckFailure("kind", f"must be one of {KINDS}"))
        elif news.get("kind") == "password" and not 8 <= int(news.get("length") or 0) <= 256:
            failures.append(dynamic.CheckFailure("length", "must be 8..256 for a password"))
        return dynamic.CheckResult(news, failures)

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        params = _params(props)
        value = generate(params["kind"], params["length"])
        return dynamic.CreateResult(id_=secrets.token_hex(8), outs={**params, "value": value})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        replaces = [key for key in PARAMETERS if _norm(olds.get(key)) != _norm(news.get(key))]
        return dynamic.DiffResult(changes=bool(replaces), replaces=replaces, delete_before_replace=False)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        # Never reached (every parameter change replaces); keep the value if it ever is.
        return dynamic.UpdateResult(outs={**_params(news), "value": olds["value"]})

    def read(self, id_: str, props: dict[str, Any]) -> dynamic.ReadResult:
        return dynamic.ReadResult(id_=id_, outs=props)

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        return None


def _norm(value: Any) -> Any:
    # Numbers cross the wire as floats: 32 and 32.0 are the same length.
    return int(value) if isinstance(value, float) and value.is_integer() else value


class GeneratedSecret(dynamic.Resource, module="pynomaly", name="GeneratedSecret"):
    """A value generated once and kept in the state; ``value`` is a secret output."""

    value: pulumi.Output[str]
    kind: pulumi.Output[str]
    length: pulumi.Output[int]

    def __init__(self, name: str, kind: Kind, length: int = 0, opts: pulumi.ResourceOptions | None = None):
        if kind not in KINDS:
            raise ValueError(f"GeneratedSecret {name}: unknown kind {kind!r}; expected one of {KINDS}")
        if kind == "password" and not 8 <= length <= 256:
            raise ValueError(f"GeneratedSecret {name}: password length must be 8..256, not {length}")
        props = {"kind": kind, "length": length if kind == "password" else 16, "value": None}
        super().__init__(GeneratedSecretProvider(), name, props,
                         pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
                             additional_secret_outputs=["value"])))


def password(name: str, length: int, parent: pulumi.Resource) -> pulumi.Output[str]:
    """A generated alphanumeric password of ``length`` characters, as a secret output."""
    return pulumi.Output.secret(GeneratedSecret(name, "password", length,
                                                opts=pulumi.ResourceOptions(parent=parent)).value)


def kafka_id(name: str, parent: pulumi.Resource) -> pulumi.Output[str]:
    """A generated Kafka UUID (cluster id, directory id), as a secret output."""
    return pulumi.Output.secret(GeneratedSecret(name, "kafka-uuid", opts=pulumi.ResourceOptions(parent=parent)).value)
