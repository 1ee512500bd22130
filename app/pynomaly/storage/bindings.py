"""Stream bindings (topic -> model and notification rules) in Redis, and the live-scoring generation.

- ``pynomaly:stream-bindings``: hash topic -> binding JSON (:class:`~pynomaly.domain.live.StreamBinding`)
- ``pynomaly:scoring:generation`` (:data:`~pynomaly.storage.models.SCORING_GENERATION`): bumped in the
  same transaction as every binding change (and every model change, by the model store)
"""

from __future__ import annotations

import json

import redis

from pynomaly.domain.errors import NotFound
from pynomaly.domain.jobs import utcnow
from pynomaly.domain.live import StreamBinding
from pynomaly.storage.models import SCORING_GENERATION
from pynomaly.storage.redis_client import KEY_PREFIX

BINDINGS = f"{KEY_PREFIX}stream-bindings"


class BindingStore:
    def __init__(self, client: redis.Redis) -> None:
        self._r = client

    def get(self, topic: str) -> StreamBinding:
        raw = self._r.hget(BINDINGS, topic)
        if raw is None:
            raise NotFound(f"topic {topic!r} has no model bound to it")
        return StreamBinding.from_dict(json.loads(raw))

    def all(self) -> dict[str, StreamBinding]:
        return {str(t): StreamBinding.from_dict(json.loads(raw)) for t, raw in self._r.hgetall(BINDINGS).items()}

    def put(self, binding: StreamBinding) -> tuple[StreamBinding, bool]:
        """Store ``binding`` (keeping its first ``created_at``); returns it and whether it is new."""
        raw = self._r.hget(BINDINGS, binding.topic)
        created = raw is None
        if not created:
            binding.created_at = json.loads(raw).get("created_at", binding.created_at)
        binding.updated_at = utcnow()
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(BINDINGS, binding.topic, json.dumps(binding.as_dict()))
        pipe.incr(SCORING_GENERATION)
        pipe.execute()
        return binding, created

    def delete(self, topic: str) -> StreamBinding:
        binding = self.get(topic)
        pipe = self._r.pipeline(transaction=True)
        pipe.hdel(BINDINGS, topic)
        pipe.incr(SCORING_GENERATION)
        pipe.execute()
        return binding

    def generation(self) -> int:
        return int(self._r.get(SCORING_GENERATION) or 0)
