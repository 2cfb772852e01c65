"""The periodic sweep (Celery beat, on the maintenance queue): scheduled jobs whose time has
come, dispatches that never happened, queued jobs whose broker message was lost, running jobs
whose worker is gone or past its deadline, webhook deliveries that are due, old idempotency
keys; the schedules whose slot has come; and a sample of the backlog for the dashboard."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import Max, Q, Sum
from django.utils import timezone

from .. import metrics, registry, selectors
from ..conf import app_settings
from ..models import TERMINAL_STATUSES, IdempotencyKey, Job, JobCount, JobCountChange, JobEventKind, JobStatus
from . import dispatch, retention, schedules, webhooks, workers
from .common import Note, literal
from .transitions import change_job

logger = logging.getLogger(__name__)


def sweep() -> dict[str, int]:
    """One round of maintenance; returns what each part did."""
    return {
        "webhooks": webhooks.webhooks_dispatch_due(),
        "schedules_fired": schedules.schedules_fire_due(),
        "recovered": jobs_recover_expired_leases(),
        "ended": jobs_enforce_deadlines(),
        "promoted": jobs_promote_scheduled(),
        "dispatched": jobs_dispatch_pending(),
        "redispatched": jobs_redispatch_stranded(),
        "idempotency_keys_purged": idempotency_keys_purge(),
        "counts_folded": job_counts_fold(),
        "purged": retention.jobs_purge_expired(),
        "workers_forgotten": workers.workers_forget_stopped(older_than=app_settings.WORKER_FORGET_AFTER),
        "queued_now": queue_depth_sample(),
    }


def queue_depth_sample() -> int:
    """Record how many jobs are queued and running now, for the dashboard's queue depth chart
    (`metrics.queue_depth_record`); returns the number queued. From the counters: a few rows."""
    by_status: dict[str, int] = {}
    for (_, status), n in selectors.job_totals().items():
        by_status[status] = by_status.get(status, 0) + n
    metrics.queue_depth_record(by_status, at=timezone.now())
    return by_status.get(JobStatus.QUEUED, 0)


def job_counts_fold() -> int:
    """Fold the job count changes the triggers appended into the counters (`models.JobCount`), so
    reads stay a few rows. One folder at a time (PostgreSQL advisory lock; SQLite's write lock);
    the changes folded and deleted are exactly those up to one id, in one transaction."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_FOLD_LOCK])
                if not cursor.fetchone()[0]:
                    return 0  # another sweeper is folding
        last = JobCountChange.objects.aggregate(last=Max("id"))["last"]
        if last is None:
            return 0
        changes = JobCountChange.objects.filter(id__lte=last)
        sums = list(changes.values("owner_id", "type", "status").annotate(total=Sum("delta")).order_by())
        keys = Q()
        for row in sums:
            keys |= Q(owner_id=row["owner_id"], type=row["type"], status=row["status"])
        current = {(c.owner_id, c.type, c.status): c.n for c in JobCount.objects.filter(keys)} if sums else {}
        JobCount.objects.bulk_create(
            [
                JobCount(
                    owner_id=row["owner_id"],
                    type=row["type"],
                    status=row["status"],
                    n=current.get((row["owner_id"], row["type"], row["status"]), 0) + row["total"],
                )
                for row in sums
            ],
            update_conflicts=True,
            unique_fields=["owner_id", "type", "status"],
            update_fields=["n"],
        )
        folded, _ = changes.delete()
    return folded


# Any constant that other advisory locks of the application do not use.
_FOLD_LOCK = 0x4C52_0001


def jobs_dispatch_pending(*, older_than: float | None = None, limit: int = 500) -> int:
    """The outbox relay: re-publish queued jobs whose dispatch never happened. Returns how many."""
    grace = app_settings.DISPATCH_GRACE if older_than is None else older_than
    cutoff = timezone.now() - timedelta(seconds=grace)
    pending = list(
        Job.objects.filter(status=JobStatus.QUEUED, dispatched_at__isnull=True, created_at__lte=cutoff)
        .order_by("created_at")
        .values_list("pk", flat=True)[:limit]
    )
    return dispatch.jobs_dispatch(job_ids=pending) if pending else 0


def jobs_redispatch_stranded(*, limit: int = 1000) -> int:
    """`job_queue_redispatch_stranded` for every queue that carries jobs; returns how many."""
    return sum(job_queue_redispatch_stranded(queue=queue, limit=limit) for queue in registry.job_queues())


def job_queue_redispatch_stranded(*, queue: str, limit: int = 1000) -> int:
    """Publish again the queued jobs whose broker message is gone (a Redis restart without
    persistence, an eviction, a flush, a deleted queue, a message a killed worker had taken but
    not started, which Redis would only give back after the visibility timeout). Returns how many.

    The broker is asked one thing, how many messages wait in the job queue. A message published
    before the queue was seen empty has been taken by a worker, which claims its job at once,
    or is lost. So once the queue has stayed empty for REDISPATCH_AFTER seconds (read at every
    sweep), a job dispatched before that run of empty readings began and still queued has lost
    its message (`dispatch.queue_empty_since`). While jobs legitimately wait, the queue is not
    empty and nothing is re-published, however many they are; a job lost while the queue stays
    empty is found within about twice REDISPATCH_AFTER. A duplicate from a misjudgement (a
    worker slower than that between taking a message and claiming its job) is harmless: the
    claim is conditional. Under continuous load (the queue never empty) a lost message is found
    once the queue drains: the price of asking the broker for a count, not reading every
    message."""
    empty_since = dispatch.queue_empty_since(queue, at_least=app_settings.REDISPATCH_AFTER)
    if empty_since is None:
        return 0
    stranded = Job.objects.filter(
        registry.job_queue_filter(queue), status=JobStatus.QUEUED, dispatched_at__lt=empty_since
    )
    job_ids = list(stranded.order_by("-priority", "created_at").values_list("pk", flat=True)[:limit])
    # Each job's history says so; its dispatch is forgotten so that publishing marks it anew.
    note = Note(JobEventKind.LOG, "Its message was lost by the broker; published again.")
    recovered = []
    for job_id in job_ids:
        job = change_job(
            job_id,
            {"status": JobStatus.QUEUED, "dispatched_at__lt": empty_since},
            event="log",
            note=note,
            dispatched_at=None,
        )
        if job is not None:  # else claimed or cancelled meanwhile
            recovered.append(job.pk)
    if not recovered:
        return 0
    published = dispatch.jobs_dispatch(job_ids=recovered)
    logger.warning(
        "%d queued job(s) had lost their message in queue %s (empty since %s); published %d again",
        len(recovered),
        queue,
        empty_since.isoformat(timespec="seconds"),
        published,
    )
    return published


def jobs_promote_scheduled(*, limit: int = 500) -> int:
    """scheduled -> queued for every job whose `run_at` has come; they are dispatched on commit.
    Scheduling lives in the database, not in long Celery ETAs that Redis would redeliver."""
    now = timezone.now()
    due = list(
        Job.objects.filter(status=JobStatus.SCHEDULED, run_at__lte=now)
        .order_by("run_at")
        .values_list("pk", flat=True)[:limit]
    )
    promoted = 0
    note = Note(JobEventKind.STATUS, "Its scheduled time has come; queued.")
    for job_id in due:
        job = change_job(
            job_id,
            {"status": JobStatus.SCHEDULED, "run_at__lte": now},
            event="status",
            note=note,
            status=JobStatus.QUEUED,
        )
        if job is None:
            continue  # cancelled meanwhile
        dispatch.dispatch_on_commit(job)
        promoted += 1
    return promoted


def idempotency_keys_purge() -> int:
    """Forget idempotency keys older than LONGRUN_IDEMPOTENCY_TTL."""
    cutoff = timezone.now() - timedelta(seconds=app_settings.IDEMPOTENCY_TTL)
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=cutoff).delete()
    return deleted


def _take_back(job: Job, status: str, note: str, **changes: Any) -> Job | None:
    """End or requeue a running job on behalf of its absent or unresponsive worker (conditional
    on it still being that worker's), and record why."""
    if status in TERMINAL_STATUSES:
        changes["finished_at"] = timezone.now()
    data = {"error": changes["error"]} if "error" in changes else None
    return change_job(
        job.pk,
        {"status": JobStatus.RUNNING, "worker": job.worker},
        event="status",
        note=Note(JobEventKind.STATUS, literal(note), data=data),
        status=status,
        lease_expires_at=None,
        **changes,
    )


def _fail_for_absent_worker(job: Job, error: dict[str, str]) -> Job | None:
    return _take_back(job, JobStatus.FAILED, f"Failed: {error['message']}", error=error)


def _recover_from_lost_worker(job: Job, reason: str) -> None:
    """A running job whose worker is gone: cancelled if that was asked, another attempt if any
    is left, else failed."""
    if job.cancel_requested_at is not None:
        _take_back(job, JobStatus.CANCELLED, f"Cancelled: {reason}.")
    elif job.attempts < job.max_attempts:
        note = f"{reason}; queued for attempt {job.attempts + 1} of {job.max_attempts}."
        taken = _take_back(job, JobStatus.QUEUED, note, worker="", dispatched_at=None)
        if taken is not None:
            dispatch.dispatch_on_commit(taken)
    else:
        message = f"{reason} on attempt {job.attempts} of {job.max_attempts}."
        _fail_for_absent_worker(job, {"type": "WorkerLost", "message": message})


def jobs_recover_expired_leases(*, limit: int = 200) -> int:
    """Running jobs whose worker stopped renewing the lease (it died, or its machine did): take
    them back. Heartbeat-based: a healthy long job keeps its lease however long it runs."""
    expired = list(
        Job.objects.filter(status=JobStatus.RUNNING, lease_expires_at__lt=timezone.now()).order_by(
            "lease_expires_at"
        )[:limit]
    )
    for job in expired:
        _recover_from_lost_worker(job, f"Worker {job.worker} stopped answering (lease expired)")
    return len(expired)


def jobs_enforce_deadlines(*, limit: int = 200) -> int:
    """Running jobs past their timeout plus the grace (the hard limit should have ended them), and
    running jobs that ignored a cancel for longer than the grace: end them here, and have their
    worker process terminated in case it is still at it."""
    now = timezone.now()
    ended = 0
    cancel_grace = app_settings.CANCEL_GRACE
    cancel_cutoff = now - timedelta(seconds=cancel_grace)
    for job in Job.objects.filter(status=JobStatus.RUNNING, cancel_requested_at__lt=cancel_cutoff)[:limit]:
        note = f"Did not stop within {cancel_grace:.0f} s of the cancel request; its process was terminated."
        if _take_back(job, JobStatus.CANCELLED, note) is not None:
            dispatch.terminate_on_commit(job.celery_task_id)
            ended += 1
    grace = timedelta(seconds=app_settings.TIMEOUT_GRACE * 2)
    running_with_timeout = Job.objects.filter(
        status=JobStatus.RUNNING, timeout__isnull=False, started_at__isnull=False
    )
    for job in running_with_timeout[:limit]:
        assert job.started_at is not None and job.timeout is not None
        if job.started_at + timedelta(seconds=job.timeout) + grace > now:
            continue
        error = {
            "type": "TimeoutError",
            "message": f"The job ran longer than its timeout of {job.timeout} s.",
        }
        if _fail_for_absent_worker(job, error) is not None:
            dispatch.terminate_on_commit(job.celery_task_id)
            ended += 1
    return ended
