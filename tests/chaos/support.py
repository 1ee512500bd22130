"""Helpers of the chaos suite: a handle on its own local system (kill and restart components, Redis and
Kafka), job states in bulk, events by id on Kafka and in ``dashboard:stream``, and the figures file.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from pynomaly.localstack.errors import LocalStackError
from pynomaly.localstack.kafka_broker import KafkaBroker
from pynomaly.localstack.ports import port_is_free
from pynomaly.localstack.procs import pid_alive
from pynomaly.localstack.redis_server import RedisServer
from pynomaly.localstack.supervisor import Running
from pynomaly.localstack.system import LocalSystem
from pynomaly.messaging.events import EventEnvelope
from pynomaly.messaging.outbox import OUTBOX_STREAM
from pynomaly.topology import S_DASHBOARD
from tests.e2e.support import read_topic, small_rows, wait_for

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "local-chaos.json"
# The events every completed single-step ("detect") job has, exactly once each.
JOB_EVENT_TYPES = ("job_submitted", "job_started", "job_step_completed", "job_completed")


def pool_children(pid: int) -> list[int]:
    """Direct children of ``pid`` (a Celery worker's pool processes)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _wait_port_free(port: int) -> None:
    # Just after a kill -9 the dead server's sockets linger for a moment and a bind on its port fails
    # (seen with Redis and ~40 client connections): the restart waits for the kernel to let go.
    wait_for(lambda: port_is_free(port), 60, interval=0.1, what=f"port {port} to be free after the kill")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_figures(seconds: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(seconds) * 1000, 1),
        "p99_ms": round(percentile(seconds, 0.99) * 1000, 1),
        "max_ms": round(max(seconds) * 1000, 1),
    }


@dataclass
class Chaos:
    """The suite's own local system (own redis-server and Kafka JVM) and what the tests do to it."""

    system: LocalSystem
    http: httpx.Client  # the API, with the key
    kafka_libs: Path

    # -- clients ----------------------------------------------------------------------------------
    @property
    def settings(self) -> Any:
        assert self.system.settings is not None
        return self.system.settings

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.redis_url, decode_responses=True, socket_timeout=30)

    # -- components -------------------------------------------------------------------------------
    def component(self, name: str) -> Running:
        return next(r for r in self.system.supervisor.running if r.component.name == name)

    def log(self, name: str) -> Path:
        return self.system.supervisor.log_path(name)

    def log_size(self, name: str) -> int:
        return self.log(name).stat().st_size if self.log(name).exists() else 0

    def log_since(self, name: str, offset: int) -> str:
        with open(self.log(name), "rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")

    def ensure_running(self, name: str, old_pid: int, wait_auto: float = 5.0, healthy: bool = True) -> Running:
        """After ``old_pid`` of ``name`` exited: the new process, whether a restarting supervisor
        started it by itself (given ``wait_auto`` seconds) or this restarts it now; with ``healthy``,
        once every component is healthy (the supervisor fails on any other exited one)."""
        wait_for(lambda: not pid_alive(old_pid), 60, what=f"{name} (pid {old_pid}) to exit")
        deadline = time.monotonic() + wait_auto
        while time.monotonic() < deadline:
            current = self.component(name)
            if current.record.pid != old_pid and current.record.alive():
                break
            time.sleep(0.2)
        else:
            with contextlib.suppress(LocalStackError):  # started by a supervisor meanwhile
                self.system.supervisor.restart(name)
        if healthy:
            self.system.supervisor.wait_healthy(timeout=180)
        return self.component(name)

    def wait_all_healthy(self) -> None:
        for running in list(self.system.supervisor.running):
            if not running.record.alive():
                self.ensure_running(running.component.name, running.record.pid, wait_auto=0, healthy=False)
        self.system.supervisor.wait_healthy(timeout=180)

    # -- services ---------------------------------------------------------------------------------
    def kill_redis(self) -> None:
        pid = self.system.redis.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), 30, what="redis-server to die")

    def start_redis(self) -> RedisServer:
        """The same port, password and append-only file as before the kill."""
        old = self.system.redis
        _wait_port_free(old.port)
        self.system.redis = RedisServer(old.data_dir, port=old.port, password=old.password,
                                        log_path=old.log_path).start()  # fmt: skip
        return self.system.redis

    def kill_kafka(self) -> None:
        pid = self.system.kafka.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), 30, what="the Kafka broker to die")

    def start_kafka(self) -> KafkaBroker:
        old = self.system.kafka
        _wait_port_free(old.port)
        _wait_port_free(old.controller_port)
        self.system.kafka = KafkaBroker(
            old.state_dir, libs_dir=self.kafka_libs, port=old.port, controller_port=old.controller_port,
            log_dir=self.system.log_dir / "kafka",
        ).start()  # fmt: skip
        return self.system.kafka

    # -- jobs -------------------------------------------------------------------------------------
    def submit(self, seed: int, **options: Any) -> tuple[str, float]:
        """One small job, answered 202; its id and how long the API took to accept it."""
        body = {"rows": small_rows(30, seed=seed), "detector": "copod", **options}
        started = time.perf_counter()
        response = self.http.post("/v1/jobs", json=body)
        seconds = time.perf_counter() - started
        assert response.status_code == 202, f"{response.status_code}: {response.text}"
        return str(response.json()["id"]), seconds

    def jobs(self, client: redis.Redis, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Every job document of ``ids`` in one MGET (a missing one is absent from the answer)."""
        raws = client.mget([f"pynomaly:job:{job_id}" for job_id in ids])
        return {job_id: json.loads(raw) for job_id, raw in zip(ids, raws, strict=True) if raw is not None}

    def statuses(self, client: redis.Redis, ids: list[str]) -> Counter[str]:
        docs = self.jobs(client, ids)
        return Counter(docs[i]["status"] if i in docs else "missing" for i in ids)

    def wait_completed(self, client: redis.Redis, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        def done() -> bool:
            counts = self.statuses(client, ids)
            assert counts["failed"] == 0 and counts["cancelled"] == 0, counts
            return counts["completed"] == len(ids)

        wait_for(done, timeout, interval=0.5, what=f"{len(ids)} jobs to complete ({self.statuses(client, ids)})")
        return self.jobs(client, ids)

    # -- events -----------------------------------------------------------------------------------
    def outbox_drained(self, client: redis.Redis) -> bool:
        return int(client.xlen(OUTBOX_STREAM)) == 0

    def stream_events(self, client: redis.Redis, subjects: Iterable[str]) -> list[dict[str, str]]:
        """Entries of ``dashboard:stream`` about ``subjects``, with their entry id as ``_entry`` (read
        whole: the suite's MAXLEN keeps all)."""
        wanted = set(subjects)
        out: list[dict[str, str]] = []
        last = "-"
        while True:
            batch = client.xrange(S_DASHBOARD, min=last, count=5000)
            if last != "-":
                batch = batch[1:]
            if not batch:
                return out
            out.extend({**fields, "_entry": entry} for entry, fields in batch if fields.get("subject") in wanted)
            last = batch[-1][0]


def read_all(chaos: Chaos, topic: str, subjects: list[str], complete: Any) -> list[EventEnvelope]:
    """The topic's records about ``subjects`` once ``complete(events)`` holds; read twice, one second
    apart, so a late duplicate would be counted too."""
    wanted = {s.encode() for s in subjects}

    def until(records: list[Any]) -> bool:
        return bool(complete([EventEnvelope.decode(r.value) for r in records if r.key in wanted]))

    read_topic(chaos.settings, topic, until, timeout=180)
    time.sleep(1)
    records = read_topic(chaos.settings, topic, until, timeout=180)
    return [EventEnvelope.decode(r.value) for r in records if r.key in wanted]


def per_subject(events: Iterable[EventEnvelope], event_type: str) -> dict[str, list[str]]:
    """Event ids of ``event_type`` per subject (a job id), as many as there are records."""
    seen: dict[str, list[str]] = {}
    for event in events:
        if event.type == event_type:
            seen.setdefault(event.subject, []).append(event.id)
    return seen


def record_figures(section: str, values: dict[str, Any], **about: Any) -> None:
    """Merge one scenario's figures into benchmarks/results/local-chaos.json (committed; the README's
    reliability table quotes it), with when and on what machine they were measured.

    Only when ``PYNOMALY_RECORD_FIGURES=1``: a routine ``./dev test`` (CI) leaves the committed file alone.
    """
    if os.environ.get("PYNOMALY_RECORD_FIGURES") != "1":
        return
    recorded = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    recorded.setdefault("figures", {})[section] = values
    recorded.update(about)
    recorded["recorded"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    recorded["machine"] = f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
