"""RabbitMQ as the broker, restarted under load: the machine's RabbitMQ node is stopped and
started again (`rabbitmqctl stop_app` / `start_app`) while a job runs and while another is
submitted. Both end once, correctly. Runs in CI's RabbitMQ pass (`CELERY_BROKER_URL=amqp://...`,
see .ci/run); the Redis broker's outages have their own tests in test_system.py."""

from __future__ import annotations

import os
import subprocess

import pytest

from tasks_app.models import Job, JobEvent, JobStatus
from tasks_app.services import submission
from tasks_app.stack import JOB_QUEUE, MAINTENANCE_QUEUE
from tests.helpers import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.faults,
    pytest.mark.broker,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not os.environ.get("CELERY_BROKER_URL", "").startswith("amqp"),
        reason="RabbitMQ only: runs in CI's RabbitMQ pass; the Redis broker has test_system.py",
    ),
]


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


def completions(job: Job) -> int:
    return JobEvent.objects.filter(
        job=job, kind="status", status__in=["succeeded", "failed", "cancelled"]
    ).count()


def test_a_rabbitmq_restart_loses_no_job_and_runs_none_twice(stack, user, commit, tmp_path):
    stack.env.update(
        {"LONGRUN_LEASE_SECONDS": "6", "LONGRUN_HEARTBEAT_SECONDS": "1", "LONGRUN_SWEEP_INTERVAL": "1"}
    )
    stack.start_ready_worker("worker", queues=[JOB_QUEUE], concurrency=2)
    stack.start_ready_worker("maintenance", queues=[MAINTENANCE_QUEUE], pool="solo")
    stack.start_beat(tmp_path / "beat-schedule")
    with commit():
        running = submission.job_create(owner=user, type="sleep", params={"seconds": 4, "steps": 4})
    wait_for(
        lambda: Job.objects.get(pk=running.pk).status == JobStatus.RUNNING, timeout=30, what="a running job"
    )

    rabbitmqctl("stop_app")
    try:
        with commit():  # the publish fails fast; the row waits for the sweep
            submitted = submission.job_create(owner=user, type="sleep", params={"seconds": 0})
        assert Job.objects.get(pk=submitted.pk).dispatched_at is None
    finally:
        rabbitmqctl("start_app")

    for job in (running, submitted):
        wait_for(
            lambda job=job: Job.objects.get(pk=job.pk).status == JobStatus.SUCCEEDED,
            timeout=120,
            what=f"job {job.pk} to succeed after the restart",
        )
    # The running job went on through the outage and ended once, on its first attempt; its
    # message, which could not be acknowledged, may come back: the conditional claim ignores it.
    assert Job.objects.get(pk=running.pk).attempts == 1
    assert completions(running) == 1 and completions(submitted) == 1
