"""The Django admin as an operations console for jobs.

Lifecycle fields are read-only: every change goes through the same services as the API, and the
actions record who did it in the job's history. Built to stay fast on a large table: no full
COUNT(*) per page, filters that match the indexes, the owner joined in the same query.
"""

from django.contrib import admin

from . import jobs, schedules, webhooks, workers  # noqa: F401 (each registers its models)
from .cells import EMPTY

# The admin is Longrun's operations console: it says so (templates/admin/base_site.html adds the icon).
admin.site.site_header = "Longrun administration"
admin.site.site_title = "Longrun admin"
admin.site.index_title = "Jobs, webhooks and workers"
# One sign for an empty value on every admin page, as on the dashboard ("-" is Django's own).
admin.site.empty_value_display = EMPTY
