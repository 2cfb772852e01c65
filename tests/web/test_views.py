"""The pages for people (tasks_app/web/views.py): login, the dashboard, a job's page, and the static
files they load."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from unittest import mock

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.test import Client
from django.utils import timezone

from tasks_app.conf import JOB_QUEUE, LONGRUN_QUEUES, SNAPSHOT_LIMIT
from tasks_app.models import Job, JobStatus
from tasks_app.serializers import JobSerializer
from tasks_app.services import dispatch, execution, submission, workers
from tests.helpers import session_client

pytestmark = pytest.mark.django_db

STATIC_DIR = Path(settings.BASE_DIR) / "tasks_app" / "static" / "tasks_app"


def make_job(owner, *, job_type="sleep", params=None, **fields) -> Job:
    """A job row as the services create it; `fields` then set its state directly (no worker)."""
    job = submission.job_create(
        owner=owner, type=job_type, params={"seconds": 1} if params is None else params
    )
    if fields:
        Job.objects.filter(pk=job.pk).update(**fields)
        job.refresh_from_db()
    return job


@pytest.fixture(autouse=True)
def no_dispatch(monkeypatch):
    """Page tests need job rows, not Celery: publishing to the broker is skipped."""
    monkeypatch.setattr(dispatch, "job_dispatch", lambda **job: None)


@pytest.fixture
def browser(user) -> Client:
    return session_client(user)


@pytest.fixture
def staff_browser(staff_user) -> Client:
    return session_client(staff_user)


def page_config(response, element_id: str) -> dict:
    match = re.search(
        rf'<script id="{element_id}" type="application/json">(.*?)</script>', response.content.decode(), re.S
    )
    assert match, f"no #{element_id} in the page"
    return json.loads(match.group(1))


class Assets(HTMLParser):
    """The stylesheets, icons and scripts a page loads."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "link" and attrs.get("rel") in ("stylesheet", "icon"):
            self.urls.append(attrs["href"])
        elif tag == "script" and attrs.get("src"):
            self.urls.append(attrs["src"])


# --- login required ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", f"/jobs/{uuid.uuid4()}/"])
def test_pages_require_login(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={path}"


def test_login_page_renders_a_labelled_form(client):
    response = client.get("/accounts/login/?next=/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="csrfmiddlewaretoken"' in html
    assert '<label for="id_username">' in html and '<label for="id_password">' in html
    assert 'name="next" value="/"' in html


def test_logging_in_leads_to_the_dashboard(client, user):
    response = client.post(
        "/accounts/login/", {"username": "alice", "password": "alice-password-123", "next": "/"}
    )
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200


def test_a_wrong_password_shows_an_error(client, user):
    response = client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert 'data-testid="login-error"' in response.content.decode()


@pytest.mark.parametrize("next_url", ["/accounts/login/", "/accounts/login/?next=/accounts/login/"])
def test_a_signed_in_user_sent_back_to_the_login_page_goes_to_the_dashboard(client, user, next_url):
    """`?next=` naming the login page itself was a redirect loop (Django raises for it: a 500)."""
    client.force_login(user)
    response = client.get("/accounts/login/", {"next": next_url})
    assert response.status_code == 302 and response["Location"] == "/"


def test_a_waiting_job_page_says_why_it_waits(browser, user):
    job = make_job(user)
    html = browser.get(f"/jobs/{job.pk}/").content.decode()
    assert "No live worker reads queue longrun.jobs" in html and 'data-testid="wait-reason"' in html


def test_job_page_offers_cancel_and_retry_only_to_who_may_change_the_job(
    user, viewing_staff_user, staff_user
):
    job = make_job(user)
    for viewer, may_change in ((user, True), (staff_user, True), (viewing_staff_user, False)):
        html = session_client(viewer).get(f"/jobs/{job.pk}/").content.decode()
        assert f'data-can-change="{str(may_change).lower()}"' in html, viewer
        cancel = re.search(r'<button[^>]*data-testid="cancel-button"[^>]*>', html).group(0)
        assert (" hidden" in cancel) is not may_change, viewer
        assert ('data-testid="view-only"' in html) is not may_change, viewer


def test_logout_is_a_post_and_returns_to_the_login_page(browser):
    assert browser.get("/accounts/logout/").status_code == 405
    response = browser.post("/accounts/logout/")
    assert response.status_code == 302 and response["Location"] == "/accounts/login/"
    assert browser.get("/").status_code == 302


def test_a_signed_in_user_skips_the_login_page(browser):
    response = browser.get("/accounts/login/")
    assert response.status_code == 302 and response["Location"] == "/"


# --- dashboard --------------------------------------------------------------------------------


def test_dashboard_shows_my_jobs_newest_first_and_not_others(browser, user, other_user):
    first = make_job(user)
    second = make_job(user, job_type="primes", params={"n": 1000}, status=JobStatus.RUNNING, progress=40)
    theirs = make_job(other_user)

    response = browser.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert html.index(f'data-job-id="{second.pk}"') < html.index(f'data-job-id="{first.pk}"')
    assert f'data-job-id="{theirs.pk}"' not in html
    assert 'data-status="running"' in html and 'value="40"' in html
    assert "csrftoken" in response.cookies  # the form's fetch sends it as X-CSRFToken

    config = page_config(response, "dashboard-config")
    assert config["isStaff"] is False and config["scope"] == "mine"
    assert [job["id"] for job in config["jobs"]] == [str(second.pk), str(first.pk)]
    # Exactly the REST representation, which the live messages also carry.
    assert config["jobs"][0] == json.loads(json.dumps(JobSerializer(second).data))
    assert config["stats"]["by_status"]["running"] == 1 and config["stats"]["by_status"]["queued"] == 1
    assert len(config["stats"]["finished_per_minute"]) == 60
    assert config["urls"]["jobTypes"] == "/api/job-types/" and config["urls"]["stats"] == "/api/stats/"
    assert config["urls"]["jobs"] == "/api/jobs/" and config["urls"]["websocket"] == "/ws/jobs/"
    assert 'data-testid="count-running"' in html


def test_dashboard_for_staff_shows_everyone_and_subscribes_to_all(staff_browser, user, other_user):
    mine = make_job(user)
    theirs = make_job(other_user)
    response = staff_browser.get("/")
    html = response.content.decode()
    assert f'data-job-id="{mine.pk}"' in html and f'data-job-id="{theirs.pk}"' in html
    assert '<th scope="col">Owner</th>' in html
    config = page_config(response, "dashboard-config")
    assert config["isStaff"] is True and config["scope"] == "all"


def test_the_new_job_form_starts_on_the_last_type_i_ran_else_the_first_registered(browser, user):
    def selected() -> list[str]:
        page = browser.get("/").content.decode()
        form = page[page.index('id="job-type"') : page.index("</select>", page.index('id="job-type"'))]
        return re.findall(r'<option value="([^"]+)" selected>', form)

    assert selected() == ["sleep"]  # not "fail", the alphabetical first
    make_job(user, job_type="primes", params={"n": 10})
    assert selected() == ["primes"]
    make_job(user, type="gone-type")  # its type is no longer registered: not offered
    assert selected() == ["sleep"]


def test_a_failed_row_shows_its_error_its_attempts_and_how_long_it_ran(browser, user):
    now = timezone.now()
    make_job(
        user,
        status="failed",
        attempts=2,
        max_attempts=3,
        error={"type": "DemoError", "message": "it broke"},
        started_at=now - timedelta(seconds=5),
        finished_at=now,
    )
    page = browser.get("/").content.decode()
    row = page[page.index('data-testid="job-row"') : page.index("</tr>", page.index('data-testid="job-row"'))]
    assert "DemoError: it broke" in row
    assert "2 of 3" in row
    assert 'data-col="duration" data-started="' in row and 'data-finished="' in row  # common.js formats it


def test_dashboard_filters_by_status_and_type(browser, user):
    failed = make_job(user, job_type="fail", params={}, status=JobStatus.FAILED)
    queued = make_job(user)
    html = browser.get("/?status=failed").content.decode()
    assert f'data-job-id="{failed.pk}"' in html and f'data-job-id="{queued.pk}"' not in html
    assert '<option value="failed" selected>' in html
    html = browser.get("/?type=sleep").content.decode()
    assert f'data-job-id="{queued.pk}"' in html and f'data-job-id="{failed.pk}"' not in html
    # An unknown status is no filter.
    html = browser.get("/?status=nonsense").content.decode()
    assert f'data-job-id="{failed.pk}"' in html and f'data-job-id="{queued.pk}"' in html


def test_dashboard_search_by_id_prefix_filters_and_a_whole_id_opens_the_job(browser, user):
    a, b = make_job(user), make_job(user)
    # At least 6 characters, and long enough to tell a from b whatever ids they drew.
    shared = next((i for i, (x, y) in enumerate(zip(str(a.pk), str(b.pk))) if x != y), len(str(a.pk)))
    prefix = str(a.pk)[: max(6, shared + 1)]
    html = browser.get(f"/?q={prefix}").content.decode()
    assert f'data-job-id="{a.pk}"' in html and f'data-job-id="{b.pk}"' not in html
    response = browser.get(f"/?q={a.pk}")
    assert response.status_code == 302 and response["Location"] == f"/jobs/{a.pk}/"
    response = browser.get(f"/?q={str(a.pk).upper().replace('-', '')}")
    assert response["Location"] == f"/jobs/{a.pk}/"


def test_dashboard_id_prefix_finds_a_job_older_than_the_newest_fifty(browser, user):
    """The prefix is matched in the database, not among the rows already picked for the page."""
    oldest = make_job(user)
    for _ in range(SNAPSHOT_LIMIT + 5):
        make_job(user)
    prefix = str(oldest.pk)[:8]
    others = [str(pk)[:8] for pk in Job.objects.exclude(pk=oldest.pk).values_list("pk", flat=True)]
    assert prefix not in others, "ids drawn with the same 8-character start; rerun"
    for query in (prefix, prefix.upper(), str(oldest.pk)[:13]):  # with a dash, as the id is shown
        html = browser.get("/", {"q": query}).content.decode()
        assert f'data-job-id="{oldest.pk}"' in html, query
        assert html.count('data-testid="job-row"') == 1, query


@pytest.mark.parametrize("query", ["zz", "1234-zz", "g"])
def test_dashboard_id_prefix_that_cannot_be_an_id_shows_no_job(browser, user, query):
    job = make_job(user)
    html = browser.get("/", {"q": query}).content.decode()
    assert f'data-job-id="{job.pk}"' not in html


def test_dashboard_with_no_jobs_says_so(browser):
    html = browser.get("/").content.decode()
    assert "No jobs yet." in html


# --- job page ---------------------------------------------------------------------------------


def test_job_page_reads_as_what_ran_for_whom_and_how_it_went(browser, user):
    job = make_job(
        user,
        status=JobStatus.FAILED,
        error={"type": "DemoError", "message": "it broke <badly>"},
        traceback="Traceback (most recent call last):\n  ...\nDemoError: it broke",
        progress=30,
        progress_message="step 3 of 10",
        metadata={"customer": "acme"},
        version=143,
    )
    response = browser.get(f"/jobs/{job.pk}/")
    assert response.status_code == 200
    html = response.content.decode()
    page, api_part = html.split('data-testid="api-clients"')
    assert f"For <strong>{user.username}</strong>" in page and "queue <code>longrun.jobs</code>" in page
    assert 'data-testid="cancel-button"' in html and 'data-testid="retry-button"' in html
    assert "it broke &lt;badly&gt;" in html and "it broke <badly>" not in html.split('id="job-config"')[0]
    assert "Traceback (most recent call last)" in html
    assert 'data-status="failed"' in html
    assert "step 3 of 10" in html
    # Params and metadata as indented JSON; the type, status and progress once, at the top.
    assert "&quot;seconds&quot;: 1" in page and "&quot;customer&quot;: &quot;acme&quot;" in page
    details = page.split('data-testid="job-fields"')[1].split("</dl>")[0]
    for label in ("Owner", "Priority", "Created", "Started", "Finished", "Duration"):
        assert f"<dt>{label}</dt>" in details, label
    for api_only in ("Version", "Links", "Status", "Progress", "Type", "/api/"):
        assert api_only not in details, api_only
    # Options not used are not shown as empty rows (the script shows them once they have a value).
    assert re.search(r'data-row="callback_url" data-optional hidden', details)
    # The API's part: folded away, with the version and every URL the job answers on.
    assert '<details class="card api-card" data-testid="api-clients">' in html  # closed: no `open`
    assert "143" in api_part.split("</details>")[0]
    for link in ("self", "events", "cancel", "retry"):
        assert JobSerializer(job).data["links"][link] in api_part
    config = page_config(response, "job-config")
    assert config["job"] == json.loads(json.dumps(JobSerializer(job).data))
    assert [e["kind"] for e in config["events"]] == ["created"]
    assert f'data-seq="{config["events"][0]["seq"]}"' in html
    assert re.search(r"data-attempts-empty >\s*Not started yet.", html)  # no attempt yet


def test_job_page_lists_each_attempt(browser, user):
    job = make_job(user)
    execution.job_claim(job_id=job.pk, worker="alpha@host")
    execution.job_fail_or_retry(
        job_id=job.pk, worker="alpha@host", error={"type": "E", "message": "m"}, retryable=True
    )
    Job.objects.filter(pk=job.pk).update(status=JobStatus.QUEUED)
    execution.job_claim(job_id=job.pk, worker="beta@host")
    html = browser.get(f"/jobs/{job.pk}/").content.decode()
    rows = re.findall(
        r'<tr data-testid="attempt-row" data-outcome="(\w+)">.*?<code>([^<]*)</code>', html, re.S
    )
    assert rows == [("scheduled", "alpha@host"), ("running", "beta@host")]
    assert "Failed, retried" in html and "E: m" in html


def test_job_page_of_another_users_job_is_404(browser, other_user):
    theirs = make_job(other_user)
    response = browser.get(f"/jobs/{theirs.pk}/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
    assert "Not found" in response.content.decode()
    assert browser.get(f"/jobs/{uuid.uuid4()}/").status_code == 404


def test_staff_see_anyones_job_page(staff_browser, user):
    job = make_job(user)
    assert staff_browser.get(f"/jobs/{job.pk}/").status_code == 200


def test_job_page_route_takes_only_uuids(browser):
    assert browser.get("/jobs/not-a-uuid/").status_code == 404


# --- static files -----------------------------------------------------------------------------


def test_static_files_the_pages_reference_exist(browser, user):
    job = make_job(user)
    referenced: set[str] = set()
    for path in ["/", f"/jobs/{job.pk}/", "/schedules/", "/accounts/login/"]:
        client = browser if path != "/accounts/login/" else Client()
        parser = Assets()
        parser.feed(client.get(path).content.decode())
        referenced.update(parser.urls)
    assert referenced, "no assets found"
    for url in referenced:
        assert url.startswith(
            settings.STATIC_URL if settings.STATIC_URL.startswith("/") else "/" + settings.STATIC_URL
        )
        name = url.split("static/", 1)[1]
        assert finders.find(name), f"{url} is referenced but no finder has it"
    # ES modules import each other by relative path; every import must resolve too.
    for url in referenced:
        if url.endswith(".js"):
            check_imports(finders.find(url.split("static/", 1)[1]))
    assert (STATIC_DIR / "vendor" / "uPlot.LICENSE").exists()


def check_imports(path: str, seen: set[str] | None = None) -> None:
    seen = seen if seen is not None else set()
    if path in seen:
        return
    seen.add(path)
    source = Path(path).read_text()
    for spec in re.findall(r'^\s*import\s[^;]*?from\s+"(\.[^"]+)"', source, re.M | re.S):
        target = (Path(path).parent / spec).resolve()
        assert target.exists(), f"{path} imports {spec}, which does not exist"
        check_imports(str(target), seen)


def test_live_js_has_no_page_specific_code():
    source = (STATIC_DIR / "live.js").read_text()
    assert "export class JobStream" in source
    assert "document.querySelector" not in source and "getElementById" not in source


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_scripts_parse_as_es_modules(tmp_path):
    """A syntax error in a module would only show up in a browser; node catches it here."""
    for source in sorted(STATIC_DIR.glob("*.js")):
        copy = tmp_path / (source.stem + ".mjs")
        copy.write_text(source.read_text())
        result = subprocess.run(["node", "--check", str(copy)], capture_output=True, text=True)
        assert result.returncode == 0, f"{source.name}: {result.stderr}"


# --- workers ----------------------------------------------------------------------------------


def serve_every_queue() -> None:
    for n, queue in enumerate(LONGRUN_QUEUES):
        workers.worker_register(name=f"w{n}@h", host="h", pid=100 + n, queues=[queue], concurrency=1)


def test_the_dashboard_warns_when_a_queue_has_no_live_worker(browser):
    workers.worker_register(name="jobs@h", host="h", pid=1, queues=[JOB_QUEUE], concurrency=1)
    html = browser.get("/").content.decode()
    assert 'data-testid="unserved-queues"' in html
    assert "longrun.maintenance, longrun.webhooks" in html
    assert "Scheduled jobs do not start" in html and "Webhooks are not sent" in html
    assert "Jobs wait in the queue" not in html
    serve_every_queue()
    assert 'data-testid="unserved-queues"' not in browser.get("/").content.decode()


def test_the_workers_page_is_for_staff_who_see_every_job(browser, staff_browser, viewing_staff_user):
    workers.worker_register(name="jobs@host-a", host="host-a", pid=4242, queues=[JOB_QUEUE], concurrency=3)
    assert browser.get("/workers/").status_code == 403
    for client in (staff_browser, session_client(viewing_staff_user)):
        response = client.get("/workers/")
        assert response.status_code == 200
        html = response.content.decode()
        assert 'data-worker="jobs@host-a"' in html and "4242" in html
        assert page_config(response, "workers-config")["urls"]["workers"] == "/api/workers/"


# --- schedules page ---------------------------------------------------------------------------


def test_schedules_page_lists_mine_with_the_form_and_its_live_config(browser, user, other_user):
    from tasks_app.services import schedules

    with mock.patch("tasks_app.realtime.publish.publish_schedule_message"):
        schedules.schedule_create(owner=user, name="weekday report", type="sleep", cron="0 9 * * 1-5")
        schedules.schedule_create(owner=other_user, name="theirs", type="sleep", cron="0 9 * * *")
    response = browser.get("/schedules/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "weekday report" in html and "At 09:00, Monday through Friday, UTC" in html
    assert "theirs" not in html.split('id="schedules-config"')[0]
    for testid in (
        "schedule-form",
        "schedule-cron",
        "schedule-timezone",
        "schedule-preview",
        "create-schedule",
    ):
        assert f'data-testid="{testid}"' in html, testid
    config = page_config(response, "schedules-config")
    assert [s["name"] for s in config["schedules"]] == ["weekday report"]
    assert config["urls"]["preview"] == "/api/schedules/preview/" and config["changesEvery"] is False
    assert '<option value="Europe/Paris">' in html


def test_schedules_page_needs_a_login():
    response = Client().get("/schedules/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_a_scheduled_job_page_names_its_schedule_and_slot(browser, user):
    from tasks_app.models import Schedule
    from tasks_app.services import schedules

    with (
        mock.patch("tasks_app.realtime.publish.publish_schedule_message"),
        mock.patch.object(dispatch.run_job, "apply_async"),
    ):
        schedule = schedules.schedule_create(
            owner=user, name="nightly <report>", type="sleep", cron="0 3 * * *"
        )
        Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=schedules.database_now())
        schedules.schedules_fire_due()
    job = Job.objects.get(schedule=schedule)
    summary = (
        browser.get(f"/jobs/{job.pk}/")
        .content.decode()
        .split('data-testid="job-summary"')[1]
        .split("</p>")[0]
    )
    assert (
        f'href="/schedules/#schedule-{schedule.pk}" data-testid="job-schedule">nightly &lt;report&gt;</a>'
        in summary
    )
    assert ", slot <time" in summary
