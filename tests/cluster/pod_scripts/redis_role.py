"""Run inside an app pod (stdin to python3): the Redis server the app's own URL reaches (through HAProxy).

Prints one JSON line: its role, run id and connected replicas."""

import json

import redis

from pynomaly.config import load_settings

client = redis.Redis.from_url(load_settings().redis_url, socket_timeout=10)
replication = client.info("replication")
print(
    json.dumps(
        {
            "role": replication["role"],
            "run_id": client.info("server")["run_id"],
            "replicas": replication.get("connected_slaves", 0),
        }
    )
)
