"""Recurring jobs: creating, changing, pausing and deleting schedules, and firing the due ones
(the sweep calls `schedules_fire_due` each round).

Firing is exactly once per slot however many sweepers run: a sweeper first moves the
schedule's `next_fire_at` on with a conditional UPDATE (the one that matched the old value
wins; the others do nothing), and the job it then creates carries (schedule, scheduled_for),
unique in the database, so a replay that got past the first guard still creates nothing. Both
happen in one transaction. The database's clock decides what is due.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from .. import recurrence, registry
from ..conf import DEFAULT_PRIORITY, SCHEDULE_CATCHUP_LIMIT, SCHEDULE_FIRE_BATCH, app_settings
from ..exceptions import JobStateError, JobValidationError
from ..models import ACTIVE_STATUSES, Job, Schedule, ScheduleCatchup, ScheduleOverlap
from . import control, notify, submission

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)

Errors = dict[str, list[str]]

# What a schedule's submission is made of: the job options a POST /api/jobs/ takes.
JOB_OPTIONS = ("priority", "max_attempts", "timeout", "metadata", "callback_url", "webhook_events")
# What defines when it fires; of a managed schedule, code alone may change these.
RECURRENCE_FIELDS = ("cron", "interval", "timezone", "start_at", "end_at", "overlap", "catchup")
EDITABLE_FIELDS = ("name", "type", "params", *JOB_OPTIONS, *RECURRENCE_FIELDS)


def database_now() -> datetime:
    """The database server's clock: every sweeper, on any machine, reads the same one."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT CURRENT_TIMESTAMP")
        value = cursor.fetchone()[0]
    if isinstance(value, str):  # SQLite: "YYYY-MM-DD HH:MM:SS", UTC, whole seconds
        value = datetime.fromisoformat(value)
    return value if timezone.is_aware(value) else value.replace(tzinfo=UTC)


# --- validation -------------------------------------------------------------------------------


def _validated(values: dict[str, Any]) -> dict[str, Any]:
    """Check a schedule's fields as a whole; JobValidationError names each field at fault.
    The type, params and job options are checked as a submission is, so a slot never fails
    validation unless the type changed since."""
    errors = recurrence.recurrence_errors(values)
    name = values.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        errors["name"] = ["1 to 200 characters."]
    job: dict[str, Any] = {key: values.get(key) for key in ("type", "params", *JOB_OPTIONS)}
    try:
        spec = submission.job_validate(**job)
    except JobValidationError as exc:
        errors.update(exc.errors)
    if errors:
        raise JobValidationError(errors)
    assert isinstance(name, str)
    return {**values, "name": name.strip(), "params": spec.params}


def _defaults() -> dict[str, Any]:
    return {
        "params": {},
        "priority": DEFAULT_PRIORITY,
        "max_attempts": None,
        "timeout": None,
        "metadata": {},
        "callback_url": "",
        "webhook_events": [],
        "cron": "",
        "interval": None,
        "timezone": "UTC",
        "start_at": None,
        "end_at": None,
        "overlap": ScheduleOverlap.SKIP,
        "catchup": ScheduleCatchup.LATEST,
    }


def _name_taken(owner: User, name: str, *, other_than: Any = None) -> bool:
    taken = Schedule.objects.filter(owner=owner, name=name)
    return taken.exclude(pk=other_than).exists() if other_than else taken.exists()


# --- one function per change ------------------------------------------------------------------


def schedule_check(
    *, owner: User, schedule: Schedule | None = None, from_code: bool = False, **fields: Any
) -> dict[str, Any]:
    """The fields of a new schedule of `owner` (or of `schedule` after the change) as they would
    be saved, checked as a whole; JobValidationError naming each field at fault (a name the
    owner already uses, and an operator's change to a schedule declared in code, included).
    Writes nothing: the create and update below, and a form that wants its errors first, ask it."""
    unknown = set(fields) - set(EDITABLE_FIELDS)
    if unknown:
        raise JobValidationError({name: ["Unknown field."] for name in sorted(unknown)})
    if schedule is not None and schedule.managed and not from_code:
        changed = sorted(name for name, value in fields.items() if getattr(schedule, name) != value)
        if changed:
            reason = f"Declared in code by job type {schedule.type!r}; change it there. Only pause and resume are yours."
            raise JobValidationError({name: [reason] for name in changed})
    current = _defaults() if schedule is None else {name: getattr(schedule, name) for name in EDITABLE_FIELDS}
    values = _validated({**current, **fields})
    if _name_taken(owner, values["name"], other_than=schedule.pk if schedule is not None else None):
        raise JobValidationError({"name": ["You already have a schedule with this name."]})
    return values


def schedule_create(*, owner: User, managed: bool = False, **fields: Any) -> Schedule:
    """A new schedule, enabled, its first slot computed. JobValidationError for bad input (a
    name the owner already uses included)."""
    values = schedule_check(owner=owner, **fields)
    schedule = Schedule(owner=owner, managed=managed, **values)
    schedule.created_at = database_now()
    schedule.next_fire_at = recurrence.first_slot(schedule, schedule.created_at)
    with transaction.atomic():
        try:
            with transaction.atomic():
                schedule.save(force_insert=True)
        except IntegrityError:
            raise JobValidationError({"name": ["You already have a schedule with this name."]}) from None
        notify.schedule_changed_on_commit(schedule, "created")
    return schedule


def schedule_update(
    *, schedule_id: Any, actor: Any = None, from_code: bool = False, **fields: Any
) -> Schedule:
    """Change a schedule's fields (any of EDITABLE_FIELDS); its next slot is worked out again
    from now. A managed schedule's fields are changed by code alone (`from_code`): an operator
    is refused, naming the fields, and told where to change them."""
    schedule = Schedule.objects.select_related("owner").get(pk=schedule_id)
    values = schedule_check(owner=schedule.owner, schedule=schedule, from_code=from_code, **fields)
    for name, value in values.items():
        setattr(schedule, name, value)
    now = database_now()
    next_fire_at = recurrence.first_slot(schedule, now) if schedule.enabled else None
    with transaction.atomic():
        Schedule.objects.filter(pk=schedule.pk).update(
            **values, next_fire_at=next_fire_at, disabled_reason="", updated_at=now, version=F("version") + 1
        )
        schedule.refresh_from_db()
        notify.schedule_changed_on_commit(schedule, "updated")
    return schedule


def _set_enabled(schedule_id: Any, enabled: bool, *, reason: str = "") -> Schedule:
    """Pause or resume (or disable with a reason, for the system): conditional on the state, so
    a repeat changes nothing and publishes nothing."""
    with transaction.atomic():
        schedule = Schedule.objects.select_for_update().get(pk=schedule_id)
        if schedule.enabled == enabled and not reason:
            return schedule
        now = database_now()
        schedule.enabled = enabled
        schedule.next_fire_at = recurrence.first_slot(schedule, now) if enabled else None
        schedule.disabled_reason = reason
        Schedule.objects.filter(pk=schedule.pk).update(
            enabled=enabled,
            next_fire_at=schedule.next_fire_at,
            disabled_reason=reason,
            updated_at=now,
            version=F("version") + 1,
        )
        schedule.refresh_from_db()
        notify.schedule_changed_on_commit(schedule, "paused" if not enabled else "resumed")
    return schedule


def schedule_pause(*, schedule_id: Any) -> Schedule:
    """Stop firing (a managed schedule too; the pause survives deploys: sync never resumes)."""
    return _set_enabled(schedule_id, False)


def schedule_resume(*, schedule_id: Any) -> Schedule:
    """Fire again from the next slot after now; the slots missed while paused are not fired."""
    return _set_enabled(schedule_id, True)


def schedule_delete(*, schedule_id: Any, from_code: bool = False) -> None:
    """Delete a schedule; the jobs it created stay (their `schedule` becomes null). A managed
    schedule goes when its declaration does (JobStateError for anyone else: pause it instead)."""
    with transaction.atomic():
        schedule = Schedule.objects.get(pk=schedule_id)
        if schedule.managed and not from_code:
            raise JobStateError(
                f"Declared in code by job type {schedule.type!r}: remove it there, or pause it here."
            )
        notify.schedule_changed_on_commit(schedule, "deleted")
        schedule.delete()


def schedule_run_now(*, schedule_id: Any, actor: Any) -> Job:
    """A job of the schedule now, outside its slots (its `scheduled_for` stays null)."""
    schedule = Schedule.objects.select_related("owner").get(pk=schedule_id)
    try:
        return submission.job_create(
            owner=schedule.owner, schedule=schedule, **submission.submission_of(schedule)
        )
    except JobValidationError as exc:
        raise JobStateError(f"The schedule's job is not valid any more: {_reasons(exc.errors)}") from None


def _reasons(errors: Errors) -> str:
    return "; ".join(f"{field}: {' '.join(reasons)}" for field, reasons in errors.items())


# --- firing -----------------------------------------------------------------------------------


def schedules_fire_due(*, limit: int = SCHEDULE_FIRE_BATCH) -> int:
    """Fire the schedules whose slot has come (at most `limit`, the most overdue first); returns
    the jobs created. Each schedule in its own transaction, so one that fails stops no other."""
    now = database_now()
    # Read once for the round: another sweeper may fire one meanwhile, which the conditional
    # UPDATE in _fire_slots finds out.
    due = list(
        Schedule.objects.filter(enabled=True, next_fire_at__lte=now)
        .select_related("owner")
        .order_by("next_fire_at")[:limit]
    )
    created = 0
    for schedule in due:
        try:
            created += _fire(schedule, now)
        except Exception:  # one broken schedule must not stop the sweep
            logger.exception("schedule %s could not be fired", schedule.pk)
    return created


def _slots_to_fire(schedule: Schedule, now: datetime) -> tuple[list[datetime], datetime | None]:
    """The slots from next_fire_at up to now that the catch-up policy fires, and the first slot
    after now."""
    assert schedule.next_fire_at is not None
    due = [schedule.next_fire_at]
    upcoming = recurrence.slots_after(schedule, schedule.next_fire_at)
    next_slot = next(upcoming, None)
    while next_slot is not None and next_slot <= now:
        due.append(next_slot)
        if len(due) > SCHEDULE_CATCHUP_LIMIT:
            due.pop(0)  # "all" fires the latest ones up to the bound
        next_slot = next(upcoming, None)
    if schedule.catchup == ScheduleCatchup.ALL:
        return due, next_slot
    latest = due[-1]
    # A slot is missed when the sweep should have fired it a while ago (one interval's grace).
    missed = latest < now - timedelta(seconds=2 * app_settings.SWEEP_INTERVAL + 1)
    if schedule.catchup == ScheduleCatchup.NONE and missed:
        return [], next_slot
    return [latest], next_slot


def _fire(schedule: Schedule, now: datetime) -> int:
    if schedule.next_fire_at is None:
        return 0
    problem = _cannot_fire(schedule)
    if problem:
        _set_enabled(schedule.pk, False, reason=problem)
        return 0
    slots, next_slot = _slots_to_fire(schedule, now)
    try:
        return _fire_slots(schedule, slots, next_slot, now)
    except JobValidationError as refused:  # an option no longer passes (a callback URL, a limit)
        _set_enabled(schedule.pk, False, reason=f"Its job is not valid any more: {_reasons(refused.errors)}")
        return 0


def _fire_slots(schedule: Schedule, slots: list[datetime], next_slot: datetime | None, now: datetime) -> int:
    """Move the schedule on and create its slots' jobs, in one transaction, if this sweeper wins."""
    created = 0
    with transaction.atomic():
        # The winner among sweepers: the one whose UPDATE still finds the slot it read.
        won = Schedule.objects.filter(
            pk=schedule.pk, enabled=True, next_fire_at=schedule.next_fire_at
        ).update(
            next_fire_at=next_slot,
            last_fired_at=slots[-1] if slots else F("last_fired_at"),
            updated_at=now,
            version=F("version") + 1,
        )
        if not won:
            return 0
        for slot in slots:
            created += _fire_slot(schedule, slot)
        # What the UPDATE wrote, without reading it back (last_skipped_at may have been set too).
        schedule.next_fire_at, schedule.updated_at, schedule.version = next_slot, now, schedule.version + 1
        if slots:
            schedule.last_fired_at = slots[-1]
        if schedule.overlap == ScheduleOverlap.SKIP and created < len(slots):
            schedule.last_skipped_at = slots[-1]
        notify.schedule_changed_on_commit(schedule, "fired")
    return created


def _cannot_fire(schedule: Schedule) -> str:
    """Why the schedule cannot make its job any more ("" if it can): its type is gone, or its
    params no longer pass the type's schema."""
    try:
        job_type = registry.get_job_type(schedule.type)
    except registry.UnknownJobType:
        return f"Its job type {schedule.type!r} is not registered any more."
    errors = registry.validate_params(job_type, schedule.params)
    if errors:
        return f"Its params no longer pass the type's schema: {_reasons(errors)}"
    return ""


def _fire_slot(schedule: Schedule, slot: datetime) -> int:
    """The slot's job, unless the overlap policy skips it or another sweeper made it already."""
    active = Job.objects.filter(schedule=schedule, status__in=ACTIVE_STATUSES)
    if schedule.overlap == ScheduleOverlap.SKIP and active.exists():
        Schedule.objects.filter(pk=schedule.pk).update(last_skipped_at=slot)
        return 0
    if schedule.overlap == ScheduleOverlap.CANCEL_PREVIOUS:
        for job_id in active.values_list("pk", flat=True):
            try:
                control.job_cancel(job_id=job_id, actor=None)
            except JobStateError:
                pass  # it ended meanwhile
    try:
        with transaction.atomic():
            submission.job_create(
                owner=schedule.owner,
                schedule=schedule,
                scheduled_for=slot,
                **submission.submission_of(schedule),
            )
    except IntegrityError:
        return 0  # (schedule, scheduled_for) exists: this slot has fired
    return 1


# --- schedules declared in code -----------------------------------------------------------------


def schedules_owner() -> User:
    """The user who owns the schedules declared in code (LONGRUN_SCHEDULES_OWNER), created unable
    to sign in if missing."""
    user_model = get_user_model()
    users: Any = user_model._default_manager
    owner, created = users.get_or_create(**{user_model.USERNAME_FIELD: app_settings.SCHEDULES_OWNER})
    if created:
        owner.set_unusable_password()
        owner.save(update_fields=["password"])
    return owner


def schedules_sync() -> dict[str, int]:
    """Make the managed rows match the schedules declared in code: create the new ones, change
    those whose declaration changed (keeping an operator's pause), delete those no longer
    declared (their jobs stay). Returns how many of each. All or nothing: a declaration that does
    not validate is a JobValidationError whose fields name it ("weekday report: cron")."""
    with transaction.atomic():
        counts = _sync_declared(schedules_owner())
    counts.pop("unchanged", None)
    return counts


def _sync_declared(owner: User) -> dict[str, int]:
    existing = {schedule.name: schedule for schedule in Schedule.objects.filter(owner=owner, managed=True)}
    counts = {"created": 0, "updated": 0, "unchanged": 0, "deleted": 0}
    for type_name, declared in registry.declared_schedules():
        try:
            counts[_sync_one(owner, existing.pop(declared.name, None), type_name, declared)] += 1
        except JobValidationError as exc:
            raise JobValidationError(
                {f"{declared.name}: {field}": reasons for field, reasons in exc.errors.items()}
            ) from None
    for gone in existing.values():
        schedule_delete(schedule_id=gone.pk, from_code=True)
        counts["deleted"] += 1
    return counts


def _sync_one(
    owner: User, current: Schedule | None, type_name: str, declared: registry.DeclaredSchedule
) -> str:
    """Create or update one declared schedule's row; returns "created", "updated" or "unchanged"."""
    fields = {
        "type": type_name,
        "params": declared.params,
        "cron": declared.cron,
        "interval": declared.interval,
        "timezone": declared.timezone,
        **declared.options,
    }
    if current is None:
        schedule_create(owner=owner, managed=True, name=declared.name, **fields)
        return "created"
    wanted = {**_defaults(), **fields}
    if any(getattr(current, name) != value for name, value in wanted.items()):
        schedule_update(schedule_id=current.pk, from_code=True, **wanted)
        return "updated"
    return "unchanged"
