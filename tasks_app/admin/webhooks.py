"""Webhook deliveries in the admin: their attempts, and redelivery."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from ..exceptions import JobStateError
from ..models import DeliveryStatus, WebhookAttempt, WebhookDelivery
from ..services import webhooks as webhook_state
from .common import ReadOnlyInline


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
