"""Process logging: JSON lines or a console format, the fields in scope on every record, secrets masked.

Every component (API, worker, consumer, beat) calls :func:`configure_logging` once at start with its
component name; third-party loggers (uvicorn's access log, Celery's own, kafka-python) propagate to
the same root handler, so every line of a process has the same shape.

- ``json`` (the chart's): one object per line with ``time`` (UTC, ISO 8601), ``level``,
  ``component``, ``logger``, ``message``, and ``job_id`` / ``task_id`` / ``event_id`` whenever one is
  in scope, ``trace_id`` / ``span_id`` inside a recording span, ``exception`` with a traceback.
- ``console`` (the local system's): ``time level component logger [job_id=… task_id=…]: message``.

The fields in scope are a context variable: the task policy sets ``task_id`` and ``job_id`` for a
task's run, the API for a request on a job, the consumers and the outbox relay for an event.

Secrets: every secret value of the settings (the Redis password, the Kafka SASL password, API keys,
the webhook secret, the SMTP password, Flower's basic-auth passwords, encryption keys; from the
variables and from their files) is replaced by ``***`` in the message, the exception and every field,
before the line is written.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar, Token
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import unquote, urlparse

from pynomaly.config import Settings

LOG_FORMATS = ("json", "console")
#: The fields a scope may carry, in the order lines show them.
SCOPE_FIELDS = ("job_id", "task_id", "event_id")
MASK = "***"
# Shorter "secrets" would mask every occurrence of a common substring and protect nothing.
MIN_SECRET_LENGTH = 4

_scope: ContextVar[dict[str, str] | None] = ContextVar("pynomaly_log_scope", default=None)


def push(**fields: str | None) -> Token[dict[str, str] | None]:
    """Open a scope with ``fields`` on top of the enclosing one; :func:`pop` with the token closes it."""
    merged = {**(_scope.get() or {}), **{k: str(v) for k, v in fields.items() if v}}
    return _scope.set(merged)


def pop(token: Token[dict[str, str] | None]) -> None:
    _scope.reset(token)


@contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    token = push(**fields)
    try:
        yield
    finally:
        pop(token)


def bind(**fields: str | None) -> None:
    """Add ``fields`` to the current scope in place: code that shares the scope sees them too (the
    API's access log line is written outside the route, in the request's outer scope).

    Outside any scope (a script, a test calling a use case) it does nothing: a scope set here would
    never be closed and would name that job on every later line of the thread."""
    scope = _scope.get()
    if scope is not None:
        scope.update({k: str(v) for k, v in fields.items() if v})


def current_fields() -> dict[str, str]:
    return dict(_scope.get() or {})


def secret_values(settings: Settings) -> list[str]:
    """Every secret the settings hold or point at (files that cannot be read add nothing: the
    component reports that itself)."""
    values: list[str] = []
    password = urlparse(settings.redis_url).password if settings.redis_url else None
    if password:
        values += [password, unquote(password)]
    values += [
        settings.kafka_sasl_password,
        settings.webhook_secret,
        settings.smtp_password.get_secret_value(),
        *settings.api_keys.split(","),
        *settings.encryption_keys.get_secret_value().split(","),
        # Flower's user:password pairs: each password (and the pair, masked whole when it is logged).
        *(
            part
            for entry in settings.flower_basic_auth.get_secret_value().split(",")
            for part in (entry, entry.partition(":")[2])
        ),
    ]
    for name in (settings.api_keys_file, settings.encryption_keys_file):
        values += _file_lines(name)
    found = {v.strip() for v in values if len(v.strip()) >= MIN_SECRET_LENGTH}
    return sorted(found, key=len, reverse=True)  # the longest first: no partial mask of a longer one


def _file_lines(name: str) -> Iterable[str]:
    if not name:
        return []
    try:
        lines = Path(name).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    # Comments and sha256:<hex> lines (an API key's hash, not the key) are no secrets.
    return [line for line in lines if line.strip() and not line.lstrip().startswith(("#", "sha256:"))]


class Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = tuple(secrets)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


class _Formatter(logging.Formatter):
    def __init__(self, component: str, redact: Redactor) -> None:
        super().__init__()
        self.component = component
        self.redact = redact

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "component": self.component,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields.update(current_fields())
        fields.update(_trace_fields())
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            fields["exception"] = record.exc_text
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        return {k: self.redact(v) if isinstance(v, str) else v for k, v in fields.items()}


class JsonFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # ensure_ascii: a line stays one line and plain ASCII whatever the message holds.
        return json.dumps(self.fields(record), ensure_ascii=True, default=str)


class ConsoleFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = self.fields(record)
        scope = " ".join(f"{k}={fields[k]}" for k in (*SCOPE_FIELDS, "trace_id") if k in fields)
        line = f"{fields['time']} {fields['level']} {fields['component']} {fields['logger']}"
        line += f" [{scope}]: {fields['message']}" if scope else f": {fields['message']}"
        for extra in ("exception", "stack"):
            if extra in fields:
                line += "\n" + fields[extra]
        return line


def _iso(created: float) -> str:
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"


def _trace_fields() -> dict[str, str]:
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def make_formatter(settings: Settings, component: str) -> logging.Formatter:
    redact = Redactor(secret_values(settings))
    return (JsonFormatter if settings.log_format == "json" else ConsoleFormatter)(component, redact)


def configure_logging(settings: Settings, component: str, stream: TextIO | None = None) -> None:
    """One handler on the root logger (stderr) with this process's format; replaces any other."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(make_formatter(settings, component))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    logging.captureWarnings(True)


def keep_celery_off_logging() -> None:
    """Celery (worker and beat) leaves logging to ours: any receiver of its setup_logging signal tells
    it not to add handlers or formats of its own; its loggers then write through the root handler."""
    from celery.signals import setup_logging

    setup_logging.connect(_celery_leaves_logging, weak=False, dispatch_uid="pynomaly-logging")


def _celery_leaves_logging(**_: Any) -> None:
    return None


def celery_notices_as_log_lines(settings: Settings, component: str) -> None:
    """Celery's worker writes its shutdown notices ("worker: Warm shutdown (MainProcess)") with a bare
    os.write, around logging (they come from signal handlers).  With JSON lines they are formatted as
    records of ``celery.apps.worker`` and still written with one os.write, so every line stays one object."""
    import celery.apps.worker as celery_worker

    formatter = make_formatter(settings, component)

    def say(msg: str, f: Any = sys.__stderr__) -> None:
        record = logging.LogRecord("celery.apps.worker", logging.INFO, __file__, 0, msg.strip(), None, None)
        # Best effort, as Celery's own: a notice that cannot be written must never abort a shutdown.
        with suppress(OSError, ValueError, AttributeError):
            os.write(f.fileno(), (formatter.format(record) + "\n").encode())

    celery_worker.safe_say = say
