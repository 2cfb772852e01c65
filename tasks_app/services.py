"""The only writers of job state.

One function per state change. Each change is a conditional UPDATE (`WHERE status IN (...)`),
so when two happen at once exactly one wins; the loser gets `None` (workers: a lost race is
normal) or a `JobStateError` (users: they asked for something the job can no longer do).
Every change bumps `version`, records a `JobEvent` where it is part of the history, and is
published to the live channels after commit, never before.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Greatest
from django.utils import timezone

from . import events, registry
from .exceptions import JobStateError, JobValidationError
from .models import Job, JobEvent, JobEventKind, JobStatus
from .serializers import serialize_job

logger = logging.getLogger(__name__)

MAX_PROGRESS_MESSAGE = 500


def _conf(name: str) -> Any:
    return settings.LONGRUN[name]


# --- internals ------------------------------------------------------------------------------


def _update(job_id: Any, where: Q, **changes: Any) -> Job | None:
    """Apply `changes` to the job if it matches `where`; return the fresh row, or None if the
    condition did not hold (another change won). Must run inside a transaction so the re-read
    sees this write and nobody else's."""
    changes["version"] = F("version") + 1
    if not Job.objects.filter(Q(pk=job_id) & where).update(**changes):
        return None
    return Job.objects.select_related("owner").get(pk=job_id)


def _record(
    job: Job,
    kind: str,
    message: str = "",
    *,
    actor: AbstractBaseUser | None = None,
    data: dict[str, Any] | None = None,
) -> JobEvent:
    return JobEvent.objects.create(
        job=job,
        seq=job.version,
        kind=kind,
        status=job.status,
        message=message,
        data=data or {},
        actor=actor if actor is not None and actor.is_authenticated else None,
    )


def _publish_on_commit(job: Job, event: str) -> None:
    # Serialize now, at the version this change produced; send only once it is committed.
    message = events.job_message(serialize_job(job), event)
    transaction.on_commit(partial(events.publish_job_message, job.owner_id, message))


def _dispatch_on_commit(job: Job) -> None:
    transaction.on_commit(partial(job_dispatch, job.pk))


# --- creation and dispatch ------------------------------------------------------------------


def job_validate(*, type: str, params: Any) -> tuple[registry.JobType, dict[str, Any]]:
    """Check a submission against the registry; return the type and the params with defaults."""
    try:
        jt = registry.get_job_type(type)
    except registry.UnknownJobType:
        known = ", ".join(t.name for t in registry.all_job_types())
        raise JobValidationError({"type": [f"Unknown job type {type!r}. Known types: {known}."]}) from None
    if not isinstance(params, dict):
        raise JobValidationError({"params": ["Must be a JSON object."]})
    errors = registry.validate_params(jt, params)
    if errors:
        raise JobValidationError(
            {("params." + path if path else "params"): reasons for path, reasons in errors.items()}
        )
    return jt, registry.apply_defaults(jt, params)


def job_create(
    *,
    owner: AbstractBaseUser,
    type: str,
    params: dict[str, Any] | None = None,
    priority: int = 5,
    max_attempts: int | None = None,
) -> Job:
    """Validate and persist a new job; it is dispatched to the workers after commit."""
    jt, params = job_validate(type=type, params=params if params is not None else {})
    with transaction.atomic():
        job = Job.objects.create(
            type=jt.name,
            params=params,
            priority=priority,
            max_attempts=max_attempts or _conf("DEFAULT_MAX_ATTEMPTS"),
            owner=owner,
            status=JobStatus.QUEUED,
        )
        _record(job, JobEventKind.CREATED, f"Submitted by {owner.get_username()}.", actor=owner)
        _publish_on_commit(job, "created")
        _dispatch_on_commit(job)
    return job


def job_dispatch(job_id: Any) -> bool:
    """Publish the Celery message for a queued job and mark it dispatched.

    Called after commit and by the sweep. A broker outage leaves `dispatched_at` empty, so the
    sweep tries again; a crash after publishing but before marking publishes twice, which the
    conditional claim turns into a no-op. Returns whether the message was published.
    """
    from .tasks import run_job  # tasks imports services; import here to avoid a cycle

    job = Job.objects.filter(pk=job_id, status=JobStatus.QUEUED).only("pk", "priority").first()
    if job is None:
        return False
    try:
        run_job.apply_async(
            args=[str(job.pk)],
            task_id=str(uuid.uuid4()),
            # kombu's Redis priorities run 0 first; ours run 9 first.
            priority=9 - job.priority,
            retry=False,
        )
    except Exception as exc:  # kombu raises several unrelated types for a dead broker
        logger.warning("dispatch of job %s deferred to the sweep, broker unavailable: %s", job_id, exc)
        return False
    Job.objects.filter(pk=job_id, status=JobStatus.QUEUED, dispatched_at__isnull=True).update(
        dispatched_at=timezone.now()
    )
    return True


def jobs_dispatch_pending(*, older_than: float | None = None, limit: int = 500) -> int:
    """The outbox relay: re-publish queued jobs whose dispatch never happened. Returns how many."""
    grace = _conf("DISPATCH_GRACE") if older_than is None else older_than
    cutoff = timezone.now() - timedelta(seconds=grace)
    pending = list(
        Job.objects.filter(status=JobStatus.QUEUED, dispatched_at__isnull=True, created_at__lte=cutoff)
        .order_by("created_at")
        .values_list("pk", flat=True)[:limit]
    )
    dispatched = 0
    for job_id in pending:
        if not job_dispatch(job_id):
            break  # broker still down: the next sweep tries again
        dispatched += 1
    return dispatched


# --- execution (called by workers) ----------------------------------------------------------


def job_claim(job_id: Any, *, worker: str, celery_task_id: str = "") -> Job | None:
    """queued -> running for this worker. None if the job is not queued any more (a duplicate
    delivery, a cancelled job, or another worker got there first)."""
    now = timezone.now()
    with transaction.atomic():
        job = _update(
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
            lease_expires_at=now + timedelta(seconds=60),
        )
        if job is None:
            return None
        _record(job, JobEventKind.STATUS, f"Running on {worker} (attempt {job.attempts} of {job.max_attempts}).")
        _publish_on_commit(job, "status")
    return job


def _running_on(worker: str) -> Q:
    return Q(status=JobStatus.RUNNING, worker=worker)


def job_progress(job_id: Any, *, worker: str, percent: int, message: str = "") -> bool:
    """Store the latest progress of a running job. Not a history event; it is published."""
    percent = max(0, min(100, int(percent)))
    with transaction.atomic():
        job = _update(
            job_id, _running_on(worker), progress=percent, progress_message=message[:MAX_PROGRESS_MESSAGE]
        )
        if job is None:
            return False
        _publish_on_commit(job, "progress")
    return True


def job_log(job_id: Any, *, worker: str, message: str) -> bool:
    """Append a log line written by the job's code."""
    with transaction.atomic():
        job = _update(job_id, _running_on(worker))
        if job is None:
            return False
        _record(job, JobEventKind.LOG, message)
        _publish_on_commit(job, "log")
    return True


def _finish_cancelled(job_id: Any, worker: str) -> Job | None:
    """running (with a cancel requested) -> cancelled: the cancel won, whatever the code did."""
    job = _update(
        job_id,
        _running_on(worker) & Q(cancel_requested_at__isnull=False),
        status=JobStatus.CANCELLED,
        finished_at=timezone.now(),
        lease_expires_at=None,
    )
    if job is not None:
        _record(job, JobEventKind.STATUS, "Cancelled while running.")
        _publish_on_commit(job, "status")
    return job


def job_succeed(job_id: Any, *, worker: str, result: Any) -> Job | None:
    """running -> succeeded, unless a cancel was requested first (then -> cancelled)."""
    with transaction.atomic():
        job = _update(
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
        _record(job, JobEventKind.STATUS, "Succeeded.")
        _publish_on_commit(job, "status")
    return job


def job_fail(job_id: Any, *, worker: str, error: dict[str, str], traceback: str = "") -> Job | None:
    """running -> failed with the error, unless a cancel was requested first (-> cancelled)."""
    with transaction.atomic():
        job = _update(
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
        _record(job, JobEventKind.STATUS, f"Failed: {error.get('type')}: {error.get('message')}", data={"error": error})
        _publish_on_commit(job, "status")
    return job


def job_acknowledge_cancel(job_id: Any, *, worker: str) -> Job | None:
    """The job's code stopped because it saw the cancel request: running -> cancelled."""
    with transaction.atomic():
        return _finish_cancelled(job_id, worker)


# --- user actions ---------------------------------------------------------------------------


def job_cancel(job_id: Any, *, actor: AbstractBaseUser | None) -> Job:
    """Cancel a job. Queued or scheduled: cancelled at once, it never runs. Running: the cancel
    is requested (visible at once) and the job's code stops at its next check. Terminal:
    JobStateError."""
    now = timezone.now()
    by = f" by {actor.get_username()}" if actor is not None and actor.is_authenticated else ""
    with transaction.atomic():
        job = _update(
            job_id,
            Q(status__in=[JobStatus.QUEUED, JobStatus.SCHEDULED]),
            status=JobStatus.CANCELLED,
            cancel_requested_at=now,
            finished_at=now,
        )
        if job is not None:
            _record(job, JobEventKind.STATUS, f"Cancelled{by} before it ran.", actor=actor)
            _publish_on_commit(job, "status")
            return job
        job = _update(
            job_id,
            Q(status=JobStatus.RUNNING, cancel_requested_at__isnull=True),
            cancel_requested_at=now,
        )
        if job is not None:
            _record(job, JobEventKind.CANCEL_REQUESTED, f"Cancel requested{by}.", actor=actor)
            _publish_on_commit(job, "cancel_requested")
            return job
    current = Job.objects.select_related("owner").get(pk=job_id)
    if current.status == JobStatus.RUNNING:
        return current  # already requested: asking again changes nothing
    raise JobStateError(f"The job has already {current.status}; it cannot be cancelled.", status=current.status)



def job_retry(job_id: Any, *, actor: AbstractBaseUser | None) -> Job:
    """failed or cancelled -> queued: a new attempt of the same job (same id, attempts go on
    counting, one more attempt is allowed). JobStateError for any other status."""
    by = f" by {actor.get_username()}" if actor is not None and actor.is_authenticated else ""
    with transaction.atomic():
        job = _update(
            job_id,
            Q(status__in=[JobStatus.FAILED, JobStatus.CANCELLED]),
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
        if job is not None:
            _record(job, JobEventKind.RETRY, f"Retried{by}.", actor=actor)
            _publish_on_commit(job, "status")
            _dispatch_on_commit(job)
            return job
    current = Job.objects.get(pk=job_id)
    raise JobStateError(
        f"Only failed or cancelled jobs can be retried; this one is {current.status}.", status=current.status
    )
