"""Secrets the program generates itself, kept in the stack state: a ``pulumi.dynamic`` resource.

This replaces pulumi-random (its provider plugin cannot be built here, and a dynamic resource needs
no plugin beyond the Python SDK's own ``pulumi-resource-pulumi-python`` shim):

- :class:`GeneratedSecret` makes one value with :mod:`secrets` on create: an alphanumeric password
  (``kind="password"``, ``length`` characters) or a Kafka UUID (``kind="kafka-uuid"``: 16 random
  bytes, URL-safe base64 without padding, never one Kafka reserves or one starting with ``-``).
- The value lives in the state as a secret output (``additional_secret_outputs``); ``update`` never
  touches it; a change of a parameter (``kind``, ``length``) replaces the resource, i.e. makes a new
  value.  ``pulumi refresh`` keeps the stored value (``read`` returns the state unchanged).

The provider travels in the state as a dill pickle *by value* (see :func:`_provider_class`), so the
dynamic-provider process needs only the Pulumi SDK, not this repository on its import path.
"""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Callable
from typing import Any, Literal

import pulumi
import pulumi.dynamic as dynamic

Kind = Literal["password", "kafka-uuid"]
TYPE = "pulumi-python:dynamic/pynomaly:GeneratedSecret"  # the resource type the engine and mocks see


def _provider_class() -> type[dynamic.ResourceProvider]:
    """The provider, defined inside a function on purpose: dill then pickles the class by value.

    The engine starts the dynamic-provider process itself, in the program's directory (``infra/``
    under ``pulumi up``), where ``infra.generated`` is not importable; a class pickled by reference
    would not load there.  Everything the methods use is in the class or the standard library.
    """

    class GeneratedSecretProvider(dynamic.ResourceProvider):
        """CRUD of :class:`GeneratedSecret`; runs in the engine's dynamic-provider process."""

        KINDS = ("password", "kafka-uuid")
        PARAMETERS = ("kind", "length")  # any change replaces the resource (a new value)
        PASSWORD_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
        # Kafka refuses these as cluster or directory ids (Uuid.ZERO_UUID, Uuid.ONE_UUID = METADATA_TOPIC_ID).
        RESERVED_UUIDS = (bytes(16), bytes(15) + b"\x01")

        @staticmethod
        def kafka_uuid(raw: bytes) -> str:
            """A Kafka UUID's text form: 16 bytes, URL-safe base64, no padding (22 characters)."""
            import base64

            if len(raw) != 16:
                raise ValueError(f"a Kafka UUID is 16 bytes, not {len(raw)}")
            return base64.urlsafe_b64encode(raw).decode().rstrip("=")

        @classmethod
        def generate(cls, kind: str, length: int) -> str:
            import secrets

            if kind == "password":
                if not 8 <= length <= 256:
                    raise ValueError(f"password length must be 8..256, not {length}")
                return "".join(secrets.choice(cls.PASSWORD_ALPHABET) for _ in range(length))
            if kind == "kafka-uuid":
                # As Kafka's Uuid.randomUuid(): never a reserved id, never one whose text starts with '-'.
                while True:
                    raw = secrets.token_bytes(16)
                    text = cls.kafka_uuid(raw)
                    if raw not in cls.RESERVED_UUIDS and not text.startswith("-"):
                        return text
            raise ValueError(f"unknown kind {kind!r}; expected one of {cls.KINDS}")

        @staticmethod
        def params(props: dict[str, Any]) -> dict[str, Any]:
            return {"kind": str(props["kind"]), "length": int(props.get("length") or 0)}

        @staticmethod
        def norm(value: Any) -> Any:
            # Numbers cross the wire as floats: 32 and 32.0 are the same length.
            return int(value) if isinstance(value, float) and value.is_integer() else value

        def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> dynamic.CheckResult:
            failures = []
            if news.get("kind") not in self.KINDS:
                failures.append(dynamic.CheckFailure("kind", f"must be one of {self.KINDS}"))
            elif news.get("kind") == "password" and not 8 <= int(news.get("length") or 0) <= 256:
                failures.append(dynamic.CheckFailure("length", "must be 8..256 for a password"))
            return dynamic.CheckResult(news, failures)

        def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
            import secrets

            params = self.params(props)
            value = self.generate(params["kind"], params["length"])
            return dynamic.CreateResult(id_=secrets.token_hex(8), outs={**params, "value": value})

        def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
            replaces = [key for key in self.PARAMETERS if self.norm(olds.get(key)) != self.norm(news.get(key))]
            return dynamic.DiffResult(changes=bool(replaces), replaces=replaces, delete_before_replace=False)

        def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
            # Never reached (every parameter change replaces); keep the value if it ever is.
            return dynamic.UpdateResult(outs={**self.params(news), "value": olds["value"]})

        def read(self, id_: str, props: dict[str, Any]) -> dynamic.ReadResult:
            return dynamic.ReadResult(id_=id_, outs=props)

        def delete(self, _id: str, _props: dict[str, Any]) -> None:
            return None

    return GeneratedSecretProvider


GeneratedSecretProvider = _provider_class()
# Typed as its base class (it is built inside a function, see above): mypy cannot see its own members.
KINDS: tuple[str, ...] = GeneratedSecretProvider.KINDS  # type: ignore[attr-defined]
kafka_uuid = GeneratedSecretProvider.kafka_uuid  # type: ignore[attr-defined]
generate = GeneratedSecretProvider.generate  # type: ignore[attr-defined]


# pulumi's serialize_provider (3.272) wraps ``pickle._Pickler._batch_setitems`` in a sorting wrapper and
# never restores it: every dynamic resource created in a process adds one level, and a process that
# declares a few hundred (a test session deploying every environment) dies with RecursionError.  Each
# GeneratedSecret puts the original back first, so the wrapping stays one level deep.
def _unwrapped(batch_setitems: Callable[..., Any]) -> Callable[..., Any]:
    while batch_setitems.__name__.startswith("batch_set_items_sorted"):  # pulumi's wrapper: take its inner
        batch_setitems = inspect.getclosurevars(batch_setitems).nonlocals["unsorted_batch_setitems"]
    return batch_setitems


def _restore_pickler() -> None:
    pickler: Any = pickle._Pickler  # the private class pulumi patches
    pickler._batch_setitems = _unwrapped(pickler._batch_setitems)


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
        _restore_pickler()
        super().__init__(
            GeneratedSecretProvider(),
            name,
            props,
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["value"])),
        )


def password(name: str, length: int, parent: pulumi.Resource) -> pulumi.Output[str]:
    """A generated alphanumeric password of ``length`` characters, as a secret output."""
    return pulumi.Output.secret(
        GeneratedSecret(name, "password", length, opts=pulumi.ResourceOptions(parent=parent)).value
    )


def kafka_id(name: str, parent: pulumi.Resource) -> pulumi.Output[str]:
    """A generated Kafka UUID (cluster id, directory id), as a secret output."""
    return pulumi.Output.secret(GeneratedSecret(name, "kafka-uuid", opts=pulumi.ResourceOptions(parent=parent)).value)
