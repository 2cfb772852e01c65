"""Workers in the admin: read-only, from their own heartbeats."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from .. import selectors
from ..models import WorkerNode


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
