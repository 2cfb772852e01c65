"""Request bodies and the API's answers other than the job itself (which is
`tasks_app.serializers.JobSerializer`, shared with every live channel). Each limit comes from
`tasks_app.conf`, read when a serializer is built, so the OpenAPI schema always shows it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone
from rest_framework import serializers

from ..conf import (
    BULK_LIMIT,
    DEFAULT_PRIORITY,
    MAX_ATTEMPTS_LIMIT,
    METADATA_KEY_MAX,
    METADATA_MAX_KEYS,
    METADATA_VALUE_MAX,
    OPTIONAL_WEBHOOK_EVENTS,
    PRIORITY_MAX,
    PRIORITY_MIN,
    app_settings,
)
from ..models import CANCELLABLE_STATUS_CHOICES, ScheduleCatchup, ScheduleOverlap, WorkerState
from ..serializers import JobSerializer, QueryParams


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

    def enforce_timezone(self, value: datetime) -> datetime:
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
        min_value=PRIORITY_MIN,
        max_value=PRIORITY_MAX,
        required=False,
        default=DEFAULT_PRIORITY,
        help_text=f"{PRIORITY_MIN}-{PRIORITY_MAX}; higher runs first.",
    )
    run_at = AwareDateTimeField(
        required=False,
        allow_null=True,
        default=None,
        help_text="ISO 8601 with a time zone. The job waits in status `scheduled` until then.",
    )
    max_attempts = StrictIntegerField(
        min_value=1,
        max_value=MAX_ATTEMPTS_LIMIT,
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
        child=serializers.ChoiceField(choices=list(OPTIONAL_WEBHOOK_EVENTS)),
        required=False,
        default=list,
        max_length=len(OPTIONAL_WEBHOOK_EVENTS),
        help_text="Extra webhook events besides the final one: job.started, job.progress (throttled).",
    )
    metadata = serializers.DictField(
        child=StrictCharField(max_length=METADATA_VALUE_MAX, allow_blank=True),
        required=False,
        default=dict,
        help_text=f"Up to {METADATA_MAX_KEYS} string keys ({METADATA_KEY_MAX} characters: letters, digits, "
        f"'_', '-', '.') with string values ({METADATA_VALUE_MAX} characters), returned as given and "
        "searchable with ?metadata=key:value.",
    )

    def get_fields(self) -> dict[str, serializers.Field]:
        # `timeout`'s bound is a setting: read when the serializer is built, not at import.
        timeout = StrictIntegerField(
            min_value=1,
            max_value=app_settings.MAX_TIMEOUT,
            required=False,
            allow_null=True,
            default=None,
            help_text="Seconds the job may run; the type's default when absent.",
        )
        fields: dict[str, serializers.Field] = {}
        for name, field in super().get_fields().items():
            fields[name] = field
            if name == "run_at":
                fields["timeout"] = timeout
        fields.setdefault("timeout", timeout)
        return fields


class ScheduleWriteSerializer(JobCreateSerializer):
    """The body of `POST /api/schedules/` (and of PATCH, where every field is optional): when it
    fires, and the job each slot submits (the fields of `POST /api/jobs/` but `run_at`). The
    expression, zone and params are checked by the services, which name the field at fault."""

    run_at = None  # type: ignore[assignment]  # a schedule's slots say when (DRF drops the field)
    name = StrictCharField(max_length=200, help_text="Unique among your schedules.")
    cron = StrictCharField(
        max_length=200,
        required=False,
        allow_blank=True,
        default="",
        help_text="Five fields (minute hour day-of-month month day-of-week) in `timezone`, e.g. 0 9 * * 1-5.",
    )
    interval = StrictIntegerField(
        min_value=1,
        required=False,
        allow_null=True,
        default=None,
        help_text="Seconds between slots, instead of cron.",
    )
    timezone = StrictCharField(
        max_length=64, required=False, default="UTC", help_text="An IANA name, e.g. Europe/Paris."
    )
    start_at = AwareDateTimeField(
        required=False, allow_null=True, default=None, help_text="No slot before it."
    )
    end_at = AwareDateTimeField(required=False, allow_null=True, default=None, help_text="No slot after it.")
    overlap = serializers.ChoiceField(
        choices=ScheduleOverlap.choices,
        required=False,
        default=ScheduleOverlap.SKIP,
        help_text="While the previous job is active: skip the slot, allow another, or cancel the previous.",
    )
    catchup = serializers.ChoiceField(
        choices=ScheduleCatchup.choices,
        required=False,
        default=ScheduleCatchup.LATEST,
        help_text="Slots missed while nothing fired: fire the latest once, none, or all (up to 100).",
    )


class JobBulkCreateSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    jobs = serializers.ListField(child=JobCreateSerializer(), min_length=1, max_length=BULK_LIMIT)


class JobBulkCreatedSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    jobs = JobSerializer(many=True)


class JobBulkCancelSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    """Which jobs to cancel: every given filter must match (at least one is required)."""

    ids = serializers.ListField(child=StrictUUIDField(), required=False, max_length=BULK_LIMIT)
    status = serializers.ListField(
        child=serializers.ChoiceField(choices=CANCELLABLE_STATUS_CHOICES),
        required=False,
        max_length=len(CANCELLABLE_STATUS_CHOICES),
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
    count = serializers.IntegerField(help_text="Jobs that ended in this minute, whatever their outcome.")
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField()
    cancelled = serializers.IntegerField()


class QueueDepthMinuteSerializer(serializers.Serializer):
    minute = serializers.DateTimeField()
    queued = serializers.IntegerField(
        allow_null=True, help_text="Jobs waiting for a worker; null: no sample."
    )
    running = serializers.IntegerField(allow_null=True, help_text="Jobs running; null: no sample.")


class StatsSerializer(serializers.Serializer):
    by_status = serializers.DictField(child=serializers.IntegerField())
    by_type = serializers.DictField(child=serializers.IntegerField())
    finished_per_minute = StatsMinuteSerializer(many=True)
    queue_depth_per_minute = QueueDepthMinuteSerializer(
        many=True,
        help_text="Every queue's jobs queued and running, sampled by the sweep once a minute over the "
        "last hour (oldest first). Staff who may view every job only; empty for others.",
    )
    waits = serializers.DictField(
        child=serializers.CharField(),
        help_text="Per job type, why a queued job of that type waits now: no live worker reads its "
        "queue, every worker slot of its queue is busy, or a worker is about to take it.",
    )


class WorkerSerializer(serializers.Serializer):
    """A Celery worker as it last reported itself (`selectors.workers_list`)."""

    name = serializers.CharField(help_text="The Celery node name, e.g. jobs@host-a.")
    host = serializers.CharField()
    pid = serializers.IntegerField()
    queues = serializers.ListField(child=serializers.CharField())
    concurrency = serializers.IntegerField()
    state = serializers.ChoiceField(
        choices=WorkerState.choices,
        help_text="online; lost: silent for LONGRUN_WORKER_LOST_AFTER seconds; stopped: shut down.",
    )
    running = serializers.ListField(child=serializers.UUIDField(), help_text="Ids of the jobs it runs.")
    started_at = serializers.DateTimeField()
    last_seen_at = serializers.DateTimeField()
    stopped_at = serializers.DateTimeField(allow_null=True)


class QueueSerializer(serializers.Serializer):
    """One queue and its work (`selectors.queues_overview`)."""

    queue = serializers.CharField()
    job_types = serializers.ListField(child=serializers.CharField(), help_text="Job types it carries.")
    queued = serializers.IntegerField()
    scheduled = serializers.IntegerField()
    running = serializers.IntegerField()
    oldest_queued_seconds = serializers.FloatField(
        allow_null=True, help_text="How long the oldest queued job has waited; null when none waits."
    )
    finished_last_hour = serializers.IntegerField()
    consumers = serializers.IntegerField(help_text="Live workers reading it; 0: its work waits.")


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
    # Shadows Serializer.errors; this serializer only describes answers in the schema.
    errors = ProblemFieldErrorSerializer(many=True, required=False)  # type: ignore[assignment]


class JobTypeSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    params_schema = serializers.JSONField()
    queue = serializers.CharField(help_text="The Celery queue its jobs go to; a worker must read it.")


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


class JobEventsParams(QueryParams):
    """The query string of `GET /api/jobs/{id}/events/`."""

    after = serializers.IntegerField(min_value=0, required=False, help_text="Only events with a larger seq.")


class SchedulePreviewQuery(QueryParams):
    """`GET /api/schedules/preview/`: a schedule's timing, to see when it would fire."""

    cron = StrictCharField(max_length=200, required=False, allow_blank=True, default="")
    interval = serializers.IntegerField(min_value=1, required=False, allow_null=True, default=None)
    timezone = StrictCharField(max_length=64, required=False, default="UTC")
    start_at = AwareDateTimeField(required=False, allow_null=True, default=None)
    end_at = AwareDateTimeField(required=False, allow_null=True, default=None)


class SchedulePreviewSerializer(serializers.Serializer):
    description = serializers.CharField()
    next_fire_times = serializers.ListField(child=serializers.DateTimeField())


class EventStreamFrameSerializer(serializers.Serializer):
    """One Server-Sent Events frame as a client's parser gives it: `data` is JSON text."""

    event = serializers.CharField(required=False, help_text="job, history, snapshot or schedule.")
    # A field named like Serializer.data: DRF takes declared fields off the class, so no clash.
    data = serializers.CharField(help_text="The message, as JSON text.")  # type: ignore[assignment]
    id = serializers.CharField(required=False, help_text="What to send back as Last-Event-ID.")
    retry = serializers.IntegerField(required=False, help_text="Milliseconds to wait before reconnecting.")
