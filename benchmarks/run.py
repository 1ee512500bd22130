"""Pynomaly performance harness: the platform's cost measured against an in-script baseline.

Starts its own local system (real Redis, real Kafka, API, workers, consumers) in a temporary state
directory, runs five benchmarks and writes ``results.json``, ``results.md`` and PNG plots.  Every
figure is a ratio against a baseline measured in this same process, interleaved with the measured
variant, because the machines are shared: absolute times drift with other people's load, ratios
of interleaved runs drift much less.  See benchmarks/README.md.

    .venv/bin/python benchmarks/run.py --quick      # ~2-3 minutes
    .venv/bin/python benchmarks/run.py              # longer: more repetitions and jobs
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from pynomaly.api import API_KEY_HEADER
from pynomaly.client import PynomalyClient
from pynomaly.config import Settings
from pynomaly.domain.detectors import run_detection
from pynomaly.localstack.system import LocalSystem, sigterm_as_interrupt
from pynomaly.messaging.events import make_event
from pynomaly.messaging.kafka_admin import connection_config
from pynomaly.messaging.kafka_events import KafkaEventPublisher, producer_config
from pynomaly.storage.redis_client import redis_from_settings
from pynomaly.topology import S_DASHBOARD, T_JOB

COLUMNS = [f"f{i}" for i in range(8)]
CONTAMINATION = 0.1
POLL_INTERVAL = 0.02  # client polling of job status; bounds the quantisation of end-to-end latency
REPO = Path(__file__).resolve().parent.parent
BENCH_STREAM = "bench:baseline"
KAFKA_VARIANTS = (
    "raw_acks1",
    "raw_publisher_config_linger0",
    "raw_publisher_config",
    "publisher",
)  # scratch stream for the Redis baseline, deleted afterwards


@dataclass(frozen=True)
class Plan:
    """How much to measure; ``--quick`` trades repetitions for a 2-3 minute run."""

    sizes: tuple[int, ...]
    detectors: tuple[str, ...]
    reps: int
    jobs: int
    job_rows: int
    job_detector: str
    kafka_events: int
    fanout_events: int
    api_sizes: tuple[int, ...]
    api_reps: int
    throughput_rounds: int


QUICK = Plan((1_000, 20_000), ("iforest", "hbos", "ecod"), 7, 50, 1_000, "hbos", 200, 50, (1_000, 20_000), 9, 3)
FULL = Plan((1_000, 20_000), ("iforest", "hbos", "ecod"), 15, 100, 1_000, "hbos", 1_000, 200, (1_000, 20_000), 25, 5)


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


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("pynomaly", "pyod", "scikit-learn", "numpy", "celery", "kafka-python", "redis", "fastapi", "uvicorn"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_start": list(os.getloadavg()),
    }


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


def bench_throughput(client: PynomalyClient, plan: Plan, log: Callable[[str], None]) -> dict[str, Any]:
    """2. N small jobs at once through the workers vs the same N run sequentially in-process."""
    values = dataset(plan.job_rows, seed=7)
    body = values.tolist()

    def submit(_: int) -> str:
        return client.submit_rows(body, plan.job_detector, columns=COLUMNS, contamination=CONTAMINATION)["id"]

    rounds = []
    for _ in range(plan.throughput_rounds):  # whole rounds, baseline then platform, median over rounds
        started = time.perf_counter()
        for _ in range(plan.jobs):
            run_detection(values, COLUMNS, plan.job_detector, None, CONTAMINATION)
        local_s = time.perf_counter() - started
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=8) as pool:  # concurrent submitters, as many clients would be
            pending = set(pool.map(submit, range(plan.jobs)))
        submitted_s = time.perf_counter() - started
        deadline = time.monotonic() + 600
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} of {plan.jobs} jobs still unfinished")
            for job_id in list(pending):
                job = client.job(job_id)
                if job["status"] == "completed":
                    pending.discard(job_id)
                elif job["status"] in ("failed", "cancelled"):
                    raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('error')}")
            if pending:
                time.sleep(0.1)
        platform_s = time.perf_counter() - started
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
    }
    log(f"  throughput: in-process {baseline:.1f} jobs/s, platform {measured:.2f} jobs/s (median of {len(rounds)})")
    return result


def bench_kafka(settings: Settings, plan: Plan, log: Callable[[str], None]) -> dict[str, Any]:
    """3. ``KafkaEventPublisher.publish`` vs raw ``send().get()`` of the same bytes.

    Two more variants split the overhead: a raw producer with the publisher's own config (no envelope
    validation), and the same with ``linger_ms=0`` (how much is the batching delay vs acks=all).
    """
    from kafka import KafkaProducer

    publisher = KafkaEventPublisher(settings)
    raw = KafkaProducer(**connection_config(settings), acks=1)
    configured = KafkaProducer(**producer_config(settings))
    # The same config without batching delay: shows how much of the cost is linger_ms, not acks=all.
    no_linger = KafkaProducer(**{**producer_config(settings), "linger_ms": 0})
    samples: dict[str, list[float]] = {name: [] for name in KAFKA_VARIANTS}
    try:
        for i in range(plan.kafka_events + 10):
            event = make_event("job_progress", f"bench-{i}", "benchmark", progress=0.5, message="kafka publish bench")
            key, value = event.subject.encode(), event.encode()
            sends: dict[str, Callable[[], object]] = {
                "raw_acks1": lambda k=key, v=value: raw.send(T_JOB, key=k, value=v).get(timeout=30),
                "raw_publisher_config_linger0": lambda k=key, v=value: no_linger.send(T_JOB, key=k, value=v).get(
                    timeout=30
                ),
                "raw_publisher_config": lambda k=key, v=value: configured.send(T_JOB, key=k, value=v).get(timeout=30),
                "publisher": lambda e=event: publisher.publish(e),
            }
            order = list(sends)
            order = (
                order[i % len(order) :] + order[: i % len(order)]
            )  # rotate who goes first, so no variant always follows another
            times = {}
            for name in order:
                started = time.perf_counter()
                sends[name]()
                times[name] = time.perf_counter() - started
            if i >= 10:  # the first sends open connections and fetch metadata
                for name, seconds in times.items():
                    samples[name].append(seconds)
    finally:
        publisher.close()
        raw.close(timeout=10)
        configured.close(timeout=10)
        no_linger.close(timeout=10)
    base = statistics.median(samples["raw_acks1"])
    result = {name: summary(values) for name, values in samples.items()}
    for name in KAFKA_VARIANTS[1:]:
        result[f"ratio_{name}_median"] = ratio(statistics.median(samples[name]), base)
    result["producer_config"] = {
        k: v for k, v in producer_config(settings).items() if k not in ("bootstrap_servers", "sasl_plain_password")
    }
    log(
        f"  kafka: raw acks=1 {base * 1e3:.2f} ms, "
        f"publisher config {result['raw_publisher_config']['median'] * 1e3:.2f} ms, "
        f"publisher {result['publisher']['median'] * 1e3:.2f} ms"
    )
    return result


def bench_fanout(settings: Settings, plan: Plan, log: Callable[[str], None]) -> dict[str, Any]:
    """4. Publish -> bridge -> visible in dashboard:stream, vs a bare XADD -> XREAD round trip."""
    client = redis_from_settings(settings)
    publisher = KafkaEventPublisher(settings)
    fanout: list[float] = []
    acked: list[float] = []
    redis_rt: list[float] = []
    bench_last = "0-0"
    try:
        for i in range(plan.fanout_events + 3):
            last = client.xrevrange(S_DASHBOARD, count=1)
            last_id = last[0][0] if last else "0-0"
            event = make_event("job_progress", f"bench-fanout-{i}", "benchmark", progress=0.5, message="fan-out")
            started = time.perf_counter()
            publisher.publish(event)
            ack = time.perf_counter() - started
            seen = None
            while seen is None and time.perf_counter() - started < 30:
                for _stream, entries in client.xread({S_DASHBOARD: last_id}, block=1000, count=100) or []:
                    for entry_id, fields in entries:
                        last_id = entry_id
                        if fields.get("id") == event.id:
                            seen = time.perf_counter() - started
            if seen is None:
                raise TimeoutError("the bridge did not copy a benchmark event into dashboard:stream within 30 s")
            # Baseline: the Redis hop alone (append, then read it back as the watcher above does).
            rt_started = time.perf_counter()
            entry = client.xadd(BENCH_STREAM, {"i": str(i)}, maxlen=1000)
            client.xread({BENCH_STREAM: bench_last}, count=1, block=1000)
            rt = time.perf_counter() - rt_started
            bench_last = entry
            if i >= 3:  # first events: consumer group and connections warming up
                fanout.append(seen)
                acked.append(ack)
                redis_rt.append(rt)
            time.sleep(0.05)  # one event at a time: latency, not backlog
    finally:
        publisher.close()
        client.delete(BENCH_STREAM)
        client.close()
    result = {
        "baseline_redis_xadd_xread_s": summary(redis_rt),
        "publish_ack_s": summary(acked),
        "publish_to_dashboard_stream_s": summary(fanout),
    }
    result["ratio_median"] = ratio(statistics.median(fanout), statistics.median(redis_rt))
    log(
        f"  fan-out: p50 {result['publish_to_dashboard_stream_s']['median'] * 1e3:.1f} ms, "
        f"p90 {result['publish_to_dashboard_stream_s']['p90'] * 1e3:.1f} ms"
    )
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


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


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
        "## 1. Detection: platform end-to-end vs in-process `run_detection`",
        "",
        "| detector | rowsxcols | baseline in-process median (p90) | platform end-to-end median (p90) "
        "| server created→finished median | ratio (median) | overhead (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["detection"]:
        b, p, s = r["baseline_in_process_s"], r["platform_end_to_end_s"], r["platform_server_created_to_finished_s"]
        lines.append(
            f"| {r['detector']} | {r['rows']}x{r['columns']} | {ms(b['median'])} ({ms(b['p90'])}) | "
            f"{ms(p['median'])} ({ms(p['p90'])}) | {ms(s['median'])} | x{r['ratio_median']:.1f} | "
            f"+{ms(r['overhead_median_s'])} |"
        )
    t = results["throughput"]
    lines += [
        "",
        f"## 2. Throughput: {t['jobs']} concurrent jobs ({t['detector']}, {t['rows']}x{t['columns']})",
        "",
        f"Median of {len(t['rounds'])} rounds; each round runs the baseline, then submits all jobs from 8 threads "
        "and waits for the last to complete.",
        "",
        "| baseline: sequential in-process | platform: concurrent through workers | ratio | platform wall "
        "(of which submitting) |",
        "|---|---|---|---|",
        f"| {t['baseline_sequential_in_process_jobs_per_s']:.1f} jobs/s | {t['platform_concurrent_jobs_per_s']:.2f} "
        f"jobs/s | x{t['ratio']:.3f} | {t['platform_wall_s_median']:.1f} s "
        f"({t['platform_submit_all_s_median']:.1f} s) |",
    ]
    k = results["kafka_publish"]
    lines += [
        "",
        "## 3. Kafka publish, per event (`send().get()`, sequential)",
        "",
        "| variant | median | p90 | ratio to baseline (median) |",
        "|---|---|---|---|",
        f"| baseline: raw `KafkaProducer(acks=1)` | {ms(k['raw_acks1']['median'])} "
        f"| {ms(k['raw_acks1']['p90'])} | x1 |",
        "| raw producer, publisher's config but linger_ms=0 (acks=all, idempotent, gzip) "
        f"| {ms(k['raw_publisher_config_linger0']['median'])} | {ms(k['raw_publisher_config_linger0']['p90'])} "
        f"| x{k['ratio_raw_publisher_config_linger0_median']:.2f} |",
        "| raw producer, publisher's config (acks=all, idempotent, gzip, "
        f"linger_ms={k['producer_config']['linger_ms']}) | {ms(k['raw_publisher_config']['median'])} "
        f"| {ms(k['raw_publisher_config']['p90'])} | x{k['ratio_raw_publisher_config_median']:.2f} |",
        f"| `KafkaEventPublisher.publish` (+ envelope validation) | {ms(k['publisher']['median'])} "
        f"| {ms(k['publisher']['p90'])} | x{k['ratio_publisher_median']:.2f} |",
    ]
    f = results["fanout"]
    lines += [
        "",
        "## 4. Event fan-out: publish → bridge → `dashboard:stream`",
        "",
        "| measure | median | p90 | ratio to baseline (median) |",
        "|---|---|---|---|",
        f"| baseline: Redis XADD → XREAD round trip | {ms(f['baseline_redis_xadd_xread_s']['median'])} "
        f"| {ms(f['baseline_redis_xadd_xread_s']['p90'])} | x1 |",
        f"| publish acked by Kafka | {ms(f['publish_ack_s']['median'])} | {ms(f['publish_ack_s']['p90'])} | — |",
        f"| publish → visible in `dashboard:stream` | {ms(f['publish_to_dashboard_stream_s']['median'])} "
        f"| {ms(f['publish_to_dashboard_stream_s']['p90'])} | x{f['ratio_median']:.0f} |",
        "",
        "## 5. API accept latency: `POST /v1/jobs` JSON rows vs multipart CSV",
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
    ax.set_title("1. Detection latency: platform end-to-end vs in-process")
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
    ax.set_title(f"2. Throughput: {t['detector']}, {t['rows']}x{t['columns']} per job (x{t['ratio']:.3f})")
    save(fig, "throughput.png")

    k = results["kafka_publish"]
    fig, ax = plt.subplots(figsize=(9, 4.4))
    names = list(KAFKA_VARIANTS)
    ax.boxplot(
        [np.array(k[n]["samples"]) * 1e3 for n in names],
        tick_labels=["raw acks=1\n(baseline)", "publisher config,\nlinger_ms=0", "publisher config\n(acks=all, "
                     "idempotent,\ngzip, linger_ms=10)", "KafkaEventPublisher\n.publish"],
        showfliers=False,
    )  # fmt: skip
    for i, n in enumerate(names, start=1):
        ax.annotate(f"{k[n]['median'] * 1e3:.1f} ms", (i + 0.25, k[n]["median"] * 1e3), fontsize=9, va="center")
    ax.set_ylabel("ms per event (box: quartiles, whiskers 1.5 IQR)")
    ax.set_title("3. Kafka publish latency per event, send().get()")
    save(fig, "kafka_publish.png")

    f = results["fanout"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, name in (
        ("baseline_redis_xadd_xread_s", "Redis XADD→XREAD (baseline)"),
        ("publish_ack_s", "publish acked"),
        ("publish_to_dashboard_stream_s", "publish → dashboard:stream"),
    ):
        data = np.sort(np.array(f[key]["samples"]) * 1e3)
        ax.plot(data, np.arange(1, len(data) + 1) / len(data), marker=".", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("ms (log)")
    ax.set_ylabel("fraction of events ≤ x")
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.axhline(0.9, color="grey", lw=0.5)
    ax.set_title("4. Event fan-out latency (CDF)")
    ax.legend(loc="lower center")  # the gap between the Redis and the Kafka curves
    save(fig, "fanout.png")

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
    ax.set_title("5. POST /v1/jobs accept latency")
    ax.legend(loc="upper left")
    save(fig, "api_accept.png")
    return files


# -- main -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def local_system(log: Callable[[str], None]) -> Iterator[LocalSystem]:
    """A private local system in a temp dir; stopped and removed however the run ends (Ctrl-C too)."""
    state = Path(tempfile.mkdtemp(prefix="pynomaly-bench-"))
    libs = REPO / ".pynomaly" / "kafka-libs"  # the shared jar cache: no 100 MB download per run
    system = LocalSystem(
        state,
        libs_dir=libs if libs.is_dir() else state / "kafka-libs",
        settings_overrides={"log_level": "WARNING"},  # logging per task is not what we measure
    )
    try:
        with sigterm_as_interrupt():
            system.start(progress=lambda message: log(f"  {message}"))
            yield system
    finally:
        log("stopping the local system")
        system.stop()
        shutil.rmtree(state, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and jobs (~2-3 minutes)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    began = time.perf_counter()
    lock = threading.Lock()

    def log(message: str) -> None:
        with lock:
            print(f"[{time.perf_counter() - began:6.1f}s] {message}", flush=True)

    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "command": ".venv/bin/python benchmarks/run.py" + (" --quick" if args.quick else ""),
        "machine": machine_info(),
        "plan": plan.__dict__,
        "noise_note": (
            "Shared machine: absolute times move with other people's load (see loadavg). Each baseline is "
            "measured in this script, interleaved with what it is compared to; compare ratios, not times. "
            "The local system runs on the same CPUs as this script and as the in-process baseline, with one "
            "process per worker pool (worker_concurrency=1)."
        ),
    }
    log(f"starting a private local system ({results['mode']} mode)")
    with local_system(log) as system:
        assert system.settings is not None
        results["system_settings"] = {"worker_concurrency": system.settings.worker_concurrency}
        with PynomalyClient(system.api_url, system.api_key, timeout=120) as client:
            log("1/5 detection latency")
            results["detection"] = bench_detection(client, plan, log)
            log("2/5 throughput")
            results["throughput"] = bench_throughput(client, plan, log)
        log("3/5 Kafka publish")
        results["kafka_publish"] = bench_kafka(system.settings, plan, log)
        log("4/5 event fan-out")
        results["fanout"] = bench_fanout(system.settings, plan, log)
        log("5/5 API accept")
        results["api"] = bench_api(system, plan, log)
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["duration_s"] = time.perf_counter() - began
    args.out.mkdir(parents=True, exist_ok=True)
    results["plots"] = write_plots(results, args.out)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, args.out / "results.md")
    log(f"wrote {args.out}/results.json, results.md and {len(results['plots'])} plots")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        sys.exit(130)
