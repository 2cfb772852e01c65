"""Readiness: what a load balancer or an operator asks before sending work (`GET /readyz`).

Each check answers {"ok", "ms", "detail"}: the database answers a query, the broker accepts a
connection, every Redis of the channel layer answers PING, and every queue Longrun needs has a
live worker reading it (from the workers' own heartbeats, `selectors.queue_consumers`). Details
name the failure's kind, never a host or a password: the endpoint is public."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from celery import current_app
from django.db import connection

from . import selectors
from .realtime import publish

Check = dict[str, Any]


def _timed(check: Callable[[], str]) -> Check:
    started = time.perf_counter()
    try:
        detail, ok = check(), True
    except Exception as exc:  # every failure is an answer here, not an error
        detail, ok = f"unreachable ({type(exc).__name__})", False
    return {"ok": ok, "ms": round((time.perf_counter() - started) * 1000, 2), "detail": detail}


def _database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return connection.vendor


def _broker() -> str:
    with current_app.connection_for_read() as broker:
        broker.ensure_connection(max_retries=1, timeout=2)
        return str(broker.transport_cls)


def _channel_layer() -> str:
    shards = publish.publisher.shards()
    for shard in shards:
        shard.client.ping()
    return f"{len(shards)} Redis host(s)"


def _queues() -> dict[str, Check]:
    """One check per queue: a live worker reads it (a queue nobody reads never runs its work)."""
    started = time.perf_counter()
    try:
        consumers = selectors.queue_consumers()
    except Exception as exc:
        return {"queues": {"ok": False, "ms": 0.0, "detail": f"unreadable ({type(exc).__name__})"}}
    ms = round((time.perf_counter() - started) * 1000, 2)
    return {
        f"queue:{queue}": {
            "ok": count > 0,
            "ms": ms,
            "detail": f"{count} live worker(s)" if count else "no live worker reads this queue",
        }
        for queue, count in sorted(consumers.items())
    }


def readiness() -> dict[str, Any]:
    """{"status": "ok" | "fail", "checks": {name: check}}."""
    checks = {
        "database": _timed(_database),
        "broker": _timed(_broker),
        "channel_layer": _timed(_channel_layer),
        **_queues(),
    }
    status = "ok" if all(check["ok"] for check in checks.values()) else "fail"
    return {"status": status, "checks": checks}
