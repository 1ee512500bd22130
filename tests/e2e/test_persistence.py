"""Job records survive restarts: Redis keeps them with AOF and no eviction, and a new job store or a new
API instance (as after a restart) reads the records, results and reports the running system wrote.
"""

from __future__ import annotations

import pytest
import redis
from fastapi.testclient import TestClient

from pynomaly.api import API_KEY_HEADER
from pynomaly.api.app import create_app
from pynomaly.client import PynomalyClient
from pynomaly.wiring import Container
from tests.e2e.support import small_rows

pytestmark = pytest.mark.e2e


def test_redis_is_configured_to_keep_job_records(system_redis: redis.Redis) -> None:
    config = system_redis.config_get("appendonly") | system_redis.config_get("appendfsync")
    config |= system_redis.config_get("maxmemory-policy")
    assert config == {"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction"}
    assert system_redis.info("persistence")["aof_enabled"] == 1


def test_a_new_store_and_a_new_api_read_the_records(api: PynomalyClient, local_system) -> None:  # type: ignore[no-untyped-def]
    job_id = api.submit_rows(small_rows(30), "knn", steps=["preprocess", "detect", "report"])["id"]
    finished = api.wait(job_id, timeout=60)
    assert finished["status"] == "completed"

    container = Container(local_system.settings, "test")
    try:
        stored = container.jobs.get(job_id)
        assert stored.status == "completed" and stored.finished_at == finished["finished_at"]
        assert stored.params == finished["params"] and stored.result_location
        assert container.jobs.get_blob("result", job_id)["anomaly_count"] == finished["anomaly_count"]
    finally:
        container.close()

    app = create_app(local_system.settings)
    with TestClient(app, headers={API_KEY_HEADER: local_system.api_key}) as fresh:
        assert fresh.get(f"/v1/jobs/{job_id}").json() == finished
        assert fresh.get(f"/v1/jobs/{job_id}/result").json()["labels"] == api.result(job_id)["labels"]
        assert '<svg id="histogram"' in fresh.get(f"/v1/jobs/{job_id}/report", params={"format": "html"}).text
        assert job_id in {j["id"] for j in fresh.get("/v1/jobs", params={"detector": "knn"}).json()["items"]}
