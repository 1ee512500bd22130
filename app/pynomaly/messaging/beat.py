"""Celery beat on RedBeat: schedules live in Redis, and a lock lets only one beat send at a time.

- ``beat_config(settings)``: the Celery settings beat needs (merged into ``celery_config``): the
  RedBeat scheduler, its Redis, key prefix, lock key and lock timeout, how long beat may sleep, and
  the static maintenance entries (created at every beat start, in every environment).
- ``RedBeatTimer``: the API's side, adding, removing and reading the RedBeat entry of a schedule.
- ``run_beat(settings)``: ``pynomaly beat``.  A second beat blocks on the lock (it re-tries every
  ``beat_max_loop_interval``) and takes over when the first stops or its lock expires.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery
from celery.schedules import crontab, schedule

from pynomaly.config import Settings
from pynomaly.domain.errors import InvalidInput
from pynomaly.domain.schedules import Schedule, parse_cron
from pynomaly.storage.redis_client import KEY_PREFIX
from pynomaly.topology import Q_DEFAULT, TASK_HEALTH_CHECK, TASK_MAINTENANCE, TASK_SCHEDULED_RUN

log = logging.getLogger(__name__)

BEAT_KEY_PREFIX = f"{KEY_PREFIX}beat:"
# RedBeat derives its sorted set of due times and its lock from the prefix.
BEAT_SCHEDULE_KEY = BEAT_KEY_PREFIX + ":schedule"
BEAT_LOCK_KEY = BEAT_KEY_PREFIX + ":lock"
BEAT_SCHEDULER = "pynomaly.messaging.beat_scheduler:OutageTolerantScheduler"
MAINTENANCE_ENTRY = "pynomaly-maintenance"
HEALTH_CHECK_ENTRY = "pynomaly-health-check"


def beat_config(settings: Settings) -> dict[str, Any]:
    return {
        "beat_scheduler": BEAT_SCHEDULER,
        "beat_max_loop_interval": settings.beat_max_loop_interval,
        "redbeat_redis_url": settings.redis_url,
        # Explicit, so RedBeat does not fall back to the broker's transport options.
        "redbeat_redis_options": {},
        "redbeat_redis_use_ssl": settings.redis_ssl_options() or None,
        "redbeat_key_prefix": BEAT_KEY_PREFIX,
        "redbeat_lock_key": BEAT_LOCK_KEY,
        "redbeat_lock_timeout": int(settings.beat_lock_timeout),
        "beat_schedule": {
            MAINTENANCE_ENTRY: {
                "task": TASK_MAINTENANCE,
                "schedule": timedelta(seconds=settings.maintenance_interval_seconds),
                "options": {"queue": Q_DEFAULT},
            },
            HEALTH_CHECK_ENTRY: {
                "task": TASK_HEALTH_CHECK,
                "schedule": timedelta(seconds=settings.health_summary_interval_seconds),
                "options": {"queue": Q_DEFAULT},
            },
        },
    }


def entry_name(schedule_id: str) -> str:
    return f"schedule:{schedule_id}"


def celery_schedule(item: Schedule) -> schedule:
    if item.cron:
        try:
            return crontab(**parse_cron(item.cron))
        except ValueError as exc:
            raise InvalidInput(f"cron {item.cron!r}: {exc}") from None
    return schedule(run_every=timedelta(seconds=int(item.interval_seconds or 0)))


class RedBeatTimer:
    """Adds, removes and reads the RedBeat entries of schedules (used by the API and the CLI's server side)."""

    def __init__(self, app: Celery) -> None:
        from redbeat.schedulers import ensure_conf

        self._app = app
        ensure_conf(app)

    def validate(self, item: Schedule) -> None:
        celery_schedule(item)

    def set(self, item: Schedule) -> None:
        """(Re)create the entry; its first run is one interval (or the next cron time) from now."""
        from redbeat import RedBeatSchedulerEntry

        self.remove(item.id)
        RedBeatSchedulerEntry(
            entry_name(item.id),
            TASK_SCHEDULED_RUN,
            celery_schedule(item),
            args=[item.id],
            options={"queue": Q_DEFAULT},
            app=self._app,
        ).save()

    def remove(self, schedule_id: str) -> None:
        from redbeat import RedBeatSchedulerEntry

        RedBeatSchedulerEntry(entry_name(schedule_id), app=self._app).delete()

    def next_run(self, schedule_id: str) -> str | None:
        from redbeat import RedBeatSchedulerEntry

        key = RedBeatSchedulerEntry.generate_key(self._app, entry_name(schedule_id))
        try:
            due = RedBeatSchedulerEntry.from_key(key, app=self._app).due_at
        except KeyError:
            return None
        if due is None:
            return None
        # Celery's crontab estimate lands a few milliseconds before the second it means.
        when = datetime.fromtimestamp(round(due.timestamp()), UTC)
        return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def run_beat(settings: Settings) -> None:
    from pynomaly.messaging.celery_app import create_celery
    from pynomaly.observability.heartbeat import Heartbeat
    from pynomaly.observability.logs import keep_celery_off_logging
    from pynomaly.storage.redis_client import redis_from_settings

    app = create_celery(settings)
    app.set_default()
    app.set_current()
    keep_celery_off_logging()
    client = redis_from_settings(settings)
    # The standby beat (waiting on the lock) beats too: it is alive and ready to take over.
    heartbeat = Heartbeat(settings, "beat", client).start()
    log.info("starting beat (RedBeat, lock %s, timeout %ss)", BEAT_LOCK_KEY, int(settings.beat_lock_timeout))
    try:
        app.Beat(
            loglevel=settings.log_level,
            scheduler=BEAT_SCHEDULER,
            max_interval=settings.beat_max_loop_interval,
            quiet=True,
        ).run()
    finally:
        heartbeat.stop()
        client.close()
