"""The issue's rows, each measured against its raw baseline in the same run (see benchmarks/README.md).

Every function takes the running :class:`LocalSystem` (or its settings), a plan and a logger, and
returns a JSON-able dict with the raw samples, the platform figure, the baseline figure and the
ratio.  ``run.py`` orders them, writes the results and draws the plots; ``soak.py`` reuses the
process and load helpers.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import shutil
import signal
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis

from pynomaly.api import API_KEY_HEADER
from pynomaly.config import Settings
from pynomaly.domain.detectors import run_detection
from pynomaly.localstack.system import LocalSystem, sigterm_as_interrupt
from pynomaly.messaging.events import EventEnvelope, make_event
from pynomaly.messaging.kafka_admin import connection_config
from pynomaly.messaging.kafka_events import producer_config
from pynomaly.messaging.outbox import Outbox, OutboxPublisher
from pynomaly.storage.redis_client import KEY_PREFIX, redis_from_settings
from pynomaly.topology import GROUP_BRIDGE, S_DASHBOARD, S_HEALTH, S_NOTIFICATIONS, T_JOB, TOPOLOGY

Log = Callable[[str], None]
REPO = Path(__file__).resolve().parent.parent
# Library versions recorded with every run (results.json, live_scoring.json).
MACHINE_VERSIONS = (
    "pynomaly", "pyod", "scikit-learn", "numpy", "celery", "kafka-python", "redis", "fastapi", "uvicorn", "websockets",
)  # fmt: skip
COLUMNS = [f"f{i}" for i in range(8)]
BENCH_QUEUE = "bench_raw_send_task"  # scratch Celery queue for the raw send_task baselines
BENCH_STREAM = "bench:raw_bridge"  # scratch stream for the raw bridge baseline
TINY_ROWS = [[float(i % 7), float((i * 3) % 11)] for i in range(20)]
TINY_BODY = json.dumps({"detector": "hbos", "rows": TINY_ROWS, "columns": ["a", "b"]}).encode()


@dataclass(frozen=True)
class RowPlan:
    """Sizes of the issue's rows; ``--quick`` shrinks them to keep the run at a few minutes."""

    submit_clients: tuple[int, ...]
    submit_requests: int  # per client level and variant
    submit_rounds: int
    publish_events: int
    publish_rounds: int
    bridge_events: int
    bridge_rounds: int
    ws_rate: int
    ws_seconds: float
    mixed_seconds: float
    big_rows: int
    big_detectors: tuple[str, ...]
    big_reps: int
    list_jobs: int
    list_reps: int


QUICK_ROWS = RowPlan(
    (1, 8, 32), 120, 3, 10_000, 2, 10_000, 2, 1_000, 5.0, 10.0, 100_000, ("iforest", "ecod"), 1, 20_000, 15
)
FULL_ROWS = RowPlan(
    (1, 8, 32), 800, 3, 50_000, 3, 50_000, 3, 1_000, 15.0, 30.0, 100_000, ("iforest", "ecod"), 3, 100_000, 40
)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def ratio(measured: float, baseline: float) -> float:
    return measured / baseline if baseline > 0 else float("nan")


# -- the system under test ------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in MACHINE_VERSIONS:
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


@contextlib.contextmanager
def local_system(log: Log, state: Path | None = None, **overrides: Any) -> Iterator[LocalSystem]:
    """A private local system in ``state`` (default: a new temp dir, removed after), logging at WARNING
    (a log line per task or anomaly is not what is measured); stopped by pid, through its supervisor,
    however the run ends (Ctrl-C and SIGTERM too).  ``overrides`` are settings."""
    own_state = state is None
    state = state or Path(tempfile.mkdtemp(prefix="pynomaly-bench-"))
    libs = REPO / ".pynomaly" / "kafka-libs"  # the shared jar cache: no 100 MB download per run
    system = LocalSystem(
        state,
        libs_dir=libs if libs.is_dir() else state / "kafka-libs",
        settings_overrides={"log_level": "WARNING", **overrides},
    )
    try:
        with sigterm_as_interrupt():
            system.start(progress=lambda message: log(f"  {message}"))
            yield system
    finally:
        log("stopping the local system")
        system.stop()
        if own_state:
            shutil.rmtree(state, ignore_errors=True)


# -- processes --------------------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            # Field 4 of /proc/<pid>/stat, after the parenthesised command (which may hold spaces).
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def process_tree(pid: int, tree: dict[int, list[int]] | None = None) -> list[int]:
    """``pid`` and its descendants (a Celery worker's pool children, a JVM's helpers)."""
    tree = tree if tree is not None else _children()
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(tree.get(current, []))
    return out


def system_processes(system: LocalSystem) -> dict[str, int]:
    """Component name -> pid of everything the local system started (Redis and Kafka included)."""
    procs: dict[str, int] = {}
    for name, service in (("redis", system.redis), ("kafka", system.kafka)):
        if service is not None and service.record is not None:
            procs[name] = service.record.pid
    for running in system.supervisor.running:
        procs[running.component.name] = running.record.pid
    return procs


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in kB; PSS splits shared pages between the processes sharing them, so PSS sums
    without counting a forked pool child's copy-on-write pages twice."""
    rss = pss = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads) and of its reaped children; 0 if gone.

    Reaped children count so that a pool child that exits between two readings still counts."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        # Fields 14-17 of /proc/<pid>/stat (utime, stime, cutime, cstime), after the command.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(f) for f in fields[11:15]) / CLOCK_TICKS
    return 0.0


def cpu_snapshot(system: LocalSystem) -> dict[str, float]:
    """CPU seconds so far of each component (with its descendants) and of this script (``benchmark``:
    its client threads and in-process baselines)."""
    tree = _children()
    out = {
        name: sum(cpu_seconds(member) for member in process_tree(pid, tree))
        for name, pid in system_processes(system).items()
    }
    own = os.times()
    out["benchmark"] = own.user + own.system
    return out


@contextlib.contextmanager
def cpu_used(system: LocalSystem) -> Iterator[dict[str, float]]:
    """Fills the yielded dict with the CPU seconds each component and this script spent in the block.

    The rows are CPU-bound on this machine: CPU per message, summed over every process, divided into
    the machine's cores is the highest rate the path could reach here, whatever its latency."""
    used: dict[str, float] = {}
    before = cpu_snapshot(system)
    yield used
    after = cpu_snapshot(system)
    used.update({name: max(0.0, after[name] - before.get(name, 0.0)) for name in after})


def cpu_summary(samples: list[dict[str, float]], messages: int) -> dict[str, Any]:
    """Total CPU of ``samples`` (one dict per measured repetition), per message, and by process."""
    by_process: dict[str, float] = {}
    for sample in samples:
        for name, seconds in sample.items():
            by_process[name] = by_process.get(name, 0.0) + seconds
    total = sum(by_process.values())
    return {
        "cpu_s": total,
        "messages": messages,
        "cpu_ms_per_message": total / messages * 1e3 if messages else float("nan"),
        "cpu_bound_ceiling_per_s": messages / total * (os.cpu_count() or 1) if total else float("nan"),
        "by_process_s": dict(sorted(by_process.items(), key=lambda kv: -kv[1])),
    }


def memory_snapshot(system: LocalSystem, client: redis.Redis) -> dict[str, Any]:
    """RSS and PSS per component (with its descendants), their totals, and Redis' used_memory."""
    tree = _children()
    components: dict[str, dict[str, float]] = {}
    for name, pid in system_processes(system).items():
        pids = process_tree(pid, tree)
        rss = pss = 0
        for member in pids:
            r, p = memory_kb(member)
            rss, pss = rss + r, pss + p
        components[name] = {"rss_mb": rss / 1024, "pss_mb": pss / 1024, "processes": len(pids)}
    info = client.info("memory")
    return {
        "components": components,
        "total_rss_mb": sum(c["rss_mb"] for c in components.values()),
        "total_pss_mb": sum(c["pss_mb"] for c in components.values()),
        "redis_used_memory_mb": int(info["used_memory"]) / 2**20,
    }


@contextlib.contextmanager
def paused(system: LocalSystem, names: list[str], log: Log) -> Iterator[None]:
    """SIGSTOP the named components (with their children) for the block, then SIGCONT them.

    Used to measure a path alone: the submit path without the workers consuming what it enqueues,
    the raw bridge baseline while the platform's bridge waits for its turn.
    """
    procs = system_processes(system)
    tree = _children()
    pids = [pid for name in names for pid in process_tree(procs[name], tree)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    log(f"  paused {', '.join(names)} ({len(pids)} processes)")
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def worker_names(system: LocalSystem) -> list[str]:
    return [name for name in system_processes(system) if name.startswith("worker-")]


def celery_depth(client: redis.Redis) -> int:
    """Messages waiting in every Celery queue of the topology (all priority lists)."""
    keys = [k for q in TOPOLOGY.queues for k in client.scan_iter(match=f"{q.name}*", count=1000)]
    return sum(int(client.llen(k)) for k in keys if client.type(k) == "list")


def bridge_lag(settings: Settings) -> int:
    """Records the bridge group has not committed yet, over its topics' partitions."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    group = next(g for g in TOPOLOGY.consumer_groups if g.name == GROUP_BRIDGE)
    # Not subscribed: it only reads the group's committed offsets, it never joins the group.
    consumer = KafkaConsumer(**connection_config(settings), group_id=GROUP_BRIDGE, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(t, p) for t in group.topics for p in consumer.partitions_for_topic(t) or ()]
        ends = consumer.end_offsets(partitions)
        return int(sum(max(0, ends[tp] - (consumer.committed(tp) or 0)) for tp in partitions))
    finally:
        consumer.close()


def wait_quiet(client: redis.Redis, log: Log, settings: Settings | None = None, timeout: float = 600.0) -> None:
    """Until the Celery queues and the outbox are empty and the bridge has caught up (with
    ``settings``): the next row starts on an idle system, not behind the last one's backlog."""
    outbox = Outbox(client, 10**9)
    deadline = time.monotonic() + timeout
    lag = 0
    while time.monotonic() < deadline:
        if celery_depth(client) == 0 and outbox.depth() == 0:
            lag = bridge_lag(settings) if settings is not None else 0
            if lag == 0:
                return
        time.sleep(0.25)
    log(
        f"  warning: still busy after {timeout:.0f} s "
        f"(queues {celery_depth(client)}, outbox {outbox.depth()}, bridge lag {lag})"
    )


def _wait_added(client: redis.Redis, stream: str, total: int, timeout: float = 300.0) -> None:
    """Until ``stream`` has had ``total`` entries added since it was created."""
    deadline = time.monotonic() + timeout
    while stream_added(client, stream) < total:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{stream} has {stream_added(client, stream)} of {total} entries")
        time.sleep(0.02)


def stream_added(client: redis.Redis, stream: str) -> int:
    """Entries ever appended to ``stream`` (XINFO's entries-added, unaffected by MAXLEN trimming)."""
    try:
        return int(client.xinfo_stream(stream)["entries-added"])
    except redis.ResponseError:
        return 0


def kafka_end_offsets(settings: Settings, topics: list[str]) -> int:
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(**connection_config(settings))
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        return int(sum(consumer.end_offsets(partitions).values()))
    finally:
        consumer.close()


# -- row 1: submit ----------------------------------------------------------------------------------


def _clients_run(clients: int, total: int, call: Callable[[int], None]) -> tuple[float, list[float]]:
    """``total`` calls spread over ``clients`` threads; (wall seconds, per-call latencies)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        barrier.wait()
        for _ in range(index, total, clients):
            started = time.perf_counter()
            call(index)
            latencies[index].append(time.perf_counter() - started)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, [x for chunk in latencies for x in chunk]


def bench_submit(system: LocalSystem, plan: RowPlan, log: Log, tuned: dict[str, Any] | None = None) -> dict[str, Any]:
    """Row 1: ``POST /v1/jobs`` (tiny job) vs raw ``send_task``, at 1, 8 and 32 clients.

    The workers are paused meanwhile: the raw messages go to a scratch queue nobody consumes, so the
    platform's jobs must not be consumed either (that is row 2).  Accepted jobs are cancelled after.
    ``tuned`` (Celery settings) adds a variant: the project's config with those changes.
    """
    from celery import Celery

    from pynomaly.messaging.celery_app import celery_config

    settings = system.settings
    assert settings is not None
    client = redis_from_settings(settings)
    defaults = Celery("bench-defaults", broker=settings.redis_url)
    project = Celery("bench-project")
    project.conf.update(celery_config(settings))
    apps = {"celery_defaults": defaults, "celery_project_config": project}
    if tuned:
        candidate = Celery("bench-tuned")
        candidate.conf.update({**celery_config(settings), **tuned})
        apps["celery_alternative"] = candidate
    http = [
        httpx.Client(base_url=system.api_url, headers={API_KEY_HEADER: system.api_key}, timeout=120)
        for _ in range(max(plan.submit_clients))
    ]
    accepted: list[str] = []
    lock = threading.Lock()

    def post(index: int) -> None:
        response = http[index].post("/v1/jobs", content=TINY_BODY, headers={"content-type": "application/json"})
        if response.status_code != 202:
            raise RuntimeError(f"POST /v1/jobs answered {response.status_code}: {response.text[:300]}")
        with lock:
            accepted.append(response.json()["id"])

    def sender(app: Celery, as_the_api: bool) -> Callable[[int], None]:
        # The project's variant sends as messaging/service.py does: with ignore_result.
        extra = {"ignore_result": True} if as_the_api else {}

        def send(_: int) -> None:
            app.send_task(
                "pynomaly.bench.noop",
                args=(uuid.uuid4().hex,),
                kwargs={"run_token": uuid.uuid4().hex},
                queue=BENCH_QUEUE,
                priority=6,
                **extra,
            )

        return send

    variants: dict[str, Callable[[int], None]] = {"platform": post}
    variants |= {n: sender(a, n == "celery_project_config") for n, a in apps.items()}
    levels: list[dict[str, Any]] = []
    try:
        for name in variants:  # warm-up: connections, the API's code paths
            _clients_run(2, 10, variants[name])
        with paused(system, worker_names(system), log):
            for clients in plan.submit_clients:
                samples: dict[str, list[dict[str, float]]] = {n: [] for n in variants}
                latencies: dict[str, list[float]] = {n: [] for n in variants}
                cpu: dict[str, list[dict[str, float]]] = {n: [] for n in variants}
                names = list(variants)
                for r in range(plan.submit_rounds):
                    for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate who goes first
                        with cpu_used(system) as used:
                            wall, lat = _clients_run(clients, plan.submit_requests, variants[name])
                        samples[name].append({"per_s": plan.submit_requests / wall, "wall_s": wall})
                        latencies[name].extend(lat)
                        cpu[name].append(used)
                level: dict[str, Any] = {"clients": clients, "requests": plan.submit_requests}
                for name in variants:
                    level[name] = {
                        "per_s": statistics.median(s["per_s"] for s in samples[name]),
                        "p50_s": pct(latencies[name], 50),
                        "p99_s": pct(latencies[name], 99),
                        "rounds": samples[name],
                        "cpu": cpu_summary(cpu[name], plan.submit_requests * plan.submit_rounds),
                    }
                level["ratio_vs_defaults"] = ratio(level["platform"]["per_s"], level["celery_defaults"]["per_s"])
                log(
                    f"  submit {clients:>2} clients: platform {level['platform']['per_s']:.0f}/s "
                    f"(p99 {level['platform']['p99_s'] * 1e3:.0f} ms), send_task defaults "
                    f"{level['celery_defaults']['per_s']:.0f}/s, project config "
                    f"{level['celery_project_config']['per_s']:.0f}/s"
                    + (
                        f", alternative {level['celery_alternative']['per_s']:.0f}/s"
                        if "celery_alternative" in level
                        else ""
                    )
                )
                levels.append(level)
    finally:
        # Cancel what was accepted (the workers then skip it), and drop the scratch queue.
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: http[i % len(http)].delete(f"/v1/jobs/{accepted[i]}"), range(len(accepted))))
        for key in client.scan_iter(match=f"*{BENCH_QUEUE}*"):
            client.delete(key)
        for h in http:
            h.close()
        for app in apps.values():
            app.close()
        wait_quiet(client, log, settings)
        client.close()
    eight = next((lv for lv in levels if lv["clients"] == 8), levels[-1])
    return {"levels": levels, "alternative_settings": {k: str(v) for k, v in (tuned or {}).items()}, "eight": eight}


# -- row 3: event publish ---------------------------------------------------------------------------


def _events(count: int, tag: str) -> list[EventEnvelope]:
    return [
        make_event("job_progress", f"bench-{tag}-{i}", "benchmark", progress=0.5, message="bench") for i in range(count)
    ]


def bench_publish(system: LocalSystem, plan: RowPlan, log: Log) -> dict[str, Any]:
    """Row 3: N events through the platform's publish (outbox write, relayed to Kafka with acks) vs
    kafka-python with the relay's settings (send all, flush).  Rates end at the acknowledgement; the
    CPU of each side is counted until the bridge has copied its events (both sides' downstream)."""
    from kafka import KafkaProducer

    settings = system.settings
    assert settings is not None
    client = redis_from_settings(settings)
    outbox = Outbox(client, settings.outbox_max_events)
    publisher = OutboxPublisher(outbox)
    raw = KafkaProducer(**producer_config(settings))
    rounds: list[dict[str, float]] = []
    cpu: dict[str, list[dict[str, float]]] = {"baseline": [], "platform": []}
    try:
        for r in range(plan.publish_rounds):
            order = ["baseline", "platform"] if r % 2 == 0 else ["platform", "baseline"]
            row: dict[str, float] = {}
            for side in order:
                events = _events(plan.publish_events, f"pub{r}{side}")
                bridged = stream_added(client, S_DASHBOARD)
                with cpu_used(system) as used:
                    started = time.perf_counter()
                    if side == "baseline":
                        for e in events:
                            raw.send(e.topic, key=e.subject.encode(), value=e.encode())
                        raw.flush(timeout=120)
                        row["baseline_per_s"] = len(events) / (time.perf_counter() - started)
                    else:
                        for e in events:
                            publisher.publish(e)
                        row["platform_written_per_s"] = len(events) / (time.perf_counter() - started)
                        # Published = acknowledged by Kafka and removed from the outbox by the relay.
                        deadline = time.monotonic() + 600
                        while outbox.depth() and time.monotonic() < deadline:
                            time.sleep(0.01)
                        row["platform_per_s"] = len(events) / (time.perf_counter() - started)
                    # The bridge copies both sides' events (job_events) into the dashboard stream: the
                    # CPU window ends when it has, so each side pays for its own downstream work.
                    _wait_added(client, S_DASHBOARD, bridged + len(events))
                cpu[side].append(used)
            rounds.append(row)
    finally:
        raw.close(timeout=10)
        client.close()
    platform = statistics.median(r["platform_per_s"] for r in rounds)
    baseline = statistics.median(r["baseline_per_s"] for r in rounds)
    result = {
        "events": plan.publish_events,
        "rounds": rounds,
        "platform_per_s": platform,
        "platform_written_per_s": statistics.median(r["platform_written_per_s"] for r in rounds),
        "baseline_per_s": baseline,
        "ratio": ratio(platform, baseline),
        "cpu": {side: cpu_summary(cpu[side], plan.publish_events * len(cpu[side])) for side in cpu},
    }
    log(f"  publish: platform {platform:.0f} ev/s (outbox writes {result['platform_written_per_s']:.0f}/s), "
        f"kafka-python {baseline:.0f} ev/s")  # fmt: skip
    return result


# -- row 4: bridge ----------------------------------------------------------------------------------


def _preload(settings: Settings, count: int, tag: str) -> dict[Any, tuple[int, int]]:
    """Publish ``count`` job events straight to Kafka; returns partition -> (start, end) offsets."""
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.structs import TopicPartition

    probe = KafkaConsumer(**connection_config(settings))
    partitions = [TopicPartition(T_JOB, p) for p in probe.partitions_for_topic(T_JOB) or ()]
    before = probe.end_offsets(partitions)
    producer = KafkaProducer(**producer_config(settings))
    for e in _events(count, tag):
        producer.send(e.topic, key=e.subject.encode(), value=e.encode())
    producer.flush(timeout=120)
    producer.close(timeout=10)
    after = probe.end_offsets(partitions)
    probe.close()
    return {tp: (before[tp], after[tp]) for tp in partitions}


def _raw_bridge(settings: Settings, client: redis.Redis, ranges: dict[Any, tuple[int, int]]) -> float:
    """kafka-python consumer (the bridge's poll size) + one pipelined XADD per poll; events/s from
    the first batch written to the last."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(**connection_config(settings), enable_auto_commit=False, max_poll_records=200)
    consumer.assign(list(ranges))
    for tp, (start, _) in ranges.items():
        consumer.seek(tp, start)
    remaining = sum(end - start for start, end in ranges.values())
    total = remaining
    first: float | None = None
    first_count = 0
    try:
        deadline = time.monotonic() + 300
        while remaining > 0 and time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500)
            pipe = client.pipeline(transaction=False)
            count = 0
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= ranges[tp][1]:
                        continue
                    fields = json.loads(record.value)
                    fields["data"] = json.dumps(fields["data"], separators=(",", ":"))
                    pipe.xadd(BENCH_STREAM, {k: str(v) for k, v in fields.items()}, maxlen=1000, approximate=True)
                    count += 1
            if count:
                pipe.execute()
                remaining -= count
                if first is None:
                    first, first_count = time.perf_counter(), count
        return (total - first_count) / (time.perf_counter() - first) if first else float("nan")
    finally:
        consumer.close()
        client.delete(BENCH_STREAM)


def bench_bridge(system: LocalSystem, plan: RowPlan, log: Log) -> dict[str, Any]:
    """Row 4: the bridge copying a backlog of N job events into ``dashboard:stream`` vs a raw consumer
    with pipelined XADD on the same N records.  The bridge is paused while the backlog is written
    and the raw consumer reads it, then resumed; its rate is read from the stream's entries-added."""
    settings = system.settings
    assert settings is not None
    client = redis_from_settings(settings)
    rounds: list[dict[str, float]] = []
    cpu: dict[str, list[dict[str, float]]] = {"baseline": [], "platform": []}
    events = 0
    try:
        for r in range(plan.bridge_rounds):
            with paused(system, ["consumer-bridge"], log):
                ranges = _preload(settings, plan.bridge_events, f"bridge{r}")
                count = sum(end - start for start, end in ranges.values())
                with cpu_used(system) as used:
                    baseline = _raw_bridge(settings, client, ranges)
                cpu["baseline"].append(used)
                base = stream_added(client, S_DASHBOARD)
            # Resumed: sample entries-added until the whole backlog is in the stream.
            points: list[tuple[float, int]] = []
            deadline = time.monotonic() + 600
            with cpu_used(system) as used:
                while time.monotonic() < deadline:
                    added = stream_added(client, S_DASHBOARD) - base
                    if added > 0:
                        points.append((time.perf_counter(), added))
                    if added >= count:
                        break
                    time.sleep(0.01)
            cpu["platform"].append(used)
            events += count
            if len(points) < 2 or points[-1][1] < count:
                raise TimeoutError(f"the bridge copied {points[-1][1] if points else 0} of {count} events")
            (t0, n0), (t1, n1) = points[0], points[-1]
            platform = (n1 - n0) / (t1 - t0)
            rounds.append({"events": count, "platform_per_s": platform, "baseline_per_s": baseline})
            log(f"  bridge: platform {platform:.0f} ev/s, raw consumer + pipelined XADD {baseline:.0f} ev/s")
    finally:
        client.close()
    platform = statistics.median(r["platform_per_s"] for r in rounds)
    baseline = statistics.median(r["baseline_per_s"] for r in rounds)
    return {
        "rounds": rounds,
        "platform_per_s": platform,
        "baseline_per_s": baseline,
        "ratio": ratio(platform, baseline),
        "cpu": {side: cpu_summary(cpu[side], events) for side in cpu},
    }


# -- row 5: publish -> WebSocket --------------------------------------------------------------------


def _paced(rate: int, seconds: float, send: Callable[[int], None]) -> dict[int, float]:
    """Call ``send(i)`` at ``rate`` per second; returns i -> the time it was sent."""
    sent: dict[int, float] = {}
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent[i] = time.perf_counter()
        send(i)
    return sent


def bench_websocket(system: LocalSystem, plan: RowPlan, log: Log) -> dict[str, Any]:
    """Row 5: publish → WebSocket client at ``ws_rate`` events/s (outbox → relay → Kafka → bridge →
    stream → API → client) vs a raw Kafka producer → consumer at the same rate."""
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.structs import TopicPartition
    from websockets.sync.client import connect

    settings = system.settings
    assert settings is not None
    client = redis_from_settings(settings)
    publisher = OutboxPublisher(Outbox(client, settings.outbox_max_events))

    # Platform.
    events = _events(int(plan.ws_rate * plan.ws_seconds), f"ws-{uuid.uuid4().hex[:6]}")
    wanted = {e.id: i for i, e in enumerate(events)}
    received: dict[int, float] = {}
    ws_url = system.api_url.replace("http://", "ws://") + "/v1/stream"
    ready = threading.Event()
    stop = threading.Event()

    def listen() -> None:
        with connect(ws_url, max_size=2**22) as ws:
            ws.send(json.dumps({"api_key": system.api_key}))
            ready.set()
            while not stop.is_set() and len(received) < len(wanted):
                with contextlib.suppress(TimeoutError):
                    message = json.loads(ws.recv(timeout=1.0))
                    index = wanted.get(message.get("event_id", ""))
                    if index is not None:
                        received[index] = time.perf_counter()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    ready.wait(30)
    time.sleep(0.5)  # the hello and the pinned cursor
    sent = _paced(plan.ws_rate, plan.ws_seconds, lambda i: publisher.publish(events[i]))
    deadline = time.monotonic() + 120
    while len(received) < len(wanted) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    listener.join(10)
    platform = [received[i] - sent[i] for i in received]
    missing = len(wanted) - len(received)

    # Baseline: raw producer -> raw consumer, same rate, on the job topic.
    producer = KafkaProducer(**connection_config(settings))
    consumer = KafkaConsumer(**connection_config(settings), enable_auto_commit=False)
    partitions = [TopicPartition(T_JOB, p) for p in consumer.partitions_for_topic(T_JOB) or ()]
    consumer.assign(partitions)
    consumer.seek_to_end()
    for tp in partitions:
        consumer.position(tp)
    raw_events = _events(len(events), f"wsraw-{uuid.uuid4().hex[:6]}")
    raw_wanted = {e.id.encode(): i for i, e in enumerate(raw_events)}
    raw_received: dict[int, float] = {}

    def consume() -> None:
        deadline = time.monotonic() + plan.ws_seconds + 60
        while len(raw_received) < len(raw_wanted) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                now = time.perf_counter()
                for record in records:
                    index = raw_wanted.get(json.loads(record.value).get("id", "").encode())
                    if index is not None:
                        raw_received[index] = now

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    encoded = [(e.subject.encode(), e.encode()) for e in raw_events]
    raw_sent = _paced(
        plan.ws_rate, plan.ws_seconds, lambda i: producer.send(T_JOB, key=encoded[i][0], value=encoded[i][1])
    )
    reader.join(plan.ws_seconds + 90)
    producer.close(timeout=10)
    consumer.close()
    client.close()
    baseline = [raw_received[i] - raw_sent[i] for i in raw_received]
    result: dict[str, Any] = {
        "rate_per_s": plan.ws_rate,
        "seconds": plan.ws_seconds,
        "events": len(events),
        "platform_missing": missing,
        "platform_p50_s": pct(platform, 50),
        "platform_p99_s": pct(platform, 99),
        "baseline_p50_s": pct(baseline, 50),
        "baseline_p99_s": pct(baseline, 99),
        "platform_samples": platform,
        "baseline_samples": baseline,
    }
    result["ratio_p99"] = ratio(result["platform_p99_s"], result["baseline_p99_s"])
    log(
        f"  websocket at {plan.ws_rate}/s: platform p50 {result['platform_p50_s'] * 1e3:.0f} ms p99 "
        f"{result['platform_p99_s'] * 1e3:.0f} ms ({missing} missing); raw p50 {result['baseline_p50_s'] * 1e3:.1f} "
        f"ms p99 {result['baseline_p99_s'] * 1e3:.1f} ms"
    )
    return result


# -- row 6: aggregate -------------------------------------------------------------------------------


def bench_mixed(system: LocalSystem, plan: RowPlan, log: Log) -> dict[str, Any]:
    """Row 6: messages per second over a mixed load: 8 clients submitting tiny jobs and 2 threads
    publishing events through the outbox (as workers do), for ``mixed_seconds``.

    Messages = Kafka records appended (every topic but the DLQs) + Redis stream entries appended
    (dashboard, notifications, health) + Celery task messages (each submit's first step, plus the
    detect step of each job finished in the window).
    """
    settings = system.settings
    assert settings is not None
    client = redis_from_settings(settings)
    topics = [t.name for t in TOPOLOGY.topics]
    streams = [S_DASHBOARD, S_NOTIFICATIONS, S_HEALTH]
    stop = threading.Event()
    submitted: list[str] = []
    lock = threading.Lock()

    def submitter() -> None:
        with httpx.Client(base_url=system.api_url, headers={API_KEY_HEADER: system.api_key}, timeout=120) as http:
            while not stop.is_set():
                response = http.post("/v1/jobs", content=TINY_BODY, headers={"content-type": "application/json"})
                if response.status_code == 202:
                    with lock:
                        submitted.append(response.json()["id"])

    def publisher_loop(tag: str) -> None:
        publisher = OutboxPublisher(Outbox(redis_from_settings(settings), settings.outbox_max_events))
        i = 0
        while not stop.is_set():
            publisher.publish(make_event("job_progress", f"bench-mixed-{tag}-{i}", "benchmark", progress=0.5))
            i += 1

    kafka0 = kafka_end_offsets(settings, topics)
    streams0 = {s: stream_added(client, s) for s in streams}
    threads = [threading.Thread(target=submitter) for _ in range(8)]
    threads += [threading.Thread(target=publisher_loop, args=(str(i),)) for i in range(2)]
    started = time.perf_counter()
    started_wall = time.time()
    with cpu_used(system) as used:
        for thread in threads:
            thread.start()
        time.sleep(plan.mixed_seconds)
        kafka1 = kafka_end_offsets(settings, topics)
        streams1 = {s: stream_added(client, s) for s in streams}
        window = time.perf_counter() - started
    ended_wall = time.time()
    stop.set()
    for thread in threads:
        thread.join()
    finished = 0
    with httpx.Client(base_url=system.api_url, headers={API_KEY_HEADER: system.api_key}, timeout=120) as http:
        for job_id in submitted:
            job = http.get(f"/v1/jobs/{job_id}").json()
            stamp = job.get("finished_at")
            if job.get("status") == "completed" and stamp:
                if datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() <= ended_wall:
                    finished += 1
            elif job.get("status") in ("queued", "running", "retrying"):
                http.delete(f"/v1/jobs/{job_id}")  # the backlog is not the next row's load
    wait_quiet(client, log, settings)
    client.close()
    kafka_msgs = kafka1 - kafka0
    stream_msgs = sum(streams1[s] - streams0[s] for s in streams)
    celery_msgs = len(submitted) + finished
    total = kafka_msgs + stream_msgs + celery_msgs
    result = {
        "seconds": window,
        "started": started_wall,
        "jobs_submitted": len(submitted),
        "jobs_completed_in_window": finished,
        "kafka_records": kafka_msgs,
        "stream_entries": stream_msgs,
        "celery_messages": celery_msgs,
        "messages": total,
        "msg_per_s": total / window,
        "adr_target_per_s": 10_000,
        "issue_target_per_s": 20_000,
        "cpu": cpu_summary([used], total),
    }
    result["ratio_to_adr_target"] = result["msg_per_s"] / 10_000
    log(
        f"  mixed load {window:.0f} s: {result['msg_per_s']:.0f} msg/s (Kafka {kafka_msgs}, streams {stream_msgs}, "
        f"Celery {celery_msgs}; {len(submitted)} jobs)"
    )
    return result


# -- row 7: large job -------------------------------------------------------------------------------


def _csv(values: np.ndarray) -> bytes:
    buffer = io.StringIO()
    buffer.write(",".join(COLUMNS) + "\n")
    np.savetxt(buffer, values, delimiter=",", fmt="%.5f")
    return buffer.getvalue().encode()


class HealthProbe:
    """GET /healthz in a loop on its own connection; the longest answer in a window is the stall."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._stop = threading.Event()
        self.samples: list[tuple[float, float]] = []  # (start, seconds)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=60) as http:
            while not self._stop.is_set():
                started = time.perf_counter()
                http.get(f"{self._url}/healthz")
                self.samples.append((started, time.perf_counter() - started))
                time.sleep(0.01)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(70)

    def worst(self, since: float, until: float) -> float:
        return max((s for t, s in self.samples if since <= t <= until), default=float("nan"))


def bench_big_job(system: LocalSystem, plan: RowPlan, log: Log) -> dict[str, Any]:
    """Row 7: a 100kx8 CSV job, iforest and ecod, vs ``run_detection`` in-process; and the longest
    ``/healthz`` answer while it is submitted and runs (baseline: the longest at rest)."""
    values = np.round(np.random.default_rng(100).normal(size=(plan.big_rows, len(COLUMNS))), 5)
    body = _csv(values)
    out: dict[str, Any] = {"rows": plan.big_rows, "columns": len(COLUMNS), "csv_bytes": len(body), "detectors": []}
    with (
        httpx.Client(base_url=system.api_url, headers={API_KEY_HEADER: system.api_key}, timeout=600) as http,
        HealthProbe(system.api_url) as probe,
    ):
        time.sleep(3)
        out["healthz_at_rest_max_s"] = probe.worst(0, time.perf_counter())
        out["healthz_at_rest_p50_s"] = pct([s for _, s in probe.samples], 50)
        for detector in plan.big_detectors:
            local: list[float] = []
            platform: list[float] = []
            stalls: list[float] = []
            cpu: dict[str, list[dict[str, float]]] = {"baseline": [], "platform": []}
            for _ in range(plan.big_reps):
                with cpu_used(system) as used:
                    started = time.perf_counter()
                    run_detection(values, COLUMNS, detector, None, 0.1)
                    local.append(time.perf_counter() - started)
                cpu["baseline"].append(used)
                with cpu_used(system) as used:
                    started = time.perf_counter()
                    response = http.post(
                        "/v1/jobs",
                        data={"detector": detector, "contamination": "0.1"},
                        files={"file": ("big.csv", body, "text/csv")},
                    )
                    if response.status_code != 202:
                        raise RuntimeError(f"POST /v1/jobs answered {response.status_code}: {response.text[:300]}")
                    job_id = response.json()["id"]
                    while True:
                        job = http.get(f"/v1/jobs/{job_id}").json()
                        if job["status"] in ("completed", "failed", "cancelled"):
                            break
                        time.sleep(0.05)
                cpu["platform"].append(used)
                if job["status"] != "completed":
                    raise RuntimeError(f"large {detector} job ended {job['status']}: {job.get('error')}")
                ended = time.perf_counter()
                platform.append(ended - started)
                stalls.append(probe.worst(started, ended))
                http.delete(f"/v1/jobs/{job_id}", params={"purge": "true"})
            row = {
                "detector": detector,
                "baseline_in_process_s": statistics.median(local),
                "platform_end_to_end_s": statistics.median(platform),
                "healthz_worst_s": max(stalls),
                "samples": {"local": local, "platform": platform, "stalls": stalls},
                "cpu": {side: cpu_summary(cpu[side], len(cpu[side])) for side in cpu},
            }
            row["ratio"] = ratio(row["platform_end_to_end_s"], row["baseline_in_process_s"])
            log(
                f"  100kx8 {detector}: in-process {row['baseline_in_process_s']:.2f} s, platform "
                f"{row['platform_end_to_end_s']:.2f} s (x{row['ratio']:.2f}); /healthz worst "
                f"{row['healthz_worst_s'] * 1e3:.0f} ms (at rest {out['healthz_at_rest_max_s'] * 1e3:.0f} ms)"
            )
            out["detectors"].append(row)
    return out


# -- row 8: listing ---------------------------------------------------------------------------------


def seed_jobs(client: redis.Redis, template: dict[str, Any], ids: list[str], ttl: int) -> None:
    """Copies of ``template`` under ``ids``, written and indexed as the job store writes them."""
    from pynomaly.storage import jobs as store

    index = getattr(store, "index_job", None)  # the per-status indexes, where the store has them
    now = time.time()
    for start in range(0, len(ids), 2000):
        pipe = client.pipeline(transaction=False)
        for offset, job_id in enumerate(ids[start : start + 2000]):
            score = now - (start + offset) * 1e-3
            pipe.set(f"{KEY_PREFIX}job:{job_id}", json.dumps({**template, "id": job_id}), ex=ttl)
            if index is not None:
                index(pipe, job_id, template["status"], score)
            else:
                pipe.zadd(store.JOB_INDEX, {job_id: score})
        pipe.execute()


def unseed_jobs(client: redis.Redis, ids: list[str]) -> None:
    from pynomaly.domain.jobs import JobStatus
    from pynomaly.storage import jobs as store

    indexes = [store.JOB_INDEX]
    if hasattr(store, "status_index"):
        indexes += [store.status_index(s.value) for s in JobStatus]
    for start in range(0, len(ids), 2000):
        chunk = ids[start : start + 2000]
        pipe = client.pipeline(transaction=False)
        pipe.delete(*(f"{KEY_PREFIX}job:{job_id}" for job_id in chunk))
        for index in indexes:
            pipe.zrem(index, *chunk)
        pipe.execute()


def bench_list(system: LocalSystem, plan: RowPlan, log: Log) -> dict[str, Any]:
    """Row 8: ``GET /v1/jobs`` (first page) with ``list_jobs`` jobs stored vs ``GET /v1/jobs/{id}``.

    The jobs are copies of one finished job written straight into Redis (as the store writes them,
    through ``seed_jobs``), then removed; filters that still scan (detector) are measured too.
    """
    settings = system.settings
    assert settings is not None
    client = redis_from_settings(settings)
    with httpx.Client(base_url=system.api_url, headers={API_KEY_HEADER: system.api_key}, timeout=600) as http:
        response = http.post("/v1/jobs", content=TINY_BODY, headers={"content-type": "application/json"})
        template_id = response.json()["id"]
        deadline = time.monotonic() + 120
        while http.get(f"/v1/jobs/{template_id}").json()["status"] != "completed" and time.monotonic() < deadline:
            time.sleep(0.1)
        template = json.loads(client.get(f"{KEY_PREFIX}job:{template_id}"))
        seeded = [f"bench{i:07d}{uuid.uuid4().hex[:8]}" for i in range(plan.list_jobs)]
        started = time.perf_counter()
        seed_jobs(client, template, seeded, settings.result_ttl_seconds)
        log(f"  seeded {len(seeded)} jobs in {time.perf_counter() - started:.1f} s")
        queries = {
            "get_one": f"/v1/jobs/{template_id}",
            "list_first_page": "/v1/jobs?limit=50",
            "list_status_completed": "/v1/jobs?status=completed&limit=50",
            "list_deep_page": f"/v1/jobs?offset={plan.list_jobs // 2}&limit=50",
            "list_detector_filter_scan": "/v1/jobs?detector=hbos&limit=50",
        }
        timings: dict[str, list[float]] = {name: [] for name in queries}
        totals: dict[str, int] = {}
        try:
            for rep in range(plan.list_reps + 1):
                for name, path in queries.items():
                    t0 = time.perf_counter()
                    answer = http.get(path)
                    elapsed = time.perf_counter() - t0
                    if answer.status_code != 200:
                        raise RuntimeError(f"GET {path} answered {answer.status_code}: {answer.text[:200]}")
                    if rep:
                        timings[name].append(elapsed)
                    if name.startswith("list"):
                        totals[name] = int(answer.json()["total"])
        finally:
            unseed_jobs(client, seeded)
            http.delete(f"/v1/jobs/{template_id}", params={"purge": "true"})
            client.close()
    med = {name: statistics.median(values) for name, values in timings.items()}
    result = {
        "jobs": plan.list_jobs,
        "median_s": med,
        "p90_s": {name: pct(values, 90) for name, values in timings.items()},
        "totals": totals,
        "samples": timings,
        "ratio": ratio(med["list_first_page"], med["get_one"]),
    }
    log(
        f"  list at {plan.list_jobs} jobs: first page {med['list_first_page'] * 1e3:.1f} ms, status filter "
        f"{med['list_status_completed'] * 1e3:.1f} ms, detector filter (scan) "
        f"{med['list_detector_filter_scan'] * 1e3:.0f} ms; one job {med['get_one'] * 1e3:.1f} ms"
    )
    return result
