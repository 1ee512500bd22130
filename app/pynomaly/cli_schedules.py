"""``pynomaly beat`` (the beat component) and the ``schedules`` / ``datasets`` client commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from pynomaly.cli import _call, _client, _client_options, _parse_notify, _parse_params, _settings, main
from pynomaly.client import segment
from pynomaly.config import SettingsError


@main.command()
def beat() -> None:
    """Run Celery beat (RedBeat): schedules and maintenance; a second beat waits on the lock."""
    from pynomaly.messaging.beat import run_beat

    settings = _settings("beat")
    try:
        run_beat(settings)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def _api(client: Any, method: str, path: str, **kwargs: Any) -> Any:
    return _call(lambda: client._call(method, path, **kwargs))


def _segment(value: str) -> str:
    return str(_call(lambda: segment(value)))  # an empty id: one Error: line, no traceback


def _schedule_line(item: dict[str, Any]) -> str:
    timing = f"cron '{item['cron']}'" if item["cron"] else f"every {item['interval_seconds']}s"
    source = item["dataset_id"] or item["dataset_url"]
    state = "paused" if item["paused"] else f"next {item.get('next_run_at') or '-'}"
    name = item["name"][:24]
    return f"{item['id']}  {name:<24} {timing:<22} {item['detector']:<8} {source}  runs {item['run_count']}  {state}"


@main.group()
def schedules() -> None:
    """Recurring detections: create, list, show, pause, resume, run now, delete."""


@schedules.command("create")
@click.option("--cron", help="Five-field cron expression (UTC), e.g. '*/15 * * * *'.")
@click.option("--every", "interval", type=int, help="Interval in seconds (instead of --cron).")
@click.option("--dataset", "dataset_id", help="A stored dataset id (see `pynomaly datasets upload`).")
@click.option("--url", "dataset_url", help="An http(s) URL of a CSV fetched at every run.")
@click.option("--detector", "-d", default="iforest", show_default=True)
@click.option("--param", "-p", "params", multiple=True, help="Detector parameter NAME=VALUE (repeatable).")
@click.option("--contamination", type=float)
@click.option("--threshold", type=float)
@click.option("--priority", type=click.Choice(["low", "normal", "high", "critical"]))
@click.option("--steps", help="Pipeline steps, comma-separated.")
@click.option("--webhook", help="Webhook notified when a run completes.")
@click.option(
    "--notify",
    "notify",
    multiple=True,
    help="Notification target CHANNEL:TARGET[:ON[:THRESHOLD]], e.g. email:ops@example.com:anomaly_rate:0.05, "
    'or as JSON, e.g. \'{"channel":"email","target":"ops@example.com","on":"failed"}\' (repeatable).',
)
@click.option("--name", help="A label.")
@click.option("--paused", is_flag=True, help="Create it paused.")
@click.option("--json", "as_json", is_flag=True)
@_client_options
def schedules_create(
    cron: str | None,
    interval: int | None,
    dataset_id: str | None,
    dataset_url: str | None,
    detector: str,
    params: tuple[str, ...],
    contamination: float | None,
    threshold: float | None,
    priority: str | None,
    steps: str | None,
    webhook: str | None,
    notify: tuple[str, ...],
    name: str | None,
    paused: bool,
    as_json: bool,
    api_url: str | None,
    api_key: str | None,
) -> None:
    """Create a schedule: one of --cron/--every and one of --dataset/--url."""
    rules = _parse_notify(notify, allow_json=True)
    body = {
        "name": name,
        "cron": cron,
        "interval_seconds": interval,
        "dataset_id": dataset_id,
        "dataset_url": dataset_url,
        "detector": detector,
        "params": _parse_params(params),
        "contamination": contamination,
        "threshold": threshold,
        "priority": priority,
        "steps": steps.split(",") if steps else None,
        "webhook_url": webhook,
        "notify": rules or None,
        "paused": paused,
    }
    with _client(api_url, api_key) as client:
        item = _api(client, "POST", "/v1/schedules", json={k: v for k, v in body.items() if v is not None})
    click.echo(json.dumps(item, indent=2) if as_json else f"schedule {item['id']} created: {_schedule_line(item)}")


@schedules.command("list")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_client_options
def schedules_list(limit: int, as_json: bool, api_url: str | None, api_key: str | None) -> None:
    with _client(api_url, api_key) as client:
        page = _api(client, "GET", "/v1/schedules", params={"limit": limit})
    if as_json:
        click.echo(json.dumps(page, indent=2))
        return
    click.echo(f"{page['total']} schedule(s)")
    for item in page["items"]:
        click.echo(_schedule_line(item))


@schedules.command("show")
@click.argument("schedule_id")
@_client_options
def schedules_show(schedule_id: str, api_url: str | None, api_key: str | None) -> None:
    """A schedule with its last runs and next run time."""
    with _client(api_url, api_key) as client:
        click.echo(json.dumps(_api(client, "GET", f"/v1/schedules/{_segment(schedule_id)}"), indent=2))


def _action(verb: str, doc: str) -> None:
    @schedules.command(verb, help=doc)
    @click.argument("schedule_id")
    @_client_options
    def command(schedule_id: str, api_url: str | None, api_key: str | None) -> None:
        with _client(api_url, api_key) as client:
            item = _api(client, "POST", f"/v1/schedules/{_segment(schedule_id)}/{verb}")
        click.echo(
            f"schedule {item['id']} {'paused' if item['paused'] else 'active, next ' + str(item['next_run_at'])}"
        )


_action("pause", "Stop sending runs until resumed.")
_action("resume", "Send runs again.")


@schedules.command("run")
@click.argument("schedule_id")
@_client_options
def schedules_run(schedule_id: str, api_url: str | None, api_key: str | None) -> None:
    """Start one run now (an ordinary job)."""
    with _client(api_url, api_key) as client:
        out = _api(client, "POST", f"/v1/schedules/{_segment(schedule_id)}/run")
    click.echo(f"job {out['job_id']} {out['status']} (schedule {schedule_id})")


@schedules.command("delete")
@click.argument("schedule_id")
@_client_options
def schedules_delete(schedule_id: str, api_url: str | None, api_key: str | None) -> None:
    """Delete a schedule; its past jobs stay."""
    with _client(api_url, api_key) as client:
        _api(client, "DELETE", f"/v1/schedules/{_segment(schedule_id)}")
    click.echo(f"schedule {schedule_id} deleted")


@main.group()
def datasets() -> None:
    """Stored datasets for schedules: upload, list, show, delete."""


def _dataset_line(item: dict[str, Any]) -> str:
    return (
        f"{item['id']}  {item['name'][:24]:<24} {item['rows']} rows x {len(item['columns'])} cols  "
        f"{item['bytes']} bytes  sha256 {item['sha256'][:16]}…"
    )


@datasets.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="A label (default: the dataset id).")
@_client_options
def datasets_upload(path: Path, name: str | None, api_url: str | None, api_key: str | None) -> None:
    """Store PATH (a CSV with a header row)."""
    with _client(api_url, api_key) as client:
        item = _api(
            client,
            "POST",
            "/v1/datasets",
            content=path.read_bytes(),
            headers={"Content-Type": "text/csv"},
            params={"name": name or path.stem},
        )
    click.echo(_dataset_line(item))


@datasets.command("list")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@_client_options
def datasets_list(limit: int, api_url: str | None, api_key: str | None) -> None:
    with _client(api_url, api_key) as client:
        page = _api(client, "GET", "/v1/datasets", params={"limit": limit})
    click.echo(f"{page['total']} dataset(s)")
    for item in page["items"]:
        click.echo(_dataset_line(item))


@datasets.command("show")
@click.argument("dataset_id")
@_client_options
def datasets_show(dataset_id: str, api_url: str | None, api_key: str | None) -> None:
    with _client(api_url, api_key) as client:
        click.echo(json.dumps(_api(client, "GET", f"/v1/datasets/{_segment(dataset_id)}"), indent=2))


@datasets.command("delete")
@click.argument("dataset_id")
@_client_options
def datasets_delete(dataset_id: str, api_url: str | None, api_key: str | None) -> None:
    """Delete a stored dataset (refused while a schedule uses it)."""
    with _client(api_url, api_key) as client:
        _api(client, "DELETE", f"/v1/datasets/{_segment(dataset_id)}")
    click.echo(f"dataset {dataset_id} deleted")
