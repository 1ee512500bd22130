"""The onprem stack on real pods (the on-prem live tier): its topology unchanged, its resources trimmed
through stack config so three Kafka brokers, three Redis + Sentinel pods and the app fit 2 cores."""

from __future__ import annotations

from tools.cluster.manifests import STORAGE_CLASS

# Requests small enough for one 2-core node; limits and heaps that still let every process start.
LIVE_OVERRIDES: dict[str, str] = {
    "pynomaly:storageClass": STORAGE_CLASS,
    "pynomaly:kafka.storage": "1Gi",
    "pynomaly:kafka.heap": "320m",
    "pynomaly:kafka.resources.cpu": "50m",
    "pynomaly:kafka.resources.memory": "640Mi",
    "pynomaly:kafka.resources.memoryLimit": "768Mi",
    "pynomaly:redis.storage": "1Gi",
    "pynomaly:redis.maxmemory": "128mb",
    "pynomaly:redis.resources.cpu": "20m",
    "pynomaly:redis.resources.memory": "160Mi",
    "pynomaly:redis.resources.memoryLimit": "256Mi",
    "pynomaly:app.resources.api.cpu": "20m",
    "pynomaly:app.resources.worker.cpu": "20m",
    "pynomaly:app.resources.consumer.cpu": "20m",
}
