"""Submitting jobs: validation against the registry and the limits, then one transaction that
writes the job and its first history entry. A queued job is dispatched after commit; a scheduled
one by the sweep when its time comes."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.sql import InsertQuery
from django.utils import timezone

from .. import registry, webhooks
from ..conf import (
    DEFAULT_PRIORITY,
    MAX_ATTEMPTS_LIMIT,
    METADATA_KEY_MAX,
    METADATA_KEY_PATTERN,
    METADATA_MAX_KEYS,
    METADATA_VALUE_MAX,
    OPTIONAL_WEBHOOK_EVENTS,
    PRIORITY_MAX,
    PRIORITY_MIN,
    app_settings,
)
from ..exceptions import IdempotencyConflict, JobValidationError
from ..models import IdempotencyKey, Job, JobEvent, JobEventKind, JobStatus, Schedule
from . import dispatch, notify
from .common import NUL_MESSAGE, SURROGATE_MESSAGE, has_nul, surrogate_path

if TYPE_CHECKING:
    from django.contrib.auth.models import User

Errors = dict[str, list[str]]


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
    priority: int = DEFAULT_PRIORITY,
    max_attempts: int | None = None,
    run_at: datetime | None = None,
    timeout: int | None = None,
    callback_url: str = "",
    metadata: Any = None,
    webhook_events: Any = None,
) -> JobSpec:
    """Check a submission against the registry and the limits; JobValidationError names each
    field at fault. Returns the submission with the type's defaults filled in."""
    params = {} if params is None else params
    metadata = {} if metadata is None else metadata
    webhook_events = [] if webhook_events is None else webhook_events
    job_type, errors = _type_and_params_errors(type, params)
    errors.update(
        _option_errors(priority=priority, max_attempts=max_attempts, timeout=timeout, run_at=run_at)
    )
    errors.update(_callback_errors(callback_url, webhook_events))
    errors.update(_metadata_errors(metadata))
    for name, value in (("params", params), ("metadata", metadata), ("callback_url", callback_url)):
        if name in errors:
            continue
        if has_nul(value):
            errors[name] = [NUL_MESSAGE]
        elif surrogate_path(value) is not None:
            errors[name] = [SURROGATE_MESSAGE]
    if errors:
        raise JobValidationError(errors)
    assert job_type is not None
    return JobSpec(
        type=job_type.name,
        params=registry.apply_defaults(job_type, params),
        priority=priority,
        max_attempts=max_attempts or app_settings.DEFAULT_MAX_ATTEMPTS,
        run_at=run_at,
        timeout=timeout if timeout is not None else job_type.default_timeout,
        callback_url=callback_url,
        metadata=metadata,
        webhook_events=sorted(set(webhook_events)),
    )


def _type_and_params_errors(type_name: str, params: Any) -> tuple[registry.JobType | None, Errors]:
    errors: Errors = {}
    job_type = None
    try:
        job_type = registry.get_job_type(type_name)
    except registry.UnknownJobType:
        known = ", ".join(t.name for t in registry.all_job_types())
        errors["type"] = [f"Unknown job type {type_name!r}. Known types: {known}."]
    if not isinstance(params, dict):
        errors["params"] = ["Must be a JSON object."]
    elif job_type is not None:
        for path, reasons in registry.validate_params(job_type, params).items():
            errors["params." + path if path else "params"] = reasons
    return job_type, errors


def _option_errors(
    *, priority: int, max_attempts: int | None, timeout: int | None, run_at: datetime | None
) -> Errors:
    errors: Errors = {}
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        errors["priority"] = [f"Must be between {PRIORITY_MIN} and {PRIORITY_MAX}."]
    if max_attempts is not None and not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
        errors["max_attempts"] = [f"Must be between 1 and {MAX_ATTEMPTS_LIMIT}."]
    max_timeout = app_settings.MAX_TIMEOUT
    if timeout is not None and not 1 <= timeout <= max_timeout:
        errors["timeout"] = [f"Must be between 1 and {max_timeout} seconds."]
    if run_at is not None and timezone.is_naive(run_at):
        errors["run_at"] = ["Must include a time zone (for example 2030-01-01T12:00:00Z)."]
    return errors


def _callback_errors(callback_url: str, webhook_events: Any) -> Errors:
    errors: Errors = {}
    if callback_url:
        try:
            webhooks.check_url(callback_url)
        except webhooks.UnresolvableURL:
            pass  # undecidable now (DNS may be down); checked again before every delivery
        except webhooks.UnsafeURL as exc:
            errors["callback_url"] = [str(exc)]
    if not isinstance(webhook_events, list) or not set(webhook_events) <= set(OPTIONAL_WEBHOOK_EVENTS):
        errors["webhook_events"] = [f"A list of: {', '.join(OPTIONAL_WEBHOOK_EVENTS)}."]
    elif webhook_events and not callback_url:
        errors["webhook_events"] = ["Needs a callback_url."]
    return errors


def _metadata_errors(metadata: Any) -> Errors:
    """Metadata follows Stripe's rules (see `conf`)."""
    if not isinstance(metadata, dict):
        return {"metadata": ["Must be a JSON object."]}
    errors: Errors = {}
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


def submission_of(source: Job | Schedule) -> dict[str, Any]:
    """The type, params and options (not run_at) of a job, or of the jobs a schedule makes: the
    arguments `job_create` takes to submit it (again)."""
    return {field.name: getattr(source, field.name) for field in fields(JobSpec) if field.name != "run_at"}


def _new_job(spec: JobSpec, owner: User, **origin: Any) -> Job:
    scheduled = spec.run_at is not None and spec.run_at > timezone.now()
    status = JobStatus.SCHEDULED if scheduled else JobStatus.QUEUED
    return Job(**vars(spec), owner=owner, status=status, **origin)


def _created_event(job: Job, owner: User) -> JobEvent:
    when = (
        f", scheduled for {job.run_at.isoformat()}"
        if job.status == JobStatus.SCHEDULED and job.run_at
        else ""
    )
    if job.schedule is not None:
        slot = f" for its {job.scheduled_for.isoformat()} slot" if job.scheduled_for else ", run now"
        message = f"Started by schedule {job.schedule.name!r}{slot}."
    else:
        message = f"Submitted by {owner.get_username()}{when}."
    return JobEvent(
        job=job, seq=job.version, kind=JobEventKind.CREATED, status=job.status, message=message, actor=owner
    )


def job_create(
    *, owner: User, schedule: Schedule | None = None, scheduled_for: datetime | None = None, **submission: Any
) -> Job:
    """Validate and persist a new job (see `job_validate` for the fields), made by `schedule`
    for its `scheduled_for` slot if given. A queued job is dispatched to the workers after
    commit; a scheduled one by the sweep when its time comes."""
    spec = job_validate(**submission)
    job = _new_job(spec, owner, schedule=schedule, scheduled_for=scheduled_for)
    entry = _created_event(job, owner)
    connection = connections[Job.objects.db]
    if connection.vendor == "postgresql":
        # One statement writes both rows (atomic by itself): no BEGIN/COMMIT round trips unless
        # the caller holds a transaction (then it joins it, and on-commit waits for its commit).
        _insert_job_and_event(connection, job, entry)
        _after_create(job, entry)
        return job
    with transaction.atomic():
        job.save(force_insert=True)
        entry.save(force_insert=True)
        _after_create(job, entry)
    return job


def _after_create(job: Job, entry: JobEvent) -> None:
    notify.job_changed_on_commit(job, "created", entry)
    if job.status == JobStatus.QUEUED:
        dispatch.dispatch_on_commit(job)


def _insert_job_and_event(connection: BaseDatabaseWrapper, job: Job, entry: JobEvent) -> None:
    """`WITH new_job AS (INSERT INTO job ...) INSERT INTO jobevent ...`: the event's foreign key
    is checked at commit (Django's PostgreSQL constraints are deferred), when the job exists."""
    statements = []
    for instance in (job, entry):
        model = type(instance)
        query = InsertQuery(model)
        query.insert_values(
            [f for f in model._meta.concrete_fields if not f.primary_key or f.has_default()], [instance]
        )
        ((sql, params),) = query.get_compiler(connection=connection).as_sql()
        statements.append((sql, params))
    (job_sql, job_params), (event_sql, event_params) = statements
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH new_job AS ({job_sql} RETURNING 1) {event_sql} RETURNING id", [*job_params, *event_params]
        )
        (entry.pk,) = cursor.fetchone()
    job._state.adding = entry._state.adding = False
    job._state.db = entry._state.db = connection.alias


def job_create_idempotent(*, owner: User, key: str, fingerprint: str, **submission: Any) -> tuple[Job, bool]:
    """`job_create` under an Idempotency-Key. Returns (job, replayed).

    The same key with the same fingerprint (a hash of the request body) returns the job the
    first request created and creates nothing; with another fingerprint it is an
    IdempotencyConflict. Concurrent requests race on the unique (owner, key) constraint: one
    INSERT wins, the others wait for its commit, fail, and replay its job.
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


def jobs_create_bulk(*, owner: User, submissions: list[dict[str, Any]]) -> list[Job]:
    """Validate every submission first (all or nothing: JobValidationError with fields like
    "jobs.3.params.n"), then write them with one bulk INSERT and dispatch them after commit
    over one broker connection."""
    specs: list[JobSpec] = []
    errors: Errors = {}
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
        notify.jobs_created_on_commit(owner.pk, jobs)
        queued = [job for job in jobs if job.status == JobStatus.QUEUED]
        if queued:
            dispatch.jobs_dispatch_on_commit(queued)
    return jobs
