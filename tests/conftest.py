"""Shared fixtures: users and API clients, a mocked broker, helpers that make jobs and check
problem responses, and real processes (Celery workers, Daphne, Redis) for the integration tests.
Those run against the test database, so they use `@pytest.mark.django_db(transaction=True)` and
see what the workers commit.

The helpers are plain functions; test modules import them (`from .conftest import make_job`)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlparse, urlunparse

import pytest
from django.conf import settings
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tasks_app import services
from tasks_app.models import Job, JobStatus
from tasks_app.stack import JOB_QUEUE, MAINTENANCE_QUEUE, WEBHOOK_QUEUE, Child, Stack, free_port
from tasks_app.tasks import run_job

PROBLEM = "application/problem+json"
PROBLEM_TEXT = ("type", "title", "code", "detail")


def wait_for(
    predicate: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"
) -> Any:
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
def fast_password_hashing(request):
    """The users of this file have passwords; the default hasher costs ~0.1 s per user, MD5 next
    to nothing. Not for tests marked `integration`: a server they start in another process keeps
    the production hashers and could not check an MD5 password (test_browser.py logs in)."""
    if request.node.get_closest_marker("integration") is None:
        test_settings = request.getfixturevalue("settings")
        test_settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def broker():
    """No broker and no Redis: the Celery publish (`run_job.apply_async`) and the live-update
    publishes (`events.publish_job_message`, `events.publish_job_messages`) are mocks.

    Not autouse: modules that want it for every test say `pytest.mark.usefixtures("broker")`."""
    with (
        mock.patch.object(run_job, "apply_async") as apply_async,
        mock.patch("tasks_app.events.publish_job_message") as publish,
        mock.patch("tasks_app.events.publish_job_messages") as publish_many,
    ):
        yield mock.Mock(apply_async=apply_async, publish=publish, publish_many=publish_many)


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


def session_client(user) -> Client:
    """A browser-like client logged in as `user` (session cookie)."""
    client = Client()
    client.force_login(user)
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


# --- jobs -----------------------------------------------------------------------------------


def make_job(owner, type="sleep", params=None, **kwargs) -> Job:
    """A job submitted through the services; without `params`, a sleep job sleeps 1 s, other
    types get {}."""
    if params is None:
        params = {"seconds": 1} if type == "sleep" else {}
    return services.job_create(owner=owner, type=type, params=params, **kwargs)


def running_job(owner, **kwargs) -> Job:
    job = make_job(owner, **kwargs)
    claimed = services.job_claim(job.pk, worker="w1")
    assert claimed is not None and claimed.status == JobStatus.RUNNING
    return claimed


def failed_job(owner, traceback: str = "", **kwargs) -> Job:
    job = running_job(owner, **kwargs)
    failed = services.job_fail(
        job.pk, worker="w1", error={"type": "DemoError", "message": "boom"}, traceback=traceback
    )
    assert failed is not None and failed.status == JobStatus.FAILED
    return failed


def succeeded_job(owner, result=None, **kwargs) -> Job:
    job = running_job(owner, **kwargs)
    done = services.job_succeed(job.pk, worker="w1", result={"slept": 1} if result is None else result)
    assert done is not None and done.status == JobStatus.SUCCEEDED
    return done


def cancelled_job(owner, **kwargs) -> Job:
    job = services.job_cancel(make_job(owner, **kwargs).pk, actor=owner)
    assert job.status == JobStatus.CANCELLED
    return job


# --- the API -----------------------------------------------------------------------------------


def detail_url(job_id) -> str:
    return f"/api/jobs/{job_id}/"


def post_job(client, body, key=None, **kwargs):
    """POST /api/jobs/ with `body` as JSON (bytes are sent as they are, as application/json) and
    `key`, if given, as the Idempotency-Key."""
    if key is not None:
        kwargs["HTTP_IDEMPOTENCY_KEY"] = key
    if isinstance(body, bytes):
        return client.post("/api/jobs/", data=body, content_type="application/json", **kwargs)
    return client.post("/api/jobs/", body, format="json", **kwargs)


def page_ids(response) -> list[str]:
    """The job ids on one page of GET /api/jobs/, in order."""
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()["results"]]


def assert_problem(response, status: int, code: str | None = None, *, filled: tuple[str, ...] = ()) -> dict:
    """The response is RFC 9457 problem details with `status` (and `code`); returns the body.
    `filled`: the members (of PROBLEM_TEXT) that must also be non-empty strings."""
    assert response.status_code == status, response.content[:2000]
    assert response["Content-Type"].split(";")[0].strip() == PROBLEM, response["Content-Type"]
    body = json.loads(response.content)
    assert {"type", "title", "status", "code", "detail"} <= set(body), body
    assert body["status"] == status
    for member in filled:
        assert isinstance(body[member], str) and body[member], body
    if code is not None:
        assert body["code"] == code, body
    return body


def assert_invalid(
    response,
    *fields: str,
    filled: tuple[str, ...] = (),
    error_members: bool = False,
    error_text: bool = False,
) -> list[dict]:
    """A 400 validation problem naming exactly `fields` (in any order); returns the errors.
    `error_members`: each error has exactly field, message and code; `error_text`: its message and
    code are non-empty strings."""
    body = assert_problem(response, 400, "invalid", filled=filled)
    errors = body["errors"]
    assert isinstance(errors, list) and errors, body
    for error in errors:
        if error_members:
            assert set(error) == {"field", "message", "code"}, error
        if error_text:
            assert isinstance(error["message"], str) and error["message"]
            assert isinstance(error["code"], str) and error["code"]
    assert sorted({e["field"] for e in errors}) == sorted(fields), errors
    return errors


def problem_asserts(**checks) -> tuple[Callable[..., dict], Callable[..., list[dict]]]:
    """assert_problem and assert_invalid with a module's own checks bound (`filled=...`, and for
    assert_invalid also `error_members=` and `error_text=`)."""
    problem_checks = {k: v for k, v in checks.items() if k == "filled"}
    return partial(assert_problem, **problem_checks), partial(assert_invalid, **checks)


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
        for queue in (JOB_QUEUE, MAINTENANCE_QUEUE, WEBHOOK_QUEUE):
            try:
                channel.queue_purge(queue)
            except Exception:  # a queue that never existed
                pass


class ProcessStack(Stack):
    """A Stack whose workers report readiness and whose logs are kept for failed tests."""

    def kill_all(self) -> None:
        """Tear down at the end of a test: killed, not shut down gracefully, which would only
        cost time (graceful shutdown has tests of its own)."""
        for child in reversed(list(self.children)):
            try:
                self.kill(child)
            except ProcessLookupError:
                child.process.wait()
                self.children.remove(child)

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
