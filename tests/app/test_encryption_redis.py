"""Encryption at rest on the real Redis: what the stores write holds none of the data in the clear,
reads come back whole, and a real worker runs a job end to end on encrypted blobs (and fails a job
sealed under a key it lacks with a clear error, at once, without a dead letter).

Every test has a Redis database of its own on the session's ``redis-server``; the job test also uses
the session's Kafka (the events of the job) and a real ``pynomaly worker`` process.
"""

from __future__ import annotations

import base64
import gzip
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from pynomaly.api import API_KEY_HEADER
from pynomaly.api.app import create_app
from pynomaly.config import Settings, env_for
from pynomaly.domain.datasets import Dataset, DatasetLimits, from_rows
from pynomaly.localstack.procs import log_tail, spawn, stop_process
from pynomaly.localstack.system import pynomaly_argv
from pynomaly.storage.datasets import StoredDataset, new_dataset_id
from pynomaly.storage.dead_letters import DeadLetterStore
from pynomaly.storage.encryption import MAGIC, PayloadUnreadable, key_id
from pynomaly.storage.jobs import DATASET, PREPARED
from pynomaly.storage.redis_client import redis_from_settings
from pynomaly.topology import Q_DETECTION, Q_PROCESSING
from pynomaly.usecases.jobs import JobService, SubmitRequest
from pynomaly.wiring import Container
from tests.e2e.support import own_redis_db, small_rows, wait_for

pytestmark = pytest.mark.services

STORES_DB = 11
WORKER_DB = 12
API_KEY = "encryption-test-key"
# Markers that are in the clear in plain blobs: a column name (the dataset header, the result JSON)
# and a cell value (its float64 bytes in the stored matrix; its text in the stored dataset's JSON).
MARKER_COLUMN = "ssn_marker_7f3a"
MARKER_VALUE = 31337.4242
MARKERS = (MARKER_COLUMN.encode(), struct.pack("<d", MARKER_VALUE), repr(MARKER_VALUE).encode())
K1, K2 = os.urandom(32), os.urandom(32)


def keys_file(tmp_path: Path, *keys: bytes) -> str:
    path = tmp_path / f"keys-{len(list(tmp_path.iterdir()))}"
    path.write_text("".join(base64.b64encode(k).decode() + "\n" for k in keys))
    path.chmod(0o400)
    return str(path)


def readable(raw: bytes) -> bytes:
    """Everything a person with the Redis dump could read: the bytes, and the gunzipped bytes."""
    try:
        return raw + gzip.decompress(raw)
    except (OSError, EOFError):
        return raw


def blobs(client: redis.Redis) -> dict[str, bytes]:
    """Every payload blob in the database (job, schedule and dataset metadata are plain on purpose)."""
    kinds = ("dataset:", "prepared:", "result:", "report-", "stored-dataset-data:")
    names = [k.decode() for k in client.scan_iter("pynomaly:*")]
    return {n: client.get(n) for n in names if n.removeprefix("pynomaly:").startswith(kinds)}


def leaks(raw: bytes) -> list[bytes]:
    view = readable(raw)
    return [m for m in MARKERS if m in view]


@pytest.fixture
def stores_db(redis_server: Any) -> Iterator[Settings]:
    base = Settings(redis_url=redis_server.url_for_db(STORES_DB))
    client = redis_from_settings(base, decode=False)
    client.flushdb()
    try:
        yield base
    finally:
        client.flushdb()
        client.close()


def _store_everything(settings: Settings, job_id: str) -> tuple[Dataset, dict[str, Any], str]:
    container = Container(settings, "test")
    try:
        dataset = Dataset((MARKER_COLUMN, "b"), np.array([[MARKER_VALUE, 1.0], [2.0, 3.0], [4.0, 5.0]]))
        result = {"columns": [MARKER_COLUMN, "b"], "scores": [MARKER_VALUE, 0.5, 0.1], "anomaly_count": 1}
        container.jobs.put_dataset(DATASET, job_id, dataset)
        container.jobs.put_dataset(PREPARED, job_id, dataset)
        container.jobs.put_blob("result", job_id, result)
        container.jobs.put_blob("report-csv", job_id, f"row,{MARKER_COLUMN}\n0,{MARKER_VALUE}\n")
        meta = StoredDataset(new_dataset_id(), "sensitive", 3, [MARKER_COLUMN, "b"], 10, "0" * 64, "json")
        container.datasets.add(meta, dataset, max_datasets=10)
        return dataset, result, meta.id
    finally:
        container.close()


def test_plain_blobs_show_the_markers_and_encrypted_ones_do_not(stores_db: Settings, tmp_path: Path) -> None:
    raw = redis_from_settings(stores_db, decode=False)
    try:
        # Control: without encryption the markers are in the clear, so the check below can fail.
        _store_everything(stores_db, "a" * 32)
        plain = blobs(raw)
        assert len(plain) == 5 and all(leaks(v) for v in plain.values()), {k: leaks(v) for k, v in plain.items()}

        on = stores_db.model_copy(update={"encryption_enabled": True, "encryption_keys_file": keys_file(tmp_path, K1)})
        dataset, result, stored_id = _store_everything(on, "b" * 32)
        sealed = {k: v for k, v in blobs(raw).items() if k not in plain}
        assert len(sealed) == 5
        for name, value in sealed.items():
            assert value.startswith(MAGIC + key_id(K1)), name
            assert leaks(value) == [], name
        # The metadata document stays plain (listing needs no key) and names only what it must.
        assert raw.get(f"pynomaly:stored-dataset:{stored_id}").startswith(b"{")

        container = Container(on, "test")
        try:
            back = container.jobs.get_dataset(PREPARED, "b" * 32)
            assert back.columns == dataset.columns and np.array_equal(back.values, dataset.values)
            assert container.jobs.get_blob("result", "b" * 32) == result
            assert container.datasets.load(stored_id).values[0, 0] == MARKER_VALUE
            # What was stored in the clear before encryption was turned on is still read.
            assert container.jobs.get_blob("result", "a" * 32) == result
        finally:
            container.close()
    finally:
        raw.close()


def test_tampered_or_unknown_key_blobs_on_redis_are_refused(stores_db: Settings, tmp_path: Path) -> None:
    on = stores_db.model_copy(update={"encryption_enabled": True, "encryption_keys_file": keys_file(tmp_path, K1)})
    _, result, stored_id = _store_everything(on, "c" * 32)
    raw = redis_from_settings(stores_db, decode=False)
    container = Container(on, "test")
    other_key = SecretStr(base64.b64encode(K2).decode())
    other = Container(stores_db.model_copy(update={"encryption_keys": other_key}), "test")
    try:
        name = f"pynomaly:result:{'c' * 32}"
        original = raw.get(name)
        raw.setrange(name, len(original) - 20, bytes([original[-20] ^ 0x80]))
        with pytest.raises(PayloadUnreadable, match="failed authentication"):
            container.jobs.get_blob("result", "c" * 32)
        raw.set(name, original)
        assert container.jobs.get_blob("result", "c" * 32) == result
        # Another key (or none) cannot open it, and says which key it would need.
        with pytest.raises(PayloadUnreadable, match=key_id(K1).hex()):
            other.jobs.get_blob("result", "c" * 32)
        with pytest.raises(PayloadUnreadable, match="no encryption key is configured"):
            Container(stores_db, "test").datasets.load(stored_id)
    finally:
        for c in (container, other):
            c.close()
        raw.close()


# -- a job end to end, with a real worker ----------------------------------------------------------


@pytest.fixture
def worker_db(settings: Settings, redis_server: Any, tmp_path: Path) -> Iterator[Settings]:
    with own_redis_db(
        settings,
        redis_server,
        WORKER_DB,
        api_keys=API_KEY,
        encryption_enabled=True,
        encryption_keys_file=keys_file(tmp_path, K1),
    ) as value:
        yield value


def test_a_worker_runs_a_job_on_encrypted_blobs_and_fails_one_sealed_under_a_key_it_lacks(
    worker_db: Settings, tmp_path: Path
) -> None:
    container = Container(worker_db, "test")
    service = JobService(container.jobs, container.messaging, container.dead_letters)
    # A submitter whose current key the worker does not have (a rotation rolled out to the API first).
    ahead = Container(worker_db.model_copy(update={"encryption_keys_file": keys_file(tmp_path, K2, K1)}), "test")
    ahead_service = JobService(ahead.jobs, ahead.messaging, ahead.dead_letters)
    raw = redis_from_settings(worker_db, decode=False)
    # The worker imports this checkout's package, as pytest does (PYTHONPATH in a worktree).
    env = {**env_for(worker_db), "PYTHONUNBUFFERED": "1"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    log = tmp_path / "worker.log"
    proc, record = spawn(
        "encryption-worker",
        pynomaly_argv("worker", f"--queue={Q_PROCESSING}", f"--queue={Q_DETECTION}", "--concurrency=1"),
        log,
        env=env,
    )
    try:
        rows = [[MARKER_VALUE if i == 0 else x, y] for i, (x, y) in enumerate(small_rows(60))]
        limits = DatasetLimits(10**6, 1000, 10)
        job, _ = service.submit(SubmitRequest(from_rows(rows, [MARKER_COLUMN, "b"], limits), "ecod"))
        sealed_elsewhere, _ = ahead_service.submit(SubmitRequest(from_rows(rows, ["x", "y"], limits), "ecod"))

        def finished(job_id: str) -> str | None:
            assert proc.poll() is None, f"the worker exited:\n{log_tail(log)}"
            status = container.jobs.get(job_id).status
            return status if status in ("completed", "failed") else None

        assert wait_for(lambda: finished(job.id), 120, what="the job to finish") == "completed", log_tail(log)
        assert wait_for(lambda: finished(sealed_elsewhere.id), 120, what="the second job to finish") == "failed"
    finally:
        stop_process(record, grace=20, proc=proc)

    try:
        stored = {k: v for k, v in blobs(raw).items() if job.id in k}
        # The preprocessed copy was sealed by the same put_dataset as the dataset, and is deleted once the
        # job finishes (bounded resources): what stays is the dataset and the result, both sealed.
        assert set(stored) == {f"pynomaly:{kind}:{job.id}" for kind in ("dataset", "result")}
        for name, value in stored.items():
            assert value.startswith(MAGIC + key_id(K1)) and leaks(value) == [], name

        failed = container.jobs.get(sealed_elsewhere.id)
        assert failed.attempts == 1 and failed.error is not None
        assert f"encrypted with key id {key_id(K2).hex()}, which is not among the configured keys" in failed.error
        assert "Traceback" not in failed.error and DeadLetterStore(container.redis).size() == 0

        app = create_app(worker_db)
        with TestClient(app, headers={API_KEY_HEADER: API_KEY}) as api:
            answer = api.get(f"/v1/jobs/{job.id}/result")
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["columns"] == [MARKER_COLUMN, "b"] and len(body["scores"]) == 60
            assert body["anomaly_count"] == container.jobs.get(job.id).anomaly_count >= 1
            # A result sealed under a key the API lacks: problem+json naming it, not a traceback.
            location = ahead.jobs.put_blob("result", sealed_elsewhere.id, {"scores": []})
            container.jobs.update(sealed_elsewhere.id, lambda j: setattr(j, "result_location", location))
            refused = api.get(f"/v1/jobs/{sealed_elsewhere.id}/result")
            assert refused.status_code == 500 and refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["title"] == "Stored payload unreadable"
            assert key_id(K2).hex() in refused.json()["detail"]
    finally:
        for c in (container, ahead):
            c.close()
        raw.close()
