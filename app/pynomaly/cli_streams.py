"""``pynomaly stream bind|list|show|unbind`` (through the API) and ``pynomaly produce`` (straight to Kafka).

``produce`` writes to Kafka itself, not through the API: live records come from producers that write
to the input topic (gateways, collectors), and that is the path the scorer's latency is about; an
HTTP hop in between would be a path no real producer takes.  It finds Kafka as the application does
(``PYNOMALY_KAFKA_*``), or the local system's (``pynomaly local up``), or ``--bootstrap-servers``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from pynomaly.cli import _call, _client, _client_options, main
from pynomaly.domain.datasets import MISSING_MARKERS

STREAM_NOTIFY_HELP = (
    "Notification target CHANNEL:TARGET (repeatable): email:ops@example.com or webhook:https://hooks.example/x; "
    "each anomaly notifies, at most once per entity per --notify-interval."
)


def _scorer_topics() -> tuple[str, ...]:
    from pynomaly.topology import GROUP_SCORER, TOPOLOGY

    return TOPOLOGY.consumer_group(GROUP_SCORER).topics


def _stream_targets(specs: tuple[str, ...]) -> list[dict[str, Any]]:
    from pynomaly.domain.errors import InvalidInput
    from pynomaly.domain.live import parse_stream_targets, stream_target_dicts

    raw = []
    for spec in specs:
        channel, sep, target = spec.partition(":")
        if not sep or not target:
            raise click.BadParameter(f"{spec!r}: use CHANNEL:TARGET, e.g. email:ops@example.com", param_hint="--notify")
        raw.append({"channel": channel, "target": target})
    try:
        return stream_target_dicts(parse_stream_targets(raw))
    except InvalidInput as exc:
        raise click.BadParameter(str(exc), param_hint="--notify") from None


@main.group()
def stream() -> None:
    """Live scoring: bind a model to an input topic (its records are scored as they arrive)."""


@stream.command("bind")
@click.argument("topic")
@click.option("--model", "model", required=True, help="NAME (follows promotions) or NAME:VERSION (pinned).")
@click.option("--notify", "notify", multiple=True, help=STREAM_NOTIFY_HELP)
@click.option(
    "--notify-interval",
    type=click.IntRange(1, 7 * 24 * 3600),
    default=None,
    help="At most one notification per entity in this many seconds (default 60).",
)
@_client_options
def stream_bind(
    topic: str,
    model: str,
    notify: tuple[str, ...],
    notify_interval: int | None,
    api_url: str | None,
    api_key: str | None,
) -> None:
    """Bind MODEL to TOPIC (a scorer input, e.g. measurements)."""
    targets = _stream_targets(notify)
    with _client(api_url, api_key) as client:
        data = _call(lambda: client.bind(topic, model, targets, notify_interval))
    click.echo(
        f"{data['topic']} -> model {data['model']} (version {data['version']} now); "
        f"{len(data['notify'])} notification target(s), at most 1 per entity per {data['notify_interval_seconds']}s"
    )


@stream.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@_client_options
def stream_list(as_json: bool, api_url: str | None, api_key: str | None) -> None:
    """Bindings, and the topics that may be bound."""
    with _client(api_url, api_key) as client:
        data = _call(client.streams)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for item in data["items"]:
        targets = ", ".join(f"{t['channel']}:{t['target']}" for t in item["notify"]) or "no notifications"
        version = item["version"] if item["version"] is not None else "unresolvable"
        click.echo(f"{item['topic']:<20} model {item['model']} (version {version})  {targets}")
    if not data["items"]:
        click.echo(f"no bindings; bindable topics: {', '.join(data['inputs'])}")


@stream.command("show")
@click.argument("topic")
@_client_options
def stream_show(topic: str, api_url: str | None, api_key: str | None) -> None:
    """The binding of TOPIC as JSON."""
    with _client(api_url, api_key) as client:
        click.echo(json.dumps(_call(lambda: client.stream(topic)), indent=2))


@stream.command("unbind")
@click.argument("topic")
@_client_options
def stream_unbind(topic: str, api_url: str | None, api_key: str | None) -> None:
    """Remove TOPIC's binding (its records that name no model then go to the DLQ)."""
    with _client(api_url, api_key) as client:
        _call(lambda: client.unbind(topic))
    click.echo(f"{topic} unbound")


# -- produce ---------------------------------------------------------------------------------------


def _number(raw: str, where: str) -> float | None:
    text = raw.strip()
    if text.lower() in MISSING_MARKERS:
        return None
    try:
        value = float(text)
    except ValueError:
        raise click.ClickException(f"{where}: {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise click.ClickException(f"{where}: {raw!r} is not finite")
    return value


def file_records(
    path: Path, entity_column: str | None, model: str | None, limit: int | None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(entity, record) of each row of a CSV file (header row) or line of a JSON-lines file (``.jsonl``,
    ``.ndjson``: a record as the scorer reads it, or a flat object of entity and values)."""
    text = path.read_text(encoding="utf-8-sig")
    default_entity = path.stem[:128] or "entity"
    count = 0
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        lines = ((n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip())
        for number, line in lines:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise click.ClickException(f"{path}:{number}: not JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise click.ClickException(f"{path}:{number}: a line must be a JSON object")
            if "values" not in obj:  # flat: {"entity": ..., "temperature": ..., ...}
                entity = obj.pop(entity_column or "entity", default_entity)
                obj = {"entity": entity, "values": obj}
            obj.setdefault("entity", obj.pop(entity_column, default_entity) if entity_column else default_entity)
            if model and "model" not in obj:
                obj["model"] = model
            yield str(obj["entity"]), obj
            count += 1
            if limit is not None and count >= limit:
                return
        return
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise click.ClickException(f"{path} is empty: a CSV file needs a header row")
    header = [h.strip() for h in header]
    chosen = entity_column or ("entity" if "entity" in header else None)
    if chosen is not None and chosen not in header:
        raise click.BadParameter(f"{chosen!r} is not a column of {path} ({header})", param_hint="--entity-column")
    for number, row in enumerate(reader, 2):
        if not row:
            continue
        if len(row) != len(header):
            raise click.ClickException(f"{path}:{number}: {len(row)} cells, the header has {len(header)}")
        cells = dict(zip(header, row, strict=True))
        entity = cells.pop(chosen).strip() if chosen is not None else default_entity
        values = {name: _number(raw, f"{path}:{number}, column {name!r}") for name, raw in cells.items()}
        record: dict[str, Any] = {"entity": entity, "values": values}
        if model:
            record["model"] = model
        yield entity, record
        count += 1
        if limit is not None and count >= limit:
            return


def _kafka_config(bootstrap_servers: str | None) -> dict[str, Any]:
    from pynomaly.config import Settings, SettingsError, load_settings
    from pynomaly.localstack.state import read_state
    from pynomaly.localstack.system import default_state_dir
    from pynomaly.messaging.kafka_admin import connection_config

    try:
        settings: Settings = load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    if bootstrap_servers:
        settings = settings.model_copy(update={"kafka_bootstrap_servers": bootstrap_servers})
    elif not settings.kafka_bootstrap_servers:
        local = (read_state(default_state_dir()) or {}).get("kafka_bootstrap_servers")
        if not local:
            raise click.ClickException(
                "no Kafka to produce to: run `pynomaly local up`, set PYNOMALY_KAFKA_BOOTSTRAP_SERVERS, "
                "or give --bootstrap-servers"
            )
        settings = settings.model_copy(update={"kafka_bootstrap_servers": local})
    try:
        return connection_config(settings)
    except SettingsError as exc:  # e.g. SASL without its credentials
        raise click.ClickException(str(exc)) from None


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--topic", required=True, help="A scorer input topic, e.g. measurements.")
@click.option(
    "--rate", type=click.FloatRange(min=0.1, max=100_000), default=None, help="Records per second (default: at once)."
)
@click.option(
    "--entity-column", default=None, help="The column holding the entity id (default 'entity', else the file's name)."
)
@click.option("--model", default=None, help="Name the model in each record (NAME[:VERSION]) instead of the binding.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Send at most this many records.")
@click.option("--bootstrap-servers", default=None, help="Kafka to write to (default: PYNOMALY_KAFKA_*, or local).")
def produce(
    file: Path,
    topic: str,
    rate: float | None,
    entity_column: str | None,
    model: str | None,
    limit: int | None,
    bootstrap_servers: str | None,
) -> None:
    """Send FILE's rows (CSV with a header, or JSON lines) to TOPIC as live records, keyed by entity."""
    from kafka import KafkaProducer

    from pynomaly.domain.errors import InvalidInput
    from pynomaly.domain.live import MAX_ENTITY_CHARS
    from pynomaly.domain.models import ModelRef

    topics = _scorer_topics()
    if topic not in topics:
        raise click.BadParameter(
            f"{topic!r} is not read by the scorer pool; one of {list(topics)}", param_hint="--topic"
        )
    if model is not None:
        try:
            ModelRef.parse(model)
        except InvalidInput as exc:
            raise click.BadParameter(str(exc), param_hint="--model") from None
    records = list(file_records(file, entity_column, model, limit))
    if not records:
        raise click.ClickException(f"{file} has no records")
    for entity, _ in records:
        if not 1 <= len(entity) <= MAX_ENTITY_CHARS:
            raise click.ClickException(f"entity {entity[:40]!r} must be 1-{MAX_ENTITY_CHARS} characters")
    config = _kafka_config(bootstrap_servers)
    try:
        producer = KafkaProducer(acks="all", linger_ms=5, **config)
    except Exception as exc:  # no broker answers: one line, not a traceback
        raise click.ClickException(f"cannot reach Kafka at {config['bootstrap_servers']}: {exc}") from None
    started = time.monotonic()
    try:
        futures = []
        for i, (entity, record) in enumerate(records):
            value = json.dumps(record, separators=(",", ":")).encode()
            futures.append(producer.send(topic, key=entity.encode(), value=value))
            if rate:
                time.sleep(max(0.0, started + (i + 1) / rate - time.monotonic()))
        producer.flush(timeout=60)
        for future in futures:
            future.get(timeout=30)
    except Exception as exc:
        raise click.ClickException(f"could not produce to {topic}: {type(exc).__name__}: {exc}") from None
    finally:
        producer.close(timeout=10)
    took = time.monotonic() - started
    click.echo(f"sent {len(records)} records to {topic} in {took:.1f}s ({len(records) / max(took, 1e-9):.0f}/s)")
