"""The ``pynomaly`` command: component entry points (api, worker, consumer), a client for the API
(submit, jobs, dlq ...) and the local system (``local up|down|status|demo``).

Heavy modules are imported inside commands so ``pynomaly healthcheck`` (a Kubernetes probe) and
``--help`` start fast.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pynomaly.config import ENV_PREFIX, Settings, SettingsError, load_settings
from pynomaly.localstack.cli import local

if TYPE_CHECKING:
    from pynomaly.client import PynomalyClient

ENV_API_URL = "PYNOMALY_API_URL"
ENV_API_KEY = "PYNOMALY_API_KEY"


def _settings(component: str = "cli", tracing: bool = True) -> Settings:
    """The settings, with this process's logging (and, unless the caller sets it up later, tracing)."""
    from pynomaly.observability.logs import configure_logging
    from pynomaly.observability.tracing import configure_tracing, exporters_from_env

    try:
        settings = load_settings()
        configure_logging(settings, component)
        if tracing:
            configure_tracing(component)
        else:
            exporters_from_env(os.environ)  # a bad OTEL_* value stops the start here, not in each child
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    return settings


def _fail_cleanly(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pynomaly")
def main() -> None:
    """Pynomaly: asynchronous anomaly detection on Celery/Redis, Kafka and Redis Streams."""


main.add_command(local)

import pynomaly.demo  # noqa: E402,F401  (adds `local demo` to the group)


# -- components ------------------------------------------------------------------------------------
@main.command()
@click.option("--host", default=None, help="Bind address (default PYNOMALY_API_HOST).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default PYNOMALY_API_PORT).")
def api(host: str | None, port: int | None) -> None:
    """Run the HTTP API (FastAPI on uvicorn)."""
    import uvicorn

    from pynomaly.api.app import create_app
    from pynomaly.observability.heartbeat import Heartbeat

    settings = _settings("api")
    app = _fail_cleanly(lambda: create_app(settings))
    from pynomaly.storage.redis_client import redis_from_settings

    client = redis_from_settings(settings)
    beat = Heartbeat(settings, "api", client).start()
    try:
        uvicorn.run(
            app,
            host=host or settings.api_host,
            port=port or settings.api_port,
            log_level=settings.log_level.lower(),
            log_config=None,  # uvicorn's loggers (the access log too) write through ours
            proxy_headers=True,
        )
    finally:
        beat.stop()


@main.command()
@click.option("--pool", help="A worker pool of the topology (its queues and default concurrency).")
@click.option("--queue", "queues", multiple=True, help="Consume these queues instead of a pool's (repeatable).")
@click.option("--concurrency", type=click.IntRange(1, 64), default=None, help="Worker processes.")
def worker(pool: str | None, queues: tuple[str, ...], concurrency: int | None) -> None:
    """Run a Celery worker for one pool of queues."""
    from pynomaly.workers.main import run_worker

    if bool(pool) == bool(queues):
        raise click.UsageError("give exactly one of --pool or --queue")
    # Tracing starts in each pool child (a gRPC channel must not cross the fork): see run_worker.
    settings = _settings(f"worker:{pool or '-'.join(queues)}", tracing=False)
    try:
        run_worker(settings, pool, list(queues) or None, concurrency)
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from None
    except (SettingsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option(
    "--group", required=True, help="Consumer pool: bridge (Kafka -> Redis Streams), audit or scorer (live scoring)."
)
def consumer(group: str) -> None:
    """Run a Kafka consumer pool."""
    from pynomaly.consumers.main import run_consumer

    settings = _settings(f"consumer:{group}")
    _fail_cleanly(lambda: run_consumer(settings, group))


@main.command()
@click.option("--host", default=None, help="Bind address (default PYNOMALY_FLOWER_HOST).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default PYNOMALY_FLOWER_PORT).")
def flower(host: str | None, port: int | None) -> None:
    """Run Flower (Celery's web monitor) behind basic auth from PYNOMALY_FLOWER_BASIC_AUTH."""
    from pynomaly.observability.flower import run_flower

    settings = _settings("flower")
    _fail_cleanly(lambda: run_flower(settings, host, port))


@main.command()
@click.option(
    "--max-age", type=click.FloatRange(min=1), default=60.0, show_default=True, help="Seconds a heartbeat stays fresh."
)
def healthcheck(max_age: float) -> None:
    """Exit 0 when this pod's heartbeat file is fresh (the Kubernetes liveness probe)."""
    from pynomaly.observability.heartbeat import HEARTBEAT_FILE, heartbeat_age

    directory = os.environ.get(ENV_PREFIX + "HEARTBEAT_DIR")
    if not directory:
        raise click.ClickException(f"{ENV_PREFIX}HEARTBEAT_DIR is not set")
    age = heartbeat_age(Path(directory) / HEARTBEAT_FILE)
    if age is None:
        raise click.ClickException("no heartbeat yet")
    if age > max_age:
        raise click.ClickException(f"heartbeat is {age:.0f}s old (limit {max_age:.0f}s)")
    click.echo(f"ok: heartbeat {age:.1f}s old")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON (what infra and the chart read).")
def topology(as_json: bool) -> None:
    """Show the messaging topology: queues, topics, streams, groups, pools."""
    from pynomaly.topology import TOPOLOGY

    data = TOPOLOGY.as_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for queue in data["queues"]:
        click.echo(f"queue  {queue['name']:<20} lists {', '.join(queue['redis_lists'])}")
    for topic in data["topics"]:
        click.echo(f"topic  {topic['name']:<20} {topic['partitions']} partitions, dlq {topic['name']}.dlq")
    for stream in data["streams"]:
        click.echo(f"stream {stream['name']:<20} maxlen ~{stream['maxlen']}")
    for group in data["consumer_groups"]:
        click.echo(f"group  {group['name']:<20} pool {group['pool']}: {', '.join(group['topics'])}")
    for pool in data["worker_pools"]:
        click.echo(f"pool   {pool['name']:<20} queues {', '.join(pool['queues'])} x{pool['concurrency']}")


@main.command("settings")
def settings_command() -> None:
    """List every PYNOMALY_* setting with its default and meaning."""
    for name, field in Settings.model_fields.items():
        click.echo(f"{ENV_PREFIX + name.upper():<36} default {field.default!r:<14} {field.description}")


# -- client commands --------------------------------------------------------------------------------
def _client_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--api-key", envvar=ENV_API_KEY, help=f"API key (or {ENV_API_KEY}; default: the local system's)."
    )(func)
    func = click.option(
        "--api-url", envvar=ENV_API_URL, help=f"API base URL (or {ENV_API_URL}; default: the local system's)."
    )(func)
    return func


def _client(api_url: str | None, api_key: str | None) -> PynomalyClient:
    from pynomaly.client import PynomalyClient
    from pynomaly.localstack.state import read_state
    from pynomaly.localstack.system import default_state_dir

    if not api_url or not api_key:
        state_dir = default_state_dir()
        state = read_state(state_dir) or {}
        api_url = api_url or state.get("api_url")
        key_file = state_dir / "api-key"
        if not api_key and key_file.is_file():
            api_key = key_file.read_text().strip()
    if not api_url or not api_key:
        raise click.ClickException(
            f"no API to talk to: run `pynomaly local up`, or set {ENV_API_URL} and {ENV_API_KEY}"
        )
    return PynomalyClient(api_url, api_key)


def _call(action: Callable[[], Any]) -> Any:
    from pynomaly.client import ApiError

    try:
        return action()
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None


def _parse_params(pairs: tuple[str, ...]) -> dict[str, Any] | None:
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--param")
        try:
            params[name] = json.loads(raw)
        except json.JSONDecodeError:
            params[name] = raw
    return params or None


NOTIFY_HELP = (
    "Notification target CHANNEL:TARGET[:ON[:THRESHOLD]] (repeatable), e.g. email:ops@example.com:failed, "
    "email:ops@example.com:anomaly_rate:0.05 or webhook:https://hooks.example/x (ON defaults to completed)."
)


def _parse_notify(specs: tuple[str, ...], allow_json: bool = False) -> list[dict[str, Any]] | None:
    """``--notify`` values as the API's notify list; a malformed one is a usage error naming it."""
    from pynomaly.domain.errors import InvalidInput
    from pynomaly.domain.notifications import parse_spec

    targets: list[dict[str, Any]] = []
    for spec in specs:
        if allow_json and spec.lstrip().startswith("{"):
            try:
                targets.append(json.loads(spec))
            except json.JSONDecodeError:
                raise click.BadParameter(f"{spec!r} is not JSON", param_hint="--notify") from None
            continue
        try:
            targets.append(parse_spec(spec))
        except InvalidInput as exc:
            raise click.BadParameter(str(exc), param_hint="--notify") from None
    return targets or None


def _job_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options every job-submitting command shares: priority, notices, following, output, client."""
    options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option("--priority", type=click.Choice(["low", "normal", "high", "critical"]), help="Queue priority."),
        click.option("--webhook", help="URL that receives the signed completion notice."),
        click.option("--notify", "notify", multiple=True, metavar="CHANNEL:TARGET[:ON[:THRESHOLD]]", help=NOTIFY_HELP),
        click.option(
            "--wait/--no-wait", default=False, help="Follow the job with a progress bar and print the anomalies."
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=600.0,
            show_default=True,
            help="Seconds to wait with --wait.",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print the raw JSON."),
        _client_options,
    ]
    for option in reversed(options):  # the first listed is the outermost: shown first in --help
        func = option(func)
    return func


@main.command()
@click.argument("dataset", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--detector", "-d", default="iforest", show_default=True, help="See `pynomaly detectors`.")
@click.option("--param", "-p", "params", multiple=True, help="Detector parameter NAME=VALUE (repeatable).")
@click.option("--contamination", type=float, help="Expected anomaly share, 0 < c <= 0.5.")
@click.option("--threshold", type=float, help="Explicit score threshold.")
@click.option("--steps", help="Pipeline steps, comma-separated (preprocess,detect,report,notify).")
@click.option(
    "--missing", type=click.Choice(["reject", "impute_median", "impute_mean", "drop_rows"]), help="NaN/inf policy."
)
@click.option("--scaling", type=click.Choice(["none", "standard", "robust", "minmax"]), help="Feature scaling.")
@click.option("--save-model", metavar="NAME", help="Store the fitted detector as the next version of model NAME.")
@_job_options
def submit(
    dataset: Path,
    detector: str,
    params: tuple[str, ...],
    contamination: float | None,
    threshold: float | None,
    priority: str | None,
    steps: str | None,
    missing: str | None,
    scaling: str | None,
    webhook: str | None,
    notify: tuple[str, ...],
    save_model: str | None,
    wait: bool,
    timeout: float,
    as_json: bool,
    api_url: str | None,
    api_key: str | None,
) -> None:
    """Submit DATASET (a CSV with a header row) for detection."""
    preprocessing = {k: v for k, v in (("missing", missing), ("scaling", scaling)) if v} or None
    targets = _parse_notify(notify)
    with _client(api_url, api_key) as client:
        accepted = _call(
            lambda: client.submit_csv(
                dataset,
                detector,
                params=_parse_params(params),
                contamination=contamination,
                threshold=threshold,
                priority=priority,
                steps=steps.split(",") if steps else None,
                preprocessing=preprocessing,
                webhook_url=webhook,
                notify=targets,
                save_model=save_model,
            )
        )
        _report_job(client, accepted, wait, timeout, as_json)


@main.command()
@click.argument("dataset", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", "-m", required=True, metavar="NAME[:VERSION]", help="The model (NAME: its promoted version).")
@click.option("--steps", help="Pipeline steps, comma-separated (preprocess always runs: the model's own).")
@_job_options
def score(
    dataset: Path,
    model: str,
    priority: str | None,
    steps: str | None,
    webhook: str | None,
    notify: tuple[str, ...],
    wait: bool,
    timeout: float,
    as_json: bool,
    api_url: str | None,
    api_key: str | None,
) -> None:
    """Score DATASET (a CSV with the model's columns) with a stored model: no refit."""
    targets = _parse_notify(notify)
    with _client(api_url, api_key) as client:
        accepted = _call(
            lambda: client.submit_csv(
                dataset,
                None,
                mode="score",
                model=model,
                priority=priority,
                steps=steps.split(",") if steps else None,
                webhook_url=webhook,
                notify=targets,
            )
        )
        _report_job(client, accepted, wait, timeout, as_json)


def _report_job(client: PynomalyClient, accepted: dict[str, Any], wait: bool, timeout: float, as_json: bool) -> None:
    """Print the accepted job, or follow it to the end (exit 1 unless it completed)."""
    if not wait:
        click.echo(json.dumps(accepted, indent=2) if as_json else f"job {accepted['id']} {accepted['status']}")
        return
    job = _follow(client, accepted["id"], timeout)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "job": job,
                    "result": _call(lambda: client.result(job["id"])) if job["status"] == "completed" else None,
                },
                indent=2,
            )
        )
        return
    _print_outcome(client, job)
    if job["status"] != "completed":
        sys.exit(1)


def _follow(client: PynomalyClient, job_id: str, timeout: float) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[message]}"),
        TimeElapsedColumn(),
        transient=False,
    ) as bar:
        task = bar.add_task(f"job {job_id[:8]}", total=1.0, message="queued")

        def update(job: dict[str, Any]) -> None:
            bar.update(task, completed=job["progress"], message=f"{job['status']}: {job['message']}")

        try:
            return _call(lambda: client.wait(job_id, timeout=timeout, on_update=update))
        except TimeoutError as exc:
            raise click.ClickException(str(exc)) from None


def _print_outcome(client: PynomalyClient, job: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if job["status"] != "completed":
        console.print(f"[red]job {job['id']} {job['status']}[/red]: {job.get('error') or job['message']}")
        return
    result = _call(lambda: client.result(job["id"]))
    console.print(
        f"job {job['id']} completed: [bold]{result['anomaly_count']}[/bold] anomalies in {result['rows']} rows "
        f"({result['detector']}, threshold {result['threshold']:.4g})"
    )
    model = result.get("model")
    if model:
        verb = "saved as" if model.get("saved") else "scored with"
        console.print(f"{verb} model [bold]{model['name']}:{model['version']}[/bold]")
    table = Table("row", "score", "values", "top features")
    for anomaly in result["top_anomalies"]:
        top = sorted(anomaly["contributions"].items(), key=lambda kv: -kv[1])[:3]
        table.add_row(
            str(anomaly["row"]),
            f"{anomaly['score']:.4g}",
            ", ".join(f"{k}={v:.3g}" for k, v in anomaly["values"].items()),
            ", ".join(f"{k} {v:.0%}" for k, v in top),
        )
    console.print(table)


@main.command()
@click.option("--status", type=click.Choice(["queued", "running", "retrying", "completed", "failed", "cancelled"]))
@click.option("--detector")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0)
@click.option("--json", "as_json", is_flag=True)
@_client_options
def jobs(
    status: str | None,
    detector: str | None,
    limit: int,
    offset: int,
    as_json: bool,
    api_url: str | None,
    api_key: str | None,
) -> None:
    """List jobs, newest first."""
    from rich.console import Console
    from rich.table import Table

    with _client(api_url, api_key) as client:
        page = _call(lambda: client.jobs(status=status, detector=detector, limit=limit, offset=offset))
    if as_json:
        click.echo(json.dumps(page, indent=2))
        return
    table = Table(
        "id", "status", "detector", "priority", "progress", "anomalies", "created", title=f"{page['total']} job(s)"
    )
    for job in page["items"]:
        table.add_row(
            job["id"],
            job["status"],
            job["detector"],
            job["priority"],
            f"{job['progress']:.0%}",
            "" if job["anomaly_count"] is None else str(job["anomaly_count"]),
            job["created_at"],
        )
    Console().print(table)


@main.command("job")
@click.argument("job_id")
@_client_options
def job_command(job_id: str, api_url: str | None, api_key: str | None) -> None:
    """Show one job."""
    with _client(api_url, api_key) as client:
        click.echo(json.dumps(_call(lambda: client.job(job_id)), indent=2))


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@_client_options
def notifications(job_id: str, as_json: bool, api_url: str | None, api_key: str | None) -> None:
    """A job's notification outcomes per target (queued, delivered, retrying, dead_lettered)."""
    from rich.console import Console
    from rich.table import Table

    with _client(api_url, api_key) as client:
        log = _call(lambda: client.notifications(job_id))
    if as_json:
        click.echo(json.dumps(log, indent=2))
        return
    if not log["items"]:
        click.echo(f"job {job_id}: no notifications")
        return
    console = Console()
    targets = Table("#", "channel", "target", "on", "status", "attempts", "detail", title=f"job {log['job_id']}")
    for t in log["targets"]:
        targets.add_row(
            str(t["index"]), t["channel"], t["target"], t["on"], t["status"], str(t["attempts"]), t["detail"][:80]
        )
    console.print(targets)
    history = Table("time", "#", "status", "attempt", "detail", title=f"{log['total']} outcome(s)")
    for e in log["items"]:
        history.add_row(e["time"] or e["id"], str(e["index"]), e["status"], str(e["attempt"]), e["detail"][:80])
    console.print(history)


@main.command()
@click.argument("job_id")
@_client_options
def cancel(job_id: str, api_url: str | None, api_key: str | None) -> None:
    """Cancel a queued or running job."""
    with _client(api_url, api_key) as client:
        job = _call(lambda: client.cancel(job_id))
    click.echo(
        f"job {job['id']} {job['status']}" + ("" if job["status"] == "cancelled" else " (stops at its next checkpoint)")
    )


@main.command()
@click.argument("job_id")
@_client_options
def delete(job_id: str, api_url: str | None, api_key: str | None) -> None:
    """Delete a finished job with its datasets, result and reports (a queued or running one: cancel first)."""
    with _client(api_url, api_key) as client:
        _call(lambda: client.delete_job(job_id))
    click.echo(f"job {job_id} deleted")


@main.command()
@click.argument("job_id")
@_client_options
def retry(job_id: str, api_url: str | None, api_key: str | None) -> None:
    """Run a failed or cancelled job again."""
    with _client(api_url, api_key) as client:
        job = _call(lambda: client.retry(job_id))
    click.echo(f"job {job['id']} {job['status']}")


@main.command()
@click.argument("job_id")
@click.option("--format", "fmt", type=click.Choice(["json", "csv", "html"]), default="json", show_default=True)
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write to a file instead of stdout."
)
@_client_options
def report(job_id: str, fmt: str, output: Path | None, api_url: str | None, api_key: str | None) -> None:
    """Fetch a finished job's report."""
    with _client(api_url, api_key) as client:
        body = _call(lambda: client.report(job_id, fmt))
    if output:
        output.write_text(body)
        click.echo(f"wrote {output}")
    else:
        click.echo(body, nl=not body.endswith("\n"))


@main.command()
@_client_options
def detectors(api_url: str | None, api_key: str | None) -> None:
    """List detectors and their parameters."""
    with _client(api_url, api_key) as client:
        for spec in _call(client.detectors):
            params = ", ".join(f"{k}={v['default']!r}" for k, v in spec["parameters"]["properties"].items())
            click.echo(f"{spec['name']:<8} {spec['description']}" + (f"  [{params}]" if params else ""))


@main.group()
def dlq() -> None:
    """The dead-letter queue: list, show, replay, purge."""


@dlq.command("list")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@_client_options
def dlq_list(limit: int, api_url: str | None, api_key: str | None) -> None:
    with _client(api_url, api_key) as client:
        page = _call(lambda: client.dead_letters(limit=limit))
    click.echo(f"{page['total']} dead letter(s)")
    for letter in page["items"]:
        click.echo(
            f"{letter['id']}  {letter['task']:<28} job {letter['job_id']}  "
            f"attempts {letter['attempts']}  {letter['error'][:80]}"
        )


@dlq.command("show")
@click.argument("letter_id")
@_client_options
def dlq_show(letter_id: str, api_url: str | None, api_key: str | None) -> None:
    with _client(api_url, api_key) as client:
        click.echo(json.dumps(_call(lambda: client.dead_letter(letter_id)), indent=2))


@dlq.command("replay")
@click.argument("letter_id")
@_client_options
def dlq_replay(letter_id: str, api_url: str | None, api_key: str | None) -> None:
    with _client(api_url, api_key) as client:
        out = _call(lambda: client.replay(letter_id))
    click.echo(f"replayed {out['replayed']} ({out['task']}, job {out['job_id']})")


@dlq.command("purge")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_client_options
def dlq_purge(yes: bool, api_url: str | None, api_key: str | None) -> None:
    if not yes:
        click.confirm("Delete every dead letter?", abort=True)
    with _client(api_url, api_key) as client:
        click.echo(f"purged {_call(client.purge)['purged']} dead letter(s)")


@main.group()
def models() -> None:
    """Trained models: list, show, promote (or roll back), delete."""


@models.command("list")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@_client_options
def models_list(limit: int, offset: int, as_json: bool, api_url: str | None, api_key: str | None) -> None:
    """List models, newest first."""
    with _client(api_url, api_key) as client:
        page = _call(lambda: client.models(offset=offset, limit=limit))
    if as_json:
        click.echo(json.dumps(page, indent=2))
        return
    click.echo(f"{page['total']} model(s)")
    for item in page["items"]:
        versions = ",".join(str(v) for v in item["versions"])
        click.echo(f"{item['name']:<32} promoted {item['promoted']}  latest {item['latest']}  versions {versions}")


def _model_arg(value: str) -> tuple[str, int | None]:
    from pynomaly.domain.errors import InvalidInput
    from pynomaly.domain.models import ModelRef

    try:
        ref = ModelRef.parse(value)
    except InvalidInput as exc:
        raise click.BadParameter(str(exc), param_hint="NAME[:VERSION]") from None
    return ref.name, ref.version


@models.command("show")
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@_client_options
def models_show(model: str, as_json: bool, api_url: str | None, api_key: str | None) -> None:
    """Show MODEL (NAME: every version; NAME:VERSION: that version)."""
    name, version = _model_arg(model)
    with _client(api_url, api_key) as client:
        data = _call(lambda: client.model(name) if version is None else client.model_version(name, version))
    if as_json or version is not None:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"model {data['name']}: promoted {data['promoted']}, latest {data['latest']}")
    for v in data["versions"]:
        mark = "*" if v["promoted"] else " "
        click.echo(
            f"{mark} v{v['version']:<4} {v['detector']:<7} threshold {v['threshold']:.4g}  {v['rows']} rows  "
            f"{','.join(v['columns'])}  job {v['training_job']}  {v['created_at']}  sha256 {v['checksum'][:12]}"
        )


@models.command("promote")
@click.argument("name")
@click.argument("version", type=click.IntRange(min=1))
@_client_options
def models_promote(name: str, version: int, api_url: str | None, api_key: str | None) -> None:
    """Make VERSION the one NAME means (an older version rolls back)."""
    name, _ = _model_arg(name)
    with _client(api_url, api_key) as client:
        data = _call(lambda: client.promote(name, version))
    click.echo(f"model {data['name']}: version {data['promoted']} promoted")


@models.command("delete")
@click.argument("model")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation when deleting a whole model.")
@_client_options
def models_delete(model: str, yes: bool, api_url: str | None, api_key: str | None) -> None:
    """Delete MODEL (NAME: the model with every version; NAME:VERSION: that version only)."""
    name, version = _model_arg(model)
    if version is None and not yes:
        click.confirm(f"Delete model {name} with every version?", abort=True)
    with _client(api_url, api_key) as client:
        _call(lambda: client.delete_model(name, version))
    click.echo(f"model {model} deleted")


# Added commands: `beat`, `schedules`, `datasets` (cli_schedules); `stream`, `produce` (cli_streams).
from pynomaly import cli_schedules, cli_streams  # noqa: E402,F401
