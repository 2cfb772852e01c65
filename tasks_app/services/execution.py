"""The transitions a worker asks for: claim, progress, log lines, the outcome, the lease
heartbeat. A lost race returns None: for a worker that is normal (a duplicate delivery, a job
cancelled or taken back meanwhile)."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from django.db.models import F
from django.utils import timezone

from ..conf import MAX_PROGRESS_MESSAGE, app_settings
from ..models import Job, JobEventKind, JobId, JobStatus
from .common import Note, Where, literal, storable_text
from .transitions import change_job


def _running_on(worker: str, **more: Any) -> Where:
    return {"status": JobStatus.RUNNING, "worker": worker, **more}


def _progress_text(message: str) -> str:
    return storable_text(message)[:MAX_PROGRESS_MESSAGE]


def job_claim(*, job_id: JobId, worker: str, celery_task_id: str = "") -> Job | None:
    """queued -> running for this worker. None if the job is not queued any more (a duplicate
    delivery, a cancelled job, or another worker got there first)."""
    now = timezone.now()
    # The worker is in the data too: the job page's attempt timeline reads it from there.
    note = Note(
        JobEventKind.STATUS,
        f"Running on {literal(worker)} (attempt {{attempts}} of {{max_attempts}}).",
        data={"worker": worker},
    )
    return change_job(
        job_id,
        {"status": JobStatus.QUEUED},
        event="status",
        note=note,
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


def job_progress(*, job_id: JobId, worker: str, percent: int, message: str = "") -> bool:
    """Store the latest progress of a running job. Not a history event; it is published."""
    percent = max(0, min(100, int(percent)))
    changed = change_job(
        job_id,
        _running_on(worker),
        event="progress",
        progress=percent,
        progress_message=_progress_text(message),
    )
    return changed is not None


def job_log(*, job_id: JobId, worker: str, message: str) -> bool:
    """Append a log line written by the job's code."""
    note = Note(JobEventKind.LOG, literal(storable_text(message)))
    return change_job(job_id, _running_on(worker), event="log", note=note) is not None


def _finish_cancelled(job_id: JobId, worker: str) -> Job | None:
    """running (with a cancel requested) -> cancelled: the cancel won, whatever the code did."""
    return change_job(
        job_id,
        _running_on(worker, cancel_requested_at__isnull=False),
        event="status",
        note=Note(JobEventKind.STATUS, "Cancelled while running."),
        status=JobStatus.CANCELLED,
        finished_at=timezone.now(),
        lease_expires_at=None,
    )


def job_succeed(
    *, job_id: JobId, worker: str, result: Any, progress_message: str | None = None
) -> Job | None:
    """running -> succeeded (progress 100, and `progress_message` if the code reported one that
    was not written yet), unless a cancel was requested first (then -> cancelled)."""
    last_report = {} if progress_message is None else {"progress_message": _progress_text(progress_message)}
    job = change_job(
        job_id,
        _running_on(worker, cancel_requested_at__isnull=True),
        event="status",
        note=Note(JobEventKind.STATUS, "Succeeded."),
        status=JobStatus.SUCCEEDED,
        result=result,
        progress=100,
        finished_at=timezone.now(),
        lease_expires_at=None,
        **last_report,
    )
    return job if job is not None else _finish_cancelled(job_id, worker)


def job_fail(*, job_id: JobId, worker: str, error: dict[str, str], traceback: str = "") -> Job | None:
    """running -> failed with the error, unless a cancel was requested first (-> cancelled)."""
    error = {key: storable_text(str(value)) for key, value in error.items()}
    message = literal(f"Failed: {error.get('type')}: {error.get('message')}")
    job = change_job(
        job_id,
        _running_on(worker, cancel_requested_at__isnull=True),
        event="status",
        note=Note(JobEventKind.STATUS, message, data={"error": error}),
        status=JobStatus.FAILED,
        error=error,
        traceback=storable_text(traceback),
        finished_at=timezone.now(),
        lease_expires_at=None,
    )
    return job if job is not None else _finish_cancelled(job_id, worker)


def job_acknowledge_cancel(*, job_id: JobId, worker: str) -> Job | None:
    """The job's code stopped because it saw the cancel request: running -> cancelled."""
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
    cause = literal(f"{error.get('type')}: {error.get('message')}")
    note = Note(
        JobEventKind.STATUS,
        f"Attempt {{attempts}} of {{max_attempts}} failed ({cause}); retrying in {delay:.1f} s.",
        data={"error": error},
    )
    updated = change_job(
        job_id,
        _running_on(worker, cancel_requested_at__isnull=True),
        event="status",
        note=note,
        status=JobStatus.SCHEDULED,
        run_at=timezone.now() + timedelta(seconds=delay),
        error=error,
        traceback=storable_text(traceback),
        worker="",
        lease_expires_at=None,
        dispatched_at=None,
    )
    return updated if updated is not None else _finish_cancelled(job_id, worker)
