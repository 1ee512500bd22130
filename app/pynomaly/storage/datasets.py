"""Stored datasets (uploaded once, used by schedules): metadata as JSON, the matrix as a gzip'd blob."""

from __future__ import annotations

import builtins
import gzip
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from pynomaly.domain.datasets import Dataset
from pynomaly.domain.errors import Conflict, NotFound
from pynomaly.domain.jobs import utcnow
from pynomaly.storage.encryption import PLAIN, BlobCodec
from pynomaly.storage.redis_client import KEY_PREFIX

DATASET_INDEX = f"{KEY_PREFIX}datasets"


def _meta_key(dataset_id: str) -> str:
    return f"{KEY_PREFIX}stored-dataset:{dataset_id}"


def _data_key(dataset_id: str) -> str:
    return f"{KEY_PREFIX}stored-dataset-data:{dataset_id}"


def new_dataset_id() -> str:
    return "ds_" + uuid.uuid4().hex[:20]


@dataclass
class StoredDataset:
    id: str
    name: str
    rows: int
    columns: list[str]
    bytes: int
    sha256: str
    format: str
    missing: int = 0
    infinite: int = 0
    created_by: str | None = None
    created_at: str = field(default_factory=utcnow)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class DatasetStore:
    def __init__(self, client: redis.Redis, blobs: redis.Redis, codec: BlobCodec = PLAIN) -> None:
        self._r = client
        self._b = blobs
        self._codec = codec  # the matrix blob only: metadata stays plain for listing

    def add(self, meta: StoredDataset, dataset: Dataset, max_datasets: int) -> StoredDataset:
        if self._r.zcard(DATASET_INDEX) >= max_datasets:
            raise Conflict(f"{max_datasets} datasets are stored already (the limit): delete some first")
        payload = gzip.compress(json.dumps(dataset.to_payload(), separators=(",", ":")).encode(), compresslevel=5)
        self._b.set(_data_key(meta.id), self._codec.seal(_data_key(meta.id), payload))
        pipe = self._r.pipeline(transaction=True)
        pipe.set(_meta_key(meta.id), json.dumps(meta.as_dict()))
        pipe.zadd(DATASET_INDEX, {meta.id: time.time()})
        pipe.execute()
        return meta

    def get(self, dataset_id: str) -> StoredDataset:
        raw = self._r.get(_meta_key(dataset_id))
        if raw is None:
            raise NotFound(f"no dataset {dataset_id!r}")
        return StoredDataset(**json.loads(raw))

    def exists(self, dataset_id: str) -> bool:
        return bool(self._r.exists(_meta_key(dataset_id)))

    def load(self, dataset_id: str) -> Dataset:
        raw = self._b.get(_data_key(dataset_id))
        if raw is None:
            raise NotFound(f"no dataset {dataset_id!r}")
        return Dataset.from_payload(json.loads(gzip.decompress(self._codec.open(_data_key(dataset_id), raw))))

    def list(self, offset: int = 0, limit: int = 50) -> tuple[list[StoredDataset], int]:
        total = int(self._r.zcard(DATASET_INDEX))
        ids = self._r.zrevrange(DATASET_INDEX, offset, offset + limit - 1) if limit else []
        items = []
        for dataset_id, raw in zip(ids, self._r.mget([_meta_key(i) for i in ids]) if ids else [], strict=True):
            if raw is not None:
                items.append(StoredDataset(**json.loads(raw)))
            else:
                self._r.zrem(DATASET_INDEX, dataset_id)
        return items, total

    def delete(self, dataset_id: str) -> None:
        if not self.exists(dataset_id):
            raise NotFound(f"no dataset {dataset_id!r}")
        self._b.delete(_data_key(dataset_id))
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(_meta_key(dataset_id))
        pipe.zrem(DATASET_INDEX, dataset_id)
        pipe.execute()

    def older_than(self, seconds: float) -> builtins.list[str]:
        return list(self._r.zrangebyscore(DATASET_INDEX, 0, time.time() - seconds))
