"""`services.schedules`: validation, one job per slot (with concurrent sweepers, on the database
the tests run on: PostgreSQL in CI, SQLite by default), the overlap and catch-up policies,
disabling what can no longer fire, schedules declared in code, and what a change publishes."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from tasks_app import registry
from tasks_app.exceptions import JobValidationError
from tasks_app.models import Job, JobStatus, Schedule
from tasks_app.services import execution, schedules

pytestmark = pytest.mark.usefixtures("broker")


def make(owner, **fields) -> Schedule:
    """A schedule; by default yearly, so that between a slot `due` sets and now no other falls."""
    values = {"name": "nightly", "type": "sleep", "params": {"seconds": 1}, "cron": "0 0 1 1 *"} | fields
    return schedules.schedule_create(owner=owner, **values)


def due(schedule: Schedule, *, minutes_ago: float = 0.5) -> Schedule:
    """Pretend its next slot came `minutes_ago` (the later slots follow its expression)."""
    slot = schedules.database_now() - timedelta(minutes=minutes_ago)
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=slot)
    schedule.refresh_from_db()
    return schedule


def jobs_of(schedule: Schedule) -> list[Job]:
    return list(Job.objects.filter(schedule=schedule).order_by("scheduled_for", "created_at"))


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"cron": "61 * * * *"}, "cron", "Not a valid cron expression"),
        ({"cron": "", "interval": 0}, "interval", "at least the sweep interval"),
        ({"cron": "0 3 * * *", "interval": 60}, "cron", "either cron"),
        ({"cron": ""}, "interval", "Give cron or interval"),
        ({"timezone": "Mars/Olympus"}, "timezone", "IANA"),
        ({"params": {"seconds": -1}}, "params.seconds", "minimum"),
        ({"type": "nope"}, "type", "Unknown job type"),
        ({"priority": 12}, "priority", "between 0 and 9"),
        ({"overlap": "sometimes"}, "overlap", "skip, allow, cancel_previous"),
        ({"catchup": "maybe"}, "catchup", "latest, none, all"),
        ({"name": " "}, "name", "1 to 200"),
        (
            {"start_at": timezone.now(), "end_at": timezone.now() - timedelta(days=1)},
            "end_at",
            "after start_at",
        ),
    ],
)
def test_bad_input_names_the_field_and_writes_nothing(user, fields, field, reason):
    with pytest.raises(JobValidationError) as caught:
        make(user, **fields)
    assert field in caught.value.errors, caught.value.errors
    assert reason in " ".join(caught.value.errors[field])
    assert not Schedule.objects.exists()


@pytest.mark.django_db
def test_a_name_is_unique_per_owner(user, other_user):
    make(user)
    with pytest.raises(JobValidationError) as caught:
        make(user)
    assert caught.value.errors == {"name": ["You already have a schedule with this name."]}
    make(other_user)  # another owner may use it
    assert Schedule.objects.count() == 2


@pytest.mark.django_db
def test_a_new_schedule_is_due_at_its_first_slot_with_the_type_defaults_filled_in(user):
    schedule = make(user, cron="0 9 * * 1-5", timezone="Europe/Paris", params={})
    assert schedule.params == {"seconds": 5, "steps": 10}
    local = schedule.next_fire_at.astimezone(registry_zone("Europe/Paris"))
    assert (local.hour, local.minute) == (9, 0) and local.isoweekday() <= 5
    assert schedule.next_fire_at > timezone.now()


def registry_zone(name):
    from tasks_app import recurrence

    return recurrence.time_zone(name)


# --- firing -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_due_slot_fires_one_job_and_moves_on(user, broker):
    schedule = due(make(user, metadata={"report": "daily"}, priority=7))
    slot = schedule.next_fire_at
    assert schedules.schedules_fire_due() == 1
    (job,) = jobs_of(schedule)
    assert (job.scheduled_for, job.type, job.params, job.priority, job.metadata) == (
        slot,
        "sleep",
        {"seconds": 1, "steps": 10},
        7,
        {"report": "daily"},
    )
    assert job.owner == user and job.status == JobStatus.QUEUED
    assert job.events.get().message == f"Started by schedule 'nightly' for its {slot.isoformat()} slot."
    schedule.refresh_from_db()
    assert schedule.last_fired_at == slot and schedule.next_fire_at > schedules.database_now()
    assert schedules.schedules_fire_due() == 0  # nothing due any more
    assert len(jobs_of(schedule)) == 1


@pytest.mark.django_db
def test_a_slot_fired_already_creates_nothing_the_second_time(user):
    """The unique (schedule, scheduled_for): a sweeper that read the schedule before another
    moved it on, and got past its own check, still makes no second job."""
    schedule = due(make(user))
    slot = schedule.next_fire_at
    assert schedules._fire_slot(schedule, slot) == 1
    assert schedules._fire_slot(schedule, slot) == 0
    assert len(jobs_of(schedule)) == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_sweepers_fire_each_slot_exactly_once(user):
    """Four sweepers at once over 12 due schedules, several rounds: one job per slot."""
    due_schedules = [due(make(user, name=f"s{i}", overlap="allow")) for i in range(12)]
    slots = {schedule.pk: schedule.next_fire_at for schedule in due_schedules}
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def sweeper() -> None:
        try:
            start.wait()
            for _ in range(3):
                schedules.schedules_fire_due()
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=sweeper) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    fired = list(Job.objects.filter(schedule__isnull=False).values_list("schedule_id", "scheduled_for"))
    assert sorted(fired) == sorted(slots.items())


# --- overlap ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_overlap_skip_records_the_skipped_slot_while_the_previous_job_is_active(user):
    schedule = due(make(user))
    schedules.schedules_fire_due()
    (first,) = jobs_of(schedule)
    schedule = due(schedule, minutes_ago=0)
    skipped = schedule.next_fire_at
    assert schedules.schedules_fire_due() == 0
    schedule.refresh_from_db()
    assert schedule.last_skipped_at == skipped
    assert jobs_of(schedule) == [first]
    # Once it has ended, the next slot fires.
    execution.job_claim(job_id=first.pk, worker="w")
    execution.job_succeed(job_id=first.pk, worker="w", result=None)
    due(schedule, minutes_ago=0)  # a later slot
    assert schedules.schedules_fire_due() == 1


@pytest.mark.django_db
def test_overlap_allow_runs_alongside_and_cancel_previous_cancels_it(user):
    allow = due(make(user, name="allow", overlap="allow"))
    schedules.schedules_fire_due()
    due(allow, minutes_ago=0)
    schedules.schedules_fire_due()
    assert [job.status for job in jobs_of(allow)] == [JobStatus.QUEUED, JobStatus.QUEUED]

    cancel = due(make(user, name="cancel", overlap="cancel_previous"))
    schedules.schedules_fire_due()
    (previous,) = jobs_of(cancel)
    execution.job_claim(job_id=previous.pk, worker="w")
    due(cancel, minutes_ago=0)
    schedules.schedules_fire_due()
    previous.refresh_from_db()
    assert previous.cancel_requested_at is not None  # running: it stops at its next check
    assert len(jobs_of(cancel)) == 2


# --- catch-up -----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(("catchup", "fired"), [("latest", 1), ("none", 0), ("all", 11)])
def test_catchup_after_ten_missed_minutes(user, catchup, fired):
    """Its slot came 10 minutes ago, and 10 more (every minute) since."""
    # No minute may begin between setting and firing, and the latest minute's slot must be older
    # than the sweep's grace (a few seconds), or "none" would rightly fire it as on time.
    second = schedules.database_now().second
    if second >= 55 or second < 6:
        time.sleep((66 - second) % 60)
    schedule = due(make(user, cron="* * * * *", catchup=catchup, overlap="allow"), minutes_ago=10)
    first_missed = schedule.next_fire_at
    assert schedules.schedules_fire_due() == fired
    slots = [job.scheduled_for for job in jobs_of(schedule)]
    assert len(slots) == fired
    minute = first_missed.replace(second=0, microsecond=0)
    if catchup == "latest":
        assert slots == [minute + timedelta(minutes=10)]  # the latest missed slot
    if catchup == "all":
        assert slots == [first_missed] + [minute + timedelta(minutes=i) for i in range(1, 11)]
    schedule.refresh_from_db()
    assert schedule.next_fire_at > schedules.database_now()  # nothing left behind


@pytest.mark.django_db
def test_catchup_none_still_fires_a_slot_that_is_on_time(user):
    schedule = due(make(user, catchup="none"), minutes_ago=0)
    assert schedules.schedules_fire_due() == 1
    assert len(jobs_of(schedule)) == 1


# --- what can no longer fire ----------------------------------------------------------------------


@pytest.mark.django_db
def test_a_vanished_type_or_params_that_no_longer_validate_disable_the_schedule_with_a_reason(
    user, fresh_registry
):
    @registry.job_type("ephemeral", description="", params_schema={"type": "object"})
    def ephemeral(ctx):
        return None

    gone = due(make(user, name="gone", type="ephemeral", params={}))
    stale = due(make(user, name="stale"))
    Schedule.objects.filter(pk=stale.pk).update(params={"seconds": "soon"})
    fresh = due(make(user, name="fine"))
    registry._registry.pop("ephemeral")

    assert schedules.schedules_fire_due() == 1  # the healthy one fires; the sweep goes on
    gone.refresh_from_db()
    stale.refresh_from_db()
    assert (gone.enabled, gone.next_fire_at) == (False, None)
    assert gone.disabled_reason == "Its job type 'ephemeral' is not registered any more."
    assert not stale.enabled
    assert stale.disabled_reason.startswith("Its params no longer pass the type's schema: seconds:")
    assert len(jobs_of(fresh)) == 1 and not jobs_of(gone) and not jobs_of(stale)


# --- pause, resume, run now, delete ----------------------------------------------------------------


@pytest.mark.django_db
def test_pause_stops_firing_and_resume_starts_after_now(user):
    schedule = due(make(user))
    schedules.schedule_pause(schedule_id=schedule.pk)
    assert schedules.schedules_fire_due() == 0
    resumed = schedules.schedule_resume(schedule_id=schedule.pk)
    assert resumed.enabled and resumed.next_fire_at > schedules.database_now()  # missed slots are not fired
    assert jobs_of(schedule) == []


@pytest.mark.django_db
def test_run_now_makes_a_job_outside_the_slots_and_delete_keeps_the_jobs(user):
    schedule = make(user)
    job = schedules.schedule_run_now(schedule_id=schedule.pk, actor=user)
    assert (job.schedule_id, job.scheduled_for) == (schedule.pk, None)
    assert job.events.get().message == "Started by schedule 'nightly', run now."
    schedules.schedule_delete(schedule_id=schedule.pk)
    job.refresh_from_db()
    assert job.schedule_id is None and Job.objects.filter(pk=job.pk).exists()


@pytest.mark.django_db
def test_changes_are_published_to_the_owner_and_staff_after_commit(
    user, broker, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        schedule = make(user, cron="* * * * *")
    with django_capture_on_commit_callbacks(execute=True):
        schedules.schedule_pause(schedule_id=schedule.pk)
    events = [(call.args[0], call.args[1]["event"]) for call in broker.publish_schedule.call_args_list]
    assert events == [(user.pk, "created"), (user.pk, "paused")]
    message = broker.publish_schedule.call_args.args[1]
    assert message["schedule"]["enabled"] is False and message["schedule"]["next_fire_times"] == []
    assert message["schedule"]["description"] == "Every minute, UTC"


# --- declared in code ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_schedules_declared_in_code_are_synced_protected_and_keep_an_operators_pause(
    fresh_registry, settings
):
    declared = [
        registry.every("weekday report", cron="0 9 * * 1-5", timezone="Europe/Paris", params={"seconds": 2})
    ]

    @registry.job_type("report", description="", params_schema=SLEEP_SCHEMA, schedules=declared)
    def report(ctx, seconds=1):
        return None

    assert schedules.schedules_sync() == {"created": 1, "updated": 0, "deleted": 0}
    schedule = Schedule.objects.get(name="weekday report")
    assert (
        schedule.managed and schedule.owner.username == "longrun" and not schedule.owner.has_usable_password()
    )
    assert schedules.schedules_sync() == {"created": 0, "updated": 0, "deleted": 0}

    # An operator may pause it, not edit it.
    with pytest.raises(JobValidationError) as caught:
        schedules.schedule_update(schedule_id=schedule.pk, cron="0 10 * * *")
    assert "change it there" in caught.value.errors["cron"][0]
    schedules.schedule_pause(schedule_id=schedule.pk)

    # A deploy changes the expression: the row follows, still paused.
    registry._registry["report"] = registry._registry["report"].__class__(
        **{
            **vars(registry._registry["report"]),
            "schedules": (
                registry.every(
                    "weekday report", cron="0 10 * * 1-5", timezone="Europe/Paris", params={"seconds": 2}
                ),
            ),
        }
    )
    assert schedules.schedules_sync() == {"created": 0, "updated": 1, "deleted": 0}
    schedule.refresh_from_db()
    assert schedule.cron == "0 10 * * 1-5" and not schedule.enabled
    job = schedules.schedule_run_now(schedule_id=schedule.pk, actor=None)

    # No longer declared: the row goes, its jobs stay.
    registry._registry.pop("report")
    assert schedules.schedules_sync() == {"created": 0, "updated": 0, "deleted": 1}
    assert not Schedule.objects.exists() and Job.objects.filter(pk=job.pk).exists()


SLEEP_SCHEMA = {
    "type": "object",
    "properties": {"seconds": {"type": "number"}},
    "additionalProperties": False,
}


@pytest.mark.django_db
def test_cancel_previous_cancels_a_queued_job_at_once(user):
    schedule = due(make(user, overlap="cancel_previous"))
    schedules.schedules_fire_due()
    (queued,) = jobs_of(schedule)
    due(schedule, minutes_ago=0)
    schedules.schedules_fire_due()
    queued.refresh_from_db()
    assert queued.status == JobStatus.CANCELLED
    assert queued.events.filter(message__startswith="Cancelled").exists()


@pytest.mark.django_db
def test_a_job_option_that_no_longer_passes_disables_the_schedule_and_fires_nothing(user, settings):
    schedule = due(make(user, timeout=3600))
    settings.LONGRUN = {**settings.LONGRUN, "MAX_TIMEOUT": 60}  # the limit was lowered since
    assert schedules.schedules_fire_due() == 0
    schedule.refresh_from_db()
    assert not schedule.enabled and schedule.next_fire_at is None
    assert (
        schedule.disabled_reason
        == "Its job is not valid any more: timeout: Must be between 1 and 60 seconds."
    )
    assert jobs_of(schedule) == []
    assert schedules.schedules_fire_due() == 0  # and the sweep does not keep trying
