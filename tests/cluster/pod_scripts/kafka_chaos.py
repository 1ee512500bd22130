"""Run inside an app pod (stdin to python3; args: TOPIC COUNT SECONDS): produce COUNT keyed events with
acks=all at an even pace over SECONDS while a consumer reads the topic from the start, then read on
until every event is seen (or 180 s pass).  Meant to run while a broker is deleted.

Prints progress lines ("acked N") and, last, one JSON line with the counts the test asserts on."""

import itertools
import json
import sys
import threading
import time
import uuid
from collections import defaultdict

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from pynomaly.config import load_settings
from pynomaly.messaging.kafka_admin import connection_config

topic, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
KEYS = 30
conn = connection_config(load_settings())

admin = KafkaAdminClient(**conn)
try:
    admin.create_topics([NewTopic(topic, 3, 3, topic_configs={"min.insync.replicas": "2"})])
except TopicAlreadyExistsError:
    pass
finally:
    admin.close()

seen: dict[str, list[int]] = defaultdict(list)
consume_times: list[float] = []
stop = threading.Event()


def consume() -> None:
    consumer = KafkaConsumer(
        topic, group_id=f"chaos-{uuid.uuid4().hex[:8]}", auto_offset_reset="earliest", enable_auto_commit=False, **conn
    )
    try:
        while not stop.is_set():
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    key, seq = record.value.decode().split(":")
                    seen[key].append(int(seq))
                    consume_times.append(time.monotonic())
    finally:
        consumer.close()


reader = threading.Thread(target=consume, daemon=True)
reader.start()
producer = KafkaProducer(
    acks="all",
    enable_idempotence=True,
    max_in_flight_requests_per_connection=1,
    retries=1_000_000,
    retry_backoff_ms=200,
    request_timeout_ms=15_000,
    delivery_timeout_ms=170_000,
    linger_ms=5,
    **conn,
)
acked: list[float] = []
errors: list[str] = []
lock = threading.Lock()


def on_ack(_metadata: object) -> None:
    with lock:
        acked.append(time.monotonic())


def on_error(exc: BaseException) -> None:
    with lock:
        errors.append(repr(exc))


started = time.monotonic()
batch = 50
for first in range(0, count, batch):
    for seq in range(first, min(first + batch, count)):
        key = f"k{seq % KEYS}"
        future = producer.send(topic, key=key.encode(), value=f"{key}:{seq}".encode())
        future.add_callback(on_ack).add_errback(on_error)
    if first % 1000 == 0:
        print(f"sent {first} acked {len(acked)}", flush=True)
    time.sleep(max(0.0, started + (first + batch) * seconds / count - time.monotonic()))
producer.flush(timeout=180)
produced_in = time.monotonic() - started
producer.close(timeout=10)

deadline = time.monotonic() + 180
while sum(len(v) for v in seen.values()) < count and time.monotonic() < deadline:
    time.sleep(0.5)
stop.set()
reader.join(timeout=10)


def max_gap(times: list[float]) -> float:
    times = sorted(times)
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


unique = {(k, s) for k, seqs in seen.items() for s in seqs}
received = sum(len(v) for v in seen.values())
# Per key, the first sight of each sequence number must come in increasing order.
order_violations = 0
for seqs in seen.values():
    first_seen: list[int] = []
    known: set[int] = set()
    for s in seqs:
        if s not in known:
            known.add(s)
            first_seen.append(s)
    order_violations += sum(1 for a, b in itertools.pairwise(first_seen) if b < a)
print(
    json.dumps(
        {
            "sent": count,
            "acked": len(acked),
            "errors": errors[:5],
            "error_count": len(errors),
            "received_unique": len(unique),
            "duplicates": received - len(unique),
            "order_violations": order_violations,
            "max_ack_gap_s": round(max_gap(acked), 2),
            "max_consume_gap_s": round(max_gap(consume_times), 2),
            "produce_seconds": round(produced_in, 1),
        }
    )
)
