"""The README stays true to the code: every setting, CLI command and API route it should list."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from pynomaly.cli import main
from pynomaly.config import ENV_PREFIX, Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_opens_with_the_two_commands() -> None:
    first_block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines() if line.strip()]
    assert commands == ["./dev demo", "./dev test"]
    assert README.index("```bash") < README.index("## ")


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_documented(field: str) -> None:
    assert f"`{ENV_PREFIX}{field.upper()}`" in README


def _commands(group: click.Group, prefix: str = "pynomaly") -> list[str]:
    names = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            names.extend(_commands(command, f"{prefix} {name}"))
        else:
            names.append(f"{prefix} {name}")
    return names


@pytest.mark.parametrize("command", sorted(_commands(main)))
def test_every_cli_command_is_documented(command: str) -> None:
    *parents, leaf = command.split()
    # Sub-commands may be listed together, e.g. `pynomaly dlq list|show ID|replay ID|purge`.
    parent = " ".join(parents)
    pattern = re.escape(parent) + r" (?:[\w-]+(?: [A-Z]+)?\\?\|)*" + re.escape(leaf) + r"\b"
    assert re.search(pattern, README), f"README does not mention `{command}`"


def _websocket_paths(routes: list[object]) -> list[str]:
    from fastapi.routing import APIWebSocketRoute

    paths = []
    for route in routes:
        if isinstance(route, APIWebSocketRoute):
            paths.append(route.path)
        nested = getattr(route, "original_router", None) or getattr(route, "router", None)
        if nested is not None and nested is not route:
            paths.extend(_websocket_paths(list(getattr(nested, "routes", []))))
    return paths


def test_every_api_route_is_documented() -> None:
    from pynomaly.api.app import create_app

    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0", kafka_bootstrap_servers="127.0.0.1:1", api_keys="k"))
    documented = [
        f"{method.upper()} {path}" for path, operations in app.openapi()["paths"].items() for method in operations
    ]
    websockets = [f"WS {path}" for path in _websocket_paths(list(app.routes))]
    # A floor, so a change in how FastAPI exposes routes cannot make this test vacuous.
    assert len(documented) >= 20 and websockets == ["WS /v1/stream"]
    # The README names every path parameter {id}.
    missing = [r for r in documented + websockets if re.sub(r"\{\w+\}", "{id}", r) not in README]
    assert missing == [], f"README does not document {missing}"
