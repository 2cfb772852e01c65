"""Query-string filters for the job list (django-filter)."""

from __future__ import annotations

import django_filters

from .models import Job, JobStatus


class JobFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(
        choices=JobStatus.choices, help_text="One or more statuses: ?status=queued&status=running"
    )
    type = django_filters.CharFilter(help_text="A job type name.")

    class Meta:
        model = Job
        fields = ["status", "type"]
