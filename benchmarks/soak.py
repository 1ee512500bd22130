"""``run.py --soak``: a steady load for N minutes; fails if any process's RSS or Redis' used_memory
keeps growing.

The load is what a client that cleans up after itself sends: tiny jobs (each purged once finished,
so job retention is not mistaken for a leak) from 2 clients, and events through the outbox at about
200/s, so every path (API, both workers, relay, Kafka, bridge, stream groups) turns all the time.  The
system runs with ``SETTINGS``: retention that the default 100,000 audit records would reach only
after hours is reached within the run.
Every ``SAMPLE_SECONDS`` it records the RSS of each component (with its children) and Redis'
``used_memory``.

"Keeps growing" is decided on the second half of the run only (the first half is warm-up: JIT-less
Python still fills caches, the JVM grows its heap, Redis fills its stream MAXLENs and dedup TTLs): a
least-squares line through the second half's samples whose slope, extrapolated over an hour, exceeds
``max(GROWTH_FRACTION x the second half's median, GROWTH_FLOOR_MB)`` is growth.  A fit, not
first-vs-last, so one GC or one spike does not decide; a floor, so a few MB of noise on a small
process does not either.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rows import TINY_BODY, Log, memory_snapshot

from pynomaly.api import API_KEY_HEADER
from pynomaly.localstack.system import LocalSystem
from pynomaly.messaging.events import make_event
from pynomaly.messaging.outbox import Outbox, OutboxPublisher
from pynomaly.storage.redis_client import redis_from_settings

# Retention reached within the first half, so bounded stores show as bounded (flat or a sawtooth),
# not as growth: the audit log (2 records per job here) is trimmed to 5,000 by maintenance, run every
# minute; the bridge's dedup markers (one per event, about 130 bytes each) live 5 minutes instead of
# 15 (the default filled them until minute 15, then leveled off inside the fitted half).
SETTINGS = {"audit_max_records": 5_000, "maintenance_interval_seconds": 60, "bridge_dedup_ttl_seconds": 300}
SAMPLE_SECONDS = 10.0
GROWTH_FRACTION = 0.10  # of the second half's median, per hour
GROWTH_FLOOR_MB = 16.0  # per hour
EVENTS_PER_S = 200


def slope_per_hour(times: list[float], values: list[float]) -> float:
    """Least-squares slope of ``values`` over ``times`` (seconds), per hour."""
    if len(times) < 3:
        return 0.0
    slope, _ = np.polyfit(np.array(times), np.array(values), 1)
    return float(slope) * 3600


def verdict(times: list[float], values: list[float]) -> dict[str, Any]:
    half = len(times) // 2
    t, v = times[half:], values[half:]
    slope = slope_per_hour(t, v)
    limit = max(GROWTH_FRACTION * statistics.median(v), GROWTH_FLOOR_MB) if v else GROWTH_FLOOR_MB
    return {"slope_mb_per_h": slope, "limit_mb_per_h": limit, "growing": slope > limit, "last_mb": v[-1] if v else 0}


def _load(system: LocalSystem, stop: threading.Event, counts: dict[str, int]) -> list[threading.Thread]:
    settings = system.settings
    assert settings is not None

    def jobs() -> None:
        with httpx.Client(base_url=system.api_url, headers={API_KEY_HEADER: system.api_key}, timeout=120) as http:
            while not stop.is_set():
                response = http.post("/v1/jobs", content=TINY_BODY, headers={"content-type": "application/json"})
                if response.status_code != 202:
                    counts["refused"] += 1
                    stop.wait(1.0)
                    continue
                job_id = response.json()["id"]
                while not stop.is_set():
                    status = http.get(f"/v1/jobs/{job_id}").json()["status"]
                    if status in ("completed", "failed", "cancelled"):
                        break
                    stop.wait(0.1)
                http.delete(f"/v1/jobs/{job_id}", params={"purge": "true"})
                counts["jobs"] += 1
                stop.wait(0.2)

    def events() -> None:
        client = redis_from_settings(settings)
        publisher = OutboxPublisher(Outbox(client, settings.outbox_max_events))
        started, i = time.monotonic(), 0
        while not stop.is_set():
            publisher.publish(make_event("job_progress", f"soak-{i}", "benchmark", progress=0.5))
            i += 1
            delay = started + i / EVENTS_PER_S - time.monotonic()
            if delay > 0:
                stop.wait(delay)
        counts["events"] = i
        client.close()

    threads = [threading.Thread(target=jobs, daemon=True) for _ in range(2)]
    threads.append(threading.Thread(target=events, daemon=True))
    for thread in threads:
        thread.start()
    return threads


def run(system: LocalSystem, seconds: float, log: Log) -> dict[str, Any]:
    settings = system.settings
    assert settings is not None
    client = redis_from_settings(settings)
    stop = threading.Event()
    counts = {"jobs": 0, "events": 0, "refused": 0}
    threads = _load(system, stop, counts)
    samples: list[dict[str, Any]] = []
    began = time.monotonic()
    try:
        while (elapsed := time.monotonic() - began) < seconds:
            snapshot = memory_snapshot(system, client)
            snapshot["t"] = elapsed
            samples.append(snapshot)
            if len(samples) % 6 == 1:
                log(
                    f"  {elapsed / 60:4.1f} min: {snapshot['total_rss_mb']:.0f} MB RSS, Redis used_memory "
                    f"{snapshot['redis_used_memory_mb']:.0f} MB; {counts['jobs']} jobs"
                )
            time.sleep(max(0.0, began + len(samples) * SAMPLE_SECONDS - time.monotonic()))
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        client.close()
    times = [s["t"] for s in samples]
    names = sorted({n for s in samples for n in s["components"]})
    series = {n: [s["components"].get(n, {}).get("rss_mb", 0.0) for s in samples] for n in names}
    series["total RSS"] = [s["total_rss_mb"] for s in samples]
    series["Redis used_memory"] = [s["redis_used_memory_mb"] for s in samples]
    verdicts = {n: verdict(times, values) for n, values in series.items()}
    return {
        "seconds": seconds,
        "sample_seconds": SAMPLE_SECONDS,
        "rule": f"least-squares slope over the second half > max({GROWTH_FRACTION:.0%} of its median, "
        f"{GROWTH_FLOOR_MB:.0f} MB) per hour",
        "load": counts,
        "samples": samples,
        "verdicts": verdicts,
        "growing": any(v["growing"] for v in verdicts.values()),
    }


def write(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Memory soak",
        "",
        f"{report['seconds'] / 60:.0f} minutes, a sample every {report['sample_seconds']:.0f} s; load: "
        f"{report['load']['jobs']} jobs (each purged when finished), {report['load']['events']} events. "
        f"Growth rule: {report['rule']}.",
        "",
        "| series | last MB | slope, second half (MB/h) | limit (MB/h) | |",
        "|---|---|---|---|---|",
    ]
    for name, v in report["verdicts"].items():
        lines.append(
            f"| {name} | {v['last_mb']:.0f} | {v['slope_mb_per_h']:+.1f} | {v['limit_mb_per_h']:.1f} | "
            f"{'**growing**' if v['growing'] else 'flat'} |"
        )
    (out / "soak.md").write_text("\n".join(lines) + "\n")
    times = [s["t"] / 60 for s in report["samples"]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    names = sorted(report["samples"][0]["components"]) if report["samples"] else []
    for name in names:
        top.plot(times, [s["components"].get(name, {}).get("rss_mb", 0) for s in report["samples"]], label=name)
    top.set_ylabel("RSS MB")
    top.legend(fontsize=7, ncol=2)
    top.set_title("Soak: RSS per component")
    bottom.plot(times, [s["redis_used_memory_mb"] for s in report["samples"]], color="C3")
    bottom.set_ylabel("Redis used_memory MB")
    bottom.set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(out / "soak.png", dpi=110)
    plt.close(fig)
