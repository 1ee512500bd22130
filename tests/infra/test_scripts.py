"""Every shell script the program ships (ConfigMap *.sh entries, `sh -c` commands) parses.

No cluster runs them here, so this is the check that can run: `sh -n` (dash, like the images'
/bin/sh) on the exact text each environment would deploy.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from infra.config import ENVIRONMENTS
from tests.infra.conftest import kinds, run_env


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {})
    pod = (
        spec.get("template", {}).get("spec")
        or spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
        or {}
    )
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def _scripts(env: str) -> dict[str, str]:
    run = run_env(env)
    found: dict[str, str] = {}
    for config_map in kinds(run, "ConfigMap"):
        for key, text in (config_map.get("data") or {}).items():
            if key.endswith(".sh"):
                found[f"ConfigMap/{config_map['metadata']['name']}:{key}"] = text
    for obj in run.objects():
        for container in _containers(obj):
            command = [*container.get("command", []), *container.get("args", [])]
            if len(command) >= 3 and command[0].endswith("sh") and command[1] in ("-c", "-ec"):
                found[f"{obj['kind']}/{obj['metadata']['name']}:{container['name']}"] = command[2]
    return found


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_shipped_shell_script_parses(env: str) -> None:
    scripts = _scripts(env)
    assert scripts, "the program ships start-up scripts; finding none means this test looks in the wrong place"
    broken = {}
    for where, text in scripts.items():
        result = subprocess.run(["sh", "-n"], input=text, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            broken[where] = result.stderr.strip()
    assert broken == {}
