"""Every live message shape, in one place.

Internal (channel layer), published after commit by `services.notify`:

    {"type": "job.event", "event": kind, "version": n, "job": <REST representation>, "entry"?: <history entry>}

To clients, over the WebSocket (`/ws/jobs/`) and as the data of SSE `job` frames:

    {"type": "job", "event": kind, "version": n, "job": {...}, "entry"?: {...}}
    {"type": "snapshot", "job": id | "scope": "mine"/"all", "jobs": [...]}      (WebSocket)
    {"type": "error", "code": ..., "message": ...}                              (WebSocket)
    {"event": "snapshot" | "resync", "version": n, "job": {...}}                 (SSE opening/resync)

Schedules (scope "schedules"): internal {"type": "schedule.event", "event": kind, "schedule":
<REST representation>}; to clients {"type": "schedule", "event": kind, "schedule": {...}} and a
snapshot {"type": "snapshot", "scope": "schedules", "schedules": [...]}. `kind` is `created`,
`updated`, `paused`, `resumed`, `fired` or `deleted`.

`kind` is `created`, `status`, `progress`, `log` or `cancel_requested`. Every job is the REST
representation (`serializers.JobSerializer`) as plain JSON values, so it can cross msgpack.
"""

from __future__ import annotations

from typing import Any

from ..models import Job, JobEvent, Schedule
from ..serializers import event_representation, job_representation, schedule_representation


def job_data(job: Job) -> dict[str, Any]:
    """The REST representation of a job (plain JSON values already)."""
    return job_representation(job)


def entry_data(entry: JobEvent) -> dict[str, Any]:
    """A history entry as the API shows it (plain JSON values already)."""
    return event_representation(entry)


def job_changed(job: Job, event: str, entry: JobEvent | None = None) -> dict[str, Any]:
    """The channel-layer message for one change: the job at the version this change produced,
    and the history entry it recorded, if any (so a live log needs no extra read)."""
    message = job_changed_from_data(job_data(job), event)
    if entry is not None:
        message["entry"] = entry_data(entry)
    return message


def job_changed_from_data(data: dict[str, Any], event: str) -> dict[str, Any]:
    return {"type": "job.event", "event": event, "version": data["version"], "job": data}


def client_job(message: dict[str, Any]) -> dict[str, Any]:
    """What a client gets for a change (WebSocket message, SSE `job` frame data)."""
    out = {"type": "job", "event": message["event"], "version": message["version"], "job": message["job"]}
    if "entry" in message:
        out["entry"] = message["entry"]
    return out


def snapshot(jobs: list[dict[str, Any]], **subscription: str) -> dict[str, Any]:
    """The WebSocket answer to a subscribe: the current state of what was subscribed to."""
    return {"type": "snapshot", **subscription, "jobs": jobs}


def error(code: str, message: str) -> dict[str, Any]:
    """A WebSocket error; the socket stays open."""
    return {"type": "error", "code": code, "message": message}


def stream_job(data: dict[str, Any], event: str = "snapshot") -> dict[str, Any]:
    """The data of an SSE `job` frame that is not a change: the opening snapshot, or a resync
    after the stream noticed it had missed something."""
    return {"event": event, "version": data["version"], "job": data}


def schedule_changed(schedule: Schedule, event: str, *, recent_jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """The channel-layer message for a change of a schedule (or its firing)."""
    return {
        "type": "schedule.event",
        "event": event,
        "schedule": schedule_representation(schedule, recent_jobs=recent_jobs),
    }


def client_schedule(message: dict[str, Any]) -> dict[str, Any]:
    """What a client gets for a schedule's change (WebSocket message, SSE `schedule` frame data)."""
    return {"type": "schedule", "event": message["event"], "schedule": message["schedule"]}


def schedules_snapshot(schedules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "snapshot", "scope": "schedules", "schedules": schedules}
