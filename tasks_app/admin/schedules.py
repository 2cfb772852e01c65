"""The schedule admin: the list with each schedule's recent outcomes, pause / resume / run now,
and a schedule's page with its jobs.

Every change goes through `services.schedules`, as the API's do, and the services' refusals come
back as form errors or messages. A schedule declared in code (`managed`) is paused and resumed
here, never edited or deleted. Schedules are operated with the job permissions, as in the API:
view_job to see every schedule, change_job to act.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, cast

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet, construct_instance
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import ngettext

from .. import recurrence, registry, schedule_selectors, selectors
from ..conf import SCHEDULE_NEXT_TIMES, SCHEDULE_RECENT_JOBS
from ..exceptions import JobStateError, JobValidationError
from ..models import Job, JobStatus, Schedule
from ..services import schedules
from . import cells
from .common import ReadOnlyInline

if TYPE_CHECKING:
    from django.contrib.auth.models import User

Errors = dict[str, list[str]]

# The fields a person fills in; `enabled` is applied by pausing or resuming.
FORM_FIELDS = [*schedules.EDITABLE_FIELDS, "enabled"]
# What an emptied JSON box means for each JSON field.
EMPTY_JSON: dict[str, Callable[[], Any]] = {"params": dict, "metadata": dict, "webhook_events": list}
# The page's parts besides the first; `split` keeps each on a line.
WHEN_FIELDS = tuple("cron interval timezone in_words upcoming start_at end_at overlap catchup".split())
FIRING_FIELDS = tuple("next_run last_fired last_skipped created updated version".split())
# Shown, never entered: the owner is whoever adds it (as in the API), the rest the services keep.
ALWAYS_READ_ONLY = ("owner", "state", "managed", "in_words", "upcoming", *FIRING_FIELDS)


def job_url(job_id: Any) -> str:
    return reverse("admin:tasks_app_job_change", args=[job_id])


def moment(value: Any) -> str:
    return f"{timezone.localtime(value):%Y-%m-%d %H:%M:%S %Z}"


def recent_jobs_of(schedule: Schedule) -> list[dict[str, Any]]:
    """The schedule's last jobs, newest first: as ScheduleChangeList read them for its whole page,
    else (a page of one schedule) read now."""
    recent = getattr(schedule, "recent_jobs", None)
    if recent is None:
        recent = schedule_selectors.schedule_recent_jobs([schedule.pk])[schedule.pk]
    return cast(list[dict[str, Any]], recent)


def outcome_title(row: dict[str, Any]) -> str:
    """What a square of the strip says: "Succeeded · slot 2026-03-02 09:00:00 CET"."""
    slot = row["scheduled_for"]
    when = f"slot {moment(slot)}" if slot else f"run now {moment(row['created_at'])}"
    return f"{JobStatus(row['status']).label} · {when}"


def time_field(field: str, description: str, ordering: str | None = None) -> Callable[[Any, Schedule], Any]:
    """A column or read-only field showing one of the schedule's times as a `<time>`."""

    @admin.display(description=description, ordering=ordering)
    def show(model_admin: Any, schedule: Schedule) -> Any:
        return cells.time_tag(getattr(schedule, field))

    return show


def toggle(service: Callable[..., Schedule], *, unchanged: str) -> Callable[[Schedule], str]:
    """Pause or resume a schedule through `service`: "" if that changed it, else `unchanged`."""
    return lambda schedule: "" if service(schedule_id=schedule.pk).enabled != schedule.enabled else unchanged


def form_values(form: forms.ModelForm, names: Iterable[str]) -> dict[str, Any]:
    """The form's values for the services, an emptied JSON box as its empty value."""
    values = {name: form.cleaned_data[name] for name in names}
    for name, empty in EMPTY_JSON.items():
        if name in values and values[name] is None:
            values[name] = empty()
    return values


class ScheduleForm(forms.ModelForm):
    """The schedule's fields, checked as a whole by the services (`schedules.schedule_check`) in
    `clean`, so their reasons show beside the fields before anything is saved. `owner` is set by
    ScheduleAdmin.get_form: whoever adds the schedule, or the schedule's owner."""

    owner: ClassVar[Any] = None
    # A URL typed without its scheme is https (Django 6's default, without its warning).
    callback_url = forms.URLField(
        label="Callback URL", required=False, max_length=2000, assume_scheme="https"
    )

    class Meta:
        model = Schedule
        fields = [name for name in FORM_FIELDS if name != "callback_url"]  # declared above
        help_texts = {
            "enabled": "Untick to pause: no slot fires until it is ticked again (the missed ones never).",
            "params": "JSON, checked against the job type's schema.",
            "interval": "Seconds between slots; give this or cron, not both.",
            "timezone": "An IANA name such as Europe/Paris; cron reads its hours there.",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "type" in self.fields:
            names = [job_type.name for job_type in registry.all_job_types()]
            if self.instance.type and self.instance.type not in names:
                names.append(self.instance.type)  # gone since: shown as it is, refused on save
            self.fields["type"].widget = forms.Select(choices=[("", "---------"), *((n, n) for n in names)])
        # The admin's date and time boxes of a moment have no label of their own (axe-core: label).
        for name in ("start_at", "end_at"):
            widget = self.fields[name].widget if name in self.fields else None
            if isinstance(widget, forms.MultiWidget):
                for part, box in zip(("date", "time"), widget.widgets):
                    box.attrs["aria-label"] = f"{self.fields[name].label}: {part}"

    def _post_clean(self) -> None:
        # Only the instance is built here: the services check the schedule as a whole, naming the
        # field; the model's own checks (cron xor interval) would say the same less clearly.
        try:
            self.instance = construct_instance(self, self.instance, self._meta.fields, self._meta.exclude)
        except ValidationError as exc:
            self.add_error(None, exc)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.errors:
            return cleaned  # a box that is not a value (bad JSON): that error first
        schedule = self.instance if self.instance.pk else None  # as saved: _post_clean comes next
        entered = [
            n for n in schedules.EDITABLE_FIELDS if n in cleaned and (not schedule or n in self.changed_data)
        ]
        try:
            schedules.schedule_check(owner=self.owner, schedule=schedule, **form_values(self, entered))
        except JobValidationError as refused:
            for path, reasons in refused.errors.items():
                field, _, detail = path.partition(".")  # "params.seconds": under params, "seconds: ..."
                for reason in reasons:
                    if field in self.fields:
                        self.add_error(field, f"{detail}: {reason}" if detail else reason)
                    else:
                        self.add_error(None, f"{path}: {reason}")
        return cleaned


class RecentJobsFormSet(BaseInlineFormSet):
    """The schedule's newest jobs only: a schedule may have made thousands."""

    def get_queryset(self) -> QuerySet[Job]:
        if not getattr(self, "_newest_only", False):
            self._queryset = super().get_queryset()[:SCHEDULE_RECENT_JOBS]
            self._newest_only = True
        return cast(QuerySet[Job], self._queryset)


class ScheduleJobInline(ReadOnlyInline):
    model = Job
    fk_name = "schedule"
    formset = RecentJobsFormSet
    fields = ["job", "status_badge", "slot", "created"]
    ordering = ["-created_at", "-id"]
    verbose_name_plural = f"Jobs (the newest {SCHEDULE_RECENT_JOBS})"

    @admin.display(description="Job")
    def job(self, job: Job) -> SafeString:
        return format_html(
            '<a href="{}"><code title="{}">{}</code></a>', job_url(job.pk), job.pk, str(job.pk)[:8]
        )

    @admin.display(description="Status")
    def status_badge(self, job: Job) -> SafeString:
        return cells.status_badge(job)

    @admin.display(description="Slot")
    def slot(self, job: Job) -> Any:
        return cells.time_tag(job.scheduled_for) if job.scheduled_for else "run now"

    @admin.display(description="Created")
    def created(self, job: Job) -> Any:
        return cells.time_tag(job.created_at)


class ScheduleChangeList(ChangeList):
    """The page's schedules, each with its recent jobs, read in one query for the whole page."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        page = list(self.result_list)
        recent = schedule_selectors.schedule_recent_jobs([schedule.pk for schedule in page])
        for schedule in page:
            cast(Any, schedule).recent_jobs = recent[schedule.pk]
        self.result_list = page


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    form = ScheduleForm
    list_display = tuple("name owner type in_words state next_run last_run outcomes in_code".split())
    sortable_by = ["name", "owner", "type", "state", "next_run", "in_code"]
    list_filter = [
        "enabled",
        "managed",
        ("type", admin.AllValuesFieldListFilter),
        ("owner", admin.RelatedOnlyFieldListFilter),
    ]
    list_select_related = ["owner"]
    search_fields = ["name"]
    search_help_text = "A schedule's name, or part of it."
    ordering = ["name", "id"]
    list_per_page = 50
    actions = ["pause_selected", "resume_selected", "run_selected"]
    fieldsets = [
        (None, {"fields": ["name", "owner", "type", "params", "enabled", "state", "managed"]}),
        ("When", {"fields": WHEN_FIELDS}),
        ("The job each slot submits", {"fields": schedules.JOB_OPTIONS}),
        ("Firing", {"fields": FIRING_FIELDS}),
    ]

    class Media:
        css = {"all": ["tasks_app/admin.css"]}

    # --- permissions: the job permissions, as the API reads them ---------------------------------

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return selectors.sees_every_job(cast(Any, request.user))

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return selectors.changes_every_job(cast(Any, request.user))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.has_change_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_change_permission(request)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # deleting goes through the services, on a schedule's page
        return actions

    # --- the list ---------------------------------------------------------------------------------

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return ScheduleChangeList

    @admin.display(description="When")
    def in_words(self, schedule: Schedule) -> str:
        return recurrence.describe(
            cron=schedule.cron, interval=schedule.interval, zone_name=schedule.timezone
        )

    @admin.display(description="State", ordering="enabled")
    def state(self, schedule: Schedule) -> SafeString:
        """Enabled, paused by a person, or disabled by the system with its reason."""
        if schedule.enabled:
            return format_html('<span class="lr-state">{}</span>', "Enabled")
        if schedule.disabled_reason:
            return format_html(
                '<span class="lr-state-disabled">Disabled: {}</span>', schedule.disabled_reason
            )
        return format_html('<span class="lr-state-paused">{}</span>', "Paused")

    next_run = time_field("next_fire_at", "Next run", ordering="next_fire_at")
    last_fired = time_field("last_fired_at", "Last fired for")
    last_skipped = time_field("last_skipped_at", "Last slot skipped (its previous job still active)")
    created = time_field("created_at", "Created")
    updated = time_field("updated_at", "Updated")

    @admin.display(description="Last run")
    def last_run(self, schedule: Schedule) -> Any:
        """The newest job's status badge (a link to it) and when it was made."""
        recent = recent_jobs_of(schedule)
        if not recent:
            return cells.EMPTY
        newest = recent[0]
        return format_html(
            '<a class="lr-last-run" href="{}">{} {}</a>',
            job_url(newest["id"]),
            cells.status_badge(Job(id=newest["id"], status=newest["status"])),
            cells.time_tag(newest["created_at"]),
        )

    @admin.display(description=f"Last {SCHEDULE_RECENT_JOBS} outcomes")
    def outcomes(self, schedule: Schedule) -> Any:
        """One square per recent job in its status's colour, oldest first, each a link to the job."""
        recent = recent_jobs_of(schedule)
        if not recent:
            return cells.EMPTY
        squares = format_html_join(
            "",
            '<a class="lr-outcome lr-badge-{}" href="{}" title="{}" aria-label="{}"></a>',
            (
                (job["status"], job_url(job["id"]), outcome_title(job), outcome_title(job))
                for job in recent[::-1]
            ),
        )
        return format_html('<span class="lr-outcomes">{}</span>', squares)

    @admin.display(description="In code", boolean=True, ordering="managed")
    def in_code(self, schedule: Schedule) -> bool:
        return schedule.managed

    @admin.display(description=f"Next {SCHEDULE_NEXT_TIMES} fire times")
    def upcoming(self, schedule: Schedule) -> Any:
        times = recurrence.next_fire_times(schedule, after=timezone.now(), count=SCHEDULE_NEXT_TIMES)
        if not times:
            return "None while it is not enabled." if not schedule.enabled else cells.EMPTY
        items = format_html_join("", "<li>{}</li>", ((cells.time_tag(slot),) for slot in times))
        return format_html('<ol class="lr-upcoming">{}</ol>', items)

    # --- the actions: thin callers of the services ----------------------------------------------

    def _apply(
        self,
        request: HttpRequest,
        queryset: QuerySet,
        change: Callable[[Schedule], str],
        *,
        done: str,
        not_done: str,
    ) -> None:
        """`change` each selected schedule: it returns why nothing changed ("" when it did), or the
        services refuse (JobStateError). Reports how many changed, and why the others did not."""
        changed, reasons = 0, Counter[str]()
        for schedule in queryset.order_by():
            try:
                why = change(schedule)
            except JobStateError as exc:
                why = exc.message
            reasons.update([why] if why else [])
            changed += not why
        if changed:
            message = ngettext(f"{done} %d schedule.", f"{done} %d schedules.", changed) % changed
            self.message_user(request, message, messages.SUCCESS)
        for why, count in sorted(reasons.items()):
            message = ngettext(f"%d schedule {not_done}: {why}", f"%d schedules {not_done}: {why}", count)
            self.message_user(request, message % count, messages.WARNING)

    @admin.action(description="Pause selected schedules", permissions=["change"])
    def pause_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        pause = toggle(schedules.schedule_pause, unchanged="already paused.")
        self._apply(request, queryset, pause, done="Paused", not_done="not changed")

    @admin.action(description="Resume selected schedules", permissions=["change"])
    def resume_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        resume = toggle(schedules.schedule_resume, unchanged="already enabled.")
        self._apply(request, queryset, resume, done="Resumed", not_done="not changed")

    @admin.action(description="Run selected schedules now (a job each)", permissions=["change"])
    def run_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        def run(schedule: Schedule) -> str:
            schedules.schedule_run_now(schedule_id=schedule.pk, actor=request.user)
            return ""

        self._apply(request, queryset, run, done="Submitted a job now for", not_done="not run")

    # --- a schedule's page: saved and deleted through the services --------------------------------

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:  # a new one: what a person enters, nothing the services keep
            return [
                (name, {"fields": [field for field in options["fields"] if field in FORM_FIELDS]})
                for name, options in self.fieldsets
                if name != "Firing"
            ]
        if obj.managed:
            note = format_html(
                "Declared in code by job type <code>{}</code>; change it there. Only pausing and "
                "resuming are done here.",
                obj.type,
            )
            (_, first), *rest = self.fieldsets
            return [(None, {**first, "description": note}), *rest]
        return self.fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return []
        return [*ALWAYS_READ_ONLY, *(schedules.EDITABLE_FIELDS if obj.managed else [])]

    def get_inlines(self, request: HttpRequest, obj: Any) -> list[type[admin.options.InlineModelAdmin]]:
        # The jobs are shown, never sent back: a saved page carries none (one fired since the page
        # was drawn would read as an edited row).
        return [] if obj is None or request.method == "POST" else [ScheduleJobInline]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change, **kwargs)
        owner = obj.owner if obj is not None else request.user
        return type(form.__name__, (form,), {"owner": owner})

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        schedule = self.get_object(request, object_id) if object_id else None
        if schedule is not None and schedule.managed:
            # The services refuse it: it goes when its declaration does.
            extra_context = {**(extra_context or {}), "show_delete": False}
        return super().changeform_view(request, object_id, form_url, extra_context)

    def save_model(self, request: HttpRequest, obj: Schedule, form: forms.ModelForm, change: bool) -> None:
        """Through the services, as the API saves: create, or update what changed, then pause or
        resume if `enabled` changed. The form's `clean` has asked the services first."""
        entered = [name for name in schedules.EDITABLE_FIELDS if name in form.cleaned_data]
        saved = obj
        if not change:
            owner = cast("User", request.user)
            saved = schedules.schedule_create(owner=owner, **form_values(form, entered))
        elif changes := form_values(form, [name for name in entered if name in form.changed_data]):
            schedules.schedule_update(schedule_id=obj.pk, actor=request.user, **changes)
        if "enabled" in form.changed_data:
            toggle = schedules.schedule_resume if form.cleaned_data["enabled"] else schedules.schedule_pause
            toggle(schedule_id=saved.pk)
        obj.pk = saved.pk
        obj.refresh_from_db()

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        try:
            return super().delete_view(request, object_id, extra_context)
        except JobStateError as refused:  # declared in code; nothing was deleted (rolled back)
            self.message_user(request, refused.message, messages.ERROR)
            return redirect("admin:tasks_app_schedule_change", object_id)

    def delete_model(self, request: HttpRequest, obj: Schedule) -> None:
        schedules.schedule_delete(schedule_id=obj.pk)  # its jobs stay
