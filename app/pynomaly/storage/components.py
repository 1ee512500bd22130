"""Component health: the latest heartbeat of every component, as the ``health-monitor`` group kept it.

The stream group (``consumers/stream_groups.py``) writes it from ``health:stream``; ``GET
/v1/components``, the dashboard and the health-check task read it.  Whether a component is stale is
``Settings.heartbeat_stale_after``, passed in by the reader.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import redis

from pynomaly.storage.redis_client import KEY_PREFIX

COMPONENTS = f"{KEY_PREFIX}components"


def record_heartbeat(client: redis.Redis, entry_id: str, fields: dict[str, str]) -> None:
    """Keep ``fields`` as the latest beat of its component (by component and host)."""
    key = f"{fields.get('component', '?')}@{fields.get('host', '?')}"
    client.hset(COMPONENTS, key, json.dumps({**fields, "entry_id": entry_id}))


def component_health(client: redis.Redis, stale_after: float) -> list[dict[str, Any]]:
    """Every component seen on health:stream, with its age and whether it is stale."""
    if not stale_after > 0:
        raise ValueError(f"stale_after must be a positive number of seconds, not {stale_after!r}")
    now = time.time()
    rows = []
    for key, raw in sorted(client.hgetall(COMPONENTS).items()):
        data = json.loads(raw)
        try:
            seen = datetime.fromisoformat(data["time"].replace("Z", "+00:00")).timestamp()
        except (KeyError, ValueError):
            seen = 0.0
        age = max(0.0, now - seen)
        rows.append({"id": key, **data, "age_seconds": round(age, 1), "stale": age > stale_after})
    return rows


def forget_components(client: redis.Redis, component_ids: list[str]) -> None:
    """Drop the last beats of components gone for good (replaced pods, stopped hosts)."""
    if component_ids:
        client.hdel(COMPONENTS, *component_ids)
