"""Log lines name their request or their job (`tasks_app.logs`, the request id middleware, the
worker's runner): in plain text at a terminal, JSON lines elsewhere."""

from __future__ import annotations

import io
import json
import logging
import uuid
from datetime import timedelta

import pytest
from celery import current_app
from django.test import Client
from django.utils import timezone
from pythonjsonlogger.json import JsonFormatter

from tasks_app import logs
from tasks_app.conf import RUN_JOB_TASK
from tasks_app.models import Job, JobStatus
from tests.helpers import make_job, wait_for


def capture(formatter: logging.Formatter, logger_name: str) -> tuple[io.StringIO, logging.Handler]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(logs.ContextFilter())
    handler.setFormatter(formatter)
    logging.getLogger(logger_name).addHandler(handler)
    return out, handler


def json_formatter() -> logging.Formatter:
    from django.conf import settings

    config = dict(settings.LOGGING["formatters"]["json"])
    config.pop("()")
    return JsonFormatter(**config)


def test_bound_fields_nest_and_end_with_their_block():
    out, handler = capture(logs.PlainFormatter("%(message)s"), "tests.logs.plain")
    log = logging.getLogger("tests.logs.plain")
    try:
        with logs.bound(job_id="j1", attempt=2):
            with logs.bound(worker="w@h:1"):
                log.warning("inside")
            log.warning("outer")
        log.warning("after")
    finally:
        log.removeHandler(handler)
    assert out.getvalue().splitlines() == [
        "inside [job_id=j1 attempt=2 worker=w@h:1]",
        "outer [job_id=j1 attempt=2]",
        "after",
    ]


def test_json_lines_carry_the_fields():
    out, handler = capture(json_formatter(), "tests.logs.json")
    log = logging.getLogger("tests.logs.json")
    try:
        with logs.bound(request_id="abc", job_id="j1", job_type="sleep", attempt=1, worker="w"):
            log.error("boom %s", 42)
    finally:
        log.removeHandler(handler)
    line = json.loads(out.getvalue())
    assert line["message"] == "boom 42" and line["level"] == "ERROR" and line["logger"] == "tests.logs.json"
    assert (line["request_id"], line["job_id"], line["job_type"], line["attempt"], line["worker"]) == (
        "abc",
        "j1",
        "sleep",
        1,
        "w",
    )
    assert "time" in line


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("given", "kept"), [("lb-1234.abc", True), ("", False), ("bad id\nx", False), ("x" * 201, False)]
)
def test_every_request_has_an_id_in_its_logs_and_its_response(given, kept):
    out, handler = capture(logs.PlainFormatter("%(message)s"), "django.request")
    try:
        headers = {"HTTP_X_REQUEST_ID": given} if given else {}
        response = Client().get("/no-such-page/", **headers)
    finally:
        logging.getLogger("django.request").removeHandler(handler)
    request_id = response["X-Request-ID"]
    assert (request_id == given) is kept
    assert len(request_id) >= 8
    assert f"[request_id={request_id}]" in out.getvalue()  # the 404's warning line


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_workers_json_lines_name_the_job_they_were_written_for(stack, user):
    stack.env["LOG_FORMAT"] = "json"
    # A queue of its own, so that no other worker of the session takes the job.
    queue = f"longrun.test-logs-{uuid.uuid4().hex[:8]}"
    stack.start_ready_worker("logger", queues=[queue], concurrency=1)
    # Scheduled for later (so not dispatched), then queued by hand with a dispatch mark (so the
    # outbox relay leaves it alone), and published to that queue only.
    job = make_job(
        user, type="chatty", params={"line": "made by the job"}, run_at=timezone.now() + timedelta(hours=1)
    )
    Job.objects.filter(pk=job.pk).update(status=JobStatus.QUEUED, run_at=None, dispatched_at=timezone.now())
    current_app.send_task(RUN_JOB_TASK, args=[str(job.pk)], queue=queue)
    done = wait_for(
        lambda: Job.objects.get(pk=job.pk).status == JobStatus.SUCCEEDED and Job.objects.get(pk=job.pk),
        timeout=30,
        what="the job",
    )
    assert done.worker.startswith("logger@")
    lines = [
        json.loads(line) for line in stack.log_tail("logger", size=10**6).splitlines() if line.startswith("{")
    ]
    [mine] = [line for line in lines if line["message"] == "made by the job"]
    assert mine["job_id"] == str(job.pk) and mine["job_type"] == "chatty" and mine["attempt"] == 1
    assert mine["worker"].startswith("logger@") and mine["level"] == "WARNING"
    assert any(line["message"].endswith(" ready.") for line in lines)  # Celery's own lines are JSON too
