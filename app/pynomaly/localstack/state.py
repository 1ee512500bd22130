"""``<state>/local.json``: what a running local system consists of, so ``down`` and ``status`` work from any shell.

It holds pids (with start times), ports, URLs and file locations, never a password or the API key.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from pynomaly.localstack.procs import ProcessRecord, pid_alive

STATE_FILE = "local.json"


def state_path(state_dir: Path) -> Path:
    return Path(state_dir) / STATE_FILE


def read_state(state_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(state_path(state_dir).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_state(state_dir: Path, data: dict[str, Any]) -> None:
    path = state_path(state_dir)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)  # atomic: a concurrent `status` never reads half a file


def remove_state(state_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        state_path(state_dir).unlink()


def records(data: dict[str, Any]) -> list[ProcessRecord]:
    """Every process of the state, in start order (Redis, Kafka, then the components)."""
    found = []
    for key in ("redis", "kafka"):
        entry = data.get(key) or {}
        if entry.get("process"):
            found.append(ProcessRecord.from_dict(entry["process"]))
    found.extend(ProcessRecord.from_dict(c) for c in data.get("components", []))
    return found


def alive_records(data: dict[str, Any]) -> list[ProcessRecord]:
    return [r for r in records(data) if r.alive()]


def owner_alive(data: dict[str, Any]) -> bool:
    owner = data.get("owner") or {}
    return bool(owner) and pid_alive(int(owner.get("pid", 0)), int(owner.get("start_time", 0)))
