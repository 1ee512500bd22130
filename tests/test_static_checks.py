"""Static checks run with the tests, so `./dev test` (and so CI) fails on a type error or a lint
finding, not only on a failing test.  The configuration of each tool is in pyproject.toml."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# What ./dev lint checks; ruff's own excludes (.venv, .pynomaly, .cache) apply.
LINTED = ["app", "infra", "tests", "tools", "benchmarks"]


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    # The project's configuration, not whatever the caller's environment points mypy at.
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "MYPY_CACHE_DIR")}
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def test_mypy_finds_no_type_errors() -> None:
    """app/ and infra/ checked, domain/ and messaging/ strictly ([tool.mypy] in pyproject.toml)."""
    done = _run(str(BIN / "mypy"))
    assert done.returncode == 0, f"mypy found type errors:\n{done.stdout}{done.stderr}"
    assert "Success: no issues found" in done.stdout


def test_ruff_finds_no_lint_errors() -> None:
    done = _run(str(BIN / "ruff"), "check", *LINTED)
    assert done.returncode == 0, f"ruff check failed:\n{done.stdout}{done.stderr}"


def test_ruff_format_leaves_every_file_unchanged() -> None:
    done = _run(str(BIN / "ruff"), "format", "--check", *LINTED)
    assert done.returncode == 0, f"files not in ruff's format (run `ruff format`):\n{done.stdout}{done.stderr}"
