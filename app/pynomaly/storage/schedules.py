"""Schedule records and each schedule's runs (job ids by start time) in Redis.

The timing itself lives in RedBeat's entries (see ``pynomaly.messaging.beat``); this store keeps
what a run needs (detector, parameters, source, notification rules) and its history.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Callable

import redis

from pynomaly.domain.errors import Conflict, NotFound
from pynomaly.domain.schedules import Schedule
from pynomaly.storage.redis_client import KEY_PREFIX, update_document

SCHEDULE_INDEX = f"{KEY_PREFIX}schedules"
MAX_RUNS_KEPT = 1000


def _key(schedule_id: str) -> str:
    return f"{KEY_PREFIX}schedule:{schedule_id}"


def runs_key(schedule_id: str) -> str:
    return f"{KEY_PREFIX}schedule-runs:{schedule_id}"


class ScheduleStore:
    def __init__(self, client: redis.Redis) -> None:
        self._r = client

    def create(self, schedule: Schedule, max_schedules: int) -> None:
        if self._r.zcard(SCHEDULE_INDEX) >= max_schedules:
            raise Conflict(f"{max_schedules} schedules exist already (the limit): delete some first")
        pipe = self._r.pipeline(transaction=True)
        pipe.set(_key(schedule.id), json.dumps(schedule.as_dict()))
        pipe.zadd(SCHEDULE_INDEX, {schedule.id: time.time()})
        pipe.execute()

    def get(self, schedule_id: str) -> Schedule:
        raw = self._r.get(_key(schedule_id))
        if raw is None:
            raise NotFound(f"no schedule {schedule_id!r}")
        return Schedule.from_dict(json.loads(raw))

    def find(self, schedule_id: str) -> Schedule | None:
        try:
            return self.get(schedule_id)
        except NotFound:
            return None

    def update(self, schedule_id: str, change: Callable[[Schedule], None]) -> Schedule:
        return update_document(
            self._r, _key(schedule_id), Schedule.from_dict, change, lambda: NotFound(f"no schedule {schedule_id!r}")
        )

    def list(self, offset: int = 0, limit: int = 50) -> tuple[list[Schedule], int]:
        total = int(self._r.zcard(SCHEDULE_INDEX))
        ids = self._r.zrevrange(SCHEDULE_INDEX, offset, offset + limit - 1) if limit else []
        raws = self._r.mget([_key(i) for i in ids]) if ids else []
        return [Schedule.from_dict(json.loads(r)) for r in raws if r is not None], total

    def all(self) -> builtins.list[Schedule]:
        return self.list(0, 10**9)[0]

    def delete(self, schedule_id: str) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(_key(schedule_id))
        pipe.delete(runs_key(schedule_id))
        pipe.zrem(SCHEDULE_INDEX, schedule_id)
        removed = pipe.execute()
        if not removed[0]:
            raise NotFound(f"no schedule {schedule_id!r}")

    # -- runs --------------------------------------------------------------------------------------
    def add_run(self, schedule_id: str, job_id: str, ttl_seconds: int) -> None:
        key = runs_key(schedule_id)
        pipe = self._r.pipeline(transaction=True)
        pipe.zadd(key, {job_id: time.time()})
        pipe.zremrangebyrank(key, 0, -MAX_RUNS_KEPT - 1)
        pipe.expire(key, max(ttl_seconds, 3600))
        pipe.execute()

    def run_ids(self, schedule_id: str, offset: int = 0, limit: int = 10) -> builtins.list[str]:
        return list(self._r.zrevrange(runs_key(schedule_id), offset, offset + limit - 1))

    def count_runs(self, schedule_id: str) -> int:
        return int(self._r.zcard(runs_key(schedule_id)))

    def forget_runs(self, schedule_id: str, job_ids: builtins.list[str]) -> None:
        if job_ids:
            self._r.zrem(runs_key(schedule_id), *job_ids)
