"""The README's first command, as a user runs it: the whole local system, a demo detection, then
everything stopped.  Its own Redis, Kafka and app processes, separate from the session fixtures."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline or text in environ:
            found.append(f"{proc.name}: {cmdline[:120]}")
    return found


@pytest.mark.e2e
def test_demo_finds_planted_anomalies_through_kafka_and_stops_everything(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {**os.environ, "PYNOMALY_STATE_DIR": str(state)}
    # Reuse the jar cache the session fixtures filled, as a second run on a laptop would.
    libs = REPO / ".pynomaly" / "kafka-libs"
    if libs.is_dir():
        state.mkdir()
        (state / "kafka-libs").symlink_to(libs)
    run = subprocess.run(
        [str(REPO / "dev"), "demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert re.search(r"planted anomalies found: (\d+)/12", output), output[-4000:]
    hits = int(re.search(r"planted anomalies found: (\d+)/12", output).group(1))  # type: ignore[union-attr]
    assert hits >= 11, output[-2000:]
    # The job went through Celery on Redis and announced itself on Kafka, then the bridge.
    assert re.search(r"Kafka: job_completed on job_events partition \d offset \d+, key [0-9a-f]{32}", output)
    assert "bridged to dashboard:stream as entry" in output
    # Live scoring: the saved model bound to measurements finds every planted record as it arrives.
    assert re.search(r"bound measurements -> model sensors-demo:\d+", output), output[-3000:]
    live = re.search(r"live: planted anomalies found (\d+)/(\d+), other records flagged (\d+)", output)
    assert live and live.group(1) == live.group(2) == "8" and live.group(3) == "0", output[-3000:]
    assert len(re.findall(r"  anomaly  sensor-\d .* latency \d+ ms", output)) == 8, output[-3000:]
    redis_port = re.search(r"Redis\s+redis://:\*+@127\.0\.0\.1:(\d+)", output)
    assert redis_port, output[-3000:]
    assert "nothing left running" in output
    leftovers = _processes_mentioning(str(state)) + [
        p for p in _processes_mentioning("redis-server") if f":{redis_port.group(1)}" in p
    ]
    assert leftovers == []
