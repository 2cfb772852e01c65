"""The only writers of job state.

One function per state change. Each change is a conditional UPDATE (`WHERE status IN (...)`),
so when two happen at once exactly one wins; the loser gets `None` (workers: a lost race is
normal) or a `JobStateError` (users: they asked for something the job can no longer do).
Every change bumps `version`, records a `JobEvent` where it is part of the history, and is
published to the live channels after commit, never before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.db.models import F, Max, Q
from django.db.models.functions import Greatest
from django.utils import timezone

from . import events, registry, webhooks
from .exceptions import IdempotencyConflict, JobStateError, JobValidationError
from .models import (
    TERMINAL_STATUSES,
    DeliveryStatus,
    IdempotencyKey,
    Job,
    JobEvent,
    JobEventKind,
    JobStatus,
    SigningSecret,
    WebhookAttempt,
    WebhookDelivery,
)
from .serializers import JobEventSerializer, serialize_job
from .stack import WEBHOOK_QUEUE

logger = logging.getLogger(__name__)

MAX_PROGRESS_MESSAGE = 500


def _conf(name: str) -> Any:
    return settings.LONGRUN[name]


def storable_text(text: str) -> str:
    """PostgreSQL text and jsonb cannot hold NUL; show it escaped instead of failing the write."""
    return text.replace("\x00", "\\x00")


def has_nul(value: Any) -> bool:
    return "\\u0000" in json.dumps(value, cls=DjangoJSONEncoder)


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


def _by(actor: AbstractBaseUser | None) -> str:
    """ " by alice" for a history message, or nothing for the system."""
    return f" by {actor.get_username()}" if actor is not None and actor.is_authenticated else ""


def _publish_on_commit(job: Job, event: str, entry: JobEvent | None = None) -> None:
    """Publish the change after commit: the job at the version this change produced, and the
    history entry it recorded, if any (so a live log needs no extra read)."""
    message = events.job_message(serialize_job(job), event)
    if entry is not None:
        message["entry"] = events.plain(JobEventSerializer(entry).data)
    if job.callback_url:
        if event == "status" and job.is_terminal:
            _webhook_outbox(job, message["job"], WEBHOOK_EVENTS[job.status])
        elif event == "status" and job.status == JobStatus.RUNNING and "job.started" in job.webhook_events:
            _webhook_outbox(job, message["job"], "job.started")
        elif event == "progress" and "job.progress" in job.webhook_events and _progress_hook_due(job):
            _webhook_outbox(job, message["job"], "job.progress")
    transaction.on_commit(partial(events.publish_job_message, job.owner_id, message))


def _dispatch_on_commit(job: Job) -> None:
    transaction.on_commit(partial(job_dispatch, job.pk))


# --- creation and dispatch ------------------------------------------------------------------


METADATA_MAX_KEYS = 50
METADATA_KEY_MAX = 40
METADATA_VALUE_MAX = 500
# Keys start with a letter or "_": an all-digit key would read as an array index in JSON paths.
METADATA_KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class JobSpec:
    """One validated submission, ready to be written."""

    type: str
    params: dict[str, Any]
    priority: int
    max_attempts: int
    run_at: datetime | None
    timeout: int | None
    callback_url: str
    metadata: dict[str, str]
    webhook_events: list[str]


def job_validate(
    *,
    type: str,
    params: Any = None,
    priority: int = 5,
    max_attempts: int | None = None,
    run_at: datetime | None = None,
    timeout: int | None = None,
    callback_url: str = "",
    metadata: Any = None,
    webhook_events: Any = None,
) -> JobSpec:
    """Check a submission against the registry and the limits; JobValidationError names each
    field at fault. Returns the submission with the type's defaults filled in."""
    errors: dict[str, list[str]] = {}
    jt = None
    try:
        jt = registry.get_job_type(type)
    except registry.UnknownJobType:
        known = ", ".join(t.name for t in registry.all_job_types())
        errors["type"] = [f"Unknown job type {type!r}. Known types: {known}."]
    params = {} if params is None else params
    if not isinstance(params, dict):
        errors["params"] = ["Must be a JSON object."]
    elif jt is not None:
        for path, reasons in registry.validate_params(jt, params).items():
            errors["params." + path if path else "params"] = reasons
    if not 0 <= priority <= 9:
        errors["priority"] = ["Must be between 0 and 9."]
    if max_attempts is not None and not 1 <= max_attempts <= _conf("MAX_ATTEMPTS_LIMIT"):
        errors["max_attempts"] = [f"Must be between 1 and {_conf('MAX_ATTEMPTS_LIMIT')}."]
    if timeout is not None and not 1 <= timeout <= _conf("MAX_TIMEOUT"):
        errors["timeout"] = [f"Must be between 1 and {_conf('MAX_TIMEOUT')} seconds."]
    if run_at is not None and timezone.is_naive(run_at):
        errors["run_at"] = ["Must include a time zone (for example 2030-01-01T12:00:00Z)."]
    if callback_url:
        try:
            webhooks.check_url(callback_url)
        except webhooks.UnresolvableURL:
            pass  # undecidable now (DNS may be down); checked again before every delivery
        except webhooks.UnsafeURL as exc:
            errors["callback_url"] = [str(exc)]
    metadata = {} if metadata is None else metadata
    errors.update(_metadata_errors(metadata))
    webhook_events = [] if webhook_events is None else webhook_events
    if not isinstance(webhook_events, list) or not set(webhook_events) <= set(OPTIONAL_WEBHOOK_EVENTS):
        errors["webhook_events"] = [f"A list of: {', '.join(OPTIONAL_WEBHOOK_EVENTS)}."]
    elif webhook_events and not callback_url:
        errors["webhook_events"] = ["Needs a callback_url."]
    for name, value in (("params", params), ("metadata", metadata), ("callback_url", callback_url)):
        if name not in errors and has_nul(value):
            errors[name] = ["Must not contain NUL (\\u0000) characters."]
    if errors:
        raise JobValidationError(errors)
    assert jt is not None
    return JobSpec(
        type=jt.name,
        params=registry.apply_defaults(jt, params),
        priority=priority,
        max_attempts=max_attempts or _conf("DEFAULT_MAX_ATTEMPTS"),
        run_at=run_at,
        timeout=timeout if timeout is not None else jt.default_timeout,
        callback_url=callback_url,
        metadata=metadata,
        webhook_events=sorted(set(webhook_events)),
    )


def _metadata_errors(metadata: Any) -> dict[str, list[str]]:
    """Metadata follows Stripe's rules: up to 50 string keys of up to 40 characters, with
    string values of up to 500 characters."""
    if not isinstance(metadata, dict):
        return {"metadata": ["Must be a JSON object."]}
    errors: dict[str, list[str]] = {}
    if len(metadata) > METADATA_MAX_KEYS:
        errors["metadata"] = [f"At most {METADATA_MAX_KEYS} keys."]
    for key, value in metadata.items():
        field = f"metadata.{key}"
        if not (0 < len(key) <= METADATA_KEY_MAX and METADATA_KEY_PATTERN.match(key)):
            errors[field] = [
                f"Keys are 1 to {METADATA_KEY_MAX} letters, digits, '_', '-' or '.', starting with a letter or '_'."
            ]
        elif not isinstance(value, str):
            errors[field] = ["Values must be strings."]
        elif len(value) > METADATA_VALUE_MAX:
            errors[field] = [f"At most {METADATA_VALUE_MAX} characters."]
    return errors


def _new_job(spec: JobSpec, owner: AbstractBaseUser) -> Job:
    scheduled = spec.run_at is not None and spec.run_at > timezone.now()
    return Job(
        type=spec.type,
        params=spec.params,
        priority=spec.priority,
        max_attempts=spec.max_attempts,
        run_at=spec.run_at,
        timeout=spec.timeout,
        callback_url=spec.callback_url,
        metadata=spec.metadata,
        webhook_events=spec.webhook_events,
        owner=owner,
        status=JobStatus.SCHEDULED if scheduled else JobStatus.QUEUED,
    )


def _created_event(job: Job, owner: AbstractBaseUser) -> JobEvent:
    when = f", scheduled for {job.run_at.isoformat()}" if job.status == JobStatus.SCHEDULED else ""
    return JobEvent(
        job=job,
        seq=job.version,
        kind=JobEventKind.CREATED,
        status=job.status,
        message=f"Submitted by {owner.get_username()}{when}.",
        actor=owner,
    )


def job_create(*, owner: AbstractBaseUser, **submission: Any) -> Job:
    """Validate and persist a new job (see `job_validate` for the fields). A queued job is
    dispatched to the workers after commit; a scheduled one by the sweep when its time comes."""
    spec = job_validate(**submission)
    with transaction.atomic():
        job = _new_job(spec, owner)
        job.save(force_insert=True)
        entry = _created_event(job, owner)
        entry.save(force_insert=True)
        _publish_on_commit(job, "created", entry)
        if job.status == JobStatus.QUEUED:
            _dispatch_on_commit(job)
    return job


def request_fingerprint(body: Any) -> str:
    """SHA-256 of the canonical JSON of a request body (key order and spacing do not matter)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), cls=DjangoJSONEncoder)
    return hashlib.sha256(canonical.encode()).hexdigest()


def job_create_idempotent(
    *, owner: AbstractBaseUser, key: str, fingerprint: str, **submission: Any
) -> tuple[Job, bool]:
    """`job_create` under an Idempotency-Key. Returns (job, replayed).

    The same key with the same fingerprint returns the job the first request created and
    creates nothing; with another fingerprint it is an IdempotencyConflict. Concurrent requests
    race on the unique (owner, key) constraint: one INSERT wins, the others wait for its commit,
    fail, and replay its job.
    """
    existing = IdempotencyKey.objects.filter(owner=owner, key=key).select_related("job").first()
    if existing is None:
        try:
            with transaction.atomic():
                job = job_create(owner=owner, **submission)
                IdempotencyKey.objects.create(owner=owner, key=key, fingerprint=fingerprint, job=job)
            return job, False
        except IntegrityError:
            existing = IdempotencyKey.objects.filter(owner=owner, key=key).select_related("job").first()
            if existing is None:  # the winner rolled back: nothing to replay, let the client retry
                raise IdempotencyConflict(
                    "A request with this Idempotency-Key is in progress; retry.", status=409
                ) from None
    if existing.fingerprint != fingerprint:
        raise IdempotencyConflict(
            "This Idempotency-Key was already used with a different request body.", status=422
        )
    return Job.objects.select_related("owner").get(pk=existing.job_id), True


def jobs_create_bulk(*, owner: AbstractBaseUser, submissions: list[dict[str, Any]]) -> list[Job]:
    """Validate every submission first (all or nothing: JobValidationError with fields like
    "jobs.3.params.n"), then write them with one bulk INSERT and dispatch them after commit
    over one broker connection."""
    specs: list[JobSpec] = []
    errors: dict[str, list[str]] = {}
    for index, submission in enumerate(submissions):
        try:
            specs.append(job_validate(**submission))
        except JobValidationError as exc:
            for field, reasons in exc.errors.items():
                errors[f"jobs.{index}.{field}"] = reasons
    if errors:
        raise JobValidationError(errors)
    with transaction.atomic():
        jobs = Job.objects.bulk_create([_new_job(spec, owner) for spec in specs])
        JobEvent.objects.bulk_create([_created_event(job, owner) for job in jobs])
        for job in jobs:
            job.owner = owner
        messages = [events.job_message(serialize_job(job), "created") for job in jobs]
        transaction.on_commit(partial(events.publish_job_messages, owner.pk, messages))
        queued = [job.pk for job in jobs if job.status == JobStatus.QUEUED]
        if queued:
            transaction.on_commit(partial(jobs_dispatch, queued))
    return jobs


def job_dispatch(job_id: Any) -> bool:
    """Publish the Celery message for one queued job; see `jobs_dispatch`."""
    return jobs_dispatch([job_id]) == 1


def jobs_dispatch(job_ids: list[Any]) -> int:
    """Publish the Celery messages for queued jobs over one broker connection and mark them
    dispatched. Returns how many were published.

    Called after commit and by the sweep. A broker outage leaves `dispatched_at` empty, so the
    sweep tries again; a crash after publishing but before marking publishes twice, which the
    conditional claim turns into a no-op.
    """
    from .tasks import run_job  # tasks imports services; import here to avoid a cycle

    position = {str(job_id): index for index, job_id in enumerate(job_ids)}
    jobs = sorted(
        Job.objects.filter(pk__in=job_ids, status=JobStatus.QUEUED).values_list("pk", "priority", "timeout"),
        key=lambda row: position[str(row[0])],  # publish in the order given (oldest first)
    )
    published: list[Any] = []
    try:
        with run_job.app.producer_or_acquire() as producer:
            for job_id, priority, timeout in jobs:
                limits = {}
                if timeout:
                    # Soft: the job gets SoftTimeLimitExceeded and may clean up; hard: killed.
                    limits = {"soft_time_limit": timeout, "time_limit": timeout + _conf("TIMEOUT_GRACE")}
                run_job.apply_async(
                    args=[str(job_id)],
                    task_id=str(uuid.uuid4()),
                    # kombu's Redis priorities run 0 first; ours run 9 first.
                    priority=9 - priority,
                    retry=False,
                    producer=producer,
                    **limits,
                )
                published.append(job_id)
    except Exception as exc:  # kombu raises several unrelated types for a dead broker
        logger.warning(
            "dispatch of %d job(s) deferred to the sweep, broker unavailable: %s",
            len(jobs) - len(published),
            exc,
        )
    if published:
        Job.objects.filter(pk__in=published, status=JobStatus.QUEUED, dispatched_at__isnull=True).update(
            dispatched_at=timezone.now()
        )
    return len(published)


def jobs_dispatch_pending(*, older_than: float | None = None, limit: int = 500) -> int:
    """The outbox relay: re-publish queued jobs whose dispatch never happened. Returns how many."""
    grace = _conf("DISPATCH_GRACE") if older_than is None else older_than
    cutoff = timezone.now() - timedelta(seconds=grace)
    pending = list(
        Job.objects.filter(status=JobStatus.QUEUED, dispatched_at__isnull=True, created_at__lte=cutoff)
        .order_by("created_at")
        .values_list("pk", flat=True)[:limit]
    )
    return jobs_dispatch(pending) if pending else 0


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
            job = _update(job_id, Q(status=JobStatus.SCHEDULED, run_at__lte=now), status=JobStatus.QUEUED)
            if job is None:
                continue  # cancelled meanwhile
            _publish_on_commit(
                job, "status", _record(job, JobEventKind.STATUS, "Its scheduled time has come; queued.")
            )
            _dispatch_on_commit(job)
            promoted += 1
    return promoted


def idempotency_keys_purge() -> int:
    """Forget idempotency keys older than LONGRUN_IDEMPOTENCY_TTL."""
    cutoff = timezone.now() - timedelta(seconds=_conf("IDEMPOTENCY_TTL"))
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=cutoff).delete()
    return deleted


def sweep() -> dict[str, int]:
    """Periodic maintenance, run by Celery beat on the maintenance queue."""
    return {
        "webhooks": webhooks_dispatch_due(),
        "recovered": jobs_recover_expired_leases(),
        "ended": jobs_enforce_deadlines(),
        "promoted": jobs_promote_scheduled(),
        "dispatched": jobs_dispatch_pending(),
        "idempotency_keys_purged": idempotency_keys_purge(),
    }


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
            lease_expires_at=now + timedelta(seconds=_conf("LEASE_SECONDS")),
        )
        if job is None:
            return None
        _publish_on_commit(
            job,
            "status",
            _record(
                job,
                JobEventKind.STATUS,
                f"Running on {worker} (attempt {job.attempts} of {job.max_attempts}).",
            ),
        )
    return job


def _running_on(worker: str) -> Q:
    return Q(status=JobStatus.RUNNING, worker=worker)


def job_progress(job_id: Any, *, worker: str, percent: int, message: str = "") -> bool:
    """Store the latest progress of a running job. Not a history event; it is published."""
    percent = max(0, min(100, int(percent)))
    with transaction.atomic():
        job = _update(
            job_id,
            _running_on(worker),
            progress=percent,
            progress_message=storable_text(message)[:MAX_PROGRESS_MESSAGE],
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
        _publish_on_commit(job, "log", _record(job, JobEventKind.LOG, storable_text(message)))
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
        _publish_on_commit(job, "status", _record(job, JobEventKind.STATUS, "Cancelled while running."))
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
        _publish_on_commit(job, "status", _record(job, JobEventKind.STATUS, "Succeeded."))
    return job


def job_fail(job_id: Any, *, worker: str, error: dict[str, str], traceback: str = "") -> Job | None:
    """running -> failed with the error, unless a cancel was requested first (-> cancelled)."""
    error = {key: storable_text(str(value)) for key, value in error.items()}
    traceback = storable_text(traceback)
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
        _publish_on_commit(
            job,
            "status",
            _record(
                job,
                JobEventKind.STATUS,
                f"Failed: {error.get('type')}: {error.get('message')}",
                data={"error": error},
            ),
        )
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
    by = _by(actor)
    with transaction.atomic():
        job = _update(
            job_id,
            Q(status__in=[JobStatus.QUEUED, JobStatus.SCHEDULED]),
            status=JobStatus.CANCELLED,
            cancel_requested_at=now,
            finished_at=now,
        )
        if job is not None:
            _publish_on_commit(
                job, "status", _record(job, JobEventKind.STATUS, f"Cancelled{by} before it ran.", actor=actor)
            )
            return job
        job = _update(
            job_id,
            Q(status=JobStatus.RUNNING, cancel_requested_at__isnull=True),
            cancel_requested_at=now,
        )
        if job is not None:
            _publish_on_commit(
                job,
                "cancel_requested",
                _record(job, JobEventKind.CANCEL_REQUESTED, f"Cancel requested{by}.", actor=actor),
            )
            return job
    current = Job.objects.select_related("owner").get(pk=job_id)
    if current.status == JobStatus.RUNNING:
        return current  # already requested: asking again changes nothing
    raise JobStateError(
        f"The job has already {current.status}; it cannot be cancelled.", status=current.status
    )


def job_retry(job_id: Any, *, actor: AbstractBaseUser | None) -> Job:
    """failed or cancelled -> queued: a new attempt of the same job (same id, attempts go on
    counting, one more attempt is allowed). JobStateError for any other status."""
    by = _by(actor)
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
            _publish_on_commit(job, "status", _record(job, JobEventKind.RETRY, f"Retried{by}.", actor=actor))
            _dispatch_on_commit(job)
            return job
    current = Job.objects.get(pk=job_id)
    raise JobStateError(
        f"Only failed or cancelled jobs can be retried; this one is {current.status}.", status=current.status
    )


def jobs_cancel(job_ids: list[Any], *, actor: AbstractBaseUser | None) -> dict[str, int]:
    """Cancel each of the given jobs (the caller has scoped them to what `actor` may act on).
    Each is its own conditional change, so a job that ends meanwhile is counted, not corrupted."""
    counts = {"cancelled": 0, "cancel_requested": 0, "already_finished": 0}
    for job_id in job_ids:
        try:
            job = job_cancel(job_id, actor=actor)
        except JobStateError:
            counts["already_finished"] += 1
            continue
        counts["cancelled" if job.status == JobStatus.CANCELLED else "cancel_requested"] += 1
    return counts


def job_rerun(job_id: Any, *, actor: AbstractBaseUser | None) -> Job:
    """Submit a new job with the same type, params and options as an existing one, for the same
    owner. Both jobs' histories say who did it and link the two."""
    original = Job.objects.select_related("owner").get(pk=job_id)
    by = _by(actor)
    with transaction.atomic():
        job = job_create(
            owner=original.owner,
            type=original.type,
            params=original.params,
            priority=original.priority,
            max_attempts=original.max_attempts,
            timeout=original.timeout,
            callback_url=original.callback_url,
            metadata=original.metadata,
            webhook_events=original.webhook_events,
        )
        job = _bump(job.pk)
        _publish_on_commit(
            job, "log", _record(job, JobEventKind.LOG, f"Re-run of {original.pk}{by}.", actor=actor)
        )
        original = _bump(original.pk)
        _publish_on_commit(
            original, "log", _record(original, JobEventKind.LOG, f"Re-run as {job.pk}{by}.", actor=actor)
        )
    return job


def _bump(job_id: Any) -> Job:
    """A change with no field of its own (a note in the history): version + 1."""
    job = _update(job_id, Q())
    assert job is not None
    return job


# --- leases, retries, timeouts, forced cancels (the worker side and the sweep) ---------------


def job_heartbeat(job_id: Any, *, worker: str) -> tuple[bool, bool]:
    """Renew the lease of a job this worker runs. Returns (still ours, cancel requested). Not a
    change a client sees: the version stays."""
    lease = timezone.now() + timedelta(seconds=_conf("LEASE_SECONDS"))
    renewed = Job.objects.filter(pk=job_id, status=JobStatus.RUNNING, worker=worker).update(
        lease_expires_at=lease
    )
    if not renewed:
        return False, False
    cancel = Job.objects.filter(pk=job_id, cancel_requested_at__isnull=False).exists()
    return True, cancel


def retry_delay(attempt: int) -> float:
    """Exponential backoff with full jitter: uniform(0, min(max, base * 2**(attempt-1)))."""
    ceiling = min(_conf("RETRY_BACKOFF_MAX"), _conf("RETRY_BACKOFF_BASE") * 2 ** max(0, attempt - 1))
    return random.uniform(ceiling / 2, ceiling)  # at least half: a retry storm helps nobody


def job_fail_or_retry(
    job_id: Any, *, worker: str, error: dict[str, str], traceback: str = "", retryable: bool = False
) -> Job | None:
    """The job's code raised. A retryable error with attempts left schedules another attempt
    after a backoff (status `scheduled`); anything else fails the job."""
    job = Job.objects.filter(pk=job_id).only("attempts", "max_attempts").first()
    if job is None or not retryable or job.attempts >= job.max_attempts:
        return job_fail(job_id, worker=worker, error=error, traceback=traceback)
    delay = retry_delay(job.attempts)
    error = {key: storable_text(str(value)) for key, value in error.items()}
    with transaction.atomic():
        updated = _update(
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
        message = (
            f"Attempt {updated.attempts} of {updated.max_attempts} failed ({error.get('type')}: "
            f"{error.get('message')}); retrying in {delay:.1f} s."
        )
        _publish_on_commit(
            updated, "status", _record(updated, JobEventKind.STATUS, message, data={"error": error})
        )
    return updated


def _take_back(job: Job, status: str, note: str, **changes: Any) -> Job | None:
    """End or requeue a running job on behalf of its absent or unresponsive worker (conditional
    on it still being that worker's), and record why. Must run inside a transaction."""
    if status in TERMINAL_STATUSES:
        changes["finished_at"] = timezone.now()
    taken = _update(
        job.pk,
        Q(status=JobStatus.RUNNING, worker=job.worker),
        status=status,
        lease_expires_at=None,
        **changes,
    )
    if taken is not None:
        data = {"error": changes["error"]} if "error" in changes else None
        _publish_on_commit(taken, "status", _record(taken, JobEventKind.STATUS, note, data=data))
    return taken


def _failed_by(job: Job, error: dict[str, str]) -> Job | None:
    return _take_back(job, JobStatus.FAILED, f"Failed: {error['message']}", error=error)


def _lost_worker(job: Job, reason: str) -> None:
    """A running job whose worker is gone: another attempt if any is left, else failed."""
    with transaction.atomic():
        if job.cancel_requested_at is not None:
            _take_back(job, JobStatus.CANCELLED, f"Cancelled: {reason}.")
        elif job.attempts < job.max_attempts:
            note = f"{reason}; queued for attempt {job.attempts + 1} of {job.max_attempts}."
            taken = _take_back(job, JobStatus.QUEUED, note, worker="", dispatched_at=None)
            if taken is not None:
                _dispatch_on_commit(taken)
        else:
            message = f"{reason} on attempt {job.attempts} of {job.max_attempts}."
            _failed_by(job, {"type": "WorkerLost", "message": message})


def jobs_recover_expired_leases(*, limit: int = 200) -> int:
    """Running jobs whose worker stopped renewing the lease (it died, or its machine did): take
    them back. Heartbeat-based: a healthy long job keeps its lease however long it runs."""
    expired = list(
        Job.objects.filter(status=JobStatus.RUNNING, lease_expires_at__lt=timezone.now()).order_by(
            "lease_expires_at"
        )[:limit]
    )
    for job in expired:
        _lost_worker(job, f"Worker {job.worker} stopped answering (lease expired)")
    return len(expired)


def jobs_enforce_deadlines(*, limit: int = 200) -> int:
    """Running jobs past their timeout plus the grace (the hard limit should have ended them), and
    running jobs that ignored a cancel for longer than the grace: end them here, and have their
    worker process terminated in case it is still at it."""
    from .tasks import terminate_task  # tasks imports services

    now = timezone.now()
    ended = 0
    cancel_cutoff = now - timedelta(seconds=_conf("CANCEL_GRACE"))
    for job in Job.objects.filter(status=JobStatus.RUNNING, cancel_requested_at__lt=cancel_cutoff)[:limit]:
        note = f"Did not stop within {_conf('CANCEL_GRACE'):.0f} s of the cancel request; its process was terminated."
        with transaction.atomic():
            if _take_back(job, JobStatus.CANCELLED, note) is not None:
                transaction.on_commit(partial(terminate_task, job.celery_task_id))
                ended += 1
    grace = timedelta(seconds=_conf("TIMEOUT_GRACE") * 2)
    running_with_timeout = Job.objects.filter(
        status=JobStatus.RUNNING, timeout__isnull=False, started_at__isnull=False
    )
    for job in running_with_timeout[:limit]:
        if job.started_at + timedelta(seconds=job.timeout) + grace > now:
            continue
        error = {
            "type": "TimeoutError",
            "message": f"The job ran longer than its timeout of {job.timeout} s.",
        }
        with transaction.atomic():
            if _failed_by(job, error) is not None:
                transaction.on_commit(partial(terminate_task, job.celery_task_id))
                ended += 1
    return ended


def jobs_release(job_ids: list[Any], *, worker: str) -> int:
    """Give running jobs back (a worker shutting down): they go back to the queue at once,
    without waiting for the lease to lapse. Returns how many."""
    released = 0
    for job in Job.objects.filter(pk__in=job_ids, status=JobStatus.RUNNING, worker=worker):
        _lost_worker(job, f"Worker {worker} shut down before the job finished")
        released += 1
    return released


# --- webhooks -------------------------------------------------------------------------------

WEBHOOK_EVENTS = {
    JobStatus.SUCCEEDED: "job.succeeded",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
}


OPTIONAL_WEBHOOK_EVENTS = ("job.progress", "job.started")


def _progress_hook_due(job: Job) -> bool:
    """job.progress deliveries are throttled: at most one per LONGRUN_WEBHOOK_PROGRESS_INTERVAL."""
    since = timezone.now() - timedelta(seconds=_conf("WEBHOOK_PROGRESS_INTERVAL"))
    return not WebhookDelivery.objects.filter(
        job=job, event_type="job.progress", created_at__gte=since
    ).exists()


def _webhook_outbox(job: Job, job_data: dict[str, Any], event_type: str) -> None:
    """In the transaction of the change it reports: the delivery row (an outbox), sent after
    commit and, if that is lost, by the sweep."""
    gone = WebhookDelivery.objects.filter(
        job__owner_id=job.owner_id, url=job.callback_url, status=DeliveryStatus.GONE
    ).exists()
    if gone:
        return  # the receiver answered 410 Gone: no more deliveries to that URL
    n = (WebhookDelivery.objects.filter(job=job).aggregate(last=Max("n"))["last"] or 0) + 1
    now = timezone.now()
    delivery = WebhookDelivery.objects.create(
        job=job,
        n=n,
        event_type=event_type,
        webhook_id=f"msg_{uuid.uuid4().hex}",
        url=job.callback_url,
        payload={"type": event_type, "timestamp": now.isoformat().replace("+00:00", "Z"), "data": job_data},
        next_attempt_at=now,
        locked_until=now + timedelta(seconds=60),
    )
    transaction.on_commit(partial(webhooks_dispatch, [delivery.pk]))


def webhooks_dispatch(delivery_ids: list[Any]) -> int:
    """Queue delivery tasks (on their own queue). A lost message is re-sent by the sweep once
    the delivery's `locked_until` has passed."""
    from .tasks import deliver_webhook

    sent = 0
    for delivery_id in delivery_ids:
        try:
            deliver_webhook.apply_async(args=[delivery_id], queue=WEBHOOK_QUEUE, retry=False)
            sent += 1
        except Exception as exc:  # broker down: the sweep tries again
            logger.warning("webhook delivery %s deferred to the sweep: %s", delivery_id, exc)
            break
    return sent


def webhooks_dispatch_due(*, limit: int = 500) -> int:
    """The sweep's part: pending deliveries that are due and not waiting in the queue already,
    and deliveries whose sender vanished mid-attempt."""
    now = timezone.now()
    WebhookDelivery.objects.filter(status=DeliveryStatus.SENDING, locked_until__lt=now).update(
        status=DeliveryStatus.PENDING, locked_until=None
    )
    due = list(
        WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now)
        .filter(Q(locked_until__isnull=True) | Q(locked_until__lt=now))
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
    if not due:
        return 0
    WebhookDelivery.objects.filter(pk__in=due).update(locked_until=now + timedelta(seconds=60))
    return webhooks_dispatch(due)


def webhook_claim(delivery_id: Any) -> WebhookDelivery | None:
    """pending (and due) -> sending for one sender; None if another has it or it is not due."""
    now = timezone.now()
    hold = now + timedelta(seconds=_conf("WEBHOOK_TIMEOUT") + 30)
    claimed = WebhookDelivery.objects.filter(
        pk=delivery_id, status=DeliveryStatus.PENDING, next_attempt_at__lte=now
    ).update(status=DeliveryStatus.SENDING, locked_until=hold)
    if not claimed:
        return None
    return WebhookDelivery.objects.select_related("job").get(pk=delivery_id)


def webhook_record_attempt(
    delivery: WebhookDelivery, outcome: webhooks.Outcome, *, started_at: datetime
) -> WebhookDelivery:
    """Record one attempt and decide what comes next: delivered (2xx), gone for good (410: no
    more deliveries to that URL), another try after a backoff, or failed after the schedule."""
    schedule = _conf("WEBHOOK_RETRY_SCHEDULE")
    code = outcome.status_code
    with transaction.atomic():
        WebhookAttempt.objects.create(
            delivery=delivery,
            started_at=started_at,
            duration_ms=outcome.duration_ms,
            status_code=code,
            error=outcome.error[:500],
            response_body=storable_text(outcome.body)[:1024],
        )
        attempts = delivery.attempts + 1
        changes: dict[str, Any] = {
            "attempts": attempts,
            "last_status_code": code,
            "last_error": outcome.error[:500],
            "locked_until": None,
        }
        if code is not None and 200 <= code < 300:
            changes.update(status=DeliveryStatus.SUCCEEDED, delivered_at=timezone.now(), next_attempt_at=None)
        elif code == 410:
            changes.update(status=DeliveryStatus.GONE, next_attempt_at=None)
            WebhookDelivery.objects.filter(
                job__owner_id=delivery.job.owner_id, url=delivery.url, status=DeliveryStatus.PENDING
            ).exclude(pk=delivery.pk).update(status=DeliveryStatus.GONE, next_attempt_at=None)
        elif attempts > len(schedule):
            changes.update(status=DeliveryStatus.FAILED, next_attempt_at=None)
        else:
            delay = schedule[attempts - 1] * random.uniform(0.8, 1.2)
            changes.update(
                status=DeliveryStatus.PENDING, next_attempt_at=timezone.now() + timedelta(seconds=delay)
            )
        WebhookDelivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.SENDING).update(**changes)
    delivery.refresh_from_db()
    return delivery


def webhook_redeliver(delivery_id: Any) -> WebhookDelivery:
    """Send a delivery again now (same webhook-id). JobStateError while it is being sent."""
    now = timezone.now()
    with transaction.atomic():
        changed = (
            WebhookDelivery.objects.filter(pk=delivery_id)
            .exclude(status=DeliveryStatus.SENDING)
            .update(
                status=DeliveryStatus.PENDING, next_attempt_at=now, locked_until=now + timedelta(seconds=60)
            )
        )
        if not changed:
            raise JobStateError("This delivery is being sent right now; try again in a moment.")
        transaction.on_commit(partial(webhooks_dispatch, [delivery_id]))
    return WebhookDelivery.objects.get(pk=delivery_id)


def signing_secrets(owner: AbstractBaseUser) -> list[SigningSecret]:
    """The user's valid signing secrets, newest first; the first is created on first use."""
    now = timezone.now()
    valid = list(
        SigningSecret.objects.filter(owner=owner).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
    )
    if not valid:
        valid = [SigningSecret.objects.create(owner=owner, secret=webhooks.new_secret())]
    return valid


def signing_secret_rotate(owner: AbstractBaseUser) -> list[SigningSecret]:
    """A new secret; the current ones stay valid for LONGRUN_WEBHOOK_SECRET_GRACE seconds."""
    with transaction.atomic():
        grace = timezone.now() + timedelta(seconds=_conf("WEBHOOK_SECRET_GRACE"))
        SigningSecret.objects.filter(owner=owner).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=grace)
        ).update(expires_at=grace)
        SigningSecret.objects.create(owner=owner, secret=webhooks.new_secret())
    return signing_secrets(owner)
