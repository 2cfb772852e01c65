"""Plain helpers shared by the tests: polling for a condition, API clients, jobs in a given
state (made through the services), and checks of problem-details answers. Fixtures are in
`conftest.py`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tasks_app.models import Job, JobStatus
from tasks_app.services import control, execution, submission
from tasks_app.stack import Child, Stack

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


def with_longrun(settings, **changes) -> None:
    """Override entries of settings.LONGRUN on a copy (pytest-django's `settings` fixture
    restores the original)."""
    settings.LONGRUN = {**settings.LONGRUN, **changes}


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


# --- jobs -----------------------------------------------------------------------------------


def make_job(owner, type="sleep", params=None, **kwargs) -> Job:
    """A job submitted through the services; without `params`, a sleep job sleeps 1 s, other
    types get {}."""
    if params is None:
        params = {"seconds": 1} if type == "sleep" else {}
    return submission.job_create(owner=owner, type=type, params=params, **kwargs)


def running_job(owner, **kwargs) -> Job:
    job = make_job(owner, **kwargs)
    claimed = execution.job_claim(job_id=job.pk, worker="w1")
    assert claimed is not None and claimed.status == JobStatus.RUNNING
    return claimed


def failed_job(owner, traceback: str = "", **kwargs) -> Job:
    job = running_job(owner, **kwargs)
    failed = execution.job_fail(
        job_id=job.pk, worker="w1", error={"type": "DemoError", "message": "boom"}, traceback=traceback
    )
    assert failed is not None and failed.status == JobStatus.FAILED
    return failed


def succeeded_job(owner, result=None, **kwargs) -> Job:
    job = running_job(owner, **kwargs)
    done = execution.job_succeed(
        job_id=job.pk, worker="w1", result={"slept": 1} if result is None else result
    )
    assert done is not None and done.status == JobStatus.SUCCEEDED
    return done


def cancelled_job(owner, **kwargs) -> Job:
    job = control.job_cancel(job_id=make_job(owner, **kwargs).pk, actor=owner)
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
