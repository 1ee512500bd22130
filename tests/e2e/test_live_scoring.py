"""Live scoring through the real system: records on ``measurements`` (real Kafka), the scorer pool
(a real process), anomalies on ``anomaly_events`` and ``dashboard:stream``, dead letters on
``measurements.dlq``, notifications to a real webhook receiver and SMTP server.

The expected anomalies are computed here with the stored model itself (loaded from the system's Redis
in the test process): normal records are sensors.csv rows the model labels 0, planted ones are rows it
labels 1.  Every test uses its own entity prefix, so it only looks at its own records and events.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from kafka import KafkaProducer

from pynomaly.client import ApiError, PynomalyClient
from pynomaly.domain.datasets import DatasetLimits, parse_csv
from pynomaly.localstack.errors import LocalStackError
from pynomaly.messaging.kafka_admin import connection_config
from pynomaly.storage.bindings import BINDINGS
from pynomaly.storage.models import SCORING_GENERATION
from pynomaly.topology import S_DASHBOARD, S_NOTIFICATIONS, T_ANOMALY, T_MEASUREMENTS
from pynomaly.wiring import Container
from tests.e2e.support import SENSORS_CSV, queue_lengths, read_topic, wait_for
from tests.e2e.test_cli import error_line, ok, run

pytestmark = pytest.mark.e2e

COLUMNS = ["temperature", "pressure", "vibration", "current"]
SCORER = "consumer-scorer"


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def container(local_system) -> Iterator[Container]:  # type: ignore[no-untyped-def]
    value = Container(local_system.settings, "tests")
    yield value
    value.close()


@pytest.fixture(scope="module")
def model_name(api: PynomalyClient) -> str:
    """sensors.csv fitted with iforest and saved: version 1 of a new model, promoted at once."""
    name = _name("live")
    job = api.wait(api.submit_csv(SENSORS_CSV, "iforest", save_model=name)["id"], timeout=180)
    assert job["status"] == "completed", job["error"]
    return name


@pytest.fixture(scope="module")
def rows(model_name: str, container: Container) -> dict[str, np.ndarray]:
    """Normal rows (the stored model labels them 0) and planted ones (labelled 1), as the model sees them."""
    _, model = container.models.load(model_name)
    data = parse_csv(SENSORS_CSV.read_bytes(), DatasetLimits(10**7, 10**6, 100)).values
    _, labels = model.score(data)
    normal = data[labels == 0]
    rng = np.random.default_rng(7)
    planted = normal[rng.integers(0, len(normal), 40)] * np.array([1.0, 1.0, 6.0, 1.0]) + np.array([40, 25, 0, 10])
    _, planted_labels = model.score(planted)
    assert planted_labels.all(), "planted rows must be anomalies for the stored model"
    return {"normal": normal, "planted": planted}


@pytest.fixture(scope="module")
def producer(local_system) -> Iterator[KafkaProducer]:  # type: ignore[no-untyped-def]
    value = KafkaProducer(acks="all", linger_ms=5, **connection_config(local_system.settings))
    yield value
    value.close(timeout=10)


@pytest.fixture
def bound(api: PynomalyClient, model_name: str) -> Iterator[str]:
    api.bind(T_MEASUREMENTS, model_name)
    yield model_name
    with contextlib.suppress(ApiError):
        api.unbind(T_MEASUREMENTS)


def _record(entity: str, row: np.ndarray, **extra: Any) -> bytes:
    return json.dumps({"entity": entity, "values": dict(zip(COLUMNS, row.tolist(), strict=True)), **extra}).encode()


def _send(producer: KafkaProducer, entity: str, value: bytes) -> tuple[int, int]:
    meta = producer.send(T_MEASUREMENTS, key=entity.encode(), value=value).get(timeout=30)
    return meta.partition, meta.offset


def _stream(producer: KafkaProducer, prefix: str, rows: dict[str, np.ndarray], count: int, planted: list[int],
            rate: float | None = None, **extra: Any) -> dict[tuple[int, int], int]:  # fmt: skip
    """``count`` records of 20 entities, rows ``planted`` anomalous; (partition, offset) -> index."""
    futures = []
    started = time.monotonic()
    for i in range(count):
        row = rows["planted"][planted.index(i)] if i in planted else rows["normal"][i % len(rows["normal"])]
        entity = f"{prefix}-{i % 20}"
        futures.append(producer.send(T_MEASUREMENTS, key=entity.encode(), value=_record(entity, row, **extra)))
        if rate:
            time.sleep(max(0.0, started + (i + 1) / rate - time.monotonic()))
    producer.flush(timeout=60)
    return {(m.partition, m.offset): i for i, m in ((i, f.get(timeout=30)) for i, f in enumerate(futures))}


def _dashboard(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    return [
        {**fields, "data": json.loads(fields["data"])}
        for _, fields in client.xrange(S_DASHBOARD)
        if fields.get("type") == "anomaly_detected" and fields.get("subject", "").startswith(f"{prefix}-")
    ]


def _anomaly_events(settings: Any, prefix: str, at_least: int) -> list[dict[str, Any]]:
    def ours(records: list[Any]) -> list[dict[str, Any]]:
        return [
            json.loads(r.value)
            for r in records
            if r.key is not None and r.key.decode().startswith(f"{prefix}-") and b'"anomaly_detected"' in r.value
        ]

    return ours(read_topic(settings, T_ANOMALY, lambda records: len(ours(records)) >= at_least, timeout=120))


def _dead_letters(settings: Any, prefix: str, at_least: int) -> list[tuple[str, dict[str, bytes]]]:
    def ours(records: list[Any]) -> list[tuple[str, dict[str, bytes]]]:
        return [
            (r.key.decode(), dict(r.headers))
            for r in records
            if r.key is not None and r.key.decode().startswith(f"{prefix}-")
        ]

    found = read_topic(settings, f"{T_MEASUREMENTS}.dlq", lambda records: len(ours(records)) >= at_least, timeout=120)
    return ours(found)


def test_planted_anomalies_reach_anomaly_events_and_the_dashboard_exactly_once(
    api: PynomalyClient,
    bound: str,
    rows: dict[str, np.ndarray],
    producer: KafkaProducer,
    system_redis: redis.Redis,
    local_system: Any,
) -> None:
    prefix = _name("once")
    planted = [57, 140, 233, 301, 420, 512, 640, 777, 865, 990]
    index = _stream(producer, prefix, rows, 1000, planted)

    shown = wait_for(lambda: len(_dashboard(system_redis, prefix)) >= 10 and _dashboard(system_redis, prefix), 120,
                     what="10 anomalies on dashboard:stream")  # fmt: skip
    events = _anomaly_events(local_system.settings, prefix, 10)
    time.sleep(2.0)  # anything extra would have arrived by now
    shown = _dashboard(system_redis, prefix)
    assert sorted(index[(e["data"]["partition"], e["data"]["offset"])] for e in events) == planted
    assert len({e["id"] for e in events}) == len(events) == 10, "each anomaly once on anomaly_events"
    assert sorted(e["id"] for e in shown) == sorted(e["id"] for e in events), "each once on dashboard:stream"
    for event in events:
        data = event["data"]
        assert (data["model"], data["version"], data["detector"]) == (bound, 1, "iforest")
        assert data["score"] > data["threshold"] and event["subject"] == data["entity"]
        assert set(data["values"]) == set(COLUMNS) and data["latency_ms"] >= 0
    latencies = sorted(e["data"]["latency_ms"] for e in events)
    print(f"\nrecord -> scored latency of 10 anomalies in a burst of 1000 records: max {latencies[-1]:.0f} ms")


def test_bad_records_go_to_the_dlq_with_a_reason_and_later_records_still_score(
    bound: str, rows: dict[str, np.ndarray], producer: KafkaProducer, system_redis: redis.Redis, local_system: Any
) -> None:
    prefix = _name("bad")
    good = dict(zip(COLUMNS, rows["normal"][0].tolist(), strict=True))
    bad = {
        f"{prefix}-json": b"{not json",
        f"{prefix}-missing": json.dumps({"values": {"temperature": 60.0}}).encode(),
        f"{prefix}-nan": b'{"values": {"temperature": NaN, "pressure": 1, "vibration": 1, "current": 1}}',
        f"{prefix}-text": json.dumps({"values": {**good, "pressure": "high"}}).encode(),
        f"{prefix}-model": json.dumps({"values": good, "model": "no-such-model-xyz"}).encode(),
        f"{prefix}-short": json.dumps({"values": [1.0, 2.0]}).encode(),
    }
    for entity, value in bad.items():
        _send(producer, entity, value)
    _send(producer, f"{prefix}-late", _record(f"{prefix}-late", rows["planted"][0]))

    letters = dict(_dead_letters(local_system.settings, prefix, len(bad)))
    assert set(letters) == set(bad)
    reasons = {entity: headers["error"].decode() for entity, headers in letters.items()}
    assert "not JSON" in reasons[f"{prefix}-json"]
    assert "has no ['pressure', 'vibration', 'current']" in reasons[f"{prefix}-missing"]
    assert "NaN" in reasons[f"{prefix}-nan"] and "non-finite" in reasons[f"{prefix}-nan"]
    assert "'pressure': expected a number" in reasons[f"{prefix}-text"]
    assert "no-such-model-xyz" in reasons[f"{prefix}-model"]
    assert "values has 2 numbers; the model needs 4" in reasons[f"{prefix}-short"]
    for headers in letters.values():
        assert headers["original_topic"] == T_MEASUREMENTS.encode() and headers["consumer_group"] == b"pynomaly-scorer"
    wait_for(lambda: _dashboard(system_redis, prefix), 120, what="the good record after the bad ones to be scored")


def test_a_promotion_is_used_by_the_next_records_and_a_pinned_version_stays(
    api: PynomalyClient, bound: str, rows: dict[str, np.ndarray], producer: KafkaProducer, system_redis: redis.Redis
) -> None:
    prefix = _name("promote")
    _send(producer, f"{prefix}-a", _record(f"{prefix}-a", rows["planted"][1]))
    first = wait_for(lambda: _dashboard(system_redis, prefix), 120, what="an anomaly scored by version 1")
    assert first[0]["data"]["version"] == 1

    job = api.wait(api.submit_csv(SENSORS_CSV, "iforest", save_model=bound, params={"random_state": 3})["id"], 180)
    assert job["status"] == "completed" and job["model_version"] == 2
    api.promote(bound, 2)
    _send(producer, f"{prefix}-b", _record(f"{prefix}-b", rows["planted"][2] * 2))
    _send(producer, f"{prefix}-c", _record(f"{prefix}-c", rows["planted"][3] * 2, model=f"{bound}:1"))
    found = wait_for(lambda: len(_dashboard(system_redis, prefix)) >= 3 and _dashboard(system_redis, prefix), 120,
                     what="the records after the promotion")  # fmt: skip
    versions = {e["subject"].rsplit("-", 1)[1]: e["data"]["version"] for e in found}
    assert versions == {"a": 1, "b": 2, "c": 1}
    api.promote(bound, 1)  # the other tests' expected sets were computed with version 1


def _scorer_pid(local_system: Any) -> int:
    running = next(r for r in local_system.supervisor.running if r.component.name == SCORER)
    return int(running.record.pid)


def _restart_scorer(local_system: Any, old_pid: int) -> None:
    wait_for(lambda: not os.path.exists(f"/proc/{old_pid}") or _zombie(old_pid), 60, what="the scorer to exit")
    with contextlib.suppress(LocalStackError):  # a supervising loop may have restarted it already
        local_system.supervisor.restart(SCORER)
    local_system.supervisor.wait_healthy(timeout=180)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_the_scorer_killed_mid_stream_skips_nothing_and_doubles_nothing(
    bound: str, rows: dict[str, np.ndarray], producer: KafkaProducer, system_redis: redis.Redis, local_system: Any
) -> None:
    prefix = _name("kill")
    planted = [30, 150, 260, 390, 480, 555, 640, 730, 860, 960]
    index: dict[tuple[int, int], int] = {}

    def produce() -> None:
        index.update(_stream(producer, prefix, rows, 1000, planted, rate=250))

    sender = threading.Thread(target=produce)
    sender.start()
    # Kill once the scorer has shown some of this stream's anomalies, so it dies mid-stream.
    wait_for(lambda: _dashboard(system_redis, prefix), 120, what="the first anomaly of the stream")
    pid = _scorer_pid(local_system)
    os.kill(pid, signal.SIGKILL)
    _restart_scorer(local_system, pid)
    sender.join(timeout=120)
    assert not sender.is_alive()

    wait_for(lambda: len(_dashboard(system_redis, prefix)) >= 10, 180, what="all 10 anomalies after the restart")
    events = _anomaly_events(local_system.settings, prefix, 10)
    time.sleep(2.0)
    shown = _dashboard(system_redis, prefix)
    assert sorted(index[(e["data"]["partition"], e["data"]["offset"])] for e in shown) == planted
    assert len(shown) == 10, "no duplicate on dashboard:stream"
    assert len(events) == len({e["id"] for e in events}) == 10, "no duplicate on anomaly_events"


def test_binding_validation_refuses_and_stores_nothing(
    api: PynomalyClient, model_name: str, system_redis: redis.Redis, local_system: Any
) -> None:
    before = (system_redis.hgetall(BINDINGS), system_redis.get(SCORING_GENERATION), queue_lengths(system_redis))
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("job_events", {"model": model_name}, 404, "not read by the scorer pool; bindable topics: ['measurements']"),
        (T_MEASUREMENTS, {"model": "no-such-model-abc"}, 404, "no model 'no-such-model-abc'"),
        (T_MEASUREMENTS, {"model": f"{model_name}:99"}, 404, "has no version 99"),
        (T_MEASUREMENTS, {"model": "bad name!"}, 422, "model name must be"),
        (T_MEASUREMENTS, {"model": model_name, "notify_interval_seconds": 0}, 422, "notify_interval_seconds"),
        (T_MEASUREMENTS, {"model": model_name, "extra": 1}, 422, "extra"),
        (T_MEASUREMENTS, {"model": model_name, "notify": [{"channel": "email", "target": "not-an-address"}]}, 422,
         "e-mail address"),
        (T_MEASUREMENTS, {"model": model_name, "notify": [{"channel": "webhook", "target": "http://169.254.169.254/x"}]},
         422, "notify[0].target host"),
        (T_MEASUREMENTS, {"model": model_name, "notify": [{"channel": "sms", "target": "x"}]}, 422, "channel"),
    ]  # fmt: skip
    with httpx.Client(base_url=local_system.api_url, headers={"X-API-Key": local_system.api_key}) as http:
        for topic, body, status, detail in cases:
            response = http.put(f"/v1/streams/{topic}", json=body)
            assert response.status_code == status, (body, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
            assert detail in response.json()["detail"], (detail, response.json())
        assert (
            http.put(
                f"/v1/streams/{T_MEASUREMENTS}", json={"model": model_name}, headers={"X-API-Key": "x"}
            ).status_code
            == 401
        )
        assert http.get("/v1/streams", headers={"X-API-Key": ""}).status_code == 401
        assert http.delete("/v1/streams/job_events").status_code == 404
    after = (system_redis.hgetall(BINDINGS), system_redis.get(SCORING_GENERATION), queue_lengths(system_redis))
    assert after == before, "a refused binding stores, bumps and enqueues nothing"


def test_notifications_fire_once_per_entity_within_the_interval(
    api: PynomalyClient,
    model_name: str,
    rows: dict[str, np.ndarray],
    producer: KafkaProducer,
    system_redis: redis.Redis,
    webhook_receiver: Any,
    smtp_sink: Any,
) -> None:
    prefix = _name("notify")
    address = f"{prefix}@example.com"
    binding = api.bind(
        T_MEASUREMENTS,
        model_name,
        notify=[{"channel": "webhook", "target": webhook_receiver.url}, {"channel": "email", "target": address}],
        notify_interval=300,
    )
    try:
        assert binding["notify_interval_seconds"] == 300 and binding["version"] == 1
        assert api.stream(T_MEASUREMENTS)["notify"][1] == {"channel": "email", "target": address}
        # A flapping sensor: 4 anomalies of entity a, 2 of b, in a burst.
        for i, entity in enumerate(["a", "a", "b", "a", "b", "a"]):
            _send(producer, f"{prefix}-{entity}", _record(f"{prefix}-{entity}", rows["planted"][10 + i]))
        wait_for(lambda: len(_dashboard(system_redis, prefix)) >= 6, 120, what="the 6 anomalies")
        wait_for(lambda: len(webhook_receiver.requests) >= 2 and len(smtp_sink.to(address)) >= 2, 120,
                 what="one webhook and one e-mail per entity")  # fmt: skip
        time.sleep(3.0)  # the suppressed ones would have arrived by now
        bodies = webhook_receiver.bodies()
        assert sorted(b["entity"] for b in bodies) == [f"{prefix}-a", f"{prefix}-b"]
        assert all(b["status"] == "anomaly" and b["model"] == model_name for b in bodies)
        assert all(h.get("x-pynomaly-signature", "").startswith("sha256=") for h, _ in webhook_receiver.requests)
        mails = smtp_sink.to(address)
        assert sorted(str(m["Subject"]).rsplit(": ", 1)[1] for m in mails) == [f"{prefix}-a", f"{prefix}-b"]

        def outcomes() -> list[dict[str, str]]:
            return [f for _, f in system_redis.xrange(S_NOTIFICATIONS) if f"{prefix}-" in f.get("detail", "")]

        delivered = wait_for(lambda: len(outcomes()) >= 4 and outcomes(), 60, what="4 delivery outcomes")
        assert sorted((f["channel"], f["index"], f["status"], f["outcome"]) for f in delivered) == [
            ("email", "1", "delivered", "anomaly"),
            ("email", "1", "delivered", "anomaly"),
            ("webhook", "0", "delivered", "anomaly"),
            ("webhook", "0", "delivered", "anomaly"),
        ]
    finally:
        api.unbind(T_MEASUREMENTS)


def test_the_cli_binds_produces_lists_and_unbinds(
    model_name: str, rows: dict[str, np.ndarray], system_redis: redis.Redis, local_system: Any, tmp_path: Any
) -> None:
    env = {
        "PYNOMALY_API_URL": local_system.api_url,
        "PYNOMALY_API_KEY": local_system.api_key,
        "PYNOMALY_KAFKA_BOOTSTRAP_SERVERS": local_system.settings.kafka_bootstrap_servers,
    }
    prefix = _name("cli")
    out = ok(run("stream", "bind", T_MEASUREMENTS, "--model", model_name, "--notify-interval", "120", env=env))
    assert f"{T_MEASUREMENTS} -> model {model_name} (version 1 now)" in out and "per 120s" in out
    assert f"model {model_name} (version 1)" in ok(run("stream", "list", env=env))
    data = tmp_path / "readings.csv"
    lines = ["sensor,temperature,pressure,vibration,current"]
    lines += [f"{prefix}-{i % 3},{','.join(f'{v:.6g}' for v in rows['normal'][i])}" for i in range(30)]
    lines.append(f"{prefix}-planted,{','.join(f'{v:.6g}' for v in rows['planted'][20])}")
    data.write_text("\n".join(lines) + "\n")
    out = ok(
        run("produce", str(data), "--topic", T_MEASUREMENTS, "--entity-column", "sensor", "--rate", "200", env=env)
    )
    assert out.startswith(f"sent 31 records to {T_MEASUREMENTS}")
    found = wait_for(lambda: _dashboard(system_redis, prefix), 120, what="the planted CSV row as an anomaly")
    time.sleep(2.0)
    assert [e["subject"] for e in _dashboard(system_redis, prefix)] == [f"{prefix}-planted"] == [found[0]["subject"]]

    assert "not read by the scorer pool" in error_line(run("produce", str(data), "--topic", "job_events", env=env))
    assert "'nope' is not a column" in error_line(
        run("produce", str(data), "--topic", T_MEASUREMENTS, "--entity-column", "nope", env=env)
    )
    assert "--rate" in error_line(run("produce", str(data), "--topic", T_MEASUREMENTS, "--rate", "0", env=env))
    options = ("--topic", T_MEASUREMENTS, "--entity-column", "sensor", "--bootstrap-servers", "127.0.0.1:1")
    unreachable = run("produce", str(data), *options, env=env)
    assert "cannot reach Kafka at ['127.0.0.1:1']" in error_line(unreachable)
    bad = tmp_path / "bad.csv"
    bad.write_text("temperature,pressure\n1,hot\n")
    assert "bad.csv:2, column 'pressure': 'hot' is not a number" in error_line(
        run("produce", str(bad), "--topic", T_MEASUREMENTS, env=env)
    )
    assert "use CHANNEL:TARGET" in error_line(
        run("stream", "bind", T_MEASUREMENTS, "--model", model_name, "--notify", "email", env=env)
    )
    assert "404: no model 'nope-nope'" in error_line(
        run("stream", "bind", T_MEASUREMENTS, "--model", "nope-nope", env=env)
    )
    assert f"{T_MEASUREMENTS} unbound" in ok(run("stream", "unbind", T_MEASUREMENTS, env=env))
    assert "no bindings; bindable topics: measurements" in ok(run("stream", "list", env=env))
    assert "404" in error_line(run("stream", "unbind", T_MEASUREMENTS, env=env))
