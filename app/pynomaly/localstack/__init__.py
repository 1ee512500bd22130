"""The local system: real Redis and a real Kafka broker plus the application's processes, on this machine.

Importing this package is cheap on purpose (the CLI imports :mod:`pynomaly.localstack.cli` at start);
the heavy modules are imported where they are used.
"""

from __future__ import annotations

from pynomaly.localstack.errors import LocalStackError

__all__ = ["LocalStackError"]
