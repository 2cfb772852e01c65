"""The transitions a user asks for, through the API, the admin or the pages: cancel, retry and
re-run. Each records who did it; a change the job's state no longer allows is a JobStateError."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from django.db import transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from ..exceptions import JobStateError
from ..models import Job, JobEventKind, JobId, JobStatus
from . import dispatch, submission
from .common import Note, actor_suffix, literal
from .transitions import change_job

if TYPE_CHECKING:
    from .common import Actor


def job_cancel(*, job_id: JobId, actor: Actor) -> Job:
    """Cancel a job. Queued or scheduled: cancelled at once, it never runs. Running: the cancel
    is requested (visible at once) and the job's code stops at its next check. Terminal:
    JobStateError."""
    now = timezone.now()
    by = literal(actor_suffix(actor))
    job = change_job(
        job_id,
        {"status__in": [JobStatus.QUEUED, JobStatus.SCHEDULED]},
        event="status",
        note=Note(JobEventKind.STATUS, f"Cancelled{by} before it ran.", actor=actor),
        status=JobStatus.CANCELLED,
        cancel_requested_at=now,
        finished_at=now,
    )
    if job is not None:
        return job
    job = change_job(
        job_id,
        {"status": JobStatus.RUNNING, "cancel_requested_at__isnull": True},
        event="cancel_requested",
        note=Note(JobEventKind.CANCEL_REQUESTED, f"Cancel requested{by}.", actor=actor),
        cancel_requested_at=now,
    )
    if job is not None:
        return job
    current = Job.objects.select_related("owner").get(pk=job_id)
    if current.status == JobStatus.RUNNING:
        return current  # already requested: asking again changes nothing
    raise JobStateError(
        f"The job has already {current.status}; it cannot be cancelled.", status=current.status
    )


def job_retry(*, job_id: JobId, actor: Actor) -> Job:
    """failed or cancelled -> queued: a new attempt of the same job (same id, attempts go on
    counting, one more attempt is allowed). JobStateError for any other status."""
    job = change_job(
        job_id,
        {"status__in": [JobStatus.FAILED, JobStatus.CANCELLED]},
        event="status",
        note=Note(JobEventKind.RETRY, f"Retried{literal(actor_suffix(actor))}.", actor=actor),
        status=JobStatus.QUEUED,
        max_attempts=Greatest(F("max_attempts"), F("attempts") + 1),
        result=None,
        error=None,
        traceback="",
        progress=0,
        progress_message="",
        started_at=None,
        finished_at=None,
        dispatched_at=None,
        cancel_requested_at=None,
        worker="",
        lease_expires_at=None,
    )
    if job is None:
        current = Job.objects.get(pk=job_id)
        raise JobStateError(
            f"Only failed or cancelled jobs can be retried; this one is {current.status}.",
            status=current.status,
        )
    dispatch.dispatch_on_commit(job)
    return job


def jobs_cancel(*, job_ids: Sequence[JobId], actor: Actor) -> dict[str, int]:
    """Cancel each of the given jobs (the caller has scoped them to what `actor` may act on).
    Each is its own conditional change, so a job that ends meanwhile is counted, not corrupted."""
    counts = {"cancelled": 0, "cancel_requested": 0, "already_finished": 0}
    for job_id in job_ids:
        try:
            job = job_cancel(job_id=job_id, actor=actor)
        except JobStateError:
            counts["already_finished"] += 1
            continue
        counts["cancelled" if job.status == JobStatus.CANCELLED else "cancel_requested"] += 1
    return counts


def job_rerun(*, job_id: JobId, actor: Actor) -> Job:
    """Submit a new job with the same type, params and options as an existing one, for the same
    owner. Both jobs' histories say who did it and link the two."""
    original = Job.objects.select_related("owner").get(pk=job_id)
    by = literal(actor_suffix(actor))
    with transaction.atomic():
        job = submission.job_create(owner=original.owner, **submission.submission_of(original))
        job = _note(job.pk, Note(JobEventKind.LOG, f"Re-run of {original.pk}{by}.", actor=actor))
        _note(original.pk, Note(JobEventKind.LOG, f"Re-run as {job.pk}{by}.", actor=actor))
    return job


def _note(job_id: JobId, note: Note) -> Job:
    """A history entry with no change of its own (version + 1)."""
    job = change_job(job_id, {}, event="log", note=note)
    assert job is not None
    return job
