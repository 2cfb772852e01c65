"""The whole system as `make run` starts it: Daphne, a job worker, the maintenance worker and
Celery beat on a Redis of the test's own, which the test stops and starts."""

from __future__ import annotations

import time

import pytest
import requests
from rest_framework.authtoken.models import Token

from tasks_app.models import Job, JobStatus
from tasks_app.stack import JOB_QUEUE, MAINTENANCE_QUEUE

from .conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def system(stack, tmp_path, free_tcp_port):
    """Redis (ours, stoppable), a job worker, the maintenance worker, beat and Daphne."""
    from tasks_app.stack import free_port

    redis_port = free_port()
    redis = stack.start_redis(redis_port, tmp_path / "redis", persistent=False)
    stack.env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    stack.start_ready_worker("worker", queues=[JOB_QUEUE], concurrency=2)
    stack.start_ready_worker("maintenance", queues=[MAINTENANCE_QUEUE], pool="solo")
    stack.start_beat(tmp_path / "beat-schedule")
    stack.start_daphne(free_tcp_port)
    return {
        "stack": stack,
        "redis": redis,
        "redis_port": redis_port,
        "base": f"http://127.0.0.1:{free_tcp_port}",
        "redis_dir": tmp_path / "redis",
    }


def test_job_submitted_while_the_broker_is_down_runs_once_it_is_back(system, user):
    stack = system["stack"]
    token = Token.objects.create(user=user).key
    headers = {"Authorization": f"Token {token}"}

    stack.stop(system["redis"])
    started = time.monotonic()
    response = requests.post(
        f"{system['base']}/api/jobs/",
        json={"type": "sleep", "params": {"seconds": 0.2, "steps": 2}},
        headers=headers,
        timeout=10,
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 202, response.text
    assert elapsed < 2.0, f"submission took {elapsed:.2f}s with the broker down"
    job_id = response.json()["id"]
    assert Job.objects.get(pk=job_id).dispatched_at is None

    stack.start_redis(system["redis_port"], system["redis_dir"], persistent=False)
    job = wait_for(
        lambda: (j := Job.objects.get(pk=job_id)).is_terminal and j,
        timeout=90,
        what="the sweep to dispatch the job after Redis came back",
    )
    assert job.status == JobStatus.SUCCEEDED, stack.log_tail("worker")
    assert job.attempts == 1
    assert job.dispatched_at is not None


def test_higher_priority_runs_first_when_the_worker_is_busy(stack, tmp_path, free_tcp_port, user):
    """One worker process, busy with a first job; then low-priority jobs and one high-priority
    job queue up. The high-priority job must start before every low-priority one. (A Redis of
    its own, so no other worker of the test session takes these jobs.)"""
    from tasks_app.stack import free_port

    redis_port = free_port()
    stack.start_redis(redis_port, tmp_path / "redis", persistent=False)
    stack.env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    stack.start_ready_worker("single", queues=[JOB_QUEUE], concurrency=1)
    stack.start_daphne(free_tcp_port)
    base = f"http://127.0.0.1:{free_tcp_port}"
    headers = {"Authorization": f"Token {Token.objects.create(user=user).key}"}

    def submit(body):
        response = requests.post(f"{base}/api/jobs/", json=body, headers=headers, timeout=10)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    blocker = submit({"type": "sleep", "params": {"seconds": 1.5, "steps": 3}})
    wait_for(lambda: Job.objects.get(pk=blocker).status == JobStatus.RUNNING, what="the blocker to run")
    low = [submit({"type": "sleep", "params": {"seconds": 0}, "priority": 0}) for _ in range(3)]
    high = submit({"type": "sleep", "params": {"seconds": 0}, "priority": 9})
    wait_for(
        lambda: Job.objects.filter(pk__in=[*low, high], status=JobStatus.SUCCEEDED).count() == 4,
        timeout=60,
        what="all jobs to finish",
    )
    started = {str(j.pk): j.started_at for j in Job.objects.filter(pk__in=[*low, high])}
    assert all(started[high] < started[job_id] for job_id in low), started
