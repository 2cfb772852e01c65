"""Worker presence: the rows a Celery worker keeps about itself (`models.WorkerNode`). Written
from the worker's main process (`worker.presence`), read through `selectors`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from django.utils import timezone

from ..models import WorkerNode


def worker_register(*, name: str, host: str, pid: int, queues: Sequence[str], concurrency: int) -> WorkerNode:
    """A worker is ready: record it, or start its row afresh when a node of that name returns."""
    now = timezone.now()
    node, _ = WorkerNode.objects.update_or_create(
        name=name,
        defaults={
            "host": host,
            "pid": pid,
            "queues": sorted(queues),
            "concurrency": concurrency,
            "started_at": now,
            "last_seen_at": now,
            "stopped_at": None,
        },
    )
    return node


def worker_seen(*, name: str, pid: int) -> bool:
    """The worker's heartbeat; False when its row is gone or belongs to another process of that
    name (it then registers again)."""
    return bool(
        WorkerNode.objects.filter(name=name, pid=pid, stopped_at__isnull=True).update(
            last_seen_at=timezone.now()
        )
    )


def worker_stopped(*, name: str, pid: int) -> bool:
    """The worker shut down on purpose."""
    now = timezone.now()
    return bool(WorkerNode.objects.filter(name=name, pid=pid).update(stopped_at=now, last_seen_at=now))


def workers_forget_stopped(*, older_than: float) -> int:
    """Drop the rows of workers stopped or lost for longer than `older_than` seconds."""
    cutoff = timezone.now() - timedelta(seconds=older_than)
    deleted, _ = WorkerNode.objects.filter(last_seen_at__lt=cutoff).delete()
    return deleted
