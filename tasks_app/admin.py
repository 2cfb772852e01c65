from django.contrib import admin

from .models import Job, JobEvent


class JobEventInline(admin.TabularInline):
    model = JobEvent
    extra = 0
    can_delete = False
    fields = ["seq", "kind", "status", "message", "actor", "created_at"]
    readonly_fields = fields
    ordering = ["seq"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "type", "owner", "status", "progress", "attempts", "priority", "created_at"]
    list_filter = ["status", "type"]
    search_fields = ["=id", "type"]
    list_select_related = ["owner"]
    date_hierarchy = "created_at"
    inlines = [JobEventInline]

    def get_readonly_fields(self, request, obj=None):
        # Lifecycle fields change only through the services.
        return [f.name for f in Job._meta.fields]

    def has_add_permission(self, request):
        return False
