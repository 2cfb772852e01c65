"""Workers register themselves, beat, and are shown stopped or lost (`worker.presence`), with
real Celery workers."""

from __future__ import annotations

import pytest

from tasks_app import selectors
from tasks_app.models import WorkerNode, WorkerState
from tasks_app.stack import JOB_QUEUE, WEBHOOK_QUEUE
from tests.helpers import wait_for, with_longrun

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def stack(stack, settings):
    stack.env.update({"LONGRUN_WORKER_HEARTBEAT_SECONDS": "0.5", "LONGRUN_WORKER_LOST_AFTER": "2"})
    with_longrun(settings, WORKER_LOST_AFTER=2)  # this process judges the rows
    return stack


def node(name: str) -> WorkerNode | None:
    return WorkerNode.objects.filter(name__startswith=f"{name}@").first()


def test_a_worker_registers_beats_and_is_stopped_after_a_soft_shutdown(stack):
    child = stack.start_ready_worker("presence", queues=[JOB_QUEUE, WEBHOOK_QUEUE], concurrency=3)
    registered = wait_for(lambda: node("presence"), timeout=15, what="the worker's row")
    assert registered.queues == [JOB_QUEUE, WEBHOOK_QUEUE]
    assert registered.concurrency == 3
    assert registered.pid == child.process.pid
    first_seen = registered.last_seen_at
    wait_for(lambda: node("presence").last_seen_at > first_seen, timeout=10, what="a heartbeat")
    assert selectors.worker_state(node("presence")) == WorkerState.ONLINE

    stack.stop(child)  # SIGTERM: Celery's soft shutdown
    stopped = node("presence")
    assert stopped.stopped_at is not None
    assert selectors.worker_state(stopped) == WorkerState.STOPPED


def test_a_killed_worker_is_lost(stack):
    child = stack.start_ready_worker("doomed", queues=[JOB_QUEUE], concurrency=1)
    wait_for(lambda: node("doomed"), timeout=15, what="the worker's row")
    stack.kill(child)
    wait_for(
        lambda: selectors.worker_state(node("doomed")) == WorkerState.LOST,
        timeout=10,
        what="the worker to be lost",
    )
    assert node("doomed").stopped_at is None
    # Not counted as a consumer any more (the session's shared worker, if it runs, still is).
    others = [
        other
        for other in WorkerNode.objects.exclude(name__startswith="doomed@")
        if JOB_QUEUE in other.queues and selectors.worker_state(other) == WorkerState.ONLINE
    ]
    assert selectors.queue_consumers()[JOB_QUEUE] == len(others)
