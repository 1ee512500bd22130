"""RedBeat's scheduler, made to wait out a Redis outage instead of exiting.

RedBeat extends its lock and loads due entries from Redis on every tick; a connection error there
(Redis restarting, a Sentinel failover, a replica answering READONLY) escapes ``tick`` and Celery's
beat service exits, so nothing schedules until something restarts the process.  This scheduler
logs the outage once, sleeps a short interval and tries again.  A lock that expired meanwhile is
not simply extended: another beat may hold it now, so this one goes back to standby and takes the
lock again only when it is free, before it sends anything.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, RedBeatScheduler, get_redis
from redis.exceptions import LockError

log = logging.getLogger(__name__)

# What a Redis outage looks like from here; anything else is a bug and still ends the process.
REDIS_OUTAGE = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.BusyLoadingError,
)
RETRY_SECONDS = 1.0


# RedBeat ships no type hints, so its scheduler class is Any to mypy: subclassing it is the point.
class OutageTolerantScheduler(RedBeatScheduler):  # type: ignore[misc]
    lock: Any  # RedBeat's: the held beat lock, or None
    _outage = False

    def tick(self, min: Any = min, **kwargs: Any) -> float:  # Celery calls tick(min=...)
        try:
            if self.lock_key and self.lock is None and not self._take_lock():
                return self._retry_interval()  # standby: another beat holds the lock
            interval = super().tick(min=min, **kwargs)
        except LockError:
            # The lock expired during an outage (or was lost in a failover): another beat may own it.
            log.warning("beat: lost the lock %s; standing by until it is free", self.lock_key)
            self.lock = None
            return self._retry_interval()
        except REDIS_OUTAGE as exc:
            if not self._outage:
                log.warning(
                    "beat: Redis unavailable (%s: %s); retrying every %.0f s", type(exc).__name__, exc, RETRY_SECONDS
                )
            self._outage = True
            return self._retry_interval()
        if self._outage:
            log.info("beat: Redis is back; scheduling again")
            self._outage = False
        return float(interval)

    def _take_lock(self) -> bool:
        """Take the beat lock without waiting (RedBeat's start-up handler blocks, or failed if Redis
        was down then); True when this beat holds it now."""
        client = get_redis(self.app)
        lock = client.lock(self.lock_key, timeout=self.lock_timeout, sleep=self.max_interval)
        lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)  # extend *to* the timeout, as RedBeat does
        if not lock.acquire(blocking=False):
            return False
        log.info("beat: acquired the lock %s", self.lock_key)
        self.lock = lock
        return True

    def _retry_interval(self) -> float:
        return float(min(self.max_interval, RETRY_SECONDS))
