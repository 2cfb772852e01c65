"""Server-rendered pages for people: the dashboard, a job's page and the login page.

The REST API lives in `api/`. Pages render the current state so they are useful before (and
without) JavaScript; the ES modules in `static/tasks_app/` then keep them live over the
WebSocket (`live.js`) and talk to the REST API for everything they change. Routes are in
`web/urls.py`.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import available_timezones

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render, resolve_url
from django.urls import reverse
from django.utils.dateparse import parse_datetime
from django.views.decorators.csrf import ensure_csrf_cookie

from .. import metrics, registry, schedule_selectors, selectors, timeline
from ..api.serializers import StatsSerializer
from ..conf import (
    DEFAULT_PRIORITY,
    PRIORITY_MAX,
    PRIORITY_MIN,
    SCHEDULES_SNAPSHOT_LIMIT,
    SNAPSHOT_LIMIT,
    WORKERS_REFRESH_SECONDS,
)
from ..models import Job, JobStatus, ScheduleCatchup, ScheduleOverlap
from ..serializers import JobEventSerializer, JobSerializer, schedules_representation

# The job page's Details card: (field, label, format, optional). Formats: "text", "time" (ISO
# 8601, shown in the reader's time zone), "list" (comma-separated), "duration" (from started_at
# and finished_at). An optional row shows only when it has a value. What the job is (type,
# status, progress, outcome, params, metadata) has its own place on the page; the API's own
# fields (version, links) are under "For API clients".
DETAIL_FIELDS: list[tuple[str, str, str, bool]] = [
    ("owner", "Owner", "text", False),
    ("priority", "Priority", "text", False),
    ("created_at", "Created", "time", False),
    ("run_at", "Run at", "time", True),
    ("started_at", "Started", "time", False),
    ("finished_at", "Finished", "time", False),
    ("duration", "Duration", "duration", False),
    ("timeout", "Timeout (s)", "text", True),
    ("cancel_requested_at", "Cancel requested", "time", True),
    ("callback_url", "Callback URL", "text", True),
    ("webhook_events", "Extra webhook events", "list", True),
]
EMPTY = "—"  # what an empty value shows, everywhere on the pages (common.js: EMPTY)


def _display(value: Any, fmt: str) -> str:
    """The text a field shows before the page's script takes over (which formats the same way,
    except that times are shown in the reader's time zone and durations are worked out)."""
    if value is None or value == "" or value == [] or fmt == "duration":
        return EMPTY
    if fmt == "json":
        return json.dumps(value, indent=2, ensure_ascii=False)
    if fmt == "list":
        return ", ".join(value)
    return str(value)


def _api_urls() -> dict[str, str]:
    return {
        "jobs": reverse("api:job-list"),
        "jobTypes": reverse("api:job-types"),
        "stats": reverse("api:stats"),
        # The page of one job: the script swaps the zero UUID for a job's id.
        "jobPage": reverse("job-page", args=[uuid.UUID(int=0)]),
        "websocket": "/ws/jobs/",
    }


@login_required
def workers(request: HttpRequest) -> HttpResponse:
    """Every worker and every queue's live consumers; the script refreshes them every few
    seconds from `GET /api/workers/`."""
    if not selectors.sees_every_job(request.user):
        raise PermissionDenied("Only staff who may view every job see the workers.")
    config = {
        "urls": {"workers": reverse("api:workers"), "queues": reverse("api:queues")},
        "refreshSeconds": WORKERS_REFRESH_SECONDS,
    }
    context = {"workers": selectors.workers_list(), "queues": selectors.queues_overview(), "config": config}
    return render(request, "tasks_app/workers.html", context)


def _parse_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        return None


def _depth_now(history: list[dict[str, Any]]) -> str:
    """The newest queue depth sample in words (dashboard.js writes the same)."""
    sampled = [point for point in history if point["queued"] is not None]
    if not sampled:
        return "no sample yet"
    return f"{sampled[-1]['queued']} queued, {sampled[-1]['running']} running"


@login_required
@ensure_csrf_cookie
def dashboard(request: HttpRequest) -> HttpResponse:
    """Jobs newest first, counters per status, jobs finished per minute and a submit form.

    The filters are a GET form (`?status=&type=&q=`), so they work without JavaScript too; `q`
    is a job id: a whole one opens that job, a prefix filters the rows shown."""
    status = request.GET.get("status", "")
    job_type = request.GET.get("type", "").strip()
    query = request.GET.get("q", "").strip()
    if query and (job_id := _parse_uuid(query)) is not None and len(query.replace("-", "")) == 32:
        return redirect("job-page", job_id=job_id)
    if status not in JobStatus.values:
        status = ""

    # As many rows as the WebSocket snapshot holds, so the live page starts from the same set.
    jobs = selectors.job_list_filtered(request.user, status=status, job_type=job_type, id_prefix=query)
    rows = JobSerializer(jobs[:SNAPSHOT_LIMIT], many=True).data

    stats = metrics.dashboard_stats(request.user)
    stats_data = StatsSerializer(stats).data  # what GET /api/stats/ answers, which the page asks later
    finished = sum(point["count"] for point in stats["finished_per_minute"])
    busy_minutes = sum(1 for point in stats["finished_per_minute"] if point["count"])
    type_names = sorted({known.name for known in registry.all_job_types()} | set(stats["by_type"]))
    # The form offers what can run, starting on what this user ran last (else the first type
    # registered, `sleep`: not the alphabetical first, which is the demo `fail`).
    submit_types = [known.name for known in registry.all_job_types()]
    last_type = selectors.job_type_last_submitted(request.user)
    default_type = last_type if last_type in submit_types else registry.first_registered()
    is_staff = selectors.sees_every_job(request.user)
    config = {
        "isStaff": is_staff,
        "scope": "all" if is_staff else "mine",
        "statuses": [{"value": value, "label": label} for value, label in JobStatus.choices],
        "jobs": rows,
        "stats": stats_data,
        "filters": {"status": status, "type": job_type, "q": query},
        "urls": _api_urls(),
    }
    context = {
        "unserved_queues": selectors.unserved_queues(),
        "rows": [
            {
                "job": row,
                "created": parse_datetime(row["created_at"]),
                "wait": stats["waits"].get(row["type"], ""),
            }
            for row in rows
        ],
        "is_staff": is_staff,
        "counters": [
            {"value": value, "label": label, "count": stats["by_status"].get(value, 0)}
            for value, label in JobStatus.choices
        ],
        "total": sum(stats["by_status"].values()),
        "finished_last_hour": finished,
        "throughput": f"{finished / busy_minutes:.1f}" if busy_minutes else "0",
        "depth_now": _depth_now(stats["queue_depth_per_minute"]),
        "statuses": JobStatus.choices,
        "type_names": type_names,
        "submit_types": submit_types,
        "default_type": default_type,
        "filters": config["filters"],
        "config": config,
        "limits": {
            "priority_min": PRIORITY_MIN,
            "priority_max": PRIORITY_MAX,
            "default_priority": DEFAULT_PRIORITY,
        },
    }
    return render(request, "tasks_app/dashboard.html", context)


@login_required
@ensure_csrf_cookie
def job_detail(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    """One job as a person reads it: what ran, for whom, how it went (progress, outcome, each
    attempt), its input, the live log, Cancel / Retry, and the API's links folded away. Another
    user's job is a 404, as in the API."""
    try:
        job = selectors.job_get_visible(request.user, job_id)
    except Job.DoesNotExist:
        raise Http404("No such job.") from None
    data = JobSerializer(job).data
    events = list(JobEventSerializer(selectors.job_events(job), many=True).data)
    fields = [
        {
            "key": key,
            "label": label,
            "format": fmt,
            "optional": optional,
            "value": data.get(key),
            "display": _display(data.get(key), fmt),
            "empty": data.get(key) in (None, "", []),
        }
        for key, label, fmt, optional in DETAIL_FIELDS
    ]
    config = {"job": data, "events": events, "urls": _api_urls()}
    context = {
        "job": data,
        "job_id_short": str(job.pk)[:8],
        "created": job.created_at,
        "queue": registry.queue_of(job.type),
        "schedule_name": job.schedule.name if job.schedule_id and job.schedule else "",
        "can_change": selectors.may_change_job(request.user, job),
        "wait_reason": selectors.job_wait_reason(job),
        "fields": fields,
        "events": events,
        "attempts": timeline.job_attempts(events),
        "result_display": _display(data["result"], "json"),
        "params_display": _display(data["params"], "json"),
        "metadata_display": _display(data["metadata"], "json"),
        "config": config,
    }
    return render(request, "tasks_app/job_detail.html", context)


@login_required
@ensure_csrf_cookie
def schedules_page(request: HttpRequest) -> HttpResponse:
    """Recurring jobs: each schedule with when it runs next, how its last runs went and Pause /
    Resume / Run now, kept live over the WebSocket (scope "schedules"); and a form for a new one,
    its params generated from the type's schema, with a preview of the next fire times."""
    visible = list(schedule_selectors.schedule_list_visible(request.user)[:SCHEDULES_SNAPSHOT_LIMIT])
    rows = schedules_representation(visible)
    submit_types = [known.name for known in registry.all_job_types()]
    config = {
        "schedules": rows,
        "username": request.user.get_username(),
        "changesEvery": selectors.changes_every_job(request.user),
        "urls": {
            **_api_urls(),
            "schedules": reverse("api:schedule-list"),
            "preview": reverse("api:schedule-preview"),
        },
    }
    context = {
        "rows": rows,
        "is_staff": selectors.sees_every_job(request.user),
        "submit_types": submit_types,
        "default_type": registry.first_registered(),
        "time_zones": sorted(available_timezones()),
        "overlaps": ScheduleOverlap.choices,
        "catchups": ScheduleCatchup.choices,
        "limits": {
            "priority_min": PRIORITY_MIN,
            "priority_max": PRIORITY_MAX,
            "default_priority": DEFAULT_PRIORITY,
        },
        "config": config,
    }
    return render(request, "tasks_app/schedules.html", context)


class LoginView(auth_views.LoginView):
    """Django's login view with our template; a signed-in user goes straight on."""

    template_name = "registration/login.html"
    redirect_authenticated_user = True

    def get_success_url(self) -> str:
        # `?next=` pointing back at this page would send a signed-in user round in circles
        # (Django raises for it): go to the default page instead.
        url = super().get_success_url()
        if urlsplit(url).path == self.request.path:
            return resolve_url(settings.LOGIN_REDIRECT_URL)
        return url


class LogoutView(auth_views.LogoutView):
    """POST only (Django 5); back to the login page afterwards."""

    next_page = "login"
