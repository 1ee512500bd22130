"""One way to open Redis from settings, so every component uses the same options."""

from __future__ import annotations

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
    )
