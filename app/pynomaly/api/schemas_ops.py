"""The response of ``GET /v1/ops/metrics`` (the dashboard's operations view samples it)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class QueueDepth(BaseModel):
    queue: str
    priority: str = Field(description="critical, high, normal or low: the Redis list <queue>, <queue>:3, :6, :9.")
    depth: int = Field(description="Messages waiting in that list (reserved and running tasks are not counted).")


class DlqSize(BaseModel):
    size: int = Field(description="Entries in the dead-letter queue.")


class StreamLength(BaseModel):
    stream: str
    length: int


class OutboxState(BaseModel):
    pending: int = Field(description="Events not yet acknowledged by Kafka (as /readyz reports).")
    oldest_seconds: float = Field(description="Age of the oldest of them; 0 when the outbox is empty.")


class TaskDuration(BaseModel):
    count: int | float = Field(description="Runs timed since each worker process started.")
    sum: float = Field(description="Their total run time in seconds.")
    bounds: list[float] = Field(description="Upper bounds (seconds) of the histogram buckets (+Inf is `count`).")
    cumulative: list[int | float] = Field(description="Runs at most each bound long, cumulative like Prometheus.")


class TaskFigures(BaseModel):
    pool: str = Field(description="The worker pool (the worker's node name) that ran the task.")
    task: str
    runs: dict[str, int | float] = Field(description="Runs by outcome: succeeded, failed, dead_lettered, …")
    retries: int | float
    dead_lettered: int | float
    duration: TaskDuration


class ConsumerLag(BaseModel):
    group: str
    topic: str
    partition: int
    lag: int | float = Field(description="Messages behind the log end, as the consumer last measured it.")
    reported_by: str = Field(description="The consumer process (component@host:pid) that reported it.")
    age_seconds: float = Field(description="Age of that report.")
    stale: bool = Field(description="Older than the heartbeat stale threshold: the consumer may have stopped.")


class ConsumedCount(BaseModel):
    group: str
    topic: str
    outcome: str = Field(description="ok or dead_lettered.")
    count: int | float


class Reporter(BaseModel):
    component: str
    instance: str = Field(description="component@host:pid")
    age_seconds: float
    stale: bool


class OpsMetrics(BaseModel):
    """Current figures from the sources /metrics uses; counters are totals, the reader computes rates."""

    at: float = Field(description="Server time of the reading (Unix seconds): the x of a rate's difference.")
    report_interval_seconds: float = Field(description="How often workers and consumers refresh their figures.")
    stale_after_seconds: float = Field(description="A report older than this is marked stale.")
    queues: list[QueueDepth]
    dlq: DlqSize
    streams: list[StreamLength]
    outbox: OutboxState
    tasks: list[TaskFigures]
    consumer_lag: list[ConsumerLag]
    consumed: list[ConsumedCount]
    reporters: list[Reporter] = Field(description="Every worker and consumer process whose figures are summed.")
