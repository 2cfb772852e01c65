"""Server-Sent Events framing, shared by the streaming front (`realtime.http`) and its one-shot
fallback in the REST API."""

from __future__ import annotations

import json
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from rest_framework.renderers import BaseRenderer

from . import messages

# Tells EventSource how long to wait before reconnecting, in milliseconds.
RETRY_MS = 3000


# What a stream answered by Django (not the live front) carries: no caching, no proxy buffering.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def frame(*, data: Any, event: str | None = None, id: Any = None, retry: int | None = None) -> bytes:
    """One SSE event. `data` is sent as one line of JSON."""
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    if retry is not None:
        lines.append(f"retry: {retry}")
    lines.append("data: " + json.dumps(data, cls=DjangoJSONEncoder, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


def comment(text: str) -> bytes:
    """A comment line: ignored by clients, keeps proxies from closing an idle stream."""
    return f": {text}\n\n".encode()


def last_event_id(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        return None
    return value if value >= 0 else None


class EventStreamRenderer(BaseRenderer):
    """Renders a list of frames (bytes) as text/event-stream; anything else (an error) as JSON,
    under the problem+json content type the exception handler sets."""

    media_type = "text/event-stream"
    format = "event-stream"
    charset = None

    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None
    ) -> bytes:
        if isinstance(data, list):
            return b"".join(data)
        return json.dumps(data, cls=DjangoJSONEncoder).encode()


def job_stream_opening(
    job: dict[str, Any], history: list[dict[str, Any]], *, after: int | None
) -> list[bytes]:
    """The first frames of a one-job stream: the history entries after `after` (a reconnecting
    client's Last-Event-ID), then the job itself unless the client already has its version."""
    frames = [comment("longrun job stream")]
    frames += [frame(id=entry["seq"], event="history", data=entry) for entry in history]
    if after is None or job["version"] > after:
        frames.append(frame(id=job["version"], event="job", data=messages.stream_job(job), retry=RETRY_MS))
    return frames


def jobs_stream_opening(jobs: list[dict[str, Any]]) -> list[bytes]:
    """The first frames of the all-my-jobs stream: a snapshot of each job, oldest first."""
    frames = [comment("longrun jobs stream")]
    for job in jobs:
        frames.append(
            frame(id=jobs_frame_id(job), event="job", data=messages.stream_job(job), retry=RETRY_MS)
        )
    return frames


def jobs_frame_id(job: dict[str, Any]) -> str:
    """Frame ids of the all-jobs stream: `<job id>:<version>`."""
    return f"{job['id']}:{job['version']}"


def schedules_stream_opening(schedules: list[dict[str, Any]]) -> list[bytes]:
    """The first frames of the schedules stream: one `snapshot` frame with every schedule."""
    return [
        comment("longrun schedules stream"),
        frame(event="snapshot", data=messages.schedules_snapshot(schedules), retry=RETRY_MS),
    ]
