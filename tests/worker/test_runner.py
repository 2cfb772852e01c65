"""`runner.execute_job` run in-process (no Celery) against the database: outcomes of the
built-in types, results that are not JSON, duplicate runs, cooperative cancel, progress
throttling, and `JobContext`.

Test job types are registered under names starting with "test-" and removed afterwards.
"""

from __future__ import annotations

import math
import time
from unittest import mock

import pytest

from tasks_app import registry
from tasks_app.exceptions import JobCancelled
from tasks_app.models import Job, JobEvent, JobEventKind, JobStatus
from tasks_app.services import control, execution, submission
from tasks_app.worker import context as job_context
from tasks_app.worker import runner
from tasks_app.worker.context import JobContext
from tasks_app.worker.runner import execute_job

# Nothing here should leave the process (conftest's `broker`); on-commit hooks only run if a
# test commits.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("broker")]

WORKER = "test-host:4242"
ANY_PARAMS = {"type": "object"}


@pytest.fixture
def define():
    """define(name, func) registers a test job type; all are unregistered afterwards."""
    added: list[str] = []

    def _define(name: str, func, schema=None):
        assert name.startswith("test-")
        registry.job_type(name, description=f"{name} (tests)", params_schema=schema or ANY_PARAMS)(func)
        added.append(name)
        return name

    yield _define
    for name in added:
        registry._registry.pop(name, None)


def submit(owner, type_: str, params: dict | None = None) -> Job:
    return submission.job_create(owner=owner, type=type_, params=params or {})


def reload(job) -> Job:
    return Job.objects.get(pk=job.pk)


def execute_or_fail(job) -> str:
    """`execute_job`, which must not raise whatever the job does; returns the outcome."""
    try:
        return execute_job(str(job.pk), worker=WORKER)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"execute_job raised {type(exc).__name__}: {exc}; the job is left {reload(job).status}")


def kinds(job) -> list[tuple[str, str]]:
    return list(JobEvent.objects.filter(job_id=job.pk).order_by("seq").values_list("kind", "status"))


def count_primes_below(n: int) -> int:
    if n < 3:
        return 0
    sieve = bytearray([1]) * n
    sieve[0:2] = b"\x00\x00"
    for i in range(2, math.isqrt(n - 1) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytearray(len(range(i * i, n, i)))
    return sum(sieve)


# --- built-in types -------------------------------------------------------------------------


def test_sleep_job_succeeds_with_result_and_full_progress(user):
    job = submit(user, "sleep", {"seconds": 0.02, "steps": 2})
    with mock.patch.object(execution, "job_progress", wraps=execution.job_progress) as progress:
        assert execute_job(str(job.pk), worker=WORKER, celery_task_id="task-1") == "succeeded"

    done = reload(job)
    assert done.status == JobStatus.SUCCEEDED
    assert done.result == {"slept": 0.02}
    assert done.progress == 100
    assert done.progress_message == "step 2 of 2"
    assert done.attempts == 1
    assert done.worker == WORKER
    assert done.celery_task_id == "task-1"
    assert done.error is None and done.traceback == ""
    assert done.started_at is not None and done.finished_at >= done.started_at
    # Shorter than the progress interval: no progress write; the last report lands with the outcome.
    assert progress.call_count == 0
    assert kinds(job) == [("created", "queued"), ("status", "running"), ("status", "succeeded")]


def test_fail_job_ends_failed_with_error_and_traceback(user):
    job = submit(user, "fail")
    assert execute_job(str(job.pk), worker=WORKER) == "failed"

    done = reload(job)
    assert done.status == JobStatus.FAILED
    assert done.error == {"type": "DemoError", "message": "This job failed on purpose."}
    assert done.traceback.startswith("Traceback (most recent call last):")
    assert "DemoError: This job failed on purpose." in done.traceback
    assert "job_types.py" in done.traceback  # points at the job's code
    assert done.result is None
    assert done.finished_at is not None
    last = JobEvent.objects.filter(job=job).last()
    assert (last.kind, last.status, last.seq) == ("status", "failed", done.version)
    assert last.data == {"error": done.error}


def test_fail_job_with_a_chosen_error_and_a_log_line(user):
    job = submit(user, "fail", {"error": "ZeroDivisionError", "message": "nothing to divide", "delay": 0.01})
    assert execute_job(str(job.pk), worker=WORKER) == "failed"
    done = reload(job)
    assert done.error == {"type": "ZeroDivisionError", "message": "nothing to divide"}
    assert "ZeroDivisionError: nothing to divide" in done.traceback
    assert kinds(job) == [
        ("created", "queued"),
        ("status", "running"),
        ("log", "running"),
        ("status", "failed"),
    ]
    assert JobEvent.objects.get(job=job, kind=JobEventKind.LOG).message == "Failing in 0.01 seconds."


def test_primes_below_100(user):
    job = submit(user, "primes", {"n": 100})
    assert execute_job(str(job.pk), worker=WORKER) == "succeeded"
    done = reload(job)
    assert done.result == {"n": 100, "count": 25}
    assert done.progress == 100


def test_primes_below_a_million(user):
    job = submit(user, "primes", {"n": 1_000_000})
    assert execute_job(str(job.pk), worker=WORKER) == "succeeded"
    assert reload(job).result == {"n": 1_000_000, "count": 78498}


@pytest.mark.parametrize("n", [2, 3, 4, 5, 1000, 1001, 1002, 1009, 2000, 2003, 10_007, 12_345])
def test_primes_across_chunk_boundaries_matches_a_plain_sieve(user, n):
    job = submit(user, "primes", {"n": n, "chunk": 1000})
    assert execute_job(str(job.pk), worker=WORKER) == "succeeded"
    assert reload(job).result == {"n": n, "count": count_primes_below(n)}


# --- running once ---------------------------------------------------------------------------


def test_a_second_execute_is_skipped_and_does_not_run_the_code_again(user, define):
    calls = []

    def counted(ctx):
        calls.append(ctx.attempt)
        return {"runs": len(calls)}

    job = submit(user, define("test-run-once", counted))
    assert execute_job(str(job.pk), worker=WORKER) == "succeeded"
    after_first = Job.objects.filter(pk=job.pk).values().get()

    assert execute_job(str(job.pk), worker=WORKER) == "skipped"
    assert execute_job(str(job.pk), worker="other-host:1") == "skipped"
    assert calls == [1]
    assert Job.objects.filter(pk=job.pk).values().get() == after_first
    assert reload(job).result == {"runs": 1}


def test_a_job_cancelled_before_it_ran_is_skipped(user, define):
    calls = []
    job = submit(user, define("test-never-runs", lambda ctx: calls.append(1)))
    control.job_cancel(job_id=job.pk, actor=user)
    assert execute_job(str(job.pk), worker=WORKER) == "skipped"
    assert calls == []
    assert reload(job).status == JobStatus.CANCELLED


def test_the_job_code_gets_its_params_and_context(user, define):
    seen = {}

    def inspect(ctx, *, a, b=2):
        seen.update(ctx=ctx, a=a, b=b)
        return {"sum": a + b}

    properties = {"a": {"type": "integer"}, "b": {"type": "integer", "default": 7}}
    schema = {"type": "object", "properties": properties}
    job = submit(user, define("test-params", inspect, schema), {"a": 1})
    assert execute_job(str(job.pk), worker=WORKER) == "succeeded"
    assert (seen["a"], seen["b"]) == (1, 7)  # the stored params, defaults included
    ctx = seen["ctx"]
    assert isinstance(ctx, JobContext)
    assert (ctx.job_id, ctx.attempt, ctx.worker, ctx.params) == (job.pk, 1, WORKER, {"a": 1, "b": 7})
    assert reload(job).result == {"sum": 8}


def test_a_job_whose_type_is_gone_fails_clearly(user, define):
    name = define("test-vanishing", lambda ctx: {"ok": True})
    job = submit(user, name)
    registry._registry.pop(name)
    assert execute_job(str(job.pk), worker=WORKER) == "failed"
    done = reload(job)
    assert done.error["type"] == "UnknownJobType"
    assert name in done.error["message"]


def test_when_another_worker_took_the_job_the_outcome_is_lost_and_not_written(user, define):
    def taken_over(ctx):
        # Simulates the job being handed to another worker while this one was still running.
        Job.objects.filter(pk=ctx.job_id).update(worker="another-host:9")
        return {"late": True}

    job = submit(user, define("test-taken-over", taken_over))
    assert execute_job(str(job.pk), worker=WORKER) == "lost"
    stored = reload(job)
    assert stored.status == JobStatus.RUNNING
    assert stored.worker == "another-host:9"
    assert stored.result is None


# --- results that are not JSON --------------------------------------------------------------


@pytest.mark.parametrize(
    "result",
    [{1, 2, 3}, {"when": object()}, b"raw bytes", {"nested": [1, {"x": {1.5}}]}],
    ids=["set", "object", "bytes", "nested-set"],
)
def test_a_result_that_is_not_json_fails_the_job_clearly(user, define, result):
    job = submit(user, define("test-bad-result", lambda ctx: result))
    assert execute_job(str(job.pk), worker=WORKER) == "failed"
    done = reload(job)
    assert done.status == JobStatus.FAILED
    assert done.result is None
    assert done.error["type"] == "TypeError"
    assert "JSON serializable" in done.error["message"]


@pytest.mark.parametrize(
    "result",
    [float("nan"), {"score": float("inf")}, [float("-inf")]],
    ids=["nan", "inf", "-inf"],
)
def test_a_result_with_non_finite_floats_fails_the_job_clearly(user, define, result):
    """NaN and Infinity are not JSON (RFC 8259); the databases' JSON columns refuse them.
    The job must end failed with a clear error, not crash the runner and stay running."""
    job = submit(user, define("test-nan-result", lambda ctx: result))
    outcome = execute_or_fail(job)
    assert outcome == "failed"
    done = reload(job)
    assert done.status == JobStatus.FAILED
    assert done.result is None
    assert done.error["type"] in {"ValueError", "TypeError"}


def test_a_result_with_a_nul_character_is_stored_or_fails_clearly(user, define):
    """PostgreSQL's jsonb cannot hold \\u0000. Whatever the database, the job must end."""
    job = submit(user, define("test-nul-result", lambda ctx: {"text": "a\x00b"}))
    outcome = execute_or_fail(job)
    done = reload(job)
    assert outcome in {"succeeded", "failed"}
    assert done.is_terminal
    if outcome == "succeeded":
        assert done.result == {"text": "a\x00b"}


def test_an_error_message_with_a_nul_character_still_fails_the_job(user, define):
    """A job parsing binary data may raise with a NUL in its message; the outcome must land."""

    def raises_nul(ctx):
        raise ValueError("unexpected byte \x00 at offset 3")

    job = submit(user, define("test-nul-error", raises_nul))
    outcome = execute_or_fail(job)
    assert outcome == "failed"
    done = reload(job)
    assert done.status == JobStatus.FAILED
    assert done.error["type"] == "ValueError"
    assert "unexpected byte" in done.error["message"]


# --- cancel ---------------------------------------------------------------------------------


@pytest.fixture
def quick_cancel_checks(monkeypatch):
    monkeypatch.setattr(JobContext, "CANCEL_CHECK_INTERVAL", 0.0)


def test_cooperative_cancel_mid_run_ends_cancelled(user, define, quick_cancel_checks):
    iterations = []

    def cancellable(ctx):
        for i in range(1000):
            if i == 5:
                control.job_cancel(job_id=ctx.job_id, actor=user)  # somebody presses Cancel
            ctx.raise_if_cancelled()
            iterations.append(i)
        return {"finished": True}

    job = submit(user, define("test-coop-cancel", cancellable))
    assert execute_job(str(job.pk), worker=WORKER) == "cancelled"

    assert iterations == [0, 1, 2, 3, 4]  # stopped at the first check after the request
    done = reload(job)
    assert done.status == JobStatus.CANCELLED
    assert done.result is None and done.error is None
    assert done.cancel_requested_at is not None and done.finished_at is not None
    assert kinds(job) == [
        ("created", "queued"),
        ("status", "running"),
        ("cancel_requested", "running"),
        ("status", "cancelled"),
    ]


def test_cooperative_cancel_with_the_default_check_interval(user, define):
    """Without shortening the interval the code still sees the request within about 0.5 s."""

    def cancellable(ctx):
        control.job_cancel(job_id=ctx.job_id, actor=None)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            ctx.raise_if_cancelled()
            time.sleep(0.01)
        return {"finished": True}

    job = submit(user, define("test-coop-cancel-default", cancellable))
    started = time.monotonic()
    assert execute_job(str(job.pk), worker=WORKER) == "cancelled"
    assert time.monotonic() - started < JobContext.CANCEL_CHECK_INTERVAL + 1.5


def test_a_job_ignoring_the_cancel_request_still_ends_cancelled(user, define):
    def stubborn(ctx):
        control.job_cancel(job_id=ctx.job_id, actor=user)
        return {"done": "anyway"}

    job = submit(user, define("test-stubborn", stubborn))
    assert execute_job(str(job.pk), worker=WORKER) == "cancelled"
    done = reload(job)
    assert done.status == JobStatus.CANCELLED
    assert done.result is None


def test_a_job_failing_after_a_cancel_request_ends_cancelled(user, define):
    def fails(ctx):
        control.job_cancel(job_id=ctx.job_id, actor=user)
        raise RuntimeError("broke while stopping")

    job = submit(user, define("test-fails-after-cancel", fails))
    assert execute_job(str(job.pk), worker=WORKER) == "cancelled"
    done = reload(job)
    assert done.status == JobStatus.CANCELLED
    assert done.error is None


def test_cancel_requested_reflects_the_database_and_is_throttled(
    user, define, monkeypatch, django_assert_num_queries
):
    job = submit(user, define("test-ctx", lambda ctx: None))
    claimed = execution.job_claim(job_id=job.pk, worker=WORKER)
    ctx = JobContext(claimed, worker=WORKER)

    with django_assert_num_queries(0):
        assert ctx.cancel_requested is False  # the claim has just read it: no second read
    control.job_cancel(job_id=job.pk, actor=user)

    monkeypatch.setattr(JobContext, "CANCEL_CHECK_INTERVAL", 3600)
    with django_assert_num_queries(0):
        assert ctx.cancel_requested is False  # too soon to ask again
        ctx.raise_if_cancelled()

    monkeypatch.setattr(JobContext, "CANCEL_CHECK_INTERVAL", 0.0)
    with django_assert_num_queries(1):
        assert ctx.cancel_requested is True
    with django_assert_num_queries(0):
        assert ctx.cancel_requested is True  # once seen, never asked again
        with pytest.raises(JobCancelled):
            ctx.raise_if_cancelled()


def test_cancel_requested_known_at_claim_needs_no_query(user, define, django_assert_num_queries):
    job = submit(user, define("test-ctx-known", lambda ctx: None))
    claimed = execution.job_claim(job_id=job.pk, worker=WORKER)
    control.job_cancel(job_id=job.pk, actor=user)
    ctx = JobContext(Job.objects.get(pk=job.pk), worker=WORKER)
    with django_assert_num_queries(0):
        assert ctx.cancel_requested is True
    assert claimed.cancel_requested_at is None  # the claimed copy predates the request


def test_cancel_requested_is_false_for_another_job(user, define, quick_cancel_checks):
    name = define("test-ctx-other", lambda ctx: None)
    a, b = submit(user, name), submit(user, name)
    execution.job_claim(job_id=a.pk, worker=WORKER)
    claimed_b = execution.job_claim(job_id=b.pk, worker=WORKER)
    control.job_cancel(job_id=a.pk, actor=user)
    assert JobContext(claimed_b, worker=WORKER).cancel_requested is False


# --- progress and log -----------------------------------------------------------------------


class FakeClock:
    """Stands in for the runner's `time` module: a monotonic clock the test moves by hand."""

    def __init__(self, now: float = 100_000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(job_context, "time", fake)  # the clock JobContext throttles progress by
    return fake


@pytest.mark.django_db(transaction=True)  # the heartbeat thread writes too, on its own connection
def test_progress_writes_are_throttled_and_the_last_value_lands(user, define, settings):
    settings.LONGRUN = {**settings.LONGRUN, "PROGRESS_INTERVAL": 0.2}
    assert time.monotonic() > 1  # the context's first write is due when the clock is past the interval
    timing = {}

    def chatty(ctx):
        start = time.monotonic()
        for i in range(100_000):
            ctx.progress(i * 70 / 100_000, f"item {i}")
        ctx.progress(73, "final")
        timing["elapsed"] = time.monotonic() - start
        return {"items": 100_000}

    job = submit(user, define("test-chatty", chatty))
    claimed_version = job.version + 1
    with mock.patch.object(execution, "job_progress", wraps=execution.job_progress) as progress:
        assert execute_job(str(job.pk), worker=WORKER) == "succeeded"

    writes = progress.call_count
    # At most one write per interval from the claim on; the last report lands with the outcome.
    assert writes <= timing["elapsed"] / 0.2 + 1, (writes, timing)
    assert writes < 50
    assert all(call.kwargs["percent"] <= 70 for call in progress.call_args_list)
    done = reload(job)
    # claim, one version per progress write, succeed: every write was real.
    assert done.version == claimed_version + writes + 1
    assert done.progress == 100  # success sets it
    assert done.progress_message == "final"
    assert not JobEvent.objects.filter(job=job, kind="log").exists()


def test_progress_left_pending_when_the_code_returns_lands_with_the_outcome(user, define, settings, clock):
    settings.LONGRUN = {**settings.LONGRUN, "PROGRESS_INTERVAL": 60}

    def two_reports(ctx):
        ctx.progress(10, "first")  # held: the first write is due an interval after the claim
        ctx.progress(55, "second")  # held, replaces the first
        assert Job.objects.get(pk=ctx.job_id).progress == 0
        return None

    job = submit(user, define("test-pending-progress", two_reports))
    with mock.patch.object(execution, "job_progress", wraps=execution.job_progress) as progress:
        assert execute_job(str(job.pk), worker=WORKER) == "succeeded"
    assert progress.call_count == 0
    done = reload(job)
    assert (done.progress, done.progress_message) == (100, "second")
    assert done.version == job.version + 2  # claim and outcome: the report cost no write of its own


def test_progress_pending_when_the_code_fails_is_dropped(user, define, settings, clock):
    settings.LONGRUN = {**settings.LONGRUN, "PROGRESS_INTERVAL": 60}

    def fails(ctx):
        ctx.progress(10, "first")
        ctx.progress(60, "never written")
        raise RuntimeError("boom")

    job = submit(user, define("test-progress-then-fail", fails))
    assert execute_job(str(job.pk), worker=WORKER) == "failed"
    done = reload(job)
    assert (done.progress, done.progress_message) == (0, "")


def test_progress_writes_follow_the_interval(user, define, settings, clock):
    settings.LONGRUN = {**settings.LONGRUN, "PROGRESS_INTERVAL": 10}

    def paced(ctx):
        ctx.progress(1)  # held: the first write is due 10 s after the claim
        clock.sleep(4)
        ctx.progress(2)  # 4 s: held back
        clock.sleep(4)
        ctx.progress(3)  # 8 s: held back
        clock.sleep(3)
        ctx.progress(4)  # 11 s: written (the latest value, not 1, 2 or 3)
        clock.sleep(4)
        ctx.progress(6)  # 15 s: held back (5 s after the last write)
        clock.sleep(6)
        ctx.progress(7)  # 21 s: written
        ctx.progress(8)  # held back, lands with the outcome
        return None

    job = submit(user, define("test-paced", paced))
    with mock.patch.object(execution, "job_progress", wraps=execution.job_progress) as progress:
        assert execute_job(str(job.pk), worker=WORKER) == "succeeded"
    assert [c.kwargs["percent"] for c in progress.call_args_list] == [4, 7]


def test_progress_is_clamped_by_the_context(user, define, settings):
    settings.LONGRUN = {**settings.LONGRUN, "PROGRESS_INTERVAL": 0}
    seen = []

    def wild(ctx):
        for value in (-20, 250, 33.7):
            ctx.progress(value)
            seen.append(Job.objects.get(pk=ctx.job_id).progress)
        return None

    job = submit(user, define("test-wild-progress", wild))
    assert execute_job(str(job.pk), worker=WORKER) == "succeeded"
    assert seen == [0, 100, 33]


def test_log_flushes_pending_progress_first_and_writes_events(user, define, settings, clock):
    settings.LONGRUN = {**settings.LONGRUN, "PROGRESS_INTERVAL": 60}

    def logs(ctx):
        ctx.progress(5)
        ctx.progress(40, "before the log")  # pending
        ctx.log("halfway")  # the progress first, so the history and the row agree
        ctx.log(12345)  # anything printable
        return None

    job = submit(user, define("test-logs", logs))
    with mock.patch.object(execution, "job_progress", wraps=execution.job_progress) as progress:
        assert execute_job(str(job.pk), worker=WORKER) == "succeeded"
    assert [c.kwargs["percent"] for c in progress.call_args_list] == [40]
    log_events = JobEvent.objects.filter(job=job, kind="log").order_by("seq")
    logs_written = list(log_events.values_list("seq", "message"))
    assert [m for _, m in logs_written] == ["halfway", "12345"]
    # created 1, claim 2, progress 3, log 4, log 5, succeeded 6
    assert [s for s, _ in logs_written] == [4, 5]
    assert reload(job).version == 6


@pytest.mark.django_db(transaction=True)
def test_the_latest_progress_lands_while_the_job_blocks(user, define, settings):
    """Throttling holds back a progress value reported right after another; the heartbeat
    thread writes it while the job's code is blocked, not only when the job ends."""
    settings.LONGRUN = {**settings.LONGRUN, "HEARTBEAT_SECONDS": 0.1, "PROGRESS_INTERVAL": 60}
    seen_while_blocked = {}

    def blocks(ctx):
        ctx.progress(10, "first")
        ctx.progress(55, "held back by the throttle")
        time.sleep(0.6)  # "blocked in a C call"
        seen_while_blocked["progress"] = Job.objects.get(pk=ctx.job_id).progress
        return {}

    job = submit(user, define("test-blocks", blocks))
    assert execute_job(str(job.pk), worker=WORKER) == "succeeded"
    assert seen_while_blocked["progress"] == 55


def test_database_writes_are_retried_while_the_database_is_away():
    from django.db import OperationalError

    calls = []

    def flaky_write():
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("terminating connection due to administrator command")
        return "written"

    assert runner.with_db_retry(flaky_write, seconds=5) == "written"
    assert len(calls) == 3

    def never():
        raise OperationalError("the database system is shutting down")

    with pytest.raises(OperationalError):
        runner.with_db_retry(never, seconds=0.3)


@pytest.mark.django_db(transaction=True)  # the runner closes the broken connection
def test_a_progress_write_that_fails_does_not_fail_the_job(user, define):
    """A database blip during a progress write is no reason to fail the job; the value is kept."""
    from django.db import OperationalError

    real = execution.job_progress
    failures = iter([OperationalError("connection lost")])

    def progress_once_broken(*args, **kwargs):
        error = next(failures, None)
        if error is not None:
            raise error
        return real(*args, **kwargs)

    def reports(ctx):
        ctx.progress(40, "forty")
        ctx.flush_progress()
        return {"ok": True}

    job = submit(user, define("test-progress-blip", reports))
    with mock.patch.object(execution, "job_progress", side_effect=progress_once_broken):
        assert execute_job(str(job.pk), worker=WORKER) == "succeeded"
    assert reload(job).result == {"ok": True}
