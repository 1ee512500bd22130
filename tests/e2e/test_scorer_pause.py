"""The live scorer through a Redis outage: it pauses and rewinds instead of dead-lettering, and every
anomaly reaches the outbox exactly once after Redis is back.

The scorer (``EventConsumer`` with the scorer's batch handler) runs in this process on its own
redis-server and its own input topic; the redis-server is killed with SIGKILL while records keep
arriving, and started again seconds later.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid

import numpy as np
import pytest
import redis
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from pynomaly.config import Settings
from pynomaly.consumers.base import EventConsumer
from pynomaly.consumers.scorer import LiveScorer
from pynomaly.domain.detectors import run_detection
from pynomaly.domain.live import StreamBinding
from pynomaly.domain.models import TrainedModel
from pynomaly.domain.preprocessing import PreprocessOptions, fit_preprocess
from pynomaly.localstack.procs import pid_alive
from pynomaly.localstack.redis_server import RedisServer
from pynomaly.messaging.kafka_admin import connection_config
from pynomaly.messaging.outbox import OUTBOX_STREAM
from pynomaly.storage.bindings import BindingStore
from pynomaly.topology import ConsumerGroup
from pynomaly.wiring import Container
from tests.e2e.support import read_topic, wait_for

pytestmark = pytest.mark.services

COLUMNS = ["a", "b"]
PER_PHASE = 100  # records before and during the outage, every 10th one an anomaly
OUTAGE_SECONDS = 6.0


def _model() -> TrainedModel:
    rng = np.random.default_rng(5)
    rows = rng.normal(0, 1, size=(300, 2))
    prepared, _, fitted = fit_preprocess(rows, COLUMNS, PreprocessOptions.parse({}), learn=True)
    result = run_detection(prepared, COLUMNS, "iforest")
    return TrainedModel("iforest", result.model, result.threshold, COLUMNS, fitted)


def test_a_redis_outage_pauses_the_scorer_and_loses_or_doubles_no_anomaly(
    settings: Settings, own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pynomaly.consumers.base")
    run = uuid.uuid4().hex[:8]
    topic = f"scorer-pause-{run}"
    admin = KafkaAdminClient(**connection_config(settings))
    try:
        admin.create_topics([NewTopic(topic, 3, 1), NewTopic(f"{topic}.dlq", 1, 1)])
    finally:
        admin.close()
    scorer_settings = settings.model_copy(update={"redis_url": own_redis.url})
    container = Container(scorer_settings, "tests-scorer")
    model = _model()
    container.models.save("pause", model, params={}, contamination=0.1, rows=300)
    BindingStore(container.redis).put(StreamBinding(topic=topic, model="pause"))
    group = ConsumerGroup(f"scorer-pause-{run}", f"scorer-pause-{run}", (topic,), "a scorer on its own Redis")
    consumer = EventConsumer(scorer_settings, group, batch_handler=LiveScorer(container))
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    producer = KafkaProducer(acks="all", **connection_config(settings))
    expected: set[int] = set()
    sent = 0

    def produce(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            i = sent
            values = [25.0, -25.0] if i % 10 == 0 else [0.1 * (i % 7) - 0.3, 0.05 * (i % 5)]
            if i % 10 == 0:
                expected.add(i)
            record = {"entity": f"e{i}", "values": values}
            producer.send(topic, key=f"e{i}".encode(), value=json.dumps(record).encode())
            sent += 1
            time.sleep(0.02)
        producer.flush(timeout=30)

    def outboxed() -> list[dict[str, object]]:
        client = redis.Redis.from_url(own_redis.url, decode_responses=True, socket_timeout=5)
        try:
            return [json.loads(f["event"]) for _, f in client.xrange(OUTBOX_STREAM)]
        finally:
            client.close()

    try:
        _, labels = model.score(np.array([[0.1 * (i % 7) - 0.3, 0.05 * (i % 5)] for i in range(2 * PER_PHASE)]))
        assert not labels.any(), "the normal records must be normal for the model"
        produce(PER_PHASE)
        wait_for(lambda: len(outboxed()) == PER_PHASE // 10, 90, what="the first anomalies in the outbox")
        time.sleep(1.5)  # appendfsync everysec: on disk before the kill

        pid = own_redis.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), 30, what="redis-server to die")
        killed = time.monotonic()
        produce(PER_PHASE)
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - killed)))
        own_redis.configured_port = own_redis.port  # same port, password and append-only file
        own_redis.start()
        wait_for(lambda: len(outboxed()) >= 2 * PER_PHASE // 10, 120, what="the anomalies sent during the outage")
        time.sleep(2)  # a duplicate, if any, would be there by now
        events = outboxed()
    finally:
        consumer.stop()
        thread.join(30)
        producer.close(timeout=10)
        container.close()
    pauses = [r.getMessage() for r in caplog.records if "pausing, Redis unavailable" in r.getMessage()]
    assert pauses and "Redis is back" in caplog.text, caplog.text[-2000:]
    entities = sorted(int(str(e["subject"])[1:]) for e in events)
    assert entities == sorted(expected), "every anomaly once, none lost in the outage"
    assert len({e["id"] for e in events}) == len(events)

    def ours(records: list) -> bool:  # type: ignore[type-arg]
        return bool(records)

    with pytest.raises(AssertionError, match="timed out"):  # nothing was dead-lettered
        read_topic(settings, f"{topic}.dlq", ours, timeout=5)
