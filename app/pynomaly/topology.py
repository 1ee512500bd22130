"""The messaging topology, declared once.

Every queue, priority, Kafka topic, Redis stream, consumer group and worker pool name lives here.
The app declares Celery queues and creates topics from it, the infra program sizes partitions and
autoscaling triggers from it, the chart receives its names through values, and tests assert that
all of them agree.  Nobody writes one of these names as a literal anywhere else.

Seed values: ADR-016 (Pynomaly's hybrid message-queue architecture).  Where the ADR's sketch
disagrees with itself (task names, queue keys) this module is the settled answer.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class Priority(enum.Enum):
    """Job priority as users name it, mapped to Celery's Redis priority step.

    Celery's Redis transport serves *lower* numbers first and stores each step in its own list:
    step 0 in the plain queue list, step N in ``<queue><sep><N>``.
    """

    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def step(self) -> int:
        return PRIORITY_STEPS[self]


PRIORITY_STEPS: dict[Priority, int] = {
    Priority.CRITICAL: 0,
    Priority.HIGH: 3,
    Priority.NORMAL: 6,
    Priority.LOW: 9,
}
DEFAULT_PRIORITY = Priority.NORMAL
# Separator Kombu puts between a queue name and its priority step; ':' keeps the Redis list names
# readable (``anomaly_detection:9``) for operators and for KEDA's list-length triggers.
PRIORITY_SEPARATOR = ":"


@dataclass(frozen=True)
class Queue:
    name: str
    description: str

    def redis_lists(self) -> list[str]:
        """The Redis lists that together hold this queue's waiting messages, highest priority first."""
        lists = []
        for step in sorted(PRIORITY_STEPS.values()):
            lists.append(self.name if step == 0 else f"{self.name}{PRIORITY_SEPARATOR}{step}")
        return lists


@dataclass(frozen=True)
class Topic:
    name: str
    partitions: int
    description: str
    retention_ms: int = 7 * 24 * 3600 * 1000
    # Replication wanted in production; the deployment caps it at the number of brokers.
    replication_factor: int = 3
    min_insync_replicas: int = 2

    @property
    def dead_letter(self) -> str:
        return f"{self.name}.dlq"


@dataclass(frozen=True)
class Stream:
    name: str
    description: str
    maxlen: int = 1000


@dataclass(frozen=True)
class ConsumerGroup:
    """A Kafka consumer group, run as one Deployment (a consumer pool) in Kubernetes."""

    name: str
    pool: str
    topics: tuple[str, ...]
    description: str
    # Records handed over per poll: the scorer scores a poll in one vectorised call, so bigger polls
    # amortise its per-poll costs (commit, generation check, outbox script) over more records.
    max_poll_records: int = 200


@dataclass(frozen=True)
class StreamGroup:
    """A Redis Streams consumer group."""

    name: str
    stream: str
    description: str


@dataclass(frozen=True)
class WorkerPool:
    """A set of Celery workers that consume the same queues; one Deployment per pool."""

    name: str
    queues: tuple[str, ...]
    concurrency: int
    description: str
    # Batch pools may scale to zero when their queues are empty.
    batch: bool = False


@dataclass(frozen=True)
class Task:
    name: str
    queue: str
    description: str


@dataclass(frozen=True)
class Topology:
    queues: tuple[Queue, ...]
    topics: tuple[Topic, ...]
    streams: tuple[Stream, ...]
    consumer_groups: tuple[ConsumerGroup, ...]
    stream_groups: tuple[StreamGroup, ...]
    worker_pools: tuple[WorkerPool, ...]
    tasks: tuple[Task, ...]
    # Which topic each event type is published to (the key is always the job id, or the
    # subject for events without a job, so one job's events stay ordered in one partition).
    event_topics: dict[str, str] = field(default_factory=dict)

    # -- lookups ------------------------------------------------------------------------------
    def queue(self, name: str) -> Queue:
        return _find(self.queues, name, "queue")

    def topic(self, name: str) -> Topic:
        return _find(self.topics, name, "topic")

    def stream(self, name: str) -> Stream:
        return _find(self.streams, name, "stream")

    def task(self, name: str) -> Task:
        return _find(self.tasks, name, "task")

    def worker_pool(self, name: str) -> WorkerPool:
        return _find(self.worker_pools, name, "worker pool")

    def consumer_group(self, name: str) -> ConsumerGroup:
        return _find(self.consumer_groups, name, "consumer group")

    def topic_for_event(self, event_type: str) -> str:
        try:
            return self.event_topics[event_type]
        except KeyError:
            raise KeyError(f"unknown event type {event_type!r}; known: {sorted(self.event_topics)}") from None

    def task_routes(self) -> dict[str, dict[str, str]]:
        return {task.name: {"queue": task.queue} for task in self.tasks}

    def max_partitions(self, group: ConsumerGroup) -> int:
        """The most consumers of a group that can do useful work (KEDA caps replicas here too)."""
        return max(self.topic(t).partitions for t in group.topics)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the infra program, the chart values and `pynomaly topology`."""
        data = asdict(self)
        data["priorities"] = {p.value: step for p, step in PRIORITY_STEPS.items()}
        data["priority_separator"] = PRIORITY_SEPARATOR
        for queue, raw in zip(self.queues, data["queues"], strict=True):
            raw["redis_lists"] = queue.redis_lists()
        return data


def _find(items: tuple[Any, ...], name: str, kind: str) -> Any:
    for item in items:
        if item.name == name:
            return item
    raise KeyError(f"unknown {kind} {name!r}; known: {[i.name for i in items]}")


# -- the seed topology (ADR-016) ----------------------------------------------------------------

Q_DETECTION = "anomaly_detection"
Q_PROCESSING = "data_processing"
Q_REPORTS = "reports"
Q_NOTIFICATIONS = "notifications"
Q_DEFAULT = "default"

T_ANOMALY = "anomaly_events"
T_JOB = "job_events"
T_SYSTEM = "system_events"
T_AUDIT = "audit_events"
# Live scoring's input: records of entities (sensors, hosts...), keyed by entity id.
T_MEASUREMENTS = "measurements"

S_DASHBOARD = "dashboard:stream"
S_NOTIFICATIONS = "notifications:stream"
S_HEALTH = "health:stream"

TASK_PREPROCESS = "pynomaly.preprocess_data"
TASK_DETECT = "pynomaly.detect_anomalies"
TASK_REPORT = "pynomaly.generate_report"
TASK_NOTIFY = "pynomaly.send_notification"
TASK_DELIVER = "pynomaly.deliver_notification"
TASK_DELIVER_ANOMALY = "pynomaly.deliver_anomaly_notification"
TASK_MAINTENANCE = "pynomaly.maintenance"
TASK_SCHEDULED_RUN = "pynomaly.scheduled_run"
TASK_HEALTH_CHECK = "pynomaly.health_check"

GROUP_BRIDGE = "pynomaly-bridge"
GROUP_AUDIT = "pynomaly-audit"
GROUP_SCORER = "pynomaly-scorer"

# Event types.  Names follow the issue tracker's vocabulary (`job_completed`), grouped by topic.
JOB_EVENTS = (
    "job_submitted",
    "job_started",
    "job_progress",
    "job_step_completed",
    "job_completed",
    "job_failed",
    "job_retrying",
    "job_cancelled",
    "job_dead_lettered",
)
# anomalies_detected: a job's findings; anomaly_detected: one live record over its model's threshold.
ANOMALY_EVENTS = ("anomalies_detected", "anomaly_detected")
SYSTEM_EVENTS = (
    "component_heartbeat",
    "component_started",
    "component_stopped",
    "health_summary",
    "system_alert",
    # Model changes: a scorer drops its cached copy of the model on these (pynomaly.storage.models).
    "model_saved",
    "model_promoted",
    "model_deleted",
    # Stream bindings (topic -> model) changed: scorers reload their bindings.
    "stream_bound",
    "stream_unbound",
)
AUDIT_EVENTS = ("audit_record",)

TOPOLOGY = Topology(
    queues=(
        Queue(Q_DETECTION, "PyOD detection jobs"),
        Queue(Q_PROCESSING, "Dataset validation, imputation and scaling"),
        Queue(Q_REPORTS, "JSON, CSV and HTML reports"),
        Queue(Q_NOTIFICATIONS, "Webhook and e-mail notifications"),
        Queue(Q_DEFAULT, "Maintenance and everything unrouted"),
    ),
    topics=(
        Topic(T_ANOMALY, 3, "Anomalies found by detection jobs"),
        Topic(T_JOB, 2, "Job lifecycle: submitted, started, progress, completed, failed"),
        Topic(T_SYSTEM, 1, "Component heartbeats and health summaries"),
        Topic(T_AUDIT, 5, "Who did what through the API", retention_ms=30 * 24 * 3600 * 1000),
        Topic(T_MEASUREMENTS, 6, "Records to score live, keyed by entity id", retention_ms=24 * 3600 * 1000),
    ),
    streams=(
        Stream(S_DASHBOARD, "Live job and anomaly updates for the browser dashboard"),
        Stream(S_NOTIFICATIONS, "Notifications to deliver and delivered"),
        Stream(S_HEALTH, "Heartbeats of every component"),
    ),
    consumer_groups=(
        ConsumerGroup(
            GROUP_BRIDGE,
            "bridge",
            (T_JOB, T_ANOMALY, T_SYSTEM),
            "Kafka -> Redis Streams bridge feeding the dashboard and notifications",
        ),
        ConsumerGroup(GROUP_AUDIT, "audit", (T_AUDIT,), "Audit sink keeping every audit event queryable"),
        ConsumerGroup(
            GROUP_SCORER,
            "scorer",
            (T_MEASUREMENTS,),
            "Live scoring: each record scored with its bound model; anomalies to anomaly_events",
            max_poll_records=1000,
        ),
    ),
    stream_groups=(
        StreamGroup("notifiers", S_NOTIFICATIONS, "Delivers notification entries"),
        StreamGroup("health-monitor", S_HEALTH, "Watches component heartbeats"),
    ),
    worker_pools=(
        WorkerPool("detection", (Q_DETECTION,), 2, "PyOD detection"),
        WorkerPool("processing", (Q_PROCESSING,), 2, "Preprocessing", batch=True),
        WorkerPool("reporting", (Q_REPORTS, Q_NOTIFICATIONS), 2, "Reports and notifications", batch=True),
        WorkerPool("default", (Q_DEFAULT,), 1, "Maintenance and unrouted tasks"),
    ),
    tasks=(
        Task(TASK_PREPROCESS, Q_PROCESSING, "Validate, impute or reject NaN/inf, scale"),
        Task(TASK_DETECT, Q_DETECTION, "Run a PyOD detector"),
        Task(TASK_REPORT, Q_REPORTS, "Render JSON, CSV and HTML reports"),
        Task(TASK_NOTIFY, Q_NOTIFICATIONS, "The notify step: one delivery task per matching notification target"),
        Task(TASK_DELIVER, Q_NOTIFICATIONS, "Deliver one notification (webhook or e-mail), own retries and DLQ entry"),
        Task(
            TASK_DELIVER_ANOMALY,
            Q_NOTIFICATIONS,
            "Deliver one live anomaly of a stream binding to one target (rate limited per entity by the scorer)",
        ),
        Task(TASK_MAINTENANCE, Q_DEFAULT, "Expire results and datasets by retention, trim streams"),
        Task(TASK_SCHEDULED_RUN, Q_DEFAULT, "Start one run of a recurring detection schedule (an ordinary job)"),
        Task(TASK_HEALTH_CHECK, Q_DEFAULT, "Alert on DLQ growth and stopped heartbeats; publish the health summary"),
    ),
    event_topics={
        **{e: T_JOB for e in JOB_EVENTS},
        **{e: T_ANOMALY for e in ANOMALY_EVENTS},
        **{e: T_SYSTEM for e in SYSTEM_EVENTS},
        **{e: T_AUDIT for e in AUDIT_EVENTS},
    },
)
