"""What the admin pages share: counts that stop early, read-only inlines."""

from __future__ import annotations

from typing import Any, cast

from django.contrib import admin
from django.contrib.admin.utils import flatten_fieldsets
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.functional import cached_property

from ..models import Job

# Counting past this many matching rows is not worth a full scan: the page count becomes "at least".
COUNT_CAP = 10_000


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
