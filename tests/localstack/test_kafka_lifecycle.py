"""One extra Kafka broker of its own (ordered before the session broker starts): start, stop, stale data."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pynomaly.config import Settings
from pynomaly.localstack.errors import LocalStackError
from pynomaly.localstack.kafka_broker import GC, HEAP, KafkaBroker
from pynomaly.localstack.procs import pid_alive
from pynomaly.messaging.kafka_admin import ensure_topics
from pynomaly.topology import TOPOLOGY
from tests.conftest import KAFKA_LIBS

pytestmark = [pytest.mark.services, pytest.mark.kafka_solo]


def test_broker_starts_serves_and_stops_without_leftovers(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "kafka", libs_dir=KAFKA_LIBS)
    try:
        started = time.monotonic()
        broker.start()
        print(f"Kafka start: {time.monotonic() - started:.1f}s")
        pid = broker.pid
        assert pid is not None and pid_alive(pid)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"kafka.Kafka" in cmdline and all(flag.encode() in cmdline for flag in (*HEAP, *GC))
        created = ensure_topics(Settings(kafka_bootstrap_servers=broker.bootstrap_servers))
        assert len(created) == 2 * len(TOPOLOGY.topics)
        assert (broker.server_log).is_file()
    finally:
        stopping = time.monotonic()
        broker.stop()
        print(f"Kafka stop: {time.monotonic() - stopping:.1f}s")
    assert not pid_alive(pid)
    # A controlled shutdown, not a kill: Kafka logged its end and marked its log dir clean.
    assert "shut down completed" in broker.server_log.read_text()
    assert (broker.data_dir / ".kafka_cleanshutdown").is_file()

    # The same folder formatted for another cluster: one clear line, before any JVM starts.
    broker.cluster_id_path.write_text("AAAAAAAAAAAAAAAAAAAAAA\n")
    stale = KafkaBroker(tmp_path / "kafka", libs_dir=KAFKA_LIBS)
    with pytest.raises(LocalStackError, match=r"belongs to another cluster .*remove that folder") as info:
        stale.start()
    assert "\n" not in str(info.value)
    assert stale.pid is None
