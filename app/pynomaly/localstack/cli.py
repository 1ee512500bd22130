"""``pynomaly local up | down | status``: the whole system on this machine, on real Redis and real Kafka.

Imported by the application's CLI at start, so it stays light: the heavy modules (Redis and Kafka
clients, the supervisor) are imported inside the commands.  Other commands that need a running
local system (``local demo``) reuse :func:`system_options`, :func:`system_from_options`,
:func:`print_summary` and :func:`run_local`.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from pynomaly.localstack.system import LocalSystem

F = TypeVar("F", bound=Callable[..., Any])

EXIT_NOT_RUNNING = 3  # like `systemctl status` / LSB for a service that is not running

RESTART_HELP = (
    "A component (API, worker, consumer, beat) that exits is started again after 1 s, doubling up to 30 s "
    "for repeated crashes (back to 1 s once it stayed healthy for 60 s); after 5 restarts within 300 s "
    "it is marked failed and left down (`local status` shows its log tail).  Redis and Kafka are not "
    "restarted: in the foreground their exit stops everything, detached `local status` shows it."
)


def system_options(func: F) -> F:
    """The options every command that starts a local system takes."""
    port = click.IntRange(1, 65535)
    options = [
        click.option(
            "--state-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="Where data, logs, jars and pids live [env PYNOMALY_STATE_DIR; default ./.pynomaly].",
        ),
        click.option("--api-port", type=port, default=None, help="API port [default: a free one]."),
        click.option("--redis-port", type=port, default=None, help="Redis port [default: a free one]."),
        click.option("--kafka-port", type=port, default=None, help="Kafka client port [default: a free one]."),
        click.option("--kafka-controller-port", type=port, default=None, help="KRaft controller port [default: free]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def state_dir_option(func: F) -> F:
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="State directory of the local system [env PYNOMALY_STATE_DIR; default ./.pynomaly].",
    )(func)


def resolve_state_dir(state_dir: Path | None) -> Path:
    from pynomaly.localstack.system import default_state_dir

    return state_dir.resolve() if state_dir else default_state_dir()


def system_from_options(
    state_dir: Path | None = None,
    api_port: int | None = None,
    redis_port: int | None = None,
    kafka_port: int | None = None,
    kafka_controller_port: int | None = None,
    **kwargs: Any,
) -> LocalSystem:
    """A :class:`LocalSystem` from :func:`system_options`' values (extra keyword arguments pass through)."""
    from pynomaly.localstack.system import LocalSystem

    return LocalSystem(
        resolve_state_dir(state_dir),
        api_port=api_port,
        redis_port=redis_port,
        kafka_port=kafka_port,
        kafka_controller_port=kafka_controller_port,
        **kwargs,
    )


def fail(message: str, detail: str = "", code: int = 1) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    if detail:
        for line in detail.rstrip().splitlines():
            click.echo(f"    {line}", err=True)
    sys.exit(code)


@contextmanager
def clear_errors() -> Iterator[None]:
    """The local system's errors as one red line (plus a log tail) and exit 1, never a traceback."""
    from pynomaly.config import SettingsError
    from pynomaly.localstack.errors import LocalStackError

    try:
        yield
    except LocalStackError as exc:
        fail(str(exc), exc.detail)
    except SettingsError as exc:
        fail(str(exc))


def print_summary(system: LocalSystem, show_key: bool = True) -> None:
    info = system.summary()
    click.echo("")
    click.secho("Pynomaly is running on this machine:", bold=True)
    click.echo(f"  API            {info['api_url']}")
    click.echo(f"  dashboard      {info['dashboard_url']}")
    if show_key:
        # Printed here once for the person who started it; logs and local.json only name the file.
        click.echo(f"  API key        {system.api_key}   (also in {info['api_key_file']})")
    click.echo(f"  Redis          {info['redis_url']}   (password in {system.state_dir / 'redis' / 'redis.conf'})")
    click.echo(f"  Kafka          {info['kafka_bootstrap_servers']}")
    if info["flower_url"]:
        click.echo(f"  Flower         {info['flower_url']}   (basic auth user:password in {info['flower_auth_file']})")
    click.echo(f"  logs           {info['logs']}/")
    click.echo("")


@contextmanager
def run_local(system: LocalSystem, detach: bool = False) -> Iterator[LocalSystem]:
    """Start ``system`` with progress on stderr and errors as clear lines; stop it after the block.

    Ctrl-C (and SIGTERM from `local down`) inside the block ends it with a clean stop.  With
    ``detach`` the system is left running when the block ends normally.
    """
    from pynomaly.localstack.progress import StreamProgress
    from pynomaly.localstack.system import sigterm_as_interrupt

    progress = StreamProgress()
    with clear_errors(), sigterm_as_interrupt():
        try:
            system.start(progress=progress)
            yield system
            if detach and not system.detached:
                system.detach()
        except KeyboardInterrupt:
            click.echo("", err=True)
            progress.step("interrupted")
        finally:
            if system.began and not system.detached:
                # A second Ctrl-C must not cut the stop short and leave half the processes running.
                previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
                try:
                    system.stop(progress=progress)
                finally:
                    signal.signal(signal.SIGINT, previous)
                progress.step("stopped; nothing left running")


@click.group("local")
def local() -> None:
    """The whole system on this machine: real Redis and Kafka, the API, workers and consumers."""


@local.command(epilog=RESTART_HELP)
@system_options
@click.option(
    "--detach",
    is_flag=True,
    help="Return once everything is healthy; a background supervisor process keeps restarting "
    "components; stop all with `local down`.",
)
@click.option(
    "--flower",
    is_flag=True,
    help="Also run Flower (Celery's web monitor) on loopback, behind basic auth "
    "(user:password generated into <state-dir>/flower-auth).",
)
@click.option(
    "--flower-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Flower's port (implies --flower) [default: free].",
)
def up(detach: bool, flower: bool, flower_port: int | None, **options: Any) -> None:
    """Start Redis, Kafka, the API, a worker per pool and the consumers; wait until all are healthy.

    Runs in the foreground until Ctrl-C unless --detach is given; either way components that exit
    are restarted with backoff.
    """
    from pynomaly.localstack.progress import StreamProgress

    system = system_from_options(die_with_parent=not detach, flower=flower, flower_port=flower_port, **options)
    with run_local(system, detach=detach):
        print_summary(system)
        if detach:
            system.detach()
            assert system.watcher is not None
            click.echo(
                f"Left running in the background, supervised by pid {system.watcher.pid}; "
                "stop it with `pynomaly local down`."
            )
            return
        click.echo("Press Ctrl-C to stop everything.")
        system.watch(progress=StreamProgress())


@local.command()
@state_dir_option
def down(state_dir: Path | None) -> None:
    """Stop the local system started from this state directory (from any shell).

    The background supervisor of `up --detach` is stopped first, then every process `local.json`
    lists, the ones it restarted included.
    """
    from pynomaly.localstack.progress import StreamProgress
    from pynomaly.localstack.system import stop_from_state

    directory = resolve_state_dir(state_dir)
    with clear_errors():
        stopped = stop_from_state(directory, progress=StreamProgress())
    if stopped:
        click.echo(f"stopped: {', '.join(stopped)}")
    else:
        click.echo(f"nothing is running from {directory}")


@local.command()
@state_dir_option
def status(state_dir: Path | None) -> None:
    """Show what runs, whether it is healthy, its restarts, and where things are.

    Exit 0 = all healthy, 1 = not (a component exited, restarting or failed), 3 = not running.
    """
    from pynomaly.localstack.system import status_from_state

    directory = resolve_state_dir(state_dir)
    data = status_from_state(directory)
    if not data or not any(p["alive"] for p in data["processes"]):
        click.echo(f"not running (state dir {directory})")
        sys.exit(EXIT_NOT_RUNNING)
    click.echo(f"API        {data['api_url']}   dashboard {data['dashboard_url']}")
    click.echo(f"Redis      {data['redis_url']}   Kafka {data['kafka_bootstrap_servers']}")
    click.echo(f"API key in {data['api_key_file']}   logs in {data['logs']}/")
    if data.get("flower_url"):
        click.echo(f"Flower     {data['flower_url']}   (user:password in {data['flower_auth_file']})")
    click.echo(f"started by pid {data['owner']['pid']} ({'detached' if data.get('detached') else 'foreground'})")
    watcher = data.get("watcher")
    if watcher:
        if data["watcher_alive"]:
            click.echo(f"supervised by pid {watcher['pid']} (restarts exited components; log {watcher['log']})")
        else:
            click.echo(f"supervisor pid {watcher['pid']} is NOT running: nothing restarts exited components")
    elif data.get("supervising") and data.get("owner_alive"):
        click.echo(f"supervised by pid {data['owner']['pid']} above (restarts exited components)")
    healthy = bool(data.get("ready"))
    if not healthy:
        click.echo("still starting: not every component is up yet")
    for row in data["processes"]:
        if row["failed"]:
            state, healthy = f"FAILED: {row['failed']}", False
        elif not row["alive"]:
            state, healthy = "EXITED" + (" (restart pending)" if row["restart_due"] else ""), False
        elif row["problem"]:
            state, healthy = f"UNHEALTHY: {row['problem']}", False
        else:
            state = "ok"
        restarts = f"  restarts {row['restarts']}" if row["restarts"] else ""
        click.echo(f"  {row['name']:<22} pid {row['pid']:<8} {state}{restarts}")
        if row["failed"] and row["log_tail"]:
            click.echo(f"      last lines of {row['log']}:")
            for line in row["log_tail"].splitlines():
                click.echo(f"      | {line}")
    sys.exit(0 if healthy else 1)
