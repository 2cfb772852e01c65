"""The transitions a worker asks for: claim, progress, log lines, the outcome, the lease
heartbeat. A lost race returns None: for a worker that is normal (a duplicate delivery, a job
cancelled or taken back meanwhile)."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from ..conf import MAX_PROGRESS_MESSAGE, app_settings
from ..models import Job, JobEventKind, JobId, JobStatus
from . import notify
from .common import record_event, storable_text, update_if


def _running_on(worker: str) -> Q:
    return Q(status=JobStatus.RUNNING, worker=worker)


def job_claim(*, job_id: JobId, worker: str, celery_task_id: str = "") -> Job | None:
    """queued -> running for this worker. None if the job is not queued any more (a duplicate
    delivery, a cancelled job, or another worker got there first)."""
    now = timezone.now()
    with transaction.atomic():
        job = update_if(
            job_id,
            Q(status=JobStatus.QUEUED),
            status=JobStatus.RUNNING,
            attempts=F("attempts") + 1,
            started_at=now,
            finished_at=None,
            worker=worker,
            celery_task_id=celery_task_id,
            progress=0,
            progress_message="",
            lease_expires_at=now + timedelta(seconds=app_settings.LEASE_SECONDS),
        )
        if job is None:
            return None
        note = f"Running on {worker} (attempt {job.attempts} of {job.max_attempts})."
        notify.job_changed_on_commit(job, "status", record_event(job, JobEventKind.STATUS, note))
    return job


def job_progress(*, job_id: JobId, worker: str, percent: int, message: str = "") -> bool:
    """Store the latest progress of a running job. Not a history event; it is published."""
    percent = max(0, min(100, int(percent)))
    with transaction.atomic():
        job = update_if(
            job_id,
            _running_on(worker),
            progress=percent,
            progress_message=storable_text(message)[:MAX_PROGRESS_MESSAGE],
        )
        if job is None:
            return False
        notify.job_changed_on_commit(job, "progress")
    return True


def job_log(*, job_id: JobId, worker: str, message: str) -> bool:
    """Append a log line written by the job's code."""
    with transaction.atomic():
        job = update_if(job_id, _running_on(worker))
        if job is None:
            return False
        notify.job_changed_on_commit(job, "log", record_event(job, JobEventKind.LOG, storable_text(message)))
    return True


def _finish_cancelled(job_id: JobId, worker: str) -> Job | None:
    """running (with a cancel requested) -> cancelled: the cancel won, whatever the code did."""
    job = update_if(
        job_id,
        _running_on(worker) & Q(cancel_requested_at__isnull=False),
        status=JobStatus.CANCELLED,
        finished_at=timezone.now(),
        lease_expires_at=None,
    )
    if job is not None:
        notify.job_changed_on_commit(
            job, "status", record_event(job, JobEventKind.STATUS, "Cancelled while running.")
        )
    return job


def job_succeed(*, job_id: JobId, worker: str, result: Any) -> Job | None:
    """running -> succeeded, unless a cancel was requested first (then -> cancelled)."""
    with transaction.atomic():
        job = update_if(
            job_id,
            _running_on(worker) & Q(cancel_requested_at__isnull=True),
            status=JobStatus.SUCCEEDED,
            result=result,
            progress=100,
            finished_at=timezone.now(),
            lease_expires_at=None,
        )
        if job is None:
            return _finish_cancelled(job_id, worker)
        notify.job_changed_on_commit(job, "status", record_event(job, JobEventKind.STATUS, "Succeeded."))
    return job


def job_fail(*, job_id: JobId, worker: str, error: dict[str, str], traceback: str = "") -> Job | None:
    """running -> failed with the error, unless a cancel was requested first (-> cancelled)."""
    error = {key: storable_text(str(value)) for key, value in error.items()}
    traceback = storable_text(traceback)
    with transaction.atomic():
        job = update_if(
            job_id,
            _running_on(worker) & Q(cancel_requested_at__isnull=True),
            status=JobStatus.FAILED,
            error=error,
            traceback=traceback,
            finished_at=timezone.now(),
            lease_expires_at=None,
        )
        if job is None:
            return _finish_cancelled(job_id, worker)
        note = f"Failed: {error.get('type')}: {error.get('message')}"
        notify.job_changed_on_commit(
            job, "status", record_event(job, JobEventKind.STATUS, note, data={"error": error})
        )
    return job


def job_acknowledge_cancel(*, job_id: JobId, worker: str) -> Job | None:
    """The job's code stopped because it saw the cancel request: running -> cancelled."""
    with transaction.atomic():
        return _finish_cancelled(job_id, worker)


def job_heartbeat(*, job_id: JobId, worker: str) -> tuple[bool, bool]:
    """Renew the lease of a job this worker runs. Returns (still ours, cancel requested). Not a
    change a client sees: the version stays."""
    lease = timezone.now() + timedelta(seconds=app_settings.LEASE_SECONDS)
    renewed = Job.objects.filter(pk=job_id, status=JobStatus.RUNNING, worker=worker).update(
        lease_expires_at=lease
    )
    if not renewed:
        return False, False
    cancel = Job.objects.filter(pk=job_id, cancel_requested_at__isnull=False).exists()
    return True, cancel


def retry_delay(attempt: int) -> float:
    """Exponential backoff with jitter: uniform(ceiling / 2, ceiling), where the ceiling is
    min(max, base * 2**(attempt-1))."""
    ceiling = min(app_settings.RETRY_BACKOFF_MAX, app_settings.RETRY_BACKOFF_BASE * 2 ** max(0, attempt - 1))
    return random.uniform(ceiling / 2, ceiling)  # at least half: a retry storm helps nobody


def job_fail_or_retry(
    *, job_id: JobId, worker: str, error: dict[str, str], traceback: str = "", retryable: bool = False
) -> Job | None:
    """The job's code raised. A retryable error with attempts left schedules another attempt
    after a backoff (status `scheduled`); anything else fails the job."""
    job = Job.objects.filter(pk=job_id).only("attempts", "max_attempts").first()
    if job is None or not retryable or job.attempts >= job.max_attempts:
        return job_fail(job_id=job_id, worker=worker, error=error, traceback=traceback)
    delay = retry_delay(job.attempts)
    error = {key: storable_text(str(value)) for key, value in error.items()}
    with transaction.atomic():
        updated = update_if(
            job_id,
            _running_on(worker) & Q(cancel_requested_at__isnull=True),
            status=JobStatus.SCHEDULED,
            run_at=timezone.now() + timedelta(seconds=delay),
            error=error,
            traceback=storable_text(traceback),
            worker="",
            lease_expires_at=None,
            dispatched_at=None,
        )
        if updated is None:
            return _finish_cancelled(job_id, worker)
        note = (
            f"Attempt {updated.attempts} of {updated.max_attempts} failed ({error.get('type')}: "
            f"{error.get('message')}); retrying in {delay:.1f} s."
        )
        notify.job_changed_on_commit(
            updated, "status", record_event(updated, JobEventKind.STATUS, note, data={"error": error})
        )
    return updated
