"""HTTP semantics and limits of the API: ETag / If-None-Match and Retry-After on the job detail,
the `wait` parameter, the submission options (priority, run_at, timeout, max_attempts,
callback_url, metadata), scheduling, body limits and media types, problem details for every 4xx,
throttling, stats, the Location header and the OpenAPI schema and docs.

No broker is needed: the Celery publish and the live-update publish are mocks for every test, and
dispatch is checked by running the on-commit callbacks."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta
from urllib.parse import urlparse

import pytest
import yaml
from django.utils import timezone
from rest_framework.test import APIClient

from tasks_app.models import Job, JobEvent, JobEventKind, JobStatus
from tasks_app.services import control, execution, maintenance
from tests.helpers import PROBLEM_TEXT, detail_url, make_job, post_job, problem_asserts, with_longrun

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("broker")]


# --- helpers --------------------------------------------------------------------------------


assert_problem, assert_invalid = problem_asserts(filled=PROBLEM_TEXT, error_members=True)


def finish_job(job: Job, *, succeed: bool = True) -> Job:
    claimed = execution.job_claim(job_id=job.pk, worker="w1")
    assert claimed is not None
    if succeed:
        done = execution.job_succeed(job_id=job.pk, worker="w1", result={"ok": True})
    else:
        done = execution.job_fail(job_id=job.pk, worker="w1", error={"type": "DemoError", "message": "boom"})
    assert done is not None and done.is_terminal
    return done


def iso(moment: datetime) -> str:
    return moment.isoformat()


def parse_dt(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- ETag, If-None-Match, Retry-After -------------------------------------------------------


def test_detail_sends_the_version_as_etag_and_answers_304_to_a_matching_if_none_match(api, user):
    job = make_job(user)
    first = api.get(detail_url(job.pk))
    assert first.status_code == 200
    assert first["ETag"] == f'"{job.version}"'
    assert first.json()["version"] == job.version

    not_modified = api.get(detail_url(job.pk), HTTP_IF_NONE_MATCH=first["ETag"])
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    assert not_modified["ETag"] == first["ETag"]

    # One of several tags, and "*", also match.
    listed = api.get(detail_url(job.pk), HTTP_IF_NONE_MATCH=f'"999", {first["ETag"]}')
    assert listed.status_code == 304
    assert api.get(detail_url(job.pk), HTTP_IF_NONE_MATCH="*").status_code == 304


def test_if_none_match_uses_weak_comparison(api, user):
    """RFC 9110 13.1.2: If-None-Match compares weakly, so W/"2" matches "2". Proxies that
    compress (nginx with gzip) weaken ETags, so pollers behind them send the W/ form back."""
    job = make_job(user)
    response = api.get(detail_url(job.pk), HTTP_IF_NONE_MATCH=f'W/"{job.version}"')
    assert response.status_code == 304, response.content[:300]
    assert api.get(detail_url(job.pk), HTTP_IF_NONE_MATCH=f'W/"{job.version + 1}"').status_code == 200


def test_if_none_match_on_another_users_job_is_404_not_304(other_api, user):
    job = make_job(user)
    response = other_api.get(detail_url(job.pk), HTTP_IF_NONE_MATCH=f'"{job.version}"')
    assert_problem(response, 404, "not_found")
    assert "ETag" not in response
    assert_problem(other_api.get(detail_url(job.pk), HTTP_IF_NONE_MATCH="*"), 404, "not_found")


def test_an_older_etag_gets_the_current_job_and_a_change_moves_the_etag(api, user):
    job = make_job(user)
    old_etag = api.get(detail_url(job.pk))["ETag"]

    control.job_cancel(job_id=job.pk, actor=user)
    job.refresh_from_db()
    response = api.get(detail_url(job.pk), HTTP_IF_NONE_MATCH=old_etag)
    assert response.status_code == 200
    assert response["ETag"] == f'"{job.version}"' != old_etag
    assert response.json()["status"] == "cancelled"
    assert response.json()["version"] == job.version
    # And the new one now matches.
    assert api.get(detail_url(job.pk), HTTP_IF_NONE_MATCH=response["ETag"]).status_code == 304


def test_a_job_that_has_not_ended_has_retry_after_a_terminal_one_has_none(api, user):
    queued = make_job(user)
    response = api.get(detail_url(queued.pk))
    assert response.status_code == 200
    assert re.fullmatch(r"[0-9]+", response["Retry-After"]), response["Retry-After"]
    assert int(response["Retry-After"]) >= 1
    # The 304 carries it too: a poller that is told "no change" still knows when to come back.
    not_modified = api.get(detail_url(queued.pk), HTTP_IF_NONE_MATCH=response["ETag"])
    assert not_modified.status_code == 304 and int(not_modified["Retry-After"]) >= 1

    running = make_job(user)
    execution.job_claim(job_id=running.pk, worker="w1")
    assert int(api.get(detail_url(running.pk))["Retry-After"]) >= 1

    for ended in (
        finish_job(make_job(user)),
        finish_job(make_job(user), succeed=False),
        control.job_cancel(job_id=make_job(user).pk, actor=user),
    ):
        response = api.get(detail_url(ended.pk))
        assert response.status_code == 200
        assert response.json()["status"] in {"succeeded", "failed", "cancelled"}
        assert "Retry-After" not in response, ended.status
        assert response["ETag"] == f'"{ended.version}"'


@pytest.mark.parametrize(
    ("delay", "low", "high"),
    [(timedelta(days=30), 60, 60), (timedelta(minutes=10), 60, 60), (timedelta(seconds=20), 1, 20)],
    ids=["month", "ten-minutes", "twenty-seconds"],
)
def test_a_scheduled_jobs_retry_after_is_bounded(api, user, delay, low, high):
    job = make_job(user, run_at=timezone.now() + delay)
    assert job.status == JobStatus.SCHEDULED
    response = api.get(detail_url(job.pk))
    assert response.status_code == 200
    assert re.fullmatch(r"[0-9]+", response["Retry-After"]), response["Retry-After"]
    assert low <= int(response["Retry-After"]) <= high


@pytest.mark.parametrize("wait", ["abc", "-1", "31", "1.5", ""])
def test_an_invalid_wait_is_400_naming_wait(api, user, wait):
    job = make_job(user)
    assert_invalid(api.get(detail_url(job.pk), {"wait": wait}), "wait")


@pytest.mark.parametrize("wait", ["0", "30"])
def test_a_valid_wait_on_an_ended_job_answers_at_once(api, user, wait):
    # Through Django (without the ASGI long-poll front) a valid wait is accepted and, for a job
    # that has ended, there is nothing to wait for.
    job = control.job_cancel(job_id=make_job(user).pk, actor=user)
    started = time.monotonic()
    response = api.get(detail_url(job.pk), {"wait": wait})
    assert response.status_code == 200, response.content
    assert time.monotonic() - started < 5
    assert response.json()["status"] == "cancelled"
    assert response["ETag"] == f'"{job.version}"'


# --- submission options ---------------------------------------------------------------------


@pytest.mark.parametrize("priority", [10, -1, "5", 5.5, True, None, 5.0], ids=repr)
def test_invalid_priority_is_400(api, priority):
    assert_invalid(post_job(api, {"type": "sleep", "priority": priority}), "priority")
    assert Job.objects.count() == 0


@pytest.mark.parametrize("priority", [0, 9])
def test_priority_bounds_are_accepted_and_stored(api, priority):
    response = post_job(api, {"type": "sleep", "priority": priority})
    assert response.status_code == 202, response.content
    assert response.json()["priority"] == priority
    assert Job.objects.get().priority == priority


def test_run_at_in_the_future_schedules_and_does_not_dispatch(
    api, user, broker, django_capture_on_commit_callbacks
):
    run_at = (timezone.now() + timedelta(hours=2)).replace(microsecond=0)
    with django_capture_on_commit_callbacks(execute=True):
        response = post_job(api, {"type": "sleep", "run_at": iso(run_at)})
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "scheduled"
    assert parse_dt(body["run_at"]) == run_at
    assert urlparse(response["Location"]).path == detail_url(body["id"])
    job = Job.objects.get(pk=body["id"])
    assert job.status == JobStatus.SCHEDULED and job.run_at == run_at
    assert job.dispatched_at is None
    broker.apply_async.assert_not_called()
    # The submission is still announced live, and the history says when it will run.
    broker.publish.assert_called_once()
    event = JobEvent.objects.get(job=job)
    assert event.status == JobStatus.SCHEDULED and "scheduled" in event.message


def test_run_at_with_another_offset_is_the_same_instant(api):
    run_at = (timezone.now() + timedelta(hours=3)).replace(microsecond=0)
    text = run_at.astimezone(timezone.get_fixed_timezone(120)).isoformat()  # +02:00
    response = post_job(api, {"type": "sleep", "run_at": text})
    assert response.status_code == 202, response.content
    assert parse_dt(response.json()["run_at"]) == run_at
    assert Job.objects.get().run_at == run_at


def test_run_at_in_the_past_is_queued_and_dispatched_at_once(api, broker, django_capture_on_commit_callbacks):
    run_at = timezone.now() - timedelta(minutes=5)
    with django_capture_on_commit_callbacks(execute=True):
        response = post_job(api, {"type": "sleep", "run_at": iso(run_at)})
    assert response.status_code == 202, response.content
    assert response.json()["status"] == "queued"
    broker.apply_async.assert_called_once()
    assert broker.apply_async.call_args.kwargs["args"] == [response.json()["id"]]
    assert Job.objects.get().dispatched_at is not None


def test_run_at_without_a_time_zone_is_400(api):
    # Within the year, so the only thing wrong with it is the missing offset.
    naive = (timezone.now() + timedelta(days=1)).replace(tzinfo=None, microsecond=0).isoformat()
    assert "+" not in naive and not naive.endswith("Z")
    assert_invalid(post_job(api, {"type": "sleep", "run_at": naive}), "run_at")
    assert Job.objects.count() == 0


@pytest.mark.parametrize(
    "run_at",
    ["tomorrow", "2030-13-01T00:00:00Z", 1700000000, True, "", "9999-12-31T23:59:59-01:00"],
    ids=repr,
)
def test_run_at_that_is_not_a_datetime_is_400(api, run_at):
    assert_invalid(post_job(api, {"type": "sleep", "run_at": run_at}), "run_at")
    assert Job.objects.count() == 0


def test_run_at_far_ahead_is_scheduled(api):
    """Scheduling lives in the database, so a distant run_at costs nothing (no Celery ETA)."""
    far = timezone.now() + timedelta(days=3650)
    response = post_job(api, {"type": "sleep", "run_at": iso(far)})
    assert response.status_code == 202, response.content
    assert response.json()["status"] == "scheduled"
    assert abs((Job.objects.get().run_at - far).total_seconds()) < 1


@pytest.mark.parametrize("timeout", [0, -5, "60", 1.5, True], ids=repr)
def test_invalid_timeout_is_400(api, timeout):
    assert_invalid(post_job(api, {"type": "sleep", "timeout": timeout}), "timeout")
    assert Job.objects.count() == 0


def test_timeout_above_the_maximum_is_400_and_the_maximum_is_accepted(api, settings):
    limit = settings.LONGRUN["MAX_TIMEOUT"]
    errors = assert_invalid(post_job(api, {"type": "sleep", "timeout": limit + 1}), "timeout")
    assert str(limit) in errors[0]["message"]
    assert Job.objects.count() == 0

    response = post_job(api, {"type": "sleep", "timeout": limit})
    assert response.status_code == 202, response.content
    assert response.json()["timeout"] == limit


def test_timeout_is_stored(api):
    response = post_job(api, {"type": "sleep", "timeout": 120})
    assert response.status_code == 202, response.content
    assert response.json()["timeout"] == 120
    assert Job.objects.get().timeout == 120


@pytest.mark.parametrize("max_attempts", [0, 21, -1, "3", 2.5], ids=repr)
def test_invalid_max_attempts_is_400(api, max_attempts):
    assert_invalid(post_job(api, {"type": "sleep", "max_attempts": max_attempts}), "max_attempts")
    assert Job.objects.count() == 0


@pytest.mark.parametrize("max_attempts", [1, 7, 20])
def test_max_attempts_is_stored(api, max_attempts):
    response = post_job(api, {"type": "sleep", "max_attempts": max_attempts})
    assert response.status_code == 202, response.content
    assert response.json()["max_attempts"] == max_attempts
    assert Job.objects.get().max_attempts == max_attempts


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "not a url",
        "example.com/hook",
        "javascript:alert(1)",
        "file:///etc/passwd",
        42,
    ],
    ids=repr,
)
def test_invalid_callback_url_is_400(api, url):
    assert_invalid(post_job(api, {"type": "sleep", "callback_url": url}), "callback_url")
    assert Job.objects.count() == 0


def test_a_loopback_callback_url_is_refused_unless_its_host_is_allowed(api, settings):
    """SSRF guard (the webhooks tests have the full matrix); a named host can be allowed for
    development."""
    assert_invalid(
        post_job(api, {"type": "sleep", "callback_url": "http://127.0.0.1:9000/cb"}), "callback_url"
    )
    settings.LONGRUN = {**settings.LONGRUN, "WEBHOOK_ALLOWED_PRIVATE_HOSTS": ["127.0.0.1"]}
    assert post_job(api, {"type": "sleep", "callback_url": "http://127.0.0.1:9000/cb"}).status_code == 202


@pytest.mark.parametrize("url", ["https://hooks.example.com/longrun?x=1"])
def test_callback_url_is_stored(api, url):
    response = post_job(api, {"type": "sleep", "callback_url": url})
    assert response.status_code == 202, response.content
    assert response.json()["callback_url"] == url
    assert Job.objects.get().callback_url == url


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        pytest.param({"count": 3}, "metadata.count", id="int-value"),
        pytest.param({"flag": True}, "metadata.flag", id="bool-value"),
        pytest.param({"nested": {"a": "b"}}, "metadata.nested", id="object-value"),
        pytest.param({"list": ["a"]}, "metadata.list", id="list-value"),
        pytest.param({"none": None}, "metadata.none", id="null-value"),
        pytest.param({"has space": "x"}, "metadata.has space", id="key-with-space"),
        pytest.param({"k" * 41: "x"}, "metadata." + "k" * 41, id="key-too-long"),
        pytest.param({"": "x"}, "metadata.", id="empty-key"),
        pytest.param({"long": "v" * 501}, "metadata.long", id="value-too-long"),
        pytest.param({f"k{i}": "v" for i in range(51)}, "metadata", id="51-keys"),
        pytest.param(["a", "b"], "metadata", id="list"),
        pytest.param("a=b", "metadata", id="string"),
    ],
)
def test_invalid_metadata_is_400_naming_the_field(api, metadata, field):
    assert_invalid(post_job(api, {"type": "sleep", "metadata": metadata}), field)
    assert Job.objects.count() == 0


def test_valid_metadata_is_returned_as_given(api):
    metadata = {
        "customer": "acme",
        "order-id": "A-1",
        "region.eu_west": "ünïcødé ✓",
        "empty": "",
        "k" * 40: "v" * 500,
    }
    response = post_job(api, {"type": "sleep", "metadata": metadata})
    assert response.status_code == 202, response.content
    assert response.json()["metadata"] == metadata
    assert Job.objects.get().metadata == metadata
    assert api.get(detail_url(response.json()["id"])).json()["metadata"] == metadata


def test_fifty_metadata_keys_are_accepted(api):
    metadata = {f"k{i}": str(i) for i in range(50)}
    response = post_job(api, {"type": "sleep", "metadata": metadata})
    assert response.status_code == 202, response.content
    assert response.json()["metadata"] == metadata


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"type": "fail", "params": {"message": "a\u0000b"}}, "params", id="params-value"),
        pytest.param({"type": "sleep", "params": {"\u0000": 1}}, "params", id="params-key"),
        pytest.param(
            {"type": "sleep", "metadata": {"note": "a\u0000b"}}, "metadata.note", id="metadata-value"
        ),
        pytest.param({"type": "sleep", "metadata": {"no\u0000te": "x"}}, "metadata", id="metadata-key"),
        pytest.param({"type": "sle\u0000ep"}, "type", id="type"),
        pytest.param(
            {"type": "sleep", "callback_url": "https://example.com/\u0000"}, "callback_url", id="callback"
        ),
    ],
)
def test_a_nul_character_is_400_never_500(api, body, field):
    response = post_job(api, body)
    assert_problem(response, 400, "invalid")
    fields = {error["field"] for error in response.json()["errors"]}
    assert any(f == field or f.startswith(field + ".") for f in fields), fields
    assert Job.objects.count() == 0


# --- scheduling -----------------------------------------------------------------------------


def _make_due(job: Job, seconds_ago: int = 5) -> None:
    Job.objects.filter(pk=job.pk).update(run_at=timezone.now() - timedelta(seconds=seconds_ago))


def test_promote_moves_due_scheduled_jobs_to_queued_and_dispatches_after_commit(
    user, broker, django_capture_on_commit_callbacks
):
    due = make_job(user, run_at=timezone.now() + timedelta(hours=1))
    later = make_job(user, run_at=timezone.now() + timedelta(hours=1))
    assert due.status == later.status == JobStatus.SCHEDULED
    _make_due(due)

    with django_capture_on_commit_callbacks(execute=True):
        promoted = maintenance.jobs_promote_scheduled()
        assert promoted == 1
        broker.apply_async.assert_not_called()  # not before commit
    broker.apply_async.assert_called_once()
    assert broker.apply_async.call_args.kwargs["args"] == [str(due.pk)]

    due.refresh_from_db()
    assert due.status == JobStatus.QUEUED
    assert due.version == 2
    assert due.dispatched_at is not None
    event = JobEvent.objects.get(job=due, seq=2)
    assert (event.kind, event.status) == (JobEventKind.STATUS, JobStatus.QUEUED)
    assert broker.publish.call_args.args[1]["job"]["status"] == "queued"

    later.refresh_from_db()
    assert later.status == JobStatus.SCHEDULED and later.version == 1
    assert JobEvent.objects.filter(job=later).count() == 1

    # Nothing more is due: a second pass changes nothing.
    with django_capture_on_commit_callbacks(execute=True):
        assert maintenance.jobs_promote_scheduled() == 0
    broker.apply_async.assert_called_once()


def test_a_cancelled_scheduled_job_is_not_promoted(user, broker, django_capture_on_commit_callbacks):
    job = make_job(user, run_at=timezone.now() + timedelta(hours=1))
    cancelled = control.job_cancel(job_id=job.pk, actor=user)
    assert cancelled.status == JobStatus.CANCELLED
    _make_due(job)
    with django_capture_on_commit_callbacks(execute=True):
        assert maintenance.jobs_promote_scheduled() == 0
    broker.apply_async.assert_not_called()
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and job.version == cancelled.version


def test_promotion_follows_run_at_order_and_the_limit(user, broker, django_capture_on_commit_callbacks):
    jobs = [make_job(user, run_at=timezone.now() + timedelta(hours=1)) for _ in range(3)]
    for seconds_ago, job in zip((10, 30, 20), jobs, strict=True):
        _make_due(job, seconds_ago)
    with django_capture_on_commit_callbacks(execute=True):
        assert maintenance.jobs_promote_scheduled(limit=2) == 2
    dispatched = [c.kwargs["args"][0] for c in broker.apply_async.call_args_list]
    assert dispatched == [str(jobs[1].pk), str(jobs[2].pk)]  # the longest overdue first
    assert Job.objects.get(pk=jobs[0].pk).status == JobStatus.SCHEDULED


def test_sweep_reports_promoted_jobs(user, django_capture_on_commit_callbacks):
    due = [make_job(user, run_at=timezone.now() + timedelta(hours=1)) for _ in range(2)]
    make_job(user, run_at=timezone.now() + timedelta(hours=1))
    for job in due:
        _make_due(job)
    with django_capture_on_commit_callbacks(execute=True):
        counts = maintenance.sweep()
    assert {"promoted", "dispatched", "idempotency_keys_purged"} <= set(counts)
    assert all(isinstance(value, int) for value in counts.values())
    assert counts["promoted"] == 2
    assert Job.objects.filter(status=JobStatus.QUEUED).count() == 2
    assert Job.objects.filter(status=JobStatus.SCHEDULED).count() == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert maintenance.sweep()["promoted"] == 0


def test_a_promoted_job_then_shows_as_queued_over_the_api(api, user, django_capture_on_commit_callbacks):
    job = make_job(user, run_at=timezone.now() + timedelta(hours=1))
    assert int(api.get(detail_url(job.pk))["Retry-After"]) == 60
    _make_due(job)
    with django_capture_on_commit_callbacks(execute=True):
        maintenance.jobs_promote_scheduled()
    response = api.get(detail_url(job.pk))
    assert response.json()["status"] == "queued"
    assert response["ETag"] == '"2"'
    assert int(response["Retry-After"]) <= 60


# --- limits, media types, problem details ---------------------------------------------------


@pytest.mark.parametrize(
    ("url", "document"),
    [
        ("/api/jobs/", {"type": "fail", "params": {"message": "x"}}),
        ("/api/jobs/bulk/", {"jobs": [{"type": "sleep"}]}),
    ],
    ids=["submit", "bulk"],
)
def test_a_body_over_the_limit_is_413_problem_and_writes_nothing(api, settings, url, document):
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    body = json.dumps(document)
    body = body + " " * (limit + 1 - len(body))  # valid JSON, one byte too long
    assert len(body.encode()) == limit + 1
    response = api.post(url, data=body, content_type="application/json")
    body = assert_problem(response, 413, "payload_too_large")
    assert str(limit) in body["detail"]
    assert Job.objects.count() == 0


def test_a_big_value_over_the_limit_is_413_not_a_validation_error(api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    response = post_job(api, {"type": "sleep", "metadata": {"blob": "x" * 20_000}})
    assert_problem(response, 413)
    assert Job.objects.count() == 0


def test_a_body_within_the_limit_is_accepted(api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    body = json.dumps({"type": "sleep"})
    body += " " * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE - len(body))
    response = api.post("/api/jobs/", data=body, content_type="application/json")
    assert response.status_code == 202, response.content
    assert Job.objects.count() == 1


@pytest.mark.parametrize("depth", [100_000, 5_000], ids=["100000", "5000"])
def test_deeply_nested_json_is_400_not_500(api, depth):
    nested = "[" * depth + "]" * depth
    body = '{"type": "sleep", "params": {"seconds": ' + nested + "}}"
    response = api.post("/api/jobs/", data=body, content_type="application/json")
    assert_problem(response, 400)
    assert Job.objects.count() == 0


@pytest.mark.parametrize("where", ["params", "metadata"])
def test_nested_json_just_within_the_parser_limit_is_400_not_500(api, where):
    # Nesting the parser accepts must not blow up later (validation messages, NUL checks).
    for depth in (400, 700, 850):
        nested = "[" * depth + "]" * depth
        inner = '{"message": ' + nested + "}" if where == "params" else '{"note": ' + nested + "}"
        body = '{"type": "fail", "' + where + '": ' + inner + "}"
        response = api.post("/api/jobs/", data=body, content_type="application/json")
        assert_problem(response, 400)
    assert Job.objects.count() == 0


# A lone UTF-16 surrogate is valid JSON but not Unicode; PostgreSQL refused it with a 500.
SURROGATE_BODIES = {
    "params value": ('{"type": "fail", "params": {"message": "\\ud800"}}', "params.message"),
    "metadata key": ('{"type": "sleep", "metadata": {"k\\udfff": "v"}}', "metadata.k\\udfff"),
    "metadata value": ('{"type": "sleep", "metadata": {"note": "x\\udbff"}}', "metadata.note"),
    "in a list": ('{"type": "fail", "params": {"message": ["ok", "\\ud800"]}}', "params.message.1"),
}


@pytest.mark.parametrize(("body", "field"), SURROGATE_BODIES.values(), ids=SURROGATE_BODIES.keys())
def test_a_lone_surrogate_is_400_naming_where_it_is(api, body, field):
    response = api.post("/api/jobs/", data=body, content_type="application/json")
    errors = assert_invalid(response, field)
    assert "surrogate" in errors[0]["message"]
    assert Job.objects.count() == 0


def test_a_lone_surrogate_in_a_bulk_submission_is_400_and_writes_nothing(api):
    body = '{"jobs": [{"type": "sleep"}, {"type": "fail", "params": {"message": "\\ud800"}}]}'
    response = api.post("/api/jobs/bulk/", data=body, content_type="application/json")
    assert_invalid(response, "jobs.1.params.message")
    assert Job.objects.count() == 0


def test_the_service_refuses_a_surrogate_from_any_caller(user):
    """The API's parser is one caller; the service refuses for every other (pages, CLI)."""
    from tasks_app.exceptions import JobValidationError
    from tasks_app.services import submission

    with pytest.raises(JobValidationError) as refused:
        submission.job_create(owner=user, type="fail", params={"message": "\ud800"})
    assert "surrogate" in str(refused.value.errors["params"])
    assert Job.objects.count() == 0


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        ("application/x-www-form-urlencoded", "type=sleep"),
        ("text/plain", '{"type": "sleep"}'),
        ("application/xml", "<job><type>sleep</type></job>"),
    ],
    ids=["form", "text", "xml"],
)
def test_a_wrong_content_type_is_415(api, content_type, data):
    response = api.post("/api/jobs/", data=data, content_type=content_type)
    body = assert_problem(response, 415, "unsupported_media_type")
    assert content_type in body["detail"]
    assert Job.objects.count() == 0


def test_multipart_is_415(api):
    response = api.post("/api/jobs/", {"type": "sleep"}, format="multipart")
    assert_problem(response, 415, "unsupported_media_type")
    assert Job.objects.count() == 0


def test_json_with_a_charset_is_accepted(api):
    response = api.post(
        "/api/jobs/", data='{"type": "sleep"}', content_type="application/json; charset=utf-8"
    )
    assert response.status_code == 202, response.content


@pytest.mark.parametrize(
    "body",
    [
        '{"type": "sleep", "params": {"seconds": NaN}}',
        '{"type": "sleep", "params": {"seconds": Infinity}}',
        '{"type": "fail", "params": {"delay": -Infinity}}',
        '{"type": "sleep", "params": {"seconds": 1e400}}',
        '{"type": "sleep", "priority": 1e400}',
        '{"type": "sleep", "timeout": 100000000000000000000000000000}',
    ],
    ids=["nan", "infinity", "minus-infinity", "overflowing-float", "overflowing-priority", "huge-int"],
)
def test_non_finite_and_huge_numbers_are_400_not_500(api, body):
    response = api.post("/api/jobs/", data=body, content_type="application/json")
    assert_problem(response, 400)
    assert Job.objects.count() == 0


def test_unknown_top_level_fields_are_400(api):
    errors = assert_invalid(
        post_job(api, {"type": "sleep", "colour": "red", "retries": 3}), "colour", "retries"
    )
    assert {e["message"] for e in errors} == {"Unknown field."}
    assert Job.objects.count() == 0


def test_every_4xx_is_problem_details(api, user, other_user, settings):
    """One sample of each client error the API gives."""
    job = make_job(user)
    other = make_job(other_user)
    ended = control.job_cancel(job_id=make_job(user).pk, actor=user)
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1_000
    samples = {
        "400-invalid": (api.post("/api/jobs/", {"type": "nope"}, format="json"), 400),
        "400-parse": (api.post("/api/jobs/", data="{", content_type="application/json"), 400),
        "400-wait": (api.get(detail_url(job.pk), {"wait": "x"}), 400),
        "400-ordering": (api.get("/api/jobs/", {"ordering": "owner"}), 400),
        "401": (APIClient().get("/api/jobs/"), 401),
        "401-stats": (APIClient().get("/api/stats/"), 401),
        "403-owner-filter": (api.get("/api/jobs/", {"owner": "bob"}), 403),
        "404-other": (api.get(detail_url(other.pk)), 404),
        "404-unknown": (api.get(detail_url("00000000-0000-4000-8000-000000000000")), 404),
        "404-events": (api.get(f"/api/jobs/{other.pk}/events/"), 404),
        "405": (api.delete(detail_url(job.pk)), 405),
        "409": (api.post(f"/api/jobs/{ended.pk}/cancel/"), 409),
        "413": (
            api.post("/api/jobs/", data='{"type":"sleep"}' + " " * 2_000, content_type="application/json"),
            413,
        ),
        "415": (
            api.post("/api/jobs/", data="type=sleep", content_type="application/x-www-form-urlencoded"),
            415,
        ),
        "422": None,
    }
    first = api.post("/api/jobs/", {"type": "sleep"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == 202
    samples["422"] = (
        api.post("/api/jobs/", {"type": "primes"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1"),
        422,
    )
    for name, (response, status) in samples.items():
        try:
            assert_problem(response, status)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc


# --- throttling -----------------------------------------------------------------------------


def test_user_throttle_answers_429_problem_with_retry_after(api, other_api, user, settings):
    with_longrun(settings, THROTTLE_USER="3/minute")
    job = make_job(user)
    for url in ("/api/jobs/", detail_url(job.pk), "/api/stats/"):
        assert api.get(url).status_code == 200, url
    throttled = api.get("/api/jobs/")
    body = assert_problem(throttled, 429, "throttled")
    assert re.fullmatch(r"[0-9]+", throttled["Retry-After"]), throttled["Retry-After"]
    assert 1 <= int(throttled["Retry-After"]) <= 60
    # Writes are throttled too, and a throttled submission writes nothing.
    count = Job.objects.count()
    assert_problem(post_job(api, {"type": "sleep"}), 429, "throttled")
    assert Job.objects.count() == count
    assert "second" in body["detail"]
    # The limit is per user.
    assert other_api.get("/api/jobs/").status_code == 200


def test_user_throttle_is_read_at_use(api, settings):
    with_longrun(settings, THROTTLE_USER="3/minute")
    for _ in range(3):
        assert api.get("/api/jobs/").status_code == 200
    assert api.get("/api/jobs/").status_code == 429
    with_longrun(settings, THROTTLE_USER="100/minute")
    assert api.get("/api/jobs/").status_code == 200


def test_anonymous_throttle_answers_429_once_the_anon_rate_is_exceeded(settings):
    """settings.py: "429 with Retry-After beyond them" for THROTTLE_ANON as well. Anonymous
    requests are refused (401), but once the anonymous rate is used up they must be 429."""
    with_longrun(settings, THROTTLE_ANON="2/minute")
    client = APIClient()
    answers = [client.get("/api/jobs/") for _ in range(4)]
    for response in answers[:2]:
        assert_problem(response, 401)
    throttled = answers[-1]
    assert_problem(throttled, 429, "throttled")
    assert int(throttled["Retry-After"]) >= 1


# --- stats ----------------------------------------------------------------------------------


def _stats(client) -> dict:
    response = client.get("/api/stats/")
    assert response.status_code == 200, response.content
    return response.json()


def test_stats_counts_only_the_visible_jobs_per_status_and_type(api, staff_api, user, other_user):
    make_job(user)
    make_job(user, type="primes", params={"n": 100})
    make_job(user, run_at=timezone.now() + timedelta(hours=1))
    finish_job(make_job(user))
    finish_job(make_job(user, type="fail", params={}), succeed=False)
    control.job_cancel(job_id=make_job(user).pk, actor=user)
    running = make_job(user)
    execution.job_claim(job_id=running.pk, worker="w1")
    # Another user's jobs: invisible to alice.
    make_job(other_user)
    make_job(other_user, type="primes", params={"n": 100})
    finish_job(make_job(other_user))

    mine = _stats(api)
    assert set(mine) == {"by_status", "by_type", "finished_per_minute", "queue_depth_per_minute", "waits"}
    assert mine["queue_depth_per_minute"] == []  # the whole system's backlog: staff only
    assert mine["by_status"] == {
        "scheduled": 1,
        "queued": 2,
        "running": 1,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 1,
    }
    assert mine["by_type"] == {"sleep": 5, "primes": 1, "fail": 1}

    everyone = _stats(staff_api)
    assert everyone["by_status"] == {
        "scheduled": 1,
        "queued": 4,
        "running": 1,
        "succeeded": 2,
        "failed": 1,
        "cancelled": 1,
    }
    assert everyone["by_type"] == {"sleep": 7, "primes": 2, "fail": 1}


def test_stats_give_staff_the_queue_depth_the_sweep_samples_each_minute(staff_api, user, settings):
    from tasks_app import metrics
    from tasks_app.realtime import publish
    from tasks_app.services import maintenance

    if timezone.now().second >= 57:  # keep the sample and the read inside one clock minute
        time.sleep(60.5 - timezone.now().second)
    client = publish.publisher.shards()[0].client
    for key in client.scan_iter(match=metrics._key("depth:*")):
        client.delete(key)
    make_job(user)
    make_job(user)
    execution.job_claim(job_id=make_job(user).pk, worker="w1")
    # Ten minutes ago, a sample of another backlog; this minute, the sweep's.
    metrics.queue_depth_record({"queued": 7, "running": 1}, at=timezone.now() - timedelta(minutes=10))
    assert maintenance.sweep()["queued_now"] == 2
    publish.publisher.flush()

    depth = _stats(staff_api)["queue_depth_per_minute"]
    assert len(depth) == 60
    assert (depth[-1]["queued"], depth[-1]["running"]) == (2, 1)
    assert (depth[-11]["queued"], depth[-11]["running"]) == (7, 1)
    assert [point for point in depth[:-11] if point["queued"] is not None] == []  # never sampled: null
    assert parse_dt(depth[-1]["minute"]) == timezone.now().replace(second=0, microsecond=0)


def test_stats_say_why_a_queued_job_of_each_type_waits(api, user):
    from tasks_app.services import workers

    waits = _stats(api)["waits"]
    assert waits["sleep"] == "No live worker reads queue longrun.jobs: it waits until one starts."
    workers.worker_register(name="jobs@host", host="host", pid=1, queues=["longrun.jobs"], concurrency=1)
    assert _stats(api)["waits"]["sleep"] == "Waiting for a worker to take it."
    execution.job_claim(job_id=make_job(user).pk, worker="jobs@host:1")
    assert _stats(api)["waits"]["primes"] == "All 1 worker slots of queue longrun.jobs are busy."


def test_stats_of_a_user_without_jobs_lists_every_status_as_zero(api, other_user):
    make_job(other_user)
    stats = _stats(api)
    assert stats["by_status"] == {status: 0 for status in JobStatus.values}
    assert stats["by_type"] == {}
    assert len(stats["finished_per_minute"]) == 60
    assert all(entry["count"] == 0 for entry in stats["finished_per_minute"])


def test_stats_finished_per_minute_buckets_the_last_hour_oldest_first(api, staff_api, user, other_user):
    now = timezone.now()
    if now.second >= 57:  # keep the whole test inside one clock minute
        time.sleep(60.5 - now.second)
        now = timezone.now()
    five_ago = now - timedelta(minutes=5)
    recent = finish_job(make_job(user))
    also_recent = finish_job(make_job(user), succeed=False)
    old = finish_job(make_job(user))
    theirs = finish_job(make_job(other_user))
    Job.objects.filter(pk__in=[recent.pk, also_recent.pk, theirs.pk]).update(finished_at=five_ago)
    Job.objects.filter(pk=old.pk).update(finished_at=now - timedelta(hours=2))

    series = _stats(api)["finished_per_minute"]
    assert len(series) == 60
    minutes = [parse_dt(entry["minute"]) for entry in series]
    assert all(m.tzinfo is not None for m in minutes)
    assert all(b - a == timedelta(minutes=1) for a, b in zip(minutes, minutes[1:]))  # oldest first
    assert minutes[-1] == now.replace(second=0, microsecond=0)
    bucket = five_ago.replace(second=0, microsecond=0)
    assert minutes[54] == bucket
    counts = [entry["count"] for entry in series]
    assert counts[54] == 2, counts
    assert sum(counts) == 2  # zeros elsewhere; the one two hours ago is out of the window

    staff_counts = [entry["count"] for entry in _stats(staff_api)["finished_per_minute"]]
    assert staff_counts[54] == 3 and sum(staff_counts) == 3
    # Per outcome too (the dashboard stacks them): one succeeded and one failed in that minute.
    assert (series[54]["succeeded"], series[54]["failed"], series[54]["cancelled"]) == (1, 1, 0)
    assert all(e["succeeded"] + e["failed"] + e["cancelled"] == e["count"] for e in series)


# --- Location, OpenAPI schema and docs ------------------------------------------------------


def test_submission_has_an_absolute_location_of_the_job(api):
    response = post_job(api, {"type": "primes", "params": {"n": 100}})
    assert response.status_code == 202, response.content
    location = urlparse(response["Location"])
    assert location.scheme in ("http", "https") and location.netloc
    assert location.path == detail_url(response.json()["id"])
    assert api.get(location.path).json()["id"] == response.json()["id"]


def test_openapi_schema_has_a_variant_per_job_type(api):
    response = api.get("/api/schema/")
    assert response.status_code == 200, response.content[:500]
    schema = yaml.safe_load(response.content)
    assert schema["openapi"].startswith("3.")
    assert "/api/jobs/" in schema["paths"] and "/api/jobs/{id}/" in schema["paths"]
    components = schema["components"]["schemas"]
    for name in ("SleepParams", "PrimesParams", "FailParams", "JobCreateRequest"):
        assert name in components, name
    assert set(components["SleepParams"]["properties"]) == {"seconds", "steps"}
    assert set(components["PrimesParams"]["properties"]) == {"n", "chunk"}
    assert "error" in components["FailParams"]["properties"]

    request = components["JobCreateRequest"]
    refs = [variant["$ref"] for variant in request["oneOf"]]
    assert request["discriminator"]["propertyName"] == "type"
    mapping = request["discriminator"]["mapping"]
    assert {"sleep", "primes", "fail"} <= set(mapping)
    assert sorted(mapping.values()) == sorted(refs)
    for type_name, stem in (("sleep", "Sleep"), ("primes", "Primes"), ("fail", "Fail")):
        variant = components[mapping[type_name].rsplit("/", 1)[1]]
        assert variant["properties"]["type"]["enum"] == [type_name]
        assert variant["properties"]["params"] == {"$ref": f"#/components/schemas/{stem}Params"}
        assert variant["additionalProperties"] is False
    # The submission operation uses that body.
    body = schema["paths"]["/api/jobs/"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/JobCreateRequest"}


def test_each_submission_variant_is_titled_and_its_example_is_a_valid_submission(api):
    """What Swagger UI shows and "Try it out" sends: the first variant is a job that works."""
    schema = yaml.safe_load(api.get("/api/schema/").content)
    components = schema["components"]["schemas"]
    variants = [
        components[v["$ref"].rsplit("/", 1)[1]]
        for v in schema["components"]["schemas"]["JobCreateRequest"]["oneOf"]
    ]
    assert variants[0]["example"]["type"] == "sleep"  # registration order, not "fail" first
    for variant in variants:
        example = variant["example"]
        assert variant["title"] == f"{example['type']} job"
        response = api.post("/api/jobs/", example, format="json")
        assert response.status_code == 202, (example, response.content[:300])


def test_openapi_schema_as_json(api):
    response = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    assert "oneOf" in json.loads(response.content)["components"]["schemas"]["JobCreateRequest"]


def test_api_docs_are_html_with_only_local_assets(client, user):
    client.force_login(user)
    response = client.get("/api/docs/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    sources = re.findall(r"<script[^>]*\bsrc=[\"']([^\"']+)", html) + re.findall(
        r"<link[^>]*\bhref=[\"']([^\"']+)", html
    )
    assert sources, html[:1000]
    for source in sources:
        assert not re.match(r"(?i)^(https?:)?//", source), source
        assert source.startswith("/static/"), source
    assert not re.search(r"(?i)<(script|link)[^>]*(src|href)=[\"'](https?:)?//", html)
    # The assets it names are served.
    for source in sources:
        if source.endswith(".js"):
            asset = client.get(source)
            assert asset.status_code == 200, source
            break
    else:
        pytest.fail("no script in the docs page")


# --- who may read the schema and the docs -----------------------------------------------------


def test_the_schema_and_docs_need_a_login_by_default():
    anonymous = APIClient()
    assert_problem(anonymous.get("/api/schema/"), 401, "not_authenticated")
    docs = anonymous.get("/api/docs/")
    assert docs.status_code == 302
    assert docs["Location"] == "/accounts/login/?next=/api/docs/"


def test_the_schema_and_docs_may_be_made_public(settings):
    with_longrun(settings, PUBLIC_API_DOCS=True)
    anonymous = APIClient()
    assert anonymous.get("/api/schema/").status_code == 200
    assert anonymous.get("/api/docs/").status_code == 200
    # Public docs change nothing else.
    assert_problem(anonymous.get("/api/job-types/"), 401)


def test_the_docs_page_is_not_part_of_the_schema_and_answers_options(client, user):
    client.force_login(user)
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    assert "/api/docs/" not in schema["paths"]
    assert "/api/jobs/" in schema["paths"]
    options = client.options("/api/docs/")
    assert options.status_code == 200
    assert options["Content-Type"].startswith("application/json")
