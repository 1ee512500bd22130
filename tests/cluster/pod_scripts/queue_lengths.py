"""Run inside an app pod (stdin to python3): the length of every Redis list that holds a queue's
waiting Celery messages (each priority step has its own list), through the app's own Redis URL.

Prints one JSON line: {list name: length}."""

import json

import redis

from pynomaly.config import load_settings
from pynomaly.topology import TOPOLOGY

client = redis.Redis.from_url(load_settings().redis_url, socket_timeout=10)
print(json.dumps({name: client.llen(name) for queue in TOPOLOGY.queues for name in queue.redis_lists()}))
