"""Reads of job state, including who may see what. Views, consumers and the admin all ask here."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from .models import Job, JobEvent


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


def job_cancel_requested(job_id: Any) -> bool:
    return Job.objects.filter(pk=job_id, cancel_requested_at__isnull=False).exists()
