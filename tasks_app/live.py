"""HTTP requests that wait for job changes: long-polling on the job detail (`?wait=N`) and
Server-Sent Events (`/api/jobs/{id}/stream/`, `/api/jobs/stream/`).

Django's ASGI handler gives every request a thread of its own for the whole request (its
ThreadSensitiveContext), so a request that waits 30 s inside a Django view keeps a thread for
30 s. `LiveHttpApp` therefore sits in front of Django in `project/asgi.py` and answers waiting
requests itself, in plain asyncio:

- it subscribes to the job's channel-layer group (the same messages the WebSocket consumers
  relay) and, because that channel is at-most-once, re-reads the job's version every few seconds;
- every database read (authentication, the job) is a short call on the shared thread pool that
  closes its connection at once, and reuses the REST view, so the answer is exactly the REST one.

A waiting request or an idle stream thus holds neither a thread nor a database connection.
Everything else goes to Django untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import json
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
from rest_framework.settings import api_settings

from . import sse
from .consumers import client_message
from .events import job_group, owner_group
from .models import TERMINAL_STATUSES, Job
from .views import MAX_WAIT_SECONDS, UUID_PATTERN, JobViewSet, etag_matches

logger = logging.getLogger(__name__)

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]

# How often a waiter re-reads the version, in case a live message was lost.
RECHECK_SECONDS = 5.0
JOB_DETAIL_PATH = re.compile(rf"^/api/jobs/(?P<pk>{UUID_PATTERN})/$")
JOB_STREAM_PATH = re.compile(rf"^/api/jobs/(?P<pk>{UUID_PATTERN})/stream/$")
JOBS_STREAM_PATH = re.compile(r"^/api/jobs/stream/$")
# A comment line this often keeps proxies from closing an idle stream.
HEARTBEAT_SECONDS = 15.0

_retrieve_view = JobViewSet.as_view({"get": "retrieve"}, detail=True)
# With the action's own options (renderer...), as the router would build them.
_stream_view = JobViewSet.as_view({"get": "stream"}, **JobViewSet.stream.kwargs)
_stream_all_view = JobViewSet.as_view({"get": "stream_all"}, **JobViewSet.stream_all.kwargs)
_no_response = lambda request: None  # noqa: E731  (middlewares below are used for process_request only)
_session_middleware = SessionMiddleware(_no_response)
_auth_middleware = AuthenticationMiddleware(_no_response)


def _call_and_release(view: Callable, request: HttpRequest, **kwargs: Any) -> HttpResponse:
    """A REST view's answer, on a pool thread, without keeping the database connection."""
    try:
        response = view(request, **kwargs)
        if hasattr(response, "render"):
            response.render()
        return response
    finally:
        connection.close()


def _retrieve_and_release(request: HttpRequest, pk: str) -> HttpResponse:
    return _call_and_release(_retrieve_view, request, pk=pk)


def _current_version(pk: str) -> int | None:
    try:
        return Job.objects.filter(pk=pk).values_list("version", flat=True).first()
    finally:
        connection.close()


def _off_request_thread(func: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """Run a short blocking call on the shared thread pool, not on a thread of the request's own."""
    return sync_to_async(func, thread_sensitive=False)


def job_updates(job_id: Any) -> contextlib.AbstractAsyncContextManager[asyncio.Queue | None]:
    return group_updates([job_group(job_id)])


@contextlib.asynccontextmanager
async def group_updates(groups: list[str]) -> AsyncIterator[asyncio.Queue | None]:
    """Subscribe to channel-layer groups; yields a queue of their messages (bounded: when full,
    the oldest is dropped and versions reveal the gap), or None if Redis is down (callers then
    fall back to re-reading the database)."""
    layer = get_channel_layer()
    queue: asyncio.Queue = asyncio.Queue(maxsize=100)
    try:
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


async def stream(
    request: HttpRequest,
    send: Callable,
    *,
    opening_view: Callable,
    view_kwargs: dict,
    groups: list[str],
    frame_id: Callable[[dict], str],
    pk: str | None = None,
) -> HttpResponse | None:
    """Server-Sent Events: the opening frames come from the REST view (authentication, the
    history after Last-Event-ID, the snapshot); then every change, and heartbeats. A single-job
    stream closes once the job has ended. Returns a response to send instead, on an error."""
    async with group_updates(groups) as updates:
        opening = await _off_request_thread(_call_and_release)(opening_view, request, **view_kwargs)
        if opening.status_code != 200:
            return opening
        await send({"type": "http.response.start", "status": 200, "headers": _headers(opening)})
        await send({"type": "http.response.body", "body": opening.content, "more_body": True})
        if opening.get("X-Job-Terminal"):
            await send({"type": "http.response.body", "body": b""})
            return None
        sent: dict[str, int] = {}
        if pk is not None and opening.get("X-Job-Version"):
            sent[pk] = int(opening["X-Job-Version"])
        last_check = time.monotonic()
        while True:
            chunk = b""
            try:
                if updates is None:
                    raise TimeoutError
                message = await asyncio.wait_for(updates.get(), timeout=HEARTBEAT_SECONDS)
            except TimeoutError:
                chunk = sse.comment("keep-alive")
                message = None
            if message is not None and message["version"] > sent.get(message["job"]["id"], 0):
                sent[message["job"]["id"]] = message["version"]
                chunk = sse.frame(id=frame_id(message), event="job", data=client_message(message))
            elif pk is not None and time.monotonic() - last_check > RECHECK_SECONDS:
                # The channel layer is at-most-once: now and then, ask the row itself.
                last_check = time.monotonic()
                current = await _off_request_thread(_current_version)(pk)
                if current is not None and current > sent.get(pk, 0):
                    fresh = await _off_request_thread(_retrieve_and_release)(request, pk)
                    job = json.loads(fresh.content)
                    sent[pk] = job["version"]
                    message = {"event": "resync", "version": job["version"], "job": job}
                    chunk = sse.frame(id=job["version"], event="job", data=message)
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if pk is not None and message is not None and message["job"]["status"] in TERMINAL_STATUSES:
                await send({"type": "http.response.body", "body": b""})
                return None


class LiveHttpApp:
    """ASGI middleware: long-poll and SSE requests are answered here, everything else by Django."""

    def __init__(self, django_app: ASGIApp) -> None:
        self.django_app = django_app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            match = JOB_DETAIL_PATH.match(scope["path"])
            wait = _wait_seconds(scope.get("query_string", b"")) if match else None
            if match and wait is not None:
                await self._serve(scope, receive, send, lambda request: long_poll(request, match["pk"], wait))
                return
            if match := JOB_STREAM_PATH.match(scope["path"]):
                pk = match["pk"]
                await self._serve(
                    scope,
                    receive,
                    send,
                    lambda request: stream(
                        request,
                        send,
                        opening_view=_stream_view,
                        view_kwargs={"pk": pk},
                        groups=[job_group(pk)],
                        frame_id=lambda message: message["version"],
                        pk=pk,
                    ),
                )
                return
            if JOBS_STREAM_PATH.match(scope["path"]):
                await self._serve(scope, receive, send, self._stream_all)
                return
        await self.django_app(scope, receive, send)

    @staticmethod
    async def _stream_all(request: HttpRequest, send: Callable) -> HttpResponse | None:
        user = await _off_request_thread(_authenticated_user)(request)
        groups = [owner_group(user.pk)] if user is not None else []
        return await stream(
            request,
            send,
            opening_view=_stream_all_view,
            view_kwargs={},
            groups=groups,
            frame_id=lambda message: f"{message['job']['id']}:{message['version']}",
        )

    async def _serve(self, scope: dict, receive: Callable, send: Callable, handler: Callable) -> None:
        request = ASGIRequest(scope, io.BytesIO(b""))
        # Lazy: the session and user are read on the pool thread when the view asks for them.
        _session_middleware.process_request(request)
        _auth_middleware.process_request(request)
        work = asyncio.create_task(_call_handler(handler, request, send))
        disconnected = asyncio.create_task(_until_disconnect(receive))
        done, _ = await asyncio.wait({work, disconnected}, return_when=asyncio.FIRST_COMPLETED)
        if work not in done:
            work.cancel()  # the client went away: stop waiting for it
            with contextlib.suppress(asyncio.CancelledError):
                await work
            return
        disconnected.cancel()
        if work.result() is not None:  # a stream that ran has sent its answer already
            await _send_response(send, work.result())


async def _call_handler(handler: Callable, request: HttpRequest, send: Callable) -> HttpResponse | None:
    if len(inspect.signature(handler).parameters) == 2:
        return await handler(request, send)
    return await handler(request)


def _authenticated_user(request: HttpRequest) -> Any:
    """The user of a request by the REST API's own authenticators (token or session)."""
    from rest_framework.request import Request

    try:
        user = Request(
            request, authenticators=[a() for a in api_settings.DEFAULT_AUTHENTICATION_CLASSES]
        ).user
        return user if user.is_authenticated else None
    except Exception:
        return None
    finally:
        connection.close()


def _headers(response: HttpResponse) -> list[tuple[bytes, bytes]]:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    headers = [(name.encode("latin-1"), str(value).encode("latin-1")) for name, value in response.items()]
    headers += [
        (b"set-cookie", cookie.output(header="").strip().encode("latin-1"))
        for cookie in response.cookies.values()
    ]
    return headers


async def _until_disconnect(receive: Callable) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send_response(send: Callable, response: HttpResponse) -> None:
    await send({"type": "http.response.start", "status": response.status_code, "headers": _headers(response)})
    await send({"type": "http.response.body", "body": response.content})
