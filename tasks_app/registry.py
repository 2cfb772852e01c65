"""The job type registry.

A job type is a function registered under a name with a description and a JSON Schema for its
parameters. Adding one is a single decorated function::

    @job_type("resize", description="Resize an image", params_schema={...})
    def resize(ctx: JobContext, *, url: str, width: int) -> dict: ...

The function receives a `JobContext` and the validated params as keyword arguments; its return
value (JSON) becomes the job's result and an exception becomes its error.

A type may name its Celery queue (`queue="cpu"`), so that its jobs run only on workers started
for that queue (`celery -A project worker -Q cpu`); the others go to `conf.JOB_QUEUE`.

A type may declare schedules, which become managed schedule rows::

    @job_type("report", ..., schedules=[every("weekday report", cron="0 9 * * 1-5", timezone="Europe/Paris")])
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Q
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from .conf import JOB_QUEUE, LONGRUN_QUEUES

JobFunction = Callable[..., Any]


@dataclass(frozen=True)
class DeclaredSchedule:
    """A schedule declared in code with its job type (`@job_type(..., schedules=[...])`): synced
    as a managed row at start-up and by `manage.py schedules sync`. Give `cron` (five fields, in
    `timezone`) or `interval` (seconds); the other fields are a schedule's (see the README)."""

    name: str
    cron: str = ""
    interval: int | None = None
    timezone: str = "UTC"
    params: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # priority, overlap, catchup, metadata...


def every(
    name: str,
    *,
    cron: str = "",
    interval: int | None = None,
    timezone: str = "UTC",
    params: dict[str, Any] | None = None,
    **options: Any,
) -> DeclaredSchedule:
    """A schedule for `@job_type(schedules=[...])`: every("nightly", cron="0 3 * * *")."""
    return DeclaredSchedule(
        name=name, cron=cron, interval=interval, timezone=timezone, params=dict(params or {}), options=options
    )


@dataclass(frozen=True)
class JobType:
    name: str
    func: JobFunction
    description: str
    params_schema: dict[str, Any]
    # Exceptions that mean "try again later" (network blips...); anything else fails the job.
    retry_on: tuple[type[BaseException], ...] = ()
    # Default timeout in seconds when the submitter gives none; None means no limit.
    default_timeout: int | None = None
    # The Celery queue its jobs are published to; workers started for it run them.
    queue: str = JOB_QUEUE
    # Schedules declared with it (managed rows, `services.schedules.schedules_sync`).
    schedules: tuple[DeclaredSchedule, ...] = ()
    validator: Draft202012Validator = field(repr=False, compare=False, default=None)  # type: ignore[assignment]


class UnknownJobType(LookupError):
    pass


_registry: dict[str, JobType] = {}


def job_type(
    name: str,
    *,
    description: str,
    params_schema: dict[str, Any],
    retry_on: tuple[type[BaseException], ...] = (),
    default_timeout: int | None = None,
    queue: str = JOB_QUEUE,
    schedules: Sequence[DeclaredSchedule] = (),
) -> Callable[[JobFunction], JobFunction]:
    """Register the decorated function as the job type `name`, its jobs published to `queue`."""
    if not _is_name(name):
        raise ValueError(f"job type name {name!r}: use letters, digits, '_', '-', '.'")
    if not _is_name(queue) or len(queue) > 100:
        raise ValueError(f"job type {name!r}: queue {queue!r}: use up to 100 letters, digits, '_', '-', '.'")
    if queue in LONGRUN_QUEUES and queue != JOB_QUEUE:
        raise ValueError(f"job type {name!r}: queue {queue!r} is Longrun's own, not for jobs")
    try:
        Draft202012Validator.check_schema(params_schema)
    except SchemaError as exc:
        raise ValueError(f"job type {name!r}: invalid params schema: {exc.message}") from exc
    if params_schema.get("type") != "object":
        raise ValueError(f"job type {name!r}: params schema must describe an object")

    def register(func: JobFunction) -> JobFunction:
        if name in _registry and _registry[name].func is not func:
            raise ValueError(f"job type {name!r} is already registered")
        _registry[name] = JobType(
            name=name,
            func=func,
            description=description,
            params_schema=params_schema,
            retry_on=tuple(retry_on),
            default_timeout=default_timeout,
            queue=queue,
            schedules=tuple(schedules),
            validator=Draft202012Validator(params_schema),
        )
        return func

    return register


def _is_name(name: str) -> bool:
    return bool(name) and name.replace("_", "").replace("-", "").replace(".", "").isalnum()


def get_job_type(name: str) -> JobType:
    try:
        return _registry[name]
    except KeyError:
        raise UnknownJobType(name) from None


def first_registered() -> str | None:
    """The type registered first (the built-ins' `sleep`): the dashboard form's choice for someone
    who has submitted nothing yet."""
    return next(iter(_registry), None)


def job_types_in_registration_order() -> list[JobType]:
    """The built-ins first (`sleep`, `primes`, `fail`), then those of LONGRUN_JOB_MODULES."""
    return list(_registry.values())


def all_job_types() -> list[JobType]:
    return sorted(_registry.values(), key=lambda jt: jt.name)


def queue_of(type_name: str) -> str:
    """The queue a job of this type is published to; a type no longer registered goes to the
    default queue, where a worker fails it with a clear error rather than leaving it waiting."""
    job_type_ = _registry.get(type_name)
    return job_type_.queue if job_type_ else JOB_QUEUE


def job_queues() -> list[str]:
    """Every queue that carries jobs: the default one first, then those job types name."""
    return [JOB_QUEUE, *sorted({jt.queue for jt in _registry.values()} - {JOB_QUEUE})]


def job_queue_filter(queue: str) -> Q:
    """The jobs whose type is published to `queue`, as a filter on Job."""
    routed = {jt.name: jt.queue for jt in _registry.values() if jt.queue != JOB_QUEUE}
    if queue == JOB_QUEUE:
        return ~Q(type__in=sorted(routed))
    return Q(type__in=sorted(name for name, routed_to in routed.items() if routed_to == queue))


def validate_params(jt: JobType, params: Any) -> dict[str, list[str]]:
    """Check `params` against the type's schema.

    Returns {field path: [reasons]}, empty when valid. The path is dotted ("size.width"), or
    "" for the object as a whole.
    """
    errors: dict[str, list[str]] = {}

    def add(path: list[str], reason: str) -> None:
        reasons = errors.setdefault(".".join(path), [])
        if reason not in reasons:
            reasons.append(reason)

    for error in sorted(jt.validator.iter_errors(params), key=lambda e: list(e.absolute_path)):
        path = [str(p) for p in error.absolute_path]
        if error.validator == "required" and isinstance(error.instance, dict):
            # jsonschema reports a missing key on the object that lacks it; name the key itself.
            for key in error.validator_value:
                if key not in error.instance:
                    add([*path, key], "This field is required.")
            continue
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = set(error.schema.get("properties", {}))
            patterns = list(error.schema.get("patternProperties", {}))
            for key in sorted(error.instance):
                if key not in allowed and not any(re.search(p, key) for p in patterns):
                    add([*path, key], "Unknown field.")
            continue
        add(path, error.message)
    return errors


def apply_defaults(jt: JobType, params: dict[str, Any]) -> dict[str, Any]:
    """Fill in top-level defaults from the schema, so the stored params say what will run."""
    filled = dict(params)
    for key, prop in jt.params_schema.get("properties", {}).items():
        if key not in filled and isinstance(prop, dict) and "default" in prop:
            filled[key] = prop["default"]
    return filled


def declared_schedules() -> list[tuple[str, DeclaredSchedule]]:
    """(job type name, schedule) for every schedule declared in code."""
    return [(jt.name, declared) for jt in _registry.values() for declared in jt.schedules]
