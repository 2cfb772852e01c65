"""Shapes of jobs on the wire.

`JobSerializer` is the one representation of a job: the REST API, WebSocket and SSE messages and
webhook bodies all carry exactly its output. Links are root-relative so the same output serves
every channel without a request.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.urls import reverse
from django.utils import timezone
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


class StrictCharField(serializers.CharField):
    """A string field that refuses numbers instead of quietly turning them into strings."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """An integer field that refuses "5", 5.0 and true: JSON clients send numbers."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictUUIDField(serializers.UUIDField):
    """A UUID given as a string; DRF's own field also takes integers (and so `false`)."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str):
            self.fail("invalid", value=data)
        return super().to_internal_value(data)


class AwareDateTimeField(serializers.DateTimeField):
    """A date-time that must say its time zone; DRF would quietly read a naive one as UTC."""

    default_error_messages = {"naive": "Must include a time zone (for example 2030-01-01T12:00:00Z)."}

    def enforce_timezone(self, value):
        if timezone.is_naive(value):
            self.fail("naive")
        return super().enforce_timezone(value)


class RejectUnknownFieldsMixin:
    """Unknown fields are refused (400 naming them) rather than silently ignored."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))  # type: ignore[attr-defined]
            if unknown:
                raise serializers.ValidationError({key: ["Unknown field."] for key in unknown})
        return super().to_internal_value(data)  # type: ignore[misc]


class JobCreateSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    """The body of `POST /api/jobs/`. The params are checked against the type's JSON Schema by
    the services; the OpenAPI schema shows each type's params."""

    type = StrictCharField(max_length=100, help_text="A registered job type (see /api/job-types/).")
    params = serializers.DictField(
        required=False, default=dict, help_text="Validated against the type's schema."
    )
    priority = StrictIntegerField(
        min_value=0, max_value=9, required=False, default=5, help_text="0-9; higher runs first."
    )
    run_at = AwareDateTimeField(
        required=False,
        allow_null=True,
        default=None,
        help_text="ISO 8601 with a time zone. The job waits in status `scheduled` until then.",
    )
    timeout = StrictIntegerField(
        min_value=1,
        max_value=settings.LONGRUN["MAX_TIMEOUT"],
        required=False,
        allow_null=True,
        default=None,
        help_text="Seconds the job may run; the type's default when absent.",
    )
    max_attempts = StrictIntegerField(
        min_value=1,
        max_value=20,
        required=False,
        allow_null=True,
        default=None,
        help_text="Attempts before the job fails for good (retryable errors, lost workers).",
    )
    callback_url = serializers.URLField(
        max_length=2000,
        required=False,
        allow_blank=True,
        default="",
        help_text="http(s) URL told when the job ends (webhooks).",
    )
    webhook_events = serializers.ListField(
        child=serializers.ChoiceField(choices=["job.started", "job.progress"]),
        required=False,
        default=list,
        max_length=2,
        help_text="Extra webhook events besides the final one: job.started, job.progress (throttled).",
    )
    metadata = serializers.DictField(
        child=StrictCharField(max_length=500, allow_blank=True),
        required=False,
        default=dict,
        help_text="Up to 50 string keys (40 characters: letters, digits, '_', '-', '.') with string "
        "values (500 characters), returned as given and searchable with ?metadata=key:value.",
    )


class JobBulkCreateSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    jobs = serializers.ListField(child=JobCreateSerializer(), min_length=1, max_length=1000)


class JobBulkCreatedSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    jobs = JobSerializer(many=True)


class JobBulkCancelSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    """Which jobs to cancel: every given filter must match (at least one is required)."""

    ids = serializers.ListField(child=StrictUUIDField(), required=False, max_length=1000)
    status = serializers.ListField(
        child=serializers.ChoiceField(choices=["scheduled", "queued", "running"]),
        required=False,
        max_length=3,
    )
    type = StrictCharField(max_length=100, required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs:
            raise serializers.ValidationError("Give at least one of ids, status, type.")
        return attrs


class JobBulkCancelResultSerializer(serializers.Serializer):
    matched = serializers.IntegerField(help_text="Active jobs that matched the filter.")
    cancelled = serializers.IntegerField(help_text="Cancelled at once (they had not started).")
    cancel_requested = serializers.IntegerField(help_text="Running: asked to stop.")
    already_finished = serializers.IntegerField(help_text="Ended before the cancel reached them.")


class StatsMinuteSerializer(serializers.Serializer):
    minute = serializers.DateTimeField()
    count = serializers.IntegerField()


class StatsSerializer(serializers.Serializer):
    by_status = serializers.DictField(child=serializers.IntegerField())
    by_type = serializers.DictField(child=serializers.IntegerField())
    finished_per_minute = StatsMinuteSerializer(many=True)


class ProblemFieldErrorSerializer(serializers.Serializer):
    field = serializers.CharField(
        help_text="Dotted path into the body, or a query parameter; empty for the whole request."
    )
    message = serializers.CharField()
    code = serializers.CharField()


class ProblemSerializer(serializers.Serializer):
    """RFC 9457 problem details: the body of every 4xx answer."""

    type = serializers.CharField()
    title = serializers.CharField()
    status = serializers.IntegerField()
    code = serializers.CharField()
    detail = serializers.CharField()
    errors = ProblemFieldErrorSerializer(many=True, required=False)


class JobTypeSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    params_schema = serializers.JSONField()


class WebhookAttemptSerializer(serializers.Serializer):
    started_at = serializers.DateTimeField()
    duration_ms = serializers.IntegerField()
    status_code = serializers.IntegerField(allow_null=True)
    error = serializers.CharField()
    response_body = serializers.CharField(help_text="The first 1 KiB of the receiver's answer.")


class WebhookDeliverySerializer(serializers.Serializer):
    n = serializers.IntegerField(help_text="1, 2, ... per job; use it to redeliver.")
    event_type = serializers.CharField()
    webhook_id = serializers.CharField(help_text="The `webhook-id` header; the same on every retry.")
    url = serializers.CharField()
    status = serializers.CharField(
        help_text="pending, sending, succeeded, failed or gone (the receiver answered 410)."
    )
    attempts = serializers.IntegerField()
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    last_status_code = serializers.IntegerField(allow_null=True)
    last_error = serializers.CharField()
    created_at = serializers.DateTimeField()
    delivered_at = serializers.DateTimeField(allow_null=True)
    attempt_log = WebhookAttemptSerializer(many=True, help_text="Every attempt, oldest first.")


class SigningSecretSerializer(serializers.Serializer):
    secret = serializers.CharField(help_text="whsec_... (Standard Webhooks); sign-verification key.")
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(
        allow_null=True, help_text="Set on a rotated-out secret: valid until then."
    )


class SigningSecretsSerializer(serializers.Serializer):
    secrets = SigningSecretSerializer(
        many=True, help_text="Valid secrets, newest first; deliveries are signed with each."
    )
