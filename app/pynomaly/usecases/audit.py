"""Audit records: who did what, published to ``audit_events`` for the audit sink.

Best effort on purpose: the action already happened and is recorded in its own store; a Kafka
outage must not undo it or fail the request, so a failed publish is logged, not raised.
"""

from __future__ import annotations

import logging
from typing import Any

from pynomaly.messaging.service import MessageQueueService

log = logging.getLogger(__name__)


def record_audit(
    messaging: MessageQueueService | None, action: str, subject: str, actor: str | None, **data: Any
) -> None:
    if messaging is None:
        return
    try:
        messaging.publish_event("audit_record", subject, action=action, actor=actor or "anonymous", **data)
    except Exception as exc:  # one line, no traceback: an outage is not a bug
        log.warning("could not publish the audit record %s for %s: %s: %s", action, subject, type(exc).__name__, exc)
