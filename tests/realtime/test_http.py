"""Long-polling (`GET /api/jobs/{id}/?wait=N`) against a real Daphne and Redis: it answers as
soon as the job changes, and waiting holds neither a thread nor a database connection."""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time

import psutil
import pytest
import requests
from django.db import connection
from rest_framework.authtoken.models import Token

from tasks_app.models import Job
from tasks_app.services import control, submission

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


# Daphne's connection pool holds at most this many connections: if waiting clients held one each,
# 20 of them could not all be waiting at once.
SERVER_POOL = 2


@pytest.fixture
def daphne(stack, free_tcp_port):
    stack.env["DB_POOL_MAX_SIZE"] = str(SERVER_POOL)
    stack.start_daphne(free_tcp_port)
    return f"http://127.0.0.1:{free_tcp_port}"


@pytest.fixture
def queued_job(user):
    from unittest import mock

    with mock.patch("tasks_app.services.dispatch.run_job.apply_async"):
        return submission.job_create(owner=user, type="sleep", params={"seconds": 1})


@pytest.fixture
def auth(user):
    return {"Authorization": f"Token {Token.objects.create(user=user).key}"}


def test_wait_answers_as_soon_as_the_job_changes(daphne, queued_job, auth):
    url = f"{daphne}/api/jobs/{queued_job.pk}/?wait=20"
    threading.Timer(1.0, lambda: control.job_cancel(job_id=queued_job.pk, actor=None)).start()
    started = time.monotonic()
    response = requests.get(url, headers=auth, timeout=30)
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["version"] == 2
    assert response.headers["ETag"] == '"2"'
    assert 0.8 < elapsed < 10, elapsed


def test_wait_times_out_with_the_unchanged_job_or_304(daphne, queued_job, auth):
    response = requests.get(f"{daphne}/api/jobs/{queued_job.pk}/?wait=1", headers=auth, timeout=10)
    assert response.status_code == 200 and response.json()["version"] == 1
    response = requests.get(
        f"{daphne}/api/jobs/{queued_job.pk}/?wait=1", headers={**auth, "If-None-Match": '"1"'}, timeout=10
    )
    assert response.status_code == 304
    assert response.headers["Retry-After"] == "2"


def test_a_stale_if_none_match_answers_at_once(daphne, queued_job, auth):
    control.job_cancel(job_id=queued_job.pk, actor=None)
    started = time.monotonic()
    response = requests.get(
        f"{daphne}/api/jobs/{queued_job.pk}/?wait=20", headers={**auth, "If-None-Match": '"1"'}, timeout=30
    )
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert time.monotonic() - started < 5


def test_wait_on_another_users_job_is_404_at_once(daphne, queued_job, other_user):
    headers = {"Authorization": f"Token {Token.objects.create(user=other_user).key}"}
    response = requests.get(f"{daphne}/api/jobs/{queued_job.pk}/?wait=20", headers=headers, timeout=30)
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/problem+json"


def test_waiting_clients_hold_no_thread_and_no_database_connection(daphne, queued_job, auth, stack):
    """20 clients wait at once: Daphne gains no thread per waiting client, and (on PostgreSQL)
    the test database has no extra connection while they wait."""
    url = f"{daphne}/api/jobs/{queued_job.pk}/?wait=3"
    server = psutil.Process(next(c for c in stack.children if c.name == "daphne").process.pid)
    requests.get(f"{daphne}/api/jobs/{queued_job.pk}/?wait=1", headers=auth, timeout=10)  # warm up
    threads_before = server.num_threads()

    def backend_connections() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return cursor.fetchone()[0]

    is_postgres = connection.vendor == "postgresql"
    baseline = backend_connections() if is_postgres else 0
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        futures = [pool.submit(requests.get, url, headers=auth, timeout=60) for _ in range(20)]
        time.sleep(1.5)  # all are waiting now
        during = backend_connections() if is_postgres else 0
        threads_during = server.num_threads()
        responses = [f.result() for f in futures]
    elapsed = time.monotonic() - started
    assert all(r.status_code == 200 for r in responses)
    assert elapsed < 9, f"20 waits of 3 s took {elapsed:.1f}s"
    # The shared pool that runs the short reads may grow to its bound; a thread per client would be 20.
    pool_bound = min(32, (os.cpu_count() or 1) + 4)
    assert threads_during - threads_before <= pool_bound < 20, (
        f"{threads_during - threads_before} new threads"
    )
    if is_postgres:
        # The pool's connections (idle, not held by a waiter), and at most one for this test's reads.
        assert during - baseline <= SERVER_POOL, f"{during - baseline} connections held while waiting"
    assert Job.objects.get(pk=queued_job.pk).version == 1


def test_a_browser_session_can_long_poll(daphne, queued_job, user, client):
    client.force_login(user)
    cookies = {"sessionid": client.cookies["sessionid"].value}
    response = requests.get(f"{daphne}/api/jobs/{queued_job.pk}/?wait=1", cookies=cookies, timeout=10)
    assert response.status_code == 200
    assert response.json()["id"] == str(queued_job.pk)
    anonymous = requests.get(f"{daphne}/api/jobs/{queued_job.pk}/?wait=1", timeout=10)
    assert anonymous.status_code == 401
