"""The schedule admin (tasks_app/admin/schedules.py): the list with each schedule's words, state,
next run, last run and its strip of outcomes (read in one query per page); the pause / resume /
run-now actions and their counts; who may see and act; the change form saved through the
services (their refusals as field errors, nothing written); a managed schedule read-only but for
`enabled`, and its refused deletion; deletion keeping the jobs.

No broker: the Celery publish and the live publishes are mocks (the `broker` fixture)."""

from __future__ import annotations

import re
from datetime import timedelta
from datetime import timezone as dt_timezone

import pytest
from django.contrib import messages
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tasks_app import recurrence
from tasks_app.admin.cells import iso
from tasks_app.models import Job, JobStatus, Schedule
from tasks_app.services import schedules
from tests.helpers import failed_job, make_job, running_job, session_client, succeeded_job

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("broker")]

CHANGELIST = "/admin/tasks_app/schedule/"
ADD = f"{CHANGELIST}add/"
ACTIONS = ("pause_selected", "resume_selected", "run_selected")
SQUARE = re.compile(
    r'<a class="lr-outcome lr-badge-(\w+)" href="([^"]+)" title="([^"]+)" aria-label="([^"]+)">'
)


# --- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture
def root(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "root-password-123")


@pytest.fixture
def root_client(root):
    return session_client(root)


def make(owner, name="nightly", **fields) -> Schedule:
    values = {"type": "sleep", "params": {"seconds": 1}, "cron": "0 3 * * *"} | fields
    return schedules.schedule_create(owner=owner, name=name, **values)


def jobs_for(schedule: Schedule, statuses: list[str]) -> list[Job]:
    """One job of the schedule per status, oldest first, an hour apart (slots, and creation times)."""
    start = timezone.now() - timedelta(hours=len(statuses) + 1)
    made = {
        JobStatus.QUEUED: make_job,
        JobStatus.RUNNING: running_job,
        JobStatus.SUCCEEDED: succeeded_job,
        JobStatus.FAILED: failed_job,
    }
    jobs = []
    for n, status in enumerate(statuses):
        slot = start + timedelta(hours=n)
        job = made[status](schedule.owner, schedule=schedule, scheduled_for=slot)
        Job.objects.filter(pk=job.pk).update(created_at=slot)
        jobs.append(Job.objects.get(pk=job.pk))
    return jobs


def change_url(schedule: Schedule) -> str:
    return f"{CHANGELIST}{schedule.pk}/change/"


def job_url(job) -> str:
    return f"/admin/tasks_app/job/{job.pk}/change/"


def result_rows(body: str) -> dict[str, dict[str, str]]:
    """The change list's rows by schedule name: {name: {column: cell inner HTML}}."""
    tbody = re.search(r'<table id="result_list">.*?<tbody>(.*?)</tbody>', body, re.S)
    assert tbody, "no result table"
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", tbody.group(1), re.S):
        cells = dict(re.findall(r'<t[hd] class="field-(\w+)[^"]*"[^>]*>(.*?)</t[hd]>', row, re.S))
        rows[re.sub(r"<[^>]+>", "", cells["name"])] = cells
    return rows


def post_action(client, action: str, chosen):
    """The action on `chosen`, then back to the list, which shows (and so uses up) its messages."""
    return client.post(
        CHANGELIST,
        {
            "action": action,
            "index": "0",
            "select_across": "0",
            "_selected_action": [str(s.pk) for s in chosen],
        },
        follow=True,
    )


def sent_messages(response) -> list[tuple[int, str]]:
    return [(m.level, str(m)) for m in get_messages(response.wsgi_request)]


def form_data(**changes) -> dict[str, str]:
    """What the add form posts for a valid interval schedule, with `changes`."""
    data = {
        "name": "hourly sync",
        "type": "sleep",
        "params": '{"seconds": 2}',
        "enabled": "on",
        "cron": "",
        "interval": "3600",
        "timezone": "UTC",
        "start_at_0": "",
        "start_at_1": "",
        "end_at_0": "",
        "end_at_1": "",
        "overlap": "skip",
        "catchup": "latest",
        "priority": "5",
        "max_attempts": "",
        "timeout": "",
        "metadata": "{}",
        "callback_url": "",
        "webhook_events": "[]",
        "_save": "Save",
    }
    data.update(changes)
    return {key: value for key, value in data.items() if value is not None}


def row_of(schedule: Schedule) -> dict:
    return Schedule.objects.filter(pk=schedule.pk).values().get()


# --- the list -------------------------------------------------------------------------------


def test_the_list_shows_words_state_next_run_last_run_and_a_strip_of_twenty(root_client, user, other_user):
    weekdays = make(user, "weekday report", cron="0 9 * * 1-5", timezone="Europe/Paris")
    statuses = [JobStatus.FAILED] + [JobStatus.SUCCEEDED] * 18 + [JobStatus.FAILED, JobStatus.RUNNING]
    jobs = jobs_for(weekdays, statuses)  # 21: the oldest falls off the strip
    paused = make(other_user, "hourly", cron="", interval=3600)
    schedules.schedule_pause(schedule_id=paused.pk)
    vanished = make(user, "vanished")
    reason = "Its job type 'gone' is not registered any more."
    Schedule.objects.filter(pk=vanished.pk).update(enabled=False, next_fire_at=None, disabled_reason=reason)
    make(user, "from code", managed=True)

    with CaptureQueriesContext(connection) as queries:
        response = root_client.get(CHANGELIST)
    assert response.status_code == 200
    body = response.content.decode()
    # The recent jobs of the whole page in one query, however many schedules it lists.
    assert len([q for q in queries.captured_queries if "ROW_NUMBER" in q["sql"].upper()]) == 1

    rows = result_rows(body)
    assert list(rows) == ["from code", "hourly", "vanished", "weekday report"]  # by name
    row = rows["weekday report"]
    assert row["owner"] == "alice" and row["type"] == "sleep"
    assert row["in_words"] == recurrence.describe(cron="0 9 * * 1-5", interval=None, zone_name="Europe/Paris")
    assert "09:00" in row["in_words"] and "Europe/Paris" in row["in_words"]
    assert "Enabled" in row["state"]
    assert f'<time datetime="{iso(weekdays.next_fire_at)}"' in row["next_run"]
    # Last run: the newest job's badge, linking to its page.
    newest = jobs[-1]
    assert f'href="{job_url(newest)}"' in row["last_run"]
    assert f'class="lr-badge lr-badge-running" data-job-id="{newest.pk}"' in row["last_run"]
    assert f'<time datetime="{iso(newest.created_at)}"' in row["last_run"]
    # The strip: the last 20 outcomes, oldest first, each a link to its job, titled status + slot.
    squares = SQUARE.findall(row["outcomes"])
    assert [status for status, *_ in squares] == [job.status for job in jobs[1:]]
    assert [href for _, href, *_ in squares] == [job_url(job) for job in jobs[1:]]
    slot = timezone.localtime(jobs[1].scheduled_for)
    assert squares[0][2] == squares[0][3] == f"Succeeded · slot {slot:%Y-%m-%d %H:%M:%S %Z}"
    assert squares[-1][2].startswith("Running · slot ")
    assert job_url(jobs[0]) not in body

    assert rows["hourly"]["in_words"] == "Every hour"
    assert "Paused" in rows["hourly"]["state"] and rows["hourly"]["next_run"] == "—"
    assert rows["hourly"]["last_run"] == rows["hourly"]["outcomes"] == "—"
    assert f"Disabled: {reason}".replace("'", "&#x27;") in rows["vanished"]["state"]
    assert 'alt="True"' in rows["from code"]["in_code"] and 'alt="False"' in row["in_code"]
    assert "tasks_app/admin.css" in body

    # The filters: enabled, managed, type, owner (those who have schedules); search by name.
    cl = response.context["cl"]
    assert [str(spec.title) for spec in cl.filter_specs] == ["enabled", "managed", "type", "owner"]
    assert list(result_rows(root_client.get(CHANGELIST, {"enabled__exact": "0"}).content.decode())) == [
        "hourly",
        "vanished",
    ]
    assert list(result_rows(root_client.get(CHANGELIST, {"managed__exact": "1"}).content.decode())) == [
        "from code"
    ]
    by_owner = root_client.get(CHANGELIST, {"owner__id__exact": str(other_user.pk)})
    assert list(result_rows(by_owner.content.decode())) == ["hourly"]
    assert list(result_rows(root_client.get(CHANGELIST, {"q": "REPORT"}).content.decode())) == [
        "weekday report"
    ]


# --- actions ----------------------------------------------------------------------------------


def test_pause_and_resume_change_the_rows_and_report_how_many(
    root_client, user, broker, django_capture_on_commit_callbacks
):
    first, second = make(user, "first"), make(user, "second")
    broker.publish_schedule.reset_mock()

    with django_capture_on_commit_callbacks(execute=True):
        response = post_action(root_client, "pause_selected", [first])
    assert response.redirect_chain == [(CHANGELIST, 302)]
    assert sent_messages(response) == [(messages.SUCCESS, "Paused 1 schedule.")]
    assert (row_of(first)["enabled"], row_of(first)["next_fire_at"]) == (False, None)
    assert row_of(second)["enabled"] is True
    assert broker.publish_schedule.call_count == 1  # published live, as the services do

    response = post_action(root_client, "pause_selected", [first, second])
    assert sent_messages(response) == [
        (messages.SUCCESS, "Paused 1 schedule."),
        (messages.WARNING, "1 schedule not changed: already paused."),
    ]
    assert not Schedule.objects.filter(enabled=True).exists()

    response = post_action(root_client, "resume_selected", [first, second])
    assert sent_messages(response) == [(messages.SUCCESS, "Resumed 2 schedules.")]
    for schedule in (first, second):
        assert row_of(schedule)["enabled"] is True and row_of(schedule)["next_fire_at"] > timezone.now()
    response = post_action(root_client, "resume_selected", [first])
    assert sent_messages(response) == [(messages.WARNING, "1 schedule not changed: already enabled.")]


def test_run_now_submits_a_job_outside_the_slots_and_reports_refusals(root_client, root, user):
    runnable, broken = make(user, "runnable"), make(user, "broken")
    Schedule.objects.filter(pk=broken.pk).update(type="gone")  # its type vanished since

    response = post_action(root_client, "run_selected", [runnable, broken])
    assert response.redirect_chain == [(CHANGELIST, 302)]
    (job,) = Job.objects.filter(schedule=runnable)
    assert (job.owner, job.type, job.scheduled_for, job.status) == (user, "sleep", None, JobStatus.QUEUED)
    assert not Job.objects.filter(schedule=broken).exists()
    (done, refused) = sent_messages(response)
    assert done == (messages.SUCCESS, "Submitted a job now for 1 schedule.")
    assert refused[0] == messages.WARNING
    assert refused[1].startswith("1 schedule not run: The schedule's job is not valid any more: type:")


# --- permissions ------------------------------------------------------------------------------


def test_staff_who_may_change_jobs_act_on_schedules(staff_user, user):
    schedule = make(user)
    client = session_client(staff_user)
    response = client.get(CHANGELIST)
    assert set(ACTIONS) == set(dict(response.context["action_form"].fields["action"].choices)) - {""}
    assert post_action(client, "pause_selected", [schedule]).redirect_chain == [(CHANGELIST, 302)]
    assert row_of(schedule)["enabled"] is False


def test_view_only_staff_see_schedules_but_get_no_actions_and_no_form(viewing_staff_user, user):
    schedule = make(user)
    jobs_for(schedule, [JobStatus.SUCCEEDED])
    client = session_client(viewing_staff_user)

    response = client.get(CHANGELIST)
    assert response.status_code == 200
    assert list(result_rows(response.content.decode())) == ["nightly"]
    body = response.content.decode()
    assert response.context["action_form"] is None
    for action in ACTIONS:
        assert f'value="{action}"' not in body
    assert f'href="{ADD}"' not in body

    page = client.get(change_url(schedule))
    assert page.status_code == 200
    assert 'name="name"' not in page.content.decode() and 'name="_save"' not in page.content.decode()
    assert "/delete/" not in page.content.decode()

    before = row_of(schedule)
    for action in ACTIONS:
        response = post_action(client, action, [schedule])
        assert not [m for m in sent_messages(response) if m[0] == messages.SUCCESS]
    assert client.post(change_url(schedule), form_data(name="renamed")).status_code == 403
    assert client.get(ADD).status_code == 403
    assert client.post(f"{CHANGELIST}{schedule.pk}/delete/", {"post": "yes"}).status_code == 403
    assert row_of(schedule) == before
    assert Job.objects.filter(schedule=schedule).count() == 1


def test_staff_without_view_job_get_403(django_user_model, user):
    nobody = django_user_model.objects.create_user("nobody", password="nobody-password-1", is_staff=True)
    # The schedule model's own permissions do not stand in for the job ones.
    nobody.user_permissions.set(Permission.objects.filter(codename="view_schedule"))
    schedule = make(user)
    client = session_client(django_user_model.objects.get(pk=nobody.pk))
    assert client.get(CHANGELIST).status_code == 403
    assert client.get(change_url(schedule)).status_code == 403


# --- the change form ----------------------------------------------------------------------------


def test_the_page_shows_the_words_the_next_five_times_and_the_newest_twenty_jobs(root_client, user):
    schedule = make(user, cron="30 8 * * *", timezone="Europe/Paris")
    jobs = jobs_for(schedule, [JobStatus.SUCCEEDED] * 21 + [JobStatus.FAILED])
    by_hand = make_job(user, schedule=schedule)  # run now: no slot

    response = root_client.get(change_url(schedule))
    assert response.status_code == 200
    body = response.content.decode()
    assert recurrence.describe(cron="30 8 * * *", interval=None, zone_name="Europe/Paris") in body
    upcoming = re.search(r'<ol class="lr-upcoming">(.*?)</ol>', body, re.S)
    assert upcoming, "no next fire times"
    expected = recurrence.next_fire_times(schedule, after=timezone.now(), count=5)
    assert re.findall(r'<li><time datetime="([^"]+)"', upcoming.group(1)) == [iso(slot) for slot in expected]

    inline = re.search(
        r'<div class="js-inline-admin-formset inline-group" id="jobs-group".*?</fieldset>', body, re.S
    )
    assert inline, "no jobs inline"
    assert "Jobs (the newest 20)" in inline.group(0)
    linked = re.findall(r'<a href="/admin/tasks_app/job/([0-9a-f-]{36})/change/">', inline.group(0))
    newest_first = [by_hand, *reversed(jobs)][:20]
    assert linked == [str(job.pk) for job in newest_first]
    assert f'class="lr-badge lr-badge-failed" data-job-id="{jobs[-1].pk}"' in inline.group(0)
    assert f'<time datetime="{iso(jobs[-1].scheduled_for)}"' in inline.group(0)
    assert "run now" in inline.group(0)
    assert 'name="jobs-0-status"' not in body  # read-only rows


def test_the_add_form_creates_through_the_services(root_client, root):
    hook = "https://example.com/hook"
    response = root_client.post(ADD, form_data(enabled=None, callback_url=hook))  # unticked: created paused
    assert response.status_code == 302, response.context["adminform"].form.errors
    schedule = Schedule.objects.get()
    assert schedule.owner == root  # whoever adds it, as in the API
    assert schedule.params == {"seconds": 2, "steps": 10}  # the type's defaults, by the services
    assert (schedule.interval, schedule.cron, schedule.enabled, schedule.next_fire_at) == (
        3600,
        "",
        False,
        None,
    )
    assert LogEntry.objects.filter(object_id=str(schedule.pk)).count() == 1


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"cron": "61 * * * *", "interval": ""}, "cron", "Not a valid cron expression"),
        ({"timezone": "Mars/Olympus"}, "timezone", "IANA"),
        ({"params": '{"seconds": -1}'}, "params", "seconds: "),
        ({"interval": ""}, "interval", "Give cron or interval"),
    ],
)
def test_bad_input_on_the_add_form_is_a_field_error_and_writes_nothing(root_client, changes, field, reason):
    response = root_client.post(ADD, form_data(**changes))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert field in errors and reason in " ".join(errors[field]), errors
    assert re.search(
        rf'<ul class="errorlist"[^>]*>\s*<li>[^<]*{re.escape(reason)}', response.content.decode()
    )
    assert not Schedule.objects.exists()
    assert not LogEntry.objects.exists()


def test_editing_goes_through_the_services_and_a_refusal_changes_nothing(root_client, user):
    schedule = make(user)
    data = form_data(name="nightly", interval="", cron="0 4 * * *", params='{"seconds": 1, "steps": 10}')
    response = root_client.post(change_url(schedule), data)
    assert response.status_code == 302
    after = row_of(schedule)
    assert (after["cron"], after["version"]) == ("0 4 * * *", schedule.version + 1)
    assert after["next_fire_at"].astimezone(dt_timezone.utc).hour == 4

    before = row_of(schedule)
    response = root_client.post(change_url(schedule), {**data, "cron": "0 4 * *", "name": "renamed"})
    assert response.status_code == 200
    assert "A cron expression has 5 fields" in " ".join(response.context["adminform"].form.errors["cron"])
    assert row_of(schedule) == before

    response = root_client.post(
        change_url(schedule), {key: value for key, value in data.items() if key != "enabled"}
    )
    assert response.status_code == 302
    assert (row_of(schedule)["enabled"], row_of(schedule)["next_fire_at"]) == (False, None)  # paused


def test_a_managed_schedule_is_read_only_but_for_enabled_and_is_not_deleted(root_client, user):
    schedule = make(user, managed=True)
    response = root_client.get(change_url(schedule))
    body = response.content.decode()
    assert "Declared in code by job type <code>sleep</code>; change it there." in body
    assert 'name="enabled"' in body
    for field in ("name", "cron", "interval", "timezone", "params", "priority", "metadata"):
        assert f'name="{field}"' not in body, field
    assert f'href="{CHANGELIST}{schedule.pk}/delete/"' not in body

    # Only the pause is the operator's: the other fields posted are not read.
    response = root_client.post(
        change_url(schedule), form_data(name="renamed", cron="* * * * *", enabled=None), follow=True
    )
    assert response.redirect_chain == [(CHANGELIST, 302)]
    after = row_of(schedule)
    assert (after["name"], after["cron"], after["enabled"]) == ("nightly", "0 3 * * *", False)

    response = root_client.post(f"{CHANGELIST}{schedule.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302 and response["Location"] == change_url(schedule)
    assert sent_messages(response) == [
        (messages.ERROR, "Declared in code by job type 'sleep': remove it there, or pause it here.")
    ]
    assert Schedule.objects.filter(pk=schedule.pk).exists()
    assert not LogEntry.objects.filter(object_id=str(schedule.pk), action_flag=3).exists()


def test_deleting_a_schedule_keeps_its_jobs(root_client, user):
    schedule = make(user)
    jobs = jobs_for(schedule, [JobStatus.SUCCEEDED, JobStatus.QUEUED])
    confirm = root_client.get(f"{CHANGELIST}{schedule.pk}/delete/")
    assert confirm.status_code == 200
    assert len(confirm.context["deleted_objects"]) == 1  # the schedule alone: its jobs are not deleted

    response = root_client.post(f"{CHANGELIST}{schedule.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Schedule.objects.exists()
    kept = Job.objects.filter(pk__in=[job.pk for job in jobs])
    assert kept.count() == 2 and set(kept.values_list("schedule", flat=True)) == {None}
    assert [m[0] for m in sent_messages(response)] == [messages.SUCCESS]
    # No bulk deletion beside the services.
    assert "delete_selected" not in dict(
        root_client.get(CHANGELIST).context["action_form"].fields["action"].choices
    )


def test_a_scheduled_jobs_admin_page_links_its_schedule_and_shows_its_slot(root_client, user):
    schedule = schedules.schedule_create(owner=user, name="nightly", type="sleep", cron="0 3 * * *")
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=schedules.database_now())
    schedules.schedules_fire_due()
    job = Job.objects.get(schedule=schedule)
    html = root_client.get(f"/admin/tasks_app/job/{job.pk}/change/").content.decode()
    assert f'<a href="/admin/tasks_app/schedule/{schedule.pk}/change/">nightly</a>' in html
    slot_field = html.split("field-slot")[1].split("</div>")[0]
    assert f'datetime="{iso(job.scheduled_for)}"' in slot_field
