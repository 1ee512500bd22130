"""Encryption at rest in the Pulumi program: on in the cloud stack, off in dev and onprem; the key is an
operator-given Pulumi secret (never generated), checked before any resource; it lands in the app Secret
as the keys file the chart mounts."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest

from infra import mocked
from infra.application import chart_defaults
from infra.config import ENCRYPTION_KEY_COMMAND, ConfigError
from infra.program import CHART
from pynomaly.storage.encryption import parse_keys
from tests.infra.conftest import run_env

KEYS_FILE = chart_defaults(str(CHART))["encryption"]["secretKey"]


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def chart_values(run: mocked.MockedRun) -> dict[str, Any]:
    (chart,) = run.by_type("kubernetes:helm.sh/v4:Chart")
    return mocked.manifest(chart)["values"]


def app_secret(run: mocked.MockedRun) -> mocked.Registration:
    return run.get("kubernetes:core/v1:Secret", "app-secret")


@pytest.mark.parametrize(("env", "enabled"), [("dev", False), ("onprem", False), ("cloud", True)])
def test_on_in_the_cloud_stack_only(env: str, enabled: bool) -> None:
    run = run_env(env)
    assert run.deployment.config.encryption.enabled is enabled
    values = chart_values(run)["encryption"]
    secret = app_secret(run)
    assert mocked.is_secret_input(secret.inputs["stringData"])
    if enabled:
        assert values == {"enabled": True, "existingSecret": "pynomaly-app", "secretKey": KEYS_FILE}
        keys_file = mocked.manifest(secret)["stringData"][KEYS_FILE]
        assert keys_file == mocked.RENDER_ENCRYPTION_KEY + "\n" and len(parse_keys([keys_file], "t")) == 1
    else:
        assert values == {"enabled": False, "existingSecret": "", "secretKey": KEYS_FILE}
        assert KEYS_FILE not in mocked.manifest(secret)["stringData"]


def test_the_cloud_stack_without_a_key_fails_before_any_resource_with_the_command() -> None:
    with pytest.raises(ConfigError) as exc:
        mocked.run("cloud")
    message = str(exc.value)
    assert "pynomaly:encryptionKey: required (as a secret) when encryption.enabled is true" in message
    assert ENCRYPTION_KEY_COMMAND in message
    assert ENCRYPTION_KEY_COMMAND == 'pulumi config set --secret pynomaly:encryptionKey "$(openssl rand -base64 32)"'


def test_a_plain_key_in_the_stack_file_is_refused() -> None:
    config = {**mocked.stack_file("cloud"), "pynomaly:encryptionKey": b64(os.urandom(32))}
    with pytest.raises(ConfigError, match="encryptionKey: is a secret; set it with `pulumi config set --secret"):
        mocked.run("cloud", config=config)


@pytest.mark.parametrize(
    ("secrets", "message"),
    [
        ({"encryptionKey": "not a key"}, "pynomaly:encryptionKey: key 1 is not base64"),
        ({"encryptionKey": b64(os.urandom(16))}, "pynomaly:encryptionKey: key 1 is 16 bytes, AES-256 needs 32"),
        ({"encryptionKey": " "}, "pynomaly:encryptionKey: is empty"),
        (
            {"encryptionKey": b64(os.urandom(32)), "encryptionPreviousKeys": f"{b64(os.urandom(32))},abc"},
            "pynomaly:encryptionPreviousKeys: key 2 is not base64",
        ),
    ],
)
def test_malformed_keys_are_named_never_shown(secrets: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        mocked.run("cloud", secrets=secrets)
    assert message in str(exc.value)
    for value in secrets.values():
        for part in value.split(","):
            if len(part.strip()) > 8:
                assert part not in str(exc.value)


def test_rotation_puts_the_new_key_first_and_keeps_the_old_ones() -> None:
    new, old1, old2 = (b64(os.urandom(32)) for _ in range(3))
    run = mocked.run("cloud", secrets={"encryptionKey": new, "encryptionPreviousKeys": f"{old1}, {old2}"})
    keys_file = mocked.manifest(app_secret(run))["stringData"][KEYS_FILE]
    assert keys_file == f"{new}\n{old1}\n{old2}\n"


def test_a_key_without_enabled_mounts_it_for_reading_only() -> None:
    key = b64(os.urandom(32))
    run = mocked.run("onprem", secrets={"encryptionKey": key})
    assert chart_values(run)["encryption"] == {
        "enabled": False,
        "existingSecret": "pynomaly-app",
        "secretKey": KEYS_FILE,
    }
    assert mocked.manifest(app_secret(run))["stringData"][KEYS_FILE] == key + "\n"


def test_encryption_config_is_validated() -> None:
    config = {**mocked.stack_file("dev"), "pynomaly:encryption": {"enabled": "sometimes"}}
    with pytest.raises(ConfigError, match=r"pynomaly\.encryption\.enabled: must be bool"):
        mocked.run("dev", config=config)
    config = {**mocked.stack_file("dev"), "pynomaly:encryption": {"key": "x"}}
    with pytest.raises(ConfigError, match=r"pynomaly\.encryption\.key: unknown key"):
        mocked.run("dev", config=config)
