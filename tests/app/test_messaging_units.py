"""Event envelope, webhook signing, Celery settings: no services needed."""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl

import pytest

from pynomaly.config import Settings
from pynomaly.messaging.celery_app import celery_config
from pynomaly.messaging.events import SCHEMA_VERSION, EventEnvelope, InvalidEvent, make_event
from pynomaly.topology import T_AUDIT, T_JOB, TOPOLOGY
from pynomaly.usecases.pipeline import sign


def test_envelope_round_trip_and_topic() -> None:
    event = make_event("job_completed", "job-1", "worker", anomaly_count=3)
    back = EventEnvelope.decode(event.encode())
    assert back == event
    assert set(json.loads(event.encode())) == {"id", "type", "source", "time", "subject", "data", "schema_version"}
    assert back.schema_version == SCHEMA_VERSION and back.topic == T_JOB
    assert make_event("audit_record", "x", "api").topic == T_AUDIT
    flat = event.flat()
    assert json.loads(flat["data"]) == {"anomaly_count": 3} and all(isinstance(v, str) for v in flat.values())


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "message|Invalid JSON"),
        (b'{"type":"job_completed","source":"s","subject":"j"}', None),
        (b'{"type":"nope","source":"s","subject":"j"}', "unknown event type"),
        (b'{"type":"job_completed","source":"s","subject":"j","schema_version":2}', "schema_version"),
        (b'{"type":"job_completed","source":"s","subject":"j","time":"yesterday"}', "time"),
        (b'{"type":"job_completed","source":"s","subject":"","data":{}}', "subject"),
        (b'{"type":"job_completed","source":"s","subject":"j","extra":1}', "extra"),
    ],
)
def test_envelope_validation(raw: bytes, message: str | None) -> None:
    if message is None:
        assert EventEnvelope.decode(raw).type == "job_completed"
        return
    with pytest.raises(InvalidEvent):
        EventEnvelope.decode(raw)


def test_every_event_type_has_a_topic_in_the_topology() -> None:
    topics = {t.name for t in TOPOLOGY.topics}
    assert set(TOPOLOGY.event_topics.values()) <= topics


def test_webhook_signature_is_hmac_sha256_of_the_body() -> None:
    body = b'{"job_id":"x"}'
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert sign("s3cret", body) == f"sha256={expected}"


def test_celery_settings_follow_the_seed() -> None:
    conf = celery_config(Settings(redis_url="redis://127.0.0.1:1/0"))
    assert conf["task_serializer"] == "json" and conf["accept_content"] == ["json"]
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"] and conf["worker_prefetch_multiplier"] == 1
    assert conf["task_time_limit"] == 3600 and conf["task_soft_time_limit"] == 3300
    visibility = conf["broker_transport_options"]["visibility_timeout"]  # type: ignore[index]
    assert visibility > 3600
    assert conf["result_backend_transport_options"]["visibility_timeout"] == visibility  # type: ignore[index]
    # Chosen by measurement (benchmarks/run.py row 1): nobody reads task-sent events.
    assert not conf["task_send_sent_event"]
    assert conf["task_compression"] == "gzip" and conf["timezone"] == "UTC"
    assert conf["broker_connection_max_retries"] is None  # a Redis outage of any length: keep reconnecting
    routes = conf["task_routes"]
    assert {r["queue"] for r in routes.values()} == {q.name for q in TOPOLOGY.queues}  # type: ignore[union-attr]


def test_rediss_urls_carry_the_certificate_check_to_broker_backend_beat_and_clients() -> None:
    from pynomaly.messaging.celery_app import create_celery
    from pynomaly.storage.redis_client import redis_from_settings

    plain = celery_config(Settings(redis_url="redis://127.0.0.1:1/0"))
    assert plain["broker_use_ssl"] is None and plain["redis_backend_use_ssl"] is None

    tls = Settings(redis_url="rediss://redis.example:6380/0", redis_tls_ca_file="/etc/pynomaly/redis-ca.pem")
    conf = celery_config(tls)
    expected = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/etc/pynomaly/redis-ca.pem"}
    assert conf["broker_use_ssl"] == conf["redis_backend_use_ssl"] == conf["redbeat_redis_use_ssl"] == expected
    # Celery builds its result backend from this (no connection yet); a bare rediss:// URL raised here.
    backend = create_celery(tls).backend
    assert backend.connparams["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert backend.connparams["ssl_ca_certs"] == "/etc/pynomaly/redis-ca.pem"
    client = redis_from_settings(tls)
    assert client.connection_pool.connection_kwargs["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    client.close()

    relaxed = Settings(redis_url="rediss://redis.example:6380/0", redis_tls_cert_reqs="NONE")
    assert create_celery(relaxed).backend.connparams["ssl_cert_reqs"] == ssl.CERT_NONE
    with pytest.raises(ValueError, match="required, optional or none"):
        Settings(redis_url="rediss://h/0", redis_tls_cert_reqs="sometimes")
