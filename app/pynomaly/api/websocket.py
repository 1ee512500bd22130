"""WebSocket /v1/stream: live dashboard entries from Redis Streams, resumable from a last-seen id.

Browsers cannot set headers on a WebSocket, so the key may come as the X-API-Key header or as the
first message ``{"api_key": "...", "last_id": "..."}``.  Every entry sent carries its stream id;
a client that reconnects with ``last_id`` receives exactly what it missed (while still retained).

A client further behind than the stream's MAXLEN (a long disconnect, or too slow to keep up) cannot
get back what was trimmed: it is told with a ``gap`` message (``after``: its last id, ``before``:
the oldest id still retained, which arrives next) and resyncs from REST.  Each client reads the
stream at its own cursor, so a slow one never delays the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re

import redis
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from pynomaly.api import API_KEY_HEADER
from pynomaly.api.deps import ApiKeysDep, AsyncRedisDep
from pynomaly.config import MIN_STREAM_MAXLEN
from pynomaly.observability import metrics
from pynomaly.topology import S_DASHBOARD, S_HEALTH

log = logging.getLogger(__name__)
router = APIRouter()
STREAM_ID = re.compile(r"^(\$|0|\d+-\d+|\d+)$")
AUTH_TIMEOUT = 10.0
BLOCK_MS = 1000
READ_COUNT = 200
POLICY_VIOLATION = 1008


def _entry(stream: str, entry_id: str, fields: dict[str, str]) -> dict[str, object]:
    # ``id`` is the stream entry id, the resume point; a bridged envelope's own id becomes ``event_id``.
    message: dict[str, object] = {"stream": stream, **fields, "id": entry_id}
    if "id" in fields:
        message["event_id"] = fields["id"]
    if "data" in fields:
        with contextlib.suppress(json.JSONDecodeError):
            message["data"] = json.loads(fields["data"])
    return message


def _id_key(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


async def _gap(client: redis.asyncio.Redis, stream: str, cursor: str) -> dict[str, object] | None:
    """A ``gap`` message when entries after ``cursor`` were trimmed before this client read them.

    Trimming removes from the head, so entries after ``cursor`` are gone iff the oldest retained
    entry is newer than ``cursor``.  (When the trimmed part ended exactly at ``cursor`` nothing was
    missed and the message is a harmless extra resync.)"""
    if cursor in ("0", "0-0"):  # "everything retained" was asked for: nothing can be missing
        return None
    oldest = await client.xrange(stream, count=1)
    if not oldest or _id_key(str(oldest[0][0])) <= _id_key(cursor):
        return None
    metrics.WEBSOCKET_GAPS.inc()
    return {"type": "gap", "stream": stream, "after": cursor, "before": str(oldest[0][0])}


async def _tail_id(client: redis.asyncio.Redis, stream: str) -> str:
    """The id of the newest entry ever added to ``stream`` ("0-0" when it does not exist yet)."""
    try:
        info = await client.xinfo_stream(stream)
    except redis.ResponseError:
        return "0-0"
    return str(info["last-generated-id"])


@router.websocket("/v1/stream")
async def stream(websocket: WebSocket, keys: ApiKeysDep, client: AsyncRedisDep) -> None:
    await websocket.accept()
    key = websocket.headers.get(API_KEY_HEADER)
    last_id = websocket.query_params.get("last_id", "$")
    if not key:
        try:
            hello = json.loads(await asyncio.wait_for(websocket.receive_text(), AUTH_TIMEOUT))
            key = hello.get("api_key") if isinstance(hello, dict) else None
            last_id = str(hello.get("last_id") or last_id) if isinstance(hello, dict) else last_id
        except (TimeoutError, json.JSONDecodeError, WebSocketDisconnect):
            key = None
    if keys.identify(key) is None:
        await websocket.send_json({"type": "error", "status": 401, "detail": "a valid API key is required"})
        await websocket.close(code=POLICY_VIOLATION)
        return
    if not STREAM_ID.match(last_id):
        await websocket.send_json(
            {"type": "error", "status": 422, "detail": "last_id must be a stream id like 1700000000000-0"}
        )
        await websocket.close(code=POLICY_VIOLATION)
        return

    # The health stream is live only: a reconnecting dashboard wants jobs it missed, not old beats.
    # "$" is pinned to the stream's current last id once: passed to every XREAD it would skip any
    # entry added while the previous batch was being sent.
    cursors = {
        S_DASHBOARD: await _tail_id(client, S_DASHBOARD) if last_id == "$" else last_id,
        S_HEALTH: await _tail_id(client, S_HEALTH),
    }
    metrics.WEBSOCKET_CLIENTS.inc()
    await websocket.send_json({"type": "hello", "streams": list(cursors), "resume_from": last_id})

    async def pump() -> None:
        while True:
            batches = await client.xread(cursors, count=READ_COUNT, block=BLOCK_MS)
            for stream_name, entries in batches or []:
                # A trimmed gap leaves >= MIN_STREAM_MAXLEN entries after the cursor, so a short batch
                # (the usual live case) needs no extra round trip to rule one out.
                behind = len(entries) >= min(READ_COUNT, MIN_STREAM_MAXLEN)
                if (
                    stream_name == S_DASHBOARD
                    and behind
                    and (gap := await _gap(client, stream_name, cursors[stream_name]))
                ):
                    await websocket.send_json(gap)
                for entry_id, fields in entries:
                    cursors[stream_name] = entry_id
                    await websocket.send_json(_entry(stream_name, entry_id, fields))

    async def until_disconnect() -> None:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    tasks = {asyncio.create_task(pump()), asyncio.create_task(until_disconnect())}
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in done:
            exc = task.exception()
            if isinstance(exc, redis.RedisError):
                log.warning("websocket stream stopped: %s", exc)
                await websocket.close(code=1011)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        for task in tasks:
            task.cancel()
        metrics.WEBSOCKET_CLIENTS.dec()
