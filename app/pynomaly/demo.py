"""``pynomaly local demo``: the main job.  Brings up the local system, runs a detection on the
bundled sensor dataset (with planted anomalies) through the full path, prints what it found and
the Kafka event that announced it, then shows live scoring, then stops everything
(``--keep-running`` leaves it up).

Batch path: HTTP POST -> Redis (Celery chain preprocess -> detect -> report) -> worker (PyOD)
-> result in Redis -> ``job_completed`` on Kafka ``job_events`` keyed by job id
-> bridge consumer -> ``dashboard:stream`` -> GET /v1/jobs/{id}/result.

Live path: a job saves its model (``save_model``), the model is bound to ``measurements``, records
(the sensor rows the job found normal, with planted anomalies) are produced to Kafka -> scorer pool
-> ``anomaly_detected`` on ``anomaly_events`` -> bridge -> ``dashboard:stream``, printed as they
arrive with their latency from the record entering Kafka.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

import click

from pynomaly.localstack.cli import local, print_summary, run_local, system_from_options, system_options

DEMO_DATASET = "sensors.csv"
DEMO_PLANTED = "sensors.planted.txt"
EVENT_TIMEOUT = 60.0
LIVE_MODEL = "sensors-demo"
LIVE_RECORDS = 600
LIVE_RATE = 300.0  # records per second
LIVE_PLANTED = (45, 130, 210, 333, 404, 480, 555, 590)
LIVE_ENTITIES = 8


def demo_dataset() -> tuple[Path, set[int]]:
    data = resources.files("pynomaly") / "data"
    planted = {int(line) for line in data.joinpath(DEMO_PLANTED).read_text().split()}
    return Path(str(data.joinpath(DEMO_DATASET))), planted


def find_kafka_event(settings: Any, job_id: str, event_type: str, timeout: float = EVENT_TIMEOUT) -> Any:
    """Read ``job_events`` from the start (no consumer group) for the job's event; the record or None."""
    from kafka import KafkaConsumer, TopicPartition

    from pynomaly.messaging.events import EventEnvelope
    from pynomaly.messaging.kafka_admin import connection_config
    from pynomaly.topology import TOPOLOGY

    topic = TOPOLOGY.topic_for_event(event_type)
    consumer = KafkaConsumer(enable_auto_commit=False, consumer_timeout_ms=1000, **connection_config(settings))
    try:
        partitions = [TopicPartition(topic, p) for p in range(TOPOLOGY.topic(topic).partitions)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                for record in batch:
                    if record.key == job_id.encode():
                        event = EventEnvelope.decode(record.value)
                        if event.type == event_type:
                            return record, event
        return None
    finally:
        consumer.close()


def find_stream_entry(settings: Any, job_id: str, event_type: str, timeout: float = EVENT_TIMEOUT) -> str | None:
    """The dashboard:stream id of the bridge's copy of the event, or None."""
    from pynomaly.storage.redis_client import redis_from_settings
    from pynomaly.topology import S_DASHBOARD

    client = redis_from_settings(settings)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for entry_id, fields in client.xrevrange(S_DASHBOARD, count=500):
                if fields.get("subject") == job_id and fields.get("type") == event_type:
                    return entry_id
            time.sleep(0.2)
        return None
    finally:
        client.close()


def live_stream(rows: list[list[float]], labels: list[int], columns: list[str]) -> list[tuple[str, bytes, bool]]:
    """(entity, record, planted) for the live part: rows the job labelled normal, in turn, and at
    ``LIVE_PLANTED`` a normal row pushed far off (hot, high pressure, shaking, drawing current)."""
    normal = [row for row, label in zip(rows, labels, strict=True) if not label]
    shift = {"temperature": 45.0, "pressure": 30.0, "vibration": 4.0, "current": 15.0}
    stream = []
    for i in range(LIVE_RECORDS):
        values = dict(zip(columns, normal[i % len(normal)], strict=True))
        planted = i in LIVE_PLANTED
        if planted:
            values = {name: value + shift.get(name, 0.0) for name, value in values.items()}
        entity = f"sensor-{i % LIVE_ENTITIES}"
        stream.append((entity, json.dumps({"entity": entity, "values": values}).encode(), planted))
    return stream


def run_live_demo(system: Any, client: Any, detector: str, dataset: Path) -> dict[str, Any]:
    """Train and save a model, bind it to ``measurements``, produce a stream with planted anomalies
    and print each anomaly as it reaches ``dashboard:stream``, with its latency."""
    import threading

    from kafka import KafkaProducer

    from pynomaly.cli import _follow
    from pynomaly.domain.datasets import DatasetLimits, parse_csv
    from pynomaly.messaging.kafka_admin import connection_config
    from pynomaly.storage.redis_client import redis_from_settings
    from pynomaly.topology import S_DASHBOARD, T_MEASUREMENTS

    click.echo("")
    click.echo(f"live scoring: training {detector} on {dataset.name} and saving it as model {LIVE_MODEL}")
    accepted = client.submit_csv(dataset, detector, contamination=0.03, save_model=LIVE_MODEL)
    job = _follow(client, accepted["id"], timeout=300)
    if job["status"] != "completed":
        raise click.ClickException(f"the training job ended {job['status']}: {job.get('error')}")
    ref = f"{LIVE_MODEL}:{job['model_version']}"  # pinned: a rerun on the same state saves a new version
    binding = client.bind(T_MEASUREMENTS, ref)
    click.echo(f"bound {binding['topic']} -> model {binding['model']}")
    data = parse_csv(dataset.read_bytes(), DatasetLimits(10**8, 10**7, 1000))
    stream = live_stream(data.values.tolist(), client.result(job["id"])["labels"], list(data.columns))
    planted = {i for i, (_, _, p) in enumerate(stream) if p}

    redis = redis_from_settings(system.settings)
    last = redis.xrevrange(S_DASHBOARD, count=1)
    cursor = last[0][0] if last else "0-0"
    producer = KafkaProducer(acks="all", linger_ms=5, **connection_config(system.settings))
    offsets: dict[tuple[int, int], int] = {}

    def produce() -> None:
        started = time.monotonic()
        futures = []
        for i, (entity, value, _) in enumerate(stream):
            futures.append(producer.send(T_MEASUREMENTS, key=entity.encode(), value=value))
            time.sleep(max(0.0, started + (i + 1) / LIVE_RATE - time.monotonic()))
        producer.flush(timeout=60)
        for i, future in enumerate(futures):
            meta = future.get(timeout=30)
            offsets[(meta.partition, meta.offset)] = i

    click.echo(f"producing {len(stream)} records of {LIVE_ENTITIES} sensors to {T_MEASUREMENTS} at "
               f"{LIVE_RATE:.0f}/s, {len(planted)} of them planted anomalies")  # fmt: skip
    sender = threading.Thread(target=produce, name="demo-producer", daemon=True)
    sender.start()
    arrived: list[dict[str, Any]] = []
    latencies: list[float] = []
    deadline = time.monotonic() + LIVE_RECORDS / LIVE_RATE + EVENT_TIMEOUT
    try:

        def complete() -> bool:  # every planted record arrived (known once the producer is done)
            if sender.is_alive():
                return False
            return planted <= {offsets.get((e["partition"], e["offset"]), -1) for e in arrived}

        while time.monotonic() < deadline and not complete():
            for _, entries in redis.xread({S_DASHBOARD: cursor}, count=100, block=500) or []:
                for entry_id, fields in entries:
                    cursor = entry_id
                    if fields.get("type") != "anomaly_detected":
                        continue
                    event = json.loads(fields["data"])
                    if event.get("model") != LIVE_MODEL or event.get("version") != job["model_version"]:
                        continue
                    latency = time.time() * 1000 - float(event["produced_at_ms"])
                    latencies.append(latency)
                    arrived.append(event)
                    click.echo(
                        f"  anomaly  {fields['subject']:<9} score {event['score']:.4g} > {event['threshold']:.4g}  "
                        f"model {event['model']}:{event['version']}  partition {event['partition']} offset "
                        f"{event['offset']}  latency {latency:.0f} ms (scored after {event['latency_ms']:.0f} ms)"
                    )
        sender.join(timeout=60)
    finally:
        producer.close(timeout=10)
        redis.close()
    found = {offsets.get((e["partition"], e["offset"]), -1) for e in arrived}
    hits = len(found & planted)
    ordered = sorted(latencies)
    p50 = ordered[len(ordered) // 2] if ordered else float("nan")
    click.echo(
        f"live: planted anomalies found {hits}/{len(planted)}, other records flagged {len(found - planted)}; "
        f"record -> dashboard:stream latency p50 {p50:.0f} ms, max {max(ordered, default=float('nan')):.0f} ms"
    )
    return {"live_planted_found": hits, "live_planted": len(planted), "live_flagged": len(found)}


@local.command()
@system_options
@click.option("--detector", default="iforest", show_default=True, help="Detector to run on the demo data.")
@click.option(
    "--keep-running",
    is_flag=True,
    help="Leave the system up afterwards (open the dashboard), until Ctrl-C; components that exit are restarted.",
)
def demo(detector: str, keep_running: bool, **options: Any) -> None:
    """Run the whole system locally and detect the planted anomalies in a bundled dataset."""
    from pynomaly.cli import _follow, _print_outcome
    from pynomaly.client import ApiError, PynomalyClient
    from pynomaly.localstack.progress import StreamProgress

    dataset, planted = demo_dataset()
    system = system_from_options(**options)
    with run_local(system):
        print_summary(system, show_key=keep_running)
        assert system.settings is not None
        with PynomalyClient(system.api_url, system.api_key) as client:
            try:
                accepted = client.submit_csv(
                    dataset, detector, contamination=0.03, steps=["preprocess", "detect", "report"]
                )
            except ApiError as exc:
                raise click.ClickException(f"the demo job was refused: {exc}") from None
            click.echo(f"submitted {dataset.name} ({sum(1 for _ in dataset.open()) - 1} rows) as job {accepted['id']}")
            job = _follow(client, accepted["id"], timeout=300)
            _print_outcome(client, job)
            if job["status"] != "completed":
                raise click.ClickException(f"the demo job ended {job['status']}: {job.get('error')}")
            result = client.result(job["id"])
        found = {i for i, label in enumerate(result["labels"]) if label}
        hits = len(found & planted)
        click.echo(
            f"planted anomalies found: {hits}/{len(planted)} (recall {hits / len(planted):.2f}), "
            f"flagged {len(found)} rows"
        )

        located = find_kafka_event(system.settings, job["id"], "job_completed")
        if located is None:
            raise click.ClickException("no job_completed event for the job on Kafka")
        record, event = located
        click.echo(
            f"Kafka: {event.type} on {record.topic} partition {record.partition} offset {record.offset}, "
            f"key {record.key.decode()}, event id {event.id}"
        )
        entry = find_stream_entry(system.settings, job["id"], "job_completed")
        if entry is None:
            raise click.ClickException("the bridge did not copy job_completed into dashboard:stream")
        click.echo(f"Redis Streams: bridged to dashboard:stream as entry {entry}")
        click.echo(f"report: {system.api_url}/v1/jobs/{job['id']}/report?format=html")
        with PynomalyClient(system.api_url, system.api_key) as client:
            try:
                live = run_live_demo(system, client, detector, dataset)
            except ApiError as exc:
                raise click.ClickException(f"live scoring: {exc}") from None
        click.echo(json.dumps({"job_id": job["id"], "anomalies": len(found), "planted_found": hits, **live}))
        if keep_running:
            click.echo(f"Dashboard: {system.dashboard_url}  (API key above). Press Ctrl-C to stop everything.")
            system.watch(progress=StreamProgress())
