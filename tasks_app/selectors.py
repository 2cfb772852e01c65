"""Reads of job state, including who may see what. Views, consumers and the admin all ask here."""

from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Count, QuerySet
from django.db.models.functions import TruncMinute
from django.utils import timezone

from .models import Job, JobEvent, JobStatus, WebhookDelivery


def job_list_visible(user: AbstractBaseUser | AnonymousUser) -> QuerySet[Job]:
    """The jobs `user` may see: their own, or all of them for staff."""
    jobs = Job.objects.select_related("owner")
    if not user.is_authenticated:
        return jobs.none()
    if user.is_staff:
        return jobs
    return jobs.filter(owner=user)


def job_get_visible(user: AbstractBaseUser | AnonymousUser, job_id: Any) -> Job:
    """One job `user` may see; Job.DoesNotExist otherwise (another user's job looks absent)."""
    return job_list_visible(user).get(pk=job_id)


def job_events(job: Job, *, after: int | None = None) -> QuerySet[JobEvent]:
    events = JobEvent.objects.filter(job=job).select_related("actor").order_by("seq")
    if after is not None:
        events = events.filter(seq__gt=after)
    return events


def job_deliveries(job: Job) -> QuerySet[WebhookDelivery]:
    return (
        WebhookDelivery.objects.filter(job=job)
        .select_related("job")
        .prefetch_related("attempt_log")
        .order_by("n")
    )


def job_cancel_requested(job_id: Any) -> bool:
    return Job.objects.filter(pk=job_id, cancel_requested_at__isnull=False).exists()


def job_stats(user: AbstractBaseUser | AnonymousUser, *, minutes: int = 60) -> dict[str, Any]:
    """Counts per status and per type of the jobs `user` may see, and how many finished in each
    of the last `minutes` minutes (oldest first, zeros included)."""
    jobs = job_list_visible(user).order_by()
    by_status = {status: 0 for status in JobStatus.values}
    by_status.update(dict(jobs.values_list("status").annotate(n=Count("pk"))))
    by_type = dict(jobs.values_list("type").annotate(n=Count("pk")).order_by("type"))
    now = timezone.now().replace(second=0, microsecond=0)
    since = now - timedelta(minutes=minutes - 1)
    finished = dict(
        jobs.filter(finished_at__gte=since)
        .annotate(minute=TruncMinute("finished_at"))
        .values_list("minute")
        .annotate(n=Count("pk"))
    )
    # Keys may come back naive (SQLite) or aware (PostgreSQL); compare them as UTC.
    per_minute = {_as_utc(minute): n for minute, n in finished.items()}
    series = []
    for step in range(minutes):
        minute = since + timedelta(minutes=step)
        series.append({"minute": minute, "count": per_minute.get(_as_utc(minute), 0)})
    return {"by_status": by_status, "by_type": by_type, "finished_per_minute": series}


def _as_utc(value: datetime) -> datetime:
    if timezone.is_naive(value):
        return value.replace(tzinfo=dt_timezone.utc)
    return value.astimezone(dt_timezone.utc)
