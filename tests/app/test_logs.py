"""Log lines (JSON and console), the fields in scope, secret masking, and which OTEL_* settings turn
tracing on.  Unit tests of observability/logs.py and tracing.py; the components' real output is
checked in tests/e2e/test_observability.py."""

from __future__ import annotations

import contextvars
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from pynomaly.config import Settings, SettingsError, settings_from_env
from pynomaly.observability import logs
from pynomaly.observability.tracing import exporters_from_env

REDIS_PASSWORD = "redis-pw-Zq81x"
SECRETS = {
    "redis": REDIS_PASSWORD,
    "kafka": "kafka-sasl-pw-77Qe",
    "api_key": "api-key-from-var-9d2c",
    "api_key_file": "api-key-from-file-4b1a",
    "webhook": "webhook-secret-Hq0p",
    "smtp": "smtp-pw-Xy55",
    "flower": "flower-basic-auth-pw-6Tn3",
    "encryption": "c2VjcmV0LWtleS0zMi1ieXRlcy1sb25nLi4uLi4uLi4=",
    "encryption_file": "ZmlsZS1rZXktMzItYnl0ZXMtbG9uZy4uLi4uLi4uLi4=",
}


@pytest.fixture
def secret_settings(tmp_path: Path) -> Settings:
    (tmp_path / "keys").write_text(f"# API keys\n{SECRETS['api_key_file']}\nsha256:{'0' * 64}\n")
    (tmp_path / "enc").write_text(f"{SECRETS['encryption_file']}\n")
    return Settings(
        redis_url=f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0",
        kafka_sasl_password=SECRETS["kafka"],
        api_keys=f"{SECRETS['api_key']}, ",
        api_keys_file=str(tmp_path / "keys"),
        webhook_secret=SECRETS["webhook"],
        smtp_password=SECRETS["smtp"],
        flower_basic_auth=f"admin:{SECRETS['flower']}",
        encryption_keys=SECRETS["encryption"],
        encryption_keys_file=str(tmp_path / "enc"),
        log_level="DEBUG",
        log_format="json",
    )


@pytest.fixture
def capture(secret_settings: Settings) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through the component formatter into a buffer (the root logger stays pytest's)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.make_formatter(secret_settings, "worker:test"))
    logger = logging.getLogger("pynomaly.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, out
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_json_line_has_the_fields_and_the_scope(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = capture
    logger.info("outside any scope")
    with logs.log_context(job_id="job-1", task_id="task-1"):
        with logs.log_context(event_id="event-1"):
            logger.warning("inner %s", "line")
        logger.info("back in the task")
    first, inner, back = lines(out)
    assert set(first) == {"time", "level", "component", "logger", "message"}
    assert first["component"] == "worker:test" and first["logger"] == "pynomaly.test_logs"
    assert str(first["time"]).endswith("Z") and first["level"] == "INFO"
    assert inner == {
        "time": inner["time"],
        "level": "WARNING",
        "component": "worker:test",
        "logger": "pynomaly.test_logs",
        "message": "inner line",
        "job_id": "job-1",
        "task_id": "task-1",
        "event_id": "event-1",
    }
    assert "event_id" not in back and back["job_id"] == "job-1"


def test_bind_adds_to_the_scope_its_sharers_see(capture: tuple[logging.Logger, io.StringIO]) -> None:
    # The API binds a job id inside the route; the access line, written outside, shares the scope.
    logger, out = capture
    token = logs.push()
    try:
        logs.bind(job_id="job-2")
        logger.info("access line")
    finally:
        logs.pop(token)
    logger.info("after the request")
    during, after = lines(out)
    assert during["job_id"] == "job-2" and "job_id" not in after


def test_bind_outside_any_scope_leaves_later_lines_alone(capture: tuple[logging.Logger, io.StringIO]) -> None:
    # A use case called outside a request or task (a script, a test) binds its job id: nothing
    # may keep it for the thread's later lines.
    logger, out = capture

    def outside() -> None:
        logs.bind(job_id="job-3")
        logger.info("a later line")

    contextvars.Context().run(outside)  # a context with no scope, whatever ran before in this thread
    (line,) = lines(out)
    assert "job_id" not in line


def test_every_secret_is_masked_in_messages_fields_and_tracebacks(
    capture: tuple[logging.Logger, io.StringIO], secret_settings: Settings
) -> None:
    logger, out = capture
    for name, secret in SECRETS.items():
        logger.debug("settings %s = %s", name, secret)
    logger.info("connecting to %s", secret_settings.redis_url)
    with logs.log_context(job_id=SECRETS["api_key"]):
        logger.info("a scope field")
    try:
        raise RuntimeError(f"auth failed with {SECRETS['smtp']}")
    except RuntimeError:
        logger.exception("delivery failed")
    raw = out.getvalue()
    for name, secret in SECRETS.items():
        assert secret not in raw, name
    parsed = lines(out)
    assert len(parsed) == len(SECRETS) + 3
    assert parsed[0]["message"] == "settings redis = ***"
    assert parsed[len(SECRETS)]["message"] == "connecting to redis://:***@127.0.0.1:6379/0"
    assert parsed[-1]["exception"].endswith("RuntimeError: auth failed with ***")  # type: ignore[union-attr]


def test_secret_values_reads_the_key_files_and_skips_hashes(secret_settings: Settings) -> None:
    found = logs.secret_values(secret_settings)
    assert set(SECRETS.values()) <= set(found)
    assert not any(v.startswith(("#", "sha256:")) for v in found)
    assert found == sorted(found, key=len, reverse=True)


def test_console_lines_are_readable(secret_settings: Settings) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.make_formatter(secret_settings.model_copy(update={"log_format": "console"}), "api"))
    record = logging.LogRecord("pynomaly.x", logging.INFO, __file__, 1, "hello %s", (SECRETS["kafka"],), None)
    with logs.log_context(job_id="j1", task_id="t1"):
        handler.emit(record)
    line = out.getvalue().rstrip("\n")
    assert line.endswith(" INFO api pynomaly.x [job_id=j1 task_id=t1]: hello ***"), line


def test_log_format_is_validated() -> None:
    assert settings_from_env({"PYNOMALY_LOG_FORMAT": "JSON"}).log_format == "json"
    assert Settings().log_format == "console"
    with pytest.raises(SettingsError, match=r"PYNOMALY_LOG_FORMAT: .*must be json or console"):
        settings_from_env({"PYNOMALY_LOG_FORMAT": "xml"})


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, []),  # off unless asked: no exporter, no connection attempts
        ({"OTEL_SERVICE_NAME": "x"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, []),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, []),
    ],
)
def test_tracing_is_on_only_when_the_otel_variables_ask(environ: dict[str, str], expected: list[str]) -> None:
    assert exporters_from_env(environ) == expected


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER: 'zipkin' is not supported"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            "OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf' is not supported",
        ),
    ],
)
def test_unsupported_otel_settings_are_refused_by_name(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        exporters_from_env(environ)
