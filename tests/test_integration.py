"""End to end with real processes: a Celery worker process and a real Redis run the jobs that
the API accepts."""

from __future__ import annotations

import pytest

from tasks_app.models import Job, JobStatus

from .conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def finished(job_id):
    job = Job.objects.get(pk=job_id)
    return job if job.is_terminal else None


def test_submitted_job_runs_on_a_real_worker_and_succeeds(api, shared_worker):
    response = api.post("/api/jobs/", {"type": "sleep", "params": {"seconds": 0.5, "steps": 5}}, format="json")
    assert response.status_code == 202, response.content
    job = wait_for(lambda: finished(response.data["id"]), timeout=30, what="the job to finish")
    assert job.status == JobStatus.SUCCEEDED, shared_worker.log_tail("shared")
    assert job.result == {"slept": 0.5}
    assert job.attempts == 1
    assert job.progress == 100
