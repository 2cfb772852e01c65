"""HTTP requests that wait for job changes: long-polling on the job detail (`?wait=N`) and
Server-Sent Events (`/api/jobs/{id}/stream/`, `/api/jobs/stream/`).

Django's ASGI handler gives every request a thread of its own for the whole request (its
ThreadSensitiveContext), so a request that waits 30 s inside a Django view keeps a thread for
30 s. `LiveHttpApp` therefore sits in front of Django in `project/asgi.py` and answers waiting
requests itself, in plain asyncio:

- it subscribes to the job's channel-layer group (the same messages the WebSocket consumers
  relay) and, because that channel is at-most-once, re-reads the job's version every few seconds;
- every database read (authentication, the job) is a short call on the shared thread pool that
  closes its connection at once. Answers are built from `selectors`, the one job representation
  and `polling` (ETag, Retry-After, the `wait` rule), exactly as the REST API builds them.

A waiting request or an idle stream thus holds neither a thread nor a database connection. What
this front does not serve itself (no valid credentials, a throttled client, a job the user may
not see, a `wait` that is absent, zero or invalid) goes to Django untouched, and the REST API
answers it, with its problem details.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.handlers.asgi import ASGIRequest
from django.db import connection
from django.http import HttpRequest, HttpResponse
from rest_framework.exceptions import ValidationError
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from .. import metrics, polling, schedule_selectors, selectors
from ..conf import SCHEDULES_SNAPSHOT_LIMIT, SNAPSHOT_LIMIT
from ..models import TERMINAL_STATUSES, Job
from ..serializers import schedules_representation
from ..throttling import API_THROTTLES
from . import asgi_io, messages, sse
from .publish import SCHEDULES_STAFF_GROUP, job_group, owner_group, schedules_owner_group

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = asgi_io.Receive
Send = asgi_io.Send
ASGIApp = Callable[..., Awaitable[None]]

# How often a waiter re-reads the version, in case a live message was lost.
RECHECK_SECONDS = 5.0
# A comment line this often keeps proxies from closing an idle stream.
HEARTBEAT_SECONDS = 15.0
JOB_DETAIL_PATH = re.compile(rf"^/api/jobs/(?P<pk>{polling.UUID_PATTERN})/$")
JOB_STREAM_PATH = re.compile(rf"^/api/jobs/(?P<pk>{polling.UUID_PATTERN})/stream/$")
JOBS_STREAM_PATH = re.compile(r"^/api/jobs/stream/$")
SCHEDULES_STREAM_PATH = re.compile(r"^/api/schedules/stream/$")

_no_response = lambda request: None  # noqa: E731  (middlewares below are used for process_request only)
_session_middleware = SessionMiddleware(_no_response)  # type: ignore[arg-type]
_auth_middleware = AuthenticationMiddleware(_no_response)  # type: ignore[arg-type]


# Authentication and throttles as the REST API's views have them.
_API_VIEW = APIView()


class _Defer:
    """A handler's answer meaning "let Django answer this request"."""


DEFER = _Defer()
Outcome = HttpResponse | None | _Defer
Handler = Callable[[HttpRequest, Send], Coroutine[Any, Any, Outcome]]


# --- short blocking calls, on the shared pool, each releasing its database connection ---------


def _on_pool(func: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """Run a short blocking call on the shared thread pool, not on a thread of the request's own,
    and close the database connection it opened."""

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        finally:
            connection.close()

    return sync_to_async(call, thread_sensitive=False)


@_on_pool
def _allowed_user(request: HttpRequest) -> Any:
    """The user of a request by the REST API's own authenticators (token or session), if it may
    go on: None when it has no valid credentials or is over its rate limit (Django then answers)."""
    try:
        drf_request = Request(request, authenticators=_API_VIEW.get_authenticators())
        user = drf_request.user
    except Exception:  # invalid credentials: the API answers 401
        return None
    if not user.is_authenticated:
        return None
    if not all(throttle().allow_request(drf_request, _API_VIEW) for throttle in API_THROTTLES):
        return None
    return user


@_on_pool
def _visible_job(user: Any, pk: str) -> Job | None:
    try:
        return selectors.job_get_visible(user, pk)
    except Job.DoesNotExist:
        return None


@_on_pool
def _visible_version(user: Any, pk: str) -> int | None:
    return selectors.job_version_visible(user, pk)


@_on_pool
def _job_stream_opening(user: Any, pk: str, after: int | None) -> tuple[dict[str, Any], list[bytes]] | None:
    try:
        job = selectors.job_get_visible(user, pk)
    except Job.DoesNotExist:
        return None
    history = (
        [messages.entry_data(entry) for entry in selectors.job_events(job, after=after)]
        if after is not None
        else []
    )
    data = messages.job_data(job)
    return data, sse.job_stream_opening(data, history, after=after)


@_on_pool
def _jobs_stream_opening(user: Any) -> list[bytes]:
    jobs = selectors.job_list_recent(user, mine=True, limit=SNAPSHOT_LIMIT)
    return sse.jobs_stream_opening([messages.job_data(job) for job in reversed(jobs)])


@_on_pool
def _schedule_groups(user: Any) -> list[str]:
    return [SCHEDULES_STAFF_GROUP if selectors.sees_every_job(user) else schedules_owner_group(user.pk)]


@_on_pool
def _schedules_stream_opening(user: Any) -> list[bytes]:
    visible = list(schedule_selectors.schedule_list_visible(user)[:SCHEDULES_SNAPSHOT_LIMIT])
    return sse.schedules_stream_opening(schedules_representation(visible))


# --- answers ------------------------------------------------------------------------------------


def job_response(job: Job, request: HttpRequest) -> HttpResponse:
    """The REST answer for one job: 200 with the job, or 304 when If-None-Match has its version."""
    headers = polling.job_headers(job)
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match and polling.etag_matches(headers["ETag"], if_none_match):
        response = HttpResponse(status=304)
    else:
        body = JSONRenderer().render(messages.job_data(job))
        response = HttpResponse(body, content_type="application/json")
    for name, value in headers.items():
        response[name] = value
    response["Vary"] = "Accept, Cookie"
    return response


def _version_waited_on(job: Job, request: HttpRequest) -> int | None:
    """The version the client waits to move past: the current one, if the client has it or sent
    no If-None-Match; None if its If-None-Match is stale (it must get the job at once)."""
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match and not polling.etag_matches(polling.job_etag(job), if_none_match):
        return None
    return job.version


@contextlib.asynccontextmanager
async def group_updates(groups: list[str]) -> AsyncIterator[asyncio.Queue[dict[str, Any]] | None]:
    """Subscribe to channel-layer groups; yields a queue of their messages (bounded: when full,
    the oldest is dropped and versions reveal the gap), or None if Redis is down (callers then
    fall back to re-reading the database)."""
    layer = get_channel_layer()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=100)
    try:
        assert layer is not None
        channel = await layer.new_channel()
        for group in groups:
            await layer.group_add(group, channel)
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
        for group in groups:
            with contextlib.suppress(Exception):
                await layer.group_discard(group, channel)


async def _next_message(
    updates: asyncio.Queue[dict[str, Any]] | None, timeout: float
) -> dict[str, Any] | None:
    """The next live message, or None after `timeout` seconds (at once-ish without live updates)."""
    if updates is None:
        await asyncio.sleep(timeout)
        return None
    try:
        return await asyncio.wait_for(updates.get(), timeout=timeout)
    except TimeoutError:
        return None


async def long_poll(request: HttpRequest, send: Send, *, pk: str, wait: int) -> Outcome:
    """Answer when the job's version moves past the one the client has, or after `wait` s."""
    user = await _allowed_user(request)
    if user is None:
        return DEFER
    async with group_updates([job_group(pk)]) as updates:
        # Subscribed first, then read: no change can slip between the two.
        job = await _visible_job(user, pk)
        if job is None:
            return DEFER
        known = _version_waited_on(job, request)
        if job.is_terminal or known is None:
            return job_response(job, request)  # nothing to wait for
        deadline = time.monotonic() + wait
        while (remaining := deadline - time.monotonic()) > 0:
            message = await _next_message(updates, min(remaining, RECHECK_SECONDS))
            if message is not None:
                if message.get("version", 0) > known:
                    break
                continue
            current = await _visible_version(user, pk)
            if current is None or current > known:
                break
    job = await _visible_job(user, pk)
    return DEFER if job is None else job_response(job, request)


async def _stream_headers(send: Send) -> None:
    headers = [
        (b"content-type", b"text/event-stream"),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
        (b"x-content-type-options", b"nosniff"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})


async def _send_chunk(send: Send, chunk: bytes, *, more: bool = True) -> None:
    await send({"type": "http.response.body", "body": chunk, "more_body": more})


async def job_stream(request: HttpRequest, send: Send, *, pk: str) -> Outcome:
    """Server-Sent Events for one job: the history after Last-Event-ID, the job, then every
    change and heartbeats; closes once the job has ended."""
    user = await _allowed_user(request)
    if user is None:
        return DEFER
    after = sse.last_event_id(request.headers.get("Last-Event-ID"))
    async with group_updates([job_group(pk)]) as updates:
        opening = await _job_stream_opening(user, pk, after)
        if opening is None:
            return DEFER
        job, frames = opening
        with metrics.connections.open("sse"):
            await _stream_headers(send)
            await _send_chunk(send, b"".join(frames))
            if job["status"] in TERMINAL_STATUSES:
                await _send_chunk(send, b"", more=False)
                return None
            sent = job["version"]
            last_check = time.monotonic()
            while True:
                message = await _next_message(updates, HEARTBEAT_SECONDS)
                chunk = sse.comment("keep-alive") if message is None else b""
                if message is not None and message["version"] > sent:
                    sent = message["version"]
                    chunk = sse.frame(id=sent, event="job", data=messages.client_job(message))
                elif time.monotonic() - last_check > RECHECK_SECONDS:
                    # The channel layer is at-most-once: now and then, ask the row itself.
                    last_check = time.monotonic()
                    current = await _visible_version(user, pk)
                    fresh = await _visible_job(user, pk) if current is not None and current > sent else None
                    if fresh is not None:
                        message = {"job": messages.job_data(fresh)}
                        sent = message["job"]["version"]
                        chunk = sse.frame(
                            id=sent, event="job", data=messages.stream_job(message["job"], "resync")
                        )
                if chunk:
                    await _send_chunk(send, chunk)
                if message is not None and message["job"]["status"] in TERMINAL_STATUSES:
                    await _send_chunk(send, b"", more=False)
                    return None


async def _group_stream(
    request: HttpRequest,
    send: Send,
    *,
    groups: Callable[[Any], Awaitable[list[str]]],
    opening: Callable[[Any], Awaitable[list[bytes]]],
    frame_of: Callable[[dict[str, Any]], bytes],
) -> Outcome:
    """Server-Sent Events from channel-layer groups: the opening frames, then a frame per
    message (`frame_of` may skip one with b""), with keep-alives between."""
    user = await _allowed_user(request)
    if user is None:
        return DEFER
    async with group_updates(await groups(user)) as updates:
        with metrics.connections.open("sse"):
            await _stream_headers(send)
            await _send_chunk(send, b"".join(await opening(user)))
            while True:
                message = await _next_message(updates, HEARTBEAT_SECONDS)
                chunk = sse.comment("keep-alive") if message is None else frame_of(message)
                if chunk:
                    await _send_chunk(send, chunk)


async def jobs_stream(request: HttpRequest, send: Send) -> Outcome:
    """Server-Sent Events for all my jobs: a snapshot of the newest, then every change."""
    sent: dict[str, int] = {}

    def frame_of(message: dict[str, Any]) -> bytes:
        if message["version"] <= sent.get(message["job"]["id"], 0):
            return b""
        sent[message["job"]["id"]] = message["version"]
        return sse.frame(id=sse.jobs_frame_id(message["job"]), event="job", data=messages.client_job(message))

    async def groups(user: Any) -> list[str]:
        return [owner_group(user.pk)]

    return await _group_stream(request, send, groups=groups, opening=_jobs_stream_opening, frame_of=frame_of)


async def schedules_stream(request: HttpRequest, send: Send) -> Outcome:
    """Server-Sent Events for the schedules I see: each of them, then every change and firing."""

    def frame_of(message: dict[str, Any]) -> bytes:
        return sse.frame(event="schedule", data=messages.client_schedule(message))

    return await _group_stream(
        request, send, groups=_schedule_groups, opening=_schedules_stream_opening, frame_of=frame_of
    )


def _wait_of(scope: Scope) -> int | None:
    """The `wait` this front serves: a valid, non-zero one (Django answers the rest)."""
    query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
    try:
        return polling.wait_seconds(query) or None
    except ValidationError:
        return None


class LiveHttpApp:
    """ASGI middleware: long-poll and SSE requests are answered here, everything else by Django."""

    def __init__(self, django_app: ASGIApp) -> None:
        self.django_app = django_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self._handler(scope) if scope["type"] == "http" and scope["method"] == "GET" else None
        if handler is None:
            await self.django_app(scope, receive, send)
            return
        await self._serve(scope, receive, send, handler)

    @staticmethod
    def _handler(scope: Scope) -> Handler | None:
        path = scope["path"]
        if match := JOB_DETAIL_PATH.match(path):
            wait = _wait_of(scope)
            pk = match["pk"]
            return (lambda request, send: long_poll(request, send, pk=pk, wait=wait)) if wait else None
        if match := JOB_STREAM_PATH.match(path):
            pk = match["pk"]
            return lambda request, send: job_stream(request, send, pk=pk)
        if JOBS_STREAM_PATH.match(path):
            return jobs_stream
        if SCHEDULES_STREAM_PATH.match(path):
            return schedules_stream
        return None

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        handler: Handler,
    ) -> None:
        request = ASGIRequest(scope, io.BytesIO(b""))
        # Lazy: the session and user are read on the pool thread when the handler asks for them.
        _session_middleware.process_request(request)
        _auth_middleware.process_request(request)
        replayable = asgi_io.ReplayableReceive(receive)
        work = asyncio.create_task(handler(request, send))
        disconnected = asyncio.create_task(asgi_io.until_disconnect(replayable))
        done, _ = await asyncio.wait({work, disconnected}, return_when=asyncio.FIRST_COMPLETED)
        if work not in done:
            work.cancel()  # the client went away: stop waiting for it
            with contextlib.suppress(asyncio.CancelledError):
                await work
            return
        disconnected.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await disconnected
        outcome = work.result()
        if outcome is DEFER:
            await self.django_app(scope, replayable.replay(), send)
        elif isinstance(outcome, HttpResponse):
            await asgi_io.send_response(send, outcome)
