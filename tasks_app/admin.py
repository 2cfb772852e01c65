"""The Django admin as an operations console for jobs.

Lifecycle fields are read-only: every change goes through the same services as the API, and the
actions record who did it in the job's history. Built to stay fast on a large table: no full
COUNT(*) per page, filters that match the indexes, the owner joined in the same query.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.translation import ngettext

from . import registry, selectors
from .exceptions import JobStateError, JobValidationError
from .forms import MetadataFilterField
from .models import DeliveryStatus, Job, JobEvent, JobStatus, WebhookAttempt, WebhookDelivery, WorkerNode
from .services import control
from .services import webhooks as webhook_state

# Counting past this many matching rows is not worth a full scan: the page count becomes "at least".
COUNT_CAP = 10_000
# The shortest id start the search looks for (the list shows 8 digits).
ID_PREFIX_MIN = 4

# The admin is Longrun's operations console: it says so (templates/admin/base_site.html adds the icon).
admin.site.site_header = "Longrun administration"
admin.site.site_title = "Longrun admin"
admin.site.index_title = "Jobs, webhooks and workers"


class CappedCountPaginator(Paginator):
    """A paginator that never counts a whole large table: an unfiltered list uses PostgreSQL's
    row estimate, a filtered one counts at most COUNT_CAP + 1 rows."""

    @cached_property
    def count(self) -> int:
        queryset = cast(QuerySet[Job], self.object_list)
        if connection.vendor == "postgresql" and not queryset.query.where:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [Job._meta.db_table]
                )
                row = cursor.fetchone()
            estimate = int(row[0]) if row else 0
            if estimate > COUNT_CAP:
                return estimate
        return queryset.order_by()[: COUNT_CAP + 1].count()

    @cached_property
    def num_pages(self) -> int:
        # No link deeper than the cap: an OFFSET of a million rows is a scan of a million rows.
        return min(super().num_pages, max(1, COUNT_CAP // self.per_page))


class JobTypeFilter(admin.SimpleListFilter):
    """The registered types, without a DISTINCT over the table."""

    title = "type"
    parameter_name = "type"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(job_type.name, job_type.name) for job_type in registry.all_job_types()]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(type=self.value()) if self.value() else queryset


class ReadOnlyInline(admin.TabularInline):
    """Rows shown under their parent, never added, changed or deleted by hand."""

    extra = 0
    can_delete = False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return list(flatten_fieldsets(self.get_fieldsets(request, obj)))  # every field shown

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


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


class FailingDeliveryFilter(admin.SimpleListFilter):
    title = "health"
    parameter_name = "failing"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Failing (retrying, failed or gone)")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "yes":
            return queryset.filter(attempts__gt=0).exclude(status=DeliveryStatus.SUCCEEDED)
        return queryset


class WebhookAttemptInline(ReadOnlyInline):
    model = WebhookAttempt
    fields = ["started_at", "duration_ms", "status_code", "error", "response_body"]


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = [
        "webhook_id",
        "job",
        "event_type",
        "status",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "created_at",
    ]
    list_filter = [FailingDeliveryFilter, "status", "event_type"]
    list_select_related = ["job"]
    search_fields = ["=webhook_id", "url"]
    ordering = ["-created_at"]
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]
    inlines = [WebhookAttemptInline]
    actions = ["redeliver_selected"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None:
            return False
        return super().has_change_permission(request)

    @admin.action(description="Redeliver selected (same webhook-id)", permissions=["change"])
    def redeliver_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        done, busy = 0, 0
        for delivery_id in queryset.values_list("pk", flat=True):
            try:
                webhook_state.webhook_redeliver(delivery_id=delivery_id)
                done += 1
            except JobStateError:
                busy += 1
        if done:
            self.message_user(request, f"Queued {done} delivery(ies) again.", messages.SUCCESS)
        if busy:
            self.message_user(request, f"{busy} could not be: being sent right now.", messages.WARNING)


@admin.register(WorkerNode)
class WorkerNodeAdmin(admin.ModelAdmin):
    """Read-only: workers write their own rows (`worker.presence`)."""

    list_display = ["name", "state", "host", "pid", "queue_list", "concurrency", "running", "last_seen_at"]
    search_fields = ["name", "host"]
    readonly_fields = [f.name for f in WorkerNode._meta.fields]

    def get_queryset(self, request: HttpRequest) -> QuerySet[WorkerNode]:
        return selectors.workers_with_running_counts()

    @admin.display(description="state")
    def state(self, node: WorkerNode) -> str:
        return selectors.worker_state(node).label

    @admin.display(description="queues")
    def queue_list(self, node: WorkerNode) -> str:
        return ", ".join(node.queues)

    @admin.display(description="running jobs", ordering="running_jobs")
    def running(self, node: WorkerNode) -> int:
        return int(getattr(node, "running_jobs", 0))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
