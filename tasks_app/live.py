"""HTTP requests that wait for job changes: long-polling on the job detail (`?wait=N`).

Django's ASGI handler gives every request a thread of its own for the whole request (its
ThreadSensitiveContext), so a request that waits 30 s inside a Django view keeps a thread for
30 s. `LiveHttpApp` therefore sits in front of Django in `project/asgi.py` and answers waiting
requests itself, in plain asyncio:

- it subscribes to the job's channel-layer group (the same messages the WebSocket consumers
  relay) and, because that channel is at-most-once, re-reads the job's version every few seconds;
- every database read (authentication, the job) is a short call on the shared thread pool that
  closes its connection at once, and reuses the REST view, so the answer is exactly the REST one.

A waiting request thus holds neither a thread nor a database connection. Everything else goes to
Django untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.handlers.asgi import ASGIRequest
from django.db import connection
from django.http import HttpRequest, HttpResponse

from .events import job_group
from .models import Job
from .views import MAX_WAIT_SECONDS, UUID_PATTERN, JobViewSet, etag_matches

logger = logging.getLogger(__name__)

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]

# How often a waiter re-reads the version, in case a live message was lost.
RECHECK_SECONDS = 5.0
JOB_DETAIL_PATH = re.compile(rf"^/api/jobs/(?P<pk>{UUID_PATTERN})/$")

_retrieve_view = JobViewSet.as_view({"get": "retrieve"}, detail=True)
_no_response = lambda request: None  # noqa: E731  (middlewares below are used for process_request only)
_session_middleware = SessionMiddleware(_no_response)
_auth_middleware = AuthenticationMiddleware(_no_response)


def _retrieve_and_release(request: HttpRequest, pk: str) -> HttpResponse:
    """The REST answer for the job, on a pool thread, without keeping the connection."""
    try:
        response = _retrieve_view(request, pk=pk)
        if hasattr(response, "render"):
            response.render()
        return response
    finally:
        connection.close()


def _current_version(pk: str) -> int | None:
    try:
        return Job.objects.filter(pk=pk).values_list("version", flat=True).first()
    finally:
        connection.close()


def _off_request_thread(func: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """Run a short blocking call on the shared thread pool, not on a thread of the request's own."""
    return sync_to_async(func, thread_sensitive=False)


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


def _wait_seconds(query_string: bytes) -> int | None:
    """The valid `wait` of a request, or None (absent or invalid: Django answers, with a 400)."""
    values = parse_qs(query_string.decode("latin-1")).get("wait")
    if not values:
        return None
    try:
        value = int(values[-1])
    except ValueError:
        return None
    return value if 0 < value <= MAX_WAIT_SECONDS else None


def _version_waited_on(response: HttpResponse, request: HttpRequest) -> int | None:
    """The version the client waits to move past: the current one, if the client has it or
    sent no If-None-Match; None if its If-None-Match is stale (it must get the job at once)."""
    etag = response.get("ETag")
    if not etag:
        return None
    if response.status_code == 200 and request.headers.get("If-None-Match"):
        if not etag_matches(etag, request.headers["If-None-Match"]):
            return None
    try:
        return int(etag.strip('W/"'))
    except ValueError:
        return None


async def long_poll(request: HttpRequest, pk: str, wait: int) -> HttpResponse:
    """Answer when the job's version moves past the one the client has, or after `wait` s."""
    async with job_updates(pk) as updates:
        # Subscribed first, then read: no change can slip between the two.
        first = await _off_request_thread(_retrieve_and_release)(request, pk)
        if first.status_code not in (200, 304) or "Retry-After" not in first:
            return first  # an error, or a job that has ended: nothing to wait for
        known = _version_waited_on(first, request)
        if known is None:
            return first
        deadline = time.monotonic() + wait
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                if updates is None:
                    raise TimeoutError
                message = await asyncio.wait_for(updates.get(), timeout=min(remaining, RECHECK_SECONDS))
                if message.get("version", 0) > known:
                    break
            except TimeoutError:
                current = await _off_request_thread(_current_version)(pk)
                if current is None or current > known:
                    break
    return await _off_request_thread(_retrieve_and_release)(request, pk)


class LiveHttpApp:
    """ASGI middleware: long-poll requests are answered here, everything else by Django."""

    def __init__(self, django_app: ASGIApp) -> None:
        self.django_app = django_app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            match = JOB_DETAIL_PATH.match(scope["path"])
            wait = _wait_seconds(scope.get("query_string", b"")) if match else None
            if match and wait is not None:
                await self._serve(scope, receive, send, lambda request: long_poll(request, match["pk"], wait))
                return
        await self.django_app(scope, receive, send)

    async def _serve(self, scope: dict, receive: Callable, send: Callable, handler: Callable) -> None:
        request = ASGIRequest(scope, io.BytesIO(b""))
        # Lazy: the session and user are read on the pool thread when the view asks for them.
        _session_middleware.process_request(request)
        _auth_middleware.process_request(request)
        work = asyncio.create_task(handler(request))
        disconnected = asyncio.create_task(_until_disconnect(receive))
        done, _ = await asyncio.wait({work, disconnected}, return_when=asyncio.FIRST_COMPLETED)
        if work not in done:
            work.cancel()  # the client went away: stop waiting for it
            with contextlib.suppress(asyncio.CancelledError):
                await work
            return
        disconnected.cancel()
        await _send_response(send, work.result())


async def _until_disconnect(receive: Callable) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send_response(send: Callable, response: HttpResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    headers = [(name.encode("latin-1"), str(value).encode("latin-1")) for name, value in response.items()]
    headers += [(b"set-cookie", cookie.output(header="").strip().encode("latin-1")) for cookie in response.cookies.values()]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": response.content})
