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
    # The scorer pool has its own resources (it loads models): 250m each would not fit a second pod.
    "pynomaly:app.resources.scorer.cpu": "20m",
    # A task's hard limit sets the workers' grace period (warm shutdown) and the broker's visibility
    # timeout: an hour would make a scale-down or a redelivery too slow to watch.
    "pynomaly:app.taskTimeLimit": "90",
    "pynomaly:app.taskSoftTimeLimit": "80",
    # KEDA: poll often, scale down after 30 s (not 5 min), at most 4 detection workers on 2 cores.
    "pynomaly:autoscaling.pollingInterval": "5",
    "pynomaly:autoscaling.cooldownPeriod": "30",
    "pynomaly:autoscaling.workers.detection.max": "4",
}
