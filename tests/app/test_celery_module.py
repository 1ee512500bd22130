"""``celery -A pynomaly`` (the importable app of pynomaly/celery.py) and Flower's credential checks.

``purge`` runs against real Redis in a database of its own: every priority list of every topology
queue must be emptied, which needs the workers' transport options (``sep``), not kombu's defaults.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest
from click.testing import CliRunner

from pynomaly.cli import main
from pynomaly.config import Settings, SettingsError
from pynomaly.localstack.system import child_env
from pynomaly.messaging.celery_app import create_celery
from pynomaly.observability.flower import basic_auth_entries
from pynomaly.storage.redis_client import redis_from_settings
from pynomaly.topology import PRIORITY_STEPS, TOPOLOGY
from tests.e2e.support import own_redis_db, queue_lengths

CELERY_CLI_DB = 15

GOOD_PASSWORD = "s3cret-enough-1"


def test_basic_auth_entries_accepts_user_password_pairs() -> None:
    assert basic_auth_entries(f"admin:{GOOD_PASSWORD}, ops:{GOOD_PASSWORD}:with:colons") == [
        f"admin:{GOOD_PASSWORD}",
        f"ops:{GOOD_PASSWORD}:with:colons",
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "is empty: Flower never runs without authentication"),
        (" , ", "is empty"),
        ("admin", "entry 1 of 1 is not user:password"),
        (f":{GOOD_PASSWORD}", "entry 1 of 1 is not user:password"),
        ("admin:", "entry 1 of 1 is not user:password"),
        (f"admin:{GOOD_PASSWORD},", "entry 2 of 2 is not user:password"),
        ("admin:short-pass1", "entry 1 of 1: the password is shorter than 12 characters"),
        (f"ad min:{GOOD_PASSWORD}", "the user name has whitespace or control characters"),
        (f"admin:{GOOD_PASSWORD}\x07", "the password has control characters"),
    ],
)
def test_basic_auth_entries_refuses_with_a_clear_message(value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)) as caught:
        basic_auth_entries(value)
    assert str(caught.value).startswith("PYNOMALY_FLOWER_BASIC_AUTH")
    assert GOOD_PASSWORD not in str(caught.value) and "short-pass1" not in str(caught.value)


def test_pynomaly_flower_refuses_to_start_without_credentials() -> None:
    env = {"PYNOMALY_REDIS_URL": "redis://127.0.0.1:1/0", "PYNOMALY_FLOWER_BASIC_AUTH": ""}
    from pynomaly.config import load_settings

    load_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["flower", "--port", "1"], env=env)
    finally:
        load_settings.cache_clear()
    # Refused before anything binds (port 1 would need root) or connects (nothing listens on port 1).
    assert result.exit_code == 1, result.output
    assert "PYNOMALY_FLOWER_BASIC_AUTH is empty: Flower never runs without authentication" in result.output


def test_the_celery_module_needs_the_redis_url() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "pynomaly", "inspect", "ping"],
        env={k: v for k, v in child_env(Settings()).items() if k != "PYNOMALY_REDIS_URL"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "missing setting(s): PYNOMALY_REDIS_URL" in done.stderr


@pytest.mark.services
def test_celery_purge_empties_every_priority_list_of_every_queue(settings: Settings, redis_server: Any) -> None:
    with own_redis_db(settings, redis_server, CELERY_CLI_DB) as value:
        app = create_celery(value)
        sent = 0
        for queue in TOPOLOGY.queues:
            for step in PRIORITY_STEPS.values():
                # Never consumed: no worker runs on this database.
                app.send_task("pynomaly.not_a_task", queue=queue.name, priority=step)
                sent += 1
        client = redis_from_settings(value)
        before = queue_lengths(client)
        assert sum(before.values()) == sent
        assert all(before[lst] == 1 for q in TOPOLOGY.queues for lst in q.redis_lists()), before
        done = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "pynomaly", "purge", "--force"],
            env=child_env(value),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert f"Purged {sent} messages from {len(TOPOLOGY.queues)} known task queues." in done.stdout
        assert sum(queue_lengths(client).values()) == 0
        client.close()
