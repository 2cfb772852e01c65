"""The job admin: the operations console for jobs (list, search, page, actions)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.translation import ngettext

from .. import registry, selectors
from ..exceptions import JobStateError, JobValidationError
from ..forms import MetadataFilterField
from ..models import ACTIVE_STATUSES, Job, JobEvent, JobStatus, WebhookDelivery
from ..services import control
from . import cells
from .common import CappedCountPaginator, ReadOnlyInline

# The shortest id start the search looks for (the list shows 8 digits).
ID_PREFIX_MIN = 4


# Sent by admin_live.js when it re-reads a job page for the fields the live messages do not carry.
LIVE_REFRESH_HEADER = "X-Live-Refresh"

# The job page's buttons: which statuses each applies to, and what it asks first.
JOB_PAGE_ACTIONS: dict[str, dict[str, Any]] = {
    "cancel": {"label": "Cancel job", "statuses": ACTIVE_STATUSES, "confirm": "Cancel this job?"},
    "retry": {"label": "Retry", "statuses": {JobStatus.FAILED, JobStatus.CANCELLED}, "confirm": ""},
    "rerun": {"label": "Re-run as a new job", "statuses": set(JobStatus), "confirm": ""},
}


class JobTypeFilter(admin.SimpleListFilter):
    """The registered types, without a DISTINCT over the table."""

    title = "type"
    parameter_name = "type"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(job_type.name, job_type.name) for job_type in registry.all_job_types()]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(type=self.value()) if self.value() else queryset


class JobEventInline(ReadOnlyInline):
    model = JobEvent
    fields = ["seq", "created", "kind", "status", "message", "actor"]
    ordering = ["seq"]
    show_change_link = False

    @admin.display(description="Created at")
    def created(self, event: JobEvent) -> str:
        return cells.time_tag(event.created_at)


class WebhookDeliveryInline(ReadOnlyInline):
    model = WebhookDelivery
    fields = [
        "n",
        "event_type",
        "status",
        "attempts",
        "last_status_code",
        "last_error",
        "next_attempt",
        "delivered",
    ]
    show_change_link = True

    @admin.display(description="Next attempt at")
    def next_attempt(self, delivery: WebhookDelivery) -> str:
        return cells.time_tag(delivery.next_attempt_at)

    @admin.display(description="Delivered at")
    def delivered(self, delivery: WebhookDelivery) -> str:
        return cells.time_tag(delivery.delivered_at)


def _time_field(field: str, description: str) -> Callable[[Any, Job], str]:
    """A column or read-only field showing one of the job's times as a live `<time>`."""

    @admin.display(description=description, ordering=field)
    def show(model_admin: Any, job: Job) -> str:
        return cells.time_value(job, field)

    return show


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = [
        "short_id",
        "type",
        "owner",
        "status_badge",
        "progress_bar",
        "attempts_of_max",
        "priority",
        "created",
        "duration",
    ]
    list_display_links = ["short_id"]
    # Only the columns an index can sort.
    sortable_by = ["short_id", "type", "status_badge", "created"]
    list_filter = ["status", JobTypeFilter, ("owner", admin.RelatedFieldListFilter), "created_at"]
    list_select_related = ["owner"]
    date_hierarchy = "created_at"
    ordering = ["-created_at"]
    list_per_page = 50
    paginator = CappedCountPaginator
    show_full_result_count = False  # no second COUNT(*) of the whole table per page
    search_help_text = "A job id or its start (as the list shows it), a type, or metadata as key:value."
    search_fields = ["type"]  # the real work is in get_search_results
    inlines = [JobEventInline, WebhookDeliveryInline]
    actions = ["cancel_selected", "retry_selected", "rerun_selected"]
    # Every value that changes over a job's life is one of the `cells`, which admin_live.js keeps
    # up to date; the rest (input, limits) is fixed when the job is submitted.
    fieldsets = [
        (None, {"fields": ["id", "type", "owner", "status_badge", "progress_bar"]}),
        (
            "Input",
            {
                "fields": [
                    "params_pretty",
                    "metadata_pretty",
                    "priority",
                    "max_attempts",
                    "timeout",
                    "due",
                    "callback_url",
                    "made_by_schedule",
                    "slot",
                ]
            },
        ),
        ("Outcome", {"fields": ["result_pretty", "error_pretty", "traceback_pretty", "attempts_of_max"]}),
        (
            "Timeline",
            {
                "fields": [
                    "created",
                    "dispatched",
                    "started",
                    "finished",
                    "cancel_requested",
                    "duration",
                ]
            },
        ),
        (
            "Execution",
            {
                "classes": ["collapse"],
                "fields": ["worker_name", "celery_task", "lease_expires", "version_number"],
            },
        ),
    ]
    # Every field on the change form is read-only: the actions are the way to act.
    readonly_fields = flatten_fieldsets(fieldsets)

    class Media:
        css = {"all": ["tasks_app/admin.css"]}

    # --- permissions: view to see, change to act; nobody edits a job's fields by hand ------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # jobs are submitted through the API (or re-run from here)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None:
            return False  # the change form is read-only; the actions are the way to act
        return super().has_change_permission(request)

    # --- the job page's buttons: the list's actions, on this one job ---------------------------

    def get_urls(self) -> list[URLPattern]:
        act = self.admin_site.admin_view(self.act_on_one)
        return [path("<uuid:job_id>/act/<str:action>/", act, name="tasks_app_job_act"), *super().get_urls()]

    def act_on_one(self, request: HttpRequest, job_id: uuid.UUID, action: str) -> HttpResponse:
        """POST from a job page's Cancel, Retry or Re-run button: the action of the same name on
        just this job (same services, same messages), then back to the page."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if action not in JOB_PAGE_ACTIONS or not super().has_change_permission(request):
            raise PermissionDenied
        jobs = self.get_queryset(request).filter(pk=job_id)
        if not jobs.exists():
            raise Http404("No such job.")
        getattr(self, f"{action}_selected")(request, jobs)
        return redirect("admin:tasks_app_job_change", job_id)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        job = self.get_object(request, object_id)
        allowed = job is not None and super().has_change_permission(request)
        # Every button the user may press; the page shows those the job's status allows, and
        # admin_live.js shows and hides them as the status changes (data-statuses).
        buttons = [
            {
                "action": action,
                **button,
                "shown": job.status in button["statuses"],
                "statuses": " ".join(sorted(button["statuses"])),
            }
            for action, button in JOB_PAGE_ACTIONS.items()
            if allowed and job is not None
        ]
        context = {
            **(extra_context or {}),
            "job_buttons": buttons,
            # admin_live.js re-reading the fields no message carries: the page's messages are
            # left for the person's next page, not used up by a background request.
            "live_refresh": request.headers.get(LIVE_REFRESH_HEADER) == "1",
        }
        return super().change_view(request, object_id, form_url, context)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a job changes only through the services (deleting a running one strands its worker)

    # --- columns and fields: the live ones are `cells`, marked for admin_live.js ----------------

    @admin.display(description="ID", ordering="id")
    def short_id(self, job: Job) -> str:
        return format_html('<code title="{}">{}</code>', job.pk, str(job.pk)[:8])

    @admin.display(description="Status", ordering="status")
    def status_badge(self, job: Job) -> str:
        return cells.status_badge(job)

    @admin.display(description="Progress")
    def progress_bar(self, job: Job) -> str:
        return cells.progress_value(job)

    @admin.display(description="Attempts")
    def attempts_of_max(self, job: Job) -> str:
        return cells.attempts_value(job)

    @admin.display(description="Duration")
    def duration(self, job: Job) -> str:
        return cells.duration_value(job)

    created = _time_field("created_at", "Created")
    dispatched = _time_field("dispatched_at", "Dispatched at")
    started = _time_field("started_at", "Started at")
    finished = _time_field("finished_at", "Finished at")
    cancel_requested = _time_field("cancel_requested_at", "Cancel requested at")
    due = _time_field("run_at", "Run at")
    lease_expires = _time_field("lease_expires_at", "Lease expires at")

    @admin.display(description="Worker")
    def worker_name(self, job: Job) -> str:
        return cells.text_value(job, "worker")

    @admin.display(description="Celery task id")
    def celery_task(self, job: Job) -> str:
        return cells.text_value(job, "celery_task_id")

    @admin.display(description="Version")
    def version_number(self, job: Job) -> str:
        return cells.text_value(job, "version")

    @admin.display(description="Schedule")
    def made_by_schedule(self, job: Job) -> Any:
        if job.schedule_id is None or job.schedule is None:
            return cells.EMPTY
        url = reverse("admin:tasks_app_schedule_change", args=[job.schedule_id])
        return format_html('<a href="{}">{}</a>', url, job.schedule.name)

    @admin.display(description="Slot")
    def slot(self, job: Job) -> Any:
        return cells.time_tag(job.scheduled_for)

    @admin.display(description="Params")
    def params_pretty(self, job: Job) -> str:
        return cells.pretty_json(job.params)

    @admin.display(description="Metadata")
    def metadata_pretty(self, job: Job) -> str:
        return cells.pretty_json(job.metadata)

    @admin.display(description="Result")
    def result_pretty(self, job: Job) -> str:
        return cells.json_value(job, "result")

    @admin.display(description="Error")
    def error_pretty(self, job: Job) -> str:
        return cells.json_value(job, "error")

    @admin.display(description="Traceback")
    def traceback_pretty(self, job: Job) -> str:
        return cells.traceback_value(job)

    # --- search: by id (or its start), metadata key:value, or type ------------------------------

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(pk=uuid.UUID(term)), False
        except ValueError:
            pass
        if ":" in term:
            try:
                pair = MetadataFilterField().clean(term)
            except ValidationError:
                return queryset.none(), False
            if pair is None:
                return queryset.none(), False
            return selectors.jobs_with_metadata(queryset, *pair), False
        # Types are few and known: match the names here, then filter on the indexed column.
        names = [t.name for t in registry.all_job_types() if t.name.lower().startswith(term.lower())]
        matches = queryset.filter(type__in=names) if names else queryset.none()
        # The start of an id, as the list shows it (8 digits) or longer, dashes or not.
        if len(term.replace("-", "")) >= ID_PREFIX_MIN:
            by_id = selectors.jobs_with_id_prefix(Job.objects.all(), term)
            matches = matches | queryset.filter(pk__in=by_id.values("pk"))
        return matches, False

    # --- actions: the same services as the API, each recorded with who did it ------------------

    def _apply(
        self, request: HttpRequest, queryset: QuerySet, change: Callable[[Any], Any], *, done: str, verb: str
    ) -> None:
        changed, refused = 0, Counter[str]()
        for job_id in queryset.values_list("pk", flat=True):
            try:
                change(job_id)
                changed += 1
            except (JobStateError, JobValidationError) as exc:
                refused[getattr(exc, "status", None) or "invalid"] += 1
        if changed:
            self.message_user(
                request, ngettext(f"{done} %d job.", f"{done} %d jobs.", changed) % changed, messages.SUCCESS
            )
        if refused:
            why = ", ".join(f"{count} {status}" for status, count in sorted(refused.items()))
            total = sum(refused.values())
            self.message_user(
                request,
                ngettext(f"%d job could not be {verb}: {why}.", f"%d jobs could not be {verb}: {why}.", total)
                % total,
                messages.WARNING,
            )

    @admin.action(description="Cancel selected jobs", permissions=["change"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._apply(
            request,
            queryset,
            lambda job_id: control.job_cancel(job_id=job_id, actor=request.user),
            done="Cancelled (or asked to stop)",
            verb="cancelled (already ended)",
        )

    @admin.action(description="Retry selected jobs (failed or cancelled)", permissions=["change"])
    def retry_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._apply(
            request,
            queryset,
            lambda job_id: control.job_retry(job_id=job_id, actor=request.user),
            done="Queued again",
            verb="retried (only failed or cancelled jobs can be)",
        )

    @admin.action(description="Re-run selected jobs as new jobs", permissions=["change"])
    def rerun_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._apply(
            request,
            queryset,
            lambda job_id: control.job_rerun(job_id=job_id, actor=request.user),
            done="Submitted a new run of",
            verb="re-run",
        )
