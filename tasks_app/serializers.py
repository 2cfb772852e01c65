"""The one representation of a job, and of its history entries.

`job_representation(job)` is what the REST API, WebSocket and SSE messages and webhook bodies all
carry: plain JSON values (strings, numbers, lists, dicts), built by one function rather than by
DRF's field machinery, which costs about 0.7 ms per job (a ModelSerializer rebuilds its fields
on every instantiation). `JobSerializer` declares the same shape field by field, for the OpenAPI
schema, and renders through that function; `tests/test_serializers.py` proves the function equal
to what DRF's fields would produce, for every field and status. Links are root-relative so the
same output serves every channel without a request. Request bodies and the API's other answers
are in `api/serializers.py`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime, tzinfo
from typing import Any
from uuid import UUID

from django.urls import get_script_prefix, get_urlconf, reverse
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from . import recurrence, schedule_selectors
from .conf import SCHEDULE_NEXT_TIMES
from .models import Job, JobEvent, JobId, Schedule


class JobErrorSerializer(serializers.Serializer):
    type = serializers.CharField(help_text="The exception class name.")
    message = serializers.CharField()


class JobLinksSerializer(serializers.Serializer):
    self = serializers.CharField()
    cancel = serializers.CharField()
    retry = serializers.CharField()
    events = serializers.CharField()


class JobSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.get_username", read_only=True)
    error = JobErrorSerializer(allow_null=True, read_only=True)
    links = serializers.SerializerMethodField()
    result = serializers.JSONField(
        read_only=True, help_text="What the job returned (any JSON); null until it succeeds."
    )
    params = serializers.JSONField(read_only=True)
    metadata = serializers.DictField(child=serializers.CharField(), read_only=True)
    callback_url = serializers.CharField(read_only=True, help_text="Empty when none was given.")
    webhook_events = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta:
        model = Job
        fields = [
            "id",
            "type",
            "params",
            "status",
            "progress",
            "progress_message",
            "result",
            "error",
            "traceback",
            "attempts",
            "max_attempts",
            "priority",
            "owner",
            "metadata",
            "run_at",
            "timeout",
            "callback_url",
            "webhook_events",
            "created_at",
            "started_at",
            "finished_at",
            "cancel_requested_at",
            "schedule",
            "scheduled_for",
            "version",
            "links",
        ]
        read_only_fields = fields

    @extend_schema_field(JobLinksSerializer)
    def get_links(self, job: Job) -> dict[str, str]:
        return job_links(job.pk)

    def to_representation(self, instance: Job) -> dict[str, Any]:
        return job_representation(instance)


_ZERO_ID = str(UUID(int=0))


@functools.lru_cache(maxsize=16)
def _link_templates(script_prefix: str, urlconf: Any) -> dict[str, str]:
    """The job URLs with a placeholder id: reversing four URLs per job costs more than the rest
    of the representation."""
    return {
        name: reverse(f"api:job-{view}", args=[_ZERO_ID])
        for name, view in (("self", "detail"), ("cancel", "cancel"), ("retry", "retry"), ("events", "events"))
    }


def job_links(job_id: JobId) -> dict[str, str]:
    job_id = str(job_id)
    return {
        name: url.replace(_ZERO_ID, job_id)
        for name, url in _link_templates(get_script_prefix(), get_urlconf()).items()
    }


def _time(value: datetime | None, zone: tzinfo) -> str | None:
    """A date-time as DRF writes it: ISO 8601 in the current time zone, UTC as "Z"."""
    if value is None:
        return None
    text = value.astimezone(zone).isoformat() if timezone.is_aware(value) else value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def job_representation(job: Job) -> dict[str, Any]:
    """The job as every channel carries it (the fields of `JobSerializer`, in its order)."""
    zone = timezone.get_current_timezone()
    error = job.error
    return {
        "id": str(job.pk),
        "type": job.type,
        "params": job.params,
        "status": str(job.status),
        "progress": job.progress,
        "progress_message": job.progress_message,
        "result": job.result,
        "error": None if error is None else {key: _text(error[key]) for key in ("type", "message")},
        "traceback": job.traceback,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "priority": job.priority,
        "owner": str(job.owner.get_username()),
        "metadata": {str(key): _text(value) for key, value in job.metadata.items()},
        "run_at": _time(job.run_at, zone),
        "timeout": job.timeout,
        "callback_url": job.callback_url,
        "webhook_events": [_text(event) for event in job.webhook_events],
        "created_at": _time(job.created_at, zone),
        "started_at": _time(job.started_at, zone),
        "finished_at": _time(job.finished_at, zone),
        "cancel_requested_at": _time(job.cancel_requested_at, zone),
        "schedule": None if job.schedule_id is None else str(job.schedule_id),
        "scheduled_for": _time(job.scheduled_for, zone),
        "version": job.version,
        "links": job_links(job.pk),
    }


def serialize_job(job: Job) -> dict[str, Any]:
    return job_representation(job)


def event_representation(event: JobEvent) -> dict[str, Any]:
    """A history entry as every channel carries it (the fields of `JobEventSerializer`)."""
    actor = event.actor if event.actor_id else None  # no query for the system's events
    return {
        "seq": event.seq,
        "kind": str(event.kind),
        "status": str(event.status),
        "message": event.message,
        "data": event.data,
        "actor": actor.get_username() if actor is not None else None,
        "created_at": _time(event.created_at, timezone.get_current_timezone()),
    }


class JobEventSerializer(serializers.ModelSerializer):
    actor = serializers.SerializerMethodField()

    class Meta:
        model = JobEvent
        fields = ["seq", "kind", "status", "message", "data", "actor", "created_at"]
        read_only_fields = fields

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_actor(self, event: JobEvent) -> str | None:
        """The username who caused the event, or null for the system."""
        actor = event.actor if event.actor_id else None  # no query for the system's events
        return actor.get_username() if actor is not None else None

    def to_representation(self, instance: JobEvent) -> dict[str, Any]:
        return event_representation(instance)


# --- schedules ------------------------------------------------------------------------------


class ScheduleRunSerializer(serializers.Serializer):
    """One of a schedule's recent jobs: enough for a strip of outcomes."""

    id = serializers.UUIDField()
    status = serializers.CharField()
    scheduled_for = serializers.DateTimeField(allow_null=True, help_text="Its slot; null for a run now.")
    created_at = serializers.DateTimeField()


class ScheduleLinksSerializer(serializers.Serializer):
    self = serializers.CharField()
    pause = serializers.CharField()
    resume = serializers.CharField()
    run = serializers.CharField()
    jobs = serializers.CharField()


class ScheduleSerializer(serializers.Serializer):
    """A schedule as every channel carries it (`schedule_representation` builds it)."""

    id = serializers.UUIDField()
    name = serializers.CharField()
    owner = serializers.CharField()
    type = serializers.CharField()
    params = serializers.JSONField()
    priority = serializers.IntegerField()
    max_attempts = serializers.IntegerField(allow_null=True)
    timeout = serializers.IntegerField(allow_null=True)
    metadata = serializers.DictField(child=serializers.CharField())
    callback_url = serializers.CharField()
    webhook_events = serializers.ListField(child=serializers.CharField())
    cron = serializers.CharField(help_text="Five fields in `timezone`; empty when `interval` is set.")
    interval = serializers.IntegerField(allow_null=True, help_text="Seconds; null when `cron` is set.")
    timezone = serializers.CharField()
    description = serializers.CharField(
        help_text='In words: "At 09:00, Monday through Friday, Europe/Paris".'
    )
    enabled = serializers.BooleanField(
        help_text="False while paused, or disabled by the system (see disabled_reason)."
    )
    disabled_reason = serializers.CharField()
    start_at = serializers.DateTimeField(allow_null=True)
    end_at = serializers.DateTimeField(allow_null=True)
    overlap = serializers.CharField()
    catchup = serializers.CharField()
    next_fire_at = serializers.DateTimeField(allow_null=True)
    next_fire_times = serializers.ListField(child=serializers.DateTimeField())
    last_fired_at = serializers.DateTimeField(allow_null=True)
    last_skipped_at = serializers.DateTimeField(allow_null=True)
    managed = serializers.BooleanField(
        help_text="Declared in code: only pause and resume may change it here."
    )
    recent_jobs = ScheduleRunSerializer(many=True, help_text="Its last jobs, newest first.")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    version = serializers.IntegerField()
    links = ScheduleLinksSerializer()


def schedule_representation(schedule: Schedule, *, recent_jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """The schedule as REST, WebSocket and SSE carry it; `recent_jobs` from
    `selectors.schedule_recent_jobs`."""
    zone = timezone.get_current_timezone()
    base = reverse("api:schedule-detail", args=[schedule.pk])
    return {
        "id": str(schedule.pk),
        "name": schedule.name,
        "owner": str(schedule.owner.get_username()),
        "type": schedule.type,
        "params": schedule.params,
        "priority": schedule.priority,
        "max_attempts": schedule.max_attempts,
        "timeout": schedule.timeout,
        "metadata": schedule.metadata,
        "callback_url": schedule.callback_url,
        "webhook_events": list(schedule.webhook_events),
        "cron": schedule.cron,
        "interval": schedule.interval,
        "timezone": schedule.timezone,
        "description": recurrence.describe(
            cron=schedule.cron, interval=schedule.interval, zone_name=schedule.timezone
        ),
        "enabled": schedule.enabled,
        "disabled_reason": schedule.disabled_reason,
        "start_at": _time(schedule.start_at, zone),
        "end_at": _time(schedule.end_at, zone),
        "overlap": str(schedule.overlap),
        "catchup": str(schedule.catchup),
        "next_fire_at": _time(schedule.next_fire_at, zone),
        "next_fire_times": [
            _time(slot, zone)
            for slot in recurrence.next_fire_times(schedule, after=timezone.now(), count=SCHEDULE_NEXT_TIMES)
        ],
        "last_fired_at": _time(schedule.last_fired_at, zone),
        "last_skipped_at": _time(schedule.last_skipped_at, zone),
        "managed": schedule.managed,
        "recent_jobs": [
            {
                "id": str(job["id"]),
                "status": str(job["status"]),
                "scheduled_for": _time(job["scheduled_for"], zone),
                "created_at": _time(job["created_at"], zone),
            }
            for job in recent_jobs
        ],
        "created_at": _time(schedule.created_at, zone),
        "updated_at": _time(schedule.updated_at, zone),
        "version": schedule.version,
        "links": {
            "self": base,
            "pause": f"{base}pause/",
            "resume": f"{base}resume/",
            "run": f"{base}run/",
            "jobs": f"{base}jobs/",
        },
    }


def schedules_representation(schedules: list[Schedule]) -> list[dict[str, Any]]:
    """Several schedules as `schedule_representation` shows them, their recent jobs in one query."""
    recent = schedule_selectors.schedule_recent_jobs([schedule.pk for schedule in schedules])
    return [schedule_representation(schedule, recent_jobs=recent[schedule.pk]) for schedule in schedules]


class QueryParams(serializers.Serializer):
    """A query string checked like a body: `parse` returns the valid values or raises a
    ValidationError naming each parameter. Empty values are invalid, not absent."""

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> dict[str, Any]:
        # A plain dict (the last value of each parameter): DRF reads a QueryDict as a form and
        # would take an empty value for an absent one.
        params = cls(data=dict(query.items()))
        params.is_valid(raise_exception=True)
        data: dict[str, Any] = params.validated_data
        return data
