"""Pynomaly: asynchronous anomaly detection on Celery/Redis, Kafka and Redis Streams (ADR-016)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pynomaly")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
