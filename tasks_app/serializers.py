"""The one representation of a job, and of its history entries.

`JobSerializer` is what the REST API, WebSocket and SSE messages and webhook bodies all carry.
Links are root-relative so the same output serves every channel without a request. Request
bodies and the API's other answers are in `api/serializers.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from .models import Job, JobEvent, JobId


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
            "version",
            "links",
        ]
        read_only_fields = fields

    @extend_schema_field(JobLinksSerializer)
    def get_links(self, job: Job) -> dict[str, str]:
        return job_links(job.pk)


def job_links(job_id: JobId) -> dict[str, str]:
    return {
        "self": reverse("api:job-detail", args=[job_id]),
        "cancel": reverse("api:job-cancel", args=[job_id]),
        "retry": reverse("api:job-retry", args=[job_id]),
        "events": reverse("api:job-events", args=[job_id]),
    }


def serialize_job(job: Job) -> dict[str, Any]:
    data: dict[str, Any] = JobSerializer(job).data
    return data


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
