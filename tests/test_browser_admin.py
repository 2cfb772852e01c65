"""The job admin in a real browser: headless Chromium driven by Playwright (tests/browser.py).

- `test_the_admin_scripts_write_durations_and_json_as_the_server_does`: common.js's formatDuration
  and common.js's prettyJson against the server's own (tasks_app/admin/cells.py), with the
  scripts served from the static directory by Playwright itself (no server).
- `test_the_job_admin_follows_jobs_live_as_a_reload_shows_them`: the whole system (Daphne, a
  Celery worker, Redis, the test database). The job list at 1400 px keeps every column inside the
  page; a job submitted meanwhile appears at the top as the same row a reload renders, with the
  counts grown and a bar in its status's colour; the job page follows a job to success (every
  field, the history, the buttons) and another to cancelled (Retry appears and works); light and
  dark themes; axe-core on both pages; screenshots at 1280 and 390 px in test-artifacts/browser/.
"""

from __future__ import annotations

import base64
import html
import json
import re
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from urllib.parse import urlparse

import pytest
from django.utils import timezone

from tasks_app.admin.cells import format_duration, pretty_json
from tasks_app.models import Job
from tasks_app.services import control, execution, submission
from tests.browser import NARROW, STATIC_DIR, WIDE, Shots, assert_accessible, sign_in
from tests.helpers import running_job, wait_for

# The width the Duration column used to be cut off at (the list beside its filters).
WIDER = {"width": 1400, "height": 900}
CHANGELIST = "/admin/tasks_app/job/"

# --- the admin's scripts against the server's formatting, no server ---------------------------------

# Enough of a WebSocket for admin_live.js to load on a blank page (it connects at once).
QUIET_WEBSOCKET = "window.WebSocket = class { constructor() { this.readyState = 0; } send() {} close() {} };"

FORMAT_SCENARIO = """
async ({ start, spans, values }) => {
  const { formatDuration } = await import("/static/tasks_app/common.js");
  const { prettyJson } = await import("/static/tasks_app/common.js");
  const from = Date.parse(start);
  return {
    durations: spans.map((ms) => formatDuration(start, new Date(from + ms).toISOString())),
    json: values.map((value) => prettyJson(value)),
  };
}
"""


@pytest.mark.browser
def test_the_admin_scripts_write_durations_and_json_as_the_server_does(chromium):
    """What the server renders first and what the page writes over it later are the same text:
    durations on both sides of every rounding step, JSON with keys Python and JavaScript would
    order differently ("10" before "9"), nesting, empties and non-ASCII text."""
    context = chromium.new_context()
    page = context.new_page()

    def serve(route):
        path = urlparse(route.request.url).path
        if path == "/":
            route.fulfill(body="<!doctype html><title>admin_live.js</title>", content_type="text/html")
        elif path.startswith("/static/"):
            route.fulfill(
                path=str(STATIC_DIR / path.removeprefix("/static/")), content_type="text/javascript"
            )
        else:
            route.fulfill(status=404)

    page.route("http://longrun.test/**", serve)
    page.add_init_script(QUIET_WEBSOCKET)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto("http://longrun.test/")
    start = datetime(2025, 3, 4, 10, 0, tzinfo=dt_timezone.utc)
    spans = [0, 1, 499, 500, 999, 1000, 1499, 1500, 12_000, 59_499, 59_500, 61_000, 185_000, 3_599_499]
    spans += [3_599_500, 7_440_000, 2 * 86_400_000 + 61_000]
    values = [
        {"slept": 4, "files": ["a", "b"]},
        {"b": 1, "a": [1, 2.5, {"y": None, "x": "é ü 😀"}], "10": True, "9": False, "": {}},
        {"type": "DemoError", "message": 'boom "quoted" <b>\n line two'},
        [],
        [[], {}, [1, [2, [3]]]],
    ]
    result = page.evaluate(
        FORMAT_SCENARIO, {"start": start.isoformat().replace("+00:00", "Z"), "spans": spans, "values": values}
    )
    context.close()

    server_durations = [format_duration(start, start + timedelta(milliseconds=ms)) for ms in spans]
    assert result["durations"] == server_durations
    assert server_durations[:4] == ["0 ms", "1 ms", "499 ms", "500 ms"]
    assert server_durations[9:12] == ["59 s", "1 min 0 s", "1 min 1 s"]
    assert server_durations[-3:] == ["1 h 0 min", "2 h 4 min", "48 h 1 min"]
    server_json = []
    for value in values:
        shown = pretty_json(value)
        pre = re.fullmatch(r'<pre class="lr-json">(.*)</pre>', shown, re.S)
        server_json.append(html.unescape(pre.group(1)) if pre else shown)
    assert result["json"][:3] == server_json[:3]
    assert server_json[3] == "—" and result["json"][3] == "[]"  # nothing: the page writes "—" itself
    assert result["json"][4] == server_json[4]
    assert errors == []


# --- the whole system ----------------------------------------------------------------------------

ROW_TEXTS = "row => [...row.cells].map((cell) => cell.innerText.trim())"

# The colour at a point of an element's screenshot (a PNG), read back through a canvas.
PIXEL = """
async ({ png, x }) => {
  const image = new Image();
  image.src = `data:image/png;base64,${png}`;
  await image.decode();
  const canvas = document.createElement("canvas");
  canvas.width = image.width;
  canvas.height = image.height;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  const [r, g, b] = context.getImageData(Math.floor(image.width * x), Math.floor(image.height / 2), 1, 1).data;
  return [r, g, b];
}
"""

# How wide the list's table is against its box and the window.
TABLE_BOX = """
() => {
  const results = document.querySelector("#changelist-form .results");
  const header = document.querySelector("#result_list thead th:last-child");
  const cells = [...document.querySelectorAll("#result_list tbody tr > :last-child")];
  return {
    scroll: results.scrollWidth,
    client: results.clientWidth,
    right: results.getBoundingClientRect().right,
    lastRight: Math.max(header.getBoundingClientRect().right, ...cells.map((cell) => cell.getBoundingClientRect().right)),
    viewport: document.documentElement.clientWidth,
    lastColumn: header.textContent.trim(),
  };
}
"""


# The text of every field of a job page and of its inlines, whitespace folded; without the
# inlines' hidden "Add another" row, which Django's inlines.js adds on load (nobody adds here).
EVERY_FIELD = """
() => [...document.querySelectorAll("#job_form .form-row, #job_form .inline-group")].map((el) => {
  const copy = el.cloneNode(true);
  copy.querySelectorAll(".add-row").forEach((row) => row.remove());
  return copy.textContent.replace(/\\s+/g, " ").trim();
})
"""


def colour_scheme(page, scheme: str) -> None:
    """The system's light or dark, as the admin on "auto" follows it; once the admin's own colour
    transitions have run (axe-core would measure colours half-way)."""
    page.emulate_media(color_scheme=scheme)
    page.wait_for_function("document.getAnimations().length === 0")


def pixel(page, locator, x: float) -> tuple[int, int, int]:
    """The colour of `locator` at `x` (a fraction of its width), half-way down."""
    png = base64.b64encode(locator.screenshot()).decode()
    return tuple(page.evaluate(PIXEL, {"png": png, "x": x}))


def rgb(page, locator, prop: str = "color") -> tuple[int, int, int]:
    """A computed colour of `locator` as (r, g, b)."""
    value = locator.evaluate(f"el => getComputedStyle(el).{prop}")
    return tuple(int(n) for n in re.findall(r"\d+", value)[:3])


def assert_table_fits(page) -> None:
    """The job list is not cut off: its box does not scroll sideways, and its last column,
    Duration, ends inside the box and the window."""
    box = page.evaluate(TABLE_BOX)
    assert box["lastColumn"] == "Duration", box
    assert box["scroll"] <= box["client"], box
    assert box["lastRight"] <= box["right"] + 0.5 and box["lastRight"] <= box["viewport"], box


def row_of(page, job_id):
    return page.locator(f'#result_list tbody tr:has([data-job-id="{job_id}"])')


@pytest.mark.browser
@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_the_job_admin_follows_jobs_live_as_a_reload_shows_them(
    chromium, stack, free_tcp_port, django_user_model
):
    from playwright.sync_api import expect

    # An operator who sees everything on a job's page (its history and webhook deliveries too).
    erin = django_user_model.objects.create_superuser("erin", "erin@example.com", "erin-password-123")

    # A row as wide as rows get: running for 75 minutes (on a worker of its own, "w1"), asked to
    # stop, long words under its bar, created yesterday. Made through the services; only its times
    # are moved back.
    busy = running_job(erin, params={"seconds": 60})
    execution.job_progress(
        job_id=busy.pk, worker="w1", percent=40, message="Checked 400 of 1000 numbers; 78 primes so far"
    )
    control.job_cancel(job_id=busy.pk, actor=erin)
    now = timezone.now()
    Job.objects.filter(pk=busy.pk).update(
        created_at=now - timedelta(days=1), started_at=now - timedelta(minutes=75)
    )

    stack.env["CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT"] = "1"  # nothing of ours runs at the end
    stack.start_ready_worker("worker", concurrency=2)
    stack.start_daphne(free_tcp_port)
    base = f"http://127.0.0.1:{free_tcp_port}"
    shot = Shots("admin-live")
    problems: list[str] = []
    context = chromium.new_context(base_url=base, viewport=WIDER)
    page = context.new_page()
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    live_state = page.get_by_test_id("live-state")
    try:
        sign_in(page, "erin", "erin-password-123", next_url=CHANGELIST)
        expect(page).to_have_url(f"{base}{CHANGELIST}")
        expect(live_state).to_have_attribute("data-state", "live", timeout=15_000)
        expect(row_of(page, busy.pk)).to_contain_text("Running · cancelling")

        # --- the list at 1400 px beside its filters: nothing cut off -------------------------------
        assert_table_fits(page)
        shot(page, "list-1400")
        listed = Job.objects.count()
        page.evaluate("window.__sameDocument = true")

        # --- a job submitted now appears at the top and runs to success, live ---------------------
        job = submission.job_create(owner=erin, type="sleep", params={"seconds": 3, "steps": 6})
        row = row_of(page, job.pk)
        expect(row).to_have_count(1, timeout=15_000)
        expect(page.locator("#result_list tbody tr").first).to_have_attribute("data-live-row", str(job.pk))
        # The counts grew with it: "N results" by the search box, "N jobs" under the table.
        expect(page.locator("#changelist-search .quiet")).to_contain_text(f"{listed + 1} results")
        expect(page.locator("#changelist .paginator")).to_contain_text(f"{listed + 1} jobs")
        expect(page.locator(".action-counter")).to_have_text(f"0 of {listed + 1} selected")

        badge = row.locator('[data-field="status"]')
        bar = row.locator("progress")
        expect(badge).to_have_text("Running", timeout=30_000)
        value = wait_for(
            lambda: (lambda v: v if 0 < v < 100 else None)(int(bar.evaluate("el => el.value"))),
            timeout=15,
            what="the bar to move",
        )
        # The bar in the badge's colour (not the one blue of before), with its percentage beside it.
        running = rgb(page, badge)
        assert pixel(page, bar, x=value / 200) == running
        expect(row.locator(".lr-pct")).to_have_text(re.compile(r"^\d+%$"))
        assert row.evaluate(
            "r => r.querySelector('.lr-pct').textContent === `${r.querySelector('progress').value}%`"
        )
        expect(row.locator('[data-field="duration"]')).to_have_text(re.compile(r"^running \d+ (ms|s)$"))
        expect(row.locator('[data-field="attempts"]')).to_have_text("1 of 3")
        shot(page, "list-running")

        expect(badge).to_have_text("Succeeded", timeout=30_000)
        expect(row.locator(".lr-pct")).to_have_text("100%")
        expect(row.locator('[data-field="progress_message"]')).to_have_text("step 6 of 6")
        expect(row.locator('[data-field="duration"]')).to_have_text(re.compile(r"^\d s$"))
        succeeded = rgb(page, badge)
        assert succeeded != running
        assert pixel(page, bar, x=0.5) == succeeded
        assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
        assert_table_fits(page)
        live_texts = row.evaluate(ROW_TEXTS)
        live_classes = row.evaluate("r => [...r.cells].map((cell) => cell.className)")
        shot(page, "list-succeeded")

        # The same row, rendered by the server: every cell says the same.
        page.reload()
        expect(live_state).to_have_attribute("data-state", "live", timeout=15_000)
        rendered = row_of(page, job.pk)
        assert rendered.get_attribute("data-live-row") is None  # this one is the server's
        assert rendered.evaluate(ROW_TEXTS) == live_texts
        assert rendered.evaluate("r => [...r.cells].map((cell) => cell.className)") == live_classes
        expect(page.locator("#changelist-search .quiet")).to_contain_text(f"{listed + 1} results")

        page.set_viewport_size(WIDE)
        shot(page, "list-1280")
        page.set_viewport_size(NARROW)
        # On a phone each job is a card, every value under its column's name, none off the edge.
        assert page.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]
        box = page.evaluate(TABLE_BOX)
        assert box["scroll"] <= box["client"], box
        expect(rendered.locator("td.field-duration")).to_have_attribute("data-label", "Duration")
        shot(page, "list-390")

        # --- light and dark: the badges, bars and notes follow the admin's theme ----------------
        page.set_viewport_size(WIDE)
        light = rgb(page, rendered.locator('[data-field="status"]'), "backgroundColor")
        assert_accessible(page, "job list")
        colour_scheme(page, "dark")  # the theme toggle on "auto" follows the system
        dark = rgb(page, rendered.locator('[data-field="status"]'), "backgroundColor")
        assert dark != light and sum(dark) < sum(light)
        assert_accessible(page, "job list, dark")  # contrast of every badge and note included
        shot(page, "list-dark")
        page.evaluate("document.documentElement.dataset.theme = 'light'")  # the toggle says light
        assert rgb(page, rendered.locator('[data-field="status"]'), "backgroundColor") == light
        colour_scheme(page, "light")
        page.evaluate("document.documentElement.dataset.theme = 'dark'")  # the toggle says dark
        assert rgb(page, rendered.locator('[data-field="status"]'), "backgroundColor") == dark
        page.evaluate("document.documentElement.dataset.theme = 'auto'")

        # --- the job page follows a job to success: every field, the history, the buttons -------
        page.set_viewport_size(WIDE)
        follow = submission.job_create(owner=erin, type="sleep", params={"seconds": 6, "steps": 6})
        page.goto(f"{CHANGELIST}{follow.pk}/change/")
        page.evaluate("window.__jobPage = true")
        expect(live_state).to_have_attribute("data-state", "live", timeout=15_000)

        def field(name: str):
            return page.locator(f'#job_form [data-job-id="{follow.pk}"][data-field="{name}"]')

        # Opened while the job is active: Cancel and Re-run, no Retry.
        expect(page.get_by_test_id("admin-cancel")).to_be_visible()
        expect(page.get_by_test_id("admin-rerun")).to_be_visible()
        expect(page.get_by_test_id("admin-retry")).to_have_count(0)
        expect(field("status")).to_have_text("Running", timeout=30_000)
        expect(field("duration")).to_have_text(re.compile(r"^running \d+ (ms|s)$"))
        expect(field("finished_at")).to_have_text("—")
        expect(field("attempts")).to_have_text("1 of 3")
        expect(field("started_at").locator("time")).to_have_count(1)
        expect(field("worker")).not_to_have_text("—")  # re-read from the page: no message has it
        shot(page, "job-page-running")

        expect(field("status")).to_have_text("Succeeded", timeout=30_000)
        expect(field("finished_at").locator("time")).to_have_count(1)
        expect(field("duration")).to_have_text(re.compile(r"^\d+ s$"))
        expect(field("progress_message")).to_have_text("step 6 of 6")
        expect(page.locator("#job_form .lr-pct")).to_have_text("100%")
        expect(field("result")).to_have_text(json.dumps({"slept": 6}, indent=2))
        expect(page.locator("#events-group")).to_contain_text("Succeeded.")  # the history, re-read
        expect(page.locator("#content > h2")).to_have_text(f"sleep {str(follow.pk)[:8]} (succeeded)")
        expect(page.get_by_test_id("admin-cancel")).to_have_count(0)
        expect(page.get_by_test_id("admin-retry")).to_have_count(0)
        expect(page.get_by_test_id("admin-rerun")).to_be_visible()
        assert pixel(page, page.locator("#job_form progress"), x=0.5) == rgb(page, field("status"))
        assert page.evaluate("window.__jobPage") is True, "the page reloaded"
        # Every field (collapsed ones too) and the inlines read as a reload renders them.
        followed = page.evaluate(EVERY_FIELD)
        shot(page, "job-page-1280")
        assert_accessible(page, "job page")
        colour_scheme(page, "dark")
        assert_accessible(page, "job page, dark")
        colour_scheme(page, "light")
        page.reload()
        expect(live_state).to_have_attribute("data-state", "live", timeout=15_000)
        assert page.evaluate(EVERY_FIELD) == followed
        page.set_viewport_size(NARROW)
        shot(page, "job-page-390")

        # --- and another to cancelled, by someone else: Retry appears, and works ----------------
        page.set_viewport_size(WIDE)
        later = submission.job_create(
            owner=erin, type="sleep", params={"seconds": 0}, run_at=timezone.now() + timedelta(hours=1)
        )
        page.goto(f"{CHANGELIST}{later.pk}/change/")
        expect(live_state).to_have_attribute("data-state", "live", timeout=15_000)
        expect(page.get_by_test_id("admin-cancel")).to_be_visible()
        expect(page.get_by_test_id("admin-retry")).to_have_count(0)
        control.job_cancel(job_id=later.pk, actor=erin)
        expect(page.locator(f'[data-job-id="{later.pk}"][data-field="status"]')).to_have_text("Cancelled")
        expect(page.get_by_test_id("admin-cancel")).to_have_count(0)
        expect(page.get_by_test_id("admin-retry")).to_be_visible()
        expect(page.get_by_test_id("admin-rerun")).to_be_visible()
        shot(page, "job-page-cancelled")
        page.get_by_test_id("admin-retry").click()
        expect(page.locator(".messagelist")).to_contain_text("Queued again 1 job.")
        assert problems == []
    finally:
        context.close()


# --- schedules -------------------------------------------------------------------------------------

SCHEDULES = "/admin/tasks_app/schedule/"


@pytest.mark.browser
@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_staff_pause_a_schedule_from_the_admin_list_and_read_its_jobs(
    chromium, stack, free_tcp_port, staff_user, user
):
    """An operator (view_job and change_job) opens the schedule list: each schedule in words, its
    last run and strip of outcomes; pauses one with the action (the row says so, the message counts
    it); opens it and sees its jobs, newest first, each a link to the job's page. axe-core finds
    nothing serious on the list or the page; screenshots at 1280 and 390 px."""
    from playwright.sync_api import expect

    from tasks_app.services import schedules
    from tests.helpers import failed_job, succeeded_job

    report = schedules.schedule_create(
        owner=user,
        name="weekday report",
        type="sleep",
        params={"seconds": 1},
        cron="0 9 * * 1-5",
        timezone="Europe/Paris",
    )
    schedules.schedule_create(owner=user, name="hourly sync", type="sleep", params={}, interval=3600)
    now = timezone.now()
    made = [succeeded_job, failed_job, succeeded_job]
    jobs = [
        make(user, schedule=report, scheduled_for=now - timedelta(days=3 - n)) for n, make in enumerate(made)
    ]

    stack.start_daphne(free_tcp_port)
    base = f"http://127.0.0.1:{free_tcp_port}"
    shot = Shots("admin-schedules")
    problems: list[str] = []
    context = chromium.new_context(base_url=base, viewport=WIDE)
    page = context.new_page()
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    try:
        sign_in(page, "carol", "carol-password-123", next_url=SCHEDULES)
        expect(page).to_have_url(f"{base}{SCHEDULES}")
        row = page.locator("#result_list tbody tr", has_text="weekday report")
        expect(row.locator("td.field-in_words")).to_have_text("At 09:00, Monday through Friday, Europe/Paris")
        expect(row.locator("td.field-state")).to_have_text("Enabled")
        squares = row.locator("a.lr-outcome")
        expect(squares).to_have_count(3)
        expect(squares.first).to_have_attribute("href", f"/admin/tasks_app/job/{jobs[0].pk}/change/")
        expect(squares.nth(1)).to_have_attribute("title", re.compile(r"^Failed · slot "))
        expect(row.locator("td.field-last_run .lr-badge")).to_have_text("Succeeded")
        expect(row.locator("td.field-in_words")).to_have_attribute("data-label", "When")
        assert_accessible(page, "schedule list")
        shot(page, "list-1280")
        page.set_viewport_size(NARROW)
        assert page.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]
        shot(page, "list-390")
        page.set_viewport_size(WIDE)

        # --- pause it with the action --------------------------------------------------------
        row.locator("input.action-select").check()
        page.locator('select[name="action"]').select_option("pause_selected")
        page.get_by_role("button", name="Go").click()
        expect(page.locator(".messagelist")).to_contain_text("Paused 1 schedule.")
        expect(row.locator("td.field-state")).to_have_text("Paused")
        expect(row.locator("td.field-next_run")).to_have_text("—")
        report.refresh_from_db()
        assert (report.enabled, report.next_fire_at) == (False, None)
        assert page.locator("#result_list tbody tr", has_text="hourly sync").locator(
            "td.field-state"
        ).inner_text() == ("Enabled")

        # --- its page: the fields, the words, and its jobs inline, newest first -------------------
        row.get_by_role("link", name="weekday report").click()
        expect(page).to_have_url(f"{base}{SCHEDULES}{report.pk}/change/")
        inline = page.locator("#jobs-group")
        expect(inline).to_contain_text("Jobs (the newest 20)")
        links = inline.locator('a[href^="/admin/tasks_app/job/"]')
        expect(links).to_have_count(3)
        expect(links.first).to_have_attribute("href", f"/admin/tasks_app/job/{jobs[-1].pk}/change/")
        expect(inline.locator(".lr-badge")).to_have_text(["Succeeded", "Failed", "Succeeded"])
        expect(page.locator(".field-upcoming")).to_contain_text("None while it is not enabled.")
        expect(page.locator("#id_enabled")).not_to_be_checked()
        assert_accessible(page, "schedule page")
        shot(page, "page-1280")
        page.set_viewport_size(NARROW)
        shot(page, "page-390")
        page.set_viewport_size(WIDE)
        links.first.click()
        expect(page).to_have_url(f"{base}/admin/tasks_app/job/{jobs[-1].pk}/change/")
        assert problems == []
    finally:
        context.close()
