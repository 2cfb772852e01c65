"""Database connections in worker processes. Celery's Django fix-up reuses a process's connection
across tasks (CELERY_DB_REUSE_MAX) without asking whether it still works, so after a database
restart every later task of that process would fail on the dead connection ("the connection is
closed"; found by the chaos soak in the sweep and the webhook sender). After a task in which a
database error occurred, a connection that no longer answers is closed; the next task opens a
new one. A task without errors costs nothing (no health query)."""

from __future__ import annotations

from typing import Any

from celery.signals import task_postrun
from django.db import connections


def close_broken_connections(**kwargs: Any) -> None:
    for connection in connections.all(initialized_only=True):
        if connection.connection is not None and connection.errors_occurred and not connection.is_usable():
            connection.close()


def connect() -> None:
    task_postrun.connect(
        close_broken_connections, dispatch_uid="longrun-close-broken-connections", weak=False
    )
