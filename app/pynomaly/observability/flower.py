"""``pynomaly flower``: Celery's Flower on the application's own Celery app, always behind basic auth.

Flower is run in-process rather than through ``celery flower``: its command also reads ``FLOWER_*``
variables and executes a ``flowerconfig.py`` from the working directory, either of which could turn
authentication off. Here the only way in is ``PYNOMALY_FLOWER_BASIC_AUTH``, checked before anything
binds a port. ``/healthcheck`` (the probes) and ``/metrics`` answer without credentials, as Flower's own;
every page and ``/api/*`` needs them.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import signal
import sys
from types import FrameType

from pynomaly.config import ENV_PREFIX, Settings, SettingsError

log = logging.getLogger(__name__)

MIN_PASSWORD_LENGTH = 12
VARIABLE = ENV_PREFIX + "FLOWER_BASIC_AUTH"


def basic_auth_entries(value: str) -> list[str]:
    """The ``user:password`` pairs of ``value`` (comma-separated), or SettingsError saying what is wrong.

    Messages name the entry by position, never its content: it holds a password.
    """
    entries = [part.strip() for part in value.split(",")]
    if not any(entries):
        raise SettingsError(
            f"{VARIABLE} is empty: Flower never runs without authentication; set it to user:password "
            "(e.g. `admin:$(openssl rand -base64 24)`, from a Secret)"
        )
    for number, entry in enumerate(entries, start=1):
        user, sep, password = entry.partition(":")
        where = f"{VARIABLE}: entry {number} of {len(entries)}"
        if not sep or not user or not password:
            raise SettingsError(f"{where} is not user:password")
        if any(ch.isspace() or not ch.isprintable() for ch in user):
            raise SettingsError(f"{where}: the user name has whitespace or control characters")
        if any(not ch.isprintable() for ch in password):
            raise SettingsError(f"{where}: the password has control characters")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise SettingsError(f"{where}: the password is shorter than {MIN_PASSWORD_LENGTH} characters")
    return entries


def run_flower(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Serve Flower until SIGTERM or Ctrl-C; SettingsError (before binding) without valid credentials."""
    credentials = basic_auth_entries(settings.flower_basic_auth.get_secret_value())
    from flower.app import Flower
    from flower.options import options
    from flower.urls import settings as web_settings

    from pynomaly.messaging.celery_app import create_celery

    app = create_celery(settings)
    options.basic_auth = credentials
    options.auth = ""  # no OAuth: basic auth is the one way in
    options.address = host or settings.flower_host
    options.port = port or settings.flower_port
    options.persistent = False  # state stays in memory: the root filesystem is read-only in the chart
    flower = Flower(capp=app, options=options, **web_settings)
    atexit.register(flower.stop)

    def stop(signum: int, frame: FrameType | None) -> None:
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    bound = flower.start_http_server()
    log.info(
        "Flower on http://%s:%s/ (basic auth, %d user(s)); broker %s",
        options.address,
        bound,
        len(credentials),
        flower.broker_uri,  # kombu masks the password
    )
    with contextlib.suppress(KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM through stop()
        flower.start()
