"""Shared fixtures: users and API clients, and real processes (Celery workers, Daphne, Redis)
for the integration tests. Those run against the test database, so they use
`@pytest.mark.django_db(transaction=True)` and see what the workers commit."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import pytest
from django.conf import settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tasks_app.stack import JOB_QUEUE, MAINTENANCE_QUEUE, Child, Stack, free_port


def wait_for(predicate: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll until `predicate()` is truthy and return its value; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


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
    return django_user_model.objects.create_user("carol", password="carol-password-123", is_staff=True)


def token_client(user) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


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
        channel = conn.default_channel
        for queue in (JOB_QUEUE, MAINTENANCE_QUEUE):
            try:
                channel.queue_purge(queue)
            except Exception:  # a queue that never existed
                pass


class ProcessStack(Stack):
    """A Stack whose workers report readiness and whose logs are kept for failed tests."""

    def start_ready_worker(self, name: str, *, timeout: float = 60.0, **kwargs: Any) -> Child:
        child = self.start_worker(name, **kwargs)
        log = self.log_dir / f"{name}.log"
        wait_for(
            lambda: child.process.poll() is not None or (log.exists() and b" ready." in log.read_bytes()),
            timeout=timeout,
            what=f"worker {name} to be ready",
        )
        if child.process.poll() is not None:
            pytest.fail(f"worker {name} exited:\n{log.read_text()[-3000:]}")
        return child

    def log_tail(self, name: str, size: int = 4000) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-size:] if path.exists() else ""


@pytest.fixture
def stack(process_env, purge_queues, tmp_path: Path) -> Iterator[ProcessStack]:
    """Start real processes for one test; all of them are stopped afterwards."""
    processes = ProcessStack(env=dict(process_env), cwd=Path(settings.BASE_DIR), log_dir=tmp_path / "logs")
    yield processes
    processes.stop_all(timeout=10)


@pytest.fixture(scope="session")
def shared_worker(process_env, purge_queues, tmp_path_factory) -> Iterator[ProcessStack]:
    """One job worker for the whole session, for tests that only need jobs to run."""
    processes = ProcessStack(
        env=dict(process_env), cwd=Path(settings.BASE_DIR), log_dir=tmp_path_factory.mktemp("shared-worker")
    )
    processes.start_ready_worker("shared", queues=[JOB_QUEUE], concurrency=2)
    yield processes
    processes.stop_all(timeout=10)


@pytest.fixture
def free_tcp_port() -> int:
    return free_port()
