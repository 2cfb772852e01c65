"""`manage.py schedules ...`: recurring jobs at the command line, through `services.schedules`."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from tasks_app import registry
from tasks_app.models import Job, Schedule
from tasks_app.services import schedules as schedule_services

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("broker")]

WEEKDAYS_AT_9 = "At 09:00, Monday through Friday, Europe/Paris"
REPORT_SCHEMA = {
    "type": "object",
    "properties": {"seconds": {"type": "number"}},
    "additionalProperties": False,
}


@pytest.fixture
def root(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "root-password-123")


def schedules(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("schedules", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def make(owner, name: str = "nightly", **fields) -> Schedule:
    values = {"type": "sleep", "params": {"seconds": 1}, "cron": "0 3 * * *"} | fields
    return schedule_services.schedule_create(owner=owner, name=name, **values)


def shown(moment) -> str:
    """A time as the table prints it: the server's zone, to the minute."""
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M %Z")


# --- add ------------------------------------------------------------------------------------


def test_add_creates_the_schedule_for_the_user_and_prints_its_id_and_next_run(root, user):
    out, _ = schedules(
        "add",
        "weekday report",
        "--type",
        "sleep",
        "--cron",
        "0 9 * * 1-5",
        "--timezone",
        "Europe/Paris",
        "--params",
        '{"seconds": 2}',
        "--priority",
        "8",
        "--overlap",
        "allow",
        "--catchup",
        "none",
        "--user",
        "alice",
    )
    schedule = Schedule.objects.get()
    assert (schedule.owner, schedule.name, schedule.type, schedule.params) == (
        user,
        "weekday report",
        "sleep",
        {"seconds": 2, "steps": 10},  # the type's defaults filled in, as for a job
    )
    assert (schedule.cron, schedule.interval, schedule.timezone) == ("0 9 * * 1-5", None, "Europe/Paris")
    assert (schedule.priority, schedule.overlap, schedule.catchup) == (8, "allow", "none")
    assert out.strip() == f"{schedule.pk}: {WEEKDAYS_AT_9}; next run {shown(schedule.next_fire_at)}"


def test_add_with_an_interval_takes_the_service_defaults_and_json_before_or_after_the_subcommand(root):
    before = json.loads(schedules("--json", "add", "often", "--type", "sleep", "--interval", "900")[0])
    after = json.loads(schedules("add", "hourly", "--type", "sleep", "--interval", "3600", "--json")[0])
    assert (before["name"], before["interval"], before["cron"]) == ("often", 900, "")
    assert before["description"] == "Every 15 minutes" and after["description"] == "Every hour"
    assert (before["timezone"], before["overlap"], before["catchup"], before["owner"]) == (
        "UTC",
        "skip",
        "latest",
        "root",
    )
    assert len(before["next_fire_times"]) == 5 and before["enabled"] is True


@pytest.mark.parametrize(
    ("arguments", "reasons"),
    [
        (["--cron", "61 * * * *"], ["  cron: Not a valid cron expression"]),
        (["--cron", "0 9 * *"], ["  cron: A cron expression has 5 fields"]),
        (
            ["--cron", "0 9 * * *", "--timezone", "Mars/Olympus"],
            ["  timezone: Unknown time zone 'Mars/Olympus'"],
        ),
        (["--interval", "0"], ["  interval: Whole seconds, at least the sweep interval"]),
        (["--cron", "0 9 * * *", "--params", '{"seconds": -1}'], ["  params.seconds: "]),
        (["--cron", "0 9 * * *", "--priority", "12"], ["  priority: "]),
        (
            ["--cron", "61 * * * *", "--timezone", "Nowhere/Else"],
            ["  cron: Not a valid cron expression", "  timezone: Unknown time zone 'Nowhere/Else'"],
        ),
    ],
)
def test_add_with_bad_input_names_each_field_and_creates_nothing(root, arguments, reasons):
    with pytest.raises(CommandError) as refused:
        schedules("add", "nightly", "--type", "sleep", *arguments)
    lines = str(refused.value).splitlines()
    assert lines[0] == "Schedule not created:"
    for reason in reasons:
        assert any(line.startswith(reason) for line in lines[1:]), (reason, lines)
    assert len(lines) == 1 + len(reasons)
    assert not Schedule.objects.exists()


def test_add_refuses_an_unknown_type_a_taken_name_and_params_that_are_not_json(root):
    with pytest.raises(CommandError, match="type: Unknown job type"):
        schedules("add", "nightly", "--type", "nope", "--cron", "0 3 * * *")
    make(root)
    with pytest.raises(CommandError, match="name: You already have a schedule with this name"):
        schedules("add", "nightly", "--type", "sleep", "--cron", "0 4 * * *")
    with pytest.raises(CommandError, match="--params is not JSON"):
        schedules("add", "other", "--type", "sleep", "--cron", "0 4 * * *", "--params", "{seconds: 2}")
    assert list(Schedule.objects.values_list("cron", flat=True)) == ["0 3 * * *"]


def test_add_needs_exactly_one_of_cron_and_interval(root):
    with pytest.raises(CommandError, match="one of the arguments --cron --interval is required"):
        schedules("add", "nightly", "--type", "sleep")
    with pytest.raises(CommandError, match="not allowed with argument"):
        schedules("add", "nightly", "--type", "sleep", "--cron", "0 3 * * *", "--interval", "60")
    assert not Schedule.objects.exists()


# --- list -----------------------------------------------------------------------------------


def test_list_is_a_table_of_what_the_user_may_see(root, user, other_user):
    report = make(user, "weekday report", cron="0 9 * * 1-5", timezone="Europe/Paris")
    theirs = make(other_user, "bobs backup", interval=3600, cron="")
    job = schedule_services.schedule_run_now(schedule_id=report.pk, actor=user)

    header, row, *rest = schedules("--user", "alice", "list")[0].splitlines()
    assert header.split() == ["ID", "NAME", "OWNER", "TYPE", "WHEN", "STATE", "NEXT", "RUN", "LAST", "RUN"]
    assert rest == []
    for cell in (
        str(report.pk),
        "weekday report",
        "alice",
        "sleep",
        WEEKDAYS_AT_9,
        "enabled",
        shown(report.next_fire_at),
        f"{shown(job.created_at)} queued",
    ):
        assert cell in row
    assert row.index("weekday report") == header.index("NAME") and row.index("enabled") == header.index(
        "STATE"
    )

    everyone = schedules("list")[0]  # the first superuser by default: every schedule
    assert str(report.pk) in everyone and str(theirs.pk) in everyone and "Every hour" in everyone


def test_list_shows_paused_and_disabled_schedules_and_why(root, user):
    paused = make(user, "paused one")
    schedule_services.schedule_pause(schedule_id=paused.pk)
    broken = make(user, "broken one", cron="0 4 * * *")
    # What the sweep does when the type vanished: disable it, saying why.
    Schedule.objects.filter(pk=broken.pk).update(
        enabled=False, next_fire_at=None, disabled_reason="Its job type 'gone' is not registered any more."
    )
    lines = schedules("--user", "alice", "list")[0].splitlines()
    (broken_row,) = [line for line in lines if line.startswith(str(broken.pk))]
    (paused_row,) = [line for line in lines if line.startswith(str(paused.pk))]
    assert "disabled" in broken_row and "paused" in paused_row
    assert paused_row.split()[-2:] == ["-", "-"]  # no next run, no last run
    assert lines[-1] == "'broken one' was disabled: Its job type 'gone' is not registered any more."


def test_list_json_is_the_apis_representation(root, user):
    schedule = make(user, "weekday report", cron="0 9 * * 1-5", timezone="Europe/Paris")
    job = schedule_services.schedule_run_now(schedule_id=schedule.pk, actor=user)
    (data,) = json.loads(schedules("--user", "alice", "list", "--json")[0])
    assert data["id"] == str(schedule.pk) and data["description"] == WEEKDAYS_AT_9
    assert [recent["id"] for recent in data["recent_jobs"]] == [str(job.pk)]
    assert set(data) >= {"next_fire_at", "next_fire_times", "last_fired_at", "enabled", "managed", "links"}


def test_list_with_nothing_to_show(root, user):
    assert schedules("--user", "alice", "list")[0].strip() == "No schedules."
    assert json.loads(schedules("--user", "alice", "--json", "list")[0]) == []


def test_an_unknown_user_is_a_clear_error(root):
    with pytest.raises(CommandError, match="No user named 'nobody'"):
        schedules("list", "--user", "nobody")


# --- pause, resume, run ---------------------------------------------------------------------


def test_pause_and_resume_by_name_or_id(root, user):
    schedule = make(user)
    out, _ = schedules("--user", "alice", "pause", "nightly")
    assert out.strip() == f"{schedule.pk} 'nightly': paused"
    schedule.refresh_from_db()
    assert not schedule.enabled and schedule.next_fire_at is None

    data = json.loads(schedules("--user", "alice", "--json", "resume", str(schedule.pk))[0])
    schedule.refresh_from_db()
    assert schedule.enabled and schedule.next_fire_at is not None
    assert data["enabled"] is True and data["id"] == str(schedule.pk)


def test_run_prints_the_id_of_the_job_it_submits(root, user):
    schedule = make(user, params={"seconds": 3})
    out, _ = schedules("--user", "alice", "run", "nightly")
    job = Job.objects.get(pk=out.strip())
    assert (job.schedule_id, job.scheduled_for, job.owner, job.params) == (
        schedule.pk,
        None,
        user,
        {"seconds": 3, "steps": 10},
    )
    data = json.loads(schedules("--user", "alice", "run", str(schedule.pk), "--json")[0])
    assert data["schedule"] == str(schedule.pk) and data["status"] == "queued"
    assert Job.objects.filter(schedule=schedule).count() == 2


def test_run_of_a_schedule_whose_type_vanished_says_so(root, fresh_registry):
    @registry.job_type("report", description="", params_schema=REPORT_SCHEMA)
    def report(ctx, seconds=1):
        return None

    make(root, "report", type="report", params={})
    fresh_registry.pop("report")
    with pytest.raises(CommandError, match="not valid any more: type: Unknown job type"):
        schedules("run", "report")
    assert not Job.objects.exists()


@pytest.mark.parametrize("command", ["pause", "resume", "run"])
@pytest.mark.parametrize("reference", ["nope", "00000000-0000-0000-0000-000000000000"])
def test_an_unknown_schedule_is_a_clear_error(root, user, command, reference):
    make(user)
    with pytest.raises(
        CommandError, match=f"No schedule with the id or name '{reference}' that alice may see"
    ):
        schedules("--user", "alice", command, reference)


def test_another_users_schedule_is_unknown_to_them(root, user, other_user):
    theirs = make(other_user)
    for reference in ("nightly", str(theirs.pk)):
        with pytest.raises(CommandError, match="that alice may see"):
            schedules("--user", "alice", "pause", reference)
    theirs.refresh_from_db()
    assert theirs.enabled


def test_a_name_several_owners_use_is_ambiguous_unless_one_is_the_users_own(root, user, other_user):
    alices, bobs = make(user), make(other_user)
    with pytest.raises(CommandError) as ambiguous:
        schedules("pause", "nightly")  # root sees both, owns neither
    assert "2 schedules are named 'nightly'" in str(ambiguous.value) and "Give its id" in str(ambiguous.value)
    assert f"{alices.pk} (owner alice)" in str(ambiguous.value) and f"{bobs.pk} (owner bob)" in str(
        ambiguous.value
    )

    roots = make(root)
    out, _ = schedules("pause", "nightly")
    assert out.startswith(str(roots.pk))
    assert list(Schedule.objects.filter(enabled=False)) == [roots]


def test_staff_who_may_only_view_cannot_change_anothers_schedule(root, user, viewing_staff_user):
    make(user)
    with pytest.raises(CommandError, match="dave may see schedule 'nightly' but not change it"):
        schedules("--user", "dave", "pause", "nightly")
    with pytest.raises(CommandError, match="but not change it"):
        schedules("--user", "dave", "run", "nightly")
    assert Schedule.objects.get().enabled and not Job.objects.exists()


# --- sync -----------------------------------------------------------------------------------


def declare_report(schedules_: list[registry.DeclaredSchedule]) -> None:
    """(Re)register the job type "report" with these schedules, as a deploy would."""
    registry._registry.pop("report", None)

    @registry.job_type("report", description="", params_schema=REPORT_SCHEMA, schedules=schedules_)
    def report(ctx, seconds=1):
        return None


def test_sync_creates_updates_and_deletes_the_schedules_declared_in_code(root, fresh_registry):
    declare_report(
        [registry.every("weekday report", cron="0 9 * * 1-5", timezone="Europe/Paris", params={"seconds": 2})]
    )
    out, _ = schedules("sync")
    assert out.strip() == "Schedules declared in code: 1 created, 0 updated, 0 deleted."
    schedule = Schedule.objects.get()
    assert schedule.managed and schedule.name == "weekday report" and schedule.owner.username == "longrun"
    assert json.loads(schedules("--json", "sync")[0]) == {"created": 0, "updated": 0, "deleted": 0}

    # An operator may pause it by name; the next deploy changes its expression, not its pause.
    schedules("pause", "weekday report")
    declare_report(
        [
            registry.every(
                "weekday report", cron="0 10 * * 1-5", timezone="Europe/Paris", params={"seconds": 2}
            )
        ]
    )
    assert json.loads(schedules("sync", "--json")[0]) == {"created": 0, "updated": 1, "deleted": 0}
    schedule.refresh_from_db()
    assert schedule.cron == "0 10 * * 1-5" and not schedule.enabled

    declare_report([])
    assert schedules("sync")[0].strip() == "Schedules declared in code: 0 created, 0 updated, 1 deleted."
    assert not Schedule.objects.exists()


def test_sync_of_an_invalid_declaration_names_the_field(root, fresh_registry):
    declare_report([registry.every("broken", cron="0 25 * * *")])
    with pytest.raises(CommandError) as refused:
        schedules("sync")
    lines = str(refused.value).splitlines()
    assert lines[0] == "A schedule declared in code is not valid; sync stopped:"
    assert lines[1].startswith("  broken: cron: Not a valid cron expression")  # which one, and why
    assert not Schedule.objects.exists()


# --- as a person runs it --------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_bad_input_at_a_terminal_is_each_reason_on_stderr_and_exit_1_without_a_traceback(process_env, user):
    done = subprocess.run(
        [sys.executable, "manage.py", "schedules", "add", "nightly", "--type", "sleep"]
        + ["--cron", "0 9 * *", "--timezone", "Mars/Olympus", "--user", "alice"],
        cwd=settings.BASE_DIR,
        env=process_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == "CommandError: Schedule not created:"
    assert lines[1].startswith("  cron: A cron expression has 5 fields")
    assert lines[2].startswith("  timezone: Unknown time zone 'Mars/Olympus'")
    assert not Schedule.objects.exists()
