"""The whole system as `make run` starts it: Daphne, a job worker, the maintenance worker and
Celery beat on a Redis of the test's own, which the test stops and starts."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest
import requests
from django.utils import timezone
from rest_framework.authtoken.models import Token

from tasks_app.models import Job, JobStatus
from tasks_app.stack import JOB_QUEUE, MAINTENANCE_QUEUE
from tests.helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def system(stack, tmp_path, free_tcp_port):
    """Redis (ours, stoppable), a job worker, the maintenance worker, beat and Daphne."""
    from tasks_app.stack import free_port

    redis_port = free_port()
    redis = stack.start_redis(redis_port, tmp_path / "redis", persistent=False)
    stack.env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    # Short leases and sweeps, so recovery happens within the test's patience.
    stack.env.update(
        {"LONGRUN_LEASE_SECONDS": "4", "LONGRUN_HEARTBEAT_SECONDS": "1", "LONGRUN_SWEEP_INTERVAL": "1"}
    )
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


@pytest.mark.broker
def test_higher_priority_runs_first_when_the_worker_is_busy(stack, own_broker, free_tcp_port, user):
    """One worker process, busy with a first job; then low-priority jobs and one high-priority
    job queue up. The high-priority job must start before every low-priority one. (A broker of
    its own, so no other worker of the test session takes these jobs: Redis or RabbitMQ.)"""
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


def test_a_hundred_jobs_submitted_while_redis_is_down_all_run_exactly_once(system, user):
    stack = system["stack"]
    headers = {"Authorization": f"Token {Token.objects.create(user=user).key}"}
    stack.stop(system["redis"])
    session = requests.Session()
    ids, slowest = [], 0.0
    for n in range(100):
        started = time.monotonic()
        response = session.post(
            f"{system['base']}/api/jobs/",
            json={"type": "sleep", "params": {"seconds": 0}, "metadata": {"n": str(n)}},
            headers=headers,
            timeout=10,
        )
        slowest = max(slowest, time.monotonic() - started)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    assert slowest < 2.0, f"a submission took {slowest:.2f}s with Redis down"
    # The rest of the API works without Redis too.
    assert session.get(f"{system['base']}/api/jobs/{ids[0]}/", headers=headers, timeout=10).status_code == 200
    assert session.get(f"{system['base']}/api/stats/", headers=headers, timeout=10).status_code == 200

    stack.start_redis(system["redis_port"], system["redis_dir"], persistent=False)
    wait_for(
        lambda: Job.objects.filter(pk__in=ids, status=JobStatus.SUCCEEDED).count() == 100,
        timeout=120,
        what="all 100 jobs to run once Redis is back",
    )
    jobs = Job.objects.filter(pk__in=ids)
    assert {job.attempts for job in jobs} == {1}
    from tasks_app.models import JobEvent

    assert JobEvent.objects.filter(job__in=ids, kind="status", status="succeeded").count() == 100
    assert JobEvent.objects.filter(job__in=ids, kind="status", status="running").count() == 100


def test_restarting_redis_while_a_job_runs(system, user):
    """The job still ends correctly, and the worker takes new jobs within a minute."""
    stack = system["stack"]
    headers = {"Authorization": f"Token {Token.objects.create(user=user).key}"}
    submit = lambda body: requests.post(
        f"{system['base']}/api/jobs/", json=body, headers=headers, timeout=10
    ).json()["id"]  # noqa: E731
    job_id = submit({"type": "sleep", "params": {"seconds": 4, "steps": 4}})
    wait_for(lambda: Job.objects.get(pk=job_id).status == JobStatus.RUNNING, what="running")
    stack.stop(system["redis"])
    time.sleep(1)
    stack.start_redis(system["redis_port"], system["redis_dir"], persistent=False)
    restarted = time.monotonic()
    job = wait_for(
        lambda: (j := Job.objects.get(pk=job_id)).is_terminal and j, timeout=120, what="the job to end"
    )
    assert job.status == JobStatus.SUCCEEDED
    # It ran on through the restart: not killed and run again (Celery's cancel-on-connection-loss).
    assert job.attempts == 1
    from tasks_app.models import JobEvent

    assert JobEvent.objects.filter(job=job, kind="status", status="succeeded").count() == 1
    after = submit({"type": "sleep", "params": {"seconds": 0}})
    try:
        wait_for(
            lambda: Job.objects.get(pk=after).status == JobStatus.SUCCEEDED,
            timeout=60,
            what="a new job to run",
        )
    except BaseException:
        print(Job.objects.filter(pk=after).values("status", "dispatched_at").first())
        for name in ("worker", "maintenance", "beat", "daphne"):
            print(f"===== {name}\n{stack.log_tail(name, 3000)}")
        raise
    assert time.monotonic() - restarted < 120


@pytest.mark.faults
@pytest.mark.slow
def test_restarting_postgresql_while_jobs_run(system, user):
    """Jobs end correctly and the API answers again, with nothing restarted but PostgreSQL."""
    import shutil
    import subprocess
    from pathlib import Path

    from django.db import connection

    if connection.vendor != "postgresql" or not shutil.which("pg_ctlcluster"):
        # A laptop on SQLite has no server to restart; CI (environment variable CI) must run it.
        message = "needs the machine's PostgreSQL cluster (pg_ctlcluster) and DATABASE_URL on it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
    headers = {"Authorization": f"Token {Token.objects.create(user=user).key}"}
    base = system["base"]
    ids = [
        requests.post(
            f"{base}/api/jobs/",
            json={"type": "sleep", "params": {"seconds": 3, "steps": 6}},
            headers=headers,
            timeout=10,
        ).json()["id"]
        for _ in range(2)
    ]
    wait_for(
        lambda: Job.objects.filter(pk__in=ids, status=JobStatus.RUNNING).count() == 2, what="both running"
    )
    connection.close()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        timeout=120,
        capture_output=True,
    )
    connection.close()

    def api_answers():
        try:
            return requests.get(f"{base}/api/jobs/", headers=headers, timeout=10).status_code == 200
        except requests.RequestException:
            return False

    wait_for(api_answers, timeout=60, what="the API to answer again")

    def all_ended():
        try:
            return Job.objects.filter(pk__in=ids, status=JobStatus.SUCCEEDED).count() == 2
        except Exception:
            connection.close()
            return False

    try:
        wait_for(all_ended, timeout=120, what="both jobs to succeed after the restart")
    except BaseException:
        connection.close()
        print(
            list(
                Job.objects.filter(pk__in=ids).values(
                    "status", "attempts", "worker", "lease_expires_at", "error"
                )
            )
        )
        for name in ("worker", "maintenance", "beat"):
            print(f"===== {name}\n{system['stack'].log_tail(name, 4000)}")
        raise
    from tasks_app.models import JobEvent

    for job_id in ids:
        assert JobEvent.objects.filter(job_id=job_id, kind="status", status="succeeded").count() == 1
    # Workers keep taking jobs without a restart of their own, and the sweep keeps running: a
    # scheduled job is queued by it (its connection was dead after the restart: found by the soak).
    after = requests.post(
        f"{base}/api/jobs/", json={"type": "sleep", "params": {"seconds": 0}}, headers=headers, timeout=10
    ).json()["id"]
    later = requests.post(
        f"{base}/api/jobs/",
        json={
            "type": "sleep",
            "params": {"seconds": 0},
            "run_at": (timezone.now() + timedelta(seconds=2)).isoformat(),
        },
        headers=headers,
        timeout=10,
    ).json()["id"]
    wait_for(
        lambda: Job.objects.get(pk=after).status == JobStatus.SUCCEEDED, timeout=60, what="a new job to run"
    )
    wait_for(
        lambda: Job.objects.get(pk=later).status == JobStatus.SUCCEEDED,
        timeout=30,
        what="the sweep to queue a scheduled job after the restart",
    )
