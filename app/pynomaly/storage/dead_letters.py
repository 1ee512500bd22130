"""The dead-letter queue: tasks whose retries ran out, kept with everything needed to replay them."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from pynomaly.domain.errors import NotFound
from pynomaly.domain.jobs import utcnow
from pynomaly.storage.redis_client import KEY_PREFIX

DLQ_INDEX = f"{KEY_PREFIX}dlq"
DLQ_ENTRIES = f"{KEY_PREFIX}dlq:entries"


@dataclass
class DeadLetter:
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    error: str
    traceback: str
    attempts: int
    job_id: str | None = None
    queue: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    failed_at: str = field(default_factory=utcnow)
    replays: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class DeadLetterStore:
    def __init__(self, client: redis.Redis) -> None:
        self._r = client

    def add(self, letter: DeadLetter) -> DeadLetter:
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(DLQ_ENTRIES, letter.id, json.dumps(letter.as_dict()))
        pipe.zadd(DLQ_INDEX, {letter.id: time.time()})
        pipe.execute()
        return letter

    def get(self, letter_id: str) -> DeadLetter:
        raw = self._r.hget(DLQ_ENTRIES, letter_id)
        if raw is None:
            raise NotFound(f"no dead letter {letter_id!r}")
        return DeadLetter(**json.loads(raw))

    def list(self, offset: int = 0, limit: int = 50) -> tuple[list[DeadLetter], int]:
        ids = self._r.zrevrange(DLQ_INDEX, offset, offset + limit - 1)
        raws = self._r.hmget(DLQ_ENTRIES, ids) if ids else []
        return [DeadLetter(**json.loads(r)) for r in raws if r], int(self._r.zcard(DLQ_INDEX))

    def size(self) -> int:
        return int(self._r.zcard(DLQ_INDEX))

    def remove(self, letter_id: str) -> bool:
        pipe = self._r.pipeline(transaction=True)
        pipe.hdel(DLQ_ENTRIES, letter_id)
        pipe.zrem(DLQ_INDEX, letter_id)
        removed, _ = pipe.execute()
        return bool(removed)

    def purge(self) -> int:
        pipe = self._r.pipeline(transaction=True)
        pipe.zcard(DLQ_INDEX)
        pipe.delete(DLQ_INDEX, DLQ_ENTRIES)
        count, _ = pipe.execute()
        return int(count)
