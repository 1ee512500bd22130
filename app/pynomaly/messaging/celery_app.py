"""The Celery application on Redis, configured from the topology and settings.

The API only sends tasks by name through it; workers import ``pynomaly.workers.tasks`` to
register the task bodies on the same app.
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from pynomaly.config import Settings
from pynomaly.messaging.beat import beat_config
from pynomaly.observability.tracing import install_celery_tracing
from pynomaly.topology import DEFAULT_PRIORITY, PRIORITY_SEPARATOR, PRIORITY_STEPS, Q_DEFAULT, TOPOLOGY


def celery_config(settings: Settings) -> dict[str, object]:
    # With acks_late, Redis hands an unacked task to another worker after visibility_timeout:
    # it must outlast the hard time limit, and be the same for broker and result backend.
    transport = {
        "visibility_timeout": settings.visibility_timeout,
        "priority_steps": sorted(PRIORITY_STEPS.values()),
        "sep": PRIORITY_SEPARATOR,
        "queue_order_strategy": "priority",
    }
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"visibility_timeout": settings.visibility_timeout},
        "broker_connection_retry_on_startup": True,
        # A worker outlives a Redis outage of any length (Celery's default gives up after 100 tries
        # and exits); it reconnects and consumes again by itself.
        "broker_connection_max_retries": None,
        # rediss://: the certificate check for broker and backend alike (the backend refuses the URL
        # without one); None keeps kombu's plain TCP for redis://.
        "broker_use_ssl": settings.redis_ssl_options() or None,
        "redis_backend_use_ssl": settings.redis_ssl_options() or None,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        "task_track_started": True,
        "task_time_limit": settings.task_time_limit,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "worker_prefetch_multiplier": 1,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_compression": "gzip",
        "result_compression": "gzip",
        "result_expires": settings.result_ttl_seconds,
        "task_queues": [Queue(q.name, Exchange(q.name, type="direct"), routing_key=q.name) for q in TOPOLOGY.queues],
        "task_default_queue": Q_DEFAULT,
        "task_default_priority": DEFAULT_PRIORITY.step,
        "task_routes": TOPOLOGY.task_routes(),
        # task-sent events cost a publish per send; Flower and `celery events` still get every
        # worker-side event (received, started, succeeded, failed, retried).
        "task_send_sent_event": False,
        "worker_send_task_events": True,
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Beat on RedBeat (one beat at a time, by lock) with the maintenance entries.
        **beat_config(settings),
    }


def create_celery(settings: Settings) -> Celery:
    settings.require("redis_url")
    app = Celery("pynomaly")
    app.conf.update(celery_config(settings))
    install_celery_tracing()  # every process that sends or runs tasks carries the trace context
    return app
