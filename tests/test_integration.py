"""End to end with real processes: a Celery worker process and a real Redis run the jobs that
the API accepts."""

from __future__ import annotations

import pytest

from tasks_app.models import Job, JobStatus
from tests.helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.broker, pytest.mark.django_db(transaction=True)]


def finished(job_id):
    job = Job.objects.get(pk=job_id)
    return job if job.is_terminal else None


def test_submitted_job_runs_on_a_real_worker_and_succeeds(api, shared_worker):
    response = api.post(
        "/api/jobs/", {"type": "sleep", "params": {"seconds": 0.5, "steps": 5}}, format="json"
    )
    assert response.status_code == 202, response.content
    job = wait_for(lambda: finished(response.data["id"]), timeout=30, what="the job to finish")
    assert job.status == JobStatus.SUCCEEDED, shared_worker.log_tail("shared")
    assert job.result == {"slept": 0.5}
    assert job.attempts == 1
    assert job.progress == 100


def test_failing_job_ends_failed_with_error_and_traceback(api, shared_worker):
    response = api.post(
        "/api/jobs/", {"type": "fail", "params": {"message": "boom", "error": "ValueError"}}, format="json"
    )
    assert response.status_code == 202
    job = wait_for(lambda: finished(response.data["id"]), timeout=30, what="the job to finish")
    assert job.status == JobStatus.FAILED
    assert job.error == {"type": "ValueError", "message": "boom"}
    assert "Traceback" in job.traceback and "ValueError: boom" in job.traceback
    detail = api.get(f"/api/jobs/{job.pk}/").json()
    assert detail["status"] == "failed" and detail["error"]["message"] == "boom"


def test_the_same_message_delivered_twice_at_once_runs_the_job_once(user, shared_worker):
    from unittest import mock

    from tasks_app.models import JobEvent
    from tasks_app.services import submission
    from tasks_app.tasks import run_job

    with mock.patch("tasks_app.services.dispatch.run_job.apply_async"):
        job = submission.job_create(owner=user, type="sleep", params={"seconds": 1, "steps": 2})
    # Two deliveries of the same job, picked up at once by the worker's two processes.
    run_job.apply_async(args=[str(job.pk)])
    run_job.apply_async(args=[str(job.pk)])
    job = wait_for(lambda: finished(job.pk), timeout=30, what="the job to finish")
    assert job.status == JobStatus.SUCCEEDED
    assert job.attempts == 1
    running_events = JobEvent.objects.filter(job=job, kind="status", status="running")
    assert running_events.count() == 1
    wait_for(
        lambda: "not claimed" in shared_worker.log_tail("shared", 20000),
        timeout=10,
        what="the duplicate to be skipped",
    )
