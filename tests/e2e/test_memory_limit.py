"""A small Redis maxmemory: the API refuses new jobs with 507 before Redis refuses writes, and no
accepted job is lost.

The API and the two pools the default pipeline needs (processing, detection) run as real processes
on a redis-server of their own (``local_redis_maxmemory`` = 32 MB, noeviction, started by the local
system's code) and the session's Kafka.  Jobs are submitted while the workers run, until Redis holds
so many finished jobs that the API refuses even after every accepted job completed; then purging a
few finished jobs makes room for a new one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from pynomaly.api import API_KEY_HEADER
from pynomaly.config import Settings
from pynomaly.localstack.kafka_broker import KafkaBroker
from pynomaly.localstack.progress import StreamProgress
from pynomaly.localstack.supervisor import Component
from pynomaly.localstack.system import LocalSystem, local_components
from tests.conftest import KAFKA_LIBS, TEST_OVERRIDES
from tests.e2e.support import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

MAXMEMORY = "32mb"
MAXMEMORY_BYTES = 32 * 1024 * 1024
ROWS, COLUMNS = 8000, 8  # 512 KB of float64 per job: dozens of jobs fill 32 MB
MAX_SUBMITS = 400
FINISHED = {"completed", "failed", "cancelled"}


def _components(settings: Settings, state_dir: Path) -> list[Component]:
    keep = {"api", "worker-processing", "worker-detection"}
    return [c for c in local_components(settings, state_dir) if c.name in keep]


@pytest.fixture(scope="module")
def small_system(kafka_broker: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    system = LocalSystem(
        tmp_path_factory.mktemp("memory-limit"),
        kafka=kafka_broker,
        libs_dir=KAFKA_LIBS,
        settings_overrides={**TEST_OVERRIDES, "local_redis_maxmemory": MAXMEMORY},
        components=_components,
    )
    try:
        system.start(progress=StreamProgress(sys.__stderr__))
        yield system
    finally:
        system.stop()


def _rows(seed: int) -> list[list[float]]:
    return np.random.default_rng(seed).normal(0, 1, size=(ROWS, COLUMNS)).round(4).tolist()


def _memory(client: redis.Redis) -> dict[str, int]:
    info = client.info("memory")
    return {k: int(info[k]) for k in ("used_memory", "used_memory_peak", "maxmemory")}


def test_cli_delete_removes_a_finished_job_with_its_data(small_system: LocalSystem) -> None:
    from click.testing import CliRunner

    from pynomaly.cli import main
    from tests.e2e.support import small_rows

    env = {"PYNOMALY_API_URL": small_system.api_url, "PYNOMALY_API_KEY": small_system.api_key}
    assert small_system.settings is not None
    r = redis.Redis.from_url(small_system.settings.redis_url, decode_responses=True)
    with httpx.Client(base_url=small_system.api_url, headers={API_KEY_HEADER: small_system.api_key}) as http:
        job_id = http.post("/v1/jobs", json={"rows": small_rows(50), "detector": "knn"}).json()["id"]
        wait_for(lambda: http.get(f"/v1/jobs/{job_id}").json()["status"] == "completed", 120, what="the job")
        assert list(r.scan_iter(match=f"*{job_id}*"))  # its record, dataset and result

        deleted = CliRunner().invoke(main, ["delete", job_id], env=env)
        assert deleted.exit_code == 0 and deleted.stdout.strip() == f"job {job_id} deleted", deleted.output
        assert http.get(f"/v1/jobs/{job_id}").status_code == 404
        assert not list(r.scan_iter(match=f"*{job_id}*"))
        again = CliRunner().invoke(main, ["delete", job_id], env=env)
        assert again.exit_code != 0 and "404" in again.stderr, again.output
    r.close()


def test_the_api_refuses_with_507_before_redis_is_full_and_loses_no_accepted_job(small_system: LocalSystem) -> None:
    assert small_system.settings is not None
    r = redis.Redis.from_url(small_system.settings.redis_url, decode_responses=True)
    http = httpx.Client(base_url=small_system.api_url, headers={API_KEY_HEADER: small_system.api_key}, timeout=120)
    try:
        assert r.config_get("maxmemory") == {"maxmemory": str(MAXMEMORY_BYTES)}
        assert r.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        accepted: list[str] = []
        statuses: dict[int, int] = {}
        refusal: httpx.Response | None = None
        payloads = [_rows(seed) for seed in range(4)]  # distinct data, built once

        def unfinished() -> list[str]:
            return [j for j in accepted if http.get(f"/v1/jobs/{j}").json()["status"] not in FINISHED]

        # Submit while the workers run.  A 507 with jobs still pending may lift once they finish (their
        # reservations go); stop only at a 507 that the API decided from a memory reading taken after
        # every accepted job had finished (it reads Redis at most once a second): Redis is full.
        started = time.monotonic()
        all_finished_at: float | None = None
        for n in range(MAX_SUBMITS):
            response = http.post("/v1/jobs", json={"rows": payloads[n % len(payloads)], "detector": "ecod"})
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code == 202:
                accepted.append(response.json()["id"])
                all_finished_at = None
                continue
            assert response.status_code == 507, response.text
            refusal = response
            if all_finished_at is not None:
                break
            if not unfinished():
                all_finished_at = time.monotonic()
            time.sleep(1.5)  # past the API's one-second memory reading
        else:
            pytest.fail(f"no lasting 507 after {MAX_SUBMITS} submits: {statuses}, {_memory(r)}")
        fill_seconds = time.monotonic() - started

        assert refusal is not None and set(statuses) <= {202, 507}, statuses  # never a 500
        assert refusal.headers["content-type"] == "application/problem+json"
        assert int(refusal.headers["Retry-After"]) > 0
        problem = refusal.json()
        assert problem["status"] == 507 and problem["title"] == "Insufficient storage"
        assert "maxmemory" in problem["detail"] and "90% watermark" in problem["detail"]

        jobs = {j: http.get(f"/v1/jobs/{j}").json() for j in accepted}
        assert {j["status"] for j in jobs.values()} == {"completed"}, {
            j: (v["status"], v["error"]) for j, v in jobs.items() if v["status"] != "completed"
        }
        assert all(j["attempts"] == 1 for j in jobs.values())
        errors = r.info("errorstats")
        assert "errorstat_OOM" not in errors, errors  # Redis itself never refused a write
        memory = _memory(r)
        assert memory["used_memory_peak"] < MAXMEMORY_BYTES
        print(
            f"\n{len(accepted)} jobs of {ROWS}x{COLUMNS} accepted and completed in {fill_seconds:.0f}s, "
            f"{statuses.get(507, 0)} refused with 507; Redis used {memory['used_memory'] / 2**20:.1f} MB, "
            f"peak {memory['used_memory_peak'] / 2**20:.1f} MB of {memory['maxmemory'] / 2**20:.0f} MB maxmemory"
        )

        # A dataset upload is refused as well (it would be kept until deleted), and nothing is stored.
        big = np.random.default_rng(9).normal(0, 1, size=(20_000, COLUMNS)).round(4).tolist()
        upload = http.post("/v1/datasets", json={"name": "too-much", "rows": big})
        assert upload.status_code == 507 and upload.headers["content-type"] == "application/problem+json", upload.text
        assert "this dataset needs" in upload.json()["detail"] and int(upload.headers["Retry-After"]) > 0
        assert http.get("/v1/datasets").json()["total"] == 0

        # Deleting finished jobs frees their share: a new job is accepted and completes.
        for job_id in accepted[:10]:
            assert http.delete(f"/v1/jobs/{job_id}", params={"purge": "true"}).status_code == 204
            assert http.get(f"/v1/jobs/{job_id}").status_code == 404
            assert not list(r.scan_iter(match=f"*{job_id}*"))

        def resubmitted() -> Any:
            response = http.post("/v1/jobs", json={"rows": payloads[0], "detector": "ecod"})
            assert response.status_code in (202, 507), response.text
            return response.json()["id"] if response.status_code == 202 else None

        job_id = wait_for(resubmitted, timeout=30, interval=1.5, what="a job accepted after purging ten")
        done = wait_for(
            lambda: (job := http.get(f"/v1/jobs/{job_id}").json())["status"] in FINISHED and job,
            timeout=120,
            what="the new job to finish",
        )
        assert done["status"] == "completed"
        assert "errorstat_OOM" not in r.info("errorstats")
    finally:
        http.close()
        r.close()
