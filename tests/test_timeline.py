"""`timeline`: a job's attempts read from its history."""

from __future__ import annotations

import pytest

from tasks_app import selectors, timeline
from tasks_app.models import Job, JobStatus
from tasks_app.serializers import JobEventSerializer
from tasks_app.services import control, execution
from tests.helpers import make_job

pytestmark = pytest.mark.django_db

BOOM = {"type": "TimeoutError", "message": "the API took too long"}


def attempts_of(job: Job) -> list[dict]:
    events = JobEventSerializer(selectors.job_events(job), many=True).data
    return timeline.job_attempts(events)


def test_each_run_of_a_job_is_one_attempt_with_its_worker_outcome_and_error(user):
    job = make_job(user)
    assert attempts_of(job) == []  # queued, never started

    execution.job_claim(job_id=job.pk, worker="w1@host")
    (first,) = attempts_of(job)
    assert first["number"] == 1 and first["worker"] == "w1@host"
    assert first["outcome"] == "running" and first["ended_at"] is None

    # A retryable error: the attempt ends "Failed, retried"; a log line in between changes nothing.
    execution.job_log(job_id=job.pk, worker="w1@host", message="calling the API")
    execution.job_fail_or_retry(job_id=job.pk, worker="w1@host", error=BOOM, retryable=True)
    Job.objects.filter(pk=job.pk).update(status=JobStatus.QUEUED)  # its backoff is over
    execution.job_claim(job_id=job.pk, worker="w2@host")
    execution.job_fail(job_id=job.pk, worker="w2@host", error={"type": "ValueError", "message": "bad row"})
    control.job_retry(job_id=job.pk, actor=user)
    execution.job_claim(job_id=job.pk, worker="w1@host")
    execution.job_succeed(job_id=job.pk, worker="w1@host", result={"rows": 3})

    attempts = attempts_of(job)
    assert [(a["number"], a["worker"], a["outcome"], a["outcome_label"]) for a in attempts] == [
        (1, "w1@host", "scheduled", "Failed, retried"),
        (2, "w2@host", "failed", "Failed"),
        (3, "w1@host", "succeeded", "Succeeded"),
    ]
    assert [a["error"] for a in attempts] == [
        "TimeoutError: the API took too long",
        "ValueError: bad row",
        "",
    ]
    for attempt in attempts:
        assert attempt["started_at"] <= attempt["ended_at"]


def test_an_attempt_ended_by_a_cancel_or_taken_back_from_a_lost_worker():
    events = [
        {"seq": 1, "kind": "created", "status": "queued", "data": {}, "created_at": "t1"},
        # Written before the claim recorded its worker in `data`: the worker is unknown.
        {"seq": 2, "kind": "status", "status": "running", "data": {}, "created_at": "t2"},
        {"seq": 3, "kind": "status", "status": "queued", "data": {}, "created_at": "t3"},
        {"seq": 4, "kind": "status", "status": "running", "data": {"worker": "w9"}, "created_at": "t4"},
        {"seq": 5, "kind": "cancel_requested", "status": "running", "data": {}, "created_at": "t5"},
        {"seq": 6, "kind": "status", "status": "cancelled", "data": {}, "created_at": "t6"},
        {"seq": 7, "kind": "retry", "status": "queued", "data": {}, "created_at": "t7"},
    ]
    attempts = timeline.job_attempts(events)
    assert [(a["worker"], a["started_at"], a["ended_at"], a["outcome_label"]) for a in attempts] == [
        ("", "t2", "t3", "Taken back"),
        ("w9", "t4", "t6", "Cancelled"),
    ]
