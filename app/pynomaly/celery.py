"""The Celery app for Celery's own tools: ``celery -A pynomaly inspect ping``, ``purge``, ``events``, Flower.

The components build their app in-process (``wiring.Container``, ``workers/main.py``); Celery's command
line needs one it can import, so this module builds it at import from the ``PYNOMALY_*`` variables, the
same way. A plain ``celery -b redis://… inspect`` gets no reply even on the right broker and database:
kombu's Redis transport joins the routing table entries (``_kombu.binding.*``) with the
``broker_transport_options['sep']`` our priority lists need (``:``), so a client with kombu's default
separator writes a reply binding the workers cannot read, and ``purge`` would miss the priority lists
(``<queue>:3``, ``<queue>:6``, ``<queue>:9``). This app carries the workers' exact configuration.

``celery -A pynomaly`` finds it: Celery looks for ``pynomaly.celery.app``. Workers are started with
``pynomaly worker --pool NAME`` (it registers the tasks and the heartbeat), never ``celery worker``.
"""

from __future__ import annotations

from celery import Celery

from pynomaly.config import load_settings
from pynomaly.messaging.celery_app import create_celery

# A missing or bad PYNOMALY_REDIS_URL raises SettingsError naming the variable; Celery prints it.
app: Celery = create_celery(load_settings())
