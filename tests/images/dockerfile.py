"""A small Dockerfile reader: enough of the syntax app/Dockerfile uses to compare it with an image."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field


@dataclass
class Stage:
    base: str
    name: str | None
    env: dict[str, str] = field(default_factory=dict)
    user: str = ""
    workdir: str = ""
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    expose: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    copies: list[tuple[str | None, list[str], str]] = field(default_factory=list)  # (--from, sources, dest)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        word, _, rest = current.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: env.get(m.group(1), ""), value)


def parse(text: str, base_env: dict[str, dict[str, str]]) -> list[Stage]:
    """Stages in order; ``base_env`` gives each base image's own environment (e.g. its PATH)."""
    stages: list[Stage] = []
    for word, args in instructions(text):
        if word == "FROM":
            parts = args.split()
            base = parts[0]
            stages.append(Stage(base, parts[2] if len(parts) > 2 else None, dict(base_env.get(base, {}))))
            continue
        stage = stages[-1]
        if word == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                stage.env[key] = _expand(value, stage.env)
        elif word == "USER":
            stage.user = args
        elif word == "WORKDIR":
            stage.workdir = args
        elif word in ("ENTRYPOINT", "CMD"):
            setattr(stage, word.lower(), json.loads(args))
        elif word == "EXPOSE":
            stage.expose += [p if "/" in p else f"{p}/tcp" for p in args.split()]
        elif word == "RUN":
            stage.runs.append(args)
        elif word == "COPY":
            parts = args.split()
            source_stage = None
            if parts[0].startswith("--from="):
                source_stage = parts.pop(0).split("=", 1)[1]
            stage.copies.append((source_stage, parts[:-1], parts[-1]))
    return stages


def apt_packages(stage: Stage) -> set[str]:
    found: set[str] = set()
    for run in stage.runs:
        for match in re.finditer(r"apt-get install ([^&|;]+)", run):
            found |= {w for w in match.group(1).split() if not w.startswith("-")}
    return found


def pip_install_args(stage: Stage) -> list[str]:
    """The arguments of the stage's `pip install` (after `install`)."""
    for run in stage.runs:
        for command in re.split(r"&&|;", run):
            words = shlex.split(command)
            for i, w in enumerate(words):
                if w.endswith("/pip") and words[i + 1 : i + 2] == ["install"]:
                    return words[i + 2 :]
    raise AssertionError("no pip install in the stage")
