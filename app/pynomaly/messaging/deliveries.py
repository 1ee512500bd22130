"""Which worker holds which task message, and putting a dead worker's messages back on their queue.

With ``task_acks_late`` a message a worker received stays in kombu's ``unacked`` hash until the task
finishes.  If the whole worker dies (SIGKILL, out of memory, node loss) nobody acks or rejects it,
and kombu's Redis transport hands it out again only after ``visibility_timeout`` (an hour and more).

So each worker process records the delivery tags it receives (:data:`DELIVERIES`) and keeps an alive
key (:data:`WORKER_ALIVE`) fresh from its heartbeat; any worker's :class:`Reaper` puts the messages of
workers whose alive key expired back at the front of their queue, marked redelivered the way kombu's
own restore marks them.  The alive key names one worker *start* (an instance id), not its host name:
a container restarted in the same pod keeps its host name but must not vouch for its dead
predecessor.  A leaked record (a task revoked before it ran) is harmless: nothing is restored unless
its tag is still in ``unacked`` and no later receipt took it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import redis
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

from pynomaly.storage.redis_client import KEY_PREFIX

log = logging.getLogger(__name__)

DELIVERIES = f"{KEY_PREFIX}deliveries"
WORKER_ALIVE = f"{KEY_PREFIX}worker-alive:"
# Receipts are stamped by the receiving host's clock; an ``unacked_index`` entry newer than a record
# by more than this belongs to a later receipt (clocks of two hosts may differ by this much).
CLOCK_SKEW = 5.0

# KEYS: deliveries, unacked, unacked_index, queue lists...; ARGV: tag, record as read, payload, newest score.
# The record must be unchanged (no later receipt overwrote it), the unacked entry not newer than it,
# and HDEL of the unacked entry must succeed (not acked, not restored by another reaper meanwhile):
# only then is the message pushed.  All in one script, so a late ack or a second reaper never
# duplicates a message.  Publishers LPUSH and consumers BRPOP: RPUSH puts it at the front, next out.
_RESTORE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
local score = redis.call('ZSCORE', KEYS[3], ARGV[1])
if score and tonumber(score) > tonumber(ARGV[4]) then return 0 end
if redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 0
end
redis.call('ZREM', KEYS[3], ARGV[1])
for i = 4, #KEYS do redis.call('RPUSH', KEYS[i], ARGV[3]) end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""

# KEYS: deliveries; ARGV: tag, instance.  Only the receipt's own worker forgets it: a worker thought
# dead that finishes late must not erase the record of whoever received the message after it.
_FORGET = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw and cjson.decode(raw)['instance'] == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""


def new_instance_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class Delivery:
    tag: str
    owner: str  # the worker's node name, e.g. detection@host
    instance: str  # one start of that worker
    task: str
    job_id: str | None
    received: float  # epoch seconds, the receiving host's clock

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if k != "tag"}, separators=(",", ":"))

    @classmethod
    def from_json(cls, tag: str, raw: str) -> Delivery:
        data = json.loads(raw)
        return cls(tag, str(data["owner"]), str(data["instance"]), str(data["task"]), data.get("job_id"),
                   float(data["received"]))  # fmt: skip


class DeliveryRegistry:
    """One worker start's side: record and forget its deliveries, say it is alive."""

    def __init__(self, client: redis.Redis, owner: str, instance: str, alive_ttl: float) -> None:
        self.client = client
        self.owner = owner
        self.instance = instance
        self._ttl_ms = int(alive_ttl * 1000)
        self._forget = client.register_script(_FORGET)

    def alive(self) -> None:
        self.client.set(WORKER_ALIVE + self.instance, self.owner, px=self._ttl_ms)

    def record(self, tag: str, task: str, job_id: str | None = None) -> Delivery:
        delivery = Delivery(tag, self.owner, self.instance, task, job_id, time.time())
        self.client.hset(DELIVERIES, tag, delivery.to_json())
        return delivery

    def forget(self, tag: str) -> bool:
        return bool(self._forget(keys=[DELIVERIES], args=[tag, self.instance]))


class QueueLayout(Protocol):
    """Where the broker keeps unacked messages and where a message goes back (kombu's answers)."""

    unacked_key: str
    unacked_index_key: str

    def targets(self, payload: dict[str, Any], exchange: str, routing_key: str) -> list[str]: ...


class KombuLayout:
    """kombu's Redis channel decides the lists: its bindings lookup and its priority-step suffix,
    exactly as its own restore does (``queue``, or ``queue<sep><step>`` for a non-zero step)."""

    def __init__(self, channel: Any) -> None:
        self._channel = channel
        prefix = getattr(channel, "global_keyprefix", "") or ""
        self._prefix = prefix
        self.unacked_key = prefix + channel.unacked_key
        self.unacked_index_key = prefix + channel.unacked_index_key

    def targets(self, payload: dict[str, Any], exchange: str, routing_key: str) -> list[str]:
        channel = self._channel
        priority = channel._get_message_priority(payload, reverse=False)
        return [self._prefix + channel._q_for_pri(queue, priority) for queue in channel._lookup(exchange, routing_key)]


@dataclass(frozen=True)
class Recovered:
    delivery: Delivery
    queues: list[str]


class Reaper:
    """Puts the messages of dead workers back on their queues; safe to run in every worker at once."""

    def __init__(self, client: redis.Redis, layout: Callable[[], QueueLayout]) -> None:
        self._r = client
        self._layout = layout
        self._restore = client.register_script(_RESTORE)

    def records(self) -> Iterator[tuple[Delivery, str]]:
        for tag, raw in self._r.hgetall(DELIVERIES).items():
            try:
                yield Delivery.from_json(tag, raw), raw
            except (ValueError, KeyError, TypeError):
                log.warning("dropping an unreadable delivery record %s: %r", tag, raw)
                self._r.hdel(DELIVERIES, tag)

    def orphans(self) -> list[tuple[Delivery, str]]:
        """Records whose worker's alive key is gone."""
        records = list(self.records())
        instances = sorted({d.instance for d, _ in records})
        if not instances:
            return []
        pipe = self._r.pipeline(transaction=False)
        for instance in instances:
            pipe.exists(WORKER_ALIVE + instance)
        alive = {i for i, exists in zip(instances, pipe.execute(), strict=True) if exists}
        return [(d, raw) for d, raw in records if d.instance not in alive]

    def recover(self) -> list[Recovered]:
        orphans = self.orphans()
        if not orphans:
            return []
        layout = self._layout()
        done = []
        for delivery, raw in orphans:
            queues = self.restore(layout, delivery, raw)
            if queues:
                done.append(Recovered(delivery, queues))
        return done

    def restore(self, layout: QueueLayout, delivery: Delivery, raw: str) -> list[str]:
        """Put one orphaned delivery back at the front of its queue; returns the lists pushed to
        ([] when it was acked meanwhile, taken by another reaper, or received again since)."""
        entry = self._r.hget(layout.unacked_key, delivery.tag)
        payload = ""
        queues: list[str] = []
        if entry is not None:
            message, exchange, routing_key = kombu_loads(entry)
            # The marks kombu's own restore sets; Celery passes delivery_info.redelivered to the task.
            message.setdefault("headers", {})["redelivered"] = True
            message.setdefault("properties", {}).setdefault("delivery_info", {})["redelivered"] = True
            queues = layout.targets(message, exchange, routing_key)
            payload = kombu_dumps(message)
        keys = [DELIVERIES, layout.unacked_key, layout.unacked_index_key, *queues]
        pushed = self._restore(keys=keys, args=[delivery.tag, raw, payload, delivery.received + CLOCK_SKEW])
        return queues if pushed and queues else []
