"""ADR-016's MessageQueueService: the one seam between use cases and the three transports.

- ``enqueue_job``   -> Celery on Redis (the job's steps as an ordered chain, routed and prioritised)
- ``publish_event`` -> Kafka (versioned envelope, key = job id) through the Redis outbox
  (messaging/outbox.py): nothing waits for Kafka, and a Kafka outage loses no event
- ``stream_update`` -> Redis Streams (capped, for live consumers)

Use cases receive this object; they never import Celery, kafka-python or redis themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from celery import Celery, chain

from pynomaly.domain.jobs import Job, Step
from pynomaly.messaging.events import EventEnvelope, PayloadCaps, make_event
from pynomaly.messaging.streams import RedisStreams
from pynomaly.topology import TASK_DETECT, TASK_NOTIFY, TASK_PREPROCESS, TASK_REPORT, TOPOLOGY, Priority

if TYPE_CHECKING:
    from pynomaly.messaging.outbox import Outbox

log = logging.getLogger(__name__)

STEP_TASKS: dict[Step, str] = {
    Step.PREPROCESS: TASK_PREPROCESS,
    Step.DETECT: TASK_DETECT,
    Step.REPORT: TASK_REPORT,
    Step.NOTIFY: TASK_NOTIFY,
}


class EventPublisher(Protocol):
    def publish(self, event: EventEnvelope, wait: bool = True) -> None: ...

    def flush(self) -> None: ...

    def connected(self) -> bool: ...

    def close(self) -> None: ...


class MessageQueueService:
    def __init__(
        self,
        celery: Celery,
        publisher: EventPublisher,
        streams: RedisStreams,
        source: str,
        outbox: Outbox,
        caps: PayloadCaps | None = None,
    ) -> None:
        self._celery = celery
        self._caps = caps or PayloadCaps()  # event data is always bounded
        self._publisher = publisher
        self._streams = streams
        self.source = source
        self._outbox = outbox

    # -- Celery ----------------------------------------------------------------------------------
    def enqueue_job(self, job: Job) -> str:
        """Send the job's steps as one chain; each step goes to its own queue at the job's priority."""
        priority = Priority(job.priority).step
        signatures = []
        for step in (Step(s) for s in job.steps):
            name = STEP_TASKS[step]
            signatures.append(
                self._celery.signature(name, args=(job.id,), kwargs={"run_token": job.run_token}, immutable=True).set(
                    # Job state and results live in the job store: no send subscribes to a result
                    # channel, no worker stores a result (the message's option overrides the task's).
                    queue=TOPOLOGY.task(name).queue,
                    priority=priority,
                    ignore_result=True,
                )
            )
        result = chain(*signatures).apply_async() if len(signatures) > 1 else signatures[0].apply_async()
        return str(result.id)

    def enqueue_task(self, task: str, args: list[Any], kwargs: dict[str, Any], priority: Priority) -> str:
        """One task on its routed queue, e.g. a dead letter being replayed."""
        result = self._celery.send_task(
            task, args=args, kwargs=kwargs, queue=TOPOLOGY.task(task).queue, priority=priority.step, ignore_result=True
        )
        return str(result.id)

    # -- Kafka -----------------------------------------------------------------------------------
    def publish_event(self, event_type: str, subject: str, *, wait: bool = True, **data: Any) -> EventEnvelope:
        """Publish and, by default, wait for the broker's ack; ``wait=False`` needs a later ``flush_events``."""
        event = make_event(event_type, subject, self.source, self._caps, **data)
        self._publisher.publish(event, wait=wait)
        return event

    @property
    def outbox(self) -> Outbox:
        return self._outbox

    def new_event(self, event_type: str, subject: str, **data: Any) -> EventEnvelope:
        return make_event(event_type, subject, self.source, self._caps, **data)

    def stage_events(self, events: Sequence[EventEnvelope]) -> Callable[[Any], None]:
        """Writes that add ``events`` to the outbox inside the caller's Redis transaction (the caller
        passes its pipeline).  Raises ``OutboxFull`` before anything is written when the outbox is at
        its bound: new work is refused while Kafka is away long, accepted work never dropped."""
        outbox = self._outbox
        outbox.check_room(len(events))
        return lambda pipe: outbox.stage(pipe, events)

    def event_with(self, event_type: str, **data: Any) -> Callable[[Any, Any], None]:
        """``also`` for a job-store write: stages ``event_type`` about the written job (its status and
        progress as written, plus ``data``; a callable value is called with the job) in the same
        MULTI/EXEC, so a process killed in between loses neither.  No outbox bound: the job is accepted."""
        outbox = self._outbox

        def stage(job: Any, pipe: Any) -> None:
            values = {name: value(job) if callable(value) else value for name, value in data.items()}
            event = self.new_event(event_type, job.id, **{"status": job.status, "progress": job.progress, **values})
            outbox.stage(pipe, [event])

        return stage

    def events_with(self, events: Sequence[EventEnvelope]) -> Callable[[Any, Any], None]:
        """``also`` for a job-store write that stages ``events``, built before the write, in its
        MULTI/EXEC (no outbox bound: they are about accepted work)."""
        outbox = self._outbox
        return lambda _job, pipe: outbox.stage(pipe, events)

    def publish_events(self, events: Sequence[EventEnvelope]) -> None:
        for event in events:
            self._publisher.publish(event)

    def flush_events(self) -> None:
        self._publisher.flush()

    # -- Redis Streams ---------------------------------------------------------------------------
    def stream_update(self, stream: str, fields: dict[str, str]) -> str:
        return self._streams.add(stream, fields)

    def publisher_connected(self) -> bool:
        return self._publisher.connected()

    def close(self) -> None:
        self._publisher.close()
