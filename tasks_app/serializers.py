"""Shapes of jobs on the wire.

`JobSerializer` is the one representation of a job: the REST API, WebSocket and SSE messages and
webhook bodies all carry exactly its output. Links are root-relative so the same output serves
every channel without a request.
"""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from .models import Job, JobEvent


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
    result = serializers.JSONField(allow_null=True, read_only=True)
    params = serializers.JSONField(read_only=True)
    metadata = serializers.JSONField(read_only=True)

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


def job_links(job_id: Any) -> dict[str, str]:
    return {
        "self": reverse("api:job-detail", args=[job_id]),
        "cancel": reverse("api:job-cancel", args=[job_id]),
        "retry": reverse("api:job-retry", args=[job_id]),
        "events": reverse("api:job-events", args=[job_id]),
    }


def serialize_job(job: Job) -> dict[str, Any]:
    return JobSerializer(job).data


class JobEventSerializer(serializers.ModelSerializer):
    actor = serializers.SerializerMethodField()

    class Meta:
        model = JobEvent
        fields = ["seq", "kind", "status", "message", "data", "actor", "created_at"]
        read_only_fields = fields

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_actor(self, event: JobEvent) -> str | None:
        """The username who caused the event, or null for the system."""
        return event.actor.get_username() if event.actor_id else None


class JobCreateSerializer(serializers.Serializer):
    """The body of `POST /api/jobs/`. Unknown fields are refused rather than ignored."""

    type = serializers.CharField(max_length=100, help_text="A registered job type (see /api/job-types/).")
    params = serializers.DictField(required=False, default=dict, help_text="Validated against the type's schema.")
    priority = serializers.IntegerField(min_value=0, max_value=9, required=False, default=5)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({key: ["Unknown field."] for key in unknown})
        return super().to_internal_value(data)


class JobTypeSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    params_schema = serializers.JSONField()

