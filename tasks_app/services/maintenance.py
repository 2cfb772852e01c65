"""The periodic sweep (Celery beat, on the maintenance queue): scheduled jobs whose time has
come, dispatches that never happened, running jobs whose worker is gone or past its deadline,
webhook deliveries that are due, old idempotency keys."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from ..conf import app_settings
from ..models import TERMINAL_STATUSES, IdempotencyKey, Job, JobEventKind, JobStatus
from . import dispatch, notify, webhooks
from .common import record_event, update_if


def sweep() -> dict[str, int]:
    """One round of maintenance; returns what each part did."""
    return {
        "webhooks": webhooks.webhooks_dispatch_due(),
        "recovered": jobs_recover_expired_leases(),
        "ended": jobs_enforce_deadlines(),
        "promoted": jobs_promote_scheduled(),
        "dispatched": jobs_dispatch_pending(),
        "idempotency_keys_purged": idempotency_keys_purge(),
    }


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
    for job_id in due:
        with transaction.atomic():
            job = update_if(job_id, Q(status=JobStatus.SCHEDULED, run_at__lte=now), status=JobStatus.QUEUED)
            if job is None:
                continue  # cancelled meanwhile
            entry = record_event(job, JobEventKind.STATUS, "Its scheduled time has come; queued.")
            notify.job_changed_on_commit(job, "status", entry)
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
    on it still being that worker's), and record why. Must run inside a transaction."""
    if status in TERMINAL_STATUSES:
        changes["finished_at"] = timezone.now()
    taken = update_if(
        job.pk,
        Q(status=JobStatus.RUNNING, worker=job.worker),
        status=status,
        lease_expires_at=None,
        **changes,
    )
    if taken is not None:
        data = {"error": changes["error"]} if "error" in changes else None
        notify.job_changed_on_commit(
            taken, "status", record_event(taken, JobEventKind.STATUS, note, data=data)
        )
    return taken


def _fail_for_absent_worker(job: Job, error: dict[str, str]) -> Job | None:
    return _take_back(job, JobStatus.FAILED, f"Failed: {error['message']}", error=error)


def _recover_from_lost_worker(job: Job, reason: str) -> None:
    """A running job whose worker is gone: cancelled if that was asked, another attempt if any
    is left, else failed."""
    with transaction.atomic():
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
        with transaction.atomic():
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
        with transaction.atomic():
            if _fail_for_absent_worker(job, error) is not None:
                dispatch.terminate_on_commit(job.celery_task_id)
                ended += 1
    return ended
