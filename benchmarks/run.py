"""Pynomaly performance harness: the platform's cost measured against an in-script baseline.

Starts its own local system (real Redis, real Kafka, API, workers, consumers) in a temporary state
directory, measures every row of issue 11's table (rows.py) plus detection latency and API accept,
and writes ``results.json``, ``results.md`` and PNG plots; ``--soak`` runs the memory soak (soak.py).  Every
figure is a ratio against a baseline measured in this same process, interleaved with the measured
variant, because the machines are shared: absolute times drift with other people's load, ratios
of interleaved runs drift much less.  See benchmarks/README.md.

    .venv/bin/python benchmarks/run.py --quick      # a few minutes
    .venv/bin/python benchmarks/run.py              # full sizes (50k events, 100k jobs listed, ...)
    .venv/bin/python benchmarks/run.py --soak       # 30 minutes of load; fails if memory keeps growing
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import rows as bench_rows

from pynomaly.api import API_KEY_HEADER
from pynomaly.client import PynomalyClient
from pynomaly.domain.detectors import run_detection
from pynomaly.localstack.system import LocalSystem
from pynomaly.storage.redis_client import redis_from_settings

COLUMNS = [f"f{i}" for i in range(8)]
CONTAMINATION = 0.1
POLL_INTERVAL = 0.02  # client polling of job status; bounds the quantisation of end-to-end latency
REPO = bench_rows.REPO
# The bridge row pauses the bridge (SIGSTOP) while it writes a backlog: it must keep its partitions
# meanwhile, or it would measure a rebalance.
BENCH_SETTINGS = {"kafka_session_timeout_seconds": 60.0}
# Row 1 also sends with this variant of the project's Celery config, to measure a settings change
# before and after in the same run (empty: no extra variant).  Now: as before issue 11 (task-sent
# events; and, as for every variant but the project's, no ignore_result, so each send subscribes).
CELERY_ALTERNATIVE: dict[str, Any] = {"task_send_sent_event": True}


@dataclass(frozen=True)
class Plan:
    """How much to measure for detection latency, end to end and API accept (the rows: rows.RowPlan)."""

    sizes: tuple[int, ...]
    detectors: tuple[str, ...]
    reps: int
    jobs: int
    job_rows: int
    job_detector: str
    api_sizes: tuple[int, ...]
    api_reps: int
    throughput_rounds: int


QUICK = Plan((1_000, 20_000), ("iforest", "hbos", "ecod"), 5, 100, 1_000, "hbos", (1_000, 20_000), 7, 1)
FULL = Plan((1_000, 20_000), ("iforest", "hbos", "ecod"), 15, 200, 1_000, "hbos", (1_000, 20_000), 25, 3)


# -- statistics -------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), in the values' unit."""
    return float(np.percentile(values, q)) if values else float("nan")


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "median": pct(values, 50),
        "p90": pct(values, 90),
        "min": min(values) if values else float("nan"),
        "max": max(values) if values else float("nan"),
        "samples": values,
    }


def ratio(measured: float, baseline: float) -> float:
    return measured / baseline if baseline > 0 else float("nan")


# -- data -------------------------------------------------------------------------------------------


def dataset(rows: int, seed: int) -> np.ndarray:
    """Gaussian rows with 2% planted outliers, so detectors have something to find."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(rows, len(COLUMNS)))
    planted = rng.choice(rows, size=max(1, rows // 50), replace=False)
    values[planted] += rng.choice([-6.0, 6.0], size=(len(planted), len(COLUMNS)))
    return np.round(values, 6)  # what JSON/CSV carry anyway; both paths then see the same numbers


def as_csv(values: np.ndarray) -> bytes:
    buffer = io.StringIO()
    buffer.write(",".join(COLUMNS) + "\n")
    np.savetxt(buffer, values, delimiter=",", fmt="%.6f")
    return buffer.getvalue().encode()


def as_json(values: np.ndarray, detector: str) -> bytes:
    body = {"detector": detector, "rows": values.tolist(), "columns": COLUMNS, "contamination": CONTAMINATION}
    return json.dumps(body).encode()


# -- machine ----------------------------------------------------------------------------------------


def parse_time(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# -- benchmarks -------------------------------------------------------------------------------------


def wait_completed(client: PynomalyClient, job_id: str, timeout: float = 300.0) -> dict[str, Any]:
    job = client.wait(job_id, timeout=timeout, interval=POLL_INTERVAL)
    if job["status"] != "completed":
        raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('error')}")
    return job


def bench_detection(client: PynomalyClient, plan: Plan, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """1. End-to-end job latency through the platform vs ``run_detection`` in this process."""
    out = []
    for rows in plan.sizes:
        values = dataset(rows, seed=rows)
        for detector in plan.detectors:
            # Warm-up on both sides: imports in this process, first-task imports in the worker.
            run_detection(values, COLUMNS, detector, None, CONTAMINATION)
            wait_completed(client, client.submit_rows(values.tolist(), detector, columns=COLUMNS)["id"])
            local: list[float] = []
            e2e: list[float] = []
            server: list[float] = []
            for _ in range(plan.reps):  # interleaved, so a load spike hits both sides alike
                started = time.perf_counter()
                run_detection(values, COLUMNS, detector, None, CONTAMINATION)
                local.append(time.perf_counter() - started)
                started = time.perf_counter()
                job_id = client.submit_rows(values.tolist(), detector, columns=COLUMNS, contamination=CONTAMINATION)[
                    "id"
                ]
                job = wait_completed(client, job_id)
                e2e.append(time.perf_counter() - started)
                server.append(parse_time(job["finished_at"]) - parse_time(job["created_at"]))
            row = {
                "rows": rows,
                "columns": len(COLUMNS),
                "detector": detector,
                "baseline_in_process_s": summary(local),
                "platform_end_to_end_s": summary(e2e),
                "platform_server_created_to_finished_s": summary(server),
                "ratio_median": ratio(statistics.median(e2e), statistics.median(local)),
                "overhead_median_s": statistics.median(e2e) - statistics.median(local),
            }
            log(
                f"  detection {detector:8s} {rows:>6} rows: in-process {row['baseline_in_process_s']['median']:.3f}s, "
                f"platform {row['platform_end_to_end_s']['median']:.3f}s (x{row['ratio_median']:.1f})"
            )
            out.append(row)
    return out


def ended_counts(client: PynomalyClient) -> tuple[int, int]:
    """(completed, failed or cancelled) jobs in the store, from the listing's totals."""
    return (
        int(client.jobs(status="completed", limit=1)["total"]),
        sum(int(client.jobs(status=status, limit=1)["total"]) for status in ("failed", "cancelled")),
    )


def bench_throughput(
    system: LocalSystem, client: PynomalyClient, plan: Plan, log: Callable[[str], None]
) -> dict[str, Any]:
    """2. N small jobs at once through the workers vs the same N run sequentially in-process."""
    values = dataset(plan.job_rows, seed=7)
    body = values.tolist()

    def submit(_: int) -> str:
        return client.submit_rows(body, plan.job_detector, columns=COLUMNS, contamination=CONTAMINATION)["id"]

    rounds = []
    cpu: dict[str, list[dict[str, float]]] = {"baseline": [], "platform": []}
    ended = ended_counts(client)
    for _ in range(plan.throughput_rounds):  # whole rounds, baseline then platform, median over rounds
        with bench_rows.cpu_used(system) as used:
            started = time.perf_counter()
            for _ in range(plan.jobs):
                run_detection(values, COLUMNS, plan.job_detector, None, CONTAMINATION)
            local_s = time.perf_counter() - started
        cpu["baseline"].append(used)
        with bench_rows.cpu_used(system) as used:
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=8) as pool:  # concurrent submitters, as many clients would be
                pending = set(pool.map(submit, range(plan.jobs)))
            submitted_s = time.perf_counter() - started
            # Two O(1) counts per poll (the per-status indexes), not a GET per pending job: polling
            # every job made the API the run's third-biggest CPU spender, on the workers' cores.
            deadline = time.monotonic() + 600
            while True:
                completed, failed = ended_counts(client)
                if completed >= ended[0] + plan.jobs or failed > ended[1]:
                    break  # all done, or a failure (named below)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{ended[0] + plan.jobs - completed} of {plan.jobs} jobs still unfinished")
                time.sleep(0.05)
            platform_s = time.perf_counter() - started
        cpu["platform"].append(used)
        for job_id in pending:  # outside the timed window: every one of them, not just as many
            job = client.job(job_id)
            if job["status"] != "completed":
                raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('error')}")
        ended = ended_counts(client)
        rounds.append({"baseline_wall_s": local_s, "platform_wall_s": platform_s, "platform_submit_all_s": submitted_s})
    baseline = statistics.median(plan.jobs / r["baseline_wall_s"] for r in rounds)
    measured = statistics.median(plan.jobs / r["platform_wall_s"] for r in rounds)
    result = {
        "jobs": plan.jobs,
        "rows": plan.job_rows,
        "columns": len(COLUMNS),
        "detector": plan.job_detector,
        "rounds": rounds,
        "baseline_sequential_in_process_jobs_per_s": baseline,
        "platform_concurrent_jobs_per_s": measured,
        "platform_submit_all_s_median": statistics.median(r["platform_submit_all_s"] for r in rounds),
        "platform_wall_s_median": statistics.median(r["platform_wall_s"] for r in rounds),
        "ratio": ratio(measured, baseline),
        "cpu": {side: bench_rows.cpu_summary(cpu[side], plan.jobs * len(cpu[side])) for side in cpu},
    }
    log(f"  throughput: in-process {baseline:.1f} jobs/s, platform {measured:.2f} jobs/s (median of {len(rounds)})")
    return result


def bench_api(system: LocalSystem, plan: Plan, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """5. Accept latency of POST /v1/jobs: JSON rows vs multipart CSV of the same data."""
    out = []
    detector = "hbos"
    with httpx.Client(base_url=system.api_url, headers={API_KEY_HEADER: system.api_key}, timeout=60) as http:

        def cancel(response: httpx.Response) -> None:
            # Cancelling at once keeps the workers idle, so they do not load the machine being measured.
            http.delete(f"/v1/jobs/{response.json()['id']}")

        for rows in plan.api_sizes:
            values = dataset(rows, seed=rows + 1)
            json_body = as_json(values, detector)  # serialised once: the API is measured, not the client
            csv_body = as_csv(values)
            form = {"detector": detector, "contamination": str(CONTAMINATION)}
            timings: dict[str, list[float]] = {"json": [], "csv": []}
            for i in range(plan.api_reps + 1):
                for kind in ("json", "csv") if i % 2 else ("csv", "json"):  # alternate who goes first
                    started = time.perf_counter()
                    if kind == "json":
                        response = http.post(
                            "/v1/jobs", content=json_body, headers={"content-type": "application/json"}
                        )
                    else:
                        response = http.post("/v1/jobs", data=form, files={"file": ("data.csv", csv_body, "text/csv")})
                    elapsed = time.perf_counter() - started
                    if response.status_code != 202:
                        raise RuntimeError(f"POST /v1/jobs ({kind}) answered {response.status_code}: {response.text}")
                    cancel(response)
                    if i:  # the first pair warms up the API's code paths
                        timings[kind].append(elapsed)
            row = {
                "rows": rows,
                "columns": len(COLUMNS),
                "json_bytes": len(json_body),
                "csv_bytes": len(csv_body),
                "baseline_json_rows_s": summary(timings["json"]),
                "multipart_csv_s": summary(timings["csv"]),
                "ratio_median": ratio(statistics.median(timings["csv"]), statistics.median(timings["json"])),
            }
            log(
                f"  api {rows:>6} rows: JSON {row['baseline_json_rows_s']['median'] * 1e3:.1f} ms, "
                f"CSV {row['multipart_csv_s']['median'] * 1e3:.1f} ms"
            )
            out.append(row)
    return out


# -- output -----------------------------------------------------------------------------------------


# -- output -----------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def mark(ok: bool) -> str:
    return "**met**" if ok else "missed"


def scoreboard(results: dict[str, Any]) -> list[dict[str, str]]:
    """The issue's table: one line per row, platform vs its raw baseline, the ratio and the target."""
    out: list[dict[str, str]] = []
    s = results["submit"]
    eight = s["eight"]
    p, d, c = eight["platform"], eight["celery_defaults"], eight["celery_project_config"]
    by_clients = {lv["clients"]: lv["platform"]["per_s"] for lv in s["levels"]}
    flat = by_clients.get(32, 0) >= 0.8 * by_clients.get(8, float("inf"))
    out.append(
        {
            "path": "`POST /v1/jobs`, tiny job, 8 clients",
            "platform": f"{p['per_s']:.0f} jobs/s, p99 {ms(p['p99_s'])} "
            f"(1 / 32 clients: {by_clients.get(1, 0):.0f} / {by_clients.get(32, 0):.0f} jobs/s)",
            "baseline": f"`send_task` defaults {d['per_s']:.0f}/s ({c['per_s']:.0f}/s with the project's config)",
            "ratio": f"{eight['ratio_vs_defaults']:.2f}",
            "target": "≥ 0.5x raw defaults; p99 ≤ 100 ms; flat as clients grow",
            "met": mark(eight["ratio_vs_defaults"] >= 0.5 and p["p99_s"] <= 0.1 and flat),
        }
    )
    t = results["throughput"]
    out.append(
        {
            "path": f"end to end, {t['jobs']} {t['detector']} {t['rows']}x{t['columns']} jobs",
            "platform": f"{t['platform_concurrent_jobs_per_s']:.1f} jobs/s",
            "baseline": f"`run_detection` in-process {t['baseline_sequential_in_process_jobs_per_s']:.0f}/s",
            "ratio": f"{t['ratio']:.3f}",
            "target": "≥ 0.3x",
            "met": mark(t["ratio"] >= 0.3),
        }
    )
    pb = results["publish"]
    out.append(
        {
            "path": f"event publish, {pb['events']} events (outbox write + relay to Kafka)",
            "platform": f"{pb['platform_per_s']:.0f} ev/s (outbox writes {pb['platform_written_per_s']:.0f}/s)",
            "baseline": f"kafka-python, the relay's settings {pb['baseline_per_s']:.0f}/s",
            "ratio": f"{pb['ratio']:.2f}",
            "target": "≥ 0.9x",
            "met": mark(pb["ratio"] >= 0.9),
        }
    )
    b = results["bridge"]
    out.append(
        {
            "path": "Kafka → `dashboard:stream` bridge",
            "platform": f"{b['platform_per_s']:.0f} ev/s",
            "baseline": f"kafka-python + pipelined XADD {b['baseline_per_s']:.0f} ev/s",
            "ratio": f"{b['ratio']:.2f}",
            "target": "≥ 10,000 ev/s, ≥ 0.8x raw",
            "met": mark(b["platform_per_s"] >= 10_000 and b["ratio"] >= 0.8),
        }
    )
    w = results["websocket"]
    out.append(
        {
            "path": f"publish → WebSocket client at {w['rate_per_s']:,} ev/s",
            "platform": f"p50 {ms(w['platform_p50_s'])}, p99 {ms(w['platform_p99_s'])}"
            + (f" ({w['platform_missing']} not received)" if w["platform_missing"] else ""),
            "baseline": f"raw producer → consumer p50 {ms(w['baseline_p50_s'])}, p99 {ms(w['baseline_p99_s'])}",
            "ratio": f"x{w['ratio_p99']:.1f} at p99",
            "target": "p99 ≤ 50 ms",
            "met": mark(w["platform_p99_s"] <= 0.05 and not w["platform_missing"]),
        }
    )
    m = results["mixed"]
    out.append(
        {
            "path": f"aggregate, {m['seconds']:.0f} s mixed load",
            "platform": f"{m['msg_per_s']:,.0f} msg/s",
            "baseline": "ADR target 10,000+/s",
            "ratio": f"{m['ratio_to_adr_target']:.2f} of the ADR's",
            "target": "≥ 20,000 msg/s",
            "met": mark(m["msg_per_s"] >= 20_000),
        }
    )
    g = results["big_job"]
    rows = {r["detector"]: r for r in g["detectors"]}
    limits = {"iforest": 1.3, "ecod": 2.0}
    stall = max(r["healthz_worst_s"] for r in g["detectors"])
    out.append(
        {
            "path": f"{g['rows'] // 1000}kx{g['columns']} job, " + " / ".join(rows),
            "platform": " / ".join(f"{r['platform_end_to_end_s']:.2f} s" for r in rows.values())
            + f"; `/healthz` worst {ms(stall)}",
            "baseline": "in-process "
            + " / ".join(f"{r['baseline_in_process_s']:.2f} s" for r in rows.values())
            + f"; `/healthz` at rest worst {ms(g['healthz_at_rest_max_s'])}",
            "ratio": " / ".join(f"{r['ratio']:.2f}" for r in rows.values()),
            "target": "≤ 1.3x / ≤ 2x; no stall > 50 ms",
            "met": mark(all(r["ratio"] <= limits.get(n, 2.0) for n, r in rows.items()) and stall <= 0.05),
        }
    )
    li = results["list"]
    first = li["median_s"]["list_first_page"]
    out.append(
        {
            "path": f"`GET /v1/jobs` with {li['jobs']:,} jobs",
            "platform": f"{ms(first)} (status filter {ms(li['median_s']['list_status_completed'])}, "
            f"detector filter, a scan: {ms(li['median_s']['list_detector_filter_scan'])})",
            "baseline": f"`GET /v1/jobs/{{id}}` {ms(li['median_s']['get_one'])}",
            "ratio": f"x{li['ratio']:.1f}",
            "target": "≤ 10 ms at 100k jobs (O(page))",
            "met": mark(first <= 0.01 and li["jobs"] >= 100_000)
            if li["jobs"] >= 100_000
            else (f"{'met' if first <= 0.01 else 'missed'} at {li['jobs']:,} (quick)"),
        }
    )
    r = results["memory_at_rest"]
    big = sorted(r["components"].items(), key=lambda kv: -kv[1]["rss_mb"])[:3]
    out.append(
        {
            "path": "whole local system RSS at rest after the standard load",
            "platform": f"{r['total_rss_mb']:,.0f} MB RSS ({r['total_pss_mb']:,.0f} MB PSS; "
            f"{results['memory_at_start']['total_rss_mb']:,.0f} MB RSS right after start); "
            + ", ".join(f"{n} {v['rss_mb']:.0f}" for n, v in big)
            + f"; Redis used_memory {r['redis_used_memory_mb']:.0f} MB",
            "baseline": "ADR: 1-2 GB baseline",
            "ratio": "—",
            "target": "≤ 1 GiB (and flat over a 30-minute soak: `--soak`)",
            "met": mark(r["total_rss_mb"] <= 1024),
        }
    )
    return out


def cpu_rows(results: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    """(row, the platform's CPU summary, the baseline's or None) for every row that records CPU."""
    eight = results["submit"]["eight"]
    out: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = [
        ("1. submit, 8 clients (per job / per `send_task`)", eight["platform"]["cpu"], eight["celery_defaults"]["cpu"]),
        ("2. end to end (per job)", results["throughput"]["cpu"]["platform"], results["throughput"]["cpu"]["baseline"]),
        ("3. event publish (per event)", results["publish"]["cpu"]["platform"], results["publish"]["cpu"]["baseline"]),
        ("4. bridge (per event)", results["bridge"]["cpu"]["platform"], results["bridge"]["cpu"]["baseline"]),
        ("6. mixed load (per message)", results["mixed"]["cpu"], None),
    ]
    for row in results["big_job"]["detectors"]:
        out.append((f"7. 100k job, {row['detector']} (per job)", row["cpu"]["platform"], row["cpu"]["baseline"]))
    return out


def cpu_markdown(results: dict[str, Any]) -> list[str]:
    """Why a rate cannot pass a ceiling here: CPU per message over every process, into the cores."""
    cores = results["machine"]["nproc"]
    lines = [
        "",
        "## CPU per message: the ceiling on this machine",
        "",
        f"CPU seconds of every process in the run (API, workers, consumers, Redis, Kafka, this script's "
        f"clients and baselines) while the row ran, per message. A path that needs C ms of CPU per message "
        f"cannot pass {cores} cores / C on this machine, whatever its latency; the baseline column is the "
        "same for the raw libraries.",
        "",
        "| row | platform CPU ms | ceiling here /s | baseline CPU ms | ceiling here /s | CPU ratio | "
        "platform's biggest spenders (CPU s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, measured, baseline in cpu_rows(results):
        spenders = ", ".join(f"{n} {v:.1f}" for n, v in list(measured["by_process_s"].items())[:4])
        base_ms = f"{baseline['cpu_ms_per_message']:.2f}" if baseline else "—"
        base_cap = f"{baseline['cpu_bound_ceiling_per_s']:,.0f}" if baseline else "—"
        cpu_ratio = (
            f"x{measured['cpu_ms_per_message'] / baseline['cpu_ms_per_message']:.1f}"
            if baseline and baseline["cpu_ms_per_message"] > 0
            else "—"
        )
        lines.append(
            f"| {name} | {measured['cpu_ms_per_message']:.2f} | {measured['cpu_bound_ceiling_per_s']:,.0f} | "
            f"{base_ms} | {base_cap} | {cpu_ratio} | {spenders} |"
        )
    return lines


def write_markdown(results: dict[str, Any], path: Path) -> None:
    m = results["machine"]
    lines = [
        "# Pynomaly benchmark results",
        "",
        f"Mode `{results['mode']}`, {m['timestamp']}; {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}; "
        f"load average {m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end.",
        "",
        f"> {results['noise_note']}",
        "",
        "## Every row of issue 11, against its raw baseline in this run",
        "",
        "| path | platform | raw baseline, same run | ratio | target | |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["scoreboard"]:
        lines.append(
            "| " + " | ".join(row[k] for k in ("path", "platform", "baseline", "ratio", "target", "met")) + " |"
        )
    lines += cpu_markdown(results)
    s = results["submit"]
    lines += [
        "",
        "## 1. Submit: `POST /v1/jobs` (tiny job) vs raw `send_task`, workers paused",
        "",
        "| clients | platform jobs/s | p50 / p99 | send_task defaults /s | p99 | project config /s | p99 |"
        + (" alternative config /s | p99 |" if s["alternative_settings"] else ""),
        "|---|---|---|---|---|---|---|" + ("---|---|" if s["alternative_settings"] else ""),
    ]
    for lv in s["levels"]:
        p, d, c = lv["platform"], lv["celery_defaults"], lv["celery_project_config"]
        line = (
            f"| {lv['clients']} | {p['per_s']:.0f} | {ms(p['p50_s'])} / {ms(p['p99_s'])} | {d['per_s']:.0f} | "
            f"{ms(d['p99_s'])} | {c['per_s']:.0f} | {ms(c['p99_s'])} |"
        )
        if s["alternative_settings"]:
            t = lv["celery_alternative"]
            line += f" {t['per_s']:.0f} | {ms(t['p99_s'])} |"
        lines.append(line)
    if s["alternative_settings"]:
        changed = ", ".join(f"`{k}={v}`" for k, v in s["alternative_settings"].items())
        lines += ["", f"Alternative config: the project's with {changed}."]
    t = results["throughput"]
    lines += [
        "",
        f"## 2. End to end: {t['jobs']} concurrent jobs ({t['detector']}, {t['rows']}x{t['columns']})",
        "",
        "| baseline: sequential in-process | platform: concurrent through workers | ratio | platform wall "
        "(of which submitting) |",
        "|---|---|---|---|",
        f"| {t['baseline_sequential_in_process_jobs_per_s']:.1f} jobs/s | {t['platform_concurrent_jobs_per_s']:.2f} "
        f"jobs/s | x{t['ratio']:.3f} | {t['platform_wall_s_median']:.1f} s "
        f"({t['platform_submit_all_s_median']:.1f} s) |",
    ]
    pb, b = results["publish"], results["bridge"]
    lines += [
        "",
        "## 3-4. Events: publish and bridge (events/s per round)",
        "",
        "| round | publish: platform (outbox → relay → acked) | outbox writes | kafka-python | "
        "bridge: platform | raw consumer + pipelined XADD |",
        "|---|---|---|---|---|---|",
    ]
    for i in range(max(len(pb["rounds"]), len(b["rounds"]))):
        p = pb["rounds"][i] if i < len(pb["rounds"]) else {}
        q = b["rounds"][i] if i < len(b["rounds"]) else {}
        lines.append(
            f"| {i + 1} | {p.get('platform_per_s', 0):.0f} | {p.get('platform_written_per_s', 0):.0f} | "
            f"{p.get('baseline_per_s', 0):.0f} | {q.get('platform_per_s', 0):.0f} | {q.get('baseline_per_s', 0):.0f} |"
        )
    mx = results["mixed"]
    lines += [
        "",
        f"## 6. Mixed load, {mx['seconds']:.0f} s",
        "",
        f"{mx['jobs_submitted']} jobs submitted ({mx['jobs_completed_in_window']} completed in the window); "
        f"Kafka records {mx['kafka_records']}, stream entries {mx['stream_entries']}, Celery messages "
        f"{mx['celery_messages']}: **{mx['msg_per_s']:,.0f} msg/s**.",
        "",
        "## 9. Memory at rest (component with its child processes)",
        "",
        "Right after start (idle; the detection libraries are imported by a pool child's first job) and "
        "at rest after rows 1-7 (Redis then holds those rows' jobs and the bridge's dedup markers).",
        "",
        "| component | RSS MB at start | RSS MB after the load | PSS MB after | processes |",
        "|---|---|---|---|---|",
    ]
    mem, start = results["memory_at_rest"], results["memory_at_start"]
    for name, v in sorted(mem["components"].items(), key=lambda kv: -kv[1]["rss_mb"]):
        before = start["components"].get(name, {}).get("rss_mb", 0.0)
        lines.append(f"| {name} | {before:.0f} | {v['rss_mb']:.0f} | {v['pss_mb']:.0f} | {v['processes']:.0f} |")
    lines.append(
        f"| **total** | **{start['total_rss_mb']:.0f}** | **{mem['total_rss_mb']:.0f}** | "
        f"**{mem['total_pss_mb']:.0f}** | |"
    )
    lines.append(
        f"| Redis `used_memory` | {start['redis_used_memory_mb']:.0f} | {mem['redis_used_memory_mb']:.0f} | | |"
    )
    li = results["list"]
    lines += [
        "",
        f"## 8. Listing with {li['jobs']:,} jobs stored",
        "",
        "| request | median | p90 | total matches |",
        "|---|---|---|---|",
    ]
    for name, value in li["median_s"].items():
        lines.append(f"| {name} | {ms(value)} | {ms(li['p90_s'][name])} | {li['totals'].get(name, '')} |")
    lines += [
        "",
        "## Also measured: detection latency and API accept",
        "",
        "| detector | rowsxcols | baseline in-process median (p90) | platform end-to-end median (p90) "
        "| server created→finished median | ratio (median) | overhead (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["detection"]:
        b0, p0, s0 = r["baseline_in_process_s"], r["platform_end_to_end_s"], r["platform_server_created_to_finished_s"]
        lines.append(
            f"| {r['detector']} | {r['rows']}x{r['columns']} | {ms(b0['median'])} ({ms(b0['p90'])}) | "
            f"{ms(p0['median'])} ({ms(p0['p90'])}) | {ms(s0['median'])} | x{r['ratio_median']:.1f} | "
            f"+{ms(r['overhead_median_s'])} |"
        )
    lines += [
        "",
        "| rowsxcols | body JSON / CSV | baseline JSON median (p90) | multipart CSV median (p90) | ratio CSV/JSON |",
        "|---|---|---|---|---|",
    ]
    for r in results["api"]:
        j, c = r["baseline_json_rows_s"], r["multipart_csv_s"]
        lines.append(
            f"| {r['rows']}x{r['columns']} | {r['json_bytes'] / 1e6:.2f} / {r['csv_bytes'] / 1e6:.2f} MB | "
            f"{ms(j['median'])} ({ms(j['p90'])}) | {ms(c['median'])} ({ms(c['p90'])}) | x{r['ratio_median']:.2f} |"
        )
    lines += ["", f"Produced by `{results['command']}` in {results['duration_s']:.0f} s.", ""]
    path.write_text("\n".join(lines))


def write_plots(results: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)

    det = results["detection"]
    labels = [f"{r['detector']}\n{r['rows'] // 1000}k rows" for r in det]
    x = np.arange(len(det))
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for offset, key, name in (
        (-0.2, "baseline_in_process_s", "in-process run_detection (baseline)"),
        (0.2, "platform_end_to_end_s", "platform end-to-end"),
    ):
        med = [r[key]["median"] for r in det]
        p90 = [r[key]["p90"] for r in det]
        ax.bar(x + offset, med, 0.4, label=name, yerr=[np.zeros(len(det)), np.subtract(p90, med)], capsize=3)
    for i, r in enumerate(det):
        top = max(r["platform_end_to_end_s"]["p90"], r["platform_end_to_end_s"]["median"])
        ax.annotate(f"x{r['ratio_median']:.1f}", (i + 0.2, top), ha="center", va="bottom", fontsize=9)
    ax.set_yscale("log")
    ax.set_ylim(top=ax.get_ylim()[1] * 2)  # room for the ratio labels
    ax.set_xticks(x, labels)
    ax.set_ylabel("seconds (log; bar = median, whisker = p90)")
    ax.set_title("Detection latency: platform end-to-end vs in-process")
    ax.legend(loc="upper left")
    save(fig, "detection_latency.png")

    t = results["throughput"]
    fig, ax = plt.subplots(figsize=(6, 4))
    vals = [t["baseline_sequential_in_process_jobs_per_s"], t["platform_concurrent_jobs_per_s"]]
    bars = ax.bar(["in-process sequential\n(baseline)", f"platform, {t['jobs']} concurrent"], vals, color=["C0", "C1"])
    ax.bar_label(bars, labels=[f"{v:.1f} jobs/s" for v in vals])
    ax.set_yscale("log")
    ax.set_ylim(1, max(vals) * 4)  # room for the labels; bottom at 1 job/s so the small bar stays visible
    ax.set_ylabel("jobs per second (log)")
    ax.set_title(f"2. End to end: {t['detector']}, {t['rows']}x{t['columns']} per job (x{t['ratio']:.3f})")
    save(fig, "throughput.png")

    s = results["submit"]
    variants = [("platform", "POST /v1/jobs"), ("celery_defaults", "send_task, Celery defaults"),
                ("celery_project_config", "send_task, project config")]  # fmt: skip
    if s["alternative_settings"]:
        variants.append(("celery_alternative", "send_task, alternative config"))
    clients = [lv["clients"] for lv in s["levels"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, name in variants:
        left.plot(clients, [lv[key]["per_s"] for lv in s["levels"]], marker="o", label=name)
        right.plot(clients, [lv[key]["p99_s"] * 1e3 for lv in s["levels"]], marker="o", label=name)
    right.axhline(100, color="grey", ls="--", lw=0.8, label="target p99 100 ms")
    for ax, label in ((left, "per second"), (right, "p99 ms (log)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(clients, [str(c) for c in clients])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
    left.set_yscale("log")
    right.set_yscale("log")
    left.set_title("1. Submit throughput")
    right.set_title("1. Submit p99 latency")
    right.legend(fontsize=8)
    save(fig, "submit.png")

    pb, b = results["publish"], results["bridge"]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    names = ["publish:\nkafka-python", "publish:\noutbox + relay", "bridge: raw consumer\n+ pipelined XADD",
             "bridge:\nplatform"]  # fmt: skip
    vals = [pb["baseline_per_s"], pb["platform_per_s"], b["baseline_per_s"], b["platform_per_s"]]
    bars = ax.bar(names, vals, color=["C0", "C1", "C0", "C1"])
    ax.bar_label(bars, labels=[f"{v:,.0f}/s" for v in vals])
    ax.axhline(10_000, color="grey", ls="--", lw=0.8)
    ax.annotate("bridge target 10,000 ev/s", (2.5, 10_000), va="bottom", ha="center", fontsize=8)
    ax.set_ylabel("events per second")
    ax.set_title(f"3-4. Events: publish x{pb['ratio']:.2f}, bridge x{b['ratio']:.2f} of raw")
    save(fig, "events.png")

    w = results["websocket"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, name in (("baseline_samples", "raw producer → consumer"), ("platform_samples", "publish → WebSocket")):
        data = np.sort(np.array(w[key]) * 1e3)
        if len(data):
            ax.plot(data, np.arange(1, len(data) + 1) / len(data), label=name)
    ax.axvline(50, color="grey", ls="--", lw=0.8, label="target p99 50 ms")
    ax.set_xscale("log")
    ax.set_xlabel("ms (log)")
    ax.set_ylabel("fraction of events ≤ x")
    ax.axhline(0.99, color="grey", lw=0.5)
    ax.set_title(f"5. Latency at {w['rate_per_s']:,} events/s (CDF)")
    ax.legend(loc="lower right")
    save(fig, "websocket.png")

    g = results["big_job"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    x = np.arange(len(g["detectors"]))
    local = [r["baseline_in_process_s"] for r in g["detectors"]]
    plat = [r["platform_end_to_end_s"] for r in g["detectors"]]
    ax.bar(x - 0.2, local, 0.4, label="in-process (baseline)")
    bars = ax.bar(x + 0.2, plat, 0.4, label="platform end-to-end")
    ax.bar_label(bars, labels=[f"x{r['ratio']:.2f}\n/healthz ≤ {r['healthz_worst_s'] * 1e3:.0f} ms"
                               for r in g["detectors"]], fontsize=8)  # fmt: skip
    ax.set_xticks(x, [r["detector"] for r in g["detectors"]])
    ax.set_ylim(0, max(plat) * 1.35)
    ax.set_ylabel("seconds")
    ax.set_title(f"7. {g['rows'] // 1000}kx{g['columns']} job")
    ax.legend(loc="upper left")
    save(fig, "big_job.png")

    li = results["list"]
    fig, ax = plt.subplots(figsize=(8, 4))
    names = list(li["median_s"])
    vals = [li["median_s"][n] * 1e3 for n in names]
    bars = ax.barh(names, vals, color=["C0"] + ["C1"] * (len(names) - 1))
    ax.bar_label(bars, labels=[f"{v:.1f} ms" for v in vals], fontsize=8)
    ax.axvline(10, color="grey", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("median ms (log); dashed: target 10 ms")
    ax.set_title(f"8. GET /v1/jobs with {li['jobs']:,} jobs")
    save(fig, "list.png")

    mem = results["memory_at_rest"]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    items = sorted(mem["components"].items(), key=lambda kv: kv[1]["rss_mb"])
    ax.barh([n for n, _ in items], [v["rss_mb"] for _, v in items], label="RSS")
    ax.barh([n for n, _ in items], [v["pss_mb"] for _, v in items], height=0.4, label="PSS")
    ax.set_xlabel("MB")
    ax.set_title(f"9. Memory at rest: {mem['total_rss_mb']:.0f} MB RSS, {mem['total_pss_mb']:.0f} MB PSS (target 1024)")
    ax.legend(loc="lower right")
    save(fig, "memory.png")

    api = results["api"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    x = np.arange(len(api))
    for offset, key, name in ((-0.2, "baseline_json_rows_s", "JSON rows (baseline)"), (0.2, "multipart_csv_s", "CSV")):
        med = np.array([r[key]["median"] for r in api]) * 1e3
        p90 = np.array([r[key]["p90"] for r in api]) * 1e3
        ax.bar(x + offset, med, 0.4, label=name, yerr=[np.zeros(len(api)), p90 - med], capsize=3)
    for i, r in enumerate(api):
        ax.annotate(f"x{r['ratio_median']:.2f}", (i + 0.2, r["multipart_csv_s"]["p90"] * 1e3), ha="center",
                    va="bottom", fontsize=9)  # fmt: skip
    ax.set_xticks(x, [f"{r['rows']}x{r['columns']}" for r in api])
    ax.set_ylabel("ms to 202 Accepted (bar: median, whisker: p90)")
    ax.set_title("POST /v1/jobs accept latency")
    ax.legend(loc="upper left")
    save(fig, "api_accept.png")
    return files


# -- main -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller rows and fewer repetitions (a few minutes)")
    parser.add_argument("--soak", action="store_true", help="the memory soak instead of the benchmarks (see soak.py)")
    parser.add_argument("--soak-minutes", type=float, default=30.0, help="length of --soak (default 30)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    if args.soak_minutes < 1:
        parser.error("--soak-minutes must be at least 1 (the growth test fits the second half)")
    began = time.perf_counter()
    lock = threading.Lock()

    def log(message: str) -> None:
        with lock:
            print(f"[{time.perf_counter() - began:6.1f}s] {message}", flush=True)

    if args.soak:
        import soak

        log(f"starting a private local system for a {args.soak_minutes:.0f}-minute soak")
        with bench_rows.local_system(log, **BENCH_SETTINGS, **soak.SETTINGS) as system:
            report = soak.run(system, args.soak_minutes * 60, log)
        args.out.mkdir(parents=True, exist_ok=True)
        soak.write(report, args.out)
        log(f"wrote {args.out}/soak.json, soak.md and soak.png: {'GROWING' if report['growing'] else 'flat'}")
        return 1 if report["growing"] else 0

    plan = QUICK if args.quick else FULL
    row_plan = bench_rows.QUICK_ROWS if args.quick else bench_rows.FULL_ROWS
    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "command": ".venv/bin/python benchmarks/run.py" + (" --quick" if args.quick else ""),
        "machine": bench_rows.machine_info(),
        "plan": plan.__dict__,
        "row_plan": row_plan.__dict__,
        "noise_note": (
            "Shared machine: absolute times move with other people's load (see loadavg). Each baseline is "
            "measured in this script, interleaved with what it is compared to; compare ratios, not times. "
            "The local system runs on the same CPUs as this script and as the in-process baseline, with one "
            "process per worker pool (worker_concurrency=1)."
        ),
    }
    log(f"starting a private local system ({results['mode']} mode)")
    with bench_rows.local_system(log, **BENCH_SETTINGS) as system:
        assert system.settings is not None
        results["system_settings"] = {"worker_concurrency": system.settings.worker_concurrency}
        quiet = redis_from_settings(system.settings)
        time.sleep(5)  # past the start's imports and first heartbeats
        results["memory_at_start"] = bench_rows.memory_snapshot(system, quiet)
        log(f"  at start: {results['memory_at_start']['total_rss_mb']:.0f} MB RSS")
        with PynomalyClient(system.api_url, system.api_key, timeout=120) as client:
            log("detection latency (also measured)")
            results["detection"] = bench_detection(client, plan, log)
            log("row 1: submit vs send_task")
            results["submit"] = bench_rows.bench_submit(system, row_plan, log, CELERY_ALTERNATIVE)
            log("row 2: end to end")
            results["throughput"] = bench_throughput(system, client, plan, log)
        bench_rows.wait_quiet(quiet, log, system.settings)
        log("row 3: event publish")
        results["publish"] = bench_rows.bench_publish(system, row_plan, log)
        bench_rows.wait_quiet(quiet, log, system.settings)
        log("row 4: bridge")
        results["bridge"] = bench_rows.bench_bridge(system, row_plan, log)
        bench_rows.wait_quiet(quiet, log, system.settings)
        log("row 5: publish → WebSocket")
        results["websocket"] = bench_rows.bench_websocket(system, row_plan, log)
        log("row 6: mixed load")
        results["mixed"] = bench_rows.bench_mixed(system, row_plan, log)
        log("row 7: large job and /healthz")
        results["big_job"] = bench_rows.bench_big_job(system, row_plan, log)
        log("API accept (also measured)")
        results["api"] = bench_api(system, plan, log)
        log("row 9: memory at rest")
        bench_rows.wait_quiet(quiet, log, system.settings)
        time.sleep(10)  # let the last batches, beats and GCs settle
        results["memory_at_rest"] = bench_rows.memory_snapshot(system, quiet)
        at_rest = results["memory_at_rest"]
        log(f"  {at_rest['total_rss_mb']:.0f} MB RSS, {at_rest['total_pss_mb']:.0f} MB PSS")
        log("row 8: listing")
        results["list"] = bench_rows.bench_list(system, row_plan, log)
        quiet.close()
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["duration_s"] = time.perf_counter() - began
    results["scoreboard"] = scoreboard(results)
    args.out.mkdir(parents=True, exist_ok=True)
    results["plots"] = write_plots(results, args.out)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, args.out / "results.md")
    for row in results["scoreboard"]:
        log(f"{row['met']:>9}  {row['path']}: {row['platform']} | {row['baseline']} | ratio {row['ratio']}")
    log(f"wrote {args.out}/results.json, results.md and {len(results['plots'])} plots")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        sys.exit(130)
