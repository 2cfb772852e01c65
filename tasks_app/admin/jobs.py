"""The job admin: the operations console for jobs (list, search, page, actions)."""

from __future__ import annotations

import json
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
from django.urls import URLPattern, path
from django.utils.html import format_html
from django.utils.translation import ngettext

from .. import registry, selectors
from ..exceptions import JobStateError, JobValidationError
from ..forms import MetadataFilterField
from ..models import ACTIVE_STATUSES, Job, JobEvent, JobStatus, WebhookDelivery
from ..services import control
from .common import CappedCountPaginator, ReadOnlyInline

# The shortest id start the search looks for (the list shows 8 digits).
ID_PREFIX_MIN = 4


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
    fields = ["seq", "created_at", "kind", "status", "message", "actor"]
    ordering = ["seq"]
    show_change_link = False


class WebhookDeliveryInline(ReadOnlyInline):
    model = WebhookDelivery
    fields = [
        "n",
        "event_type",
        "status",
        "attempts",
        "last_status_code",
        "last_error",
        "next_attempt_at",
        "delivered_at",
    ]
    show_change_link = True


def _pretty_json(value: Any) -> str:
    if value in (None, {}, []):
        return "—"
    return format_html('<pre class="lr-json">{}</pre>', json.dumps(value, indent=2, sort_keys=True))


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = [
        "short_id",
        "type",
        "owner",
        "status_badge",
        "progress_bar",
        "attempts",
        "priority",
        "created_at",
        "duration",
    ]
    list_display_links = ["short_id"]
    # Only the columns an index can sort.
    sortable_by = ["short_id", "type", "status_badge", "created_at"]
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
    fieldsets = [
        (None, {"fields": ["id", "type", "owner", "status_badge", "progress_bar", "progress_message"]}),
        (
            "Input",
            {
                "fields": [
                    "params_pretty",
                    "metadata_pretty",
                    "priority",
                    "max_attempts",
                    "timeout",
                    "run_at",
                    "callback_url",
                ]
            },
        ),
        ("Outcome", {"fields": ["result_pretty", "error_pretty", "traceback_pretty", "attempts"]}),
        (
            "Timeline",
            {
                "fields": [
                    "created_at",
                    "dispatched_at",
                    "started_at",
                    "finished_at",
                    "cancel_requested_at",
                    "duration",
                ]
            },
        ),
        (
            "Execution",
            {"classes": ["collapse"], "fields": ["worker", "celery_task_id", "lease_expires_at", "version"]},
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
        buttons = [
            {"action": action, **button}
            for action, button in JOB_PAGE_ACTIONS.items()
            if allowed and job is not None and job.status in button["statuses"]
        ]
        return super().change_view(
            request, object_id, form_url, {**(extra_context or {}), "job_buttons": buttons}
        )

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a job changes only through the services (deleting a running one strands its worker)

    # --- columns --------------------------------------------------------------------------------

    @admin.display(description="ID", ordering="id")
    def short_id(self, job: Job) -> str:
        return format_html('<code title="{}">{}</code>', job.pk, str(job.pk)[:8])

    @admin.display(description="Status", ordering="status")
    def status_badge(self, job: Job) -> str:
        cancel = " · cancelling" if job.status == JobStatus.RUNNING and job.cancel_requested_at else ""
        return format_html(
            '<span class="lr-badge lr-badge-{}" data-job-id="{}" data-field="status">{}{}</span>',
            job.status,
            job.pk,
            job.get_status_display(),
            cancel,
        )

    @admin.display(description="Progress")
    def progress_bar(self, job: Job) -> str:
        return format_html(
            '<progress class="lr-progress" max="100" value="{}" data-job-id="{}" data-field="progress" '
            'title="{}%">{}%</progress>',
            job.progress,
            job.pk,
            job.progress,
            job.progress,
        )

    @admin.display(description="Duration")
    def duration(self, job: Job) -> str:
        if job.started_at is None:
            return "—"
        end = job.finished_at
        if end is None:
            return "running"
        seconds = (end - job.started_at).total_seconds()
        return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"

    @admin.display(description="Params")
    def params_pretty(self, job: Job) -> str:
        return _pretty_json(job.params)

    @admin.display(description="Metadata")
    def metadata_pretty(self, job: Job) -> str:
        return _pretty_json(job.metadata)

    @admin.display(description="Result")
    def result_pretty(self, job: Job) -> str:
        return _pretty_json(job.result)

    @admin.display(description="Error")
    def error_pretty(self, job: Job) -> str:
        return _pretty_json(job.error)

    @admin.display(description="Traceback")
    def traceback_pretty(self, job: Job) -> str:
        return format_html('<pre class="lr-json">{}</pre>', job.traceback) if job.traceback else "—"

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
