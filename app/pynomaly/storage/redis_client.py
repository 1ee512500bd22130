"""One way to open Redis from settings, so every component uses the same options."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import redis

from pynomaly.config import Settings

KEY_PREFIX = "pynomaly:"


def redis_from_settings(settings: Settings, *, decode: bool = True) -> redis.Redis:
    settings.require("redis_url")
    return redis.Redis.from_url(
        settings.redis_url,
        decode_responses=decode,
        socket_connect_timeout=5,
        socket_timeout=30,
        health_check_interval=30,
        retry_on_timeout=True,
        **settings.redis_ssl_options(),
    )


class Document(Protocol):
    updated_at: str

    def as_dict(self) -> dict[str, Any]: ...


D = TypeVar("D", bound=Document)


def update_document(
    client: redis.Redis,
    key: str,
    load: Callable[[dict[str, Any]], D],
    change: Callable[[D], object],
    missing: Callable[[], Exception],
    also: Callable[[D, Any], object] | None = None,
) -> D:
    """Read-modify-write of a JSON document under WATCH, so concurrent updates never lose one another.

    ``change`` may raise to refuse the update; the document keeps its TTL.  ``also(document, pipe)``
    adds writes to the same MULTI/EXEC (an index move, an event about the change in the outbox): all
    or none.
    """
    from pynomaly.domain.jobs import utcnow

    while True:
        with client.pipeline() as pipe:
            try:
                pipe.watch(key)
                raw = pipe.get(key)
                if raw is None:
                    raise missing()
                document = load(json.loads(raw))
                change(document)
                document.updated_at = utcnow()
                pipe.multi()
                pipe.set(key, json.dumps(document.as_dict()), keepttl=True)
                if also is not None:
                    also(document, pipe)
                pipe.execute()
                return document
            except redis.WatchError:
                continue


def delete_document(
    client: redis.Redis,
    key: str,
    load: Callable[[dict[str, Any]], D],
    missing: Callable[[], Exception],
    also: Callable[[D, Any], object],
    check: Callable[[D], object] | None = None,
) -> D:
    """Delete a JSON document under WATCH, with ``also(document, pipe)``'s writes in the same MULTI/EXEC
    (what hangs off it: index entries, blobs, versions), so a concurrent update is never half deleted.

    ``check`` may raise to refuse the deletion (a running job); returns the deleted document."""
    while True:
        with client.pipeline() as pipe:
            try:
                pipe.watch(key)
                raw = pipe.get(key)
                if raw is None:
                    raise missing()
                document = load(json.loads(raw))
                if check is not None:
                    check(document)
                pipe.multi()
                pipe.delete(key)
                also(document, pipe)
                pipe.execute()
                return document
            except redis.WatchError:
                continue
