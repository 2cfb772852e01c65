"""The Django admin as an operations console: the job change list (columns, filters, date
hierarchy, search), the read-only change form with the job's history, the cancel / retry / re-run
actions and their audit trail, who may see and do what, and users and API tokens.

No broker is needed: the Celery publish (`run_job.apply_async`) and the live-update publish are
mocks, as in tests/test_views.py; dispatch is checked by running the on-commit callbacks."""

from __future__ import annotations

import html
import json
import re
import uuid
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.contrib import messages
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client
from rest_framework.authtoken.models import Token

from tasks_app.admin.cells import iso
from tasks_app.admin.jobs import LIVE_REFRESH_HEADER
from tasks_app.models import Job, JobEvent, JobEventKind, JobStatus
from tasks_app.serializers import job_representation
from tasks_app.services import control, execution, workers
from tests.helpers import cancelled_job, failed_job, make_job, running_job, session_client, succeeded_job

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("broker")]

CHANGELIST = "/admin/tasks_app/job/"
ADD = "/admin/tasks_app/job/add/"
ACTIONS = ("cancel_selected", "retry_selected", "rerun_selected")


# --- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture
def root(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "root-password-123")


@pytest.fixture
def root_client(root) -> Client:
    return session_client(root)


def staff_with(django_user_model, username: str, *codenames: str):
    staff = django_user_model.objects.create_user(
        username, password=f"{username}-password-123", is_staff=True
    )
    staff.user_permissions.set(
        Permission.objects.filter(content_type__app_label="tasks_app", codename__in=codenames)
    )
    assert set(staff.user_permissions.values_list("codename", flat=True)) == set(codenames)
    return django_user_model.objects.get(pk=staff.pk)  # no stale permission cache


def change_url(job) -> str:
    return f"/admin/tasks_app/job/{job.pk}/change/"


def listed_ids(response) -> list[str]:
    """The job ids of the rows on a rendered change list, in order (read from the HTML)."""
    assert response.status_code == 200, response.content[:2000]
    body = response.content.decode()
    assert 'id="result_list"' in body or not response.context["cl"].result_list
    found = re.findall(
        r'<span class="lr-badge[^"]*" data-job-id="([0-9a-f-]{36})" data-field="status">', body
    )
    # The rendered rows are exactly the change list's page.
    assert found == [str(job.pk) for job in response.context["cl"].result_list]
    return found


def result_rows(body: str) -> list[dict[str, str]]:
    """Each row of the result table as {column name: cell inner HTML}."""
    tbody = re.search(r'<table id="result_list">.*?<tbody>(.*?)</tbody>', body, re.S)
    assert tbody, "no result table"
    rows = []
    for row in re.findall(r"<tr>(.*?)</tr>", tbody.group(1), re.S):
        rows.append(dict(re.findall(r'<t[hd] class="field-(\w+)[^"]*"[^>]*>(.*?)</t[hd]>', row, re.S)))
    return rows


def post_action(client, action: str, jobs, **extra):
    return client.post(
        CHANGELIST,
        {
            "action": action,
            "index": "0",
            "select_across": "0",
            "_selected_action": [str(j.pk) for j in jobs],
            **extra,
        },
    )


def sent_messages(response) -> list[tuple[int, str]]:
    return [(m.level, str(m)) for m in get_messages(response.wsgi_request)]


def fresh(job) -> Job:
    return Job.objects.get(pk=job.pk)


LIVE_MARKER = re.compile(
    r'<(span|div)\b[^>]*\bdata-job-id="[0-9a-f-]{36}" data-field="(\w+)"[^>]*>(.*)</\1>', re.S
)


def shown(cell: str) -> str:
    """What a cell shows inside the marker admin_live.js finds it by (`data-job-id`, `data-field`)."""
    match = LIVE_MARKER.fullmatch(cell)
    return match.group(3) if match else cell


def marked(body: str, job) -> dict[str, list[str]]:
    """Every value marked for admin_live.js as one of the job's fields: {field: [inner HTML, ...]}."""
    found: dict[str, list[str]] = {}
    for start in re.finditer(rf'<(\w+)\b[^>]*\bdata-job-id="{job.pk}" data-field="(\w+)"[^>]*>', body):
        tag, depth = start.group(1), 1
        for inner in re.finditer(rf"<(/?){tag}\b", body[start.end() :]):  # to the element's own end
            depth += -1 if inner.group(1) else 1
            if depth == 0:
                found.setdefault(start.group(2), []).append(body[start.end() : start.end() + inner.start()])
                break
    return found


def time_tag(iso: str) -> str:
    return f'<time datetime="{iso}" title="{iso}">'


# --- the change list ------------------------------------------------------------------------


@pytest.fixture
def mixed_jobs(user, other_user):
    """One job of each kind, owned by two users, with a type distinct from the status."""
    return {
        "queued": make_job(user),
        "queued_fail": make_job(other_user, type="fail", params={"message": "later"}),
        "running": running_job(user),
        "succeeded": succeeded_job(
            other_user, type="primes", params={"n": 100}, result={"n": 100, "count": 25}
        ),
        "failed_sleep": failed_job(user),
        "failed_fail": failed_job(other_user, type="fail", params={}),
        "cancelled": cancelled_job(user),
    }


def test_change_list_renders_columns_filters_and_date_hierarchy(root_client, mixed_jobs):
    job = mixed_jobs["succeeded"]
    start = datetime(2025, 3, 4, 10, 0, tzinfo=dt_timezone.utc)
    Job.objects.filter(pk=job.pk).update(started_at=start, finished_at=start + timedelta(seconds=42.5))
    long = mixed_jobs["failed_sleep"]
    Job.objects.filter(pk=long.pk).update(started_at=start, finished_at=start + timedelta(minutes=5))

    response = root_client.get(CHANGELIST)
    assert response.status_code == 200
    body = response.content.decode()
    cl = response.context["cl"]

    columns = [
        "short_id",
        "type",
        "owner",
        "status_badge",
        "progress_bar",
        "attempts_of_max",
        "priority",
        "created",
        "duration",
    ]
    assert list(cl.list_display)[1:] == columns  # after the action checkbox
    for column in columns:
        assert re.search(rf'<th scope="col" class="[^"]*column-{column}[^"]*">', body), column
    headers = dict(
        re.findall(
            r'<th scope="col" class="[^"]*column-(\w+)[^"]*">.*?<(?:a [^>]*|span)>([^<]+)<', body, re.S
        )
    )
    assert {name: headers.get(name) for name in columns} == {
        "short_id": "ID",
        "type": "Type",
        "owner": "Owner",
        "status_badge": "Status",
        "progress_bar": "Progress",
        "attempts_of_max": "Attempts",
        "priority": "Priority",
        "created": "Created",
        "duration": "Duration",
    }

    # Every job is listed, newest first.
    expected = [str(pk) for pk in Job.objects.order_by("-created_at", "-pk").values_list("pk", flat=True)]
    assert listed_ids(response) == expected
    rows = {re.search(r'title="([0-9a-f-]{36})"', row["short_id"]).group(1): row for row in result_rows(body)}
    assert set(rows) == set(expected)

    row = rows[str(job.pk)]
    assert f'<code title="{job.pk}">{str(job.pk)[:8]}</code>' in row["short_id"]
    assert f'href="/admin/tasks_app/job/{job.pk}/change/' in row["short_id"]
    assert row["type"] == "primes"
    assert row["owner"] == "bob"
    assert f'class="lr-badge lr-badge-succeeded" data-job-id="{job.pk}"' in row["status_badge"]
    assert ">Succeeded</span>" in row["status_badge"]
    assert re.search(r'<progress max="100" value="100"', row["progress_bar"])
    assert shown(row["attempts_of_max"]) == "1 of 3" and row["priority"] == "5"
    # Durations in common.js's words (jobDuration), with the times admin_live.js counts from.
    assert shown(row["duration"]) == "43 s"
    assert (
        'data-started="2025-03-04T10:00:00Z" data-finished="2025-03-04T10:00:42.500000Z"' in row["duration"]
    )
    assert shown(rows[str(long.pk)]["duration"]) == "5 min 0 s"
    running = rows[str(mixed_jobs["running"].pk)]["duration"]
    assert re.fullmatch(r'running <span class="lr-nowrap">\d+ (ms|s)</span>', shown(running)), running
    assert 'data-finished=""' in running
    assert shown(rows[str(mixed_jobs["queued"].pk)]["duration"]) == "—"
    assert 'data-started="" data-finished=""' in rows[str(mixed_jobs["queued"].pk)]["duration"]
    assert "lr-badge-running" in rows[str(mixed_jobs["running"].pk)]["status_badge"]
    assert "lr-badge-failed" in rows[str(mixed_jobs["failed_fail"].pk)]["status_badge"]

    # The filters, each with its choices.
    titles = [str(spec.title) for spec in cl.filter_specs]
    assert titles == ["status", "type", "owner", "created at"]
    for title in titles:
        assert f'<details data-filter-title="{title}"' in body
    for status in JobStatus.values:
        assert f'href="?status__exact={status}"' in body
    for job_type in ("sleep", "primes", "fail"):
        assert f'href="?type={job_type}"' in body
    for owner in (mixed_jobs["queued"].owner, mixed_jobs["succeeded"].owner):
        assert f'href="?owner__id__exact={owner.pk}"' in body
    assert "created_at__gte=" in body  # "Today", "Past 7 days", ...

    # The date hierarchy.
    assert cl.date_hierarchy == "created_at"
    assert '<nav class="toplinks">' in body
    # The admin's stylesheet for badges and JSON is loaded.
    assert "tasks_app/admin.css" in body


def test_change_list_filters_by_status_type_owner_and_dates(root_client, mixed_jobs, other_user):
    j = mixed_jobs

    failed = listed_ids(root_client.get(CHANGELIST, {"status__exact": "failed"}))
    assert sorted(failed) == sorted([str(j["failed_sleep"].pk), str(j["failed_fail"].pk)])

    of_type = listed_ids(root_client.get(CHANGELIST, {"type": "fail"}))
    assert sorted(of_type) == sorted([str(j["queued_fail"].pk), str(j["failed_fail"].pk)])

    both = listed_ids(root_client.get(CHANGELIST, {"type": "fail", "status__exact": "failed"}))
    assert both == [str(j["failed_fail"].pk)]

    assert listed_ids(root_client.get(CHANGELIST, {"status__exact": "scheduled"})) == []

    bobs = listed_ids(root_client.get(CHANGELIST, {"owner__id__exact": other_user.pk}))
    assert sorted(bobs) == sorted(str(job.pk) for job in j.values() if job.owner_id == other_user.pk)

    # Spread the jobs over time, then drill down the date hierarchy and the date filter.
    when = {
        "queued": datetime(2024, 1, 15, 12, tzinfo=dt_timezone.utc),
        "running": datetime(2024, 3, 2, 12, tzinfo=dt_timezone.utc),
        "succeeded": datetime(2024, 3, 20, 12, tzinfo=dt_timezone.utc),
    }
    for name, created in when.items():
        Job.objects.filter(pk=j[name].pk).update(created_at=created)
    year = root_client.get(CHANGELIST, {"created_at__year": "2024"})
    assert sorted(listed_ids(year)) == sorted(str(j[name].pk) for name in when)
    assert "created_at__month=3" in year.content.decode() and "created_at__month=1" in year.content.decode()
    march = root_client.get(CHANGELIST, {"created_at__year": "2024", "created_at__month": "3"})
    assert listed_ids(march) == [str(j["succeeded"].pk), str(j["running"].pk)]  # newest first
    day = root_client.get(
        CHANGELIST, {"created_at__year": "2024", "created_at__month": "3", "created_at__day": "2"}
    )
    assert listed_ids(day) == [str(j["running"].pk)]
    ranged = root_client.get(
        CHANGELIST,
        {"created_at__gte": "2024-01-01T00:00:00+00:00", "created_at__lt": "2024-03-10T00:00:00+00:00"},
    )
    assert sorted(listed_ids(ranged)) == sorted([str(j["queued"].pk), str(j["running"].pk)])


def test_search_by_full_job_id_finds_exactly_that_job(root_client, mixed_jobs):
    job = mixed_jobs["failed_fail"]
    assert listed_ids(root_client.get(CHANGELIST, {"q": str(job.pk)})) == [str(job.pk)]
    # Surrounding blanks and upper case are the same id.
    assert listed_ids(root_client.get(CHANGELIST, {"q": f"  {str(job.pk).upper()} "})) == [str(job.pk)]


def test_search_by_the_start_of_an_id_as_the_list_shows_it(root_client, mixed_jobs):
    job = mixed_jobs["failed_fail"]
    shown = str(job.pk)[:8]
    assert shown in root_client.get(CHANGELIST).content.decode()  # what a person copies
    for term in (shown, shown.upper(), str(job.pk)[:13], str(job.pk).replace("-", "")[:12]):
        assert str(job.pk) in listed_ids(root_client.get(CHANGELIST, {"q": term})), term
    others = {str(other.pk) for other in mixed_jobs.values()} - {str(job.pk)}
    assert not others & set(listed_ids(root_client.get(CHANGELIST, {"q": str(job.pk)[:13]})))
    # Too short to mean an id, and hex that starts no id: nothing (no type starts so either).
    assert listed_ids(root_client.get(CHANGELIST, {"q": shown[:3]})) == []
    unused = next(
        prefix
        for prefix in (f"{n:08x}" for n in range(1 << 16))
        if not any(str(o.pk).startswith(prefix) for o in mixed_jobs.values())
    )
    assert listed_ids(root_client.get(CHANGELIST, {"q": unused})) == []


def test_the_admin_is_branded_longrun_with_its_icon(root_client):
    page = root_client.get("/admin/").content.decode()
    assert "Longrun administration" in page and "Django administration" not in page
    assert 'rel="icon"' in page and "favicon" in page
    assert "<title>Jobs, webhooks and workers | Longrun admin</title>" in page
    icon = root_client.get("/favicon.ico")
    assert icon.status_code == 301 and icon["Location"].endswith(".svg")


def test_search_by_metadata_key_value(root_client, user, other_user):
    acme = make_job(user, metadata={"customer": "acme", "region": "eu"})
    acme_other_owner = make_job(other_user, type="fail", params={}, metadata={"customer": "acme"})
    make_job(user, metadata={"customer": "acme-corp"})
    make_job(user, metadata={"customer": "ACME"})
    make_job(user, metadata={"client": "acme"})
    make_job(user)

    found = listed_ids(root_client.get(CHANGELIST, {"q": "customer:acme"}))
    assert sorted(found) == sorted([str(acme.pk), str(acme_other_owner.pk)])
    assert listed_ids(root_client.get(CHANGELIST, {"q": "region:eu"})) == [str(acme.pk)]
    assert listed_ids(root_client.get(CHANGELIST, {"q": "customer:nobody"})) == []
    # Search combines with the filters.
    assert listed_ids(root_client.get(CHANGELIST, {"q": "customer:acme", "type": "fail"})) == [
        str(acme_other_owner.pk)
    ]


def test_search_by_type_prefix(root_client, mixed_jobs):
    j = mixed_jobs
    sleep = sorted(str(j[name].pk) for name in ("queued", "running", "failed_sleep", "cancelled"))
    assert sorted(listed_ids(root_client.get(CHANGELIST, {"q": "sleep"}))) == sleep
    assert sorted(listed_ids(root_client.get(CHANGELIST, {"q": "sle"}))) == sleep
    assert sorted(listed_ids(root_client.get(CHANGELIST, {"q": "FA"}))) == sorted(
        [str(j["queued_fail"].pk), str(j["failed_fail"].pk)]
    )
    assert listed_ids(root_client.get(CHANGELIST, {"q": "pri"})) == [str(j["succeeded"].pk)]
    # A prefix, not a substring.
    assert listed_ids(root_client.get(CHANGELIST, {"q": "leep"})) == []


@pytest.mark.parametrize(
    "term",
    [
        "no-such-thing",
        "00000000-0000-0000-0000-000000000000",
        "customer:",
        ":acme",
        "1customer:acme",
        "a b:c",
        "::",
        "%",
        "_",
        "\\",
        "' OR 1=1 --",
        "x" * 1000,
        "🙂",
    ],
    ids=[
        "words",
        "unknown-uuid",
        "empty-value",
        "empty-key",
        "bad-key",
        "space-in-key",
        "colons",
        "percent",
        "underscore",
        "backslash",
        "sql",
        "long",
        "emoji",
    ],
)
def test_nonsense_search_gives_an_empty_list_not_an_error(root_client, mixed_jobs, term):
    response = root_client.get(CHANGELIST, {"q": term})
    assert response.status_code == 200
    assert listed_ids(response) == []
    assert response.context["cl"].result_count == 0


@pytest.mark.parametrize("term", ["nul\x00byte", "customer:ac\x00me"], ids=["type", "metadata"])
def test_a_search_with_a_nul_character_is_refused_with_a_message_not_an_error(root_client, mixed_jobs, term):
    # PostgreSQL cannot take NUL in a text parameter: refused before the admin runs a query.
    response = root_client.get(CHANGELIST, {"q": term})
    assert response.status_code == 400
    assert "<code>q</code>: Must not contain NUL" in response.content.decode()


# --- the change form --------------------------------------------------------------------------


def readonly_value(body: str, field: str) -> str:
    """The value of a read-only field of the change form, without the live marker around it."""
    row = re.search(rf'<div class="form-row[^"]*field-{field}[^"]*">.*?<div class="readonly">', body, re.S)
    assert row, f"no read-only field {field}"
    depth, start = 1, row.end()
    for tag in re.finditer(r"<(/?)div\b", body[start:]):  # to the readonly div's own end
        depth += -1 if tag.group(1) else 1
        if depth == 0:
            return shown(body[start : start + tag.start()].strip())
    raise AssertionError(f"unclosed read-only field {field}")


def pre_text(cell: str) -> str:
    match = re.fullmatch(r'<pre class="lr-json">(.*)</pre>', cell, re.S)
    assert match, cell
    return html.unescape(match.group(1))


def test_change_form_shows_json_pretty_and_the_history_in_order(root_client, user):
    job = running_job(
        user,
        type="fail",
        params={"message": "boom <b>bold</b>", "delay": 0},
        metadata={"customer": "acme", "ticket": "T-1"},
    )
    execution.job_log(job_id=job.pk, worker="w1", message="step one")
    execution.job_fail(
        job_id=job.pk,
        worker="w1",
        error={"type": "DemoError", "message": "boom <b>"},
        traceback='Traceback (most recent call last):\n  File "x.py"\n<script>alert(1)</script>',
    )
    job = fresh(job)

    response = root_client.get(change_url(job))
    assert response.status_code == 200
    body = response.content.decode()

    for field, value in (
        ("params_pretty", job.params),
        ("metadata_pretty", job.metadata),
        ("error_pretty", job.error),
    ):
        text = pre_text(readonly_value(body, field))
        assert text == json.dumps(value, indent=2, sort_keys=True), field
        assert json.loads(text) == value
    assert "<b>" not in readonly_value(body, "params_pretty")  # escaped, not markup
    assert readonly_value(body, "result_pretty") == "—"
    traceback = readonly_value(body, "traceback_pretty")
    assert pre_text(traceback) == job.traceback
    assert "<script>" not in traceback and "&lt;script&gt;" in traceback

    # The history, oldest first, newest last.
    seqs = [int(s) for s in re.findall(r'<td class="field-seq">\s*<p>(\d+)</p>', body)]
    assert seqs == list(JobEvent.objects.filter(job=job).order_by("seq").values_list("seq", flat=True))
    assert seqs == sorted(seqs) and len(seqs) == 4
    texts = [html.unescape(t) for t in re.findall(r'<td class="field-message">\s*<p>(.*?)</p>', body, re.S)]
    assert texts[0] == "Submitted by alice."
    assert texts[1].startswith("Running on w1")
    assert texts[2] == "step one"
    assert texts[3].startswith("Failed: DemoError: boom")

    # Read-only: no way to save, and no inputs for the job's fields or its events.
    for name in ("_save", "_continue", "_addanother", "_saveasnew"):
        assert f'name="{name}"' not in body
    for name in ("type", "params", "status", "priority", "owner", "events-0-message"):
        assert f'name="{name}"' not in body


def test_change_form_shows_the_result_of_a_succeeded_job(root_client, user):
    job = succeeded_job(user, result={"slept": 1, "files": ["a", "b"]})
    body = root_client.get(change_url(job)).content.decode()
    assert json.loads(pre_text(readonly_value(body, "result_pretty"))) == {"slept": 1, "files": ["a", "b"]}
    assert readonly_value(body, "error_pretty") == "—"
    assert readonly_value(body, "traceback_pretty") == "—"


def test_list_cells_are_the_ones_admin_live_js_writes(root_client, user, settings):
    """Each live value of a row is marked for admin_live.js and says what it will write: times as
    <time> in the representation's own format, "N of M" attempts, the bar in the status's colour
    with its percentage and the job's words, "—" for nothing."""
    settings.TIME_ZONE = "America/New_York"  # the times are written as the API writes them, zone and all
    busy = running_job(user, params={"seconds": 60})
    execution.job_progress(job_id=busy.pk, worker="w1", percent=40, message="step <4> of 10")
    control.job_cancel(job_id=busy.pk, actor=user)
    waiting = make_job(user)
    busy, waiting = fresh(busy), fresh(waiting)

    body = root_client.get(CHANGELIST).content.decode()
    rows = {re.search(r'title="([0-9a-f-]{36})"', row["short_id"]).group(1): row for row in result_rows(body)}
    row = rows[str(busy.pk)]
    representation = job_representation(busy)
    assert representation["created_at"].endswith("-05:00") or representation["created_at"].endswith("-04:00")
    assert shown(row["created"]).startswith(time_tag(representation["created_at"]))
    assert shown(row["attempts_of_max"]) == "1 of 3"
    assert shown(row["status_badge"]) == "Running · cancelling"
    bar = (
        '<div class="lr-progress lr-progress-running"><div class="lr-progress-line">'
        f'<progress max="100" value="40" data-job-id="{busy.pk}" data-field="progress" '
        f'aria-label="Progress of job {str(busy.pk)[:8]}">40%</progress><span class="lr-pct">40%</span></div>'
    )
    assert row["progress_bar"].startswith(bar)
    assert marked(body, busy)["progress_message"] == ["step &lt;4&gt; of 10"]  # escaped
    assert f'data-started="{representation["started_at"]}" data-finished=""' in row["duration"]

    row = rows[str(waiting.pk)]
    values = marked(body, waiting)
    assert shown(row["attempts_of_max"]) == "0 of 3"
    assert (
        "lr-progress-queued" in row["progress_bar"]
        and '<span class="lr-pct">0%</span>' in row["progress_bar"]
    )
    assert values["progress_message"] == [""]  # no words, no dash under the bar
    assert values["duration"] == ["—"]
    assert '<td class="field-duration">-</td>' not in body


def test_the_job_page_marks_every_field_that_changes_over_a_life(root_client, user):
    """Every value on a job's page that changes as it runs is marked for admin_live.js once; the
    fields no live message carries (dispatch, worker, task, lease) are marked too, for it to
    re-read them; empty ones say "—", Django's "-" nowhere."""
    job = failed_job(user, traceback="Traceback (most recent call last):\nDemoError: boom")
    body = root_client.get(change_url(job)).content.decode()
    values = marked(body, job)
    representation = job_representation(job)

    carried = {
        "status",
        "progress",
        "progress_message",
        "attempts",
        "result",
        "error",
        "traceback",
        "created_at",
        "started_at",
        "finished_at",
        "cancel_requested_at",
        "run_at",
        "version",
    }
    uncarried = {"dispatched_at", "worker", "celery_task_id", "lease_expires_at"}
    assert set(values) == carried | uncarried | {"duration"}
    assert all(len(found) == 1 for found in values.values()), values
    assert carried <= set(representation) and not uncarried & set(representation)

    for field in ("created_at", "started_at", "finished_at"):
        assert values[field][0].startswith(time_tag(representation[field])), field
    for field in ("cancel_requested_at", "run_at", "result"):
        assert values[field] == ["—"], field
    assert values["attempts"] == ["1 of 3"]
    assert values["worker"] == ["w1"]
    assert values["version"] == [str(job.version)]
    assert json.loads(pre_text(values["error"][0])) == {"type": "DemoError", "message": "boom"}
    assert re.fullmatch(r"\d+ (ms|s)", values["duration"][0])

    # One sign for nothing: Django's own fields (timeout, callback url) and the history's system actor too.
    assert readonly_value(body, "timeout") == "—"
    assert readonly_value(body, "callback_url") == "—"
    assert re.search(r'<td class="field-actor">\s*<p>—</p>', body)
    assert not re.search(r"<p>-</p>|<div class=\"readonly\">-</div>", body)
    # The history's times are <time> as well, formatted by the same function.
    first = JobEvent.objects.filter(job=job).order_by("seq").first()
    assert first is not None
    assert re.search(rf'<td class="field-created">\s*<p>{time_tag(iso(first.created_at))}', body)


def test_a_background_reread_of_a_job_page_leaves_its_messages_for_the_next_page(root_client, user):
    """admin_live.js re-reads a job page for the fields no message carries: that request shows no
    messages and uses none up; the person's next page still has them."""
    job = make_job(user)
    root_client.post(act_url(job, "cancel"))  # leaves "Cancelled ... 1 job." for the next page

    reread = root_client.get(change_url(job), headers={LIVE_REFRESH_HEADER: "1"}).content.decode()
    assert 'class="messagelist"' not in reread
    assert marked(reread, job)["status"] == ["Cancelled"]
    page = root_client.get(change_url(job)).content.decode()
    assert "Cancelled (or asked to stop) 1 job." in page


def test_posting_changes_to_the_change_form_does_not_change_the_job(root_client, user):
    job = failed_job(user)
    before = Job.objects.filter(pk=job.pk).values().get()
    events = JobEvent.objects.filter(job=job).count()
    response = root_client.post(
        change_url(job),
        {
            "type": "primes",
            "status": "succeeded",
            "priority": "9",
            "progress": "100",
            "attempts": "0",
            "params": '{"n": 5}',
            "owner": str(job.owner_id),
            "_save": "Save",
        },
    )
    assert response.status_code == 403
    assert Job.objects.filter(pk=job.pk).values().get() == before
    assert JobEvent.objects.filter(job=job).count() == events


# --- actions ----------------------------------------------------------------------------------


def admin_events(job, actor) -> list[JobEvent]:
    return list(JobEvent.objects.filter(job=job, actor=actor).order_by("seq"))


def test_actions_are_offered_to_a_superuser(root_client, user):
    make_job(user)
    response = root_client.get(CHANGELIST)
    choices = dict(response.context["action_form"].fields["action"].choices)
    assert set(ACTIONS) <= set(choices)
    body = response.content.decode()
    for action in ACTIONS:
        assert f'<option value="{action}">' in body


def test_cancel_selected(root_client, root, user, broker, django_capture_on_commit_callbacks):
    queued = make_job(user)
    running = running_job(user)
    succeeded = succeeded_job(user)
    succeeded_before = Job.objects.filter(pk=succeeded.pk).values().get()
    broker.publish.reset_mock()

    with django_capture_on_commit_callbacks(execute=True):
        response = post_action(root_client, "cancel_selected", [queued, running, succeeded])
    assert response.status_code == 302

    assert fresh(queued).status == JobStatus.CANCELLED
    assert fresh(running).status == JobStatus.RUNNING
    assert fresh(running).cancel_requested_at is not None
    assert Job.objects.filter(pk=succeeded.pk).values().get() == succeeded_before

    assert sent_messages(response) == [
        (messages.SUCCESS, "Cancelled (or asked to stop) 2 jobs."),
        (messages.WARNING, "1 job could not be cancelled (already ended): 1 succeeded."),
    ]

    # The audit trail: who did it, on each job that changed, and on no other.
    [entry] = admin_events(queued, root)
    assert (entry.kind, entry.status) == (JobEventKind.STATUS, JobStatus.CANCELLED)
    assert "by root" in entry.message
    [entry] = admin_events(running, root)
    assert entry.kind == JobEventKind.CANCEL_REQUESTED and "by root" in entry.message
    assert admin_events(succeeded, root) == []
    # Both changes were published live.
    published = {call.args[1]["job"]["id"] for call in broker.publish.call_args_list}
    assert published == {str(queued.pk), str(running.pk)}


def test_cancelling_a_job_already_asked_to_stop_changes_nothing(root_client, root, user):
    running = running_job(user)
    post_action(root_client, "cancel_selected", [running])
    before = Job.objects.filter(pk=running.pk).values().get()
    assert before["cancel_requested_at"] is not None
    response = post_action(root_client, "cancel_selected", [running])
    assert response.status_code == 302
    assert Job.objects.filter(pk=running.pk).values().get() == before
    assert len(admin_events(running, root)) == 1  # one request, one entry


def test_retry_selected(root_client, root, user, broker, django_capture_on_commit_callbacks):
    failed = failed_job(user)
    cancelled = cancelled_job(user)
    queued = make_job(user)
    running = running_job(user)
    succeeded = succeeded_job(user)
    unchanged = {job.pk: Job.objects.filter(pk=job.pk).values().get() for job in (queued, running, succeeded)}
    broker.apply_async.reset_mock()

    with django_capture_on_commit_callbacks(execute=True):
        response = post_action(root_client, "retry_selected", [failed, cancelled, queued, running, succeeded])
    assert response.status_code == 302

    for job in (failed, cancelled):
        job = fresh(job)
        assert job.status == JobStatus.QUEUED
        assert job.error is None and job.cancel_requested_at is None
        [entry] = admin_events(job, root)
        assert (
            entry.kind == JobEventKind.RETRY
            and entry.status == JobStatus.QUEUED
            and "by root" in entry.message
        )
    for pk, before in unchanged.items():
        assert Job.objects.filter(pk=pk).values().get() == before
        assert not JobEvent.objects.filter(job_id=pk, actor=root).exists()

    assert sent_messages(response) == [
        (messages.SUCCESS, "Queued again 2 jobs."),
        (
            messages.WARNING,
            "3 jobs could not be retried (only failed or cancelled jobs can be): 1 queued, 1 running, 1 succeeded.",
        ),
    ]
    # The retried jobs went to the workers.
    dispatched = {call.kwargs["args"][0] for call in broker.apply_async.call_args_list}
    assert dispatched == {str(failed.pk), str(cancelled.pk)}


def test_rerun_selected(root_client, root, user, other_user, broker, django_capture_on_commit_callbacks):
    original = succeeded_job(
        other_user,
        type="primes",
        params={"n": 1000, "chunk": 1000},
        priority=7,
        metadata={"customer": "acme"},
    )
    failed = failed_job(user)
    existing = set(Job.objects.values_list("pk", flat=True))
    broker.apply_async.reset_mock()

    with django_capture_on_commit_callbacks(execute=True):
        response = post_action(root_client, "rerun_selected", [original, failed])
    assert response.status_code == 302
    assert sent_messages(response) == [(messages.SUCCESS, "Submitted a new run of 2 jobs.")]

    new_jobs = Job.objects.exclude(pk__in=existing)
    assert new_jobs.count() == 2
    for source in (original, failed):
        source = fresh(source)
        [new] = [job for job in new_jobs if job.params == source.params and job.owner_id == source.owner_id]
        assert (new.type, new.params, new.owner_id, new.priority, new.metadata) == (
            source.type,
            source.params,
            source.owner_id,
            source.priority,
            source.metadata,
        )
        assert new.status == JobStatus.QUEUED and new.pk != source.pk
        assert source.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)  # the original stays as it was
        # Both histories name the other job and who did it.
        [to_new] = admin_events(source, root)
        assert str(new.pk) in to_new.message and "by root" in to_new.message
        [from_original] = admin_events(new, root)
        assert str(source.pk) in from_original.message and "by root" in from_original.message
    # The new jobs went to the workers.
    dispatched = {call.kwargs["args"][0] for call in broker.apply_async.call_args_list}
    assert dispatched == {str(pk) for pk in new_jobs.values_list("pk", flat=True)}


def test_rerun_of_a_job_whose_type_is_gone_is_refused_with_a_warning(root_client, root, user):
    gone = Job.objects.create(type="no-longer-registered", params={}, owner=user, status=JobStatus.FAILED)
    count = Job.objects.count()
    response = post_action(root_client, "rerun_selected", [gone])
    assert response.status_code == 302
    assert sent_messages(response) == [(messages.WARNING, "1 job could not be re-run: 1 invalid.")]
    assert Job.objects.count() == count
    assert admin_events(gone, root) == []


def test_a_staff_user_with_change_permission_can_act(django_user_model, user):
    operator = staff_with(django_user_model, "operator", "view_job", "change_job")
    queued = make_job(user)
    client = session_client(operator)
    response = client.get(CHANGELIST)
    assert set(ACTIONS) <= set(dict(response.context["action_form"].fields["action"].choices))
    response = post_action(client, "cancel_selected", [queued])
    assert response.status_code == 302
    assert fresh(queued).status == JobStatus.CANCELLED
    assert [e.actor_id for e in JobEvent.objects.filter(job=queued, kind=JobEventKind.STATUS)] == [
        operator.pk
    ]


# --- permissions ------------------------------------------------------------------------------


def test_a_view_only_staff_user_sees_the_list_but_cannot_act(django_user_model, user):
    viewer = staff_with(django_user_model, "viewer", "view_job")
    queued = make_job(user)
    failed = failed_job(user)
    client = session_client(viewer)

    response = client.get(CHANGELIST)
    assert response.status_code == 200
    assert sorted(listed_ids(response)) == sorted([str(queued.pk), str(failed.pk)])
    action_form = response.context["action_form"]
    offered = set(dict(action_form.fields["action"].choices)) if action_form else set()
    assert offered.isdisjoint(ACTIONS)
    body = response.content.decode()
    for action in ACTIONS:
        assert f'value="{action}"' not in body
    # The change form is readable too.
    assert client.get(change_url(failed)).status_code == 200

    before = {job.pk: Job.objects.filter(pk=job.pk).values().get() for job in (queued, failed)}
    events = JobEvent.objects.count()
    jobs = Job.objects.count()
    for action in ACTIONS:
        response = post_action(client, action, [queued, failed])
        assert response.status_code in (200, 403)
        assert not [m for m in sent_messages(response) if m[0] == messages.SUCCESS]
    for pk, row in before.items():
        assert Job.objects.filter(pk=pk).values().get() == row
    assert JobEvent.objects.count() == events
    assert Job.objects.count() == jobs


def test_a_staff_user_without_view_permission_gets_403(django_user_model, user):
    job = make_job(user)
    client = session_client(staff_with(django_user_model, "nobody"))
    assert client.get(CHANGELIST).status_code == 403
    assert client.get(change_url(job)).status_code == 403
    response = post_action(client, "cancel_selected", [job])
    assert response.status_code == 403
    assert fresh(job).status == JobStatus.QUEUED


def test_a_non_staff_user_is_sent_to_the_admin_login(user):
    job = make_job(user)
    client = session_client(user)
    for url in (CHANGELIST, change_url(job)):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"] == f"/admin/login/?next={url}"
    response = post_action(client, "cancel_selected", [job])
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    assert fresh(job).status == JobStatus.QUEUED
    # Anonymous, likewise.
    response = Client().get(CHANGELIST)
    assert response.status_code == 302 and response["Location"] == f"/admin/login/?next={CHANGELIST}"


def test_nobody_adds_a_job_by_hand(root_client, django_user_model, user):
    everything = staff_with(
        django_user_model, "everything", "add_job", "change_job", "view_job", "delete_job"
    )
    count = Job.objects.count()
    for client in (root_client, session_client(everything)):
        assert client.get(ADD).status_code == 403
        response = client.post(ADD, {"type": "sleep", "params": "{}", "owner": str(user.pk), "_save": "Save"})
        assert response.status_code == 403
        # And no "Add job" button on the list.
        assert f'href="{ADD}"' not in client.get(CHANGELIST).content.decode()
    assert Job.objects.count() == count


# --- users and API tokens -----------------------------------------------------------------------


def test_tokens_are_listed_in_the_admin(root_client, user):
    token = Token.objects.create(user=user)
    response = root_client.get("/admin/authtoken/tokenproxy/")
    assert response.status_code == 200
    body = response.content.decode()
    assert token.key in body and "alice" in body
    # Reachable from the admin index.
    assert 'href="/admin/authtoken/tokenproxy/"' in root_client.get("/admin/").content.decode()


def test_a_token_is_created_through_the_admin_add_form(root_client, other_user):
    assert not Token.objects.filter(user=other_user).exists()
    response = root_client.post(
        "/admin/authtoken/tokenproxy/add/", {"user": str(other_user.pk), "_save": "Save"}
    )
    assert response.status_code == 302, response.content[:2000]
    token = Token.objects.get(user=other_user)
    assert re.fullmatch(r"[0-9a-f]{40}", token.key)
    # The new token authenticates against the API.
    api = Client(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert api.get("/api/jobs/").status_code == 200


def test_users_are_managed_in_the_admin(root_client, user, django_user_model):
    response = root_client.get("/admin/auth/user/")
    assert response.status_code == 200 and "alice" in response.content.decode()
    response = root_client.post(
        "/admin/auth/user/add/",
        {
            "username": "dave",
            "usable_password": "true",
            "password1": "a-Long-pass-9876",
            "password2": "a-Long-pass-9876",
        },
    )
    assert response.status_code == 302, response.content[:3000]
    dave = django_user_model.objects.get(username="dave")
    assert dave.check_password("a-Long-pass-9876")


# --- workers ----------------------------------------------------------------------------------


def test_the_worker_list_shows_state_queues_and_running_jobs_read_only(root_client, user):
    workers.worker_register(name="jobs@host-a", host="host-a", pid=11, queues=["longrun.jobs"], concurrency=2)
    gone = workers.worker_register(name="old@host-b", host="host-b", pid=12, queues=["cpu"], concurrency=1)
    workers.worker_stopped(name=gone.name, pid=gone.pid)
    execution.job_claim(job_id=make_job(user).pk, worker="jobs@host-a:99")
    response = root_client.get("/admin/tasks_app/workernode/")
    assert response.status_code == 200
    rows = {
        name: row
        for row in re.findall(r"<tr>.*?</tr>", response.content.decode(), re.S)
        for name in ("jobs@host-a", "old@host-b")
        if name in row
    }
    assert "Online" in rows["jobs@host-a"] and '<td class="field-running">1</td>' in rows["jobs@host-a"]
    assert "Stopped" in rows["old@host-b"] and '<td class="field-running">0</td>' in rows["old@host-b"]
    assert root_client.get("/admin/tasks_app/workernode/add/").status_code == 403
    change = root_client.get(f"/admin/tasks_app/workernode/{gone.pk}/change/")
    assert change.status_code == 200 and b'name="_save"' not in change.content


# --- the job page's buttons -------------------------------------------------------------------


def act_url(job, action: str) -> str:
    return f"/admin/tasks_app/job/{job.pk}/act/{action}/"


def buttons_on(client, job) -> list[str]:
    """The job page's buttons as the page shows them (not those kept for admin_live.js)."""
    body = client.get(change_url(job)).content.decode()
    shown_part = re.sub(r'<template id="lr-job-buttons">.*?</template>', "", body, flags=re.S)
    return re.findall(r'data-testid="admin-(\w+)"', shown_part)


def buttons_kept(client, job) -> dict[str, set[str]]:
    """The buttons admin_live.js may show as the status changes: {action: statuses}."""
    body = client.get(change_url(job)).content.decode()
    kept = re.search(r'<template id="lr-job-buttons">(.*?)</template>', body, re.S)
    if kept is None:
        return {}
    return {
        action: set(statuses.split())
        for action, statuses in re.findall(
            r'<li data-action="(\w+)" data-statuses="([\w ]+)">', kept.group(1)
        )
    }


def test_a_job_page_offers_the_buttons_its_status_allows(root_client, mixed_jobs):
    assert buttons_on(root_client, mixed_jobs["queued"]) == ["cancel", "rerun"]
    assert buttons_on(root_client, mixed_jobs["running"]) == ["cancel", "rerun"]
    assert buttons_on(root_client, mixed_jobs["failed_sleep"]) == ["retry", "rerun"]
    assert buttons_on(root_client, mixed_jobs["succeeded"]) == ["rerun"]
    page = root_client.get(change_url(mixed_jobs["queued"])).content.decode()
    assert 'data-confirm="Cancel this job?"' in page  # Cancel asks first (admin_live.js)
    # Every button, with the statuses it applies to, for admin_live.js to follow the job live.
    active, ended = {"scheduled", "queued", "running"}, {"succeeded", "failed", "cancelled"}
    assert buttons_kept(root_client, mixed_jobs["succeeded"]) == {
        "cancel": active,
        "retry": {"failed", "cancelled"},
        "rerun": active | ended,
    }


def test_a_job_page_button_acts_on_that_job_and_comes_back(root_client, mixed_jobs):
    queued, failed = mixed_jobs["queued"], mixed_jobs["failed_sleep"]
    response = root_client.post(act_url(queued, "cancel"), follow=True)
    assert response.redirect_chain == [(change_url(queued), 302)]
    assert Job.objects.get(pk=queued.pk).status == JobStatus.CANCELLED
    assert "Cancelled (or asked to stop) 1 job." in [str(m) for m in response.context["messages"]]
    assert JobEvent.objects.filter(job=queued, actor__username="root").exists()  # who did it, as the actions

    root_client.post(act_url(failed, "retry"))
    assert Job.objects.get(pk=failed.pk).status == JobStatus.QUEUED
    jobs = Job.objects.count()
    root_client.post(act_url(failed, "rerun"))
    assert Job.objects.count() == jobs + 1


def test_a_job_page_button_refuses_what_the_status_or_the_user_does_not_allow(
    root_client, mixed_jobs, django_user_model
):
    succeeded = mixed_jobs["succeeded"]
    before = Job.objects.filter(pk=succeeded.pk).values().get()
    response = root_client.post(act_url(succeeded, "retry"), follow=True)
    assert "1 job could not be retried" in " ".join(str(m) for m in response.context["messages"])
    assert Job.objects.filter(pk=succeeded.pk).values().get() == before
    assert root_client.get(act_url(succeeded, "rerun")).status_code == 405  # POST only
    assert root_client.post(act_url(succeeded, "delete")).status_code == 403
    assert root_client.post(f"/admin/tasks_app/job/{uuid.uuid4()}/act/cancel/").status_code == 404

    viewer = session_client(staff_with(django_user_model, "viewer", "view_job"))
    queued = mixed_jobs["queued"]
    assert buttons_on(viewer, queued) == []
    assert buttons_kept(viewer, queued) == {}
    assert viewer.post(act_url(queued, "cancel")).status_code == 403
    assert Job.objects.get(pk=queued.pk).status == JobStatus.QUEUED
