"""Live scoring benchmarks (issue 12): latency, scorer throughput and stored-model file scoring.

Starts its own local system (real redis-server, real Kafka JVM, API, workers, consumers including the
``scorer`` pool) in a temporary state directory, trains an iforest model on the bundled sensors.csv,
binds it to ``measurements`` and measures, each against a baseline in the same run:

1. record -> ``anomaly_events`` and record -> WebSocket ``/v1/stream`` latency at a steady rate with
   planted anomalies, vs a raw Kafka producer -> raw consumer on a scratch topic at the same rate;
2. records/s through the one scorer process draining a pre-filled topic, vs the stored model's
   ``score`` in this process on batches of the scorer's poll size;
3. a 100k-row CSV scored with the stored model (a ``mode: score`` job) vs fit-and-score (a detection
   job) on the same file, both end to end through the API.

Writes ``live_scoring.json`` and ``live_scoring.md``.  See benchmarks/README.md.

    .venv/bin/python benchmarks/live_scoring.py --quick    # ~1.5 minutes
    .venv/bin/python benchmarks/live_scoring.py            # 30 s latency rounds (~3.5 minutes)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import rows as bench_rows
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from websockets.sync.client import connect

from pynomaly.api import API_KEY_HEADER
from pynomaly.client import PynomalyClient
from pynomaly.domain.datasets import DatasetLimits, parse_csv
from pynomaly.domain.models import TrainedModel
from pynomaly.localstack.system import LocalSystem
from pynomaly.messaging.kafka_admin import connection_config
from pynomaly.topology import GROUP_SCORER, T_ANOMALY, T_MEASUREMENTS, TOPOLOGY
from pynomaly.wiring import Container

REPO = Path(__file__).resolve().parent.parent
SCORER = "consumer-scorer"
DETECTOR = "iforest"
POLL_RECORDS = TOPOLOGY.consumer_group(GROUP_SCORER).max_poll_records  # the baseline's batch size
ENTITIES = 20
DRAIN_TIMEOUT = 120.0
PARTS = ("latency", "throughput", "file")


@dataclass(frozen=True)
class Plan:
    """How much to measure; ``--quick`` shortens the latency rounds and the drains."""

    rate: float  # records/s of both the live stream and the raw baseline
    latency_rounds: int
    live_seconds: float
    raw_seconds: float
    planted_every: int  # every n-th live record is a planted anomaly
    throughput_rounds: int
    fill_records: int
    file_rows: int
    file_reps: int


QUICK = Plan(1000.0, 2, 10.0, 5.0, 50, 2, 30_000, 100_000, 2)
FULL = Plan(1000.0, 3, 30.0, 10.0, 50, 3, 50_000, 100_000, 3)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summary(values: list[float], keep_samples: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "n": len(values),
        "p50": pct(values, 50),
        "p90": pct(values, 90),
        "p99": pct(values, 99),
        "max": max(values) if values else float("nan"),
    }
    if keep_samples:
        out["samples"] = [round(v, 3) for v in values]
    return out


def ratio(measured: float, baseline: float) -> float:
    return measured / baseline if baseline > 0 else float("nan")


def now_ms() -> float:
    return time.time() * 1000  # Kafka CreateTime is wall-clock ms from this same machine


# -- the model and the records -----------------------------------------------------------------------


@dataclass
class Setup:
    model_ref: str
    model: TrainedModel
    columns: list[str]
    normal: np.ndarray  # rows the stored model labels 0
    planted: np.ndarray  # rows it labels 1


def train_and_bind(client: PynomalyClient, container: Container, log: Callable[[str], None]) -> Setup:
    sensors = Path(str(resources.files("pynomaly") / "data" / "sensors.csv"))
    name = f"bench-live-{uuid.uuid4().hex[:6]}"
    job = client.wait(client.submit_csv(sensors, DETECTOR, save_model=name)["id"], timeout=300)
    if job["status"] != "completed":
        raise RuntimeError(f"the training job ended {job['status']}: {job.get('error')}")
    ref = f"{name}:{job['model_version']}"
    client.bind(T_MEASUREMENTS, ref)
    _, model = container.models.load(ref)
    data = parse_csv(sensors.read_bytes(), DatasetLimits(10**7, 10**6, 100))
    _, labels = model.score(data.values)
    normal = data.values[labels == 0]
    rng = np.random.default_rng(7)
    # The e2e tests' planted rows: hot, high pressure, shaking, drawing current.
    planted = normal[rng.integers(0, len(normal), 40)] * np.array([1.0, 1.0, 6.0, 1.0]) + np.array([40, 25, 0, 10])
    if not model.score(planted)[1].all():
        raise RuntimeError("planted rows must be anomalies for the stored model")
    log(f"  model {ref} trained on {len(data.values)} rows and bound to {T_MEASUREMENTS}")
    return Setup(ref, model, list(data.columns), normal, planted)


def records(setup: Setup, prefix: str, count: int, planted_every: int) -> list[tuple[bytes, bytes, bool]]:
    """(key, value, planted) of ``count`` records of ENTITIES entities; every n-th one planted."""
    out = []
    for i in range(count):
        planted = planted_every > 0 and i % planted_every == planted_every - 1
        row = setup.planted[i % len(setup.planted)] if planted else setup.normal[i % len(setup.normal)]
        entity = f"{prefix}-{i % ENTITIES}"
        value = json.dumps({"entity": entity, "values": dict(zip(setup.columns, row.tolist(), strict=True))})
        out.append((entity.encode(), value.encode(), planted))
    return out


def produce_at_rate(producer: KafkaProducer, topic: str, stream: list[tuple[bytes, bytes, bool]], rate: float) -> float:
    """Send ``stream`` at ``rate`` records/s (paced against the start, so a late send catches up);
    returns the rate achieved."""
    started = time.monotonic()
    for i, (key, value, _) in enumerate(stream):
        producer.send(topic, key=key, value=value)
        ahead = started + (i + 1) / rate - time.monotonic()
        if ahead > 0.001:
            time.sleep(ahead)
    producer.flush(timeout=60)
    return len(stream) / (time.monotonic() - started)


def live_producer(settings: Any) -> KafkaProducer:
    # What `pynomaly produce`, the demo and the e2e tests use: acks=all, a 5 ms batching window.
    return KafkaProducer(acks="all", linger_ms=5, **connection_config(settings))


def tail_consumer(settings: Any, topic: str) -> KafkaConsumer:
    """A consumer of every partition of ``topic``, from its end (no group, nothing committed)."""
    consumer = KafkaConsumer(enable_auto_commit=False, **connection_config(settings))
    # A topic just created needs a metadata refresh before its partitions are known.
    if not wait_until(lambda: bool(consumer.partitions_for_topic(topic)), 30):
        raise RuntimeError(f"topic {topic} has no partitions")
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(partitions)
    consumer.seek_to_end(*partitions)
    for tp in partitions:
        consumer.position(tp)  # resolve the end now, before anything is produced
    return consumer


# -- 1. latency --------------------------------------------------------------------------------------


class Collector(threading.Thread):
    """Runs ``read`` in a thread until stopped; ``read`` appends latencies (ms) keyed by event id."""

    def __init__(self, name: str, read: Callable[[Collector], None]) -> None:
        super().__init__(name=name, daemon=True)
        self.latencies: dict[str, float] = {}
        self.stages: dict[str, list[float]] = {}  # cumulative ms from the record to each stage
        self.duplicates = 0
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.ready = threading.Event()
        self._read = read

    def add(self, key: str, latency: float, stages: dict[str, float]) -> None:
        if key in self.latencies:
            self.duplicates += 1
            return
        self.latencies[key] = latency
        for stage, value in stages.items():
            self.stages.setdefault(stage, []).append(value)

    def run(self) -> None:
        try:
            self._read(self)
        except BaseException as exc:  # reported by the main thread
            self.error = exc
            self.ready.set()


# (record, received ms) -> (key, ms, cumulative ms per stage) of a record of ours, else None
Latency = Callable[[Any, float], tuple[str, float, dict[str, float]] | None]


def read_kafka(settings: Any, topic: str, latency: Latency) -> Callable[[Collector], None]:
    def run(c: Collector) -> None:
        consumer = tail_consumer(settings, topic)
        c.ready.set()
        try:
            while not c.stop.is_set():
                for batch in consumer.poll(timeout_ms=100).values():
                    received = now_ms()
                    for record in batch:
                        hit = latency(record, received)
                        if hit is not None:
                            c.add(*hit)
        finally:
            consumer.close()

    return run


def anomaly_latency(prefix: str) -> Latency:
    def latency(record: Any, received: float) -> tuple[str, float, dict[str, float]] | None:
        if record.key is None or not record.key.decode().startswith(f"{prefix}-"):
            return None
        event = json.loads(record.value)
        if event.get("type") != "anomaly_detected":
            return None
        produced = float(event["data"]["produced_at_ms"])
        # Where the time goes: the scorer's own stamp, then the relay's send (the event's CreateTime).
        stages = {"scored": float(event["data"]["latency_ms"]), "relay_sent": record.timestamp - produced}
        return event["id"], received - produced, stages

    return latency


def raw_latency(record: Any, received: float) -> tuple[str, float, dict[str, float]]:
    return f"{record.partition}:{record.offset}", received - record.timestamp, {}


def read_websocket(system: LocalSystem, prefix: str) -> Callable[[Collector], None]:
    """The browser's view: /v1/stream, anomalies of ``prefix`` timed at receipt here."""
    url = system.api_url.replace("http://", "ws://") + "/v1/stream"

    def run(c: Collector) -> None:
        with connect(url, additional_headers={API_KEY_HEADER: system.api_key}, open_timeout=30) as ws:
            hello = json.loads(ws.recv(timeout=30))
            if hello.get("type") != "hello":
                raise RuntimeError(f"/v1/stream answered {hello}")
            c.ready.set()
            while not c.stop.is_set():
                try:
                    message = ws.recv(timeout=0.2)
                except TimeoutError:
                    continue
                received = now_ms()
                entry = json.loads(message)
                if entry.get("type") == "anomaly_detected" and str(entry.get("subject", "")).startswith(f"{prefix}-"):
                    produced = float(entry["data"]["produced_at_ms"])
                    # A stream entry id starts with the ms the bridge's XADD ran at.
                    bridged = float(str(entry["id"]).split("-")[0]) - produced
                    c.add(str(entry["event_id"]), received - produced, {"dashboard_stream": bridged})

    return run


def start_collectors(*collectors: Collector) -> None:
    for c in collectors:
        c.start()
    for c in collectors:
        if not c.ready.wait(60) or c.error is not None:
            raise RuntimeError(f"{c.name} could not start: {c.error}")


def stop_collectors(*collectors: Collector) -> None:
    for c in collectors:
        c.stop.set()
    for c in collectors:
        c.join(timeout=30)
        if c.error is not None:
            raise RuntimeError(f"{c.name} failed: {c.error}")


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def raw_round(settings: Any, topic: str, stream: list[tuple[bytes, bytes, bool]], rate: float) -> dict[str, Any]:
    collector = Collector("raw-consumer", read_kafka(settings, topic, raw_latency))
    start_collectors(collector)
    producer = live_producer(settings)
    try:
        achieved = produce_at_rate(producer, topic, stream, rate)
        complete = wait_until(lambda: len(collector.latencies) >= len(stream), 60)
    finally:
        producer.close(timeout=10)
        stop_collectors(collector)
    if not complete:
        raise RuntimeError(f"the raw consumer got {len(collector.latencies)} of {len(stream)} records")
    values = list(collector.latencies.values())
    return {"records": len(stream), "rate_achieved": achieved, "latency_ms": summary(values, keep_samples=False)}


def live_round(system: LocalSystem, setup: Setup, plan: Plan) -> dict[str, Any]:
    settings = system.settings
    prefix = f"lat-{uuid.uuid4().hex[:6]}"
    stream = records(setup, prefix, int(plan.rate * plan.live_seconds), plan.planted_every)
    planted = sum(1 for _, _, p in stream if p)
    kafka = Collector("anomaly-events", read_kafka(settings, T_ANOMALY, anomaly_latency(prefix)))
    browser = Collector("websocket", read_websocket(system, prefix))
    start_collectors(kafka, browser)
    producer = live_producer(settings)
    try:
        achieved = produce_at_rate(producer, T_MEASUREMENTS, stream, plan.rate)
        wait_until(lambda: len(kafka.latencies) >= planted and len(browser.latencies) >= planted, 60)
        time.sleep(1.0)  # a duplicate or an unexpected anomaly would arrive about now
    finally:
        producer.close(timeout=10)
        stop_collectors(kafka, browser)
    return {
        "records": len(stream),
        "planted": planted,
        "rate_achieved": achieved,
        "anomaly_events": {"found": len(kafka.latencies), "duplicates": kafka.duplicates},
        "browser": {"found": len(browser.latencies), "duplicates": browser.duplicates},
        "record_to_anomaly_events_ms": summary(list(kafka.latencies.values())),
        "record_to_browser_ms": summary(list(browser.latencies.values())),
        "stages_ms": {
            stage: summary(values, keep_samples=False)
            for stage, values in (
                ("scored", kafka.stages.get("scored", [])),
                ("relay_sent", kafka.stages.get("relay_sent", [])),
                ("anomaly_events_received", list(kafka.latencies.values())),
                ("dashboard_stream", browser.stages.get("dashboard_stream", [])),
                ("browser", list(browser.latencies.values())),
            )
        },
    }


def bench_latency(system: LocalSystem, setup: Setup, plan: Plan, log: Callable[[str], None]) -> dict[str, Any]:
    settings = system.settings
    assert settings is not None
    raw_topic = f"bench-raw-{uuid.uuid4().hex[:6]}"
    partitions = TOPOLOGY.topic(T_MEASUREMENTS).partitions
    admin = KafkaAdminClient(**connection_config(settings))
    try:
        admin.create_topics([NewTopic(raw_topic, partitions, 1)])
    finally:
        admin.close()
    raw_stream = records(setup, "raw", int(plan.rate * plan.raw_seconds), 0)
    # Warm-up, discarded: connections, metadata, the WebSocket path and the bound model's first calls.
    raw_round(settings, raw_topic, raw_stream[:500], plan.rate)
    live_round(system, setup, Plan(**{**plan.__dict__, "live_seconds": 2.0}))
    rounds = []
    for i in range(plan.latency_rounds):
        order = ("raw", "live") if i % 2 == 0 else ("live", "raw")  # alternate who goes first
        row: dict[str, Any] = {}
        for kind in order:
            row[kind] = (
                raw_round(settings, raw_topic, raw_stream, plan.rate)
                if kind == "raw"
                else live_round(system, setup, plan)
            )
        live, raw = row["live"], row["raw"]
        log(
            f"  round {i + 1}: raw p50/p99 {raw['latency_ms']['p50']:.1f}/{raw['latency_ms']['p99']:.1f} ms; "
            f"anomaly_events {live['record_to_anomaly_events_ms']['p50']:.1f}/"
            f"{live['record_to_anomaly_events_ms']['p99']:.1f} ms; browser {live['record_to_browser_ms']['p50']:.1f}/"
            f"{live['record_to_browser_ms']['p99']:.1f} ms; found {live['anomaly_events']['found']}/"
            f"{live['browser']['found']} of {live['planted']} planted, at {live['rate_achieved']:.0f} records/s"
        )
        rounds.append(row)

    def med(kind: str, key: str, q: str) -> float:
        return statistics.median(r[kind][key][q] for r in rounds)

    result: dict[str, Any] = {"raw_topic_partitions": partitions, "rounds": rounds}
    for q in ("p50", "p99"):
        raw_q = med("raw", "latency_ms", q)
        events_q = med("live", "record_to_anomaly_events_ms", q)
        browser_q = med("live", "record_to_browser_ms", q)
        result[f"median_{q}_ms"] = {"raw_kafka": raw_q, "anomaly_events": events_q, "browser": browser_q}
        result[f"ratio_{q}"] = {"anomaly_events": ratio(events_q, raw_q), "browser": ratio(browser_q, raw_q)}
    result["target_browser_p99_ms"] = 100.0
    result["meets_target"] = result["median_p99_ms"]["browser"] <= 100.0
    result["all_planted_found_once"] = all(
        r["live"][where]["found"] == r["live"]["planted"] and not r["live"][where]["duplicates"]
        for r in rounds
        for where in ("anomaly_events", "browser")
    )
    return result


# -- 2. scorer throughput ----------------------------------------------------------------------------


def scorer_running(system: LocalSystem) -> Any:
    return next(r for r in system.supervisor.running if r.component.name == SCORER)


def committed(admin: KafkaAdminClient, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
    offsets = admin.list_group_offsets({GROUP_SCORER: partitions}).get(GROUP_SCORER, {})
    return {tp: max(0, offsets[tp].offset) if tp in offsets else 0 for tp in partitions}  # -1: none committed


def throughput_round(
    system: LocalSystem, setup: Setup, plan: Plan, admin: KafkaAdminClient, probe: KafkaConsumer
) -> dict[str, Any]:
    """Freeze the scorer (SIGSTOP), fill ``measurements``, thaw it and time the drain from its
    committed offsets.  Frozen, not restarted: a restarted scorer spends its first seconds importing
    every detector library (preload_detector_libraries), which is start-up, not throughput.  The fill
    takes a few seconds, under the group's session timeout, so the scorer keeps its partitions."""
    assert system.settings is not None
    partitions = [TopicPartition(T_MEASUREMENTS, p) for p in range(TOPOLOGY.topic(T_MEASUREMENTS).partitions)]
    ends = probe.end_offsets(partitions)
    if not wait_until(lambda: committed(admin, partitions) == ends, DRAIN_TIMEOUT):
        raise RuntimeError("the scorer did not drain measurements before the throughput round")
    start = committed(admin, partitions)
    pid = scorer_running(system).record.pid
    stream = records(setup, f"tp-{uuid.uuid4().hex[:6]}", plan.fill_records, plan.planted_every)
    producer = KafkaProducer(acks="all", linger_ms=20, batch_size=256 * 1024, **connection_config(system.settings))
    os.kill(pid, signal.SIGSTOP)
    try:
        filling = time.monotonic()
        for key, value, _ in stream:
            producer.send(T_MEASUREMENTS, key=key, value=value)
        producer.flush(timeout=120)
        fill_s = time.monotonic() - filling
    finally:
        os.kill(pid, signal.SIGCONT)
        thawed = time.monotonic()
        producer.close(timeout=10)
    ends = probe.end_offsets(partitions)
    total = sum(ends[tp] - start[tp] for tp in partitions)
    timeline: list[tuple[float, int]] = []
    while time.monotonic() < thawed + DRAIN_TIMEOUT:
        done = sum(min(o, ends[tp]) - start[tp] for tp, o in committed(admin, partitions).items())
        timeline.append((time.monotonic() - thawed, done))
        if done >= total:
            break
        time.sleep(0.05)
    else:
        raise RuntimeError(f"the scorer drained {timeline[-1][1]} of {total} records in {DRAIN_TIMEOUT:.0f} s")

    def crossing(fraction: float) -> float:  # first time the committed count reached the fraction
        return next(t for t, n in timeline if n >= fraction * total)

    t10, t90 = crossing(0.1), crossing(0.9)
    return {
        "records": total,
        "fill_s": fill_s,
        "thaw_to_drained_s": timeline[-1][0],
        "records_per_s_whole_drain": total / timeline[-1][0],
        "records_per_s_10_to_90pct": 0.8 * total / (t90 - t10) if t90 > t10 else float("nan"),
        "timeline": [(round(t, 3), n) for t, n in timeline],
    }


def in_process_round(setup: Setup, rows: np.ndarray) -> dict[str, Any]:
    started = time.perf_counter()
    for begin in range(0, len(rows), POLL_RECORDS):
        setup.model.score(rows[begin : begin + POLL_RECORDS])
    seconds = time.perf_counter() - started
    return {"records": len(rows), "seconds": seconds, "records_per_s": len(rows) / seconds}


def bench_throughput(system: LocalSystem, setup: Setup, plan: Plan, log: Callable[[str], None]) -> dict[str, Any]:
    assert system.settings is not None
    # The same rows the scorer gets, as the model sees them, in its poll-sized batches.
    stream = records(setup, "x", plan.fill_records, plan.planted_every)
    rows = np.array([list(json.loads(value)["values"].values()) for _, value, _ in stream])
    admin = KafkaAdminClient(**connection_config(system.settings))
    probe = KafkaConsumer(**connection_config(system.settings))
    rounds = []
    try:
        in_process_round(setup, rows[:POLL_RECORDS])  # warm-up
        for i in range(plan.throughput_rounds):
            row: dict[str, Any] = {}
            for kind in ("in_process", "scorer") if i % 2 == 0 else ("scorer", "in_process"):
                if kind == "in_process":
                    row[kind] = in_process_round(setup, rows)
                else:
                    row[kind] = throughput_round(system, setup, plan, admin, probe)
            log(
                f"  round {i + 1}: in-process score {row['in_process']['records_per_s']:.0f} records/s; scorer "
                f"{row['scorer']['records_per_s_10_to_90pct']:.0f} records/s (10-90% of {row['scorer']['records']}), "
                f"drained in {row['scorer']['thaw_to_drained_s']:.1f} s (filled in {row['scorer']['fill_s']:.1f} s)"
            )
            rounds.append(row)
    finally:
        admin.close()
        probe.close()
    baseline = statistics.median(r["in_process"]["records_per_s"] for r in rounds)
    measured = statistics.median(r["scorer"]["records_per_s_10_to_90pct"] for r in rounds)
    return {
        "detector": DETECTOR,
        "batch_records": POLL_RECORDS,
        "rounds": rounds,
        "median_in_process_records_per_s": baseline,
        "median_scorer_records_per_s": measured,
        "ratio": ratio(measured, baseline),
        "target_ratio": 0.7,
        "meets_target": ratio(measured, baseline) >= 0.7,
    }


# -- 3. a 100k-row file ------------------------------------------------------------------------------


def file_csv(setup: Setup, rows: int, path: Path) -> None:
    """``rows`` normal sensor rows with a little noise, 1% planted."""
    rng = np.random.default_rng(11)
    values = setup.normal[rng.integers(0, len(setup.normal), rows)] * rng.normal(1.0, 0.002, (rows, len(setup.columns)))
    planted = rng.choice(rows, rows // 100, replace=False)
    values[planted] = setup.planted[rng.integers(0, len(setup.planted), len(planted))]
    buffer = io.StringIO()
    buffer.write(",".join(setup.columns) + "\n")
    np.savetxt(buffer, values, delimiter=",", fmt="%.4f")
    path.write_text(buffer.getvalue())


def parse_time(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def run_job(client: PynomalyClient, path: Path, kind: str, model_ref: str) -> dict[str, float]:
    started = time.perf_counter()
    if kind == "score":
        accepted = client.submit_csv(path, None, mode="score", model=model_ref)
    else:
        accepted = client.submit_csv(path, DETECTOR)
    job = client.wait(accepted["id"], timeout=600, interval=0.05)
    elapsed = time.perf_counter() - started
    if job["status"] != "completed":
        raise RuntimeError(f"the {kind} job ended {job['status']}: {job.get('error')}")
    return {"end_to_end_s": elapsed, "server_s": parse_time(job["finished_at"]) - parse_time(job["created_at"])}


def bench_file(
    client: PynomalyClient, setup: Setup, plan: Plan, state: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    path = state / "bench-100k.csv"
    file_csv(setup, plan.file_rows, path)
    samples: dict[str, list[dict[str, float]]] = {"score": [], "fit_and_score": []}
    for kind in samples:  # warm-up, discarded: the workers' first load of the model and imports
        run_job(client, path, kind, setup.model_ref)
    for i in range(plan.file_reps):
        for kind in ("score", "fit_and_score") if i % 2 else ("fit_and_score", "score"):
            samples[kind].append(run_job(client, path, kind, setup.model_ref))
        log(
            f"  rep {i + 1}: stored model {samples['score'][-1]['end_to_end_s']:.2f} s, fit-and-score "
            f"{samples['fit_and_score'][-1]['end_to_end_s']:.2f} s"
        )
    out: dict[str, Any] = {"rows": plan.file_rows, "bytes": path.stat().st_size, "detector": DETECTOR}
    for kind, values in samples.items():
        out[kind] = {
            "end_to_end_s": summary([v["end_to_end_s"] for v in values]),
            "server_created_to_finished_s": summary([v["server_s"] for v in values]),
        }
    score, fit = out["score"]["end_to_end_s"]["p50"], out["fit_and_score"]["end_to_end_s"]["p50"]
    out["ratio_median_end_to_end"] = ratio(score, fit)
    return out


# -- output ------------------------------------------------------------------------------------------


def write_markdown(results: dict[str, Any], path: Path) -> None:
    m = results["machine"]
    lat, tp, f = results["latency"], results["throughput"], results["file"]
    rate = results["plan"]["rate"]
    lines = [
        "# Live scoring benchmark results",
        "",
        f"Mode `{results['mode']}`, {m['timestamp']}; {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}; "
        f"load average {m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end. Model: "
        f"{DETECTOR} trained on sensors.csv. Medians over rounds; each round measures its baseline too.",
        "",
        f"## 1. Latency at {rate:.0f} records/s ({len(lat['rounds'])} rounds of "
        f"{results['plan']['live_seconds']:.0f} s, every {results['plan']['planted_every']}th record planted)",
        "",
        "| path | p50 | p99 | ratio p50 / p99 to baseline |",
        "|---|---|---|---|",
        f"| baseline: raw producer → raw consumer (scratch topic) | {lat['median_p50_ms']['raw_kafka']:.1f} ms "
        f"| {lat['median_p99_ms']['raw_kafka']:.1f} ms | x1 |",
        f"| record → `anomaly_events` (a consumer's receipt) | {lat['median_p50_ms']['anomaly_events']:.1f} ms "
        f"| {lat['median_p99_ms']['anomaly_events']:.1f} ms | x{lat['ratio_p50']['anomaly_events']:.1f} / "
        f"x{lat['ratio_p99']['anomaly_events']:.1f} |",
        f"| record → browser (WebSocket `/v1/stream`) | {lat['median_p50_ms']['browser']:.1f} ms "
        f"| {lat['median_p99_ms']['browser']:.1f} ms | x{lat['ratio_p50']['browser']:.1f} / "
        f"x{lat['ratio_p99']['browser']:.1f} |",
        "",
        f"Target p99 ≤ 100 ms record → browser: **{'met' if lat['meets_target'] else 'missed'}**. Every planted "
        f"anomaly arrived exactly once on both paths in every round: **{lat['all_planted_found_once']}**.",
        "",
        "| round | records/s achieved | planted | on anomaly_events | in the browser | raw p99 | events p99 "
        "| browser p99 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(lat["rounds"], start=1):
        live = r["live"]
        lines.append(
            f"| {i} | {live['rate_achieved']:.0f} | {live['planted']} | {live['anomaly_events']['found']} | "
            f"{live['browser']['found']} | {r['raw']['latency_ms']['p99']:.1f} ms | "
            f"{live['record_to_anomaly_events_ms']['p99']:.1f} ms | {live['record_to_browser_ms']['p99']:.1f} ms |"
        )
    stage_names = {
        "scored": "scored (the scorer's own stamp)",
        "relay_sent": "sent to `anomaly_events` by the outbox relay",
        "anomaly_events_received": "received from `anomaly_events`",
        "dashboard_stream": "added to `dashboard:stream` by the bridge (entry id)",
        "browser": "received on the WebSocket",
    }
    lines += [
        "",
        "Where the time goes: milliseconds from the record's Kafka timestamp to each stage (median over rounds).",
        "",
        "| stage reached | p50 | p99 |",
        "|---|---|---|",
    ]
    for stage, label in stage_names.items():
        p50 = statistics.median(r["live"]["stages_ms"][stage]["p50"] for r in lat["rounds"])
        p99 = statistics.median(r["live"]["stages_ms"][stage]["p99"] for r in lat["rounds"])
        lines.append(f"| {label} | {p50:.1f} ms | {p99:.1f} ms |")
    lines += [
        "",
        f"## 2. Scorer throughput, one process ({tp['detector']}, polls of {tp['batch_records']} records)",
        "",
        "| baseline: `TrainedModel.score` in-process, same batches | scorer process draining a pre-filled topic "
        "(10%→90% of the drain) | ratio | target |",
        "|---|---|---|---|",
        f"| {tp['median_in_process_records_per_s']:.0f} records/s | {tp['median_scorer_records_per_s']:.0f} records/s "
        f"| x{tp['ratio']:.2f} | ≥ x0.7: **{'met' if tp['meets_target'] else 'missed'}** |",
        "",
        f"## 3. A {f['rows']:,}-row CSV ({f['bytes'] / 1e6:.1f} MB) through the API",
        "",
        "| job | end-to-end median | server created→finished median |",
        "|---|---|---|",
        f"| baseline: fit-and-score (detection job, {f['detector']}) | "
        f"{f['fit_and_score']['end_to_end_s']['p50']:.2f} s | "
        f"{f['fit_and_score']['server_created_to_finished_s']['p50']:.2f} s |",
        f"| stored model (`mode: score`) | {f['score']['end_to_end_s']['p50']:.2f} s | "
        f"{f['score']['server_created_to_finished_s']['p50']:.2f} s |",
        "",
        f"Ratio stored-model / fit-and-score (end to end): x{f['ratio_median_end_to_end']:.2f}.",
        "",
        f"Produced by `{results['command']}` in {results['duration_s']:.0f} s.",
        "",
    ]
    path.write_text("\n".join(lines))


# -- main --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s latency rounds and smaller drains (~1.5 minutes)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument(
        "--only",
        choices=PARTS,
        action="append",
        help="run only this part (repeatable); writes live_scoring.partial.json, not the committed files",
    )
    args = parser.parse_args(argv)
    parts = args.only or list(PARTS)
    plan = QUICK if args.quick else FULL
    began = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - began:6.1f}s] {message}", flush=True)

    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "command": ".venv/bin/python benchmarks/live_scoring.py" + (" --quick" if args.quick else ""),
        "machine": bench_rows.machine_info(),
        "plan": plan.__dict__,
    }
    state = Path(tempfile.mkdtemp(prefix="pynomaly-livebench-"))
    try:
        log(f"starting a private local system ({results['mode']} mode)")
        with bench_rows.local_system(log, state) as system:
            assert system.settings is not None
            container = Container(system.settings, "benchmark")
            try:
                with PynomalyClient(system.api_url, system.api_key, timeout=300) as client:
                    log("training and binding the model")
                    setup = train_and_bind(client, container, log)
                    if "latency" in parts:
                        log("1/3 latency: raw Kafka vs record -> anomaly_events -> browser")
                        results["latency"] = bench_latency(system, setup, plan, log)
                    if "throughput" in parts:
                        log("2/3 scorer throughput vs in-process score")
                        results["throughput"] = bench_throughput(system, setup, plan, log)
                    if "file" in parts:
                        log("3/3 a 100k-row file: stored model vs fit-and-score")
                        results["file"] = bench_file(client, setup, plan, state, log)
            finally:
                container.close()
    finally:
        shutil.rmtree(state, ignore_errors=True)
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["duration_s"] = time.perf_counter() - began
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only:
        (args.out / "live_scoring.partial.json").write_text(json.dumps(results, indent=2) + "\n")
        log(f"wrote {args.out}/live_scoring.partial.json")
        return 0
    (args.out / "live_scoring.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, args.out / "live_scoring.md")
    log(f"wrote {args.out}/live_scoring.json and live_scoring.md")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        sys.exit(130)
