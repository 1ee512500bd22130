"""A job's notification outcomes, as the ``notifiers`` stream group kept them from ``notifications:stream``.

The stream group (``consumers/stream_groups.py``) writes it; ``GET /v1/jobs/{id}/notifications``
reads it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import redis

from pynomaly.storage.redis_client import KEY_PREFIX

NOTIFICATION_LOG = f"{KEY_PREFIX}notifications:"
NOTIFICATION_STATUSES = ("queued", "delivered", "retrying", "dead_lettered")


def record_notification(client: redis.Redis, entry_id: str, fields: dict[str, str], ttl_seconds: int) -> None:
    """Keep one ``notifications:stream`` entry under its job (entries without a job are skipped)."""
    job_id = fields.get("job_id") or fields.get("subject")
    if not job_id:
        return
    key = f"{NOTIFICATION_LOG}{job_id}"
    pipe = client.pipeline(transaction=True)
    pipe.hsetnx(key, entry_id, json.dumps(fields))
    pipe.expire(key, ttl_seconds)
    pipe.execute()


def _stream_id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return 0, 0


def _as_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def notification_log(client: redis.Redis, job_id: str) -> list[dict[str, Any]]:
    """A job's delivery outcomes, sorted by stream id.

    Only delivery outcomes (an entry with a channel and one of :data:`NOTIFICATION_STATUSES`) are
    returned: anything else in the hash (an older bridge copied finished-job events there) is skipped.
    """
    entries = []
    for entry_id, raw in client.hgetall(f"{NOTIFICATION_LOG}{job_id}").items():
        try:
            fields = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if (
            not isinstance(fields, dict)
            or not fields.get("channel")
            or fields.get("status") not in NOTIFICATION_STATUSES
        ):
            continue
        ms, _seq = _stream_id_key(entry_id)
        entries.append(
            {
                "id": entry_id,
                "time": datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z") if ms else None,
                "index": _as_int(fields.get("index")),
                "channel": str(fields["channel"]),
                "target": str(fields.get("target", "")),
                "on": str(fields.get("on", "")),
                "outcome": str(fields.get("outcome", "")),
                "status": str(fields["status"]),
                "attempt": _as_int(fields.get("attempt")),
                "detail": str(fields.get("detail", "")),
            }
        )
    entries.sort(key=lambda e: _stream_id_key(e["id"]))
    return entries
