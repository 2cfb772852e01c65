"""The job admin's live values, as the list and the job page render them.

Each value is marked with its job's id and the field of the job's representation it shows
(`data-job-id`, `data-field`): admin_live.js updates exactly these from the WebSocket messages,
and builds a row added live from a rendered one, so both show the same. Times are
`<time datetime>`, formatted in the reader's zone by common.js's formatTime; a duration carries
its start and end, and common.js's jobDuration writes it ("running 12 s" counting up, "—" before
the start). The text rendered here is what a page without scripts shows, in the same words.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

from django.utils import formats, timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from ..models import Job, JobStatus

# The one sign for "no value", on the admin's pages as on the dashboard.
EMPTY = "—"


def live(job: Job, field: str, content: Any, *, tag: str = "span") -> SafeString:
    """`content` (escaped unless safe) marked as the job's `field`."""
    return format_html('<{0} data-job-id="{1}" data-field="{2}">{3}</{0}>', tag, job.pk, field, content)


def iso(value: datetime) -> str:
    """A date-time as the job's representation writes it (the current zone, UTC as "Z"), so a
    rendered value and one from a message read the same."""
    text = timezone.localtime(value).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def time_tag(value: datetime | None) -> Any:
    """A `<time>` that admin_live.js formats with common.js's formatTime, or "—"."""
    if value is None:
        return EMPTY
    return format_html(
        '<time datetime="{0}" title="{0}">{1}</time>', iso(value), formats.localize(timezone.localtime(value))
    )


def time_value(job: Job, field: str) -> SafeString:
    return live(job, field, time_tag(getattr(job, field)))


def format_duration(started: datetime, ended: datetime) -> str:
    """common.js's formatDuration: "850 ms", "12 s", "3 min 5 s", "2 h 4 min"."""
    ms = (ended - started).total_seconds() * 1000
    if ms < 0:
        return EMPTY
    if ms < 1000:
        return f"{math.floor(ms + 0.5)} ms"  # Math.round, not Python's round-half-even
    seconds = math.floor(ms / 1000 + 0.5)
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min {seconds % 60} s"
    return f"{minutes // 60} h {minutes % 60} min"


def duration_text(job: Job) -> str:
    """common.js's jobDuration: how long it ran, "running 12 s" while it runs, "—" before."""
    if job.started_at is None:
        return EMPTY
    if job.finished_at is None:
        return f"running {format_duration(job.started_at, timezone.now())}"
    return format_duration(job.started_at, job.finished_at)


def duration_value(job: Job) -> SafeString:
    """The duration, with its start and end for admin_live.js; "running" may wrap to a line of its
    own, the time itself does not (a narrow column)."""
    text = duration_text(job)
    content: Any = text
    if text.startswith("running "):
        content = format_html('running <span class="lr-nowrap">{}</span>', text.removeprefix("running "))
    return format_html(
        '<span data-job-id="{}" data-field="duration" data-started="{}" data-finished="{}">{}</span>',
        job.pk,
        iso(job.started_at) if job.started_at else "",
        iso(job.finished_at) if job.finished_at else "",
        content,
    )


def status_badge(job: Job) -> SafeString:
    cancelling = " · cancelling" if job.status == JobStatus.RUNNING and job.cancel_requested_at else ""
    return format_html(
        '<span class="lr-badge lr-badge-{}" data-job-id="{}" data-field="status">{}{}</span>',
        job.status,
        job.pk,
        job.get_status_display(),
        cancelling,
    )


def progress_value(job: Job) -> SafeString:
    """The bar in the status's colour, the percentage beside it and the job's own words under it."""
    return format_html(
        '<div class="lr-progress lr-progress-{status}">'
        '<div class="lr-progress-line"><progress max="100" value="{percent}" data-job-id="{id}" '
        'data-field="progress" aria-label="Progress of job {short}">{percent}%</progress>'
        '<span class="lr-pct">{percent}%</span></div>'
        '<div class="lr-progress-message" data-job-id="{id}" data-field="progress_message">{message}</div>'
        "</div>",
        status=job.status,
        percent=job.progress,
        id=job.pk,
        short=str(job.pk)[:8],
        message=job.progress_message,
    )


def attempts_value(job: Job) -> SafeString:
    return live(job, "attempts", f"{job.attempts} of {job.max_attempts}")


def pretty_json(value: Any) -> Any:
    """JSON as the job page shows it (keys sorted, indented), or "—" for nothing."""
    if value in (None, {}, []):
        return EMPTY
    return format_html(
        '<pre class="lr-json">{}</pre>', json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)
    )


def json_value(job: Job, field: str) -> SafeString:
    return live(job, field, pretty_json(getattr(job, field)), tag="div")


def traceback_value(job: Job) -> SafeString:
    content = format_html('<pre class="lr-json">{}</pre>', job.traceback) if job.traceback else EMPTY
    return live(job, "traceback", content, tag="div")


def text_value(job: Job, field: str) -> SafeString:
    value = getattr(job, field)
    return live(job, field, EMPTY if value in (None, "") else value)
