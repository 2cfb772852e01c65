"""Shared fixtures: users and API clients, the faked broker and live channel, and real
processes (Celery workers, Daphne, Redis) for the integration tests. Those run against the test
database, so they use `@pytest.mark.django_db(transaction=True)` and see what the workers commit.

Plain helpers (jobs in a given state, problem-details checks, `wait_for`) are in `helpers.py`."""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from unittest import mock
from urllib.parse import urlparse, urlunparse

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from tasks_app import registry
from tasks_app.services import dispatch
from tasks_app.stack import JOB_QUEUE, MAINTENANCE_QUEUE, WEBHOOK_QUEUE, free_port

from .browser import launched_chromium
from .helpers import ProcessStack, token_client


@pytest.fixture(autouse=True)
def fast_password_hashing(request):
    """The users of this file have passwords; the default hasher costs ~0.1 s per user, MD5 next
    to nothing. Not for tests marked `integration`: a server they start in another process keeps
    the production hashers and could not check an MD5 password (test_browser.py logs in)."""
    if request.node.get_closest_marker("integration") is None:
        test_settings = request.getfixturevalue("settings")
        test_settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def broker():
    """No broker and no Redis. The two seams every change leaves the process by are faked here,
    and only here: the Celery publish (`services.dispatch.run_job.apply_async`, what a job's
    dispatch sends) and the live-update publishes (`realtime.publish.publish_job_message(s)`,
    `publish_schedule_message`).

    Not autouse: modules that want it for every test say `pytest.mark.usefixtures("broker")`."""
    with (
        mock.patch.object(dispatch.run_job, "apply_async") as apply_async,
        mock.patch("tasks_app.realtime.publish.publish_job_message", autospec=True) as publish,
        mock.patch("tasks_app.realtime.publish.publish_job_messages", autospec=True) as publish_many,
        mock.patch("tasks_app.realtime.publish.publish_schedule_message", autospec=True) as publish_schedule,
    ):
        yield mock.Mock(
            apply_async=apply_async,
            publish=publish,
            publish_many=publish_many,
            publish_schedule=publish_schedule,
        )


@pytest.fixture
def published(broker):
    """What would go to the live channels: `publish_job_message(owner_id, message)` calls."""
    return broker.publish


@pytest.fixture
def apply_async(broker):
    """What would go to the Celery broker: `run_job.apply_async(args=[job id], ...)` calls."""
    return broker.apply_async


@pytest.fixture
def commit(django_capture_on_commit_callbacks):
    """Run the block as if it committed: on-commit callbacks run when the block exits."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


@pytest.fixture
def fresh_registry():
    """Undo every registration a test makes (added names removed, replaced ones restored)."""
    before = dict(registry._registry)
    yield registry._registry
    for name in set(registry._registry) - set(before):
        del registry._registry[name]
    registry._registry.update(before)


@pytest.fixture
def routed_job_types(fresh_registry):
    """The job types of `tests.routed_job_types` (on queue ROUTED_QUEUE), registered in this
    process for one test; workers load them through LONGRUN_JOB_MODULES."""
    module = sys.modules.get("tests.routed_job_types")
    if module is None:
        module = importlib.import_module("tests.routed_job_types")
    elif "routed_echo" not in registry._registry:
        importlib.reload(module)  # an earlier test's registration was undone
    return module


@pytest.fixture(autouse=True)
def fresh_cache():
    """Throttle counters live in the cache; no test inherits another's."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user("alice", password="alice-password-123")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user("bob", password="bob-password-123")


@pytest.fixture
def staff_user(django_user_model):
    """An operator: staff with the permissions to view and change jobs (as the admin needs)."""
    from django.contrib.auth.models import Permission

    carol = django_user_model.objects.create_user("carol", password="carol-password-123", is_staff=True)
    carol.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="tasks_app", codename__in=["view_job", "change_job"]
        )
    )
    return carol


@pytest.fixture
def viewing_staff_user(django_user_model):
    """Staff who may only view jobs (the view_job permission)."""
    from django.contrib.auth.models import Permission

    dave = django_user_model.objects.create_user("dave", password="dave-password-123", is_staff=True)
    dave.user_permissions.add(
        Permission.objects.get(content_type__app_label="tasks_app", codename="view_job")
    )
    return dave


@pytest.fixture
def api(user) -> APIClient:
    """An API client authenticated by token as `user`."""
    return token_client(user)


@pytest.fixture
def other_api(other_user) -> APIClient:
    return token_client(other_user)


@pytest.fixture
def staff_api(staff_user) -> APIClient:
    return token_client(staff_user)


# --- real processes -------------------------------------------------------------------------


def _test_database_url() -> str:
    from django.db import connection

    name = connection.settings_dict["NAME"]
    if connection.vendor == "sqlite":
        return f"sqlite:///{name}"
    parts = urlparse(settings.DATABASE_URL)
    return urlunparse(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def process_env(django_db_setup, django_db_blocker) -> dict[str, str]:
    """The environment for child processes: the test database and this session's Redis."""
    with django_db_blocker.unblock():
        url = _test_database_url()
    return {
        **os.environ,
        "DATABASE_URL": url,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "PYTHONUNBUFFERED": "1",
        "CELERY_WORKER_CONCURRENCY": "2",
    }


@pytest.fixture(scope="session")
def purge_queues(process_env) -> None:
    """Drop messages a previous run may have left in the job queues of a shared Redis."""
    from project.celery import app

    with app.connection_for_write() as conn:
        for queue in (JOB_QUEUE, MAINTENANCE_QUEUE, WEBHOOK_QUEUE, "test.routed"):
            channel = conn.channel()  # a channel of its own: RabbitMQ closes one on a missing queue
            try:
                channel.queue_purge(queue)
            except Exception:  # a queue that never existed
                pass
            finally:
                with contextlib.suppress(Exception):
                    channel.close()


def broker_is_rabbitmq() -> bool:
    return os.environ.get("CELERY_BROKER_URL", "").startswith("amqp")


@pytest.fixture
def own_broker(stack, tmp_path) -> Iterator[str]:
    """A broker that no other worker of the test session reads, for the processes of `stack`:
    a Redis of the test's own (broker and channel layer), or, when this run's broker is
    RabbitMQ, a virtual host of its own on it (made with rabbitmqctl, removed afterwards)."""
    if not broker_is_rabbitmq():
        port = free_port()
        stack.start_redis(port, tmp_path / "own-redis", persistent=False)
        stack.env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        yield stack.env["REDIS_URL"]
        return
    url = urlparse(os.environ["CELERY_BROKER_URL"])
    vhost = f"longrun-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, url.username or "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    stack.env["CELERY_BROKER_URL"] = urlunparse(url._replace(path=f"/{vhost}"))
    yield stack.env["CELERY_BROKER_URL"]
    stack.kill_all()
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], check=False, capture_output=True)


@pytest.fixture
def stack(process_env, purge_queues, tmp_path: Path) -> Iterator[ProcessStack]:
    """Start real processes for one test; all of them are stopped afterwards."""
    processes = ProcessStack(env=dict(process_env), cwd=Path(settings.BASE_DIR), log_dir=tmp_path / "logs")
    yield processes
    processes.kill_all()


@pytest.fixture(scope="session")
def shared_worker(process_env, purge_queues, tmp_path_factory) -> Iterator[ProcessStack]:
    """One job worker for the whole session, for tests that only need jobs to run."""
    processes = ProcessStack(
        env=dict(process_env), cwd=Path(settings.BASE_DIR), log_dir=tmp_path_factory.mktemp("shared-worker")
    )
    processes.start_ready_worker("shared", queues=[JOB_QUEUE], concurrency=2)
    yield processes
    processes.kill_all()


@pytest.fixture
def free_tcp_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def chromium():
    """Headless Chromium, once per test module (tests/browser.py)."""
    with launched_chromium() as browser:
        yield browser
