from django.contrib import admin
from django.urls import include, path

from tasks_app.api.docs import DocsView, SchemaView

urlpatterns = [
    path("", include("tasks_app.web.urls")),
    path("admin/", admin.site.urls),
    path("api/", include("tasks_app.api.urls")),
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("api/docs/", DocsView.as_view(url_name="schema"), name="api-docs"),
]

handler404 = "tasks_app.api.errors.not_found"
handler500 = "tasks_app.api.errors.server_error"
