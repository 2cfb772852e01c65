"""Fault injection with real processes and real signals: a killed pool process, a killed
worker, a poison job, forced and cooperative cancels, retries and timeouts. Each ends with every
job in the one terminal state that matches what happened, none completed twice, none lost."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tasks_app.models import Job, JobEvent, JobStatus
from tasks_app.services import control, submission
from tasks_app.stack import JOB_QUEUE, MAINTENANCE_QUEUE
from tests.helpers import wait_for

pytestmark = [
    pytest.mark.faults,
    pytest.mark.integration,
    pytest.mark.broker,
    pytest.mark.django_db(transaction=True),
]

FAST = {
    "LONGRUN_LEASE_SECONDS": "4",
    "LONGRUN_HEARTBEAT_SECONDS": "1",
    "LONGRUN_SWEEP_INTERVAL": "1",
    "LONGRUN_CANCEL_GRACE": "2",
    "LONGRUN_RETRY_BACKOFF_BASE": "0.5",
    "LONGRUN_TIMEOUT_GRACE": "2",
}


@pytest.fixture
def cluster(stack, tmp_path):
    """A job worker, the maintenance worker and beat, with short leases and sweeps."""
    stack.env.update(FAST)
    stack.start_ready_worker("worker", queues=[JOB_QUEUE], concurrency=2)
    stack.start_ready_worker("maintenance", queues=[MAINTENANCE_QUEUE], pool="solo")
    stack.start_beat(tmp_path / "beat-schedule")
    return stack


def submit(user, type, **options):
    return submission.job_create(owner=user, type=type, **options)


def terminal(job_id, timeout=60):
    return wait_for(
        lambda: (job := Job.objects.get(pk=job_id)).is_terminal and job,
        timeout=timeout,
        what=f"job {job_id} to end",
    )


def completions(job) -> int:
    return JobEvent.objects.filter(
        job=job, kind="status", status__in=["succeeded", "failed", "cancelled"]
    ).count()


def pool_pid(job) -> int:
    return int(job.worker.rsplit(":", 1)[1])


def test_sigkill_of_the_pool_process_running_a_job_runs_it_again(cluster, user):
    job = submit(user, "sleep", params={"seconds": 3, "steps": 3})
    running = wait_for(
        lambda: (j := Job.objects.get(pk=job.pk)).status == JobStatus.RUNNING and j, what="running"
    )
    os.kill(pool_pid(running), signal.SIGKILL)
    done = terminal(job.pk)
    assert done.status == JobStatus.SUCCEEDED, cluster.log_tail("worker")
    assert done.attempts == 2
    assert completions(done) == 1


def test_a_job_killing_its_worker_process_then_succeeding(cluster, user):
    job = submit(user, "crash", params={"crash_on_attempts": [1]})
    done = terminal(job.pk)
    assert done.status == JobStatus.SUCCEEDED and done.result == {"attempt": 2}
    assert done.attempts == 2


def test_a_poison_job_fails_after_its_attempts_with_the_reason(cluster, user):
    job = submit(user, "crash", params={"crash_on_attempts": [1, 2, 3]}, max_attempts=2)
    done = terminal(job.pk)
    assert done.status == JobStatus.FAILED
    assert done.attempts == 2
    assert done.error["type"] == "WorkerLost"
    assert "lease expired" in done.error["message"]


def test_sigkill_of_the_whole_worker_is_recovered_by_the_lease_not_the_visibility_timeout(cluster, user):
    worker = next(child for child in cluster.children if child.name == "worker")
    job = submit(user, "sleep", params={"seconds": 2, "steps": 2})
    wait_for(lambda: Job.objects.get(pk=job.pk).status == JobStatus.RUNNING, what="running")
    cluster.kill(worker)  # SIGKILL to the whole process group: main process and pool
    killed_at = time.monotonic()
    cluster.start_ready_worker("worker2", queues=[JOB_QUEUE], concurrency=2)
    done = terminal(job.pk)
    recovered_in = time.monotonic() - killed_at
    assert done.status == JobStatus.SUCCEEDED
    assert done.attempts == 2
    assert recovered_in < 30, f"recovered after {recovered_in:.0f}s"
    assert completions(done) == 1


def test_cooperative_cancel_of_a_running_primes_job(cluster, user):
    job = submit(user, "primes", params={"n": 10_000_000_000, "chunk": 100_000})
    wait_for(lambda: Job.objects.get(pk=job.pk).progress > 0, what="progress")
    asked = time.monotonic()
    control.job_cancel(job_id=job.pk, actor=user)
    done = terminal(job.pk, timeout=20)
    assert done.status == JobStatus.CANCELLED
    assert time.monotonic() - asked < float(FAST["LONGRUN_CANCEL_GRACE"]) + 3
    assert "Cancelled while running" in JobEvent.objects.filter(job=done).last().message


def test_a_job_that_ignores_cancel_is_terminated_after_the_grace(cluster, user):
    job = submit(user, "stuck", params={"seconds": 120})
    running = wait_for(
        lambda: (j := Job.objects.get(pk=job.pk)).status == JobStatus.RUNNING and j, what="running"
    )
    control.job_cancel(job_id=job.pk, actor=user)
    done = terminal(job.pk, timeout=30)
    assert done.status == JobStatus.CANCELLED
    assert "terminated" in JobEvent.objects.filter(job=done).last().message
    # Its process was killed, and the worker goes on taking jobs.
    wait_for(lambda: not _alive(pool_pid(running)), timeout=20, what="the stuck process to be terminated")
    after = submit(user, "sleep", params={"seconds": 0})
    assert terminal(after.pk).status == JobStatus.SUCCEEDED


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_retryable_errors_back_off_and_retry_until_success(cluster, user):
    job = submit(user, "flaky", params={"succeed_on": 3}, max_attempts=3)
    done = terminal(job.pk)
    assert done.status == JobStatus.SUCCEEDED and done.result == {"attempt": 3}
    assert done.attempts == 3
    retries = JobEvent.objects.filter(job=done, message__contains="retrying in")
    assert retries.count() == 2


def test_retryable_errors_fail_after_max_attempts(cluster, user):
    job = submit(user, "flaky", params={"succeed_on": 5}, max_attempts=2)
    done = terminal(job.pk)
    assert done.status == JobStatus.FAILED
    assert done.attempts == 2 and done.error["type"] == "FlakyError"


def test_a_timeout_ends_the_job_with_a_clear_error(cluster, user):
    job = submit(user, "stuck", params={"seconds": 60}, timeout=1)
    done = terminal(job.pk, timeout=30)
    assert done.status == JobStatus.FAILED
    assert done.error["type"] == "TimeoutError"
    assert "timeout of 1 s" in done.error["message"]


def test_a_non_retryable_error_fails_at_once(cluster, user):
    job = submit(user, "fail", params={"error": "ValueError"}, max_attempts=3)
    done = terminal(job.pk)
    assert done.status == JobStatus.FAILED and done.attempts == 1


@pytest.mark.slow
def test_sigterm_lets_short_jobs_finish_and_gives_long_ones_back(cluster, user):
    cluster.env["CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT"] = "2"
    first = cluster.start_ready_worker("stopping", queues=[JOB_QUEUE], concurrency=2)
    old = next(child for child in cluster.children if child.name == "worker")
    cluster.stop(old)  # only "stopping" takes jobs now
    short = submit(user, "sleep", params={"seconds": 1, "steps": 2})
    long = submit(user, "sleep", params={"seconds": 8, "steps": 8})
    wait_for(
        lambda: Job.objects.filter(pk__in=[short.pk, long.pk], status=JobStatus.RUNNING).count() == 2,
        what="both jobs running",
    )
    first.process.send_signal(signal.SIGTERM)  # warm shutdown, then soft shutdown after 2 s
    first.process.wait(60)
    assert terminal(short.pk).status == JobStatus.SUCCEEDED
    cluster.start_ready_worker("after", queues=[JOB_QUEUE], concurrency=2)
    done = terminal(long.pk, timeout=90)
    assert done.status == JobStatus.SUCCEEDED
    assert done.attempts == 2
    assert completions(done) == 1 and completions(Job.objects.get(pk=short.pk)) == 1
    assert not Job.objects.filter(status=JobStatus.RUNNING).exists()
