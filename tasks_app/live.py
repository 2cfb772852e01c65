"""Async HTTP endpoints that wait for job changes without holding a thread or a database
connection while they wait: long-polling on the job detail (`?wait=N`).

They subscribe to the job's channel-layer group (the same messages the WebSocket consumers relay)
and, because that channel is at-most-once, also re-read the job's version every few seconds.
Every database read is a short `sync_to_async` call that closes its connection afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.utils.http import parse_etags

from .events import job_group
from .models import Job
from .views import MAX_WAIT_SECONDS, JobViewSet

logger = logging.getLogger(__name__)

# How often a waiter re-reads the version, in case a live message was lost.
RECHECK_SECONDS = 5.0

_retrieve_view = JobViewSet.as_view({"get": "retrieve"}, detail=True)


def _retrieve(request: HttpRequest, pk: Any) -> HttpResponse:
    response = _retrieve_view(request, pk=pk)
    if hasattr(response, "render"):
        response.render()
    return response


def _retrieve_and_release(request: HttpRequest, pk: Any) -> HttpResponse:
    try:
        return _retrieve(request, pk)
    finally:
        connection.close()  # don't keep a connection through the wait


def _current_version(pk: Any) -> int | None:
    try:
        return Job.objects.filter(pk=pk).values_list("version", flat=True).first()
    finally:
        connection.close()


@contextlib.asynccontextmanager
async def job_updates(job_id: Any) -> AsyncIterator[asyncio.Queue | None]:
    """Subscribe to a job's live messages; yields a queue of them, or None if Redis is down
    (callers then fall back to re-reading the database)."""
    layer = get_channel_layer()
    queue: asyncio.Queue = asyncio.Queue(maxsize=100)
    try:
        channel = await layer.new_channel()
        await layer.group_add(job_group(job_id), channel)
    except Exception as exc:  # Redis unreachable: degrade to polling
        logger.warning("live updates unavailable, polling instead: %s", exc)
        yield None
        return

    async def pump() -> None:
        while True:
            message = await layer.receive(channel)
            if queue.full():
                queue.get_nowait()  # keep the newest: only versions matter here
            queue.put_nowait(message)

    task = asyncio.create_task(pump())
    try:
        yield queue
    finally:
        task.cancel()
        with contextlib.suppress(Exception):
            await layer.group_discard(job_group(job_id), channel)


def _wait_seconds(request: HttpRequest) -> int | None:
    raw = request.GET.get("wait")
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        return None  # the viewset answers 400
    return value if 0 < value <= MAX_WAIT_SECONDS else None


async def job_detail(request: HttpRequest, pk: Any) -> HttpResponse:
    """GET /api/jobs/{id}/, with `?wait=N` long-polling: answer when the job's version moves
    past the one the client has (If-None-Match) or has now, or after N seconds."""
    wait = _wait_seconds(request) if request.method == "GET" else None
    if wait is None:
        return await sync_to_async(_retrieve)(request, pk)

    async with job_updates(pk) as updates:
        # Subscribed first, then read: no change can slip between the two.
        first = await sync_to_async(_retrieve_and_release)(request, pk)
        if first.status_code not in (200, 304) or "Retry-After" not in first:
            return first  # an error, or a job that has ended: nothing to wait for
        known = _version_of(first, request)
        if first.status_code == 200 and request.headers.get("If-None-Match") and known is None:
            return first  # the client's version is stale: it gets the current one at once
        deadline = time.monotonic() + wait
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                if updates is None:
                    raise TimeoutError
                message = await asyncio.wait_for(updates.get(), timeout=min(remaining, RECHECK_SECONDS))
                if known is None or message.get("version", 0) > known:
                    break
            except TimeoutError:
                current = await sync_to_async(_current_version)(pk)
                if current is None or known is None or current > known:
                    break
    return await sync_to_async(_retrieve)(request, pk)


def _version_of(response: HttpResponse, request: HttpRequest) -> int | None:
    """The version the client is waiting to move past: the one in its If-None-Match if that is
    current (a 304), else the one just served."""
    etag = response.get("ETag")
    if not etag:
        return None
    if response.status_code == 200 and request.headers.get("If-None-Match"):
        if etag not in parse_etags(request.headers["If-None-Match"]):
            return None
    try:
        return int(etag.strip('W/"'))
    except ValueError:
        return None
