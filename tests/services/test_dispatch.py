"""`services.dispatch`, the outbox relay (`maintenance.jobs_dispatch_pending`) and the recovery of
lost messages (`maintenance.jobs_redispatch_stranded`): what reaches the broker, when, and what a
dead or forgetful broker leaves for the sweep."""

from __future__ import annotations

import os
import uuid
from datetime import timedelta
from unittest import mock

import pytest
from django.core.cache import cache
from django.utils import timezone
from kombu.exceptions import OperationalError

from tasks_app.conf import JOB_QUEUE
from tasks_app.models import Job, JobStatus
from tasks_app.services import control, dispatch, maintenance
from tests.helpers import wait_for, with_longrun

from .helpers import history, job_in, new_job, row

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("broker")]


# --- job_dispatch / jobs_dispatch_pending ---------------------------------------------------


@pytest.fixture
def on_redis(monkeypatch):
    """The broker is Redis, whatever CELERY_BROKER_URL this run has (Celery reads it first)."""
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")


def test_dispatch_publishes_and_marks_the_job(user, apply_async, on_redis):
    job = new_job(user, priority=9)
    assert dispatch.job_dispatch(job_id=job.pk) is True
    apply_async.assert_called_once()
    assert apply_async.call_args.kwargs["args"] == [str(job.pk)]
    assert apply_async.call_args.kwargs["priority"] == 0  # ours: 9 first; kombu's: 0 first
    assert apply_async.call_args.kwargs["retry"] is False
    assert Job.objects.get(pk=job.pk).dispatched_at is not None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", {0: 9, 5: 4, 9: 0}),  # kombu's Redis sub-queues: 0 first
        ("amqp://guest:guest@127.0.0.1:5672//", {0: 0, 5: 5, 9: 9}),  # RabbitMQ: highest first
        ("pyamqp://h//;amqp://other//", {0: 0, 9: 9}),  # a fail-over list: its first broker
    ],
)
def test_priorities_are_mapped_to_each_brokers_order(monkeypatch, url, expected):
    monkeypatch.setenv("CELERY_BROKER_URL", url)
    assert {ours: dispatch.broker_priority(ours) for ours in expected} == expected


def test_a_job_is_published_to_the_queue_its_type_names(user, apply_async, commit, routed_job_types):
    with commit():
        routed = new_job(user, type="routed_echo", params={"tag": "x"})
        plain = new_job(user)
    queues = {call.kwargs["args"][0]: call.kwargs["queue"] for call in apply_async.call_args_list}
    assert queues == {str(routed.pk): routed_job_types.ROUTED_QUEUE, str(plain.pk): JOB_QUEUE}
    # The relay and a re-publish take the same route.
    apply_async.reset_mock()
    assert dispatch.jobs_dispatch(job_ids=[routed.pk, plain.pk]) == 2
    assert [call.kwargs["queue"] for call in apply_async.call_args_list] == [
        routed_job_types.ROUTED_QUEUE,
        JOB_QUEUE,
    ]


def test_dispatch_priority_zero_maps_to_broker_priority_nine(user, apply_async, on_redis):
    job = new_job(user, priority=0)
    dispatch.job_dispatch(job_id=job.pk)
    assert apply_async.call_args.kwargs["priority"] == 9


def test_dispatch_twice_publishes_again_but_keeps_the_first_mark(user, apply_async):
    job = new_job(user)
    assert dispatch.job_dispatch(job_id=job.pk)
    first = Job.objects.get(pk=job.pk).dispatched_at
    assert dispatch.job_dispatch(job_id=job.pk)
    assert apply_async.call_count == 2
    assert Job.objects.get(pk=job.pk).dispatched_at == first


@pytest.mark.parametrize(
    "status", [JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.CANCELLED, JobStatus.SCHEDULED]
)
def test_dispatch_of_a_job_not_queued_publishes_nothing(user, apply_async, status):
    job = job_in(user, status)
    before = row(job)
    assert dispatch.job_dispatch(job_id=job.pk) is False
    apply_async.assert_not_called()
    assert row(job) == before


def test_dispatch_of_a_missing_job_publishes_nothing(apply_async):
    assert dispatch.job_dispatch(job_id=uuid.uuid4()) is False
    apply_async.assert_not_called()


def test_broker_down_leaves_the_job_undispatched_and_the_relay_publishes_it_later(user, apply_async, commit):
    apply_async.side_effect = OperationalError("Error 111 connecting to redis: Connection refused.")
    with commit():
        job = new_job(user)  # the on-commit dispatch hits the dead broker
    assert apply_async.call_count == 1
    stored = Job.objects.get(pk=job.pk)
    assert stored.status == JobStatus.QUEUED
    assert stored.dispatched_at is None

    # Broker still down: the relay tries once, gives up, nothing marked.
    assert maintenance.jobs_dispatch_pending(older_than=0) == 0
    assert Job.objects.get(pk=job.pk).dispatched_at is None

    apply_async.side_effect = None
    apply_async.reset_mock()
    assert maintenance.jobs_dispatch_pending(older_than=0) == 1
    apply_async.assert_called_once()
    assert apply_async.call_args.kwargs["args"] == [str(job.pk)]
    assert Job.objects.get(pk=job.pk).dispatched_at is not None

    # Done: nothing left to relay.
    apply_async.reset_mock()
    assert maintenance.jobs_dispatch_pending(older_than=0) == 0
    apply_async.assert_not_called()


@pytest.mark.parametrize("exc", [ConnectionRefusedError("refused"), OSError("network down"), TimeoutError()])
def test_dispatch_survives_other_broker_errors(user, apply_async, exc):
    job = new_job(user)
    apply_async.side_effect = exc
    assert dispatch.job_dispatch(job_id=job.pk) is False
    assert Job.objects.get(pk=job.pk).dispatched_at is None


def test_relay_only_picks_queued_undispatched_jobs(user, apply_async):
    pending = new_job(user)
    dispatched = new_job(user)
    dispatch.job_dispatch(job_id=dispatched.pk)
    cancelled = job_in(user, JobStatus.CANCELLED)
    running = job_in(user, JobStatus.RUNNING)
    scheduled = job_in(user, JobStatus.SCHEDULED)
    apply_async.reset_mock()

    assert maintenance.jobs_dispatch_pending(older_than=0) == 1
    assert [c.kwargs["args"] for c in apply_async.call_args_list] == [[str(pending.pk)]]
    for other in (cancelled, running, scheduled):
        assert Job.objects.get(pk=other.pk).dispatched_at is None


def test_relay_leaves_young_jobs_to_their_own_on_commit_dispatch(user, apply_async, settings):
    settings.LONGRUN = {**settings.LONGRUN, "DISPATCH_GRACE": 3600}
    new_job(user)
    assert maintenance.jobs_dispatch_pending() == 0
    assert maintenance.jobs_dispatch_pending(older_than=3600) == 0
    apply_async.assert_not_called()
    assert maintenance.jobs_dispatch_pending(older_than=0) == 1


def _aged(jobs, ages):
    now = timezone.now()
    for job, age in zip(jobs, ages):
        Job.objects.filter(pk=job.pk).update(created_at=now - timedelta(seconds=age))


def test_relay_takes_the_oldest_first_and_respects_the_limit(user, apply_async):
    jobs = [new_job(user) for _ in range(3)]
    _aged(jobs, (20, 10, 30))  # oldest: jobs[2], then jobs[0], then jobs[1]

    assert maintenance.jobs_dispatch_pending(older_than=0, limit=2) == 2
    assert {c.kwargs["args"][0] for c in apply_async.call_args_list} == {str(jobs[2].pk), str(jobs[0].pk)}
    assert Job.objects.get(pk=jobs[1].pk).dispatched_at is None
    assert maintenance.jobs_dispatch_pending(older_than=0, limit=2) == 1
    assert Job.objects.get(pk=jobs[1].pk).dispatched_at is not None


def test_relay_publishes_in_submission_order(user, apply_async):
    """After an outage the backlog should reach the queue oldest first (FIFO within a priority),
    not in the order of the ids. The ages are chosen so that id order is the reverse."""
    jobs = sorted((new_job(user) for _ in range(6)), key=lambda j: str(j.pk), reverse=True)
    _aged(jobs, (60, 50, 40, 30, 20, 10))  # the highest id is the oldest

    assert maintenance.jobs_dispatch_pending(older_than=0) == 6
    assert [c.kwargs["args"][0] for c in apply_async.call_args_list] == [str(j.pk) for j in jobs]


def test_relay_stops_at_the_first_broker_failure(user, apply_async):
    for _ in range(3):
        new_job(user)
    apply_async.side_effect = OperationalError("down")
    assert maintenance.jobs_dispatch_pending(older_than=0) == 0
    assert apply_async.call_count == 1  # no connect timeout paid per job
    assert Job.objects.filter(dispatched_at__isnull=True).count() == 3


def test_relay_goes_on_when_a_pending_job_is_cancelled_meanwhile(user, apply_async):
    """A job cancelled between the relay's query and its turn is not a broker failure: the
    jobs after it must still be dispatched in this pass."""
    first, second, third = (new_job(user) for _ in range(3))
    _aged((first, second, third), (30, 20, 10))

    def cancel_second(*args, **kwargs):
        if kwargs["args"] == [str(first.pk)]:
            control.job_cancel(job_id=second.pk, actor=user)

    apply_async.side_effect = cancel_second
    maintenance.jobs_dispatch_pending(older_than=0)
    cancelled = Job.objects.get(pk=second.pk)
    assert cancelled.status == JobStatus.CANCELLED
    assert cancelled.dispatched_at is None  # only queued jobs are marked
    assert Job.objects.get(pk=first.pk).dispatched_at is not None
    assert Job.objects.get(pk=third.pk).dispatched_at is not None, "the relay stopped at the cancelled job"
    assert maintenance.jobs_dispatch_pending(older_than=0) == 0


# --- lost messages: maintenance.jobs_redispatch_stranded -----------------------------------


@pytest.fixture
def depth(monkeypatch):
    """The broker's answer to "how many messages wait in this queue?" (None: broker down)."""
    answer = mock.Mock(return_value=0)
    monkeypatch.setattr(dispatch, "queue_waiting", answer)
    return answer


def dispatched_ago(job, seconds: float) -> None:
    Job.objects.filter(pk=job.pk).update(dispatched_at=timezone.now() - timedelta(seconds=seconds))


def empty_run_began_ago(seconds: float, queue: str = JOB_QUEUE) -> None:
    """As if the sweep had first found the queue empty `seconds` ago."""
    key = f"longrun:queue-empty-since:{queue}"
    cache.set(key, (timezone.now() - timedelta(seconds=seconds)).timestamp(), timeout=None)


def test_a_queued_job_whose_message_is_gone_is_published_again(user, apply_async, depth, settings):
    with_longrun(settings, REDISPATCH_AFTER=60)
    lost = new_job(user)
    dispatched_ago(lost, 300)
    empty_run_began_ago(120)
    apply_async.reset_mock()

    assert maintenance.jobs_redispatch_stranded() == 1
    apply_async.assert_called_once()
    assert apply_async.call_args.kwargs["args"] == [str(lost.pk)]
    assert row(lost)["dispatched_at"] > timezone.now() - timedelta(seconds=5)
    assert history(lost)[-1] == (2, "log", JobStatus.QUEUED)
    assert Job.objects.get(pk=lost.pk).events.last().message == (
        "Its message was lost by the broker; published again."
    )


def test_each_job_queue_is_judged_by_its_own_depth(user, apply_async, depth, settings, routed_job_types):
    """A busy default queue does not hide a routed job whose message is gone, nor the reverse."""
    with_longrun(settings, REDISPATCH_AFTER=60)
    routed = new_job(user, type="routed_echo", params={})
    plain = new_job(user)
    for job in (routed, plain):
        dispatched_ago(job, 300)
    empty_run_began_ago(120, queue=routed_job_types.ROUTED_QUEUE)
    empty_run_began_ago(120, queue=JOB_QUEUE)
    depth.side_effect = lambda queue: 0 if queue == routed_job_types.ROUTED_QUEUE else 7
    apply_async.reset_mock()

    assert maintenance.jobs_redispatch_stranded() == 1
    assert [call.kwargs["args"] for call in apply_async.call_args_list] == [[str(routed.pk)]]
    assert apply_async.call_args.kwargs["queue"] == routed_job_types.ROUTED_QUEUE
    assert {call.args[0] for call in depth.call_args_list} == {JOB_QUEUE, routed_job_types.ROUTED_QUEUE}


def test_nothing_is_published_again_while_the_queue_holds_messages(user, apply_async, depth, settings):
    """10,000 jobs waiting behind busy workers: the queue is not empty, so no copies."""
    with_longrun(settings, REDISPATCH_AFTER=60)
    for job in [new_job(user) for _ in range(20)]:
        dispatched_ago(job, 3600)
    empty_run_began_ago(120)  # an earlier run of empty readings ...
    depth.return_value = 10_000  # ... ended: the queue holds messages now
    apply_async.reset_mock()
    for _ in range(5):
        assert maintenance.jobs_redispatch_stranded() == 0
    apply_async.assert_not_called()
    # The run of empty readings starts again from scratch.
    depth.return_value = 0
    assert maintenance.jobs_redispatch_stranded() == 0
    apply_async.assert_not_called()


def test_the_queue_must_stay_empty_for_the_setting_before_anything_is_published(
    user, apply_async, depth, settings
):
    with_longrun(settings, REDISPATCH_AFTER=60)
    job = new_job(user)
    dispatched_ago(job, 3600)
    apply_async.reset_mock()
    assert maintenance.jobs_redispatch_stranded() == 0  # first empty reading: the run begins now
    empty_run_began_ago(59)
    assert maintenance.jobs_redispatch_stranded() == 0
    empty_run_began_ago(61)
    assert maintenance.jobs_redispatch_stranded() == 1


def test_only_queued_jobs_dispatched_before_the_queue_was_seen_empty_are_published_again(
    user, apply_async, depth, settings
):
    with_longrun(settings, REDISPATCH_AFTER=60)
    before = new_job(user)
    dispatched_ago(before, 300)
    after = new_job(user)  # dispatched after the run began: a worker may still be about to take it
    dispatched_ago(after, 30)
    undispatched = new_job(user)  # the outbox relay's business, not this
    Job.objects.filter(pk=undispatched.pk).update(dispatched_at=None)
    others = [
        job_in(user, status) for status in (JobStatus.SCHEDULED, JobStatus.RUNNING, JobStatus.SUCCEEDED)
    ]
    for job in others:
        dispatched_ago(job, 300)
    empty_run_began_ago(120)
    apply_async.reset_mock()

    assert maintenance.jobs_redispatch_stranded() == 1
    assert [c.kwargs["args"] for c in apply_async.call_args_list] == [[str(before.pk)]]
    assert row(undispatched)["dispatched_at"] is None


def test_once_judged_a_new_run_of_empty_readings_begins(user, apply_async, depth, settings):
    """A message lost while the queue stays empty is found by the next run, not never."""
    with_longrun(settings, REDISPATCH_AFTER=60)
    empty_run_began_ago(120)
    assert maintenance.jobs_redispatch_stranded() == 0  # nothing stranded; the run ends here
    late = new_job(user)
    dispatched_ago(late, 90)  # dispatched during that run, then lost
    apply_async.reset_mock()
    assert maintenance.jobs_redispatch_stranded() == 0  # a new run begins now
    empty_run_began_ago(61)
    assert maintenance.jobs_redispatch_stranded() == 1
    assert apply_async.call_args.kwargs["args"] == [str(late.pk)]


def test_a_broker_that_cannot_say_publishes_nothing(user, apply_async, depth, settings):
    with_longrun(settings, REDISPATCH_AFTER=60)
    dispatched_ago(new_job(user), 300)
    empty_run_began_ago(120)
    depth.return_value = None
    apply_async.reset_mock()
    assert maintenance.jobs_redispatch_stranded() == 0
    apply_async.assert_not_called()


def test_the_highest_priority_goes_first_and_the_limit_holds(user, apply_async, depth, settings):
    with_longrun(settings, REDISPATCH_AFTER=60)
    jobs = [new_job(user, priority=p) for p in (1, 9, 5)]
    for job in jobs:
        dispatched_ago(job, 300)
    empty_run_began_ago(120)
    apply_async.reset_mock()
    assert maintenance.jobs_redispatch_stranded(limit=2) == 2
    assert [c.kwargs["args"] for c in apply_async.call_args_list] == [[str(jobs[1].pk)], [str(jobs[2].pk)]]


def test_queue_waiting_reads_the_real_broker():
    """Against this session's Redis: a queue nobody declared holds nothing; a message counts."""
    from project.celery import app

    queue = f"longrun.test-depth-{uuid.uuid4().hex[:8]}"
    assert dispatch.queue_waiting(queue) == 0
    with app.connection_for_write() as connection:
        connection.SimpleQueue(queue).put({"n": 1})
        try:
            assert dispatch.queue_waiting(queue) == 1
        finally:
            connection.default_channel.queue_delete(queue)


def test_queue_waiting_is_none_when_the_broker_is_down(settings):
    from project.celery import app

    with mock.patch.object(app, "connection_for_read", side_effect=OperationalError("refused")):
        assert dispatch.queue_waiting(JOB_QUEUE) is None


def test_queue_waiting_reads_rabbitmq(monkeypatch):
    """The same reading on the alternative broker: a passive declare; a deleted queue holds none."""
    import kombu

    from project.celery import app

    url = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
    try:
        with kombu.Connection(url, connect_timeout=2) as probe:
            probe.ensure_connection(max_retries=1)
    except Exception as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no RabbitMQ at {url}: {exc}")
    monkeypatch.setattr(app, "connection_for_read", lambda: kombu.Connection(url))
    queue = f"longrun.test-depth-{uuid.uuid4().hex[:8]}"
    assert dispatch.queue_waiting(queue) == 0  # not declared: the broker says NOT_FOUND
    with kombu.Connection(url) as connection:
        simple = connection.SimpleQueue(queue)
        simple.put({"n": 1})
        simple.put({"n": 2})
        assert wait_for(lambda: dispatch.queue_waiting(queue) == 2, timeout=5, what="two messages")
        simple.queue.delete()
        simple.close()
    assert dispatch.queue_waiting(queue) == 0
