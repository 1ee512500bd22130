"""Run inside an app pod (stdin to python3; arg: COUNT): produce COUNT valid audit_record envelopes to
audit_events as fast as the producer goes, keyed by subject, so the audit consumer group lags.

Prints one JSON line: produced, seconds."""

import json
import sys
import time

from kafka import KafkaProducer

from pynomaly.config import load_settings
from pynomaly.messaging.events import make_event
from pynomaly.messaging.kafka_admin import connection_config

count = int(sys.argv[1])
producer = KafkaProducer(acks="all", linger_ms=20, batch_size=256 * 1024, **connection_config(load_settings()))
started = time.monotonic()
for i in range(count):
    event = make_event("audit_record", f"chaos-{i % 500}", "chaos-test", action="flood", actor="chaos", n=i)
    producer.send(event.topic, key=event.subject.encode(), value=event.encode())
producer.flush(timeout=300)
producer.close()
print(json.dumps({"produced": count, "seconds": round(time.monotonic() - started, 1)}))
