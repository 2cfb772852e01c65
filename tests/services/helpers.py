"""Helpers for the services tests: jobs brought to a state through the services, and what was
recorded and published."""

from __future__ import annotations

import json
from datetime import timedelta

from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from tasks_app.models import Job, JobEvent, JobStatus
from tasks_app.services import control, execution, submission

W1 = "host-a:101"
W2 = "host-b:202"


def sent(published) -> list[tuple[str, int, str]]:
    """(event, version, status) of every live message published so far."""
    out = []
    for call in published.call_args_list:
        owner_id, message = call.args
        out.append((message["event"], message["version"], message["job"]["status"]))
    return out


def row(job) -> dict:
    return Job.objects.filter(pk=job.pk).values().get()


def history(job) -> list[tuple[int, str, str]]:
    return list(JobEvent.objects.filter(job_id=job.pk).order_by("seq").values_list("seq", "kind", "status"))


def new_job(owner, **kwargs) -> Job:
    kwargs.setdefault("type", "sleep")
    kwargs.setdefault("params", {"seconds": 0.01, "steps": 1})
    return submission.job_create(owner=owner, **kwargs)


def running_job(owner, worker: str = W1, **kwargs) -> Job:
    job = new_job(owner, **kwargs)
    claimed = execution.job_claim(job_id=job.pk, worker=worker, celery_task_id="celery-1")
    assert claimed is not None
    return claimed


def job_in(owner, status: str) -> Job:
    """A job brought to `status` through the services (scheduled: set directly, no service makes it)."""
    if status == JobStatus.QUEUED:
        return new_job(owner)
    if status == JobStatus.SCHEDULED:
        job = new_job(owner)
        later = timezone.now() + timedelta(hours=1)
        Job.objects.filter(pk=job.pk).update(status=JobStatus.SCHEDULED, run_at=later)
        return Job.objects.get(pk=job.pk)
    job = running_job(owner)
    if status == JobStatus.RUNNING:
        return job
    if status == JobStatus.SUCCEEDED:
        return execution.job_succeed(job_id=job.pk, worker=W1, result={"ok": True})
    if status == JobStatus.FAILED:
        error = {"type": "ValueError", "message": "boom"}
        return execution.job_fail(job_id=job.pk, worker=W1, error=error, traceback="tb")
    if status == JobStatus.CANCELLED:
        control.job_cancel(job_id=job.pk, actor=None)
        return execution.job_acknowledge_cancel(job_id=job.pk, worker=W1)
    raise AssertionError(status)


def as_json(data):
    return json.loads(json.dumps(data, cls=DjangoJSONEncoder))
