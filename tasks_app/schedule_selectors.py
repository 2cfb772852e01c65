"""Reads of schedules: who sees which, and each one's recent jobs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from django.db.models import F, QuerySet, Window
from django.db.models.functions import RowNumber

from .conf import SCHEDULE_RECENT_JOBS
from .models import Job, Schedule
from .selectors import changes_every_job, sees_every_job

if TYPE_CHECKING:
    from .selectors import Viewer


def schedule_list_visible(user: Viewer) -> QuerySet[Schedule]:
    """Staff who may view every job see every schedule; others their own."""
    schedules = Schedule.objects.select_related("owner").order_by("name", "pk")
    if sees_every_job(user):
        return schedules
    return schedules.filter(owner=user) if user.is_authenticated else schedules.none()


def schedule_recent_jobs(
    schedule_ids: Sequence[Any], *, limit: int = SCHEDULE_RECENT_JOBS
) -> dict[Any, list[dict[str, Any]]]:
    """The last `limit` jobs of each schedule, newest first, in one query. One schedule (a firing's
    live message) reads just its newest rows from job_schedule_created_idx; several (a page of
    the list) rank each one's jobs in a window."""
    columns = ("schedule_id", "id", "status", "scheduled_for", "created_at")
    jobs = Job.objects.filter(schedule_id__in=list(schedule_ids))
    if len(schedule_ids) == 1:
        rows = jobs.order_by("-created_at").values(*columns)[:limit]
    else:
        rank = Window(RowNumber(), partition_by=[F("schedule_id")], order_by=F("created_at").desc())
        rows = (
            jobs.annotate(rank=rank)
            .filter(rank__lte=limit)
            .order_by("schedule_id", "-created_at")
            .values(*columns)
        )
    recent: dict[Any, list[dict[str, Any]]] = {schedule_id: [] for schedule_id in schedule_ids}
    for row in rows:
        recent.setdefault(row.pop("schedule_id"), []).append(row)
    return recent


def may_change_schedule(user: Viewer, schedule: Schedule) -> bool:
    """Its owner, and staff who may change every job, may change, pause or run a schedule."""
    return schedule.owner_id == getattr(user, "pk", None) or changes_every_job(user)
