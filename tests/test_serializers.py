"""The one representation of a job is built by a plain function (`job_representation`), not by
DRF's field machinery. It must be exactly what DRF's fields of `JobSerializer` would produce, for
every field and every status, and the OpenAPI schema must describe it."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core.serializers.json import DjangoJSONEncoder
from django.test import override_settings
from django.utils import timezone
from rest_framework import serializers

from tasks_app.models import Job, JobEvent, JobStatus
from tasks_app.serializers import (
    JobEventSerializer,
    JobSerializer,
    event_representation,
    job_representation,
)
from tasks_app.services import control, execution
from tests.helpers import cancelled_job, failed_job, make_job, running_job, succeeded_job

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("broker")]


def drf_representation(job: Job) -> dict:
    """What DRF's declared fields make of the job (ModelSerializer's own to_representation)."""
    return serializers.ModelSerializer.to_representation(JobSerializer(), job)


def plain(data):
    return json.loads(json.dumps(data, cls=DjangoJSONEncoder))


def jobs_in_every_state(user) -> list[Job]:
    options = {
        "metadata": {"customer": "acme", "empty": ""},
        "priority": 9,
        "timeout": 120,
        "max_attempts": 5,
        "callback_url": "https://example.com/hook",
        "webhook_events": ["job.progress", "job.started"],
    }
    scheduled = make_job(user, run_at=timezone.now() + timedelta(hours=1), **options)
    retry_me = failed_job(user, traceback="Traceback ...")
    control.job_retry(job_id=retry_me.pk, actor=user)
    requested = running_job(user)
    control.job_cancel(job_id=requested.pk, actor=user)
    progressed = running_job(user, type="primes")
    execution.job_progress(job_id=progressed.pk, worker="w1", percent=42, message="a <b> ü")
    made = [
        make_job(user),
        scheduled,
        running_job(user, **options),
        progressed,
        requested,
        succeeded_job(user, result={"nested": [1, 2.5, None, "x"], "ok": True}),
        succeeded_job(user, result=None),
        failed_job(user, traceback="tb"),
        cancelled_job(user),
        retry_me,
    ]
    return [Job.objects.select_related("owner").get(pk=job.pk) for job in made]


def test_the_fast_representation_equals_drf_for_every_field_and_status(user):
    jobs = jobs_in_every_state(user)
    assert {job.status for job in jobs} == set(JobStatus.values)
    for job in jobs:
        fast, drf = job_representation(job), drf_representation(job)
        assert list(fast) == list(drf), "same fields, same order"
        assert plain(fast) == plain(drf), job.status
        assert fast == plain(fast), "already plain JSON values (no UUIDs, datetimes or enums)"


@override_settings(TIME_ZONE="Europe/Paris")
def test_times_follow_the_current_time_zone_like_drf(user):
    job = Job.objects.select_related("owner").get(pk=succeeded_job(user).pk)
    fast, drf = job_representation(job), drf_representation(job)
    assert fast["created_at"] == drf["created_at"]
    assert fast["created_at"].endswith(("+01:00", "+02:00"))


def test_the_serializer_renders_through_the_fast_function(user):
    job = Job.objects.select_related("owner").get(pk=make_job(user).pk)
    assert JobSerializer(job).data == job_representation(job)
    assert JobSerializer([job], many=True).data == [job_representation(job)]


def test_history_entries_equal_drf(user, other_user):
    job = failed_job(user)
    control.job_retry(job_id=job.pk, actor=other_user)
    for entry in JobEvent.objects.filter(job=job).select_related("actor"):
        drf = serializers.ModelSerializer.to_representation(JobEventSerializer(), entry)
        assert plain(event_representation(entry)) == plain(drf)
    assert JobEventSerializer(entry).data == event_representation(entry)


def test_the_openapi_schema_describes_the_representation(api, user):
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    job = Job.objects.select_related("owner").get(pk=make_job(user).pk)
    properties = schema["components"]["schemas"]["Job"]["properties"]
    assert list(properties) == list(job_representation(job))
