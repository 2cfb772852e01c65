"""Retention: finished jobs older than LONGRUN_RETENTION_DAYS are deleted with their history,
webhook deliveries and idempotency keys, in small batches, each its own short transaction, so
the table is never locked for long and the workers never wait. The job counters follow (the
count triggers record each deletion)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from ..conf import app_settings
from ..models import TERMINAL_STATUSES, IdempotencyKey, Job, JobEvent, WebhookAttempt, WebhookDelivery

# Jobs deleted per transaction: a few milliseconds of row locks each.
PURGE_BATCH = 500


@dataclass(frozen=True)
class Purged:
    jobs: int
    events: int
    deliveries: int


def jobs_purgeable(*, before: datetime) -> int:
    """How many finished jobs ended before `before` (what a purge would delete)."""
    return _expired(before).count()


def _expired(before: datetime) -> QuerySet[Job]:
    return Job.objects.filter(finished_at__lt=before, status__in=TERMINAL_STATUSES)


def jobs_purge(*, before: datetime, batches: int | None = None) -> Purged:
    """Delete finished jobs that ended before `before`, oldest first, PURGE_BATCH at a time;
    at most `batches` batches (None: until none is left)."""
    jobs = events = deliveries = 0
    done = 0
    while batches is None or done < batches:
        ids = list(_expired(before).order_by("finished_at").values_list("pk", flat=True)[:PURGE_BATCH])
        if not ids:
            break
        with transaction.atomic():
            # Children first: each is then one DELETE, not rows collected for a cascade.
            WebhookAttempt.objects.filter(delivery__job_id__in=ids).delete()
            deliveries += WebhookDelivery.objects.filter(job_id__in=ids).delete()[0]
            events += JobEvent.objects.filter(job_id__in=ids).delete()[0]
            IdempotencyKey.objects.filter(job_id__in=ids).delete()
            jobs += (
                Job.objects.filter(pk__in=ids, status__in=TERMINAL_STATUSES)
                .delete()[1]
                .get("tasks_app.Job", 0)
            )
        done += 1
    return Purged(jobs=jobs, events=events, deliveries=deliveries)


def jobs_purge_expired() -> int:
    """The sweep's part: one batch of jobs past LONGRUN_RETENTION_DAYS (0: keep for ever)."""
    days = app_settings.RETENTION_DAYS
    if not days:
        return 0
    return jobs_purge(before=timezone.now() - timedelta(days=days), batches=1).jobs
