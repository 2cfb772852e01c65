"""The pages in a real browser: headless Chromium driven by Playwright.

- `test_job_stream_*`: live.js's contract (versions, gaps, reconnects) against a fake WebSocket,
  with the module served from the static directory by Playwright itself (no server).
- `test_operator_follows_and_cancels_jobs_live`: the whole system (Daphne, a Celery worker,
  Redis, the test database): log in, submit a job from the form, watch it run and finish without
  a reload, then cancel a long job from its page. Screenshots go to test-artifacts/browser/.

Chromium and the shared helpers: tests/browser.py.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from urllib.parse import urlparse

import pytest
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from tasks_app.models import Job, JobStatus
from tasks_app.services import submission
from tests.browser import NARROW, STATIC_DIR, WIDE, Shots, assert_accessible, sign_in
from tests.helpers import wait_for

# --- live.js against a fake WebSocket --------------------------------------------------------

FAKE_WEBSOCKET = """
class FakeSocket {
  constructor(url) {
    this.url = url; this.readyState = 0; this.sent = [];
    FakeSocket.instances.push(this); FakeSocket.created.push(performance.now());
  }
  send(data) { this.sent.push(JSON.parse(data)); }
  close() { this.readyState = 3; }
  serverOpen() { this.readyState = 1; this.onopen && this.onopen({}); }
  serverSend(message) { this.onmessage && this.onmessage({ data: JSON.stringify(message) }); }
  serverDrop() {
    this.readyState = 3; FakeSocket.dropped.push(performance.now());
    this.onclose && this.onclose({ code: 1006 });
  }
}
FakeSocket.instances = []; FakeSocket.created = []; FakeSocket.dropped = [];
window.WebSocket = FakeSocket;
window.FakeSocket = FakeSocket;
"""

STREAM_SCENARIO = """
async () => {
  const { JobStream } = await import("/static/tasks_app/live.js");
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const until = async (predicate, ms = 3000) => {
    const end = performance.now() + ms;
    while (!predicate()) { if (performance.now() > end) throw new Error("timed out"); await sleep(5); }
  };
  const log = [];
  const states = [];
  const stream = new JobStream({
    url: "/ws/jobs/", minDelay: 40, maxDelay: 160,
    onJob: (job, event) => log.push(["job", job.id, job.version, event]),
    onSnapshot: (jobs, spec) => log.push(["snapshot", jobs.map((j) => j.version), spec]),
    onState: (state) => states.push(state),
    onError: (message) => log.push(["error", message.code]),
  });
  const A = "11111111-1111-1111-1111-111111111111";
  const job = (version, extra = {}) => ({ id: A, version, links: { self: `/api/jobs/${A}/` }, ...extra });

  stream.subscribe({ scope: "all" });
  stream.connect();
  const first = FakeSocket.instances[0];
  const url = first.url;
  first.serverOpen();
  stream.subscribe({ job: A });          // while open: sent at once
  const sentFirst = first.sent.slice();
  first.serverSend({ type: "snapshot", scope: "all", jobs: [job(3)] });
  first.serverSend({ type: "snapshot", job: A, jobs: [job(3)] });
  first.serverSend({ type: "job", event: "progress", version: 3, job: job(3) });   // not newer: dropped
  first.serverSend({ type: "job", event: "progress", version: 4, job: job(4) });   // next: delivered
  first.serverSend({ type: "job", event: "progress", version: 4, job: job(4) });   // repeat: dropped
  first.serverSend({ type: "job", event: "status", version: 6, job: job(6) });     // gap: delivered, re-read
  await until(() => log.some((entry) => entry[3] === "resync"));
  first.serverSend({ type: "job", event: "log", version: 7, job: job(7) });        // the re-read had 7
  first.serverSend({ type: "error", code: "forbidden", message: "no" });
  const gotOther = stream.note({ id: "22222222-2222-2222-2222-222222222222", version: 2 });
  const staleOther = stream.note({ id: "22222222-2222-2222-2222-222222222222", version: 2 });

  // The server goes away: the stream reconnects with growing delays and re-subscribes.
  first.serverDrop();
  const stateAfterDrop = stream.state;
  for (let n = 2; n <= 5; n++) {
    await until(() => FakeSocket.instances.length >= n);
    if (n < 5) FakeSocket.instances[n - 1].serverDrop();  // refused again
  }
  const last = FakeSocket.instances[4];
  last.serverOpen();
  const resent = last.sent.slice();
  last.serverSend({ type: "snapshot", scope: "all", jobs: [job(9)] });
  stream.unsubscribe({ scope: "all" });
  const afterUnsubscribe = last.sent.slice(resent.length);
  stream.close();
  const instancesAtClose = FakeSocket.instances.length;
  await sleep(250);
  return {
    url, sentFirst, log, states, stateAfterDrop, resent, afterUnsubscribe, gotOther, staleOther,
    delays: FakeSocket.created.slice(1).map((t, i) => t - FakeSocket.dropped[i]),
    instancesAtClose, instancesLater: FakeSocket.instances.length, finalState: stream.state,
  };
}
"""


@pytest.mark.browser
def test_job_stream_keeps_versions_resyncs_gaps_and_reconnects(chromium):
    context = chromium.new_context()
    page = context.new_page()
    fetched: list[str] = []

    def serve(route):
        path = urlparse(route.request.url).path
        if path == "/":
            route.fulfill(body="<!doctype html><title>live.js</title>", content_type="text/html")
        elif path.startswith("/static/"):
            route.fulfill(
                path=str(STATIC_DIR / path.removeprefix("/static/")), content_type="text/javascript"
            )
        elif path.startswith("/api/jobs/"):
            fetched.append(path)
            job_id = path.split("/")[3]
            route.fulfill(json={"id": job_id, "version": 7, "links": {"self": path}})
        else:
            route.fulfill(status=404)

    page.route("http://longrun.test/**", serve)
    page.add_init_script(FAKE_WEBSOCKET)
    page.goto("http://longrun.test/")
    result = page.evaluate(STREAM_SCENARIO)
    context.close()

    a = "11111111-1111-1111-1111-111111111111"
    assert result["url"] == "ws://longrun.test/ws/jobs/"
    assert result["sentFirst"] == [{"action": "subscribe", "scope": "all"}, {"action": "subscribe", "job": a}]
    assert result["log"] == [
        ["snapshot", [3], {"scope": "all"}],
        ["snapshot", [3], {"job": a}],
        ["job", a, 4, "progress"],
        ["job", a, 6, "status"],
        ["job", a, 7, "resync"],  # the gap 4 -> 6 made it re-read the job over REST
        ["error", "forbidden"],  # the 7 sent after the re-read was dropped
        ["snapshot", [9], {"scope": "all"}],
    ]
    assert fetched == [f"/api/jobs/{a}/"]
    assert result["gotOther"] is True and result["staleOther"] is False
    assert result["states"][:3] == ["connecting", "live", "reconnecting"]
    assert result["stateAfterDrop"] == "reconnecting"
    assert result["states"][-2:] == ["live", "offline"]
    # Every (re)connect re-sends the subscriptions; unsubscribe is sent too.
    assert result["resent"] == [{"action": "subscribe", "scope": "all"}, {"action": "subscribe", "job": a}]
    assert result["afterUnsubscribe"] == [{"action": "unsubscribe", "scope": "all"}]
    # Backoff: 40 ms doubling to the 160 ms cap, each delay drawn from the upper half of its step.
    ceilings = [40, 80, 160, 160]
    for delay, ceiling in zip(result["delays"], ceilings, strict=True):
        assert ceiling / 2 - 5 <= delay <= ceiling + 60, (result["delays"], ceilings)
    # close() is final.
    assert result["instancesLater"] == result["instancesAtClose"]
    assert result["finalState"] == "offline"


# --- the whole system -------------------------------------------------------------------------


def progress_of(row) -> int:
    return int(row.locator("progress").get_attribute("value") or 0)


@pytest.mark.browser
@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_operator_follows_and_cancels_jobs_live(chromium, stack, free_tcp_port, django_user_model):
    from playwright.sync_api import expect

    dora = django_user_model.objects.create_user("dora", password="dora-password-123")
    # Nothing runs at the end; don't sit out the idle soft-shutdown wait on teardown.
    stack.env["CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT"] = "1"
    stack.start_ready_worker("worker", concurrency=2)
    daphne = stack.start_daphne(free_tcp_port)
    base = f"http://127.0.0.1:{free_tcp_port}"
    shot = Shots("operator")
    problems: list[str] = []

    context = chromium.new_context(base_url=base, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    failed: list[tuple[str, str, int]] = []
    page.on(
        "response",
        lambda r: r.status >= 400 and failed.append((r.request.method, urlparse(r.url).path, r.status)),
    )
    expected_noise = ("Failed to load resource", "WebSocket connection to")  # while the server is down
    page.on(
        "console",
        lambda msg: (
            msg.type == "error"
            and not any(n in msg.text for n in expected_noise)
            and problems.append(f"console: {msg.text}")
        ),
    )
    try:
        # Log in through the login page.
        page.goto("/")
        expect(page).to_have_url(f"{base}/accounts/login/?next=/")
        shot(page, "login")
        page.get_by_label("Username").fill("dora")
        page.get_by_label("Password").fill("dora-password-123")
        page.get_by_test_id("login-submit").click()
        expect(page).to_have_url(f"{base}/")
        expect(page.get_by_test_id("live-state")).to_have_attribute("data-state", "live", timeout=15_000)
        expect(page.get_by_test_id("live-state")).to_have_text("Live")
        expect(page.get_by_test_id("job-type")).to_be_enabled()
        # A first visit starts on a job that works, not on the demo "fail" (alphabetically first).
        expect(page.get_by_test_id("job-type")).to_have_value("sleep")
        page.evaluate("window.__sameDocument = true")  # gone if the page ever reloads
        shot(page, "dashboard-empty")

        # Invalid input: the API's field error appears next to the field.
        page.get_by_test_id("job-type").select_option("sleep")
        page.get_by_test_id("param-seconds").fill("-1")
        page.get_by_test_id("submit-job").click()
        error = page.locator('[data-error-for="params.seconds"]')
        expect(error).to_be_visible()
        expect(error).to_contain_text("minimum")
        expect(page.get_by_test_id("param-seconds")).to_have_attribute("aria-invalid", "true")
        assert Job.objects.count() == 0
        shot(page, "validation-error")

        # A sleep job from the form: its row appears, runs, moves and succeeds without a reload.
        page.get_by_test_id("param-seconds").fill("4")
        page.get_by_test_id("param-steps").fill("8")
        page.get_by_test_id("submit-job").click()
        expect(error).to_be_hidden()
        link = page.get_by_test_id("submitted-link")
        expect(link).to_be_visible()
        job_id = link.get_attribute("href").rstrip("/").rsplit("/", 1)[1]
        row = page.locator(f'tr[data-job-id="{job_id}"]')
        expect(row).to_be_visible()
        expect(row).to_have_attribute("data-status", "running", timeout=30_000)
        expect(row.get_by_test_id("job-status")).to_have_text("Running")
        seen = set()
        deadline = time.monotonic() + 30
        shot_taken = False
        while row.get_attribute("data-status") == "running" and time.monotonic() < deadline:
            seen.add(progress_of(row))
            if not shot_taken and 0 < progress_of(row) < 100:
                shot(page, "running")
                shot_taken = True
            time.sleep(0.1)
        expect(row).to_have_attribute("data-status", "succeeded", timeout=30_000)
        expect(row.get_by_test_id("job-status")).to_have_text("Succeeded")
        # Said to screen readers too (a polite live region), not only shown.
        expect(page.get_by_test_id("announcer")).to_have_text(f"sleep job {job_id[:8]} succeeded.")
        expect(page.get_by_test_id("announcer")).to_have_attribute("aria-live", "polite")
        assert progress_of(row) == 100
        intermediate = sorted(value for value in seen if 0 < value < 100)
        assert len(intermediate) >= 2, f"the progress bar did not move live: saw {sorted(seen)}"
        expect(page.get_by_test_id("count-succeeded").locator(".count")).to_have_text("1", timeout=10_000)
        assert page.evaluate("window.__sameDocument === true"), "the page reloaded"
        shot(page, "succeeded")

        # The server goes away: the page says so, reconnects by itself when it is back, and the
        # snapshot brings in what happened meanwhile.
        live = page.get_by_test_id("live-state")
        stack.stop(daphne)
        expect(live).to_have_attribute("data-state", "reconnecting", timeout=10_000)
        expect(live).to_have_text("Reconnecting…")
        # More than a label: a banner says so and the page's actions pause until it is back.
        banner = page.get_by_test_id("connection-banner")
        expect(banner).to_be_visible()
        expect(banner).to_contain_text("The server cannot be reached")
        expect(page.get_by_test_id("submit-job")).to_be_disabled()
        expect(page.get_by_test_id("filter-status")).to_be_disabled()
        shot(page, "reconnecting", full_page=False)
        missed = submission.job_create(owner=dora, type="sleep", params={"seconds": 0.2, "steps": 2})
        wait_for(
            lambda: Job.objects.get(pk=missed.pk).status == JobStatus.SUCCEEDED,
            what="the job run while offline",
        )
        daphne = stack.start_daphne(free_tcp_port)
        expect(live).to_have_attribute("data-state", "live", timeout=45_000)
        expect(banner).to_be_hidden()
        expect(page.get_by_test_id("submit-job")).to_be_enabled()
        expect(page.get_by_test_id("filter-status")).to_be_enabled()
        missed_row = page.locator(f'tr[data-job-id="{missed.pk}"]')
        expect(missed_row).to_have_attribute("data-status", "succeeded", timeout=10_000)
        expect(page.get_by_test_id("count-succeeded").locator(".count")).to_have_text("2", timeout=10_000)
        assert page.evaluate("window.__sameDocument === true"), "the page reloaded"

        # A long primes job: open its page while it runs and cancel it with the button.
        page.get_by_test_id("job-type").select_option("primes")
        page.get_by_test_id("param-n").fill("3000000000")
        page.get_by_test_id("submit-job").click()
        link = page.get_by_test_id("submitted-link")
        expect(link).not_to_have_attribute("href", f"/jobs/{job_id}/")
        primes_id = link.get_attribute("href").rstrip("/").rsplit("/", 1)[1]
        expect(page.locator(f'tr[data-job-id="{primes_id}"]')).to_have_attribute(
            "data-status", "running", timeout=30_000
        )
        assert page.evaluate("window.__sameDocument === true"), "the page reloaded"
        link.click()
        expect(page).to_have_url(f"{base}/jobs/{primes_id}/")
        detail = page.get_by_test_id("job-detail")
        expect(detail).to_have_attribute("data-status", "running")
        expect(page.get_by_test_id("live-state")).to_have_attribute("data-state", "live", timeout=15_000)
        expect(page.locator('[data-field="params"]')).to_contain_text("3000000000")
        expect(page.get_by_test_id("job-log").locator('li[data-kind="status"]')).not_to_have_count(0)
        page.evaluate("window.__sameDocument = true")
        wait_for(
            lambda: Job.objects.get(pk=primes_id).progress >= 1, timeout=60, what="the primes job to progress"
        )
        expect(page.get_by_test_id("job-progress")).not_to_have_attribute("value", "0", timeout=10_000)
        shot(page, "detail-running")

        # Cancel asks first: saying no changes nothing; yes cancels.
        page.once("dialog", lambda dialog: dialog.dismiss())
        page.get_by_test_id("cancel-button").click()
        expect(page.get_by_test_id("cancel-button")).to_have_text("Cancel")
        assert Job.objects.get(pk=primes_id).cancel_requested_at is None
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_test_id("cancel-button").click()
        expect(detail).to_have_attribute("data-status", "cancelled", timeout=30_000)
        # The outcome says it was cancelled; the note under the buttons does not say it again.
        expect(page.get_by_test_id("job-outcome")).to_contain_text("Cancelled before it finished.")
        expect(page.locator("[data-action-status]")).to_have_text("")
        expect(page.get_by_test_id("job-status")).to_have_text("Cancelled")
        expect(page.get_by_test_id("cancel-button")).to_be_hidden()
        expect(page.get_by_test_id("retry-button")).to_be_visible()
        log = page.get_by_test_id("job-log")
        expect(log.locator('li[data-kind="cancel_requested"]')).to_have_count(1, timeout=10_000)
        expect(log.locator('li[data-kind="status"]')).to_have_count(2)  # running, then cancelled
        expect(log.locator("li").last).to_contain_text("Cancelled")
        seqs = [int(s) for s in log.locator("li").evaluate_all("items => items.map(li => li.dataset.seq)")]
        assert seqs == sorted(set(seqs)), f"log out of order or repeated: {seqs}"
        expect(page.locator('[data-field="finished_at"] time')).to_be_visible()
        assert page.evaluate("window.__sameDocument === true"), "the page reloaded"
        assert Job.objects.get(pk=primes_id).status == JobStatus.CANCELLED
        shot(page, "detail-cancelled")

        # Filters and the search by id on the dashboard.
        page.goto("/")
        expect(page.get_by_test_id("live-state")).to_have_attribute("data-state", "live", timeout=15_000)
        rows = page.get_by_test_id("job-row")
        expect(rows).to_have_count(3)
        page.get_by_test_id("filter-status").select_option("cancelled")
        expect(rows).to_have_count(1)
        expect(rows.first).to_have_attribute("data-job-id", primes_id)
        expect(page).to_have_url(f"{base}/?status=cancelled")
        page.get_by_test_id("filter-status").select_option("")
        page.get_by_test_id("filter-type").select_option("primes")
        expect(rows).to_have_count(1)
        expect(rows.first).to_have_attribute("data-job-id", primes_id)
        page.get_by_test_id("filter-type").select_option("")
        page.get_by_test_id("filter-q").fill(job_id[:8])
        expect(rows).to_have_count(1)
        expect(rows.first).to_have_attribute("data-job-id", job_id)
        shot(page, "search-prefix")
        page.get_by_test_id("filter-q").fill(primes_id)
        page.get_by_test_id("filter-q").press("Enter")
        expect(page).to_have_url(f"{base}/jobs/{primes_id}/")
        expect(page.get_by_test_id("job-status")).to_have_text("Cancelled")

        # Phone width: the same pages stay readable.
        page.set_viewport_size({"width": 390, "height": 844})
        shot(page, "phone-detail")
        page.goto("/")
        expect(page.get_by_test_id("live-state")).to_have_attribute("data-state", "live", timeout=15_000)
        expect(page.locator(f'tr[data-job-id="{primes_id}"]')).to_have_attribute("data-status", "cancelled")
        shot(page, "phone-dashboard")
    except BaseException:
        shot(page, "failure")
        print("worker log:\n" + stack.log_tail("worker"))
        print("daphne log:\n" + stack.log_tail("daphne"))
        raise
    finally:
        context.close()
    assert not problems, problems
    # The only failed request is the invalid submission.
    assert failed == [("POST", "/api/jobs/", 400)], failed


@pytest.mark.browser
@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_admin_change_list_shows_a_new_job_run_to_success_without_a_reload(
    chromium, stack, free_tcp_port, django_user_model, client
):
    """A staff user on the job change list sees a job submitted over the API appear at the top
    and progress to succeeded, live (the admin reuses live.js)."""
    import requests
    from playwright.sync_api import expect
    from rest_framework.authtoken.models import Token

    admin_user = django_user_model.objects.create_superuser("erin", "erin@example.com", "erin-password-123")
    # An earlier job, so the list has its table (an empty list announces new jobs instead).
    earlier = submission.job_create(owner=admin_user, type="sleep", params={"seconds": 0})
    stack.env["CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT"] = "1"
    stack.start_ready_worker("worker", concurrency=2)
    stack.start_daphne(free_tcp_port)
    base = f"http://127.0.0.1:{free_tcp_port}"
    shot = Shots("admin")
    context = chromium.new_context(base_url=base, viewport={"width": 1400, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    try:
        page.goto("/admin/login/?next=/admin/tasks_app/job/")
        page.fill("#id_username", "erin")
        page.fill("#id_password", "erin-password-123")
        page.click("input[type=submit]")
        expect(page).to_have_url(f"{base}/admin/tasks_app/job/")
        expect(page.get_by_test_id("live-state")).to_have_attribute("data-state", "live", timeout=15_000)
        expect(page.locator(f'[data-job-id="{earlier.pk}"][data-field="status"]')).to_have_text(
            "Succeeded", timeout=30_000
        )
        page.evaluate("window.__sameDocument = true")
        shot(page, "change-list")

        token = Token.objects.create(user=admin_user).key
        response = requests.post(
            f"{base}/api/jobs/",
            json={"type": "sleep", "params": {"seconds": 3, "steps": 6}},
            headers={"Authorization": f"Token {token}"},
            timeout=10,
        )
        assert response.status_code == 202
        job_id = response.json()["id"]
        badge = page.locator(f'[data-job-id="{job_id}"][data-field="status"]')
        expect(badge).to_be_visible(timeout=15_000)
        expect(page.locator("#result_list tbody tr").first).to_contain_text(job_id[:8])
        expect(badge).to_have_text("Running", timeout=30_000)
        bar = page.locator(f'[data-job-id="{job_id}"][data-field="progress"]')
        wait_for(lambda: 0 < int(bar.evaluate("el => el.value")) < 100, timeout=15, what="the bar to move")
        shot(page, "change-list-running")
        expect(badge).to_have_text("Succeeded", timeout=30_000)
        assert int(bar.evaluate("el => el.value")) == 100
        assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
        shot(page, "change-list-succeeded")
        assert Job.objects.get(pk=job_id).status == JobStatus.SUCCEEDED

        # Longrun's name in the header, and the id as the list shows it finds the job.
        expect(page.locator("#site-name")).to_have_text("Longrun administration")
        page.locator("#searchbar").fill(job_id[:8])
        page.locator("#changelist-search input[type=submit]").click()
        expect(page.locator("#result_list tbody tr")).to_have_count(1)
        expect(page.locator("#result_list tbody tr").first).to_contain_text(job_id[:8])
        shot(page, "change-list-search-by-id")

        # The job page has the list's actions as buttons: Re-run here, and Cancel, which asks.
        page.goto(f"/admin/tasks_app/job/{job_id}/change/")
        page.get_by_test_id("admin-rerun").click()
        expect(page.locator(".messagelist")).to_contain_text("Submitted a new run of 1 job.")
        later = submission.job_create(
            owner=admin_user, type="sleep", params={"seconds": 0}, run_at=timezone.now() + timedelta(hours=1)
        )
        page.goto(f"/admin/tasks_app/job/{later.pk}/change/")
        page.once("dialog", lambda dialog: dialog.dismiss())
        page.get_by_test_id("admin-cancel").click()
        expect(page.get_by_test_id("admin-cancel")).to_be_visible()
        assert Job.objects.get(pk=later.pk).status == JobStatus.SCHEDULED
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_test_id("admin-cancel").click()
        expect(page.locator(".messagelist")).to_contain_text("Cancelled (or asked to stop) 1 job.")
        expect(page.get_by_test_id("admin-cancel")).to_have_count(0)
        assert Job.objects.get(pk=later.pk).status == JobStatus.CANCELLED
        shot(page, "job-page-cancelled")
        assert problems == []
    finally:
        context.close()


@pytest.mark.browser
@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_view_only_staff_get_no_actions_and_repeated_wrong_passwords_pause_sign_in(
    chromium, stack, free_tcp_port, django_user_model, viewing_staff_user, user
):
    """Issue 12 as a person meets it: staff who may only view jobs see everyone's jobs but no
    Cancel / Retry; and after LONGRUN_THROTTLE_LOGIN wrong passwords the login page pauses
    sign-in (429) with the time to wait, even for the right password."""
    from playwright.sync_api import expect

    from tests.helpers import failed_job

    alices = failed_job(user)
    stack.env["LONGRUN_THROTTLE_LOGIN"] = "3/hour"
    stack.start_daphne(free_tcp_port)
    base = f"http://127.0.0.1:{free_tcp_port}"
    shot = Shots("security")
    problems: list[str] = []

    context = chromium.new_context(base_url=base, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("pageerror", lambda error: problems.append(str(error)))
    try:
        sign_in(page, "dave", "dave-password-123")
        expect(page).to_have_url(f"{base}/")
        row = page.locator(f'[data-job-id="{alices.pk}"]').first
        expect(row).to_be_visible()  # everyone's jobs
        page.goto(f"/jobs/{alices.pk}/")
        expect(page.get_by_test_id("job-status")).to_have_text("Failed")
        expect(page.get_by_test_id("retry-button")).to_be_hidden()
        expect(page.get_by_test_id("cancel-button")).to_be_hidden()
        expect(page.get_by_test_id("view-only")).to_have_text("View only")
        shot(page, "view-only-job-page")
        assert problems == []
    finally:
        context.close()

    context = chromium.new_context(base_url=base, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        for _ in range(3):
            sign_in(page, "dave", "not-his-password")
            expect(page.get_by_test_id("login-error")).to_be_visible()
        sign_in(page, "dave", "dave-password-123")
        paused = page.get_by_test_id("login-throttled")
        expect(paused).to_be_visible()
        expect(paused).to_contain_text("Try again in")
        assert page.url == f"{base}/accounts/login/"
        shot(page, "sign-in-paused")
    finally:
        context.close()


@pytest.mark.browser
@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_an_operator_sees_a_queue_without_workers_and_a_worker_getting_lost(
    chromium, stack, free_tcp_port, staff_user, django_capture_on_commit_callbacks
):
    """The dashboard warns about queues no live worker reads; the Workers page lists the real
    worker and, without a reload, shows it lost once it is killed; a job submitted then says
    why it waits, and runs once a worker starts."""
    from playwright.sync_api import expect

    from tasks_app.conf import JOB_QUEUE

    stack.env.update({"LONGRUN_WORKER_HEARTBEAT_SECONDS": "0.5", "LONGRUN_WORKER_LOST_AFTER": "2"})
    worker = stack.start_ready_worker("browsed", queues=[JOB_QUEUE], concurrency=1)
    stack.start_daphne(free_tcp_port)
    base = f"http://127.0.0.1:{free_tcp_port}"
    shot = Shots("workers")
    problems: list[str] = []
    context = chromium.new_context(base_url=base, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("pageerror", lambda error: problems.append(str(error)))
    try:
        sign_in(page, "carol", "carol-password-123")
        banner = page.get_by_test_id("unserved-queues")
        expect(banner).to_contain_text("No live worker reads longrun.maintenance, longrun.webhooks")
        shot(page, "dashboard-warns")

        page.get_by_role("link", name="See the workers").click()
        expect(page).to_have_url(f"{base}/workers/")
        row = page.locator('[data-worker^="browsed@"]')
        expect(row.locator("[data-worker-state]")).to_have_text("Online")
        queue = page.locator(f'[data-queue="{JOB_QUEUE}"] [data-consumers]')
        expect(queue).to_have_text("1")
        page.evaluate("window.__sameDocument = true")
        shot(page, "workers-online")

        stack.kill(worker)
        expect(row.locator("[data-worker-state]")).to_have_text("Lost", timeout=20_000)
        expect(queue).to_have_text("none")
        assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
        shot(page, "workers-lost")

        # A job submitted now waits, and its page says why; once a worker starts, it runs.
        with django_capture_on_commit_callbacks(execute=True):
            job = submission.job_create(owner=staff_user, type="sleep", params={"seconds": 0.5, "steps": 2})
        page.goto(f"/jobs/{job.pk}/")
        reason = page.get_by_test_id("wait-reason")
        expect(reason).to_contain_text("No live worker reads queue longrun.jobs")
        shot(page, "job-waits-for-a-worker")
        stack.start_ready_worker("rescuer", queues=[JOB_QUEUE], concurrency=1)
        expect(page.get_by_test_id("job-status")).to_have_text("Succeeded", timeout=30_000)
        expect(reason).to_be_hidden()
        assert problems == []
    finally:
        context.close()


@pytest.mark.browser
@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_an_api_client_submits_the_docs_example_with_try_it_out(chromium, stack, free_tcp_port, user):
    """Swagger UI (/api/docs/) names each job type's body and its example is a job that runs:
    signed in, "Try it out" then "Execute" submits it as shown (202)."""
    from playwright.sync_api import expect

    stack.start_daphne(free_tcp_port)
    base = f"http://127.0.0.1:{free_tcp_port}"
    shot = Shots("api-docs")
    context = chromium.new_context(base_url=base, viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    try:
        sign_in(page, user.username, "alice-password-123", next_url="/api/docs/")
        expect(page).to_have_url(f"{base}/api/docs/")
        submit = page.locator("#operations-jobs-jobs_create")
        submit.locator(".opblock-summary").click()
        body = submit.locator(".opblock-section-request-body")
        example = body.locator(".microlight, pre").first
        expect(example).to_contain_text('"type": "sleep"')
        body.get_by_text("Schema", exact=True).first.click()
        body.get_by_text("Expand all").nth(1).click()
        for type_name in ("sleep", "primes", "fail"):
            expect(body).to_contain_text(f"#/components/schemas/{type_name.capitalize()}JobRequest")
        shot(page, "submission-body")
        submit.get_by_role("button", name="Try it out").click()
        submit.get_by_role("button", name="Execute").click()
        expect(submit.locator(".live-responses-table tr.response .response-col_status").first).to_have_text(
            "202", timeout=15_000
        )
        shot(page, "submitted")
        assert Job.objects.filter(owner=user, type="sleep").count() == 1
    finally:
        context.close()


@pytest.mark.browser
@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_retry_note_goes_once_the_new_attempt_has_ended(
    chromium, stack, free_tcp_port, user, django_capture_on_commit_callbacks
):
    from playwright.sync_api import expect

    stack.env["CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT"] = "1"
    stack.start_ready_worker("worker", concurrency=1)
    stack.start_daphne(free_tcp_port)
    base = f"http://127.0.0.1:{free_tcp_port}"
    with django_capture_on_commit_callbacks(execute=True):
        job = submission.job_create(
            owner=user, type="fail", params={"delay": 1, "message": "again"}, max_attempts=1
        )
    wait_for(
        lambda: Job.objects.get(pk=job.pk).status == JobStatus.FAILED, timeout=30, what="the job to fail"
    )
    shot = Shots("retry-note")
    context = chromium.new_context(base_url=base, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        sign_in(page, user.username, "alice-password-123")
        # The dashboard row says how it went: its error, its attempts and how long it ran.
        row = page.locator(f'tr[data-job-id="{job.pk}"]')
        failed = Job.objects.get(pk=job.pk)
        expect(row.get_by_test_id("job-error")).to_have_text(f"{failed.error['type']}: again")
        expect(row.locator("[data-col=attempts]")).to_have_text("1 of 1")
        expect(row.locator("[data-col=duration]")).to_have_text(re.compile(r"^(\d+ ms|1 s|2 s)$"))
        shot(page, "dashboard-failed-row")
        page.goto(f"/jobs/{job.pk}/")
        expect(page.get_by_test_id("live-state")).to_have_attribute("data-state", "live", timeout=15_000)
        note = page.locator("[data-action-status]")
        page.get_by_test_id("retry-button").click()
        expect(note).to_have_text("Queued again as a new attempt.")
        expect(page.get_by_test_id("job-status")).to_have_text("Running", timeout=30_000)
        expect(note).to_have_text("Queued again as a new attempt.")  # still true while it runs
        shot(page, "running-again")
        expect(page.get_by_test_id("job-status")).to_have_text("Failed", timeout=30_000)
        expect(note).to_have_text("")  # it failed again: the note no longer describes the job
        shot(page, "failed-again")
        page.goto("/")
        expect(row.locator("[data-col=attempts]")).to_have_text("2 of 2")
    finally:
        context.close()


@pytest.mark.browser
@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_the_chart_stacks_each_outcome_in_its_colour_with_counts_on_hover(
    chromium, stack, free_tcp_port, user
):
    from playwright.sync_api import expect

    now = timezone.now()
    for status, n in (("succeeded", 3), ("failed", 2), ("cancelled", 1)):
        for _ in range(n):
            Job.objects.create(owner=user, type="sleep", status=status, started_at=now, finished_at=now)
    stack.start_daphne(free_tcp_port)
    base = f"http://127.0.0.1:{free_tcp_port}"
    shot = Shots("chart")
    context = chromium.new_context(base_url=base, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        sign_in(page, user.username, "alice-password-123")
        legend = page.locator("[data-chart] .u-legend")
        expect(legend).to_contain_text("Succeeded")
        expect(legend).to_contain_text("Failed")
        expect(legend).to_contain_text("Cancelled")
        # Three colours, one per outcome, none of them the others'.
        colours = page.locator("[data-chart] .u-legend .u-series .u-marker").evaluate_all(
            "markers => markers.map(m => getComputedStyle(m).backgroundColor)"
        )
        assert len(set(colours[1:])) == 3, colours
        # Hover over this minute's bar: the legend gives each outcome's own count.
        box = page.locator("[data-chart] .u-over").bounding_box()
        page.mouse.move(box["x"] + box["width"] - 6, box["y"] + box["height"] - 4)
        values = dict(
            zip(
                legend.locator(".u-series .u-label").all_inner_texts(),
                legend.locator(".u-series .u-value").all_inner_texts(),
                strict=True,
            )
        )
        assert (values["Succeeded"], values["Failed"], values["Cancelled"]) == ("3", "2", "1"), values
        shot(page, "hover", full_page=False)
    finally:
        context.close()


@pytest.mark.browser
@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_job_page_reads_as_what_ran_and_how_at_both_widths(chromium, stack, free_tcp_port, user):
    """The job's attempts as a timeline that follows the job live, its input as indented JSON, the
    API's part folded away, a failed job with no empty bar; at 390 px the log comes before the
    details. The worker's transitions are made here through the services (no worker process):
    they publish as a worker's do."""
    from playwright.sync_api import expect

    from tasks_app.services import execution

    stack.start_daphne(free_tcp_port)
    base = f"http://127.0.0.1:{free_tcp_port}"
    job = submission.job_create(
        owner=user, type="sleep", params={"seconds": 2, "steps": 4}, metadata={"customer": "acme"}
    )
    execution.job_claim(job_id=job.pk, worker="alpha@host-1")
    execution.job_progress(job_id=job.pk, worker="alpha@host-1", percent=40, message="step 2 of 4")
    execution.job_fail_or_retry(
        job_id=job.pk,
        worker="alpha@host-1",
        error={"type": "TimeoutError", "message": "slow API"},
        retryable=True,
    )
    Job.objects.filter(pk=job.pk).update(status=JobStatus.QUEUED)  # its backoff is over
    execution.job_claim(job_id=job.pk, worker="beta@host-2")
    shot = Shots("job-page")
    context = chromium.new_context(base_url=base, viewport=WIDE)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    try:
        sign_in(page, user.username, "alice-password-123", next_url=f"/jobs/{job.pk}/")
        expect(page.get_by_test_id("live-state")).to_have_attribute("data-state", "live", timeout=15_000)
        expect(page.get_by_test_id("job-summary")).to_contain_text(f"For {user.username}")
        attempts = page.get_by_test_id("attempt-row")
        expect(attempts).to_have_count(2)
        expect(attempts.nth(0)).to_contain_text("alpha@host-1")
        expect(attempts.nth(0)).to_contain_text("Failed, retried")
        expect(attempts.nth(0)).to_contain_text("TimeoutError: slow API")
        expect(attempts.nth(1)).to_contain_text("beta@host-2")
        expect(attempts.nth(1)).to_contain_text("Running")
        # The running attempt's duration goes on by itself.
        duration = attempts.nth(1).locator("[data-duration]")
        first = duration.inner_text()
        expect(duration).not_to_have_text(first, timeout=5_000)
        expect(page.get_by_test_id("job-params")).to_have_text('{\n  "steps": 4,\n  "seconds": 2\n}')
        expect(page.get_by_test_id("job-metadata")).to_have_text('{\n  "customer": "acme"\n}')
        fields = page.get_by_test_id("job-fields")
        for absent in ("Version", "Links", "/api/"):
            expect(fields).not_to_contain_text(absent)
        expect(fields.get_by_text("Callback URL")).to_be_hidden()  # not given: no empty row
        api_part = page.get_by_test_id("api-clients")
        expect(api_part.locator("dl")).to_be_hidden()  # folded until asked
        assert_accessible(page, "job page, running")
        shot(page, "running-1280")

        # It fails live: the second attempt ends with its error, no empty 0% bar is left.
        execution.job_fail(
            job_id=job.pk, worker="beta@host-2", error={"type": "ValueError", "message": "bad row"}
        )
        expect(page.get_by_test_id("job-status")).to_have_text("Failed", timeout=10_000)
        expect(attempts.nth(1)).to_contain_text("ValueError: bad row")
        expect(attempts.nth(1).locator(".badge")).to_have_text("Failed")
        expect(page.get_by_test_id("job-progress")).to_be_hidden()
        expect(page.get_by_test_id("job-progress-message")).to_have_text(
            "Failed before reporting any progress."
        )
        expect(fields.locator('[data-field="finished_at"] time')).to_be_visible()
        expect(fields.locator('[data-field="duration"]')).not_to_have_text(re.compile("running|—"))
        api_part.locator("summary").click()
        expect(api_part).to_contain_text(f"POST /api/jobs/{job.pk}/retry/")
        assert_accessible(page, "job page, failed")
        shot(page, "failed-1280")

        # At phone width: one column, the log before the details, nothing wider than the screen.
        page.set_viewport_size(NARROW)
        page.reload()
        expect(page.get_by_test_id("live-state")).to_have_attribute("data-state", "live", timeout=15_000)
        log_top = page.get_by_test_id("job-log").bounding_box()["y"]
        assert log_top < fields.bounding_box()["y"], "the log is below the details at 390 px"
        assert page.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]
        assert_accessible(page, "job page at 390 px")
        shot(page, "failed-390")
        assert not problems, problems
    finally:
        context.close()


@pytest.mark.browser
@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_the_dashboard_answers_is_the_system_healthy_in_both_themes_and_widths(
    chromium, stack, free_tcp_port, staff_user, user
):
    """Queued rows say why they wait (and change when the queue's state does), the queue depth and
    throughput of the last hour are drawn, the Workers and queues page is a click away; light
    and dark themes, 1280 and 390 px, and the login page, all without a serious axe finding."""
    from playwright.sync_api import expect

    from tasks_app import metrics
    from tasks_app.realtime import publish
    from tasks_app.services import execution, workers

    stack.start_daphne(free_tcp_port)
    base = f"http://127.0.0.1:{free_tcp_port}"
    now = timezone.now()
    for minutes_ago, queued in ((30, 12), (20, 40), (10, 25), (1, 3)):
        metrics.queue_depth_record({"queued": queued, "running": 2}, at=now - timedelta(minutes=minutes_ago))
    publish.publisher.flush()
    waiting = submission.job_create(owner=user, type="sleep", params={"seconds": 1})
    later = submission.job_create(
        owner=user, type="sleep", params={"seconds": 1}, run_at=now + timedelta(hours=1)
    )
    shot = Shots("dashboard")

    context = chromium.new_context(base_url=base, viewport=WIDE)
    page = context.new_page()
    try:
        page.goto("/accounts/login/")
        assert_accessible(page, "login page")
        shot(page, "login-1280")
        sign_in(page, staff_user.username, "carol-password-123")
        expect(page.get_by_test_id("live-state")).to_have_attribute("data-state", "live", timeout=15_000)
        row = page.locator(f'tr[data-job-id="{waiting.pk}"]')
        expect(row.get_by_test_id("job-wait")).to_have_text(
            "No live worker reads queue longrun.jobs: it waits until one starts."
        )
        expect(row.get_by_test_id("job-progress")).to_be_hidden()  # no empty bar for a job not started
        runs_at = page.locator(f'tr[data-job-id="{later.pk}"]').get_by_test_id("job-wait").locator("time")
        assert abs(parse_datetime(runs_at.get_attribute("datetime")) - later.run_at) < timedelta(seconds=1)
        expected_text = page.evaluate(
            "iso => new Intl.DateTimeFormat(undefined, {hour: '2-digit', minute: '2-digit', second: '2-digit'})"
            ".format(new Date(iso))",
            later.run_at.isoformat(),
        )
        expect(runs_at).to_have_text(expected_text)  # when it runs, not when it was created
        expect(page.get_by_test_id("depth-now")).to_have_text("3 queued, 2 running")
        expect(page.get_by_test_id("depth-chart").locator("canvas")).to_have_count(1)
        expect(page.get_by_role("link", name="Workers and queues").first).to_be_visible()

        # A worker with one slot starts and takes another job: the queued row's reason follows.
        workers.worker_register(name="jobs@host", host="host", pid=1, queues=["longrun.jobs"], concurrency=1)
        busy = submission.job_create(owner=user, type="sleep", params={"seconds": 1}, priority=9)
        execution.job_claim(job_id=busy.pk, worker="jobs@host:1")
        expect(row.get_by_test_id("job-wait")).to_have_text(
            "All 1 worker slots of queue longrun.jobs are busy.", timeout=10_000
        )
        # Hover over the queue depth chart 20 minutes ago: the legend gives that minute's sample.
        legend = page.get_by_test_id("queue-depth").locator(".u-legend")
        box = page.get_by_test_id("depth-chart").locator(".u-over").bounding_box()
        page.mouse.move(box["x"] + box["width"] * (40 + 0.5) / 61, box["y"] + box["height"] / 2)
        values = dict(
            zip(
                legend.locator(".u-series .u-label").all_inner_texts(),
                legend.locator(".u-series .u-value").all_inner_texts(),
                strict=True,
            )
        )
        assert (values["Queued"], values["Running"]) == ("40", "2"), values
        assert_accessible(page, "dashboard, light")
        shot(page, "light-1280")
        page.set_viewport_size(NARROW)
        # Nothing wider than the screen once the charts have followed their cards' new width.
        page.wait_for_function(f"document.documentElement.scrollWidth <= {NARROW['width']}", timeout=5_000)
        assert_accessible(page, "dashboard at 390 px")
        shot(page, "light-390")
    finally:
        context.close()

    # The system's dark setting: the page follows it, and still reads well.
    context = chromium.new_context(base_url=base, viewport=WIDE, color_scheme="dark")
    page = context.new_page()
    try:
        sign_in(page, staff_user.username, "carol-password-123")
        expect(page.get_by_test_id("live-state")).to_have_attribute("data-state", "live", timeout=15_000)
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(13, 17, 23)", background
        badge = page.locator(f'tr[data-job-id="{busy.pk}"]').get_by_test_id("job-status")
        assert badge.evaluate("el => getComputedStyle(el).backgroundColor") == "rgb(58, 45, 10)"
        assert_accessible(page, "dashboard, dark")
        shot(page, "dark-1280")
        page.set_viewport_size(NARROW)
        shot(page, "dark-390")
        page.goto(f"/jobs/{waiting.pk}/")
        expect(page.get_by_test_id("wait-reason")).to_contain_text("All 1 worker slots")
        expect(page.get_by_test_id("job-progress")).to_be_hidden()  # not started: no empty bar
        assert_accessible(page, "job page, dark")
        shot(page, "dark-job-390")
    finally:
        context.close()


@pytest.mark.browser
@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_schedule_made_on_its_page_fires_and_its_first_job_arrives_live(
    chromium, stack, free_tcp_port, user, tmp_path
):
    """The whole path: the form (with its preview and a field error), the sweep (a worker on the
    maintenance queue with beat) firing the slot, a job worker running it, and the page showing
    the run in the schedule's strip without a reload; then Pause."""
    from playwright.sync_api import expect

    from tasks_app.models import Schedule
    from tasks_app.stack import JOB_QUEUE, MAINTENANCE_QUEUE

    stack.env["CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT"] = "1"
    stack.start_ready_worker("worker", queues=[JOB_QUEUE], concurrency=1)
    stack.start_ready_worker("sweeper", queues=[MAINTENANCE_QUEUE], concurrency=1)
    stack.start_beat(tmp_path / "beat-schedule")
    stack.start_daphne(free_tcp_port)
    base = f"http://127.0.0.1:{free_tcp_port}"
    shot = Shots("schedules")
    context = chromium.new_context(base_url=base, viewport=WIDE, timezone_id="Europe/Paris")
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    try:
        sign_in(page, user.username, "alice-password-123")
        page.get_by_role("link", name="Schedules").click()
        expect(page).to_have_url(f"{base}/schedules/")
        expect(page.get_by_test_id("live-state")).to_have_attribute("data-state", "live", timeout=15_000)
        expect(page.get_by_test_id("schedules-empty")).to_be_visible()
        form = page.get_by_test_id("schedule-form")
        expect(page.get_by_test_id("job-type")).to_be_enabled()
        # The time zone starts as the reader's; the preview follows the expression as it is typed.
        expect(page.get_by_test_id("schedule-timezone")).to_have_value("Europe/Paris")
        expect(page.get_by_test_id("schedule-preview")).to_contain_text(
            "At 09:00, Monday through Friday, Europe/Paris"
        )
        page.get_by_test_id("schedule-cron").fill("0 25 * * *")
        expect(form.locator('[data-error-for="cron"]')).to_contain_text("Not a valid cron expression")
        expect(page.get_by_test_id("schedule-cron")).to_have_attribute("aria-invalid", "true")
        shot(page, "cron-error")

        page.get_by_test_id("schedule-name").fill("every five seconds")
        page.get_by_test_id("param-seconds").fill("0.5")
        page.get_by_test_id("param-steps").fill("1")
        page.get_by_test_id("timing-interval").check()
        page.get_by_test_id("schedule-interval").fill("5")
        expect(page.get_by_test_id("schedule-preview")).to_contain_text("Every 5 seconds")
        expect(page.get_by_test_id("schedule-preview").locator("li")).to_have_count(5)
        expect(form.locator('[data-error-for="cron"]')).to_be_hidden()
        page.get_by_test_id("create-schedule").click()
        expect(page.get_by_test_id("form-status")).to_contain_text("Created")
        row = page.get_by_test_id("schedule-row").filter(has_text="every five seconds")
        expect(row.get_by_test_id("schedule-when")).to_have_text("Every 5 seconds")
        expect(row.get_by_test_id("schedule-state")).to_have_text("Active")
        page.evaluate("window.__sameDocument = true")

        # The sweep fires its first slot; the job runs; the strip shows it, then its success.
        run = row.get_by_test_id("strip-run").first
        expect(run).to_be_visible(timeout=30_000)
        expect(row.get_by_test_id("schedule-last")).to_have_text("Succeeded", timeout=30_000)
        expect(run).to_have_attribute("data-status", "succeeded")
        schedule = Schedule.objects.get(name="every five seconds")
        first = schedule.jobs.order_by("created_at").first()
        assert first is not None and first.scheduled_for is not None
        assert run.get_attribute("href") == f"/jobs/{first.pk}/"
        assert page.evaluate("window.__sameDocument === true"), "the page reloaded"
        assert_accessible(page, "schedules page")
        shot(page, "fired-1280")

        # Pause: the row says so, and no slot fires any more.
        row.get_by_test_id("schedule-pause").click()
        expect(row.get_by_test_id("schedule-state")).to_have_text("Paused")
        expect(row.get_by_test_id("schedule-resume")).to_be_focused()
        fired = schedule.jobs.count()
        time.sleep(7)
        assert Schedule.objects.get(pk=schedule.pk).jobs.count() == fired
        page.set_viewport_size(NARROW)
        page.wait_for_function(f"document.documentElement.scrollWidth <= {NARROW['width']}", timeout=5_000)
        assert_accessible(page, "schedules page at 390 px")
        shot(page, "paused-390")
        assert not problems, problems
    finally:
        context.close()
