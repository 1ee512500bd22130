"""``pynomaly local demo``: the main job.  Brings up the local system, runs a detection on the
bundled sensor dataset (with planted anomalies) through the full path, prints what it found and
the Kafka event that announced it, then stops everything (``--keep-running`` leaves it up).

Path: HTTP POST -> Redis (Celery chain preprocess -> detect -> report) -> worker (PyOD)
-> result in Redis -> ``job_completed`` on Kafka ``job_events`` keyed by job id
-> bridge consumer -> ``dashboard:stream`` -> GET /v1/jobs/{id}/result.
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
        click.echo(json.dumps({"job_id": job["id"], "anomalies": len(found), "planted_found": hits}))
        if keep_running:
            click.echo(f"Dashboard: {system.dashboard_url}  (API key above). Press Ctrl-C to stop everything.")
            system.watch(progress=StreamProgress())
