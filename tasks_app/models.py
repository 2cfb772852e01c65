"""Jobs and their history.

Only `tasks_app.services` writes these rows; everything else reads through `tasks_app.selectors`.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.timezone import now

from .conf import PRIORITY_MAX

# A job's id as callers hold it: the UUID, or its text from a URL or a message.
JobId = uuid.UUID | str


class JobStatus(models.TextChoices):
    SCHEDULED = "scheduled", "Scheduled"
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
# Active jobs can be cancelled; in the order a job goes through them.
ACTIVE_STATUSES = frozenset(set(JobStatus) - TERMINAL_STATUSES)
CANCELLABLE_STATUS_CHOICES = [status.value for status in JobStatus if status in ACTIVE_STATUSES]


class Job(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    type = models.CharField(max_length=100)
    params = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)
    progress_message = models.CharField(max_length=500, blank=True, default="")
    result = models.JSONField(null=True, blank=True)
    # {"type": "ValueError", "message": "..."}; the traceback is kept apart, it can be long.
    error = models.JSONField(null=True, blank=True)
    traceback = models.TextField(blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    # PRIORITY_MIN-PRIORITY_MAX (0-9), higher runs first when workers are busy.
    priority = models.PositiveSmallIntegerField(default=5)
    # No index of its own: job_owner_created_idx (owner, -created_at) serves every lookup by owner,
    # and each index is one more write per state change.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs", db_index=False
    )
    metadata = models.JSONField(default=dict, blank=True)
    run_at = models.DateTimeField(null=True, blank=True)
    timeout = models.PositiveIntegerField(null=True, blank=True, help_text="Seconds.")
    callback_url = models.URLField(max_length=2000, blank=True, default="")
    # Optional webhook events beyond the final one: "job.started", "job.progress".
    webhook_events = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Outbox marker: empty until the Celery message for the current attempt is published.
    dispatched_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=255, blank=True, default="")
    celery_task_id = models.CharField(max_length=255, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # +1 on every change; clients detect missed live updates by a gap, ETags derive from it.
    version = models.PositiveIntegerField(default=1)
    # The schedule that created it and the slot it fired for; a deleted schedule keeps its jobs.
    schedule = models.ForeignKey(
        "Schedule", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs", db_index=False
    )
    scheduled_for = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="job_owner_created_idx"),
            models.Index(fields=["status", "-created_at"], name="job_status_created_idx"),
            models.Index(fields=["-created_at"], name="job_created_idx"),
            models.Index(fields=["type", "-created_at"], name="job_type_created_idx"),
            # The sweep's three questions, each answered from a small partial index.
            models.Index(
                fields=["created_at"],
                name="job_undispatched_idx",
                condition=Q(status="queued", dispatched_at__isnull=True),
            ),
            models.Index(fields=["run_at"], name="job_scheduled_idx", condition=Q(status="scheduled")),
            models.Index(
                fields=["lease_expires_at"], name="job_running_lease_idx", condition=Q(status="running")
            ),
            # A schedule's newest jobs (its strip of outcomes), only for jobs a schedule made.
            models.Index(
                fields=["schedule", "-created_at"],
                name="job_schedule_created_idx",
                condition=Q(schedule__isnull=False),
            ),
            # Jobs finished in the last hour (the stats' chart), without reading the rest.
            models.Index(
                fields=["finished_at"], name="job_finished_idx", condition=Q(finished_at__isnull=False)
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(progress__lte=100), name="job_progress_lte_100"),
            models.CheckConstraint(condition=Q(priority__lte=PRIORITY_MAX), name="job_priority_lte_9"),
            models.CheckConstraint(condition=Q(status__in=JobStatus.values), name="job_status_valid"),
            # One job per schedule slot, however many sweepers fire it: the second INSERT fails.
            # Its index also serves a schedule's jobs, newest slot first.
            models.UniqueConstraint(
                fields=["schedule", "scheduled_for"],
                name="job_schedule_slot_unique",
                condition=Q(schedule__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} {str(self.id)[:8]} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class ScheduleOverlap(models.TextChoices):
    """What a slot does while the previous job of the schedule is still active."""

    SKIP = "skip", "Skip the slot"
    ALLOW = "allow", "Run alongside"
    CANCEL_PREVIOUS = "cancel_previous", "Cancel the previous job"


class ScheduleCatchup(models.TextChoices):
    """What happens to the slots missed while nothing fired (the sweep was down)."""

    LATEST = "latest", "Fire once for the missed slots"
    NONE = "none", "Skip the missed slots"
    ALL = "all", "Fire every missed slot (up to a bound)"


class Schedule(models.Model):
    """A recurring job: a cron expression (in `timezone`) or an interval, and the submission each
    slot makes. The sweep fires due schedules (`services.schedules`); the unique slot of
    `Job.schedule`/`Job.scheduled_for` makes each slot fire once. `managed` schedules are
    declared in code (`@job_type(schedules=...)`) and synced; only their pause is the operator's."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="schedules")
    type = models.CharField(max_length=100)
    params = models.JSONField(default=dict, blank=True)
    priority = models.PositiveSmallIntegerField(default=5)
    max_attempts = models.PositiveIntegerField(null=True, blank=True)
    timeout = models.PositiveIntegerField(null=True, blank=True, help_text="Seconds.")
    metadata = models.JSONField(default=dict, blank=True)
    callback_url = models.URLField(max_length=2000, blank=True, default="")
    webhook_events = models.JSONField(default=list, blank=True)
    cron = models.CharField(max_length=200, blank=True, default="", help_text="5 fields, in `timezone`.")
    interval = models.PositiveIntegerField(null=True, blank=True, help_text="Seconds between slots.")
    timezone = models.CharField(max_length=64, default="UTC")
    enabled = models.BooleanField(default=True)
    # Why it was disabled, when the system did it (its type vanished, its params no longer validate).
    disabled_reason = models.TextField(blank=True, default="")
    start_at = models.DateTimeField(null=True, blank=True)
    end_at = models.DateTimeField(null=True, blank=True)
    overlap = models.CharField(max_length=16, choices=ScheduleOverlap.choices, default=ScheduleOverlap.SKIP)
    catchup = models.CharField(max_length=16, choices=ScheduleCatchup.choices, default=ScheduleCatchup.LATEST)
    next_fire_at = models.DateTimeField(null=True, blank=True)
    last_fired_at = models.DateTimeField(null=True, blank=True)
    # The last slot skipped because the previous job was still active (overlap "skip").
    last_skipped_at = models.DateTimeField(null=True, blank=True)
    managed = models.BooleanField(default=False, help_text="Declared in code; only pause and resume here.")
    # Set by the services from the database's clock (an interval counts from it).
    created_at = models.DateTimeField(default=now)
    updated_at = models.DateTimeField(default=now)
    version = models.PositiveIntegerField(default=1)

    class Meta:
        ordering = ["name"]
        indexes = [
            # The sweep's question: which enabled schedules are due.
            models.Index(fields=["next_fire_at"], name="schedule_due_idx", condition=Q(enabled=True)),
        ]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="schedule_owner_name_unique"),
            # Exactly one of cron and interval.
            models.CheckConstraint(
                condition=(Q(cron="") & Q(interval__isnull=False)) | (~Q(cron="") & Q(interval__isnull=True)),
                name="schedule_cron_xor_interval",
            ),
            models.CheckConstraint(condition=Q(priority__lte=PRIORITY_MAX), name="schedule_priority_lte_9"),
        ]

    def __str__(self) -> str:
        return self.name


class JobEventKind(models.TextChoices):
    CREATED = "created", "Created"
    STATUS = "status", "Status changed"
    LOG = "log", "Log line"
    CANCEL_REQUESTED = "cancel_requested", "Cancel requested"
    RETRY = "retry", "Retry"


class JobEvent(models.Model):
    """One entry of a job's history. `seq` is the job's `version` after the change it records,
    so events are ordered per job and a client can ask for everything after a version."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    kind = models.CharField(max_length=32, choices=JobEventKind.choices)
    status = models.CharField(max_length=16, choices=JobStatus.choices)
    message = models.TextField(blank=True, default="")
    data = models.JSONField(default=dict, blank=True)
    # Who caused it: a user, or None for the system (workers, the sweep).
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job", "seq"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="jobevent_job_seq_unique")]

    def __str__(self) -> str:
        return f"{self.job_id} #{self.seq} {self.kind}"


class IdempotencyKey(models.Model):
    """A client's `Idempotency-Key` for one job submission, scoped to the user.

    The unique constraint, not a check-then-insert, is what makes 50 concurrent identical
    requests create one job: every loser's INSERT fails and it replays the winner's job.
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    # SHA-256 of the canonical request body: the same key with another body is refused (422).
    fingerprint = models.CharField(max_length=64)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "key"], name="idempotency_owner_key_unique")]

    def __str__(self) -> str:
        return f"{self.owner_id}:{self.key}"


class SigningSecret(models.Model):
    """A user's webhook signing secret (Standard Webhooks format, `whsec_` + base64). Rotating
    adds a new one; the previous stays valid until `expires_at`, and deliveries carry both
    signatures meanwhile."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    secret = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["owner", "-created_at"], name="secret_owner_created_idx")]

    def __str__(self) -> str:
        return f"signing secret of {self.owner_id} ({self.created_at:%Y-%m-%d})"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENDING = "sending", "Sending"
    SUCCEEDED = "succeeded", "Delivered"
    FAILED = "failed", "Failed"
    GONE = "gone", "Gone (410)"


class WebhookDelivery(models.Model):
    """One event for one job's callback_url: an outbox row, written in the same transaction as
    the job state it reports. Its `webhook_id` stays the same across every retry."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="deliveries")
    n = models.PositiveIntegerField(help_text="1, 2, ... per job.")
    event_type = models.CharField(max_length=40)
    webhook_id = models.CharField(max_length=64, unique=True)
    url = models.URLField(max_length=2000)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # A sender holds a delivery until then; a crashed sender's claim lapses.
    locked_until = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job", "n"]
        constraints = [models.UniqueConstraint(fields=["job", "n"], name="delivery_job_n_unique")]
        indexes = [
            models.Index(fields=["next_attempt_at"], name="delivery_due_idx", condition=Q(status="pending")),
            models.Index(fields=["status", "-created_at"], name="delivery_status_idx"),
        ]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"{self.event_type} #{self.n} of {self.job_id} ({self.status})"


class WebhookAttempt(models.Model):
    """One try at sending a delivery: when, what came back, how long it took."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log")
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True, default="")
    response_body = models.TextField(blank=True, default="", help_text="The first 1 KiB.")

    class Meta:
        ordering = ["delivery", "started_at"]

    def __str__(self) -> str:
        return f"attempt of {self.delivery_id} at {self.started_at:%Y-%m-%d %H:%M:%S} ({self.status_code})"


class JobCount(models.Model):
    """How many jobs each owner has of each type in each status: what `GET /api/stats/` and the
    dashboard's counters read, so they cost the same with a thousand jobs or a million.

    Kept by database triggers (migration 0006): every INSERT, status change and DELETE of a job
    appends a `JobCountChange`, and the sweep folds those into these rows. Reads add the changes
    not folded yet, so counts are exact at any moment. The triggers append rather than update
    a shared counter, so concurrent workers never wait on each other's counter rows.
    """

    # Not foreign keys: a user's deletion deletes their jobs, whose -1 changes refer to them.
    owner_id = models.BigIntegerField()
    type = models.CharField(max_length=100)
    status = models.CharField(max_length=16, choices=JobStatus.choices)
    n = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["owner_id", "type", "status"], name="jobcount_owner_type_status")
        ]

    def __str__(self) -> str:
        return f"{self.owner_id} {self.type} {self.status}: {self.n}"


class JobCountChange(models.Model):
    """+n or -n jobs of (owner, type, status), written by the triggers; folded into `JobCount`."""

    owner_id = models.BigIntegerField()
    type = models.CharField(max_length=100)
    status = models.CharField(max_length=16)
    delta = models.IntegerField()

    def __str__(self) -> str:
        return f"{self.owner_id} {self.type} {self.status} {self.delta:+d}"


class WorkerState(models.TextChoices):
    ONLINE = "online", "Online"
    LOST = "lost", "Lost"  # stopped answering: killed, or its machine is gone
    STOPPED = "stopped", "Stopped"  # shut down on purpose


class WorkerNode(models.Model):
    """A Celery worker (one node: a main process and its pool), as it last reported itself.
    Registered when it is ready, renewed by its heartbeat, marked stopped when it shuts down;
    one that stops renewing is `lost` (`selectors.worker_state`)."""

    name = models.CharField(max_length=255, unique=True, help_text="The Celery node name, e.g. jobs@host-a.")
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    queues = models.JSONField(default=list)
    concurrency = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "worker"

    def __str__(self) -> str:
        return self.name
