"""Runtime settings, read once from ``PYNOMALY_*`` environment variables into a typed object.

Every component (API, workers, consumers, CLI) calls :func:`load_settings`; nothing else reads the
environment.  The chart and the local system set the same variables, so the table in the README and
``pynomaly settings`` (which prints this model's schema) stay the single description of them.
"""

from __future__ import annotations

import hashlib
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from pynomaly.storage.encryption import BlobCodec

ENV_PREFIX = "PYNOMALY_"


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the variable and what to do."""


# Streams keep at least this many entries (the WebSocket gap check relies on it).
MIN_STREAM_MAXLEN = 10


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    environment: str = Field("local", description="Name shown in logs and events (local, dev, onprem, cloud).")
    redis_url: str = Field(
        "", description="Celery broker, result backend, job store and streams (redis:// or rediss://)."
    )
    redis_tls_cert_reqs: str = Field(
        "required", description="Server certificate check of rediss:// URLs: required, optional or none."
    )
    redis_tls_ca_file: str = Field(
        "", description="CA bundle that signs Redis's certificate with rediss:// ('' = the system's CAs)."
    )
    kafka_bootstrap_servers: str = Field("", description="Comma-separated host:port list of Kafka brokers.")
    kafka_security_protocol: str = Field("PLAINTEXT", description="PLAINTEXT, SASL_PLAINTEXT, SASL_SSL or SSL.")
    kafka_sasl_mechanism: str = Field("SCRAM-SHA-512", description="SASL mechanism when SASL is on.")
    kafka_sasl_username: str = Field("", description="SASL user name.")
    kafka_sasl_password: str = Field("", description="SASL password (from a Secret).")
    kafka_replication_factor: int = Field(1, ge=1, description="Replication of topics created at start.")
    kafka_min_insync_replicas: int = Field(1, ge=1, description="min.insync.replicas of topics created at start.")
    kafka_delivery_timeout_seconds: float = Field(
        10.0,
        ge=1,
        description="How long the outbox relay tries to deliver a batch to Kafka before it backs off and "
        "retries it (the events stay in the outbox: none is lost). Twice this plus 10 s is how long a dead "
        "relay's lease lasts before another process's relay takes over.",
    )
    kafka_session_timeout_seconds: float = Field(
        10.0,
        ge=6,
        le=300,
        description="How long Kafka waits for a silent consumer before giving its partitions to another "
        "member (a killed bridge's events wait this long; heartbeats go every third of it).",
    )
    outbox_max_events: int = Field(
        100_000,
        ge=100,
        description="Most events the Redis outbox holds while Kafka is away; at the bound new jobs get 503 "
        "(events of accepted jobs are still written: nothing accepted is dropped).",
    )

    api_keys: str = Field("", description="Comma-separated API keys (plain). Prefer api_keys_file.")
    api_keys_file: str = Field("", description="File with one API key, or one sha256:<hex> hash, per line.")
    api_host: str = Field("127.0.0.1", description="Address the API binds to.")
    api_port: int = Field(8000, ge=1, le=65535, description="Port the API binds to.")
    public_url: str = Field("", description="Base URL clients use to reach the API (for links in reports).")

    task_time_limit: int = Field(3600, ge=1, description="Hard time limit of a task, seconds.")
    task_soft_time_limit: int = Field(3300, ge=1, description="Soft time limit of a task, seconds.")
    retry_backoff_base: float = Field(
        60.0, ge=0, description="First retry delay, seconds; doubles per retry, equal jitter (uniform in [d/2, d])."
    )
    retry_backoff_max: float = Field(3600.0, ge=0, description="Cap on one retry delay, seconds.")
    max_retries: int = Field(3, ge=0, le=10, description="Retries before a job goes to the dead-letter queue.")
    worker_concurrency: int = Field(0, ge=0, description="Processes per worker; 0 takes the pool's default.")

    stream_maxlen: int = Field(1000, ge=MIN_STREAM_MAXLEN, description="Approximate MAXLEN of each Redis stream.")
    bridge_dedup_ttl_seconds: int = Field(
        900,
        ge=60,
        le=7 * 24 * 3600,
        description="How long the bridge remembers an event id it copied into dashboard:stream, so a "
        "redelivery is not appended twice. It must cover the redelivery window: a consumer's uncommitted "
        "poll after a crash (kafka_session_timeout_seconds) plus a relay's re-send after its lease lapses "
        "(2 x kafka_delivery_timeout_seconds + 10 s). One key per event: at 2,000 events/s the default "
        "keeps about 1.8 million (the old 7 days kept 1.2 billion).",
    )
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Largest accepted dataset, bytes.")
    max_rows: int = Field(100_000, ge=1, description="Most rows a dataset may have.")
    max_columns: int = Field(200, ge=1, description="Most columns a dataset may have.")
    result_ttl_seconds: int = Field(
        7 * 24 * 3600, ge=60, description="How long a job's record, result and reports are kept, seconds."
    )
    job_data_ttl_seconds: int = Field(
        0,
        ge=0,
        description="How long a job's submitted dataset is kept, seconds (0 = as long as the job, "
        "result_ttl_seconds); a failed or cancelled job can be retried only while it is kept. The "
        "preprocessed copy is deleted as soon as the job finishes.",
    )
    redis_memory_high_watermark: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Share of Redis' maxmemory above which the API refuses new jobs and dataset uploads with "
        "507 (what is stored, plus what queued jobs will still write); Redis itself refuses writes only at "
        "maxmemory. No effect when Redis has no maxmemory.",
    )
    local_redis_maxmemory: str = Field(
        "512mb",
        description="maxmemory of the redis-server the local system starts (pynomaly local up, the tests), "
        "e.g. 512mb; with noeviction Redis refuses writes past it, so the API refuses new work before.",
    )
    audit_retention_seconds: int = Field(
        90 * 24 * 3600, ge=0, description="Audit records older than this are deleted by maintenance (0 = no age limit)."
    )
    audit_max_records: int = Field(
        100_000, ge=0, description="Most audit records kept; maintenance deletes the oldest beyond it (0 = no limit)."
    )
    event_max_list_items: int = Field(
        2000,
        ge=1,
        description="Lists in event data (Kafka, dashboard stream) keep their first this many items; a sibling "
        "<name>_total gives the full length (2000: the score sample the dashboard charts).",
    )
    event_max_mapping_items: int = Field(
        50,
        ge=1,
        description="Mappings in event data (e.g. per-column contributions) keep this many entries (the largest "
        "numbers, or the first ones); a sibling <name>_total gives the full count.",
    )
    event_max_string_chars: int = Field(
        2000, ge=64, description="Strings in event data (e.g. errors) are cut to this many characters."
    )
    webhook_secret: str = Field("", description="HMAC-SHA256 key that signs webhook bodies.")
    encryption_enabled: bool = Field(
        False,
        description="Encrypt dataset, result and report blobs in Redis (AES-256-GCM) with the first key; "
        "job, schedule and dataset metadata stay plain. Needs encryption_keys_file or encryption_keys.",
    )
    encryption_keys_file: str = Field(
        "",
        description="File (from a Secret) with one base64 32-byte key per line: the first encrypts, the others "
        "only decrypt (rotation). Read even with encryption off, so encrypted blobs stay readable.",
    )
    encryption_keys: SecretStr = Field(
        SecretStr(""), description="Comma-separated base64 keys, as encryption_keys_file (prefer the file)."
    )

    smtp_host: str = Field("", description="SMTP server of e-mail notifications ('' = e-mail deliveries fail).")
    smtp_port: int = Field(587, ge=1, le=65535, description="SMTP port (587 STARTTLS, 465 TLS, 25 none).")
    smtp_security: str = Field("starttls", description="none, starttls (upgrade after connecting) or tls (implicit).")
    smtp_username: str = Field("", description="SMTP login user; empty: no AUTH.")
    smtp_password: SecretStr = Field(SecretStr(""), description="SMTP login password (from a Secret).")
    smtp_from: str = Field("pynomaly@localhost", description="From address of notification e-mails.")
    smtp_timeout: float = Field(10.0, gt=0, description="Seconds to connect to and talk with the SMTP server.")

    heartbeat_dir: str = Field("", description="Where components touch their heartbeat file ('' = none).")
    heartbeat_interval: float = Field(5.0, gt=0, description="Seconds between heartbeats.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus port of workers/consumers (0 = off).")
    log_level: str = Field("INFO", description="Python log level.")
    flower_host: str = Field("127.0.0.1", description="Address Flower (`pynomaly flower`) binds to.")
    flower_port: int = Field(5555, ge=1, le=65535, description="Port Flower (`pynomaly flower`) binds to.")
    flower_basic_auth: SecretStr = Field(
        SecretStr(""),
        description="Comma-separated user:password pairs Flower's HTTP basic auth accepts (from a Secret; "
        "passwords of at least 12 characters). `pynomaly flower` refuses to start without one: never anonymous.",
    )
    log_format: str = Field(
        "console",
        description="json: one JSON object per line (time, level, component, logger, message, job_id, task_id, "
        "event_id in scope), what the chart sets; console: one readable line each (the local system's).",
    )

    # -- schedules, stored datasets, beat and maintenance ------------------------------------------
    schedule_min_interval_seconds: int = Field(
        60, ge=1, description="Shortest interval a schedule may have; cron schedules run at most once a minute."
    )
    max_schedules: int = Field(1000, ge=1, description="Most recurring detection schedules kept at once.")
    max_datasets: int = Field(1000, ge=1, description="Most stored datasets kept at once.")
    dataset_retention_seconds: int = Field(
        30 * 24 * 3600, ge=0, description="Stored datasets no schedule uses are deleted after this (0 = keep)."
    )
    dataset_fetch_timeout: float = Field(10.0, gt=0, description="Timeout of fetching a schedule's dataset URL.")
    dataset_fetch_max_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest dataset a schedule may fetch from its URL, bytes."
    )
    dataset_url_allowlist: str = Field(
        "",
        description="Comma-separated hosts or CIDRs a dataset URL may reach although private, loopback or "
        "link-local (default: none; public addresses only).",
    )
    webhook_url_allowlist: str = Field(
        "",
        description="Comma-separated hosts or CIDRs a webhook target may reach although private, loopback or "
        "link-local (default: none; public addresses only).",
    )
    beat_max_loop_interval: float = Field(
        5.0, gt=0, le=300, description="Most seconds beat sleeps between schedule checks."
    )
    beat_lock_timeout: float = Field(
        30.0, gt=0, description="Seconds the beat lock outlives a dead beat; a waiting beat takes over after it."
    )
    maintenance_interval_seconds: int = Field(
        300, ge=1, description="How often beat runs maintenance (retention, stream trimming)."
    )
    health_summary_interval_seconds: int = Field(
        60, ge=1, description="How often beat checks the DLQ and heartbeats and publishes a health summary."
    )
    dlq_alert_threshold: int = Field(1, ge=1, description="Alert when the DLQ grew and holds at least this many.")

    # -- trained models ------------------------------------------------------------------------------
    model_store: str = Field(
        "redis",
        description="Where model artifacts are kept: redis (the default, for dev and local; admitted against "
        "Redis' memory) or dir:/absolute/path (a directory every worker and the API mount, e.g. a "
        "PersistentVolume). Metadata is always in Redis. An S3-compatible bucket is not supported yet.",
    )
    max_models: int = Field(1000, ge=1, description="Most trained models kept at once (a new name is refused past it).")
    model_max_versions: int = Field(
        50, ge=1, le=10_000, description="Versions kept per model; saving one more deletes the oldest not promoted."
    )
    model_max_artifact_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        le=512 * 1024 * 1024,
        description="Largest model artifact a job may save, bytes (a KNN or LOF model holds its training rows).",
    )

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return value

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        value = value.lower()
        if value not in {"json", "console"}:
            raise ValueError("must be json or console")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("redis_tls_cert_reqs")
    @classmethod
    def _cert_reqs(cls, value: str) -> str:
        value = value.lower()
        if value not in {"required", "optional", "none"}:
            raise ValueError("must be required, optional or none")
        return value

    @field_validator("smtp_security")
    @classmethod
    def _smtp_security(cls, value: str) -> str:
        value = value.lower()
        if value not in {"none", "starttls", "tls"}:
            raise ValueError("must be none, starttls or tls")
        return value

    @field_validator("kafka_security_protocol")
    @classmethod
    def _protocol(cls, value: str) -> str:
        value = value.upper()
        if value not in {"PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"}:
            raise ValueError("must be PLAINTEXT, SASL_PLAINTEXT, SASL_SSL or SSL")
        return value

    @field_validator("job_data_ttl_seconds")
    @classmethod
    def _data_ttl(cls, value: int, info: ValidationInfo) -> int:
        # A job's data never outlives the job: a retry needs both, a result without the job is unreachable.
        if value > info.data.get("result_ttl_seconds", value):
            raise ValueError("must not exceed result_ttl_seconds (0 = the same)")
        return value

    @field_validator("model_store")
    @classmethod
    def _model_store(cls, value: str) -> str:
        parse_model_store(value.strip())
        return value.strip()

    @field_validator("local_redis_maxmemory")
    @classmethod
    def _maxmemory(cls, value: str) -> str:
        value = value.strip().lower()
        if redis_size_bytes(value) <= 0:
            raise ValueError("must be a Redis size above 0, like 512mb, 1gb or 268435456")
        return value

    @model_validator(mode="after")
    def _limits(self) -> Settings:
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ValueError("task_soft_time_limit must be below task_time_limit")
        return self

    @model_validator(mode="after")
    def _dedup_window(self) -> Settings:
        window = self.kafka_session_timeout_seconds + 2 * self.kafka_delivery_timeout_seconds + 10
        if self.bridge_dedup_ttl_seconds < 2 * window:
            raise ValueError(
                f"bridge_dedup_ttl_seconds must be at least twice the redelivery window ({2 * window:.0f} s: "
                "kafka_session_timeout_seconds + 2 x kafka_delivery_timeout_seconds + 10 s)"
            )
        return self

    @model_validator(mode="after")
    def _beat_lock(self) -> Settings:
        if self.beat_lock_timeout <= 2 * self.beat_max_loop_interval:
            raise ValueError("beat_lock_timeout must be more than twice beat_max_loop_interval")
        return self

    # -- derived ------------------------------------------------------------------------------
    @property
    def visibility_timeout(self) -> int:
        """Redis redelivers an unacked task after this; it must outlast the hard limit (acks_late)."""
        return self.task_time_limit + 300

    @property
    def heartbeat_stale_after(self) -> float:
        """A heartbeat older than this means the component stopped (probes, ``/v1/components``, health
        alerts, a worker's deliveries handed to others): a few missed beats (a busy machine, a long GC)
        are not a failure, a stopped loop is."""
        return max(15.0, 4 * self.heartbeat_interval)

    @property
    def job_data_ttl(self) -> int:
        """Seconds a job's submitted (and preprocessed) dataset is kept."""
        return self.job_data_ttl_seconds or self.result_ttl_seconds

    @property
    def redis_tls(self) -> bool:
        return self.redis_url.startswith("rediss://")

    def redis_ssl_options(self) -> dict[str, Any]:
        """TLS options of every Redis client (redis-py, Celery broker and backend, RedBeat); {} without TLS.

        Celery's Redis result backend refuses a rediss:// URL unless ssl_cert_reqs is given, so it is
        always spelled out (required by default: an unchecked certificate is no TLS at all)."""
        if not self.redis_tls:
            return {}
        import ssl

        reqs = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
        options: dict[str, Any] = {"ssl_cert_reqs": reqs[self.redis_tls_cert_reqs]}
        if self.redis_tls_ca_file:
            options["ssl_ca_certs"] = self.redis_tls_ca_file
        return options

    def require(self, *names: str) -> None:
        missing = [n for n in names if not getattr(self, n)]
        if missing:
            env = ", ".join(ENV_PREFIX + n.upper() for n in missing)
            raise SettingsError(f"missing setting(s): {env}")

    def api_key_hashes(self) -> frozenset[str]:
        """The accepted keys as sha256 hex digests; plain keys never stay in memory longer than this."""
        hashes = {hash_api_key(k) for k in _split(self.api_keys)}
        if self.api_keys_file:
            path = Path(self.api_keys_file)
            try:
                lines = path.read_text().splitlines()
            except OSError as exc:
                raise SettingsError(f"{ENV_PREFIX}API_KEYS_FILE: cannot read {path}: {exc.strerror}") from exc
            for line in (raw.strip() for raw in lines):
                if not line or line.startswith("#"):
                    continue
                hashes.add(line.removeprefix("sha256:") if line.startswith("sha256:") else hash_api_key(line))
        return frozenset(hashes)

    def blob_codec(self) -> BlobCodec:
        """The at-rest codec of payload blobs (keys from the file and the variable, the file's first)."""
        from pynomaly.storage.encryption import BlobCodec, EncryptionKeyError, parse_keys

        try:
            keys: list[bytes] = []
            if self.encryption_keys_file:
                path = Path(self.encryption_keys_file)
                try:
                    lines = path.read_text().splitlines()
                except OSError as exc:
                    raise SettingsError(
                        f"{ENV_PREFIX}ENCRYPTION_KEYS_FILE: cannot read {path}: {exc.strerror}"
                    ) from None
                keys += parse_keys(lines, f"{ENV_PREFIX}ENCRYPTION_KEYS_FILE ({path})")
            keys += parse_keys(self.encryption_keys.get_secret_value().split(","), f"{ENV_PREFIX}ENCRYPTION_KEYS")
            if self.encryption_enabled and not keys:
                raise SettingsError(
                    f"{ENV_PREFIX}ENCRYPTION_ENABLED is true but no key is configured: set "
                    f"{ENV_PREFIX}ENCRYPTION_KEYS_FILE (one base64 key per line; `openssl rand -base64 32` makes one)"
                )
            return BlobCodec(tuple(keys), self.encryption_enabled)
        except EncryptionKeyError as exc:
            raise SettingsError(str(exc)) from None


_REDIS_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}


def redis_size_bytes(value: str) -> int:
    """A size as redis.conf writes it (``512mb``, ``1g``, ``268435456``) in bytes; -1 when malformed."""
    match = re.fullmatch(r"\s*([0-9]+)\s*([kmg]?b?)\s*", value.lower())
    if not match:
        return -1
    return int(match.group(1)) * _REDIS_UNITS[match.group(2)]


def parse_model_store(value: str) -> tuple[str, Path | None]:
    """``model_store`` as (kind, directory): ``redis`` or ``dir:/absolute/path``."""
    if value == "redis":
        return "redis", None
    if value.startswith("dir:"):
        path = value[4:]
        if not path or not os.path.isabs(path):
            raise ValueError("dir: needs an absolute directory, e.g. dir:/var/lib/pynomaly/models")
        return "dir", Path(path)
    raise ValueError("must be redis or dir:/absolute/path (an S3-compatible bucket is not supported yet)")


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def settings_from_env(environ: dict[str, str] | None = None) -> Settings:
    environ = dict(os.environ if environ is None else environ)
    raw: dict[str, Any] = {}
    for name in Settings.model_fields:
        key = ENV_PREFIX + name.upper()
        if key in environ:
            raw[name] = environ[key]
    try:
        return Settings(**raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field_name = str(first["loc"][0]) if first["loc"] else ""
        var = ENV_PREFIX + field_name.upper() if field_name else "settings"
        raise SettingsError(f"{var}: {first['msg']}") from None


@lru_cache(maxsize=1)
def load_settings() -> Settings:
    return settings_from_env()


def env_for(settings: Settings) -> dict[str, str]:
    """The environment variables that reproduce ``settings`` in a child process."""
    return {
        ENV_PREFIX + name.upper(): value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        for name, value in settings.model_dump().items()
    }
