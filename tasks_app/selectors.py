"""Reads of job state, including who may see what. Views, consumers and the admin all ask here."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import TYPE_CHECKING, Any, TypeAlias

from django.db import connections
from django.db.models import (
    CharField,
    Count,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    TextField,
    Value,
)
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce, Concat, Replace, TruncMinute
from django.utils import timezone

from .conf import LONGRUN_QUEUES, app_settings
from .models import (
    ACTIVE_STATUSES,
    Job,
    JobCount,
    JobCountChange,
    JobEvent,
    JobId,
    JobStatus,
    WebhookDelivery,
    WorkerNode,
    WorkerState,
)
from .registry import all_job_types, job_queue_filter, job_queues, queue_of

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

    # Who is asking: what they may see depends on it.
    Viewer: TypeAlias = User | AnonymousUser


def sees_every_job(user: Viewer) -> bool:
    """Staff with Django's permission to view jobs (or to change them) see everyone's, as in the
    admin; everyone else sees their own."""
    return bool(
        user.is_authenticated
        and user.is_staff
        and (user.has_perm("tasks_app.view_job") or user.has_perm("tasks_app.change_job"))
    )


def changes_every_job(user: Viewer) -> bool:
    """Staff with the permission to change jobs may cancel or retry anyone's, as in the admin;
    everyone may cancel and retry their own."""
    return bool(user.is_authenticated and user.is_staff and user.has_perm("tasks_app.change_job"))


def may_change_job(user: Viewer, job: Job) -> bool:
    """Whether `user` may cancel, retry or redeliver `job` (one they can already see)."""
    return bool(user.is_authenticated and (job.owner_id == user.pk or changes_every_job(user)))


def job_list_visible(user: Viewer) -> QuerySet[Job]:
    """The jobs `user` may see: their own, or all of them (`sees_every_job`)."""
    jobs = Job.objects.select_related("owner")
    if not user.is_authenticated:
        return jobs.none()
    if sees_every_job(user):
        return jobs
    return jobs.filter(owner_id=user.pk)


def job_list_changeable(user: Viewer) -> QuerySet[Job]:
    """The jobs `user` may cancel, retry or redeliver: their own, or all (`changes_every_job`)."""
    jobs = Job.objects.select_related("owner")
    if not user.is_authenticated:
        return jobs.none()
    if changes_every_job(user):
        return jobs
    return jobs.filter(owner_id=user.pk)


def job_get_visible(user: Viewer, job_id: JobId) -> Job:
    """One job `user` may see; Job.DoesNotExist otherwise (another user's job looks absent)."""
    return job_list_visible(user).get(pk=job_id)


def job_version_visible(user: Viewer, job_id: JobId) -> int | None:
    """The current version of a job `user` may see, or None."""
    version: int | None = job_list_visible(user).filter(pk=job_id).values_list("version", flat=True).first()
    return version


def job_list_recent(user: Viewer, *, mine: bool, limit: int) -> list[Job]:
    """The newest `limit` jobs `user` may see (only their own with `mine`), newest first."""
    jobs = job_list_visible(user)
    if mine:
        jobs = jobs.filter(owner_id=user.pk)
    return list(jobs.order_by("-created_at", "-id")[:limit])


def job_list_filtered(
    user: Viewer, *, status: str = "", job_type: str = "", id_prefix: str = ""
) -> QuerySet[Job]:
    """The jobs `user` may see, newest first, narrowed by status, type and the start of the id
    (with or without dashes, any case). The prefix is matched in the database, so it finds a
    job however old it is."""
    jobs = job_list_visible(user).order_by("-created_at", "-id")
    if status:
        jobs = jobs.filter(status=status)
    if job_type:
        jobs = jobs.filter(type=job_type)
    if id_prefix:
        jobs = jobs_with_id_prefix(jobs, id_prefix)
    return jobs


def jobs_with_id_prefix(jobs: QuerySet[Job], id_prefix: str) -> QuerySet[Job]:
    """Jobs whose id starts with `id_prefix` (hex digits, with or without dashes, any case). On
    PostgreSQL an id range the primary key answers; elsewhere (SQLite stores the 32 digits as
    text) a text match."""
    prefix = id_prefix.lower().replace("-", "")
    if not prefix or not all(c in "0123456789abcdef" for c in prefix) or len(prefix) > 32:
        return jobs.none()
    if connections[jobs.db].vendor == "postgresql":
        low = uuid.UUID(prefix.ljust(32, "0"))
        high = uuid.UUID(prefix.ljust(32, "f"))
        return jobs.filter(pk__gte=low, pk__lte=high)
    hex_id = Replace(Cast("id", output_field=CharField()), Value("-"), Value(""))
    return jobs.annotate(_hex_id=hex_id).filter(_hex_id__startswith=prefix)


def job_list_cancellable(
    user: Viewer,
    *,
    ids: Sequence[JobId] | None = None,
    statuses: list[str] | None = None,
    job_type: str | None = None,
    limit: int,
) -> list[JobId]:
    """Ids of the active jobs `user` may see that match every given filter, oldest first, at
    most `limit` (a bulk cancel)."""
    jobs = job_list_changeable(user).filter(status__in=ACTIVE_STATUSES)
    if ids is not None:
        jobs = jobs.filter(pk__in=ids)
    if statuses is not None:
        jobs = jobs.filter(status__in=statuses)
    if job_type is not None:
        jobs = jobs.filter(type=job_type)
    return list(jobs.order_by("created_at").values_list("pk", flat=True)[:limit])


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


def job_type_last_submitted(user: Viewer) -> str | None:
    """The type of the newest job `user` owns, if any."""
    if not user.is_authenticated:
        return None
    return Job.objects.filter(owner=user).order_by("-created_at").values_list("type", flat=True).first()


def job_cancel_requested(job_id: JobId) -> bool:
    return Job.objects.filter(pk=job_id, cancel_requested_at__isnull=False).exists()


def job_counts(user: Viewer) -> dict[tuple[str, str], int]:
    """How many jobs `user` may see, per (type, status) (`job_totals`)."""
    if not user.is_authenticated:
        return {}
    return job_totals(owner_id=None if sees_every_job(user) else user.pk)


def job_totals(*, owner_id: int | None = None) -> dict[tuple[str, str], int]:
    """How many jobs there are, per (type, status), of one owner or of everyone: the counters
    and the changes not folded into them yet, read in one statement (one snapshot), so the sum
    is exact."""
    counts = JobCount.objects.values("type", "status").annotate(total=Sum("n")).order_by()
    changes = JobCountChange.objects.values("type", "status").annotate(total=Sum("delta")).order_by()
    if owner_id is not None:
        counts, changes = counts.filter(owner_id=owner_id), changes.filter(owner_id=owner_id)
    totals: dict[tuple[str, str], int] = {}
    for row in counts.union(changes, all=True):
        key = (row["type"], row["status"])
        totals[key] = totals.get(key, 0) + row["total"]
    return {key: n for key, n in totals.items() if n}


# The outcomes the chart stacks, in its order (bottom first).
FINISHED_OUTCOMES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


def job_stats(user: Viewer, *, minutes: int = 60) -> dict[str, Any]:
    """Counts per status and per type of the jobs `user` may see, and how many finished in each
    of the last `minutes` minutes, in all and per outcome (oldest first, zeros included). The counts come from
    `job_counts` (a few rows whatever the number of jobs); the chart reads only the jobs that
    finished in the window."""
    jobs = job_list_visible(user).order_by()
    by_status = {status: 0 for status in JobStatus.values}
    by_type: dict[str, int] = {}
    for (job_type, status), n in sorted(job_counts(user).items()):
        by_status[status] = by_status.get(status, 0) + n
        by_type[job_type] = by_type.get(job_type, 0) + n
    now = timezone.now().replace(second=0, microsecond=0)
    since = now - timedelta(minutes=minutes - 1)
    finished = (
        jobs.filter(finished_at__gte=since)
        .annotate(minute=TruncMinute("finished_at"))
        .values_list("minute", "status")
        .annotate(n=Count("*"))
    )
    # Keys may come back naive (SQLite) or aware (PostgreSQL); compare them as UTC.
    per_minute: dict[datetime, dict[str, int]] = {}
    for minute, status, n in finished:
        per_minute.setdefault(_as_utc(minute), {})[status] = n
    series = []
    for step in range(minutes):
        minute = since + timedelta(minutes=step)
        by_outcome = per_minute.get(_as_utc(minute), {})
        outcomes: dict[str, int] = {str(status): by_outcome.get(status, 0) for status in FINISHED_OUTCOMES}
        point: dict[str, Any] = {"minute": minute, "count": sum(outcomes.values()), **outcomes}
        series.append(point)
    return {"by_status": by_status, "by_type": by_type, "finished_per_minute": series}


def _as_utc(value: datetime) -> datetime:
    if timezone.is_naive(value):
        return value.replace(tzinfo=dt_timezone.utc)
    return value.astimezone(dt_timezone.utc)


def jobs_with_metadata(jobs: QuerySet[Job], key: str, wanted: str) -> QuerySet[Job]:
    """Jobs whose metadata has `key` with the string `wanted`. On PostgreSQL a containment test
    the GIN index answers; elsewhere, the key read literally ("a__b" is one key, not a path)."""
    if connections[jobs.db].vendor == "postgresql":
        return jobs.filter(metadata__contains={key: wanted})
    value = Cast(KeyTextTransform(key, "metadata"), output_field=TextField())
    return jobs.annotate(_metadata_value=value).filter(_metadata_value=wanted)


# --- workers and queues ---------------------------------------------------------------------


def worker_state(node: WorkerNode, *, now: datetime | None = None) -> WorkerState:
    """stopped (shut down on purpose), lost (silent for WORKER_LOST_AFTER) or online."""
    if node.stopped_at is not None:
        return WorkerState.STOPPED
    silent = ((now or timezone.now()) - node.last_seen_at).total_seconds()
    return WorkerState.LOST if silent > app_settings.WORKER_LOST_AFTER else WorkerState.ONLINE


def workers_list() -> list[dict[str, Any]]:
    """Every known worker with its state and the jobs it is running."""
    now = timezone.now()
    running = running_jobs_by_node()
    return [
        {
            "name": node.name,
            "host": node.host,
            "pid": node.pid,
            "queues": node.queues,
            "concurrency": node.concurrency,
            "state": worker_state(node, now=now).value,
            "running": sorted(running.get(node.name, [])),
            "started_at": node.started_at,
            "last_seen_at": node.last_seen_at,
            "stopped_at": node.stopped_at,
        }
        for node in WorkerNode.objects.all()
    ]


def running_jobs_by_node() -> dict[str, list[str]]:
    """The ids of the running jobs, by worker node name (a running job's `worker` is
    "<node name>:<pid>")."""
    running: dict[str, list[str]] = {}
    for job_id, worker in Job.objects.filter(status=JobStatus.RUNNING).values_list("pk", "worker"):
        running.setdefault(worker.rpartition(":")[0], []).append(str(job_id))
    return running


def workers_with_running_counts() -> QuerySet[WorkerNode]:
    """Workers annotated with `running_jobs`, counted in the same query (the admin's list)."""
    running = (
        Job.objects.filter(status=JobStatus.RUNNING, worker__startswith=Concat(OuterRef("name"), Value(":")))
        .order_by()
        .values("status")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return WorkerNode.objects.annotate(running_jobs=Coalesce(Subquery(running), 0))


def required_queues() -> list[str]:
    """Every queue that needs a live worker: Longrun's own and each one a job type names."""
    return list(dict.fromkeys([*LONGRUN_QUEUES, *job_queues()]))


def queue_consumers(*, registered_since: datetime | None = None) -> dict[str, int]:
    """For every queue Longrun needs and every queue an online worker reads: how many online
    workers read it (0: nobody serves it); only workers registered since then, if given."""
    consumers = dict.fromkeys(required_queues(), 0)
    for node in _online_workers(registered_since=registered_since):
        for queue in node.queues:
            consumers[queue] = consumers.get(queue, 0) + 1
    return consumers


def _online_workers(*, registered_since: datetime | None = None) -> list[WorkerNode]:
    now = timezone.now()
    nodes = WorkerNode.objects.filter(stopped_at__isnull=True)
    if registered_since is not None:
        nodes = nodes.filter(started_at__gte=registered_since)
    return [node for node in nodes if worker_state(node, now=now) == WorkerState.ONLINE]


def unserved_queues() -> list[str]:
    """Queues that no live worker reads: their work waits for ever."""
    return [queue for queue, count in queue_consumers().items() if not count]


def queues_overview() -> list[dict[str, Any]]:
    """Per queue Longrun uses: the job types it carries, how many of its jobs are queued,
    scheduled and running, how long the oldest queued one has waited, how many finished in the
    last hour, and how many live workers read it. The counts come from the job counters (a few
    rows per type at any table size); the oldest and the last hour from their indexes."""
    now = timezone.now()
    consumers = queue_consumers()
    overview: dict[str, dict[str, Any]] = {
        queue: {
            "queue": queue,
            "job_types": [],
            "queued": 0,
            "scheduled": 0,
            "running": 0,
            "oldest_queued_seconds": None,
            "finished_last_hour": 0,
            "consumers": count,
        }
        for queue, count in consumers.items()
    }
    for job_type in all_job_types():
        overview[job_type.queue]["job_types"].append(job_type.name)
    for (type_name, status), n in job_totals().items():
        if status in ("queued", "scheduled", "running"):
            overview[queue_of(type_name)][status] += n
    last_hour = Job.objects.filter(finished_at__gte=now - timedelta(hours=1))
    finished = last_hour.values("type").annotate(n=Count("pk")).order_by()
    for row in finished:
        overview[queue_of(row["type"])]["finished_last_hour"] += row["n"]
    for queue in job_queues():
        oldest = (
            Job.objects.filter(job_queue_filter(queue), status=JobStatus.QUEUED)
            .order_by("created_at")
            .values_list("created_at", flat=True)
            .first()
        )
        if oldest is not None:
            overview[queue]["oldest_queued_seconds"] = round((now - oldest).total_seconds(), 1)
    # The queues that carry jobs first, then Longrun's own and any other a worker reads.
    ordered = dict.fromkeys([*job_queues(), *sorted(overview)])
    return [overview[queue] for queue in ordered]


def queue_waits() -> dict[str, tuple[str, str]]:
    """Why a queued job of each queue waits, as (kind, sentence): "no_worker" (no live worker
    reads the queue), "busy" (every worker slot of it runs a job) or "free" (a worker is about to
    take it). Two queries whatever the number of queues."""
    online = _online_workers()
    running: dict[str, int] = {}
    for job_type, n in (
        Job.objects.filter(status=JobStatus.RUNNING).values_list("type").annotate(n=Count("*")).order_by()
    ):
        running[queue_of(job_type)] = running.get(queue_of(job_type), 0) + n
    waits = {}
    for queue in job_queues():
        slots = sum(node.concurrency for node in online if queue in node.queues)
        if not any(queue in node.queues for node in online):
            waits[queue] = ("no_worker", f"No live worker reads queue {queue}: it waits until one starts")
        elif running.get(queue, 0) >= slots:
            waits[queue] = ("busy", f"All {slots} worker slots of queue {queue} are busy")
        else:
            waits[queue] = ("free", "Waiting for a worker to take it")
    return waits


def job_type_waits() -> dict[str, str]:
    """`queue_waits`' sentence for each registered job type (the dashboard's queued rows)."""
    waits = queue_waits()
    return {jt.name: waits[jt.queue][1] + "." for jt in all_job_types()}


def job_wait_reason(job: Job) -> str:
    """Why a job that has not started yet is waiting, in a sentence; "" once it has started."""
    if job.status == JobStatus.SCHEDULED and job.run_at is not None:
        return f"Scheduled: it is queued at {timezone.localtime(job.run_at):%Y-%m-%d %H:%M:%S %Z}."
    if job.status != JobStatus.QUEUED:
        return ""
    queue = queue_of(job.type)
    ahead = (
        Job.objects.filter(job_queue_filter(queue), status=JobStatus.QUEUED)
        .filter(Q(priority__gt=job.priority) | Q(priority=job.priority, created_at__lt=job.created_at))
        .count()
    )
    position = f"{ahead} job{'s' if ahead != 1 else ''} ahead of it"
    kind, sentence = queue_waits().get(queue, ("free", "Waiting for a worker to take it"))
    return f"{sentence} ({position})." if kind == "no_worker" else f"{sentence}; {position}."
